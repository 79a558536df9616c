//! Tokenization with the Hugging Face `tokenizers` crate: `tokenizer.json` when the model ships
//! one, else RoBERTa's `vocab.json` + `merges.txt` or BERT's `vocab.txt`; single sentences and
//! pairs, longest-first truncation to `--max-length`, no padding (workers pad per batch).

use std::path::{Path, PathBuf};

use tokenizers::models::bpe::BPE;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{EncodeInput, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::data::{Example, Label};

#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    #[error("{dir}: no tokenizer found (expected tokenizer.json, vocab.json + merges.txt, or vocab.txt)")]
    NotFound { dir: PathBuf },
    #[error("{path}: cannot load tokenizer: {why}")]
    Load { path: PathBuf, why: String },
    #[error("tokenizing {what}: {why}")]
    Encode { what: String, why: String },
}

/// One tokenized example, unpadded.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    pub label: Option<Label>,
    /// The example's `idx` (GLUE test index or row number).
    pub idx: u64,
}

/// Tokenized data and how much truncation cost.
pub struct EncodedSet {
    pub examples: Vec<Encoded>,
    /// Examples longer than `max_length` that were truncated.
    pub truncated: usize,
}

pub struct TextTokenizer {
    inner: Tokenizer,
    pub source: PathBuf,
    pub max_length: usize,
}

impl TextTokenizer {
    /// Loads the tokenizer of `dir` and sets longest-first truncation to `max_length`.
    pub fn load(dir: &Path, max_length: usize) -> Result<TextTokenizer, TokenizeError> {
        let json = dir.join("tokenizer.json");
        let (mut inner, source) = if json.is_file() {
            let t = Tokenizer::from_file(&json).map_err(|e| TokenizeError::Load { path: json.clone(), why: e.to_string() })?;
            (t, json)
        } else if dir.join("vocab.json").is_file() && dir.join("merges.txt").is_file() {
            (roberta_from_files(dir)?, dir.join("vocab.json"))
        } else if dir.join("vocab.txt").is_file() {
            (bert_from_vocab(dir)?, dir.join("vocab.txt"))
        } else {
            return Err(TokenizeError::NotFound { dir: dir.to_path_buf() });
        };
        // Padding is the worker's job (dynamic, per shard); a tokenizer.json may carry its own.
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| TokenizeError::Load { path: source.clone(), why: e.to_string() })?;
        Ok(TextTokenizer { inner, source, max_length })
    }

    /// Token ids of a sentence or a pair, with special tokens, truncated.
    pub fn encode_one(&self, a: &str, b: Option<&str>) -> Result<(Vec<u32>, Vec<u32>, bool), TokenizeError> {
        let input: EncodeInput = match b {
            Some(b) => (a, b).into(),
            None => a.into(),
        };
        let enc = self.inner.encode(input, true).map_err(|e| TokenizeError::Encode { what: a.chars().take(40).collect(), why: e.to_string() })?;
        let truncated = !enc.get_overflowing().is_empty();
        Ok((enc.get_ids().to_vec(), enc.get_type_ids().to_vec(), truncated))
    }

    /// Tokenizes a whole split (in parallel inside `tokenizers`).
    pub fn encode_all(&self, examples: &[Example]) -> Result<EncodedSet, TokenizeError> {
        let inputs: Vec<EncodeInput> = examples
            .iter()
            .map(|e| match &e.text_b {
                Some(b) => (e.text_a.as_str(), b.as_str()).into(),
                None => e.text_a.as_str().into(),
            })
            .collect();
        let encs = self
            .inner
            .encode_batch(inputs, true)
            .map_err(|e| TokenizeError::Encode { what: format!("{} examples", examples.len()), why: e.to_string() })?;
        let mut truncated = 0;
        let out = encs
            .into_iter()
            .zip(examples)
            .map(|(enc, ex)| {
                if !enc.get_overflowing().is_empty() {
                    truncated += 1;
                }
                Encoded { ids: enc.get_ids().to_vec(), type_ids: enc.get_type_ids().to_vec(), label: ex.label, idx: ex.idx }
            })
            .collect();
        Ok(EncodedSet { examples: out, truncated })
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}

/// RoBERTa's byte-level BPE from `vocab.json` + `merges.txt`, with `<s> A </s></s> B </s>`.
fn roberta_from_files(dir: &Path) -> Result<Tokenizer, TokenizeError> {
    let vocab = dir.join("vocab.json");
    let merges = dir.join("merges.txt");
    let load_err = |why: String| TokenizeError::Load { path: vocab.clone(), why };
    let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy()).build().map_err(|e| load_err(e.to_string()))?;
    let mut t = Tokenizer::new(bpe);
    let id = |tok: &str| t.token_to_id(tok).ok_or_else(|| load_err(format!("special token {tok} missing from the vocabulary")));
    let (bos, eos) = (id("<s>")?, id("</s>")?);
    t.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    t.with_decoder(Some(ByteLevel::default()));
    t.with_post_processor(Some(RobertaProcessing::new(("</s>".into(), eos), ("<s>".into(), bos)).trim_offsets(true).add_prefix_space(false)));
    Ok(t)
}

/// BERT's WordPiece from `vocab.txt`, lower-casing unless `tokenizer_config.json` says not to.
fn bert_from_vocab(dir: &Path) -> Result<Tokenizer, TokenizeError> {
    let vocab = dir.join("vocab.txt");
    let load_err = |why: String| TokenizeError::Load { path: vocab.clone(), why };
    let lowercase = std::fs::read_to_string(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| v.get("do_lower_case").and_then(|b| b.as_bool()))
        .unwrap_or(true);
    let wp = WordPiece::from_file(&vocab.to_string_lossy()).unk_token("[UNK]".into()).build().map_err(|e| load_err(e.to_string()))?;
    let mut t = Tokenizer::new(wp);
    let id = |tok: &str| t.token_to_id(tok).ok_or_else(|| load_err(format!("special token {tok} missing from the vocabulary")));
    let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
    t.with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase))).map_err(|e| load_err(e.to_string()))?;
    t.with_pre_tokenizer(Some(BertPreTokenizer));
    t.with_post_processor(Some(BertProcessing::new(("[SEP]".into(), sep), ("[CLS]".into(), cls))));
    Ok(t)
}
