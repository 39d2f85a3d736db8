//! The routes beside generation: `/tokenize` and `/detokenize` (llama-server's shapes), `/v1/embeddings`
//! (OpenAI's), and a clear 404 for the Responses API.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bitnet_model::Backend;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::App;
use crate::api::{self, ApiError};
use crate::generate::body_bytes;
use crate::request::{Unknown, typed};

/// `POST /tokenize`.
#[derive(Debug, Deserialize)]
struct TokenizeFields {
    /// The text.
    content: String,
    /// Add the model's BOS as a prompt gets it (default false).
    #[serde(default)]
    add_special: bool,
    /// Read special tokens' text as those tokens (default true, as llama-server).
    parse_special: Option<bool>,
    /// Answer `{id, piece}` pairs instead of bare ids.
    #[serde(default)]
    with_pieces: bool,
    #[serde(flatten)]
    unknown: Map<String, Value>,
}

/// `POST /detokenize`.
#[derive(Debug, Deserialize)]
struct DetokenizeFields {
    /// Token ids.
    tokens: Vec<u32>,
    #[serde(flatten)]
    unknown: Map<String, Value>,
}

/// `POST /v1/embeddings`.
#[derive(Debug, Deserialize)]
struct EmbeddingFields {
    /// A text, texts, token ids, or lists of token ids.
    input: EmbeddingInput,
    /// The model id (only the packed model embeds).
    model: Option<String>,
    /// `float` (default) or `base64` (little-endian f32, as OpenAI sends).
    encoding_format: Option<String>,
    /// Truncation to fewer dimensions (refused: the model's size is the only one).
    dimensions: Option<Value>,
    /// Accepted and not used.
    user: Option<String>,
    #[serde(flatten)]
    unknown: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum EmbeddingInput {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
    IdLists(Vec<Vec<u32>>),
}

/// Inputs per embeddings request at most (OpenAI allows 2048).
const MAX_INPUTS: usize = 2048;

fn fields<T: serde::de::DeserializeOwned>(
    app: &App,
    route: &str,
    body: Result<Bytes, BytesRejection>,
    unknown: impl FnOnce(&T) -> &Map<String, Value>,
) -> Result<T, ApiError> {
    let map = api::parse_body(&body_bytes(body)?)?;
    let t: T = typed(Value::Object(map))?;
    Unknown(unknown(&t).keys().cloned().collect()).check(app.lenient, route)?;
    Ok(t)
}

fn vocab(app: &App) -> usize {
    app.engine.model.config().vocab_size
}

fn check_ids(app: &App, param: &str, ids: &[u32]) -> Result<(), ApiError> {
    let vocab = vocab(app);
    match ids.iter().find(|&&t| t as usize >= vocab) {
        Some(bad) => Err(ApiError::param(
            param,
            format!("token id {bad} is outside the vocabulary (0..{vocab})"),
        )),
        None => Ok(()),
    }
}

/// Runs `f` (tokenizing, embedding) off the async runtime, at most one job per core: a burst of large
/// requests queues here, before the expensive work, instead of running on an unbounded pool. Its error is
/// a 400 naming `param`.
pub(crate) async fn blocking<T: Send + 'static>(
    app: &App,
    param: &'static str,
    f: impl FnOnce(&bitnet_runtime::Engine) -> anyhow::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    let _permit = app
        .tokenizing
        .acquire()
        .await
        .map_err(|_| ApiError::bad("shutting down"))?;
    let engine = app.engine.clone();
    tokio::task::spawn_blocking(move || f(&engine))
        .await
        .map_err(|e| ApiError::bad(format!("the work failed: {e}")))?
        .map_err(|e| ApiError::param(param, format!("{e:#}")))
}

