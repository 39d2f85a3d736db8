//! Chat templates: a conversation in, the prompt text the model was trained on out.
//!
//! [`ChatTemplate`] renders the Jinja template that ships with a checkpoint (carried verbatim in the
//! `.bitnet` header) with `minijinja`, set up so the text is byte-identical to Hugging Face
//! transformers' `tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`:
//!
//! - the environment behaves like transformers' `ImmutableSandboxedEnvironment(trim_blocks=True,
//!   lstrip_blocks=True)` with the `loopcontrols` extension;
//! - the context holds `messages`, `add_generation_prompt`, `bos_token`, `eos_token`, `tools` (the
//!   request's tools for [`ChatTemplate::render_json_with_tools`], else `none`, as transformers passes
//!   `None` and templates test `tools is not none`) and `documents` set to `none`;
//! - `tojson` is transformers' own, plain `json.dumps(x, ensure_ascii=False)` with `", "` and `": "` as
//!   separators (minijinja's built-in escapes HTML characters), with `ensure_ascii`, `indent`,
//!   `separators` and `sort_keys`;
//! - `raise_exception(msg)` fails the render with [`ChatError::TemplateException`], which names the
//!   template and carries the message; `strftime_now(fmt)` formats the current time (UTC);
//! - Python semantics where minijinja's differ and a template can see it: string methods come from
//!   `minijinja_contrib::pycompat`, `trim` and `strip` use Python's whitespace, printed values look like
//!   Python's `str()` (`True`, `None`, `1e+16`, `['a', 'b']`), and `{% generation %}` blocks (the tag
//!   transformers adds to track assistant tokens) render their body.
//!
//! A file without a template gets [`BITNET_2B4T_CHAT_TEMPLATE`], the template of
//! `microsoft/bitnet-b1.58-2B-4T`. Start with [`ChatTemplate::new`] (or [`ChatTemplate::from_source`]),
//! then [`ChatTemplate::render`]. [`validate_roles`] is a separate check because a template may accept
//! roles beyond [`KNOWN_ROLES`].

use std::borrow::Cow;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Serde, Value};
use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::{ChatError, Result};

mod python;
mod strftime;
#[cfg(test)]
mod tests;
mod tojson;

use python::{py_str, python_methods, trim};
use strftime::strftime_now;
use tojson::tojson;

/// The chat template of `microsoft/bitnet-b1.58-2B-4T`, for files that carry none. It writes
/// `Role: content<|eot_id|>` per message (role capitalized, content trimmed) and `Assistant: ` when a
/// generation prompt is asked for. It emits no BOS: the runner prepends one.
pub const BITNET_2B4T_CHAT_TEMPLATE: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = message['role'] | capitalize + ': '+ message['content'] | trim + '<|eot_id|>' %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}";

/// The roles every chat template understands.
pub const KNOWN_ROLES: [&str; 3] = ["system", "user", "assistant"];

/// One turn of a conversation. Serialized with `role` before `content`, the order a template sees
/// when it iterates a message or passes it to `tojson`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Who speaks: `system`, `user`, `assistant`, or a role the template knows.
    pub role: String,
    /// What they say.
    pub content: String,
}

impl Message {
    /// A message with any role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }

    /// A `system` message.
    pub fn system(content: impl Into<String>) -> Message {
        Message::new("system", content)
    }

    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Message {
        Message::new("user", content)
    }

    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> Message {
        Message::new("assistant", content)
    }
}

/// Checks that every message has one of `allowed` roles (usually [`KNOWN_ROLES`]); the error names the
/// first message at fault.
pub fn validate_roles(messages: &[Message], allowed: &[&str]) -> Result<()> {
    match messages
        .iter()
        .enumerate()
        .find(|(_, m)| !allowed.contains(&m.role.as_str()))
    {
        None => Ok(()),
        Some((index, m)) => Err(ChatError::UnknownRole {
            index,
            role: m.role.clone(),
            allowed: allowed.join(", "),
        }),
    }
}

