//! `peftrain push` against a local server speaking the Hugging Face Hub's upload API
//! (tests/reference/hub_server.py: create, preupload, git-lfs batch, NDJSON commit, strict like
//! the hub). huggingface_hub's own `upload_folder`, called as Trainer.push_to_hub calls it,
//! pushes the same directory to a second repo: both commits must hold the same files, bytes
//! and upload modes, and `snapshot_download` must read peftrain's back.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use peftrain_tests::{assert_one_clear_line, bin, glue_dir, python, roberta_dir, root, run_reference, tiny_roberta, KillOnDrop};
use serde_json::Value;

const TOKEN: &str = "hf_local_test_token";

/// The server and its endpoint; dropping it ends the process.
struct Server {
    _child: KillOnDrop,
    endpoint: String,
}

fn serve(store: &Path) -> Server {
    let mut child = Command::new(python())
        .arg(root().join("tests/reference/hub_server.py"))
        .arg(store)
        .args(["--token", TOKEN, "--user", "peftrain-test"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start hub_server.py");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("hub_server.py said {line:?}"));
    Server { endpoint: v["endpoint"].as_str().unwrap().to_string(), _child: KillOnDrop(child) }
}

fn push(endpoint: &str, token: Option<&str>, args: &[&str]) -> std::process::Output {
    let mut c = Command::new(bin("peftrain"));
    // The suite runs offline (scripts/env.sh); a push to the local server is the exception.
    c.arg("push")
        .args(args)
        .env("HF_ENDPOINT", endpoint)
        .env_remove("HF_HUB_OFFLINE")
        .env("RUST_LOG", "error")
        .env_remove("HF_TOKEN")
        .env("HF_HOME", "/nonexistent");
    if let Some(t) = token {
        c.env("HF_TOKEN", t);
    }
    c.output().unwrap()
}

/// A finished LoRA run with what a Trainer output holds: adapter, model card, trainer_state,
/// TensorBoard events, curves.png, and a checkpoint that must not be pushed.
/// `--push-to-hub` pushes it to `hub` at the end, as the Trainer does.
fn trained(d: &Path, hub: &Server) -> std::path::PathBuf {
    let model = tiny_roberta(d, 11);
    let out = d.join("run");
    let (tok, glue) = (roberta_dir(), glue_dir());
    let o = Command::new(bin("peftrain"))
        .args([
            "train",
            "--model",
            model.to_str().unwrap(),
            "--tokenizer",
            tok.to_str().unwrap(),
            "--glue-dir",
            glue.to_str().unwrap(),
            "--task",
            "sst2",
            "--method",
            "lora",
            "--train-limit",
            "48",
            "--eval-limit",
            "24",
            "--batch-size",
            "8",
            "--max-steps",
            "6",
            "--save-steps",
            "3",
            "--report-to",
            "tensorboard",
            "--base-dtype",
            "fp32",
            "--output-dir",
            out.to_str().unwrap(),
            "--push-to-hub",
            "--hub-model-id",
            "peftrain-test/from-train",
        ])
        .env("RUST_LOG", "warn")
        .env("PEFTRAIN_WORKER_BIN", bin("peftrain-worker"))
        .env("HF_ENDPOINT", &hub.endpoint)
        .env_remove("HF_HUB_OFFLINE")
        .env("HF_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("peftrain-test/from-train"));
    // The card's snippet loads the adapter from the repo it was pushed to.
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(card.contains(r#"PeftModel.from_pretrained(base, "peftrain-test/from-train")"#), "{card}");
    out
}

/// The paths and sha256s of a repo's last commit in the server's log.
fn last_commit(store: &Path, repo: &str) -> Vec<(String, String)> {
    let log = std::fs::read_to_string(store.join("log.jsonl")).unwrap();
    let c =
        log.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()).rfind(|v| v["repo"] == repo).unwrap_or_else(|| panic!("no commit to {repo}"));
    c["files"].as_array().unwrap().iter().map(|f| (f["path"].as_str().unwrap().to_string(), f["sha256"].as_str().unwrap().to_string())).collect()
}

#[test]
fn push_commits_what_upload_folder_commits_and_snapshot_download_reads_it_back() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("hub");
    let hub = serve(&store);
    let out = trained(d.path(), &hub);
    assert!(std::fs::read_dir(&out).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().starts_with("checkpoint-")));

    // Two files of equal content are one LFS object (the server's upload tokens are single-use).
    std::fs::copy(out.join("adapter_model.safetensors"), out.join("adapter_model_copy.safetensors")).unwrap();
    let o = push(&hub.endpoint, Some(TOKEN), &[out.to_str().unwrap(), "--repo-id", "peftrain-test/tiny-lora"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(said.contains("peftrain-test/tiny-lora") && said.contains("/commit/"), "{said}");
    // A bare name lands in the token owner's namespace; a second push to an existing repo works.
    let o = push(&hub.endpoint, Some(TOKEN), &[out.to_str().unwrap(), "--repo-id", "tiny-lora"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let cache = d.path().join("hf-cache");
    let r: Value = serde_json::from_str(&run_reference(
        "hub_roundtrip.py",
        &[
            &hub.endpoint,
            TOKEN,
            store.to_str().unwrap(),
            out.to_str().unwrap(),
            "peftrain-test/tiny-lora",
            "peftrain-test/tiny-lora-py",
            cache.to_str().unwrap(),
        ],
    ))
    .unwrap();
    let (ours, theirs) = (r["pushed"].as_object().unwrap(), r["py"].as_object().unwrap());
    // Same paths, bytes and LFS/regular split as huggingface_hub's own upload of the directory.
    assert_eq!(ours, theirs);
    for must in ["adapter_model.safetensors", "adapter_config.json", "README.md", "trainer_state.json", "curves.png"] {
        assert!(ours.contains_key(must), "{must} not pushed: {:?}", ours.keys().collect::<Vec<_>>());
    }
    assert!(ours.keys().any(|p| p.starts_with("runs/") && p.contains("tfevents")), "TensorBoard events not pushed");
    assert!(!ours.keys().any(|p| p.starts_with("checkpoint-")), "checkpoints are not pushed");
    assert_eq!(ours["adapter_model.safetensors"]["mode"], "lfs");
    assert_eq!(ours["adapter_config.json"]["mode"], "regular");
    // What the hub holds is what the directory holds, byte for byte, read back by snapshot_download.
    let downloaded = r["downloaded"].as_object().unwrap();
    assert_eq!(downloaded.len(), ours.len());
    for (path, info) in ours {
        assert_eq!(downloaded[path], info["sha256"], "{path}");
        let local = std::fs::read(out.join(path)).unwrap();
        assert_eq!(info["sha256"].as_str().unwrap(), hex_sha256(&local), "{path}");
    }
    assert_eq!(r["summaries"]["peftrain-test/tiny-lora"], "End of training");
    // train --push-to-hub committed the same directory at the end of the run.
    let mut pushed_later = last_commit(&store, "peftrain-test/tiny-lora");
    pushed_later.retain(|(p, _)| p != "adapter_model_copy.safetensors");
    assert_eq!(last_commit(&store, "peftrain-test/from-train"), pushed_later);
}

fn hex_sha256(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

#[test]
fn push_refusals_are_one_clear_line() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("hub");
    let hub = serve(&store);
    let dir = d.path().join("adapter");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("adapter_config.json"), "{}").unwrap();
    let dir_s = dir.to_str().unwrap();

    let fails = |token: Option<&str>, args: &[&str], code: i32, needles: &[&str]| {
        let o = push(&hub.endpoint, token, args);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        assert_one_clear_line(&String::from_utf8_lossy(&o.stderr), needles);
    };
    fails(None, &[dir_s, "--repo-id", "peftrain-test/x"], 2, &["HF_TOKEN"]);
    // train --push-to-hub without a token is refused before anything trains.
    let o = Command::new(bin("peftrain"))
        .args(["train", "--model", "/nonexistent-model", "--output-dir", d.path().join("never").to_str().unwrap(), "--push-to-hub"])
        .env("HF_ENDPOINT", &hub.endpoint)
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_TOKEN")
        .env("HF_HOME", "/nonexistent")
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert_one_clear_line(&String::from_utf8_lossy(&o.stderr), &["--push-to-hub", "HF_TOKEN"]);
    assert!(!d.path().join("never").exists());
    fails(Some(TOKEN), &[dir_s, "--repo-id", "../x"], 2, &["--repo-id", "../x"]);
    let o = Command::new(bin("peftrain"))
        .args(["push", dir_s, "--repo-id", "peftrain-test/x"])
        .env("HF_ENDPOINT", &hub.endpoint)
        .env("HF_TOKEN", TOKEN)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert_one_clear_line(&String::from_utf8_lossy(&o.stderr), &["HF_HUB_OFFLINE"]);
    fails(Some(TOKEN), &["/nonexistent/run", "--repo-id", "peftrain-test/x"], 2, &["/nonexistent/run"]);
    let empty = d.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    fails(Some(TOKEN), &[empty.to_str().unwrap(), "--repo-id", "peftrain-test/x"], 2, &["adapter_config.json"]);
    // The hub's refusals name the call, the status and what to do.
    fails(Some("hf_wrong"), &[dir_s, "--repo-id", "peftrain-test/x"], 1, &["401", "HF_TOKEN"]);
    fails(Some(TOKEN), &[dir_s, "--repo-id", "someone-else/x"], 1, &["403", "write access"]);
    assert!(!store.join("repos/someone-else").exists() && !store.join("repos/peftrain-test/x").exists(), "nothing was created");
}
