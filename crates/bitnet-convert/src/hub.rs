//! Resolving a converter input: a local model folder, or a repo id in the local Hugging Face cache.
//!
//! The cache is found the way Python's `huggingface_hub` finds it: `$HF_HUB_CACHE`, else `$HF_HOME/hub`,
//! else `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`. A repo `org/name` lives in
//! `models--org--name/`; `refs/<revision>` holds the commit hash of a branch or tag and
//! `snapshots/<commit>/` the files (usually symlinks into `blobs/`). This build never downloads: when the
//! model is not cached, the error says how to fetch it.

use std::path::{Path, PathBuf};

use crate::error::{ConvertError, Result};

/// Where a checkpoint was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedModel {
    /// The folder holding config.json and the weights.
    pub dir: PathBuf,
    /// The repo id, when it came from the cache.
    pub repo: Option<String>,
    /// The snapshot's commit hash, when it came from the cache.
    pub revision: Option<String>,
}

/// The environment the resolver reads (explicit so tests need not mutate the process environment).
#[derive(Debug, Clone, Default)]
pub struct HubEnv {
    /// `HF_HUB_CACHE`.
    pub hf_hub_cache: Option<PathBuf>,
    /// `HF_HOME`.
    pub hf_home: Option<PathBuf>,
    /// `XDG_CACHE_HOME`.
    pub xdg_cache_home: Option<PathBuf>,
    /// `HOME`.
    pub home: Option<PathBuf>,
    /// `HF_HUB_OFFLINE` set to a true value.
    pub offline: bool,
}

impl HubEnv {
    /// Reads the variables from the process environment.
    pub fn from_process() -> HubEnv {
        let var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let offline = std::env::var("HF_HUB_OFFLINE")
            .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
            .unwrap_or(false);
        HubEnv {
            hf_hub_cache: var("HF_HUB_CACHE"),
            hf_home: var("HF_HOME"),
            xdg_cache_home: var("XDG_CACHE_HOME"),
            home: var("HOME"),
            offline,
        }
    }

    /// The hub cache folder this environment designates.
    pub fn cache_dir(&self) -> Option<PathBuf> {
        if let Some(c) = &self.hf_hub_cache {
            return Some(c.clone());
        }
        if let Some(h) = &self.hf_home {
            return Some(h.join("hub"));
        }
        if let Some(x) = &self.xdg_cache_home {
            return Some(x.join("huggingface").join("hub"));
        }
        self.home
            .as_ref()
            .map(|h| h.join(".cache").join("huggingface").join("hub"))
    }
}

