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
    #[error("{path}: {why}")]
    Io { path: PathBuf, why: std::io::Error },
    #[error("{what}: {url} answered HTTP {status}: {hint}")]
    Status { what: &'static str, url: String, status: u16, hint: String },
    #[error("{what}: cannot reach {url}: {why}: check the network and HF_ENDPOINT")]
    Transport { what: &'static str, url: String, why: String },
    #[error("{what}: {url} answered something that is not the hub's API ({why}): check HF_ENDPOINT")]
    Malformed { what: &'static str, url: String, why: String },
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
            } else {
                tracing::warn!(path = %p.display(), "not pushed: not a regular file");
            }
        }
        if out.len() > MAX_FILES {
            return Err(PushError::TooMany { dir: dir.to_path_buf(), n: out.len() });
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

impl Api {
    fn hint(status: u16) -> String {
        match status {
            401 => "the token was refused: set HF_TOKEN to a valid token".into(),
            403 => "the token cannot write to this repo: use a token with write access to its namespace".into(),
            404 => "no such repo or revision: check --repo-id and --revision".into(),
            _ => "the hub refused the request".into(),
        }
    }

    /// Reads a JSON answer; a status outside 2xx (and `also_ok`) is an error naming the call.
    fn answer(
        &self,
        what: &'static str,
        url: &str,
        r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
        also_ok: &[u16],
    ) -> Result<(u16, Value), PushError> {
        let mut resp = r.map_err(|e| PushError::Transport { what, url: url.into(), why: e.to_string() })?;
        let status = resp.status().as_u16();
        // The hub's bodies are small JSON; a bound keeps a wrong endpoint from filling memory.
        let body = resp.body_mut().with_config().limit(16 << 20).read_to_string().unwrap_or_default();
        if !(200..300).contains(&status) && !also_ok.contains(&status) {
            let said = serde_json::from_str::<Value>(&body).ok().and_then(|v| v["error"].as_str().map(str::to_string));
            let hint = match said {
                Some(e) => format!("{} (the hub says: {e})", Api::hint(status)),
                None => Api::hint(status),
            };
            return Err(PushError::Status { what, url: url.into(), status, hint });
        }
        let v = if body.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&body).map_err(|e| PushError::Malformed { what, url: url.into(), why: e.to_string() })?
        };
        Ok((status, v))
    }

    fn post_json(&self, what: &'static str, url: &str, body: &Value, also_ok: &[u16]) -> Result<(u16, Value), PushError> {
        let r =
            self.agent.post(url).header("Authorization", format!("Bearer {}", self.token)).content_type("application/json").send(body.to_string());
        self.answer(what, url, r, also_ok)
    }

    fn get_json(&self, what: &'static str, url: &str) -> Result<Value, PushError> {
        let r = self.agent.get(url).header("Authorization", format!("Bearer {}", self.token)).call();
        self.answer(what, url, r, &[]).map(|(_, v)| v)
    }
}

fn malformed(what: &'static str, url: &str, why: &str) -> PushError {
    PushError::Malformed { what, url: url.into(), why: why.into() }
}

