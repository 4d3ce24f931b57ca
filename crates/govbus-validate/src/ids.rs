//! Chinese identifier checks: resident ID numbers (GB 11643-1999), unified
//! social credit codes (GB 32100-2015) and mobile phone numbers.

use govbus_catalog::time;

use crate::Reason;

const ID_WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
const ID_CHECK: &[u8; 11] = b"10X98765432";

/// Province-level region codes: the first two digits of a resident ID number.
/// 81/82/83 are used by residence permits for Hong Kong, Macao and Taiwan.
const PROVINCES: &[u8] = &[
    11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46, 50, 51, 52,
    53, 54, 61, 62, 63, 64, 65, 71, 81, 82, 83,
];

/// What a valid resident ID number needs changed to become canonical.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdNormalization {
    /// Already canonical.
    None,
    /// The trailing `x` must become `X`.
    UppercaseCheckX,
}

/// The GB 11643 check character of the first 17 digits.
pub fn resident_id_check_char(first17: &[u8; 17]) -> u8 {
    let sum: u32 = first17
        .iter()
        .zip(ID_WEIGHTS)
        .map(|(d, w)| u32::from(d - b'0') * w)
        .sum();
    ID_CHECK[(sum % 11) as usize]
}

/// Checks a resident ID number; `today_days` bounds the birth date.
pub fn check_resident_id(id: &[u8], today_days: i64) -> Result<IdNormalization, Reason> {
    if !id.is_ascii() {
        return Err(Reason::ResidentIdFormat);
    }
    if id.len() != 18 {
        return Err(Reason::ResidentIdLength);
    }
    let (body, last) = (&id[..17], id[17]);
    if !body.iter().all(u8::is_ascii_digit)
        || !(last.is_ascii_digit() || last == b'X' || last == b'x')
    {
        return Err(Reason::ResidentIdFormat);
    }
    let province = (body[0] - b'0') * 10 + (body[1] - b'0');
    if !PROVINCES.contains(&province) {
        return Err(Reason::ResidentIdRegion);
    }
    let num = |r: std::ops::Range<usize>| {
        body[r]
            .iter()
            .fold(0i64, |a, d| a * 10 + i64::from(d - b'0'))
    };
    let (y, m, d) = (num(6..10), num(10..12) as u32, num(12..14) as u32);
    if y < 1800 || !time::is_valid_date(y, m, d) || time::days_from_civil(y, m, d) > today_days {
        return Err(Reason::ResidentIdBirthDate);
    }
    let mut first17 = [0u8; 17];
    first17.copy_from_slice(body);
    if resident_id_check_char(&first17) != last.to_ascii_uppercase() {
        return Err(Reason::ResidentIdChecksum);
    }
    Ok(if last == b'x' {
        IdNormalization::UppercaseCheckX
    } else {
        IdNormalization::None
    })
}

const CREDIT_ALPHABET: &[u8; 31] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";
const CREDIT_WEIGHTS: [u32; 17] = [
    1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28,
];

fn credit_value(c: u8) -> Option<u32> {
    CREDIT_ALPHABET
        .iter()
        .position(|a| *a == c)
        .map(|p| p as u32)
}

/// Checks a unified social credit code.
pub fn check_credit_code(code: &[u8]) -> Result<(), Reason> {
    if code.len() != 18 || !code[2..8].iter().all(u8::is_ascii_digit) {
        return Err(Reason::CreditCodeFormat);
    }
    let mut sum = 0;
    for (c, w) in code[..17].iter().zip(CREDIT_WEIGHTS) {
        sum += credit_value(*c).ok_or(Reason::CreditCodeFormat)? * w;
    }
    let check = credit_value(code[17]).ok_or(Reason::CreditCodeFormat)?;
    let expected = (31 - sum % 31) % 31;
    if check == expected {
        Ok(())
    } else {
        Err(Reason::CreditCodeChecksum)
    }
}

