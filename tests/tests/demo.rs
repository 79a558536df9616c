//! The README's main-job command (scripts/demo.sh) does what it says: single-node, 2 workers,
//! LoRA on SST-2 with all-MiniLM-L6-v2, the live table and TrainOutput printed, dev accuracy
//! >= 0.85 on the full SST-2 dev set, and the adapter, report and plot where it says.

use peftrain_tests::{metrics, root};

#[test]
fn the_demo_reaches_085_and_says_where_its_outputs_are() {
    let out = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(root().join("scripts/demo.sh"))
        .env("PEFTRAIN_DEMO_SKIP_SETUP", "1")
        .env("PEFTRAIN_DEMO_OUT", out.path())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run scripts/demo.sh");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("Step  Training Loss  Validation Loss  Accuracy"), "{stdout}");
    assert!(stdout.contains("TrainOutput(global_step=1000"), "{stdout}");
    assert!(stdout.contains("| base ") && stdout.contains("(auto: this CPU has"), "the demo says which base dtype it chose and why: {stdout}");
    let acc = metrics(out.path()).iter().filter_map(|e| e.get("eval_accuracy")?.as_f64()).next_back().unwrap();
    assert!(acc >= 0.85, "demo dev accuracy {acc} < 0.85");
    let last = stdout.lines().last().unwrap();
    for f in ["adapter_model.safetensors", "report.md", "curves.png"] {
        assert!(last.contains(f), "the demo says where {f} is: {last}");
        assert!(out.path().join(f).is_file(), "{f} written");
    }
}

/// The demo (like every script) runs again into the directory it wrote before.
#[test]
fn the_demo_runs_twice_into_one_directory() {
    let out = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        let o = std::process::Command::new(root().join("scripts/demo.sh"))
            .args(["--max-steps", "2", "--eval-limit", "16"])
            .env("PEFTRAIN_DEMO_SKIP_SETUP", "1")
            .env("PEFTRAIN_DEMO_OUT", out.path())
            .env("RUST_LOG", "warn")
            .output()
            .expect("run scripts/demo.sh");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert!(out.path().join("adapter_model.safetensors").is_file());
}