/// Pushes `req.dir` to the hub `hub` names (HF_ENDPOINT, HF_TOKEN) in one commit.
pub fn push(req: &PushRequest, hub: &HubOptions) -> Result<Pushed, PushError> {
    if !req.dir.is_dir() {
        return Err(PushError::NotADir(req.dir.clone()));
    }
    if !req.dir.join("adapter_config.json").is_file() && !req.dir.join("config.json").is_file() {
        return Err(PushError::NotAModel(req.dir.clone()));
    }
    if !is_repo_id(&req.repo_id) {
        return Err(PushError::BadRepo(req.repo_id.clone()));
    }
    let token = hub.token.clone().ok_or(PushError::NoToken)?;
    let entries = files(&req.dir)?;
    let api = Api { agent: agent(), endpoint: hub.endpoint.clone(), token };

    // A bare NAME lives in the token owner's namespace, as huggingface_hub resolves it.
    let repo_id = if req.repo_id.contains('/') {
        req.repo_id.clone()
    } else {
        let url = format!("{}/api/whoami-v2", api.endpoint);
        let me = api.get_json("whoami", &url)?;
        let user = me["name"].as_str().filter(|n| is_repo_id(n) && !n.contains('/')).ok_or_else(|| malformed("whoami", &url, "no user name"))?;
        format!("{user}/{}", req.repo_id)
    };
    let (org, name) = repo_id.split_once('/').unwrap_or(("", &repo_id));

    // Create the repo; 409 is "exists already", which a second push of a run meets.
    let url = format!("{}/api/repos/create", api.endpoint);
    let (status, _) = api.post_json("create repo", &url, &json!({"name": name, "organization": org, "private": req.private}), &[409])?;
    if status == 409 {
        tracing::info!(repo = %repo_id, "the repo exists; committing to it");
    }

    let rev = quote(&req.revision);
    let lfs = upload_modes(&api, &repo_id, &rev, &entries)?;
    let mut oids = std::collections::BTreeMap::new();
    for e in entries.iter().filter(|e| lfs.contains(&e.path)) {
        oids.insert(e.path.clone(), sha256(&e.file)?);
    }
    upload_lfs(&api, &repo_id, &req.revision, &entries, &oids)?;

    // One NDJSON commit: a header line, then each file inline (base64) or by its LFS oid.
    let mut body = json!({"key": "header", "value": {"summary": req.commit_message, "description": ""}}).to_string();
    for e in &entries {
        body.push('\n');
        let line = match oids.get(&e.path) {
            Some(oid) => json!({"key": "lfsFile", "value": {"path": e.path, "algo": "sha256", "oid": oid, "size": e.size}}),
            None => {
                let bytes = std::fs::read(&e.file).map_err(|why| PushError::Io { path: e.file.clone(), why })?;
                json!({"key": "file", "value": {"content": base64::engine::general_purpose::STANDARD.encode(bytes), "path": e.path, "encoding": "base64"}})
            }
        };
        body.push_str(&line.to_string());
    }
    body.push('\n');
    let url = format!("{}/api/models/{repo_id}/commit/{rev}", api.endpoint);
    let r = api.agent.post(&url).header("Authorization", format!("Bearer {}", api.token)).content_type("application/x-ndjson").send(body);
    let (_, v) = api.answer("commit", &url, r, &[])?;
    let commit_url = v["commitUrl"].as_str().ok_or_else(|| malformed("commit", &url, "no commitUrl"))?.to_string();
    Ok(Pushed { repo_id, commit_url, files: entries.len(), lfs_files: oids.len() })
}

/// The repo paths preupload says go through LFS (the hub decides: its .gitattributes, size,
/// binary content); empty files always go inline, as huggingface_hub sends them.
fn upload_modes(api: &Api, repo_id: &str, rev: &str, entries: &[Entry]) -> Result<std::collections::BTreeSet<String>, PushError> {
    let url = format!("{}/api/models/{repo_id}/preupload/{rev}", api.endpoint);
    let mut lfs = std::collections::BTreeSet::new();
    for chunk in entries.chunks(CHUNK) {
        let files = chunk
            .iter()
            .map(|e| Ok(json!({"path": e.path, "size": e.size, "sample": base64::engine::general_purpose::STANDARD.encode(sample(&e.file)?)})))
            .collect::<Result<Vec<Value>, PushError>>()?;
        let (_, v) = api.post_json("preupload", &url, &json!({ "files": files }), &[])?;
        let answered = v["files"].as_array().ok_or_else(|| malformed("preupload", &url, "no files list"))?;
        for e in chunk {
            let mode = answered
                .iter()
                .find(|f| f["path"] == e.path.as_str())
                .and_then(|f| f["uploadMode"].as_str())
                .ok_or_else(|| malformed("preupload", &url, &format!("no upload mode for {}", e.path)))?;
            match mode {
                "lfs" if e.size > 0 => {
                    lfs.insert(e.path.clone());
                }
                "lfs" | "regular" => {}
                other => return Err(malformed("preupload", &url, &format!("upload mode {other:?} for {}", e.path))),
            }
        }
    }
    Ok(lfs)
}

