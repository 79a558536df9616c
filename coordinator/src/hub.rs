//! Hugging Face Hub resolution of `--model ID` and `--task`'s GLUE data: the local HF cache
//! layout first (`$HF_HUB_CACHE`, `$HF_HOME/hub`), else a download from `$HF_ENDPOINT` into that
//! same layout, so a later `HF_HUB_OFFLINE=1` run (or Python's `huggingface_hub`) finds it.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::data::Task;

const REVISION: &str = "main";
const GLUE_REPO: &str = "nyu-mll/glue";
const TOKENIZER_FILES: [&str; 5] = ["tokenizer.json", "vocab.json", "merges.txt", "vocab.txt", "tokenizer_config.json"];

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("{spec:?} is neither a directory nor a Hugging Face repo id (NAME or ORG/NAME): pass {flag} an existing directory or a repo id like {example}")]
    BadSpec { spec: String, flag: &'static str, example: &'static str },
    #[error("{repo} is not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE is set: download it with `{command}` on a connected machine, or pass {flag} DIR")]
    Offline { repo: String, cache: String, command: String, flag: &'static str },
    #[error("{repo}: {file} not found on the hub ({url} answered 404): check the repo id and revision, or pass {flag} DIR")]
    Missing { repo: String, file: String, url: String, flag: &'static str },
    #[error("{repo}: {url} answered HTTP {status}: {hint}")]
    Status { repo: String, url: String, status: u16, hint: String },
    #[error("{repo}: cannot download {url}: {why}: check the network and HF_ENDPOINT, or set HF_HUB_OFFLINE=1 and pass {flag} DIR")]
    Transport { repo: String, url: String, why: String, flag: &'static str },
    #[error("{path}: {why}: check that the Hugging Face cache is writable, or point HF_HUB_CACHE elsewhere")]
    Io { path: PathBuf, why: std::io::Error },
}

/// Where and how to resolve hub repos; `from_env` mirrors `huggingface_hub`'s variables.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// Hub base URL without a trailing slash (`HF_ENDPOINT`).
    pub endpoint: String,
    /// The hub cache directory holding `models--*` and `datasets--*`.
    pub cache: PathBuf,
    pub offline: bool,
    pub token: Option<String>,
    /// Draw a progress bar (else log lines); default: stderr is a terminal.
    pub progress: bool,
}

impl HubOptions {
    pub fn from_env() -> HubOptions {
        let mut o = HubOptions::from_vars(|k| std::env::var(k).ok());
        o.progress = std::io::stderr().is_terminal();
        o
    }

    /// `from_env` over any variable source, so the rules are testable without touching the
    /// process environment (which other test threads read concurrently).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> HubOptions {
        let var = |k: &str| var(k).filter(|v| !v.trim().is_empty());
        let home = var("HOME").map(PathBuf::from).unwrap_or_default();
        let hf_home = var("HF_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| var("XDG_CACHE_HOME").map(PathBuf::from).unwrap_or_else(|| home.join(".cache")).join("huggingface"));
        let cache = var("HF_HUB_CACHE").map(PathBuf::from).unwrap_or_else(|| hf_home.join("hub"));
        let truthy = |k: &str| var(k).is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"));
        // `huggingface-cli login` stores the token here; HF_TOKEN wins, as in Python.
        let token =
            var("HF_TOKEN").or_else(|| std::fs::read_to_string(hf_home.join("token")).ok()).map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
        HubOptions {
            endpoint: var("HF_ENDPOINT").unwrap_or_else(|| "https://huggingface.co".into()).trim_end_matches('/').to_string(),
            cache,
            offline: truthy("HF_HUB_OFFLINE"),
            token,
            progress: false,
        }
    }
}

/// A hub repo and what the user is told to do when it cannot be had.
struct Repo<'a> {
    id: &'a str,
    dataset: bool,
    flag: &'static str,
    command: String,
}

impl Repo<'_> {
    fn dir(&self, cache: &Path) -> PathBuf {
        cache.join(repo_folder(self.id, self.dataset))
    }
    fn url(&self, endpoint: &str, file: &str) -> String {
        let kind = if self.dataset { "datasets/" } else { "" };
        format!("{endpoint}/{kind}{}/resolve/{REVISION}/{file}", self.id)
    }
}

/// The cache folder name: `models--org--name`, `models--name` for ids without an org.
fn repo_folder(id: &str, dataset: bool) -> String {
    format!("{}--{}", if dataset { "datasets" } else { "models" }, id.replace('/', "--"))
}

