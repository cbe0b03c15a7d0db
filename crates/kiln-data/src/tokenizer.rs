//! Tokenizers: load a Hugging Face `tokenizer.json`, or train a BERT-style WordPiece or a
//! GPT-2-style byte-level BPE tokenizer offline, with the `tokenizers` crate (the Rust core of
//! Hugging Face `tokenizers`, so the saved files load in Python unchanged).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainer};
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{
    AddedToken, DecoderWrapper, ModelWrapper, Normalizer, NormalizerWrapper, OffsetReferential,
    OffsetType, PostProcessorWrapper, PreTokenizedString, PreTokenizer, PreTokenizerWrapper,
};

use crate::error::{Error, Result};

/// BERT's special tokens, in the order WordPiece training gives them ids 0–4.
pub const BERT_SPECIAL_TOKENS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
/// GPT-2's one special token.
pub const GPT2_END_OF_TEXT: &str = "<|endoftext|>";

/// CLIP's pre-tokenisation pattern as transformers' `CLIPTokenizer` writes it (OpenAI's
/// `simple_tokenizer.py` pattern with the two markers in front).
const CLIP_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// What to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenizerKind {
    /// BERT-style: lower-casing BERT normaliser, BERT pre-tokeniser, WordPiece (`##`
    /// continuations), `[CLS] … [SEP]` post-processing; specials [`BERT_SPECIAL_TOKENS`].
    WordPiece,
    /// GPT-2-style byte-level BPE; special token [`GPT2_END_OF_TEXT`].
    Bpe,
}

/// Ids of the special tokens a model and collator need.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SpecialIds {
    /// Padding.
    pub pad: Option<u32>,
    /// Unknown token.
    pub unk: Option<u32>,
    /// Sequence start (`[CLS]`).
    pub cls: Option<u32>,
    /// Separator / sequence end (`[SEP]`).
    pub sep: Option<u32>,
    /// Mask (`[MASK]`).
    pub mask: Option<u32>,
    /// End of text (`<|endoftext|>`).
    pub eos: Option<u32>,
    /// Every added special token.
    pub all: Vec<u32>,
}

