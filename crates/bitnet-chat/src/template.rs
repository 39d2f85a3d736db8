//! Chat templates: a conversation in, the prompt text the model was trained on out.
//!
//! [`ChatTemplate`] renders the Jinja template that ships with a checkpoint (carried verbatim in the
//! `.bitnet` header) with `minijinja`, set up so the text is byte-identical to Hugging Face
//! transformers' `tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`:
//!
//! - the environment behaves like transformers' `ImmutableSandboxedEnvironment(trim_blocks=True,
//!   lstrip_blocks=True)` with the `loopcontrols` extension;
//! - the context holds `messages`, `add_generation_prompt`, `bos_token`, `eos_token`, and `tools` and
//!   `documents` set to `none` (transformers passes both as `None`, and templates test `tools is not none`);
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
use std::fmt::Write as _;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Rest, Serde, StringInput, Value, ValueKind};
use minijinja::{Environment, ErrorKind, State};
use serde::{Deserialize, Serialize};

use crate::{ChatError, Result};

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

/// A compiled chat template with the special-token strings it is rendered with.
pub struct ChatTemplate {
    name: String,
    source: String,
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
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
        let compiled = rewrite_generation_tags(&source).into_owned();
        configure(&mut env)
            .and_then(|()| env.add_template_owned(name.clone(), compiled))
            .map_err(|e| ChatError::TemplateSyntax {
                template: name.clone(),
                message: describe(&e),
            })?;
        Ok(ChatTemplate {
            name,
            source,
            env,
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
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
        self.render_value(Value::from(Serde(messages)), add_generation_prompt)
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
        self.render_value(Value::from(Serde(messages)), add_generation_prompt)
    }

    fn render_value(&self, messages: Value, add_generation_prompt: bool) -> Result<String> {
        let template = self
            .env
            .get_template(&self.name)
            .map_err(|e| self.render_error(&e))?;
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
            tools => Value::from(()),
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
        ChatError::TemplateRender {
            template: self.name.clone(),
            message: describe(err),
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

fn strftime_now(format: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    strftime(format, secs, now.subsec_micros())
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
        match tag.find("%}") {
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

// ---------------------------------------------------------------------------------------------
// Python semantics
// ---------------------------------------------------------------------------------------------

/// Python's `str.isspace`: Rust's `char::is_whitespace` plus the four ASCII separators U+001C..U+001F.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

#[derive(Clone, Copy)]
enum Side {
    Both,
    Start,
    End,
}

/// Python's `str.strip([chars])`, `lstrip`, `rstrip`.
fn py_strip<'a>(s: &'a str, chars: Option<&str>, side: Side) -> &'a str {
    let hit = |c: char| match chars {
        Some(set) => set.contains(c),
        None => is_py_space(c),
    };
    match side {
        Side::Both => s.trim_matches(hit),
        Side::Start => s.trim_start_matches(hit),
        Side::End => s.trim_end_matches(hit),
    }
}

/// Jinja2's `trim(value, chars=None)`: `str(value).strip(chars)`.
fn trim(value: Value, chars: Option<String>) -> String {
    let s = py_str(&value);
    py_strip(&s, chars.as_deref(), Side::Both).to_string()
}

/// pycompat's methods, with `strip`/`lstrip`/`rstrip` on Python's whitespace.
fn python_methods(
    state: &mut State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> std::result::Result<Value, minijinja::Error> {
    if let Some(s) = value.as_str() {
        let side = match method {
            "strip" => Some(Side::Both),
            "lstrip" => Some(Side::Start),
            "rstrip" => Some(Side::End),
            _ => None,
        };
        if let Some(side) = side {
            let (chars,): (Option<&str>,) = minijinja::value::from_args(args)?;
            return Ok(Value::from(py_strip(s, chars, side)));
        }
        if method == "title" {
            let () = minijinja::value::from_args(args)?;
            return py_title(state, s);
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// Whether Python counts `c` as cased (categories Lu, Ll, Lt).
fn is_py_cased(c: char) -> bool {
    c.is_uppercase()
        || c.is_lowercase()
        || matches!(c as u32, 0x1C5 | 0x1C8 | 0x1CB | 0x1F2 | 0x1F88..=0x1F8F | 0x1F98..=0x1F9F
            | 0x1FA8..=0x1FAF | 0x1FBC | 0x1FCC | 0x1FFC)
}

/// Python's `str.title()`: a cased character after an uncased one is titlecased, every other is
/// lowercased, so `«ok»` becomes `«Ok»` (the Jinja `title` filter only starts words after spaces and
/// brackets, and stays as it is).
fn py_title(state: &State, s: &str) -> std::result::Result<Value, minijinja::Error> {
    let mut out = String::with_capacity(s.len());
    let mut previous_cased = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if previous_cased {
            if c == '\u{3a3}' && !chars.peek().is_some_and(|&n| is_py_cased(n)) {
                out.push('\u{3c2}'); // final sigma
            } else {
                out.extend(c.to_lowercase());
            }
        } else {
            // Titlecase of one character: minijinja's `capitalize` implements Unicode's table.
            let one = Value::from(c.to_string());
            let titled = minijinja::filters::capitalize(StringInput::new(state, &one)?);
            out.push_str(titled.as_str().unwrap_or_default());
        }
        previous_cased = is_py_cased(c);
    }
    Ok(Value::from(out))
}

/// Python's `repr(float)` (and `str(float)`): the shortest round-trip digits, in exponent notation when
/// the decimal exponent is below -4 or at least 16.
fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f < 0.0 { "-inf" } else { "inf" }.into();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    // `{:e}` gives the shortest round-trip digits, e.g. "-1.2345e-5".
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if !(-4..16).contains(&exp) {
        let (first, rest) = digits.split_at(1);
        let dot = if rest.is_empty() { "" } else { "." };
        let esign = if exp < 0 { '-' } else { '+' };
        return format!("{sign}{first}{dot}{rest}e{esign}{:02}", exp.unsigned_abs());
    }
    let point = exp + 1; // digits before the decimal point
    let n = digits.len() as i32;
    if point <= 0 {
        format!(
            "{sign}0.{}{digits}",
            "0".repeat(point.unsigned_abs() as usize)
        )
    } else if point >= n {
        format!("{sign}{digits}{}.0", "0".repeat((point - n) as usize))
    } else {
        let (int, frac) = digits.split_at(point as usize);
        format!("{sign}{int}.{frac}")
    }
}

/// Python's `str(value)` for the values a template can hold; what `{{ value }}` prints.
fn py_str(value: &Value) -> String {
    match value.kind() {
        ValueKind::String => value.as_str().unwrap_or_default().to_string(),
        _ => py_repr(value),
    }
}

/// Python's `repr(value)`.
fn py_repr(value: &Value) -> String {
    let mut out = String::new();
    write_repr(value, &mut out);
    out
}

fn write_repr(value: &Value, out: &mut String) {
    match value.kind() {
        ValueKind::Undefined => {}
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number if !value.is_integer() => match f64::try_from(value.clone()) {
            Ok(f) => out.push_str(&py_float(f)),
            Err(_) => out.push_str(&value.to_string()),
        },
        ValueKind::String => write_str_repr(value.as_str().unwrap_or_default(), out),
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            if let Ok(items) = value.try_iter() {
                for (i, item) in items.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_repr(&item, out);
                }
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            if let Ok(keys) = value.try_iter() {
                for (i, key) in keys.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_repr(&key, out);
                    out.push_str(": ");
                    write_repr(&value.get_item(&key).unwrap_or_default(), out);
                }
            }
            out.push('}');
        }
        _ => out.push_str(&value.to_string()),
    }
}

/// Python's `str.isprintable()` for one character, from the categories Python escapes in `repr`
/// (Cc, Cf, Co, Zl, Zp, and Zs other than the space). Unassigned code points count as printable.
fn is_py_printable(c: char) -> bool {
    let cp = c as u32;
    !(c.is_control()
        || matches!(cp,
            0xA0 | 0xAD | 0x1680 | 0x2000..=0x200F | 0x2028..=0x202F | 0x205F..=0x2064
            | 0x2066..=0x206F | 0x3000 | 0xFEFF | 0xFFF9..=0xFFFB | 0x600..=0x605 | 0x61C | 0x6DD
            | 0x70F | 0x180E | 0x110BD | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A | 0xE0001
            | 0xE0020..=0xE007F | 0xE000..=0xF8FF | 0xF0000..=0xFFFFD | 0x100000..=0x10FFFD))
}

/// Python's `repr(str)`: single quotes unless the text has `'` and no `"`.
fn write_str_repr(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if c == ' ' || c.is_ascii_graphic() || (!c.is_ascii() && is_py_printable(c)) => {
                out.push(c)
            }
            c if (c as u32) < 0x100 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if (c as u32) < 0x10000 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
    }
    out.push(quote);
}

// ---------------------------------------------------------------------------------------------
// tojson: Python's json.dumps
// ---------------------------------------------------------------------------------------------

struct JsonStyle {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

fn json_error(msg: impl Into<Cow<'static, str>>) -> minijinja::Error {
    minijinja::Error::new(ErrorKind::InvalidOperation, msg)
}

/// transformers' `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
fn tojson(
    value: &Value,
    positional: Rest<Value>,
    kwargs: Kwargs,
) -> std::result::Result<String, minijinja::Error> {
    const NAMES: [&str; 4] = ["ensure_ascii", "indent", "separators", "sort_keys"];
    if positional.len() > NAMES.len() {
        return Err(minijinja::Error::new(
            ErrorKind::TooManyArguments,
            "tojson takes at most 4 arguments (ensure_ascii, indent, separators, sort_keys)",
        ));
    }
    let mut args: [Option<Value>; 4] = Default::default();
    for (slot, v) in args.iter_mut().zip(positional.iter()) {
        *slot = Some(v.clone());
    }
    for (slot, name) in args.iter_mut().zip(NAMES) {
        if let Some(v) = kwargs.get::<Option<Value>>(name)? {
            if slot.is_some() {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson got multiple values for argument '{name}'"),
                ));
            }
            *slot = Some(v);
        }
    }
    kwargs.assert_all_used()?;
    let [ensure_ascii, indent, separators, sort_keys] = args;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => Some(match v.kind() {
            ValueKind::String => v.as_str().unwrap_or_default().to_string(),
            ValueKind::Bool => " ".repeat(usize::from(v.is_true())),
            ValueKind::Number if v.is_integer() => {
                " ".repeat(v.as_i64().unwrap_or(0).clamp(0, 1 << 16) as usize)
            }
            _ => return Err(json_error("tojson: indent must be an integer or a string")),
        }),
    };
    let (item_sep, key_sep) = match separators {
        Some(v) if !v.is_none() => {
            let parts: Vec<Value> = v
                .try_iter()
                .map_err(|_| json_error("tojson: separators must be a pair of strings"))?
                .collect();
            match parts.as_slice() {
                [a, b] if a.as_str().is_some() && b.as_str().is_some() => (
                    a.as_str().unwrap_or_default().to_string(),
                    b.as_str().unwrap_or_default().to_string(),
                ),
                _ => return Err(json_error("tojson: separators must be a pair of strings")),
            }
        }
        _ if indent.is_some() => (",".to_string(), ": ".to_string()),
        _ => (", ".to_string(), ": ".to_string()),
    };
    let style = JsonStyle {
        ensure_ascii: ensure_ascii.is_some_and(|v| v.is_true()),
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.is_some_and(|v| v.is_true()),
    };
    let mut out = String::new();
    write_json(value, &style, 0, &mut out)?;
    Ok(out)
}

fn write_json(
    value: &Value,
    style: &JsonStyle,
    level: usize,
    out: &mut String,
) -> std::result::Result<(), minijinja::Error> {
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&json_number(value)),
        ValueKind::String => write_json_str(value.as_str().unwrap_or_default(), style, out),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                separate(style, i, level + 1, out);
                write_json(item, style, level + 1, out)?;
            }
            close(style, level, out);
            out.push(']');
        }
        ValueKind::Map => {
            let mut entries = Vec::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                entries.push((key, item));
            }
            if entries.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            if style.sort_keys {
                sort_json_keys(&mut entries)?;
            }
            out.push('{');
            for (i, (key, item)) in entries.iter().enumerate() {
                separate(style, i, level + 1, out);
                write_json_str(&json_key(key)?, style, out);
                out.push_str(&style.key_sep);
                write_json(item, style, level + 1, out)?;
            }
            close(style, level, out);
            out.push('}');
        }
        other => {
            return Err(json_error(format!(
                "tojson: a value of type {other} is not JSON serializable"
            )));
        }
    }
    Ok(())
}

