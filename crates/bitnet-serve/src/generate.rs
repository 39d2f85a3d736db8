//! The generating routes: `/v1/chat/completions` and `/v1/completions`, answered as one JSON body or as
//! server-sent events.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bitnet_model::Backend;
use bitnet_runtime::scheduler::Bounded;
use bitnet_runtime::scheduler::{Event, Finish, Job, Refused};
use serde_json::{Value, json};
use tokio::sync::mpsc::Receiver;

use crate::api::{self, ApiError, Common};
use crate::request::{self, Prompt, Unknown};
use crate::{App, unix_now};

impl App {
    /// Unknown fields: a 400, or with `--lenient` a warning; accepted fields that change nothing: a debug
    /// line, so a user who wonders why `user` does nothing can find out with `-v`.
    fn screen(&self, route: &str, unknown: &Unknown, unused: &[&str]) -> Result<(), ApiError> {
        unknown.check(self.lenient, route)?;
        if !unused.is_empty() {
            tracing::warn!("{route}: accepted but not used here: {}", unused.join(", "));
        }
        Ok(())
    }
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

/// Runs `f` (rendering and tokenizing) off the async runtime, at most one job per core: a burst of large
/// requests queues here, before the expensive work, instead of running on an unbounded pool. Its error
/// names `param`.
async fn tokenize(
    app: &App,
    param: &'static str,
    f: impl FnOnce(&bitnet_runtime::Engine) -> anyhow::Result<Vec<u32>> + Send + 'static,
) -> Result<Vec<u32>, ApiError> {
    let _permit = app
        .tokenizing
        .acquire()
        .await
        .map_err(|_| ApiError::bad("shutting down"))?;
    let engine = app.engine.clone();
    tokio::task::spawn_blocking(move || f(&engine))
        .await
        .map_err(|e| ApiError::bad(format!("tokenizing failed: {e}")))?
        .map_err(|e| ApiError::param(param, format!("{e:#}")))
}

pub(crate) async fn chat(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let run = async {
        let req = request::parse_chat(api::parse_body(&body_bytes(body)?)?)?;
        app.screen("/v1/chat/completions", &req.unknown(), &req.unused())?;
        req.refusals()?;
        let common = api::common(&req.common, req.chat.max_completion_tokens, &app.defaults)?;
        if req.chat.logprobs == Some(true) || req.chat.top_logprobs.is_some_and(|c| c.0 > 0) {
            return Err(ApiError::param(
                "logprobs",
                "`logprobs` is not supported yet",
            ));
        }
        let messages = req.messages()?;
        let ids = tokenize(&app, "messages", move |e| e.encode_chat(&messages)).await?;
        generate(&app, common, ids, Kind::Chat).await
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

pub(crate) async fn completions(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let run = async {
        let req = request::parse_completion(api::parse_body(&body_bytes(body)?)?)?;
        app.screen("/v1/completions", &req.unknown(), &req.unused())?;
        req.refusals()?;
        let common = api::common(&req.common, None, &app.defaults)?;
        if req.completion.logprobs.is_some() {
            return Err(ApiError::param(
                "logprobs",
                "`logprobs` is not supported yet",
            ));
        }
        let ids = match req.prompt()? {
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
                tokenize(&app, "prompt", move |e| {
                    e.check_length(&text)?;
                    Ok(e.tokenizer.encode_prompt(&text)?)
                })
                .await?
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

/// Events a client's stream may hold unread (a streamed token is one); past it the client counts as gone
/// and its sequence is cancelled, freeing the slot.
const CLIENT_BUFFER: usize = 1024;

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
    let vocab = app.engine.model.config().vocab_size;
    if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
        return Err(ApiError::param(
            if kind == Kind::Chat {
                "messages"
            } else {
                "prompt"
            },
            format!(
                "the text holds token id {bad}, which the model cannot embed (its vocabulary is 0..{vocab}): \
                 the tokenizer has a token the model lacks"
            ),
        ));
    }
    let mut params = common.params.clone();
    // A huge max_tokens is bounded by the room left in the context (finish_reason `length` there).
    params.max_tokens = common
        .max_tokens
        .unwrap_or(params.max_tokens)
        .min(ctx - ids.len());
    let (worker, model) = app.worker(common.model.as_deref())?;
    let (tx, rx) = Bounded::channel(CLIENT_BUFFER);
    let prompt_tokens = ids.len();
    worker
        .submit(Job {
            prompt: ids,
            params,
            stops: common.stops.clone(),
            events: Box::new(tx),
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
    mut rx: Receiver<Event>,
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
fn sse(ch: Chunks, rx: Receiver<Event>) -> Response {
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