/// A tokenizer (wraps `tokenizers::Tokenizer`).
///
/// ```
/// use kiln_data::tokenizer::{Tokenizer, TokenizerKind};
/// let texts = ["the cow feeds the hungry goats", "the goats sleep near the barn"];
/// let tok = Tokenizer::train(TokenizerKind::WordPiece, texts.iter().copied(), 200, 1)?;
/// let ids = tok.encode("The goats sleep", true)?;
/// let special = tok.special_ids();
/// assert_eq!((ids[0], *ids.last().unwrap()), (special.cls.unwrap(), special.sep.unwrap()));
/// assert_eq!(tok.decode(&ids, true)?, "the goats sleep");
/// # Ok::<(), kiln_data::Error>(())
/// ```
pub struct Tokenizer {
    path: PathBuf,
    inner: tokenizers::Tokenizer,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("path", &self.path)
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json` (a file, or a directory holding one). A directory with no
    /// `tokenizer.json` but a CLIP tokenizer's `vocab.json` and `merges.txt` (as Stable
    /// Diffusion pipelines ship `tokenizer/`) is read by [`Tokenizer::from_clip_dir`].
    ///
    /// # Errors
    /// [`Error::Tokenizer`] if it is missing or not a tokenizer.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let path = if path.is_dir() {
            let json = path.join("tokenizer.json");
            if !json.is_file()
                && path.join("vocab.json").is_file()
                && path.join("merges.txt").is_file()
            {
                return Self::from_clip_dir(path);
            }
            json
        } else {
            path.to_owned()
        };
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| Error::Tokenizer {
            path: path.clone(),
            message: e.to_string(),
        })?;
        Ok(Self { path, inner })
    }

    /// Reads a CLIP BPE tokenizer from the files transformers' `CLIPTokenizer` loads and
    /// Stable Diffusion pipelines ship in `tokenizer/`: `vocab.json` (token → id), `merges.txt`
    /// (a `#version` line, then one merge `a b` per line, in rank order) and, if present,
    /// `special_tokens_map.json` / `tokenizer_config.json` for the special tokens (transformers'
    /// defaults otherwise: `<|startoftext|>`, `<|endoftext|>` as end, unknown and pad token).
    ///
    /// The result is the tokenizer transformers builds for `CLIPTokenizer` (its `__init__`, and
    /// `CLIPConverter` before it): NFC, whitespace runs → one space, lower-casing; CLIP's
    /// pre-tokenisation pattern (contractions, letter runs, single digits, other symbol runs;
    /// the two markers kept whole), byte-level characters; BPE with the end-of-word suffix
    /// `</w>` and the end token for unknown characters; `<|startoftext|> … <|endoftext|>`
    /// around a text; the special tokens matched in the raw text before anything else (which
    /// is why SD 2's pad token `!` is never merged into `!</w>`). Checked id for id against
    /// `CLIPTokenizer.from_pretrained` (`kiln-models/tests/fixtures/make_clip_bpe_fixture.py`).
    /// OpenAI's own tokenizer also runs `ftfy` and HTML unescaping first; transformers does
    /// not, and neither does kiln.
    ///
    /// # Errors
    /// [`Error::Tokenizer`] naming the file for a missing or malformed vocabulary or merge
    /// list, a merge of tokens the vocabulary lacks, or a special token not in the vocabulary.
    pub fn from_clip_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let fail = |path: &Path, message: String| Error::Tokenizer {
            path: path.to_owned(),
            message,
        };
        let read = |name: &str| -> Result<String> {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|e| fail(&path, e.to_string()))
        };
        let vocab_path = dir.join("vocab.json");
        let vocab: BTreeMap<String, u32> = serde_json::from_str(&read("vocab.json")?)
            .map_err(|e| fail(&vocab_path, format!("not a token → id JSON object ({e})")))?;
        let merges_path = dir.join("merges.txt");
        let mut merges = Vec::new();
        for (i, line) in read("merges.txt")?.lines().enumerate() {
            if (i == 0 && line.starts_with("#version")) || line.trim().is_empty() {
                continue;
            }
            let mut parts = line.split(' ');
            let (Some(a), Some(b), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(fail(
                    &merges_path,
                    format!("line {}: `{line}` is not a merge `a b`", i + 1),
                ));
            };
            for piece in [a, b, &format!("{a}{b}")] {
                if !vocab.contains_key(piece) {
                    return Err(fail(
                        &merges_path,
                        format!(
                            "line {}: `{piece}` is not in {} (vocab.json and merges.txt must come from the same tokenizer)",
                            i + 1,
                            vocab_path.display()
                        ),
                    ));
                }
            }
            merges.push((a.to_owned(), b.to_owned()));
        }
        // special tokens: tokenizer_config.json, then special_tokens_map.json, then defaults
        let mut special: BTreeMap<&str, String> = [
            ("bos_token", "<|startoftext|>"),
            ("eos_token", "<|endoftext|>"),
            ("unk_token", "<|endoftext|>"),
            ("pad_token", "<|endoftext|>"),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.to_owned()))
        .collect();
        for name in ["special_tokens_map.json", "tokenizer_config.json"] {
            let path = dir.join(name);
            if !path.is_file() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(&read(name)?)
                .map_err(|e| fail(&path, format!("not JSON ({e})")))?;
            for (key, value) in special.iter_mut() {
                match &v[*key] {
                    serde_json::Value::String(s) => *value = s.clone(),
                    serde_json::Value::Object(o) => {
                        if let Some(s) = o.get("content").and_then(|c| c.as_str()) {
                            *value = s.to_owned();
                        }
                    }
                    _ => {}
                }
            }
        }
        let mut added: Vec<(u32, &str)> = Vec::new();
        for (key, token) in &special {
            let id = *vocab.get(token).ok_or_else(|| {
                fail(
                    &vocab_path,
                    format!("the {key} `{token}` is not in the vocabulary"),
                )
            })?;
            if !added.iter().any(|(i, _)| *i == id) {
                added.push((id, token));
            }
        }
        added.sort_unstable();
        let added_tokens: Vec<serde_json::Value> = added
            .iter()
            .map(|(id, token)| {
                serde_json::json!({"id": id, "content": token, "single_word": false,
                    "lstrip": false, "rstrip": false, "normalized": false, "special": true})
            })
            .collect();
        let (bos, eos) = (&special["bos_token"], &special["eos_token"]);
        let spec = serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added_tokens,
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "NFC"},
                {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
                {"type": "Lowercase"}]},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": CLIP_PATTERN}, "behavior": "Removed", "invert": true},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]},
            "post_processor": {"type": "RobertaProcessing", "sep": [eos, vocab[eos]],
                "cls": [bos, vocab[bos]], "trim_offsets": false, "add_prefix_space": false},
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": special["unk_token"],
                "continuing_subword_prefix": "", "end_of_word_suffix": "</w>", "fuse_unk": false,
                "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merges},
        });
        let inner = tokenizers::Tokenizer::from_str(&spec.to_string())
            .map_err(|e| fail(dir, format!("building the CLIP tokenizer: {e}")))?;
        Ok(Self {
            path: dir.to_owned(),
            inner,
        })
    }

    /// Trains a tokenizer of `kind` with at most `vocab_size` tokens on `texts`, keeping pairs
    /// and words seen at least `min_frequency` times.
    ///
    /// # Errors
    /// [`Error::Config`] for a vocabulary too small for the specials; [`Error::Tokenizer`] if
    /// training fails.
    pub fn train<'a>(
        kind: TokenizerKind,
        texts: impl Iterator<Item = &'a str> + Send,
        vocab_size: usize,
        min_frequency: u64,
    ) -> Result<Self> {
        let path = PathBuf::from(format!("<trained {kind:?}>"));
        let err = |e: tokenizers::Error| Error::Tokenizer {
            path: path.clone(),
            message: e.to_string(),
        };
        let specials: Vec<&str> = match kind {
            TokenizerKind::WordPiece => BERT_SPECIAL_TOKENS.to_vec(),
            TokenizerKind::Bpe => vec![GPT2_END_OF_TEXT],
        };
        let floor = specials.len() + if kind == TokenizerKind::Bpe { 256 } else { 1 };
        if vocab_size < floor {
            return Err(Error::Config {
                message: format!(
                    "vocab_size {vocab_size} is too small: a {kind:?} tokenizer needs at least {floor} tokens"
                ),
            });
        }
        let added: Vec<AddedToken> = specials
            .iter()
            .map(|s| AddedToken::from(*s, true))
            .collect();
        let mut inner = match kind {
            TokenizerKind::WordPiece => {
                let normalizer = BertNormalizer::new(true, true, None, true);
                let vocab =
                    wordpiece_vocab(texts, &normalizer, vocab_size, min_frequency).map_err(err)?;
                let model = serde_json::json!({
                    "type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                    "max_input_chars_per_word": 100, "vocab": vocab,
                });
                let model: ModelWrapper =
                    serde_json::from_value(model).map_err(|e| Error::Tokenizer {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                let mut t = tokenizers::Tokenizer::new(model);
                t.with_normalizer(Some(NormalizerWrapper::BertNormalizer(normalizer)));
                t.with_pre_tokenizer(Some(PreTokenizerWrapper::BertPreTokenizer(
                    BertPreTokenizer,
                )));
                t.with_decoder(Some(DecoderWrapper::WordPiece(
                    tokenizers::decoders::wordpiece::WordPiece::default(),
                )));
                t.add_special_tokens(&added);
                let id = |s: &str| t.token_to_id(s).expect("specials are in the vocabulary");
                let post = BertProcessing::new(
                    ("[SEP]".into(), id("[SEP]")),
                    ("[CLS]".into(), id("[CLS]")),
                );
                t.with_post_processor(Some(PostProcessorWrapper::Bert(post)));
                t
            }
            TokenizerKind::Bpe => {
                let mut t = tokenizers::Tokenizer::new(ModelWrapper::BPE(BPE::default()));
                let byte_level = ByteLevel::new(false, true, true);
                t.with_pre_tokenizer(Some(PreTokenizerWrapper::ByteLevel(byte_level)));
                t.with_decoder(Some(DecoderWrapper::ByteLevel(byte_level)));
                t.with_post_processor(Some(PostProcessorWrapper::ByteLevel(byte_level)));
                let trainer = BpeTrainer::builder()
                    .vocab_size(vocab_size)
                    .min_frequency(min_frequency)
                    .special_tokens(added)
                    .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
                    .show_progress(false)
                    .build();
                t.train(&mut TrainerWrapper::BpeTrainer(trainer), texts)
                    .map_err(err)?;
                t
            }
        };
        inner.with_truncation(None).map_err(err)?;
        Ok(Self { path, inner })
    }

    /// Trains on text files (`.txt`: one document per line; `.jsonl`: the `text` field).
    ///
    /// # Errors
    /// Reading errors, and those of [`Tokenizer::train`].
    pub fn train_from_files(
        kind: TokenizerKind,
        files: &[PathBuf],
        vocab_size: usize,
        min_frequency: u64,
    ) -> Result<Self> {
        let mut texts = Vec::new();
        for f in files {
            texts.extend(crate::shards::read_documents(f)?);
        }
        Self::train(
            kind,
            texts.iter().map(String::as_str),
            vocab_size,
            min_frequency,
        )
    }

    /// Saves `tokenizer.json` atomically (a file path, or a directory to put it in).
    ///
    /// # Errors
    /// [`Error::Tokenizer`] or [`Error::Io`].
    pub fn save(&self, path: impl AsRef<Path>) -> Result<PathBuf> {
        let path = path.as_ref();
        let path = if path.is_dir() {
            path.join("tokenizer.json")
        } else {
            path.to_owned()
        };
        let text = self.inner.to_string(true).map_err(|e| Error::Tokenizer {
            path: path.clone(),
            message: e.to_string(),
        })?;
        kiln_checkpoint::write_atomic(&path, text.as_bytes())?;
        Ok(path)
    }

    /// Token ids of `text`, with the post-processor's specials when `add_special_tokens`.
    ///
    /// # Errors
    /// [`Error::Tokenizer`] if encoding fails.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        self.inner
            .encode_fast(text, add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Error::Tokenizer {
                path: self.path.clone(),
                message: e.to_string(),
            })
    }

    /// Text of `ids`.
    ///
    /// # Errors
    /// [`Error::Tokenizer`] if decoding fails.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::Tokenizer {
                path: self.path.clone(),
                message: e.to_string(),
            })
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Adds special tokens (kept whole wherever they occur in a text, as transformers'
    /// `add_special_tokens`), returning their ids; tokens already in the vocabulary keep theirs.
    /// BioMedLM's multiple-choice recipe adds `[PAD]`, `[CLS]` and `[SEP]` to GPT-2's tokenizer
    /// this way (the model's embeddings then grow to [`vocab_size`](Self::vocab_size)).
    ///
    /// # Errors
    /// [`Error::Tokenizer`] for an empty token.
    pub fn add_special_tokens(&mut self, tokens: &[&str]) -> Result<Vec<u32>> {
        if let Some(t) = tokens.iter().find(|t| t.is_empty()) {
            return Err(Error::Tokenizer {
                path: self.path.clone(),
                message: format!("cannot add the empty special token {t:?}"),
            });
        }
        let added: Vec<tokenizers::AddedToken> = tokens
            .iter()
            .map(|t| tokenizers::AddedToken::from((*t).to_owned(), true))
            .collect();
        self.inner.add_special_tokens(&added);
        tokens
            .iter()
            .map(|t| {
                self.inner.token_to_id(t).ok_or_else(|| Error::Tokenizer {
                    path: self.path.clone(),
                    message: format!("special token {t:?} was not added"),
                })
            })
            .collect()
    }

    /// Id of a token.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The special tokens' ids (those the vocabulary has).
    pub fn special_ids(&self) -> SpecialIds {
        let id = |s: &str| self.inner.token_to_id(s);
        let mut all: Vec<u32> = self
            .inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(i, _)| i)
            .collect();
        all.sort_unstable();
        SpecialIds {
            pad: id("[PAD]"),
            unk: id("[UNK]"),
            cls: id("[CLS]"),
            sep: id("[SEP]"),
            mask: id("[MASK]"),
            eos: id(GPT2_END_OF_TEXT),
            all,
        }
    }

    /// Where it was loaded from (or what trained it).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The wrapped `tokenizers::Tokenizer`.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// A WordPiece vocabulary learned as Hugging Face's `WordPieceTrainer` learns it — BPE merges
