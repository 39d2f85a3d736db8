//! `tojson`: Python's `json.dumps`, as transformers registers it for chat templates.
//!
//! Hand-written on purpose: the prompt must be byte-identical to transformers', and neither
//! minijinja's `tojson` (it escapes HTML characters) nor serde_json (no `", "`/`": "` separators by
//! default, no `ensure_ascii`, floats not in Python's `repr`, no `NaN`/`Infinity`, keys not converted
//! the way Python converts them) writes what `json.dumps` writes.

use std::borrow::Cow;
use std::fmt::Write as _;

use minijinja::ErrorKind;
use minijinja::value::{Kwargs, Rest, Value, ValueKind};

use super::python::py_float;

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
pub(super) fn tojson(
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
