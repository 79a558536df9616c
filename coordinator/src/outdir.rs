//! Where a command may write: never into (or around) a path it reads, and never over another
//! run's outputs unless told to (`--overwrite-output-dir`, as run_glue.py), so a reused
//! directory or a mistyped flag cannot destroy a model, a data set or an earlier run.

use std::path::{Path, PathBuf};

pub use peftrain_spec::paths::{canonical, check_no_overlap, overlap};

/// Makes `dir` the output directory of a new run. An existing directory with anything in it
/// holds another run's outputs: refused unless `overwrite`, when that run's checkpoints are
/// removed first (they would otherwise be rotated with, or resumed instead of, the new run's).
/// A resumed run continues its own directory and skips this.
pub fn claim_output_dir(dir: &Path, overwrite: bool) -> Result<(), String> {
    let entries: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok()).map(|e| e.path()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(format!("--output-dir {}: {e}", dir.display())),
    };
    if entries.is_empty() {
        return Ok(());
    }
    if !overwrite {
        return Err(format!(
            "--output-dir {} already exists and is not empty: pass --overwrite-output-dir to train over it, or --resume to continue the run in it",
            dir.display()
        ));
    }
    let old: Vec<&PathBuf> = entries
        .iter()
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("checkpoint-") || (n.starts_with(".checkpoint-") && (n.ends_with(".tmp") || n.ends_with(".old"))))
        })
        .collect();
    for p in &old {
        std::fs::remove_dir_all(p).map_err(|e| format!("--overwrite-output-dir: removing {}: {e}", p.display()))?;
    }
    if !old.is_empty() {
        tracing::warn!("--overwrite-output-dir: removed {} checkpoint(s) of an earlier run in {}", old.len(), dir.display());
    }
    Ok(())
}
