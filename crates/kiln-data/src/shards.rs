//! Token shards: documents tokenized once and stored as one flat, memory-mapped array of token
//! ids with document offsets.
//!
//! A shard is a directory:
//! - `tokens.bin` — every document's tokens back to back, little-endian `u16` (vocabularies up
//!   to 65,536) or `u32`;
//! - `offsets.bin` — `num_documents + 1` little-endian `u64` token offsets (document `i` is
//!   `tokens[offsets[i]..offsets[i + 1]]`);
//! - `index.json` — format, dtype, counts and the tokenizer's vocabulary size.
//!
//! The directory is written atomically (temporary sibling, fsync, rename) and checked when
//! opened: a truncated or inconsistent shard is an error, never silently short.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use kiln_checkpoint::AtomicDir;
use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, io_err};
use crate::tokenizer::Tokenizer;

const FORMAT: &str = "kiln-token-shard";

/// Width of stored token ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenDtype {
    /// 2 bytes per token.
    U16,
    /// 4 bytes per token.
    U32,
}

impl TokenDtype {
    /// The narrowest width for a vocabulary.
    pub fn for_vocab(vocab_size: usize) -> Self {
        if vocab_size <= 1 << 16 {
            Self::U16
        } else {
            Self::U32
        }
    }

    fn size(self) -> usize {
        match self {
            Self::U16 => 2,
            Self::U32 => 4,
        }
    }
}

/// `index.json` of a shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardIndex {
    /// Always `kiln-token-shard`.
    pub format: String,
    /// Format version (1).
    pub version: u32,
    /// Token width.
    pub dtype: TokenDtype,
    /// Documents.
    pub num_documents: u64,
    /// Tokens.
    pub num_tokens: u64,
    /// Vocabulary size of the tokenizer that made it.
    pub vocab_size: u64,
    /// Whether the tokenizer's special tokens (e.g. `[CLS]`/`[SEP]`) were added per document.
    pub special_tokens: bool,
}

/// Reads documents from a file: `.jsonl` takes each line's `text` field, anything else is plain
/// text with one document per non-empty line.
///
/// # Errors
/// [`Error::Io`], or [`Error::Input`] naming the line of a bad JSON record.
pub fn read_documents(path: &Path) -> Result<Vec<String>> {
    let f = File::open(path).map_err(io_err(path))?;
    let jsonl = path
        .extension()
        .is_some_and(|e| e == "jsonl" || e == "json");
    let mut docs = Vec::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.map_err(io_err(path))?;
        if line.trim().is_empty() {
            continue;
        }
        if jsonl {
            let bad = |message: String| Error::Input {
                path: path.to_owned(),
                line: i + 1,
                message,
            };
            let v: serde_json::Value =
                serde_json::from_str(&line).map_err(|e| bad(format!("not JSON: {e}")))?;
            let text = v
                .get("text")
                .and_then(|t| t.as_str())
                .ok_or_else(|| bad("no string field `text`; each JSONL record needs one".into()))?;
            docs.push(text.to_owned());
        } else {
            docs.push(line);
        }
    }
    Ok(docs)
}

