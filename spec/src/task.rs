//! The tasks peftrain trains on, as one table: GLUE's nine (their TSV and Hugging Face hub
//! layouts, label names, metrics) and the metric kinds, typed. A task is one entry of
//! `TASKS`; the user's own files (`--train-file`) describe theirs with column flags instead.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A GLUE task (`--task`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Cola,
    Sst2,
    Mrpc,
    Stsb,
    Qqp,
    Mnli,
    Qnli,
    Rte,
    Wnli,
}

/// What a head predicts, as transformers' `problem_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Problem {
    /// One label per example, cross-entropy (`single_label_classification`).
    #[serde(rename = "single_label_classification")]
    Classification,
    /// One float per example, mean squared error (`regression`, one output).
    Regression,
}

/// A metric as `evaluate`'s `glue` metric (and run_glue.py's `compute_metrics`) names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Accuracy,
    F1,
    MatthewsCorrelation,
    Pearson,
    Spearmanr,
    /// run_glue.py's metric for the user's own regression data.
    Mse,
}

impl Metric {
    pub const ALL: [Metric; 6] = [Metric::Accuracy, Metric::F1, Metric::MatthewsCorrelation, Metric::Pearson, Metric::Spearmanr, Metric::Mse];

    /// The key after `eval_` in metrics.jsonl (`eval_matthews_correlation`).
    pub fn key(self) -> &'static str {
        match self {
            Metric::Accuracy => "accuracy",
            Metric::F1 => "f1",
            Metric::MatthewsCorrelation => "matthews_correlation",
            Metric::Pearson => "pearson",
            Metric::Spearmanr => "spearmanr",
            Metric::Mse => "mse",
        }
    }

    /// Whether a larger value is a better model (`greater_is_better`).
    pub fn greater_is_better(self) -> bool {
        self != Metric::Mse
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

impl FromStr for Metric {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let k = s.strip_prefix("eval_").unwrap_or(s);
        Metric::ALL.into_iter().find(|m| m.key() == k).ok_or_else(|| format!("{s:?}: unknown metric ({})", Metric::ALL.map(|m| m.key()).join(", ")))
    }
}

/// The Trainer's column title for a metrics key: `eval_` dropped, `_` as spaces, each word
/// capitalised (`matthews_correlation_mm` -> `Matthews Correlation Mm`).
pub fn column_title(key: &str) -> String {
    key.strip_prefix("eval_")
        .unwrap_or(key)
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next().map(|f| f.to_uppercase().chain(c).collect::<String>()).unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// One evaluation set of a task: its GLUE TSV file stem, its hub split, and the suffix of its
/// metrics keys (run_glue.py reports MNLI's mismatched set as `eval_accuracy_mm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvalSet {
    pub tsv: &'static str,
    pub hub: &'static str,
    pub suffix: &'static str,
}

const DEV: &[EvalSet] = &[EvalSet { tsv: "dev", hub: "validation", suffix: "" }];
const TEST: &[EvalSet] = &[EvalSet { tsv: "test", hub: "test", suffix: "" }];

/// One task, everything peftrain needs to read, train and score it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TaskInfo {
    pub task: Task,
    /// `--task` and the hub's `glue` config name.
    pub name: &'static str,
    /// Directory of GLUE's TSV layout.
    pub glue_dir: &'static str,
    /// Text columns of GLUE's TSV files (one, or a pair).
    pub tsv_text: &'static [&'static str],
    /// The label column of GLUE's TSV files.
    pub tsv_label: &'static str,
    /// Column names of GLUE's TSV files that have no header row (CoLA's train and dev).
    pub tsv_columns: Option<&'static [&'static str]>,
    /// Text columns of the hub's parquet files (its label column is `label`).
    pub hub_text: &'static [&'static str],
    /// Label names in id order (the hub's `ClassLabel` names); empty for a regression.
    pub labels: &'static [&'static str],
    pub problem: Problem,
    /// Metrics as the `glue` metric reports them; the first is the task's main one.
    pub metrics: &'static [Metric],
    /// Validation sets, the first the one evaluated during training.
    pub dev: &'static [EvalSet],
    pub test: &'static [EvalSet],
}

const PAIR: &[&str] = &["sentence1", "sentence2"];
const ONE: &[&str] = &["sentence"];

