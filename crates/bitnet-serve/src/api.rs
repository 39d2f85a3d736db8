//! The OpenAI wire format: lenient request parsing (unknown fields ignored, `max_tokens` or
//! `max_completion_tokens`, `stop` as a string or a list) and exact responses, errors included.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bitnet_chat::{KNOWN_ROLES, Message, SamplingParams};
use serde_json::{Map, Value, json};

use bitnet_runtime::StopReason;

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

/// A field, with JSON `null` meaning absent.
fn field<'a>(m: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    m.get(name).filter(|v| !v.is_null())
}

/// A number field; the sampling fields are f32, so a value past f32's range is refused here rather than
/// turned into infinity.
fn number(m: &Map<String, Value>, name: &str) -> Result<Option<f64>, ApiError> {
    match field(m, name) {
        None => Ok(None),
        Some(v) => match v.as_f64() {
            Some(x) if (x as f32).is_finite() => Ok(Some(x)),
            Some(x) => Err(ApiError::param(
                name,
                format!("`{name}` = {x} is outside the range of a 32-bit float"),
            )),
            None => Err(ApiError::param(
                name,
                format!("`{name}` must be a number, not {}", kind_of(v)),
            )),
        },
    }
}

fn boolean(m: &Map<String, Value>, name: &str) -> Result<Option<bool>, ApiError> {
    match field(m, name) {
        None => Ok(None),
        Some(v) => v.as_bool().map(Some).ok_or_else(|| {
            ApiError::param(
                name,
                format!("`{name}` must be true or false, not {}", kind_of(v)),
            )
        }),
    }
}

fn count(m: &Map<String, Value>, name: &str) -> Result<Option<u64>, ApiError> {
    match field(m, name) {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) => Ok(Some(n)),
            None if v.as_f64().is_some_and(|f| f.fract() == 0.0 && f >= 0.0) => {
                Ok(Some(v.as_f64().unwrap_or(0.0).min(u64::MAX as f64) as u64))
            }
            None => Err(ApiError::param(
                name,
                format!("`{name}` must be a whole number >= 0, not {v}"),
            )),
        },
    }
}

/// Parses the sampling and streaming fields over the server's `defaults`.
pub fn parse_common(m: &Map<String, Value>, defaults: &SamplingParams) -> Result<Common, ApiError> {
    let model = match field(m, "model") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(v) => {
            return Err(ApiError::param(
                "model",
                format!("`model` must be a string, not {}", kind_of(v)),
            ));
        }
    };
    let stream = boolean(m, "stream")?.unwrap_or(false);
    let include_usage = match field(m, "stream_options") {
        None => false,
        Some(Value::Object(o)) => boolean(o, "include_usage")
            .map_err(|_| {
                ApiError::param(
                    "stream_options.include_usage",
                    "`stream_options.include_usage` must be true or false",
                )
            })?
            .unwrap_or(false),
        Some(v) => {
            return Err(ApiError::param(
                "stream_options",
                format!("`stream_options` must be an object, not {}", kind_of(v)),
            ));
        }
    };
    let mut p = defaults.clone();
    if let Some(t) = number(m, "temperature")? {
        if !(t >= 0.0 && t.is_finite()) {
            return Err(ApiError::param(
                "temperature",
                format!("`temperature` must be >= 0 (0 is greedy), not {t}"),
            ));
        }
        p.temperature = t as f32;
    }
    if let Some(v) = number(m, "top_p")? {
        if !(v > 0.0 && v <= 1.0) {
            return Err(ApiError::param(
                "top_p",
                format!("`top_p` must be in (0, 1], not {v}"),
            ));
        }
        p.top_p = v as f32;
    }
    if let Some(v) = number(m, "min_p")? {
        if !(0.0..=1.0).contains(&v) {
            return Err(ApiError::param(
                "min_p",
                format!("`min_p` must be in [0, 1], not {v}"),
            ));
        }
        p.min_p = v as f32;
    }
    if let Some(v) = count(m, "top_k")? {
        p.top_k = usize::try_from(v).unwrap_or(usize::MAX);
    }
    if let Some(v) = number(m, "repetition_penalty")? {
        if !(v > 0.0 && v.is_finite()) {
            return Err(ApiError::param(
                "repetition_penalty",
                format!("`repetition_penalty` must be > 0, not {v}"),
            ));
        }
        p.repetition_penalty = v as f32;
    }
    match field(m, "seed") {
        None => {
            p.seed = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        }
        Some(v) => {
            p.seed = match (v.as_u64(), v.as_i64()) {
                (Some(u), _) => u,
                (None, Some(i)) => i as u64,
                _ => {
                    return Err(ApiError::param(
                        "seed",
                        format!("`seed` must be an integer, not {v}"),
                    ));
                }
            }
        }
    }
    let mut max_tokens = None;
    for name in ["max_completion_tokens", "max_tokens"] {
        if let Some(n) = count(m, name)? {
            if n == 0 {
                return Err(ApiError::param(
                    name,
                    format!("`{name}` must be at least 1"),
                ));
            }
            max_tokens.get_or_insert(usize::try_from(n).unwrap_or(usize::MAX));
        }
    }
    if let Some(n) = count(m, "n")?
        && n != 1
    {
        return Err(ApiError::param(
            "n",
            format!("only n = 1 is supported, not {n}"),
        ));
    }
    let stops = match field(m, "stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => {
            if a.len() > 16 {
                return Err(ApiError::param(
                    "stop",
                    format!("at most 16 stop strings, not {}", a.len()),
                ));
            }
            a.iter()
                .map(|s| {
                    s.as_str().map(str::to_string).ok_or_else(|| {
                        ApiError::param(
                            "stop",
                            format!("`stop` entries must be strings, not {}", kind_of(s)),
                        )
                    })
                })
                .collect::<Result<_, _>>()?
        }
        Some(v) => {
            return Err(ApiError::param(
                "stop",
                format!(
                    "`stop` must be a string or a list of strings, not {}",
                    kind_of(v)
                ),
            ));
        }
    };
    let stops = stops.into_iter().filter(|s| !s.is_empty()).collect();
    Ok(Common {
        model,
        stream,
        include_usage,
        params: p,
        max_tokens,
        stops,
    })
}

