//! Traces: one span per batch per stage, continuing the W3C trace context
//! each record carries, exported over OTLP/HTTP when an endpoint is set.
//!
//! Off by default. [`init`] turns it on when the standard
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`
//! variable names an `http://` or `https://` endpoint (the OpenTelemetry
//! SDK's other `OTEL_*` variables apply: `OTEL_SERVICE_NAME`,
//! `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_EXPORTER_OTLP_HEADERS`, …). While it is
//! off, [`Batch::start`] and [`Request::start`] return nothing to record and
//! cost one atomic load.
//!
//! How a record's trace is continued: a stage groups a batch's records by
//! the `traceparent` each carries and makes one span per group, a child of
//! that context; every record of the group leaves the stage with the
//! group's span as its `traceparent`. Records without one share one new
//! root span per batch. So one trace runs from a gateway request through
//! the router to each sink's delivery, and a batch of records from many
//! requests makes one span per request, not per record. A batch holding
//! more than [`MAX_SPANS_PER_BATCH`] distinct contexts carries the rest
//! through unchanged (the trace skips that stage rather than the stage
//! making thousands of spans).
//!
//! Span attributes name stages, datasets, departments, subscriptions and
//! counts, never a record's key or values (the leak scans of
//! `tests/access.rs`, `tests/delivery.rs`, `tests/query.rs` and
//! `tests/snapshot.rs` check exported spans).
//!
//! A trace id is the caller's: a publisher that sends a `traceparent`
//! shares its trace id with the collector and, while tracing is on, with
//! the subscribers (each event's `traceparent`). W3C requires it random;
//! with tracing off nothing of it reaches a subscriber. Only version 00 is
//! read; another version, or a malformed value, starts a new trace. Trace
//! flags other than "sampled" are dropped.

use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

pub use opentelemetry::KeyValue as Attribute;

/// A W3C `traceparent` value: `00-<trace id>-<span id>-<flags>`, 55 bytes.
pub type Traceparent = [u8; TRACEPARENT_LEN];

/// Length of a version-00 `traceparent`.
pub const TRACEPARENT_LEN: usize = 55;

/// At most this many spans per batch and stage (see the module docs).
pub const MAX_SPANS_PER_BATCH: usize = 256;

static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Whether spans are being recorded and exported.
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The endpoint variable is set to something that is not an HTTP URL.
    /// (The value is not repeated: it may hold credentials.)
    #[error(
        "{var} is not an http:// or https:// URL (OTLP over HTTP, e.g. http://127.0.0.1:4318)"
    )]
    Endpoint {
        /// The variable.
        var: &'static str,
    },
    /// The exporter could not be built.
    #[error("the OTLP exporter could not be built: {0}")]
    Exporter(String),
}

/// The installed exporter; [`Exporting::shutdown`] sends what is queued.
#[derive(Debug)]
pub struct Exporting {
    provider: Option<SdkTracerProvider>,
}

impl Exporting {
    /// Exports the spans still queued (at most 5 s) and stops.
    pub fn shutdown(self) {
        if let Some(p) = self.provider {
            if let Err(error) = p.shutdown_with_timeout(Duration::from_secs(5)) {
                tracing::warn!(message = "Some spans were not exported at shutdown.", %error);
            }
        }
    }
}

/// The endpoint variables, most specific first.
const ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// Starts exporting spans when an OTLP endpoint is configured (see the
/// module docs); otherwise does nothing. `service` is `service.name` unless
/// `OTEL_SERVICE_NAME` is set. Call once, early; a second call is a no-op.
pub fn init(service: &str) -> Result<Exporting, TraceError> {
    let off = Exporting { provider: None };
    if std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(off);
    }
    let Some((var, endpoint)) = ENDPOINT_VARS.iter().find_map(|v| {
        std::env::var(v)
            .ok()
            .filter(|e| !e.trim().is_empty())
            .map(|e| (*v, e))
    }) else {
        return Ok(off);
    };
    let lower = endpoint.trim().to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return Err(TraceError::Endpoint { var });
    }
    if TRACER.get().is_some() {
        return Ok(off);
    }
    // The exporter reads the same variables (and appends /v1/traces to the
    // general one).
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_http_client(UreqClient::new())
        .build()
        .map_err(|e| TraceError::Exporter(e.to_string()))?;
    let name = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| service.to_owned());
    // The sampler is the SDK's: `OTEL_TRACES_SAMPLER`, by default
    // parentbased_always_on (a caller's unsampled trace stays unsampled).
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(name)
                .build(),
        )
        .build();
    let _ = TRACER.set(provider.tracer("govbus"));
    tracing::info!(
        message = "Exporting traces over OTLP.",
        endpoint_variable = var
    );
    Ok(Exporting {
        provider: Some(provider),
    })
}

