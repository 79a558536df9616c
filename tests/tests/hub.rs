//! Hub resolution against a local HTTP server laid out like the Hugging Face Hub: downloads into
//! a temp cache, offline reuse without requests, GLUE parquet through `load_split`, and the
//! one-line errors for offline-without-cache and missing files.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use peftrain::data::{load_split, Split, Task};
use peftrain::hub::{resolve_glue, resolve_model, HubOptions};
use peftrain_tests::{glue_dir, roberta_dir, run_reference};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Serves `root/{url path}` with an `X-Repo-Commit` header, 404 for anything else; counts
/// requests and records their Authorization headers. `root/{name}.redirect` holding `org/name`
/// makes `/{name}/...` a relative 307 to `/org/name/...`, as the hub does for renamed repos.
struct Hub {
    endpoint: String,
    requests: Arc<AtomicUsize>,
    auth: Arc<Mutex<Vec<String>>>,
}

fn serve(root: PathBuf) -> Hub {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let auth = Arc::new(Mutex::new(Vec::new()));
    let (count, seen) = (requests.clone(), auth.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let path = line.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_string();
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                    break;
                }
                if let Some(v) = h.strip_prefix("authorization: ").or_else(|| h.strip_prefix("Authorization: ")) {
                    seen.lock().unwrap().push(v.trim().to_string());
                }
            }
            let (first, rest) = path.split_once('/').unwrap_or((&path, ""));
            if let Ok(to) = std::fs::read_to_string(root.join(format!("{first}.redirect"))) {
                let _ = conn.write_all(format!("HTTP/1.1 307 Temporary Redirect\r\nLocation: /{}/{rest}\r\nX-Repo-Commit: {COMMIT}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", to.trim()).as_bytes());
                continue;
            }
            let file = root.join(&path);
            let body = if path.contains("..") { None } else { std::fs::read(&file).ok() };
            let _ = match body {
                Some(b) => conn
                    .write_all(
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Repo-Commit: {COMMIT}\r\nConnection: close\r\n\r\n", b.len()).as_bytes(),
                    )
                    .and_then(|_| conn.write_all(&b)),
                None => conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found"),
            };
        }
    });
    Hub { endpoint, requests, auth }
}

fn opts(hub: &Hub, cache: &Path, offline: bool) -> HubOptions {
    HubOptions { endpoint: hub.endpoint.clone(), cache: cache.to_path_buf(), offline, token: None, progress: false }
}

/// A model repo of the real roberta-base config and tokenizer plus stand-in weights.
fn model_repo(root: &Path, id: &str, weights: bool) {
    let dir = root.join(id).join("resolve/main");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "tokenizer.json", "vocab.json", "merges.txt"] {
        std::fs::copy(roberta_dir().join(f), dir.join(f)).unwrap();
    }
    if weights {
        std::fs::write(dir.join("model.safetensors"), b"not really safetensors").unwrap();
    }
}

#[test]
fn model_downloads_into_the_cache_then_resolves_offline() {
    let srv = tempfile::tempdir().unwrap();
    model_repo(srv.path(), "FacebookAI/roberta-base", true);
    let hub = serve(srv.path().to_path_buf());
    let cache = tempfile::tempdir().unwrap();

    let mut o = opts(&hub, cache.path(), false);
    o.token = Some("hf_secret".into());
    let dir = resolve_model("FacebookAI/roberta-base", &o).unwrap();
    let repo = cache.path().join("models--FacebookAI--roberta-base");
    assert_eq!(dir, repo.join("snapshots").join(COMMIT));
    assert_eq!(std::fs::read_to_string(repo.join("refs/main")).unwrap(), COMMIT);
    for f in ["config.json", "tokenizer.json", "vocab.json", "merges.txt", "model.safetensors"] {
        let served = std::fs::read(srv.path().join("FacebookAI/roberta-base/resolve/main").join(f)).unwrap();
        assert_eq!(std::fs::read(dir.join(f)).unwrap(), served, "{f}");
    }
    // Optional files the repo lacks are skipped, and so is the fallback weights file.
    assert!(!dir.join("vocab.txt").exists() && !dir.join("pytorch_model.bin").exists());
    let leftovers: Vec<_> = walk(&repo).into_iter().filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(".tmp"))).collect();
    assert!(leftovers.is_empty(), "temp files left in the cache: {leftovers:?}");
    let auth = hub.auth.lock().unwrap().clone();
    assert!(!auth.is_empty() && auth.iter().all(|a| a == "Bearer hf_secret"), "{auth:?}");
    peftrain::tokenize::TextTokenizer::load(&dir, 32).expect("the downloaded tokenizer loads");

    let before = hub.requests.load(Ordering::SeqCst);
    assert_eq!(resolve_model("FacebookAI/roberta-base", &opts(&hub, cache.path(), true)).unwrap(), dir);
    // Cached repos are used online too, without asking the hub.
    assert_eq!(resolve_model("FacebookAI/roberta-base", &opts(&hub, cache.path(), false)).unwrap(), dir);
    assert_eq!(hub.requests.load(Ordering::SeqCst), before, "a cached repo must not be requested again");

    // An id without an org gets `models--name`, as huggingface_hub names it; the hub answers
    // it with a redirect to the renamed repo.
    std::fs::write(srv.path().join("roberta-base.redirect"), "FacebookAI/roberta-base").unwrap();
    let (n, auths) = (hub.requests.load(Ordering::SeqCst), hub.auth.lock().unwrap().len());
    let dir = resolve_model("roberta-base", &o).unwrap();
    // Each file is a redirect then the file, and the token survives the same-host redirect.
    let followed = hub.requests.load(Ordering::SeqCst) - n;
    assert!(followed >= 10 && hub.auth.lock().unwrap().len() - auths == followed, "{followed} requests");
    assert_eq!(dir, cache.path().join("models--roberta-base/snapshots").join(COMMIT));
    assert!(dir.join("model.safetensors").is_file() && dir.join("merges.txt").is_file());
    let auth = hub.auth.lock().unwrap().clone();
    assert!(auth.iter().all(|a| a == "Bearer hf_secret"), "{auth:?}");

    // A directory is taken as is.
    let local = roberta_dir();
    assert_eq!(resolve_model(local.to_str().unwrap(), &opts(&hub, cache.path(), true)).unwrap(), local);
}