/// The fuel of one render: 2 million instructions, or 128 MB of text built or written, or a mix (a
/// conversation of a thousand turns takes well under 1% of it).
pub const RENDER_FUEL: u64 = 2_000_000;

/// A compiled chat template with the special-token strings it is rendered with.
pub struct ChatTemplate {
    name: String,
    source: String,
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    reads_tools: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("name", &self.name)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source`. `name` appears in every error (e.g. the model file's path); `bos_token` and
    /// `eos_token` are the strings of the tokenizer's special tokens (e.g. `<|begin_of_text|>`).
    pub fn new(
        name: impl Into<String>,
        source: impl Into<String>,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<ChatTemplate> {
        let name = name.into();
        let source = source.into();
        let mut env = Environment::new();
        // A budget for every render: instructions, and bytes of text built or written (64 per unit), so a
        // template from a stranger that loops or doubles a string without bound stops with an error.
        env.set_fuel(Some(RENDER_FUEL));
        let compiled = rewrite_generation_tags(&source).into_owned();
        configure(&mut env)
            .and_then(|()| env.add_template_owned(name.clone(), compiled))
            .map_err(|e| ChatError::TemplateSyntax {
                template: name.clone(),
                message: describe(&e),
            })?;
        let reads_tools = env
            .get_template(&name)
            .is_ok_and(|t| t.undeclared_variables(false).contains("tools"));
        Ok(ChatTemplate {
            name,
            source,
            env,
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
            reads_tools,
        })
    }

    /// The file's template if it has one, else [`BITNET_2B4T_CHAT_TEMPLATE`] (then the name says so).
    pub fn from_source(
        name: impl Into<String>,
        source: Option<&str>,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<ChatTemplate> {
        match source {
            Some(source) => ChatTemplate::new(name, source, bos_token, eos_token),
            None => ChatTemplate::new(
                format!("{} (built-in BitNet b1.58 2B4T template)", name.into()),
                BITNET_2B4T_CHAT_TEMPLATE,
                bos_token,
                eos_token,
            ),
        }
    }

    /// The name errors use.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the template reads the `tools` variable, i.e. writes tool definitions itself (Hermes,
    /// Qwen, Llama 3.1 and Falcon3's templates do; BitNet 2B4T's does not).
    pub fn reads_tools(&self) -> bool {
        self.reads_tools
    }

    /// The template text as given.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends where the assistant's reply
    /// starts (if the template honours the flag). An empty conversation is an error.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        if messages.is_empty() {
            return Err(ChatError::NoMessages);
        }
        self.render_value(Value::from(Serde(messages)), None, add_generation_prompt)
    }

    /// Renders messages given as JSON objects, for messages with fields beyond `role` and `content`
    /// (`tool_calls`, `name`, content parts). Key order is kept as given.
    pub fn render_json(
        &self,
        messages: &[serde_json::Value],
        add_generation_prompt: bool,
    ) -> Result<String> {
        if messages.is_empty() {
            return Err(ChatError::NoMessages);
        }
        self.render_value(Value::from(Serde(messages)), None, add_generation_prompt)
    }

    /// [`ChatTemplate::render_json`] with `tools`, as transformers' `apply_chat_template(messages,
    /// tools=tools)` passes them: the list of `{"type": "function", "function": {...}}` objects (`None`
    /// renders `tools` as `none`, as without tools).
    pub fn render_json_with_tools(
        &self,
        messages: &[serde_json::Value],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        if messages.is_empty() {
            return Err(ChatError::NoMessages);
        }
        self.render_value(
            Value::from(Serde(messages)),
            tools.map(|t| Value::from(Serde(t))),
            add_generation_prompt,
        )
    }

    fn render_value(
        &self,
        messages: Value,
        tools: Option<Value>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self
            .env
            .get_template(&self.name)
            .map_err(|e| self.render_error(&e))?;
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
            tools => tools.unwrap_or(Value::from(())),
            documents => Value::from(()),
        };
        template.render(ctx).map_err(|e| self.render_error(&e))
    }

