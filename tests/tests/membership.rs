//! Membership over real sockets: the Coordinator service refuses mismatched, extra and
//! wrong-version workers with the right status; multi-node mode (`peftrain coordinator` +
//! `peftrain worker` processes) trains; losing more workers than --min-workers allows ends the
//! run with a clear error and a final checkpoint in bounded time instead of a hang.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use peftrain::registry::Registry;
use peftrain_proto::v1 as pb;
use peftrain_tests::{bin, glue_dir, roberta_dir, tiny_roberta};
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};

fn fingerprint(digest: &str, trainable: u64) -> pb::Fingerprint {
    pb::Fingerprint { digest: digest.into(), model_type: "roberta".into(), trainable_params: trainable, total_params: 100, layout: vec![] }
}

fn register(id: &str, fp: pb::Fingerprint) -> pb::RegisterRequest {
    pb::RegisterRequest {
        protocol_version: pb::PROTOCOL_VERSION,
        worker_id: id.into(),
        run_id: "run-t".into(),
        address: "127.0.0.1:9".into(),
        device: "cpu".into(),
        fingerprint: Some(fp),
        ..Default::default()
    }
}

#[tokio::test]
async fn coordinator_service_refuses_mismatched_extra_and_stale_workers() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let spec = pb::RunSpec { model_dir: "/models/x".into(), num_labels: 2, ..Default::default() };
    let registry = Arc::new(Registry::new("run-t".into(), spec.clone(), 2));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let security = peftrain_net::Security::default().with_token("test-token");
    let server_security = security.clone();
    let server = tokio::spawn(async move {
        peftrain::service::serve(listener, registry, &server_security, async move {
            let _ = stopped.await;
        })
        .await
    });
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
    // Poll health instead of sleeping.
    let mut health = HealthClient::new(ch.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = health.check(HealthCheckRequest { service: "peftrain.v1.Coordinator".into() }).await;
        if matches!(&r, Ok(resp) if resp.get_ref().status == ServingStatus::Serving as i32) {
            break;
        }
        assert!(Instant::now() < deadline, "coordinator never became healthy: {r:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Without the token: refused, with no effect.
    let mut anonymous = pb::coordinator_client::CoordinatorClient::new(ch.clone());
    let e = anonymous.register(register("a", fingerprint("aaaa", 10))).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let mut wrong =
        pb::coordinator_client::CoordinatorClient::with_interceptor(ch.clone(), peftrain_net::Security::default().with_token("guess").client_auth());
    assert_eq!(
        wrong.hello(pb::HelloRequest { protocol_version: pb::PROTOCOL_VERSION, worker_id: "x".into() }).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let mut c = pb::coordinator_client::CoordinatorClient::with_interceptor(ch, security.client_auth());
    let hello = c.hello(pb::HelloRequest { protocol_version: pb::PROTOCOL_VERSION, worker_id: "a".into() }).await.unwrap();
    assert_eq!(hello.get_ref().spec.as_ref().unwrap().model_dir, spec.model_dir);
    let old = c.hello(pb::HelloRequest { protocol_version: 99, worker_id: "a".into() }).await.unwrap_err();
    assert_eq!(old.code(), Code::FailedPrecondition);

    assert_eq!(c.register(register("a", fingerprint("aaaa", 10))).await.unwrap().get_ref().registered, 1);
    let mismatch = c.register(register("b", fingerprint("bbbb", 12))).await.unwrap_err();
    assert_eq!(mismatch.code(), Code::FailedPrecondition);
    assert!(mismatch.message().contains("fingerprint") && mismatch.message().contains("10 vs 12 trainable"), "{}", mismatch.message());
    assert_eq!(c.register(register("b", fingerprint("aaaa", 10))).await.unwrap().get_ref().registered, 2);
    let extra = c.register(register("c", fingerprint("aaaa", 10))).await.unwrap_err();
    assert_eq!(extra.code(), Code::ResourceExhausted);
    let mut stale = register("d", fingerprint("aaaa", 10));
    stale.run_id = "run-old".into();
    assert_eq!(c.register(stale).await.unwrap_err().code(), Code::FailedPrecondition);
    let mut no_fp = register("e", fingerprint("aaaa", 10));
    no_fp.fingerprint = None;
    assert_eq!(c.register(no_fp).await.unwrap_err().code(), Code::InvalidArgument);

    assert!(c.heartbeat(pb::HeartbeatRequest { worker_id: "a".into(), run_id: "run-t".into(), ..Default::default() }).await.unwrap().get_ref().known);
    assert!(
        !c.heartbeat(pb::HeartbeatRequest { worker_id: "z".into(), run_id: "run-t".into(), ..Default::default() }).await.unwrap().get_ref().known
    );
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// Starts `peftrain coordinator` on 127.0.0.1:0; returns it, the address it bound, and its
/// stderr lines as they come.
fn start_coordinator(args: &[&str]) -> (Child, String, std::sync::mpsc::Receiver<String>) {
    let mut cmd = Command::new(bin("peftrain"));
    cmd.arg("coordinator")
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "info")
        .env("PEFTRAIN_TOKEN", "membership-test-token")
        .stdout(Stdio::piped());
    let (child, rx) = peftrain_tests::spawn_logged(cmd);
    let addr = wait_for(&rx, "address=");
    let addr = addr.split("address=").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    (child, addr, rx)
}

/// The first log line containing `needle` (within a minute).
fn wait_for(rx: &std::sync::mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(e) => panic!("no log line with {needle:?}: {e}"),
        }
    }
}

