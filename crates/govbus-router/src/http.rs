//! `/metrics`, `/health` and `/ready`.

use std::future::Future;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::Metrics;

/// Serves the operational endpoints on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/metrics", get(render))
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .with_state(metrics);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn render(State(m): State<Metrics>) -> impl IntoResponse {
    ([("content-type", "text/plain; version=0.0.4")], m.render())
}

async fn ready(State(m): State<Metrics>) -> impl IntoResponse {
    if m.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not connected to the broker\n",
        )
    }
}
