//! A replica's state received from the wire (SetState), assembled by `peftrain_spec::state`.

use peftrain_proto::v1 as pb;
use tonic::Streaming;

use crate::error::WorkerError;

/// A state received in chunks, checked piece by piece by `peftrain_spec::state` (the
/// coordinator's check too).
pub struct AssembledState {
    pub fingerprint: String,
    pub optimizer_step: u64,
    pub values: Vec<f32>,
    assembler: Option<peftrain_spec::state::Assembler>,
}

impl AssembledState {
    /// Starts a state whose first chunk is `first` (pushed next, like every other); `expected`
    /// is the number of values this replica needs, so a peer cannot make us allocate more.
    pub fn start(first: &pb::StateChunk, expected: usize) -> Result<AssembledState, WorkerError> {
        if first.total != expected as u64 {
            return Err(WorkerError::BadState(format!("state of {} values, this replica needs {expected}", first.total)));
        }
        Ok(AssembledState {
            fingerprint: first.fingerprint.clone(),
            optimizer_step: first.optimizer_step,
            values: Vec::new(),
            assembler: Some(peftrain_spec::state::Assembler::new(expected)),
        })
    }

    pub fn push(&mut self, c: &pb::StateChunk, _expected: usize) -> Result<(), WorkerError> {
        let a = self.assembler.as_mut().ok_or_else(|| WorkerError::BadState("state already finished".into()))?;
        a.push(c).map_err(WorkerError::BadState)
    }

    pub fn finish(mut self, _expected: usize) -> Result<AssembledState, WorkerError> {
        let a = self.assembler.take().ok_or_else(|| WorkerError::BadState("state already finished".into()))?;
        let st = a.finish().map_err(WorkerError::BadState)?;
        Ok(AssembledState {
            fingerprint: st.fingerprint,
            optimizer_step: st.optimizer_step,
            values: st.values,
            assembler: None,
        })
    }
}

/// Reads a whole state from a stream of chunks.
pub async fn receive_state(stream: &mut Streaming<pb::StateChunk>, expected: usize) -> Result<AssembledState, WorkerError> {
    let mut state: Option<AssembledState> = None;
    while let Some(c) = stream.message().await.map_err(|s| WorkerError::BadState(s.message().to_string()))? {
        let st = match &mut state {
            Some(st) => st,
            None => state.insert(AssembledState::start(&c, expected)?),
        };
        st.push(&c, expected)?;
    }
    state.ok_or_else(|| WorkerError::BadState("empty state stream".into()))?.finish(expected)
}
