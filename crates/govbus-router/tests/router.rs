//! The router against the real broker: what lands where, with which headers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use govbus_catalog::Catalog;
use govbus_kafka::headers as h;
use govbus_router::{Metrics, Router, RouterConfig, Topics};
use govbus_testkit::{consumer_config, create_topic, producer_config, unique, Broker};
use govbus_validate::{Context, Engine};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn engine() -> Arc<Engine> {
    static E: OnceLock<Arc<Engine>> = OnceLock::new();
    E.get_or_init(|| {
        let catalog = Catalog::load(&repo().join("schemas")).unwrap();
        Arc::new(Engine::new(&catalog).unwrap())
    })
    .clone()
}

fn sample(dataset: &str, i: usize) -> serde_json::Value {
    let text =
        std::fs::read_to_string(repo().join(format!("examples/records/{dataset}.json"))).unwrap();
    let v: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    v[i].clone()
}

/// A running router in its own topic namespace.
struct Running {
    topics: Topics,
    metrics: Metrics,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

async fn start_router(departments: &[&str]) -> Running {
    let broker = Broker::shared();
    let topics = Topics::new(format!("{}.", unique("r")));
    for d in departments {
        create_topic(&broker.bootstrap(), &topics.ingest(d), 2)
            .await
            .unwrap();
    }
    let mut config = RouterConfig::new(broker.bootstrap());
    config.topics = topics.clone();
    config.group = unique("router");
    config.client_overrides = vec![
        ("session.timeout.ms".into(), "6000".into()),
        ("heartbeat.interval.ms".into(), "500".into()),
    ];
    let metrics = Metrics::new();
    let router = Router::new(engine(), config, metrics.clone());
    let (stop, mut rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        router
            .run(async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await
            .unwrap();
    });
    Running {
        topics,
        metrics,
        stop,
        task,
    }
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

async fn publish(topic: &str, key: Option<&[u8]>, value: &[u8], headers: &[(&str, &[u8])]) {
    let producer: FutureProducer = producer_config(&Broker::shared().bootstrap())
        .create()
        .unwrap();
    let hs = headers.iter().fold(OwnedHeaders::new(), |acc, (k, v)| {
        acc.insert(Header {
            key: k,
            value: Some(*v),
        })
    });
    let mut rec = FutureRecord::to(topic).payload(value).headers(hs);
    if let Some(k) = key {
        rec = rec.key(k);
    }
    producer
        .send(rec, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

#[derive(Debug, Clone)]
struct Got {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: HashMap<String, String>,
    header_count: usize,
}

/// Reads `n` records from `topic` (60 s at most).
async fn read(topic: &str, n: usize) -> Vec<Got> {
    let consumer: StreamConsumer =
        consumer_config(&Broker::shared().bootstrap(), &unique("reader"))
            .create()
            .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while out.len() < n {
        let Ok(m) = tokio::time::timeout_at(deadline, consumer.recv()).await else {
            break;
        };
        // A topic the router creates on demand may not exist yet when we subscribe.
        let Ok(m) = m else { continue };
        let mut headers = HashMap::new();
        let mut header_count = 0;
        if let Some(hs) = m.headers() {
            header_count = hs.count();
            for (name, value) in h::raw(hs) {
                headers.insert(
                    String::from_utf8_lossy(name).into_owned(),
                    String::from_utf8_lossy(value.unwrap_or_default()).into_owned(),
                );
            }
        }
        out.push(Got {
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            headers,
            header_count,
        });
    }
    out
}

#[tokio::test]
async fn valid_records_land_on_the_canonical_topic_with_cloudevents_headers() {
    let r = start_router(&["civil_affairs", "hrss", "market_regulation"]).await;
    let ctx = Context::now();
    // 1. JSON in binary mode, dataset named by ce_type, with a trace context and an event id.
    let deaths = sample("civil_affairs.death_registration", 0);
    let tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    publish(
        &r.topics.ingest("civil_affairs"),
        Some(b"DR-2026-00012345"),
        deaths.to_string().as_bytes(),
        &[
            (h::CE_TYPE, b"civil_affairs.death_registration"),
            (h::CE_ID, b"evt-1"),
            (h::TRACEPARENT, tp),
            ("govbus.error.reason", b"forged"),
        ],
    )
    .await;
    // 2. Confluent-framed Avro with no headers at all: the schema id names the dataset.
    let pension = engine()
        .validate_json(
            "hrss.pension_payment",
            sample("hrss.pension_payment", 0).to_string().as_bytes(),
            &ctx,
        )
        .unwrap();
    publish(
        &r.topics.ingest("hrss"),
        Some(pension.key.as_bytes()),
        &pension.value,
        &[],
    )
    .await;
    // 3. A structured-mode CloudEvent.
    let ce = json!({"specversion": "1.0", "id": "evt-3", "source": "/x", "type": "market_regulation.enterprise_registration",
                    "time": "2026-11-01T08:00:00Z", "op": "update", "sourceversion": 7,
                    "data": sample("market_regulation.enterprise_registration", 0)});
    publish(
        &r.topics.ingest("market_regulation"),
        None,
        ce.to_string().as_bytes(),
        &[(h::CONTENT_TYPE, b"application/cloudevents+json")],
    )
    .await;
    // 4. A delete: key only.
    publish(
        &r.topics.ingest("hrss"),
        Some(b"PP202610000009"),
        b"",
        &[(h::CE_TYPE, b"hrss.pension_payment"), (h::CE_OP, b"delete")],
    )
    .await;

    let d = read(&r.topics.data("civil_affairs.death_registration"), 1).await;
    assert_eq!(d.len(), 1);
    let expected = engine()
        .validate_json(
            "civil_affairs.death_registration",
            deaths.to_string().as_bytes(),
            &ctx,
        )
        .unwrap();
    assert_eq!(d[0].key.as_deref(), Some(b"DR-2026-00012345".as_slice()));
    assert_eq!(d[0].value.as_deref(), Some(expected.value.as_slice()));
    let hd = &d[0].headers;
    assert_eq!(hd[h::CE_SPECVERSION], "1.0");
    assert_eq!(hd[h::CE_ID], "evt-1");
    assert_eq!(hd[h::CE_SOURCE], "/departments/civil_affairs");
    assert_eq!(hd[h::CE_TYPE], "civil_affairs.death_registration");
    assert_eq!(hd[h::CE_SUBJECT], "DR-2026-00012345");
    assert_eq!(hd[h::CONTENT_TYPE], "application/avro");
    assert_eq!(hd[h::CE_OP], "create");
    assert_eq!(hd[h::CE_SCHEMAID], expected.schema_id.0.to_string());
    assert_eq!(hd[h::TRACEPARENT].as_bytes(), tp);
    assert!(
        !hd.contains_key("govbus.error.reason"),
        "forged error headers are not carried"
    );
    assert!(hd[h::CE_TIME].ends_with('Z'));

    let p = read(&r.topics.data("hrss.pension_payment"), 2).await;
    assert_eq!(p.len(), 2);
    let by_key = |k: &[u8]| {
        p.iter()
            .find(|g| g.key.as_deref() == Some(k))
            .unwrap_or_else(|| panic!("{p:?}"))
    };
    let avro = by_key(pension.key.as_bytes());
    assert_eq!(
        avro.value.as_deref(),
        Some(pension.value.as_slice()),
        "Avro input is re-framed, not re-encoded"
    );
    assert!(
        avro.headers[h::CE_ID].starts_with(&r.topics.ingest("hrss")),
        "a missing ce_id is derived from topic-partition-offset"
    );
    let deleted = by_key(b"PP202610000009");
    assert_eq!(deleted.value, None, "a delete is a tombstone");
    assert_eq!(deleted.headers[h::CE_OP], "delete");

    let e = read(
        &r.topics.data("market_regulation.enterprise_registration"),
        1,
    )
    .await;
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].key.as_deref(), Some(b"91330100716105852F".as_slice()));
    assert_eq!(e[0].headers[h::CE_ID], "evt-3");
    assert_eq!(e[0].headers[h::CE_OP], "update");
    assert_eq!(e[0].headers[h::CE_SOURCEVERSION], "7");
    assert_eq!(e[0].headers[h::CE_TIME], "2026-11-01T08:00:00.000Z");

    let metrics = r.metrics.render();
    assert!(metrics.contains("govbus_router_records_routed_total{dataset=\"hrss.pension_payment\",department=\"hrss\"} 2"), "{metrics}");
    r.stop().await;
}

struct Bad {
    department: &'static str,
    key: Option<&'static [u8]>,
    value: Vec<u8>,
    headers: Vec<(&'static str, Vec<u8>)>,
    reason: &'static str,
    field: Option<&'static str>,
}

#[tokio::test]
async fn each_rejection_lands_in_the_dlq_with_its_reason_and_the_original_bytes() {
    let r = start_router(&["civil_affairs", "hrss", "tax"]).await;
    let deaths = sample("civil_affairs.death_registration", 0);
    let with = |field: &str, v: serde_json::Value| {
        let mut d = deaths.clone();
        d[field] = v;
        d.to_string().into_bytes()
    };
    let ce_type = |t: &'static str| vec![(h::CE_TYPE, t.as_bytes().to_vec())];
    let deaths_type = ce_type("civil_affairs.death_registration");
    let pension = engine()
        .validate_json(
            "hrss.pension_payment",
            sample("hrss.pension_payment", 0).to_string().as_bytes(),
            &Context::now(),
        )
        .unwrap();
    let mut unknown_id = pension.value.clone();
    unknown_id[1..5].copy_from_slice(&7u32.to_be_bytes());
    let mut trailing = pension.value.clone();
    trailing.push(0);
    let many: Vec<(&'static str, Vec<u8>)> =
        (0..100).map(|_| ("x-filler", b"1".to_vec())).collect();
    let cases = vec![
        Bad {
            department: "tax",
            key: None,
            value: deaths.to_string().into_bytes(),
            headers: deaths_type.clone(),
            reason: "department_unknown",
            field: None,
        },
        Bad {
            department: "civil_affairs",
            key: None,
            value: deaths.to_string().into_bytes(),
            headers: vec![],
            reason: "dataset_missing",
            field: Some("ce_type"),
        },
        Bad {
            department: "civil_affairs",
            key: None,
            value: b"{}".to_vec(),
            headers: ce_type("civil_affairs.marriage"),
            reason: "dataset_unknown",
            field: Some("ce_type"),
        },
        Bad {
            department: "hrss",
            key: None,
            value: deaths.to_string().into_bytes(),
            headers: deaths_type.clone(),
            reason: "publisher_not_owner",
            field: None,
        },
        Bad {
            department: "civil_affairs",
            key: None,
            value: deaths.to_string().into_bytes(),
            headers: [deaths_type.clone(), vec![(h::CE_OP, b"merge".to_vec())]].concat(),
            reason: "envelope_invalid",
            field: Some("ce_op"),
        },
        Bad {
            department: "civil_affairs",
            key: None,
            value: deaths.to_string().into_bytes(),
            headers: [
                deaths_type.clone(),
                vec![(h::CE_TIME, b"yesterday".to_vec())],
            ]
            .concat(),
            reason: "envelope_invalid",
            field: Some("ce_time"),
        },
        Bad {
            department: "civil_affairs",
            key: None,
            value: deaths.to_string().into_bytes(),
            headers: [deaths_type.clone(), many].concat(),
            reason: "headers_too_many",
            field: None,
        },
        Bad {
            department: "civil_affairs",
            key: Some(b"DR-2026-99999999"),
            value: deaths.to_string().into_bytes(),
            headers: deaths_type.clone(),
            reason: "key_mismatch",
            field: None,
        },
        Bad {
            department: "hrss",
            key: None,
            value: unknown_id,
            headers: vec![],
            reason: "schema_unknown",
            field: None,
        },
        Bad {
            department: "hrss",
            key: None,
            value: trailing,
            headers: vec![],
            reason: "avro_trailing_bytes",
            field: None,
        },
        Bad {
            department: "civil_affairs",
            key: None,
            value: with("deceased_id_number", json!("110105194912310021")),
            headers: deaths_type.clone(),
            reason: "resident_id_checksum",
            field: Some("deceased_id_number"),
        },
        Bad {
            department: "civil_affairs",
            key: None,
            value: b"{\"registration_no\":".to_vec(),
            headers: deaths_type.clone(),
            reason: "json_invalid",
            field: None,
        },
        Bad {
            department: "civil_affairs",
            key: None,
            value: vec![],
            headers: [deaths_type.clone(), vec![(h::CE_OP, b"delete".to_vec())]].concat(),
            reason: "key_missing",
            field: None,
        },
    ];
    for c in &cases {
        let headers: Vec<(&str, &[u8])> =
            c.headers.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        let mut headers = headers;
        headers.push(("govbus.error.reason", b"forged"));
        publish(&r.topics.ingest(c.department), c.key, &c.value, &headers).await;
    }
    let mut got: Vec<Got> = Vec::new();
    for dept in ["tax", "civil_affairs", "hrss"] {
        let n = cases.iter().filter(|c| c.department == dept).count();
        let mut g = read(&r.topics.dlq(dept), n).await;
        assert_eq!(g.len(), n, "dlq.{dept}");
        got.append(&mut g);
    }
    for c in &cases {
        let found = got
            .iter()
            .find(|g| {
                g.headers.get(h::ERROR_REASON).map(String::as_str) == Some(c.reason)
                    && g.headers.get(h::ERROR_FIELD).map(String::as_str) == c.field
                    && g.value.as_deref().unwrap_or_default() == c.value.as_slice()
            })
            .unwrap_or_else(|| {
                panic!(
                    "no dead letter with reason {} and the original value; got {:?}",
                    c.reason,
                    got.iter()
                        .map(|g| &g.headers[h::ERROR_REASON])
                        .collect::<Vec<_>>()
                )
            });
        assert_eq!(found.key.as_deref(), c.key, "{}", c.reason);
        assert!(found.headers[h::ERROR_TOPIC].ends_with(&format!("ingest.{}", c.department)));
        assert!(found.headers[h::ERROR_OFFSET].parse::<i64>().is_ok());
        assert!(["gate", "decode", "rules"].contains(&found.headers[h::ERROR_STAGE].as_str()));
        // The forged header was dropped; only the router's reason is there.
        assert_eq!(found.headers[h::ERROR_REASON], c.reason);
        if c.reason == "headers_too_many" {
            assert_eq!(found.headers[h::ERROR_HEADERS_DROPPED], "102");
            assert!(
                found.header_count < 20,
                "the 100 input headers are not copied"
            );
        }
        // No personal data in any header of any dead letter.
        for v in found.headers.values() {
            assert!(
                !v.contains("11010519491231002X")
                    && !v.contains("110105194912310021")
                    && !v.contains("张建国"),
                "{}: {v}",
                c.reason
            );
        }
    }
    let metrics = r.metrics.render();
    assert!(
        metrics.contains("reason=\"publisher_not_owner\""),
        "{metrics}"
    );
    assert!(metrics.contains("govbus_router_records_rejected_total{dataset=\"civil_affairs.death_registration\",department=\"hrss\",reason=\"publisher_not_owner\"} 1"), "{metrics}");
    r.stop().await;
}

#[tokio::test]
async fn a_new_ingest_topic_is_picked_up_without_a_restart() {
    let r = start_router(&["hrss"]).await;
    // Let the router join with only ingest.hrss, then add a department's topic.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let topic = r.topics.ingest("education");
    create_topic(&Broker::shared().bootstrap(), &topic, 1)
        .await
        .unwrap();
    let record = sample("education.enrollment_application", 0);
    publish(
        &topic,
        None,
        record.to_string().as_bytes(),
        &[(h::CE_TYPE, b"education.enrollment_application")],
    )
    .await;
    let got = read(&r.topics.data("education.enrollment_application"), 1).await;
    assert_eq!(
        got.len(),
        1,
        "the router subscribed to the new topic by pattern"
    );
    assert_eq!(got[0].key.as_deref(), Some(b"EA202600000001".as_slice()));
    r.stop().await;
}

/// Transactional mode's protocol flow — init, begin, produce, send offsets,
/// commit — on librdkafka's mock cluster, the one broker here that serves
/// EndTxn. Its EndTxn and TxnOffsetCommit only acknowledge: no markers, no
/// stored offsets, so neither isolation nor the transactional offset commit
/// can be observed here (ARCHITECTURE.md). What is checked: every step of
/// the flow succeeds (a failed transaction would rewind and route the records
/// twice) and the records arrive.
#[tokio::test]
async fn transactional_mode_routes_and_commits_offsets_in_the_transaction() {
    let (cluster, topics) = mock_cluster("txn");
    let bootstrap = cluster.bootstrap_servers();
    let group = unique("router");
    let start = |metrics: Metrics| {
        let mut config = mock_config(&bootstrap, &topics);
        config.group = group.clone();
        config.mode = govbus_router::Mode::Transactional;
        let router = Router::new(engine(), config, metrics);
        let (stop, mut rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            router
                .run(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await
                .unwrap();
        });
        (stop, task)
    };
    let producer: FutureProducer = producer_config(&bootstrap).create().unwrap();
    let records: Vec<serde_json::Value> =
        (0..2).map(|i| sample("hrss.pension_payment", i)).collect();
    for r in &records {
        let body = r.to_string();
        let hs = OwnedHeaders::new().insert(Header {
            key: h::CE_TYPE,
            value: Some("hrss.pension_payment"),
        });
        producer
            .send(
                FutureRecord::to(&topics.ingest("hrss"))
                    .key(r["payment_id"].as_str().unwrap())
                    .payload(&body)
                    .headers(hs),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let metrics = Metrics::new();
    let (stop, task) = start(metrics.clone());
    let consumer: StreamConsumer = consumer_config(&bootstrap, &unique("reader"))
        .create()
        .unwrap();
    consumer
        .subscribe(&[topics.data("hrss.pension_payment").as_str()])
        .unwrap();
    let mut keys = Vec::new();
    while keys.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .expect("routed in time")
            .unwrap();
        keys.push(String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned());
    }
    keys.sort();
    assert_eq!(keys, ["PP202610000001", "PP202610000002"]);
    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap();

    assert!(metrics.render().contains("govbus_router_records_routed_total{dataset=\"hrss.pension_payment\",department=\"hrss\"} 2"));
}

/// A broker that keeps refusing writes (NOT_ENOUGH_REPLICAS on 40 produce
/// requests in a row, injected into the mock cluster) holds the router in
/// place: the records are retried, never dead-lettered and never skipped, and
/// arrive once the broker accepts writes again.
#[tokio::test]
async fn refused_writes_are_retried_never_dead_lettered_or_skipped() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let (cluster, topics) = mock_cluster("refuse");
    let bootstrap = cluster.bootstrap_servers();
    let producer: FutureProducer = producer_config(&bootstrap).create().unwrap();
    let mut valid = 0;
    for i in 0..2 {
        let mut r = sample("hrss.pension_payment", i);
        if i == 1 {
            r["recipient_id_number"] = json!("510107197208150044");
        } else {
            valid += 1;
        }
        let body = r.to_string();
        let hs = OwnedHeaders::new().insert(Header {
            key: h::CE_TYPE,
            value: Some("hrss.pension_payment"),
        });
        producer
            .send(
                FutureRecord::to(&topics.ingest("hrss"))
                    .key(r["payment_id"].as_str().unwrap())
                    .payload(&body)
                    .headers(hs),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    // From now on the broker refuses the next 40 writes, the router's included.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 40],
    );
    let mut config = mock_config(&bootstrap, &topics);
    config.client_overrides = vec![
        ("session.timeout.ms".into(), "6000".into()),
        ("retry.backoff.ms".into(), "50".into()),
    ];
    let router = Router::new(engine(), config, Metrics::new());
    let (stop, mut rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        router
            .run(async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await
            .unwrap();
    });
    let consumer: StreamConsumer = consumer_config(&bootstrap, &unique("reader"))
        .create()
        .unwrap();
    consumer
        .subscribe(&[
            topics.data("hrss.pension_payment").as_str(),
            topics.dlq("hrss").as_str(),
        ])
        .unwrap();
    let mut got: Vec<(String, String)> = Vec::new();
    while got.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(90), consumer.recv())
            .await
            .expect("delivered once writes are accepted")
            .unwrap();
        let reason = m
            .headers()
            .and_then(|hs| h::get_str(hs, h::ERROR_REASON))
            .unwrap_or("")
            .to_owned();
        got.push((m.topic().to_owned(), reason));
    }
    assert_eq!(
        got.iter()
            .filter(|(t, _)| *t == topics.data("hrss.pension_payment"))
            .count(),
        valid
    );
    assert_eq!(
        got.iter()
            .filter(|(_, r)| r == "resident_id_checksum")
            .count(),
        1,
        "{got:?}"
    );
    assert!(
        !got.iter()
            .any(|(_, r)| !r.is_empty() && r != "resident_id_checksum"),
        "a refused write is never a dead letter: {got:?}"
    );
    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap();
}

/// A transaction whose commit fails fatally (the broker answers EndTxn with
/// PRODUCER_FENCED, injected into the mock) makes the router abort, recreate
/// its producer and route the batch again — and it keeps routing after.
#[tokio::test]
async fn a_failed_commit_recreates_the_producer_and_routes_the_batch_again() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let (cluster, topics) = mock_cluster("fence");
    let bootstrap = cluster.bootstrap_servers();
    let producer: FutureProducer = producer_config(&bootstrap).create().unwrap();
    let publish = |i: usize| {
        let r = sample("hrss.pension_payment", i);
        let body = r.to_string();
        let key = r["payment_id"].as_str().unwrap().to_owned();
        let hs = OwnedHeaders::new().insert(Header {
            key: h::CE_TYPE,
            value: Some("hrss.pension_payment"),
        });
        let fut = producer
            .send_result(
                FutureRecord::to(&topics.ingest("hrss"))
                    .key(&key)
                    .payload(&body)
                    .headers(hs),
            )
            .map_err(|(e, _)| e)
            .unwrap();
        async move { fut.await.unwrap().map_err(|(e, _)| e).unwrap() }
    };
    publish(0).await;
    cluster.request_errors(
        RDKafkaApiKey::EndTxn,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_PRODUCER_FENCED],
    );
    let mut config = mock_config(&bootstrap, &topics);
    config.mode = govbus_router::Mode::Transactional;
    config.transaction_timeout = Duration::from_secs(5);
    let metrics = Metrics::new();
    let router = Router::new(engine(), config, metrics.clone());
    let (stop, mut rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        router
            .run(async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await
            .unwrap();
    });
    // The first batch fails to commit; the rewound batch is routed again.
    let routed = |m: &Metrics| {
        m.render()
            .lines()
            .find(|l| {
                l.starts_with("govbus_router_records_routed_total{dataset=\"hrss.pension_payment\"")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while routed(&metrics) < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        routed(&metrics),
        2,
        "the record was decided twice: once in the failed transaction, once after the rewind"
    );
    // And the new producer keeps working.
    publish(1).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while routed(&metrics) < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(routed(&metrics), 3);
    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap();
}

/// librdkafka's mock cluster with one-partition ingest, data and DLQ topics
/// for pension payments under a fresh namespace.
fn mock_cluster(
    name: &str,
) -> (
    rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    Topics,
) {
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    let topics = Topics::new(format!("{}.", unique(name)));
    for t in [
        topics.ingest("hrss"),
        topics.data("hrss.pension_payment"),
        topics.dlq("hrss"),
    ] {
        cluster.create_topic(&t, 1, 1).unwrap();
    }
    (cluster, topics)
}

/// A router config for the mock cluster: its own group, no CreateTopics (the
/// mock has none), fast group joins.
fn mock_config(bootstrap: &str, topics: &Topics) -> RouterConfig {
    let mut config = RouterConfig::new(bootstrap);
    config.topics = topics.clone();
    config.group = unique("router");
    config.create_topics = false;
    config.client_overrides = vec![("session.timeout.ms".into(), "6000".into())];
    config
}

/// A record the router cannot write as it is — its canonical form larger
/// than a Kafka record may be, or its dead letter (the record plus the error
/// headers) larger — is dead-lettered, and the router goes on. librdkafka
/// refuses an oversized record on every attempt: before, the router retried
/// it for ever and stopped routing every partition behind it.
#[tokio::test]
async fn records_too_large_to_write_or_to_copy_are_dead_lettered_and_routing_goes_on() {
    let r = start_router(&["civil_affairs"]).await;
    let topic = r.topics.ingest("civil_affairs");
    let deaths_type: &[(&str, &[u8])] = &[(h::CE_TYPE, b"civil_affairs.death_registration")];
    let key = b"DR-2026-00012345".as_slice();
    // A department's client allowing records above librdkafka's default limit.
    let big_producer: FutureProducer = producer_config(&Broker::shared().bootstrap())
        .set("message.max.bytes", "2000000")
        .create()
        .unwrap();
    let mut huge = sample("civil_affairs.death_registration", 0);
    // Valid (no rule bounds the place of death), 1,010,000 bytes of it:
    // its canonical record would be larger than any govbus producer writes.
    huge["death_place"] = json!("x".repeat(1_010_000));
    let huge = huge.to_string();
    big_producer
        .send(
            FutureRecord::to(&topic)
                .key(key)
                .payload(huge.as_bytes())
                .headers(OwnedHeaders::new().insert(Header {
                    key: h::CE_TYPE,
                    value: Some(b"civil_affairs.death_registration".as_slice()),
                })),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    // Valid and 990,000 bytes: writable, but a sink could not dead-letter it.
    let mut large = sample("civil_affairs.death_registration", 0);
    large["death_place"] = json!("y".repeat(990_000));
    let large = large.to_string();
    publish(&topic, Some(key), large.as_bytes(), deaths_type).await;
    // Not JSON at all, within a stock client's limit: its dead letter, with
    // the error headers added, would not be.
    let garbage = vec![b'{'; 999_800];
    publish(&topic, Some(key), &garbage, deaths_type).await;
    // An unknown field whose name is 999,000 bytes: once the rejection's
    // field path was that name (unbounded, the error headers alone would
    // have been too large to write); it is no slip on a field's name, so it
    // is not repeated at all now.
    let long_name = format!("{{\"{}\":1}}", "n".repeat(999_000));
    publish(&topic, Some(key), long_name.as_bytes(), deaths_type).await;
    // And then an ordinary record.
    let normal = sample("civil_affairs.death_registration", 0).to_string();
    publish(&topic, Some(key), normal.as_bytes(), deaths_type).await;

    let data = read(&r.topics.data("civil_affairs.death_registration"), 1).await;
    assert_eq!(data.len(), 1, "the ordinary record was routed");
    assert!(data[0].value.as_ref().unwrap().len() < 1_000);
    let dead = read(&r.topics.dlq("civil_affairs"), 4).await;
    assert_eq!(dead.len(), 4, "every oversized record was dead-lettered");
    // Dead letters without a key may sit on any partition of the DLQ.
    let find = |reason: &str, copied: bool| {
        dead.iter()
            .find(|d| d.headers[h::ERROR_REASON] == reason && d.value.is_some() == copied)
            .unwrap_or_else(|| panic!("no {reason} dead letter (copied: {copied})"))
    };
    // Too large to copy: the dead letter keeps the key and the record's
    // headers, and says how large the value it leaves out is and where the
    // original is.
    for (d, len) in [
        (find("message_too_large", false), huge.len()),
        (find("json_invalid", false), garbage.len()),
    ] {
        assert_eq!(d.key.as_deref(), Some(key), "{:?}", d.headers);
        assert_eq!(d.headers[h::ERROR_RECORD_OMITTED], len.to_string());
        assert!(d.headers[h::ERROR_TOPIC].ends_with("ingest.civil_affairs"));
        assert!(d.headers[h::ERROR_OFFSET].parse::<i64>().is_ok());
        assert_eq!(d.headers[h::CE_TYPE], "civil_affairs.death_registration");
    }
    assert_eq!(
        find("message_too_large", false).headers[h::ERROR_DATASET],
        "civil_affairs.death_registration"
    );
    let unknown = dead
        .iter()
        .find(|d| {
            d.headers[h::ERROR_REASON] != "message_too_large"
                && d.headers[h::ERROR_REASON] != "json_invalid"
        })
        .unwrap();
    assert_eq!(unknown.headers[h::ERROR_REASON], "json_unknown_field");
    assert!(
        !unknown.headers.contains_key(h::ERROR_FIELD),
        "{:.80}",
        unknown.headers[h::ERROR_FIELD]
    );
    assert!(unknown.headers[h::ERROR_DETAIL].len() <= h::MAX_ERROR_TEXT);
    assert_eq!(unknown.key.as_deref(), Some(key));
    // Small enough to copy: the original as it came, with the reason.
    let copied = find("message_too_large", true);
    assert_eq!(copied.value.as_deref(), Some(large.as_bytes()));
    assert_eq!(copied.key.as_deref(), Some(key));
    assert!(!copied.headers.contains_key(h::ERROR_RECORD_OMITTED));
    assert!(
        copied.headers[h::ERROR_DETAIL].contains("at most"),
        "{}",
        copied.headers[h::ERROR_DETAIL]
    );
    for d in &dead {
        for v in d.headers.values() {
            assert!(!v.contains("11010519491231002X") && !v.contains("xxxxxxxx"));
        }
    }
    // Every dead letter that left out part of its record is counted.
    let trimmed = dead.iter().filter(|d| d.value.is_none()).count();
    assert!(trimmed >= 2);
    let line = format!(
        "govbus_router_dead_letters_trimmed_total{{department=\"civil_affairs\"}} {trimmed}"
    );
    assert!(r.metrics.render().contains(&line), "{line}");
    r.stop().await;
}

/// A Kafka header name is bytes on the wire, and a department writing to its
/// ingest topic with its own client can send one that is not UTF-8, which
/// rdkafka's header accessors unwrap (a panic: the router would stop, and
/// stop again on the same record after every restart). The record is
/// dead-lettered with a reason instead, its other headers and its value kept,
/// and routing goes on. (Every other reader of consumed headers goes through
/// the same `headers::raw`; clippy.toml forbids rdkafka's accessors.)
#[tokio::test]
async fn a_header_name_that_is_not_utf8_is_dead_lettered_and_routing_goes_on() {
    let r = start_router(&["civil_affairs"]).await;
    let topic = r.topics.ingest("civil_affairs");
    let producer: FutureProducer = producer_config(&Broker::shared().bootstrap())
        .create()
        .unwrap();
    let key = b"DR-2026-00012345".as_slice();
    let record = sample("civil_affairs.death_registration", 0).to_string();
    let headers = OwnedHeaders::new().insert(Header {
        key: h::CE_TYPE,
        value: Some(b"civil_affairs.death_registration".as_slice()),
    });
    let headers = govbus_testkit::headers::with_raw_name(headers, b"x-\xff\xfe", b"1");
    producer
        .send(
            FutureRecord::to(&topic)
                .key(key)
                .payload(record.as_bytes())
                .headers(headers),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    let deaths_type: &[(&str, &[u8])] = &[(h::CE_TYPE, b"civil_affairs.death_registration")];
    publish(&topic, Some(key), record.as_bytes(), deaths_type).await;

    let data = read(&r.topics.data("civil_affairs.death_registration"), 1).await;
    assert_eq!(data.len(), 1, "the next record was routed");
    assert_eq!(data[0].value.as_ref().map(|v| v.len() < 1_000), Some(true));
    let dead = read(&r.topics.dlq("civil_affairs"), 1).await;
    assert_eq!(dead.len(), 1, "the record was dead-lettered");
    let d = &dead[0];
    assert_eq!(d.headers[h::ERROR_REASON], "envelope_invalid");
    assert_eq!(d.headers[h::ERROR_FIELD], "headers");
    assert!(
        d.headers[h::ERROR_DETAIL].contains("not UTF-8"),
        "{:?}",
        d.headers
    );
    assert_eq!(d.headers[h::ERROR_HEADERS_DROPPED], "1");
    assert_eq!(d.headers[h::CE_TYPE], "civil_affairs.death_registration");
    assert_eq!(d.key.as_deref(), Some(key));
    assert_eq!(d.value.as_deref(), Some(record.as_bytes()));
    r.stop().await;
}
