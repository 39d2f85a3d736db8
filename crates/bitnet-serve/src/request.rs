//! The request bodies of `/v1/chat/completions` and `/v1/completions` as typed structs, every field of
//! OpenAI's API named.
//!
//! A body is read in two passes over its JSON object, each through `serde_path_to_error`, so a 400 names
//! the field's path (`messages[2].content[0].text`) and what was expected:
//!
//! 1. [`SamplingFields`]: what both endpoints share (sampling, streaming, stops, `n`, `user`);
//! 2. [`ChatFields`] or [`CompletionFields`]: the endpoint's own fields, read from what pass 1 left.
//!
//! What neither pass knows lands in a `unknown` map; [`Unknown::check`] turns it into a 400 naming the
//! field, or with `--lenient` into one warning line. Each field is then either honoured, accepted with a
//! warning (it changes nothing here: `user`, `metadata`, `store`, ...), or refused with a 400 that names
//! it ([`ChatFields::refusals`]). To support a refused field, give it a type here and drop its refusal.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::api::ApiError;
use crate::tools::{MessageToolCall, Tool, ToolChoice, ToolSetup};

mod prompt;
mod values;

pub use prompt::ChatPrompt;
pub use values::{Count, F32, Seed, Stop};

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with `usage`.
    pub include_usage: Option<bool>,
    /// Fields this server does not know.
    #[serde(flatten)]
    pub unknown: Map<String, Value>,
}

/// The fields chat and text completions share.
#[derive(Debug, Clone, Deserialize)]
pub struct SamplingFields {
    /// The model id (`NAME:fp32` picks the FP32 reference; any other name the packed model).
    pub model: Option<String>,
    /// Answer as server-sent events.
    pub stream: Option<bool>,
    /// `include_usage`.
    pub stream_options: Option<StreamOptions>,
    /// 0 is greedy.
    pub temperature: Option<F32>,
    /// Nucleus mass; 0 is greedy, as OpenAI reads it.
    pub top_p: Option<F32>,
    /// Extension (llama.cpp, vLLM): keep the k most likely tokens.
    pub top_k: Option<Count>,
    /// Extension: drop tokens less likely than this share of the most likely one.
    pub min_p: Option<F32>,
    /// Extension: Hugging Face's repetition penalty.
    pub repetition_penalty: Option<F32>,
    /// OpenAI's presence penalty, -2..2.
    pub presence_penalty: Option<F32>,
    /// OpenAI's frequency penalty, -2..2.
    pub frequency_penalty: Option<F32>,
    /// Token id (as a string) to a bias in -100..100 added to its logit.
    pub logit_bias: Option<BTreeMap<String, F32>>,
    /// The sampler's seed.
    pub seed: Option<Seed>,
    /// Up to 4 stop strings.
    pub stop: Option<Stop>,
    /// Completions per prompt.
    pub n: Option<Count>,
    /// Most tokens to generate (chat calls it `max_completion_tokens` now).
    pub max_tokens: Option<Count>,
    /// The end user's id (accepted, not used).
    pub user: Option<String>,
    /// The endpoint's own fields and unknown ones, for the second pass.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// Who speaks in a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The system prompt.
    System,
    /// OpenAI's newer name for `system` (rendered as `system`).
    Developer,
    /// The user.
    User,
    /// The model.
    Assistant,
    /// A tool's result.
    Tool,
    /// OpenAI's deprecated tool result.
    Function,
}

impl Role {
    /// The role the chat template sees.
    pub fn template_role(self) -> &'static str {
        match self {
            Role::System | Role::Developer => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
            Role::Function => "function",
        }
    }
}

/// A message's content: a string, or a list of parts.
#[derive(Debug, Clone)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Typed parts (only `text` parts are supported).
    Parts(Vec<ContentPart>),
}

impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Content, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Content;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a list of content parts")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Content, E> {
                Ok(Content::Text(s.to_string()))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Content, E> {
                Ok(Content::Text(s))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Content, A::Error> {
                let mut v = Vec::new();
                while let Some(p) = seq.next_element::<ContentPart>()? {
                    v.push(p);
                }
                Ok(Content::Parts(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// One part of a message's content.
#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    /// `text` (others, such as `image_url`, are refused).
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    pub text: Option<String>,
    /// Other fields (an image's URL and the like).
    #[serde(flatten)]
    pub unknown: Map<String, Value>,
}

/// One message of a chat request.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    /// Who speaks.
    pub role: Role,
    /// What they say (`null` for an assistant message that only calls tools).
    pub content: Option<Content>,
    /// A participant's name (accepted, not rendered).
    pub name: Option<String>,
    /// An assistant's earlier tool calls.
    pub tool_calls: Option<Vec<MessageToolCall>>,
    /// The call a `tool` message answers.
    pub tool_call_id: Option<String>,
    /// An assistant's refusal text (accepted, not rendered).
    pub refusal: Option<String>,
    /// Fields this server does not know (`audio`, `function_call`, ...).
    #[serde(flatten)]
    pub unknown: Map<String, Value>,
}

/// The fields only `/v1/chat/completions` has.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatFields {
    /// The conversation.
    pub messages: Option<Vec<ChatMessage>>,
    /// Most tokens to generate (the newer name of `max_tokens`).
    pub max_completion_tokens: Option<Count>,
    /// Return the sampled tokens' log-probabilities.
    pub logprobs: Option<bool>,
    /// With `logprobs`: the most likely alternatives per position, 0..20.
    pub top_logprobs: Option<Count>,
    /// `{"type": "text"}` is accepted; structured output is refused for now.
    pub response_format: Option<Value>,
    /// Functions the model may call.
    pub tools: Option<Vec<Tool>>,
    /// `none`, `auto`, `required` or a named function.
    pub tool_choice: Option<ToolChoice>,
    /// More than one call per answer (default true).
    pub parallel_tool_calls: Option<bool>,
    /// The deprecated form of `tools` (refused).
    pub functions: Option<Value>,
    /// The deprecated form of `tool_choice` (refused).
    pub function_call: Option<Value>,
    /// Stored-completion tags (accepted, not used).
    pub metadata: Option<Value>,
    /// Store the completion (accepted, not used: nothing is stored).
    pub store: Option<bool>,
    /// Processing tier (accepted, not used).
    pub service_tier: Option<String>,
    /// Output modalities: only `["text"]`.
    pub modalities: Option<Vec<String>>,
    /// Audio output (refused).
    pub audio: Option<Value>,
    /// Predicted output (accepted, not used: a speed hint that cannot change the text).
    pub prediction: Option<Value>,
    /// Reasoning effort (accepted, not used: the model does not reason in a separate channel).
    pub reasoning_effort: Option<String>,
    /// Verbosity (accepted, not used).
    pub verbosity: Option<String>,
    /// Web search (refused).
    pub web_search_options: Option<Value>,
    /// Prompt-cache routing key (accepted, not used; prompt prefixes are cached anyway).
    pub prompt_cache_key: Option<String>,
    /// Abuse-detection id (accepted, not used).
    pub safety_identifier: Option<String>,
    /// Fields this server does not know.
    #[serde(flatten)]
    pub unknown: Map<String, Value>,
}

/// A completion prompt: text, or token ids (one prompt per request).
#[derive(Debug, Clone)]
pub enum Prompt {
    /// Text, tokenized with the model's tokenizer.
    Text(String),
    /// Token ids as they are.
    Ids(Vec<u32>),
}

/// The fields only `/v1/completions` has.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionFields {
    /// A string, a list of one string, token ids, or a list of one list of token ids.
    pub prompt: Option<Value>,
    /// Text after the completion (refused: no fill-in-the-middle).
    pub suffix: Option<String>,
    /// Sequences sampled to pick the best from (only 1).
    pub best_of: Option<Count>,
    /// Return the prompt before the completion (refused).
    pub echo: Option<bool>,
    /// Log-probabilities of the sampled token and this many alternatives, 0..5.
    pub logprobs: Option<Count>,
    /// Fields this server does not know.
    #[serde(flatten)]
    pub unknown: Map<String, Value>,
}

/// A parsed `/v1/chat/completions` body.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The shared fields.
    pub common: SamplingFields,
    /// The chat fields.
    pub chat: ChatFields,
}

/// A parsed `/v1/completions` body.
#[derive(Debug, Clone)]
pub struct CompletionRequest {
    /// The shared fields.
    pub common: SamplingFields,
    /// The completion fields.
    pub completion: CompletionFields,
}

/// `v` as a `T`, or a 400 naming the path of the field at fault and what it expected.
pub(crate) fn typed<T: DeserializeOwned>(v: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            ApiError::bad(format!("the request body: {inner}"))
        } else {
            ApiError::param(&path, format!("`{path}`: {inner}"))
        }
    })
}

/// Parses a chat completion request from its JSON object.
pub fn parse_chat(body: Map<String, Value>) -> Result<ChatRequest, ApiError> {
    let mut common: SamplingFields = typed(Value::Object(body))?;
    let chat = typed(Value::Object(std::mem::take(&mut common.rest)))?;
    Ok(ChatRequest { common, chat })
}

/// Parses a text completion request from its JSON object.
pub fn parse_completion(body: Map<String, Value>) -> Result<CompletionRequest, ApiError> {
    let mut common: SamplingFields = typed(Value::Object(body))?;
    let completion = typed(Value::Object(std::mem::take(&mut common.rest)))?;
    Ok(CompletionRequest { common, completion })
}

