//! Trainable weights, AdamW state and the loop's position on disk, written by the coordinator
//! from a worker's state (so outputs land on the coordinator's disk whatever the cluster), in
//! formats others read: safetensors with checkpoint keys, peft's adapter layout for LoRA.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use peftrain_proto::v1 as pb;
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::run_state::{LOOP_STATE_FILE, TRAINER_STATE_FILE};

/// Where a checkpoint keeps peftrain's loop state: peftrain_state.json, or trainer_state.json
/// in a checkpoint written before transformers' TrainerState took that name.
fn loop_state_path(dir: &Path) -> PathBuf {
    let p = dir.join(LOOP_STATE_FILE);
    if p.exists() {
        p
    } else {
        dir.join(TRAINER_STATE_FILE)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {why}")]
    Format { path: PathBuf, why: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io { path: path.to_path_buf(), source }
}

/// A replica's trainable state: weights, first moments, second moments (each in the
/// fingerprint's sorted layout) as one fp32 vector, and AdamW's step count.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaState {
    pub fingerprint: String,
    pub optimizer_step: u64,
    pub values: Vec<f32>,
}

impl ReplicaState {
    /// Reassembles a state from its chunks, checking order and length. `expected` (3 x the
    /// trainable values of the layout) bounds what is allocated: the total a worker sends is
    /// only compared with it, never trusted.
    pub fn from_chunks(chunks: &[pb::StateChunk], expected: usize) -> Result<ReplicaState, String> {
        let st = peftrain_spec::state::Assembler::assemble(chunks, expected)?;
        Ok(ReplicaState { fingerprint: st.fingerprint, optimizer_step: st.optimizer_step, values: st.values })
    }

    /// Splits the state into chunks of at most `chunk` values for SetState.
    pub fn to_chunks(&self, chunk: usize) -> Vec<pb::StateChunk> {
        let total = self.values.len() as u64;
        let mut out: Vec<pb::StateChunk> = self
            .values
            .chunks(chunk.max(1))
            .enumerate()
            .map(|(k, part)| {
                let data = peftrain_net::wire::f32_to_le_bytes(part);
                pb::StateChunk {
                    fingerprint: self.fingerprint.clone(),
                    optimizer_step: self.optimizer_step,
                    total,
                    offset: (k * chunk.max(1)) as u64,
                    data: data.into(),
                }
            })
            .collect();
        if out.is_empty() {
            out.push(pb::StateChunk {
                fingerprint: self.fingerprint.clone(),
                optimizer_step: self.optimizer_step,
                total,
                offset: 0,
                data: Default::default(),
            });
        }
        out
    }

    fn part(&self, layout: &[pb::TensorInfo], which: usize) -> Vec<(String, Vec<usize>, &[f32])> {
        let n: usize = layout.iter().map(numel).sum();
        let mut off = which * n;
        layout
            .iter()
            .map(|t| {
                let len = numel(t);
                let s = &self.values[off..off + len];
                off += len;
                (t.name.clone(), t.shape.iter().map(|&d| d as usize).collect(), s)
            })
            .collect()
    }
}

/// Values of weights plus both AdamW moments in `layout` (saturating: a layout is wire data).
pub fn state_values(layout: &[pb::TensorInfo]) -> usize {
    layout.iter().fold(0usize, |acc, t| acc.saturating_add(numel(t))).saturating_mul(3)
}

fn numel(t: &pb::TensorInfo) -> usize {
    t.shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(usize::try_from(d).ok()?)).unwrap_or(usize::MAX)
}

/// Writes named fp32 tensors as safetensors, to a temporary name then renamed into place.
fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, &[f32])], meta: Option<HashMap<String, String>>) -> Result<u64, CheckpointError> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> =
        tensors.iter().map(|(n, s, v)| (n.clone(), s.clone(), peftrain_net::wire::f32_to_le_bytes(v))).collect();
    let views = bytes
        .iter()
        .map(|(n, s, b)| {
            TensorView::new(Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| CheckpointError::Format { path: path.to_path_buf(), why: e.to_string() })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let data = safetensors::serialize(views, meta).map_err(|e| CheckpointError::Format { path: path.to_path_buf(), why: e.to_string() })?;
    write_atomic(path, &data)?;
    Ok(data.len() as u64)
}

/// Writes `data` to `path` through a temporary file beside it, renamed into place: a reader
/// (or a crash) never sees a half-written file.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), CheckpointError> {
    peftrain_spec::paths::write_atomic(path, data).map_err(io(path))
}