fn separate(style: &JsonStyle, i: usize, level: usize, out: &mut String) {
    if i > 0 {
        out.push_str(&style.item_sep);
    }
    if let Some(indent) = &style.indent {
        out.push('\n');
        out.push_str(&indent.repeat(level));
    }
}

fn close(style: &JsonStyle, level: usize, out: &mut String) {
    if let Some(indent) = &style.indent {
        out.push('\n');
        out.push_str(&indent.repeat(level));
    }
}

fn json_number(value: &Value) -> String {
    if value.is_integer() {
        return value.to_string();
    }
    match f64::try_from(value.clone()) {
        Ok(f) if f.is_nan() => "NaN".into(),
        Ok(f) if f.is_infinite() => if f < 0.0 { "-Infinity" } else { "Infinity" }.into(),
        Ok(f) => py_float(f),
        Err(_) => value.to_string(),
    }
}

/// Python's conversion of a dict key: strings as they are, numbers, booleans and `None` as JSON text.
fn json_key(key: &Value) -> std::result::Result<String, minijinja::Error> {
    match key.kind() {
        ValueKind::String => Ok(key.as_str().unwrap_or_default().to_string()),
        ValueKind::Number if key.is_integer() => Ok(key.to_string()),
        ValueKind::Number => Ok(match f64::try_from(key.clone()) {
            Ok(f) if f.is_nan() => "NaN".into(),
            Ok(f) if f.is_infinite() => if f < 0.0 { "-Infinity" } else { "Infinity" }.into(),
            Ok(f) => py_float(f),
            Err(_) => key.to_string(),
        }),
        ValueKind::Bool => Ok(if key.is_true() { "true" } else { "false" }.into()),
        ValueKind::None => Ok("null".into()),
        other => Err(json_error(format!(
            "tojson: keys must be str, int, float, bool or None, not {other}"
        ))),
    }
}

