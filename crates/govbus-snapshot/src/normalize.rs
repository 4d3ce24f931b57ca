//! What department dumps look like, turned into what the catalog expects:
//! full-width characters, dates like `2023/6/1`, `20230601` or `2023年6月1日`,
//! local date-times without an offset, Excel serial dates.

use govbus_catalog::time;

/// Full-width ASCII variants (U+FF01–U+FF5E) to ASCII, the ideographic space
/// to a space; everything else unchanged. Trims surrounding whitespace.
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
        .map(|(_, f)| f.chars().take_while(char::is_ascii_digit).take(3).collect())
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

/// An Excel serial day number (days since 1899-12-30, fraction = time of day)
/// as a date-time string `YYYY-MM-DD HH:MM:SS`.
pub fn excel_serial(serial: f64) -> Option<String> {
    if !serial.is_finite() || !(1.0..2_958_466.0).contains(&serial) {
        return None;
    }
    let days = serial.floor() as i64;
    let secs = ((serial - serial.floor()) * 86_400.0).round() as i64;
    let epoch = time::days_from_civil(1899, 12, 30);
    let (y, m, d) = time::civil_from_days(epoch + days + secs / 86_400);
    let s = secs % 86_400;
    Some(format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        s / 3600,
        s / 60 % 60,
        s % 60
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
            Some("2026-10-15T10:00:00.123+08:00")
        );
        assert_eq!(
            timestamp("2026-10-15 10:00:00+0530", "Z").as_deref(),
            Some("2026-10-15T10:00:00+05:30")
        );
    }

    #[test]
    fn excel_serials() {
        assert_eq!(
            excel_serial(45078.0).as_deref(),
            Some("2023-06-01 00:00:00")
        );
        assert_eq!(
            excel_serial(45078.5).as_deref(),
            Some("2023-06-01 12:00:00")
        );
        assert_eq!(excel_serial(f64::NAN), None);
    }
}
