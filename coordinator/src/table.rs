//! Tables read from disk, whatever the format, as named columns of cells with the line (or
//! row) each came from: TSV (GLUE's, fields unquoted), CSV (RFC 4180 quoting), JSON Lines
//! and parquet, chosen by extension. `data.rs` maps a table's columns to examples.

use std::fs::File;
use std::path::{Path, PathBuf};

use peftrain_spec::task::Task;

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
         Set GLUE_DIR to a directory holding the GLUE layout (SST-2/, RTE/, ... with train.tsv, dev.tsv, test.tsv), \
         e.g. from https://gluebenchmark.com/tasks or the Hugging Face `glue` dataset's parquet files"
    )]
    Missing { task: Task, dir: PathBuf, tsv: String, parquet: String },
}

/// One value of a table.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Str(String),
    Int(i64),
    Float(f64),
}

impl Cell {
    pub fn describe(&self) -> String {
        match self {
            Cell::Null => "null".into(),
            Cell::Str(s) => format!("{s:?}"),
            Cell::Int(i) => i.to_string(),
            Cell::Float(f) => f.to_string(),
        }
    }
}

/// One row and the line (text formats) or row number (parquet, from 1) it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub line: usize,
    pub cells: Vec<Cell>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub path: PathBuf,
    pub columns: Vec<String>,
    pub rows: Vec<Row>,
    /// Text formats hold strings only; their numbers are read from the text by whoever needs
    /// them (a label column), as pandas would infer the column's type.
    pub typed: bool,
}

impl Table {
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }

    /// The columns found, for an error message.
    pub fn column_list(&self) -> String {
        self.columns.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")
    }

    pub fn row_err(&self, line: usize, why: String) -> DataError {
        DataError::Row { path: self.path.clone(), line, why }
    }

    pub fn file_err(&self, why: String) -> DataError {
        DataError::File { path: self.path.clone(), why }
    }
}

/// The file formats a table is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Tsv,
    Csv,
    JsonLines,
    Parquet,
}

impl Format {
    /// By extension, as run_glue.py's `--train_file` (csv, json) and `datasets` (tsv, parquet).
    pub fn of(path: &Path) -> Result<Format, DataError> {
        let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
        match ext.as_str() {
            "tsv" => Ok(Format::Tsv),
            "csv" => Ok(Format::Csv),
            "jsonl" | "json" => Ok(Format::JsonLines),
            "parquet" => Ok(Format::Parquet),
            other => Err(DataError::File {
                path: path.to_path_buf(),
                why: format!("unknown file type {other:?}: expected .csv, .tsv, .jsonl (or .json, one object per line) or .parquet"),
            }),
        }
    }
}

/// Reads `path` in the format its extension names. `implicit_header`: the column names of a
/// TSV file whose first line is not a header (GLUE's CoLA), used when the first line does not
/// hold every one of `expect` (the columns the caller needs).
pub fn read(path: &Path, implicit_header: Option<&[&str]>, expect: &[&str]) -> Result<Table, DataError> {
    let table = match Format::of(path)? {
        Format::Tsv => read_tsv(path, implicit_header, expect)?,
        Format::Csv => read_csv(path)?,
        Format::JsonLines => read_jsonl(path)?,
        Format::Parquet => read_parquet_table(path)?,
    };
    for (k, c) in table.columns.iter().enumerate() {
        if table.columns[..k].contains(c) {
            return Err(table.row_err(1, format!("column `{c}` appears twice in the header")));
        }
    }
    if table.rows.is_empty() {
        return Err(table.file_err("no data rows".into()));
    }
    Ok(table)
}

fn read_text(path: &Path) -> Result<String, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::Io { path: path.to_path_buf(), source: e })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let line = 1 + e.as_bytes()[..e.utf8_error().valid_up_to()].iter().filter(|&&b| b == b'\n').count();
        DataError::Row { path: path.to_path_buf(), line, why: "not valid UTF-8".into() }
    })?;
    // GLUE's own MRPC files start with a UTF-8 byte-order mark; it is not part of a column name.
    Ok(text.strip_prefix('\u{feff}').map(str::to_string).unwrap_or(text))
}

fn empty(path: &Path) -> DataError {
    DataError::File { path: path.to_path_buf(), why: "empty file (expected a header row)".into() }
}

