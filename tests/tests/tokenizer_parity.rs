//! Token ids of every SST-2 dev sentence and every RTE dev pair equal Hugging Face's
//! AutoTokenizer exactly, for the roberta-base tokenizer (tokenizer.json and the
//! vocab.json + merges.txt fallback) and for MiniLM's BERT WordPiece (vocab.txt fallback).

use std::path::Path;

use peftrain::data::{load_split, Split, Task};
use peftrain::tokenize::TextTokenizer;
use peftrain_tests::{glue_dir, minilm_dir, roberta_dir, run_reference};

#[derive(serde::Deserialize)]
struct Reference {
    input_ids: Vec<Vec<u32>>,
    token_type_ids: Option<Vec<Vec<u32>>>,
}

fn compare(tokenizer_dir: &Path, reference_dir: &Path, task: Task, max_length: usize, check_types: bool) {
    let tsv = glue_dir().join(task.info().glue_dir).join("dev.tsv");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ids.json");
    run_reference(
        "hf_tokenize.py",
        &[
            "--tokenizer",
            reference_dir.to_str().unwrap(),
            "--tsv",
            tsv.to_str().unwrap(),
            "--max-length",
            &max_length.to_string(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let reference: Reference = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let tok = TextTokenizer::load(tokenizer_dir, max_length).expect("tokenizer");
    let rows = load_split(&glue_dir(), task, Split::Dev).expect("dev split");
    let ours = tok.encode_all(&rows).expect("encode");
    assert_eq!(ours.examples.len(), reference.input_ids.len(), "{task}: row count");
    for (i, (e, r)) in ours.examples.iter().zip(&reference.input_ids).enumerate() {
        assert_eq!(&e.ids, r, "{task} dev row {} ({:?}): token ids differ", i + 2, rows[i].text_a);
    }
    if check_types {
        let types = reference.token_type_ids.expect("reference token_type_ids");
        for (i, (e, r)) in ours.examples.iter().zip(&types).enumerate() {
            assert_eq!(&e.type_ids, r, "{task} dev row {}: segment ids differ", i + 2);
        }
    }
}

#[test]
fn roberta_tokenizer_json_matches_autotokenizer() {
    compare(&roberta_dir(), &roberta_dir(), Task::Sst2, 128, false);
    compare(&roberta_dir(), &roberta_dir(), Task::Rte, 128, false);
}

#[test]
fn truncation_is_longest_first_like_autotokenizer() {
    // RTE premises are long: at 48 tokens most pairs are truncated, longest first.
    compare(&roberta_dir(), &roberta_dir(), Task::Rte, 48, false);
}

#[test]
fn roberta_vocab_and_merges_fallback_matches() {
    let d = tempfile::tempdir().unwrap();
    for f in ["vocab.json", "merges.txt"] {
        std::fs::copy(roberta_dir().join(f), d.path().join(f)).unwrap();
    }
    compare(d.path(), &roberta_dir(), Task::Rte, 128, false);
}

#[test]
fn bert_vocab_txt_fallback_matches() {
    let m = minilm_dir();
    let d = tempfile::tempdir().unwrap();
    std::fs::copy(m.join("vocab.txt"), d.path().join("vocab.txt")).unwrap();
    compare(d.path(), &m, Task::Rte, 128, true);
    compare(&m, &m, Task::Sst2, 128, true);
}