/// `messages`: roles the chat template knows (`developer` is read as `system`), content as a string or a
/// list of text parts.
pub fn parse_messages(m: &Map<String, Value>) -> Result<Vec<Message>, ApiError> {
    let list = match field(m, "messages") {
        None => return Err(ApiError::param("messages", "`messages` is required")),
        Some(Value::Array(a)) => a,
        Some(v) => {
            return Err(ApiError::param(
                "messages",
                format!("`messages` must be a list, not {}", kind_of(v)),
            ));
        }
    };
    if list.is_empty() {
        return Err(ApiError::param(
            "messages",
            "`messages` is empty: send at least one message",
        ));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, msg) in list.iter().enumerate() {
        let at = |f: &str| format!("messages[{i}].{f}");
        let Value::Object(o) = msg else {
            return Err(ApiError::param(
                &format!("messages[{i}]"),
                format!("messages[{i}] must be an object, not {}", kind_of(msg)),
            ));
        };
        let role = match o.get("role") {
            Some(Value::String(r)) => {
                if r == "developer" {
                    "system".to_string()
                } else {
                    r.clone()
                }
            }
            _ => {
                return Err(ApiError::param(
                    &at("role"),
                    format!("{} must be a string", at("role")),
                ));
            }
        };
        if !KNOWN_ROLES.contains(&role.as_str()) {
            return Err(ApiError::param(
                &at("role"),
                format!(
                    "{} is `{role}`: the chat template knows {}",
                    at("role"),
                    KNOWN_ROLES.join(", ")
                ),
            ));
        }
        let content = match o.get("content") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => {
                let mut text = String::new();
                for (j, part) in parts.iter().enumerate() {
                    match (
                        part.get("type").and_then(Value::as_str),
                        part.get("text").and_then(Value::as_str),
                    ) {
                        (Some("text"), Some(t)) => text.push_str(t),
                        (kind, _) => {
                            return Err(ApiError::param(
                                &format!("messages[{i}].content[{j}]"),
                                format!(
                                    "only text content parts are supported, not {}",
                                    kind.map_or("a part without a type".to_string(), |k| format!(
                                        "`{k}`"
                                    ))
                                ),
                            ));
                        }
                    }
                }
                text
            }
            Some(v) => {
                return Err(ApiError::param(
                    &at("content"),
                    format!(
                        "{} must be a string or a list of text parts, not {}",
                        at("content"),
                        kind_of(v)
                    ),
                ));
            }
        };
        out.push(Message::new(role, content));
    }
    Ok(out)
}

/// A completion prompt: text, or token ids; one prompt per request.
pub enum Prompt {
    Text(String),
    Ids(Vec<u32>),
}

pub fn parse_prompt(m: &Map<String, Value>) -> Result<Prompt, ApiError> {
    let ids = |a: &[Value]| -> Option<Vec<u32>> {
        a.iter()
            .map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok()))
            .collect()
    };
    match field(m, "prompt") {
        None => Err(ApiError::param("prompt", "`prompt` is required")),
        Some(Value::String(s)) => Ok(Prompt::Text(s.clone())),
        Some(Value::Array(a)) => match a.as_slice() {
            [Value::String(s)] => Ok(Prompt::Text(s.clone())),
            [Value::Array(inner)] => ids(inner)
                .map(Prompt::Ids)
                .ok_or_else(|| ApiError::param("prompt", "token ids must be whole numbers")),
            [] => Err(ApiError::param("prompt", "`prompt` is empty")),
            a if a.iter().all(Value::is_number) => ids(a)
                .map(Prompt::Ids)
                .ok_or_else(|| ApiError::param("prompt", "token ids must be whole numbers")),
            _ => Err(ApiError::param(
                "prompt",
                "one prompt per request is supported",
            )),
        },
        Some(v) => Err(ApiError::param(
            "prompt",
            format!("`prompt` must be a string or token ids, not {}", kind_of(v)),
        )),
    }
}

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