fn write_json(path: &Path, v: &impl Serialize) -> Result<u64, CheckpointError> {
    let data = serde_json::to_vec_pretty(v).map_err(|e| CheckpointError::Format { path: path.to_path_buf(), why: e.to_string() })?;
    write_atomic(path, &data)?;
    Ok(data.len() as u64)
}

/// Writes the trainable weights under `dir`: `trainable.safetensors` (checkpoint keys) and
/// `trainable_config.json`; for a method peft saves as an adapter (LoRA, IA3) also peft's
/// `adapter_model.safetensors` (keys under `base_model.model.`) and `adapter_config.json`. Returns the bytes written.
pub fn write_trainable(dir: &Path, cfg: &TrainConfig, layout: &[pb::TensorInfo], state: &ReplicaState) -> Result<u64, CheckpointError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let weights = state.part(layout, 0);
    let mut bytes = write_safetensors(&dir.join("trainable.safetensors"), &weights, Some(HashMap::from([("format".into(), "pt".into())])))?;
    // The method's flags as run_config.json has them (`method`, `bitfit_scope`, `lora_*`).
    let mut config = serde_json::json!({
        "format": "peftrain-trainable/1",
        "model_dir": cfg.model,
        "num_labels": cfg.labels().num_labels(),
        // What the head predicts (problem_type and names by id): eval, predict and merge read it.
        "labels": cfg.labels(),
        "fingerprint": state.fingerprint,
    });
    if let (Some(o), Ok(serde_json::Value::Object(m))) = (config.as_object_mut(), serde_json::to_value(&cfg.method)) {
        o.extend(m);
    }
    bytes += write_json(&dir.join("trainable_config.json"), &config)?;
    // peft records the hub id the base came from (what `from_pretrained` downloads again).
    if let Some(adapter_config) = cfg.method.method().peft_adapter_config(&cfg.base_model_name()) {
        let peft: Vec<(String, Vec<usize>, &[f32])> = weights.iter().map(|(n, s, v)| (format!("base_model.model.{n}"), s.clone(), *v)).collect();
        bytes += write_safetensors(&dir.join("adapter_model.safetensors"), &peft, Some(HashMap::from([("format".into(), "pt".into())])))?;
        bytes += write_json(&dir.join("adapter_config.json"), &adapter_config)?;
    }
    Ok(bytes)
}

/// Which checkpoints a new one leaves: the newest `keep` of this run (all when None), and
/// always `protect` (the best model's step under --load-best-model-at-end).
#[derive(Debug, Clone, Copy, Default)]
pub struct Rotation {
    pub keep: Option<usize>,
    pub protect: Option<u64>,
}

