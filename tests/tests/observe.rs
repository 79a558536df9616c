//! Observability: the coordinator and the workers serve Prometheus metrics and a JSON status
//! over HTTP, logs are JSON lines with --log-format json, and --keep-serving keeps a finished
//! coordinator answering (as a Kubernetes Deployment needs) until SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use peftrain_tests::{bin, glue_dir, roberta_dir, tiny_roberta};

/// One HTTP/1.1 request; the whole response (the server closes after one).
fn request(addr: &str, method: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn get(addr: &str, path: &str) -> String {
    let out = request(addr, "GET", path);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out.split("\r\n\r\n").nth(1).unwrap().to_string()
}

/// A sample's value in a scrape, whatever its labels (enough to poll; the checks of the
/// format itself go through the Prometheus parser, `openmetrics`).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(name)?;
            let rest = if rest.starts_with('{') { &rest[rest.find('}')? + 1..] } else { rest };
            rest.strip_prefix(' ')
        })
        .unwrap_or_else(|| panic!("{name} missing in\n{text}"))
        .parse()
        .unwrap()
}

/// A scrape as prometheus_client's OpenMetrics parser reads it: family -> (type, samples).
fn openmetrics(text: &str) -> serde_json::Map<String, serde_json::Value> {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), text).unwrap();
    serde_json::from_str(&peftrain_tests::run_reference("openmetrics.py", &[f.path().to_str().unwrap()])).unwrap()
}

/// Every sample of every family carries `labels` (name -> value).
fn assert_labelled(families: &serde_json::Map<String, serde_json::Value>, labels: &[(&str, &str)]) {
    for (family, f) in families {
        for s in f["samples"].as_array().unwrap() {
            for (k, v) in labels {
                assert_eq!(s[1][k], *v, "{family}: sample {s} lacks {k}={v}");
            }
        }
    }
}

/// A histogram family's `_count` and `_sum`.
fn histogram(families: &serde_json::Map<String, serde_json::Value>, name: &str) -> (f64, f64) {
    let f = &families[name];
    assert_eq!(f["type"], "histogram", "{name}");
    let get = |suffix: &str| f["samples"].as_array().unwrap().iter().find(|s| s[0] == format!("{name}{suffix}")).unwrap()[2].as_f64().unwrap();
    (get("_count"), get("_sum"))
}

/// JSON log lines from a child's stderr; every line must parse.
fn json_lines(stderr: std::process::ChildStderr) -> Receiver<serde_json::Value> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("not a JSON log line: {line}"));
            let _ = tx.send(v);
        }
    });
    rx
}

fn field(rx: &Receiver<serde_json::Value>, key: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let v = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).unwrap_or_else(|_| panic!("no log with {key}"));
        if let Some(x) = v["fields"].get(key).and_then(|x| x.as_str()) {
            return x.to_string();
        }
    }
}

fn message(rx: &Receiver<serde_json::Value>, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let v = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).unwrap_or_else(|_| panic!("no log saying {needle}"));
        if v["fields"]["message"].as_str().is_some_and(|m| m.contains(needle)) {
            return;
        }
    }
}