/// The exporter's HTTP client: ureq (already the webhook sink's), blocking
/// on the batch processor's own thread.
#[derive(Debug)]
struct UreqClient(ureq::Agent);

impl UreqClient {
    fn new() -> UreqClient {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false)
            .build();
        UreqClient(ureq::Agent::new_with_config(config))
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for UreqClient {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let (parts, body) = request.into_parts();
        let request = http::Request::from_parts(parts, body.to_vec());
        let response = self.0.run(request)?;
        let (parts, mut body) = response.into_parts();
        let bytes = body.read_to_vec()?;
        Ok(http::Response::from_parts(parts, bytes::Bytes::from(bytes)))
    }
}

/// Parses a version-00 `traceparent` (lowercase hex, non-zero ids).
pub fn parse(tp: &[u8]) -> Option<SpanContext> {
    if tp.len() != TRACEPARENT_LEN || &tp[..3] != b"00-" || tp[35] != b'-' || tp[52] != b'-' {
        return None;
    }
    let lower_hex = |s: &[u8]| s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let (trace, span, flags) = (&tp[3..35], &tp[36..52], &tp[53..55]);
    if !(lower_hex(trace) && lower_hex(span) && lower_hex(flags)) {
        return None;
    }
    let text = |s: &[u8]| std::str::from_utf8(s).ok().map(str::to_owned);
    let trace = TraceId::from_hex(&text(trace)?).ok()?;
    let span = SpanId::from_hex(&text(span)?).ok()?;
    // Unknown flags are not passed on (W3C): only "sampled" is kept.
    let flags = u8::from_str_radix(&text(flags)?, 16).ok()? & 0x01;
    if trace == TraceId::INVALID || span == SpanId::INVALID {
        return None;
    }
    Some(SpanContext::new(
        trace,
        span,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    ))
}

/// The `traceparent` of a span context.
pub fn format(sc: &SpanContext) -> Traceparent {
    let mut out = [0u8; TRACEPARENT_LEN];
    let text = format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    );
    out.copy_from_slice(&text.as_bytes()[..TRACEPARENT_LEN]);
    out
}

/// The `traceparent` as text.
pub fn as_str(tp: &Traceparent) -> &str {
    // Always ASCII: written by `format`.
    std::str::from_utf8(tp).unwrap_or_default()
}

fn parent_context(parent: Option<&SpanContext>) -> Context {
    match parent {
        Some(sc) => Context::new().with_remote_span_context(sc.clone()),
        None => Context::new(),
    }
}

/// A span for one request (a gateway publish, a live-interface call).
#[derive(Debug)]
pub struct Request {
    span: opentelemetry_sdk::trace::Span,
    out: Traceparent,
}

impl Request {
    /// A server span continuing `parent` (the request's `traceparent`
    /// header, when valid); `None` while tracing is off.
    pub fn start(
        name: &'static str,
        parent: Option<&[u8]>,
        attributes: Vec<KeyValue>,
    ) -> Option<Request> {
        let tracer = TRACER.get()?;
        let parent = parent.and_then(parse);
        let span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(tracer, &parent_context(parent.as_ref()));
        let out = format(span.span_context());
        Some(Request { span, out })
    }

    /// The `traceparent` the request's records carry.
    pub fn traceparent(&self) -> &Traceparent {
        &self.out
    }

    /// Adds an attribute (never a record's key or values).
    pub fn set(&mut self, attribute: KeyValue) {
        self.span.set_attribute(attribute);
    }

    /// Marks the span failed with a short, fixed description.
    pub fn fail(&mut self, description: &'static str) {
        self.span.set_status(Status::error(description));
    }

