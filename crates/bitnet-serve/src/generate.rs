//! The generating routes: `/v1/chat/completions` and `/v1/completions`, answered as one JSON body or as
//! server-sent events.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use bitnet_model::Backend;
use bitnet_runtime::scheduler::Bounded;
use bitnet_runtime::scheduler::{Event, Finish, Job, Refused};
use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::mpsc::Receiver;

use crate::api::{self, ApiError, Common};
use crate::request::{self, Count, Prompt, Unknown};
use crate::respond::{Choice, Chunks, Kind, calls_reason, failed};
use crate::tools::ToolSetup;
use crate::tools::parse::{CallFormat, CallScanner};
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
pub(crate) fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
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

/// Renders and tokenizes off the async runtime ([`crate::endpoints::blocking`]); the error names `param`.
async fn tokenize(
    app: &App,
    param: &'static str,
    f: impl FnOnce(&bitnet_runtime::Engine) -> anyhow::Result<Vec<u32>> + Send + 'static,
) -> Result<Vec<u32>, ApiError> {
    crate::endpoints::blocking(app, param, f).await
}

/// One constraint per sequence (`n`) for the last of `specs` (from `response_format` or `tools`, each
/// with the field it came from), compiled off the async runtime like tokenizing; the others are only
/// compiled, so a schema that does not compile is a 400 naming its field. The grammar engine is built on
/// first use.
async fn constrain(
    app: &Arc<App>,
    specs: Vec<(bitnet_grammar::ConstraintSpec, String)>,
    n: usize,
) -> Result<Vec<Box<dyn bitnet_chat::TokenConstraint>>, ApiError> {
    let _permit = app
        .tokenizing
        .acquire()
        .await
        .map_err(|_| ApiError::bad("shutting down"))?;
    let app = app.clone();
    tokio::task::spawn_blocking(move || {
        let first = specs.first().map_or("response_format", |s| s.1.as_str());
        let grammar = app
            .grammar
            .get_or_init(|| {
                let e = &app.engine;
                bitnet_grammar::GrammarEngine::new(
                    e.tokenizer.hf(),
                    &e.stop_ids,
                    e.model.config().vocab_size,
                )
                .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| ApiError::param(first, e.clone()))?;
        let mut last = None;
        for (spec, field) in &specs {
            let c = grammar
                .constraint(spec, field)
                .map_err(|e| ApiError::param(field, e.to_string()))?;
            last = Some(c);
        }
        Ok(last
            .map(|c| {
                (0..n)
                    .map(|_| Box::new(c.clone()) as Box<dyn bitnet_chat::TokenConstraint>)
                    .collect()
            })
            .unwrap_or_default())
    })
    .await
    .map_err(|e| ApiError::bad(format!("compiling the grammar failed: {e}")))?
}

pub(crate) async fn chat(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let run = async {
        let req = request::parse_chat(api::parse_body(&body_bytes(body)?)?)?;
        app.screen("/v1/chat/completions", &req.unknown(), &req.unused())?;
        req.refusals()?;
        let spec = req.constraint_spec()?;
        let tools = req.tool_setup()?;
        let vocab = app.engine.model.config().vocab_size;
        let mut common = api::common(
            &req.common,
            req.chat.max_completion_tokens,
            &app.defaults,
            vocab,
        )?;
        common.logprobs = match (req.chat.logprobs, req.chat.top_logprobs) {
            (Some(true), None) => Some(0),
            (Some(true), Some(Count(k))) if k <= 20 => Some(k as usize),
            (Some(true), Some(Count(k))) => {
                return Err(ApiError::param(
                    "top_logprobs",
                    format!("`top_logprobs` must be in 0..=20, not {k}"),
                ));
            }
            (_, Some(_)) => {
                return Err(ApiError::param(
                    "top_logprobs",
                    "`top_logprobs` needs `logprobs: true`",
                ));
            }
            _ => None,
        };
        let prompt = req.messages(tools.as_ref(), app.engine.template_reads_tools())?;
        let ids = tokenize(&app, "messages", move |e| prompt.encode(e)).await?;
        let specs = match &tools {
            // Each tool's schema on its own first, so the 400 names the tool at fault.
            Some(t) => {
                let mut specs: Vec<_> = t
                    .tools
                    .iter()
                    .enumerate()
                    .map(|(i, d)| {
                        (
                            bitnet_grammar::ConstraintSpec::json_schema(d.parameters.clone()),
                            format!("tools[{i}].function.parameters"),
                        )
                    })
                    .collect();
                specs.push((t.constraint_spec(spec.as_ref()), "tools".to_string()));
                specs
            }
            None => spec
                .map(|s| vec![(s, "response_format".to_string())])
                .unwrap_or_default(),
        };
        let constraints = if specs.is_empty() {
            Vec::new()
        } else {
            constrain(&app, specs, common.n).await?
        };
        let format = tools.as_ref().map(ToolSetup::call_format);
        generate(&app, common, ids, Kind::Chat, constraints, format).await
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
        let vocab = app.engine.model.config().vocab_size;
        let mut common = api::common(&req.common, None, &app.defaults, vocab)?;
        common.logprobs = match req.completion.logprobs {
            None => None,
            Some(Count(k)) if k <= 5 => Some(k as usize),
            Some(Count(k)) => {
                return Err(ApiError::param(
                    "logprobs",
                    format!("`logprobs` must be in 0..=5, not {k}"),
                ));
            }
        };
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
        generate(&app, common, ids, Kind::Text, Vec::new(), None).await
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
    mut constraints: Vec<Box<dyn bitnet_chat::TokenConstraint>>,
    tools: Option<CallFormat>,
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
    if common.logprobs.is_some() && model == app.reference_id {
        return Err(ApiError::param(
            "logprobs",
            "log-probabilities are reported by the packed model only, not the FP32 reference",
        ));
    }
    let prompt_tokens = ids.len();
    // `n` sequences, each its own job (the scheduler batches them) with the next seed.
    let mut receivers = Vec::with_capacity(common.n);
    for i in 0..common.n {
        let (tx, rx) = Bounded::channel(CLIENT_BUFFER);
        let mut params = params.clone();
        params.seed = params.seed.wrapping_add(i as u64);
        worker
            .submit(Job {
                prompt: ids.clone(),
                params,
                stops: common.stops.clone(),
                constraint: constraints.pop(),
                events: Box::new(tx),
                received: Instant::now(),
                logprobs: common.logprobs,
            })
            .map_err(|r| match r {
                Refused::QueueFull => {
                    ApiError::bad("the server is busy: its queue is full; retry shortly").with(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "server_error",
                        "queue_full",
                    )
                }
                Refused::Stopped => ApiError::bad("the engine has stopped: restart the server")
                    .with(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "server_error",
                        "engine_stopped",
                    ),
            })?;
        receivers.push(rx);
    }
    let ch = Chunks {
        id: request_id(kind),
        created: unix_now(),
        model: model.to_string(),
        kind,
        include_usage: common.include_usage,
        logprobs: common.logprobs.is_some(),
        engine: app.engine.clone(),
        log: crate::guard::current(),
        tools,
    };
    if common.stream {
        Ok(sse(ch, receivers))
    } else {
        collect(ch, receivers, prompt_tokens).await
    }
}

async fn collect(
    ch: Chunks,
    receivers: Vec<Receiver<Event>>,
    prompt_tokens: usize,
) -> Result<Response, ApiError> {
    let mut choices = Vec::with_capacity(receivers.len());
    for mut rx in receivers {
        let mut c = Choice::default();
        loop {
            match rx.recv().await {
                Some(Event::Text(t)) => c.text.push_str(&t),
                Some(Event::Logprobs(lp)) => c.logprobs.push(lp),
                Some(Event::Done(f)) => {
                    if let Some(l) = &ch.log {
                        l.add_tokens(f.prompt_tokens, f.completion_tokens);
                    }
                    c.finish = Some(f);
                    break;
                }
                Some(Event::Failed(m)) => return Err(failed(m)),
                None => {
                    return Err(failed(format!(
                        "the engine stopped before finishing the request ({prompt_tokens} prompt tokens)"
                    )));
                }
            }
        }
        choices.push(c);
    }
    Ok(axum::Json(ch.whole(&choices)).into_response())
}

/// Server-sent events in OpenAI's chunk format (every choice's, as they come), ending with `data: [DONE]`,
/// with a comment line every 15 s while nothing is sent. When the client goes away the body (and with it
/// the receivers) is dropped, which cancels the jobs at the engine's next step.
fn sse(ch: Chunks, receivers: Vec<Receiver<Event>>) -> Response {
    let n = receivers.len();
    let events =
        futures_util::stream::select_all(receivers.into_iter().enumerate().map(|(i, rx)| {
            futures_util::stream::unfold(rx, move |mut rx| async move {
                rx.recv().await.map(|e| ((i, e), rx))
            })
            .boxed()
        }));
    let mut first = Vec::new();
    if ch.kind == Kind::Chat {
        for i in 0..n {
            // With tools the first chunk's content is null: calls may follow instead of text.
            let text = if ch.tools.is_some() { None } else { Some("") };
            first.push(ch.chunk(i, text, true, None, Value::Null));
        }
    }
    let scanners = (0..n)
        .map(|_| ch.tools.as_ref().map(CallScanner::new))
        .collect();
    let state = StreamState {
        scanners,
        ch,
        pending: vec![Vec::new(); n],
        offsets: vec![0; n],
        finishes: vec![None; n],
        done: false,
    };
    let head = futures_util::stream::iter(first.into_iter().map(|v| sse_json(&v)));
    let body = futures_util::stream::unfold((events, state), |(mut events, mut st)| async move {
        loop {
            if st.done {
                return None;
            }
            match events.next().await {
                Some((i, e)) => {
                    if let Some(out) = st.event(i, e) {
                        return Some((out, (events, st)));
                    }
                }
                None => {
                    st.done = true;
                    return Some((st.end(), (events, st)));
                }
            }
        }
    })
    .flat_map(futures_util::stream::iter);
    let stream = head.chain(body).map(Ok::<_, Infallible>);
    (
        [("x-accel-buffering", "no")],
        Sse::new(stream).keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15))),
    )
        .into_response()
}

