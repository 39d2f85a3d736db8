//! The OpenAI wire format: errors, the shared sampling fields read into [`Common`] (the request bodies
//! themselves are typed in [`crate::request`]), and the pieces of responses.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bitnet_chat::SamplingParams;
use serde_json::{Map, Value, json};

use bitnet_runtime::StopReason;

use crate::request::{Count, F32, SamplingFields, Seed};

/// An error in OpenAI's format: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400: a bad parameter (named).
    pub fn param(param: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.to_string()),
            code: None,
        }
    }

    /// 400: a malformed request.
    pub fn bad(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: None,
        }
    }

    pub fn with(mut self, status: StatusCode, kind: &'static str, code: &'static str) -> ApiError {
        self.status = status;
        self.kind = kind;
        self.code = Some(code);
        self
    }

    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

/// What chat and text completions share.
#[derive(Debug, Clone)]
pub struct Common {
    pub model: Option<String>,
    pub stream: bool,
    pub include_usage: bool,
    pub params: SamplingParams,
    /// `max_tokens` / `max_completion_tokens` as asked (clamped to the context later).
    pub max_tokens: Option<usize>,
    pub stops: Vec<String>,
    /// Sequences to generate (`n`).
    pub n: usize,
    /// Report log-probabilities with this many alternatives per token.
    pub logprobs: Option<usize>,
}

/// The request body as a JSON object; malformed JSON and invalid UTF-8 are 400s that say where.
pub fn parse_body(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad(
            "the request body is empty: send a JSON object",
        ));
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(ApiError::bad(format!(
            "the request body must be a JSON object, not {}",
            kind_of(&other)
        ))),
        Err(e) => Err(ApiError::bad(format!(
            "the request body is not valid JSON: {e}"
        ))),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The sampling and streaming fields over the server's `defaults`, checked; `max_completion_tokens` is
/// chat's newer name of `max_tokens` (it wins when both are given).
pub fn common(
    f: &SamplingFields,
    max_completion_tokens: Option<Count>,
    defaults: &SamplingParams,
    vocab: usize,
) -> Result<Common, ApiError> {
    let mut p = defaults.clone();
    if let Some(F32(t)) = f.temperature {
        if t < 0.0 {
            return Err(ApiError::param(
                "temperature",
                format!("`temperature` must be >= 0 (0 is greedy), not {t}"),
            ));
        }
        p.temperature = t;
    }
    if let Some(F32(v)) = f.top_p {
        if !(0.0..=1.0).contains(&v) {
            return Err(ApiError::param(
                "top_p",
                format!("`top_p` must be in [0, 1] (0 is greedy), not {v}"),
            ));
        }
        // OpenAI reads top_p 0 as "only the most likely token".
        if v == 0.0 {
            p.temperature = 0.0;
        } else {
            p.top_p = v;
        }
    }
    if let Some(F32(v)) = f.min_p {
        if !(0.0..=1.0).contains(&v) {
            return Err(ApiError::param(
                "min_p",
                format!("`min_p` must be in [0, 1], not {v}"),
            ));
        }
        p.min_p = v;
    }
    if let Some(Count(v)) = f.top_k {
        p.top_k = usize::try_from(v).unwrap_or(usize::MAX);
    }
    if let Some(F32(v)) = f.repetition_penalty {
        if v <= 0.0 {
            return Err(ApiError::param(
                "repetition_penalty",
                format!("`repetition_penalty` must be > 0, not {v}"),
            ));
        }
        p.repetition_penalty = v;
    }
    for (name, v, slot) in [
        (
            "presence_penalty",
            f.presence_penalty,
            &mut p.presence_penalty,
        ),
        (
            "frequency_penalty",
            f.frequency_penalty,
            &mut p.frequency_penalty,
        ),
    ] {
        if let Some(F32(v)) = v {
            if !(-2.0..=2.0).contains(&v) {
                return Err(ApiError::param(
                    name,
                    format!("`{name}` must be in [-2, 2], not {v}"),
                ));
            }
            *slot = v;
        }
    }
    for (key, &F32(bias)) in f.logit_bias.iter().flatten() {
        let at = format!("logit_bias.{key}");
        let id = key.parse::<u32>().ok().filter(|&id| (id as usize) < vocab);
        let Some(id) = id else {
            return Err(ApiError::param(
                &at,
                format!("`logit_bias` key {key:?} is not a token id of this model (0..{vocab})"),
            ));
        };
        if !(-100.0..=100.0).contains(&bias) {
            return Err(ApiError::param(
                &at,
                format!("`{at}` must be in [-100, 100], not {bias}"),
            ));
        }
        p.logit_bias.push((id, bias));
    }
    p.seed = match f.seed {
        Some(Seed(s)) => s,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    };
    let mut max_tokens = None;
    for (name, v) in [
        ("max_completion_tokens", max_completion_tokens),
        ("max_tokens", f.max_tokens),
    ] {
        if let Some(Count(n)) = v {
            if n == 0 {
                return Err(ApiError::param(
                    name,
                    format!("`{name}` must be at least 1"),
                ));
            }
            max_tokens.get_or_insert(usize::try_from(n).unwrap_or(usize::MAX));
        }
    }
    let n = match f.n {
        None => 1,
        Some(Count(n)) if (1..=MAX_N as u64).contains(&n) => n as usize,
        Some(Count(n)) => {
            return Err(ApiError::param(
                "n",
                format!("`n` must be in 1..={MAX_N}, not {n}"),
            ));
        }
    };
    let stops = f.stop.clone().unwrap_or_default().0;
    if stops.len() > MAX_STOPS {
        return Err(ApiError::param(
            "stop",
            format!("at most {MAX_STOPS} stop strings, not {}", stops.len()),
        ));
    }
    let stops = stops.into_iter().filter(|s| !s.is_empty()).collect();
    Ok(Common {
        model: f.model.clone(),
        stream: f.stream.unwrap_or(false),
        include_usage: f
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        params: p,
        max_tokens,
        stops,
        n,
        logprobs: None,
    })
}

/// The most sequences one request may ask for (`n`).
pub const MAX_N: usize = 16;

/// OpenAI's limit on `stop` strings.
pub const MAX_STOPS: usize = 4;

/// OpenAI's `finish_reason` for a stop.
pub fn finish_reason(stop: StopReason) -> &'static str {
    match stop {
        StopReason::Length | StopReason::Context => "length",
        StopReason::Eos | StopReason::StopString | StopReason::Cancelled => "stop",
    }
}

/// `usage`, with the prompt tokens whose cache an earlier request left (OpenAI's `cached_tokens`).
pub fn usage(prompt: usize, cached: usize, completion: usize) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}