/// over words, with `##` marking pieces that continue a word — but deterministic: words are
/// counted in sorted maps and ties between equally frequent pairs go to the lexicographically
/// smallest merged token. (The `tokenizers` trainer iterates a randomly seeded hash map, so two
/// runs on the same text can give different vocabularies.) Ids: the specials, then the
/// characters, then the `##` characters, then merges in the order learned.
fn wordpiece_vocab<'a>(
    texts: impl Iterator<Item = &'a str>,
    normalizer: &BertNormalizer,
    vocab_size: usize,
    min_frequency: u64,
) -> tokenizers::Result<BTreeMap<String, u32>> {
    use std::cmp::Reverse;
    use std::collections::{BTreeSet, BinaryHeap};

    let mut word_counts: BTreeMap<String, u64> = BTreeMap::new();
    for text in texts {
        let mut pre = PreTokenizedString::from(text);
        pre.normalize(|n| normalizer.normalize(n))?;
        BertPreTokenizer.pre_tokenize(&mut pre)?;
        for (word, _, _) in pre.get_splits(OffsetReferential::Original, OffsetType::Byte) {
            *word_counts.entry(word.to_owned()).or_default() += 1;
        }
    }
    let mut vocab: Vec<String> = BERT_SPECIAL_TOKENS
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let firsts: BTreeSet<char> = word_counts
        .keys()
        .filter_map(|w| w.chars().next())
        .collect();
    let rests: BTreeSet<char> = word_counts.keys().flat_map(|w| w.chars().skip(1)).collect();
    vocab.extend(firsts.iter().map(char::to_string));
    vocab.extend(rests.iter().map(|c| format!("##{c}")));
    let mut ids: BTreeMap<String, u32> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let mut words: Vec<Vec<u32>> = word_counts
        .keys()
        .map(|w| {
            w.chars()
                .enumerate()
                .map(|(i, c)| {
                    ids[&if i == 0 {
                        c.to_string()
                    } else {
                        format!("##{c}")
                    }]
                })
                .collect()
        })
        .collect();
    let counts: Vec<u64> = word_counts.values().copied().collect();
    let merged = |a: u32, b: u32, vocab: &[String]| {
        format!("{}{}", vocab[a as usize], &vocab[b as usize][2..])
    };
    // Pair counts and the words each pair occurs in.
    let mut pair_counts: BTreeMap<(u32, u32), u64> = BTreeMap::new();
    let mut where_: BTreeMap<(u32, u32), BTreeSet<usize>> = BTreeMap::new();
    for (w, syms) in words.iter().enumerate() {
        for p in syms.windows(2) {
            *pair_counts.entry((p[0], p[1])).or_default() += counts[w];
            where_.entry((p[0], p[1])).or_default().insert(w);
        }
    }
    let mut heap: BinaryHeap<(u64, Reverse<String>, (u32, u32))> = pair_counts
        .iter()
        .map(|(&p, &c)| (c, Reverse(merged(p.0, p.1, &vocab)), p))
        .collect();
    while vocab.len() < vocab_size {
        let Some((count, Reverse(token), pair)) = heap.pop() else {
            break;
        };
        let current = pair_counts.get(&pair).copied().unwrap_or(0);
        if current != count {
            // Stale: every change of a count pushed a fresh entry.
            continue;
        }
        if count < min_frequency.max(1) {
            break;
        }
        let new_id = match ids.get(&token) {
            Some(&id) => id,
            None => {
                vocab.push(token.clone());
                ids.insert(token, vocab.len() as u32 - 1);
                vocab.len() as u32 - 1
            }
        };
        let touched = where_.remove(&pair).unwrap_or_default();
        let mut changed: BTreeSet<(u32, u32)> = BTreeSet::new();
        for w in touched {
            let syms = &words[w];
            let c = counts[w];
            for p in syms.windows(2) {
                let k = (p[0], p[1]);
                if let Some(v) = pair_counts.get_mut(&k) {
                    *v -= c;
                }
                changed.insert(k);
            }
            let mut out = Vec::with_capacity(syms.len());
            let mut i = 0;
            while i < syms.len() {
                if i + 1 < syms.len() && (syms[i], syms[i + 1]) == pair {
                    out.push(new_id);
                    i += 2;
                } else {
                    out.push(syms[i]);
                    i += 1;
                }
            }
            for p in out.windows(2) {
                let k = (p[0], p[1]);
                *pair_counts.entry(k).or_default() += c;
                where_.entry(k).or_default().insert(w);
                changed.insert(k);
            }
            words[w] = out;
        }
        pair_counts.remove(&pair);
        for k in changed {
            match pair_counts.get(&k) {
                Some(&c) if c > 0 && k != pair => {
                    heap.push((c, Reverse(merged(k.0, k.1, &vocab)), k))
                }
                _ => {
                    pair_counts.remove(&k);
                }
            }
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus::{Domain, documents};

    #[test]
    fn wordpiece_on_the_builtin_corpus_round_trips_through_a_file() {
        let docs: Vec<String> = Domain::ALL
            .iter()
            .flat_map(|d| documents(*d, 0, 0, 200))
            .collect();
        let tok = Tokenizer::train(
            TokenizerKind::WordPiece,
            docs.iter().map(String::as_str),
            600,
            2,
        )
        .unwrap();
        assert!(
            tok.vocab_size() <= 600 && tok.vocab_size() > 100,
            "{}",
            tok.vocab_size()
        );
        let s = tok.special_ids();
        assert_eq!(
            (s.pad, s.unk, s.cls, s.sep, s.mask),
            (Some(0), Some(1), Some(2), Some(3), Some(4))
        );
        assert_eq!(s.all, [0, 1, 2, 3, 4]);
        let ids = tok.encode(&docs[0], true).unwrap();
        assert!(!ids.contains(&1), "no [UNK] on training text");
        let dir = tempfile::tempdir().unwrap();
        let path = tok.save(dir.path()).unwrap();
        let back = Tokenizer::from_file(&path).unwrap();
        assert_eq!(back.encode(&docs[0], true).unwrap(), ids);
        let squash = |s: &str| s.to_lowercase().replace(' ', "");
        assert_eq!(squash(&back.decode(&ids, true).unwrap()), squash(&docs[0]));
    }

    #[test]
    fn training_is_deterministic() {
        let docs: Vec<String> = Domain::ALL
            .iter()
            .flat_map(|d| documents(*d, 0, 0, 100))
            .collect();
        for kind in [TokenizerKind::WordPiece, TokenizerKind::Bpe] {
            let a = Tokenizer::train(kind, docs.iter().map(String::as_str), 500, 2).unwrap();
            let b = Tokenizer::train(kind, docs.iter().map(String::as_str), 500, 2).unwrap();
            assert_eq!(
                a.inner().to_string(false).unwrap(),
                b.inner().to_string(false).unwrap(),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn bpe_is_byte_level_and_lossless() {
        let docs = documents(Domain::Code, 0, 0, 100);
        let tok =
            Tokenizer::train(TokenizerKind::Bpe, docs.iter().map(String::as_str), 400, 2).unwrap();
        assert_eq!(tok.special_ids().eos, Some(0));
        let text = "def f(x):\n    return x * 7  # ünïcode";
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
    }

    #[test]
    fn trains_from_text_and_jsonl_files() {
        let dir = tempfile::tempdir().unwrap();
        let (txt, jsonl) = (dir.path().join("prose.txt"), dir.path().join("code.jsonl"));
        std::fs::write(&txt, documents(Domain::Prose, 0, 0, 50).join("\n")).unwrap();
        let lines: Vec<String> = documents(Domain::Code, 0, 0, 50)
            .iter()
            .map(|d| serde_json::json!({ "text": d }).to_string())
            .collect();
        std::fs::write(&jsonl, lines.join("\n")).unwrap();
        let tok = Tokenizer::train_from_files(
            TokenizerKind::WordPiece,
            &[txt.clone(), jsonl.clone()],
            400,
            1,
        )
        .unwrap();
        let unk = tok.special_ids().unk.unwrap();
        for text in [
            documents(Domain::Prose, 0, 0, 1).remove(0),
            documents(Domain::Code, 0, 0, 1).remove(0),
        ] {
            assert!(!tok.encode(&text, false).unwrap().contains(&unk), "{text}");
        }
        let err = Tokenizer::train_from_files(
            TokenizerKind::Bpe,
            &[dir.path().join("missing.txt")],
            400,
            1,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("missing.txt"), "{err}");
    }

    #[test]
    fn bad_requests_are_errors() {
        let err = Tokenizer::train(TokenizerKind::Bpe, ["a"].into_iter(), 100, 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least 257"), "{err}");
        let err = Tokenizer::from_file("/no/such/tokenizer.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/no/such/tokenizer.json"), "{err}");
    }
}
