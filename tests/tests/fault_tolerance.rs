//! Losing nothing: a run that loses a worker (SIGKILL or SIGSTOP) finishes with the numbers of
//! one that didn't, a replacement joins with a live peer's state, a resumed run continues the
//! uninterrupted one's per-step losses, and workers outlive a coordinator restart. Elastic
//! start (fewer than --workers at first, the rest joining later) and preemption (SIGTERM of a
//! worker, then of the coordinator) leave the numbers unchanged too. Every test runs once with
//! the ring and once with halving-doubling (`--all-reduce`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use peftrain_tests::{
    bin, glue_dir, logged, max_abs_diff, metrics, peftrain, roberta_dir, run_reference, spawn_logged, step_losses, trainable_weights, values,
};

thread_local! {
    /// The `--all-reduce` of the test running on this thread (each test has its own thread).
    static ALGORITHM: std::cell::Cell<&'static str> = const { std::cell::Cell::new("auto") };
}

/// Runs `test` with every run's group on `algorithm`.
fn with(algorithm: &'static str, test: fn()) {
    ALGORITHM.with(|a| a.set(algorithm));
    test();
}

/// Every fault test once per all-reduce algorithm: each must survive the same faults.
macro_rules! each_algorithm {
    ($($name:ident),* $(,)?) => {
        mod ring {
            $(#[test] fn $name() { super::with("ring", super::$name) })*
        }
        mod halving_doubling {
            $(#[test] fn $name() { super::with("halving-doubling", super::$name) })*
        }
    };
}

each_algorithm!(
    killed_and_replaced_worker_changes_nothing,
    frozen_worker_is_detected_and_the_run_goes_on,
    resume_continues_the_uninterrupted_run,
    workers_survive_a_coordinator_restart,
    elastic_start_with_the_minimum_then_late_workers_join,
    preempted_worker_leaves_at_a_step_boundary_and_a_preempted_coordinator_resumes,
    a_nonfinite_gradient_skips_the_update_instead_of_corrupting_weights,
    preempting_every_worker_pauses_the_run_with_a_checkpoint,
);

/// Flags of the runs compared here: tiny RoBERTa, 120 steps of 16, dropout in the model, the
/// test's all-reduce.
fn common(model: &Path, out: &Path) -> Vec<String> {
    let (tok, glue) = (roberta_dir(), glue_dir());
    [
        "--all-reduce",
        ALGORITHM.with(|a| a.get()),
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
        "640",
        "--eval-limit",
        "32",
        "--batch-size",
        "16",
        "--max-steps",
        "120",
        "--lr",
        "1e-3",
        "--logging-steps",
        "1",
        "--eval-steps",
        "60",
        "--output-dir",
        out.to_str().unwrap(),
        "--base-dtype",
        "fp32",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn tiny(dir: &Path, dropout: &str) -> PathBuf {
    let out = dir.join("model");
    run_reference("hf_model.py", &["tiny", "--family", "roberta", "--out", out.to_str().unwrap(), "--seed", "13", "--dropout", dropout]);
    out
}

/// A `peftrain` process whose stderr lines arrive on a channel.
fn spawn(args: &[String]) -> (Child, Receiver<String>) {
    let mut cmd = Command::new(bin("peftrain"));
    cmd.args(args)
        .env("RUST_LOG", "info")
        .env("PEFTRAIN_TOKEN", "fault-tolerance-test")
        .env("PEFTRAIN_WORKER_BIN", bin("peftrain-worker"))
        .stdout(Stdio::null());
    spawn_logged(cmd)
}

fn address(log: &Receiver<String>) -> String {
    logged(log, "address")
}

/// Waits until the run has logged step `step`; on failure, shows the end of the run's log.
fn wait_for_step(out: &Path, step: u64, child: &mut Child, log: &Receiver<String>) {
    let tail = || log.try_iter().collect::<Vec<_>>().iter().rev().take(40).rev().cloned().collect::<Vec<_>>().join("\n");
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let done = std::fs::read_to_string(out.join("metrics.jsonl"))
            .map(|t| t.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).any(|e| e["step"].as_u64() >= Some(step)))
            .unwrap_or(false);
        if done {
            return;
        }
        assert!(child.try_wait().unwrap().is_none(), "run ended before step {step}:\n{}", tail());
        assert!(Instant::now() < deadline, "step {step} never came:\n{}", tail());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_success(mut child: Child, limit: Duration) {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            assert!(s.success(), "run failed: {s}");
            return;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("run still going after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn worker_pids(parent: u32) -> Vec<String> {
    let out = Command::new("pgrep").args(["-P", &parent.to_string(), "peftrain-worker"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect()
}

fn signal(pid: &str, sig: &str) {
    assert!(Command::new("kill").args([sig, pid]).status().unwrap().success());
}

/// Per-step losses and final weights equal the undisturbed run's within `tol`.
fn assert_same_run(a: &Path, b: &Path, tol: f64) {
    let (la, lb) = (step_losses(a), step_losses(b));
    assert_eq!(la.len(), lb.len(), "same number of logged steps");
    let worst = la.iter().zip(&lb).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    assert!(worst <= tol, "per-step losses differ by up to {worst}");
    let (wa, wb) = (trainable_weights(a), trainable_weights(b));
    for (name, t) in &wa {
        let d = max_abs_diff(&values(t), &values(&wb[name]));
        assert!(d as f64 <= tol.max(1e-5), "final {name} differs by {d}");
    }
}

fn workers_per_step(out: &Path) -> Vec<u64> {
    metrics(out).iter().filter_map(|e| e.get("workers").and_then(|w| w.as_u64())).collect()
}

fn killed_and_replaced_worker_changes_nothing() {
    let _serial = peftrain_tests::one_at_a_time();
    let d = tempfile::tempdir().unwrap();
    // Dropout off: with 2 survivors the dropout masks would differ (they follow the ranks).
    let model = tiny(d.path(), "0.0");
    let (base, hurt) = (d.path().join("base"), d.path().join("hurt"));
    let mut args = vec!["train".to_string(), "--workers".into(), "3".into(), "--threads".into(), "1".into(), "--lora-dropout".into(), "0".into()];
    peftrain(&[args.clone(), common(&model, &base)].concat().iter().map(|s| s.as_str()).collect::<Vec<_>>());

    args.extend(common(&model, &hurt));
    let (mut run, log) = spawn(&args);
    let addr = address(&log);
    wait_for_step(&hurt, 10, &mut run, &log);
    let pids = worker_pids(run.id());
    assert_eq!(pids.len(), 3);
    signal(&pids[2], "-KILL");
    wait_for_step(&hurt, 20, &mut run, &log);
    // The replacement registers under the lost worker's name, as a restarted pod would.
    let mut replacement = Command::new(bin("peftrain"))
        .args(["worker", "--coordinator", &format!("http://{addr}"), "--id", "local-2", "--threads", "1"])
        .env("RUST_LOG", "warn")
        .env("PEFTRAIN_TOKEN", "fault-tolerance-test")
        .spawn()
        .unwrap();
    wait_success(run, Duration::from_secs(300));
    let _ = replacement.wait();
    assert_same_run(&base, &hurt, 1e-5);
    let w = workers_per_step(&hurt);
    let first_two = w.iter().position(|&n| n == 2).expect("the run went on with 2 workers");
    assert!(w[first_two..].contains(&3), "the replacement joined: {w:?}");
    let redone = metrics(&hurt).iter().find_map(|e| e.get("steps_redone").and_then(|v| v.as_u64())).unwrap();
    assert!(redone <= 1, "at most the step in flight is redone");
}

fn frozen_worker_is_detected_and_the_run_goes_on() {
    let _serial = peftrain_tests::one_at_a_time();
    let d = tempfile::tempdir().unwrap();
    let model = tiny(d.path(), "0.0");
    let (base, hurt) = (d.path().join("base"), d.path().join("hurt"));
    let mut args = vec![
        "train".to_string(),
        "--workers".into(),
        "3".into(),
        "--threads".into(),
        "1".into(),
        "--lora-dropout".into(),
        "0".into(),
        "--worker-timeout".into(),
        "3".into(),
    ];
    peftrain(&[args.clone(), common(&model, &base)].concat().iter().map(|s| s.as_str()).collect::<Vec<_>>());
    args.extend(common(&model, &hurt));
    let (mut run, log) = spawn(&args);
    wait_for_step(&hurt, 10, &mut run, &log);
    let pids = worker_pids(run.id());
    signal(&pids[1], "-STOP");
    let stopped = Instant::now();
    wait_for_step(&hurt, 40, &mut run, &log);
    assert!(stopped.elapsed() < Duration::from_secs(30), "detected within the worker timeout (3 s) plus slack");
    wait_success(run, Duration::from_secs(300));
    let _ = Command::new("kill").args(["-KILL", &pids[1]]).status();
    assert_same_run(&base, &hurt, 1e-5);
    assert!(workers_per_step(&hurt).contains(&2));
}

fn resume_continues_the_uninterrupted_run() {
    let _serial = peftrain_tests::one_at_a_time();
    let d = tempfile::tempdir().unwrap();
    // Dropout on: the masks follow (seed, step, rank), so they too must come back exactly.
    let model = tiny(d.path(), "0.1");
    let (base, cut) = (d.path().join("base"), d.path().join("cut"));
    let mut args = vec![
        "train".to_string(),
        "--workers".into(),
        "2".into(),
        "--threads".into(),
        "1".into(),
        "--save-steps".into(),
        "25".into(),
        "--save-total-limit".into(),
        "2".into(),
    ];
    peftrain(&[args.clone(), common(&model, &base)].concat().iter().map(|s| s.as_str()).collect::<Vec<_>>());
    args.extend(common(&model, &cut));
    let (mut run, log) = spawn(&args);
    wait_for_step(&cut, 60, &mut run, &log);
    run.kill().unwrap();
    let _ = run.wait();
    let mut resume = args.clone();
    resume.push("--resume".into());
    let (run, _log) = spawn(&resume);
    wait_success(run, Duration::from_secs(300));
    let (lb, lc) = (step_losses(&base), step_losses(&cut));
    assert_eq!(lb.len(), lc.len(), "metrics.jsonl holds each step once");
    let worst = lb.iter().zip(&lc).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    assert!(worst <= 1e-6, "resumed per-step losses differ by up to {worst}");
    assert_same_run(&base, &cut, 1e-6);
    // --save-total-limit 2 keeps the newest two checkpoints.
    let mut cps: Vec<String> = std::fs::read_dir(&cut)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    cps.sort();
    assert_eq!(cps, ["checkpoint-100", "checkpoint-120"]);
}

fn workers_survive_a_coordinator_restart() {
    let _serial = peftrain_tests::one_at_a_time();
    let d = tempfile::tempdir().unwrap();
    let model = tiny(d.path(), "0.1");
    let (base, cut) = (d.path().join("base"), d.path().join("cut"));
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let listen = format!("127.0.0.1:{port}");
    let coord = |out: &Path, extra: &[&str]| {
        let mut a =
            vec!["coordinator".to_string(), "--listen".into(), listen.clone(), "--workers".into(), "2".into(), "--save-steps".into(), "20".into()];
        a.extend(common(&model, out));
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let start_workers = || -> Vec<Child> {
        ["w0", "w1"]
            .iter()
            .map(|id| {
                Command::new(bin("peftrain"))
                    .args(["worker", "--coordinator", &format!("http://{listen}"), "--id", id, "--threads", "1"])
                    .env("RUST_LOG", "warn")
                    .env("PEFTRAIN_TOKEN", "fault-tolerance-test")
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect()
    };
    // The uninterrupted run.
    let (run, _log) = spawn(&coord(&base, &[]));
    let workers = start_workers();
    wait_success(run, Duration::from_secs(300));
    for mut w in workers {
        assert!(w.wait().unwrap().success());
    }
    // The interrupted one: the coordinator dies at step ~50 and comes back with --resume.
    let (mut run, log) = spawn(&coord(&cut, &[]));
    let workers = start_workers();
    wait_for_step(&cut, 50, &mut run, &log);
    run.kill().unwrap();
    let _ = run.wait();
    let (run, _log) = spawn(&coord(&cut, &["--resume"]));
    wait_success(run, Duration::from_secs(300));
    for mut w in workers {
        assert!(w.wait().unwrap().success(), "the same worker processes finished the run");
    }
    assert_same_run(&base, &cut, 1e-6);
}

/// A free loopback port for a coordinator of one test.
fn free_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("127.0.0.1:{}", l.local_addr().unwrap().port())
}

/// A remote worker process of the run at `listen`, its log on a channel.
fn remote_worker(listen: &str, id: &str, extra: &[&str]) -> (Child, Receiver<String>) {
    let mut cmd = Command::new(bin("peftrain"));
    cmd.args(["worker", "--coordinator", &format!("http://{listen}"), "--id", id, "--threads", "1"])
        .args(extra)
        .env("RUST_LOG", "info")
        .env("PEFTRAIN_TOKEN", "fault-tolerance-test")
        .stdout(Stdio::null());
    spawn_logged(cmd)
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("process still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The undisturbed reference: 3 local workers, LoRA dropout off.
fn undisturbed_3(model: &Path, out: &Path) {
    let mut a: Vec<String> = ["train", "--workers", "3", "--threads", "1", "--lora-dropout", "0"].iter().map(|s| s.to_string()).collect();
    a.extend(common(model, out));
    peftrain(&a.iter().map(|s| s.as_str()).collect::<Vec<_>>());
}

fn elastic_start_with_the_minimum_then_late_workers_join() {
    let _serial = peftrain_tests::one_at_a_time();
    let d = tempfile::tempdir().unwrap();
    // Dropout off: the masks follow the ranks, and the group grows.
    let model = tiny(d.path(), "0.0");
    let (base, elastic) = (d.path().join("base"), d.path().join("elastic"));
    undisturbed_3(&model, &base);
    // 3 workers expected, 1 enough to start after 2 s; the other two come at step 10.
    let listen = free_port();
    let mut a: Vec<String> =
        ["coordinator", "--listen", &listen, "--workers", "3", "--min-workers", "1", "--register-timeout", "2", "--lora-dropout", "0"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    a.extend(common(&model, &elastic));
    let (mut run, log) = spawn(&a);
    // The late comers sort first and last among the ranks: arrival order is not rank order.
    let first = remote_worker(&listen, "w1", &[]);
    wait_for_step(&elastic, 10, &mut run, &log);
    let said: Vec<String> = log.try_iter().collect();
    assert!(said.iter().any(|l| l.contains("starting with 1 of 3 workers after 2 s")), "the elastic start was not logged:\n{}", said.join("\n"));
    let late = [remote_worker(&listen, "w2", &[]), remote_worker(&listen, "w0", &[])];
    wait_success(run, Duration::from_secs(300));
    for (mut w, _) in late.into_iter().chain([first]) {
        assert!(wait_exit(&mut w, Duration::from_secs(30)).success(), "every worker finished with the run");
    }
    assert_same_run(&base, &elastic, 1e-5);
    let w = workers_per_step(&elastic);
    assert_eq!(w.first(), Some(&1), "training started with the one worker there: {w:?}");
    assert_eq!(w.last(), Some(&3), "the late workers joined: {w:?}");
    // Too few by the deadline: one clear line, exit 1.
    let lonely = d.path().join("lonely");
    let mut a: Vec<String> = ["coordinator", "--listen", &free_port(), "--workers", "3", "--min-workers", "2", "--register-timeout", "1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.extend(common(&model, &lonely));
    let out = Command::new(bin("peftrain")).args(&a).env("PEFTRAIN_TOKEN", "fault-tolerance-test").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("only 0 of 3 workers registered within 1 s") && err.contains("--min-workers 2"), "{err}");
}

fn preempted_worker_leaves_at_a_step_boundary_and_a_preempted_coordinator_resumes() {
    let _serial = peftrain_tests::one_at_a_time();
    let d = tempfile::tempdir().unwrap();
    let model = tiny(d.path(), "0.0");
    let (base, preempted) = (d.path().join("base"), d.path().join("preempted"));
    undisturbed_3(&model, &base);
    let listen = free_port();
    // A long heartbeat timeout: leaving must not wait for it.
    let coord = |extra: &[&str]| {
        let mut a: Vec<String> = [
            "coordinator",
            "--listen",
            &listen,
            "--workers",
            "3",
            "--lora-dropout",
            "0",
            "--worker-timeout",
            "60",
            "--save-steps",
            "1000",
            "--signal-exit-code",
            "143",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(common(&model, &preempted));
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let (mut run, log) = spawn(&coord(&[]));
    let exit143 = ["--signal-exit-code", "143", "--coordinator-timeout", "120"];
    let mut workers: Vec<(Child, Receiver<String>)> = ["w0", "w1", "w2"].iter().map(|id| remote_worker(&listen, id, &exit143)).collect();
    wait_for_step(&preempted, 20, &mut run, &log);
    // The worker: gone at the next step boundary, exit 143, the run carrying on with two.
    signal(&workers[2].0.id().to_string(), "-TERM");
    let asked = Instant::now();
    let status = wait_exit(&mut workers[2].0, Duration::from_secs(20));
    assert_eq!(status.code(), Some(143), "a preempted worker exits with --signal-exit-code");
    assert!(asked.elapsed() < Duration::from_secs(10), "left in {:?}, long before the 60 s heartbeat timeout", asked.elapsed());
    wait_for_step(&preempted, 50, &mut run, &log);
    // The coordinator: a checkpoint at this step boundary, exit 143 well inside the 60 s the
    // manifests give it; the workers wait, and the resumed coordinator finishes with them.
    signal(&run.id().to_string(), "-TERM");
    let asked = Instant::now();
    let status = wait_exit(&mut run, Duration::from_secs(30));
    assert_eq!(status.code(), Some(143), "a preempted coordinator exits with --signal-exit-code");
    assert!(asked.elapsed() < Duration::from_secs(10), "stopped in {:?}", asked.elapsed());
    let checkpoints =
        std::fs::read_dir(&preempted).unwrap().filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().starts_with("checkpoint-")).count();
    assert_eq!(checkpoints, 1, "the stop wrote its checkpoint (--save-steps 1000 writes none before)");
    let (run, _log) = spawn(&coord(&["--resume"]));
    // The preempted worker's pod comes back under its name.
    workers[2] = remote_worker(&listen, "w2", &exit143);
    wait_success(run, Duration::from_secs(300));
    for (mut w, _) in workers {
        assert!(wait_exit(&mut w, Duration::from_secs(30)).success(), "the workers finished the run");
    }
    assert_same_run(&base, &preempted, 1e-5);
    let events = metrics(&preempted);
    let redone: u64 = events.iter().filter_map(|e| e.get("steps_redone").and_then(|v| v.as_u64())).max().unwrap_or(0);
    assert_eq!(redone, 0, "leaving at a step boundary redoes nothing");
    let w = workers_per_step(&preempted);
    assert!(w.contains(&2) && w.last() == Some(&3), "two carried on, three after the resume: {w:?}");
}

fn a_nonfinite_gradient_skips_the_update_instead_of_corrupting_weights() {
    let _serial = peftrain_tests::one_at_a_time();
    let d = tempfile::tempdir().unwrap();
    let model = tiny(d.path(), "0.0");
    let (base, poisoned) = (d.path().join("base"), d.path().join("poisoned"));
    let mut args = vec!["train".to_string(), "--workers".into(), "2".into(), "--threads".into(), "1".into()];
    args.extend(common(&model, &base));
    if let Some(v) = args.iter_mut().skip_while(|a| *a != "--max-steps").nth(1) {
        *v = "20".into();
    }
    peftrain(&args.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    // The failpoint poisons the gradient of step 5 (0-based 4) on every worker.
    let args: Vec<String> =
        args.iter().map(|a| if a == base.to_str().unwrap() { poisoned.to_str().unwrap().to_string() } else { a.clone() }).collect();
    let out = Command::new(bin("peftrain"))
        .args(&args)
        .env("RUST_LOG", "error")
        .env("PEFTRAIN_FAILPOINT_NAN_STEP", "4")
        .env("PEFTRAIN_WORKER_BIN", bin("peftrain-worker"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let events = metrics(&poisoned);
    let skipped: Vec<u64> = events.iter().filter(|e| e.get("skipped").is_some()).map(|e| e["step"].as_u64().unwrap()).collect();
    assert_eq!(skipped, [5], "step 5 reported as skipped");
    assert_eq!(events.iter().find_map(|e| e.get("steps_skipped")).and_then(|v| v.as_u64()), Some(1));
    let (lb, lp) = (step_losses(&base), step_losses(&poisoned));
    assert_eq!(lb[..5], lp[..5], "identical up to the poisoned step");
    assert!(lp.iter().all(|l| l.is_finite()), "no NaN reaches the weights: {lp:?}");
    assert_ne!(lb[5], lp[5], "step 5's update was skipped");
    for (name, t) in trainable_weights(&poisoned) {
        assert!(values(&t).iter().all(|v| v.is_finite()), "{name} holds non-finite values");
    }
}

fn preempting_every_worker_pauses_the_run_with_a_checkpoint() {
    let _serial = peftrain_tests::one_at_a_time();
    let d = tempfile::tempdir().unwrap();
    let model = tiny(d.path(), "0.0");
    let (base, drained) = (d.path().join("base"), d.path().join("drained"));
    let mut a: Vec<String> = ["train", "--workers", "1", "--threads", "1", "--lora-dropout", "0"].iter().map(|s| s.to_string()).collect();
    a.extend(common(&model, &base));
    peftrain(&a.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    // One worker, --min-workers 1: letting it go would leave none. The run stops at that
    // boundary as on a signal, the checkpoint taken from the leaving worker, and resumes.
    let listen = free_port();
    let coord = |extra: &[&str]| {
        let mut a: Vec<String> = ["coordinator", "--listen", &listen, "--workers", "1", "--lora-dropout", "0", "--signal-exit-code", "143"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.extend(common(&model, &drained));
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let exit143 = ["--signal-exit-code", "143", "--coordinator-timeout", "120"];
    let (mut run, log) = spawn(&coord(&[]));
    let (mut w, _) = remote_worker(&listen, "w0", &exit143);
    wait_for_step(&drained, 20, &mut run, &log);
    signal(&w.id().to_string(), "-TERM");
    assert_eq!(wait_exit(&mut run, Duration::from_secs(30)).code(), Some(143), "the coordinator stopped as on a signal");
    assert_eq!(wait_exit(&mut w, Duration::from_secs(30)).code(), Some(143), "the worker left");
    let checkpoints: Vec<String> = std::fs::read_dir(&drained)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().to_string()))
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    assert_eq!(checkpoints.len(), 1, "one checkpoint, at the stop: {checkpoints:?}");
    let (run, _log) = spawn(&coord(&["--resume"]));
    let (mut w, _) = remote_worker(&listen, "w0", &exit143);
    wait_success(run, Duration::from_secs(300));
    assert!(wait_exit(&mut w, Duration::from_secs(30)).success());
    assert_same_run(&base, &drained, 1e-5);
}
