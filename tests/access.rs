//! Access control across the bus: a random grant matrix of 5 subscribing
//! departments × 6 datasets, each department receiving exactly its grants;
//! and a leak scan of everything the run wrote outside the topics — logs,
//! metrics, dead-letter headers and the (default-masked) deliveries — for
//! valid ID numbers and the seeded names.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, govbus_bin, repo};
use govbus_kafka::headers as h;
use govbus_kafka::topics::Topics;
use govbus_testkit::ids::valid_ids_in;
use govbus_testkit::{create_topic, producer_config, unique, Broker};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value as Json;

const DATASETS: [&str; 6] = [
    "civil_affairs.death_registration",
    "hrss.pension_payment",
    "hrss.social_insurance_contribution",
    "hrss.unemployment_benefit_payment",
    "market_regulation.enterprise_registration",
    "housing_fund.account",
];
const SUBSCRIBERS: [&str; 5] = [
    "public_security",
    "education",
    "health",
    "data_bureau",
    "housing_fund",
];

#[tokio::test(flavor = "multi_thread")]
async fn each_department_receives_exactly_its_grants_and_nothing_personal_leaks() {
    let bootstrap = Broker::shared().bootstrap();
    let topics = Topics::new(format!("{}.", unique("acl")));
    for ds in DATASETS {
        create_topic(&bootstrap, &topics.data(ds), 1).await.unwrap();
    }
    for owner in ["civil_affairs", "hrss", "market_regulation", "housing_fund"] {
        create_topic(&bootstrap, &topics.ingest(owner), 1)
            .await
            .unwrap();
    }
    // A seeded random matrix; every department holds at least one grant.
    let mut seed: u64 = 0x5eed_2026_1130;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let tmp = tempfile::tempdir().unwrap();
    let catalog = tmp.path().join("catalog");
    govbus_testkit::copy_dir(&repo().join("schemas"), &catalog).unwrap();
    std::fs::remove_dir_all(catalog.join("subscriptions")).unwrap();
    std::fs::create_dir(catalog.join("subscriptions")).unwrap();
    let mut grants: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (d, dept) in SUBSCRIBERS.iter().enumerate() {
        for (i, ds) in DATASETS.iter().enumerate() {
            if next() % 2 == 0 || (i == d && !grants.contains_key(dept)) {
                grants.entry(dept).or_default().insert(ds);
                let id = format!("g_{dept}_{}", ds.replace('.', "_"));
                // Below the sink's --file-root (the catalog admits no absolute dir).
                let dir = format!("out/{dept}");
                std::fs::write(
                    catalog.join(format!("subscriptions/{id}.toml")),
                    format!("subscriber = \"{dept}\"\ndataset = \"{ds}\"\npurpose = \"access matrix test\"\n\n[sink]\ntype = \"file\"\ndir = \"{dir}\"\nroll_records = 1\nroll_interval = \"1s\"\n"),
                )
                .unwrap();
            }
        }
    }
    let granted: usize = grants.values().map(BTreeSet::len).sum();
    println!("{granted} grants: {grants:?}");

    let logs = tmp.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    // Spans are exported too, and scanned with the rest.
    let otlp = common::Otlp::start(&logs);
    let start = |args: &[&str], log: &str| {
        let mut c = Command::new(govbus_bin());
        c.args(args)
            .env("GOVBUS_LOG", "debug,rdkafka=info,librdkafka=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(logs.join(log)).unwrap());
        otlp.export_to(&mut c);
        govbus_testkit::spawn(c).unwrap()
    };
    let cat = catalog.to_str().unwrap().to_owned();
    let rport = free_port();
    let mut router = start(
        &[
            "router",
            "--bootstrap",
            &bootstrap,
            "--topic-prefix",
            topics.prefix(),
            "--catalog",
            &cat,
            "--group",
            &unique("r"),
            "--listen",
            &format!("127.0.0.1:{rport}"),
            "--kafka",
            "session.timeout.ms=6000",
        ],
        "router.log",
    );
    let sport = free_port();
    let mut sink = start(
        &[
            "sink",
            "--bootstrap",
            &bootstrap,
            "--topic-prefix",
            topics.prefix(),
            "--catalog",
            &cat,
            "--listen",
            &format!("127.0.0.1:{sport}"),
            "--file-root",
            tmp.path().to_str().unwrap(),
            "--kafka",
            "session.timeout.ms=6000",
        ],
        "sink.log",
    );

    // Publish every sample record of the six datasets, plus one per dataset
    // that fails validation (it lands in the DLQ), as the owners.
    let producer: FutureProducer = producer_config(&bootstrap).create().unwrap();
    let mut published: BTreeMap<&str, usize> = BTreeMap::new();
    let mut seeded_names: BTreeSet<String> = BTreeSet::new();
    for ds in DATASETS {
        let text =
            std::fs::read_to_string(repo().join(format!("examples/records/{ds}.json"))).unwrap();
        let records: Vec<Json> = serde_json::from_str(&text).unwrap();
        let owner = ds.split('.').next().unwrap();
        for (i, r) in records.iter().enumerate() {
            for (k, v) in r.as_object().unwrap() {
                if k.ends_with("name") && !k.contains("enterprise") && !k.contains("employer") {
                    seeded_names.insert(v.as_str().unwrap().to_owned());
                }
            }
            // A copy with a member the schema does not have: rejected, dead-lettered
            // with its personal data in the value (where it belongs) and none in the headers.
            let mut bad = r.clone();
            bad.as_object_mut()
                .unwrap()
                .insert("not_in_the_schema".into(), Json::from(1));
            for (body, id) in [
                (r.to_string(), format!("{ds}-{i}")),
                (bad.to_string(), format!("{ds}-{i}-bad")),
            ] {
                if id.ends_with("-bad") && i != 0 {
                    continue;
                }
                let hs = h::owned([(h::CE_TYPE, ds.as_bytes()), (h::CE_ID, id.as_bytes())]);
                producer
                    .send(
                        FutureRecord::<(), _>::to(&topics.ingest(owner))
                            .payload(&body)
                            .headers(hs),
                        Duration::from_secs(30),
                    )
                    .await
                    .map_err(|(e, _)| e)
                    .unwrap();
            }
        }
        published.insert(ds, records.len());
    }

    // Each department's files hold exactly the datasets it was granted, every record of them.
    let expected: BTreeMap<&str, usize> = grants
        .iter()
        .map(|(d, dss)| (*d, dss.iter().map(|ds| published[ds]).sum()))
        .collect();
    let read =
        |dept: &str| -> Vec<Json> { common::jsonl_events(&tmp.path().join("out").join(dept)) };
    let started = Instant::now();
    while SUBSCRIBERS
        .iter()
        .any(|d| read(d).len() < expected.get(d).copied().unwrap_or(0))
    {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "deliveries incomplete: {:?}",
            SUBSCRIBERS.map(|d| (d, read(d).len()))
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_secs(2)); // nothing extra arrives
    let mut delivered_text = String::new();
    for dept in SUBSCRIBERS {
        let events = read(dept);
        let types: BTreeSet<String> = events
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_owned())
            .collect();
        let want: BTreeSet<String> = grants
            .get(dept)
            .map(|s| s.iter().map(|d| (*d).to_owned()).collect())
            .unwrap_or_default();
        assert_eq!(types, want, "{dept} receives exactly its grants");
        assert_eq!(
            events.len(),
            expected.get(dept).copied().unwrap_or(0),
            "{dept}: every record, once"
        );
        delivered_text.push_str(&serde_json::to_string(&events).unwrap());
    }

    // The leak scan: logs, metrics, DLQ headers, and the masked deliveries.
    let mut scanned = BTreeMap::new();
    for f in ["router.log", "sink.log"] {
        scanned.insert(f.to_owned(), std::fs::read_to_string(logs.join(f)).unwrap());
    }
    for (name, port) in [("router /metrics", rport), ("sink /metrics", sport)] {
        scanned.insert(name.to_owned(), common::http_get(port, "/metrics"));
    }
    let mut dlq_headers = String::new();
    let mut dead = 0;
    for owner in ["civil_affairs", "hrss", "market_regulation", "housing_fund"] {
        for r in govbus_kafka::read::read_all(
            &bootstrap,
            &topics.dlq(owner),
            Duration::from_millis(500),
            Duration::from_secs(20),
        )
        .unwrap_or_default()
        {
            dead += 1;
            for (k, v) in &r.headers {
                if k.starts_with(h::ERROR_PREFIX) {
                    dlq_headers.push_str(&format!(
                        "{k}={}\n",
                        String::from_utf8_lossy(v.as_deref().unwrap_or_default())
                    ));
                }
            }
        }
    }
    assert_eq!(dead, DATASETS.len(), "one rejected record per dataset");
    scanned.insert("DLQ govbus.error.* headers".into(), dlq_headers);
    scanned.insert("deliveries (default policy: masked)".into(), delivered_text);
    // Every span exported so far: names and attributes (the last batches'
    // spans end after their offsets are stored, within the export delay).
    std::thread::sleep(Duration::from_millis(500));
    let spans = otlp.spans();
    assert!(
        spans.iter().any(|s| s["name"] == "govbus.router route")
            && spans.iter().any(|s| s["name"] == "govbus.sink deliver"),
        "the router and the sink exported spans"
    );
    scanned.insert(
        "exported spans".into(),
        spans
            .iter()
            .map(|s| format!("{} {}\n", s["name"], s["attributes"]))
            .collect(),
    );
    for (what, text) in &scanned {
        assert!(!text.is_empty(), "{what} is empty: nothing was scanned");
        assert_eq!(
            valid_ids_in(text),
            Vec::<String>::new(),
            "valid ID numbers in {what}"
        );
        for name in &seeded_names {
            if name.chars().count() > 1 {
                assert!(
                    !text.contains(name.as_str()),
                    "the name {name} appears in {what}"
                );
            }
        }
    }
    for child in [&mut router, &mut sink] {
        let _ = child.kill();
        let _ = child.wait();
    }
}
