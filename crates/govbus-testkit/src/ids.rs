//! Resident ID numbers (GB 11643-1999) for tests: made with a valid check
//! character, recognised in text. Written independently of the engine's
//! checker, so a leak scan does not trust the code it checks.

const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];

fn check_char(first17: &[u8]) -> char {
    let sum: u32 = first17
        .iter()
        .zip(WEIGHTS)
        .map(|(b, w)| u32::from(b - b'0') * w)
        .sum();
    b"10X98765432"[(sum % 11) as usize] as char
}

/// `first17` (17 ASCII digits) plus its check character.
pub fn with_check(first17: &str) -> String {
    assert!(
        first17.len() == 17 && first17.bytes().all(|b| b.is_ascii_digit()),
        "17 digits expected: {first17}"
    );
    format!("{first17}{}", check_char(first17.as_bytes()))
}

/// Whether `s` is 17 digits and the right check character.
pub fn is_valid_id(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 18 && b[..17].iter().all(u8::is_ascii_digit) && check_char(&b[..17]) == b[17] as char
}

/// Every 18-character window of `text` that is a valid ID number, except
/// the digits of a decimal fraction (`0.019515600000000002` in a metric's
/// sum: one window in eleven has a valid check character by chance).
pub fn valid_ids_in(text: &str) -> Vec<String> {
    let chars: Vec<char> = without_traceparents(text).chars().collect();
    (0..chars.len().saturating_sub(17))
        .filter(|&i| {
            // Digits right before the window, then a '.' after a digit?
            let run = chars[..i]
                .iter()
                .rev()
                .take_while(|c| c.is_ascii_digit())
                .count();
            let fraction =
                i >= run + 2 && chars[i - run - 1] == '.' && chars[i - run - 2].is_ascii_digit();
            !fraction
        })
        .map(|i| chars[i..i + 18].iter().collect::<String>())
        .filter(|w| is_valid_id(w))
        .collect()
}

/// `text` with every W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`)
/// blanked out: its ids are random hex, and one in a few hundred trace
/// ids holds 18 decimal digits in a row, a valid check character among
/// them one time in eleven (a full run of `tests/access.rs` found one).
fn without_traceparents(text: &str) -> String {
    let b = text.as_bytes();
    let hex = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_hexdigit);
    let mut out = b.to_vec();
    let mut i = 0;
    while i + 55 <= b.len() {
        if &b[i..i + 3] == b"00-"
            && hex(i + 3..i + 35)
            && b[i + 35] == b'-'
            && hex(i + 36..i + 52)
            && b[i + 52] == b'-'
            && hex(i + 53..i + 55)
        {
            out[i..i + 55].fill(b' ');
            i += 55;
        } else {
            i += 1;
        }
    }
    // Only ASCII bytes were replaced, by ASCII: still UTF-8.
    String::from_utf8(out).unwrap_or_else(|_| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_number() {
        assert_eq!(with_check("11010519491231002"), "11010519491231002X");
        assert!(!is_valid_id("110105194912310021"));
        assert_eq!(
            valid_ids_in("a 11010519491231002X b"),
            ["11010519491231002X"]
        );
        // A float's digits are not an ID number, wherever the window starts.
        assert!(valid_ids_in("sum 0.019515600000000002\n").is_empty());
        assert!(valid_ids_in("sum 12.3019515600000000002\n").is_empty());
        assert_eq!(valid_ids_in("x.11010519491231002X"), ["11010519491231002X"]);
    }

    #[test]
    fn a_trace_id_whose_digits_pass_the_check_is_not_an_id_number() {
        // The trace id of a real run: its window 195209127720201398 passes.
        let tp = "00-a195209127720201398e0c4f1b2d3e0f-00f067aa0ba902b7-01";
        assert!(is_valid_id("195209127720201398"));
        assert!(valid_ids_in(&format!(r#"{{"traceparent":"{tp}"}}"#)).is_empty());
        // An ID number next to one is still found.
        assert_eq!(
            valid_ids_in(&format!("{tp} 11010519491231002X {tp}")),
            ["11010519491231002X"]
        );
        // Not a traceparent (a letter outside hex): scanned as text.
        let not_tp = "00-g195209127720201398e0c4f1b2d3e0f-00f067aa0ba902b7-01";
        assert_eq!(valid_ids_in(not_tp), ["195209127720201398"]);
    }
}
