//! What every request passes through: the Host allow-list (DNS rebinding), the API key, JSON-only POST
//! bodies, CORS for the `--cors-origin` origins (preflights answered), an `X-Request-Id` echoed or made,
//! `Retry-After` on a 503, the metrics' counts, and one log line per request (target
//! `bitnet_serve::requests`, at debug level: `-v`, or `RUST_LOG=bitnet_serve::requests=debug`).

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::App;
use crate::api::ApiError;

const ROUTES: [&str; 13] = [
    "/",
    "/page.js",
    "/markdown.js",
    "/health",
    "/stats",
    "/metrics",
    "/v1/models",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/tokenize",
    "/detokenize",
];

/// The origins a browser page may call this server from (`--cors-origin`; `*` for any).
#[derive(Debug, Clone, Default)]
pub struct Cors {
    any: bool,
    origins: Vec<String>,
}

impl Cors {
    /// From the `--cors-origin` values: `*`, or origins as a browser sends them (`https://app.example`,
    /// scheme and host and an optional port, no path).
    pub fn new(origins: &[String]) -> anyhow::Result<Cors> {
        let mut c = Cors::default();
        for o in origins {
            let o = o.trim();
            if o == "*" {
                c.any = true;
                continue;
            }
            let rest = o
                .strip_prefix("http://")
                .or_else(|| o.strip_prefix("https://"));
            match rest {
                Some(r) if !r.is_empty() && !r.contains(['/', '?', '#', ' ']) => {
                    c.origins.push(o.to_ascii_lowercase())
                }
                _ => anyhow::bail!(
                    "--cors-origin {o:?}: expected `*` or an origin such as https://app.example or \
                     http://localhost:5173 (scheme, host and port, no path)"
                ),
            }
        }
        Ok(c)
    }

    /// Whether any origin is allowed at all.
    pub fn enabled(&self) -> bool {
        self.any || !self.origins.is_empty()
    }

    /// The `Access-Control-Allow-Origin` value for a request from `origin`, if it is allowed.
    fn allow(&self, origin: &str) -> Option<HeaderValue> {
        if self.any {
            return Some(HeaderValue::from_static("*"));
        }
        let o = origin.to_ascii_lowercase();
        if self.origins.contains(&o) {
            HeaderValue::from_str(origin).ok()
        } else {
            None
        }
    }
}

/// One request's line in the log, written when the last holder lets go (for a stream, when it ends).
pub(crate) struct RequestLog {
    id: String,
    method: Method,
    path: String,
    start: Instant,
    status: Mutex<u16>,
    /// Prompt and completion tokens (what generation reported).
    tokens: Mutex<Option<(usize, usize)>>,
}

impl RequestLog {
    /// Adds a finished sequence's counts (a request with `n` sequences shares one prompt).
    pub(crate) fn add_tokens(&self, prompt: usize, completion: usize) {
        let mut t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let (p, c) = t.get_or_insert((0, 0));
        *p = (*p).max(prompt);
        *c += completion;
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        let status = *self.status.get_mut().unwrap_or_else(|p| p.into_inner());
        let tokens = match *self.tokens.get_mut().unwrap_or_else(|p| p.into_inner()) {
            Some((p, c)) => format!(" tokens={p}+{c}"),
            None => String::new(),
        };
        tracing::debug!(
            target: "bitnet_serve::requests",
            "{} {} {status}{tokens} {:.1} ms id={}",
            self.method,
            self.path,
            self.start.elapsed().as_secs_f64() * 1e3,
            self.id
        );
    }
}

tokio::task_local! {
    static CURRENT: Arc<RequestLog>;
}

/// The log entry of the request being handled (from a handler, before it returns its response).
pub(crate) fn current() -> Option<Arc<RequestLog>> {
    CURRENT.try_with(Arc::clone).ok()
}

/// The client's `X-Request-Id` if it is short printable ASCII, else a new one.
fn request_id(headers: &HeaderMap) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| {
            format!(
                "req-{:x}-{}",
                crate::unix_now(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            )
        })
}

/// The names a request's Host header may give: the loopback names, the address listened on (unless it is
/// every interface) and the `--allow-host` names.
pub(crate) fn allowed_hosts(host: &str, extra: &[String]) -> Vec<String> {
    let mut v: Vec<String> = ["localhost", "127.0.0.1", "::1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if !matches!(host, "0.0.0.0" | "::" | "[::]") {
        v.push(host.trim_matches(['[', ']']).to_ascii_lowercase());
    }
    v.extend(
        extra
            .iter()
            .map(|h| h.trim_matches(['[', ']']).to_ascii_lowercase()),
    );
    v
}

/// The host part of a Host header value (`name:port`, `[v6]:port`), lower case.
fn host_name(value: &str) -> String {
    let v = value.trim();
    let name = if let Some(rest) = v.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        v.rsplit_once(':').map_or(v, |(h, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                h
            } else {
                v
            }
        })
    };
    name.to_ascii_lowercase()
}

impl App {
    /// Whether the request names this server by a name it answers to. A page on another site that
    /// rebinds its own DNS name to 127.0.0.1 sends that name, and is refused.
    fn host_allowed(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
            // HTTP/1.0 without Host: nothing a browser sends.
            return true;
        };
        let name = host_name(value);
        self.hosts.contains(&name) || (self.any_ip && name.parse::<std::net::IpAddr>().is_ok())
    }
}

