//! Tool calls: the request's `tools`, `tool_choice` and `parallel_tool_calls` as typed structs, checked
//! into a [`ToolSetup`], and what the server does with it.
//!
//! A chat template that reads `tools` gets the request's tools and tool turns as transformers passes
//! them ([`native`]). Templates that do not (BitNet 2B4T's, the fixtures' Falcon3-style one) get tools
//! *polyfilled*, as llama.cpp's "generic" tool format does ([`render`]): the tools and the answer format are described in a
//! system message, an assistant's earlier calls are written as the JSON the model is asked to produce,
//! and tool results become user turns. The model answers either in plain text or with one JSON object
//! `{"tool_calls": [{"name": ..., "arguments": {...}}]}`, which [`parse`] reads back into OpenAI's
//! `tool_calls`, as a whole or as it streams.
//!
//! `tool_choice` `required` or a named function is enforced with the grammar engine
//! ([`ToolSetup::constraint_spec`]): the output must be that JSON object, with each call's `arguments`
//! valid under the tool's `parameters` schema. `auto` is constrained to "a call object or text that does
//! not start with `{`" (a Lark grammar with an alternative); `none` leaves the tools out of the prompt and
//! never reads calls.

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value, json};

use crate::api::ApiError;
use crate::request::{ChatMessage, Role};

pub mod native;
pub mod parse;
pub mod render;

/// `tools[i]`.
#[derive(Debug, Clone, Deserialize)]
pub struct Tool {
    /// Only `function`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The function.
    pub function: Option<FunctionDef>,
    /// Fields this server does not know.
    #[serde(flatten)]
    pub unknown: Map<String, Value>,
}

/// `tools[i].function`.
#[derive(Debug, Clone, Deserialize)]
pub struct FunctionDef {
    /// `^[A-Za-z0-9_-]{1,64}$`, as OpenAI requires.
    pub name: String,
    /// What it does (shown to the model).
    pub description: Option<String>,
    /// A JSON Schema of the arguments object (none: no arguments).
    pub parameters: Option<Value>,
    /// OpenAI's strict flag: arguments are constrained under `required` and named choices either way.
    #[allow(dead_code)]
    pub strict: Option<bool>,
    /// Fields this server does not know.
    #[serde(flatten)]
    pub unknown: Map<String, Value>,
}

/// `tool_choice`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// Never call a tool; the tools are left out of the prompt.
    None,
    /// The model decides.
    Auto,
    /// At least one call.
    Required,
    /// A call of this function.
    Named(String),
}

#[derive(Deserialize)]
struct NamedChoice {
    #[serde(rename = "type")]
    kind: String,
    function: NamedFunction,
}

#[derive(Deserialize)]
struct NamedFunction {
    name: String,
}

impl<'de> Deserialize<'de> for ToolChoice {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ToolChoice, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ToolChoice;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "\"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}",
                )
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<ToolChoice, E> {
                match s {
                    "none" => Ok(ToolChoice::None),
                    "auto" => Ok(ToolChoice::Auto),
                    "required" => Ok(ToolChoice::Required),
                    other => Err(E::invalid_value(de::Unexpected::Str(other), &self)),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ToolChoice, A::Error> {
                let c = NamedChoice::deserialize(de::value::MapAccessDeserializer::new(map))?;
                if c.kind != "function" {
                    return Err(de::Error::custom(format!(
                        "only `\"type\": \"function\"` choices are supported, not {:?}",
                        c.kind
                    )));
                }
                Ok(ToolChoice::Named(c.function.name))
            }
        }
        d.deserialize_any(V)
    }
}

/// `messages[i].tool_calls[j]`: a call an assistant made earlier in the conversation.
#[derive(Debug, Clone, Deserialize)]
pub struct MessageToolCall {
    /// The call's id, which a `tool` message's `tool_call_id` answers.
    pub id: String,
    /// Only `function`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The function called.
    pub function: CalledFunction,
    /// Fields this server does not know.
    #[serde(flatten)]
    pub unknown: Map<String, Value>,
}

/// `messages[i].tool_calls[j].function`.
#[derive(Debug, Clone, Deserialize)]
pub struct CalledFunction {
    /// The function's name.
    pub name: String,
    /// The arguments as a JSON string.
    pub arguments: String,
    /// Fields this server does not know.
    #[serde(flatten)]
    pub unknown: Map<String, Value>,
}

