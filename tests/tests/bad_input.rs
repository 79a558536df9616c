//! Bad input ends with one clear line naming the file and the field, tensor or line, a
//! non-zero exit, and no panic: broken configs, damaged checkpoints, malformed GLUE files.

use std::path::Path;

use peftrain_tests::{assert_one_clear_line, glue_dir, peftrain_fails, roberta_dir, run_reference, tiny_roberta};

fn params_with_config(json: &str) -> (i32, String) {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("config.json"), json).unwrap();
    peftrain_fails(&["params", "--model", d.path().to_str().unwrap(), "--method", "lora"])
}

#[test]
fn broken_configs_name_file_and_field() {
    let (code, err) = params_with_config(r#"{"model_type": "gpt2", "vocab_size": 10}"#);
    assert_ne!(code, 0);
    assert_one_clear_line(&err, &["config.json", "model_type", "gpt2"]);

    let (_, err) = params_with_config(r#"{"model_type": "roberta", "vocab_size": "#);
    assert_one_clear_line(&err, &["config.json", "malformed JSON"]);

    let (_, err) = params_with_config(r#"{"model_type": "bert", "vocab_size": 100, "hidden_size": 30, "num_attention_heads": 4}"#);
    assert_one_clear_line(&err, &["config.json", "num_attention_heads"]);

    let (_, err) = peftrain_fails(&["params", "--model", "/nonexistent/model", "--method", "full"]);
    assert_one_clear_line(&err, &["/nonexistent/model", "not found"]);

    let (_, err) = peftrain_fails(&["params", "--model", roberta_dir().to_str().unwrap(), "--method", "prompt"]);
    assert_one_clear_line(&err, &["unknown method", "prompt"]);
}

fn train_args<'a>(model: &'a str, glue: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--model",
        model,
        "--tokenizer",
        "TOKENIZER",
        "--glue-dir",
        glue,
        "--task",
        "sst2",
        "--method",
        "lora",
        "--max-steps",
        "2",
        "--train-limit",
        "32",
        "--eval-limit",
        "8",
        "--output-dir",
        out,
    ]
}

fn train_fails(model: &Path, glue: &Path, extra: &[&str]) -> String {
    let out = tempfile::tempdir().unwrap();
    let tok = roberta_dir();
    let mut args = train_args(model.to_str().unwrap(), glue.to_str().unwrap(), out.path().to_str().unwrap());
    args[4] = tok.to_str().unwrap();
    args.extend_from_slice(extra);
    let (code, err) = peftrain_fails(&args);
    assert_ne!(code, 0);
    err
}

#[test]
fn damaged_checkpoints_name_the_tensor() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_roberta(d.path(), 1);
    let name = "roberta.encoder.layer.1.attention.self.key.weight";
    run_reference("hf_model.py", &["corrupt", "--model", model.to_str().unwrap(), "--tensor", name, "--mode", "shape"]);
    let err = train_fails(&model, &glue_dir(), &[]);
    assert_one_clear_line(&err, &["model.safetensors", name, "shape [32, 31]", "[32, 32]"]);

    let model2 = tiny_roberta(&d.path().join("b"), 1);
    let name = "roberta.encoder.layer.0.output.LayerNorm.bias";
    run_reference("hf_model.py", &["corrupt", "--model", model2.to_str().unwrap(), "--tensor", name, "--mode", "drop"]);
    let err = train_fails(&model2, &glue_dir(), &[]);
    assert_one_clear_line(&err, &["model.safetensors", name, "missing"]);
}

#[test]
fn malformed_glue_rows_name_file_and_line() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_roberta(d.path(), 1);
    let glue = d.path().join("glue");
    std::fs::create_dir_all(glue.join("SST-2")).unwrap();
    std::fs::write(glue.join("SST-2/train.tsv"), "sentence\tlabel\ngood\t1\nbad row without a tab\n").unwrap();
    std::fs::write(glue.join("SST-2/dev.tsv"), "sentence\tlabel\nfine\t0\n").unwrap();
    let err = train_fails(&model, &glue, &[]);
    assert_one_clear_line(&err, &["SST-2/train.tsv:3", "expected 2 tab-separated fields"]);

    std::fs::write(glue.join("SST-2/train.tsv"), "sentence\tlabel\ngood\t7\n").unwrap();
    let err = train_fails(&model, &glue, &[]);
    assert_one_clear_line(&err, &["SST-2/train.tsv:2", "label \"7\""]);

    let err = train_fails(&model, &d.path().join("no-such-dir"), &[]);
    assert_one_clear_line(&err, &["GLUE data for sst2 not found", "GLUE_DIR"]);

    let err = train_fails(&model, &glue_dir(), &["--max-length", "4096"]);
    assert_one_clear_line(&err, &["--max-length 4096", "config.json"]);

    let err = train_fails(&model, &glue_dir(), &["--padding", "tight"]);
    assert_one_clear_line(&err, &["--padding \"tight\"", "auto, free or padded"]);

    // An empty evaluation set would train, evaluate nothing and report success.
    let out = tempfile::tempdir().unwrap();
    let tok = roberta_dir();
    let glue = glue_dir();
    let mut args = train_args(model.to_str().unwrap(), glue.to_str().unwrap(), out.path().to_str().unwrap());
    args[4] = tok.to_str().unwrap();
    let at = args.iter().position(|a| *a == "--eval-limit").unwrap();
    args[at + 1] = "0";
    let (code, err) = peftrain_fails(&args);
    assert_ne!(code, 0);
    assert_one_clear_line(&err, &["--eval-limit must be positive"]);
}

#[test]
fn inputs_longer_than_max_length_are_truncated_and_counted() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_roberta(d.path(), 1);
    let out = d.path().join("out");
    let tok = roberta_dir();
    let glue = glue_dir();
    let o = peftrain_tests::peftrain(&[
        "train",
        "--model",
        model.to_str().unwrap(),
        "--tokenizer",
        tok.to_str().unwrap(),
        "--glue-dir",
        glue.to_str().unwrap(),
        "--task",
        "rte",
        "--method",
        "bitfit",
        "--max-length",
        "40",
        "--train-limit",
        "200",
        "--eval-limit",
        "8",
        "--max-steps",
        "2",
        "--output-dir",
        out.to_str().unwrap(),
    ]);
    // The reference counts the pairs longer than 40 tokens among the first 200.
    let ids = d.path().join("ids.json");
    run_reference(
        "hf_tokenize.py",
        &[
            "--tokenizer",
            tok.to_str().unwrap(),
            "--tsv",
            glue.join("RTE/train.tsv").to_str().unwrap(),
            "--max-length",
            "100000",
            "--out",
            ids.to_str().unwrap(),
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&ids).unwrap()).unwrap();
    let longer = v["input_ids"].as_array().unwrap().iter().take(200).filter(|r| r.as_array().unwrap().len() > 40).count();
    assert!(longer > 0);
    let stdout = String::from_utf8(o.stdout).unwrap();
    assert!(stdout.contains(&format!("({longer} truncated to 40 tokens)")), "{stdout}");
}
