//! What department dumps look like, turned into what the catalog expects —
//! and nothing more: full-width digits and letters in identity fields
//! ([`identity`]), numbers, dates like `2023/6/1`, `20230601` or
//! `2023年6月1日`, local date-times without an offset and Excel serial dates
//! in fields of those types. Free text is never rewritten: `（滨江分公司）`
//! stays full-width, as the department wrote it and as the gateway would
//! publish it.

use govbus_catalog::time;

/// An identity value (ID number, credit code, phone, account number): the
/// full-width digits `０`–`９` and Latin letters (`Ｘ`, the letters of a
/// credit code) to ASCII; surrounding whitespace, ideographic space
/// included, trimmed. Nothing else changes.
pub fn identity(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\u{FF10}'..='\u{FF19}' | '\u{FF21}'..='\u{FF3A}' | '\u{FF41}'..='\u{FF5A}' => {
                char::from_u32(c as u32 - 0xFEE0).unwrap_or(c)
            }
            other => other,
        })
        .collect::<String>()
        .trim()
        .to_owned()
}

/// Full-width ASCII variants (U+FF01–U+FF5E) to ASCII, the ideographic space
/// to a space; everything else unchanged. Trims surrounding whitespace.
/// Only for text about to be parsed as a number, date or time — never for a
/// value that is published as text.
pub fn halfwidth(s: &str) -> String {
    let mapped: String = s
        .chars()
        .map(|c| match c {
            '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
            '\u{3000}' => ' ',
            other => other,
        })
        .collect();
    mapped.trim().to_owned()
}

