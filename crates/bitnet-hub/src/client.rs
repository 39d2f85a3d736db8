//! The three Hub endpoints a download needs, over `ureq`, with the Hub's error codes turned into
//! [`HubError`]s that say what to do:
//! - `GET /api/models/{repo}/revision/{rev}?blobs=true`: the commit (`sha`) and the files (`siblings`,
//!   with sizes and, for LFS files, their sha256);
//! - `HEAD /{repo}/resolve/{commit}/{file}`: the file's ETag (`X-Linked-Etag` for LFS files, which the
//!   Hub answers with a redirect to its CDN, else `ETag`), `X-Repo-Commit` and size;
//! - `GET` of the same URL, redirects followed, with `Range: bytes=N-` to resume.
//!
//! Redirects are followed by hand so that the token goes only to the endpoint's own origin: the CDN's
//! URLs are signed, and a signed storage URL refuses a request that also carries `Authorization`.

use std::io::Read;
use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;

use crate::HubEnv;
use crate::env::Token;
use crate::error::{HubError, TOKEN_HINT};

/// Characters left as they are in a path segment (what Python's `quote` keeps).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The HTTP response type of `ureq`.
pub(crate) type Response = ureq::http::Response<ureq::Body>;

/// A file of a repo as the listing gives it.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Sibling {
    pub rfilename: String,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub lfs: Option<Lfs>,
}

/// The LFS pointer of a sibling.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Lfs {
    pub sha256: String,
    pub size: u64,
}

/// What `/api/models/{repo}/revision/{rev}` answers (the fields used).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct RepoInfo {
    pub sha: Option<String>,
    #[serde(default)]
    pub siblings: Vec<Sibling>,
}

/// A file's identity, from the `HEAD` of its resolve URL.
#[derive(Debug, Clone)]
pub(crate) struct FileMeta {
    pub etag: String,
    pub commit: Option<String>,
    pub size: Option<u64>,
}

/// A request that failed, sorted by what to do about it.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Worth another try (a dropped connection, a timeout, 429, 5xx).
    Transient {
        /// The URL that failed.
        url: String,
        /// How.
        reason: String,
    },
    /// Final.
    Fatal(HubError),
}

/// A client of one endpoint.
pub(crate) struct HubClient {
    agent: ureq::Agent,
    pub endpoint: String,
    token: Option<Token>,
}

/// Scheme, host and port of a URL (`http://h:1` of `http://h:1/a/b`).
fn origin(url: &str) -> &str {
    let rest = url.find("://").map_or(0, |i| i + 3);
    url[rest..]
        .find('/')
        .map_or(url, |slash| &url[..rest + slash])
}

fn is_redirect(status: u16) -> bool {
    matches!(status, 301 | 302 | 303 | 307 | 308)
}

