//! Examples from disk: GLUE's nine tasks in the GLUE TSV layout (`$GLUE_DIR/SST-2/train.tsv`,
//! fields unquoted; CoLA without a header) or the Hugging Face `glue` parquet layout
//! (`$GLUE_DIR/sst2/train-*.parquet`, MNLI's `validation_matched-*`), and the user's own files
//! (CSV, TSV, JSON Lines or parquet) named by run_glue.py's flags. A table (`table.rs`) becomes
//! examples through the columns and labels of its task (`peftrain_spec::task`, one table entry
//! per task). Every bad row is an error naming the file and line.

use std::fmt;
use std::path::{Path, PathBuf};

pub use peftrain_spec::task::{Labels, Metric, Problem, Task, TaskInfo};

pub use crate::table::DataError;
use crate::table::{read_parquet_table, Cell, Table};

/// A split of a data set. MNLI has two validation and two test sets (matched, mismatched).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Dev,
    Test,
    DevMismatched,
    TestMismatched,
}

impl Split {
    /// run_glue.py's and the hub's names too (`validation`, `validation_matched`).
    pub fn parse(s: &str) -> Option<Split> {
        match s {
            "train" => Some(Split::Train),
            "dev" | "validation" | "dev_matched" | "validation_matched" => Some(Split::Dev),
            "test" | "test_matched" => Some(Split::Test),
            "dev_mismatched" | "validation_mismatched" => Some(Split::DevMismatched),
            "test_mismatched" => Some(Split::TestMismatched),
            _ => None,
        }
    }

    pub fn is_test(self) -> bool {
        matches!(self, Split::Test | Split::TestMismatched)
    }

    /// The task's file stem and hub split for this split (None: the task has no such split).
    fn files(self, info: &TaskInfo) -> Option<(&'static str, &'static str)> {
        let set = |v: &[peftrain_spec::task::EvalSet], i: usize| v.get(i).map(|e| (e.tsv, e.hub));
        match self {
            Split::Train => Some(("train", "train")),
            Split::Dev => set(info.dev, 0),
            Split::DevMismatched => set(info.dev, 1),
            Split::Test => set(info.test, 0),
            Split::TestMismatched => set(info.test, 1),
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Dev => "validation",
            Split::Test => "test",
            Split::DevMismatched => "validation_mismatched",
            Split::TestMismatched => "test_mismatched",
        })
    }
}

/// An example's gold answer: a class id, or a regression's target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Label {
    Class(u32),
    Score(f32),
}

/// One row of a split.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// GLUE's `index`/`idx`, else the row number.
    pub idx: u64,
    pub text_a: String,
    pub text_b: Option<String>,
    /// None for test splits.
    pub label: Option<Label>,
}

/// Which columns of a table hold what.
#[derive(Debug, Clone, PartialEq)]
pub struct Columns {
    /// One text column, or a pair.
    pub text: Vec<String>,
    pub label: String,
    /// Class labels may be written as ids (GLUE's TSV writes SST-2's as 0/1) besides names.
    pub ids_ok: bool,
    /// Where the labels come from, said after a refused label (`for rte`, `(the labels of the
    /// training file)`).
    pub label_source: String,
}

impl Columns {
    fn of_task(text: &[&str], label: &str, task: Task) -> Columns {
        Columns { text: text.iter().map(|s| s.to_string()).collect(), label: label.into(), ids_ok: true, label_source: format!("for {task}") }
    }
}

