//! A stand-in for the Hugging Face Hub on loopback, serving real fixture folders through the endpoints
//! a download uses, as the Hub answers them:
//! - `GET /api/models/{org}/{name}/revision/{rev}`: `sha` and `siblings` (with `?blobs=true`, each
//!   sibling's `size` and `blobId`, and `lfs: {sha256, size, pointerSize}` for LFS files);
//! - `HEAD`/`GET /{org}/{name}/resolve/{rev}/{file}`: a regular file is served with `ETag: "<blob id>"`,
//!   `X-Repo-Commit` and `Range` support; an LFS file (`*.safetensors`, `tokenizer.json`) is a `302` to
//!   the CDN with `X-Linked-Etag: "<sha256>"`, `X-Linked-Size` and `X-Repo-Commit` (its `ETag` is the
//!   pointer's, as on the Hub, so a client must prefer `X-Linked-Etag`);
//! - `GET /cdn/{sha256}` on another origin (`localhost` instead of `127.0.0.1`): the bytes, with
//!   `Range`, and a 400 for a request that carries `Authorization`, as signed storage URLs refuse;
//! - the Hub's error answers: `X-Error-Code` `RepoNotFound` (401 without a token, 404 with one),
//!   `GatedRepo` (401 without a token, 403 with the wrong one), `RevisionNotFound`, `EntryNotFound`.
//!
//! Faults on request: a transfer of a file cut when it reaches a byte offset (the headers promise the
//! whole length, then the connection drops), a file served with one byte flipped.
//! The "blob id" of a regular file is 40 hex digits of a sha256 here (git's is a sha1): only its form
//! matters to a client, which uses it as a name.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use axum::routing::get;
pub use bitnet_format::hex;
use serde_json::json;
use sha2::Digest;

/// One file of a repo.
pub struct HubFile {
    pub name: String,
    pub bytes: Vec<u8>,
    pub sha256: String,
    pub oid: String,
    pub lfs: bool,
}

impl HubFile {
    pub fn new(name: &str, bytes: Vec<u8>) -> HubFile {
        let sha256 = hex(&sha2::Sha256::digest(&bytes));
        let mut git = sha2::Sha256::new();
        git.update(format!("blob {}\0", bytes.len()));
        git.update(&bytes);
        let oid = hex(&git.finalize())[..40].to_string();
        HubFile {
            lfs: name.ends_with(".safetensors") || name == "tokenizer.json",
            name: name.to_string(),
            bytes,
            sha256,
            oid,
        }
    }

    /// The blob name a client must use: the sha256 for LFS files, the blob id for others.
    pub fn etag(&self) -> &str {
        if self.lfs { &self.sha256 } else { &self.oid }
    }
}

/// Who may read a repo.
#[derive(Clone, PartialEq)]
pub enum Access {
    Public,
    /// The listing is public; files need this token.
    Gated(String),
}

pub struct HubRepo {
    pub id: String,
    pub commit: String,
    pub files: Vec<HubFile>,
    pub access: Access,
}