fn num(s: &str) -> Option<i64> {
    (!s.is_empty() && s.len() <= 4 && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// A calendar date in any of the forms dumps use, as `YYYY-MM-DD`:
/// `2023-06-01`, `2023/6/1`, `2023.6.1`, `20230601`, `2023年6月1日`.
pub fn date(text: &str) -> Option<String> {
    let s = halfwidth(text);
    let (y, m, d) = if s.len() == 8 && s.bytes().all(|b| b.is_ascii_digit()) {
        (num(&s[..4])?, num(&s[4..6])?, num(&s[6..])?)
    } else {
        let cleaned: String = s
            .chars()
            .map(|c| match c {
                '/' | '.' | '年' | '月' => '-',
                '日' => ' ',
                other => other,
            })
            .collect();
        let mut parts = cleaned.trim().split('-');
        let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || y.len() != 4 {
            return None;
        }
        (num(y)?, num(m)?, num(d)?)
    };
    let (m, d) = (u32::try_from(m).ok()?, u32::try_from(d).ok()?);
    time::is_valid_date(y, m, d).then(|| format!("{y:04}-{m:02}-{d:02}"))
}

/// A date-time as RFC 3339. A date and a time (`2023/6/1 9:30`,
/// `2023-06-01T09:30:00`, `20230601 093000`) without an offset is local time
/// at `offset` (`+08:00`); one with an offset or `Z` keeps it; a date alone is
/// midnight local time.
pub fn timestamp(text: &str, offset: &str) -> Option<String> {
    let s = halfwidth(text);
    if time::parse_rfc3339_micros(&s).is_some() {
        let mut out = s;
        out.replace_range(10..11, "T");
        return Some(out);
    }
    let (d, t) = match s.split_once(['T', ' ']) {
        Some((d, t)) => (d, t.trim()),
        None => (s.as_str(), ""),
    };
    let day = date(d)?;
    let (t, tz) = match t.find(['+', 'Z']).or_else(|| t.rfind('-')) {
        Some(i) if !t.is_empty() => (&t[..i], &t[i..]),
        _ => (t, offset),
    };
    // PostgreSQL writes `+08` and some exports `+0800`.
    let tz = match tz.len() {
        3 if tz.starts_with(['+', '-']) => format!("{tz}:00"),
        5 if tz.starts_with(['+', '-']) && !tz.contains(':') => {
            format!("{}:{}", &tz[..3], &tz[3..])
        }
        _ => tz.to_owned(),
    };
    let fraction: String = t
        .split_once('.')
        // Every digit: the validator refuses what the field's unit cannot
        // hold instead of this cutting it.
        .map(|(_, f)| f.chars().take_while(char::is_ascii_digit).collect())
        .unwrap_or_default();
    let clock: Vec<&str> = if t.contains(':') {
        t.split(':').collect()
    } else if t.len() == 6 || t.len() == 4 {
        t.as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap_or(""))
            .collect()
    } else if t.is_empty() {
        vec![]
    } else {
        return None;
    };
    let part = |i: usize| {
        clock
            .get(i)
            .map_or(Some(0), |p| p.split('.').next().and_then(num))
    };
    let (h, mi, sec) = (part(0)?, part(1)?, part(2)?);
    if h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let frac = if fraction.is_empty() {
        String::new()
    } else {
        format!(".{fraction}")
    };
    let out = format!("{day}T{h:02}:{mi:02}:{sec:02}{frac}{tz}");
    time::parse_rfc3339_micros(&out).map(|_| out)
}

/// An Excel serial number (whole days, fraction = time of day) as a
/// date-time string `YYYY-MM-DD HH:MM:SS`, exact in both of Excel's date
/// systems:
///
/// - 1904 system: serial 0 is 1904-01-01.
/// - 1900 system: serial 1 is 1900-01-01 and 59 is 1900-02-28; serial 60 is
///   1900-02-29, a day that does not exist (Excel's leap-year bug, kept for
///   Lotus 1-2-3) and is refused; from 61 (1900-03-01) on, days count from
///   1899-12-30. Serial 0 ("1900-01-00") is refused too.
///
/// `None` for a day that does not exist or lies outside 1900..=9999.
pub fn excel_serial(serial: f64, date1904: bool) -> Option<String> {
    if !serial.is_finite() || !(0.0..2_958_466.0).contains(&serial) {
        return None;
    }
    let mut days = serial.floor() as i64;
    let mut secs = ((serial - serial.floor()) * 86_400.0).round() as i64;
    if secs >= 86_400 {
        days += 1;
        secs -= 86_400;
    }
    let day = if date1904 {
        time::days_from_civil(1904, 1, 1) + days
    } else {
        match days {
            1..=59 => time::days_from_civil(1899, 12, 31) + days,
            61.. => time::days_from_civil(1899, 12, 30) + days,
            _ => return None,
        }
    };
    let (y, m, d) = time::civil_from_days(day);
    if y > 9999 {
        return None;
    }
    Some(format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_width_becomes_ascii() {
        assert_eq!(
            halfwidth("１１０１０５１９４９１２３１００２Ｘ"),
            "11010519491231002X"
        );
        assert_eq!(halfwidth("\u{3000}张三\u{3000}"), "张三");
    }

    #[test]
    fn dates_in_the_forms_dumps_use() {
        for d in [
            "2023-06-01",
            "2023/6/1",
            "2023.6.1",
            "20230601",
            "2023年6月1日",
            "２０２３/０６/０１",
        ] {
            assert_eq!(date(d).as_deref(), Some("2023-06-01"), "{d}");
        }
        for bad in ["2023/2/30", "23/6/1", "2023-06", "June 1", "202306011"] {
            assert_eq!(date(bad), None, "{bad}");
        }
    }

    #[test]
    fn timestamps_get_the_local_offset() {
        assert_eq!(
            timestamp("2023/6/1 9:30", "+08:00").as_deref(),
            Some("2023-06-01T09:30:00+08:00")
        );
        assert_eq!(
            timestamp("20230601 093005", "+08:00").as_deref(),
            Some("2023-06-01T09:30:05+08:00")
        );
        assert_eq!(
            timestamp("2023-06-01T09:30:00Z", "+08:00").as_deref(),
            Some("2023-06-01T09:30:00Z")
        );
        assert_eq!(
            timestamp("2023-06-01 09:30:00+02:00", "+08:00").as_deref(),
            Some("2023-06-01T09:30:00+02:00")
        );
        assert_eq!(
            timestamp("2023年6月1日", "+08:00").as_deref(),
            Some("2023-06-01T00:00:00+08:00")
        );
        assert_eq!(timestamp("2023/6/1 25:00", "+08:00"), None);
        // PostgreSQL's text output.
        assert_eq!(
            timestamp("2026-10-15 10:00:00.123456+08", "+00:00").as_deref(),
            Some("2026-10-15T10:00:00.123456+08:00")
        );
        assert_eq!(
            timestamp("2026-10-15 10:00:00+0530", "Z").as_deref(),
            Some("2026-10-15T10:00:00+05:30")
        );
    }

    #[test]
    fn identity_fields_get_ascii_digits_and_letters_only() {
        assert_eq!(
            identity("\u{3000}１１０１０５１９４９１２３１００２Ｘ "),
            "11010519491231002X"
        );
        assert_eq!(identity("９１３３０１０６ＭＡ２Ｈ"), "91330106MA2H");
        assert_eq!(
            identity("１３８－００１３"),
            "138－0013",
            "only digits and letters"
        );
    }

    fn check_serial(serial: f64, date1904: bool, expected: Option<&str>) {
        assert_eq!(
            excel_serial(serial, date1904).as_deref(),
            expected,
            "serial {serial}, 1904 system: {date1904}"
        );
    }

    #[test]
    fn excel_serials_in_both_date_systems() {
        check_serial(45078.0, false, Some("2023-06-01 00:00:00"));
        check_serial(45078.5, false, Some("2023-06-01 12:00:00"));
        check_serial(45296.0, false, Some("2024-01-05 00:00:00"));
        check_serial(43834.0, true, Some("2024-01-05 00:00:00"));
        check_serial(0.0, true, Some("1904-01-01 00:00:00"));
        check_serial(1.0, false, Some("1900-01-01 00:00:00"));
        check_serial(59.0, false, Some("1900-02-28 00:00:00"));
        check_serial(59.999_999_999, false, None);
        check_serial(60.0, false, None);
        check_serial(61.0, false, Some("1900-03-01 00:00:00"));
        check_serial(0.5, false, None);
        check_serial(2_958_465.0, false, Some("9999-12-31 00:00:00"));
        check_serial(2_958_465.0, true, None);
        check_serial(f64::NAN, false, None);
        check_serial(-1.0, true, None);
    }

    /// calamine's own conversion is the judge for every day it gets right
    /// (it reports the phantom 1900-02-29 for serial 60, which we refuse).
    #[test]
    fn excel_serials_agree_with_calamine() {
        use calamine::{ExcelDateTime, ExcelDateTimeType};
        for date1904 in [false, true] {
            for serial in (0..80).chain((1..200).map(|i| i * 7919)) {
                if !date1904 && (serial == 0 || serial == 60) {
                    continue;
                }
                let v = f64::from(serial) + 0.75;
                let (y, m, d, h, mi, s, _) =
                    ExcelDateTime::new(v, ExcelDateTimeType::DateTime, date1904).to_ymd_hms_milli();
                check_serial(
                    v,
                    date1904,
                    Some(&format!("{y:04}-{m:02}-{d:02} {h:02}:{mi:02}:{s:02}")),
                );
            }
        }
    }
}
