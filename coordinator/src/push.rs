//! `peftrain push`: an output directory to a Hugging Face Hub model repo, as
//! `Trainer.push_to_hub` does it (huggingface_hub's `upload_folder` without `checkpoint-*` and
//! `_*`), over the hub's HTTP commit API: create the repo, ask `preupload` which files go
//! through LFS, upload those with the git-lfs batch protocol, then one NDJSON commit.

use std::io::Read;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::hub::{agent, is_repo_id, HubOptions};

/// The hub's limits per preupload and LFS batch request (huggingface_hub's chunk sizes).
const CHUNK: usize = 256;
/// Bytes of each file the preupload endpoint sees to tell text from binary.
const SAMPLE: usize = 512;
/// A commit of more files than this is refused here rather than half-sent.
const MAX_FILES: usize = 10_000;
/// The hub takes files up to 10 MiB inline; larger ones go through LFS.
const MAX_INLINE_FILE: u64 = 10 << 20;
/// Inline files are base64 in the commit body, held in memory: a bound on their sum.
const MAX_INLINE_TOTAL: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("push needs a token with write access: set HF_TOKEN (or log in with `huggingface-cli login`)")]
    NoToken,
    #[error("--repo-id {0:?} is not a Hugging Face repo id (NAME or ORG/NAME of letters, digits, '.', '_', '-')")]
    BadRepo(String),
    #[error("{0}: not a directory to push (give a peftrain output directory, or a `merge` output)")]
    NotADir(PathBuf),
    #[error("{0}: holds neither adapter_config.json nor config.json: not a model to push")]
    NotAModel(PathBuf),
    #[error("{dir}: {n} files to push, more than the {MAX_FILES} one commit takes")]
    TooMany { dir: PathBuf, n: usize },
    #[error("{dir}: the files the hub takes inline add up to more than {limit} bytes: too much for one commit")]
    TooLarge { dir: PathBuf, limit: u64 },
    #[error("HF_HUB_OFFLINE is set: pushing needs the hub (unset it to push)")]
    Offline,
    #[error("--revision must name a branch (it is empty)")]
    BadRevision,
    #[error("{path}: {why}")]
    Io { path: PathBuf, why: std::io::Error },
    #[error("{what}: {url} answered HTTP {status}: {hint}")]
    Status { what: &'static str, url: String, status: u16, hint: String },
    #[error("{what}: cannot reach {url}: {why}: check the network and HF_ENDPOINT")]
    Transport { what: &'static str, url: String, why: String },
    #[error("{what}: {url} answered something that is not the hub's API ({why}): check HF_ENDPOINT")]
    Malformed { what: &'static str, url: String, why: String },
}

impl PushError {
    /// Whether the command line (or the environment it runs in) asked for something that
    /// cannot be: a usage error (exit 2, like clap's) rather than a failed push.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            PushError::NoToken
                | PushError::Offline
                | PushError::BadRevision
                | PushError::BadRepo(_)
                | PushError::NotADir(_)
                | PushError::NotAModel(_)
        )
    }
}

/// What to push where.
#[derive(Debug, Clone)]
pub struct PushRequest {
    pub dir: PathBuf,
    /// `ORG/NAME`, or `NAME` in the token owner's namespace.
    pub repo_id: String,
    pub revision: String,
    pub private: bool,
    pub commit_message: String,
}

/// One file of the commit.
#[derive(Debug, Clone)]
struct Entry {
    /// Path in the repo, '/'-separated.
    path: String,
    file: PathBuf,
    size: u64,
}

/// What a push did.
#[derive(Debug)]
pub struct Pushed {
    pub repo_id: String,
    pub commit_url: String,
    pub files: usize,
    pub lfs_files: usize,
}

/// Whether `upload_folder(ignore_patterns=["_*", "checkpoint-*"])` leaves `path` out (its
/// fnmatch patterns match the whole relative path), or the hub refuses it anyway: any `.git`
/// or `.cache` segment (huggingface_hub skips `.cache/huggingface` and refuses the rest).
fn ignored(path: &str) -> bool {
    path.starts_with('_') || path.starts_with("checkpoint-") || path.split('/').any(|p| p == ".git" || p == ".cache")
}

