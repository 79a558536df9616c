//! A replica's state on the wire: sent as chunks (GetState), received and assembled by
//! `peftrain_spec::state` (SetState, or pulled from a peer).

use std::time::Duration;

use peftrain_proto::v1 as pb;
use peftrain_spec::state::State;
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
        Ok(AssembledState { fingerprint: st.fingerprint, optimizer_step: st.optimizer_step, values: st.values, assembler: None })
    }
}

impl AssembledState {
    pub fn into_state(self) -> State {
        State { fingerprint: self.fingerprint, optimizer_step: self.optimizer_step, values: self.values }
    }
}

/// `state` as chunks of at most `chunk_elems` values (one empty chunk for an empty state, so
/// the receiver still learns the fingerprint and step).
pub fn to_chunks(state: State, chunk_elems: usize) -> Vec<pb::StateChunk> {
    let n = chunk_elems.max(1);
    let total = state.values.len() as u64;
    let mut chunks: Vec<pb::StateChunk> = state
        .values
        .chunks(n)
        .enumerate()
        .map(|(k, part)| pb::StateChunk {
            fingerprint: state.fingerprint.clone(),
            optimizer_step: state.optimizer_step,
            total,
            offset: (k * n) as u64,
            data: crate::collective::to_le_bytes(part),
        })
        .collect();
    if chunks.is_empty() {
        chunks.push(pb::StateChunk {
            fingerprint: state.fingerprint,
            optimizer_step: state.optimizer_step,
            total,
            offset: 0,
            data: Default::default(),
        });
    }
    chunks
}

/// The state of the live peer at `peer`, at most `expected` values.
pub async fn fetch(security: &peftrain_net::Security, peer: &str, timeout: Duration, expected: usize) -> Result<State, WorkerError> {
    let bad = |e: String| WorkerError::BadState(format!("peer {peer}: {e}"));
    let ch =
        security.endpoint(peer, timeout).map_err(|e| bad(e.to_string()))?.timeout(timeout * 4).connect().await.map_err(|e| bad(e.to_string()))?;
    let mut client = pb::worker_client::WorkerClient::with_interceptor(ch, security.client_auth()).max_decoding_message_size(64 << 20);
    let mut stream = client.get_state(pb::GetStateRequest {}).await.map_err(|s| bad(s.message().to_string()))?.into_inner();
    Ok(receive_state(&mut stream, expected).await?.into_state())
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
