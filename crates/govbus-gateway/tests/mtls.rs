//! The gateway over TLS on loopback, with client certificates mapped to
//! departments; the client is Python `httpx`, the certificates are made here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

use govbus_catalog::Catalog;
use govbus_gateway::{Credentials, Gateway, GatewayConfig};
use govbus_kafka::topics::Topics;
use govbus_testkit::pki::{Answer, ClientCert, Https, Pki};
use govbus_testkit::{create_topic, unique, Broker};
use govbus_validate::Engine;
use serde_json::{json, Value};

const PATH: &str = "/v1/datasets/hrss.pension_payment/records";

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn pensions() -> String {
    std::fs::read_to_string(repo().join("examples/records/hrss.pension_payment.json")).unwrap()
}

struct Setup {
    port: u16,
    pki: Pki,
    hrss: ClientCert,
    civil_affairs: ClientCert,
    unlisted: ClientCert,
    foreign: ClientCert,
}

/// A gateway on HTTPS whose credentials are a token for hrss and
/// certificates for hrss and civil_affairs (a third certificate from the
/// same CA is not listed).
async fn start() -> Setup {
    let pki = Pki::new().unwrap();
    let hrss = pki.client("hrss-client").unwrap();
    let civil_affairs = pki.client("ca-client").unwrap();
    let unlisted = pki.client("unlisted").unwrap();
    let foreign = pki.foreign_client("hrss-foreign").unwrap();
    // The file format, as an operator writes it (with `govbus credential fingerprint`).
    let catalog = Catalog::load(&repo().join("schemas")).unwrap();
    let file = format!(
        "[[credential]]\ndepartment = \"hrss\"\ntoken_sha256 = \"{}\"\n\n\
         [[credential]]\ndepartment = \"hrss\"\ncertificate_sha256 = \"{}\"\n\n\
         [[credential]]\ndepartment = \"civil_affairs\"\ncertificate_sha256 = \"{}\"\n",
        govbus_gateway::hash_token("hrss-secret"),
        govbus_gateway::certificate_fingerprint(&hrss.der),
        govbus_gateway::certificate_fingerprint(&civil_affairs.der).to_uppercase(),
    );
    let creds = Credentials::parse(Path::new("credentials.toml"), &file, &|d| {
        catalog.department(d).is_some()
    })
    .unwrap();
    let topics = Topics::new(format!("{}.", unique("gwtls")));
    create_topic(&Broker::shared().bootstrap(), &topics.ingest("hrss"), 1)
        .await
        .unwrap();
    let mut cfg = GatewayConfig::new(Broker::shared().bootstrap());
    cfg.topics = topics;
    cfg.tls =
        Some(govbus_http::Tls::load(&pki.server_cert, &pki.server_key, Some(&pki.ca_pem)).unwrap());
    let engine = Arc::new(Engine::new(&catalog).unwrap());
    let gateway = Arc::new(Gateway::new(engine, creds, cfg).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(govbus_gateway::serve(
        listener,
        gateway,
        std::future::pending(),
    ));
    Setup {
        port,
        pki,
        hrss,
        civil_affairs,
        unlisted,
        foreign,
    }
}

async fn publish(s: &Setup, client: Option<&ClientCert>, token: Option<&str>) -> Answer {
    let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
    if let Some(t) = token {
        headers.push(("authorization".into(), format!("Bearer {t}")));
    }
    let req = Https {
        method: "POST".into(),
        url: format!("https://localhost:{}{PATH}", s.port),
        ca: Some(s.pki.ca_pem.clone()),
        client: client.cloned(),
        headers,
        body: pensions().into_bytes(),
        lines: None,
    };
    tokio::task::spawn_blocking(move || req.send().unwrap())
        .await
        .unwrap()
}

fn accepted(answer: &Answer) -> u64 {
    let Answer::Response(200, body) = answer else {
        panic!("expected 200, got {answer:?}");
    };
    let v: Value = serde_json::from_str(body).unwrap();
    v["accepted"].as_u64().unwrap()
}

#[tokio::test]
async fn https_with_a_bearer_token_publishes() {
    let s = start().await;
    let n = serde_json::from_str::<Vec<Value>>(&pensions())
        .unwrap()
        .len() as u64;
    assert_eq!(accepted(&publish(&s, None, Some("hrss-secret")).await), n);
}

#[tokio::test]
async fn a_client_certificate_mapped_to_hrss_publishes_as_hrss_without_a_token() {
    let s = start().await;
    let n = serde_json::from_str::<Vec<Value>>(&pensions())
        .unwrap()
        .len() as u64;
    assert_eq!(accepted(&publish(&s, Some(&s.hrss), None).await), n);
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_in_the_handshake() {
    let s = start().await;
    let answer = publish(&s, Some(&s.foreign), Some("hrss-secret")).await;
    let Answer::Failed(error) = &answer else {
        panic!("expected a failed handshake, got {answer:?}");
    };
    // OpenSSL's name for the server's alert: the CA is not one it trusts.
    assert!(
        error.contains("UNKNOWN_CA"),
        "the handshake fails with the server's unknown-CA alert: {error}"
    );
}

#[tokio::test]
async fn a_valid_certificate_not_in_the_credentials_and_no_token_is_401() {
    let s = start().await;
    match publish(&s, Some(&s.unlisted), None).await {
        Answer::Response(401, body) => assert!(body.contains("unauthorized"), "{body}"),
        other => panic!("expected 401, got {other:?}"),
    }
}

#[tokio::test]
async fn a_certificate_mapped_to_another_department_is_403_for_hrss_data() {
    let s = start().await;
    match publish(&s, Some(&s.civil_affairs), None).await {
        Answer::Response(403, body) => assert!(body.contains("publisher_not_owner"), "{body}"),
        other => panic!("expected 403, got {other:?}"),
    }
}

#[tokio::test]
async fn plain_http_to_the_tls_port_gets_no_http_answer() {
    let s = start().await;
    let req = Https {
        method: "POST".into(),
        url: format!("http://127.0.0.1:{}{PATH}", s.port),
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("authorization".into(), "Bearer hrss-secret".into()),
        ],
        body: json!([]).to_string().into_bytes(),
        ..Https::default()
    };
    let answer = tokio::task::spawn_blocking(move || req.send().unwrap())
        .await
        .unwrap();
    assert!(
        matches!(answer, Answer::Failed(_)),
        "plain HTTP must not be served: {answer:?}"
    );
}
