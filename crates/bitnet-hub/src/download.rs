//! Downloading the files a conversion reads into the shared cache, resumably.
//!
//! [`resolve_or_download`] is what `run`, `chat`, `serve`, `convert` and `bench` call: a complete
//! snapshot in the cache is used as it is (no network); otherwise the revision is fetched.
//! [`download`] (behind `bitnet pull`) always asks the Hub which commit the revision names now.
//!
//! A download:
//! 1. lists the revision (`sha` and `siblings`) and keeps the files a conversion reads ([`wanted`]):
//!    the small JSON and tokenizer files, and the weights (the shards the index names, else every
//!    top-level `*.safetensors`); never `*.bin`, `*.pt`, `*.gguf`, `*.onnx`;
//! 2. fetches each file missing from the cache into `blobs/<etag>.incomplete` under the same lock file
//!    as `huggingface_hub`, resuming what an earlier run left with `Range: bytes=N-`, retrying a dropped
//!    connection with backoff (the count restarts whenever bytes arrive), and renames it to
//!    `blobs/<etag>` only once its size is the listed size and, for LFS files, its sha256 the listed one;
//! 3. links `snapshots/<commit>/<file>` to `../../blobs/<etag>` (a new snapshot folder is made aside
//!    and renamed into place), and last writes `refs/<revision>`.
//!
//! So a run that stops anywhere leaves nothing that looks complete: at worst `.incomplete` blobs that
//! the next run resumes. A write error (a full disk) deletes the partial file, since its tail is not
//! to be trusted.

use std::path::PathBuf;
use std::time::Duration;

use crate::HubEnv;
use crate::cache::{
    RepoCache, ResolvedModel, is_commit_hash, missing_files, shards_of_index, split_repo_spec,
    write_ref, write_snapshot,
};
pub use crate::cache::{SMALL_FILES, wanted};
use crate::client::{HubClient, Sibling};
use crate::error::{HubError, Result};
use crate::transfer::{Fetcher, retrying};

/// What a download is doing, for a progress display.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// The Hub says `revision` is `commit`; these files (name, bytes) are needed.
    Listed {
        /// The commit.
        commit: &'a str,
        /// Every file to have in the snapshot, cached or not.
        files: &'a [(String, u64)],
    },
    /// `file` is already in the cache.
    Cached {
        /// The file.
        file: &'a str,
    },
    /// Another process holds the lock on `file`'s blob; waiting for it.
    Waiting {
        /// The file.
        file: &'a str,
    },
    /// `file` starts (or resumes at `resumed_from`).
    Start {
        /// The file.
        file: &'a str,
        /// Its size.
        size: u64,
        /// Bytes already there from an earlier attempt.
        resumed_from: u64,
    },
    /// `bytes` more of `file` arrived.
    Progress {
        /// The file.
        file: &'a str,
        /// Bytes since the last event.
        bytes: u64,
    },
    /// A request failed and is retried after `delay`.
    Retry {
        /// The file (or `listing`).
        file: &'a str,
        /// Failures in a row so far.
        failures: u32,
        /// Failures in a row that end the download.
        limit: u32,
        /// The wait before the next attempt.
        delay: Duration,
        /// What failed.
        reason: &'a str,
    },
    /// `file` is complete and checked.
    Done {
        /// The file.
        file: &'a str,
        /// Its size.
        size: u64,
    },
}

/// The callback type of the progress events.
pub type OnEvent<'a> = dyn FnMut(Event<'_>) + 'a;

/// Finds `spec` (`org/name[@revision]`) complete in the cache, or downloads it.
pub fn resolve_or_download(
    spec: &str,
    env: &HubEnv,
    on_event: &mut OnEvent<'_>,
) -> Result<ResolvedModel> {
    let (repo, revision) = split_repo_spec(spec);
    let cache = cache_root(env, repo)?;
    let rc = RepoCache::new(&cache, repo);
    let detail = match rc.commit_for(revision) {
        Some(commit) => {
            let dir = rc.snapshot(&commit);
            let missing = missing_files(&dir);
            if missing.is_empty() {
                return Ok(ResolvedModel {
                    dir,
                    repo: Some(repo.to_string()),
                    revision: Some(commit),
                });
            }
            format!(
                "the cached snapshot {} lacks {}",
                dir.display(),
                missing.join(", ")
            )
        }
        None => format!(
            "not in the local Hugging Face cache ({} has no ref `{revision}`)",
            rc.dir.display()
        ),
    };
    if env.offline {
        return Err(HubError::Offline {
            repo: repo.to_string(),
            revision: revision.to_string(),
            detail,
        });
    }
    download(spec, env, on_event)
}

fn cache_root(env: &HubEnv, repo: &str) -> Result<PathBuf> {
    env.cache_dir().ok_or_else(|| {
        HubError::NotFound(format!(
            "{repo}: no Hugging Face cache folder (set HF_HUB_CACHE, HF_HOME or HOME)"
        ))
    })
}