fn sse_json(v: &Value) -> SseEvent {
    SseEvent::default().data(v.to_string())
}

/// What the event stream of one request has seen.
struct StreamState {
    ch: Chunks,
    /// Log-probabilities not yet sent, per choice (they go with the next text of the choice).
    pending: Vec<Vec<bitnet_chat::TokenLogprobs>>,
    /// Per choice: the length of its text so far (text completions' `text_offset`).
    offsets: Vec<usize>,
    finishes: Vec<Option<Finish>>,
    /// Per choice, with tools: the reader of calls.
    scanners: Vec<Option<CallScanner>>,
    done: bool,
}

impl StreamState {
    /// The server-sent events for choice `i`'s event `e` (none while log-probabilities wait for text).
    fn event(&mut self, i: usize, e: Event) -> Option<Vec<SseEvent>> {
        match e {
            Event::Logprobs(lp) => {
                self.pending[i].push(lp);
                None
            }
            Event::Text(t) => {
                if let Some(sc) = &mut self.scanners[i] {
                    let pieces = sc.push(&t);
                    return self.pieces(i, &pieces);
                }
                let lps = std::mem::take(&mut self.pending[i]);
                let lp = self.ch.logprobs_json(&lps, &mut self.offsets[i]);
                Some(vec![sse_json(&self.ch.chunk(i, Some(&t), false, None, lp))])
            }
            Event::Done(f) => {
                let mut out = Vec::new();
                let mut reason = api::finish_reason(f.stop);
                if let Some(sc) = &mut self.scanners[i] {
                    let pieces = sc.finish();
                    reason = calls_reason(reason, sc.calls());
                    out.extend(self.pieces(i, &pieces).unwrap_or_default());
                }
                let lps = std::mem::take(&mut self.pending[i]);
                let text = if self.ch.kind == Kind::Chat {
                    None
                } else {
                    Some("")
                };
                let lp = if lps.is_empty() {
                    Value::Null
                } else {
                    self.ch.logprobs_json(&lps, &mut self.offsets[i])
                };
                let last = self.ch.chunk(i, text, false, Some(reason), lp);
                if let Some(l) = &self.ch.log {
                    l.add_tokens(f.prompt_tokens, f.completion_tokens);
                }
                self.finishes[i] = Some(f);
                out.push(sse_json(&last));
                Some(out)
            }
            Event::Failed(m) => {
                self.done = true;
                Some(vec![
                    sse_json(&failed(m).body()),
                    SseEvent::default().data("[DONE]"),
                ])
            }
        }
    }

