//! Masking personal data for display: DLQ tooling today, subscriber field
//! policies later. Pure functions; characters, not bytes, are counted.

use crate::PiiTag;

/// Masks `value` according to its personal-data tag:
/// ID numbers keep the first 6 and last 4 characters, names keep the surname
/// (first character) plus `*`, phone numbers keep the last 4, everything else
/// becomes `***`.
pub fn mask(tag: PiiTag, value: &str) -> String {
    let chars: Vec<char> = value.chars().collect();
    let n = chars.len();
    match tag {
        PiiTag::IdNumber if n > 10 => {
            let head: String = chars[..6].iter().collect();
            let tail: String = chars[n - 4..].iter().collect();
            format!("{head}{}{tail}", "*".repeat(n - 10))
        }
        PiiTag::Name if n > 0 => format!("{}*", chars[0]),
        PiiTag::Phone if n > 4 => {
            let tail: String = chars[n - 4..].iter().collect();
            format!("{}{tail}", "*".repeat(n - 4))
        }
        _ => "***".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(
            mask(PiiTag::IdNumber, "11010519491231002X"),
            "110105********002X"
        );
        assert_eq!(mask(PiiTag::Name, "欧阳娜娜"), "欧*");
        assert_eq!(mask(PiiTag::Phone, "13800138000"), "*******8000");
        assert_eq!(mask(PiiTag::Address, "北京市朝阳区"), "***");
        assert_eq!(mask(PiiTag::IdNumber, "123"), "***");
        assert_eq!(mask(PiiTag::Name, ""), "***");
    }
}
