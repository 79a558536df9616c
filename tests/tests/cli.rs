//! The command line: `peftrain params` prints peft's line with the numbers that pin the methods
//! down, and every flag can come from a config file or a PEFTRAIN_* variable with the
//! documented precedence (command line > environment > file > defaults).

use std::process::Command;

use peftrain_tests::{bin, roberta_dir};

fn params(extra: &[&str]) -> String {
    let out = Command::new(bin("peftrain"))
        .args(["params", "--model", roberta_dir().to_str().unwrap()])
        .args(extra)
        .env("PEFTRAIN_WORKER_BIN", bin("peftrain-worker"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn params_prints_peft_lines_for_roberta_base() {
    assert_eq!(params(&["--method", "full"]), "trainable params: 124,647,170 || all params: 124,647,170 || trainable%: 100.0000");
    assert_eq!(params(&["--method", "bitfit"]), "trainable params: 694,274 || all params: 124,647,170 || trainable%: 0.5570");
    assert_eq!(
        params(&["--method", "bitfit", "--bitfit-scope", "bias-only"]),
        "trainable params: 102,914 || all params: 124,647,170 || trainable%: 0.0826"
    );
    assert_eq!(params(&["--method", "lora"]), "trainable params: 887,042 || all params: 125,534,212 || trainable%: 0.7066");
}

fn resolved(args: &[&str], envs: &[(&str, &str)]) -> serde_json::Value {
    let mut cmd = Command::new(bin("peftrain"));
    cmd.args(["train", "--model", roberta_dir().to_str().unwrap(), "--print-config"]).args(args);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("PEFTRAIN_")) {
        cmd.env_remove(k);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn config_file_environment_and_flags_in_that_order() {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("run.toml");
    std::fs::write(
        &file,
        "batch_size = 7\nlr = 3e-4\nlogging_steps = 5\nmethod = \"bitfit\"\nlora_targets = [\"query\", \"key\"]\nno_shuffle = true\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    // Defaults alone.
    let v = resolved(&[], &[]);
    assert_eq!((v["batch_size"].as_u64(), v["method"].as_str(), v["shuffle"].as_bool()), (Some(16), Some("lora"), Some(true)));
    // The file over the defaults.
    let v = resolved(&["--config", f], &[]);
    assert_eq!((v["batch_size"].as_u64(), v["lr"].as_f64(), v["logging_steps"].as_u64()), (Some(7), Some(3e-4), Some(5)));
    assert_eq!(v["lora_targets"], serde_json::json!(["query", "key"]));
    assert_eq!(v["shuffle"], false);
    // The environment over the file.
    let v = resolved(&["--config", f], &[("PEFTRAIN_LR", "1e-3"), ("PEFTRAIN_BATCH_SIZE", "9")]);
    assert_eq!((v["batch_size"].as_u64(), v["lr"].as_f64(), v["logging_steps"].as_u64()), (Some(9), Some(1e-3), Some(5)));
    // The command line over everything.
    let v = resolved(&["--config", f, "--batch-size", "11"], &[("PEFTRAIN_BATCH_SIZE", "9")]);
    assert_eq!(v["batch_size"].as_u64(), Some(11));
    // The file can also be named by PEFTRAIN_CONFIG.
    let v = resolved(&[], &[("PEFTRAIN_CONFIG", f)]);
    assert_eq!(v["method"], "bitfit");
}

#[test]
fn a_bad_config_file_is_one_clear_line() {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("run.toml");
    std::fs::write(&file, "bogus_key = 1\n").unwrap();
    let out = Command::new(bin("peftrain"))
        .args(["train", "--config", file.to_str().unwrap(), "--model", roberta_dir().to_str().unwrap(), "--print-config"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    peftrain_tests::assert_one_clear_line(&String::from_utf8_lossy(&out.stderr), &["run.toml", "unknown key `bogus_key`"]);
    std::fs::write(&file, "batch_size = [\n").unwrap();
    let out = Command::new(bin("peftrain"))
        .args(["train", "--config", file.to_str().unwrap(), "--model", roberta_dir().to_str().unwrap(), "--print-config"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    peftrain_tests::assert_one_clear_line(&String::from_utf8_lossy(&out.stderr), &["run.toml"]);
}
