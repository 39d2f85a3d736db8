//! `bitnet serve`: an OpenAI-compatible HTTP API and a web chat page.
//!
//! The HTTP side (axum on a small tokio runtime) parses requests, renders chat templates and tokenizes
//! (on tokio's blocking pool), then hands jobs to the workers of `bitnet_runtime::scheduler`, which own
//! the model on their own threads and stream text back over channels.

mod api;
mod conn;
mod endpoints;
mod generate;
mod guard;
mod request;
mod respond;
mod tools;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use bitnet_chat::SamplingParams;
use serde_json::{Value, json};

use bitnet_runtime::metrics::Metrics;
use bitnet_runtime::scheduler::{self, Worker};
use bitnet_runtime::sys::proc_status_bytes;
use bitnet_runtime::{Engine, LoadOptions, Provider, SamplingOverrides};

use api::ApiError;
use generate::{chat, completions};

const PAGE: &str = include_str!("page.html");
const PAGE_JS: &str = include_str!("page.js");
const MARKDOWN_JS: &str = include_str!("markdown.js");

/// How long open requests may run on after Ctrl-C or SIGTERM.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Everything the handlers share.
struct App {
    engine: Arc<Engine>,
    /// The grammar engine for `response_format`, built on the first request that needs it (its token trie
    /// takes a second or two on a 128k vocabulary), or why it cannot be built.
    grammar: std::sync::OnceLock<Result<Arc<bitnet_grammar::GrammarEngine>, String>>,
    model_id: String,
    reference_id: String,
    packed: Worker,
    reference: Option<Worker>,
    packed_label: String,
    defaults: SamplingParams,
    api_key: Option<String>,
    /// Host names (lower case, no port) requests may name; with `any_ip`, any IP literal too.
    hosts: Vec<String>,
    any_ip: bool,
    /// One permit per core: the tokenizing jobs that may run at once.
    tokenizing: tokio::sync::Semaphore,
    metrics: Arc<Metrics>,
    created: u64,
    parallel: usize,
    /// Unknown request fields are ignored with a warning instead of refused.
    lenient: bool,
    /// The origins browser pages may call from.
    cors: guard::Cors,
    /// Held while an embedding runs (one at a time).
    embedding: tokio::sync::Mutex<()>,
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A name for the model: the file's stem, or the last part of a folder or repo id.
fn model_id(model: &str) -> String {
    let p = std::path::Path::new(model.trim_end_matches('/'));
    let name = if p.is_file() {
        p.file_stem()
    } else {
        p.file_name()
    };
    name.map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "bitnet".into())
}

/// What `bitnet serve` is told.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// A `.bitnet` file, or a Hugging Face folder or repo id.
    pub model: String,
    /// How to load it.
    pub load: LoadOptions,
    /// Address to listen on.
    pub host: String,
    /// Port (0: any free port; the address is printed).
    pub port: u16,
    /// Sequences decoded together.
    pub parallel: usize,
    /// Requests that may wait for a free sequence; past it the server answers 503.
    pub max_queue: usize,
    /// Largest request body in bytes; past it the server answers 413.
    pub max_body: usize,
    /// A Hugging Face checkpoint of the same model to offer as the FP32 reference backend.
    pub reference: Option<String>,
    /// Required as `Authorization: Bearer KEY` on /v1 and /metrics.
    pub api_key: Option<String>,
    /// Host names requests may use besides the loopback names and `host` (DNS-rebinding defence).
    pub allow_hosts: Vec<String>,
    /// Open connections at most (past it, new ones are closed at once).
    pub max_connections: usize,
    /// Seconds a client has to send a request's head.
    pub header_timeout: std::time::Duration,
    /// Ignore unknown request fields (one warning line each) instead of answering 400.
    pub lenient: bool,
    /// Origins (`https://app.example`, or `*`) whose pages may call the API from a browser (CORS).
    pub cors_origins: Vec<String>,
}