/// GLUE TSV: tab-separated fields, no quoting (a sentence may hold `"`), a header row unless
/// `implicit_header` applies.
fn read_tsv(path: &Path, implicit_header: Option<&[&str]>, expect: &[&str]) -> Result<Table, DataError> {
    let text = read_text(path)?;
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.trim_end_matches('\r'))).peekable();
    let first: Vec<&str> = match lines.peek() {
        Some((_, h)) if !h.trim().is_empty() => h.split('\t').collect(),
        _ => return Err(empty(path)),
    };
    let has_header = implicit_header.is_none() || expect.iter().all(|c| first.contains(c));
    let columns: Vec<String> = if has_header {
        lines.next();
        first.iter().map(|s| s.to_string()).collect()
    } else {
        implicit_header.unwrap_or_default().iter().map(|s| s.to_string()).collect()
    };
    let mut rows = Vec::new();
    for (line, raw) in lines {
        if raw.is_empty() {
            continue;
        }
        let fields: Vec<&str> = raw.split('\t').collect();
        if fields.len() != columns.len() {
            return Err(DataError::Row {
                path: path.to_path_buf(),
                line,
                why: format!("expected {} tab-separated fields, found {}", columns.len(), fields.len()),
            });
        }
        rows.push(Row { line, cells: fields.into_iter().map(|f| Cell::Str(f.to_string())).collect() });
    }
    Ok(Table { path: path.to_path_buf(), columns, rows, typed: false })
}

/// CSV with a header row and RFC 4180 quoting (pandas' and `datasets`' default).
fn read_csv(path: &Path) -> Result<Table, DataError> {
    let text = read_text(path)?;
    let mut reader = csv::ReaderBuilder::new().has_headers(true).flexible(false).from_reader(text.as_bytes());
    let row_err = |line: usize, why: String| DataError::Row { path: path.to_path_buf(), line, why };
    let columns: Vec<String> = reader.headers().map_err(|e| row_err(1, e.to_string()))?.iter().map(str::to_string).collect();
    if columns.is_empty() || columns.iter().all(|c| c.is_empty()) {
        return Err(empty(path));
    }
    let mut rows = Vec::new();
    for rec in reader.records() {
        let rec = rec.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line() as usize);
            let why = match e.kind() {
                csv::ErrorKind::UnequalLengths { expected_len, len, .. } => format!("expected {expected_len} comma-separated fields, found {len}"),
                _ => e.to_string(),
            };
            row_err(line, why)
        })?;
        let line = rec.position().map_or(0, |p| p.line() as usize);
        rows.push(Row { line, cells: rec.iter().map(|f| Cell::Str(f.to_string())).collect() });
    }
    Ok(Table { path: path.to_path_buf(), columns, rows, typed: false })
}

/// JSON Lines: one object per line; the columns are every key any line has (sorted), a
/// missing one null.
fn read_jsonl(path: &Path) -> Result<Table, DataError> {
    let text = read_text(path)?;
    let mut columns: Vec<String> = Vec::new();
    let mut objects = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(raw).map_err(|e| DataError::Row { path: path.to_path_buf(), line, why: format!("not JSON: {e}") })?;
        let serde_json::Value::Object(map) = v else {
            return Err(DataError::Row { path: path.to_path_buf(), line, why: "expected a JSON object".into() });
        };
        for k in map.keys() {
            if !columns.contains(k) {
                columns.push(k.clone());
            }
        }
        objects.push((line, map));
    }
    if objects.is_empty() {
        return Err(DataError::File { path: path.to_path_buf(), why: "empty file (expected one JSON object per line)".into() });
    }
    let mut rows = Vec::new();
    for (line, map) in objects {
        let mut cells = Vec::with_capacity(columns.len());
        for c in &columns {
            cells.push(match map.get(c) {
                None | Some(serde_json::Value::Null) => Cell::Null,
                Some(serde_json::Value::String(s)) => Cell::Str(s.clone()),
                Some(serde_json::Value::Number(n)) => match n.as_i64() {
                    Some(i) => Cell::Int(i),
                    None => Cell::Float(n.as_f64().unwrap_or(f64::NAN)),
                },
                Some(serde_json::Value::Bool(b)) => Cell::Int(*b as i64),
                Some(other) => {
                    return Err(DataError::Row {
                        path: path.to_path_buf(),
                        line,
                        why: format!("field `{c}`: expected a string or a number, found {other}"),
                    })
                }
            });
        }
        rows.push(Row { line, cells });
    }
    Ok(Table { path: path.to_path_buf(), columns, rows, typed: true })
}

/// Opens `path` for reading, naming it on failure.
pub fn open(path: &Path) -> Result<File, DataError> {
    File::open(path).map_err(|e| DataError::Io { path: path.to_path_buf(), source: e })
}

/// A parquet file as a table. The checks below turn damaged metadata into errors, but the
/// parquet crate still panics (asserts, expect()s in its decoders) on some damaged pages. Such a
/// panic is caught and reported as a damaged file, and its message is kept off the user's
/// terminal.
pub fn read_parquet_table(path: &Path) -> Result<Table, DataError> {
    let read = quiet_panics::catch(|| read_parquet_checked(path)).unwrap_or_else(|why| {
        Err(DataError::File { path: path.to_path_buf(), why: format!("damaged parquet file: the reader failed on it ({why})") })
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
            p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_else(|| "panic".into())
        })
    }
}

