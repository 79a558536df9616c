//! What Hugging Face's own tools read from a run: trainer_state.json loads with transformers'
//! `TrainerState.load_from_json` and its log_history equals metrics.jsonl; `--report-to
//! tensorboard` event files read back through tensorboard's EventAccumulator, every logged
//! scalar at its step; every `--lr-scheduler-type` gives transformers' `get_scheduler` rate at
//! every step (1e-12), in the library and in a run's logs; the Trainer's strategies and flag
//! names drive the loop.

use std::collections::BTreeMap;
use std::path::Path;

use peftrain::schedule::{Schedule, SchedulerType};
use peftrain_tests::{assert_one_clear_line, glue_dir, metrics, peftrain, peftrain_fails, roberta_dir, run_reference, tiny_roberta};
use serde_json::Value;

fn train(model: &Path, out: &Path, extra: &[&str]) {
    let (tok, glue) = (roberta_dir(), glue_dir());
    let mut args = vec![
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
        "48",
        "--eval-limit",
        "24",
        "--batch-size",
        "8",
        "--output-dir",
        out.to_str().unwrap(),
        "--base-dtype",
        "fp32",
    ];
    args.extend_from_slice(extra);
    peftrain(&args);
}

/// transformers' rates for each (type, peak, warmup, total).
fn reference_rates(cases: &[(SchedulerType, f64, u64, u64)]) -> Vec<Vec<f64>> {
    let json: Vec<Value> = cases.iter().map(|(k, p, w, t)| serde_json::json!([k.as_str(), p, w, t])).collect();
    serde_json::from_str(&run_reference("schedule.py", &[&serde_json::to_string(&json).unwrap()])).unwrap()
}

#[test]
fn every_schedule_is_get_scheduler_s_at_every_step() {
    let mut cases = Vec::new();
    for kind in SchedulerType::ALL {
        for (warmup, total) in [(0, 1), (0, 10), (3, 10), (10, 10), (6, 100), (7, 101), (0, 37), (12, 29)] {
            if kind == SchedulerType::Polynomial && warmup == total {
                continue; // transformers divides by total - warmup there (ZeroDivisionError)
            }
            for peak in [5e-4, 2e-5, 1.0] {
                cases.push((kind, peak, warmup, total));
            }
        }
    }
    let reference = reference_rates(&cases);
    for ((kind, peak, warmup, total), want) in cases.iter().zip(&reference) {
        let s = Schedule { kind: *kind, peak: *peak, warmup: *warmup, total: *total };
        for (step, w) in want.iter().enumerate() {
            let got = s.lr(step as u64);
            assert!((got - w).abs() <= 1e-12, "{kind} peak {peak} warmup {warmup} total {total} step {step}: {got} vs get_scheduler's {w}");
        }
    }
}

