#![allow(clippy::unwrap_used, clippy::expect_used)]

//! One test per reason code, the sample records, and agreement with apache-avro.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use govbus_catalog::Catalog;
use serde_json::{json, Value as Json};

use super::*;
use crate::json::write_long;

/// 2026-11-30T00:00:00Z.
const NOW: i64 = 1_795_996_800_000;

fn ctx() -> Context {
    Context::at(NOW)
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn catalog() -> &'static Catalog {
    static C: OnceLock<Catalog> = OnceLock::new();
    C.get_or_init(|| Catalog::load(&repo().join("schemas")).unwrap_or_else(|p| panic!("{p}")))
}

fn engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| Engine::new(catalog()).unwrap_or_else(|e| panic!("{e}")))
}

fn samples(dataset: &str) -> Vec<Json> {
    let path = repo()
        .join("examples/records")
        .join(format!("{dataset}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A lab dataset with every Avro shape the sample catalog lacks.
fn lab() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| {
        let mut files = BTreeMap::new();
        files.insert(PathBuf::from("departments.toml"), "[[department]]\nid = \"lab\"\nname_zh = \"实验室\"\nname_en = \"Lab\"\n".to_owned());
        files.insert(
            PathBuf::from("datasets/lab.shapes/dataset.toml"),
            "owner = \"lab\"\ntitle_zh = \"形状\"\ntitle_en = \"Shapes\"\nclassification = \"internal\"\nkey = [\"id\"]\nfreshness = \"1h\"\n".to_owned(),
        );
        files.insert(
            PathBuf::from("datasets/lab.shapes/v1.avsc"),
            json!({
                "type": "record", "name": "Shapes", "namespace": "lab",
                "fields": [
                    {"name": "id", "type": "string"},
                    {"name": "flag", "type": "boolean"},
                    {"name": "count", "type": "int"},
                    {"name": "ratio", "type": "double"},
                    {"name": "choice", "type": ["null", "string", "long"]},
                    {"name": "level", "type": {"type": "enum", "name": "Level", "symbols": ["LOW", "HIGH"]}},
                    {"name": "blanks", "type": {"type": "array", "items": "null"}},
                    {"name": "attrs", "type": {"type": "map", "values": "long"}},
                    {"name": "tree", "type": {"type": "record", "name": "Tree", "fields": [
                        {"name": "children", "type": {"type": "array", "items": "Tree"}}
                    ]}}
                ]
            })
            .to_string(),
        );
        let catalog = Catalog::from_files(Path::new("lab"), &files).unwrap_or_else(|p| panic!("{p}"));
        Engine::new(&catalog).unwrap_or_else(|e| panic!("{e}"))
    })
}

/// Pieces of a lab datum; each test replaces one.
struct LabDatum {
    id: Vec<u8>,
    flag: Vec<u8>,
    count: Vec<u8>,
    ratio: Vec<u8>,
    choice: Vec<u8>,
    level: Vec<u8>,
    blanks: Vec<u8>,
    attrs: Vec<u8>,
    tree: Vec<u8>,
}

fn long(v: i64) -> Vec<u8> {
    let mut out = Vec::new();
    write_long(&mut out, v);
    out
}

fn string(s: &[u8]) -> Vec<u8> {
    let mut out = long(s.len() as i64);
    out.extend_from_slice(s);
    out
}

impl Default for LabDatum {
    fn default() -> Self {
        LabDatum {
            id: string(b"k1"),
            flag: vec![1],
            count: long(5),
            ratio: 0.5f64.to_le_bytes().to_vec(),
            choice: long(0),
            level: long(1),
            blanks: long(0),
            attrs: [long(1), string(b"a"), long(7), long(0)].concat(),
            tree: long(0),
        }
    }
}

impl LabDatum {
    fn framed(&self) -> Vec<u8> {
        let id = lab()
            .dataset("lab.shapes")
            .map(|d| d.latest_schema_id())
            .unwrap_or(SchemaId(0));
        let mut out = vec![MAGIC];
        out.extend_from_slice(&id.0.to_be_bytes());
        for part in [
            &self.id,
            &self.flag,
            &self.count,
            &self.ratio,
            &self.choice,
            &self.level,
            &self.blanks,
            &self.attrs,
            &self.tree,
        ] {
            out.extend_from_slice(part);
        }
        out
    }
}

fn lab_check(datum: LabDatum) -> Result<Accepted, Rejection> {
    lab().validate_avro("lab.shapes", &datum.framed(), &ctx())
}

/// A sample record of `dataset` with `edit` applied, validated as JSON.
fn json_case(
    dataset: &str,
    edit: impl FnOnce(&mut serde_json::Map<String, Json>),
) -> Result<Accepted, Rejection> {
    let mut record = samples(dataset).remove(0);
    if let Json::Object(m) = &mut record {
        edit(m);
    }
    engine().validate_json(dataset, record.to_string().as_bytes(), &ctx())
}

fn set(field: &'static str, value: Json) -> impl FnOnce(&mut serde_json::Map<String, Json>) {
    move |m| {
        m.insert(field.to_owned(), value);
    }
}

fn framed_sample(dataset: &str) -> Vec<u8> {
    let record = samples(dataset).remove(0);
    engine()
        .validate_json(dataset, record.to_string().as_bytes(), &ctx())
        .map(|a| a.value)
        .unwrap_or_else(|r| panic!("{r}"))
}

const DEATHS: &str = "civil_affairs.death_registration";
const PENSIONS: &str = "hrss.pension_payment";
const ENTERPRISES: &str = "market_regulation.enterprise_registration";

#[test]
fn every_reason_code_has_a_case() {
    let deaths = DEATHS;
    let mut covered = BTreeSet::new();
    let mut check =
        |name: &str, result: Result<Accepted, Rejection>, reason: Reason, field: Option<&str>| {
            match result {
                Ok(a) => panic!("{name}: accepted (key {}), expected {reason}", a.key),
                Err(r) => {
                    assert_eq!(r.reason, reason, "{name}: {r}");
                    if let Some(f) = field {
                        assert_eq!(r.field.as_deref(), Some(f), "{name}: {r}");
                    }
                    covered.insert(reason);
                }
            }
        };
    use Reason::*;

    // Catalog gate and framing.
    check(
        "unknown dataset",
        engine().validate_json("civil_affairs.nope", b"{}", &ctx()),
        DatasetUnknown,
        None,
    );
    let small = Engine::with_limits(
        catalog(),
        Limits {
            max_message_bytes: 64,
            ..Limits::default()
        },
    )
    .expect("engine");
    check(
        "too large",
        small.validate_avro(deaths, &framed_sample(deaths), &ctx()),
        MessageTooLarge,
        None,
    );
    for short in [&[][..], &[0], &[0, 0, 0, 0]] {
        check(
            "short",
            engine().validate_avro(deaths, short, &ctx()),
            FramingInvalid,
            None,
        );
    }
    let mut bad_magic = framed_sample(deaths);
    bad_magic[0] = 1;
    check(
        "magic",
        engine().validate_avro(deaths, &bad_magic, &ctx()),
        FramingInvalid,
        None,
    );
    let mut unknown = framed_sample(deaths);
    unknown[1..5].copy_from_slice(&0u32.to_be_bytes());
    check(
        "unknown id",
        engine().validate_avro(deaths, &unknown, &ctx()),
        SchemaUnknown,
        None,
    );
    check(
        "other dataset's id",
        engine().validate_avro(deaths, &framed_sample(PENSIONS), &ctx()),
        SchemaWrongDataset,
        None,
    );

    // Avro decoding, on the lab dataset.
    let mut truncated = LabDatum::default().framed();
    truncated.pop();
    check(
        "truncated",
        lab().validate_avro("lab.shapes", &truncated, &ctx()),
        AvroTruncated,
        Some("tree"),
    );
    let mut trailing = LabDatum::default().framed();
    trailing.push(0);
    check(
        "trailing",
        lab().validate_avro("lab.shapes", &trailing, &ctx()),
        AvroTrailingBytes,
        None,
    );
    check(
        "overlong varint",
        lab_check(LabDatum {
            count: [vec![0x80; 10], vec![1]].concat(),
            ..Default::default()
        }),
        AvroVarintOverlong,
        Some("count"),
    );
    check(
        "int overflow",
        lab_check(LabDatum {
            count: long(1 << 40),
            ..Default::default()
        }),
        AvroVarintOverlong,
        Some("count"),
    );
    check(
        "negative length",
        lab_check(LabDatum {
            id: long(-1),
            ..Default::default()
        }),
        AvroInvalidLength,
        Some("id"),
    );
    check(
        "length 2^62",
        lab_check(LabDatum {
            id: long(1 << 62),
            ..Default::default()
        }),
        AvroInvalidLength,
        Some("id"),
    );
    check(
        "utf8",
        lab_check(LabDatum {
            id: string(&[0xC3, 0x28]),
            ..Default::default()
        }),
        AvroInvalidUtf8,
        Some("id"),
    );
    check(
        "boolean",
        lab_check(LabDatum {
            flag: vec![2],
            ..Default::default()
        }),
        AvroInvalidBoolean,
        Some("flag"),
    );
    check(
        "union",
        lab_check(LabDatum {
            choice: long(3),
            ..Default::default()
        }),
        AvroUnionIndex,
        Some("choice"),
    );
    check(
        "enum",
        lab_check(LabDatum {
            level: long(2),
            ..Default::default()
        }),
        AvroEnumIndex,
        Some("level"),
    );
    let deep = [vec![2u8; 100_000], vec![0u8; 100_001]].concat();
    check(
        "deep",
        lab_check(LabDatum {
            tree: deep,
            ..Default::default()
        }),
        AvroNestingTooDeep,
        Some("tree"),
    );
    check(
        "items",
        lab_check(LabDatum {
            blanks: long(i64::MAX),
            ..Default::default()
        }),
        AvroTooManyItems,
        Some("blanks"),
    );
    check(
        "nan",
        lab_check(LabDatum {
            ratio: f64::NAN.to_le_bytes().to_vec(),
            ..Default::default()
        }),
        NumberNotFinite,
        Some("ratio"),
    );
    check(
        "empty key",
        lab_check(LabDatum {
            id: string(b""),
            ..Default::default()
        }),
        KeyMissing,
        Some("id"),
    );

    // JSON.
    check(
        "json syntax",
        engine().validate_json(deaths, b"{\"registration_no\":", &ctx()),
        JsonInvalid,
        None,
    );
    check(
        "json type",
        json_case(PENSIONS, set("amount", json!(true))),
        JsonTypeMismatch,
        Some("amount"),
    );
    check(
        "json missing",
        json_case(PENSIONS, |m| drop(m.remove("recipient_name"))),
        JsonMissingField,
        Some("recipient_name"),
    );
    check(
        "json unknown",
        json_case(PENSIONS, set("amonut", json!(1))),
        JsonUnknownField,
        Some("amonut"),
    );
    check(
        "json int range",
        json_case(
            "education.enrollment_application",
            set("school_year", json!(10_000_000_000i64)),
        ),
        JsonNumberOutOfRange,
        Some("school_year"),
    );
    check(
        "json date",
        json_case(deaths, set("birth_date", json!("1949/12/31"))),
        JsonInvalidTemporal,
        Some("birth_date"),
    );
    check(
        "json timestamp finer than the field's unit",
        json_case(
            PENSIONS,
            set("paid_at", json!("2026-10-15T10:00:00.123456+08:00")),
        ),
        TemporalPrecision,
        Some("paid_at"),
    );

    // Quality rules.
    check(
        "required",
        json_case(deaths, set("deceased_name", json!("  "))),
        RequiredMissing,
        Some("deceased_name"),
    );
    check(
        "null",
        json_case(deaths, set("deceased_name", Json::Null)),
        RequiredMissing,
        Some("deceased_name"),
    );
    check(
        "length",
        json_case(deaths, set("deceased_name", json!("名".repeat(51)))),
        LengthOutOfRange,
        Some("deceased_name"),
    );
    check(
        "pattern",
        json_case(PENSIONS, set("pay_month", json!("2026-13"))),
        PatternMismatch,
        Some("pay_month"),
    );
    check(
        "one_of",
        json_case(deaths, set("death_cause_category", json!("aliens"))),
        ValueNotAllowed,
        Some("death_cause_category"),
    );
    check(
        "enum symbol",
        json_case(deaths, set("gender", json!("OTHER"))),
        ValueNotAllowed,
        Some("gender"),
    );
    check(
        "range",
        json_case(PENSIONS, set("amount", json!("0.00"))),
        RangeOutOfBounds,
        Some("amount"),
    );
    check(
        "rule scale",
        json_case(PENSIONS, set("amount", json!("12.345"))),
        DecimalScale,
        Some("amount"),
    );
    check(
        "schema scale",
        json_case(PENSIONS, set("amount", json!("12.34567"))),
        DecimalScale,
        Some("amount"),
    );
    check(
        "precision",
        json_case(
            ENTERPRISES,
            set("registered_capital", json!("12345678901234567.00")),
        ),
        DecimalPrecision,
        Some("registered_capital"),
    );
    check(
        "future",
        json_case(deaths, set("death_date", json!("2026-12-01"))),
        DateInFuture,
        Some("death_date"),
    );
    check(
        "date range",
        json_case(deaths, set("birth_date", json!("1800-01-01"))),
        DateOutOfRange,
        Some("birth_date"),
    );
    check(
        "order",
        json_case(deaths, set("death_date", json!("1949-12-30"))),
        FieldOrder,
        Some("death_date"),
    );
    check(
        "id legacy 15",
        json_case(deaths, set("deceased_id_number", json!("110105491231002"))),
        ResidentIdLength,
        Some("deceased_id_number"),
    );
    check(
        "id full-width",
        json_case(
            deaths,
            set(
                "deceased_id_number",
                json!("１１０１０５１９４９１２３１００２X"),
            ),
        ),
        ResidentIdFormat,
        Some("deceased_id_number"),
    );
    check(
        "id region",
        json_case(
            deaths,
            set("deceased_id_number", json!("99010519491231002X")),
        ),
        ResidentIdRegion,
        Some("deceased_id_number"),
    );
    check(
        "id birth",
        json_case(
            deaths,
            set("deceased_id_number", json!("110105194902300012")),
        ),
        ResidentIdBirthDate,
        Some("deceased_id_number"),
    );
    check(
        "id check",
        json_case(
            deaths,
            set("deceased_id_number", json!("110105194912310021")),
        ),
        ResidentIdChecksum,
        Some("deceased_id_number"),
    );
    check(
        "credit format",
        json_case(ENTERPRISES, set("credit_code", json!("91330100716105852"))),
        CreditCodeFormat,
        Some("credit_code"),
    );
    check(
        "credit check",
        json_case(ENTERPRISES, set("credit_code", json!("91330100716105852A"))),
        CreditCodeChecksum,
        Some("credit_code"),
    );
    check(
        "phone",
        json_case(deaths, set("informant_phone", json!("12345"))),
        MobilePhoneInvalid,
        Some("informant_phone"),
    );

    // Gate codes are decided by the router and gateway; their tests live there.
    let missing: Vec<&str> = Reason::ALL
        .iter()
        .filter(|r| !covered.contains(*r) && !Reason::GATE.contains(r))
        .map(|r| r.code())
        .collect();
    assert!(
        missing.is_empty(),
        "reason codes without a test case: {missing:?}"
    );
}

#[test]
fn sample_records_are_accepted_and_canonical_avro_is_stable() {
    for ds in catalog().datasets() {
        for (i, record) in samples(&ds.name).into_iter().enumerate() {
            let from_json = engine()
                .validate_json(&ds.name, record.to_string().as_bytes(), &ctx())
                .unwrap_or_else(|r| panic!("{} sample {i}: {r}", ds.name));
            assert_eq!(from_json.schema_id, ds.latest().id);
            // The canonical bytes validate again, unchanged, as Avro.
            let again = engine()
                .validate_avro(&ds.name, &from_json.value, &ctx())
                .unwrap_or_else(|r| panic!("{r}"));
            assert_eq!(again, from_json);
            // apache-avro reads exactly the datum we wrote.
            let mut datum = &from_json.value[5..];
            let reader =
                apache_avro::reader::datum::GenericDatumReader::builder(&ds.latest().schema)
                    .build()
                    .expect("reader");
            let value = reader
                .read_value(&mut datum)
                .unwrap_or_else(|e| panic!("{} sample {i}: apache-avro: {e}", ds.name));
            assert!(datum.is_empty(), "apache-avro left {} bytes", datum.len());
            assert!(value.validate(&ds.latest().schema));
        }
    }
}

#[test]
fn avro_written_by_apache_avro_under_an_older_version_is_accepted() {
    let ds = catalog().dataset(DEATHS).expect("deaths");
    let v1 = ds.version(1).expect("v1");
    // Built and encoded by apache-avro: our JSON encoder is not involved.
    let mut r = apache_avro::types::Record::new(&v1.schema).expect("record");
    r.put("registration_no", "DR-2026-00099999");
    r.put("deceased_id_number", "11010519491231002x");
    r.put("deceased_name", "张建国");
    r.put("gender", apache_avro::types::Value::Enum(0, "MALE".into()));
    r.put("birth_date", apache_avro::types::Value::Date(-1));
    r.put("death_date", apache_avro::types::Value::Date(20_000));
    r.put("death_place", "北京");
    r.put("death_cause_category", "natural");
    r.put("registering_office", "朝阳区民政局");
    r.put(
        "registered_at",
        apache_avro::types::Value::TimestampMillis(1_728_000_000_000),
    );
    let writer = apache_avro::writer::datum::GenericDatumWriter::builder(&v1.schema)
        .build()
        .expect("writer");
    let datum = writer.write_value_to_vec(r).expect("encode");
    let mut framed = vec![0];
    framed.extend_from_slice(&v1.id.0.to_be_bytes());
    framed.extend_from_slice(&datum);
    let accepted = engine()
        .validate_avro(DEATHS, &framed, &ctx())
        .unwrap_or_else(|r| panic!("{r}"));
    assert_eq!(accepted.schema_id, v1.id);
    assert_eq!(accepted.version, 1);
    assert_eq!(accepted.key, "DR-2026-00099999");
    // The lowercase check character is normalised in the canonical bytes, nothing else changes.
    let diffs: Vec<usize> = framed
        .iter()
        .zip(&accepted.value)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(diffs.len(), 1);
    assert_eq!((framed[diffs[0]], accepted.value[diffs[0]]), (b'x', b'X'));
}

#[test]
fn lowercase_x_in_a_key_id_number_is_normalised_in_the_key_too() {
    let ds = "public_security.household_registration";
    let mut record = samples(ds).remove(0);
    if let Json::Object(m) = &mut record {
        m.insert("id_number".into(), json!("11010519491231002x"));
        m.insert("birth_date".into(), json!("1949-12-31"));
    }
    let a = engine()
        .validate_json(ds, record.to_string().as_bytes(), &ctx())
        .unwrap_or_else(|r| panic!("{r}"));
    assert_eq!(a.key, "11010519491231002X");
    assert!(a.value.windows(18).any(|w| w == b"11010519491231002X"));
    assert!(!a.value.windows(18).any(|w| w == b"11010519491231002x"));
}

#[test]
fn names_with_rare_characters_and_middle_dots_are_accepted() {
    for name in ["𠮷野家", "欧阳·娜娜", "阿依古丽·买买提", "䶮"] {
        let r = json_case(DEATHS, set("deceased_name", json!(name)));
        assert!(r.is_ok(), "{name}: {r:?}");
    }
}

#[test]
fn rejection_details_never_quote_values() {
    let secret = "11010519491231002Y";
    let r = json_case(DEATHS, set("deceased_id_number", json!(secret))).expect_err("rejected");
    assert!(!r.to_string().contains(secret));
    let r = json_case(DEATHS, set("deceased_name", json!("名".repeat(51)))).expect_err("rejected");
    assert!(!r.to_string().contains('名'), "{r}");
    let r = engine()
        .validate_json(DEATHS, b"{\"deceased_name\": \"\xe5\x90\x8d", &ctx())
        .expect_err("rejected");
    assert!(!r.to_string().contains('名'), "{r}");
}

#[test]
fn nullable_fields_accept_plain_and_avro_json_unions() {
    for v in [
        json!(null),
        json!("13800138000"),
        json!({"string": "13800138000"}),
    ] {
        let r = json_case(DEATHS, set("informant_phone", v.clone()));
        assert!(r.is_ok(), "{v}: {r:?}");
    }
    let r = json_case(DEATHS, |m| drop(m.remove("informant_phone")));
    assert!(r.is_ok(), "missing nullable field takes its default: {r:?}");
}

#[test]
fn every_reason_code_is_unique_and_round_trips() {
    let codes: BTreeSet<&str> = Reason::ALL.iter().map(|r| r.code()).collect();
    assert_eq!(codes.len(), Reason::ALL.len());
    for r in Reason::ALL {
        assert_eq!(Reason::from_code(r.code()), Some(*r));
    }
}

/// The hostile-input corpus of the reliability issue, case by case, at the
/// engine: each input with its expected outcome. Nothing panics, hangs or
/// allocates in proportion to a length read from the input.
mod hostile {
    use super::*;
    use Reason::*;

    fn rejected(name: &str, r: Result<Accepted, Rejection>, want: Reason) {
        match r {
            Ok(a) => panic!("{name}: accepted (key {})", a.key),
            Err(e) => assert_eq!(e.reason, want, "{name}: {e}"),
        }
    }

    fn with_check(first17: &str) -> String {
        let digits: [u8; 17] = first17.as_bytes().try_into().expect("17 digits");
        format!(
            "{first17}{}",
            crate::ids::resident_id_check_char(&digits) as char
        )
    }

    #[test]
    fn framing() {
        let e = engine();
        rejected(
            "empty value",
            e.validate_avro(DEATHS, &[], &ctx()),
            FramingInvalid,
        );
        for n in 1..=4 {
            rejected(
                &format!("{n}-byte value"),
                e.validate_avro(DEATHS, &vec![0; n], &ctx()),
                FramingInvalid,
            );
        }
        let mut magic = framed_sample(DEATHS);
        magic[0] = 0x7f;
        rejected(
            "wrong magic byte",
            e.validate_avro(DEATHS, &magic, &ctx()),
            FramingInvalid,
        );
        for id in [0u32, 0x7fff_fff0, u32::MAX] {
            let mut v = framed_sample(DEATHS);
            v[1..5].copy_from_slice(&id.to_be_bytes());
            rejected(
                &format!("schema id {id}"),
                e.validate_avro(DEATHS, &v, &ctx()),
                SchemaUnknown,
            );
        }
        rejected(
            "another dataset's schema id",
            e.validate_avro(DEATHS, &framed_sample(PENSIONS), &ctx()),
            SchemaWrongDataset,
        );
        // Truncated at every position: rejected, never accepted.
        for sample in [framed_sample(DEATHS), LabDatum::default().framed()] {
            for cut in 5..sample.len() {
                let ds = if sample == framed_sample(DEATHS) {
                    (e, DEATHS)
                } else {
                    (lab(), "lab.shapes")
                };
                assert!(
                    ds.0.validate_avro(ds.1, &sample[..cut], &ctx()).is_err(),
                    "accepted a datum cut at {cut}"
                );
            }
        }
        let mut trailing = framed_sample(DEATHS);
        trailing.extend_from_slice(b"\x00\x01");
        rejected(
            "trailing bytes",
            e.validate_avro(DEATHS, &trailing, &ctx()),
            AvroTrailingBytes,
        );
    }

    #[test]
    fn lengths_counts_nesting_and_indexes() {
        rejected(
            "overlong varint",
            lab_check(LabDatum {
                count: [vec![0xff; 11], vec![1]].concat(),
                ..Default::default()
            }),
            AvroVarintOverlong,
        );
        rejected(
            "string length 2^62",
            lab_check(LabDatum {
                id: long(1 << 62),
                ..Default::default()
            }),
            AvroInvalidLength,
        );
        rejected(
            "negative length",
            lab_check(LabDatum {
                id: long(-5),
                ..Default::default()
            }),
            AvroInvalidLength,
        );
        rejected(
            "array block of i64::MAX zero-size items",
            lab_check(LabDatum {
                blanks: [long(i64::MAX), long(0)].concat(),
                ..Default::default()
            }),
            AvroTooManyItems,
        );
        // 100,000 levels of nesting (each level: a block of one child).
        let mut tree = Vec::new();
        for _ in 0..100_000 {
            tree.extend(long(1));
        }
        rejected(
            "100,000-deep nesting",
            lab_check(LabDatum {
                tree,
                ..Default::default()
            }),
            AvroNestingTooDeep,
        );
        for idx in [3, -1, i64::MAX] {
            rejected(
                &format!("union index {idx}"),
                lab_check(LabDatum {
                    choice: long(idx),
                    ..Default::default()
                }),
                AvroUnionIndex,
            );
        }
        for idx in [2, -1] {
            rejected(
                &format!("enum index {idx}"),
                lab_check(LabDatum {
                    level: long(idx),
                    ..Default::default()
                }),
                AvroEnumIndex,
            );
        }
        let huge = vec![0u8; (1 << 20) + 1];
        rejected(
            "message over the size limit",
            engine().validate_avro(DEATHS, &huge, &ctx()),
            MessageTooLarge,
        );
    }

    #[test]
    fn text_numbers_and_dates() {
        for bad in [&[0xC3, 0x28][..], &[0xC0, 0xAF], &[0xED, 0xA0, 0x80]] {
            rejected(
                &format!("invalid UTF-8 {bad:02X?}"),
                lab_check(LabDatum {
                    id: string(bad),
                    ..Default::default()
                }),
                AvroInvalidUtf8,
            );
        }
        for x in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            rejected(
                &format!("{x} double"),
                lab_check(LabDatum {
                    ratio: x.to_le_bytes().to_vec(),
                    ..Default::default()
                }),
                NumberNotFinite,
            );
        }
        for amount in ["NaN", "Infinity", "1e309"] {
            assert!(
                json_case(PENSIONS, set("amount", json!(amount))).is_err(),
                "amount {amount}"
            );
        }
        assert!(
            json_case(DEATHS, set("death_date", json!("9999-12-31"))).is_err(),
            "a death date far in the future"
        );
        assert!(
            json_case(DEATHS, set("birth_date", json!("0001-01-01"))).is_err(),
            "a birth date before 1890"
        );
        assert!(
            json_case(DEATHS, set("death_date", json!(i64::from(i32::MAX)))).is_err(),
            "days beyond the calendar"
        );
        let before = json_case(DEATHS, |m| {
            m.insert("birth_date".into(), json!("2000-01-02"));
            m.insert("death_date".into(), json!("2000-01-01"));
        });
        assert!(before.is_err(), "a death date before the birth date");
    }

    #[test]
    fn identity_fields() {
        let id = |v: &str| json_case(DEATHS, set("deceased_id_number", json!(v)));
        rejected(
            "wrong check digit",
            id("110105194912310021"),
            ResidentIdChecksum,
        );
        rejected(
            "15-digit legacy number",
            id("110105491231002"),
            ResidentIdLength,
        );
        rejected(
            "full-width digits",
            id("１１０１０５１９４９１２３１００２Ｘ"),
            ResidentIdFormat,
        );
        rejected(
            "impossible birth date, valid check digit",
            id(&with_check("11010519990230002")),
            ResidentIdBirthDate,
        );
        assert!(id("11010519491231002X").is_ok());
        for name in ["𠮷野家", "阿依古丽·买买提", "欧阳娜娜", "𪚥"] {
            assert!(
                json_case(DEATHS, set("deceased_name", json!(name))).is_ok(),
                "{name} is a valid name"
            );
        }
    }
}