fn read_parquet_checked(path: &Path) -> Result<Table, DataError> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;

    let file_err = |why: String| DataError::File { path: path.to_path_buf(), why };
    let file = open(path)?;
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
    let columns: Vec<String> = schema.columns().iter().map(|c| c.name().to_string()).collect();
    let rows_iter = reader.get_row_iter(None).map_err(|e| file_err(e.to_string()))?;
    let mut rows = Vec::new();
    for (i, row) in rows_iter.enumerate() {
        // Rows are numbered from 1 like lines, so messages read the same for both layouts.
        let line = i + 1;
        let row_err = |why: String| DataError::Row { path: path.to_path_buf(), line, why: format!("row {line}: {why}") };
        let row = row.map_err(|e| row_err(e.to_string()))?;
        let mut cells = vec![Cell::Null; columns.len()];
        for (name, field) in row.get_column_iter() {
            let Some(k) = columns.iter().position(|c| c == name) else { continue };
            cells[k] = match field {
                Field::Null => Cell::Null,
                Field::Bool(b) => Cell::Int(*b as i64),
                Field::Byte(v) => Cell::Int(*v as i64),
                Field::Short(v) => Cell::Int(*v as i64),
                Field::Int(v) => Cell::Int(*v as i64),
                Field::Long(v) => Cell::Int(*v),
                Field::UByte(v) => Cell::Int(*v as i64),
                Field::UShort(v) => Cell::Int(*v as i64),
                Field::UInt(v) => Cell::Int(*v as i64),
                Field::ULong(v) => Cell::Int(i64::try_from(*v).map_err(|_| row_err(format!("column `{name}`: {v} is out of range")))?),
                Field::Float(v) => Cell::Float(*v as f64),
                Field::Double(v) => Cell::Float(*v),
                Field::Str(s) => Cell::Str(s.clone()),
                other => return Err(row_err(format!("column `{name}` has a type peftrain does not read ({other})"))),
            };
        }
        rows.push(Row { line, cells });
    }
    Ok(Table { path: path.to_path_buf(), columns, rows, typed: true })
}

/// Files for the unit tests of the readers.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::{Path, PathBuf};

    pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

#[cfg(test)]
mod tests {
    use super::testing::write;
    use super::*;

    #[test]
    fn every_text_format_reads_to_the_same_table() {
        let d = tempfile::tempdir().unwrap();
        let want = vec![vec![Cell::Str("a \"b\"".into()), Cell::Str("1".into())], vec![Cell::Str("c, d".into()), Cell::Str("0".into())]];
        let tsv = read(&write(d.path(), "x.tsv", "sentence\tlabel\na \"b\"\t1\nc, d\t0\n"), None, &[]).unwrap();
        let csv = read(&write(d.path(), "x.csv", "sentence,label\n\"a \"\"b\"\"\",1\n\"c, d\",0\n"), None, &[]).unwrap();
        for t in [&tsv, &csv] {
            assert_eq!(t.columns, ["sentence", "label"]);
            assert_eq!(t.rows.iter().map(|r| r.cells.clone()).collect::<Vec<_>>(), want);
        }
        let j =
            read(&write(d.path(), "x.jsonl", "{\"sentence\": \"a\", \"label\": 1}\n\n{\"label\": 2.5, \"sentence\": \"b\"}\n"), None, &[]).unwrap();
        assert_eq!(j.columns, ["label", "sentence"]);
        assert_eq!(j.rows[1], Row { line: 3, cells: vec![Cell::Float(2.5), Cell::Str("b".into())] });
    }

    #[test]
    fn a_headerless_tsv_gets_its_implicit_columns_and_errors_name_the_line() {
        let d = tempfile::tempdir().unwrap();
        let cols: &[&str] = &["source", "label", "original_label", "sentence"];
        let t = read(&write(d.path(), "cola.tsv", "gj04\t1\t\tOur friends.\n"), Some(cols), &["sentence"]).unwrap();
        assert_eq!((t.columns.len(), t.rows.len(), t.rows[0].line), (4, 1, 1));
        let t = read(&write(d.path(), "test.tsv", "index\tsentence\n0\tHi.\n"), Some(cols), &["sentence"]).unwrap();
        assert_eq!(t.columns, ["index", "sentence"]);
        let e = read(&write(d.path(), "bad.csv", "a,b\n1,2\n3\n"), None, &[]).unwrap_err().to_string();
        assert!(e.contains("bad.csv:3: expected 2 comma-separated fields, found 1"), "{e}");
        let e = read(&write(d.path(), "bad.jsonl", "{\"a\": 1}\n[1]\n"), None, &[]).unwrap_err().to_string();
        assert!(e.contains("bad.jsonl:2: expected a JSON object"), "{e}");
        let e = read(&write(d.path(), "x.xlsx", ""), None, &[]).unwrap_err().to_string();
        assert!(e.contains("unknown file type"), "{e}");
        let e = read(&write(d.path(), "empty.csv", ""), None, &[]).unwrap_err().to_string();
        assert!(e.contains("empty.csv: empty file"), "{e}");
    }
}