#[test]
fn a_run_logs_its_schedule_s_rates_and_follows_the_trainer_s_strategies() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_roberta(d.path(), 3);
    let kinds = [SchedulerType::CosineWithRestarts, SchedulerType::Polynomial];
    let reference = reference_rates(&kinds.map(|k| (k, 3e-3, 2, 12)));
    for (kind, want) in kinds.iter().zip(&reference) {
        let out = d.path().join(kind.as_str());
        // TrainingArguments' names: --learning-rate, --num-train-epochs (12 steps of 8 from 48 rows: 2 epochs).
        train(
            &model,
            &out,
            &[
                "--lr-scheduler-type",
                kind.as_str(),
                "--learning-rate",
                "3e-3",
                "--num-train-epochs",
                "2",
                "--warmup-steps",
                "2",
                "--logging-steps",
                "1",
                "--eval-strategy",
                "no",
                "--save-strategy",
                "epoch",
                "--adam-beta1",
                "0.8",
                "--adam-beta2",
                "0.99",
                "--adam-epsilon",
                "1e-6",
            ],
        );
        let events = metrics(&out);
        let logged: Vec<(u64, f64)> = events.iter().filter_map(|e| Some((e["step"].as_u64()?, e.get("learning_rate")?.as_f64()?))).collect();
        assert_eq!(logged.len(), 12, "--logging-steps 1: {events:?}");
        for (step, lr) in logged {
            // The Trainer logs the rate after its scheduler stepped: the next step's.
            assert!((lr - want[step as usize]).abs() <= 1e-12, "{kind} step {step}: {lr} vs {}", want[step as usize]);
        }
        // --eval-strategy no: only the final evaluation; --save-strategy epoch: checkpoints 6 and 12.
        let evals: Vec<u64> = events.iter().filter(|e| e.get("eval_loss").is_some()).filter_map(|e| e["step"].as_u64()).collect();
        assert_eq!(evals, [12]);
        let mut ckpts: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("checkpoint-"))
            .collect();
        ckpts.sort();
        assert_eq!(ckpts, ["checkpoint-12", "checkpoint-6"]);
        let run: Value = serde_json::from_slice(&std::fs::read(out.join("run_config.json")).unwrap()).unwrap();
        assert_eq!((run["adam_beta1"].as_f64(), run["adam_beta2"].as_f64(), run["adam_epsilon"].as_f64()), (Some(0.8), Some(0.99), Some(1e-6)));
        assert_eq!(run["lr_scheduler_type"], kind.as_str());
    }
    // The Trainer's betas reach the workers' AdamW: other betas, other weights.
    let plain = d.path().join("plain");
    train(
        &model,
        &plain,
        &[
            "--lr-scheduler-type",
            "polynomial",
            "--learning-rate",
            "3e-3",
            "--num-train-epochs",
            "2",
            "--warmup-steps",
            "2",
            "--logging-steps",
            "1",
            "--eval-strategy",
            "no",
            "--save-strategy",
            "epoch",
        ],
    );
    assert_ne!(
        std::fs::read(plain.join("trainable.safetensors")).unwrap(),
        std::fs::read(d.path().join("polynomial/trainable.safetensors")).unwrap()
    );
    // A schedule transformers refuses is refused here, in one line.
    let (tok, glue) = (roberta_dir(), glue_dir());
    let (code, err) = peftrain_fails(&[
        "train",
        "--model",
        model.to_str().unwrap(),
        "--tokenizer",
        tok.to_str().unwrap(),
        "--glue-dir",
        glue.to_str().unwrap(),
        "--output-dir",
        d.path().join("bad").to_str().unwrap(),
        "--lr-scheduler-type",
        "polynomial",
        "--lr",
        "1e-8",
    ]);
    assert_eq!(code, 2);
    assert_one_clear_line(&err, &["--lr-scheduler-type polynomial", "1e-8"]);
    let (code, err) = peftrain_fails(&["train", "--model", model.to_str().unwrap(), "--lr-scheduler-type", "cosine_annealing"]);
    assert_eq!(code, 2);
    assert_one_clear_line(&err, &["--lr-scheduler-type", "cosine_annealing", "constant_with_warmup"]);
}