#[test]
fn metrics_status_json_logs_and_keep_serving() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_roberta(d.path(), 6);
    let out = d.path().join("out");
    let (tok, glue) = (roberta_dir(), glue_dir());
    let mut coord = Command::new(bin("peftrain"))
        .args([
            "--log-format",
            "json",
            "coordinator",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--metrics-listen",
            "127.0.0.1:0",
            "--keep-serving",
        ])
        .args(["--model", model.to_str().unwrap(), "--tokenizer", tok.to_str().unwrap(), "--glue-dir", glue.to_str().unwrap()])
        .args(["--method", "lora", "--train-limit", "640", "--eval-limit", "32", "--batch-size", "8", "--max-steps", "300"])
        .args(["--logging-steps", "10", "--output-dir", out.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .env("PEFTRAIN_TOKEN", "observe-test-token")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let clog = json_lines(coord.stderr.take().unwrap());
    let mut coord = peftrain_tests::KillOnDrop(coord);
    let metrics_addr = field(&clog, "metrics_address");
    let grpc = field(&clog, "address");
    let status: serde_json::Value = serde_json::from_str(&get(&metrics_addr, "/status")).unwrap();
    assert_eq!(status["phase"], "waiting_for_workers");
    assert!(request(&metrics_addr, "POST", "/metrics").starts_with("HTTP/1.1 405"));
    assert!(request(&metrics_addr, "GET", "/nowhere").starts_with("HTTP/1.1 404"));
    let head = request(&metrics_addr, "GET", "/metrics");
    assert!(head.to_ascii_lowercase().contains("content-type: application/openmetrics-text; version=1.0.0"), "{head}");

    let mut worker = Command::new(bin("peftrain"))
        .args(["--log-format", "json", "worker", "--coordinator", &format!("http://{grpc}"), "--id", "w0", "--metrics-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .env("PEFTRAIN_TOKEN", "observe-test-token")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let wlog = json_lines(worker.stderr.take().unwrap());
    let mut worker = peftrain_tests::KillOnDrop(worker);
    let wmetrics = field(&wlog, "metrics_address");
    // While training: the worker counts its steps.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let m = get(&wmetrics, "/metrics");
        if metric(&m, "peftrain_worker_steps_total") >= 5.0 {
            let s: serde_json::Value = serde_json::from_str(&get(&wmetrics, "/status")).unwrap();
            assert_eq!(s["worker_id"], "w0");
            let run = s["run_id"].as_str().unwrap().to_string();
            assert!(run.starts_with("run-"), "{s}");
            let f = openmetrics(&m);
            assert_labelled(&f, &[("run", &run), ("task", "sst2"), ("method", "lora"), ("worker", "w0")]);
            assert_eq!(f["peftrain_worker_world_size"]["samples"][0][2], 1.0);
            let steps = f["peftrain_worker_steps"]["samples"][0][2].as_f64().unwrap();
            // Each step the worker counted is one observation of its step and all-reduce times.
            let (n, sum) = histogram(&f, "peftrain_worker_step_seconds");
            assert!(n >= steps && sum > 0.0, "{n} {sum} {steps}");
            let (n, _) = histogram(&f, "peftrain_worker_allreduce_seconds");
            assert!(n >= steps, "{n} {steps}");
            break;
        }
        assert!(Instant::now() < deadline, "worker never trained");
        std::thread::sleep(Duration::from_millis(50));
    }
    message(&clog, "serving health, metrics and status until terminated");
    assert!(worker.0.wait().unwrap().success(), "the worker exits when the run is over");
    // The finished coordinator still answers.
    let m = get(&metrics_addr, "/metrics");
    assert_eq!(metric(&m, "peftrain_steps_total"), 300.0);
    assert_eq!(metric(&m, "peftrain_phase_finished"), 1.0);
    assert_eq!(metric(&m, "peftrain_workers_alive"), 1.0);
    assert!(metric(&m, "peftrain_eval_accuracy") >= 0.0);
    assert!(metric(&m, "peftrain_samples_per_second") > 0.0);
    let status: serde_json::Value = serde_json::from_str(&get(&metrics_addr, "/status")).unwrap();
    assert_eq!(status["phase"], "finished");
    assert_eq!(status["step"], 300);
    let f = openmetrics(&m);
    assert_labelled(&f, &[("run", status["run_id"].as_str().unwrap()), ("task", "sst2"), ("method", "lora")]);
    assert_eq!(f["peftrain_steps"]["type"], "counter");
    assert_eq!(f["peftrain_steps"]["samples"][0][0], "peftrain_steps_total");
    // One observation per optimizer step, of the step's time and of its all-reduce's.
    let (n, step_sum) = histogram(&f, "peftrain_step_seconds");
    assert_eq!(n, 300.0);
    let (n, reduce_sum) = histogram(&f, "peftrain_allreduce_seconds");
    assert_eq!(n, 300.0);
    assert!(step_sum > 0.0 && reduce_sum <= step_sum, "{step_sum} {reduce_sum}");
    assert!((reduce_sum - status["allreduce_seconds"].as_f64().unwrap()).abs() < 1e-6);
    let up = &f["peftrain_worker_up"]["samples"];
    assert_eq!(up.as_array().unwrap().len(), 1, "{up}");
    assert_eq!((up[0][1]["worker"].as_str(), up[0][2].as_f64()), (Some("w0"), Some(1.0)));
    assert!(coord.0.try_wait().unwrap().is_none(), "--keep-serving keeps the coordinator up");
    Command::new("kill").args(["-TERM", &coord.0.id().to_string()]).status().unwrap();
    assert!(coord.0.wait().unwrap().success(), "SIGTERM ends it cleanly");
}
