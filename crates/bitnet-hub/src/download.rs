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

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::HubEnv;
use crate::cache::{
    RepoCache, ResolvedModel, is_commit_hash, missing_files, shards_of_index, split_repo_spec,
};
use crate::client::{Failure, HubClient, Sibling, content_range_start};
use crate::error::{HubError, Result};

/// The files besides the weights that a conversion may read.
pub const SMALL_FILES: [&str; 9] = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "added_tokens.json",
    "chat_template.jinja",
    "model.safetensors.index.json",
];

/// Whether a repo file is one a conversion reads (top-level files only).
pub fn wanted(name: &str) -> bool {
    SMALL_FILES.contains(&name) || (name.ends_with(".safetensors") && !name.contains('/'))
}

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

fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1 << failures.saturating_sub(1).min(4))
}

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
    let mut fetcher = Fetcher {
        client: &client,
        rc: &rc,
        repo,
        commit: &commit,
        limit,
        buf: vec![0u8; 1 << 20],
    };
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

/// Runs `f` until it succeeds, fails for good, or fails transiently `limit` times in a row.
fn retrying<T>(
    limit: u32,
    what: &str,
    file: &str,
    on_event: &mut OnEvent<'_>,
    mut f: impl FnMut() -> std::result::Result<T, Failure>,
) -> Result<T> {
    let mut failures = 0;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Transient { url, reason }) => {
                failures += 1;
                if failures >= limit {
                    return Err(HubError::Unreachable {
                        what: what.to_string(),
                        url,
                        reason: format!("{reason} ({failures} attempts)"),
                    });
                }
                let delay = backoff(failures);
                on_event(Event::Retry {
                    file,
                    failures,
                    limit,
                    delay,
                    reason: &reason,
                });
                std::thread::sleep(delay);
            }
        }
    }
}

/// The state one download shares across its files.
struct Fetcher<'a> {
    client: &'a HubClient,
    rc: &'a RepoCache,
    repo: &'a str,
    commit: &'a str,
    limit: u32,
    buf: Vec<u8>,
}

/// Why one transfer attempt stopped.
enum Stop {
    Failure(Failure),
    Write(std::io::Error),
}

