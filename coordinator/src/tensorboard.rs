//! TensorBoard event files as the Trainer's TensorBoardCallback leaves them (`--report-to
//! tensorboard`): one file per process under the logging directory, each logged number a
//! scalar at its step, tagged by transformers' `rewrite_logs` (`train/loss`, `eval/f1`).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use peftrain_proto::tensorflow as tf;
use prost::Message;
use serde_json::{Map, Value};

/// An open event file.
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

/// The Trainer's default logging directory: `<output_dir>/runs/<Mon>DD_HH-MM-SS_<host>`
/// (TrainingArguments' `default_logdir`).
pub fn default_logging_dir(output_dir: &Path) -> PathBuf {
    let now = chrono::Local::now().format("%b%d_%H-%M-%S");
    output_dir.join("runs").join(format!("{now}_{}", hostname()))
}

/// The scalar tag of a logged key, as `rewrite_logs` writes it.
pub fn tag(key: &str) -> String {
    if let Some(k) = key.strip_prefix("eval_") {
        format!("eval/{k}")
    } else if let Some(k) = key.strip_prefix("test_") {
        format!("test/{k}")
    } else {
        format!("train/{key}")
    }
}

impl EventWriter {
    /// Starts a new event file in `dir` (never an existing one: the name holds the time, the
    /// host and the process, and the file is created only if absent).
    pub fn create(dir: &Path) -> std::io::Result<EventWriter> {
        std::fs::create_dir_all(dir)?;
        let now = wall_time();
        let path = dir.join(format!("events.out.tfevents.{}.{}.{}.0", now as u64, hostname(), std::process::id()));
        let file = OpenOptions::new().write(true).create_new(true).open(&path)?;
        let mut w = EventWriter { path, out: BufWriter::new(file) };
        w.record(&tf::Event { wall_time: now, step: 0, what: Some(tf::event::What::FileVersion("brain.Event:2".into())) })?;
        w.out.flush()?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes an event's numbers (all but `step`, which places them) as scalars. TensorBoard
    /// stores scalars as float32, as SummaryWriter.add_scalar does.
    pub fn log(&mut self, event: &Map<String, Value>) -> std::io::Result<()> {
        let step = event.get("step").and_then(Value::as_i64).unwrap_or(0);
        let value: Vec<tf::summary::Value> = event
            .iter()
            .filter(|(k, _)| k.as_str() != "step")
            .filter_map(|(k, v)| {
                let x = v.as_f64().filter(|_| v.is_number())?;
                Some(tf::summary::Value { tag: tag(k), value: Some(tf::summary::value::Value::SimpleValue(x as f32)) })
            })
            .collect();
        if value.is_empty() {
            return Ok(());
        }
        self.record(&tf::Event { wall_time: wall_time(), step, what: Some(tf::event::What::Summary(tf::Summary { value })) })?;
        self.out.flush()
    }

    /// One TFRecord: length, its masked CRC-32C, the bytes, theirs.
    fn record(&mut self, event: &tf::Event) -> std::io::Result<()> {
        let data = event.encode_to_vec();
        let len = (data.len() as u64).to_le_bytes();
        self.out.write_all(&len)?;
        self.out.write_all(&masked_crc(&len).to_le_bytes())?;
        self.out.write_all(&data)?;
        self.out.write_all(&masked_crc(&data).to_le_bytes())
    }
}

/// TFRecord's checksum: CRC-32C, rotated and offset so that a CRC of CRCs stays strong.
fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c::crc32c(data);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn wall_time() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// This machine's name (the kernel's, as Python's socket.gethostname gives it), as file
/// names may hold it.
fn hostname() -> String {
    let name: String = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(64)
        .collect();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_rewrite_logs_s() {
        assert_eq!(tag("loss"), "train/loss");
        assert_eq!(tag("eval_matthews_correlation"), "eval/matthews_correlation");
        assert_eq!(tag("train_runtime"), "train/train_runtime");
        assert_eq!(tag("test_loss"), "test/loss");
    }

    #[test]
    fn the_checksum_is_crc32c() {
        // TFRecord's masking of CRC-32C("123456789") = 0xE3069283 (the CRC-32C check value).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
    }
}
