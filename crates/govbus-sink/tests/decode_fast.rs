//! The compiled decoder (the delivery hot path) gives exactly what the
//! generic apache-avro decoder gives, for every Avro type and logical type,
//! for every catalog sample, and for hostile bytes it either agrees or
//! refuses; it never panics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::{Arc, OnceLock};

use apache_avro::types::Value;
use apache_avro::Schema;
use govbus_catalog::Catalog;
use govbus_sink::decode::{datum_to_json_generic, to_json, to_json_generic};
use govbus_validate::{Context, Engine, JsonDecoder};
use proptest::prelude::*;

const EVERY_TYPE: &str = r#"{
  "type": "record", "name": "Every", "namespace": "test",
  "fields": [
    {"name": "n", "type": "null"},
    {"name": "b", "type": "boolean"},
    {"name": "i", "type": "int"},
    {"name": "l", "type": "long"},
    {"name": "f", "type": "float"},
    {"name": "d", "type": "double"},
    {"name": "by", "type": "bytes"},
    {"name": "s", "type": "string"},
    {"name": "fx", "type": {"type": "fixed", "name": "Three", "size": 3}},
    {"name": "e", "type": {"type": "enum", "name": "Colour", "symbols": ["RED", "GREEN", "BLUE"]}},
    {"name": "date", "type": {"type": "int", "logicalType": "date"}},
    {"name": "tm", "type": {"type": "int", "logicalType": "time-millis"}},
    {"name": "tu", "type": {"type": "long", "logicalType": "time-micros"}},
    {"name": "ts_ms", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "ts_us", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    {"name": "ts_ns", "type": {"type": "long", "logicalType": "timestamp-nanos"}},
    {"name": "lts_ms", "type": {"type": "long", "logicalType": "local-timestamp-millis"}},
    {"name": "lts_us", "type": {"type": "long", "logicalType": "local-timestamp-micros"}},
    {"name": "lts_ns", "type": {"type": "long", "logicalType": "local-timestamp-nanos"}},
    {"name": "dec", "type": {"type": "bytes", "logicalType": "decimal", "precision": 20, "scale": 4}},
    {"name": "decf", "type": {"type": "fixed", "name": "Money", "size": 16, "logicalType": "decimal", "precision": 38, "scale": 2}},
    {"name": "dur", "type": {"type": "fixed", "name": "Span", "size": 12, "logicalType": "duration"}},
    {"name": "u", "type": {"type": "string", "logicalType": "uuid"}},
    {"name": "arr", "type": {"type": "array", "items": ["null", "string"]}},
    {"name": "m", "type": {"type": "map", "values": "long"}},
    {"name": "inner", "type": ["null", {"type": "record", "name": "Inner", "fields": [
      {"name": "x", "type": "int"}, {"name": "again", "type": ["null", "Three"]}
    ]}]}
  ]
}"#;

fn every_type() -> &'static Schema {
    static S: OnceLock<Schema> = OnceLock::new();
    S.get_or_init(|| Schema::parse_str(EVERY_TYPE).unwrap())
}

