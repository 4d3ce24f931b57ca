//! Property tests: no input panics, hangs or exhausts memory; valid records
//! survive a round trip; the identifier checks agree with their definitions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::OnceLock;

use govbus_catalog::{Catalog, Decimal};
use govbus_validate::{
    check_resident_id, resident_id_check_char, Context, Engine, IdNormalization, Reason,
};
use proptest::prelude::*;

const NOW: i64 = 1_795_996_800_000;

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn catalog() -> &'static Catalog {
    static C: OnceLock<Catalog> = OnceLock::new();
    C.get_or_init(|| Catalog::load(&repo().join("schemas")).unwrap())
}

fn engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| Engine::new(catalog()).unwrap())
}

/// Every sample record, as (dataset, framed canonical Avro).
fn framed_samples() -> &'static Vec<(String, Vec<u8>)> {
    static S: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    S.get_or_init(|| {
        let mut out = Vec::new();
        for ds in catalog().datasets() {
            let text =
                std::fs::read_to_string(repo().join(format!("examples/records/{}.json", ds.name)))
                    .unwrap();
            let records: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
            for r in records {
                let a = engine()
                    .validate_json(&ds.name, r.to_string().as_bytes(), &Context::at(NOW))
                    .unwrap();
                out.push((ds.name.clone(), a.value));
            }
        }
        out
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..12))
            .prop_map(|(i, v)| Mutation::Insert(i, v)),
        (any::<usize>(), 1usize..8).prop_map(|(i, n)| Mutation::Remove(i, n)),
    ]
}

fn apply(mut bytes: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        if bytes.is_empty() {
            break;
        }
        let len = bytes.len();
        match m {
            Mutation::Flip(i, b) => bytes[i % len] ^= b | 1,
            Mutation::Truncate(i) => bytes.truncate(i % len),
            Mutation::Insert(i, v) => {
                let at = i % (len + 1);
                bytes.splice(at..at, v.iter().copied());
            }
            Mutation::Remove(i, n) => {
                let at = i % len;
                bytes.drain(at..(at + n).min(len));
            }
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Mutated canonical records are accepted or rejected, never a panic; an
    /// accepted one is canonical (validating it again changes nothing).
    #[test]
    fn mutated_avro_never_panics(pick in any::<usize>(), muts in prop::collection::vec(mutation(), 1..4)) {
        let samples = framed_samples();
        let (dataset, framed) = &samples[pick % samples.len()];
        let input = apply(framed.clone(), &muts);
        if let Ok(a) = engine().validate_avro(dataset, &input, &Context::at(NOW)) {
            let again = engine().validate_avro(dataset, &a.value, &Context::at(NOW)).unwrap();
            prop_assert_eq!(again, a);
        }
    }

    /// Random bytes behind a valid header of any dataset.
    #[test]
    fn random_datums_never_panic(pick in any::<usize>(), datum in prop::collection::vec(any::<u8>(), 0..400)) {
        let samples = framed_samples();
        let (dataset, framed) = &samples[pick % samples.len()];
        let mut input = framed[..5].to_vec();
        input.extend_from_slice(&datum);
        let _ = engine().validate_avro(dataset, &input, &Context::at(NOW));
    }

    /// Arbitrary JSON text.
    #[test]
    fn random_json_never_panics(pick in any::<usize>(), text in ".{0,300}") {
        let samples = framed_samples();
        let (dataset, _) = &samples[pick % samples.len()];
        let _ = engine().validate_json(dataset, text.as_bytes(), &Context::at(NOW));
    }

    /// Any 17 digits with a valid region and birth date plus the computed
    /// check character is valid; every other check character is not.
    #[test]
    fn resident_id_check_character(region in prop::sample::select(vec!["110105", "440304", "650102", "820000"]),
                                   days in -25_000i64..20_000, seq in 0u32..1000) {
        let (y, m, d) = govbus_catalog::time::civil_from_days(days);
        let body = format!("{region}{y:04}{m:02}{d:02}{seq:03}");
        let first17: [u8; 17] = body.as_bytes().try_into().unwrap();
        let check = resident_id_check_char(&first17);
        let today = NOW / 86_400_000;
        let valid = format!("{body}{}", check as char);
        prop_assert_eq!(check_resident_id(valid.as_bytes(), today), Ok(IdNormalization::None));
        for other in b"0123456789X".iter().filter(|c| **c != check) {
            let wrong = format!("{body}{}", *other as char);
            prop_assert_eq!(check_resident_id(wrong.as_bytes(), today), Err(Reason::ResidentIdChecksum));
        }
    }

    #[test]
    fn decimal_round_trips(unscaled in any::<i128>(), scale in 0u32..=38) {
        let d = Decimal { unscaled, scale };
        prop_assert_eq!(Decimal::from_be_bytes(&d.to_be_bytes(), scale), Some(d));
        prop_assert_eq!(Decimal::parse(&d.to_string()), Some(d));
    }
}

/// Hostile framing cases from the auditor's list, each with its expected code.
#[test]
fn hostile_framing_cases() {
    let (dataset, framed) = &framed_samples()[0];
    let ctx = Context::at(NOW);
    let check = |input: &[u8], reason: Reason| {
        let r = engine()
            .validate_avro(dataset, input, &ctx)
            .expect_err("rejected");
        assert_eq!(r.reason, reason, "{r}");
    };
    check(&[], Reason::FramingInvalid);
    for n in 1..=4 {
        check(&framed[..n], Reason::FramingInvalid);
    }
    let mut negative = framed.clone();
    negative[1..5].copy_from_slice(&(-5i32).to_be_bytes());
    check(&negative, Reason::SchemaUnknown);
    // Truncated at every position of the datum.
    for cut in 5..framed.len() {
        let r = engine()
            .validate_avro(dataset, &framed[..cut], &ctx)
            .expect_err("truncated");
        assert!(
            matches!(r.reason, Reason::AvroTruncated | Reason::AvroInvalidLength),
            "cut {cut}: {r}"
        );
    }
    let mut trailing = framed.clone();
    trailing.extend_from_slice(&[0, 0, 0]);
    check(&trailing, Reason::AvroTrailingBytes);
}