/// Asks the Hub which commit `spec`'s revision names and fetches the files a conversion reads that
/// the cache lacks. With `HF_HUB_OFFLINE` set, this is [`resolve_or_download`]'s cache lookup.
pub fn download(spec: &str, env: &HubEnv, on_event: &mut OnEvent<'_>) -> Result<ResolvedModel> {
    if env.offline {
        return resolve_or_download(spec, env, on_event);
    }
    let (repo, revision) = split_repo_spec(spec);
    let rc = RepoCache::new(&cache_root(env, repo)?, repo);
    let limit = env.retries.unwrap_or(5).max(1);
    let client = HubClient::new(env);
    let info = retrying(limit, repo, "listing", on_event, || {
        client.repo_info(repo, revision)
    })?;
    let listing_url = format!("{}/api/models/{repo}/revision/{revision}", client.endpoint);
    let commit = info
        .sha
        .filter(|s| is_commit_hash(s))
        .ok_or_else(|| HubError::BadResponse {
            url: listing_url.clone(),
            reason: "no commit hash (`sha`) in the model info".into(),
        })?;
    let not_convertible = |reason: String| HubError::NotConvertible {
        repo: repo.to_string(),
        revision: commit.clone(),
        reason,
    };
    let all: Vec<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
    let sibling = |name: &str| info.siblings.iter().find(|s| s.rfilename == name);
    let shown = || {
        let mut s = all.iter().take(12).copied().collect::<Vec<_>>().join(", ");
        if all.len() > 12 {
            s.push_str(&format!(", and {} more", all.len() - 12));
        }
        s
    };
    if sibling("config.json").is_none() {
        return Err(not_convertible(format!(
            "the repo has no config.json, so it is no transformers checkpoint (files: {})",
            shown()
        )));
    }
    let small: Vec<&Sibling> = SMALL_FILES.iter().filter_map(|f| sibling(f)).collect();
    let mut done: Vec<(String, String)> = Vec::new();
    let mut plan: Vec<(String, u64)> = Vec::new();
    let size_of = |s: &Sibling| s.size.or(s.lfs.as_ref().map(|l| l.size));
    for s in &small {
        plan.push((s.rfilename.clone(), size_of(s).unwrap_or(0)));
    }
    let mut fetcher = Fetcher::new(&client, &rc, repo, &commit, limit);
    // The index decides which shards are needed, so it comes before the weights.
    let mut shards: Option<Vec<String>> = None;
    for s in &small {
        if s.rfilename == "model.safetensors.index.json" {
            let etag = fetcher.fetch(s, on_event)?;
            let path = rc.blob(&etag);
            shards = Some(
                shards_of_index(&path)
                    .map_err(|e| not_convertible(format!("model.safetensors.index.json: {e}")))?,
            );
            done.push((s.rfilename.clone(), etag));
        }
    }
    let weights: Vec<&Sibling> = match &shards {
        Some(names) => names
            .iter()
            .map(|n| {
                sibling(n).ok_or_else(|| {
                    not_convertible(format!(
                        "model.safetensors.index.json names the shard {n}, which the repo does not have"
                    ))
                })
            })
            .collect::<Result<_>>()?,
        None => info
            .siblings
            .iter()
            .filter(|s| s.rfilename.ends_with(".safetensors") && wanted(&s.rfilename))
            .collect(),
    };
    if weights.is_empty() {
        return Err(not_convertible(format!(
            "the repo has no *.safetensors weights; bitnet converts safetensors checkpoints only \
             (files: {})",
            shown()
        )));
    }
    for w in &weights {
        plan.push((w.rfilename.clone(), size_of(w).unwrap_or(0)));
    }
    on_event(Event::Listed {
        commit: &commit,
        files: &plan,
    });
    for s in small.iter().chain(&weights) {
        if done.iter().any(|(n, _)| *n == s.rfilename) {
            continue;
        }
        let etag = fetcher.fetch(s, on_event)?;
        done.push((s.rfilename.clone(), etag));
    }
    let dir = write_snapshot(&rc, &commit, &done)?;
    if !is_commit_hash(revision) {
        write_ref(&rc, revision, &commit)?;
    }
    Ok(ResolvedModel {
        dir,
        repo: Some(repo.to_string()),
        revision: Some(commit),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_files_a_conversion_reads() {
        for f in [
            "config.json",
            "model.safetensors",
            "model-00001-of-00002.safetensors",
            "model.safetensors.index.json",
            "tokenizer.model",
            "chat_template.jinja",
        ] {
            assert!(wanted(f), "{f}");
        }
        for f in [
            "pytorch_model.bin",
            "model.pt",
            "model.gguf",
            "onnx/model.onnx",
            "original/model.safetensors",
            "README.md",
            ".gitattributes",
        ] {
            assert!(!wanted(f), "{f}");
        }
    }
}
