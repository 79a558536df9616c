//! What users read: the Trainer's step table printed live, `metrics.jsonl` with the Trainer's
//! log_history field names, and `TrainOutput` with its definitions.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use serde::Serialize;
use serde_json::{Map, Value};

/// The notebook table of the Hugging Face Trainer, as plain text: `Step | Training Loss |
/// Validation Loss` and a column per metric titled as the Trainer titles it (`Matthews
/// Correlation`, `F1`, `Spearmanr`), each left-aligned to its header's width plus two spaces,
/// six decimals.
pub struct StepTable<W: Write> {
    out: W,
    header: Vec<String>,
    printed_header: bool,
}

impl<W: Write> StepTable<W> {
    /// `metric_keys`: the evaluation's metrics keys, in column order (`f1`, `accuracy`).
    pub fn new(out: W, metric_keys: &[String]) -> Self {
        let mut header: Vec<String> = ["Step", "Training Loss", "Validation Loss"].map(String::from).to_vec();
        header.extend(metric_keys.iter().map(|k| peftrain_spec::task::column_title(k)));
        StepTable { out, header, printed_header: false }
    }

    /// `metrics`: one value (or none) per metric column.
    pub fn row(&mut self, step: u64, train_loss: Option<f64>, eval_loss: Option<f64>, metrics: &[Option<f64>]) -> std::io::Result<()> {
        if !self.printed_header {
            writeln!(self.out, "{}", self.format_row(&self.header))?;
            self.printed_header = true;
        }
        let f = |v: Option<f64>, missing: &str| v.map(|x| format!("{x:.6}")).unwrap_or_else(|| missing.to_string());
        let mut cells = vec![step.to_string(), f(train_loss, "No log"), f(eval_loss, "")];
        cells.extend(metrics.iter().map(|m| f(*m, "")));
        writeln!(self.out, "{}", self.format_row(&cells).trim_end())?;
        self.out.flush()
    }

    /// Columns are their header's width plus two spaces; a metric column at least a value's
    /// (`0.000000`, so `F1` does not run into the next), and a longer cell still gets two.
    fn format_row(&self, cells: &[String]) -> String {
        let mut s = String::new();
        for (k, (c, h)) in cells.iter().zip(&self.header).enumerate() {
            let w = if k >= 3 { h.len().max(8) } else { h.len() };
            s.push_str(&format!("{c:<w$}", w = w.max(c.len()) + 2));
        }
        s.trim_end().to_string()
    }
}

/// `metrics.jsonl`: one JSON object per log or evaluation event.
pub struct MetricsLog {
    out: BufWriter<File>,
    /// `--report-to tensorboard`: the same events as scalars.
    tensorboard: Option<crate::tensorboard::EventWriter>,
}

impl MetricsLog {
    pub fn create(path: &Path) -> std::io::Result<MetricsLog> {
        Ok(MetricsLog { out: BufWriter::new(File::create(path)?), tensorboard: None })
    }

    /// Continues an existing log (a resumed run).
    pub fn append(path: &Path) -> std::io::Result<MetricsLog> {
        Ok(MetricsLog { out: BufWriter::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?), tensorboard: None })
    }

    /// Also writes every event to a new TensorBoard event file in `dir`.
    pub fn with_tensorboard(mut self, dir: &Path) -> std::io::Result<MetricsLog> {
        let w = crate::tensorboard::EventWriter::create(dir)?;
        tracing::info!("TensorBoard events: {}", w.path().display());
        self.tensorboard = Some(w);
        Ok(self)
    }

    pub fn write(&mut self, event: &Map<String, Value>) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.out, event)?;
        self.out.write_all(b"\n")?;
        self.out.flush()?;
        if let Some(tb) = &mut self.tensorboard {
            tb.log(event)?;
        }
        Ok(())
    }
}

/// The Trainer's `TrainOutput(global_step, training_loss, metrics)`.
#[derive(Debug, Clone, Serialize)]
pub struct TrainOutput {
    pub global_step: u64,
    pub training_loss: f64,
    pub metrics: TrainMetrics,
}

/// `speed_metrics("train", ...)` plus total_flos, train_loss and epoch.
#[derive(Debug, Clone, Serialize)]
pub struct TrainMetrics {
    pub train_runtime: f64,
    pub train_samples_per_second: f64,
    pub train_steps_per_second: f64,
    pub total_flos: f64,
    pub train_loss: f64,
    pub epoch: f64,
}

fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