fn worker(addr: &str, id: &str, extra: &[&str]) -> Child {
    Command::new(bin("peftrain"))
        .args(["worker", "--coordinator", &format!("http://{addr}"), "--id", id, "--threads", "1"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .env("PEFTRAIN_TOKEN", "membership-test-token")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(c: Child, limit: Duration) -> (bool, String) {
    let start = Instant::now();
    let mut c = c;
    loop {
        if let Some(status) = c.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(e) = c.stderr.as_mut() {
                std::io::Read::read_to_string(e, &mut err).unwrap();
            }
            return (status.success(), err);
        }
        if start.elapsed() > limit {
            let _ = c.kill();
            panic!("process still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn multi_node_mode_trains_and_refuses_intruders() {
    let _serial = peftrain_tests::one_at_a_time();
    let d = tempfile::tempdir().unwrap();
    let model = tiny_roberta(d.path(), 8);
    let other = tiny_roberta(&d.path().join("other"), 9);
    let out = d.path().join("out");
    let (tok, glue) = (roberta_dir(), glue_dir());
    let (coord, addr, log) = start_coordinator(&[
        "--workers",
        "2",
        "--model",
        model.to_str().unwrap(),
        "--tokenizer",
        tok.to_str().unwrap(),
        "--glue-dir",
        glue.to_str().unwrap(),
        "--task",
        "sst2",
        "--method",
        "bitfit",
        "--train-limit",
        "64",
        "--eval-limit",
        "16",
        "--batch-size",
        "8",
        "--max-steps",
        "8",
        "--logging-steps",
        "2",
        "--output-dir",
        out.to_str().unwrap(),
    ]);
    // The first registrant fixes the group's fingerprint.
    let w0 = worker(&addr, "w0", &[]);
    wait_for(&log, "worker registered (1/2)");
    // Same path layout, different weights on "its node": refused by fingerprint.
    let intruder = worker(&addr, "intruder", &["--model", other.to_str().unwrap()]);
    let (ok, err) = finish(intruder, Duration::from_secs(60));
    assert!(!ok, "a worker with another checkpoint must be refused");
    assert!(err.contains("fingerprint") && err.contains("differs"), "{err}");
    // Two more honest workers for one place: exactly one is refused as extra.
    let ws: Vec<Child> = ["w1", "w2"].iter().map(|id| worker(&addr, id, &[])).collect();
    let mut results: Vec<(bool, String)> = ws.into_iter().map(|w| finish(w, Duration::from_secs(120))).collect();
    results.push(finish(w0, Duration::from_secs(60)));
    let refused: Vec<&String> = results.iter().filter(|(ok, _)| !ok).map(|(_, e)| e).collect();
    assert_eq!(refused.len(), 1, "{results:?}");
    assert!(refused[0].contains("group is full"), "{}", refused[0]);
    let (ok, _) = finish(coord, Duration::from_secs(60));
    assert!(ok, "the coordinator finishes the run");
    assert!(out.join("train_output.json").is_file());
}

#[test]
fn losing_more_workers_than_allowed_ends_the_run_with_a_clear_error_and_a_checkpoint() {
    let _serial = peftrain_tests::one_at_a_time();
    let d = tempfile::tempdir().unwrap();
    let model = tiny_roberta(d.path(), 8);
    let out = d.path().join("out");
    let (tok, glue) = (roberta_dir(), glue_dir());
    let mut run = Command::new(bin("peftrain"))
        .args(["train", "--workers", "2", "--min-workers", "2", "--threads", "1", "--worker-timeout", "5", "--model", model.to_str().unwrap()])
        .args(["--tokenizer", tok.to_str().unwrap(), "--glue-dir", glue.to_str().unwrap(), "--task", "sst2", "--method", "lora"])
        .args(["--train-limit", "64", "--eval-limit", "16", "--batch-size", "8", "--max-steps", "100000", "--logging-steps", "2"])
        .args(["--output-dir", out.to_str().unwrap()])
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !out.join("metrics.jsonl").is_file() || std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().count() < 2 {
        assert!(started.elapsed() < Duration::from_secs(120), "training never started");
        assert!(run.try_wait().unwrap().is_none(), "run ended early");
        std::thread::sleep(Duration::from_millis(50));
    }
    let children = Command::new("pgrep").args(["-P", &run.id().to_string(), "peftrain-worker"]).output().unwrap();
    let pids: Vec<String> = String::from_utf8_lossy(&children.stdout).split_whitespace().map(String::from).collect();
    assert_eq!(pids.len(), 2, "two local workers");
    Command::new("kill").args(["-KILL", &pids[1]]).status().unwrap();
    let killed_at = Instant::now();
    let (ok, err) = finish(run, Duration::from_secs(90));
    assert!(!ok, "the run must fail");
    assert!(killed_at.elapsed() < Duration::from_secs(60), "took {:?} to notice", killed_at.elapsed());
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    let last = lines.last().unwrap();
    assert!(last.starts_with("peftrain: error:") && last.contains("fewer than --min-workers 2") && last.contains("local-"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let checkpoints: Vec<_> =
        std::fs::read_dir(&out).unwrap().filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().starts_with("checkpoint-")).collect();
    assert_eq!(checkpoints.len(), 1, "a final checkpoint of the last completed step");
}

#[test]
fn a_worker_gone_before_setup_gives_its_place_to_the_next_one() {
    let _serial = peftrain_tests::one_at_a_time();
    let d = tempfile::tempdir().unwrap();
    let model = tiny_roberta(d.path(), 8);
    let out = d.path().join("out");
    let (tok, glue) = (roberta_dir(), glue_dir());
    let (coord, addr, log) = start_coordinator(&[
        "--workers",
        "2",
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
        "16",
        "--batch-size",
        "8",
        "--max-steps",
        "6",
        "--output-dir",
        out.to_str().unwrap(),
    ]);
    let mut w_a = worker(&addr, "wA", &[]);
    wait_for(&log, "worker registered (1/2)");
    w_a.kill().unwrap();
    w_a.wait().unwrap();
    // The group is complete with a dead member: it is dropped, not the run.
    let w_b = worker(&addr, "wB", &[]);
    wait_for(&log, "dropped; waiting for another worker");
    let w_c = worker(&addr, "wC", &[]);
    all_finish(coord, vec![w_b, w_c], &out);
}

/// The coordinator and its workers all end well, and the run wrote its outcome.
fn all_finish(coord: Child, workers: Vec<Child>, out: &std::path::Path) {
    let (ok, err) = finish(coord, Duration::from_secs(120));
    assert!(ok, "the run aborted: {err}");
    for w in workers {
        let (ok, err) = finish(w, Duration::from_secs(60));
        assert!(ok, "{err}");
    }
    assert!(out.join("train_output.json").is_file());
}

#[test]
fn a_worker_with_another_model_registering_first_locks_nobody_out() {
    let _serial = peftrain_tests::one_at_a_time();
    let d = tempfile::tempdir().unwrap();
    let model = tiny_roberta(d.path(), 8);
    let other = tiny_roberta(&d.path().join("other"), 9);
    let out = d.path().join("out");
    let (tok, glue) = (roberta_dir(), glue_dir());
    let (coord, addr, log) = start_coordinator(&[
        "--workers",
        "2",
        "--model",
        model.to_str().unwrap(),
        "--tokenizer",
        tok.to_str().unwrap(),
        "--glue-dir",
        glue.to_str().unwrap(),
        "--task",
        "sst2",
        "--method",
        "bitfit",
        "--train-limit",
        "64",
        "--eval-limit",
        "16",
        "--batch-size",
        "8",
        "--max-steps",
        "4",
        "--output-dir",
        out.to_str().unwrap(),
    ]);
    // First to arrive, and wrong: the coordinator's own model decides, so it is refused.
    let intruder = worker(&addr, "intruder", &["--model", other.to_str().unwrap()]);
    let (ok, err) = finish(intruder, Duration::from_secs(60));
    assert!(!ok);
    assert!(err.contains("model fingerprint") && err.contains("differs from the coordinator's --model"), "{err}");
    let ws: Vec<Child> = ["w0", "w1"].iter().map(|id| worker(&addr, id, &[])).collect();
    drop(log);
    all_finish(coord, ws, &out);
}
