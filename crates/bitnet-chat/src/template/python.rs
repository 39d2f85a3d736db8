//! Python semantics where minijinja's differ and a template can see them: whitespace, `strip`,
//! `title`, and `str()`/`repr()` of the values a template holds (floats as Python prints them).
//!
//! Hand-written on purpose: what a template prints must be byte-identical to what transformers' Jinja
//! prints, and no crate gives Python's `str()`/`repr()` of minijinja values (`True`, `None`, `1e+16`,
//! `['a', "it's"]`, Python's choice of quotes and escapes) or Python's definitions of whitespace, cased
//! and printable characters.

use std::fmt::Write as _;

use minijinja::State;
use minijinja::value::{StringInput, Value, ValueKind};

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
pub(super) fn trim(value: Value, chars: Option<String>) -> String {
    let s = py_str(&value);
    py_strip(&s, chars.as_deref(), Side::Both).to_string()
}

/// pycompat's methods, with `strip`/`lstrip`/`rstrip` on Python's whitespace.
pub(super) fn python_methods(
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
pub(super) fn py_float(f: f64) -> String {
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
pub(super) fn py_str(value: &Value) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
