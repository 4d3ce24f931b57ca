//! The live stream over TLS on loopback: the subscriber department's client
//! certificate authenticates like its token. The client is Python `httpx`,
//! the certificates are made in the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use govbus_catalog::Catalog;
use govbus_http::{certificate_fingerprint, Credentials};
use govbus_kafka::topics::Topics;
use govbus_sink::metrics::Metrics;
use govbus_sink::{SinkConfig, Sinks};
use govbus_testkit::pki::{Answer, ClientCert, Https, Pki};
use govbus_testkit::{create_topic, unique, Broker};

/// `public_security_deaths_live` is the sample catalog's live stream
/// (subscriber public_security, dataset civil_affairs.death_registration).
const SUB: &str = "public_security_deaths_live";

#[tokio::test]
async fn a_subscriber_certificate_streams_the_live_stream_over_tls() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas");
    let catalog = Catalog::load(&dir).unwrap();
    let pki = Pki::new().unwrap();
    let subscriber = pki.client("public-security").unwrap();
    let other = pki.client("education").unwrap();
    let unlisted = pki.client("unlisted").unwrap();
    let file = format!(
        "[[credential]]\ndepartment = \"public_security\"\ncertificate_sha256 = \"{}\"\n\n\
         [[credential]]\ndepartment = \"education\"\ncertificate_sha256 = \"{}\"\n",
        certificate_fingerprint(&subscriber.der),
        certificate_fingerprint(&other.der),
    );
    let credentials = Credentials::parse(std::path::Path::new("c.toml"), &file, &|d| {
        catalog.department(d).is_some()
    })
    .unwrap();

    let topics = Topics::new(format!("{}.", unique("ssetls")));
    let bootstrap = Broker::shared().bootstrap();
    let ds = catalog.subscription(SUB).unwrap().dataset.clone();
    create_topic(&bootstrap, &topics.data(&ds), 1)
        .await
        .unwrap();
    // One canonical record on the dataset's topic, as the router writes it.
    let engine = govbus_validate::Engine::new(&catalog).unwrap();
    let records: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(
            dir.join("../examples/records/civil_affairs.death_registration.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let accepted = engine
        .dataset(&ds)
        .unwrap()
        .validate_json_value(&records[0], &govbus_validate::Context::now())
        .unwrap();
    let producer: rdkafka::producer::FutureProducer = govbus_testkit::producer_config(&bootstrap)
        .create()
        .unwrap();
    let headers = rdkafka::message::OwnedHeaders::new()
        .insert(rdkafka::message::Header {
            key: govbus_kafka::headers::CE_ID,
            value: Some("sse-tls-1"),
        })
        .insert(rdkafka::message::Header {
            key: govbus_kafka::headers::CE_OP,
            value: Some("create"),
        });
    producer
        .send(
            rdkafka::producer::FutureRecord::to(&topics.data(&ds))
                .key(&accepted.key)
                .payload(&accepted.value)
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let mut config = SinkConfig::new(bootstrap);
    config.topics = topics;
    config.only = vec![SUB.into()];
    let (_tx, rx) = tokio::sync::watch::channel(Arc::new(catalog));
    let sinks = Sinks::start(config, rx, Metrics::new()).await.unwrap();
    let app = govbus_sink::sse::router(&sinks, credentials, Duration::from_millis(300));
    let options = govbus_http::Options {
        tls: Some(
            govbus_http::Tls::load(&pki.server_cert, &pki.server_key, Some(&pki.ca_pem)).unwrap(),
        ),
        ..govbus_http::Options::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(govbus_http::serve(
        listener,
        app,
        options,
        std::future::pending(),
    ));

    let get = |client: Option<ClientCert>| {
        let req = Https {
            method: "GET".into(),
            url: format!("https://localhost:{port}/v1/subscriptions/{SUB}/events?from=beginning"),
            ca: Some(pki.ca_pem.clone()),
            client,
            lines: Some(8),
            ..Https::default()
        };
        tokio::task::spawn_blocking(move || req.send().unwrap())
    };
    match get(Some(subscriber)).await.unwrap() {
        Answer::Response(200, body) => {
            assert!(
                body.contains("event: create") && body.contains("sse-tls-1"),
                "the record is streamed: {body:?}"
            );
            assert!(
                !body.contains("11010519491231002X"),
                "the ID number stays masked: {body:?}"
            );
        }
        other => panic!("expected a stream, got {other:?}"),
    }
    match get(Some(other)).await.unwrap() {
        Answer::Response(403, body) => assert!(body.contains("another department"), "{body}"),
        other => panic!("expected 403, got {other:?}"),
    }
    match get(Some(unlisted)).await.unwrap() {
        Answer::Response(401, _) => {}
        other => panic!("expected 401, got {other:?}"),
    }
    match get(None).await.unwrap() {
        Answer::Response(401, _) => {}
        other => panic!("expected 401, got {other:?}"),
    }
}