/// Uploads the LFS files the hub does not hold yet: git-lfs's batch API with the "basic"
/// transfer (one PUT per object to the href it gives, then its verify call if any).
fn upload_lfs(
    api: &Api,
    repo_id: &str,
    revision: &str,
    entries: &[Entry],
    oids: &std::collections::BTreeMap<String, String>,
) -> Result<(), PushError> {
    let url = format!("{}/{repo_id}.git/info/lfs/objects/batch", api.endpoint);
    let lfs: Vec<&Entry> = entries.iter().filter(|e| oids.contains_key(&e.path)).collect();
    for chunk in lfs.chunks(CHUNK) {
        let objects: Vec<Value> = chunk.iter().map(|e| json!({"oid": oids[&e.path], "size": e.size})).collect();
        let body = json!({"operation": "upload", "transfers": ["basic"], "objects": objects, "hash_algo": "sha256", "ref": {"name": revision}});
        let r = api
            .agent
            .post(&url)
            .header("Authorization", format!("Bearer {}", api.token))
            .header("Accept", "application/vnd.git-lfs+json")
            .content_type("application/vnd.git-lfs+json")
            .send(body.to_string());
        let (_, v) = api.answer("LFS batch", &url, r, &[])?;
        if let Some(t) = v["transfer"].as_str().filter(|t| *t != "basic") {
            return Err(malformed("LFS batch", &url, &format!("transfer {t:?} where basic was asked")));
        }
        let answered = v["objects"].as_array().ok_or_else(|| malformed("LFS batch", &url, "no objects list"))?;
        for e in chunk {
            let oid = &oids[&e.path];
            let obj = answered
                .iter()
                .find(|o| o["oid"] == oid.as_str())
                .ok_or_else(|| malformed("LFS batch", &url, &format!("no answer for {}", e.path)))?;
            if let Some(err) = obj.get("error") {
                return Err(PushError::Status {
                    what: "LFS batch",
                    url: url.clone(),
                    status: err["code"].as_u64().unwrap_or(0) as u16,
                    hint: format!("{}: {}", e.path, err["message"]),
                });
            }
            // No actions: the hub already holds these bytes.
            let Some(upload) = obj["actions"].get("upload") else { continue };
            let href = upload["href"].as_str().ok_or_else(|| malformed("LFS batch", &url, "upload action without href"))?;
            let mut put = api.agent.put(href);
            for (k, v) in upload["header"].as_object().into_iter().flatten() {
                put = put.header(k.as_str(), v.as_str().unwrap_or_default());
            }
            let f = std::fs::File::open(&e.file).map_err(|why| PushError::Io { path: e.file.clone(), why })?;
            tracing::info!(file = %e.path, bytes = e.size, "uploading (LFS)");
            // A File body carries its Content-Length: the signed storage URLs LFS hands out
            // refuse chunked uploads.
            let r = put.send(f);
            api.answer("LFS upload", href, r, &[])?;
            if let Some(verify) = obj["actions"].get("verify") {
                let vhref = verify["href"].as_str().ok_or_else(|| malformed("LFS batch", &url, "verify action without href"))?;
                let mut post = api.agent.post(vhref).content_type("application/vnd.git-lfs+json");
                for (k, v) in verify["header"].as_object().into_iter().flatten() {
                    post = post.header(k.as_str(), v.as_str().unwrap_or_default());
                }
                // The verify call is the hub's own API: it takes the token as well.
                let r = post.header("Authorization", format!("Bearer {}", api.token)).send(json!({"oid": oid, "size": e.size}).to_string());
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
