//! The response bodies of the generating routes: whole completions, stream chunks, usage and
//! log-probabilities, in OpenAI's shapes for chat (`chat.completion`, `chat.completion.chunk`) and text
//! (`text_completion`).

use std::sync::Arc;

use axum::http::StatusCode;
use bitnet_chat::TokenLogprobs;
use bitnet_runtime::Engine;
use bitnet_runtime::scheduler::Finish;
use serde_json::{Value, json};

use crate::api::{self, ApiError};
use crate::tools::parse::{self, CallFormat, Piece};

/// Which route answers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Text,
}

/// One finished sequence of a request (one of `n`).
#[derive(Default)]
pub struct Choice {
    pub text: String,
    pub logprobs: Vec<TokenLogprobs>,
    pub finish: Option<Finish>,
}

/// Builds the response objects of one request.
pub struct Chunks {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub kind: Kind,
    pub include_usage: bool,
    /// Whether log-probabilities were asked for (`logprobs` is then an object, else `null`).
    pub logprobs: bool,
    /// For the text of token ids.
    pub engine: Arc<Engine>,
    /// The request's log line, told each sequence's token counts (and written when the last holder,
    /// for a stream its body, lets go).
    pub log: Option<Arc<crate::guard::RequestLog>>,
    /// Chat answers are read for calls of these tools.
    pub tools: Option<CallFormat>,
}

/// A log-probability as JSON: OpenAI writes -9999 for a token that cannot be drawn (JSON has no -inf).
fn lp_json(lp: f32) -> Value {
    if lp.is_finite() {
        json!(lp)
    } else {
        json!(-9999.0)
    }
}

