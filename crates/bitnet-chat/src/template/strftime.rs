//! `strftime_now(format)`: the current time (UTC) as Python's `datetime.strftime` formats it on glibc
//! in the C locale.
//!
//! jiff does the calendar and the formatting. What is left here maps glibc's conventions onto jiff's
//! directives where the two differ: Python's `%f` is always six digits (jiff's `%6f`), `%c`, `%x`, `%X`
//! and `%r` are the C locale's (jiff's POSIX locale), and a directive or flag glibc does not know is
//! copied as it is (jiff knows more, such as `%q`, `%N`, `%Q`, `%:z` and the `^`, `#` and width
//! modifiers, which glibc leaves as text).

use jiff::Timestamp;
use jiff::fmt::strtime::{BrokenDownTime, Config, PosixCustom};

/// The conversions glibc's `strftime` knows that jiff formats the same way (with the flags `-`, `_`
/// and `0`).
const GLIBC_DIRECTIVES: &str = "aAbBcCdDeFgGhHIjklmMnpPrRsStTuUVwWxXyYzZ%";

pub(super) fn strftime_now(format: &str) -> String {
    strftime(format, Timestamp::now())
}

/// `format` applied to `time` in UTC.
fn strftime(format: &str, time: Timestamp) -> String {
    let config = Config::new().custom(PosixCustom::new()).lenient(true);
    // Lenient: a conversion jiff cannot do comes out as text rather than failing the template, as
    // glibc does.
    BrokenDownTime::from(time)
        .to_string_with_config(&config, jiff_format(format))
        .unwrap_or_else(|_| format.to_owned())
}

/// The jiff format string that formats as glibc and Python format `format`.
fn jiff_format(format: &str) -> String {
    let mut out = String::with_capacity(format.len() + 8);
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let flag = chars.next_if(|f| matches!(f, '-' | '_' | '0'));
        match (flag, chars.next()) {
            // Python replaces a bare `%f` itself, before glibc sees the format.
            (None, Some('f')) => out.push_str("%6f"),
            (_, Some(spec)) if GLIBC_DIRECTIVES.contains(spec) => {
                out.push('%');
                out.extend(flag);
                out.push(spec);
            }
            // Unknown to glibc (or a lone `%` at the end): the text as it is.
            (_, spec) => {
                out.push_str("%%");
                out.extend(flag);
                out.extend(spec);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`super::strftime`] of the time `unix_secs` seconds and `micros` microseconds after the epoch.
    fn strftime(format: &str, unix_secs: i64, micros: u32) -> String {
        let micros = i32::try_from(micros).expect("below a second");
        let time = Timestamp::new(unix_secs, micros * 1000).expect("a time jiff represents");
        super::strftime(format, time)
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
        // Flags glibc knows apply to numbers; directives and flags it does not know are copied.
        assert_eq!(
            strftime("%_m|%0e|%-H|%-f|%N|%Q|%^a|%:z|%Ey|%5d", t, 7),
            " 7|26|13|%-f|%N|%Q|%^a|%:z|%Ey|%5d"
        );
    }
}