/// The examples of `table`: texts from `cols.text`, labels read as `labels` says (required
/// unless `test`: a test file may lack the label column or leave it empty).
pub fn examples(table: &Table, cols: &Columns, labels: &Labels, test: bool) -> Result<Vec<Example>, DataError> {
    let missing = |c: &str| {
        let why = format!("missing column `{c}` (columns found: {})", table.column_list());
        if table.typed {
            table.file_err(why)
        } else {
            table.row_err(1, why)
        }
    };
    let text: Vec<usize> = cols.text.iter().map(|c| table.column(c).ok_or_else(|| missing(c))).collect::<Result<_, _>>()?;
    let label_col = table.column(&cols.label);
    if !test && label_col.is_none() {
        return Err(missing(&cols.label));
    }
    let index_col = ["index", "idx", "id"].iter().find_map(|c| table.column(c));
    let mut out = Vec::with_capacity(table.rows.len());
    for row in &table.rows {
        let err = |why: String| table.row_err(row.line, why);
        let idx = match index_col.map(|c| &row.cells[c]) {
            None => out.len() as u64,
            Some(Cell::Int(v)) => u64::try_from(*v).map_err(|_| err(format!("idx {v} is negative")))?,
            Some(Cell::Str(s)) => s.trim().parse::<u64>().map_err(|_| err(format!("index {s:?} is not a non-negative integer")))?,
            Some(other) => return Err(err(format!("index {} is not a non-negative integer", other.describe()))),
        };
        let mut texts = Vec::with_capacity(text.len());
        for (&c, name) in text.iter().zip(&cols.text) {
            match &row.cells[c] {
                Cell::Str(s) => texts.push(s.clone()),
                Cell::Null => return Err(err(format!("column `{name}` is null"))),
                other => return Err(err(format!("column `{name}` is not a string ({})", other.describe()))),
            }
        }
        let label = match label_col.map(|c| &row.cells[c]) {
            None => None,
            Some(cell) => read_label(cell, labels, cols.ids_ok, test).map_err(|why| err(format!("{why} {}", cols.label_source)))?,
        };
        if !test && label.is_none() {
            return Err(err(format!("column `{}` is empty", cols.label)));
        }
        let mut texts = texts.into_iter();
        out.push(Example { idx, text_a: texts.next().unwrap_or_default(), text_b: texts.next(), label });
    }
    Ok(out)
}

/// One label cell as `labels` reads it; None for a test row without one (empty, null, or the
/// hub's -1).
fn read_label(cell: &Cell, labels: &Labels, ids_ok: bool, test: bool) -> Result<Option<Label>, String> {
    let absent = match cell {
        Cell::Null => true,
        Cell::Str(s) => s.trim().is_empty(),
        Cell::Int(-1) => test,
        Cell::Float(f) => test && *f == -1.0,
        _ => false,
    };
    if absent {
        return Ok(None);
    }
    if labels.is_regression() {
        let v = match cell {
            Cell::Str(s) => s.trim().parse::<f64>().map_err(|_| format!("label {s:?} is not a number (a regression's target)"))?,
            Cell::Int(i) => *i as f64,
            Cell::Float(f) => *f,
            Cell::Null => unreachable!("handled above"),
        };
        if !v.is_finite() || v.abs() > f32::MAX as f64 {
            return Err(format!("label {v} is not a finite number"));
        }
        return Ok(Some(Label::Score(v as f32)));
    }
    let n = labels.names.len();
    let name = match cell {
        Cell::Str(s) => s.trim().to_string(),
        Cell::Int(i) => i.to_string(),
        Cell::Float(f) => f.to_string(),
        Cell::Null => unreachable!("handled above"),
    };
    if let Some(i) = labels.names.iter().position(|l| *l == name) {
        return Ok(Some(Label::Class(i as u32)));
    }
    if ids_ok {
        match (cell, name.parse::<i64>()) {
            (_, Ok(i)) if (0..n as i64).contains(&i) => return Ok(Some(Label::Class(i as u32))),
            // A typed file's integer is an id (the hub's ClassLabel).
            (Cell::Int(i), _) => return Err(format!("label {i} is outside 0..{n}")),
            _ => {}
        }
    }
    let shown: Vec<String> = labels.names.iter().take(20).map(|l| format!("{l:?}")).collect();
    let ids = if ids_ok { format!(" (nor an id in 0..{n})") } else { String::new() };
    Err(format!("label {name:?} is not one of {}{}{ids}", shown.join(", "), if n > 20 { ", ..." } else { "" }))
}

/// Reads a split of `task` from `glue_dir`, in whichever layout is there.
pub fn load_split(glue_dir: &Path, task: Task, split: Split) -> Result<Vec<Example>, DataError> {
    let info = task.info();
    let Some((stem, hub)) = split.files(info) else {
        return Err(DataError::File { path: glue_dir.to_path_buf(), why: format!("{task} has no {split} split") });
    };
    let tsv = glue_dir.join(info.glue_dir).join(format!("{stem}.tsv"));
    if tsv.is_file() {
        return read_tsv(&tsv, task, split);
    }
    let pq_dir = glue_dir.join(info.name);
    let prefix = format!("{hub}-");
    let parquet: Vec<PathBuf> = std::fs::read_dir(&pq_dir)
        .map(|rd| {
            let mut v: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    let n = p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
                    n.starts_with(&prefix) && n.ends_with(".parquet")
                })
                .collect();
            v.sort();
            v
        })
        .unwrap_or_default();
    if parquet.is_empty() {
        return Err(DataError::Missing {
            task,
            dir: glue_dir.to_path_buf(),
            tsv: format!("{}/{stem}.tsv", info.glue_dir),
            parquet: format!("{}/{prefix}*.parquet", info.name),
        });
    }
    let mut out = Vec::new();
    for p in &parquet {
        out.extend(read_parquet(p, task, split)?);
    }
    Ok(out)
}

