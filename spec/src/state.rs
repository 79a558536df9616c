//! A replica's state (trainable weights, then AdamW's two moments; fp32) as `StateChunk`s
//! carry it, reassembled in one place for the coordinator (checkpoints, GetState) and the
//! workers (SetState): bounded by the size the receiver expects from its own layout, never by
//! the total a sender claims, and grown only by what arrives.

use peftrain_proto::v1 as pb;

/// Values per message of a state or gradient stream: 1 MiB of fp32, well under the 4 MiB
/// message limit of both servers. Coordinator and workers cut their streams alike.
pub const CHUNK_ELEMS: usize = 256 * 1024;

/// A whole state, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub fingerprint: String,
    pub optimizer_step: u64,
    pub values: Vec<f32>,
}

/// Chunks in, one `State` out.
pub struct Assembler {
    expected: usize,
    state: Option<State>,
}

impl Assembler {
    /// `expected`: the values the receiver's layout holds (3 x its trainable values).
    pub fn new(expected: usize) -> Assembler {
        Assembler { expected, state: None }
    }

    pub fn push(&mut self, c: &pb::StateChunk) -> Result<(), String> {
        let expected = self.expected;
        if c.total != expected as u64 {
            return Err(match &self.state {
                None => format!("a state of {} values, this layout holds {expected}", c.total),
                Some(_) => "chunks of different states mixed".into(),
            });
        }
        let st = match &mut self.state {
            Some(st) if st.fingerprint != c.fingerprint || st.optimizer_step != c.optimizer_step => {
                return Err("chunks of different states mixed".into());
            }
            Some(st) => st,
            None => self.state.insert(State { fingerprint: c.fingerprint.clone(), optimizer_step: c.optimizer_step, values: Vec::new() }),
        };
        if c.offset != st.values.len() as u64 || !c.data.len().is_multiple_of(4) {
            return Err(format!("state chunk at offset {} is out of order", c.offset));
        }
        if st.values.len() + c.data.len() / 4 > expected {
            return Err(format!("state chunk at offset {} runs past the {expected} values", c.offset));
        }
        st.values.extend(c.data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
        Ok(())
    }

    pub fn finish(self) -> Result<State, String> {
        let st = self.state.ok_or("empty state")?;
        if st.values.len() != self.expected {
            return Err(format!("state of {} values ended after {}", self.expected, st.values.len()));
        }
        Ok(st)
    }

    /// A whole state from its chunks.
    pub fn assemble(chunks: &[pb::StateChunk], expected: usize) -> Result<State, String> {
        let mut a = Assembler::new(expected);
        for c in chunks {
            a.push(c)?;
        }
        a.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(total: u64, offset: u64, n: usize, fp: &str) -> pb::StateChunk {
        pb::StateChunk { fingerprint: fp.into(), optimizer_step: 3, total, offset, data: vec![0u8; 4 * n].into() }
    }

    #[test]
    fn only_the_expected_state_in_order_is_assembled() {
        assert_eq!(Assembler::assemble(&[chunk(6, 0, 4, "a"), chunk(6, 4, 2, "a")], 6).unwrap().values.len(), 6);
        for (bad, why) in [
            (vec![chunk(u64::MAX, 0, 2, "a")], "this layout holds 6"),
            (vec![chunk(6, 0, 4, "a"), chunk(6, 4, 4, "a")], "runs past"),
            (vec![chunk(6, 0, 4, "a"), chunk(6, 2, 2, "a")], "out of order"),
            (vec![chunk(6, 0, 4, "a"), chunk(6, 4, 2, "b")], "mixed"),
            (vec![chunk(6, 0, 4, "a")], "ended after 4"),
            (vec![], "empty"),
        ] {
            let e = Assembler::assemble(&bad, 6).unwrap_err();
            assert!(e.contains(why), "{e} lacks {why}");
        }
    }
}