/// One function the model may call, checked.
#[derive(Debug, Clone)]
pub struct ToolDef {
    /// Its name.
    pub name: String,
    /// Its description, if any.
    pub description: Option<String>,
    /// The arguments' JSON Schema (`{"type": "object", "properties": {}}` when none was given).
    pub parameters: Value,
}

/// What a request asks of tools, checked: the tools the prompt shows, and how calls are constrained.
#[derive(Debug, Clone)]
pub struct ToolSetup {
    /// The tools, in request order.
    pub tools: Vec<ToolDef>,
    /// `tool_choice` (`auto` when not given).
    pub choice: ToolChoice,
    /// `parallel_tool_calls` (default true): more than one call per answer.
    pub parallel: bool,
}

/// `^[A-Za-z0-9_-]{1,64}$`.
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl ToolSetup {
    /// Checks `tools`, `tool_choice` and `parallel_tool_calls`: `None` when the prompt shows no tools
    /// (no `tools`, or `tool_choice: "none"`). Errors name the field.
    pub fn new(
        tools: Option<&[Tool]>,
        choice: Option<&ToolChoice>,
        parallel: Option<bool>,
    ) -> Result<Option<ToolSetup>, ApiError> {
        let Some(tools) = tools else {
            if choice.is_some_and(|c| *c != ToolChoice::None) {
                return Err(ApiError::param(
                    "tool_choice",
                    "`tool_choice` needs `tools`: there is no tool to choose",
                ));
            }
            return Ok(None);
        };
        if tools.is_empty() {
            return Err(ApiError::param(
                "tools",
                "`tools` is empty: give at least one tool, or leave the field out",
            ));
        }
        let mut defs: Vec<ToolDef> = Vec::with_capacity(tools.len());
        for (i, t) in tools.iter().enumerate() {
            if t.kind != "function" {
                return Err(ApiError::param(
                    &format!("tools[{i}].type"),
                    format!(
                        "`tools[{i}].type` is {:?}: only \"function\" tools are supported",
                        t.kind
                    ),
                ));
            }
            let Some(f) = &t.function else {
                return Err(ApiError::param(
                    &format!("tools[{i}].function"),
                    format!("`tools[{i}].function` is required"),
                ));
            };
            if !valid_name(&f.name) {
                return Err(ApiError::param(
                    &format!("tools[{i}].function.name"),
                    format!(
                        "`tools[{i}].function.name` {:?} must be 1 to 64 letters, digits, `_` or `-`",
                        f.name
                    ),
                ));
            }
            if defs.iter().any(|d| d.name == f.name) {
                return Err(ApiError::param(
                    &format!("tools[{i}].function.name"),
                    format!(
                        "`tools[{i}].function.name`: two tools are named {:?}",
                        f.name
                    ),
                ));
            }
            let parameters = match &f.parameters {
                None => json!({"type": "object", "properties": {}}),
                Some(p @ Value::Object(_)) => p.clone(),
                Some(_) => {
                    return Err(ApiError::param(
                        &format!("tools[{i}].function.parameters"),
                        format!("`tools[{i}].function.parameters` must be a JSON Schema object"),
                    ));
                }
            };
            defs.push(ToolDef {
                name: f.name.clone(),
                description: f.description.clone(),
                parameters,
            });
        }
        let choice = choice.cloned().unwrap_or(ToolChoice::Auto);
        if let ToolChoice::Named(name) = &choice
            && !defs.iter().any(|d| &d.name == name)
        {
            let names: Vec<&str> = defs.iter().map(|d| d.name.as_str()).collect();
            return Err(ApiError::param(
                "tool_choice.function.name",
                format!(
                    "`tool_choice.function.name` {name:?} is not one of the tools ({})",
                    names.join(", ")
                ),
            ));
        }
        if choice == ToolChoice::None {
            return Ok(None);
        }
        Ok(Some(ToolSetup {
            tools: defs,
            choice,
            parallel: parallel.unwrap_or(true),
        }))
    }

    /// The tools a call may name (a named choice allows that one only).
    pub fn callable(&self) -> Vec<&ToolDef> {
        match &self.choice {
            ToolChoice::Named(n) => self.tools.iter().filter(|t| &t.name == n).collect(),
            _ => self.tools.iter().collect(),
        }
    }

    /// How answers are read for calls.
    pub fn call_format(&self) -> parse::CallFormat {
        parse::CallFormat {
            names: self.callable().iter().map(|t| t.name.clone()).collect(),
            parallel: self.parallel,
        }
    }

    /// The JSON Schema of the answer object `{"tool_calls": [...]}`: each call names a callable tool and
    /// has arguments valid under its `parameters`; one call at most without `parallel_tool_calls`.
    pub fn calls_schema(&self) -> Value {
        let calls: Vec<Value> = self
            .callable()
            .iter()
            .map(|t| {
                json!({
                    "type": "object",
                    "properties": {"name": {"const": t.name}, "arguments": t.parameters},
                    "required": ["name", "arguments"],
                    "additionalProperties": false,
                })
            })
            .collect();
        let item = if calls.len() == 1 {
            calls.into_iter().next().unwrap_or_default()
        } else {
            json!({"anyOf": calls})
        };
        let mut list = json!({"type": "array", "items": item, "minItems": 1});
        if !self.parallel {
            list["maxItems"] = json!(1);
        }
        json!({
            "type": "object",
            "properties": {"tool_calls": list},
            "required": ["tool_calls"],
            "additionalProperties": false,
            "x-guidance": {"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "},
        })
    }

    /// What decoding is held to: `required` and named choices to the call object; `auto` to the call
    /// object or text that does not start with `{` (or whitespace). `response_format` (`text` is `None`)
    /// shapes a text answer under `auto`; with `required` there is no text answer to shape.
    pub fn constraint_spec(
        &self,
        response_format: Option<&bitnet_grammar::ConstraintSpec>,
    ) -> bitnet_grammar::ConstraintSpec {
        let calls = self.calls_schema();
        match (&self.choice, response_format) {
            (ToolChoice::Required | ToolChoice::Named(_), _) => {
                bitnet_grammar::ConstraintSpec::json_schema(calls)
            }
            (_, None) => bitnet_grammar::ConstraintSpec::Lark(format!(
                "start: calls | TEXT\ncalls: %json {calls}\nTEXT: /[^{{ \\t\\r\\n][\\s\\S]*/\n"
            )),
            (_, Some(rf)) => {
                let schema = match rf {
                    bitnet_grammar::ConstraintSpec::JsonSchema { schema, .. } => schema.clone(),
                    _ => json!({"type": "object"}),
                };
                let mut schema = if schema == Value::Bool(true) {
                    json!({})
                } else {
                    schema
                };
                if let Some(o) = schema.as_object_mut() {
                    o.entry("x-guidance")
                        .or_insert_with(|| calls["x-guidance"].clone());
                }
                bitnet_grammar::ConstraintSpec::Lark(format!(
                    "start: calls | answer\ncalls: %json {calls}\nanswer: %json {schema}\n"
                ))
            }
        }
    }
}

