//! Strings from files (names, sources, templates, generated text) reach the terminal with their control
//! characters shown as `\u{1b}` rather than obeyed: a model file cannot clear the screen, set the
//! clipboard (OSC 52) or plant links (OSC 8).

use std::borrow::Cow;

/// `s` with every control character but newline and tab written as `\u{..}` (C0, DEL and C1).
pub fn controls(s: &str) -> Cow<'_, str> {
    let bad = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !s.chars().any(bad) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if bad(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::controls;

    #[test]
    fn escapes_are_shown_not_obeyed() {
        assert_eq!(controls("plain text\n\tok"), "plain text\n\tok");
        assert_eq!(controls("\x1b[2J"), "\\u{1b}[2J");
        assert_eq!(controls("\x1b]52;c;aGk=\x07"), "\\u{1b}]52;c;aGk=\\u{7}");
        assert_eq!(controls("a\u{9b}b\u{7f}\r"), "a\\u{9b}b\\u{7f}\\u{d}");
    }
}