/// Hub ids are `NAME` or `ORG/NAME` of `[A-Za-z0-9._-]`; anything else is a mistyped path, and
/// must not reach a URL or a cache path.
pub fn is_repo_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    parts.len() <= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && !p.starts_with(['.', '-'])
                && !p.contains("..")
                && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        })
}

/// One file or the first available of alternatives; `required` ones must exist on the hub.
struct Need {
    names: Vec<String>,
    required: bool,
}

/// `spec` as a directory, else the hub model repo `spec` in the cache (downloaded if needed):
/// a directory with config.json, the tokenizer files the repo has, and the weights.
pub fn resolve_model(spec: &str, opts: &HubOptions) -> Result<PathBuf, HubError> {
    if Path::new(spec).is_dir() {
        return Ok(PathBuf::from(spec));
    }
    if !is_repo_id(spec) {
        return Err(HubError::BadSpec { spec: spec.into(), flag: "--model", example: "roberta-base" });
    }
    let need = |names: &[&str], required| Need { names: names.iter().map(|n| n.to_string()).collect(), required };
    let mut needs = vec![need(&["config.json"], true)];
    needs.extend(TOKENIZER_FILES.iter().map(|f| need(&[f], false)));
    needs.push(need(&["model.safetensors", "pytorch_model.bin"], true));
    let command = format!("huggingface-cli download {spec}");
    resolve(&Repo { id: spec, dataset: false, flag: "--model", command }, &needs, opts)
}

/// The snapshot directory of the hub's `nyu-mll/glue` dataset holding `task`'s parquet files
/// (`{task}/train-00000-of-00001.parquet`, ...), the layout `data::load_split` reads.
pub fn resolve_glue(task: Task, opts: &HubOptions) -> Result<PathBuf, HubError> {
    let info = task.info();
    let splits = std::iter::once("train").chain(info.dev.iter().map(|e| e.hub)).chain(info.test.iter().map(|e| e.hub));
    let needs: Vec<Need> = splits.map(|split| Need { names: vec![format!("{task}/{split}-00000-of-00001.parquet")], required: true }).collect();
    let command = format!("huggingface-cli download {GLUE_REPO} --repo-type dataset --include '{task}/*'");
    resolve(&Repo { id: GLUE_REPO, dataset: true, flag: "--glue-dir", command }, &needs, opts)
}

fn resolve(repo: &Repo, needs: &[Need], opts: &HubOptions) -> Result<PathBuf, HubError> {
    if let Some(dir) = cached(&repo.dir(&opts.cache), needs) {
        tracing::debug!(repo = repo.id, dir = %dir.display(), "found in the Hugging Face cache");
        return Ok(dir);
    }
    if opts.offline {
        return Err(HubError::Offline {
            repo: repo.id.into(),
            cache: opts.cache.display().to_string(),
            command: repo.command.clone(),
            flag: repo.flag,
        });
    }
    download(repo, needs, opts)
}

/// The snapshot `refs/main` names (or `snapshots/main`, written when the server sent no commit)
/// if it holds every required file.
fn cached(repo_dir: &Path, needs: &[Need]) -> Option<PathBuf> {
    let commit = std::fs::read_to_string(repo_dir.join("refs").join(REVISION)).ok();
    let snapshot = repo_dir.join("snapshots").join(commit.as_deref().map(str::trim).filter(|c| is_commit(c)).unwrap_or(REVISION));
    let complete = needs.iter().filter(|n| n.required).all(|n| n.names.iter().any(|f| snapshot.join(f).is_file()));
    complete.then_some(snapshot)
}

/// A commit from a server or a refs file becomes a path component: accept only a plain token.
fn is_commit(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric())
}

