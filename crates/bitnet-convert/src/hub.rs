//! Resolving a converter input: a local model folder, or a repo id in the local Hugging Face cache.
//!
//! The cache layout and the environment (`HF_HUB_CACHE`, `HF_HOME`, `HF_HUB_OFFLINE`, ...) are the
//! `bitnet-hub` crate's, which also downloads; the converter only reads what is on disk, so a caller
//! that wants a missing repo fetched calls `bitnet_hub::download::resolve_or_download` first.

pub use bitnet_hub::{HubEnv, ResolvedModel, looks_like_repo_id};

use crate::error::{ConvertError, Result};

/// Resolves `input`: an existing folder is taken as is; otherwise `org/name[@revision]` is looked up in
/// the local cache.
pub fn resolve(input: &str, env: &HubEnv) -> Result<ResolvedModel> {
    bitnet_hub::resolve(input, env).map_err(|e| ConvertError::NotFound(e.to_string()))
}