/// Tokenizes `documents` and writes a shard at `dir` (atomically; an existing `dir` is an error
/// unless `force`).
///
/// ```
/// use kiln_data::{corpus::{self, Domain}, shards::{write_shard, TokenShard}, tokenizer::{Tokenizer, TokenizerKind}};
/// let docs = corpus::documents(Domain::Arithmetic, 0, 0, 50);
/// let tok = Tokenizer::train(TokenizerKind::WordPiece, docs.iter().map(String::as_str), 300, 1)?;
/// let dir = tempfile::tempdir()?;
/// let index = write_shard(dir.path().join("math"), docs.iter().map(String::as_str), &tok, false, false)?;
/// let shard = TokenShard::open(dir.path().join("math"))?;
/// assert_eq!(shard.num_documents(), 50);
/// assert_eq!(shard.document(3), tok.encode(&docs[3], false)?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// Tokenizer and I/O errors; [`kiln_checkpoint::Error::OutputExists`] without `force`.
pub fn write_shard<'a>(
    dir: impl AsRef<Path>,
    documents: impl IntoIterator<Item = &'a str>,
    tokenizer: &Tokenizer,
    add_special_tokens: bool,
    force: bool,
) -> Result<ShardIndex> {
    let out = AtomicDir::create(dir.as_ref(), force)?;
    let dtype = TokenDtype::for_vocab(tokenizer.vocab_size());
    let tokens_path = out.path().join("tokens.bin");
    let mut tokens = BufWriter::new(File::create(&tokens_path).map_err(io_err(&tokens_path))?);
    let mut offsets: Vec<u64> = vec![0];
    let mut n = 0u64;
    for doc in documents {
        let ids = tokenizer.encode(doc, add_special_tokens)?;
        for id in &ids {
            match dtype {
                TokenDtype::U16 => tokens.write_all(&(*id as u16).to_le_bytes()),
                TokenDtype::U32 => tokens.write_all(&id.to_le_bytes()),
            }
            .map_err(io_err(&tokens_path))?;
        }
        n += ids.len() as u64;
        offsets.push(n);
    }
    tokens.flush().map_err(io_err(&tokens_path))?;
    drop(tokens);
    let offsets_path = out.path().join("offsets.bin");
    let bytes: Vec<u8> = offsets.iter().flat_map(|o| o.to_le_bytes()).collect();
    std::fs::write(&offsets_path, bytes).map_err(io_err(&offsets_path))?;
    let index = ShardIndex {
        format: FORMAT.into(),
        version: 1,
        dtype,
        num_documents: offsets.len() as u64 - 1,
        num_tokens: n,
        vocab_size: tokenizer.vocab_size() as u64,
        special_tokens: add_special_tokens,
    };
    let index_path = out.path().join("index.json");
    std::fs::write(
        &index_path,
        serde_json::to_string_pretty(&index).expect("index serialises"),
    )
    .map_err(io_err(&index_path))?;
    out.commit()?;
    Ok(index)
}

/// An open, memory-mapped shard.
#[derive(Debug)]
pub struct TokenShard {
    path: PathBuf,
    index: ShardIndex,
    tokens: Option<Mmap>,
    offsets: Vec<u64>,
}

