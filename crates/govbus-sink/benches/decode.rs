//! Canonical Avro to the subscriber's JSON: the compiled walker
//! (`decode::to_json`, the hot path) against apache-avro's generic `Value`
//! tree (`decode::to_json_generic`, the path before), on every catalog
//! sample, in one run; then the whole per-record delivery work (decode, row
//! filter, policy, JSON text) with each.
//!
//! `cargo bench -p govbus-sink --bench decode`, then
//! `scripts/bench-report decode` prints the ratios (see BENCHMARKS.md).

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use govbus_catalog::Catalog;
use govbus_sink::decode::{to_json, to_json_generic};
use govbus_sink::policy::Policy;
use govbus_validate::{Context, Engine};

fn bench(c: &mut Criterion) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let catalog = Arc::new(Catalog::load(&repo.join("schemas")).unwrap_or_else(|p| panic!("{p}")));
    let engine = Engine::new(&catalog).unwrap_or_else(|e| panic!("{e}"));
    let ctx = Context::at(1_795_996_800_000);
    let mut decode = c.benchmark_group("decode_json");
    decode.throughput(Throughput::Elements(1));
    let mut cases = Vec::new();
    for ds in catalog.datasets() {
        let path = repo.join(format!("examples/records/{}.json", ds.name));
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let records: Vec<serde_json::Value> =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        let framed = engine
            .validate_json(&ds.name, records[0].to_string().as_bytes(), &ctx)
            .unwrap_or_else(|r| panic!("{r}"))
            .value;
        let label = format!("{} ({} B)", ds.name, framed.len());
        decode.bench_with_input(BenchmarkId::new("compiled", &label), &framed, |b, f| {
            b.iter(|| to_json(&catalog, black_box(f)).map(|m| m.len()))
        });
        decode.bench_with_input(BenchmarkId::new("generic", &label), &framed, |b, f| {
            b.iter(|| to_json_generic(&catalog, black_box(f)).map(|m| m.len()))
        });
        if let Some(sub) = catalog.subscriptions().find(|s| s.dataset == ds.name) {
            cases.push((label, framed, Policy::new(sub, ds, b"bench-secret")));
        }
    }
    decode.finish();
    let mut deliver = c.benchmark_group("deliver_json");
    deliver.throughput(Throughput::Elements(1));
    for (label, framed, policy) in &cases {
        let run = |record: serde_json::Map<String, serde_json::Value>| {
            policy
                .admits(&record)
                .then(|| serde_json::to_vec(&policy.apply(record)).map(|v| v.len()))
        };
        deliver.bench_with_input(BenchmarkId::new("compiled", label), framed, |b, f| {
            b.iter(|| to_json(&catalog, black_box(f)).map(run))
        });
        deliver.bench_with_input(BenchmarkId::new("generic", label), framed, |b, f| {
            b.iter(|| to_json_generic(&catalog, black_box(f)).map(run))
        });
    }
    deliver.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
