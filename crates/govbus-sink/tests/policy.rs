//! Field policies against the sample catalog: masking hides every valid ID
//! number, pseudonyms are stable per subscriber and differ between
//! subscribers, filters and selections hold.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use govbus_catalog::{Catalog, Subscription};
use govbus_sink::policy::Policy;
use proptest::prelude::*;
use serde_json::{json, Map, Value as Json};

fn catalog() -> &'static Catalog {
    static C: std::sync::OnceLock<Catalog> = std::sync::OnceLock::new();
    C.get_or_init(|| {
        Catalog::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas")).unwrap()
    })
}

use govbus_testkit::ids::{is_valid_id, valid_ids_in, with_check};

fn death(id_number: &str, name: &str, phone: &str) -> Map<String, Json> {
    match json!({
        "registration_no": "DR-2026-00000001",
        "deceased_id_number": id_number,
        "deceased_name": name,
        "gender": "MALE",
        "birth_date": "1949-12-31",
        "death_date": "2026-01-02",
        "death_place": "北京市朝阳区",
        "death_cause_category": "natural",
        "registering_office": "朝阳区民政局",
        "registered_at": "2026-01-03T08:00:00.000Z",
        "informant_phone": phone,
    }) {
        Json::Object(o) => o,
        _ => unreachable!(),
    }
}

fn subscription(catalog: &Catalog, id: &str) -> Subscription {
    catalog.subscription(id).unwrap().clone()
}

fn policy(sub: &Subscription, secret: &[u8]) -> Policy {
    let catalog = catalog();
    Policy::new(sub, catalog.dataset(&sub.dataset).unwrap(), secret)
}

prop_compose! {
    fn id_number()(region in 110_000u32..660_000, days in 0i64..40_000, seq in 0u32..1000) -> String {
        let (y, m, d) = govbus_catalog::time::civil_from_days(days - 20_000);
        with_check(&format!("{region:06}{y:04}{m:02}{d:02}{seq:03}"))
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn masking_leaves_no_valid_id_number(id in id_number(), name in "[\\p{Han}·]{1,6}", phone in "1[3-9][0-9]{9}") {
        prop_assume!(is_valid_id(&id));
        let catalog = catalog();
        // The live stream masks every personal field (the default treatment).
        let p = policy(&subscription(catalog, "public_security_deaths_live"), b"0123456789abcdef");
        let out = Json::Object(p.apply(death(&id, &name, &phone))).to_string();
        prop_assert!(valid_ids_in(&out).is_empty(), "{out}");
        prop_assert!(!out.contains(&phone));
        if name.chars().count() > 1 {
            prop_assert!(!out.contains(&name));
        }
    }

    #[test]
    fn pseudonyms_hide_the_id_and_are_stable_per_subscriber(id in id_number()) {
        let catalog = catalog();
        let mut other = subscription(catalog, "health_deaths_statistics");
        let health = policy(&other, b"0123456789abcdef");
        let out = health.apply(death(&id, "王芳", "13800138000"));
        let ps = out["deceased_id_number"].as_str().unwrap().to_owned();
        prop_assert!(ps.starts_with("ps_") && !ps.contains(&id));
        prop_assert!(!ps.bytes().any(|b| b.is_ascii_digit()), "{ps}");
        prop_assert!(valid_ids_in(&ps).is_empty());
        // Stable: the same subscriber, again and under another of its grants.
        prop_assert_eq!(health.pseudonym("deceased_id_number", &id), ps.clone());
        // A different department gets a different pseudonym for the same person.
        other.subscriber = "education".into();
        let education = policy(&other, b"0123456789abcdef");
        prop_assert_ne!(education.pseudonym("deceased_id_number", &id), ps);
    }
}

/// The case the property test found: a hex pseudonym held a valid ID number.
#[test]
fn a_pseudonym_never_looks_like_an_id_number() {
    let catalog = catalog();
    let p = policy(
        &subscription(catalog, "health_deaths_statistics"),
        b"0123456789abcdef",
    );
    let ps = p.pseudonym("deceased_id_number", "623664191711244552");
    assert!(
        valid_ids_in(&ps).is_empty() && !ps.bytes().any(|b| b.is_ascii_digit()),
        "{ps}"
    );
}

#[test]
fn selection_and_clear_treatment_follow_the_grant() {
    let catalog = catalog();
    let p = policy(
        &subscription(catalog, "hrss_deaths_pension_stop"),
        b"0123456789abcdef",
    );
    let id = with_check("11010519491231002");
    let out = p.apply(death(&id, "欧阳娜娜", "13800138000"));
    let mut fields: Vec<&str> = out.keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "death_date",
            "deceased_id_number",
            "registered_at",
            "registering_office",
            "registration_no"
        ],
        "only the included fields, plus the key"
    );
    assert_eq!(
        out["deceased_id_number"],
        json!(id),
        "clear for its stated purpose"
    );
}

