//! `strftime_now(format)`: the current time (UTC) as C `strftime` formats it.

pub(super) fn strftime_now(format: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    strftime(format, secs, now.subsec_micros())
}

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