/// Loads the model and serves until Ctrl-C or SIGTERM.
pub fn run(args: ServeOptions, provider: &dyn Provider) -> anyhow::Result<()> {
    if args.parallel == 0 {
        anyhow::bail!("--parallel must be at least 1");
    }
    if args.max_connections == 0 {
        anyhow::bail!("--max-connections must be at least 1");
    }
    if args.header_timeout.is_zero() {
        anyhow::bail!("--header-timeout must be at least 1 second");
    }
    if args.max_queue == 0 {
        anyhow::bail!(
            "--max-queue must be at least 1: it counts the requests waiting for a sequence, and a request \
             waits briefly even when one is free"
        );
    }
    let cors = guard::Cors::new(&args.cors_origins)?;
    let engine = Arc::new(Engine::open(&args.model, &args.load, provider)?);
    engine.check_sequences(args.parallel)?;
    let defaults = engine.sampling(&SamplingOverrides::default())?;
    let metrics = Arc::new(Metrics::default());
    let model_id = model_id(&args.model);
    let packed_label = format!(
        "2-bit packed · {} · {} thread{}",
        engine.model.kernels().name,
        engine.model.threads(),
        if engine.model.threads() == 1 { "" } else { "s" }
    );
    let packed = scheduler::spawn_packed(
        engine.clone(),
        args.parallel,
        args.max_queue,
        metrics.clone(),
    )
    .context("starting the engine thread")?;
    let reference = match &args.reference {
        None => None,
        Some(dir) => {
            tracing::info!("loading the FP32 reference from {dir}");
            let rm = bitnet_reference::ReferenceModel::load(
                dir,
                &bitnet_convert::HubEnv::from_process(),
            )
            .with_context(|| format!("--reference {dir}"))?;
            rm.check_same_model(&engine.file)
                .with_context(|| format!("--reference {dir}"))?;
            Some(
                scheduler::spawn_single(
                    engine.clone(),
                    Box::new(rm),
                    args.max_queue,
                    metrics.clone(),
                )
                .context("starting the reference thread")?,
            )
        }
    };
    let app = Arc::new(App {
        grammar: std::sync::OnceLock::new(),
        reference_id: format!("{model_id}:fp32"),
        model_id,
        engine,
        packed,
        reference,
        packed_label,
        defaults,
        api_key: args.api_key.clone().filter(|k| !k.is_empty()),
        hosts: guard::allowed_hosts(&args.host, &args.allow_hosts),
        any_ip: matches!(args.host.as_str(), "0.0.0.0" | "::" | "[::]"),
        tokenizing: tokio::sync::Semaphore::new(bitnet_runtime::sys::cores()),
        metrics,
        created: unix_now(),
        parallel: args.parallel,
        lenient: args.lenient,
        cors,
        embedding: tokio::sync::Mutex::new(()),
    });
    if args.cors_origins.iter().any(|o| o.trim() == "*") && app.api_key.is_none() {
        tracing::warn!(
            "--cors-origin '*' without --api-key: any web page this machine's browser opens can use this \
             server"
        );
    }
    let router = router(app.clone(), args.max_body);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let served = rt.block_on(async move {
        let addr = format!("{}:{}", args.host, args.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        let local: SocketAddr = listener.local_addr()?;
        tracing::info!(
            "serving {} ({}{}) on http://{local}/ (OpenAI API under /v1; Ctrl-C stops)",
            app.model_id,
            app.packed_label,
            if app.reference.is_some() {
                ", and the FP32 reference"
            } else {
                ""
            }
        );
        if !local.ip().is_loopback() && app.api_key.is_none() {
            tracing::warn!("listening beyond this machine without --api-key");
        }
        // On Ctrl-C or SIGTERM: stop accepting, give open requests a few seconds, then exit (a stream
        // can run for minutes; its sequence ends with the process).
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let limits = conn::Limits {
            max_connections: args.max_connections,
            header_timeout: args.header_timeout,
        };
        let server = tokio::spawn(conn::serve(listener, router, stopped, limits));
        shutdown().await;
        let _ = stop.send(true);
        let slots = server.await.context("the server task")?;
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while slots.available_permits() < args.max_connections {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::info!(
                "requests still open after {} s: closing them",
                SHUTDOWN_GRACE.as_secs()
            );
        }
        Ok(())
    });
    // Open streams and idle blocking threads are not waited for.
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    served
}

async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}

fn router(app: Arc<App>, max_body: usize) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/page.js", get(|| async { script(PAGE_JS) }))
        .route("/markdown.js", get(|| async { script(MARKDOWN_JS) }))
        .route("/health", get(health))
        .route("/stats", get(stats))
        .route("/metrics", get(metrics_text))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(endpoints::embeddings))
        .route(
            "/v1/responses",
            post(endpoints::responses).get(endpoints::responses),
        )
        .route("/tokenize", post(endpoints::tokenize))
        .route("/detokenize", post(endpoints::detokenize))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(app.clone(), guard::guard))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(app)
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

fn script(js: &'static str) -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        js,
    )
        .into_response()
}

async fn health() -> axum::Json<Value> {
    axum::Json(json!({"status": "ok"}))
}

async fn not_found(req: Request) -> ApiError {
    ApiError::bad(format!("no route {} {}", req.method(), req.uri().path())).with(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "not_found",
    )
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::bad(format!(
        "{} is not allowed on {}",
        req.method(),
        req.uri().path()
    ))
    .with(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        "method_not_allowed",
    )
}

