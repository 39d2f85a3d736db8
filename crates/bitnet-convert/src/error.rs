//! The converter's error type: every variant names the file, field or tensor at fault.

use std::path::PathBuf;

/// What can go wrong turning a checkpoint into a `.bitnet` file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConvertError {
    /// An operating-system error on a named file or folder.
    #[error("{path}: {error}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error (in the message, not a `source`, so a chain of causes prints it once).
        error: std::io::Error,
    },
    /// The input is neither a model folder nor a repo id found in the local Hugging Face cache.
    #[error("{0}")]
    NotFound(String),
    /// A JSON file that does not parse.
    #[error("{path}: not valid JSON: {error}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error.
        error: serde_json::Error,
    },
    /// A config field that is missing or holds an unexpected value.
    #[error("{path}: field `{field}`: {reason}")]
    Field {
        /// The file (config.json, tokenizer_config.json, ...).
        path: PathBuf,
        /// The field.
        field: String,
        /// What was expected.
        reason: String,
    },
    /// A tokenizer file that cannot be read or converted (a malformed or unsupported `tokenizer.model`).
    #[error("{path}: {reason}")]
    Tokenizer {
        /// The file.
        path: PathBuf,
        /// What is wrong, and what would work.
        reason: String,
    },
    /// A model architecture with no mapping in `formats/architectures/`.
    #[error("{path}: architecture {found} is not supported; supported: {supported}")]
    UnsupportedArchitecture {
        /// The config.json.
        path: PathBuf,
        /// What the config declares.
        found: String,
        /// What this build can convert.
        supported: String,
    },
    /// A safetensors file that cannot be parsed (truncated, corrupt, not safetensors).
    #[error("{path}: not a valid safetensors file: {reason}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        reason: String,
    },
    /// A sharded checkpoint's index that names a file that is not there.
    #[error("{index}: tensor `{tensor}` is in shard `{shard}`, which does not exist")]
    MissingShard {
        /// The index file.
        index: PathBuf,
        /// A tensor mapped to the shard.
        tensor: String,
        /// The shard's file name.
        shard: String,
    },
    /// A tensor the architecture needs that no weight file holds.
    #[error("{checkpoint}: tensor `{tensor}` is missing ({needed_for})")]
    MissingTensor {
        /// The checkpoint folder.
        checkpoint: PathBuf,
        /// The Hugging Face tensor name.
        tensor: String,
        /// Why it is needed.
        needed_for: String,
    },
    /// A tensor with the wrong shape or dtype.
    #[error("{path}: tensor `{tensor}`: {reason}")]
    BadTensor {
        /// The weight file holding it.
        path: PathBuf,
        /// The Hugging Face tensor name.
        tensor: String,
        /// Expected vs found.
        reason: String,
    },
    /// Writing the output failed.
    #[error(transparent)]
    Format(#[from] bitnet_format::FormatError),
    /// A GGUF file that cannot be read (malformed, truncated, a type or version this build does not read).
    #[error("{path}: {error}")]
    Gguf {
        /// The GGUF file.
        path: PathBuf,
        /// What is wrong, naming the field or tensor (in the message, not a `source`, so a chain of causes
        /// prints it once).
        error: bitnet_gguf::GgufError,
    },
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, ConvertError>;

impl ConvertError {
    pub(crate) fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        ConvertError::Io {
            path: path.into(),
            error,
        }
    }

    pub(crate) fn field(path: impl Into<PathBuf>, field: &str, reason: impl Into<String>) -> Self {
        ConvertError::Field {
            path: path.into(),
            field: field.to_string(),
            reason: reason.into(),
        }
    }
}
