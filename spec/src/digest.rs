//! The model's identity as both sides compute it from the files alone (no libtorch): the
//! coordinator from the `--model` it was started with, each worker from its own copy. A worker
//! whose digest differs holds another model and is refused, whoever registered first.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use sha2::{Digest, Sha256};

/// Bytes hashed at each sampled offset of the weights file.
const SAMPLE: u64 = 64 * 1024;
/// Sampled offsets spread over the file besides its start and end.
const SAMPLES: u64 = 16;

/// sha256 over config.json's bytes and the weights file (`model.safetensors` or
/// `pytorch_model.bin`): its length, its first and last 64 KiB (the safetensors header and
/// index) and 16 evenly spread 64 KiB samples. `random` (weights drawn from the config, for
/// speed runs) hashes the config alone. Copies of one checkpoint agree; a different
/// checkpoint differs in its header, its length or its sampled contents.
pub fn model_digest(dir: &Path, random: bool) -> Result<String, String> {
    let mut h = Sha256::new();
    let config = dir.join("config.json");
    let text = std::fs::read(&config).map_err(|e| format!("{}: {e}", config.display()))?;
    h.update(b"config.json\0");
    h.update((text.len() as u64).to_le_bytes());
    h.update(&text);
    if random {
        h.update(b"random\0");
        return Ok(hex::encode(h.finalize()));
    }
    let Some(weights) = ["model.safetensors", "pytorch_model.bin"].iter().map(|f| dir.join(f)).find(|p| p.is_file()) else {
        return Err(format!("{}: no model weights (expected model.safetensors or pytorch_model.bin)", dir.display()));
    };
    let err = |e: std::io::Error| format!("{}: {e}", weights.display());
    let mut f = std::fs::File::open(&weights).map_err(err)?;
    let len = f.metadata().map_err(err)?.len();
    h.update(weights.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default().as_bytes());
    h.update(len.to_le_bytes());
    let mut offsets = vec![0, len.saturating_sub(SAMPLE)];
    offsets.extend((1..=SAMPLES).map(|k| len / (SAMPLES + 1) * k));
    let mut buf = vec![0u8; SAMPLE as usize];
    for off in offsets {
        f.seek(SeekFrom::Start(off)).map_err(err)?;
        let want = SAMPLE.min(len - off.min(len)) as usize;
        f.read_exact(&mut buf[..want]).map_err(err)?;
        h.update(off.to_le_bytes());
        h.update(&buf[..want]);
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_agree_and_another_checkpoint_differs() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        for m in [&a, &b] {
            std::fs::create_dir_all(m).unwrap();
            std::fs::write(m.join("config.json"), b"{\"model_type\": \"bert\"}").unwrap();
        }
        let weights: Vec<u8> = (0..300_000u32).flat_map(|i| (i as f32).to_le_bytes()).collect();
        std::fs::write(a.join("model.safetensors"), &weights).unwrap();
        std::fs::write(b.join("model.safetensors"), &weights).unwrap();
        assert_eq!(model_digest(&a, false).unwrap(), model_digest(&b, false).unwrap());
        let mut other = weights.clone();
        let mid = other.len() / 17 * 3 + 5;
        other[mid] ^= 1;
        std::fs::write(b.join("model.safetensors"), &other).unwrap();
        assert_ne!(model_digest(&a, false).unwrap(), model_digest(&b, false).unwrap());
        assert_ne!(model_digest(&a, true).unwrap(), model_digest(&a, false).unwrap());
        std::fs::remove_file(b.join("model.safetensors")).unwrap();
        assert!(model_digest(&b, false).unwrap_err().contains("no model weights"));
    }
}