/// The files `dir` pushes, sorted by repo path. Symbolic links are not followed: a push sends
/// what the directory holds, never what a link points at elsewhere.
fn files(dir: &Path) -> Result<Vec<Entry>, PushError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |why| PushError::Io { path, why }
    };
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(io(&d))? {
            let e = e.map_err(io(&d))?;
            let p = e.path();
            let Some(rel) = p.strip_prefix(dir).ok().and_then(|r| r.to_str()).map(|r| r.replace(std::path::MAIN_SEPARATOR, "/")) else {
                tracing::warn!(path = %p.display(), "not pushed: the name is not UTF-8");
                continue;
            };
            if ignored(&rel) {
                continue;
            }
            let kind = e.file_type().map_err(io(&p))?;
            if kind.is_dir() {
                stack.push(p);
            } else if kind.is_file() {
                let size = e.metadata().map_err(io(&p))?.len();
                out.push(Entry { path: rel, file: p, size });
                if out.len() > MAX_FILES {
                    return Err(PushError::TooMany { dir: dir.to_path_buf(), n: out.len() });
                }
            } else {
                tracing::warn!(path = %p.display(), "not pushed: not a regular file");
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// `s` as one URL path segment (huggingface_hub quotes revisions with `safe=""`).
fn quote(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A streaming sha256 of a file, as the LFS oid.
fn sha256(path: &Path) -> Result<String, PushError> {
    let mut f = std::fs::File::open(path).map_err(|why| PushError::Io { path: path.into(), why })?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|why| PushError::Io { path: path.into(), why })?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// The first bytes of a file, for preupload's text/binary decision.
fn sample(path: &Path) -> Result<Vec<u8>, PushError> {
    let f = std::fs::File::open(path).map_err(|why| PushError::Io { path: path.into(), why })?;
    let mut out = Vec::with_capacity(SAMPLE);
    f.take(SAMPLE as u64).read_to_end(&mut out).map_err(|why| PushError::Io { path: path.into(), why })?;
    Ok(out)
}

/// The hub's answers, read the same way for every call.
struct Api {
    agent: ureq::Agent,
    endpoint: String,
    token: String,
}

/// A URL as an error shows it: without its query, which for storage URLs is a signature.
fn shown(url: &str) -> String {
    url.split('?').next().unwrap_or(url).to_string()
}

impl Api {
    fn hint(status: u16) -> String {
        match status {
            401 => "the token was refused: set HF_TOKEN to a valid token".into(),
            403 => "the token cannot write to this repo: use a token with write access to its namespace".into(),
            404 => "no such repo or revision: check --repo-id and --revision".into(),
            _ => "the hub refused the request".into(),
        }
    }

    fn auth(&self) -> String {
        format!("Bearer {}", self.token)
    }

    /// Whether `url` is the hub's own (the token may go there), not a storage host.
    fn is_hub(&self, url: &str) -> bool {
        url.strip_prefix(&self.endpoint).is_some_and(|rest| rest.starts_with('/'))
    }

    /// Reads a JSON answer; a status outside 2xx (and `also_ok`) is an error naming the call.
    fn answer(
        &self,
        what: &'static str,
        url: &str,
        r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
        also_ok: &[u16],
    ) -> Result<(u16, Value), PushError> {
        let mut resp = r.map_err(|e| PushError::Transport { what, url: shown(url), why: e.to_string() })?;
        let status = resp.status().as_u16();
        // The hub's bodies are small JSON; a bound keeps a wrong endpoint from filling memory.
        let body = resp.body_mut().with_config().limit(16 << 20).read_to_string().unwrap_or_default();
        if !(200..300).contains(&status) && !also_ok.contains(&status) {
            let said = serde_json::from_str::<Value>(&body).ok().and_then(|v| v["error"].as_str().map(one_line));
            let hint = match said {
                Some(e) => format!("{} (the hub says: {e})", Api::hint(status)),
                None => Api::hint(status),
            };
            return Err(PushError::Status { what, url: shown(url), status, hint });
        }
        let v = if body.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&body).map_err(|e| PushError::Malformed { what, url: shown(url), why: e.to_string() })?
        };
        Ok((status, v))
    }

    fn post_json(&self, what: &'static str, url: &str, body: &Value, also_ok: &[u16]) -> Result<(u16, Value), PushError> {
        let r = self.agent.post(url).header("Authorization", self.auth()).content_type("application/json").send(body.to_string());
        self.answer(what, url, r, also_ok)
    }

    fn get_json(&self, what: &'static str, url: &str) -> Result<Value, PushError> {
        let r = self.agent.get(url).header("Authorization", self.auth()).call();
        self.answer(what, url, r, &[]).map(|(_, v)| v)
    }
}

/// Text from the wire as one line of an error.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ").chars().take(300).collect()
}