/// `sort_keys=True`: Python sorts the original keys, which must be mutually comparable.
fn sort_json_keys(entries: &mut [(Value, Value)]) -> std::result::Result<(), minijinja::Error> {
    let all = |kind: ValueKind| entries.iter().all(|(k, _)| k.kind() == kind);
    if all(ValueKind::String) {
        entries.sort_by(|a, b| a.0.as_str().cmp(&b.0.as_str()));
    } else if entries
        .iter()
        .all(|(k, _)| matches!(k.kind(), ValueKind::Number | ValueKind::Bool))
    {
        entries.sort_by(|a, b| {
            let x = f64::try_from(a.0.clone()).unwrap_or(0.0);
            let y = f64::try_from(b.0.clone()).unwrap_or(0.0);
            x.total_cmp(&y)
        });
    } else {
        return Err(json_error(
            "tojson: sort_keys needs keys of one comparable type",
        ));
    }
    Ok(())
}

/// A JSON string as Python's encoder writes it: `\"`, `\\`, `\n`, `\r`, `\t`, `\b`, `\f`, other
/// control characters as `\u00XX`; with `ensure_ascii` every non-ASCII character (and DEL) as `\uXXXX`,
/// astral characters as surrogate pairs.
fn write_json_str(s: &str, style: &JsonStyle, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if style.ensure_ascii && !(' '..='~').contains(&c) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

// ---------------------------------------------------------------------------------------------
// strftime_now
// ---------------------------------------------------------------------------------------------

const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// The civil date of a day count since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

/// ISO 8601 week-numbering year and week of a date given by its year, 0-based day of the year and
/// weekday (Monday = 1 .. Sunday = 7).
fn iso_week(year: i64, yday: i64, iso_wday: i64) -> (i64, i64) {
    let weeks_in = |y: i64| {
        let p =
            |y: i64| (y + y.div_euclid(4) - y.div_euclid(100) + y.div_euclid(400)).rem_euclid(7);
        if p(y) == 4 || p(y - 1) == 3 { 53 } else { 52 }
    };
    let week = (yday + 1 - iso_wday + 10).div_euclid(7);
    if week < 1 {
        (year - 1, weeks_in(year - 1))
    } else if week > weeks_in(year) {
        (year + 1, 1)
    } else {
        (year, week)
    }
}

/// C `strftime` (glibc, C locale) of a UTC time, with Python's `%f`; the flags `-` (no padding), `_`
/// (spaces) and `0` (zeros). Unknown directives are copied as they are, as glibc does.
fn strftime(format: &str, unix_secs: i64, micros: u32) -> String {
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (secs / 3600, secs / 60 % 60, secs % 60);
    let wday = (days + 4).rem_euclid(7); // 1970-01-01 was a Thursday; Sunday = 0
    let jan1 = {
        let mut d = days;
        // walk back to January 1st: the day of the year from the month table
        let cumulative = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
        d -= i64::from(cumulative[(month - 1) as usize] + day - 1);
        if month > 2 && is_leap(year) {
            d -= 1;
        }
        d
    };
    let yday = days - jan1;
    let iso_wday = if wday == 0 { 7 } else { wday };
    let hour12 = if hour % 12 == 0 { 12 } else { hour % 12 };

    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let flag = match chars.peek() {
            Some(&f @ ('-' | '_' | '0')) => {
                chars.next();
                Some(f)
            }
            _ => None,
        };
        let Some(spec) = chars.next() else {
            out.push('%');
            if let Some(f) = flag {
                out.push(f);
            }
            break;
        };
        let num = |out: &mut String, v: i64, width: usize, pad: char| {
            let pad = match flag {
                Some('-') => return out.push_str(&v.to_string()),
                Some('_') => ' ',
                Some('0') => '0',
                _ => pad,
            };
            let s = v.to_string();
            for _ in s.len()..width {
                out.push(pad);
            }
            out.push_str(&s);
        };
        match spec {
            'a' => out.push_str(&WEEKDAYS[wday as usize][..3]),
            'A' => out.push_str(WEEKDAYS[wday as usize]),
            'b' | 'h' => out.push_str(&MONTHS[(month - 1) as usize][..3]),
            'B' => out.push_str(MONTHS[(month - 1) as usize]),
            'c' => out.push_str(&strftime("%a %b %e %H:%M:%S %Y", unix_secs, micros)),
            'C' => num(&mut out, year.div_euclid(100), 2, '0'),
            'd' => num(&mut out, i64::from(day), 2, '0'),
            'D' | 'x' => out.push_str(&strftime("%m/%d/%y", unix_secs, micros)),
            'e' => num(&mut out, i64::from(day), 2, ' '),
            'f' => num(&mut out, i64::from(micros), 6, '0'),
            'F' => out.push_str(&strftime("%Y-%m-%d", unix_secs, micros)),
            'G' => num(&mut out, iso_week(year, yday, iso_wday).0, 1, '0'),
            'g' => num(
                &mut out,
                iso_week(year, yday, iso_wday).0.rem_euclid(100),
                2,
                '0',
            ),
            'H' => num(&mut out, hour, 2, '0'),
            'I' => num(&mut out, hour12, 2, '0'),
            'j' => num(&mut out, yday + 1, 3, '0'),
            'k' => num(&mut out, hour, 2, ' '),
            'l' => num(&mut out, hour12, 2, ' '),
            'm' => num(&mut out, i64::from(month), 2, '0'),
            'M' => num(&mut out, minute, 2, '0'),
            'n' => out.push('\n'),
            'p' => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            'P' => out.push_str(if hour < 12 { "am" } else { "pm" }),
            'r' => out.push_str(&strftime("%I:%M:%S %p", unix_secs, micros)),
            'R' => out.push_str(&strftime("%H:%M", unix_secs, micros)),
            's' => out.push_str(&unix_secs.to_string()),
            'S' => num(&mut out, second, 2, '0'),
            't' => out.push('\t'),
            'T' | 'X' => out.push_str(&strftime("%H:%M:%S", unix_secs, micros)),
            'u' => num(&mut out, iso_wday, 1, '0'),
            'U' => num(&mut out, (yday + 7 - wday) / 7, 2, '0'),
            'V' => num(&mut out, iso_week(year, yday, iso_wday).1, 2, '0'),
            'w' => num(&mut out, wday, 1, '0'),
            'W' => num(&mut out, (yday + 7 - (wday + 6) % 7) / 7, 2, '0'),
            'y' => num(&mut out, year.rem_euclid(100), 2, '0'),
            'Y' => num(&mut out, year, 1, '0'),
            'z' => out.push_str("+0000"),
            'Z' => out.push_str("UTC"),
            '%' => out.push('%'),
            other => {
                out.push('%');
                if let Some(f) = flag {
                    out.push(f);
                }
                out.push(other);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tpl(source: &str) -> ChatTemplate {
        ChatTemplate::new("test", source, "<s>", "</s>").unwrap()
    }

    fn render_str(source: &str) -> String {
        tpl(source).render(&[Message::user("hi")], false).unwrap()
    }

    #[test]
    fn builtin_template_renders_a_conversation() {
        let t = ChatTemplate::from_source("m.bitnet", None, "<|begin_of_text|>", "<|end_of_text|>")
            .unwrap();
        assert_eq!(t.source(), BITNET_2B4T_CHAT_TEMPLATE);
        assert_eq!(t.name(), "m.bitnet (built-in BitNet b1.58 2B4T template)");
        let msgs = [
            Message::system("Be brief. "),
            Message::user("\n Hi!\n"),
            Message::assistant("Hello."),
        ];
        assert_eq!(
            t.render(&msgs, true).unwrap(),
            "System: Be brief.<|eot_id|>User: Hi!<|eot_id|>Assistant: Hello.<|eot_id|>Assistant: "
        );
        assert_eq!(
            t.render(&msgs[..1], false).unwrap(),
            "System: Be brief.<|eot_id|>"
        );
    }

    #[test]
    fn empty_conversation_is_an_error() {
        let t = tpl(BITNET_2B4T_CHAT_TEMPLATE);
        let err = t.render(&[], true).unwrap_err();
        assert!(matches!(err, ChatError::NoMessages), "{err}");
        assert!(matches!(
            t.render_json(&[], true),
            Err(ChatError::NoMessages)
        ));
    }

    #[test]
    fn roles_are_checked_by_the_helper() {
        let msgs = [Message::user("a"), Message::new("tool", "b")];
        let err = validate_roles(&msgs, &KNOWN_ROLES).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, ChatError::UnknownRole { index: 1, ref role, .. } if role == "tool"),
            "{text}"
        );
        assert!(
            text.contains("'tool'") && text.contains("system, user, assistant"),
            "{text}"
        );
        validate_roles(&msgs, &["user", "tool"]).unwrap();
        validate_roles(&msgs[..1], &KNOWN_ROLES).unwrap();
    }

    #[test]
    fn syntax_errors_name_the_template_and_line() {
        let err = ChatTemplate::new("model.bitnet", "ok\n{% for m in messages %}{{ m }", "", "")
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ChatError::TemplateSyntax { .. }), "{text}");
        assert!(
            text.contains("model.bitnet") && text.contains("syntax error"),
            "{text}"
        );
        assert!(text.contains("line 2"), "{text}");
        let err = ChatTemplate::new("x", "{% if %}", "", "").unwrap_err();
        assert!(matches!(err, ChatError::TemplateSyntax { .. }), "{err}");
    }

    #[test]
    fn raise_exception_names_template_and_message() {
        let t = ChatTemplate::new(
            "strict",
            "{% if messages[0]['role'] != 'system' %}{{ raise_exception('System first, please') }}{% endif %}ok",
            "",
            "",
        )
        .unwrap();
        let err = t.render(&[Message::user("x")], false).unwrap_err();
        let text = err.to_string();
        match &err {
            ChatError::TemplateException { template, message } => {
                assert_eq!(template, "strict");
                assert_eq!(message, "System first, please");
            }
            other => panic!("{other}"),
        }
        assert!(
            text.contains("strict") && text.contains("System first, please"),
            "{text}"
        );
        assert_eq!(t.render(&[Message::system("x")], false).unwrap(), "ok");
    }

    #[test]
    fn render_errors_are_reported_with_the_template_name() {
        let t = tpl("{{ messages[0].content.nope() }}");
        let err = t.render(&[Message::user("x")], false).unwrap_err();
        assert!(matches!(err, ChatError::TemplateRender { .. }), "{err}");
        assert!(err.to_string().contains("'test'"), "{err}");
    }

    #[test]
    fn context_has_special_tokens_and_none_tools() {
        assert_eq!(
            render_str(
                "{{ bos_token }}|{{ eos_token }}|{{ tools is none }}|{{ documents is none }}|{{ add_generation_prompt }}"
            ),
            "<s>|</s>|True|True|False"
        );
        assert_eq!(
            render_str("{% if tools is not none %}tools{% endif %}{{ messages|length }}"),
            "1"
        );
    }

    #[test]
    fn trim_and_lstrip_blocks_like_transformers() {
        let src = "{% for m in messages %}\n    {% if true %}\n[{{ m.role }}]\n    {% endif %}\n{% endfor %}\nend\n";
        assert_eq!(render_str(src), "[user]\nend");
    }

    #[test]
    fn message_key_order_is_kept() {
        assert_eq!(
            render_str("{{ messages[0]|tojson }}"),
            r#"{"role": "user", "content": "hi"}"#
        );
        let t = tpl("{{ messages[0]|tojson }}");
        let m = serde_json::json!({"content": "c", "role": "user", "tool_calls": [{"name": "f"}]});
        assert_eq!(
            t.render_json(&[m], false).unwrap(),
            r#"{"content": "c", "role": "user", "tool_calls": [{"name": "f"}]}"#
        );
    }

    #[test]
    fn tojson_is_python_json_dumps() {
        let t = tpl("{{ x|tojson }}");
        let cases = [
            (
                serde_json::json!("<a href='x'>&</a>"),
                r#""<a href='x'>&</a>""#,
            ),
            (
                serde_json::json!("é\u{1F600}\n\t\"\\\u{1}\u{7f}"),
                "\"é\u{1F600}\\n\\t\\\"\\\\\\u0001\u{7f}\"",
            ),
            (
                serde_json::json!([1, 2.5, 1e16, 1e-5, 0.0001, true, null, [], {}]),
                "[1, 2.5, 1e+16, 1e-05, 0.0001, true, null, [], {}]",
            ),
            (
                serde_json::json!({"b": 1, "a": [1.0, -0.5]}),
                r#"{"b": 1, "a": [1.0, -0.5]}"#,
            ),
        ];
        for (x, want) in cases {
            let got = t
                .env
                .render_str(
                    "{{ x|tojson }}",
                    minijinja::context! { x => Value::from(Serde(&x)) },
                )
                .unwrap();
            assert_eq!(got, want, "{x}");
        }
        let x = Value::from(Serde(serde_json::json!({"b": [1, {"c": "é"}], "a": {}})));
        let r = |src: &str| {
            t.env
                .render_str(src, minijinja::context! { x => x.clone() })
                .unwrap()
        };
        assert_eq!(
            r("{{ x|tojson(indent=2) }}"),
            "{\n  \"b\": [\n    1,\n    {\n      \"c\": \"é\"\n    }\n  ],\n  \"a\": {}\n}"
        );
        assert_eq!(
            r("{{ x|tojson(indent='\t', sort_keys=true) }}")
                .lines()
                .nth(1),
            Some("\t\"a\": {},")
        );
        assert_eq!(
            r("{{ x|tojson(ensure_ascii=true) }}"),
            r#"{"b": [1, {"c": "\u00e9"}], "a": {}}"#
        );
        assert_eq!(
            r("{{ x|tojson(separators=[',', ':']) }}"),
            r#"{"b":[1,{"c":"é"}],"a":{}}"#
        );
        assert_eq!(
            r("{{ x|tojson(sort_keys=true) }}"),
            r#"{"a": {}, "b": [1, {"c": "é"}]}"#
        );
        assert_eq!(r("{{ x|tojson(indent=0) }}").lines().count(), 9);
        assert_eq!(r("{{ '😀'|tojson(true) }}"), r#""\ud83d\ude00""#);
        assert!(
            t.env
                .render_str("{{ x|tojson(nope=1) }}", minijinja::context! { x => 1 })
                .is_err()
        );
        assert!(
            t.env
                .render_str("{{ undefined_thing|tojson }}", ())
                .is_err()
        );
    }

    #[test]
    fn printed_values_look_like_python() {
        let t = tpl("");
        let r = |src: &str| t.env.render_str(src, ()).unwrap();
        assert_eq!(
            r("{{ true }} {{ none }} {{ 1.0 }} {{ 1e20 }} {{ 0.1 + 0.2 }} {{ 3 }}"),
            "True None 1.0 1e+20 0.30000000000000004 3"
        );
        assert_eq!(
            r("{{ ['a', \"it's\", 1, none, {'k': false}] }}"),
            r#"['a', "it's", 1, None, {'k': False}]"#
        );
        assert_eq!(r("{{ 'x\\ny'|string }}|{{ [1.5]|string }}"), "x\ny|[1.5]");
        assert_eq!(r("{{ ['\\n\\u00a0é'] }}"), "['\\n\\xa0é']");
    }

    #[test]
    fn python_floats() {
        for (f, want) in [
            (1.0, "1.0"),
            (-2.5, "-2.5"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (1234567890123456.0, "1234567890123456.0"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (0.1, "0.1"),
            (123.456, "123.456"),
            (-0.0, "-0.0"),
            (1e300, "1e+300"),
            (2.5e-300, "2.5e-300"),
            (f64::NAN, "nan"),
            (f64::NEG_INFINITY, "-inf"),
        ] {
            assert_eq!(py_float(f), want, "{f}");
        }
    }

    #[test]
    fn trim_and_strip_use_python_whitespace() {
        assert_eq!(
            render_str("[{{ '\u{1c}\u{a0} x \u{3000}\n'|trim }}]"),
            "[x]"
        );
        assert_eq!(render_str("[{{ 'xxhixx'|trim('x') }}]"), "[hi]");
        assert_eq!(
            render_str(
                "[{{ '\u{1f} a '.strip() }}|{{ ' a '.lstrip() }}|{{ ' a '.rstrip() }}|{{ 'abca'.strip('a') }}]"
            ),
            "[a|a | a|bc]"
        );
        assert_eq!(
            render_str("{{ 'Hello World'.lower().split(' ')|join('-') }}"),
            "hello-world"
        );
        // str.title() is Python's (words start after any uncased character); the filter is Jinja's.
        assert_eq!(
            render_str(
                r#"{{ '«ok» {"temp": 1} they\'re ǆ ΣΑΣ x'.title() }}|{{ 'o-k «ok»'|title }}"#
            ),
            "«Ok» {\"Temp\": 1} They'Re ǅ Σας X|O-K «ok»"
        );
        assert_eq!(
            render_str("{{ {'a': 1}.items()|list|length }}{{ 'abc'.startswith('ab') }}"),
            "1True"
        );
    }

    #[test]
    fn capitalize_is_python_capitalize() {
        assert_eq!(
            render_str("{{ 'uSER'|capitalize }} {{ 'ßa'|capitalize }} {{ 'ǆemal'|capitalize }}"),
            "User Ssa ǅemal"
        );
    }

    #[test]
    fn loop_controls_and_namespace_work() {
        assert_eq!(
            render_str(
                "{% set ns = namespace(n=0) %}{% for i in range(10) %}{% if i == 3 %}{% break %}{% endif %}{% if i == 1 %}{% continue %}{% endif %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}"
            ),
            "2"
        );
    }

    #[test]
    fn generation_blocks_render_their_body() {
        let src = "{% for m in messages %}{% generation %}[{{ m.content }}]{% endgeneration %}\n{%- generation -%}  !  {%- endgeneration %}{% endfor %}";
        assert_eq!(render_str(src), "[hi]!");
        assert_eq!(
            rewrite_generation_tags("{%- generation +%}"),
            "{%- if true +%}"
        );
        assert_eq!(
            rewrite_generation_tags("{% generations %}"),
            "{% generations %}"
        );
        assert_eq!(rewrite_generation_tags("a {% if x %}b"), "a {% if x %}b");
    }

    #[test]
    fn strftime_now_formats_the_current_date() {
        let year = render_str("{{ strftime_now('%Y') }}");
        assert!(year.len() == 4 && year.as_str() >= "2024", "{year}");
        let date = render_str("{{ strftime_now('%d %b %Y') }}");
        assert_eq!(date.len(), 11, "{date}");
    }

    #[test]
    fn strftime_matches_glibc() {
        // 2024-07-26 13:05:09 UTC, a Friday (Llama 3.1 templates print "26 Jul 2024").
        let t = 1_722_000_000 - 1_722_000_000 % 86_400 + 13 * 3600 + 5 * 60 + 9;
        assert_eq!(strftime("%d %b %Y", t, 0), "26 Jul 2024");
        assert_eq!(
            strftime("%A %B %-d, %Y %I:%M:%S %p %j %u %w %Z %z %%", t, 0),
            "Friday July 26, 2024 01:05:09 PM 208 5 5 UTC +0000 %"
        );
        assert_eq!(
            strftime("%F %T %e %k %y %C %D %R", t, 0),
            "2024-07-26 13:05:09 26 13 24 20 07/26/24 13:05"
        );
        assert_eq!(
            strftime("%G-W%V %U %W %f %q %", t, 42),
            "2024-W30 29 30 000042 %q %"
        );
        assert_eq!(strftime("%c", 0, 0), "Thu Jan  1 00:00:00 1970");
        // ISO week edge cases: 2021-01-03 is in 2020-W53; 2024-12-30 is in 2025-W01.
        assert_eq!(strftime("%G-%V %j", 1_609_632_000, 0), "2020-53 003");
        assert_eq!(strftime("%G-%V %j", 1_735_516_800, 0), "2025-01 365");
        assert_eq!(strftime("%Y-%m-%d %a", 951_782_400, 0), "2000-02-29 Tue");
        assert_eq!(strftime("%Y-%m-%d", -86_400, 0), "1969-12-31");
    }
}
