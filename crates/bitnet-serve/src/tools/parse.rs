//! Model output read back into tool calls, as it streams.
//!
//! [`CallScanner`] takes the generated text piece by piece and gives [`Piece`]s: plain content, the
//! start of a call (its id and name), and pieces of a call's `arguments` as the model writes them, so a
//! stream carries the arguments as they are generated (OpenAI's deltas). An answer is read as calls when
//! it starts (after whitespace) with `{`, `[` or `<tool_call>`:
//!
//! - `{"tool_calls": [{"name": "NAME", "arguments": ARGS}, ...]}`, the polyfill's format (the grammar
//!   writes exactly this);
//! - `<tool_call>{"name": "NAME", "arguments": ARGS}</tool_call>`, repeated (Hermes, Qwen), which
//!   templates that handle tools ask for.
//!
//! `arguments` is the text the model wrote for ARGS, unchanged. Text that takes another shape before the
//! first call's name is read whole at the end ([`read_calls`]: any key order, `parameters` for
//! `arguments`, a bare call object or a list of them); if it is not calls of known tools either, it is
//! the answer's content. Once a call has started, what breaks the shape ends the calls (a call cut off by
//! `max_tokens` stays as far as it got). The same scanner reads a whole answer, so a streamed answer and
//! a whole one agree.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;

use super::render::spaced_json;

/// What an answer's calls may be: of these tools, and more than one with `parallel`.
#[derive(Debug, Clone)]
pub struct CallFormat {
    /// The callable tools' names.
    pub names: Vec<String>,
    /// More than one call per answer.
    pub parallel: bool,
}

/// What the scanner read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Answer text.
    Content(String),
    /// A call starts.
    Call {
        /// Its place among the answer's calls.
        index: usize,
        /// `call_...`, unique.
        id: String,
        /// The function.
        name: String,
    },
    /// More of call `index`'s arguments.
    Args {
        /// The call.
        index: usize,
        /// The text.
        text: String,
    },
}

/// A unique call id: `call_` and 24 hex digits.
pub fn call_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!("call_{t:016x}{:08x}", n as u32)
}

/// How a step of the expected shape matched the text so far.
enum M {
    /// It matched, taking this many bytes; the captured string if the step has one.
    Ok(usize, Option<String>),
    /// The text ends inside it.
    More,
    /// It does not match.
    No,
}