fn malformed(what: &'static str, url: &str, why: &str) -> PushError {
    PushError::Malformed { what, url: shown(url), why: one_line(why) }
}

/// A repo ready for a commit: the token accepted by it, the repo created or found.
pub struct Target {
    api: Api,
    /// `ORG/NAME` (a bare NAME resolved to the token owner's namespace).
    pub repo_id: String,
}

/// Checks the token against the hub and creates the repo (or finds it), as the Trainer does
/// when it starts: a push that cannot happen is found out before a run, not after it.
pub fn prepare(repo_id: &str, private: bool, hub: &HubOptions) -> Result<Target, PushError> {
    if hub.offline {
        return Err(PushError::Offline);
    }
    if !is_repo_id(repo_id) {
        return Err(PushError::BadRepo(repo_id.to_string()));
    }
    let token = hub.token.clone().ok_or(PushError::NoToken)?;
    let api = Api { agent: agent(), endpoint: hub.endpoint.clone(), token };
    // A bare NAME lives in the token owner's namespace, as huggingface_hub resolves it.
    let repo_id = if repo_id.contains('/') {
        repo_id.to_string()
    } else {
        let url = format!("{}/api/whoami-v2", api.endpoint);
        let me = api.get_json("whoami", &url)?;
        let user = me["name"].as_str().filter(|n| is_repo_id(n) && !n.contains('/')).ok_or_else(|| malformed("whoami", &url, "no user name"))?;
        format!("{user}/{repo_id}")
    };
    let (org, name) = repo_id.split_once('/').unwrap_or(("", &repo_id));
    // 409: the repo exists (a second push of a run). 403: the token may not create repos
    // there but may still write to this one (a fine-grained token): the repo must exist.
    let url = format!("{}/api/repos/create", api.endpoint);
    let (status, _) = api.post_json("create repo", &url, &json!({"name": name, "organization": org, "private": private}), &[403, 409])?;
    match status {
        409 => tracing::info!(repo = %repo_id, "the repo exists; committing to it"),
        403 => {
            let info = format!("{}/api/models/{repo_id}", api.endpoint);
            if api.get_json("repo info", &info).is_err() {
                return Err(PushError::Status { what: "create repo", url, status, hint: Api::hint(status) });
            }
        }
        _ => {}
    }
    Ok(Target { api, repo_id })
}

/// Pushes `req.dir` to the hub `hub` names (HF_ENDPOINT, HF_TOKEN) in one commit.
pub fn push(req: &PushRequest, hub: &HubOptions) -> Result<Pushed, PushError> {
    check_dir(&req.dir)?;
    if req.revision.trim().is_empty() {
        return Err(PushError::BadRevision);
    }
    let target = prepare(&req.repo_id, req.private, hub)?;
    commit(&target, &req.dir, &req.revision, &req.commit_message)
}

fn check_dir(dir: &Path) -> Result<(), PushError> {
    if !dir.is_dir() {
        return Err(PushError::NotADir(dir.to_path_buf()));
    }
    if !dir.join("adapter_config.json").is_file() && !dir.join("config.json").is_file() {
        return Err(PushError::NotAModel(dir.to_path_buf()));
    }
    Ok(())
}