pub(crate) async fn tokenize(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let run = async {
        let f: TokenizeFields = fields(&app, "/tokenize", body, |f: &TokenizeFields| &f.unknown)?;
        let special = f.parse_special.unwrap_or(true);
        let (with_pieces, add) = (f.with_pieces, f.add_special);
        let ids = blocking(&app, "content", move |e| {
            e.check_length(&f.content)?;
            let t = &e.tokenizer;
            let mut ids = if special {
                t.encode_raw(&f.content)?
            } else {
                t.encode_plain(&f.content)?
            };
            if add
                && let (true, Some(bos)) = (t.info().add_bos_token, t.info().bos_token_id)
                && ids.first() != Some(&bos)
            {
                ids.insert(0, bos);
            }
            let pieces = if with_pieces {
                ids.iter()
                    .map(|&id| Ok(json!({"id": id, "piece": piece(t, id)?})))
                    .collect::<anyhow::Result<Vec<Value>>>()?
            } else {
                ids.iter().map(|&id| json!(id)).collect()
            };
            Ok(pieces)
        })
        .await?;
        Ok::<_, ApiError>(axum::Json(json!({"tokens": ids})).into_response())
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

/// A token's text, or its bytes as numbers when they are not UTF-8 on their own (llama-server's form).
fn piece(t: &bitnet_chat::Tokenizer, id: u32) -> anyhow::Result<Value> {
    let bytes = t.token_bytes(id)?;
    Ok(match String::from_utf8(bytes) {
        Ok(s) => json!(s),
        Err(e) => json!(e.into_bytes()),
    })
}

pub(crate) async fn detokenize(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let run = async {
        let f: DetokenizeFields =
            fields(&app, "/detokenize", body, |f: &DetokenizeFields| &f.unknown)?;
        check_ids(&app, "tokens", &f.tokens)?;
        let text = blocking(&app, "tokens", move |e| {
            Ok(e.tokenizer.decode(&f.tokens)?)
        })
        .await?;
        Ok::<_, ApiError>(axum::Json(json!({"content": text})).into_response())
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

pub(crate) async fn embeddings(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let run = async {
        let f: EmbeddingFields = fields(&app, "/v1/embeddings", body, |f: &EmbeddingFields| {
            &f.unknown
        })?;
        if f.dimensions.is_some() {
            return Err(ApiError::param(
                "dimensions",
                format!(
                    "`dimensions` is not supported: embeddings have the model's {} dimensions",
                    app.engine.model.config().hidden_size
                ),
            ));
        }
        let base64 = match f.encoding_format.as_deref() {
            None | Some("float") => false,
            Some("base64") => true,
            Some(other) => {
                return Err(ApiError::param(
                    "encoding_format",
                    format!("`encoding_format` must be \"float\" or \"base64\", not {other:?}"),
                ));
            }
        };
        if f.user.is_some() {
            tracing::warn!("/v1/embeddings: accepted but not used here: user");
        }
        if f.model.as_deref() == Some(app.reference_id.as_str()) {
            return Err(ApiError::param(
                "model",
                "embeddings come from the packed model only, not the FP32 reference",
            ));
        }
        enum One {
            Text(String),
            Ids(Vec<u32>),
        }
        let inputs: Vec<One> = match f.input {
            EmbeddingInput::Text(s) => vec![One::Text(s)],
            EmbeddingInput::Texts(v) => v.into_iter().map(One::Text).collect(),
            EmbeddingInput::Ids(v) => vec![One::Ids(v)],
            EmbeddingInput::IdLists(v) => v.into_iter().map(One::Ids).collect(),
        };
        if inputs.is_empty() || inputs.len() > MAX_INPUTS {
            return Err(ApiError::param(
                "input",
                format!(
                    "`input` must hold 1 to {MAX_INPUTS} items, not {}",
                    inputs.len()
                ),
            ));
        }
        for (i, one) in inputs.iter().enumerate() {
            if let One::Ids(ids) = one {
                check_ids(&app, &format!("input[{i}]"), ids)?;
            }
        }
        // One embedding at a time: each runs the whole model over its input beside the generation
        // workers, whose pool it shares.
        let _one = app.embedding.lock().await;
        let mut data = Vec::with_capacity(inputs.len());
        let mut tokens = 0usize;
        for (i, one) in inputs.into_iter().enumerate() {
            let (v, n) = blocking(&app, "input", move |e| {
                let ids = match one {
                    One::Text(s) => {
                        e.check_length(&s)?;
                        e.tokenizer.encode_prompt(&s)?
                    }
                    One::Ids(ids) => ids,
                };
                Ok((e.embed(&ids)?, ids.len()))
            })
            .await
            .map_err(|e| ApiError::param(&format!("input[{i}]"), e.message))?;
            tokens += n;
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64_encode(&bytes))
            } else {
                json!(v)
            };
            data.push(json!({"object": "embedding", "index": i, "embedding": embedding}));
        }
        Ok(axum::Json(json!({
            "object": "list",
            "data": data,
            "model": app.model_id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }))
        .into_response())
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

/// Standard base64 with padding.
fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The Responses API is not served: a 404 that says what to use.
pub(crate) async fn responses() -> ApiError {
    ApiError::bad(
        "the Responses API (/v1/responses) is not supported by this server: use /v1/chat/completions",
    )
    .with(StatusCode::NOT_FOUND, "invalid_request_error", "not_found")
}