/// The GB 32100 check character of the first 17 characters, if they are all
/// in the alphabet.
pub fn credit_code_check_char(first17: &[u8]) -> Option<u8> {
    let mut sum = 0;
    for (c, w) in first17.iter().zip(CREDIT_WEIGHTS) {
        sum += credit_value(*c)? * w;
    }
    Some(CREDIT_ALPHABET[((31 - sum % 31) % 31) as usize])
}

/// Checks a mainland mobile phone number: 11 ASCII digits, `1[3-9]...`.
pub fn check_mobile_phone(phone: &[u8]) -> Result<(), Reason> {
    let ok = phone.len() == 11
        && phone.iter().all(u8::is_ascii_digit)
        && phone[0] == b'1'
        && (b'3'..=b'9').contains(&phone[1]);
    if ok {
        Ok(())
    } else {
        Err(Reason::MobilePhoneInvalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TODAY: i64 = 20_500; // 2026-02-16

    fn id(s: &str) -> Result<IdNormalization, Reason> {
        check_resident_id(s.as_bytes(), TODAY)
    }

    #[test]
    fn resident_ids() {
        use IdNormalization::*;
        use Reason::*;
        for (input, expected) in [
            ("11010519491231002X", Ok(None)),
            ("11010519491231002x", Ok(UppercaseCheckX)),
            ("110105194912310021", Err(ResidentIdChecksum)),
            ("110105491231002", Err(ResidentIdLength)),
            ("11010519491231002", Err(ResidentIdLength)),
            ("１１０１０５１９４９１２３１００２X", Err(ResidentIdFormat)),
            ("11010519491231002Y", Err(ResidentIdFormat)),
            ("1101051949123100 X", Err(ResidentIdFormat)),
            ("99010519491231002X", Err(ResidentIdRegion)),
            ("110105" /* region */, Err(ResidentIdLength)),
            ("440524188001010014", Ok(None)),
            ("110105195002300012", Err(ResidentIdBirthDate)),
            ("110105209901010013", Err(ResidentIdBirthDate)),
        ] {
            assert_eq!(id(input), expected, "{input}");
        }
    }

    #[test]
    fn impossible_birth_date_with_valid_check_digit_is_a_birth_date_error() {
        let mut first17 = *b"11010519490230002";
        let check = resident_id_check_char(&first17);
        let mut full = first17.to_vec();
        full.push(check);
        assert_eq!(
            check_resident_id(&full, TODAY),
            Err(Reason::ResidentIdBirthDate)
        );
        first17[12] = b'1';
        let check = resident_id_check_char(&first17);
        let mut ok = first17.to_vec();
        ok.push(check);
        assert_eq!(check_resident_id(&ok, TODAY), Ok(IdNormalization::None));
    }

    #[test]
    fn credit_codes() {
        use Reason::*;
        for (input, expected) in [
            ("91330100716105852F", Ok(())),
            ("9144030071526726XG", Ok(())),
            ("91330100716105852A", Err(CreditCodeChecksum)),
            ("91330100716105852", Err(CreditCodeFormat)),
            ("9133010071610585IF", Err(CreditCodeFormat)),
            ("91AB0100716105852F", Err(CreditCodeFormat)),
            ("91330100716105852f", Err(CreditCodeFormat)),
        ] {
            assert_eq!(check_credit_code(input.as_bytes()), expected, "{input}");
        }
        assert_eq!(credit_code_check_char(b"91330100716105852"), Some(b'F'));
    }

    #[test]
    fn mobile_phones() {
        for ok in ["13800138000", "19912345678"] {
            assert_eq!(check_mobile_phone(ok.as_bytes()), Ok(()), "{ok}");
        }
        for bad in [
            "12800138000",
            "1380013800",
            "+8613800138000",
            "1380013800a",
            "１３８００１３８０００",
        ] {
            assert_eq!(
                check_mobile_phone(bad.as_bytes()),
                Err(Reason::MobilePhoneInvalid),
                "{bad}"
            );
        }
    }
}