impl App {
    fn model_entries(&self) -> Vec<Value> {
        let mut ids = vec![self.model_id.clone()];
        if self.reference.is_some() {
            ids.push(self.reference_id.clone());
        }
        ids.into_iter()
            .map(|id| {
                json!({"id": id, "object": "model", "created": self.created, "owned_by": "bitnet",
                       "context_length": self.engine.context(), "max_model_len": self.engine.context()})
            })
            .collect()
    }

    /// The worker for a request's `model`: the reference id selects the FP32 reference; any other name
    /// (clients often send a placeholder) the packed model.
    fn worker(&self, model: Option<&str>) -> Result<(&Worker, &str), ApiError> {
        if model == Some(self.reference_id.as_str()) {
            return match &self.reference {
                Some(w) => Ok((w, &self.reference_id)),
                None => Err(ApiError::param(
                    "model",
                    "the FP32 reference is not loaded: start the server with --reference",
                )),
            };
        }
        Ok((&self.packed, &self.model_id))
    }
}

async fn models(State(app): State<Arc<App>>) -> axum::Json<Value> {
    axum::Json(json!({"object": "list", "data": app.model_entries()}))
}

async fn model(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    match app.model_entries().into_iter().find(|m| m["id"] == id) {
        Some(m) => axum::Json(m).into_response(),
        None => ApiError::param("model", format!("no model `{id}`"))
            .with(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "model_not_found",
            )
            .into_response(),
    }
}

async fn stats(State(app): State<Arc<App>>) -> axum::Json<Value> {
    let mut backends =
        vec![json!({"id": app.model_id, "kind": "packed", "label": app.packed_label})];
    if app.reference.is_some() {
        backends
            .push(json!({"id": app.reference_id, "kind": "reference", "label": "FP32 reference"}));
    }
    let queued = app.packed.queued() + app.reference.as_ref().map_or(0, Worker::queued);
    axum::Json(json!({
        "model": app.model_id,
        "context": app.engine.context(),
        "parallel": app.parallel,
        "auth": app.api_key.is_some(),
        "backends": backends,
        "rss_bytes": proc_status_bytes("VmRSS"),
        "peak_rss_bytes": proc_status_bytes("VmHWM"),
        "active": app.metrics.active(),
        "queued": queued,
        "requests_total": app.metrics.requests_total(),
        "completion_tokens_total": app.metrics.completion_tokens(),
        "decode_tok_s": app.metrics.decode_tok_s(),
    }))
}

async fn metrics_text(State(app): State<Arc<App>>) -> Response {
    let mut queues = vec![("packed", app.packed.queued())];
    if let Some(r) = &app.reference {
        queues.push(("reference", r.queued()));
    }
    let body = app.metrics.render(&queues, proc_status_bytes("VmRSS"));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// The constraint `tool_choice: "auto"` decodes under for `tools` (a request's JSON array): what
/// benches/tool_grammar.rs measures.
#[doc(hidden)]
pub fn auto_tool_constraint(
    tools: serde_json::Value,
) -> Result<bitnet_grammar::ConstraintSpec, String> {
    let tools: Vec<tools::Tool> = serde_json::from_value(tools).map_err(|e| e.to_string())?;
    let setup = tools::ToolSetup::new(Some(&tools), Some(&tools::ToolChoice::Auto), None)
        .map_err(|e| format!("{e:?}"))?
        .ok_or("no tools")?;
    Ok(setup.constraint_spec(None))
}

/// One input of the request fuzz target, shared with the replay test CI runs on stable: the body of a
/// chat or text completion request through the parsers every request meets, a value or a 400, never a
/// panic.
#[doc(hidden)]
pub mod fuzzing {
    use bitnet_chat::SamplingParams;

    use crate::{api, request};

    /// `data` as a request body.
    pub fn request_body(data: &[u8]) {
        let Ok(m) = api::parse_body(data) else {
            return;
        };
        if let Ok(r) = request::parse_chat(m.clone()) {
            let setup = r.tool_setup().ok().flatten();
            let _ = (
                r.unknown(),
                r.refusals(),
                r.unused(),
                r.messages(setup.as_ref(), false),
                r.messages(setup.as_ref(), true),
            );
            if let Some(s) = &setup {
                let _ = (s.constraint_spec(None), s.call_format());
            }
            let _ = api::common(
                &r.common,
                r.chat.max_completion_tokens,
                &SamplingParams::default(),
                128,
            );
        }
        if let Ok(r) = request::parse_completion(m) {
            let _ = (r.unknown(), r.refusals(), r.unused(), r.prompt());
            let _ = api::common(&r.common, None, &SamplingParams::default(), 128);
        }
    }
}