#[test]
fn glue_parquet_downloads_and_loads() {
    const N: usize = 40;
    let srv = tempfile::tempdir().unwrap();
    let glue = srv.path().join("datasets/nyu-mll/glue/resolve/main/sst2");
    for (split, tsv) in [("train", "train.tsv"), ("validation", "dev.tsv"), ("test", "test.tsv")] {
        let out = glue.join(format!("{split}-00000-of-00001.parquet"));
        let tsv = glue_dir().join("SST-2").join(tsv);
        run_reference(
            "make_parquet.py",
            &["--tsv", tsv.to_str().unwrap(), "--task", "sst2", "--out", out.to_str().unwrap(), "--limit", &N.to_string()],
        );
    }
    let hub = serve(srv.path().to_path_buf());
    let cache = tempfile::tempdir().unwrap();

    let dir = resolve_glue(Task::Sst2, &opts(&hub, cache.path(), false)).unwrap();
    assert_eq!(dir, cache.path().join("datasets--nyu-mll--glue/snapshots").join(COMMIT));
    let rows = load_split(&dir, Task::Sst2, Split::Train).unwrap();
    let mut want = load_split(&glue_dir(), Task::Sst2, Split::Train).unwrap();
    want.truncate(N);
    assert_eq!(rows.len(), N);
    for (a, b) in rows.iter().zip(&want) {
        assert_eq!((&a.text_a, &a.text_b, a.label), (&b.text_a, &b.text_b, b.label));
    }
    assert_eq!(load_split(&dir, Task::Sst2, Split::Dev).unwrap().len(), N);

    let before = hub.requests.load(Ordering::SeqCst);
    assert_eq!(resolve_glue(Task::Sst2, &opts(&hub, cache.path(), true)).unwrap(), dir);
    assert_eq!(hub.requests.load(Ordering::SeqCst), before);
}

#[test]
fn offline_with_an_empty_cache_is_one_line_naming_what_to_do() {
    let empty = tempfile::tempdir().unwrap();
    let hub = serve(empty.path().to_path_buf());
    let cache = tempfile::tempdir().unwrap();
    let e = resolve_model("roberta-base", &opts(&hub, cache.path(), true)).unwrap_err().to_string();
    assert_eq!(e.lines().count(), 1, "{e}");
    for needle in ["roberta-base", "HF_HUB_OFFLINE", "huggingface-cli download roberta-base", "--model"] {
        assert!(e.contains(needle), "{needle:?} missing from: {e}");
    }
    let e = resolve_glue(Task::Rte, &opts(&hub, cache.path(), true)).unwrap_err().to_string();
    assert_eq!(e.lines().count(), 1, "{e}");
    for needle in ["nyu-mll/glue", "HF_HUB_OFFLINE", "--glue-dir", "rte/*"] {
        assert!(e.contains(needle), "{needle:?} missing from: {e}");
    }
    assert_eq!(hub.requests.load(Ordering::SeqCst), 0, "offline must not touch the network");
}

