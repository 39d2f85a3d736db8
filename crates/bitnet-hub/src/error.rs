//! The hub's error type: every variant names the repo, file or URL at fault and says what to do.

use std::path::PathBuf;

/// How to pass a token, for the errors that need one.
pub const TOKEN_HINT: &str = "pass a token with read access: `export HF_TOKEN=hf_...`, or \
`huggingface-cli login` (which stores it in ~/.cache/huggingface/token, or $HF_HOME/token)";

/// What can go wrong finding or downloading a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// The input is neither a folder nor a repo id found in the local cache (the message says which
    /// and how to fetch it).
    #[error("{0}")]
    NotFound(String),
    /// `HF_HUB_OFFLINE` is set and the cache lacks the model.
    #[error(
        "{repo}@{revision}: {detail}; HF_HUB_OFFLINE is set, so nothing is downloaded (unset it to \
         download, or fetch it elsewhere with `huggingface-cli download {repo}`)"
    )]
    Offline {
        /// The repo id.
        repo: String,
        /// The revision asked for.
        revision: String,
        /// What the cache lacks.
        detail: String,
    },
    /// The Hub has no such repo (or it is private and the request carried no token that may see it).
    #[error(
        "{repo}: no such model repo on {endpoint} (HTTP {status} for {url}); check the name{hint}"
    )]
    RepoNotFound {
        /// The repo id.
        repo: String,
        /// The endpoint asked.
        endpoint: String,
        /// The URL that answered.
        url: String,
        /// 401 or 404.
        status: u16,
        /// Advice on tokens (empty when a token was sent and the repo is simply absent).
        hint: String,
    },
    /// The repo exists but has no such branch, tag or commit.
    #[error("{repo}: no revision `{revision}` (HTTP {status} for {url})")]
    RevisionNotFound {
        /// The repo id.
        repo: String,
        /// The revision asked for.
        revision: String,
        /// The URL that answered.
        url: String,
        /// Usually 404.
        status: u16,
    },
    /// The repo is gated or private and the request was refused.
    #[error("{what}: access refused (HTTP {status} for {url}){message}; {advice}")]
    Gated {
        /// The repo and the file asked for.
        what: String,
        /// The URL that answered.
        url: String,
        /// 401 or 403.
        status: u16,
        /// The Hub's own explanation, if it gave one (with a leading `: `).
        message: String,
        /// What to do about it.
        advice: String,
    },
    /// Any other HTTP error status.
    #[error("{what}: HTTP {status} for {url}{message}")]
    Http {
        /// What was being fetched (repo, or repo and file).
        what: String,
        /// The URL.
        url: String,
        /// The status.
        status: u16,
        /// The server's explanation, if any (with a leading `: `).
        message: String,
    },
    /// The endpoint cannot be reached at all (refused, no such host, timeout).
    #[error(
        "{what}: cannot reach {url}: {reason} (is the endpoint up? HF_ENDPOINT sets a mirror, and \
         HF_HUB_OFFLINE=1 uses only the local cache)"
    )]
    Unreachable {
        /// What was being fetched.
        what: String,
        /// The URL.
        url: String,
        /// The transport's complaint.
        reason: String,
    },
    /// A transfer that kept failing; what arrived is kept for the next run to resume.
    #[error(
        "{what}: the download failed {attempts} times in a row ({url}): {reason}; {kept} and the \
         next run resumes from there"
    )]
    Transfer {
        /// The repo and the file.
        what: String,
        /// The last URL tried.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        reason: String,
        /// What is kept where.
        kept: String,
    },
    /// A file whose bytes are not what the Hub listed (size or sha256); it was deleted.
    #[error("{repo}: {file}: {reason}; the download was deleted")]
    Corrupt {
        /// The repo id.
        repo: String,
        /// The file.
        file: String,
        /// Expected vs got.
        reason: String,
    },
    /// Writing a download failed (a full disk, no permission); the partial file was removed.
    #[error("{repo}: {file}: writing {path}: {error}; the partial download was removed")]
    Write {
        /// The repo id.
        repo: String,
        /// The file.
        file: String,
        /// The `.incomplete` file.
        path: PathBuf,
        /// The underlying error (in the message, not a `source`, so a chain of causes prints it once).
        error: std::io::Error,
    },
    /// The repo has nothing the converter can read.
    #[error("{repo}@{revision}: {reason}")]
    NotConvertible {
        /// The repo id.
        repo: String,
        /// The commit.
        revision: String,
        /// What is missing, and what the repo has.
        reason: String,
    },
    /// The Hub answered something this client cannot read.
    #[error("{url}: unexpected answer: {reason}")]
    BadResponse {
        /// The URL.
        url: String,
        /// What was wrong with it.
        reason: String,
    },
    /// An operating-system error on a cache file (a full disk, no permission, ...).
    #[error("{path}: {error}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error (in the message, not a `source`, so a chain of causes prints it once).
        error: std::io::Error,
    },
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, HubError>;

impl HubError {
    #[cfg(feature = "download")]
    pub(crate) fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        HubError::Io {
            path: path.into(),
            error,
        }
    }
}
