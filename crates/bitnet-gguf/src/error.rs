//! The error type: every variant names the field or tensor at fault.

use std::path::PathBuf;

/// What can be wrong with a GGUF file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    /// An operating-system error.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error (in the message, not a `source`, so a chain of causes prints it once).
        error: std::io::Error,
    },
    /// Not a GGUF file.
    #[error("not a GGUF file (the first four bytes are {found:?}, not \"GGUF\")")]
    Magic {
        /// The bytes found.
        found: [u8; 4],
    },
    /// A version this reader does not know.
    #[error(
        "field `version`: GGUF version {found} is not supported; this reader reads versions 2 and 3"
    )]
    Version {
        /// The version found.
        found: u32,
    },
    /// A header field, metadata entry or tensor-directory entry that is out of bounds or malformed.
    #[error("field `{field}`: {reason}")]
    Field {
        /// The field: `tensor_count`, a metadata key, `tensor <name>.offset`, ...
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A tensor of a ggml type this build does not read.
    #[error("tensor `{tensor}`: type {name} (id {id}) is not read; this build reads {supported}")]
    UnsupportedType {
        /// The tensor.
        tensor: String,
        /// The type id.
        id: u32,
        /// Its ggml name, if known.
        name: String,
        /// The types this build reads.
        supported: String,
    },
    /// Tensor data that does not decode (a code no ternary value has, a bad scale).
    #[error("tensor `{tensor}`: {reason}")]
    Tensor {
        /// The tensor.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
}

impl GgufError {
    pub(crate) fn field(field: impl Into<String>, reason: impl Into<String>) -> GgufError {
        GgufError::Field {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// An error about tensor data.
    pub fn tensor(tensor: impl Into<String>, reason: impl Into<String>) -> GgufError {
        GgufError::Tensor {
            tensor: tensor.into(),
            reason: reason.into(),
        }
    }
}

/// This crate's result type.
pub type Result<T, E = GgufError> = std::result::Result<T, E>;