impl TrainOutput {
    /// Rounds as transformers' `speed_metrics` does (runtime to 4 decimals, rates to 3).
    pub fn new(global_step: u64, loss_total: f64, runtime: f64, samples: f64, total_flos: f64, epoch: f64) -> TrainOutput {
        let training_loss = if global_step > 0 { loss_total / global_step as f64 } else { 0.0 };
        TrainOutput {
            global_step,
            training_loss,
            metrics: TrainMetrics {
                train_runtime: round(runtime, 4),
                train_samples_per_second: round(samples / runtime.max(1e-9), 3),
                train_steps_per_second: round(global_step as f64 / runtime.max(1e-9), 3),
                total_flos,
                train_loss: training_loss,
                epoch,
            },
        }
    }

    pub fn metrics_map(&self) -> Map<String, Value> {
        match serde_json::to_value(&self.metrics) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        }
    }
}

/// Python's repr of a float, enough for the values here.
fn py_float(x: f64) -> String {
    if x.is_finite() && x == x.trunc() && x.abs() < 1e16 {
        format!("{x:.1}")
    } else {
        format!("{x}")
    }
}

impl std::fmt::Display for TrainOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = &self.metrics;
        write!(
            f,
            "TrainOutput(global_step={}, training_loss={}, metrics={{'train_runtime': {}, 'train_samples_per_second': {}, \
             'train_steps_per_second': {}, 'total_flos': {}, 'train_loss': {}, 'epoch': {}}})",
            self.global_step,
            py_float(self.training_loss),
            py_float(m.train_runtime),
            py_float(m.train_samples_per_second),
            py_float(m.train_steps_per_second),
            py_float(m.total_flos),
            py_float(m.train_loss),
            py_float(m.epoch)
        )
    }
}

pub fn human_bytes(b: u64) -> String {
    let b = b as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.2} MB", b / 1e6)
    } else {
        format!("{:.1} kB", b / 1e3)
    }
}

/// peft's `print_trainable_parameters` line.
pub fn peft_line(trainable: u64, all: u64) -> String {
    let pct = if all > 0 { 100.0 * trainable as f64 / all as f64 } else { 0.0 };
    format!("trainable params: {} || all params: {} || trainable%: {pct:.4}", thousands(trainable), thousands(all))
}

/// `1234567` as `1,234,567`, as peft prints counts.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// transformers' warning for a head the base checkpoint lacked (reported once per run).
pub fn newly_initialized_message(class: &str, dir: &Path, names: &[String]) -> Option<String> {
    if names.is_empty() {
        return None;
    }
    Some(format!(
        "Some weights of {class} were not initialized from the model checkpoint at {} and are newly initialized: {names:?}. \
         You should probably TRAIN this model on a down-stream task to be able to use it for predictions and inference.",
        dir.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_the_trainer_layout() {
        let mut buf = Vec::new();
        let mut t = StepTable::new(&mut buf, &["accuracy".to_string()]);
        t.row(500, Some(0.355), Some(0.241495), &[Some(0.915138)]).unwrap();
        t.row(510, None, Some(0.2), &[Some(0.9)]).unwrap();
        let s = String::from_utf8(buf).unwrap();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "Step  Training Loss  Validation Loss  Accuracy");
        assert_eq!(lines[1], "500   0.355000       0.241495         0.915138");
        assert_eq!(lines[2], "510   No log         0.200000         0.900000");
        let mut buf = Vec::new();
        let mut t = StepTable::new(&mut buf, &["pearson".to_string(), "spearmanr".to_string()]);
        t.row(10, Some(1.5), Some(0.75), &[Some(0.5), None]).unwrap();
        let s = String::from_utf8(buf).unwrap();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "Step  Training Loss  Validation Loss  Pearson   Spearmanr");
        assert_eq!(lines[1], "10    1.500000       0.750000         0.500000");
        let mut buf = Vec::new();
        let mut t = StepTable::new(&mut buf, &["f1".to_string(), "accuracy".to_string()]);
        t.row(1234567, None, Some(0.5), &[Some(0.8), Some(0.75)]).unwrap();
        let s = String::from_utf8(buf).unwrap();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "Step  Training Loss  Validation Loss  F1        Accuracy");
        assert_eq!(lines[1], "1234567  No log         0.500000         0.800000  0.750000");
    }

    #[test]
    fn train_output_prints_like_python() {
        let o = TrainOutput::new(4, 2.0, 2.0, 64.0, 1.5e12, 1.0);
        assert_eq!(
            o.to_string(),
            "TrainOutput(global_step=4, training_loss=0.5, metrics={'train_runtime': 2.0, 'train_samples_per_second': 32.0, \
             'train_steps_per_second': 2.0, 'total_flos': 1500000000000.0, 'train_loss': 0.5, 'epoch': 1.0})"
        );
    }
}