/// A step of the expected shape.
#[derive(Clone, Copy)]
enum Tok {
    /// Whitespace, none or more.
    Ws,
    /// This text.
    Lit(&'static str),
    /// A JSON string (captured, decoded).
    Str,
}

fn seq(s: &str, toks: &[Tok]) -> M {
    let mut at = 0;
    let mut captured = None;
    for (k, t) in toks.iter().enumerate() {
        let rest = &s[at..];
        match t {
            Tok::Ws => {
                let n = rest.len() - rest.trim_start().len();
                at += n;
                if at == s.len() && k + 1 < toks.len() {
                    return M::More;
                }
            }
            Tok::Lit(l) => {
                if rest.starts_with(l) {
                    at += l.len();
                } else if l.starts_with(rest) {
                    return M::More;
                } else {
                    return M::No;
                }
            }
            Tok::Str => {
                if rest.is_empty() {
                    return M::More;
                }
                if !rest.starts_with('"') {
                    return M::No;
                }
                let mut esc = false;
                let mut end = None;
                for (i, c) in rest.char_indices().skip(1) {
                    match (esc, c) {
                        (true, _) => esc = false,
                        (false, '\\') => esc = true,
                        (false, '"') => {
                            end = Some(i + 1);
                            break;
                        }
                        _ => {}
                    }
                }
                let Some(end) = end else {
                    return M::More;
                };
                match serde_json::from_str::<String>(&rest[..end]) {
                    Ok(v) => captured = Some(v),
                    Err(_) => return M::No,
                }
                at += end;
            }
        }
    }
    M::Ok(at, captured)
}

/// The start of the polyfill's object, up to the first call.
const JSON_HEAD: &[Tok] = &[
    Tok::Lit("{"),
    Tok::Ws,
    Tok::Lit("\"tool_calls\""),
    Tok::Ws,
    Tok::Lit(":"),
    Tok::Ws,
    Tok::Lit("["),
    Tok::Ws,
];
const TAG_HEAD: &[Tok] = &[Tok::Lit("<tool_call>"), Tok::Ws];
/// A call object up to its arguments' value.
const CALL_HEAD: &[Tok] = &[
    Tok::Ws,
    Tok::Lit("{"),
    Tok::Ws,
    Tok::Lit("\"name\""),
    Tok::Ws,
    Tok::Lit(":"),
    Tok::Ws,
    Tok::Str,
    Tok::Ws,
    Tok::Lit(","),
    Tok::Ws,
    Tok::Lit("\"arguments\""),
    Tok::Ws,
    Tok::Lit(":"),
    Tok::Ws,
];
const CALL_END: &[Tok] = &[Tok::Ws, Tok::Lit("}")];
const TAG_CALL_END: &[Tok] = &[Tok::Ws, Tok::Lit("}"), Tok::Ws, Tok::Lit("</tool_call>")];

/// Where the arguments' value stands.
#[derive(Debug, Clone, Copy, Default)]
struct ArgState {
    started: bool,
    /// A scalar (number, `true`, ...): it ends at a delimiter.
    scalar: bool,
    depth: usize,
    in_str: bool,
    esc: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wrap {
    Json,
    Tag,
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Whitespace only so far.
    Start,
    /// Plain text.
    Content,
    /// Before the first call: the wrapper's head.
    Head(Wrap),
    /// A call object's head.
    CallHead(Wrap),
    /// In a call's arguments.
    Args(Wrap, ArgState),
    /// After the arguments: the call object's `}`, and for tags `</tool_call>`.
    CallEnd(Wrap),
    /// Between calls: `,` or `]}` (JSON), another `<tool_call>` or the end (tags).
    Between(Wrap),
    /// The shape did not match before any call: the whole text is read at the end.
    Fallback,
    /// Done (or broken after a call): the rest is not read.
    Done,
}

/// Reads generated text into content and calls of the tools `names` (see the module docs).
#[derive(Debug)]
pub struct CallScanner {
    names: Vec<String>,
    parallel: bool,
    buf: String,
    pos: usize,
    state: State,
    calls: usize,
}

impl CallScanner {
    /// A scanner for calls in `format`; without `parallel` the first call ends the answer.
    pub fn new(format: &CallFormat) -> CallScanner {
        CallScanner {
            names: format.names.clone(),
            parallel: format.parallel,
            buf: String::new(),
            pos: 0,
            state: State::Start,
            calls: 0,
        }
    }

