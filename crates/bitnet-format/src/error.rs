//! The format crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong reading or writing a `.bitnet` file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// An operating-system error on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The first bytes are not the `.bitnet` magic.
    #[error("not a .bitnet file: the first 8 bytes are {found:02x?}, expected {expected:02x?}")]
    BadMagic {
        /// What the file starts with.
        found: Vec<u8>,
        /// The magic of SPEC.md.
        expected: Vec<u8>,
    },
    /// A major version this reader does not understand.
    #[error(
        "unsupported .bitnet version {major}.{minor}: this build reads major versions 1 to {supported}; a newer bitnet may read it"
    )]
    UnsupportedVersion {
        /// Major version in the file.
        major: u16,
        /// Minor version in the file.
        minor: u16,
        /// The newest major version this build reads.
        supported: u16,
    },
    /// The file is shorter than a field says it must be.
    #[error("file is truncated: {what} needs {needed} bytes, the file has {actual}")]
    Truncated {
        /// The part that does not fit.
        what: String,
        /// Bytes it needs (end offset).
        needed: u64,
        /// The file's length.
        actual: u64,
    },
    /// A preamble or header field with an impossible value.
    #[error("invalid header field `{field}`: {reason}")]
    InvalidField {
        /// The field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The header bytes do not hash to the checksum in the preamble.
    #[error(
        "header checksum mismatch: the header is corrupt (expected sha256 {expected}, got {actual})"
    )]
    HeaderChecksum {
        /// Checksum stored in the preamble.
        expected: String,
        /// Checksum of the bytes found.
        actual: String,
    },
    /// The header is not the JSON SPEC.md describes.
    #[error("header is not the JSON SPEC.md describes: {0}")]
    HeaderJson(#[from] serde_json::Error),
    /// A tensor entry that breaks a rule of SPEC.md.
    #[error("tensor `{name}`: {reason}")]
    Tensor {
        /// The tensor's name.
        name: String,
        /// The rule it breaks.
        reason: String,
    },
    /// A tensor looked up by name that the file does not have.
    #[error("tensor `{0}` is not in the file")]
    MissingTensor(String),
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, FormatError>;

impl FormatError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        FormatError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn tensor(name: &str, reason: impl Into<String>) -> Self {
        FormatError::Tensor {
            name: name.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn field(field: &str, reason: impl Into<String>) -> Self {
        FormatError::InvalidField {
            field: field.to_string(),
            reason: reason.into(),
        }
    }
}
