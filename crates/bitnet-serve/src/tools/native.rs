//! A conversation for a chat template that writes tools itself (one that reads `tools`, as Qwen's,
//! Hermes', Llama 3.1's and Falcon3's do): the messages and tools as transformers' `apply_chat_template(
//! messages, tools=tools)` receives them from OpenAI-shaped code (vLLM passes them the same way).
//!
//! - `tools` is the list of `{"type": "function", "function": {"name", "description", "parameters"}}`
//!   objects (`description` left out when not given), or absent when the prompt shows no tools.
//! - Messages keep their role (`developer` as `system`), their text (parts joined; `null` stays
//!   `null`), an assistant's `tool_calls` with each call's `arguments` parsed into the
//!   JSON value the string holds (transformers' templates expect an object; a string that is not JSON
//!   stays a string), and a `tool` message's `tool_call_id`. Nothing is added that the client did not
//!   send; a message's `name` is left out, as everywhere in this server (accepted with a warning).
//!
//! The model answers in the template's own format; [`super::parse`] reads `<tool_call>` tags and bare
//! call objects as well as the polyfill's object. A required or named call is constrained to the
//! polyfill's object, which the parser reads the same way.

use serde_json::{Map, Value, json};

use super::ToolSetup;
use super::render::{arguments_value, text_of};
use crate::api::ApiError;
use crate::request::{ChatMessage, Role};

/// The messages and tools for [`bitnet_runtime::Engine::encode_chat_json`].
#[derive(Debug, Clone, PartialEq)]
pub struct NativeChat {
    /// One JSON object per message.
    pub messages: Vec<Value>,
    /// The tools the prompt shows (`None`: no tools, or `tool_choice: "none"`).
    pub tools: Option<Vec<Value>>,
}

/// The request's conversation and tools for a template that reads `tools`. Errors name the field.
pub fn conversation(
    list: &[ChatMessage],
    setup: Option<&ToolSetup>,
) -> Result<NativeChat, ApiError> {
    let mut messages = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let mut o = Map::new();
        o.insert("role".into(), json!(m.role.template_role()));
        o.insert(
            "content".into(),
            match &m.content {
                None => Value::Null,
                some => json!(text_of(some.as_ref())),
            },
        );
        if let Some(calls) = m.tool_calls.as_ref().filter(|c| !c.is_empty()) {
            let calls: Vec<Value> = calls
                .iter()
                .map(|c| {
                    let args = arguments_value(&c.function.arguments);
                    json!({"id": c.id, "type": "function",
                           "function": {"name": c.function.name, "arguments": args}})
                })
                .collect();
            o.insert("tool_calls".into(), Value::Array(calls));
        }
        if m.role == Role::Tool {
            let Some(id) = &m.tool_call_id else {
                return Err(ApiError::param(
                    &format!("messages[{i}].tool_call_id"),
                    format!("`messages[{i}].tool_call_id` is required in a `tool` message"),
                ));
            };
            o.insert("tool_call_id".into(), json!(id));
        }
        messages.push(Value::Object(o));
    }
    let tools = setup.map(|s| {
        s.tools
            .iter()
            .map(|t| {
                let mut f = Map::new();
                f.insert("name".into(), json!(t.name));
                if let Some(d) = &t.description {
                    f.insert("description".into(), json!(d));
                }
                f.insert("parameters".into(), t.parameters.clone());
                json!({"type": "function", "function": f})
            })
            .collect()
    });
    Ok(NativeChat { messages, tools })
}