fn download(repo: &Repo, needs: &[Need], opts: &HubOptions) -> Result<PathBuf, HubError> {
    let repo_dir = repo.dir(&opts.cache);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |why| HubError::Io { path, why }
    };
    std::fs::create_dir_all(&repo_dir).map_err(io(&repo_dir))?;
    let agent = agent();
    // The snapshot is named by the first response's X-Repo-Commit; later files join it.
    let mut snapshot: Option<PathBuf> = None;
    for need in needs {
        if snapshot.as_ref().is_some_and(|s| need.names.iter().any(|f| s.join(f).is_file())) {
            continue;
        }
        let mut got = false;
        for name in &need.names {
            let url = repo.url(&opts.endpoint, name);
            let mut req = agent.get(&url);
            if let Some(t) = &opts.token {
                req = req.header("Authorization", format!("Bearer {t}"));
            }
            let resp = req.call().map_err(|e| HubError::Transport { repo: repo.id.into(), url: url.clone(), why: e.to_string(), flag: repo.flag })?;
            match resp.status().as_u16() {
                200 => {}
                404 => continue,
                status => {
                    let hint = match status {
                        401 | 403 => format!(
                            "the repo is private, gated or does not exist: check the id, set HF_TOKEN to a token with access, or pass {} DIR",
                            repo.flag
                        ),
                        _ => format!("the hub refused the download: retry later, check HF_ENDPOINT, or pass {} DIR", repo.flag),
                    };
                    return Err(HubError::Status { repo: repo.id.into(), url, status, hint });
                }
            }
            let snap = snapshot
                .get_or_insert_with(|| {
                    let commit = resp.headers().get("x-repo-commit").and_then(|v| v.to_str().ok()).filter(|c| is_commit(c));
                    repo_dir.join("snapshots").join(commit.unwrap_or(REVISION))
                })
                .clone();
            let target = snap.join(name);
            let parent = target.parent().unwrap_or(&snap).to_path_buf();
            std::fs::create_dir_all(&parent).map_err(io(&parent))?;
            let len = resp.body().content_length();
            let body = resp.into_body().into_reader();
            // A temp file beside the target, renamed on success, so an interrupted download
            // never leaves a half file where a later run would take it as complete.
            let mut tmp = tempfile::NamedTempFile::new_in(&parent).map_err(io(&parent))?;
            let bar = progress_bar(opts.progress, len, &format!("{}/{name}", repo.id));
            tracing::info!(url, bytes = len, "downloading");
            let n = std::io::copy(&mut bar.wrap_read(body), &mut tmp).map_err(|e| HubError::Transport {
                repo: repo.id.into(),
                url: url.clone(),
                why: e.to_string(),
                flag: repo.flag,
            })?;
            bar.finish_and_clear();
            tmp.persist(&target).map_err(|e| HubError::Io { path: target.clone(), why: e.error })?;
            tracing::info!(file = %target.display(), bytes = n, "downloaded");
            got = true;
            break;
        }
        if !got && need.required {
            let file = need.names.join(" or ");
            return Err(HubError::Missing {
                repo: repo.id.into(),
                url: repo.url(&opts.endpoint, need.names.first().map_or("", |n| n.as_str())),
                file,
                flag: repo.flag,
            });
        }
    }
    let Some(snapshot) = snapshot else {
        // Unreachable with a required first need; kept as an error rather than a panic.
        return Err(HubError::Missing { repo: repo.id.into(), file: "any file".into(), url: repo.url(&opts.endpoint, ""), flag: repo.flag });
    };
    // refs last: a cache with refs/main is one whose files were all fetched.
    let refs = repo_dir.join("refs");
    std::fs::create_dir_all(&refs).map_err(io(&refs))?;
    let commit = snapshot.file_name().map(|c| c.to_string_lossy().to_string()).unwrap_or_else(|| REVISION.into());
    let mut tmp = tempfile::NamedTempFile::new_in(&refs).map_err(io(&refs))?;
    std::io::Write::write_all(&mut tmp, commit.as_bytes()).map_err(io(&refs))?;
    tmp.persist(refs.join(REVISION)).map_err(|e| HubError::Io { path: refs.join(REVISION), why: e.error })?;
    Ok(snapshot)
}

