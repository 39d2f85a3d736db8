//! The format crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong reading or writing a `.bitnet` file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// An operating-system error on a named file. (The error is part of the message, not a `source`, so
    /// a chain of causes prints it once.)
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// The path names something that is not a `.bitnet` file; `what` says what it is and what to do.
    #[error("{path}: {what}")]
    NotBitnet {
        /// The path.
        path: PathBuf,
        /// What it is instead, and what to do.
        what: String,
    },
    /// An error in the named file.
    #[error("{path}: {error}")]
    InFile {
        /// The file.
        path: PathBuf,
        /// What is wrong in it.
        error: Box<FormatError>,
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
    HeaderJson(serde_json::Error),
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

impl From<serde_json::Error> for FormatError {
    fn from(e: serde_json::Error) -> Self {
        FormatError::HeaderJson(e)
    }
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, FormatError>;

impl FormatError {
    pub(crate) fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        FormatError::Io {
            path: path.into(),
            error,
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