    fn render_error(&self, err: &minijinja::Error) -> ChatError {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
        while let Some(e) = cause {
            if let Some(raised) = e.downcast_ref::<RaisedException>() {
                return ChatError::TemplateException {
                    template: self.name.clone(),
                    message: raised.0.clone(),
                };
            }
            cause = e.source();
        }
        let message = if err.kind() == minijinja::ErrorKind::OutOfFuel {
            format!(
                "the template ran out of its budget of {RENDER_FUEL} steps: it loops or builds text without \
                 bound"
            )
        } else {
            describe(err)
        };
        ChatError::TemplateRender {
            template: self.name.clone(),
            message,
        }
    }
}

/// minijinja's message with the line, without the template name (our error names it).
fn describe(err: &minijinja::Error) -> String {
    let what = match err.detail() {
        Some(detail) => format!("{}: {detail}", err.kind()),
        None => err.kind().to_string(),
    };
    match err.line() {
        Some(line) => format!("{what} (line {line})"),
        None => what,
    }
}

/// The error `raise_exception` returns; found again in the error's source chain.
#[derive(Debug)]
struct RaisedException(String);

impl std::fmt::Display for RaisedException {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedException {}

fn configure(env: &mut Environment<'static>) -> std::result::Result<(), minijinja::Error> {
    env.set_syntax(
        SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()?,
    );
    // transformers renders with autoescape off, whatever the template's name looks like.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_unknown_method_callback(python_methods);
    env.set_formatter(|out, _state, value| {
        out.write_str(&py_str(value))
            .map_err(|e| minijinja::Error::new(ErrorKind::WriteFailure, e.to_string()))
    });
    env.add_filter("tojson", tojson);
    env.add_filter("trim", trim);
    env.add_filter("string", |v: Value| py_str(&v));
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    Ok(())
}

fn raise_exception(message: Value) -> std::result::Result<Value, minijinja::Error> {
    let message = py_str(&message);
    Err(
        minijinja::Error::new(ErrorKind::InvalidOperation, message.clone())
            .with_source(RaisedException(message)),
    )
}

/// `{% generation %}` ... `{% endgeneration %}` is transformers' own tag (its `AssistantTracker`
/// extension); without assistant masks it renders its body, which is what `{% if true %}` does, with the
/// same whitespace control.
fn rewrite_generation_tags(source: &str) -> Cow<'_, str> {
    if !source.contains("generation") {
        return Cow::Borrowed(source);
    }
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(at) = rest.find("{%") {
        out.push_str(&rest[..at]);
        let tag = &rest[at..];
        // The closing `%}` comes after the opening `{%` (in `{%}` they share the `%`).
        match tag[2..].find("%}").map(|e| e + 2) {
            Some(end) => {
                let whole = &tag[..end + 2];
                out.push_str(&rewrite_tag(whole));
                rest = &tag[end + 2..];
            }
            None => {
                out.push_str(tag);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Rewrites one `{%...%}` block tag if it is `generation` or `endgeneration`.
fn rewrite_tag(tag: &str) -> Cow<'_, str> {
    let inner = &tag[2..tag.len() - 2];
    let (open, inner) = match inner.strip_prefix(['-', '+']) {
        Some(rest) => (&inner[..1], rest),
        None => ("", inner),
    };
    let (inner, close) = match inner.strip_suffix(['-', '+']) {
        Some(rest) => (rest, &inner[inner.len() - 1..]),
        None => (inner, ""),
    };
    let replacement = match inner.trim() {
        "generation" => "if true",
        "endgeneration" => "endif",
        _ => return Cow::Borrowed(tag),
    };
    Cow::Owned(format!("{{%{open} {replacement} {close}%}}"))
}