impl TokenShard {
    /// Opens and checks a shard directory.
    ///
    /// # Errors
    /// [`Error::Shard`] for a missing file, an unknown format or sizes that disagree with the
    /// index; [`Error::Io`].
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let path = dir.as_ref().to_owned();
        let bad = |message: String| Error::Shard {
            path: path.clone(),
            message,
        };
        let index_path = path.join("index.json");
        if !index_path.is_file() {
            return Err(bad(
                "no index.json; make shards with `kiln_data::shards::write_shard`".into(),
            ));
        }
        let text = std::fs::read_to_string(&index_path).map_err(io_err(&index_path))?;
        let index: ShardIndex =
            serde_json::from_str(&text).map_err(|e| bad(format!("index.json: {e}")))?;
        if index.format != FORMAT || index.version != 1 {
            return Err(bad(format!(
                "format `{}` version {} is not {FORMAT} version 1",
                index.format, index.version
            )));
        }
        let offsets_path = path.join("offsets.bin");
        // A crafted index can claim any count: compute sizes without overflowing.
        let offsets_bytes = index
            .num_documents
            .checked_add(1)
            .and_then(|n| n.checked_mul(8))
            .ok_or_else(|| {
                bad(format!(
                    "index.json claims {} documents, more than any offsets file can hold; the index is damaged",
                    index.num_documents
                ))
            })?;
        let tokens_bytes = index
            .num_tokens
            .checked_mul(index.dtype.size() as u64)
            .ok_or_else(|| {
                bad(format!(
                    "index.json claims {} tokens, more than any token file can hold; the index is damaged",
                    index.num_tokens
                ))
            })?;
        let offsets_len = std::fs::metadata(&offsets_path)
            .map_err(io_err(&offsets_path))?
            .len();
        if offsets_len != offsets_bytes {
            return Err(bad(format!(
                "offsets.bin has {offsets_len} bytes, the index says {} documents ({offsets_bytes} bytes); the shard is truncated or from another run",
                index.num_documents,
            )));
        }
        let raw = std::fs::read(&offsets_path).map_err(io_err(&offsets_path))?;
        if raw.len() as u64 != offsets_bytes {
            return Err(bad(format!(
                "offsets.bin changed while it was read ({} bytes, expected {offsets_bytes})",
                raw.len()
            )));
        }
        let offsets: Vec<u64> = raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        if offsets[0] != 0
            || offsets.windows(2).any(|w| w[1] < w[0])
            || *offsets.last().expect("n + 1") != index.num_tokens
        {
            return Err(bad(
                "offsets.bin is not an increasing list from 0 to the token count".into(),
            ));
        }
        let tokens_path = path.join("tokens.bin");
        let f = File::open(&tokens_path).map_err(io_err(&tokens_path))?;
        let len = f.metadata().map_err(io_err(&tokens_path))?.len();
        if len != tokens_bytes {
            return Err(bad(format!(
                "tokens.bin has {len} bytes, the index says {} {:?} tokens",
                index.num_tokens, index.dtype
            )));
        }
        // SAFETY: the file is opened read-only and kiln never writes a committed shard in place;
        // a concurrent external truncation could fault, as with any memory map.
        let tokens = if len == 0 {
            None
        } else {
            Some(unsafe { Mmap::map(&f) }.map_err(io_err(&tokens_path))?)
        };
        Ok(Self {
            path,
            index,
            tokens,
            offsets,
        })
    }

    /// The shard's index.
    pub fn index(&self) -> &ShardIndex {
        &self.index
    }

    /// Its directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of documents.
    pub fn num_documents(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Number of tokens.
    pub fn num_tokens(&self) -> u64 {
        self.index.num_tokens
    }

    /// Token offsets of the documents (`num_documents + 1` entries).
    pub fn offsets(&self) -> &[u64] {
        &self.offsets
    }

    /// Tokens `start..end` of the flat array.
    ///
    /// # Panics
    /// If the range is outside the shard (callers index with its own offsets).
    pub fn tokens(&self, start: u64, end: u64) -> Vec<u32> {
        assert!(
            start <= end && end <= self.index.num_tokens,
            "token range {start}..{end} outside the shard"
        );
        let Some(map) = &self.tokens else {
            return Vec::new();
        };
        let w = self.index.dtype.size();
        let bytes = &map[start as usize * w..end as usize * w];
        match self.index.dtype {
            TokenDtype::U16 => bytes
                .chunks_exact(2)
                .map(|c| u32::from(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
            TokenDtype::U32 => bytes
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect(),
        }
    }

    /// Tokens of document `i`.
    ///
    /// # Panics
    /// If `i >= num_documents()`.
    pub fn document(&self, i: usize) -> Vec<u32> {
        self.tokens(self.offsets[i], self.offsets[i + 1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus::{Domain, documents};
    use crate::tokenizer::TokenizerKind;

    fn tok() -> Tokenizer {
        let docs = documents(Domain::Prose, 0, 0, 100);
        Tokenizer::train(
            TokenizerKind::WordPiece,
            docs.iter().map(String::as_str),
            500,
            1,
        )
        .unwrap()
    }

    #[test]
    fn shards_round_trip_and_refuse_damage() {
        let t = tok();
        let docs = documents(Domain::Prose, 1, 0, 30);
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().join("prose");
        let index = write_shard(&at, docs.iter().map(String::as_str), &t, true, false).unwrap();
        assert_eq!(index.dtype, TokenDtype::U16);
        let shard = TokenShard::open(&at).unwrap();
        for (i, d) in docs.iter().enumerate() {
            assert_eq!(shard.document(i), t.encode(d, true).unwrap());
        }
        // Writing over it needs force; the old shard stays intact on refusal.
        assert!(write_shard(&at, ["x"], &t, true, false).is_err());
        assert_eq!(TokenShard::open(&at).unwrap().num_documents(), 30);
        // Truncation is detected.
        let tokens = at.join("tokens.bin");
        let len = std::fs::metadata(&tokens).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&tokens)
            .unwrap()
            .set_len(len - 2)
            .unwrap();
        let err = TokenShard::open(&at).unwrap_err().to_string();
        assert!(err.contains("tokens.bin has"), "{err}");
        let err = TokenShard::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no index.json"), "{err}");
    }

    #[test]
    fn documents_from_text_and_jsonl() {
        let dir = tempfile::tempdir().unwrap();
        let txt = dir.path().join("a.txt");
        std::fs::write(&txt, "first doc\n\nsecond doc\n").unwrap();
        assert_eq!(read_documents(&txt).unwrap(), ["first doc", "second doc"]);
        let jsonl = dir.path().join("b.jsonl");
        std::fs::write(
            &jsonl,
            "{\"text\": \"one\\ntwo\"}\n{\"title\": \"no text\"}\n",
        )
        .unwrap();
        let err = read_documents(&jsonl).unwrap_err().to_string();
        assert!(err.contains("b.jsonl:2") && err.contains("`text`"), "{err}");
        std::fs::write(&jsonl, "{\"text\": \"one\\ntwo\"}\n").unwrap();
        assert_eq!(read_documents(&jsonl).unwrap(), ["one\ntwo"]);
    }
}
