//! GLUE SST-2 and RTE, from the GLUE TSV layout (`$GLUE_DIR/SST-2/train.tsv`, fields unquoted)
//! or the Hugging Face `glue` parquet layout (`$GLUE_DIR/sst2/train-*.parquet`). Every bad row
//! is an error naming the file and line.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {why}")]
    Row { path: PathBuf, line: usize, why: String },
    #[error("{path}: {why}")]
    File { path: PathBuf, why: String },
    #[error(
        "GLUE data for {task} not found under {dir} (looked for {tsv} and {parquet}). \
         Set GLUE_DIR to a directory holding the GLUE layout (SST-2/, RTE/ with train.tsv, dev.tsv, test.tsv), \
         e.g. from https://gluebenchmark.com/tasks or the Hugging Face `glue` dataset's parquet files"
    )]
    Missing {
        task: Task,
        dir: PathBuf,
        tsv: String,
        parquet: String,
    },
}

/// The GLUE tasks peftrain trains on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Sst2,
    Rte,
}

impl std::str::FromStr for Task {
    type Err = String;
    fn from_str(s: &str) -> Result<Task, String> {
        Task::parse(s).ok_or_else(|| format!("{s:?}: unknown task (sst2, rte)"))
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Task {
    pub fn parse(s: &str) -> Option<Task> {
        match s.to_ascii_lowercase().replace('-', "").as_str() {
            "sst2" => Some(Task::Sst2),
            "rte" => Some(Task::Rte),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Task::Sst2 => "sst2",
            Task::Rte => "rte",
        }
    }
    /// Directory of the GLUE TSV layout.
    pub fn glue_dir(self) -> &'static str {
        match self {
            Task::Sst2 => "SST-2",
            Task::Rte => "RTE",
        }
    }
    pub fn is_pair(self) -> bool {
        matches!(self, Task::Rte)
    }
    /// Label names in id order, as in the Hugging Face `glue` dataset.
    pub fn label_names(self) -> &'static [&'static str] {
        match self {
            Task::Sst2 => &["0", "1"],
            Task::Rte => &["entailment", "not_entailment"],
        }
    }
    pub fn num_labels(self) -> usize {
        self.label_names().len()
    }
    fn text_columns(self) -> &'static [&'static str] {
        match self {
            Task::Sst2 => &["sentence"],
            Task::Rte => &["sentence1", "sentence2"],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Dev,
    Test,
}

impl Split {
    pub fn parse(s: &str) -> Option<Split> {
        match s {
            "train" => Some(Split::Train),
            "dev" | "validation" => Some(Split::Dev),
            "test" => Some(Split::Test),
            _ => None,
        }
    }
    fn tsv_name(self) -> &'static str {
        match self {
            Split::Train => "train.tsv",
            Split::Dev => "dev.tsv",
            Split::Test => "test.tsv",
        }
    }
    fn parquet_prefix(self) -> &'static str {
        match self {
            Split::Train => "train-",
            Split::Dev => "validation-",
            Split::Test => "test-",
        }
    }
}

/// One row of a GLUE split.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// GLUE's `index`/`idx`, else the row number.
    pub idx: u64,
    pub text_a: String,
    pub text_b: Option<String>,
    /// Label id; None for test splits.
    pub label: Option<u32>,
}

/// Reads a split of `task` from `glue_dir`, in whichever layout is there.
pub fn load_split(glue_dir: &Path, task: Task, split: Split) -> Result<Vec<Example>, DataError> {
    let tsv = glue_dir.join(task.glue_dir()).join(split.tsv_name());
    if tsv.is_file() {
        return read_tsv(&tsv, task, split);
    }
    let pq_dir = glue_dir.join(task.name());
    let parquet: Vec<PathBuf> = std::fs::read_dir(&pq_dir)
        .map(|rd| {
            let mut v: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    let n = p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
                    n.starts_with(split.parquet_prefix()) && n.ends_with(".parquet")
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
            tsv: format!("{}/{}", task.glue_dir(), split.tsv_name()),
            parquet: format!("{}/{}*.parquet", task.name(), split.parquet_prefix()),
        });
    }
    let mut out = Vec::new();
    for p in &parquet {
        out.extend(read_parquet(p, task, split)?);
    }
    Ok(out)
}