#[test]
fn trainer_state_json_is_the_trainer_s_and_its_log_history_is_metrics_jsonl() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_roberta(d.path(), 4);
    let out = d.path().join("out");
    train(
        &model,
        &out,
        &[
            "--max-steps",
            "12",
            "--logging-steps",
            "2",
            "--eval-steps",
            "4",
            "--save-steps",
            "4",
            "--workers",
            "2",
            "--metric-for-best-model",
            "eval_loss",
            "--load-best-model-at-end",
            "--early-stopping-patience",
            "5",
        ],
    );
    let events = metrics(&out);
    let dirs: Vec<String> = [out.clone(), out.join("checkpoint-4"), out.join("checkpoint-8"), out.join("checkpoint-12")]
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let refs: Vec<&str> = dirs.iter().map(String::as_str).collect();
    let loaded: BTreeMap<String, Value> = serde_json::from_str(&run_reference("trainer_state.py", &refs)).unwrap();
    for (dir, step) in dirs.iter().zip([12u64, 4, 8, 12]) {
        let s = &loaded[dir];
        // A checkpoint's history is the log up to its step; the last one's and the output
        // directory's include the run's closing summary.
        let want: Vec<&Value> =
            events.iter().filter(|e| e["step"].as_u64().unwrap() <= step && (step == 12 || e.get("train_runtime").is_none())).collect();
        let got: Vec<&Value> = s["log_history"].as_array().unwrap().iter().collect();
        assert_eq!(got, want, "{dir}: log_history");
        assert_eq!(s["global_step"], step, "{dir}");
        assert_eq!(s["max_steps"], 12);
        assert_eq!(s["logging_steps"], 2);
        assert_eq!(s["eval_steps"], 4);
        assert_eq!(s["save_steps"], 4);
        assert_eq!(s["train_batch_size"], 4, "per worker: the global 8 over 2 workers");
        assert_eq!(s["num_train_epochs"], 2);
        assert_eq!(s["epoch"].as_f64().unwrap(), step as f64 / 6.0);
        let evals: Vec<(u64, f64)> = want.iter().filter_map(|e| Some((e["step"].as_u64()?, e.get("eval_loss")?.as_f64()?))).collect();
        let (best_step, best) = evals.iter().fold(evals[0], |b, &e| if e.1 < b.1 { e } else { b });
        assert_eq!((s["best_global_step"].as_u64(), s["best_metric"].as_f64()), (Some(best_step), Some(best)), "{dir}");
        assert_eq!(s["best_model_checkpoint"].as_str().map(|p| p.ends_with(&format!("checkpoint-{best_step}"))), Some(true), "{dir}");
        let patience = &s["stateful_callbacks"]["EarlyStoppingCallback"];
        let since: u64 = evals.iter().rev().take_while(|e| e.0 != best_step).count() as u64;
        assert_eq!(patience["attributes"]["early_stopping_patience_counter"], since, "{dir}");
        assert_eq!(s["stateful_callbacks"]["TrainerControl"]["args"]["should_training_stop"], step == 12, "{dir}");
        assert!(s["num_input_tokens_seen"].as_u64().unwrap() > 0, "{dir}: tokens seen");
    }
    // The loop's own state is beside it.
    assert!(out.join("checkpoint-8/peftrain_state.json").is_file());

    // The model card, as huggingface_hub's ModelCard parses it: base model, peft, GLUE's
    // sst2, and the results of the evaluation whose weights the directory holds.
    let card: Value = serde_json::from_str(&run_reference("model_card.py", &[out.join("README.md").to_str().unwrap()])).unwrap();
    assert_eq!(card["data"]["base_model"], model.display().to_string());
    assert_eq!(card["data"]["library_name"], "peft");
    assert!(card["data"]["tags"].as_array().unwrap().contains(&Value::from("lora")));
    let results = card["eval_results"].as_array().unwrap();
    let best_step = loaded[&dirs[0]]["best_global_step"].as_u64().unwrap();
    let best_eval = events.iter().find(|e| e["step"] == best_step && e.get("eval_accuracy").is_some()).unwrap();
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0]["metric_type"], "accuracy");
    assert_eq!(results[0]["metric_value"].as_f64(), best_eval["eval_accuracy"].as_f64(), "the best evaluation's (--load-best-model-at-end)");
    assert_eq!(
        (results[0]["dataset_type"].as_str(), results[0]["dataset_config"].as_str(), results[0]["dataset_split"].as_str()),
        (Some("nyu-mll/glue"), Some("sst2"), Some("validation"))
    );
}