/// Writes `checkpoint-{step}` under `output_dir` atomically (a temporary directory renamed into
/// place), then keeps only the newest `keep` checkpoints. `loop_state` goes to
/// peftrain_state.json, `trainer_state` (transformers' TrainerState) to trainer_state.json.
/// Returns its path and size.
#[allow(clippy::too_many_arguments)]
pub fn write_checkpoint<T: Serialize, H: Serialize>(
    output_dir: &Path,
    step: u64,
    cfg: &TrainConfig,
    layout: &[pb::TensorInfo],
    state: &ReplicaState,
    loop_state: &T,
    trainer_state: &H,
    rotation: Rotation,
    run_id: &str,
) -> Result<(PathBuf, u64), CheckpointError> {
    let final_dir = output_dir.join(format!("checkpoint-{step}"));
    // Named for this run: a leftover found here is this run's own (an earlier attempt that
    // died), never another process's checkpoint in the making.
    // (run_id comes back from peftrain_state.json on resume: only its plain characters name a path.)
    let tag: String = run_id.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').take(64).collect();
    let tmp = output_dir.join(format!(".checkpoint-{step}.{tag}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    let mut bytes = write_trainable(&tmp, cfg, layout, state)?;
    let mut moments = state.part(layout, 1);
    for (n, _, _) in &mut moments {
        *n = format!("exp_avg.{n}");
    }
    let mut second = state.part(layout, 2);
    for (n, _, _) in &mut second {
        *n = format!("exp_avg_sq.{n}");
    }
    moments.extend(second);
    let meta =
        HashMap::from([("optimizer_step".to_string(), state.optimizer_step.to_string()), ("fingerprint".to_string(), state.fingerprint.clone())]);
    bytes += write_safetensors(&tmp.join("optimizer.safetensors"), &moments, Some(meta))?;
    bytes += write_json(&tmp.join(LOOP_STATE_FILE), loop_state)?;
    bytes += write_json(&tmp.join(TRAINER_STATE_FILE), trainer_state)?;
    bytes += write_json(&tmp.join("run_config.json"), cfg)?;
    // Replacing a checkpoint of the same step (a stop right after a save, a resumed run's last
    // step): the old one is moved aside and removed only once the new one is in place, so a
    // crash or SIGKILL in between never leaves the step without a checkpoint.
    let old = output_dir.join(format!(".checkpoint-{step}.{tag}.old"));
    let replacing = final_dir.exists();
    if replacing && checkpoint_run_id(&final_dir).as_deref() != Some(run_id) {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        return Err(CheckpointError::Format { path: final_dir, why: "holds a checkpoint of another run; it is not replaced".into() });
    }
    if replacing {
        // Left by this run if it died between the two renames below.
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io(&old))?;
        }
        std::fs::rename(&final_dir, &old).map_err(io(&final_dir))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(io(&final_dir))?;
    if replacing {
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    if let Some(keep) = rotation.keep {
        // Only this run's checkpoints rotate: anything else in the directory is not ours to
        // delete, and the best model's checkpoint stays whatever its age.
        let mut all: Vec<(u64, PathBuf)> = list_checkpoints(output_dir)?
            .into_iter()
            .filter(|(s, p)| checkpoint_run_id(p).as_deref() == Some(run_id) && Some(*s) != rotation.protect)
            .collect();
        let kept_best = rotation.protect.is_some_and(|b| output_dir.join(format!("checkpoint-{b}")).is_dir()) as usize;
        while all.len() + kept_best > keep.max(1 + kept_best.min(1)) && !all.is_empty() {
            let (_, old) = all.remove(0);
            std::fs::remove_dir_all(&old).map_err(io(&old))?;
        }
    }
    Ok((final_dir, bytes))
}

/// The run a checkpoint belongs to (its loop state's `run_id`), if it says.
fn checkpoint_run_id(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(loop_state_path(dir)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("run_id")?.as_str().filter(|s| !s.is_empty()).map(String::from)
}

/// Where a checkpoint says it is, read without its tensors: the loop state's step and
/// skipped steps, and the optimizer's count of applied updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub global_step: u64,
    pub steps_skipped: u64,
    pub consecutive_skipped: u64,
    pub optimizer_step: u64,
}

/// Largest safetensors header read when only the metadata is wanted.
const MAX_HEADER: u64 = 100 << 20;

pub fn read_position(dir: &Path) -> Result<Position, CheckpointError> {
    let fmt = |path: &Path, why: String| CheckpointError::Format { path: path.to_path_buf(), why };
    let spath = loop_state_path(dir);
    let text = std::fs::read_to_string(&spath).map_err(io(&spath))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| fmt(&spath, format!("malformed JSON: {e}")))?;
    let field = |k: &str| v.get(k).and_then(|x| x.as_u64()).ok_or_else(|| fmt(&spath, format!("field `{k}`: missing or not a whole number")));
    let global_step = field("global_step")?;
    let steps_skipped = field("steps_skipped").unwrap_or(0);
    let consecutive_skipped = field("consecutive_skipped").unwrap_or(0);
    let opath = dir.join("optimizer.safetensors");
    let mut f = std::fs::File::open(&opath).map_err(io(&opath))?;
    let mut len = [0u8; 8];
    std::io::Read::read_exact(&mut f, &mut len).map_err(io(&opath))?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER {
        return Err(fmt(&opath, format!("header of {n} bytes: not a safetensors file")));
    }
    let mut header = vec![0u8; n as usize];
    std::io::Read::read_exact(&mut f, &mut header).map_err(io(&opath))?;
    let h: serde_json::Value = serde_json::from_slice(&header).map_err(|e| fmt(&opath, format!("header: {e}")))?;
    let optimizer_step = h
        .get("__metadata__")
        .and_then(|m| m.get("optimizer_step"))
        .and_then(|s| s.as_str())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| fmt(&opath, "metadata `optimizer_step` missing".into()))?;
    Ok(Position { global_step, steps_skipped, consecutive_skipped, optimizer_step })
}