fn header(resp: &Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// An ETag as a blob name: without `W/` and quotes, as `huggingface_hub` stores it.
pub(crate) fn normalize_etag(raw: &str) -> Option<String> {
    let e = raw.trim();
    let e = e.strip_prefix("W/").unwrap_or(e).trim_matches('"');
    let ok = !e.is_empty()
        && e.len() <= 128
        && !e.starts_with('.')
        && e.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    ok.then(|| e.to_string())
}

impl HubClient {
    pub fn new(env: &HubEnv) -> HubClient {
        let timeout = env.download_timeout.unwrap_or(Duration::from_secs(10));
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(format!("bitnet/{}", env!("CARGO_PKG_VERSION")))
            .timeout_connect(Some(timeout))
            .timeout_recv_response(Some(timeout))
            .timeout_per_read(Some(timeout))
            .build();
        HubClient {
            agent: config.into(),
            endpoint: env.endpoint(),
            token: env.token.clone(),
        }
    }

    /// `{endpoint}/{repo}/resolve/{revision}/{file}`.
    pub fn resolve_url(&self, repo: &str, revision: &str, file: &str) -> String {
        let file: Vec<String> = file
            .split('/')
            .map(|s| utf8_percent_encode(s, SEGMENT).to_string())
            .collect();
        format!(
            "{}/{repo}/resolve/{}/{}",
            self.endpoint,
            utf8_percent_encode(revision, SEGMENT),
            file.join("/")
        )
    }

    /// Sends one request, following redirects by hand (all of them, or only those that stay on the
    /// endpoint's origin); the token goes only to that origin. Returns the last response and its URL.
    fn send(
        &self,
        head: bool,
        url: &str,
        range_from: u64,
        follow_offsite: bool,
    ) -> std::result::Result<(Response, String), ureq::Error> {
        let mut url = url.to_string();
        for _ in 0..10 {
            let mut req = if head {
                self.agent.head(&url)
            } else {
                self.agent.get(&url)
            };
            if let Some(t) = &self.token
                && origin(&url) == origin(&self.endpoint)
            {
                req = req.header("Authorization", format!("Bearer {}", t.secret()));
            }
            if range_from > 0 {
                req = req.header("Range", format!("bytes={range_from}-"));
            }
            let resp = req.call()?;
            let status = resp.status().as_u16();
            let Some(location) = header(&resp, "location").filter(|_| is_redirect(status)) else {
                return Ok((resp, url));
            };
            let next = if location.starts_with("http://") || location.starts_with("https://") {
                location
            } else if location.starts_with('/') {
                format!("{}{location}", origin(&url))
            } else {
                let dir = &url[..url.rfind('/').map_or(url.len(), |i| i + 1)];
                format!("{dir}{location}")
            };
            if !follow_offsite && origin(&next) != origin(&url) {
                return Ok((resp, url));
            }
            url = next;
        }
        Err(ureq::Error::TooManyRedirects)
    }

    /// Sorts a transport error: `unreachable` is final when nothing has answered yet.
    fn transport(&self, what: &str, url: &str, e: ureq::Error, first_contact: bool) -> Failure {
        let reason = e.to_string();
        let refused = match &e {
            ureq::Error::HostNotFound | ureq::Error::ConnectionFailed => true,
            ureq::Error::Io(io) => matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
            ),
            ureq::Error::Timeout(t) => t.to_string().contains("connect"),
            _ => false,
        };
        let fatal = matches!(
            e,
            ureq::Error::BadUri(_) | ureq::Error::TooManyRedirects | ureq::Error::Tls(_)
        ) || matches!(e, ureq::Error::Rustls(_));
        if fatal || (refused && first_contact) {
            Failure::Fatal(HubError::Unreachable {
                what: what.to_string(),
                url: url.to_string(),
                reason,
            })
        } else {
            Failure::Transient {
                url: url.to_string(),
                reason,
            }
        }
    }

    /// The server's explanation of an error status: `X-Error-Message`, else the JSON body's `error`.
    fn explain(resp: &mut Response) -> (Option<String>, Option<String>) {
        let code = header(resp, "x-error-code");
        let mut message = header(resp, "x-error-message");
        if message.is_none() {
            let mut body = String::new();
            let _ = resp
                .body_mut()
                .as_reader()
                .take(64 * 1024)
                .read_to_string(&mut body);
            message = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
                .or_else(|| {
                    let t = body.trim();
                    (!t.is_empty() && t.len() < 300).then(|| t.to_string())
                });
        }
        (code, message)
    }

    /// What to say about a token after a 401 or 403.
    fn token_advice(&self, repo: &str, status: u16) -> String {
        let page = format!("{}/{repo}", self.endpoint);
        match (&self.token, status) {
            (None, _) => {
                format!("if the repo is gated, accept its terms at {page}, then {TOKEN_HINT}")
            }
            (Some(t), 401) => format!(
                "the token from {} was refused (expired or mistyped?); {TOKEN_HINT}",
                t.source
            ),
            (Some(t), _) => format!(
                "the token from {} has no access: accept the repo's terms at {page} with that \
                 account (or ask its owners for access), or use another token",
                t.source
            ),
        }
    }

    /// Turns an error status into a failure, naming `repo` and `file` (empty for the listing).
    fn status_failure(
        &self,
        resp: &mut Response,
        url: &str,
        repo: &str,
        revision: &str,
        file: &str,
    ) -> Failure {
        let status = resp.status().as_u16();
        let (code, message) = Self::explain(resp);
        let what = if file.is_empty() {
            repo.to_string()
        } else {
            format!("{repo}: {file}")
        };
        let suffix = message
            .as_deref()
            .map_or(String::new(), |m| format!(": {m}"));
        if status == 429 || status >= 500 {
            return Failure::Transient {
                url: url.to_string(),
                reason: format!("HTTP {status}{suffix}"),
            };
        }
        let code = code.as_deref().unwrap_or("");
        // Files are asked for only after the listing answered, so a refused file is a gated (or
        // private) repo, not a missing one.
        let err = if code == "GatedRepo" || status == 403 || (status == 401 && !file.is_empty()) {
            HubError::Gated {
                what: what.clone(),
                url: url.to_string(),
                status,
                message: suffix,
                advice: self.token_advice(repo, status),
            }
        } else if code == "RevisionNotFound" {
            HubError::RevisionNotFound {
                repo: repo.to_string(),
                revision: revision.to_string(),
                url: url.to_string(),
                status,
            }
        } else if code == "EntryNotFound" {
            HubError::Http {
                what,
                url: url.to_string(),
                status,
                message: format!(": the repo has no such file at {revision}"),
            }
        } else if status == 401 || (status == 404 && (code == "RepoNotFound" || file.is_empty())) {
            let hint = match &self.token {
                None => format!("; if it is private or gated, {TOKEN_HINT}"),
                Some(_) if status == 401 => format!("; {}", self.token_advice(repo, 401)),
                Some(_) => String::new(),
            };
            HubError::RepoNotFound {
                repo: repo.to_string(),
                endpoint: self.endpoint.clone(),
                url: url.to_string(),
                status,
                hint,
            }
        } else {
            HubError::Http {
                what,
                url: url.to_string(),
                status,
                message: suffix,
            }
        };
        Failure::Fatal(err)
    }

    /// The commit and files of `repo` at `revision`.
    pub fn repo_info(&self, repo: &str, revision: &str) -> std::result::Result<RepoInfo, Failure> {
        let url = format!(
            "{}/api/models/{repo}/revision/{}?blobs=true",
            self.endpoint,
            utf8_percent_encode(revision, SEGMENT)
        );
        let (mut resp, last) = self
            .send(false, &url, 0, false)
            .map_err(|e| self.transport(repo, &url, e, true))?;
        if !resp.status().is_success() {
            return Err(self.status_failure(&mut resp, &last, repo, revision, ""));
        }
        let mut body = Vec::new();
        resp.body_mut()
            .as_reader()
            .take(64 << 20)
            .read_to_end(&mut body)
            .map_err(|e| Failure::Transient {
                url: url.clone(),
                reason: format!("reading the answer: {e}"),
            })?;
        serde_json::from_slice(&body).map_err(|e| {
            Failure::Fatal(HubError::BadResponse {
                url: url.clone(),
                reason: format!("not the Hub's model info JSON: {e}"),
            })
        })
    }

    /// The ETag, commit and size of `file`, as `huggingface_hub` reads them.
    pub fn file_meta(
        &self,
        repo: &str,
        commit: &str,
        file: &str,
    ) -> std::result::Result<FileMeta, Failure> {
        let url = self.resolve_url(repo, commit, file);
        let what = format!("{repo}: {file}");
        let (mut resp, last) = self
            .send(true, &url, 0, false)
            .map_err(|e| self.transport(&what, &url, e, false))?;
        let status = resp.status().as_u16();
        if !(resp.status().is_success() || is_redirect(status)) {
            return Err(self.status_failure(&mut resp, &last, repo, commit, file));
        }
        let raw = header(&resp, "x-linked-etag").or_else(|| header(&resp, "etag"));
        let etag = raw.as_deref().and_then(normalize_etag).ok_or_else(|| {
            Failure::Fatal(HubError::BadResponse {
                url: last.clone(),
                reason: format!("no usable ETag for {file} (got {raw:?})"),
            })
        })?;
        let size = header(&resp, "x-linked-size")
            .or_else(|| header(&resp, "content-length"))
            .and_then(|s| s.parse().ok());
        Ok(FileMeta {
            etag,
            commit: header(&resp, "x-repo-commit"),
            size,
        })
    }

    /// Starts the transfer of `file` from byte `from`; the caller checks the status and reads the body.
    pub fn get(
        &self,
        repo: &str,
        commit: &str,
        file: &str,
        from: u64,
    ) -> std::result::Result<(Response, String), Failure> {
        let url = self.resolve_url(repo, commit, file);
        let what = format!("{repo}: {file}");
        let (mut resp, last) = self
            .send(false, &url, from, true)
            .map_err(|e| self.transport(&what, &url, e, false))?;
        let status = resp.status().as_u16();
        if !resp.status().is_success() && status != 416 {
            return Err(self.status_failure(&mut resp, &last, repo, commit, file));
        }
        Ok((resp, last))
    }
}