impl Fetcher<'_> {
    /// Makes sure `s` is a complete blob in the cache and returns its ETag.
    fn fetch(&mut self, s: &Sibling, on_event: &mut OnEvent<'_>) -> Result<String> {
        let file = s.rfilename.as_str();
        let listed = s.size.or(s.lfs.as_ref().map(|l| l.size));
        let (client, repo, commit) = (self.client, self.repo, self.commit);
        let what = format!("{repo}: {file}");
        let meta = retrying(self.limit, &what, file, on_event, || {
            client.file_meta(repo, commit, file)
        })?;
        let url = client.resolve_url(repo, commit, file);
        let bad = |reason: String| HubError::BadResponse {
            url: url.clone(),
            reason,
        };
        if let Some(c) = &meta.commit
            && c != commit
        {
            return Err(bad(format!(
                "X-Repo-Commit is {c}, but the listing said {commit}"
            )));
        }
        let size = match (listed, meta.size) {
            (Some(a), Some(b)) if a != b => {
                return Err(bad(format!(
                    "{file} is {b} bytes, but the listing said {a}"
                )));
            }
            (Some(a), _) | (None, Some(a)) => a,
            (None, None) => return Err(bad(format!("no size for {file}"))),
        };
        let etag = meta.etag;
        let blob = self.rc.blob(&etag);
        if blob.metadata().is_ok_and(|m| m.len() == size) {
            on_event(Event::Cached { file });
            return Ok(etag);
        }
        let lock_path = self.rc.lock_file(&etag);
        let _lock = lock(&lock_path, file, on_event)?;
        // Another process may have finished it while this one waited.
        if blob.metadata().is_ok_and(|m| m.len() == size) {
            on_event(Event::Cached { file });
            return Ok(etag);
        }
        let expected_sha = s
            .lfs
            .as_ref()
            .map(|l| l.sha256.to_ascii_lowercase())
            .or_else(|| (etag.len() == 64 && s.lfs.is_some()).then(|| etag.clone()));
        let partial_path = self.rc.incomplete(&etag);
        let mut partial = Partial::open(&partial_path, size)
            .map_err(|e| self.write_error(file, &partial_path, e))?;
        on_event(Event::Start {
            file,
            size,
            resumed_from: partial.have,
        });
        let mut failures = 0;
        while partial.have < size {
            let before = partial.have;
            match self.attempt(file, size, &mut partial, on_event) {
                Ok(()) => {}
                Err(Stop::Write(e)) => {
                    drop(partial);
                    let _ = std::fs::remove_file(&partial_path);
                    return Err(self.write_error(file, &partial_path, e));
                }
                Err(Stop::Failure(Failure::Fatal(e))) => return Err(e),
                Err(Stop::Failure(Failure::Transient { url, reason })) => {
                    failures = if partial.have > before {
                        1
                    } else {
                        failures + 1
                    };
                    if failures >= self.limit {
                        return Err(HubError::Transfer {
                            what,
                            url,
                            attempts: failures,
                            reason,
                            kept: format!(
                                "{} of {size} bytes are kept in {}",
                                partial.have,
                                partial_path.display()
                            ),
                        });
                    }
                    let delay = backoff(failures);
                    on_event(Event::Retry {
                        file,
                        failures,
                        limit: self.limit,
                        delay,
                        reason: &reason,
                    });
                    std::thread::sleep(delay);
                }
            }
        }
        partial
            .file
            .sync_data()
            .map_err(|e| self.write_error(file, &partial_path, e))?;
        let digest = partial.hasher.finalize();
        let got: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        if let Some(want) = expected_sha
            && want != got
        {
            let _ = std::fs::remove_file(&partial_path);
            return Err(HubError::Corrupt {
                repo: repo.to_string(),
                file: file.to_string(),
                reason: format!("its sha256 is {got}, the Hub lists {want}"),
            });
        }
        std::fs::rename(&partial_path, &blob).map_err(|e| HubError::io(&blob, e))?;
        on_event(Event::Done { file, size });
        Ok(etag)
    }

    fn write_error(&self, file: &str, path: &Path, e: std::io::Error) -> HubError {
        HubError::Write {
            repo: self.repo.to_string(),
            file: file.to_string(),
            path: path.to_path_buf(),
            source: e,
        }
    }

    /// One GET from `partial.have` on, appended to the partial file.
    fn attempt(
        &mut self,
        file: &str,
        size: u64,
        partial: &mut Partial,
        on_event: &mut OnEvent<'_>,
    ) -> std::result::Result<(), Stop> {
        let (mut resp, url) = self
            .client
            .get(self.repo, self.commit, file, partial.have)
            .map_err(Stop::Failure)?;
        let transient = |reason: String| {
            Stop::Failure(Failure::Transient {
                url: url.clone(),
                reason,
            })
        };
        match resp.status().as_u16() {
            206 if content_range_start(&resp) == Some(partial.have) => {}
            206 | 416 => {
                partial.restart().map_err(Stop::Write)?;
                return Err(transient(
                    "the server did not resume where the partial file ends; starting over".into(),
                ));
            }
            _ if partial.have > 0 => partial.restart().map_err(Stop::Write)?,
            _ => {}
        }
        let mut reader = resp.body_mut().as_reader();
        loop {
            let n = match reader.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(transient(format!(
                        "the connection dropped after {} of {size} bytes: {e}",
                        partial.have
                    )));
                }
            };
            if partial.have + n as u64 > size {
                partial.restart().map_err(Stop::Write)?;
                return Err(Stop::Failure(Failure::Fatal(HubError::Corrupt {
                    repo: self.repo.to_string(),
                    file: file.to_string(),
                    reason: format!("the server sent more than the {size} bytes listed"),
                })));
            }
            partial.append(&self.buf[..n]).map_err(Stop::Write)?;
            on_event(Event::Progress {
                file,
                bytes: n as u64,
            });
        }
        if partial.have < size {
            return Err(transient(format!(
                "the connection closed after {} of {size} bytes",
                partial.have
            )));
        }
        Ok(())
    }
}

/// A `.incomplete` file and the running sha256 of what it holds.
struct Partial {
    file: File,
    have: u64,
    hasher: Sha256,
}

impl Partial {
    /// Opens (or creates) the partial file, hashing what an earlier run left in it.
    fn open(path: &Path, size: u64) -> std::io::Result<Partial> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        let have = file.metadata()?.len();
        let mut p = Partial {
            file: file.try_clone()?,
            have,
            hasher: Sha256::new(),
        };
        if have > size {
            p.restart()?;
        } else if have > 0 {
            file.seek(SeekFrom::Start(0))?;
            std::io::copy(&mut (&mut file).take(have), &mut p.hasher)?;
        }
        Ok(p)
    }

    fn restart(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.have = 0;
        self.hasher = Sha256::new();
        Ok(())
    }

    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write_all(bytes)?;
        self.hasher.update(bytes);
        self.have += bytes.len() as u64;
        Ok(())
    }
}