/// One commit of `dir` to the prepared repo: LFS objects first, then the NDJSON commit.
pub fn commit(target: &Target, dir: &Path, revision: &str, message: &str) -> Result<Pushed, PushError> {
    check_dir(dir)?;
    let (api, repo_id) = (&target.api, &target.repo_id);
    let rev = quote(revision);
    let (entries, lfs) = upload_modes(api, repo_id, &rev, files(dir)?)?;
    let mut oids = std::collections::BTreeMap::new();
    for e in entries.iter().filter(|e| lfs.contains(&e.path)) {
        oids.insert(e.path.clone(), sha256(&e.file)?);
    }
    upload_lfs(api, repo_id, revision, &entries, &oids)?;

    // One NDJSON commit: a header line, then each file inline (base64) or by its LFS oid.
    let mut body = json!({"key": "header", "value": {"summary": message, "description": ""}}).to_string();
    let mut inline = 0u64;
    for e in &entries {
        body.push('\n');
        match oids.get(&e.path) {
            Some(oid) => {
                body.push_str(&json!({"key": "lfsFile", "value": {"path": e.path, "algo": "sha256", "oid": oid, "size": e.size}}).to_string())
            }
            None => {
                inline += e.size;
                if inline > MAX_INLINE_TOTAL {
                    return Err(PushError::TooLarge { dir: dir.to_path_buf(), limit: MAX_INLINE_TOTAL });
                }
                let bytes = std::fs::read(&e.file).map_err(|why| PushError::Io { path: e.file.clone(), why })?;
                body.push_str(r#"{"key":"file","value":{"content":""#);
                base64::engine::general_purpose::STANDARD.encode_string(&bytes, &mut body);
                body.push_str(&format!(r#"","path":{},"encoding":"base64"}}}}"#, Value::from(e.path.as_str())));
            }
        }
    }
    body.push('\n');
    let url = format!("{}/api/models/{repo_id}/commit/{rev}", api.endpoint);
    let r = api.agent.post(&url).header("Authorization", api.auth()).content_type("application/x-ndjson").send(body);
    let (_, v) = api.answer("commit", &url, r, &[])?;
    let commit_url = v["commitUrl"].as_str().ok_or_else(|| malformed("commit", &url, "no commitUrl"))?.to_string();
    Ok(Pushed { repo_id: repo_id.clone(), commit_url, files: entries.len(), lfs_files: oids.len() })
}

/// The entries the commit carries (those preupload says to ignore, by the repo's .gitignore,
/// left out) and the paths that go through LFS (the hub decides: .gitattributes, size, binary
/// content). Empty files always go inline, as huggingface_hub sends them; a file the hub
/// would take inline above its own 10 MiB limit is an answer no hub gives.
fn upload_modes(api: &Api, repo_id: &str, rev: &str, entries: Vec<Entry>) -> Result<(Vec<Entry>, std::collections::BTreeSet<String>), PushError> {
    let url = format!("{}/api/models/{repo_id}/preupload/{rev}", api.endpoint);
    let mut lfs = std::collections::BTreeSet::new();
    let mut kept = Vec::with_capacity(entries.len());
    for chunk in entries.chunks(CHUNK) {
        let files = chunk
            .iter()
            .map(|e| Ok(json!({"path": e.path, "size": e.size, "sample": base64::engine::general_purpose::STANDARD.encode(sample(&e.file)?)})))
            .collect::<Result<Vec<Value>, PushError>>()?;
        let (_, v) = api.post_json("preupload", &url, &json!({ "files": files }), &[])?;
        let answered = v["files"].as_array().ok_or_else(|| malformed("preupload", &url, "no files list"))?;
        for e in chunk {
            let f = answered
                .iter()
                .find(|f| f["path"] == e.path.as_str())
                .ok_or_else(|| malformed("preupload", &url, &format!("no upload mode for {}", e.path)))?;
            if f["shouldIgnore"].as_bool() == Some(true) {
                tracing::info!(file = %e.path, "not pushed: the repo's .gitignore ignores it");
                continue;
            }
            match f["uploadMode"].as_str() {
                Some("lfs") if e.size > 0 => {
                    lfs.insert(e.path.clone());
                }
                Some("regular") if e.size > MAX_INLINE_FILE => {
                    return Err(malformed("preupload", &url, &format!("{} ({} bytes) to go inline, above the hub's 10 MiB", e.path, e.size)))
                }
                Some("lfs" | "regular") => {}
                other => return Err(malformed("preupload", &url, &format!("upload mode {other:?} for {}", e.path))),
            }
            kept.push(e.clone());
        }
    }
    Ok((kept, lfs))
}

/// Uploads the LFS objects the hub does not hold yet: git-lfs's batch API with the "basic"
/// transfer (one PUT per object to the href it gives, then its verify call if any). Files of
/// equal content are one object.
fn upload_lfs(
    api: &Api,
    repo_id: &str,
    revision: &str,
    entries: &[Entry],
    oids: &std::collections::BTreeMap<String, String>,
) -> Result<(), PushError> {
    let url = format!("{}/{repo_id}.git/info/lfs/objects/batch", api.endpoint);
    let mut objects: std::collections::BTreeMap<&str, &Entry> = std::collections::BTreeMap::new();
    for e in entries {
        if let Some(oid) = oids.get(&e.path) {
            objects.entry(oid.as_str()).or_insert(e);
        }
    }
    let objects: Vec<(&str, &Entry)> = objects.into_iter().collect();
    for chunk in objects.chunks(CHUNK) {
        let asked: Vec<Value> = chunk.iter().map(|(oid, e)| json!({"oid": oid, "size": e.size})).collect();
        let body = json!({"operation": "upload", "transfers": ["basic"], "objects": asked, "hash_algo": "sha256", "ref": {"name": revision}});
        let r = api
            .agent
            .post(&url)
            .header("Authorization", api.auth())
            .header("Accept", "application/vnd.git-lfs+json")
            .content_type("application/vnd.git-lfs+json")
            .send(body.to_string());
        let (_, v) = api.answer("LFS batch", &url, r, &[])?;
        if let Some(t) = v["transfer"].as_str().filter(|t| *t != "basic") {
            return Err(malformed("LFS batch", &url, &format!("transfer {t:?} where basic was asked")));
        }
        let answered = v["objects"].as_array().ok_or_else(|| malformed("LFS batch", &url, "no objects list"))?;
        for (oid, e) in chunk {
            let obj = answered.iter().find(|o| o["oid"] == *oid).ok_or_else(|| malformed("LFS batch", &url, &format!("no answer for {}", e.path)))?;
            if let Some(err) = obj.get("error") {
                let status = err["code"].as_u64().and_then(|c| u16::try_from(c).ok()).unwrap_or(0);
                let hint = format!("{}: {}", e.path, one_line(err["message"].as_str().unwrap_or("refused")));
                return Err(PushError::Status { what: "LFS batch", url: shown(&url), status, hint });
            }
            // No actions: the hub already holds these bytes.
            let Some(upload) = obj["actions"].get("upload") else { continue };
            let href = upload["href"].as_str().ok_or_else(|| malformed("LFS batch", &url, "upload action without href"))?;
            let header = upload["header"].as_object();
            if header.is_some_and(|h| h.contains_key("chunk_size")) {
                // The hub plans a multipart upload for files over its single-PUT limit (5 GB).
                return Err(malformed("LFS batch", &url, &format!("a multipart upload of {} ({} bytes), which push does not do", e.path, e.size)));
            }
            let mut put = api.agent.put(href);
            for (k, v) in header.into_iter().flatten() {
                if let Some(v) = v.as_str() {
                    put = put.header(k.as_str(), v);
                }
            }
            let f = std::fs::File::open(&e.file).map_err(|why| PushError::Io { path: e.file.clone(), why })?;
            tracing::info!(file = %e.path, bytes = e.size, "uploading (LFS)");
            // A File body carries its Content-Length: the signed storage URLs LFS hands out
            // refuse chunked uploads. No token goes to the storage host.
            let r = put.send(f);
            api.answer("LFS upload", href, r, &[])?;
            if let Some(verify) = obj["actions"].get("verify") {
                let vhref = verify["href"].as_str().ok_or_else(|| malformed("LFS batch", &url, "verify action without href"))?;
                let mut post = api.agent.post(vhref).content_type("application/vnd.git-lfs+json");
                for (k, v) in verify["header"].as_object().into_iter().flatten() {
                    if let Some(v) = v.as_str() {
                        post = post.header(k.as_str(), v);
                    }
                }
                // The verify call is the hub's own API and takes the token; another host never gets it.
                if api.is_hub(vhref) {
                    post = post.header("Authorization", api.auth());
                }
                let r = post.send(json!({"oid": oid, "size": e.size}).to_string());
                api.answer("LFS verify", vhref, r, &[])?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trainer_ignore_patterns() {
        for skip in ["checkpoint-10/adapter_model.safetensors", "_tmp", "_x/y", ".git/HEAD", "a/.git/x", ".cache/huggingface/lock"] {
            assert!(ignored(skip), "{skip}");
        }
        assert!(ignored(".cache/other"));
        for keep in ["adapter_model.safetensors", "runs/May01/events.out.tfevents.1", "README.md", "x/_y", "my-checkpoint-1", "cache/x"] {
            assert!(!ignored(keep), "{keep}");
        }
        assert_eq!(quote("refs/pr/1"), "refs%2Fpr%2F1");
        assert_eq!(quote("main"), "main");
    }
}