/// [`EVERY_TYPE`] without its uuid field: the projection then skips fields
/// with the walker alone (a uuid makes it decode skipped fields too).
fn every_type_but_uuid() -> &'static Schema {
    static S: OnceLock<Schema> = OnceLock::new();
    S.get_or_init(|| {
        let text: String = EVERY_TYPE
            .lines()
            .filter(|l| !l.contains(r#""name": "u""#))
            .collect::<Vec<_>>()
            .join("\n");
        Schema::parse_str(&text).unwrap()
    })
}

fn finite_f32() -> impl Strategy<Value = f32> {
    any::<f32>().prop_filter("finite", |f| f.is_finite())
}

fn finite_f64() -> impl Strategy<Value = f64> {
    any::<f64>().prop_filter("finite", |f| f.is_finite())
}

prop_compose! {
    fn scalars()(
        b in any::<bool>(), i in any::<i32>(), l in any::<i64>(), f in finite_f32(),
        d in finite_f64(), by in prop::collection::vec(any::<u8>(), 0..8), s in ".{0,12}",
        fx in any::<[u8; 3]>(), e in 0u32..3, date in -800_000i32..3_000_000,
        tm in 0i32..86_400_000, tu in 0i64..86_400_000_000,
    ) -> Vec<(String, Value)> {
        vec![
            ("n".into(), Value::Null),
            ("b".into(), Value::Boolean(b)),
            ("i".into(), Value::Int(i)),
            ("l".into(), Value::Long(l)),
            ("f".into(), Value::Float(f)),
            ("d".into(), Value::Double(d)),
            ("by".into(), Value::Bytes(by)),
            ("s".into(), Value::String(s)),
            ("fx".into(), Value::Fixed(3, fx.to_vec())),
            ("e".into(), Value::Enum(e, ["RED", "GREEN", "BLUE"][e as usize].into())),
            ("date".into(), Value::Date(date)),
            ("tm".into(), Value::TimeMillis(tm)),
            ("tu".into(), Value::TimeMicros(tu)),
        ]
    }
}

prop_compose! {
    fn timed()(
        ms in -62_135_596_800_000i64..253_402_300_799_999,
        us in -62_135_596_800_000_000i64..253_402_300_799_999_999,
        ns in any::<i64>(),
        dec in any::<i64>(), decf in any::<i128>(),
        dur in any::<(u32, u32, u32)>(),
        u in any::<u128>(),
    ) -> Vec<(String, Value)> {
        let be = |v: i128, n: usize| v.to_be_bytes()[16 - n..].to_vec();
        vec![
            ("ts_ms".into(), Value::TimestampMillis(ms)),
            ("ts_us".into(), Value::TimestampMicros(us)),
            ("ts_ns".into(), Value::TimestampNanos(ns)),
            ("lts_ms".into(), Value::LocalTimestampMillis(ms)),
            ("lts_us".into(), Value::LocalTimestampMicros(us)),
            ("lts_ns".into(), Value::LocalTimestampNanos(ns)),
            ("dec".into(), Value::Decimal(apache_avro::Decimal::from(be(i128::from(dec), 8)))),
            ("decf".into(), Value::Decimal(apache_avro::Decimal::from(be(decf, 16)))),
            ("dur".into(), Value::Duration(apache_avro::Duration::new(
                apache_avro::Months::new(dur.0),
                apache_avro::Days::new(dur.1),
                apache_avro::Millis::new(dur.2),
            ))),
            ("u".into(), Value::Uuid(uuid::Uuid::from_u128(u))),
        ]
    }
}

prop_compose! {
    fn nested()(
        arr in prop::collection::vec(prop::option::of(".{0,6}"), 0..5),
        m in prop::collection::btree_map("[a-z]{0,4}", any::<i64>(), 0..4),
        inner in prop::option::of((any::<i32>(), prop::option::of(any::<[u8; 3]>()))),
    ) -> Vec<(String, Value)> {
        let opt = |v: Option<Value>| match v {
            None => Value::Union(0, Box::new(Value::Null)),
            Some(v) => Value::Union(1, Box::new(v)),
        };
        vec![
            ("arr".into(), Value::Array(arr.into_iter()
                .map(|s| opt(s.map(Value::String))).collect())),
            ("m".into(), Value::Map(m.into_iter().map(|(k, v)| (k, Value::Long(v))).collect())),
            ("inner".into(), opt(inner.map(|(x, again)| Value::Record(vec![
                ("x".into(), Value::Int(x)),
                ("again".into(), opt(again.map(|a| Value::Fixed(3, a.to_vec())))),
            ])))),
        ]
    }
}

fn encode(schema: &Schema, fields: Vec<(String, Value)>) -> Vec<u8> {
    let writer = apache_avro::writer::datum::GenericDatumWriter::builder(schema)
        .build()
        .unwrap();
    writer.write_value_to_vec(Value::Record(fields)).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn every_type_decodes_as_the_generic_decoder_does(a in scalars(), b in timed(), c in nested()) {
        let schema = every_type();
        let mut fields = a;
        fields.extend(b);
        fields.extend(c);
        let datum = encode(schema, fields);
        let fast = JsonDecoder::compile(schema).unwrap().to_json(&datum).unwrap();
        let generic = datum_to_json_generic(schema, &datum).unwrap();
        prop_assert_eq!(fast, generic);
    }

    #[test]
    fn damaged_datums_are_refused_or_read_as_apache_avro_reads_them(
        a in scalars(), b in timed(), c in nested(),
        at in any::<usize>(), flip in 1u8..=255, cut in any::<bool>(),
    ) {
        // A valid datum with one byte changed or its tail cut off: most
        // still decode to something, so agreement is actually tested.
        let schema = every_type();
        let mut fields = a;
        fields.extend(b);
        fields.extend(c);
        let mut datum = encode(schema, fields);
        let i = at % datum.len();
        if cut {
            datum.truncate(i);
        } else {
            datum[i] ^= flip;
        }
        if let Ok(fast) = JsonDecoder::compile(schema).unwrap().to_json(&datum) {
            // What the walker accepts, apache-avro reads the same way.
            prop_assert_eq!(Some(fast), datum_to_json_generic(schema, &datum));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Decoding only some top-level fields accepts exactly the datums a
    /// whole decode accepts (damaged ones included) and gives those fields
    /// as the whole decode does.
    #[test]
    fn a_projection_is_the_whole_decode_restricted_to_its_fields(
        a in scalars(), b in timed(), c in nested(),
        keep in any::<u32>(), at in any::<usize>(), flip in 1u8..=255,
        damage in 0u8..3, uuid in any::<bool>(),
    ) {
        let schema = if uuid { every_type() } else { every_type_but_uuid() };
        let mut fields = a;
        fields.extend(b);
        fields.extend(c);
        if !uuid {
            fields.retain(|(name, _)| name != "u");
        }
        let names: Vec<String> = fields.iter().map(|(n, _)| n.clone()).collect();
        let kept = |name: &str| {
            names.iter().position(|n| n == name).is_some_and(|i| keep & (1 << (i % 32)) != 0)
        };
        let mut datum = encode(schema, fields);
        let i = at % datum.len();
        match damage {
            0 => {}
            1 => datum.truncate(i),
            _ => datum[i] ^= flip,
        }
        let decoder = JsonDecoder::compile(schema).unwrap();
        let whole = decoder.to_json(&datum).map(|mut m| {
            m.retain(|k, _| kept(k));
            m
        });
        let only = decoder.to_json_only(&datum, &kept);
        prop_assert_eq!(whole.is_ok(), only.is_ok(), "{:?} vs {:?}", whole, only);
        if let (Ok(w), Ok(o)) = (whole, only) {
            prop_assert_eq!(w, o);
        }
    }
}

/// A non-finite float is read as `null` by the decoder but refused by the
/// validator's walker: a projection that skips such a field still accepts
/// the datum, as the whole decode does.
#[test]
fn a_projection_skipping_a_non_finite_float_accepts_what_the_whole_decode_accepts() {
    let schema = Schema::parse_str(
        r#"{"type":"record","name":"R","fields":[
          {"name":"a","type":"string"},{"name":"f","type":"float"},{"name":"d","type":"double"}]}"#,
    )
    .unwrap();
    let mut datum = vec![2, b'x'];
    datum.extend_from_slice(&f32::NAN.to_le_bytes());
    datum.extend_from_slice(&f64::INFINITY.to_le_bytes());
    let decoder = JsonDecoder::compile(&schema).unwrap();
    let whole = decoder.to_json(&datum).unwrap();
    let only = decoder.to_json_only(&datum, &|f| f == "a").unwrap();
    assert_eq!(only.get("a"), whole.get("a"));
    assert_eq!(only.len(), 1);
}

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

#[test]
fn every_catalog_sample_decodes_as_the_generic_decoder_does() {
    let catalog = Arc::new(Catalog::load(&repo().join("schemas")).unwrap());
    let engine = Engine::new(&catalog).unwrap();
    let mut n = 0;
    for ds in catalog.datasets() {
        let text =
            std::fs::read_to_string(repo().join(format!("examples/records/{}.json", ds.name)))
                .unwrap();
        let records: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
        for r in records {
            let a = engine
                .validate_json(
                    &ds.name,
                    r.to_string().as_bytes(),
                    &Context::at(1_795_996_800_000),
                )
                .unwrap();
            let fast = to_json(&catalog, &a.value).unwrap();
            assert_eq!(
                fast,
                to_json_generic(&catalog, &a.value).unwrap(),
                "{}",
                ds.name
            );
            // Truncated, it is refused, never half-decoded.
            assert!(to_json(&catalog, &a.value[..a.value.len() - 1]).is_err());
            n += 1;
        }
    }
    assert!(n >= 10, "{n} samples");
}

/// A named decimal or duration used again by name keeps its logical type in
/// the compiled decoder. (apache-avro's generic reader loses it there and
/// reads the reference as a plain fixed, so this case is checked against
/// the expected JSON, not against the generic decoder.)
#[test]
fn a_named_logical_type_used_again_by_name_keeps_its_meaning() {
    let schema = Schema::parse_str(
        r#"{"type":"record","name":"R","fields":[
          {"name":"a","type":{"type":"fixed","name":"Money","size":8,"logicalType":"decimal","precision":18,"scale":2}},
          {"name":"b","type":"Money"},
          {"name":"c","type":["null","Money"]}
        ]}"#,
    )
    .unwrap();
    let money = |v: i64| v.to_be_bytes().to_vec();
    // a = 123.45, b = -0.05, c = 1.00, written by hand: Avro fixed is its raw
    // bytes, a union index is a zig-zag long (1 → 0x02).
    let mut datum = money(12_345);
    datum.extend(money(-5));
    datum.push(0x02);
    datum.extend(money(100));
    let json = JsonDecoder::compile(&schema)
        .unwrap()
        .to_json(&datum)
        .unwrap();
    assert_eq!(
        serde_json::Value::Object(json),
        serde_json::json!({"a": "123.45", "b": "-0.05", "c": "1.00"})
    );
}