/// The fields of a request this server does not know, by path.
#[derive(Debug, Default)]
pub struct Unknown(pub Vec<String>);

impl Unknown {
    pub(crate) fn add(&mut self, prefix: &str, m: &Map<String, Value>) {
        self.0.extend(m.keys().map(|k| format!("{prefix}{k}")));
    }

    /// A 400 naming the first unknown field, or with `lenient` one warning line naming them all.
    pub fn check(&self, lenient: bool, route: &str) -> Result<(), ApiError> {
        let Some(first) = self.0.first() else {
            return Ok(());
        };
        if lenient {
            tracing::warn!(
                "{route}: ignoring unknown field{} {} (--lenient)",
                if self.0.len() == 1 { "" } else { "s" },
                self.0.join(", ")
            );
            return Ok(());
        }
        Err(ApiError::param(
            first,
            format!(
                "unknown field `{first}`: this server does not know it, and does not ignore what it does not \
                 know (start it with --lenient to ignore unknown fields)"
            ),
        ))
    }
}

impl SamplingFields {
    fn unknown(&self, out: &mut Unknown) {
        if let Some(o) = &self.stream_options {
            out.add("stream_options.", &o.unknown);
        }
    }

    /// Accepted fields that change nothing here, by name.
    fn unused(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.user.is_some() {
            v.push("user");
        }
        v
    }
}

/// A 400 refusing `field` as not supported (yet).
fn refuse(field: &str, why: &str) -> ApiError {
    ApiError::param(field, format!("`{field}` is not supported {why}"))
}

impl ChatRequest {
    /// Every field this server does not know, by path.
    pub fn unknown(&self) -> Unknown {
        let mut u = Unknown::default();
        self.common.unknown(&mut u);
        u.add("", &self.chat.unknown);
        for (i, t) in self.chat.tools.iter().flatten().enumerate() {
            u.add(&format!("tools[{i}]."), &t.unknown);
            if let Some(f) = &t.function {
                u.add(&format!("tools[{i}].function."), &f.unknown);
            }
        }
        for (i, m) in self.chat.messages.iter().flatten().enumerate() {
            u.add(&format!("messages[{i}]."), &m.unknown);
            for (j, c) in m.tool_calls.iter().flatten().enumerate() {
                u.add(&format!("messages[{i}].tool_calls[{j}]."), &c.unknown);
                u.add(
                    &format!("messages[{i}].tool_calls[{j}].function."),
                    &c.function.unknown,
                );
            }
            if let Some(Content::Parts(parts)) = &m.content {
                for (j, p) in parts.iter().enumerate() {
                    u.add(&format!("messages[{i}].content[{j}]."), &p.unknown);
                }
            }
        }
        u
    }

    /// What `response_format` asks the output to be (`None` for text): a 400 naming the field under
    /// `response_format` that is wrong.
    pub fn constraint_spec(&self) -> Result<Option<bitnet_grammar::ConstraintSpec>, ApiError> {
        let Some(rf) = &self.chat.response_format else {
            return Ok(None);
        };
        bitnet_grammar::ConstraintSpec::from_response_format(rf).map_err(|e| match &e {
            bitnet_grammar::GrammarError::Field { field, .. } => {
                ApiError::param(field, e.to_string())
            }
            _ => ApiError::param("response_format", e.to_string()),
        })
    }