impl HubRepo {
    /// A public repo holding every file of `dir`, plus `extra` files.
    pub fn from_folder(id: &str, commit: &str, dir: &Path, extra: &[(&str, &[u8])]) -> HubRepo {
        let mut files: Vec<HubFile> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                HubFile::new(
                    &e.file_name().to_string_lossy(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        files.extend(extra.iter().map(|(n, b)| HubFile::new(n, b.to_vec())));
        files.sort_by(|a, b| a.name.cmp(&b.name));
        HubRepo {
            id: id.to_string(),
            commit: commit.to_string(),
            files,
            access: Access::Public,
        }
    }

    pub fn file(&self, name: &str) -> &HubFile {
        self.files.iter().find(|f| f.name == name).unwrap()
    }
}

/// One request as the stand-in saw it.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub auth: bool,
}

#[derive(Default)]
struct Faults {
    /// file -> (offset at which the connection drops, how many more times).
    cut: HashMap<String, (u64, usize)>,
    /// file -> (offset at which the transfer stalls with the connection open, how many more times).
    stall: HashMap<String, (u64, usize)>,
    corrupt: HashSet<String>,
}

struct Shared {
    repos: Vec<HubRepo>,
    url: String,
    cdn: String,
    faults: Mutex<Faults>,
    log: Mutex<Vec<Logged>>,
}

/// The running stand-in; stops (dropping open connections) when dropped.
pub struct StandIn {
    pub url: String,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StandIn {
    pub fn start(repos: Vec<HubRepo>) -> StandIn {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = format!("http://127.0.0.1:{port}");
        let shared = Arc::new(Shared {
            repos,
            url: url.clone(),
            cdn: format!("http://localhost:{port}"),
            faults: Mutex::default(),
            log: Mutex::default(),
        });
        let app = Router::new()
            .route("/api/models/{org}/{name}/revision/{*rev}", get(info))
            .route("/cdn/{sha}", get(cdn))
            .route("/{org}/{name}/resolve/{rev}/{*file}", get(resolve))
            .with_state(shared.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(listener).unwrap();
                tokio::select! {
                    _ = axum::serve(l, app) => {}
                    _ = rx => {}
                }
            });
            rt.shutdown_timeout(std::time::Duration::from_millis(100));
        });
        StandIn {
            url,
            shared,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    /// Every transfer of `file` that reaches byte `at` drops there, `times` times.
    pub fn cut(&self, file: &str, at: u64, times: usize) {
        let mut f = self.shared.faults.lock().unwrap();
        f.cut.insert(file.to_string(), (at, times));
    }

    /// Every transfer of `file` that reaches byte `at` stops sending there but keeps the connection
    /// open (for 30 s), `times` times.
    pub fn stall(&self, file: &str, at: u64, times: usize) {
        let mut f = self.shared.faults.lock().unwrap();
        f.stall.insert(file.to_string(), (at, times));
    }

    /// `file` is served with one byte flipped.
    pub fn corrupt(&self, file: &str) {
        let mut f = self.shared.faults.lock().unwrap();
        f.corrupt.insert(file.to_string());
    }

    pub fn log(&self) -> Vec<Logged> {
        self.shared.log.lock().unwrap().clone()
    }

    /// The GET requests (on the Hub or the CDN) for `file`'s bytes.
    pub fn gets_of(&self, repo: &HubRepo, file: &str) -> Vec<Logged> {
        let f = repo.file(file);
        let cdn = format!("/cdn/{}", f.sha256);
        let direct = format!("/{file}");
        self.log()
            .into_iter()
            .filter(|l| {
                l.method == "GET"
                    && if f.lfs {
                        l.path == cdn
                    } else {
                        l.path.contains("/resolve/") && l.path.ends_with(&direct)
                    }
            })
            .collect()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn record(s: &Shared, method: &Method, uri: &Uri, headers: &HeaderMap) {
    s.log.lock().unwrap().push(Logged {
        method: method.to_string(),
        path: uri.path().to_string(),
        range: headers
            .get("range")
            .and_then(|v| v.to_str().ok())
            .map(String::from),
        auth: headers.contains_key("authorization"),
    });
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

fn error(status: u16, code: &str, message: &str) -> Response {
    Response::builder()
        .status(status)
        .header("x-error-code", code)
        .header("x-error-message", message)
        .header("content-type", "application/json")
        .body(Body::from(json!({ "error": message }).to_string()))
        .unwrap()
}

fn repo_not_found(headers: &HeaderMap) -> Response {
    let status = if bearer(headers).is_some() { 404 } else { 401 };
    error(status, "RepoNotFound", "Repository not found")
}

async fn info(
    State(s): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    UrlPath((org, name, rev)): UrlPath<(String, String, String)>,
) -> Response {
    record(&s, &method, &uri, &headers);
    let id = format!("{org}/{name}");
    let Some(repo) = s.repos.iter().find(|r| r.id == id) else {
        return repo_not_found(&headers);
    };
    if rev != "main" && rev != repo.commit {
        return error(404, "RevisionNotFound", &format!("Invalid rev id: {rev}"));
    }
    let blobs = uri
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "blobs=true"));
    let siblings: Vec<_> = repo
        .files
        .iter()
        .map(|f| {
            let mut v = json!({ "rfilename": f.name });
            if blobs {
                v["blobId"] = json!(f.oid);
                v["size"] = json!(f.bytes.len());
                if f.lfs {
                    v["lfs"] =
                        json!({"sha256": f.sha256, "size": f.bytes.len(), "pointerSize": 134});
                }
            }
            v
        })
        .collect();
    let body = json!({
        "_id": "0123456789abcdef01234567",
        "id": id,
        "modelId": id,
        "author": org,
        "sha": repo.commit,
        "private": false,
        "gated": if repo.access == Access::Public { json!(false) } else { json!("manual") },
        "disabled": false,
        "library_name": "transformers",
        "tags": ["transformers", "safetensors", "bitnet"],
        "siblings": siblings,
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

async fn resolve(
    State(s): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    UrlPath((org, name, rev, file)): UrlPath<(String, String, String, String)>,
) -> Response {
    record(&s, &method, &uri, &headers);
    let id = format!("{org}/{name}");
    let Some(repo) = s.repos.iter().find(|r| r.id == id) else {
        return repo_not_found(&headers);
    };
    if let Access::Gated(token) = &repo.access {
        match bearer(&headers) {
            None => {
                return error(
                    401,
                    "GatedRepo",
                    &format!(
                        "Access to model {id} is restricted. You must have access to it and be authenticated to access it. Please log in."
                    ),
                );
            }
            Some(t) if t != token => {
                return error(
                    403,
                    "GatedRepo",
                    &format!(
                        "Access to model {id} is restricted and you are not in the authorized list. Visit {}/{id} to ask for access.",
                        s.url
                    ),
                );
            }
            Some(_) => {}
        }
    }
    if rev != "main" && rev != repo.commit {
        return error(404, "RevisionNotFound", &format!("Invalid rev id: {rev}"));
    }
    let Some(f) = repo.files.iter().find(|f| f.name == file) else {
        return error(
            404,
            "EntryNotFound",
            &format!("{file} does not exist on \"{rev}\""),
        );
    };
    if f.lfs {
        return Response::builder()
            .status(StatusCode::FOUND)
            .header("location", format!("{}/cdn/{}?X-Signed=1", s.cdn, f.sha256))
            .header("x-linked-etag", format!("\"{}\"", f.sha256))
            .header("x-linked-size", f.bytes.len())
            .header("etag", format!("\"{}\"", &f.oid))
            .header("x-repo-commit", &repo.commit)
            .body(Body::empty())
            .unwrap();
    }
    let mut resp = serve(&s, f, &headers);
    resp.headers_mut().insert(
        "x-repo-commit",
        HeaderValue::from_str(&repo.commit).unwrap(),
    );
    resp
}

async fn cdn(
    State(s): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    UrlPath(sha): UrlPath<String>,
) -> Response {
    record(&s, &method, &uri, &headers);
    if headers.contains_key("authorization") {
        return error(
            400,
            "InvalidArgument",
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query string parameter or the Authorization header should be specified",
        );
    }
    match s
        .repos
        .iter()
        .flat_map(|r| &r.files)
        .find(|f| f.sha256 == sha)
    {
        Some(f) => serve(&s, f, &headers),
        None => error(404, "NoSuchKey", "The specified key does not exist."),
    }
}

/// The bytes of `f` from the `Range` start, with the faults applied.
fn serve(s: &Shared, f: &HubFile, headers: &HeaderMap) -> Response {
    let len = f.bytes.len() as u64;
    let range = headers.get("range").and_then(|v| v.to_str().ok());
    let start = range
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split('-').next())
        .and_then(|n| n.parse::<u64>().ok());
    let from = start.unwrap_or(0);
    if from >= len && len > 0 {
        return Response::builder()
            .status(416)
            .header("content-range", format!("bytes */{len}"))
            .body(Body::empty())
            .unwrap();
    }
    let mut data = f.bytes[from as usize..].to_vec();
    let mut faults = s.faults.lock().unwrap();
    if faults.corrupt.contains(&f.name) && !data.is_empty() {
        let mid = data.len() / 2;
        data[mid] ^= 0xff;
    }
    let hit = |rules: &mut HashMap<String, (u64, usize)>| match rules.get_mut(&f.name) {
        Some((at, times)) if *times > 0 && *at >= from && *at < len => {
            *times -= 1;
            Some((*at - from) as usize)
        }
        _ => None,
    };
    let fault = match hit(&mut faults.cut) {
        Some(keep) => Some((keep, false)),
        None => hit(&mut faults.stall).map(|keep| (keep, true)),
    };
    drop(faults);
    let body = match fault {
        None => Body::from(data),
        Some((keep, stall)) => {
            // The bytes before the fault go out (the pause lets them be flushed); then the connection
            // drops with the rest of the promised length missing, or stays open and silent.
            let first = Bytes::copy_from_slice(&data[..keep]);
            let pause = std::time::Duration::from_millis(if stall { 30_000 } else { 50 });
            let steps = futures_util::stream::unfold(0, move |step| {
                let first = first.clone();
                async move {
                    match step {
                        0 => Some((Ok::<Bytes, std::io::Error>(first), 1)),
                        1 => {
                            tokio::time::sleep(pause).await;
                            Some((
                                Err(std::io::Error::other("the stand-in drops the connection")),
                                2,
                            ))
                        }
                        _ => None,
                    }
                }
            });
            Body::from_stream(steps)
        }
    };
    let mut b = Response::builder()
        .header("etag", format!("\"{}\"", f.etag()))
        .header("accept-ranges", "bytes")
        .header("content-length", len - from);
    if start.is_some() {
        b = b
            .status(206)
            .header("content-range", format!("bytes {from}-{}/{len}", len - 1));
    }
    b.body(body).unwrap()
}
