//! `bitnet serve`: an OpenAI-compatible HTTP API and a web chat page, in the one binary.
//!
//! The HTTP side (axum on a small tokio runtime) parses requests, renders chat templates and tokenizes
//! (on tokio's blocking pool), then hands jobs to the workers of [`scheduler`], which own the model on
//! their own threads and stream text back over channels.

mod api;
mod metrics;
mod scheduler;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use std::future::IntoFuture;

use anyhow::Context;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use bitnet_chat::SamplingParams;
use bitnet_model::Backend;
use serde_json::{Value, json};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use crate::Outcome;
use crate::cli::{GenArgs, ServeArgs};
use crate::engine::Engine;
use api::{ApiError, Common, Prompt};
use metrics::{Metrics, proc_status_bytes};
use scheduler::{Event, Finish, Job, Refused, Worker};

const PAGE: &str = include_str!("page.html");

/// How long open requests may run on after Ctrl-C or SIGTERM.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Everything the handlers share.
struct App {
    engine: Arc<Engine>,
    model_id: String,
    reference_id: String,
    packed: Worker,
    reference: Option<Worker>,
    packed_label: String,
    defaults: SamplingParams,
    api_key: Option<String>,
    metrics: Arc<Metrics>,
    created: u64,
    parallel: usize,
}

fn unix_now() -> u64 {
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

pub fn run(args: ServeArgs) -> anyhow::Result<Outcome> {
    if args.parallel == 0 {
        anyhow::bail!("--parallel must be at least 1");
    }
    let gen_args = GenArgs {
        temperature: None,
        top_k: None,
        top_p: None,
        min_p: None,
        repetition_penalty: None,
        seed: None,
        max_tokens: None,
        stop: Vec::new(),
        threads: args.threads,
        kernel: args.kernel.clone(),
        head: args.head,
    };
    let engine = Arc::new(Engine::open(&args.model, &gen_args)?);
    let defaults = engine.sampling(&gen_args)?;
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
            eprintln!("loading the FP32 reference from {dir}");
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
        reference_id: format!("{model_id}:fp32"),
        model_id,
        engine,
        packed,
        reference,
        packed_label,
        defaults,
        api_key: args.api_key.clone().filter(|k| !k.is_empty()),
        metrics,
        created: unix_now(),
        parallel: args.parallel,
    });
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
        eprintln!(
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
            eprintln!("warning: listening beyond this machine without --api-key");
        }
        // On Ctrl-C or SIGTERM: stop accepting, give open requests a few seconds, then exit (a stream
        // can run for minutes; its sequence ends with the process).
        let stop = Arc::new(tokio::sync::Notify::new());
        let stopped = stop.clone();
        let server = tokio::spawn(
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { stopped.notified().await })
                .into_future(),
        );
        shutdown().await;
        stop.notify_one();
        match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
            Ok(joined) => joined.context("the server task")?.context("serving"),
            Err(_) => {
                eprintln!(
                    "requests still open after {} s: closing them",
                    SHUTDOWN_GRACE.as_secs()
                );
                Ok(())
            }
        }
    });
    // Open streams and idle blocking threads are not waited for.
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    served?;
    Ok(Outcome::Success)
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
    eprintln!("shutting down");
}

fn router(app: Arc<App>, max_body: usize) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/health", get(health))
        .route("/stats", get(stats))
        .route("/metrics", get(metrics_text))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(app.clone(), guard))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(app)
}

const ROUTES: [&str; 7] = [
    "/",
    "/health",
    "/stats",
    "/metrics",
    "/v1/models",
    "/v1/chat/completions",
    "/v1/completions",
];

/// Checks the API key on `/v1/*` and `/metrics`, and counts every answer by route and status.
async fn guard(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let route = if ROUTES.contains(&path.as_str()) {
        path.as_str()
    } else if path.starts_with("/v1/models/") {
        "/v1/models/{id}"
    } else {
        "other"
    };
    let needs_key = path.starts_with("/v1/") || path == "/metrics";
    let resp = match &app.api_key {
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
        _ => next.run(req).await,
    };
    app.metrics.request(route, resp.status().as_u16());
    resp
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

async fn page() -> Html<&'static str> {
    Html(PAGE)
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
            .map(|id| json!({"id": id, "object": "model", "created": self.created, "owned_by": "bitnet"}))
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
        "rss_bytes": proc_status_bytes("VmRSS:"),
        "peak_rss_bytes": proc_status_bytes("VmHWM:"),
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
    let body = app.metrics.render(&queues, proc_status_bytes("VmRSS:"));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// The body, or the OpenAI error for why it could not be read (413 past `--max-body`).
fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|r| {
        let status = r.status();
        let e = ApiError::bad(r.body_text());
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::bad("the request body is larger than the server accepts (--max-body)").with(
                status,
                "invalid_request_error",
                "request_too_large",
            )
        } else {
            ApiError { status, ..e }
        }
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Text,
}