    /// The events for pieces the call scanner read from choice `i`'s text; pending log-probabilities go
    /// with the first (none while the scanner holds the text back).
    fn pieces(&mut self, i: usize, pieces: &[crate::tools::parse::Piece]) -> Option<Vec<SseEvent>> {
        if pieces.is_empty() {
            return None;
        }
        let lps = std::mem::take(&mut self.pending[i]);
        let mut lp = self.ch.logprobs_json(&lps, &mut self.offsets[i]);
        Some(
            pieces
                .iter()
                .map(|p| sse_json(&self.ch.piece_chunk(i, p, std::mem::take(&mut lp))))
                .collect(),
        )
    }

    /// The end of the stream: the usage chunk if asked for, and `[DONE]`; an error if a choice never ended.
    fn end(&self) -> Vec<SseEvent> {
        if self.finishes.iter().any(Option::is_none) {
            return vec![sse_json(
                &failed("the engine stopped before finishing the request".into()).body(),
            )];
        }
        let mut out = Vec::new();
        if self.ch.include_usage {
            let fins: Vec<&Finish> = self.finishes.iter().flatten().collect();
            out.push(sse_json(&self.ch.usage_chunk(&fins)));
        }
        out.push(SseEvent::default().data("[DONE]"));
        out
    }
}
