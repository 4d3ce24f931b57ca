//! decode+validate: the compiled byte walker against apache-avro's own
//! decode-to-`Value` + `Value::validate`, on the sample records, in one run.
//!
//! Also JSON text to a value, `serde_json` alone against `parse_json`.
//!
//! `cargo bench -p govbus-validate --bench validate`, then
//! `scripts/bench-report` prints the ratios (see BENCHMARKS.md).

use std::hint::black_box;
use std::path::Path;

use apache_avro::reader::datum::GenericDatumReader;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use govbus_catalog::Catalog;
use govbus_validate::{Context, Engine};

fn bench(c: &mut Criterion) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let catalog = Catalog::load(&repo.join("schemas")).unwrap_or_else(|p| panic!("{p}"));
    let engine = Engine::new(&catalog).unwrap_or_else(|e| panic!("{e}"));
    let ctx = Context::at(1_795_996_800_000);
    // JSON text to a value: serde_json alone against `parse_json` (the
    // same, plus the duplicate-member check), on the headline record.
    let mut parse = c.benchmark_group("json_parse");
    parse.throughput(Throughput::Elements(1));
    let deaths_json = std::fs::read_to_string(
        repo.join("examples/records/civil_affairs.death_registration.json"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let first: Vec<serde_json::Value> =
        serde_json::from_str(&deaths_json).unwrap_or_else(|e| panic!("{e}"));
    let text = first[0].to_string();
    parse.bench_function("serde_json", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(text.as_bytes())))
    });
    parse.bench_function("parse_json", |b| {
        b.iter(|| govbus_validate::parse_json(black_box(text.as_bytes())))
    });
    parse.finish();
    let mut group = c.benchmark_group("decode_validate");
    group.throughput(Throughput::Elements(1));
    let mut cases = Vec::new();
    for ds in catalog.datasets() {
        let path = repo
            .join("examples/records")
            .join(format!("{}.json", ds.name));
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let records: Vec<serde_json::Value> =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        cases.push((ds, records[0].clone()));
    }
    // The headline case: a typical 250-byte record (a death registration with
    // a full hospital address), ten fields, six quality rules.
    let deaths = catalog
        .dataset("civil_affairs.death_registration")
        .unwrap_or_else(|| panic!("deaths"));
    let mut typical = cases
        .iter()
        .find(|(d, _)| d.name == deaths.name)
        .map(|(_, r)| r.clone())
        .unwrap_or_default();
    let mut place = String::from("北京市朝阳区建国门外大街");
    loop {
        typical["death_place"] = serde_json::Value::String(place.clone());
        let len = engine
            .validate_json(&deaths.name, typical.to_string().as_bytes(), &ctx)
            .map_or(0, |a| a.value.len());
        if len >= 250 {
            break;
        }
        place.push('号');
    }
    cases.insert(0, (deaths, typical));
    for (ds, record) in cases {
        let framed = engine
            .validate_json(&ds.name, record.to_string().as_bytes(), &ctx)
            .unwrap_or_else(|r| panic!("{r}"))
            .value;
        let label = format!("{} ({} B)", ds.name, framed.len());
        let handle = engine
            .dataset(&ds.name)
            .unwrap_or_else(|| panic!("{}", ds.name));
        group.bench_with_input(BenchmarkId::new("govbus", &label), &framed, |b, framed| {
            b.iter(|| {
                handle
                    .validate_avro(black_box(framed), &ctx)
                    .map(|a| a.value.len())
            })
        });
        let schema = &ds.latest().schema;
        let reader = GenericDatumReader::builder(schema)
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        group.bench_with_input(
            BenchmarkId::new("apache_avro", &label),
            &framed,
            |b, framed| {
                b.iter(|| {
                    let mut datum = &black_box(framed)[5..];
                    let value = reader
                        .read_value(&mut datum)
                        .unwrap_or_else(|e| panic!("{e}"));
                    assert!(datum.is_empty());
                    value.validate(schema)
                })
            },
        );
        let json = record.to_string();
        group.bench_with_input(BenchmarkId::new("govbus_json", &label), &json, |b, json| {
            b.iter(|| {
                handle
                    .validate_json(black_box(json.as_bytes()), &ctx)
                    .map(|a| a.value.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