    /// Calls started so far.
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// What `text`, the next piece of the answer, gives.
    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        loop {
            let rest = &self.buf[self.pos..];
            match self.state {
                State::Start => {
                    let t = rest.trim_start();
                    if t.is_empty() {
                        break;
                    }
                    if t.starts_with('{') {
                        self.pos += rest.len() - t.len();
                        self.state = State::Head(Wrap::Json);
                    } else if t.starts_with('[') {
                        // A list of call objects, read whole at the end.
                        self.state = State::Fallback;
                    } else if t.starts_with("<tool_call>") {
                        self.pos += rest.len() - t.len();
                        self.state = State::Head(Wrap::Tag);
                    } else if "<tool_call>".starts_with(t) {
                        break;
                    } else {
                        self.state = State::Content;
                    }
                }
                State::Content => {
                    if !rest.is_empty() {
                        out.push(Piece::Content(rest.to_string()));
                        self.pos = self.buf.len();
                    }
                    break;
                }
                State::Head(w) => {
                    match seq(rest, if w == Wrap::Json { JSON_HEAD } else { TAG_HEAD }) {
                        M::Ok(n, _) => {
                            self.pos += n;
                            self.state = State::CallHead(w);
                        }
                        M::More => break,
                        M::No => self.broken(),
                    }
                }
                State::CallHead(w) => match seq(rest, CALL_HEAD) {
                    M::Ok(n, Some(name)) if self.names.contains(&name) => {
                        self.pos += n;
                        out.push(Piece::Call {
                            index: self.calls,
                            id: call_id(),
                            name,
                        });
                        self.calls += 1;
                        self.state = State::Args(w, ArgState::default());
                    }
                    M::More => break,
                    _ => self.broken(),
                },
                State::Args(w, mut v) => {
                    if !v.started {
                        // Whitespace before the value is not part of it (read whole, the head took it).
                        let t = rest.trim_start();
                        self.pos += rest.len() - t.len();
                    }
                    let rest = &self.buf[self.pos..];
                    let (n, ended) = scan_value(rest, &mut v);
                    if n > 0 {
                        out.push(Piece::Args {
                            index: self.calls - 1,
                            text: rest[..n].to_string(),
                        });
                        self.pos += n;
                    }
                    if ended {
                        self.state = State::CallEnd(w);
                    } else {
                        self.state = State::Args(w, v);
                        break;
                    }
                }
                State::CallEnd(w) => {
                    match seq(
                        rest,
                        if w == Wrap::Json {
                            CALL_END
                        } else {
                            TAG_CALL_END
                        },
                    ) {
                        M::Ok(n, _) => {
                            self.pos += n;
                            self.state = if self.parallel {
                                State::Between(w)
                            } else {
                                State::Done
                            };
                        }
                        M::More => break,
                        M::No => self.broken(),
                    }
                }
                State::Between(Wrap::Json) => {
                    match seq(rest, &[Tok::Ws, Tok::Lit(","), Tok::Ws]) {
                        M::Ok(n, _) => {
                            self.pos += n;
                            self.state = State::CallHead(Wrap::Json);
                            continue;
                        }
                        M::More => break,
                        M::No => {}
                    }
                    match seq(rest, &[Tok::Ws, Tok::Lit("]"), Tok::Ws, Tok::Lit("}")]) {
                        M::Ok(n, _) => {
                            self.pos += n;
                            self.state = State::Done;
                        }
                        M::More => break,
                        M::No => self.broken(),
                    }
                }
                State::Between(Wrap::Tag) => {
                    match seq(rest, &[Tok::Ws, Tok::Lit("<tool_call>"), Tok::Ws]) {
                        M::Ok(n, _) => {
                            self.pos += n;
                            self.state = State::CallHead(Wrap::Tag);
                        }
                        M::More => break,
                        M::No => self.state = State::Done,
                    }
                }
                State::Fallback | State::Done => break,
            }
        }
        out
    }

    /// The shape broke: before any call the whole text is read at the end; after one, the calls stand.
    fn broken(&mut self) {
        self.state = if self.calls == 0 {
            State::Fallback
        } else {
            State::Done
        };
    }