    /// Records the answer's HTTP status; a 5xx marks the span failed with
    /// `failure`.
    pub fn answered(&mut self, status: u16, failure: &'static str) {
        self.set(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if (500..600).contains(&status) {
            self.fail(failure);
        }
    }
}

/// The spans of one batch at one stage: one per trace context its records
/// carry (see the module docs). Ends its spans when dropped.
#[derive(Debug)]
pub struct Batch {
    name: &'static str,
    kind: SpanKind,
    attributes: Vec<KeyValue>,
    groups: Mutex<Groups>,
}

/// A batch's spans, and where each parent context's is.
#[derive(Debug, Default)]
struct Groups {
    spans: Vec<Group>,
    index: std::collections::HashMap<Option<(TraceId, SpanId)>, usize>,
}

#[derive(Debug)]
struct Group {
    span: opentelemetry_sdk::trace::Span,
    out: Traceparent,
    records: i64,
}

impl Batch {
    /// Spans for a batch at a stage, each with `attributes`; `None` while
    /// tracing is off.
    pub fn start(name: &'static str, kind: SpanKind, attributes: Vec<KeyValue>) -> Option<Batch> {
        TRACER.get()?;
        Some(Batch {
            name,
            kind,
            attributes,
            groups: Mutex::new(Groups::default()),
        })
    }

    /// The `traceparent` a record that arrived with `parent` (a header
    /// value, checked here) leaves this stage with: its group's span.
    /// `None` past [`MAX_SPANS_PER_BATCH`] groups: carry `parent` unchanged.
    pub fn continue_from(&self, parent: Option<&[u8]>) -> Option<Traceparent> {
        let tracer = TRACER.get()?;
        let parent = parent.and_then(parse);
        let id = parent.as_ref().map(|p| (p.trace_id(), p.span_id()));
        let mut groups = self.lock();
        if let Some(&i) = groups.index.get(&id) {
            let g = &mut groups.spans[i];
            g.records += 1;
            return Some(g.out);
        }
        if groups.spans.len() >= MAX_SPANS_PER_BATCH {
            return None;
        }
        let span = tracer
            .span_builder(self.name)
            .with_kind(self.kind.clone())
            .with_attributes(self.attributes.clone())
            .start_with_context(tracer, &parent_context(parent.as_ref()));
        let out = format(span.span_context());
        let i = groups.spans.len();
        groups.index.insert(id, i);
        groups.spans.push(Group {
            span,
            out,
            records: 1,
        });
        Some(out)
    }

    fn lock(&self) -> MutexGuard<'_, Groups> {
        // A panic while holding it leaves whole spans: go on with them.
        self.groups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds an attribute to every span of the batch.
    pub fn set(&self, attribute: KeyValue) {
        for g in self.lock().spans.iter_mut() {
            g.span.set_attribute(attribute.clone());
        }
    }

    /// Marks every span of the batch failed with a short, fixed description.
    pub fn fail(&self, description: &'static str) {
        for g in self.lock().spans.iter_mut() {
            g.span.set_status(Status::error(description));
        }
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        let groups = self
            .groups
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for g in groups.spans.iter_mut() {
            g.span
                .set_attribute(KeyValue::new("messaging.batch.message_count", g.records));
            g.span.end();
        }
    }
}

/// Span kinds, re-exported for the stages.
pub use opentelemetry::trace::SpanKind as Kind;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips_and_malformed_ones_are_refused() {
        let tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let sc = parse(tp).unwrap();
        assert_eq!(&format(&sc), tp);
        for bad in [
            &b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0"[..],
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e473\xff-00f067aa0ba902b7-01",
        ] {
            assert!(parse(bad).is_none(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn only_the_sampled_flag_is_passed_on() {
        let sc = parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff").unwrap();
        assert_eq!(
            &format(&sc)[53..],
            b"01",
            "unknown flags are zeroed (W3C trace context)"
        );
    }

    #[test]
    fn while_tracing_is_off_nothing_is_recorded() {
        assert!(!enabled());
        assert!(Batch::start("x", Kind::Consumer, Vec::new()).is_none());
        assert!(Request::start("x", None, Vec::new()).is_none());
    }
}