/// Checks a message's tool fields: `tool_calls` only from the assistant, each of type `function`;
/// `tool_call_id` required in, and only in, `tool` messages.
pub fn check_message(i: usize, m: &ChatMessage) -> Result<(), ApiError> {
    if let Some(calls) = &m.tool_calls {
        if m.role != Role::Assistant {
            return Err(ApiError::param(
                &format!("messages[{i}].tool_calls"),
                format!("`messages[{i}].tool_calls` is for assistant messages only"),
            ));
        }
        for (j, c) in calls.iter().enumerate() {
            if c.kind != "function" {
                return Err(ApiError::param(
                    &format!("messages[{i}].tool_calls[{j}].type"),
                    format!(
                        "`messages[{i}].tool_calls[{j}].type` is {:?}: only \"function\" calls are supported",
                        c.kind
                    ),
                ));
            }
        }
    }
    match (m.role == Role::Tool, &m.tool_call_id) {
        (true, None) => Err(ApiError::param(
            &format!("messages[{i}].tool_call_id"),
            format!("`messages[{i}].tool_call_id` is required in a `tool` message"),
        )),
        (false, Some(_)) => Err(ApiError::param(
            &format!("messages[{i}].tool_call_id"),
            format!("`messages[{i}].tool_call_id` is for `tool` messages only"),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