/// Whether `s` looks like a Hub repo id (`org/name`, optionally `@revision`).
pub fn looks_like_repo_id(s: &str) -> bool {
    let id = s.split_once('@').map_or(s, |(id, _)| id);
    let mut parts = id.split('/');
    let (Some(org), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let ok = |p: &str| {
        !p.is_empty()
            && !p.starts_with('.')
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    ok(org) && ok(name)
}

/// Resolves `input`: an existing folder is taken as is; otherwise `org/name[@revision]` is looked up in
/// the cache.
pub fn resolve(input: &str, env: &HubEnv) -> Result<ResolvedModel> {
    let path = Path::new(input);
    if path.exists() {
        if !path.is_dir() {
            return Err(ConvertError::NotFound(format!(
                "{input}: is a file; give the model folder that holds config.json and the *.safetensors weights"
            )));
        }
        return Ok(ResolvedModel {
            dir: path.to_path_buf(),
            repo: None,
            revision: None,
        });
    }
    if !looks_like_repo_id(input) {
        return Err(ConvertError::NotFound(format!(
            "{input}: no such folder (and not a Hugging Face repo id of the form org/name)"
        )));
    }
    let (repo, revision) = match input.split_once('@') {
        Some((r, rev)) => (r, rev),
        None => (input, "main"),
    };
    let fetch_hint = format!(
        "fetch it first, e.g. `huggingface-cli download {repo}`{}, or pass the model folder",
        if env.offline {
            " (HF_HUB_OFFLINE is set, so nothing is downloaded)"
        } else {
            ""
        }
    );
    let Some(cache) = env.cache_dir() else {
        return Err(ConvertError::NotFound(format!(
            "{repo}: no Hugging Face cache folder (set HF_HUB_CACHE or HF_HOME); {fetch_hint}"
        )));
    };
    let repo_dir = cache.join(format!("models--{}", repo.replace('/', "--")));
    if !repo_dir.is_dir() {
        return Err(ConvertError::NotFound(format!(
            "{repo}: not in the local Hugging Face cache ({} does not exist); {fetch_hint}",
            repo_dir.display()
        )));
    }
    let commit = if is_commit_hash(revision) {
        revision.to_string()
    } else {
        let ref_file = repo_dir.join("refs").join(revision);
        std::fs::read_to_string(&ref_file)
            .map_err(|e| {
                ConvertError::NotFound(format!(
                    "{repo}: revision `{revision}` is not in the cache ({}: {e}); {fetch_hint}",
                    ref_file.display()
                ))
            })?
            .trim()
            .to_string()
    };
    let dir = repo_dir.join("snapshots").join(&commit);
    if !dir.is_dir() {
        return Err(ConvertError::NotFound(format!(
            "{repo}: snapshot {commit} is missing from the cache ({} does not exist); {fetch_hint}",
            dir.display()
        )));
    }
    Ok(ResolvedModel {
        dir,
        repo: Some(repo.to_string()),
        revision: Some(commit),
    })
}

fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_dir_follows_huggingface_hub_precedence() {
        let mut env = HubEnv {
            home: Some("/home/u".into()),
            ..Default::default()
        };
        assert_eq!(
            env.cache_dir().unwrap(),
            PathBuf::from("/home/u/.cache/huggingface/hub")
        );
        env.xdg_cache_home = Some("/xdg".into());
        assert_eq!(
            env.cache_dir().unwrap(),
            PathBuf::from("/xdg/huggingface/hub")
        );
        env.hf_home = Some("/hf".into());
        assert_eq!(env.cache_dir().unwrap(), PathBuf::from("/hf/hub"));
        env.hf_hub_cache = Some("/cache".into());
        assert_eq!(env.cache_dir().unwrap(), PathBuf::from("/cache"));
    }

    #[test]
    fn repo_ids() {
        assert!(looks_like_repo_id("microsoft/bitnet-b1.58-2B-4T-bf16"));
        assert!(looks_like_repo_id("org/name@main"));
        assert!(!looks_like_repo_id("name"));
        assert!(!looks_like_repo_id("a/b/c"));
        assert!(!looks_like_repo_id("../x"));
    }

    #[test]
    fn resolves_a_cached_snapshot_by_ref_and_by_commit() {
        let tmp = tempfile::tempdir().unwrap();
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let repo = tmp.path().join("models--org--model");
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::create_dir_all(repo.join("snapshots").join(commit)).unwrap();
        std::fs::write(repo.join("refs/main"), format!("{commit}\n")).unwrap();
        let env = HubEnv {
            hf_hub_cache: Some(tmp.path().into()),
            ..Default::default()
        };
        let r = resolve("org/model", &env).unwrap();
        assert_eq!(r.dir, repo.join("snapshots").join(commit));
        assert_eq!(r.revision.as_deref(), Some(commit));
        assert_eq!(
            resolve(&format!("org/model@{commit}"), &env).unwrap().dir,
            r.dir
        );
        let err = resolve("org/model@v2", &env).unwrap_err().to_string();
        assert!(err.contains("revision `v2`"), "{err}");
        let err = resolve("org/other", &env).unwrap_err().to_string();
        assert!(
            err.contains("not in the local Hugging Face cache")
                && err.contains("huggingface-cli download org/other"),
            "{err}"
        );
    }
}