/// The start of a `Content-Range: bytes START-END/TOTAL`.
pub(crate) fn content_range_start(resp: &Response) -> Option<u64> {
    let v = header(resp, "content-range")?;
    let rest = v.strip_prefix("bytes ")?;
    rest.split('-').next()?.trim().parse().ok()
}

/// Tests against a server live in `tests/integration/hub_download.rs`; these are the pure parts.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        assert_eq!(origin("http://127.0.0.1:80/a/b"), "http://127.0.0.1:80");
        assert_eq!(origin("https://hf.co"), "https://hf.co");
        assert_ne!(
            origin("http://localhost:80/x"),
            origin("http://127.0.0.1:80/x")
        );
    }

    #[test]
    fn etags_become_safe_blob_names() {
        assert_eq!(normalize_etag("\"abc123\"").as_deref(), Some("abc123"));
        assert_eq!(normalize_etag("W/\"abc-1\"").as_deref(), Some("abc-1"));
        assert_eq!(normalize_etag("\"../../etc\""), None);
        assert_eq!(normalize_etag("\"a/b\""), None);
        assert_eq!(normalize_etag("\"\""), None);
    }

    #[test]
    fn resolve_urls_quote_the_revision_and_file() {
        let c = HubClient::new(&HubEnv {
            endpoint: Some("http://h:1/".into()),
            ..Default::default()
        });
        assert_eq!(
            c.resolve_url("o/n", "refs/pr/1", "dir/a b.json"),
            "http://h:1/o/n/resolve/refs%2Fpr%2F1/dir/a%20b.json"
        );
    }
}
