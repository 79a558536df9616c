//! A replica's fingerprint: what makes two replicas interchangeable (the checkpoint's config
//! and tensor index, the method, the trainable layout), hashed so workers can compare.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::ModelError;
use crate::model::Loaded;
use crate::peft::Method;

/// The replica's identity: equal fingerprints train together.
#[derive(Debug, Clone, PartialEq)]
pub struct Fingerprint {
    pub digest: String,
    pub model_type: String,
    pub trainable_params: u64,
    pub total_params: u64,
    /// Sorted trainable names, shapes, dtype.
    pub layout: Vec<(String, Vec<i64>, String)>,
}

/// sha256 over what makes replicas interchangeable: the checkpoint's config and tensor index,
/// the method, and the trainable layout.
pub fn fingerprint(loaded: &Loaded, method: &Method) -> Result<Fingerprint, ModelError> {
    let mut h = Sha256::new();
    let cfg = std::fs::read(&loaded.files.config).map_err(|e| ModelError::Io { path: loaded.files.config.clone(), source: e })?;
    h.update(&cfg);
    if let Some(w) = &loaded.files.weights {
        h.update(checkpoint_identity(w)?);
    }
    h.update(method.describe().as_bytes());
    h.update(loaded.num_labels.to_le_bytes());
    let layout: Vec<(String, Vec<i64>, String)> =
        loaded.params.trainable.iter().map(|(n, t)| (n.clone(), t.size(), format!("{:?}", t.kind()).to_lowercase())).collect();
    for (n, s, k) in &layout {
        h.update(n.as_bytes());
        for d in s {
            h.update(d.to_le_bytes());
        }
        h.update(k.as_bytes());
    }
    Ok(Fingerprint {
        digest: hex::encode(h.finalize()),
        model_type: loaded.config.model_type.clone(),
        trainable_params: loaded.params.trainable_count() as u64,
        total_params: loaded.params.total_count() as u64,
        layout,
    })
}

/// Cheap identity of a weights file: its size, the safetensors header (names, dtypes, shapes,
/// offsets) and 16 samples of 64 KiB spread over the data, so that two checkpoints of the same
/// shape but different values differ without hashing 500 MB.
fn checkpoint_identity(path: &Path) -> Result<Vec<u8>, ModelError> {
    use std::io::{Read, Seek, SeekFrom};
    let io = |e| ModelError::Io { path: path.to_path_buf(), source: e };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let size = f.metadata().map_err(io)?.len();
    let mut out = size.to_le_bytes().to_vec();
    let mut header_len = [0u8; 8];
    if path.extension().is_some_and(|e| e == "safetensors") && f.read_exact(&mut header_len).is_ok() {
        let n = u64::from_le_bytes(header_len).min(size.saturating_sub(8)).min(100 << 20);
        let mut header = vec![0u8; n as usize];
        f.read_exact(&mut header).map_err(io)?;
        out.extend(header);
    }
    const SAMPLES: u64 = 16;
    let mut buf = vec![0u8; 64 << 10];
    for k in 0..SAMPLES {
        f.seek(SeekFrom::Start(size * k / SAMPLES)).map_err(io)?;
        let n = f.read(&mut buf).map_err(io)?;
        out.extend_from_slice(&buf[..n]);
    }
    Ok(out)
}