async fn chat(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Response {
    let run = async {
        let m = api::parse_body(&body_bytes(body)?)?;
        let common = api::parse_common(&m, &app.defaults)?;
        let messages = api::parse_messages(&m)?;
        let engine = app.engine.clone();
        let ids = tokio::task::spawn_blocking(move || engine.encode_chat(&messages))
            .await
            .map_err(|e| ApiError::bad(format!("rendering the chat failed: {e}")))?
            .map_err(|e| ApiError::param("messages", format!("{e:#}")))?;
        generate(&app, common, ids, Kind::Chat).await
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

async fn completions(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Response {
    let run = async {
        let m = api::parse_body(&body_bytes(body)?)?;
        let common = api::parse_common(&m, &app.defaults)?;
        if m.get("echo").and_then(Value::as_bool) == Some(true) {
            return Err(ApiError::param("echo", "`echo` is not supported"));
        }
        if m.get("logprobs")
            .is_some_and(|v| !v.is_null() && v != &json!(false))
        {
            return Err(ApiError::param("logprobs", "`logprobs` is not supported"));
        }
        let ids = match api::parse_prompt(&m)? {
            Prompt::Ids(ids) => {
                let vocab = app.engine.model.config().vocab_size;
                if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
                    return Err(ApiError::param(
                        "prompt",
                        format!("token id {bad} is outside the vocabulary (0..{vocab})"),
                    ));
                }
                ids
            }
            Prompt::Text(text) => {
                let engine = app.engine.clone();
                tokio::task::spawn_blocking(move || engine.tokenizer.encode_prompt(&text))
                    .await
                    .map_err(|e| ApiError::bad(format!("tokenizing failed: {e}")))?
                    .map_err(|e| ApiError::param("prompt", format!("{e:#}")))?
            }
        };
        if ids.is_empty() {
            return Err(ApiError::param("prompt", "`prompt` is empty"));
        }
        generate(&app, common, ids, Kind::Text).await
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn request_id(kind: Kind) -> String {
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let prefix = match kind {
        Kind::Chat => "chatcmpl",
        Kind::Text => "cmpl",
    };
    format!("{prefix}-{t:x}{n:04x}")
}

/// Queues the job and answers: a JSON body when it ends, or server-sent events as it goes.
async fn generate(
    app: &App,
    common: Common,
    ids: Vec<u32>,
    kind: Kind,
) -> Result<Response, ApiError> {
    let ctx = app.engine.context();
    if ids.len() >= ctx {
        return Err(ApiError::param(
            if kind == Kind::Chat { "messages" } else { "prompt" },
            format!(
                "the prompt is {} tokens, and the model's context holds {ctx} tokens for the prompt and the \
                 completion together: shorten it",
                ids.len()
            ),
        )
        .with(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "context_length_exceeded",
        ));
    }
    let mut params = common.params.clone();
    // A huge max_tokens is bounded by the room left in the context (finish_reason `length` there).
    params.max_tokens = common
        .max_tokens
        .unwrap_or(params.max_tokens)
        .min(ctx - ids.len());
    let (worker, model) = app.worker(common.model.as_deref())?;
    let (tx, rx) = unbounded_channel();
    let prompt_tokens = ids.len();
    worker
        .submit(Job {
            prompt: ids,
            params,
            stops: common.stops.clone(),
            events: tx,
            received: Instant::now(),
        })
        .map_err(|r| match r {
            Refused::QueueFull => {
                ApiError::bad("the server is busy: its queue is full; retry shortly").with(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    "queue_full",
                )
            }
            Refused::Stopped => ApiError::bad("the engine has stopped: restart the server").with(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "engine_stopped",
            ),
        })?;
    let ch = Chunks {
        id: request_id(kind),
        created: unix_now(),
        model: model.to_string(),
        kind,
        include_usage: common.include_usage,
    };
    if common.stream {
        Ok(sse(ch, rx))
    } else {
        collect(ch, rx, prompt_tokens).await
    }
}

/// Builds the response objects of one request.
struct Chunks {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
    include_usage: bool,
}

impl Chunks {
    fn object(&self, stream: bool) -> &'static str {
        match (self.kind, stream) {
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Chat, false) => "chat.completion",
            (Kind::Text, _) => "text_completion",
        }
    }

    fn chunk(&self, text: Option<&str>, role: bool, finish: Option<&str>) -> Value {
        let choice = match self.kind {
            Kind::Chat => {
                let mut delta = serde_json::Map::new();
                if role {
                    delta.insert("role".into(), json!("assistant"));
                }
                if let Some(t) = text {
                    delta.insert("content".into(), json!(t));
                }
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
            Kind::Text => {
                json!({"text": text.unwrap_or(""), "index": 0, "logprobs": null, "finish_reason": finish})
            }
        };
        let mut v = json!({
            "id": self.id,
            "object": self.object(true),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        });
        if self.include_usage {
            v["usage"] = Value::Null;
        }
        v
    }

    fn usage_chunk(&self, f: &Finish) -> Value {
        json!({
            "id": self.id,
            "object": self.object(true),
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": api::usage(f.prompt_tokens, f.cached_tokens, f.completion_tokens),
        })
    }

    fn whole(&self, text: &str, f: &Finish) -> Value {
        let reason = api::finish_reason(f.stop);
        let choice = match self.kind {
            Kind::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": null},
                "logprobs": null,
                "finish_reason": reason,
            }),
            Kind::Text => {
                json!({"text": text, "index": 0, "logprobs": null, "finish_reason": reason})
            }
        };
        json!({
            "id": self.id,
            "object": self.object(false),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": api::usage(f.prompt_tokens, f.cached_tokens, f.completion_tokens),
        })
    }
}

fn failed(message: String) -> ApiError {
    ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message,
        kind: "server_error",
        param: None,
        code: None,
    }
}

async fn collect(
    ch: Chunks,
    mut rx: UnboundedReceiver<Event>,
    prompt_tokens: usize,
) -> Result<Response, ApiError> {
    let mut text = String::new();
    while let Some(e) = rx.recv().await {
        match e {
            Event::Text(t) => text.push_str(&t),
            Event::Done(f) => return Ok(axum::Json(ch.whole(&text, &f)).into_response()),
            Event::Failed(m) => return Err(failed(m)),
        }
    }
    Err(failed(format!(
        "the engine stopped before finishing the request ({prompt_tokens} prompt tokens)"
    )))
}

fn sse_event(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`. When the client goes away the
/// body (and with it the receiver) is dropped, which cancels the job at the engine's next step.
fn sse(ch: Chunks, rx: UnboundedReceiver<Event>) -> Response {
    let mut first = VecDeque::new();
    if ch.kind == Kind::Chat {
        first.push_back(sse_event(&ch.chunk(Some(""), true, None)));
    }
    let state = (rx, first, false, ch);
    let stream =
        futures_util::stream::unfold(state, |(mut rx, mut out, mut done, ch)| async move {
            loop {
                if let Some(b) = out.pop_front() {
                    return Some((Ok::<_, Infallible>(b), (rx, out, done, ch)));
                }
                if done {
                    return None;
                }
                match rx.recv().await {
                    Some(Event::Text(t)) => {
                        out.push_back(sse_event(&ch.chunk(Some(&t), false, None)))
                    }
                    Some(Event::Done(f)) => {
                        let reason = api::finish_reason(f.stop);
                        let last = match ch.kind {
                            Kind::Chat => ch.chunk(None, false, Some(reason)),
                            Kind::Text => ch.chunk(Some(""), false, Some(reason)),
                        };
                        out.push_back(sse_event(&last));
                        if ch.include_usage {
                            out.push_back(sse_event(&ch.usage_chunk(&f)));
                        }
                        out.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
                        done = true;
                    }
                    Some(Event::Failed(m)) => {
                        out.push_back(sse_event(&failed(m).body()));
                        out.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
                        done = true;
                    }
                    None => {
                        out.push_back(sse_event(
                            &failed("the engine stopped before finishing the request".into())
                                .body(),
                        ));
                        done = true;
                    }
                }
            }
        });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| failed("building the stream failed".into()).into_response())
}