/// A map's keys are data (an ID number keyed to an amount, say): a rejected
/// value under one names the map, never the key, since the field path goes
/// into DLQ headers, logs and the gateway's answer.
#[test]
fn a_field_path_never_holds_a_map_key() {
    let record = json!({
        "id": "k1", "flag": true, "count": 5, "ratio": 0.5, "choice": null,
        "level": "LOW", "blanks": [], "tree": {"children": []},
        "attrs": {"11010519491231002X": "not a number"},
    });
    let e = lab()
        .validate_json("lab.shapes", record.to_string().as_bytes(), &Context::now())
        .unwrap_err();
    assert_eq!(e.field.as_deref(), Some("attrs.*"), "{e:?}");
    assert!(!format!("{e:?}").contains("11010519491231002X"), "{e:?}");
}

#[test]
fn an_unknown_member_is_named_only_when_it_is_a_slip_on_a_field_name() {
    // A slip on a field's name is named, with the field meant: it is what
    // the developer fixes.
    for (name, meant) in [
        ("amonut", "amount"),
        ("Amount_", "amount"),
        ("recipient_nmae", "recipient_name"),
        ("paid_on", "paid_at"),
        ("PAY_MONTH", "pay_month"),
    ] {
        let r = json_case(PENSIONS, |m| drop(m.insert(name.to_owned(), json!(1)))).unwrap_err();
        assert_eq!(
            (r.reason, r.field.as_deref()),
            (Reason::JsonUnknownField, Some(name))
        );
        assert!(r.detail.contains(&format!("`{meant}`")), "{r}");
    }
    // Anything else may be data — an ID number, a passport number, a
    // person's name used as a key, a prefixed ID, text with spaces or
    // symbols: neither the field path nor the detail repeats it.
    let long = "a".repeat(65);
    for name in [
        "bonus",
        "110105195001011234",
        "_110105195001011234",
        "id110105195001011234",
        "E12345678",
        "ZhangWei",
        "张三",
        "a b",
        "x-1",
        "",
        long.as_str(),
    ] {
        let r = json_case(PENSIONS, |m| drop(m.insert(name.to_owned(), json!(1)))).unwrap_err();
        assert_eq!(
            (r.reason, r.field.as_deref()),
            (Reason::JsonUnknownField, None),
            "{name}"
        );
        if !name.is_empty() {
            assert!(!r.to_string().contains(name), "{r}");
        }
    }
}
