//! README.md, the model card beside the trained weights, as peft and the Trainer write one:
//! YAML metadata the hub reads (base model, library, tags, dataset, `model-index` with the
//! evaluation's results), then the results and the hyper-parameters in prose.

use crate::config::TrainConfig;
use crate::trainer::{EvalResult, LoopState};
use peftrain_spec::task::column_title;

/// A YAML scalar: a JSON string is a valid double-quoted YAML one, escapes and all.
fn q(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// The model card of a finished run: `name` its output directory's name, `repo` the hub repo
/// it is pushed to (if any), `eval` its final (or best) evaluation, `st` where its loop ended.
pub fn model_card(cfg: &TrainConfig, name: &str, repo: Option<&str>, eval: Option<&EvalResult>, st: &LoopState) -> String {
    let base = cfg.base_model_name();
    let kind = cfg.method.kind;
    let peft = kind.saves_peft_adapter();
    let task = cfg.task_name();
    let glue = cfg.glue_task().is_some();
    let dataset = if glue { format!("GLUE {}", task.to_uppercase()) } else { "your data".to_string() };
    let mut y = String::from("---\n");
    y += &format!("base_model: {}\n", q(&base));
    y += &format!("library_name: {}\n", if peft { "peft" } else { "transformers" });
    y += "tags:\n";
    if peft {
        y += &format!("- {}\n", q(&format!("base_model:adapter:{base}")));
    }
    for t in [kind.as_str(), "transformers", "peftrain", "generated_from_trainer"] {
        y += &format!("- {}\n", q(t));
    }
    if glue {
        y += "datasets:\n- \"nyu-mll/glue\"\n";
    }
    // A NaN (a constant prediction's correlation) has no YAML number: the prose shows it.
    let metrics: Vec<(&String, f64)> =
        eval.map(|e| e.metrics.iter().map(|(k, v)| (k, *v)).filter(|(k, v)| !k.starts_with("loss") && v.is_finite()).collect()).unwrap_or_default();
    if !metrics.is_empty() {
        y += "metrics:\n";
        for (k, _) in &metrics {
            y += &format!("- {}\n", q(k));
        }
        y += &format!("model-index:\n- name: {}\n  results:\n  - task:\n      type: text-classification\n      name: Text Classification\n", q(name));
        y += &format!("    dataset:\n      name: {}\n      type: {}\n", q(&dataset), q(if glue { "nyu-mll/glue" } else { "custom" }));
        if glue {
            y += &format!("      config: {}\n      split: validation\n", q(&task));
        }
        y += "    metrics:\n";
        for (k, v) in &metrics {
            y += &format!("    - type: {}\n      value: {v}\n      name: {}\n", q(k), q(&column_title(k)));
        }
    }
    y += "---\n\n";
    let mut md = y;
    md += &format!("# {name}\n\n");
    md += &format!(
        "This model is a fine-tuned version of [{base}]({}) on {dataset} with {} (peftrain).\n",
        if cfg.model_id.is_some() { format!("https://huggingface.co/{base}") } else { base.clone() },
        kind
    );
    if let Some(e) = eval {
        md += "It achieves the following results on the evaluation set:\n";
        md += &format!("- Loss: {:.4}\n", e.loss);
        for (k, v) in &e.metrics {
            md += &format!("- {}: {v:.4}\n", column_title(k));
        }
    }
    md += &how_to_use(cfg, name, repo, &base);
    let schedule = cfg.schedule(st.max_steps);
    md += "\n## Training procedure\n\n### Training hyperparameters\n\nThe following hyperparameters were used during training:\n";
    md += &format!("- method: {kind} ({})\n", cfg.method.method().rules().describe());
    md += &format!("- learning_rate: {}\n", cfg.lr());
    md += &format!("- train_batch_size: {}\n", cfg.per_worker_batch());
    md += &format!("- eval_batch_size: {}\n", cfg.eval_batch().div_ceil(cfg.workers.max(1)));
    md += &format!("- seed: {}\n", cfg.seed);
    md += &format!("- num_workers: {}\n", cfg.workers);
    if cfg.gradient_accumulation_steps > 1 {
        md += &format!("- gradient_accumulation_steps: {}\n", cfg.gradient_accumulation_steps);
    }
    md += &format!("- total_train_batch_size: {}\n", cfg.global_batch());
    md += &format!(
        "- optimizer: AdamW with betas=({},{}) and epsilon={}, weight_decay={}\n",
        cfg.adam_beta1, cfg.adam_beta2, cfg.adam_epsilon, cfg.weight_decay
    );
    md += &format!("- lr_scheduler_type: {}\n- lr_scheduler_warmup_steps: {}\n", cfg.lr_scheduler_type, schedule.warmup);
    md += &format!("- training_steps: {}\n", st.global_step);
    md += &format!("\n### Framework versions\n\n- peftrain {}\n", env!("CARGO_PKG_VERSION"));
    md
}

/// `s` as one shell word (single-quoted unless it is plainly safe).
fn shell(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:@".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// "How to use": loading the weights with transformers (+ peft), label names included. peft's
/// adapter format has no field for them (transformers and peft read the base model's
/// config), so the snippet passes them to `from_pretrained`, as run_glue.py does.
fn how_to_use(cfg: &TrainConfig, name: &str, repo: Option<&str>, base: &str) -> String {
    let labels = cfg.labels();
    let mut md = String::from("\n## How to use\n\n");
    if !cfg.method.kind.saves_peft_adapter() {
        md += &format!(
            "`peftrain merge --model {} --adapter {} --output merged` writes a transformers checkpoint \
             (`AutoModelForSequenceClassification.from_pretrained(\"merged\")`, label names included).\n",
            shell(base),
            shell(name)
        );
        return md;
    }
    md += "```python\nfrom transformers import AutoModelForSequenceClassification\nfrom peft import PeftModel\n\n";
    let kwargs = if labels.is_regression() {
        "num_labels=1, problem_type=\"regression\"".to_string()
    } else {
        let names: Vec<String> = labels.id2label().iter().map(|(i, n)| format!("{i}: {}", q(n))).collect();
        md += &format!("id2label = {{{}}}\n", names.join(", "));
        format!("num_labels={}, id2label=id2label, label2id={{v: k for k, v in id2label.items()}}", labels.num_labels())
    };
    md += &format!("base = AutoModelForSequenceClassification.from_pretrained(\n    {}, {kwargs}\n)\n", q(base));
    md += &match repo {
        Some(r) => format!("model = PeftModel.from_pretrained(base, {})\n```\n", q(r)),
        None => format!("# This directory, or the hub repo it was pushed to:\nmodel = PeftModel.from_pretrained(base, {})\n```\n", q(name)),
    };
    md
}
