//! The accept loop's bounds hold for TLS: a client that opens a connection
//! and never completes the handshake is cut off after `header_timeout`, and
//! it holds one of `max_connections` while it lasts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

fn tls() -> govbus_http::Tls {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(c.signing_key.serialize_der()));
    govbus_http::Tls::from_parts(vec![CertificateDer::from(c.cert.der().to_vec())], key, None)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_holds_one_connection_and_is_cut_off_by_the_header_timeout() {
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = refused.clone();
    let options = govbus_http::Options {
        max_connections: 1,
        header_timeout: Duration::from_millis(700),
        tls: Some(tls()),
        on_refused: Some(std::sync::Arc::new(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })),
        ..govbus_http::Options::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
    tokio::spawn(govbus_http::serve(
        listener,
        app,
        options,
        std::future::pending(),
    ));
    tokio::task::spawn_blocking(move || {
        // Connects and sends nothing: no ClientHello.
        let started = Instant::now();
        let mut stalled = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stalled
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        // The cap is one: a second connection is closed at accept.
        let mut second = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        second
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(second.read(&mut buf).unwrap_or(0), 0, "closed at accept");
        assert_eq!(refused.load(std::sync::atomic::Ordering::Relaxed), 1);
        // The stalled one is closed once the timeout passes, not before.
        assert_eq!(stalled.read(&mut buf).unwrap_or(0), 0);
        let held = started.elapsed();
        assert!(
            held >= Duration::from_millis(600) && held < Duration::from_secs(5),
            "closed after {held:?}"
        );
    })
    .await
    .unwrap();
}
