//! Property-based fuzzing (proptest) of everything that reads untrusted bytes: the GLUE TSV and
//! parquet readers, and every handler that decodes a peer's message (registration, shards,
//! gradient chunks, state transfer). Nothing may panic; bad input is an error. Brief here
//! (PROPTEST_CASES, default 64); run longer by hand, e.g. `PROPTEST_CASES=20000 cargo test
//! --release -p peftrain-tests --test fuzz`.

use peftrain::checkpoint::ReplicaState;
use peftrain::data::{read_parquet, read_tsv, Label, Split, Task};
use peftrain::registry::Registry;
use peftrain_proto::v1 as pb;
use peftrain_worker::replica::Shard;
use peftrain_worker::service::check_chunk;
use peftrain_worker::state::AssembledState;
use proptest::prelude::*;
use prost::Message;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Text that looks like GLUE TSV often enough to get past the header.
fn tsv_like() -> impl Strategy<Value = Vec<u8>> {
    let header = prop_oneof![
        Just("sentence\tlabel\n".to_string()),
        Just("index\tsentence1\tsentence2\tlabel\n".to_string()),
        Just("index\tsentence\n".to_string()),
        "[a-z\t]{0,20}\n",
    ];
    let body = proptest::collection::vec(
        any::<u8>().prop_map(|b| match b % 8 {
            0 => b'\t',
            1 => b'\n',
            2 => b'"',
            3 => b'\r',
            _ => b,
        }),
        0..400,
    );
    (header, body).prop_map(|(h, b)| [h.into_bytes(), b].concat())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn tsv_reader_never_panics(bytes in tsv_like(), task in prop_oneof![Just(Task::Sst2), Just(Task::Rte)], test in any::<bool>()) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.tsv");
        std::fs::write(&p, &bytes).unwrap();
        let split = if test { Split::Test } else { Split::Train };
        if let Ok(rows) = read_tsv(&p, task, split) {
            prop_assert!(!rows.is_empty());
            prop_assert!(rows.iter().all(|r| r.label.is_none_or(|l| matches!(l, Label::Class(c) if (c as usize) < task.num_labels()))));
        }
    }

    #[test]
    fn parquet_reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.parquet");
        // Give some inputs the magic numbers so the reader gets past the first check.
        let mut b = bytes;
        if b.len() > 16 && b[0] % 2 == 0 {
            b[..4].copy_from_slice(b"PAR1");
            let n = b.len();
            b[n - 4..].copy_from_slice(b"PAR1");
        }
        std::fs::write(&p, &b).unwrap();
        let _ = read_parquet(&p, Task::Rte, Split::Train);
    }

    #[test]
    fn registration_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let r = Registry::new("run".into(), pb::RunSpec::default(), 2);
        if let Ok(req) = pb::RegisterRequest::decode(bytes.as_slice()) {
            let _ = r.register(req);
        }
        if let Ok(req) = pb::HeartbeatRequest::decode(bytes.as_slice()) {
            let _ = r.heartbeat(&req);
        }
        if let Ok(req) = pb::HelloRequest::decode(bytes.as_slice()) {
            let _ = r.hello(&req);
        }
    }

    #[test]
    fn shard_validation_rejects_what_padding_could_not_handle(
        ids in proptest::collection::vec(0u32..200, 0..64),
        types in proptest::collection::vec(0u32..3, 0..64),
        lengths in proptest::collection::vec(0u32..20, 0..8),
        labels in proptest::collection::vec(-2i64..4, 0..8),
    ) {
        let shard = Shard { ids, type_ids: types, lengths, labels, scores: vec![] };
        if shard.validate(2, 100, 2, 16).is_ok() {
            // What validation admits, padding can lay out: lengths cover the ids exactly.
            prop_assert_eq!(shard.tokens() as usize, shard.ids.len());
            prop_assert!(shard.ids.iter().all(|&t| t < 100));
            prop_assert!(shard.lengths.iter().all(|&l| l > 0 && l <= 16));
            prop_assert!(shard.labels.is_empty() || shard.labels.len() == shard.lengths.len());
            prop_assert!(shard.type_ids.iter().all(|&t| t < 2), "segment ids index the type table");
        }
    }

    #[test]
    fn step_and_eval_requests_decode_safely(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        if let Ok(req) = pb::StepRequest::decode(bytes.as_slice()) {
            let s = peftrain_worker::service::shard_from(req.shard.clone().unwrap_or_default());
            let _ = s.validate(2, 50265, 1, 512);
            // Micro-batches a worker admits tile its shard, each divided by at least its size.
            if let Ok(order) = peftrain_worker::engine::StepOrder::try_from(req) {
                if peftrain_worker::engine::check_micro(&order.micro, order.shard.len()).is_ok() {
                    prop_assert_eq!(order.micro.iter().map(|m| m.examples).sum::<usize>(), order.shard.len());
                    prop_assert!(order.micro.iter().all(|m| m.divisor.is_finite() && m.divisor >= (m.examples.max(1)) as f64));
                }
            }
        }
        if let Ok(req) = pb::EvalRequest::decode(bytes.as_slice()) {
            let s = peftrain_worker::service::shard_from(req.shard.unwrap_or_default());
            let _ = s.validate(2, 50265, 1, 512);
        }
        let _ = pb::SetupRequest::decode(bytes.as_slice());
        let _ = pb::CommitRequest::decode(bytes.as_slice());
        let _ = pb::SyncFromRequest::decode(bytes.as_slice());
    }

    /// A step's dropout stream is a generator's state or the step is refused: 624 words, a
    /// position within them, not all zero (a generator that outputs zeros for ever); a step
    /// without one is refused too.
    #[test]
    fn a_step_takes_only_a_generators_dropout_stream(
        len in 620usize..628, seed in any::<u32>(), next in 0u32..630, zero in any::<bool>(), missing in any::<bool>(),
    ) {
        let words: Vec<u32> = (0..len as u32).map(|i| if zero { 0 } else { seed.wrapping_mul(2_654_435_761).wrapping_add(i) | 1 }).collect();
        let stream = (!missing).then_some(pb::DropoutStream { words, next });
        let req = pb::StepRequest { dropout_stream: stream, ..Default::default() };
        let admitted = peftrain_worker::engine::StepOrder::try_from(req).is_ok();
        prop_assert_eq!(admitted, !missing && len == 624 && next <= 624 && !zero);
    }

    #[test]
    fn gradient_chunks_are_checked_before_use(
        total in 0u64..64, offset in 0u64..80, n in 0usize..300, generation in 0u64..4,
    ) {
        let c = pb::GradChunk { step: 1, generation, from_rank: 0, round: 0, offset, data: vec![1u8; n].into(), total };
        if let Ok(_current) = check_chunk(&c, 40, 2) {
            // Admitted chunks fit the 40-value buffer exactly.
            prop_assert_eq!(total, 40);
            prop_assert_eq!(n % 4, 0);
            prop_assert!(offset + (n as u64) / 4 <= 40);
        }
    }

    #[test]
    fn state_chunks_assemble_or_fail_cleanly(
        chunks in proptest::collection::vec((0u64..40, 0u64..40, 0usize..64, any::<bool>()), 1..6),
    ) {
        let msgs: Vec<pb::StateChunk> = chunks
            .iter()
            .map(|&(total, offset, n, same)| pb::StateChunk {
                fingerprint: if same { "f".into() } else { "g".into() },
                optimizer_step: 3,
                total,
                offset,
                data: vec![0u8; n].into(),
            })
            .collect();
        // The worker's side (bounded by what this replica needs)...
        let expected = 12usize;
        let assembled = AssembledState::start(&msgs[0], expected).and_then(|mut st| {
            for m in &msgs {
                st.push(m, expected)?;
            }
            st.finish(expected)
        });
        if let Ok(st) = assembled {
            prop_assert_eq!(st.values.len(), expected);
        }
        // ... and the coordinator's.
        if let Ok(st) = ReplicaState::from_chunks(&msgs, expected) {
            prop_assert_eq!(st.values.len() as u64, msgs[0].total);
            prop_assert_eq!(st.values.len(), expected);
        }
    }
}

/// A real parquet file (written by pyarrow from the RTE dev set) to mutate.
fn seed_parquet() -> Vec<u8> {
    static SEED: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    SEED.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("rte/validation-00000-of-00001.parquet");
        let tsv = peftrain_tests::glue_dir().join("RTE/dev.tsv");
        peftrain_tests::run_reference(
            "make_parquet.py",
            &["--tsv", tsv.to_str().unwrap(), "--task", "rte", "--out", out.to_str().unwrap(), "--limit", "20"],
        );
        std::fs::read(out).unwrap()
    })
    .clone()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn mutated_parquet_files_never_panic(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), cut in any::<prop::sample::Index>(), truncate in any::<bool>()) {
        let mut b = seed_parquet();
        for (i, v) in flips {
            let k = i.index(b.len());
            b[k] = v;
        }
        if truncate {
            b.truncate(cut.index(b.len()));
        }
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.parquet");
        std::fs::write(&p, &b).unwrap();
        if let Err(e) = read_parquet(&p, Task::Rte, Split::Dev) {
            let line = e.to_string();
            prop_assert!(line.contains("x.parquet") && !line.contains('\n'), "one line naming the file: {line}");
        }
    }
}