#[test]
fn missing_files_on_the_hub_name_repo_and_file() {
    let srv = tempfile::tempdir().unwrap();
    model_repo(srv.path(), "org/no-weights", false);
    let hub = serve(srv.path().to_path_buf());
    let cache = tempfile::tempdir().unwrap();

    let e = resolve_model("org/no-such-model", &opts(&hub, cache.path(), false)).unwrap_err().to_string();
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.contains("org/no-such-model") && e.contains("config.json") && e.contains("404"), "{e}");

    let e = resolve_model("org/no-weights", &opts(&hub, cache.path(), false)).unwrap_err().to_string();
    assert!(e.contains("org/no-weights") && e.contains("model.safetensors or pytorch_model.bin"), "{e}");
    // Nothing half-resolved is taken for a complete repo afterwards.
    assert!(resolve_model("org/no-weights", &opts(&hub, cache.path(), true)).unwrap_err().to_string().contains("HF_HUB_OFFLINE"));

    let e = resolve_glue(Task::Rte, &opts(&hub, cache.path(), false)).unwrap_err().to_string();
    assert!(e.contains("nyu-mll/glue") && e.contains("rte/train-00000-of-00001.parquet"), "{e}");

    let closed = HubOptions { endpoint: "http://127.0.0.1:1".into(), ..opts(&hub, cache.path(), false) };
    let e = resolve_model("org/other", &closed).unwrap_err().to_string();
    assert!(e.contains("org/other") && e.contains("http://127.0.0.1:1/org/other/resolve/main/config.json") && e.contains("HF_ENDPOINT"), "{e}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn train_resolves_model_and_glue_through_the_hub() {
    let srv = tempfile::tempdir().unwrap();
    // A real (tiny) checkpoint with the roberta-base tokenizer, served as org/tiny-roberta.
    let made = peftrain_tests::tiny_roberta(srv.path(), 3);
    let repo = srv.path().join("org/tiny-roberta/resolve/main");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::copy(made.join("model.safetensors"), repo.join("model.safetensors")).unwrap();
    std::fs::copy(made.join("config.json"), repo.join("config.json")).unwrap();
    for f in ["tokenizer.json", "vocab.json", "merges.txt"] {
        std::fs::copy(roberta_dir().join(f), repo.join(f)).unwrap();
    }
    let glue = srv.path().join("datasets/nyu-mll/glue/resolve/main/sst2");
    for (split, tsv) in [("train", "train.tsv"), ("validation", "dev.tsv"), ("test", "test.tsv")] {
        let out = glue.join(format!("{split}-00000-of-00001.parquet"));
        let tsv = glue_dir().join("SST-2").join(tsv);
        run_reference("make_parquet.py", &["--tsv", tsv.to_str().unwrap(), "--task", "sst2", "--out", out.to_str().unwrap(), "--limit", "64"]);
    }
    let hub = serve(srv.path().to_path_buf());
    let cache = tempfile::tempdir().unwrap();
    // Run from a directory without ../shared and without GLUE_DIR: GLUE comes from the hub.
    let cwd = tempfile::tempdir().unwrap();
    let run = |offline: &str, out: &str| {
        std::process::Command::new(peftrain_tests::bin("peftrain"))
            .args(["train", "--model", "org/tiny-roberta", "--task", "sst2", "--method", "lora", "--max-steps", "4", "--batch-size", "8"])
            .args(["--logging-steps", "2", "--output-dir", out])
            .current_dir(cwd.path())
            .env_remove("GLUE_DIR")
            .env("HF_ENDPOINT", &hub.endpoint)
            .env("HF_HUB_CACHE", cache.path())
            .env("HF_HUB_OFFLINE", offline)
            .env("RUST_LOG", "error")
            .env("PEFTRAIN_WORKER_BIN", peftrain_tests::bin("peftrain-worker"))
            .output()
            .unwrap()
    };
    let o = run("0", "first");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("TrainOutput(global_step=4"));
    // peft's adapter names the base by its hub id, as peft's own save_pretrained does.
    let adapter: serde_json::Value = serde_json::from_slice(&std::fs::read(cwd.path().join("first/adapter_config.json")).unwrap()).unwrap();
    assert_eq!(adapter["base_model_name_or_path"], "org/tiny-roberta");
    // Everything is cached now: offline works, and asks the hub nothing.
    let before = hub.requests.load(Ordering::SeqCst);
    let o = run("1", "second");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(hub.requests.load(Ordering::SeqCst), before);
    // Offline with nothing cached: one line saying what to do.
    let empty = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(peftrain_tests::bin("peftrain"))
        .args(["train", "--model", "org/not-cached", "--task", "sst2", "--output-dir", "x"])
        .current_dir(cwd.path())
        .env("HF_HUB_CACHE", empty.path())
        .env("HF_HUB_OFFLINE", "1")
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert!(!o.status.success());
    peftrain_tests::assert_one_clear_line(&String::from_utf8_lossy(&o.stderr), &["org/not-cached", "HF_HUB_OFFLINE", "--model"]);
}
