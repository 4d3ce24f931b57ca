//! The live stream over TLS on loopback: the subscriber department's client
//! certificate authenticates like its token. The client is Python `httpx`,
//! the certificates are made in the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use govbus_catalog::Catalog;
use govbus_gateway::{certificate_fingerprint, Credentials};
use govbus_kafka::topics::Topics;
use govbus_sink::metrics::Metrics;
use govbus_sink::{SinkConfig, Sinks};
use govbus_testkit::pki::{Answer, ClientCert, Https, Pki};
use govbus_testkit::{create_topic, unique, Broker};

/// `public_security_deaths_live` is the sample catalog's live stream
/// (subscriber public_security, dataset civil_affairs.death_registration).
const SUB: &str = "public_security_deaths_live";

#[tokio::test]
async fn a_subscriber_certificate_opens_the_live_stream_over_tls() {
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
            lines: Some(2),
            ..Https::default()
        };
        tokio::task::spawn_blocking(move || req.send().unwrap())
    };
    match get(Some(subscriber)).await.unwrap() {
        Answer::Response(200, body) => {
            assert!(body.contains("heartbeat"), "the stream is open: {body:?}");
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
