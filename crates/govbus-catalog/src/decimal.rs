//! Exact decimals for rule bounds and Avro `decimal` values.

use std::cmp::Ordering;
use std::fmt;

/// A decimal number `unscaled × 10^-scale`, exact up to 38 digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decimal {
    /// The digits as an integer.
    pub unscaled: i128,
    /// How many of those digits are after the decimal point.
    pub scale: u32,
}

/// The largest scale a [`Decimal`] carries; Avro decimals in the catalog are
/// limited to the same.
pub const MAX_SCALE: u32 = 38;

impl Decimal {
    /// Parses `-12.340`, `7`, `+0.5`. No exponent, no grouping.
    pub fn parse(text: &str) -> Option<Decimal> {
        let (neg, body) = match text.as_bytes().first()? {
            b'-' => (true, &text[1..]),
            b'+' => (false, &text[1..]),
            _ => (false, text),
        };
        let (int, frac) = body.split_once('.').unwrap_or((body, ""));
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        let mut unscaled: i128 = 0;
        for b in int.bytes().chain(frac.bytes()) {
            if !b.is_ascii_digit() {
                return None;
            }
            unscaled = unscaled
                .checked_mul(10)?
                .checked_add(i128::from(b - b'0'))?;
        }
        let scale = u32::try_from(frac.len()).ok().filter(|s| *s <= MAX_SCALE)?;
        Some(Decimal {
            unscaled: if neg { -unscaled } else { unscaled },
            scale,
        })
    }

    /// An integer as a decimal of scale 0.
    pub fn from_i64(v: i64) -> Decimal {
        Decimal {
            unscaled: i128::from(v),
            scale: 0,
        }
    }

    /// Decodes Avro's big-endian two's-complement unscaled bytes. `None` when
    /// the value does not fit in 128 bits.
    pub fn from_be_bytes(bytes: &[u8], scale: u32) -> Option<Decimal> {
        if bytes.len() > 16 {
            // Allow redundant sign-extension bytes, as some writers emit them.
            let (head, tail) = bytes.split_at(bytes.len() - 16);
            let fill = if tail[0] & 0x80 != 0 { 0xff } else { 0 };
            if !head.iter().all(|b| *b == fill) {
                return None;
            }
            return Decimal::from_be_bytes(tail, scale);
        }
        if bytes.is_empty() {
            return Some(Decimal { unscaled: 0, scale });
        }
        let fill = if bytes[0] & 0x80 != 0 { 0xff } else { 0 };
        let mut buf = [fill; 16];
        buf[16 - bytes.len()..].copy_from_slice(bytes);
        Some(Decimal {
            unscaled: i128::from_be_bytes(buf),
            scale,
        })
    }

    /// The shortest big-endian two's-complement encoding of the unscaled value.
    pub fn to_be_bytes(self) -> Vec<u8> {
        let full = self.unscaled.to_be_bytes();
        let fill = if self.unscaled < 0 { 0xff } else { 0 };
        let mut start = 0;
        while start < 15 && full[start] == fill && (full[start + 1] & 0x80 == fill & 0x80) {
            start += 1;
        }
        full[start..].to_vec()
    }

    /// The same value with `scale` digits after the point, if that is exact.
    pub fn rescale(self, scale: u32) -> Option<Decimal> {
        match scale.cmp(&self.scale) {
            Ordering::Equal => Some(self),
            Ordering::Greater => {
                let f = 10i128.checked_pow(scale - self.scale)?;
                Some(Decimal {
                    unscaled: self.unscaled.checked_mul(f)?,
                    scale,
                })
            }
            Ordering::Less => {
                let f = 10i128.checked_pow(self.scale - scale)?;
                (self.unscaled % f == 0).then_some(Decimal {
                    unscaled: self.unscaled / f,
                    scale,
                })
            }
        }
    }

    /// Number of significant fraction digits (trailing zeros ignored).
    pub fn significant_scale(self) -> u32 {
        let mut scale = self.scale;
        let mut u = self.unscaled;
        while scale > 0 && u % 10 == 0 {
            u /= 10;
            scale -= 1;
        }
        scale
    }

