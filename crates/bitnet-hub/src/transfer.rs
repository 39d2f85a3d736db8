//! One file's transfer into `blobs/<etag>`: the lock, the `.incomplete` file and its running sha256,
//! resumption with `Range`, retries with backoff, and the checks before the rename (see
//! [`crate::download`] for the whole).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::cache::RepoCache;
use crate::client::{Failure, HubClient, Sibling, content_range_start};
use crate::download::{Event, OnEvent};
use crate::error::{HubError, Result};

fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1 << failures.saturating_sub(1).min(4))
}

/// Runs `f` until it succeeds, fails for good, or fails transiently `limit` times in a row.
pub(crate) fn retrying<T>(
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
pub(crate) struct Fetcher<'a> {
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

impl<'a> Fetcher<'a> {
    pub(crate) fn new(
        client: &'a HubClient,
        rc: &'a RepoCache,
        repo: &'a str,
        commit: &'a str,
        limit: u32,
    ) -> Fetcher<'a> {
        Fetcher {
            client,
            rc,
            repo,
            commit,
            limit,
            buf: vec![0u8; 1 << 20],
        }
    }

    /// Makes sure `s` is a complete blob in the cache and returns its ETag.
    pub(crate) fn fetch(&mut self, s: &Sibling, on_event: &mut OnEvent<'_>) -> Result<String> {
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
        // An LFS file's ETag is its sha256 too, for a mirror whose listing leaves out `lfs`.
        let expected_sha = s
            .lfs
            .as_ref()
            .map(|l| l.sha256.to_ascii_lowercase())
            .or_else(|| {
                (etag.len() == 64 && etag.bytes().all(|b| b.is_ascii_hexdigit()))
                    .then(|| etag.to_ascii_lowercase())
            });
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
            error: e,
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