/// The checks and headers of the module docs, around every request.
pub(crate) async fn guard(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let route = if ROUTES.contains(&path.as_str()) {
        path.as_str()
    } else if path.starts_with("/v1/models/") {
        "/v1/models/{id}"
    } else {
        "other"
    };
    let id = request_id(req.headers());
    let log = Arc::new(RequestLog {
        id: id.clone(),
        method: req.method().clone(),
        path: path.clone(),
        start: Instant::now(),
        status: Mutex::new(0),
        tokens: Mutex::new(None),
    });
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let allow_origin = origin.as_deref().and_then(|o| app.cors.allow(o));
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let needs_key = path.starts_with("/v1/")
        || matches!(path.as_str(), "/metrics" | "/tokenize" | "/detokenize");
    let json_body = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    let mut resp = match &app.api_key {
        _ if !app.host_allowed(req.headers()) => ApiError::bad(format!(
            "the Host header names {:?}, which this server does not answer to (loopback names, the \
             --host address and --allow-host names): a page on another site must not reach it by its own \
             name",
            req.headers()
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        ))
        .with(StatusCode::FORBIDDEN, "invalid_request_error", "host_not_allowed")
        .into_response(),
        // A browser's preflight carries no credentials: answered before the key check.
        _ if preflight => preflight_answer(allow_origin.is_some(), origin.as_deref()),
        Some(key) if needs_key && !authorized(req.headers(), key) => {
            let mut e = ApiError::bad(if req.headers().contains_key(header::AUTHORIZATION) {
                "Incorrect API key provided."
            } else {
                "Missing API key: send the header `Authorization: Bearer KEY`."
            })
            .with(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "invalid_api_key",
            )
            .into_response();
            e.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            e
        }
        _ if req.method() == Method::POST && !json_body => ApiError::bad(
            "the body must be JSON, sent with `Content-Type: application/json`",
        )
        .with(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            "unsupported_media_type",
        )
        .into_response(),
        _ => CURRENT.scope(log.clone(), next.run(req)).await,
    };
    let status = resp.status();
    *log.status.lock().unwrap_or_else(|p| p.into_inner()) = status.as_u16();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&id) {
        h.insert("x-request-id", v);
    }
    if let Some(v) = allow_origin {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("x-request-id, retry-after"),
        );
    }
    if app.cors.enabled() && !app.cors.any {
        h.append(header::VARY, HeaderValue::from_static("origin"));
    }
    if status == StatusCode::SERVICE_UNAVAILABLE && !h.contains_key(header::RETRY_AFTER) {
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    app.metrics.request(route, status.as_u16());
    resp
}

/// The answer to a CORS preflight: 204 with what may be sent, or 403 naming the origin refused.
fn preflight_answer(allowed: bool, origin: Option<&str>) -> Response {
    if !allowed {
        return ApiError::bad(format!(
            "origin {:?} may not call this server from a browser: start it with --cors-origin ORIGIN",
            origin.unwrap_or("")
        ))
        .with(StatusCode::FORBIDDEN, "invalid_request_error", "cors_origin_not_allowed")
        .into_response();
    }
    (
        StatusCode::NO_CONTENT,
        [
            (header::ACCESS_CONTROL_ALLOW_METHODS, "GET, POST, OPTIONS"),
            // Listed by name: a wildcard does not cover Authorization.
            (
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                "authorization, content-type, x-request-id, openai-organization, openai-project, \
                 x-stainless-arch, x-stainless-lang, x-stainless-os, x-stainless-package-version, \
                 x-stainless-retry-count, x-stainless-runtime, x-stainless-runtime-version, \
                 x-stainless-timeout, x-stainless-helper-method",
            ),
            (header::ACCESS_CONTROL_MAX_AGE, "600"),
        ],
    )
        .into_response()
}

/// Constant-time comparison of the bearer token with the key.
fn authorized(headers: &HeaderMap, key: &str) -> bool {
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (token.trim().as_bytes(), key.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::{Cors, allowed_hosts, host_name};

    #[test]
    fn host_names_are_read_without_their_port() {
        assert_eq!(host_name("127.0.0.1:8080"), "127.0.0.1");
        assert_eq!(host_name("LocalHost"), "localhost");
        assert_eq!(host_name("[::1]:80"), "::1");
        assert_eq!(host_name("evil.example:8080"), "evil.example");
        let a = allowed_hosts("0.0.0.0", &["box.lan".into()]);
        assert!(a.contains(&"box.lan".to_string()) && !a.contains(&"0.0.0.0".to_string()));
        assert!(allowed_hosts("192.168.1.5", &[]).contains(&"192.168.1.5".to_string()));
    }

    #[test]
    fn cors_origins_are_checked_and_matched_exactly() {
        let c = Cors::new(&["https://App.example".into(), "http://localhost:5173".into()]).unwrap();
        assert!(c.allow("https://app.example").is_some());
        assert!(c.allow("http://localhost:5173").is_some());
        assert!(c.allow("https://app.example.evil").is_none());
        assert!(c.allow("http://localhost:5174").is_none());
        assert!(
            Cors::new(&["*".into()])
                .unwrap()
                .allow("https://x")
                .is_some()
        );
        assert!(Cors::new(&["app.example".into()]).is_err());
        assert!(Cors::new(&["https://app.example/path".into()]).is_err());
        assert!(!Cors::new(&[]).unwrap().enabled());
    }
}