/// GLUE, in the order of its paper.
pub const TASKS: [TaskInfo; 9] = [
    TaskInfo {
        task: Task::Cola,
        name: "cola",
        glue_dir: "CoLA",
        tsv_text: ONE,
        tsv_label: "label",
        tsv_columns: Some(&["source", "label", "original_label", "sentence"]),
        hub_text: ONE,
        labels: &["unacceptable", "acceptable"],
        problem: Problem::Classification,
        metrics: &[Metric::MatthewsCorrelation],
        dev: DEV,
        test: TEST,
    },
    TaskInfo {
        task: Task::Sst2,
        name: "sst2",
        glue_dir: "SST-2",
        tsv_text: ONE,
        tsv_label: "label",
        tsv_columns: None,
        hub_text: ONE,
        labels: &["negative", "positive"],
        problem: Problem::Classification,
        metrics: &[Metric::Accuracy],
        dev: DEV,
        test: TEST,
    },
    TaskInfo {
        task: Task::Mrpc,
        name: "mrpc",
        glue_dir: "MRPC",
        tsv_text: &["#1 String", "#2 String"],
        tsv_label: "Quality",
        tsv_columns: None,
        hub_text: PAIR,
        labels: &["not_equivalent", "equivalent"],
        problem: Problem::Classification,
        metrics: &[Metric::F1, Metric::Accuracy],
        dev: DEV,
        test: TEST,
    },
    TaskInfo {
        task: Task::Stsb,
        name: "stsb",
        glue_dir: "STS-B",
        tsv_text: PAIR,
        tsv_label: "score",
        tsv_columns: None,
        hub_text: PAIR,
        labels: &[],
        problem: Problem::Regression,
        metrics: &[Metric::Pearson, Metric::Spearmanr],
        dev: DEV,
        test: TEST,
    },
    TaskInfo {
        task: Task::Qqp,
        name: "qqp",
        glue_dir: "QQP",
        tsv_text: &["question1", "question2"],
        tsv_label: "is_duplicate",
        tsv_columns: None,
        hub_text: &["question1", "question2"],
        labels: &["not_duplicate", "duplicate"],
        problem: Problem::Classification,
        metrics: &[Metric::F1, Metric::Accuracy],
        dev: DEV,
        test: TEST,
    },
    TaskInfo {
        task: Task::Mnli,
        name: "mnli",
        glue_dir: "MNLI",
        tsv_text: PAIR,
        tsv_label: "gold_label",
        tsv_columns: None,
        hub_text: &["premise", "hypothesis"],
        labels: &["entailment", "neutral", "contradiction"],
        problem: Problem::Classification,
        metrics: &[Metric::Accuracy],
        dev: &[
            EvalSet { tsv: "dev_matched", hub: "validation_matched", suffix: "" },
            EvalSet { tsv: "dev_mismatched", hub: "validation_mismatched", suffix: "_mm" },
        ],
        test: &[
            EvalSet { tsv: "test_matched", hub: "test_matched", suffix: "" },
            EvalSet { tsv: "test_mismatched", hub: "test_mismatched", suffix: "_mm" },
        ],
    },
    TaskInfo {
        task: Task::Qnli,
        name: "qnli",
        glue_dir: "QNLI",
        tsv_text: &["question", "sentence"],
        tsv_label: "label",
        tsv_columns: None,
        hub_text: &["question", "sentence"],
        labels: &["entailment", "not_entailment"],
        problem: Problem::Classification,
        metrics: &[Metric::Accuracy],
        dev: DEV,
        test: TEST,
    },
    TaskInfo {
        task: Task::Rte,
        name: "rte",
        glue_dir: "RTE",
        tsv_text: PAIR,
        tsv_label: "label",
        tsv_columns: None,
        hub_text: PAIR,
        labels: &["entailment", "not_entailment"],
        problem: Problem::Classification,
        metrics: &[Metric::Accuracy],
        dev: DEV,
        test: TEST,
    },
    TaskInfo {
        task: Task::Wnli,
        name: "wnli",
        glue_dir: "WNLI",
        tsv_text: PAIR,
        tsv_label: "label",
        tsv_columns: None,
        hub_text: PAIR,
        labels: &["not_entailment", "entailment"],
        problem: Problem::Classification,
        metrics: &[Metric::Accuracy],
        dev: DEV,
        test: TEST,
    },
];