/// A GLUE TSV file of `task`, with its columns and label names.
pub fn read_tsv(path: &Path, task: Task, split: Split) -> Result<Vec<Example>, DataError> {
    let info = task.info();
    let table = crate::table::read(path, info.tsv_columns, info.tsv_text)?;
    examples(&table, &Columns::of_task(info.tsv_text, info.tsv_label, task), &Labels::of_task(task), split.is_test())
}

/// A hub `glue` parquet file of `task`: its text columns, `label` (ids; -1 in test splits),
/// `idx`.
pub fn read_parquet(path: &Path, task: Task, split: Split) -> Result<Vec<Example>, DataError> {
    let info = task.info();
    let table = read_parquet_table(path)?;
    examples(&table, &Columns::of_task(info.hub_text, "label", task), &Labels::of_task(task), split.is_test())
}

/// The user's own columns (run_glue.py's `--train_file` data), as the flags name them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserColumns {
    pub text: Option<String>,
    pub text_pair: Option<String>,
    pub label: String,
}

impl UserColumns {
    /// The text columns of `table`: the flags', else `sentence1`/`sentence2` when both are
    /// there, else `sentence`.
    fn resolve(&self, table: &Table) -> Result<Columns, DataError> {
        let text = match (&self.text, &self.text_pair) {
            (Some(a), Some(b)) => vec![a.clone(), b.clone()],
            (Some(a), None) => vec![a.clone()],
            (None, pair) => {
                let mut v = if table.column("sentence1").is_some() && table.column("sentence2").is_some() {
                    vec!["sentence1".to_string(), "sentence2".to_string()]
                } else if table.column("sentence").is_some() {
                    vec!["sentence".to_string()]
                } else {
                    return Err(table.row_err(
                        1,
                        format!(
                            "no text column: pass --text-column (columns found: {}; the defaults are `sentence`, or `sentence1` and `sentence2`)",
                            table.column_list()
                        ),
                    ));
                };
                if let Some(b) = pair {
                    v.truncate(1);
                    v.push(b.clone());
                }
                v
            }
        };
        Ok(Columns { text, label: self.label.clone(), ids_ok: false, label_source: "(the labels of the training file)".into() })
    }
}

/// The labels of a training file, as run_glue.py reads them: float values make a regression;
/// otherwise the distinct values, sorted (numbers as numbers), are the label names in id order.
pub fn infer_labels(path: &Path, cols: &UserColumns) -> Result<Labels, DataError> {
    let table = crate::table::read(path, None, &[])?;
    let c = table
        .column(&cols.label)
        .ok_or_else(|| table.row_err(1, format!("missing column `{}` (columns found: {})", cols.label, table.column_list())))?;
    let (mut ints, mut floats, mut strings) = (Vec::new(), Vec::new(), Vec::new());
    for row in &table.rows {
        match &row.cells[c] {
            Cell::Null => return Err(table.row_err(row.line, format!("column `{}` is empty", cols.label))),
            Cell::Int(i) => ints.push((row.line, *i)),
            Cell::Float(f) => floats.push((row.line, *f)),
            // Text formats hold strings: a column of integers or of numbers is typed by its values.
            Cell::Str(s) if !table.typed => match (s.trim().parse::<i64>(), s.trim().parse::<f64>()) {
                (Ok(i), _) => ints.push((row.line, i)),
                (_, Ok(f)) if f.is_finite() => floats.push((row.line, f)),
                _ if s.trim().is_empty() => return Err(table.row_err(row.line, format!("column `{}` is empty", cols.label))),
                _ => strings.push((row.line, s.trim().to_string())),
            },
            Cell::Str(s) => strings.push((row.line, s.trim().to_string())),
        }
    }
    let kinds = [!ints.is_empty(), !floats.is_empty(), !strings.is_empty()];
    // Integers among floats are numbers all the same (pandas reads the column as float).
    if !strings.is_empty() && (kinds[0] || kinds[1]) {
        let (line, s) = &strings[0];
        let number = ints.first().map(|(l, i)| (*l, i.to_string())).or_else(|| floats.first().map(|(l, f)| (*l, f.to_string()))).unwrap_or_default();
        return Err(table.row_err(
            (*line).max(number.0),
            format!("column `{}` mixes label types: {s:?} (line {line}) and the number {} (line {})", cols.label, number.1, number.0),
        ));
    }
    if !floats.is_empty() {
        return Ok(Labels::regression());
    }
    let names: Vec<String> = if !ints.is_empty() {
        let mut v: Vec<i64> = ints.iter().map(|(_, i)| *i).collect();
        v.sort_unstable();
        v.dedup();
        v.iter().map(|i| i.to_string()).collect()
    } else {
        let mut v: Vec<String> = strings.into_iter().map(|(_, s)| s).collect();
        v.sort();
        v.dedup();
        v
    };
    let labels = Labels::classes(names);
    labels.validate().map_err(|why| table.file_err(format!("column `{}`: {why}", cols.label)))?;
    Ok(labels)
}

