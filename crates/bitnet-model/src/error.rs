//! The model crate's error type.

/// What can go wrong building or running a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The file's header is not a model this build can run.
    #[error("config field `{field}`: {reason}")]
    Config {
        /// The field.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A tensor the config implies that the file lacks.
    #[error("tensor `{0}` is missing: the config implies it")]
    MissingTensor(String),
    /// A tensor whose kind or shape does not match the config.
    #[error("tensor `{name}`: expected {expected}, found {found}")]
    BadTensor {
        /// Canonical name.
        name: String,
        /// What the config implies.
        expected: String,
        /// What the file holds.
        found: String,
    },
    /// A token id past the vocabulary.
    #[error("token id {id} is out of range: the vocabulary has {vocab} entries")]
    TokenOutOfRange {
        /// The id.
        id: u32,
        /// Vocabulary size.
        vocab: usize,
    },
    /// More tokens than the context holds.
    #[error("context overflow: {needed} positions needed, the context holds {limit}")]
    ContextOverflow {
        /// Positions needed.
        needed: usize,
        /// The limit.
        limit: usize,
    },
    /// The LM head asked for is not in the file.
    #[error("{0}")]
    NoHead(&'static str),
    /// A trace lacks an activation a comparison needs.
    #[error("the reference trace has no {0}")]
    MissingTrace(String),
    /// An error of the underlying file.
    #[error(transparent)]
    Format(#[from] bitnet_format::FormatError),
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, ModelError>;
