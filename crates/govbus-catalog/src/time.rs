//! Civil-calendar arithmetic (proleptic Gregorian, UTC) without a date library.
//!
//! Avro's `date` is days since 1970-01-01 and `timestamp-millis` is
//! milliseconds since the epoch; rules and JSON ingest need to convert between
//! those and `YYYY-MM-DD` / RFC 3339 text. The algorithms are Howard Hinnant's
//! `days_from_civil` / `civil_from_days`.

/// Milliseconds in one day.
pub const MILLIS_PER_DAY: i64 = 86_400_000;

/// Days since 1970-01-01 of the first day of year 1 and of year 10000: the
/// range govbus accepts for any date or timestamp.
pub const MIN_DAYS: i64 = -719_162;
/// One past 9999-12-31.
pub const MAX_DAYS_EXCLUSIVE: i64 = 2_932_897;

/// Whether `year` is a Gregorian leap year.
pub fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

/// Number of days in `month` (1–12) of `year`; 0 for an invalid month.
pub fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Whether `year-month-day` is a real calendar date.
pub fn is_valid_date(year: i64, month: u32, day: u32) -> bool {
    day >= 1 && day <= days_in_month(year, month)
}

/// Days since 1970-01-01 of a (valid) civil date.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day count since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn digits(s: &[u8]) -> Option<i64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0i64, |acc, b| acc * 10 + i64::from(b - b'0')))
}

/// Parses `YYYY-MM-DD` into days since the epoch.
pub fn parse_date(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, m, d) = (digits(&b[0..4])?, digits(&b[5..7])?, digits(&b[8..10])?);
    let (m, d) = (u32::try_from(m).ok()?, u32::try_from(d).ok()?);
    is_valid_date(y, m, d).then(|| days_from_civil(y, m, d))
}

/// Formats days since the epoch as `YYYY-MM-DD`.
pub fn format_date(days: i64) -> String {
    let mut out = String::with_capacity(10);
    push_date(&mut out, days);
    out
}

/// Appends `v` (not negative) in decimal, zero-padded to `width` digits.
fn push_digits(out: &mut String, v: u64, width: usize) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut v = v;
    while v > 0 || buf.len() - i < width {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out.extend(buf[i..].iter().map(|&b| char::from(b)));
}

/// Appends `YYYY-MM-DD` (a year outside 0..=9999 as `format!` writes it).
/// Written digit by digit: dates and timestamps are in nearly every record
/// a sink delivers, and `format!` was a large part of decoding one.
fn push_date(out: &mut String, days: i64) {
    let (y, m, d) = civil_from_days(days);
    match u64::try_from(y) {
        Ok(y) if y <= 9999 => push_digits(out, y, 4),
        _ => out.push_str(&format!("{y:04}")),
    }
    out.push('-');
    push_digits(out, u64::from(m), 2);
    out.push('-');
    push_digits(out, u64::from(d), 2);
}

/// Appends `THH:MM:SS` for `secs` seconds into a day.
fn push_time(out: &mut String, secs: i64) {
    let secs = secs as u64;
    out.push('T');
    push_digits(out, secs / 3600, 2);
    out.push(':');
    push_digits(out, secs / 60 % 60, 2);
    out.push(':');
    push_digits(out, secs % 60, 2);
}

/// Parses an RFC 3339 timestamp (`2026-11-30T08:15:00Z`,
/// `2026-11-30T16:15:00.250+08:00`) into microseconds since the epoch.
/// Fractions finer than a microsecond are truncated.
pub fn parse_rfc3339_micros(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 20 || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let days = parse_date(text.get(..10)?)?;
    let (h, mi, s) = (
        digits(&b[11..13])?,
        digits(&b[14..16])?,
        digits(&b[17..19])?,
    );
    // A leap second (`:60`) is refused, not read as `:59`: Unix time has no
    // such second, and changing the value silently is worse than asking.
    if h > 23 || mi > 59 || s > 59 {
        return None;
    }
    let mut i = 19;
    let mut micros = 0i64;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 6 {
                micros = micros * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        let n = i - start;
        if n == 0 {
            return None;
        }
        for _ in n..6 {
            micros *= 10;
        }
    }
    let offset_secs = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let (oh, om) = (digits(&b[i + 1..i + 3])?, digits(&b[i + 4..i + 6])?);
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 3600 + om * 60;
            if *sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return None,
    };
    let secs = days * 86_400 + h * 3600 + mi * 60 + s - offset_secs;
    Some(secs * 1_000_000 + micros)
}

/// The significant digits of a timestamp's fraction of a second (trailing
/// zeros do not count): `…:00.120+08:00` has 2, `…:00.123456789Z` has 9,
/// `…:00Z` has 0.
pub fn fraction_digits(text: &str) -> usize {
    let b = text.as_bytes();
    match b.get(19) {
        Some(b'.') => {
            let digits: Vec<u8> = b[20..]
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .copied()
                .collect();
            digits.iter().rposition(|&c| c != b'0').map_or(0, |i| i + 1)
        }
        _ => 0,
    }
}

/// Formats milliseconds since the epoch as RFC 3339 in UTC with millisecond precision.
pub fn format_rfc3339_millis(millis: i64) -> String {
    format_rfc3339_fraction(millis, 1_000, true)
}