#[test]
fn a_uuid_string_that_is_no_uuid_does_not_decode_on_either_path() {
    let schema = Schema::parse_str(
        r#"{"type":"record","name":"R","fields":[{"name":"u","type":{"type":"string","logicalType":"uuid"}}]}"#,
    )
    .unwrap();
    let mut datum = vec![2 * 7];
    datum.extend(b"not-one");
    assert!(JsonDecoder::compile(&schema)
        .unwrap()
        .to_json(&datum)
        .is_err());
    assert!(datum_to_json_generic(&schema, &datum).is_none());
    let upper = "67E55044-10B1-426F-9247-BB680E5FE0C8";
    let mut datum = vec![2 * upper.len() as u8];
    datum.extend(upper.as_bytes());
    let fast = JsonDecoder::compile(&schema)
        .unwrap()
        .to_json(&datum)
        .unwrap();
    assert_eq!(Some(fast.clone()), datum_to_json_generic(&schema, &datum));
    assert_eq!(fast["u"], "67e55044-10b1-426f-9247-bb680e5fe0c8");
}

#[test]
fn a_schema_the_walker_does_not_read_goes_to_the_generic_decoder() {
    let schema = Schema::parse_str(
        r#"{"type":"record","name":"R","fields":[{"name":"u","type":{"type":"fixed","name":"U","size":16,"logicalType":"uuid"}}]}"#,
    )
    .unwrap();
    assert!(JsonDecoder::compile(&schema).is_err());
}
