//! The deployment is checked with the suite: every kustomize overlay renders with kubectl and
//! validates offline against the Kubernetes schemas, the JobSet CRD and cert-manager's
//! validators (tests/deploy/check.sh; the image build runs where Docker is available and is
//! skipped with a printed reason where it is not). Then every overlay's rendered JobSet runs as
//! local processes with its containers' exact args and env (tests/deploy/run_rendered.py) and
//! trains the tiny test model to completion, so manifests and binaries cannot drift apart.

use std::path::{Path, PathBuf};
use std::process::Command;

use peftrain_tests::{bin, glue_dir, metrics, minilm_dir, python, roberta_dir, root, run_reference};

#[test]
fn manifests_render_and_validate() {
    let out = Command::new(root().join("tests/deploy/check.sh")).output().expect("run tests/deploy/check.sh");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(out.status.success(), "tests/deploy/check.sh failed:\n{text}");
}

fn kubectl() -> String {
    std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into())
}

/// A tiny model of `family` with a real tokenizer beside it, as the cache would hold it.
fn tiny_with_tokenizer(dir: &Path, family: &str) -> PathBuf {
    let out = dir.join(format!("tiny-{family}"));
    run_reference("hf_model.py", &["tiny", "--family", family, "--out", out.to_str().unwrap(), "--seed", "5"]);
    let tok = if family == "bert" { minilm_dir() } else { roberta_dir() };
    for f in ["tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json", "vocab.json", "merges.txt"] {
        if tok.join(f).exists() {
            std::fs::copy(tok.join(f), out.join(f)).unwrap();
        }
    }
    out
}

/// Renders `overlay`, runs it as processes, and returns the claim directory and the log.
fn run_overlay(overlay: &str, work: &Path, populate: &[(&str, &Path)], env: &[&str]) -> (PathBuf, String) {
    std::fs::create_dir_all(work).unwrap();
    let rendered = work.join("rendered.yaml");
    let r = Command::new(kubectl()).args(["kustomize", root().join("deploy").join(overlay).to_str().unwrap()]).output().expect("kubectl");
    assert!(r.status.success(), "kubectl kustomize deploy/{overlay}: {}", String::from_utf8_lossy(&r.stderr));
    std::fs::write(&rendered, &r.stdout).unwrap();
    let token = peftrain_net::Security::random_token().unwrap();
    let mut cmd = Command::new(python());
    cmd.arg(root().join("tests/deploy/run_rendered.py"))
        .arg(&rendered)
        .args(["--bin", bin("peftrain").to_str().unwrap(), "--work", work.join("run").to_str().unwrap(), "--timeout", "400"])
        .args(["--secret", &format!("peftrain-token/token={token}")]);
    for (mount, src) in populate {
        cmd.args(["--populate", &format!("{mount}={}", src.display())]);
    }
    for e in env {
        cmd.args(["--env", e]);
    }
    // The workers exec peftrain-worker beside peftrain, as in the image.
    let out = cmd.env("RUST_LOG", "info").output().expect("run_rendered.py");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "deploy/{overlay} as processes failed:\n{text}");
    let summary: serde_json::Value = serde_json::from_str(text.trim().lines().last().unwrap()).unwrap();
    (PathBuf::from(summary["paths"]["peftrain-cache"].as_str().unwrap()), text)
}

/// The run finished: every step logged once, the adapter and the final checkpoint written.
fn assert_finished(out: &Path, steps: u64) {
    assert!(out.join("adapter_model.safetensors").exists(), "no adapter in {}", out.display());
    assert!(out.join(format!("checkpoint-{steps}")).is_dir(), "no final checkpoint-{steps} in {}", out.display());
    let events = metrics(out);
    let logged: Vec<u64> = events.iter().filter(|e| e.get("loss").is_some()).filter_map(|e| e["step"].as_u64()).collect();
    assert!(logged.windows(2).all(|w| w[0] < w[1]), "steps logged out of order or twice: {logged:?}");
    let last = events.iter().filter_map(|e| e.get("step").and_then(|s| s.as_u64())).max();
    assert_eq!(last, Some(steps), "the last step in metrics.jsonl");
}

#[test]
fn every_overlay_runs_as_local_processes_and_trains_to_completion() {
    let _serial = peftrain_tests::one_at_a_time();
    let d = tempfile::tempdir().unwrap();
    let glue = glue_dir();
    let bert = tiny_with_tokenizer(d.path(), "bert");
    let roberta = tiny_with_tokenizer(d.path(), "roberta");
    // dev: exactly as rendered (all-MiniLM-L6-v2's place holds the tiny BERT): 4000 SST-2
    // examples, one epoch of 250 steps, 2 workers.
    let w = d.path().join("dev");
    let (cache, _) = run_overlay("overlays/dev", &w, &[("/cache/models/all-MiniLM-L6-v2", &bert), ("/cache/glue", &glue)], &[]);
    assert_finished(&cache.join("outputs/dev-sst2-lora-minilm"), 250);
    // base, gpu and gpu-tls train roberta-base for 3 epochs of SST-2 on GPUs: here the tiny
    // RoBERTa, 30 steps, on CPU threads. Everything else is the manifests'.
    let short = ["PEFTRAIN_MAX_STEPS=30", "PEFTRAIN_THREADS=1"];
    let on_cpu = ["PEFTRAIN_MAX_STEPS=30", "PEFTRAIN_THREADS=1", "PEFTRAIN_DEVICE=cpu"];
    for (overlay, env, workers) in [("base", &short[..], 2), ("overlays/gpu", &on_cpu[..], 4), ("overlays/gpu-tls", &on_cpu[..], 4)] {
        let w = d.path().join(overlay.replace('/', "_"));
        let (cache, log) = run_overlay(overlay, &w, &[("/cache/models/roberta-base", &roberta), ("/cache/glue", &glue)], env);
        let out = cache.join("outputs/sst2-lora-roberta-base");
        assert_finished(&out, 30);
        let per_step: Vec<u64> = metrics(&out).iter().filter_map(|e| e.get("workers").and_then(|v| v.as_u64())).collect();
        assert!(per_step.iter().all(|&n| n == workers), "{overlay}: every step on {workers} workers: {per_step:?}");
        if overlay.ends_with("tls") {
            assert!(log.contains("--coordinator https://127.0.0.1:"), "{overlay}: workers dial the coordinator over TLS:\n{log}");
        }
    }
}
