//! https:// webhooks: a receiver whose certificate chains to the configured
//! CA gets the signed batch; one the client cannot verify is never sent
//! anything, with a reason that says TLS. (The webhook client had no TLS at
//! all before: every https:// batch went to the dead-letter topic.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use govbus_catalog::{SecretSource, SinkSpec};
use govbus_sink::sinks::webhook::{check_ca, Attempt, Webhook};
use govbus_testkit::pki::Pki;

fn spec(url: String) -> SinkSpec {
    SinkSpec::Webhook {
        url,
        secret: SecretSource::Inline("0123456789abcdef0123".into()),
        // The receiver is on loopback.
        allow_private: true,
        timeout: Duration::from_secs(5),
        max_attempts: 1,
        max_backoff: Duration::from_secs(1),
        batch_max: 10,
    }
}

#[tokio::test]
async fn an_https_receiver_with_a_trusted_certificate_gets_the_batch() {
    let pki = Pki::new().unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let seen = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let seen = seen.clone();
            async move {
                if body.as_ref() == b"[]" {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let options = govbus_http::Options {
        tls: Some(govbus_http::Tls::load(&pki.server_cert, &pki.server_key, None).unwrap()),
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
    let url = format!("https://localhost:{port}/hook");

    // Trusting the receiver's CA: delivered.
    let trusted = Webhook::new(&spec(url.clone()), Some(&pki.ca_pem)).unwrap();
    let attempt = tokio::task::spawn_blocking(move || trusted.post("msg_1", b"[]", None))
        .await
        .unwrap();
    assert_eq!(attempt, Attempt::Delivered);
    assert_eq!(received.load(Ordering::SeqCst), 1);

    // With the default roots (the Mozilla set), the private CA is not
    // trusted: nothing reaches the receiver, and the reason names TLS.
    let public_roots = Webhook::new(&spec(url), None).unwrap();
    let attempt = tokio::task::spawn_blocking(move || public_roots.post("msg_2", b"[]", None))
        .await
        .unwrap();
    match attempt {
        Attempt::Retry { why, .. } => assert!(why.starts_with("TLS"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(received.load(Ordering::SeqCst), 1);
}

#[test]
fn a_ca_file_that_is_not_a_list_of_certificates_is_refused_clearly() {
    let pki = Pki::new().unwrap();
    assert!(check_ca(&pki.ca_pem).is_ok());
    let key = check_ca(&pki.server_key).unwrap_err().to_string();
    assert!(key.contains("other than certificates"), "{key}");
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    assert!(check_ca(&empty)
        .unwrap_err()
        .to_string()
        .contains("no certificate"));
    let missing = check_ca(&dir.path().join("missing.pem"))
        .unwrap_err()
        .to_string();
    assert!(missing.contains("cannot read"), "{missing}");
}
