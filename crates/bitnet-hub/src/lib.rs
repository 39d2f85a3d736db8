//! `bitnet-hub`: the Hugging Face Hub cache that Python's `huggingface_hub` reads and writes, and the
//! downloads that fill it.
//!
//! Where to start:
//! 1. [`HubEnv::from_process`] reads the variables both tools honour: `HF_HUB_CACHE`, `HF_HOME`,
//!    `HF_ENDPOINT`, `HF_TOKEN` (or the token file `huggingface-cli login` writes), `HF_HUB_OFFLINE`,
//!    `HF_HUB_DOWNLOAD_TIMEOUT`.
//! 2. [`cache::resolve`] finds a folder, or `org/name[@revision]` in the local cache, without the
//!    network; [`cache`] documents the layout (`models--org--name/{blobs,snapshots,refs}`).
//! 3. With the `download` feature, [`download::resolve_or_download`] fetches a repo the cache lacks,
//!    and [`download::download`] asks the Hub for the revision's newest commit; [`download`] describes
//!    how a transfer resumes, retries and is checked.
//!
//! Why not the `hf-hub` crate: its 1.0 release (checked before this crate was written) restarts an
//! interrupted file from zero (`File::create` on the `.incomplete` file, no `Range` resume), retries
//! only the sending of a request and not a body cut midway, checks neither the size nor the sha256
//! of what it downloaded, ignores `HF_HUB_OFFLINE`, and always builds `hf-xet`, `reqwest` and an async
//! runtime. The three endpoints a download needs are small, so this crate speaks them itself over
//! `ureq` (blocking, rustls, no other features), writing the same layout and taking the same lock
//! files as the Python library.

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod cache;
#[cfg(feature = "download")]
mod client;
#[cfg(feature = "download")]
pub mod download;
pub mod env;
pub mod error;
#[cfg(feature = "download")]
mod transfer;

pub use cache::{ResolvedModel, looks_like_repo_id, resolve};
pub use env::{HubEnv, Token, TokenSource};
pub use error::{HubError, Result};