/// What a head predicts: label names in id order, or a regression's one output. It travels
/// with trained weights (`trainable_config.json`) so `eval`, `predict` and `merge` name what
/// `train` learned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Labels {
    #[serde(rename = "problem_type")]
    pub problem: Problem,
    /// Empty for a regression.
    pub names: Vec<String>,
}

/// Most labels a classification head may have (the wire's bound on num_labels).
pub const MAX_LABELS: usize = 1 << 16;

impl Labels {
    pub fn classes(names: Vec<String>) -> Labels {
        Labels { problem: Problem::Classification, names }
    }

    pub fn regression() -> Labels {
        Labels { problem: Problem::Regression, names: Vec::new() }
    }

    pub fn of_task(task: Task) -> Labels {
        let info = task.info();
        Labels { problem: info.problem, names: info.labels.iter().map(|s| s.to_string()).collect() }
    }

    pub fn is_regression(&self) -> bool {
        self.problem == Problem::Regression
    }

    /// Outputs of the head: 1 for a regression.
    pub fn num_labels(&self) -> usize {
        if self.is_regression() {
            1
        } else {
            self.names.len()
        }
    }

    /// config.json's `id2label` (`LABEL_0` for a regression's one output, as transformers
    /// names it).
    pub fn id2label(&self) -> Vec<(usize, String)> {
        if self.is_regression() {
            return vec![(0, "LABEL_0".into())];
        }
        self.names.iter().cloned().enumerate().collect()
    }

    /// Checks what a file or the wire claims: some labels, at most `MAX_LABELS`, none twice.
    pub fn validate(&self) -> Result<(), String> {
        if self.is_regression() {
            return if self.names.is_empty() { Ok(()) } else { Err("a regression has no label names".into()) };
        }
        if self.names.is_empty() || self.names.len() > MAX_LABELS {
            return Err(format!("{} labels: expected 1 to {MAX_LABELS}", self.names.len()));
        }
        if let Some((k, n)) = self.names.iter().enumerate().find(|(k, n)| self.names[..*k].contains(n)) {
            return Err(format!("label {n:?} named twice (id {k})"));
        }
        Ok(())
    }
}

impl Task {
    pub fn info(self) -> &'static TaskInfo {
        // The table is in the enum's order (a unit test holds it so).
        &TASKS[self as usize]
    }

    pub fn name(self) -> &'static str {
        self.info().name
    }

    pub fn num_labels(self) -> usize {
        match self.info().problem {
            Problem::Regression => 1,
            Problem::Classification => self.info().labels.len(),
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Task {
    type Err = String;
    /// GLUE's spellings too (`SST-2`, `STS-B`, `CoLA`).
    fn from_str(s: &str) -> Result<Task, String> {
        let k = s.to_ascii_lowercase().replace('-', "");
        TASKS.iter().find(|t| t.name == k).map(|t| t.task).ok_or_else(|| format!("{s:?}: unknown task ({})", TASKS.map(|t| t.name).join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_in_the_enum_s_order_and_names_round_trip() {
        for (i, t) in TASKS.iter().enumerate() {
            assert_eq!(t.task as usize, i);
            assert_eq!(t.name.parse::<Task>(), Ok(t.task));
            assert_eq!(serde_json::to_value(t.task).unwrap(), serde_json::json!(t.name));
            assert_eq!(t.problem == Problem::Regression, t.labels.is_empty());
            assert!(!t.metrics.is_empty() && !t.dev.is_empty() && !t.test.is_empty());
        }
        assert_eq!("SST-2".parse::<Task>(), Ok(Task::Sst2));
        assert_eq!("STS-B".parse::<Task>(), Ok(Task::Stsb));
        assert!("imdb".parse::<Task>().unwrap_err().contains("cola, sst2"));
        assert_eq!((Task::Mnli.num_labels(), Task::Stsb.num_labels()), (3, 1));
    }

    #[test]
    fn metric_keys_and_titles_are_the_trainer_s() {
        for m in Metric::ALL {
            assert_eq!(m.key().parse::<Metric>(), Ok(m));
            assert_eq!(format!("eval_{}", m.key()).parse::<Metric>(), Ok(m));
        }
        assert_eq!(column_title("eval_matthews_correlation"), "Matthews Correlation");
        assert_eq!(column_title("eval_spearmanr"), "Spearmanr");
        assert_eq!(column_title("eval_f1"), "F1");
        assert_eq!(column_title("eval_accuracy_mm"), "Accuracy Mm");
    }
}
