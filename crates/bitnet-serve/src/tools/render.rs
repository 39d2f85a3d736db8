//! The polyfill: a conversation with tools written as plain messages any chat template renders.
//!
//! - The tools and the answer format go in a system message ([`instructions`]), appended to the first
//!   message when it is a system (or developer) message, else as a new first message.
//! - An assistant message with `tool_calls` becomes its text (if any) followed by the calls as the JSON
//!   object the model is asked to write: `{"tool_calls": [{"name": ..., "arguments": {...}}]}`.
//! - `tool` messages become one user message per run of results, each result as
//!   `Result of NAME (call ID):\nCONTENT`, so templates that insist on user/assistant turns accept them.
//!
//! Every string of the result is message content, which the engine tokenizes without special tokens:
//! neither a tool's result nor its description nor a call's arguments can become control tokens.

use serde::Serialize;
use serde_json::{Value, json};

use super::{MessageToolCall, ToolChoice, ToolSetup};
use crate::api::ApiError;
use crate::request::{ChatMessage, Content, Role};

/// serde_json output with Python's `", "` and `": "` separators, as the grammar makes the model write.
struct Spaced;

impl serde_json::ser::Formatter for Spaced {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

/// `v` as JSON with `", "` and `": "` separators.
pub fn spaced_json(v: &Value) -> String {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, Spaced);
    // Writing a Value to a Vec cannot fail.
    let _ = v.serialize(&mut ser);
    String::from_utf8(out).unwrap_or_default()
}

/// The system text that describes the tools and the answer format.
pub fn instructions(setup: &ToolSetup) -> String {
    let mut s = String::from(
        "# Tools\n\nYou can call these tools. Each line is one tool: its name, what it does, and the JSON \
         Schema of its arguments.\n",
    );
    for t in &setup.tools {
        let mut line = json!({"name": t.name});
        if let Some(d) = &t.description {
            line["description"] = json!(d);
        }
        line["parameters"] = t.parameters.clone();
        s.push_str(&spaced_json(&line));
        s.push('\n');
    }
    s.push('\n');
    let answer = "answer with only a JSON object of this form, and nothing else:\n\
                  {\"tool_calls\": [{\"name\": \"TOOL_NAME\", \"arguments\": {ARGUMENTS}}]}\n";
    match &setup.choice {
        ToolChoice::Required => {
            s.push_str("You must call at least one tool: ");
            s.push_str(answer);
        }
        ToolChoice::Named(name) => {
            s.push_str(&format!("You must call the tool {name}: "));
            s.push_str(answer);
        }
        _ => {
            s.push_str("To call tools, ");
            s.push_str(answer);
            s.push_str(
                "To answer without a tool, write plain text that does not start with \"{\".\n",
            );
        }
    }
    s.push_str(if setup.parallel {
        "Put one entry in \"tool_calls\" per call; several calls run at once."
    } else {
        "Make one call at most per answer."
    });
    s.push_str(
        "\nA tool's result comes back in a user message that starts with \"Result of\", and then you \
         answer the user's question.",
    );
    s
}

/// A call's `arguments` string as the JSON value it holds, or as a string if it is not JSON.
pub fn arguments_value(arguments: &str) -> Value {
    serde_json::from_str(arguments).unwrap_or_else(|_| json!(arguments))
}

/// An assistant's earlier calls as the JSON object the model writes: arguments that parse as JSON go in
/// as that value, others as a string.
pub fn calls_json(calls: &[MessageToolCall]) -> String {
    let list: Vec<Value> = calls
        .iter()
        .map(|c| json!({"name": c.function.name, "arguments": arguments_value(&c.function.arguments)}))
        .collect();
    spaced_json(&json!({"tool_calls": list}))
}

/// A message's text: the string, or its text parts joined.
pub fn text_of(content: Option<&Content>) -> String {
    match content {
        None => String::new(),
        Some(Content::Text(t)) => t.clone(),
        Some(Content::Parts(parts)) => parts.iter().filter_map(|p| p.text.as_deref()).collect(),
    }
}

/// The conversation for the chat template, with tools polyfilled (`setup` is `None` when the prompt
/// shows no tools; earlier calls and results are still written out). Errors name the message's field.
pub fn conversation(
    list: &[ChatMessage],
    setup: Option<&ToolSetup>,
) -> Result<Vec<bitnet_chat::Message>, ApiError> {
    let mut out: Vec<bitnet_chat::Message> = Vec::with_capacity(list.len() + 1);
    // Tool results not yet written: they go in one user message.
    let mut results: Vec<String> = Vec::new();
    let flush = |out: &mut Vec<bitnet_chat::Message>, results: &mut Vec<String>| {
        if !results.is_empty() {
            out.push(bitnet_chat::Message::user(results.join("\n\n")));
            results.clear();
        }
    };
    for (i, m) in list.iter().enumerate() {
        let text = text_of(m.content.as_ref());
        if m.role == Role::Tool {
            let Some(id) = &m.tool_call_id else {
                return Err(ApiError::param(
                    &format!("messages[{i}].tool_call_id"),
                    format!("`messages[{i}].tool_call_id` is required in a `tool` message"),
                ));
            };
            // The call it answers, in an earlier assistant message, names the tool.
            let name = list[..i]
                .iter()
                .flat_map(|p| p.tool_calls.iter().flatten())
                .find(|c| &c.id == id)
                .map(|c| c.function.name.as_str());
            results.push(match name {
                Some(n) => format!("Result of {n} (call {id}):\n{text}"),
                None => format!("Result of call {id}:\n{text}"),
            });
            continue;
        }
        flush(&mut out, &mut results);
        let role = m.role.template_role();
        match &m.tool_calls {
            Some(calls) if !calls.is_empty() => {
                let mut body = text;
                if !body.is_empty() {
                    body.push('\n');
                }
                body.push_str(&calls_json(calls));
                out.push(bitnet_chat::Message::new(role, body));
            }
            _ => out.push(bitnet_chat::Message::new(role, text)),
        }
    }
    flush(&mut out, &mut results);
    if let Some(setup) = setup {
        let extra = instructions(setup);
        match out.first_mut() {
            Some(first) if first.role == "system" => {
                if !first.content.is_empty() {
                    first.content.push_str("\n\n");
                }
                first.content.push_str(&extra);
            }
            _ => out.insert(0, bitnet_chat::Message::system(extra)),
        }
    }
    Ok(out)
}
