//! Nothing lost, nothing panics, through the real binaries: a reused output directory, a merge
//! into its own model, a tampered checkpoint, SIGTERM and SIGSTOP of the coordinator, NaN
//! weights, hostile config.json sizes, non-float tensors, absurd flags (a table and a property
//! test), local worker counts, GLUE files with a byte-order mark, config-file keys, and a worker
//! fed bad segment ids or flooded with idle connections over its real socket.
// one_at_a_time's guard serialises whole tests (each on its own runtime, taking the lock once
// at the start), so holding it across awaits cannot deadlock.
#![allow(clippy::await_holding_lock)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use peftrain_proto::v1 as pb;
use peftrain_tests::{
    assert_one_clear_line, bin, glue_dir, logged, peftrain, peftrain_fails, roberta_dir, run_reference, spawn_logged, tiny_roberta, KillOnDrop,
};
use proptest::prelude::*;

/// `peftrain train` on the tiny model: LoRA, SST-2's first 64 rows, batch 8.
fn train_args(model: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let (tok, glue) = (roberta_dir(), glue_dir());
    let mut v: Vec<String> = [
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
        "64",
        "--eval-limit",
        "8",
        "--batch-size",
        "8",
        "--output-dir",
        out.to_str().unwrap(),
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(|s| s.as_str()).collect()
}

fn checkpoints(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().to_string()).filter(|n| n.starts_with("checkpoint-")).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().filter_map(|e| e.ok()) {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// `snap` of `from` as it reads once the directory is renamed to `to`.
fn snapshot_moved(snap: &[(PathBuf, Vec<u8>)], from: &Path, to: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<(PathBuf, Vec<u8>)> = snap.iter().map(|(p, b)| (to.join(p.strip_prefix(from).unwrap()), b.clone())).collect();
    v.sort();
    v
}

/// An error line that says a cause twice (`X: X`) repeats itself.
fn assert_no_repetition(line: &str) {
    let parts: Vec<&str> = line.split(": ").collect();
    for w in parts.windows(2) {
        assert_ne!(w[0], w[1], "a cause printed twice: {line}");
    }
    for k in 1..parts.len() {
        let (a, b) = (parts[..k].join(": "), parts[k..].join(": "));
        assert!(!(a.len() > 8 && b.contains(&a)), "a message printed twice: {line}");
    }
}

/// `peftrain` with `args`, stderr as a channel of lines, killed if the test fails.
fn spawn_peftrain(args: Vec<String>, rust_log: &str, envs: &[(&str, &str)]) -> (KillOnDrop, std::sync::mpsc::Receiver<String>) {
    let mut cmd = Command::new(bin("peftrain"));
    cmd.args(args).env("RUST_LOG", rust_log).env("PEFTRAIN_WORKER_BIN", bin("peftrain-worker")).stdout(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let (child, log) = spawn_logged(cmd);
    (KillOnDrop(child), log)
}

/// Waits until the run has logged twice (training is under way).
fn wait_training(out: &Path) {
    let started = Instant::now();
    while !std::fs::read_to_string(out.join("metrics.jsonl")).is_ok_and(|t| t.lines().count() >= 2) {
        assert!(started.elapsed() < Duration::from_secs(120), "training never started");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `signal` and waits (at most `limit`) for the process to exit.
fn signal_and_wait(child: &mut KillOnDrop, signal: &str, limit: Duration) -> std::process::ExitStatus {
    Command::new("kill").args([signal, &child.0.id().to_string()]).status().unwrap();
    let sent = Instant::now();
    loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            return s;
        }
        assert!(sent.elapsed() < limit, "{signal} not honoured within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn trainable_bytes(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("trainable.safetensors")).expect("trainable.safetensors")
}

#[test]
fn a_reused_output_directory_is_refused_and_rotation_deletes_only_this_run_s_checkpoints() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_roberta(d.path(), 3);
    let out = d.path().join("out");
    let save = ["--save-steps", "2", "--save-total-limit", "2"];
    peftrain(&refs(&train_args(&model, &out, &[&["--max-steps", "8"][..], &save[..]].concat())));
    assert_eq!(checkpoints(&out), ["checkpoint-6", "checkpoint-8"]);
    let before = snapshot(&out);

    // A fresh run into it: refused, naming the directory and the flag, and nothing touched.
    let (code, err) = peftrain_fails(&refs(&train_args(&model, &out, &[&["--max-steps", "4"][..], &save[..]].concat())));
    assert_eq!(code, 2);
    assert_one_clear_line(&err, &[out.to_str().unwrap(), "--overwrite-output-dir", "--resume"]);
    assert_eq!(snapshot(&out), before, "a refused run changed the directory");

    // With --overwrite-output-dir: the earlier run's checkpoints go first, so a later --resume
    // continues the new run, not the old one.
    peftrain(&refs(&train_args(&model, &out, &[&["--max-steps", "4", "--overwrite-output-dir"][..], &save[..]].concat())));
    assert_eq!(checkpoints(&out), ["checkpoint-2", "checkpoint-4"]);

    // A checkpoint of another run in the directory is never rotated away.
    let other = d.path().join("other");
    peftrain(&refs(&train_args(&model, &other, &["--max-steps", "2", "--save-steps", "1"])));
    let foreign = out.join("checkpoint-1");
    std::fs::rename(other.join("checkpoint-1"), &foreign).unwrap();
    let foreign_before = snapshot(&foreign);
    let resume = out.join("checkpoint-4");
    peftrain(&refs(&train_args(
        &model,
        &out,
        &["--max-steps", "8", "--save-steps", "2", "--save-total-limit", "1", "--resume", resume.to_str().unwrap()],
    )));
    assert_eq!(checkpoints(&out), ["checkpoint-1", "checkpoint-8"]);
    assert_eq!(snapshot(&foreign), foreign_before);
    // Nor is one replaced that sits where this run's next checkpoint would go.
    let in_the_way = out.join("checkpoint-10");
    std::fs::rename(&foreign, &in_the_way).unwrap();
    let resume = out.join("checkpoint-8");
    let (_, err) =
        peftrain_fails(&refs(&train_args(&model, &out, &["--max-steps", "12", "--save-steps", "2", "--resume", resume.to_str().unwrap()])));
    assert!(err.contains("checkpoint-10") && err.contains("another run"), "{err}");
    assert_eq!(snapshot(&in_the_way), snapshot_moved(&foreign_before, &foreign, &in_the_way));
    std::fs::rename(&in_the_way, &foreign).unwrap();

    // `--resume` that finds nothing to continue, or continues a checkpoint kept elsewhere, is
    // a fresh start as far as a non-empty output directory is concerned.
    let bare = d.path().join("bare");
    std::fs::create_dir_all(&bare).unwrap();
    std::fs::write(bare.join("metrics.jsonl"), "{\"step\": 1}\n").unwrap();
    let (code, err) = peftrain_fails(&refs(&train_args(&model, &bare, &["--max-steps", "2", "--resume"])));
    assert_eq!(code, 2);
    assert_one_clear_line(&err, &[bare.to_str().unwrap(), "--overwrite-output-dir"]);
    let elsewhere = out.join("checkpoint-8");
    let (code, _) = peftrain_fails(&refs(&train_args(&model, &bare, &["--max-steps", "10", "--resume", elsewhere.to_str().unwrap()])));
    assert_eq!(code, 2);
    assert_eq!(std::fs::read_to_string(bare.join("metrics.jsonl")).unwrap(), "{\"step\": 1}\n");
}

#[test]
fn no_command_writes_where_it_reads() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_roberta(d.path(), 3);
    let tok = roberta_dir();
    // A model directory with tokenizer files, as a merge would copy them.
    for f in ["vocab.json", "merges.txt"] {
        std::fs::copy(tok.join(f), model.join(f)).unwrap();
    }
    let out = d.path().join("out");
    peftrain(&refs(&train_args(&model, &out, &["--max-steps", "2"])));
    let before = snapshot(&model);
    for target in [model.clone(), model.join("merged"), d.path().to_path_buf(), out.clone()] {
        let (code, err) =
            peftrain_fails(&["merge", "--model", model.to_str().unwrap(), "--adapter", out.to_str().unwrap(), "--output", target.to_str().unwrap()]);
        assert_eq!(code, 2, "{err}");
        assert_one_clear_line(&err, &["--output", "overlaps", "never writes where it reads"]);
    }
    // The worker's own merge refuses it too (it may be run directly).
    let o = Command::new(bin("peftrain-worker"))
        .args([
            "merge",
            "--model",
            model.to_str().unwrap(),
            "--adapter",
            out.to_str().unwrap(),
            "--output",
            model.to_str().unwrap(),
            "--method",
            "lora",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(snapshot(&model), before, "the model directory changed");

    // Training into the model or the GLUE directory, predicting into the model: refused.
    let (code, err) = peftrain_fails(&refs(&train_args(&model, &model.join("run"), &["--max-steps", "2"])));
    assert_eq!(code, 2);
    assert_one_clear_line(&err, &["--output-dir", "overlaps --model"]);
    let (_, err) = peftrain_fails(&refs(&train_args(&model, &glue_dir().join("SST-2"), &["--max-steps", "2"])));
    assert_one_clear_line(&err, &["--output-dir", "overlaps --glue-dir"]);
    let mut p = train_args(&model, &out, &[]);
    p[0] = "predict".into();
    p.retain(|a| a != "--quiet");
    let at = p.iter().position(|a| a == "--output-dir").unwrap();
    p.drain(at..at + 2);
    p.extend(["--adapter".into(), out.to_str().unwrap().into(), "--output".into(), model.join("preds.tsv").to_str().unwrap().into()]);
    let (_, err) = peftrain_fails(&refs(&p));
    assert_one_clear_line(&err, &["--output", "overlaps --model"]);
    assert_eq!(snapshot(&model), before);
    // A report into one of the runs it reads would replace that run's report.md.
    let run_before = snapshot(&out);
    let (code, err) = peftrain_fails(&["report", "--runs", out.to_str().unwrap(), "--output-dir", out.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert_one_clear_line(&err, &["--output-dir", "inside --runs", "never writes where it reads"]);
    assert_eq!(snapshot(&out), run_before);
}

#[test]
fn a_tampered_checkpoint_is_refused_and_nothing_is_deleted() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_roberta(d.path(), 3);
    let out = d.path().join("out");
    peftrain(&refs(&train_args(&model, &out, &["--max-steps", "8", "--save-steps", "2"])));
    let state = out.join("checkpoint-8/peftrain_state.json");
    let good = std::fs::read_to_string(&state).unwrap();
    for (what, text) in [
        ("directory", good.replace("\"global_step\": 8", "\"global_step\": 99999999999")),
        // Three skipped updates claimed, where the optimizer applied all eight.
        ("optimizer_step", good.replace("\"steps_skipped\": 0", "\"steps_skipped\": 3")),
    ] {
        assert_ne!(text, good);
        std::fs::write(&state, &text).unwrap();
        let before = snapshot(&out);
        let (code, err) =
            peftrain_fails(&refs(&train_args(&model, &out, &["--max-steps", "12", "--save-steps", "2", "--save-total-limit", "1", "--resume"])));
        assert_ne!(code, 0);
        assert_one_clear_line(&err, &["--resume", "checkpoint-", "damaged or edited checkpoint", what]);
        assert_eq!(snapshot(&out), before, "a refused resume changed the directory ({what})");
    }
}

#[test]
fn sigterm_checkpoints_at_a_step_boundary_and_resume_continues_bit_for_bit() {
    let _serial = peftrain_tests::one_at_a_time();
    let d = tempfile::tempdir().unwrap();
    let model = tiny_roberta(d.path(), 5);
    let (whole, cut) = (d.path().join("whole"), d.path().join("cut"));
    let steps = ["--max-steps", "2000", "--logging-steps", "50"];
    peftrain(&refs(&train_args(&model, &whole, &steps)));

    let (mut child, log) = spawn_peftrain(train_args(&model, &cut, &steps), "error", &[]);
    wait_training(&cut);
    let workers = String::from_utf8(Command::new("pgrep").args(["-P", &child.0.id().to_string()]).output().unwrap().stdout).unwrap();
    let workers: Vec<&str> = workers.split_whitespace().collect();
    assert_eq!(workers.len(), 1, "one local worker");
    let status = signal_and_wait(&mut child, "-TERM", Duration::from_secs(30));
    let lines: Vec<String> = log.try_iter().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(status.code(), Some(0), "{lines:?}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("stopped by SIGTERM") && lines[0].contains("--resume"), "{}", lines[0]);
    let cps = checkpoints(&cut);
    assert_eq!(cps.len(), 1, "{cps:?}");
    let step: u64 = cps[0].trim_start_matches("checkpoint-").parse().unwrap();
    assert!(step > 0 && step < 2000, "stopped at step {step}");
    assert!(lines[0].contains(&format!("after step {step} of 2000")), "{}", lines[0]);
    for pid in workers {
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "worker {pid} left behind");
    }

    peftrain(&refs(&train_args(&model, &cut, &[&steps[..], &["--resume"][..]].concat())));
    assert_eq!(trainable_bytes(&cut), trainable_bytes(&whole), "the resumed run differs from the uninterrupted one");
}

#[test]
fn a_paused_coordinator_re_checks_its_workers_and_carries_on() {
    let _serial = peftrain_tests::one_at_a_time();
    let d = tempfile::tempdir().unwrap();
    let model = tiny_roberta(d.path(), 6);
    let out = d.path().join("out");
    let (mut child, log) = spawn_peftrain(
        train_args(&model, &out, &["--workers", "2", "--threads", "1", "--worker-timeout", "3", "--max-steps", "1000000", "--logging-steps", "100"]),
        "warn",
        &[],
    );
    wait_training(&out);
    let pid = child.0.id().to_string();
    // Paused for well over --worker-timeout, well under the workers' --coordinator-timeout.
    Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    std::thread::sleep(Duration::from_secs(8));
    Command::new("kill").args(["-CONT", &pid]).status().unwrap();
    let logged_steps = |t: &str| t.lines().filter(|l| l.contains("\"loss\"")).count();
    let at_resume = logged_steps(&std::fs::read_to_string(out.join("metrics.jsonl")).unwrap());
    let resumed = Instant::now();
    while logged_steps(&std::fs::read_to_string(out.join("metrics.jsonl")).unwrap()) < at_resume + 3 {
        assert!(resumed.elapsed() < Duration::from_secs(60), "training did not carry on after the pause");
        if child.0.try_wait().unwrap().is_some() {
            panic!("the run ended after the pause: {:?}", log.try_iter().collect::<Vec<_>>());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = signal_and_wait(&mut child, "-TERM", Duration::from_secs(30));
    let lines: Vec<String> = log.try_iter().collect();
    assert_eq!(status.code(), Some(0), "{lines:?}");
    assert!(!lines.iter().any(|l| l.contains("lost") || l.contains("disagree")), "workers were taken for lost: {lines:?}");
    assert_eq!(lines.iter().filter(|l| l.contains("paused for")).count(), 1, "{lines:?}");
    // Every logged step once.
    let steps: Vec<u64> = peftrain_tests::metrics(&out).iter().filter(|e| e.get("loss").is_some()).map(|e| e["step"].as_u64().unwrap()).collect();
    let mut dedup = steps.clone();
    dedup.dedup();
    assert_eq!(steps, dedup);
}

#[test]
fn a_run_whose_every_step_is_non_finite_stops_with_an_error() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_roberta(d.path(), 3);
    run_reference(
        "hf_model.py",
        &["corrupt", "--model", model.to_str().unwrap(), "--tensor", "roberta.embeddings.LayerNorm.weight", "--mode", "nan"],
    );
    let out = d.path().join("out");
    let (code, err) = peftrain_fails(&refs(&train_args(&model, &out, &["--max-steps", "40", "--max-skipped-steps", "5"])));
    assert_eq!(code, 1);
    let last = err.lines().last().unwrap();
    assert!(last.contains("5 consecutive steps (1 to 5)") && last.contains("--max-skipped-steps 5"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out.join("train_output.json").exists(), "a failed run reported an outcome");
}

fn config_with(field: &str, value: serde_json::Value) -> PathBuf {
    let d = tempfile::tempdir().unwrap().keep();
    let mut cfg: serde_json::Map<String, serde_json::Value> = serde_json::from_str(
        r#"{"model_type": "bert", "vocab_size": 100, "hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 48, "num_hidden_layers": 2}"#,
    )
    .unwrap();
    cfg.insert(field.into(), value);
    std::fs::write(d.join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    d
}

#[test]
fn hostile_config_sizes_are_refused_before_any_allocation() {
    use serde_json::json;
    for (field, value) in [
        ("hidden_size", json!(1_000_000_000)),
        ("num_hidden_layers", json!(1_000_000)),
        ("vocab_size", json!(1_000_000_000_000i64)),
        ("max_position_embeddings", json!(100_000_000)),
        ("intermediate_size", json!(1i64 << 40)),
        ("num_attention_heads", json!(0)),
        ("pad_token_id", json!(1_000_000)),
        ("layer_norm_eps", json!(0)),
        ("layer_norm_eps", json!(-1e-12)),
    ] {
        let dir = config_with(field, value.clone());
        let started = Instant::now();
        let (code, err) = peftrain_fails(&["params", "--model", dir.to_str().unwrap(), "--method", "full"]);
        assert_eq!(code, 2, "{field}={value}: {err}");
        assert_one_clear_line(&err, &["config.json", &format!("field `{field}`")]);
        assert!(started.elapsed() < Duration::from_secs(5), "{field}={value} took {:?}", started.elapsed());
        // The same config refused by train before any worker starts, naming the same field.
        let (code, err) = peftrain_fails(&refs(&train_args(&dir, &dir.with_extension("out"), &["--max-steps", "1"])));
        assert_eq!(code, 2, "{field}={value}: {err}");
        assert_one_clear_line(&err, &["config.json", &format!("field `{field}`")]);
        assert_no_repetition(err.trim());
    }
}

#[test]
fn params_counts_from_config_alone_equal_peft_s() {
    let d = tempfile::tempdir().unwrap();
    // LoRA on every Linear named dense in BERT (the pooler's too); query and key in RoBERTa.
    for (family, targets, cfg) in [
        (
            "bert",
            "query,value,dense",
            r#"{"model_type": "bert", "vocab_size": 1000, "hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 48, "num_hidden_layers": 3, "max_position_embeddings": 64}"#,
        ),
        (
            "roberta",
            "query,key",
            r#"{"model_type": "roberta", "vocab_size": 1200, "hidden_size": 24, "num_attention_heads": 2, "intermediate_size": 40, "num_hidden_layers": 2, "max_position_embeddings": 70, "type_vocab_size": 1, "pad_token_id": 1}"#,
        ),
    ] {
        let dir = d.path().join(family);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), cfg).unwrap();
        for (method, ours) in [
            ("full", vec!["--method", "full"]),
            ("bitfit", vec!["--method", "bitfit"]),
            ("bitfit-bias-only", vec!["--method", "bitfit", "--bitfit-scope", "bias-only"]),
            ("lora", vec!["--method", "lora", "--lora-r", "4", "--lora-targets", targets]),
            ("ia3", vec!["--method", "ia3"]),
        ] {
            let mut reference = vec!["params", "--config", dir.to_str().unwrap(), "--method", method];
            if method == "lora" {
                reference.extend(["--lora-r", "4", "--lora-targets", targets]);
            }
            let v: serde_json::Value = serde_json::from_str(run_reference("hf_model.py", &reference).trim()).unwrap();
            let (t, a) = (v["trainable"].as_u64().unwrap(), v["all"].as_u64().unwrap());
            let mut args = vec!["params", "--model", dir.to_str().unwrap()];
            args.extend(ours);
            let o = peftrain(&args);
            let line = String::from_utf8(o.stdout).unwrap();
            assert_eq!(line.trim(), peftrain::app::peft_line(t, a), "{family} {method}");
        }
    }
}

#[test]
fn checkpoint_tensors_that_are_not_floats_are_refused_by_name() {
    let d = tempfile::tempdir().unwrap();
    for mode in ["int32", "bool", "int64"] {
        let model = tiny_roberta(&d.path().join(mode), 3);
        let name = "roberta.encoder.layer.0.attention.self.query.weight";
        run_reference("hf_model.py", &["corrupt", "--model", model.to_str().unwrap(), "--tensor", name, "--mode", mode]);
        let (code, err) = peftrain_fails(&refs(&train_args(&model, &d.path().join(mode).join("out"), &["--max-steps", "1"])));
        assert_ne!(code, 0);
        assert_one_clear_line(&err, &["model.safetensors", name, "not a float dtype"]);
        assert_no_repetition(err.trim());
    }
}

/// Float flags and values no run may start with; each is refused with exit 2, one line naming
/// the flag, before anything is read or started.
const BAD_VALUES: &[(&str, &str)] = &[
    ("--lr", "nan"),
    ("--lr", "inf"),
    ("--lr", "-1"),
    ("--lr", "0"),
    ("--lora-alpha", "nan"),
    ("--lora-dropout", "1.5"),
    ("--lora-dropout", "-0.1"),
    ("--threads", "0"),
    ("--register-timeout", "-1"),
    ("--register-timeout", "nan"),
    ("--rpc-timeout", "inf"),
    ("--rpc-timeout", "1e20"),
    ("--rpc-timeout", "0"),
    ("--worker-timeout", "nan"),
    ("--worker-timeout", "1e300"),
    ("--epochs", "nan"),
    ("--warmup-ratio", "2"),
    ("--weight-decay", "-1"),
    ("--max-grad-norm", "0"),
    ("--max-grad-norm", "inf"),
    ("--eval-batch-size", "100000000"),
    ("--max-skipped-steps", "0"),
    ("--lora-r", "0"),
    ("--workers", "1000"),
    ("--max-local-workers", "0"),
];

#[test]
fn absurd_numbers_are_refused_up_front_naming_the_flag() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_roberta(d.path(), 3);
    for (flag, value) in BAD_VALUES {
        let out = d.path().join("never");
        let started = Instant::now();
        // The default cap on local workers grows with the cores; the table's case pins it.
        let cap: &[&str] = if *flag == "--workers" { &["--max-local-workers=8"] } else { &[] };
        let (code, err) = peftrain_fails(&refs(&train_args(&model, &out, &[&["--max-steps", "1", &format!("{flag}={value}")][..], cap].concat())));
        assert_eq!(code, 2, "{flag} {value}: {err}");
        assert_one_clear_line(&err, &[flag]);
        assert!(started.elapsed() < Duration::from_secs(10), "{flag} {value}: refused only after {:?}", started.elapsed());
        assert!(!out.exists(), "{flag} {value}: the output directory was created");
    }
    // The messages point at the right thing.
    let (_, err) = peftrain_fails(&refs(&train_args(&model, &d.path().join("n"), &["--rpc-timeout", "0"])));
    assert!(!err.contains("worker(s) left"), "{err}");
    let (_, err) = peftrain_fails(&refs(&train_args(&model, &d.path().join("n"), &["--workers", "1000", "--max-local-workers", "8"])));
    assert_one_clear_line(&err, &["--workers 1000", "--max-local-workers"]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]
    /// Any value of any float flag: refused with one line naming the flag (always so when not
    /// finite), or accepted (and then failing only on the missing GLUE directory); never a panic.
    #[test]
    fn any_float_flag_value_is_refused_cleanly_or_accepted(
        flag in prop::sample::select(vec!["--lr", "--lora-alpha", "--lora-dropout", "--epochs", "--weight-decay", "--warmup-ratio", "--max-grad-norm", "--rpc-timeout", "--register-timeout", "--worker-timeout"]),
        value in prop_oneof![proptest::num::f64::ANY, -1e3f64..1e3, Just(f64::NAN), Just(f64::INFINITY), Just(-0.0), Just(1e308)],
    ) {
        let model = model_once();
        let v = format!("{value}");
        let glue = std::env::temp_dir().join("peftrain-no-glue-here");
        let tok = roberta_dir();
        let args = ["train", "--model", model.to_str().unwrap(), "--tokenizer", tok.to_str().unwrap(), "--glue-dir", glue.to_str().unwrap(), "--output-dir", "/nonexistent/never", &format!("{flag}={v}")];
        let (code, err) = peftrain_fails(&args);
        prop_assert!(!err.contains("panicked"), "{}", err);
        if code == 2 {
            assert_one_clear_line(&err, &[flag]);
        } else {
            prop_assert!(value.is_finite(), "{flag} {v} was accepted: {err}");
            prop_assert!(err.contains("GLUE data"), "{flag} {v}: {err}");
        }
    }
}

fn model_once() -> &'static Path {
    static M: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    M.get_or_init(|| tiny_roberta(&tempfile::tempdir().unwrap().keep(), 3))
}

#[test]
fn too_many_local_workers_are_refused_and_a_failed_start_stops_them_all() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_roberta(d.path(), 3);
    let started = Instant::now();
    let (code, err) =
        peftrain_fails(&refs(&train_args(&model, &d.path().join("o"), &["--workers", "1000", "--max-local-workers", "8", "--max-steps", "1"])));
    assert_eq!(code, 2);
    assert_one_clear_line(&err, &["--workers 1000", "--max-local-workers"]);
    assert!(started.elapsed() < Duration::from_secs(5));
    // The default cap: four per core, at least eight.
    let cores = std::thread::available_parallelism().map(|c| c.get()).unwrap_or(1);
    let over = (4 * cores).max(8) + 1;
    let (code, err) = peftrain_fails(&refs(&train_args(&model, &d.path().join("o"), &["--workers", &over.to_string(), "--max-steps", "1"])));
    assert_eq!(code, 2);
    assert_one_clear_line(&err, &[&format!("--workers {over}"), "--max-local-workers"]);
    // Sixteen workers that cannot all register in a second: all stopped at once, none left.
    let mut cmd = Command::new(bin("peftrain"));
    cmd.args(train_args(
        &model,
        &d.path().join("p"),
        &["--workers", "16", "--max-local-workers", "16", "--threads", "1", "--register-timeout", "1", "--max-steps", "1"],
    ))
    .env("RUST_LOG", "error")
    .env("PEFTRAIN_WORKER_BIN", bin("peftrain-worker"));
    let started = Instant::now();
    let o = cmd.output().unwrap();
    assert!(!o.status.success());
    assert!(started.elapsed() < Duration::from_secs(15), "stopping 16 workers took {:?}", started.elapsed());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("workers registered within 1 s"), "{err}");
}

#[test]
fn glue_files_with_a_byte_order_mark_read_and_duplicate_columns_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_roberta(d.path(), 3);
    let glue = d.path().join("glue");
    std::fs::create_dir_all(glue.join("SST-2")).unwrap();
    for split in ["train", "dev"] {
        let real = std::fs::read_to_string(glue_dir().join(format!("SST-2/{split}.tsv"))).unwrap();
        let head: Vec<&str> = real.lines().take(41).collect();
        std::fs::write(glue.join(format!("SST-2/{split}.tsv")), format!("\u{feff}{}\n", head.join("\n"))).unwrap();
    }
    let mut args = train_args(&model, &d.path().join("out"), &["--max-steps", "2"]);
    let at = args.iter().position(|a| a == "--glue-dir").unwrap();
    args[at + 1] = glue.to_str().unwrap().into();
    peftrain(&refs(&args));

    std::fs::write(glue.join("SST-2/train.tsv"), "sentence\tlabel\tlabel\ngood\t1\t1\n").unwrap();
    args.extend(["--overwrite-output-dir".into()]);
    let (_, err) = peftrain_fails(&refs(&args));
    assert_one_clear_line(&err, &["SST-2/train.tsv:1", "column `label` appears twice"]);
}

#[test]
fn global_flags_are_accepted_in_a_config_file() {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("run.toml");
    std::fs::write(&file, "quiet = true\nlog_format = \"json\"\nbatch_size = 32\n").unwrap();
    let o = peftrain(&["train", "--config", file.to_str().unwrap(), "--model", "/m", "--print-config"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["batch_size"], 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_refuses_bad_segment_ids_and_closes_idle_connections() {
    let _serial = peftrain_tests::one_at_a_time();
    let d = tempfile::tempdir().unwrap();
    let model = tiny_roberta(d.path(), 7);
    let out = d.path().join("out");
    let (mut child, log) = spawn_peftrain(
        train_args(&model, &out, &["--threads", "1", "--max-steps", "1000000", "--logging-steps", "500"]),
        "info",
        &[("PEFTRAIN_TOKEN", "hardening-test-token")],
    );
    let worker = logged(&log, "worker_address");
    let token = peftrain_net::Security::default().with_token("hardening-test-token");
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{worker}")).unwrap().connect_lazy();
    let mut w = pb::worker_client::WorkerClient::with_interceptor(ch, token.client_auth());
    // RoBERTa has one token type: segment id 5 would index past its table inside libtorch.
    let shard = pb::Batch { input_ids: vec![0, 100, 2], token_type_ids: vec![0, 5, 0], lengths: vec![3], labels: vec![1], scores: vec![] };
    let e = w.evaluate(pb::EvalRequest { shard: Some(shard), return_logits: false }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(e.message().contains("segment id 5"), "{}", e.message());

    // Connections that never say anything are closed once idle, and the worker keeps serving.
    let idle: Vec<tokio::net::TcpStream> = futures_connect(&worker, 64).await;
    tokio::time::sleep(peftrain_net::serve::IDLE_TIMEOUT + Duration::from_secs(3)).await;
    for mut s in idle {
        let mut buf = [0u8; 256];
        // The server may have sent its HTTP/2 preface first; after that, the end of the stream.
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match tokio::io::AsyncReadExt::read(&mut s, &mut buf).await {
                    Ok(0) | Err(_) => return true,
                    Ok(_) => continue,
                }
            }
        })
        .await
        .unwrap_or(false);
        assert!(closed, "an idle connection was left open");
    }
    let shard = pb::Batch { input_ids: vec![0, 100, 2], token_type_ids: vec![], lengths: vec![3], labels: vec![1], scores: vec![] };
    w.evaluate(pb::EvalRequest { shard: Some(shard), return_logits: false }).await.expect("the worker still serves");
    assert!(child.0.try_wait().unwrap().is_none(), "the run ended");
    signal_and_wait(&mut child, "-TERM", Duration::from_secs(30));
}

async fn futures_connect(addr: &str, n: usize) -> Vec<tokio::net::TcpStream> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    v
}

#[test]
fn errors_say_each_cause_once() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_roberta(d.path(), 3);
    let out = d.path().join("out");
    let missing = d.path().join("checkpoint-3");
    let (_, err) = peftrain_fails(&refs(&train_args(&model, &out, &["--max-steps", "4", "--resume", missing.to_str().unwrap()])));
    assert_one_clear_line(&err, &["checkpoint-3", "No such file"]);
    assert_no_repetition(err.trim());
    let name = "roberta.encoder.layer.1.output.dense.weight";
    run_reference("hf_model.py", &["corrupt", "--model", model.to_str().unwrap(), "--tensor", name, "--mode", "drop"]);
    let (_, err) = peftrain_fails(&refs(&train_args(&model, &out, &["--max-steps", "1", "--overwrite-output-dir"])));
    assert_one_clear_line(&err, &[name, "missing"]);
    assert_no_repetition(err.trim());
}