/// Takes the blob's lock file (`flock`, as Python's `filelock` does), waiting if another process
/// holds it.
fn lock(path: &Path, file: &str, on_event: &mut OnEvent<'_>) -> Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| HubError::io(dir, e))?;
    }
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| HubError::io(path, e))?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            on_event(Event::Waiting { file });
            f.lock().map_err(|e| HubError::io(path, e))?;
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(HubError::io(path, e)),
    }
    Ok(f)
}

/// Links `snapshots/<commit>/<file>` to `../../blobs/<etag>` for every file. A new snapshot folder is
/// filled aside and renamed into place, so it appears whole.
fn write_snapshot(rc: &RepoCache, commit: &str, files: &[(String, String)]) -> Result<PathBuf> {
    let snap = rc.snapshot(commit);
    let link = |dir: &Path, name: &str, etag: &str| -> Result<()> {
        let at = dir.join(name);
        let target = PathBuf::from("../../blobs").join(etag);
        if std::fs::read_link(&at).is_ok_and(|t| t == target) {
            return Ok(());
        }
        if at.symlink_metadata().is_ok() {
            std::fs::remove_file(&at).map_err(|e| HubError::io(&at, e))?;
        }
        std::os::unix::fs::symlink(&target, &at).map_err(|e| HubError::io(&at, e))
    };
    if !snap.exists() {
        let tmp = rc
            .dir
            .join("snapshots")
            .join(format!(".{commit}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| HubError::io(&tmp, e))?;
        for (name, etag) in files {
            if let Err(e) = link(&tmp, name, etag) {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
        }
        if std::fs::rename(&tmp, &snap).is_ok() {
            return Ok(snap);
        }
        // Someone else made the folder meanwhile: add the links to theirs.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    for (name, etag) in files {
        link(&snap, name, etag)?;
    }
    Ok(snap)
}

/// Writes `refs/<revision>` (the commit, no newline, as the Python library writes it) atomically.
fn write_ref(rc: &RepoCache, revision: &str, commit: &str) -> Result<()> {
    let path = rc.ref_file(revision);
    let dir = path.parent().unwrap_or(&rc.dir).to_path_buf();
    std::fs::create_dir_all(&dir).map_err(|e| HubError::io(&dir, e))?;
    let tmp = dir.join(format!(".ref.tmp-{}", std::process::id()));
    std::fs::write(&tmp, commit).map_err(|e| HubError::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        HubError::io(&path, e)
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

    #[test]
    fn backoff_doubles_and_caps() {
        let s: Vec<u64> = (1..8).map(|f| backoff(f).as_secs()).collect();
        assert_eq!(s, [1, 2, 4, 8, 16, 16, 16]);
    }

    #[test]
    fn a_partial_file_resumes_with_its_hash_and_restarts_when_too_long() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("blobs/x.incomplete");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"hello ").unwrap();
        let mut part = Partial::open(&p, 11).unwrap();
        assert_eq!(part.have, 6);
        part.append(b"world").unwrap();
        let got = part.hasher.clone().finalize();
        assert_eq!(got, Sha256::digest(b"hello world"));
        assert_eq!(std::fs::read(&p).unwrap(), b"hello world");
        // Longer than the file can be: not a prefix of it.
        let part = Partial::open(&p, 4).unwrap();
        assert_eq!(part.have, 0);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 0);
    }

    #[test]
    fn snapshots_appear_whole_with_relative_links_and_refs_without_newline() {
        let tmp = tempfile::tempdir().unwrap();
        let rc = RepoCache::new(tmp.path(), "o/n");
        let commit = "0123456789abcdef0123456789abcdef01234567";
        std::fs::create_dir_all(rc.dir.join("blobs")).unwrap();
        std::fs::write(rc.blob("e1"), "{}").unwrap();
        let snap = write_snapshot(&rc, commit, &[("config.json".into(), "e1".into())]).unwrap();
        assert_eq!(
            std::fs::read_link(snap.join("config.json")).unwrap(),
            PathBuf::from("../../blobs/e1")
        );
        assert_eq!(
            std::fs::read_to_string(snap.join("config.json")).unwrap(),
            "{}"
        );
        let names: Vec<_> = std::fs::read_dir(rc.dir.join("snapshots"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, [commit], "no temporary folder left");
        // Adding to an existing snapshot.
        std::fs::write(rc.blob("e2"), "w").unwrap();
        write_snapshot(&rc, commit, &[("model.safetensors".into(), "e2".into())]).unwrap();
        assert!(snap.join("config.json").is_file() && snap.join("model.safetensors").is_file());
        write_ref(&rc, "main", commit).unwrap();
        assert_eq!(
            std::fs::read_to_string(rc.ref_file("main")).unwrap(),
            commit
        );
        assert_eq!(rc.commit_for("main").as_deref(), Some(commit));
    }
}
