//! Path rules both sides apply before writing: an output never is, contains or lies inside a
//! path the command reads (spelled however: relative, through `..`, through a symbolic link).

use std::path::{Component, Path, PathBuf};

/// `p` made absolute and free of `.`/`..` and symbolic links, as far as it exists (the rest is
/// appended as written), so two spellings of one directory compare equal.
pub fn canonical(p: &Path) -> PathBuf {
    let abs = if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir().map(|d| d.join(p)).unwrap_or_else(|_| p.to_path_buf()) };
    // Component by component: before each `..`, what exists so far is resolved (a symbolic
    // link's `..` is its target's parent, as the kernel sees it), then popped.
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                out = resolve(&out);
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    resolve(&out)
}

/// `p` with its longest existing prefix resolved by the file system (links followed) and the
/// rest appended as written.
fn resolve(p: &Path) -> PathBuf {
    let mut existing = p.to_path_buf();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.file_name().map(|n| n.to_os_string()), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => break,
        }
    }
    let mut out = std::fs::canonicalize(&existing).unwrap_or(existing);
    for name in rest.into_iter().rev() {
        out.push(name);
    }
    out
}

/// A temporary name beside `path` (same directory, so a rename is atomic), unique to this
/// process.
pub fn temp_beside(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Writes `data` to `path` through `temp_beside(path)`, renamed into place: a reader (or a
/// crash) never sees a half-written file.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = temp_beside(path);
    let written = std::fs::write(&tmp, data).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        // Only the temporary file this call created; the target is untouched.
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Whether one path is the other or lies inside it.
pub fn overlap(a: &Path, b: &Path) -> bool {
    let (a, b) = (canonical(a), canonical(b));
    a.starts_with(&b) || b.starts_with(&a)
}

/// Refuses an output (`flag` `out`) that is, contains or lies inside any of the inputs.
pub fn check_no_overlap(flag: &str, out: &Path, inputs: &[(&str, &Path)]) -> Result<(), String> {
    for (in_flag, input) in inputs {
        if overlap(out, input) {
            return Err(format!("{flag} {} overlaps {in_flag} {}: a command never writes where it reads", out.display(), input.display()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_sees_through_spellings() {
        let d = tempfile::tempdir().unwrap();
        let model = d.path().join("model");
        std::fs::create_dir_all(&model).unwrap();
        assert!(overlap(&model, &d.path().join("model/../model/.")));
        assert!(overlap(&model.join("merged"), &model));
        assert!(overlap(d.path(), &model));
        assert!(!overlap(&d.path().join("model2"), &model));
        std::os::unix::fs::symlink(&model, d.path().join("link")).unwrap();
        assert!(overlap(&d.path().join("link"), &model));
        // `link/new/..` is the model directory itself, through the link.
        assert!(overlap(&d.path().join("link/new/.."), &model));
        assert!(overlap(&d.path().join("link/../model"), &model));
    }
}