    /// What is left when the answer ends.
    pub fn finish(&mut self) -> Vec<Piece> {
        let state = std::mem::replace(&mut self.state, State::Done);
        match state {
            State::Start => {
                let rest = &self.buf[self.pos..];
                if rest.is_empty() {
                    Vec::new()
                } else {
                    vec![Piece::Content(rest.to_string())]
                }
            }
            State::Fallback | State::Head(_) | State::CallHead(_) if self.calls == 0 => {
                match read_calls(&self.buf, &self.names, self.parallel) {
                    Some(calls) => {
                        let mut out = Vec::new();
                        for (index, (name, args)) in calls.into_iter().enumerate() {
                            out.push(Piece::Call {
                                index,
                                id: call_id(),
                                name,
                            });
                            out.push(Piece::Args { index, text: args });
                        }
                        self.calls = out.len() / 2;
                        out
                    }
                    None => vec![Piece::Content(self.buf.clone())],
                }
            }
            _ => Vec::new(),
        }
    }
}

/// Scans a JSON value's text: how many bytes of `s` belong to it, and whether it ended (a scalar ends
/// at the delimiter after it, which is not taken).
fn scan_value(s: &str, v: &mut ArgState) -> (usize, bool) {
    for (i, c) in s.char_indices() {
        if !v.started {
            v.started = true;
            match c {
                '{' | '[' => v.depth = 1,
                '"' => v.in_str = true,
                _ => v.scalar = true,
            }
            continue;
        }
        if v.scalar {
            if matches!(c, ',' | '}' | ']') || c.is_whitespace() {
                return (i, true);
            }
            continue;
        }
        if v.in_str {
            match (v.esc, c) {
                (true, _) => v.esc = false,
                (false, '\\') => v.esc = true,
                (false, '"') => {
                    v.in_str = false;
                    if v.depth == 0 {
                        return (i + 1, true);
                    }
                }
                _ => {}
            }
            continue;
        }
        match c {
            '"' => v.in_str = true,
            '{' | '[' => v.depth += 1,
            '}' | ']' => {
                v.depth -= 1;
                if v.depth == 0 {
                    return (i + 1, true);
                }
            }
            _ => {}
        }
    }
    (s.len(), false)
}

/// The calls in a whole answer of another shape (see the module docs): `(name, arguments)` of known
/// tools, or `None` if it is not calls.
pub fn read_calls(text: &str, names: &[String], parallel: bool) -> Option<Vec<(String, String)>> {
    let t = text.trim();
    let mut values = Vec::new();
    if t.starts_with("<tool_call>") {
        for block in t.split("<tool_call>").skip(1) {
            let inner = block.split("</tool_call>").next().unwrap_or("");
            values.push(serde_json::from_str::<Value>(inner.trim()).ok()?);
        }
    } else {
        let mut it = serde_json::Deserializer::from_str(t).into_iter::<Value>();
        values.push(it.next()?.ok()?);
    }
    let mut items = Vec::new();
    for v in values {
        match v {
            Value::Array(a) => items.extend(a),
            Value::Object(mut o) => match o.remove("tool_calls") {
                Some(Value::Array(a)) => items.extend(a),
                Some(_) => return None,
                None => items.push(Value::Object(o)),
            },
            _ => return None,
        }
    }
    let mut calls = Vec::new();
    for item in items {
        let f = item
            .get("function")
            .filter(|f| f.is_object())
            .unwrap_or(&item);
        let name = f.get("name")?.as_str()?.to_string();
        if !names.contains(&name) {
            return None;
        }
        let args = match f.get("arguments").or_else(|| f.get("parameters")) {
            None => "{}".to_string(),
            Some(Value::String(s)) => s.clone(),
            Some(v) => spaced_json(v),
        };
        calls.push((name, args));
    }
    if calls.is_empty() {
        return None;
    }
    if !parallel {
        calls.truncate(1);
    }
    Some(calls)
}

/// A whole answer: its content (`None` when it is only calls) and its calls as
/// `(id, name, arguments)`.
pub type Answer = (Option<String>, Vec<(String, String, String)>);

/// Reads a whole answer with a fresh scanner.
pub fn read_answer(text: &str, format: &CallFormat) -> Answer {
    let mut s = CallScanner::new(format);
    let mut pieces = s.push(text);
    pieces.extend(s.finish());
    collect(pieces)
}

/// Pieces gathered into an answer.
pub fn collect(pieces: Vec<Piece>) -> Answer {
    let mut content: Option<String> = None;
    let mut calls: Vec<(String, String, String)> = Vec::new();
    for p in pieces {
        match p {
            Piece::Content(t) => content.get_or_insert_with(String::new).push_str(&t),
            Piece::Call { id, name, .. } => calls.push((id, name, String::new())),
            Piece::Args { index, text } => {
                if let Some(c) = calls.get_mut(index) {
                    c.2.push_str(&text);
                }
            }
        }
    }
    (content, calls)
}

#[cfg(test)]
mod tests;