/// The HTTP client for the hub: statuses are answers to read, not errors.
pub(crate) fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(120)))
        // Renamed repos (roberta-base -> FacebookAI/roberta-base) redirect on the same host and
        // still need the token; LFS redirects to a CDN host carry a signed URL and must not get it.
        .redirect_auth_headers(ureq::config::RedirectAuthHeaders::SameHost)
        .user_agent(concat!("peftrain/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent()
}

fn progress_bar(show: bool, len: Option<u64>, what: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let (bar, template) = match len {
        Some(n) => (ProgressBar::new(n), "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}"),
        None => (ProgressBar::new_spinner(), "{spinner} {msg} {bytes} {bytes_per_sec}"),
    };
    bar.set_style(ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> "));
    bar.set_message(what.to_string());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(cache: &Path) -> HubOptions {
        HubOptions { endpoint: "http://127.0.0.1:9".into(), cache: cache.into(), offline: true, token: None, progress: false }
    }

    #[test]
    fn repo_ids_map_to_cache_folders() {
        assert_eq!(repo_folder("roberta-base", false), "models--roberta-base");
        assert_eq!(repo_folder("FacebookAI/roberta-base", false), "models--FacebookAI--roberta-base");
        assert_eq!(repo_folder("sentence-transformers/all-MiniLM-L6-v2", false), "models--sentence-transformers--all-MiniLM-L6-v2");
        assert_eq!(repo_folder("nyu-mll/glue", true), "datasets--nyu-mll--glue");
        let r = Repo { id: "nyu-mll/glue", dataset: true, flag: "--glue-dir", command: String::new() };
        assert_eq!(r.url("http://h", "sst2/x.parquet"), "http://h/datasets/nyu-mll/glue/resolve/main/sst2/x.parquet");
        for ok in ["roberta-base", "FacebookAI/roberta-base", "bert-base-uncased", "a.b_c/d-1"] {
            assert!(is_repo_id(ok), "{ok}");
        }
        for bad in ["", "./models/x", "/abs/path", "a/b/c", "../x", "a/..", "a b", "org/", "~/m"] {
            assert!(!is_repo_id(bad), "{bad}");
        }
        let e = resolve_model("./no/such/dir", &opts(Path::new("/nonexistent"))).unwrap_err().to_string();
        assert!(e.contains("./no/such/dir") && e.contains("--model"), "{e}");
    }

    #[test]
    fn cache_lookup_follows_refs_and_requires_files() {
        let d = tempfile::tempdir().unwrap();
        let repo = d.path().join("models--org--m");
        let snap = repo.join("snapshots/abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "abc123\n").unwrap();
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        // Weights missing: not usable, and offline says so.
        let e = resolve_model("org/m", &opts(d.path())).unwrap_err().to_string();
        assert!(e.contains("org/m") && e.contains("HF_HUB_OFFLINE") && e.contains("--model DIR"), "{e}");
        assert_eq!(e.lines().count(), 1);
        std::fs::write(snap.join("pytorch_model.bin"), "w").unwrap();
        assert_eq!(resolve_model("org/m", &opts(d.path())).unwrap(), snap);
        // A refs file that is not a plain commit must not escape the snapshots dir.
        std::fs::write(repo.join("refs/main"), "../../x").unwrap();
        assert!(cached(&repo, &[Need { names: vec!["config.json".into()], required: true }]).is_none());
        // Commit-less downloads live under snapshots/main.
        let glue = d.path().join("datasets--nyu-mll--glue/snapshots/main/rte");
        std::fs::create_dir_all(&glue).unwrap();
        for s in ["train", "validation", "test"] {
            std::fs::write(glue.join(format!("{s}-00000-of-00001.parquet")), "p").unwrap();
        }
        assert_eq!(resolve_glue(Task::Rte, &opts(d.path())).unwrap(), d.path().join("datasets--nyu-mll--glue/snapshots/main"));
        let e = resolve_glue(Task::Sst2, &opts(d.path())).unwrap_err().to_string();
        assert!(e.contains("nyu-mll/glue") && e.contains("--glue-dir") && e.contains("--repo-type dataset"), "{e}");
    }

    #[test]
    fn options_follow_the_hf_variables() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
        let o = HubOptions::from_vars(vars(&[("HOME", "/h")]));
        assert_eq!((o.endpoint.as_str(), o.cache.as_path(), o.offline), ("https://huggingface.co", Path::new("/h/.cache/huggingface/hub"), false));
        let o = HubOptions::from_vars(vars(&[
            ("HOME", "/h"),
            ("HF_HOME", "/hf"),
            ("HF_HUB_OFFLINE", "True"),
            ("HF_ENDPOINT", "http://m/"),
            ("HF_TOKEN", "t"),
        ]));
        assert_eq!((o.endpoint.as_str(), o.cache.as_path(), o.offline, o.token.as_deref()), ("http://m", Path::new("/hf/hub"), true, Some("t")));
        let o = HubOptions::from_vars(vars(&[("HF_HOME", "/hf"), ("HF_HUB_CACHE", "/c"), ("HF_HUB_OFFLINE", "0")]));
        assert_eq!((o.cache.as_path(), o.offline), (Path::new("/c"), false));
    }
}
