//! The report of one or several runs (`peftrain compare`, and `train` for its own run):
//! `report.md` with a table of method, trainable parameters, runtime, throughput and the
//! task's metrics, each run's step table, and `curves.png` (the main metric and the loss
//! against the step).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::plot::{curves, Series};
use crate::report::StepTable;

/// What a finished run leaves for reports (`run_summary.json` in its output directory).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSummaryFile {
    pub method: String,
    pub task: String,
    pub model: String,
    pub trainable_params: u64,
    pub all_params: u64,
    pub train_runtime: f64,
    pub train_samples_per_second: f64,
    /// The evaluations' metrics keys (without `eval_`), the main one first.
    #[serde(default = "accuracy_only")]
    pub metric_keys: Vec<String>,
    /// The metric that chose the model, and its best value.
    #[serde(default)]
    pub best_metric_key: String,
    pub best_metric: Option<f64>,
    /// The last (or, with --load-best-model-at-end, the best) evaluation's metrics.
    #[serde(default)]
    pub final_metrics: std::collections::BTreeMap<String, f64>,
    pub final_eval_loss: Option<f64>,
    pub workers: usize,
}

fn accuracy_only() -> Vec<String> {
    vec!["accuracy".into()]
}

/// A run as a report reads it.
pub struct RunRecord {
    pub dir: PathBuf,
    pub summary: RunSummaryFile,
    pub events: Vec<Value>,
}

impl RunRecord {
    pub fn read(dir: &Path) -> Result<RunRecord, String> {
        let sp = dir.join("run_summary.json");
        let summary = std::fs::read_to_string(&sp)
            .map_err(|e| format!("{}: {e}", sp.display()))
            .and_then(|t| serde_json::from_str(&t).map_err(|e| format!("{}: malformed JSON: {e}", sp.display())))?;
        let mp = dir.join("metrics.jsonl");
        let text = std::fs::read_to_string(&mp).map_err(|e| format!("{}: {e}", mp.display()))?;
        let events = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        Ok(RunRecord { dir: dir.to_path_buf(), summary, events })
    }

    fn series(&self, key: &str) -> Vec<(f64, f64)> {
        self.events.iter().filter_map(|e| Some((e.get("step")?.as_f64()?, e.get(key)?.as_f64()?))).collect()
    }

    /// The run's step table, rebuilt from its events as the live one was printed.
    fn table(&self) -> String {
        let mut buf = Vec::new();
        let mut t = StepTable::new(&mut buf, &self.summary.metric_keys);
        let mut last_loss = None;
        let mut steps: Vec<u64> =
            self.events.iter().filter(|e| e.get("loss").is_some() || e.get("eval_loss").is_some()).filter_map(|e| e.get("step")?.as_u64()).collect();
        steps.dedup();
        for s in steps {
            let at = |k: &str| {
                self.events.iter().find(|e| e.get("step").and_then(|v| v.as_u64()) == Some(s) && e.get(k).is_some()).and_then(|e| e[k].as_f64())
            };
            let loss = at("loss");
            let el = at("eval_loss");
            let cells: Vec<Option<f64>> = self.summary.metric_keys.iter().map(|k| at(&format!("eval_{k}"))).collect();
            let shown = loss.or(if el.is_some() { last_loss } else { None });
            if loss.is_some() {
                last_loss = loss;
            }
            let _ = t.row(s, shown, el, &cells);
        }
        String::from_utf8_lossy(&buf).to_string()
    }
}

fn f(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.4}")).unwrap_or_else(|| "–".into())
}

/// Writes `report.md` and `curves.png` for `runs` into `out`; returns both paths.
pub fn write_report(out: &Path, title: &str, runs: &[RunRecord]) -> Result<(PathBuf, PathBuf), String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let png = out.join("curves.png");
    // Drawn under a temporary name and renamed, as every output is.
    let png_tmp = peftrain_spec::paths::temp_beside(&png).with_extension("png");
    // The main metric of the first run (a comparison shares its task).
    let main = runs.first().and_then(|r| r.summary.metric_keys.first().cloned()).unwrap_or_else(|| "accuracy".into());
    let title_of = peftrain_spec::task::column_title;
    let acc: Vec<Series> = runs.iter().map(|r| Series { name: r.summary.method.clone(), points: r.series(&format!("eval_{main}")) }).collect();
    let loss: Vec<Series> = runs.iter().map(|r| Series { name: r.summary.method.clone(), points: r.series("loss") }).collect();
    let eval_loss: Vec<Series> =
        runs.iter().map(|r| Series { name: format!("{} (validation)", r.summary.method), points: r.series("eval_loss") }).collect();
    let all_loss: Vec<Series> = loss.into_iter().chain(eval_loss).collect();
    let main_title = title_of(&main);
    curves(&png_tmp, &[(&format!("Validation {main_title}"), &main_title.to_lowercase(), &acc), ("Loss", "loss", &all_loss)])?;
    std::fs::rename(&png_tmp, &png).map_err(|e| format!("{}: {e}", png.display()))?;

    let mut md = format!("# {title}\n\n");
    let keys = runs.first().map(|r| r.summary.metric_keys.clone()).unwrap_or_default();
    let best_key = runs.first().map(|r| r.summary.best_metric_key.clone()).filter(|k| !k.is_empty()).unwrap_or_else(|| main.clone());
    let dev = |k: &str| format!("dev {}", title_of(k).to_lowercase());
    md.push_str(&format!(
        "| method | trainable params | trainable % | train runtime (s) | samples/s | best {} |{} validation loss |\n",
        dev(&best_key),
        keys.iter().map(|k| format!(" final {} |", dev(k))).collect::<String>()
    ));
    md.push_str(&format!("| --- | ---: | ---: | ---: | ---: | ---: |{} ---: |\n", " ---: |".repeat(keys.len())));
    for r in runs {
        let s = &r.summary;
        md.push_str(&format!(
            "| {} | {} | {:.4} | {:.1} | {:.2} | {} |{} {} |\n",
            s.method,
            crate::report::thousands(s.trainable_params),
            100.0 * s.trainable_params as f64 / s.all_params.max(1) as f64,
            s.train_runtime,
            s.train_samples_per_second,
            f(s.best_metric),
            keys.iter().map(|k| format!(" {} |", f(s.final_metrics.get(k).copied()))).collect::<String>(),
            f(s.final_eval_loss),
        ));
    }
    if let Some(first) = runs.first() {
        md.push_str(&format!(
            "\nModel `{}`, task {}, {} worker(s).\n\n![the main metric and the loss against the step](curves.png)\n",
            first.summary.model, first.summary.task, first.summary.workers
        ));
    }
    for r in runs {
        md.push_str(&format!("\n## {}\n\nOutputs in `{}`.\n\n```\n{}```\n", r.summary.method, r.dir.display(), r.table()));
    }
    let path = out.join("report.md");
    crate::checkpoint::write_atomic(&path, md.as_bytes()).map_err(|e| e.to_string())?;
    Ok((path, png))
}
