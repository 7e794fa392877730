//! Byte-level BPE as in GPT-2: pre-tokenize, map bytes to base tokens, apply merges by rank.
//!
//! - [`Tokenizer`]: encode/decode (GPT-2 exact when loaded from GPT-2's files), special tokens.
//! - [`io`]: GPT-2 `encoder.json` + `vocab.bpe`, tiktoken rank files, HF `tokenizer.json`, and our
//!   own versioned binary format.
//! - [`train`]: a deterministic trainer with incremental pair counts.
//!
//! No dependency on the tensor crate: token ids are plain `u32`.

pub mod bytelevel;
mod fxhash;
pub mod io;
pub mod pretok;
mod tokenizer;
pub mod train;
pub mod wordpiece;

pub use pretok::{Pattern, PreTokenizer};
pub use tokenizer::{AllowedSpecial, Encoder, Tokenizer};
pub use train::{train_from_files, train_from_texts, TrainConfig};
pub use wordpiece::WordPiece;

/// Errors the world can cause: files, formats, user parameters.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // Not `source`: the message already includes it (anyhow's chain would print it twice).
    #[error("{path}: {err}")]
    Io { path: String, err: std::io::Error },
    #[error("{path}: {msg}")]
    File { path: String, msg: String },
    #[error("{0}")]
    Format(String),
    #[error("{0}")]
    Config(String),
    #[error("token id {0} is not in the vocabulary (size {1})")]
    UnknownId(u32, usize),
    #[error("text contains the special token {0:?}, which is not allowed here")]
    DisallowedSpecial(String),
}

impl Error {
    pub(crate) fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Error {
        Error::Io { path: path.as_ref().display().to_string(), err: source }
    }
    pub(crate) fn file(path: impl AsRef<std::path::Path>, msg: impl Into<String>) -> Error {
        Error::File { path: path.as_ref().display().to_string(), msg: msg.into() }
    }
}