/// GLUE TSV: a header row naming the columns, tab-separated fields, no quoting.
pub fn read_tsv(path: &Path, task: Task, split: Split) -> Result<Vec<Example>, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let row_err = |line: usize, why: String| DataError::Row {
        path: path.to_path_buf(),
        line,
        why,
    };
    let text = String::from_utf8(bytes).map_err(|e| {
        let line = 1 + e.as_bytes()[..e.utf8_error().valid_up_to()].iter().filter(|&&b| b == b'\n').count();
        row_err(line, "not valid UTF-8".into())
    })?;
    // GLUE's own MRPC files start with a UTF-8 byte-order mark; it is not part of a column name.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut lines = text.lines().enumerate();
    let header: Vec<&str> = match lines.next() {
        Some((_, h)) if !h.trim().is_empty() => h.trim_end_matches('\r').split('\t').collect(),
        _ => {
            return Err(DataError::File {
                path: path.to_path_buf(),
                why: "empty file (expected a header row)".into(),
            })
        }
    };
    for (k, h) in header.iter().enumerate() {
        if header[..k].contains(h) {
            return Err(row_err(1, format!("column `{h}` appears twice in the header")));
        }
    }
    let col = |name: &str| header.iter().position(|h| *h == name);
    let text_cols: Vec<usize> = task
        .text_columns()
        .iter()
        .map(|c| col(c).ok_or_else(|| row_err(1, format!("missing column `{c}` (header: {})", header.join(", ")))))
        .collect::<Result<_, _>>()?;
    let label_col = col("label");
    if split != Split::Test && label_col.is_none() {
        return Err(row_err(1, format!("missing column `label` (header: {})", header.join(", "))));
    }
    let index_col = col("index").or_else(|| col("idx"));
    let mut out = Vec::new();
    for (i, raw) in lines {
        let line = i + 1;
        let raw = raw.trim_end_matches('\r');
        if raw.is_empty() {
            continue;
        }
        let fields: Vec<&str> = raw.split('\t').collect();
        if fields.len() != header.len() {
            return Err(row_err(
                line,
                format!("expected {} tab-separated fields, found {}", header.len(), fields.len()),
            ));
        }
        let idx = match index_col {
            Some(c) => fields[c]
                .trim()
                .parse::<u64>()
                .map_err(|_| row_err(line, format!("index {:?} is not a non-negative integer", fields[c])))?,
            None => out.len() as u64,
        };
        let label = match label_col {
            Some(c) if split != Split::Test || !fields[c].is_empty() => Some(parse_label(task, fields[c]).map_err(|why| row_err(line, why))?),
            _ => None,
        };
        let text_a = fields[text_cols[0]].to_string();
        let text_b = text_cols.get(1).map(|&c| fields[c].to_string());
        out.push(Example {
            idx,
            text_a,
            text_b,
            label,
        });
    }
    if out.is_empty() {
        return Err(DataError::File {
            path: path.to_path_buf(),
            why: "no data rows".into(),
        });
    }
    Ok(out)
}

/// A label as written in GLUE TSV (a name or an id) to its id.
fn parse_label(task: Task, s: &str) -> Result<u32, String> {
    let s = s.trim();
    let names = task.label_names();
    if let Some(i) = names.iter().position(|n| *n == s) {
        return Ok(i as u32);
    }
    Err(format!(
        "label {s:?} is not one of {} for {}",
        names.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", "),
        task
    ))
}

/// Hugging Face `glue` parquet: columns `sentence` or `sentence1`/`sentence2`, `label`, `idx`;
/// test rows carry label -1.
pub fn read_parquet(path: &Path, task: Task, split: Split) -> Result<Vec<Example>, DataError> {
    // The checks below turn damaged metadata into errors, but the parquet crate still panics
    // (asserts, expect()s in its decoders) on some damaged pages. Such a panic is caught and
    // reported as a damaged file, and its message is kept off the user's terminal.
    let read = quiet_panics::catch(|| read_parquet_checked(path, task, split)).unwrap_or_else(|why| {
        Err(DataError::File {
            path: path.to_path_buf(),
            why: format!("damaged parquet file: the reader failed on it ({why})"),
        })
    });
    // The parquet crate's messages may span lines; the user gets one.
    let flat = |why: String| why.split_whitespace().collect::<Vec<_>>().join(" ");
    read.map_err(|e| match e {
        DataError::File { path, why } => DataError::File { path, why: flat(why) },
        DataError::Row { path, line, why } => DataError::Row { path, line, why: flat(why) },
        other => other,
    })
}

/// Catching a library's panic without its message reaching stderr: a process-wide hook,
/// installed once around whatever hook was there, that stays silent only on a thread that is
/// inside `catch`.
mod quiet_panics {
    use std::cell::Cell;
    use std::panic::{self, AssertUnwindSafe};
    use std::sync::Once;

    thread_local! {
        static QUIET: Cell<bool> = const { Cell::new(false) };
    }

    pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
        static INSTALL: Once = Once::new();
        INSTALL.call_once(|| {
            let previous = panic::take_hook();
            panic::set_hook(Box::new(move |info| {
                if !QUIET.with(|q| q.get()) {
                    previous(info);
                }
            }));
        });
        let was = QUIET.with(|q| q.replace(true));
        let r = panic::catch_unwind(AssertUnwindSafe(f));
        QUIET.with(|q| q.set(was));
        r.map_err(|p| {
            p.downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into())
        })
    }
}

