//! Chaos: a 3-worker run of the tiny model with at least 20 faults injected at random (SIGKILL,
//! SIGSTOP/SIGCONT and SIGTERM of a random worker, SIGTERM of the coordinator, each followed by
//! what Kubernetes would do: the pod back under its name, the coordinator resumed), driven by
//! bench/chaos.py, must end exactly where the undisturbed run ends: the same trainable weights
//! (1e-5), every step in metrics.jsonl once with the undisturbed loss, no process left behind,
//! and each fault seen within its bound (a SIGKILL at once, by the broken connection; a SIGSTOP
//! within --worker-timeout + 1 s). Once with the ring and once with halving-doubling.

use std::process::Command;

use peftrain_tests::{bin, glue_dir, max_abs_diff, metrics, python, roberta_dir, root, tiny_roberta, trainable_weights, values};

#[test]
fn twenty_random_faults_change_nothing_on_the_ring() {
    twenty_random_faults_change_nothing("ring");
}

#[test]
fn twenty_random_faults_change_nothing_halving_and_doubling() {
    twenty_random_faults_change_nothing("halving-doubling");
}

fn twenty_random_faults_change_nothing(all_reduce: &str) {
    let _serial = peftrain_tests::one_at_a_time();
    let d = tempfile::tempdir().unwrap();
    let model = tiny_roberta(d.path(), 13);
    let report = d.path().join("chaos.json");
    let worker_timeout = 2.0;
    let out = Command::new(python())
        .arg(root().join("bench/chaos.py"))
        .args(["--bin", bin("peftrain").to_str().unwrap(), "--model", model.to_str().unwrap()])
        .args(["--tokenizer", roberta_dir().to_str().unwrap(), "--glue", glue_dir().to_str().unwrap()])
        .args(["--work", d.path().join("runs").to_str().unwrap(), "--json", report.to_str().unwrap()])
        .args(["--workers", "3", "--max-steps", "2500", "--mtbf", "0.8", "--min-faults", "20", "--seed", "7", "--timeout", "600"])
        .args(["--worker-timeout", &worker_timeout.to_string(), "--all-reduce", all_reduce])
        .output()
        .expect("bench/chaos.py");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(out.status.success(), "the chaos run failed:\n{text}");
    assert!(text.contains(&format!("--all-reduce {all_reduce}")), "{text}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let faults = r["disturbed"]["faults"].as_array().unwrap();
    assert!(faults.len() >= 20, "{} faults", faults.len());
    for kind in ["kill", "stop", "restart", "coordinator"] {
        assert!(faults.iter().any(|f| f["kind"] == kind), "no {kind} fault among {}", faults.len());
    }
    // Each fault seen within its bound. Only a coordinator stopped before it could see a
    // worker's fault leaves that fault unseen (its successor never knew the worker).
    for (k, f) in faults.iter().enumerate() {
        let kind = f["kind"].as_str().unwrap();
        if kind == "restart" || kind == "coordinator" {
            assert_eq!(f["exit"], 143, "a preempted {kind}'s exit: {f}");
        }
        let Some(seen) = f["detected_s"].as_f64() else {
            let superseded = faults.get(k + 1).is_some_and(|next| next["kind"] == "coordinator");
            assert!(kind != "coordinator" && superseded, "fault {k} never seen by the coordinator: {f}");
            continue;
        };
        match kind {
            "kill" => assert!(seen <= 1.0, "a SIGKILL seen after {seen:.2} s: {f}"),
            "stop" => assert!(seen <= worker_timeout + 1.0, "a SIGSTOP seen after {seen:.2} s: {f}"),
            _ => {}
        }
    }
    // Nothing left running: the harness looked, and so does the test.
    for phase in ["undisturbed", "disturbed"] {
        assert_eq!(r[phase]["orphans"].as_array().map(|o| o.len()), Some(0), "{phase}: orphans {}", r[phase]["orphans"]);
    }
    let dirs = &r["dirs"];
    let (base, hurt) =
        (std::path::PathBuf::from(dirs["undisturbed"].as_str().unwrap()), std::path::PathBuf::from(dirs["disturbed"].as_str().unwrap()));
    for dir in [&base, &hurt] {
        let tag = dir.file_name().unwrap().to_str().unwrap();
        let left = Command::new("pgrep").args(["-f", tag]).output().unwrap();
        assert!(left.stdout.is_empty(), "processes of {tag} still running: {}", String::from_utf8_lossy(&left.stdout));
    }
    // Every step once, with the undisturbed run's loss; the same final weights.
    let steps = |dir: &std::path::Path| -> Vec<(u64, f64)> {
        metrics(dir).iter().filter_map(|e| Some((e.get("step")?.as_u64()?, e.get("loss")?.as_f64()?))).collect()
    };
    let (sb, sh) = (steps(&base), steps(&hurt));
    assert_eq!(sb.iter().map(|s| s.0).collect::<Vec<_>>(), (1..=2500).collect::<Vec<_>>(), "undisturbed: every step once");
    assert_eq!(sh.iter().map(|s| s.0).collect::<Vec<_>>(), (1..=2500).collect::<Vec<_>>(), "disturbed: every step once, none lost");
    let worst = sb.iter().zip(&sh).map(|(a, b)| (a.1 - b.1).abs()).fold(0.0, f64::max);
    assert!(worst <= 1e-5, "per-step losses differ by up to {worst}");
    let (wb, wh) = (trainable_weights(&base), trainable_weights(&hurt));
    assert_eq!(wb.keys().collect::<Vec<_>>(), wh.keys().collect::<Vec<_>>());
    for (name, t) in &wb {
        let diff = max_abs_diff(&values(t), &values(&wh[name]));
        assert!(diff <= 1e-5, "final {name} differs by {diff}");
    }
}
