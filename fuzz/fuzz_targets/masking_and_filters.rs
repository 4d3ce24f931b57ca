//! Input: any bytes, read as text. Masking never panics, never lengthens a
//! value beyond `***`, and never leaves a valid ID number valid; a
//! row-filter predicate parses or fails with a message, never panics.
#![no_main]

use govbus_catalog::{mask::mask, parse_predicate, PiiTag};
use libfuzzer_sys::fuzz_target;

const TAGS: [PiiTag; 6] = [
    PiiTag::IdNumber,
    PiiTag::Name,
    PiiTag::Phone,
    PiiTag::Address,
    PiiTag::Email,
    PiiTag::BankAccount,
];

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let today = 20_000; // days since 1970, any fixed day
    let was_valid_id = govbus_validate::check_resident_id(text.as_bytes(), today).is_ok();
    for tag in TAGS {
        let m = mask(tag, &text);
        assert!(m.chars().count() <= text.chars().count().max(3), "{tag:?} lengthened {text:?}");
        if tag == PiiTag::IdNumber && was_valid_id {
            assert!(
                govbus_validate::check_resident_id(m.as_bytes(), today).is_err(),
                "a masked ID number is still valid: {m}"
            );
        }
    }
    if let Err(message) = parse_predicate(&text) {
        assert!(!message.to_string().is_empty());
    }
});