fn read_parquet_checked(path: &Path, task: Task, split: Split) -> Result<Vec<Example>, DataError> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;

    let file_err = |why: String| DataError::File {
        path: path.to_path_buf(),
        why,
    };
    let file = File::open(path).map_err(|e| DataError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let file_len = file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
    let reader = SerializedFileReader::new(file).map_err(|e| file_err(format!("not a readable parquet file: {e}")))?;
    // The parquet crate asserts (panics) on column chunks with negative offsets or sizes when
    // it reads them; damaged metadata is checked here first and reported as such.
    for (g, group) in reader.metadata().row_groups().iter().enumerate() {
        for (c, col) in group.columns().iter().enumerate() {
            let start = col.dictionary_page_offset().unwrap_or_else(|| col.data_page_offset());
            let len = col.compressed_size();
            let end = (start as i128) + (len as i128);
            if start < 0 || len < 0 || end > file_len as i128 {
                return Err(file_err(format!(
                    "damaged parquet metadata: column chunk {c} of row group {g} claims bytes {start}..{end} of a {file_len}-byte file"
                )));
            }
        }
    }
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    let names: Vec<String> = schema.columns().iter().map(|c| c.name().to_string()).collect();
    for c in task.text_columns().iter().chain(["label"].iter()) {
        if !names.iter().any(|n| n == c) {
            return Err(file_err(format!("missing column `{c}` (columns: {})", names.join(", "))));
        }
    }
    let rows = reader.get_row_iter(None).map_err(|e| file_err(e.to_string()))?;
    let mut out = Vec::new();
    for (i, row) in rows.enumerate() {
        // Rows are numbered from 1 like lines, so messages read the same for both layouts.
        let line = i + 1;
        let row_err = |why: String| DataError::Row {
            path: path.to_path_buf(),
            line,
            why: format!("row {line}: {why}"),
        };
        let row = row.map_err(|e| row_err(e.to_string()))?;
        let mut texts: Vec<Option<String>> = vec![None; task.text_columns().len()];
        let mut label: Option<i64> = None;
        let mut idx: Option<u64> = None;
        for (name, field) in row.get_column_iter() {
            let as_int = |f: &Field| -> Option<i64> {
                match f {
                    Field::Byte(v) => Some(*v as i64),
                    Field::Short(v) => Some(*v as i64),
                    Field::Int(v) => Some(*v as i64),
                    Field::Long(v) => Some(*v),
                    Field::UByte(v) => Some(*v as i64),
                    Field::UShort(v) => Some(*v as i64),
                    Field::UInt(v) => Some(*v as i64),
                    Field::ULong(v) => i64::try_from(*v).ok(),
                    _ => None,
                }
            };
            if let Some(k) = task.text_columns().iter().position(|c| c == name) {
                match field {
                    Field::Str(s) => texts[k] = Some(s.clone()),
                    other => return Err(row_err(format!("column `{name}` is not a string ({other})"))),
                }
            } else if name == "label" {
                label = Some(as_int(field).ok_or_else(|| row_err(format!("column `label` is not an integer ({field})")))?);
            } else if name == "idx" {
                let v = as_int(field).ok_or_else(|| row_err(format!("column `idx` is not an integer ({field})")))?;
                idx = Some(u64::try_from(v).map_err(|_| row_err(format!("idx {v} is negative")))?);
            }
        }
        let mut texts = texts.into_iter().zip(task.text_columns());
        let mut text = || -> Result<String, DataError> {
            let (t, c) = texts.next().ok_or_else(|| row_err("missing text".into()))?;
            t.ok_or_else(|| row_err(format!("column `{c}` is null")))
        };
        let text_a = text()?;
        let text_b = if task.is_pair() { Some(text()?) } else { None };
        let label = match label {
            Some(-1) | None if split == Split::Test => None,
            Some(l) if l >= 0 && (l as usize) < task.num_labels() => Some(l as u32),
            Some(l) => return Err(row_err(format!("label {l} is outside 0..{} for {task}", task.num_labels()))),
            None => return Err(row_err("column `label` is null".into())),
        };
        out.push(Example {
            idx: idx.unwrap_or(i as u64),
            text_a,
            text_b,
            label,
        });
    }
    if out.is_empty() {
        return Err(file_err("no data rows".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn reads_sst2_and_rte_tsv() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "sst.tsv", "sentence\tlabel\nit 's \"great\" \t1\nbad\t0\n");
        let v = read_tsv(&p, Task::Sst2, Split::Train).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].text_a, "it 's \"great\" ");
        assert_eq!(v[0].label, Some(1));
        let p = write(d.path(), "rte.tsv", "index\tsentence1\tsentence2\tlabel\n7\tA.\tB.\tnot_entailment\n");
        let v = read_tsv(&p, Task::Rte, Split::Dev).unwrap();
        assert_eq!((v[0].idx, v[0].text_b.as_deref(), v[0].label), (7, Some("B."), Some(1)));
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