/// One of the user's files as examples, its labels read as `labels` (a label never seen in
/// training is an error naming it); `test` files may lack the label column.
pub fn read_user_file(path: &Path, cols: &UserColumns, labels: &Labels, test: bool, ids_ok: bool) -> Result<Vec<Example>, DataError> {
    let table = crate::table::read(path, None, &[])?;
    let mut columns = cols.resolve(&table)?;
    if ids_ok {
        // With --task the labels are the task's, names or ids.
        columns.ids_ok = true;
        columns.label_source = "(the task's labels)".into();
    }
    examples(&table, &columns, labels, test)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::testing::write;

    #[test]
    fn reads_sst2_and_rte_tsv() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "sst.tsv", "sentence\tlabel\nit 's \"great\" \t1\nbad\t0\n");
        let v = read_tsv(&p, Task::Sst2, Split::Train).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].text_a, "it 's \"great\" ");
        assert_eq!(v[0].label, Some(Label::Class(1)));
        let p = write(d.path(), "rte.tsv", "index\tsentence1\tsentence2\tlabel\n7\tA.\tB.\tnot_entailment\n");
        let v = read_tsv(&p, Task::Rte, Split::Dev).unwrap();
        assert_eq!((v[0].idx, v[0].text_b.as_deref(), v[0].label), (7, Some("B."), Some(Label::Class(1))));
        let p = write(d.path(), "test.tsv", "index\tsentence\n0\thello\n");
        let v = read_tsv(&p, Task::Sst2, Split::Test).unwrap();
        assert_eq!(v[0].label, None);
    }

    #[test]
    fn bad_rows_name_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "x.tsv", "sentence\tlabel\nok\t1\nno tab here\n");
        let e = read_tsv(&p, Task::Sst2, Split::Train).unwrap_err().to_string();
        assert!(e.ends_with("x.tsv:3: expected 2 tab-separated fields, found 1"), "{e}");
        let p = write(d.path(), "y.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n");
        let e = read_tsv(&p, Task::Rte, Split::Train).unwrap_err().to_string();
        assert!(e.contains("y.tsv:2: label \"maybe\" is not one of"), "{e}");
        let p = write(d.path(), "z.tsv", "");
        let e = read_tsv(&p, Task::Sst2, Split::Train).unwrap_err().to_string();
        assert!(e.contains("z.tsv: empty file"), "{e}");
        let p = write(d.path(), "w.tsv", "text\tlabel\nx\t1\n");
        let e = read_tsv(&p, Task::Sst2, Split::Train).unwrap_err().to_string();
        assert!(e.contains("w.tsv:1: missing column `sentence`"), "{e}");
    }

    #[test]
    fn missing_directory_says_how_to_get_glue() {
        let d = tempfile::tempdir().unwrap();
        let e = load_split(d.path(), Task::Rte, Split::Train).unwrap_err().to_string();
        assert!(e.contains("GLUE data for rte not found") && e.contains("GLUE_DIR"), "{e}");
    }
}