    /// Number of digits of the unscaled value (at least 1). Multiplies
    /// instead of dividing: 128-bit division is slow, and this runs per record.
    pub fn digits(self) -> u32 {
        let u = self.unscaled.unsigned_abs();
        let (mut n, mut p) = (1u32, 10u128);
        while n < 39 && u >= p {
            n += 1;
            p = p.saturating_mul(10);
        }
        n
    }

    /// Whether the value has at most `max` significant digits after the point
    /// (trailing zeros do not count).
    pub fn has_at_most_scale(self, max: u32) -> bool {
        if self.scale <= max {
            return true;
        }
        let Some(div) = 10i128.checked_pow(self.scale - max) else {
            return self.unscaled == 0;
        };
        match (i64::try_from(self.unscaled), i64::try_from(div)) {
            (Ok(v), Ok(d)) => v % d == 0,
            _ => self.unscaled % div == 0,
        }
    }

    /// Lossy conversion, for comparing with `float`/`double` fields.
    pub fn to_f64(self) -> f64 {
        self.unscaled as f64 / 10f64.powi(self.scale as i32)
    }
}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Decimal {
    fn cmp(&self, other: &Self) -> Ordering {
        let scale = self.scale.max(other.scale);
        match (self.rescale(scale), other.rescale(scale)) {
            (Some(a), Some(b)) => a.unscaled.cmp(&b.unscaled),
            // Overflow while rescaling: the magnitudes differ hugely, so f64 decides.
            _ => self.to_f64().total_cmp(&other.to_f64()),
        }
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.unscaled.unsigned_abs().to_string();
        let sign = if self.unscaled < 0 { "-" } else { "" };
        let scale = self.scale as usize;
        if scale == 0 {
            return write!(f, "{sign}{digits}");
        }
        let padded = format!("{digits:0>width$}", width = scale + 1);
        let (int, frac) = padded.split_at(padded.len() - scale);
        write!(f, "{sign}{int}.{frac}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for (text, shown) in [
            ("12.340", "12.340"),
            ("-0.5", "-0.5"),
            ("+7", "7"),
            (".25", "0.25"),
        ] {
            assert_eq!(
                Decimal::parse(text).map(|d| d.to_string()).as_deref(),
                Some(shown)
            );
        }
        for bad in ["", "-", ".", "1e5", "1,000", "12.3.4", "NaN", "1 "] {
            assert_eq!(Decimal::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn compares_across_scales() {
        let d = |s| Decimal::parse(s).unwrap_or(Decimal::from_i64(0));
        assert!(d("0.01") < d("0.1"));
        assert!(d("100000") > d("99999.99"));
        assert_eq!(d("1.50").cmp(&d("1.5")), Ordering::Equal);
        assert_eq!(d("1.50").significant_scale(), 1);
        assert!(d("1.50").has_at_most_scale(1) && !d("1.55").has_at_most_scale(1));
        assert_eq!(
            (
                d("0").digits(),
                d("9").digits(),
                d("10").digits(),
                d("-12.345").digits()
            ),
            (1, 1, 2, 5)
        );
        assert_eq!(
            Decimal {
                unscaled: i128::MAX,
                scale: 0
            }
            .digits(),
            39
        );
    }

    #[test]
    fn round_trips_bytes() {
        for v in [
            0i128,
            1,
            -1,
            127,
            128,
            -128,
            -129,
            123_456,
            i128::MAX,
            i128::MIN,
        ] {
            let d = Decimal {
                unscaled: v,
                scale: 2,
            };
            assert_eq!(Decimal::from_be_bytes(&d.to_be_bytes(), 2), Some(d), "{v}");
        }
        assert_eq!(
            Decimal {
                unscaled: 128,
                scale: 0
            }
            .to_be_bytes(),
            vec![0, 128]
        );
        assert_eq!(
            Decimal::from_be_bytes(&[0xff; 20], 0).map(|d| d.unscaled),
            Some(-1)
        );
        assert_eq!(Decimal::from_be_bytes(&[1; 17], 0), None);
    }
}
