//! The gateway's HTTP/1.1 server: `axum::serve` has no bound on connections
//! and no header-read timeout, so an unauthenticated client could hold
//! memory and sockets without limit. Here:
//!
//! - at most `max_connections` connections at once; one more is closed at
//!   accept (and counted in `govbus_gateway_connections_refused_total`);
//! - request headers must arrive within `header_timeout` and fit in
//!   `MAX_HEADER_BYTES`, or the connection is closed;
//! - the body is read only after the token is checked (the handler takes the
//!   body stream, not bytes), within `body_timeout` and `max_body_bytes`.
//!
//! So an unauthenticated client costs at most one connection's header
//! buffer; the bodies buffered at once are bounded by `max_concurrent ×
//! max_body_bytes`, and only for departments holding a token.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::{watch, Semaphore};

/// Largest request head (request line and headers) a connection may buffer.
pub const MAX_HEADER_BYTES: usize = 64 << 10;

/// Serves `app` on `listener` until `shutdown`, then lets open connections
/// finish their request (at most `drain`).
pub(crate) async fn run(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: Limits,
    refused: prometheus::IntCounter,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(message = "Accept failed.", %error);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refused.inc();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(MAX_HEADER_BYTES)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stopped => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    let _ = stop_tx.send(true);
    // Wait for open connections to finish their request.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(limits.drain, permits.acquire_many(all)).await;
    Ok(())
}

/// The server's bounds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub drain: Duration,
}