impl Chunks {
    fn object(&self, stream: bool) -> &'static str {
        match (self.kind, stream) {
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Chat, false) => "chat.completion",
            (Kind::Text, _) => "text_completion",
        }
    }

    fn token_text(&self, id: u32) -> String {
        self.engine.tokenizer.decode(&[id]).unwrap_or_default()
    }

    /// The `logprobs` of a choice (or a chunk of it) for `lps`; `offset` is where the text of the
    /// first token starts in the completion (text completions' `text_offset`), moved past them.
    pub fn logprobs_json(&self, lps: &[TokenLogprobs], offset: &mut usize) -> Value {
        if !self.logprobs {
            return Value::Null;
        }
        match self.kind {
            Kind::Chat => {
                let entry = |id: u32, lp: f32| {
                    let t = self.token_text(id);
                    json!({"token": t, "logprob": lp_json(lp), "bytes": t.as_bytes()})
                };
                let content: Vec<Value> = lps
                    .iter()
                    .map(|l| {
                        let mut e = entry(l.id, l.logprob);
                        e["top_logprobs"] = l.top.iter().map(|&(id, lp)| entry(id, lp)).collect();
                        e
                    })
                    .collect();
                json!({"content": content, "refusal": null})
            }
            Kind::Text => {
                let mut tokens = Vec::new();
                let mut token_logprobs = Vec::new();
                let mut top = Vec::new();
                let mut offsets = Vec::new();
                for l in lps {
                    let t = self.token_text(l.id);
                    offsets.push(*offset);
                    *offset += t.len();
                    tokens.push(t);
                    token_logprobs.push(lp_json(l.logprob));
                    let alts: serde_json::Map<String, Value> = l
                        .top
                        .iter()
                        .map(|&(id, lp)| (self.token_text(id), lp_json(lp)))
                        .collect();
                    top.push(Value::Object(alts));
                }
                json!({"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top,
                       "text_offset": offsets})
            }
        }
    }

    /// A stream chunk of choice `index`.
    pub fn chunk(
        &self,
        index: usize,
        text: Option<&str>,
        role: bool,
        finish: Option<&str>,
        logprobs: Value,
    ) -> Value {
        match self.kind {
            Kind::Chat => {
                let mut delta = serde_json::Map::new();
                if role {
                    delta.insert("role".into(), json!("assistant"));
                }
                if let Some(t) = text {
                    delta.insert("content".into(), json!(t));
                } else if role && self.tools.is_some() {
                    // Calls may follow: the content stays null unless text comes (OpenAI's first chunk).
                    delta.insert("content".into(), Value::Null);
                }
                self.delta_chunk(index, delta, finish, logprobs)
            }
            Kind::Text => self.wrap(json!({"text": text.unwrap_or(""), "index": index,
                                           "logprobs": logprobs, "finish_reason": finish})),
        }
    }

    /// A chat stream chunk of choice `index` with this `delta`.
    pub fn delta_chunk(
        &self,
        index: usize,
        delta: serde_json::Map<String, Value>,
        finish: Option<&str>,
        logprobs: Value,
    ) -> Value {
        self.wrap(
            json!({"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}),
        )
    }

    /// A chat stream chunk of choice `index` for a piece the call scanner read.
    pub fn piece_chunk(&self, index: usize, piece: &Piece, logprobs: Value) -> Value {
        let mut delta = serde_json::Map::new();
        match piece {
            Piece::Content(t) => {
                delta.insert("content".into(), json!(t));
            }
            Piece::Call { index: k, id, name } => {
                delta.insert(
                    "tool_calls".into(),
                    json!([{"index": k, "id": id, "type": "function",
                            "function": {"name": name, "arguments": ""}}]),
                );
            }
            Piece::Args { index: k, text } => {
                delta.insert(
                    "tool_calls".into(),
                    json!([{"index": k, "function": {"arguments": text}}]),
                );
            }
        }
        self.delta_chunk(index, delta, None, logprobs)
    }

    /// `choice` in a chunk object.
    fn wrap(&self, choice: Value) -> Value {
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

    /// `usage` over the request's sequences: the prompt once, the completions summed.
    fn usage(fins: &[&Finish]) -> Value {
        let first = fins.first();
        api::usage(
            first.map_or(0, |f| f.prompt_tokens),
            first.map_or(0, |f| f.cached_tokens),
            fins.iter().map(|f| f.completion_tokens).sum(),
        )
    }

    /// The last chunk of a stream that asked for usage.
    pub fn usage_chunk(&self, fins: &[&Finish]) -> Value {
        json!({
            "id": self.id,
            "object": self.object(true),
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": Chunks::usage(fins),
        })
    }

    /// The whole answer of a request that does not stream.
    pub fn whole(&self, choices: &[Choice]) -> Value {
        let list: Vec<Value> = choices
            .iter()
            .enumerate()
            .map(|(index, c)| {
                let reason = c.finish.as_ref().map(|f| api::finish_reason(f.stop));
                let logprobs = self.logprobs_json(&c.logprobs, &mut 0);
                match (self.kind, &self.tools) {
                    (Kind::Chat, Some(format)) => {
                        let (content, calls) = parse::read_answer(&c.text, format);
                        let mut message =
                            json!({"role": "assistant", "content": content, "refusal": null});
                        if !calls.is_empty() {
                            message["tool_calls"] = calls
                                .iter()
                                .map(|(id, name, args)| {
                                    json!({"id": id, "type": "function",
                                           "function": {"name": name, "arguments": args}})
                                })
                                .collect();
                        }
                        json!({
                            "index": index,
                            "message": message,
                            "logprobs": logprobs,
                            "finish_reason": reason.map(|r| calls_reason(r, calls.len())),
                        })
                    }
                    (Kind::Chat, None) => json!({
                        "index": index,
                        "message": {"role": "assistant", "content": c.text, "refusal": null},
                        "logprobs": logprobs,
                        "finish_reason": reason,
                    }),
                    (Kind::Text, _) => json!({"text": c.text, "index": index, "logprobs": logprobs,
                                         "finish_reason": reason}),
                }
            })
            .collect();
        let fins: Vec<&Finish> = choices.iter().filter_map(|c| c.finish.as_ref()).collect();
        json!({
            "id": self.id,
            "object": self.object(false),
            "created": self.created,
            "model": self.model,
            "choices": list,
            "usage": Chunks::usage(&fins),
        })
    }
}

/// `finish_reason` of an answer that made `calls` calls: `tool_calls` when it ended on its own.
pub fn calls_reason(reason: &'static str, calls: usize) -> &'static str {
    if calls > 0 && reason == "stop" {
        "tool_calls"
    } else {
        reason
    }
}

/// A 500 with the engine's message.
pub fn failed(message: String) -> ApiError {
    ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message,
        kind: "server_error",
        param: None,
        code: None,
    }
}