/// `checkpoint-*` directories under `dir`, oldest first.
pub fn list_checkpoints(dir: &Path) -> Result<Vec<(u64, PathBuf)>, CheckpointError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir)(e)),
    };
    let mut v: Vec<(u64, PathBuf)> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let step = name.strip_prefix("checkpoint-")?.parse().ok()?;
            Some((step, e.path()))
        })
        .collect();
    v.sort();
    Ok(v)
}

/// Reads a checkpoint written by `write_checkpoint`: the state (in `layout`'s order) and the
/// loop state.
pub fn read_checkpoint<T: for<'de> Deserialize<'de>>(dir: &Path, layout: &[pb::TensorInfo]) -> Result<(ReplicaState, T), CheckpointError> {
    let fmt = |path: &Path, why: String| CheckpointError::Format { path: path.to_path_buf(), why };
    let wpath = dir.join("trainable.safetensors");
    let opath = dir.join("optimizer.safetensors");
    let wbytes = std::fs::read(&wpath).map_err(io(&wpath))?;
    let obytes = std::fs::read(&opath).map_err(io(&opath))?;
    let w = SafeTensors::deserialize(&wbytes).map_err(|e| fmt(&wpath, e.to_string()))?;
    let o = SafeTensors::deserialize(&obytes).map_err(|e| fmt(&opath, e.to_string()))?;
    let (_, meta) = SafeTensors::read_metadata(&obytes).map_err(|e| fmt(&opath, e.to_string()))?;
    let info = meta.metadata().clone().unwrap_or_default();
    let optimizer_step =
        info.get("optimizer_step").and_then(|s| s.parse().ok()).ok_or_else(|| fmt(&opath, "metadata `optimizer_step` missing".into()))?;
    let fingerprint = info.get("fingerprint").cloned().unwrap_or_default();
    let mut values = Vec::new();
    for (file, path, prefix) in [(&w, &wpath, ""), (&o, &opath, "exp_avg."), (&o, &opath, "exp_avg_sq.")] {
        for t in layout {
            let key = format!("{prefix}{}", t.name);
            let view = file.tensor(&key).map_err(|_| fmt(path, format!("tensor `{key}` missing")))?;
            let want: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
            if view.shape() != want.as_slice() || view.dtype() != Dtype::F32 {
                return Err(fmt(path, format!("tensor `{key}` is {:?} {:?}, expected F32 {want:?}", view.dtype(), view.shape())));
            }
            values.extend(peftrain_net::wire::le_bytes_to_f32(view.data()));
        }
    }
    let spath = loop_state_path(dir);
    let text = std::fs::read_to_string(&spath).map_err(io(&spath))?;
    let loop_state = serde_json::from_str(&text).map_err(|e| fmt(&spath, format!("malformed JSON: {e}")))?;
    Ok((ReplicaState { fingerprint, optimizer_step, values }, loop_state))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(total: u64, offset: u64, values: usize) -> pb::StateChunk {
        pb::StateChunk { fingerprint: "f".into(), optimizer_step: 1, total, offset, data: vec![0u8; 4 * values].into() }
    }

    #[test]
    fn a_state_is_bounded_by_the_layout_not_by_the_sender() {
        // A total no layout has: refused before anything is allocated (this used to reserve it).
        let e = ReplicaState::from_chunks(&[chunk(u64::MAX, 0, 2)], 6).unwrap_err();
        assert!(e.contains("layout holds 6"), "{e}");
        let e = ReplicaState::from_chunks(&[chunk(6, 0, 4), chunk(6, 4, 4)], 6).unwrap_err();
        assert!(e.contains("runs past"), "{e}");
        let st = ReplicaState::from_chunks(&[chunk(6, 0, 4), chunk(6, 4, 2)], 6).unwrap();
        assert_eq!(st.values.len(), 6);
    }
}