/// `YYYY-MM-DDTHH:MM:SS.ffffff` (micro) or `.fffffffff` (nano) plus `Z`, or
/// without a zone for Avro's local timestamps: every digit the value has,
/// so a delivered timestamp is the one that was published.
pub fn format_rfc3339_fraction(value: i64, per_second: i64, zulu: bool) -> String {
    let secs = value.div_euclid(per_second);
    let frac = value.rem_euclid(per_second);
    let width = match per_second {
        1_000 => 3,
        1_000_000 => 6,
        _ => 9,
    };
    let mut out = String::with_capacity(31);
    push_date(&mut out, secs.div_euclid(86_400));
    push_time(&mut out, secs.rem_euclid(86_400));
    out.push('.');
    push_digits(&mut out, frac as u64, width);
    if zulu {
        out.push('Z');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting_by_hand_writes_what_format_wrote() {
        let by_format = |value: i64, per_second: i64, zulu: bool| {
            let secs = value.div_euclid(per_second);
            let frac = value.rem_euclid(per_second);
            let rem = secs.rem_euclid(86_400);
            let (h, m, s) = (rem / 3600, rem / 60 % 60, rem % 60);
            let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
            let width = match per_second {
                1_000 => 3,
                1_000_000 => 6,
                _ => 9,
            };
            let zone = if zulu { "Z" } else { "" };
            format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}.{frac:0width$}{zone}")
        };
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for i in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Years from about -290,000 to 290,000, and every edge near 0.
            let v = if i % 2 == 0 {
                (x as i64) >> 10
            } else {
                (x as i64) >> 40
            };
            for (per, zulu) in [(1_000, true), (1_000_000, false), (1_000_000_000, true)] {
                assert_eq!(
                    format_rfc3339_fraction(v, per, zulu),
                    by_format(v, per, zulu),
                    "{v}"
                );
            }
            let (y, m, d) = civil_from_days(v >> 20);
            assert_eq!(format_date(v >> 20), format!("{y:04}-{m:02}-{d:02}"));
        }
        assert_eq!(format_rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn fractions_keep_every_digit() {
        assert_eq!(
            format_rfc3339_fraction(1_700_000_000_123_456, 1_000_000, true),
            "2023-11-14T22:13:20.123456Z"
        );
        assert_eq!(
            format_rfc3339_fraction(-1, 1_000_000_000, false),
            "1969-12-31T23:59:59.999999999"
        );
        assert_eq!(
            format_rfc3339_fraction(1_700_000_000_123, 1_000, true),
            format_rfc3339_millis(1_700_000_000_123)
        );
    }

    #[test]
    fn round_trips_days() {
        for days in [
            -800_000,
            MIN_DAYS,
            -1,
            0,
            1,
            19_000,
            20_000,
            MAX_DAYS_EXCLUSIVE - 1,
        ] {
            let (y, m, d) = civil_from_days(days);
            assert!(is_valid_date(y, m, d));
            assert_eq!(days_from_civil(y, m, d), days, "{days}");
        }
        assert_eq!(civil_from_days(MIN_DAYS), (1, 1, 1));
        assert_eq!(civil_from_days(MAX_DAYS_EXCLUSIVE), (10000, 1, 1));
    }

    #[test]
    fn parses_dates() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("2024-02-29"), Some(19_782));
        assert_eq!(parse_date("2023-02-29"), None);
        assert_eq!(parse_date("2023-13-01"), None);
        assert_eq!(parse_date("2023-1-01"), None);
        assert_eq!(parse_date("２０２３-01-01"), None);
        assert_eq!(format_date(19_782), "2024-02-29");
    }

    #[test]
    fn parses_rfc3339() {
        assert_eq!(parse_rfc3339_micros("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(fraction_digits("1970-01-01T00:00:00Z"), 0);
        assert_eq!(fraction_digits("1970-01-01T00:00:00.120+08:00"), 2);
        assert_eq!(fraction_digits("1970-01-01T00:00:00.000Z"), 0);
        assert_eq!(fraction_digits("1970-01-01T00:00:00.123456789Z"), 9);
        assert_eq!(
            parse_rfc3339_micros("1970-01-01T08:00:00.5+08:00"),
            Some(500_000)
        );
        assert_eq!(
            parse_rfc3339_micros("1970-01-01T00:00:01.123456789Z"),
            Some(1_123_456)
        );
        assert_eq!(parse_rfc3339_micros("1970-01-01T00:00:00"), None);
        assert_eq!(parse_rfc3339_micros("1970-01-01T24:00:00Z"), None);
        // A leap second is refused, not read as the second before it.
        assert_eq!(parse_rfc3339_micros("2026-01-01T08:15:60Z"), None);
        assert_eq!(parse_rfc3339_micros("2016-12-31T23:59:60Z"), None);
        assert!(parse_rfc3339_micros("2016-12-31T23:59:59Z").is_some());
        assert_eq!(parse_rfc3339_micros("1970-01-01T00:00:00.Z"), None);
        assert_eq!(format_rfc3339_millis(1_500), "1970-01-01T00:00:01.500Z");
    }
}