#[test]
fn names_are_masked_to_the_surname() {
    let catalog = catalog();
    let p = policy(
        &subscription(catalog, "public_security_deaths_live"),
        b"0123456789abcdef",
    );
    let out = p.apply(death(
        &with_check("11010519491231002"),
        "欧阳娜娜",
        "13800138000",
    ));
    assert_eq!(out["deceased_name"], json!("欧*"));
    assert_eq!(out["deceased_id_number"], json!("110105********002X"));
    assert_eq!(out["informant_phone"], json!("*******8000"));
    let out = p.apply(death(
        &with_check("11010519491231002"),
        "阿依古丽·买买提",
        "13800138000",
    ));
    assert_eq!(out["deceased_name"], json!("阿*"));
}

#[test]
fn row_filters_apply_to_the_published_values() {
    let catalog = catalog();
    let p = policy(
        &subscription(catalog, "data_bureau_enterprises_open"),
        b"0123456789abcdef",
    );
    let mut rec = Map::new();
    rec.insert("status".into(), json!("CANCELLED"));
    assert!(!p.admits(&rec));
    rec.insert("status".into(), json!("ACTIVE"));
    assert!(p.admits(&rec));
}

#[test]
fn a_personal_key_is_treated_like_its_field() {
    let catalog = catalog();
    let ds = catalog
        .dataset("public_security.household_registration")
        .unwrap();
    assert_eq!(ds.key, ["id_number"]);
    let mut sub = subscription(catalog, "public_security_deaths_live");
    sub.dataset = ds.name.clone();
    sub.treatments.clear();
    let id = with_check("11010519491231002");
    let masked = Policy::new(&sub, ds, b"0123456789abcdef");
    assert_eq!(masked.subject(&id), "110105********002X");
    sub.treatments
        .insert("id_number".into(), govbus_catalog::Treatment::Pseudonym);
    let pseudo = Policy::new(&sub, ds, b"0123456789abcdef");
    assert_eq!(pseudo.subject(&id), pseudo.pseudonym("id_number", &id));
    sub.treatments
        .insert("id_number".into(), govbus_catalog::Treatment::Clear);
    assert_eq!(Policy::new(&sub, ds, b"0123456789abcdef").subject(&id), id);
    // A one-field key is the value as it is, `/` and `%` included: two
    // keys that differ only by an escape are two records, not one, and a
    // clear key is delivered unchanged.
    let clear = Policy::new(&sub, ds, b"0123456789abcdef");
    assert_eq!(clear.subject("2024/001"), "2024/001");
    assert_eq!(clear.subject("12%2F3"), "12%2F3");
    assert_ne!(pseudo.subject("12/3"), pseudo.subject("12%2F3"));
}

/// A record written under an older schema version can carry a field the
/// latest version dropped (its personal-data tag dropped with it: tags are
/// only allowed on the latest version's fields). A grant for all fields, or
/// all but some, must not deliver it in clear: only a grant that names it.
#[test]
fn a_field_the_latest_schema_dropped_reaches_only_a_grant_that_names_it() {
    let catalog = catalog();
    let id = with_check("11010519491231002");
    let spouse = with_check("11010519520304004");
    let mut old = death(&id, "欧阳娜娜", "13800138000");
    old.insert("spouse_id_number".into(), json!(spouse));
    for grant in ["public_security_deaths_live", "health_deaths_statistics"] {
        let p = policy(&subscription(catalog, grant), b"0123456789abcdef");
        let out = p.apply(old.clone());
        assert!(!out.contains_key("spouse_id_number"), "{grant}: {out:?}");
        assert!(!Json::Object(out).to_string().contains(&spouse), "{grant}");
    }
}

/// With tracing off, a subscriber gets no `traceparent` a publisher put on
/// the record: the publisher's trace id reaches subscribers only as part of
/// a trace govbus records (README, "Following one record: traces").
#[test]
fn with_tracing_off_no_publisher_context_reaches_a_subscriber() {
    use govbus_sink::event::{prepare, Canonical, Prepared};
    assert!(!govbus_trace::enabled());
    let catalog = std::sync::Arc::new(catalog().clone());
    let p = policy(
        &subscription(&catalog, "public_security_deaths_live"),
        b"0123456789abcdef",
    );
    let c = Canonical {
        partition: 0,
        offset: 0,
        timestamp_ms: 0,
        value: None,
        key: Some(b"DR-2026-00000001".to_vec()),
        headers: [
            ("ce_op", &b"delete"[..]),
            (
                "traceparent",
                b"00-11010519491231002100000000000000-00f067aa0ba902b7-01",
            ),
        ]
        .into_iter()
        .collect(),
    };
    let Prepared::Deliver(d) = prepare(&catalog, &p, &c) else {
        panic!("a delete is delivered")
    };
    assert_eq!(d.traceparent, None);
    assert!(!d.cloudevent("v1").to_string().contains("traceparent"));
}