    /// The first field this server refuses: a 400 naming it.
    pub fn refusals(&self) -> Result<(), ApiError> {
        let c = &self.chat;
        let old = "(the deprecated form of `tools`: send `tools` and `tool_choice`)";
        for (name, set) in [
            ("functions", c.functions.is_some()),
            ("function_call", c.function_call.is_some()),
        ] {
            if set {
                return Err(refuse(name, old));
            }
        }
        if c.audio.is_some() {
            return Err(refuse("audio", "(text output only)"));
        }
        if let Some(m) = &c.modalities
            && m.iter().any(|x| x != "text")
        {
            return Err(ApiError::param(
                "modalities",
                "only the `text` modality is supported",
            ));
        }
        if c.web_search_options.is_some() {
            return Err(refuse("web_search_options", "(no web search)"));
        }
        for (i, m) in c.messages.iter().flatten().enumerate() {
            if m.role == Role::Function {
                return Err(ApiError::param(
                    &format!("messages[{i}].role"),
                    format!(
                        "`messages[{i}].role` is `function`, the deprecated form of `tool`: send tool results \
                         as `tool` messages with `tool_call_id`"
                    ),
                ));
            }
            crate::tools::check_message(i, m)?;
            if let Some(Content::Parts(parts)) = &m.content {
                for (j, p) in parts.iter().enumerate() {
                    if p.kind != "text" {
                        return Err(ApiError::param(
                            &format!("messages[{i}].content[{j}]"),
                            format!(
                                "`messages[{i}].content[{j}]`: only text content parts are supported, not `{}`",
                                p.kind
                            ),
                        ));
                    }
                    if p.text.is_none() {
                        return Err(ApiError::param(
                            &format!("messages[{i}].content[{j}].text"),
                            format!("`messages[{i}].content[{j}].text` is required in a text part"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Accepted fields that change nothing here, by name (each is logged).
    pub fn unused(&self) -> Vec<&'static str> {
        let c = &self.chat;
        let mut v = self.common.unused();
        for (name, set) in [
            ("metadata", c.metadata.is_some()),
            ("store", c.store == Some(true)),
            ("service_tier", c.service_tier.is_some()),
            ("prediction", c.prediction.is_some()),
            ("reasoning_effort", c.reasoning_effort.is_some()),
            ("verbosity", c.verbosity.is_some()),
            ("prompt_cache_key", c.prompt_cache_key.is_some()),
            ("safety_identifier", c.safety_identifier.is_some()),
            (
                "messages[].name",
                c.messages.iter().flatten().any(|m| m.name.is_some()),
            ),
            (
                "messages[].refusal",
                c.messages.iter().flatten().any(|m| m.refusal.is_some()),
            ),
        ] {
            if set {
                v.push(name);
            }
        }
        v
    }

    /// What the request asks of tools (`None`: the prompt shows none); errors name the field.
    pub fn tool_setup(&self) -> Result<Option<ToolSetup>, ApiError> {
        let c = &self.chat;
        ToolSetup::new(
            c.tools.as_deref(),
            c.tool_choice.as_ref(),
            c.parallel_tool_calls,
        )
    }

    /// The conversation for the chat template: roles as the template knows them, text parts joined;
    /// for a template that reads `tools` (`native`), the messages and tools as transformers passes them
    /// ([`crate::tools::native`]), else tools, earlier calls and tool results written as plain messages
    /// ([`crate::tools::render`]).
    pub fn messages(
        &self,
        tools: Option<&ToolSetup>,
        native: bool,
    ) -> Result<ChatPrompt, ApiError> {
        let list = match &self.chat.messages {
            None => return Err(ApiError::param("messages", "`messages` is required")),
            Some(l) if l.is_empty() => {
                return Err(ApiError::param(
                    "messages",
                    "`messages` is empty: send at least one message",
                ));
            }
            Some(l) => l,
        };
        if native {
            crate::tools::native::conversation(list, tools).map(ChatPrompt::Native)
        } else {
            crate::tools::render::conversation(list, tools).map(ChatPrompt::Plain)
        }
    }
}

impl CompletionRequest {
    /// Every field this server does not know, by path.
    pub fn unknown(&self) -> Unknown {
        let mut u = Unknown::default();
        self.common.unknown(&mut u);
        u.add("", &self.completion.unknown);
        u
    }

    /// The first field this server refuses: a 400 naming it.
    pub fn refusals(&self) -> Result<(), ApiError> {
        let c = &self.completion;
        if c.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(refuse("suffix", "(no fill-in-the-middle)"));
        }
        if let Some(Count(b)) = c.best_of
            && b > 1
        {
            return Err(ApiError::param(
                "best_of",
                format!("only `best_of` = 1 is supported, not {b}"),
            ));
        }
        if c.echo == Some(true) {
            return Err(refuse("echo", "(the prompt is not returned)"));
        }
        Ok(())
    }

    /// Accepted fields that change nothing here, by name (each is logged).
    pub fn unused(&self) -> Vec<&'static str> {
        self.common.unused()
    }

    /// The prompt: text, or token ids.
    pub fn prompt(&self) -> Result<Prompt, ApiError> {
        let ids = |a: &[Value]| -> Option<Vec<u32>> {
            a.iter()
                .map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok()))
                .collect()
        };
        let whole = || ApiError::param("prompt", "token ids must be whole numbers >= 0");
        match &self.completion.prompt {
            None => Err(ApiError::param("prompt", "`prompt` is required")),
            Some(Value::String(s)) => Ok(Prompt::Text(s.clone())),
            Some(Value::Array(a)) => match a.as_slice() {
                [Value::String(s)] => Ok(Prompt::Text(s.clone())),
                [Value::Array(inner)] => ids(inner).map(Prompt::Ids).ok_or_else(whole),
                [] => Err(ApiError::param("prompt", "`prompt` is empty")),
                a if a.iter().all(Value::is_number) => ids(a).map(Prompt::Ids).ok_or_else(whole),
                _ => Err(ApiError::param(
                    "prompt",
                    "one prompt per request is supported (a string, or a list of token ids)",
                )),
            },
            Some(v) => Err(ApiError::param(
                "prompt",
                format!("`prompt` must be a string or a list of token ids, not {v}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests;