#[test]
fn tensorboard_reads_back_every_logged_scalar_with_the_trainer_s_tags() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_roberta(d.path(), 5);
    let out = d.path().join("out");
    let logs = d.path().join("tb");
    train(
        &model,
        &out,
        &["--max-steps", "12", "--logging-steps", "2", "--eval-steps", "6", "--report-to", "tensorboard", "--logging-dir", logs.to_str().unwrap()],
    );
    let read: Value = serde_json::from_str(&run_reference("tensorboard_scalars.py", &[logs.to_str().unwrap()])).unwrap();
    assert_eq!(read["files"], 1);
    let scalars = read["scalars"].as_object().unwrap();
    for tag in [
        "train/loss",
        "train/learning_rate",
        "train/grad_norm",
        "train/epoch",
        "eval/loss",
        "eval/accuracy",
        "eval/runtime",
        "train/train_runtime",
        "train/total_flos",
    ] {
        assert!(scalars.contains_key(tag), "no {tag}: {:?}", scalars.keys().collect::<Vec<_>>());
    }
    let mut expected = 0;
    for e in metrics(&out) {
        let step = e["step"].as_u64().unwrap();
        for (k, v) in e.as_object().unwrap() {
            let Some(x) = v.as_f64().filter(|_| v.is_number() && k != "step") else { continue };
            let tag = if let Some(m) = k.strip_prefix("eval_") { format!("eval/{m}") } else { format!("train/{k}") };
            // TensorBoard keeps float32, as SummaryWriter.add_scalar does (compared as float32:
            // the JSON between them carries doubles).
            let at: Vec<f32> = scalars[&tag].as_array().unwrap().iter().filter(|p| p[0] == step).map(|p| p[1].as_f64().unwrap() as f32).collect();
            assert!(at.contains(&(x as f32)), "{tag} at step {step}: {x} not in {at:?}");
            expected += 1;
        }
    }
    let total: usize = scalars.values().map(|v| v.as_array().unwrap().len()).sum();
    assert_eq!(total, expected, "every scalar TensorBoard holds is one metrics.jsonl logged");
    // Without --logging-dir the Trainer's place: <output_dir>/runs/<date>_<host>/.
    let out2 = d.path().join("out2");
    train(&model, &out2, &["--max-steps", "2", "--report-to", "tensorboard"]);
    let runs: Vec<_> = std::fs::read_dir(out2.join("runs")).unwrap().filter_map(|e| e.ok()).collect();
    assert_eq!(runs.len(), 1);
    let read: Value = serde_json::from_str(&run_reference("tensorboard_scalars.py", &[runs[0].path().to_str().unwrap()])).unwrap();
    assert!(read["scalars"]["train/train_loss"].as_array().is_some_and(|v| v.len() == 1));
}

#[test]
fn a_training_arguments_json_is_a_config_and_what_peftrain_lacks_is_named() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_roberta(d.path(), 6);
    let json = d.path().join("args.json");
    let out = d.path().join("from-args");
    // TrainingArguments as a Trainer user writes them, dumped by transformers itself.
    let script = format!(
        "from transformers import TrainingArguments\n\
         a = TrainingArguments(output_dir={out:?}, per_device_train_batch_size=4, gradient_accumulation_steps=2, learning_rate=3e-3,\n\
             lr_scheduler_type='cosine', warmup_steps=2, max_steps=6, logging_steps=2, eval_strategy='steps', eval_steps=3,\n\
             save_strategy='no', report_to='tensorboard', seed=7, adam_beta2=0.98, label_smoothing_factor=0.1)\n\
         open({json:?}, 'w').write(a.to_json_string())\n",
        out = out.display().to_string(),
        json = json.display().to_string()
    );
    let o = std::process::Command::new(peftrain_tests::python()).args(["-c", &script]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (tok, glue) = (roberta_dir(), glue_dir());
    let o = std::process::Command::new(peftrain_tests::bin("peftrain"))
        .args(["train", "--config", json.to_str().unwrap(), "--model", model.to_str().unwrap(), "--tokenizer", tok.to_str().unwrap()])
        .args(["--glue-dir", glue.to_str().unwrap(), "--seed", "8", "--print-config"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cfg: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(cfg["output_dir"], out.display().to_string());
    assert_eq!(cfg["per_device_train_batch_size"], 4);
    assert_eq!(cfg["gradient_accumulation_steps"], 2);
    assert_eq!(cfg["lr"], 3e-3);
    assert_eq!(cfg["lr_scheduler_type"], "cosine");
    assert_eq!(cfg["warmup_steps"], 2);
    assert_eq!(cfg["max_steps"], 6);
    assert_eq!((cfg["eval_strategy"].as_str(), cfg["eval_steps"].as_u64()), (Some("steps"), Some(3)));
    assert_eq!(cfg["save_strategy"], "no");
    assert_eq!(cfg["report_to"], "tensorboard");
    assert_eq!(cfg["adam_beta2"], 0.98);
    assert_eq!(cfg["seed"], 8, "the command line wins over the file");
    // What peftrain does not do is said, once, by name; nothing is dropped silently.
    let err = String::from_utf8_lossy(&o.stderr);
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("does not support")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(warnings[0].contains("label_smoothing_factor") && warnings[0].contains("fp16"), "{}", warnings[0]);
    assert!(!warnings[0].contains("learning_rate") && !warnings[0].contains("per_device_train_batch_size"), "{}", warnings[0]);
}
