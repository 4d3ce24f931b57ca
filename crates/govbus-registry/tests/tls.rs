//! The registry over TLS on loopback, read by Python `httpx`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

use govbus_catalog::Catalog;
use govbus_kafka::topics::Topics;
use govbus_registry::{Mode, Registry};
use govbus_testkit::pki::{Answer, Https, Pki};

#[tokio::test]
async fn the_registry_answers_subjects_over_tls_with_or_without_a_client_certificate() {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas"));
    let catalog = Catalog::load(root).unwrap();
    let registry = Arc::new(Registry::with_mode(
        &catalog,
        &Topics::default(),
        Mode::ReadOnly,
    ));
    let pki = Pki::new().unwrap();
    let options = govbus_http::Options {
        tls: Some(
            govbus_http::Tls::load(&pki.server_cert, &pki.server_key, Some(&pki.ca_pem)).unwrap(),
        ),
        ..govbus_http::Options::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(govbus_registry::serve_with(
        listener,
        registry,
        options,
        std::future::pending(),
    ));
    let client = pki.client("serializer").unwrap();
    for cert in [None, Some(client)] {
        let req = Https {
            method: "GET".into(),
            url: format!("https://localhost:{port}/subjects"),
            ca: Some(pki.ca_pem.clone()),
            client: cert,
            ..Https::default()
        };
        let answer = tokio::task::spawn_blocking(move || req.send().unwrap())
            .await
            .unwrap();
        let Answer::Response(200, body) = &answer else {
            panic!("expected 200, got {answer:?}");
        };
        let subjects: Vec<String> = serde_json::from_str(body).unwrap();
        assert!(
            subjects.contains(&"data.hrss.pension_payment-value".to_owned()),
            "{body}"
        );
    }
    // An HTTPS client that does not trust the server's CA refuses it.
    let other = Pki::new().unwrap();
    let req = Https {
        method: "GET".into(),
        url: format!("https://localhost:{port}/subjects"),
        ca: Some(other.ca_pem.clone()),
        ..Https::default()
    };
    let answer = tokio::task::spawn_blocking(move || req.send().unwrap())
        .await
        .unwrap();
    assert!(matches!(answer, Answer::Failed(_)), "{answer:?}");
}
