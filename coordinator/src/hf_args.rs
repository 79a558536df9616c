//! A TrainingArguments JSON (what `TrainingArguments.to_json_string()` writes) as peftrain's
//! flags: each key the Trainer and peftrain share becomes its flag's value, with the Trainer's
//! sentinels (`max_steps: -1`, `null`) meaning "not set"; every other key is returned, for
//! one warning that names them all (nothing is dropped silently).

use serde_json::{Map, Value};

/// TrainingArguments key -> peftrain flag (its clap id).
const SHARED: &[(&str, &str)] = &[
    ("output_dir", "output_dir"),
    ("overwrite_output_dir", "overwrite_output_dir"),
    ("num_train_epochs", "epochs"),
    ("max_steps", "max_steps"),
    ("per_device_train_batch_size", "per_device_train_batch_size"),
    ("per_device_eval_batch_size", "per_device_eval_batch_size"),
    ("gradient_accumulation_steps", "gradient_accumulation_steps"),
    ("learning_rate", "lr"),
    ("weight_decay", "weight_decay"),
    ("adam_beta1", "adam_beta1"),
    ("adam_beta2", "adam_beta2"),
    ("adam_epsilon", "adam_epsilon"),
    ("max_grad_norm", "max_grad_norm"),
    ("lr_scheduler_type", "lr_scheduler_type"),
    ("warmup_ratio", "warmup_ratio"),
    ("logging_dir", "logging_dir"),
    ("logging_strategy", "logging_strategy"),
    ("logging_steps", "logging_steps"),
    ("eval_strategy", "eval_strategy"),
    ("evaluation_strategy", "eval_strategy"),
    ("eval_steps", "eval_steps"),
    ("save_strategy", "save_strategy"),
    ("save_steps", "save_steps"),
    ("save_total_limit", "save_total_limit"),
    ("seed", "seed"),
    ("load_best_model_at_end", "load_best_model_at_end"),
    ("metric_for_best_model", "metric_for_best_model"),
    ("greater_is_better", "greater_is_better"),
    ("group_by_length", "group_by_length"),
    ("resume_from_checkpoint", "resume"),
    ("push_to_hub", "push_to_hub"),
    ("hub_model_id", "hub_model_id"),
    ("hub_private_repo", "hub_private_repo"),
];

/// Whether a JSON object is a TrainingArguments dump rather than a file of peftrain's flags.
pub fn is_training_arguments(v: &Map<String, Value>) -> bool {
    v.contains_key("output_dir")
        && (v.contains_key("per_device_train_batch_size") || v.contains_key("learning_rate") && v.contains_key("lr_scheduler_type"))
}

/// A flag a TrainingArguments key sets: its clap id and the value as a command line gives it.
pub type Flag = (&'static str, String);

/// The flags a TrainingArguments JSON sets and the keys peftrain does not support (sorted).
/// A value of the wrong type is an error naming the key.
pub fn flags(v: &Map<String, Value>) -> Result<(Vec<Flag>, Vec<String>), String> {
    let mut set = Vec::new();
    let mut unsupported = Vec::new();
    for (key, value) in v {
        if key == "warmup_steps" {
            // transformers 5 takes a float below 1 as a ratio of the steps, else a count.
            match value.as_f64() {
                Some(w) if w > 0.0 && w < 1.0 => set.push(("warmup_ratio", w.to_string())),
                Some(w) if w >= 0.0 && w.fract() == 0.0 => set.push(("warmup_steps", (w as u64).to_string())),
                Some(_) | None if value.is_null() => {}
                _ => return Err(format!("TrainingArguments `warmup_steps`: {value} is neither a step count nor a ratio below 1")),
            }
            continue;
        }
        if key == "report_to" {
            // A list of integrations (or one name, or "all"): peftrain writes TensorBoard's.
            let names: Vec<&str> = match value {
                Value::String(s) => vec![s.as_str()],
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                Value::Null => vec![],
                _ => return Err(format!("TrainingArguments `report_to`: {value} is not a list of names")),
            };
            let tb = names.iter().any(|n| *n == "tensorboard" || *n == "all");
            set.push(("report_to", if tb { "tensorboard" } else { "none" }.to_string()));
            let others: Vec<&&str> = names.iter().filter(|n| !matches!(**n, "tensorboard" | "all" | "none")).collect();
            if !others.is_empty() {
                unsupported.push(format!("report_to={}", others.iter().map(|s| s.to_string()).collect::<Vec<_>>().join("+")));
            }
            continue;
        }
        let Some((_, flag)) = SHARED.iter().find(|(k, _)| k == key) else {
            // Private fields (`_n_gpu`) and unset ones say nothing a user chose.
            if !key.starts_with('_') && !value.is_null() {
                unsupported.push(key.clone());
            }
            continue;
        };
        let text = match value {
            Value::Null => continue,
            // The Trainer's "no maximum".
            Value::Number(n) if key == "max_steps" && n.as_i64().is_some_and(|s| s < 0) => continue,
            Value::Number(n) => n.to_string(),
            Value::String(s) if s.is_empty() => continue,
            Value::String(s) => s.clone(),
            Value::Bool(b) => b.to_string(),
            other => return Err(format!("TrainingArguments `{key}`: {other} is not a number, string or boolean")),
        };
        set.push((*flag, text));
    }
    Ok((set, unsupported))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_keys_become_flags_and_the_rest_are_named() {
        let v: Map<String, Value> = serde_json::from_str(
            r#"{"output_dir": "o", "per_device_train_batch_size": 4, "max_steps": -1, "learning_rate": 3e-05,
                "warmup_steps": 0.1, "eval_steps": null, "report_to": ["tensorboard", "wandb"], "fp16": false,
                "_n_gpu": 0, "greater_is_better": true, "lr_scheduler_type": "cosine"}"#,
        )
        .unwrap();
        let (set, unsupported) = flags(&v).unwrap();
        let get = |id: &str| set.iter().find(|(k, _)| *k == id).map(|(_, v)| v.as_str());
        assert_eq!(get("output_dir"), Some("o"));
        assert_eq!(get("per_device_train_batch_size"), Some("4"));
        assert_eq!(get("max_steps"), None);
        assert_eq!(get("lr").map(|s| s.parse::<f64>().unwrap()), Some(3e-5));
        assert_eq!(get("warmup_ratio"), Some("0.1"));
        assert_eq!(get("eval_steps"), None);
        assert_eq!(get("report_to"), Some("tensorboard"));
        assert_eq!(get("greater_is_better"), Some("true"));
        assert_eq!(unsupported, ["fp16", "report_to=wandb"]);
        assert!(is_training_arguments(&v));
    }
}
