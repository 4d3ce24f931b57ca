//! The HTTP API of the live interfaces, under `/v1/query/<subscription>/`:
//!
//! | request | answer |
//! |---|---|
//! | `GET records/<key>` (`?min_version=N&wait=5s`) | the record through the grant's policy, its source version, the state's freshness; 404 absent or filtered out |
//! | `GET by/<field>/<value>` | the records whose declared lookup field holds the value |
//! | `POST batch` `{"keys": [..]}` or `{"field": f, "values": [..]}` | one result per key or value, at most the grant's `batch_max` |
//! | `POST verify` `{"key"\|"field"+"value", "fields": {..}}` | per field `match`, `no_match` or `no_such_record` — never a stored value |
//!
//! Every call names the subscription and carries the subscriber's bearer
//! token (or client certificate). Checks, in order: 401 no or unknown
//! credential; 404 no such live-interface subscription; 403 another
//! department's grant, a grant not active now (revoked, expired, not yet
//! valid) or an operation it does not allow; 429 over the grant's rate, with
//! `Retry-After`; 400 a malformed request; 413 too many keys or too large a
//! body. A record outside the grant's row filter is answered exactly as an
//! absent one. Each answered call is appended to the delivery ledger —
//! operation, counts, a keyed hash of each looked-up value — before the
//! answer leaves; if the ledger cannot be written the call gets 503.

// An early answer is a `Response`: boxing it buys nothing on a path that
// ends the request.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, Query as UrlQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use govbus_catalog::fields::{top_level, FieldKind};
use govbus_catalog::{ApiOperation, Catalog, Dataset, PiiTag, Scalar, SinkSpec, Subscription};
use govbus_sink::ledger::{lookup_hash, Call, Ledger, Record};
use govbus_sink::policy::Policy;
use govbus_state::records::{self, Entry};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value as Json};
use tokio::sync::{mpsc, oneshot};

use crate::builder::{now_ms, DatasetState};
use crate::metrics::Metrics;
use crate::{index_text, Inner, Query};

/// Largest request body (a batch of keys, a verification).
pub const MAX_BODY: usize = 1 << 20;
/// Longest key or value accepted.
pub const MAX_KEY_BYTES: usize = 512;
/// Most fields one verification compares.
pub const MAX_VERIFY_FIELDS: usize = 32;

/// Rounds of ledger appends in flight at once (see [`Audit`]).
const ROUNDS: usize = 2;

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

fn problem(status: StatusCode, error: &str, detail: impl Into<String>) -> Response {
    let body = json!({"error": error, "detail": detail.into()}).to_string();
    let mut r = (status, [("content-type", "application/json")], body).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut()
            .insert("www-authenticate", HeaderValue::from_static("Bearer"));
    }
    r
}

/// The routes, `/metrics`, `/health` and `/ready`.
pub fn router(query: &Query) -> axum::Router {
    axum::Router::new()
        .route("/v1/query/openapi.json", get(openapi))
        .route("/v1/query/{sub}/records/{key}", get(lookup_one))
        .route("/v1/query/{sub}/by/{field}/{value}", get(lookup_by))
        .route("/v1/query/{sub}/batch", post(batch))
        .route("/v1/query/{sub}/verify", post(verify))
        .route_layer(axum::middleware::from_fn(traced))
        .route("/metrics", get(metrics))
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .with_state(query.inner.clone())
}

/// A span per call (while tracing is on), continuing the caller's
/// `traceparent`. Its attributes are the operation and the status, never
/// the path (it holds keys and looked-up values).
async fn traced(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let operation = match req.uri().path().split('/').nth(4) {
        Some("records") => "lookup",
        Some("by") => "lookup_by",
        Some("batch") => "batch",
        Some("verify") => "verify",
        _ => "other",
    };
    let mut span = govbus_trace::Request::start(
        "govbus.query call",
        req.headers().get("traceparent").map(HeaderValue::as_bytes),
        vec![
            govbus_trace::Attribute::new("govbus.stage", "query"),
            govbus_trace::Attribute::new("govbus.operation", operation),
        ],
    );
    let response = next.run(req).await;
    if let Some(s) = &mut span {
        s.answered(response.status().as_u16(), "the call was not answered");
    }
    response
}

async fn openapi() -> Response {
    ([("content-type", "application/json")], OPENAPI).into_response()
}

async fn metrics(State(st): State<Arc<Inner>>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        st.metrics.render(),
    )
        .into_response()
}

async fn ready(State(st): State<Arc<Inner>>) -> Response {
    let q = Query { inner: st };
    if q.ready() {
        "ready\n".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "catching up: a dataset's state has not reached the end of its topic yet\n",
        )
            .into_response()
    }
}

// ---------------------------------------------------------------- audit ----

struct Pending {
    sub: Arc<Subscription>,
    call: Call,
    /// [`WAITING`] until a round puts the call into an entry ([`TAKEN`]) or
    /// its caller gives up on it ([`ABANDONED`]): exactly one of the two
    /// happens, so an abandoned call is never recorded.
    state: Arc<AtomicU8>,
    done: oneshot::Sender<bool>,
}

const WAITING: u8 = 0;
const TAKEN: u8 = 1;
const ABANDONED: u8 = 2;

impl Pending {
    /// The entry bytes this call adds, roughly (a call's fields, and one
    /// keyed hash per looked-up value).
    fn weight(&self) -> usize {
        200 + 20 * self.call.lookups.len()
    }
}

enum AuditMsg {
    Call(Box<Pending>),
    /// Close the chain once the rounds in flight are done; told when the
    /// close entry is acknowledged (true) or failed (false).
    Close(oneshot::Sender<bool>),
}

/// Appends calls to the ledger by group commit: at most [`ROUNDS`] rounds
/// of appends are in flight; when a round may start it takes every call
/// waiting by then (one entry per subscription, split at
/// [`MAX_ENTRY_WEIGHT`]). A lone call waits about one broker round trip;
/// under load a round carries every call that arrived while the rounds
/// before it were in flight. No answer leaves before its entry is
/// acknowledged.
#[derive(Debug, Clone)]
pub struct Audit {
    tx: mpsc::Sender<AuditMsg>,
    key: Vec<u8>,
    metrics: Metrics,
}

impl std::fmt::Debug for AuditMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditMsg")
    }
}

/// How long a call may wait to be put into an entry; its caller then gives
/// up on it (503, not recorded). A call in an entry waits at most
/// [`ACK_WAIT`] more for the broker's acknowledgement.
const ENTRY_DEADLINE: Duration = Duration::from_secs(5);
/// See [`ENTRY_DEADLINE`].
const ACK_WAIT: Duration = Duration::from_secs(10);
/// Most estimated bytes of calls in one entry (the producer refuses
/// messages over 1,000,000 bytes): a backlog after a broker stall is
/// written as several entries, not refused whole.
const MAX_ENTRY_WEIGHT: usize = 256 * 1024;

/// Appends one subscription's calls as one entry and tells each caller.
async fn append_calls(ledger: &Ledger, metrics: &Metrics, pending: Vec<Pending>) {
    let pending = take(pending);
    let Some(first) = pending.first() else { return };
    let sub = first.sub.clone();
    let record = Record {
        subscription: &sub.id,
        subscriber: &sub.subscriber,
        dataset: &sub.dataset,
        sink: "api",
        policy: &sub.policy_version,
        outcome: "answered",
        events: Vec::new(),
        calls: pending.iter().map(|p| p.call.clone()).collect(),
    };
    let started = Instant::now();
    let ok = match ledger.append(&record).await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(message = "Cannot record live-interface calls in the ledger; they are refused.", subscription = %sub.id, error = %e);
            // Callers still waiting (the others were counted as ack_late).
            let waiting = pending.iter().filter(|p| !p.done.is_closed()).count();
            metrics.audit_refused("ledger_error", waiting as u64);
            false
        }
    };
    metrics.audit_entry(pending.len(), started.elapsed().as_secs_f64());
    for p in pending {
        let _ = p.done.send(ok);
    }
}

/// The calls an entry records: a call whose caller went away or gave up is
/// dropped (never recorded); the rest are taken, and from here their callers
/// wait for the acknowledgement.
fn take(pending: Vec<Pending>) -> Vec<Pending> {
    pending
        .into_iter()
        .filter(|p| {
            !p.done.is_closed()
                && p.state
                    .compare_exchange(WAITING, TAKEN, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
        })
        .collect()
}

/// Groups a round's calls into entries: per subscription, split so that no
/// entry weighs more than [`MAX_ENTRY_WEIGHT`].
fn entries_of(batch: Vec<Pending>) -> Vec<Vec<Pending>> {
    // Per subscription: its entries so far, and the weight of the last.
    let mut groups: BTreeMap<String, (Vec<Vec<Pending>>, usize)> = BTreeMap::new();
    for p in batch {
        let (chunks, weight) = groups.entry(p.sub.id.clone()).or_default();
        match chunks.last_mut() {
            Some(last) if *weight + p.weight() <= MAX_ENTRY_WEIGHT => {
                *weight += p.weight();
                last.push(p);
            }
            _ => {
                *weight = p.weight();
                chunks.push(vec![p]);
            }
        }
    }
    groups
        .into_values()
        .flat_map(|(chunks, _)| chunks)
        .collect()
}

impl Audit {
    pub(crate) fn start(ledger: Ledger, metrics: Metrics) -> Audit {
        let key = ledger.key().to_vec();
        let (tx, mut rx) = mpsc::channel::<AuditMsg>(65_536);
        let ledger = Arc::new(ledger);
        let rounds = Arc::new(tokio::sync::Semaphore::new(ROUNDS));
        let m = metrics.clone();
        tokio::spawn(async move {
            let mut closing: Option<oneshot::Sender<bool>> = None;
            while closing.is_none() {
                let Some(first) = rx.recv().await else { break };
                // The round's slot first, then every call waiting by then:
                // calls that arrive while both rounds are in flight join
                // the next one.
                let Ok(permit) = rounds.clone().acquire_owned().await else {
                    break;
                };
                let mut batch = Vec::new();
                let mut push =
                    |msg: AuditMsg, closing: &mut Option<oneshot::Sender<bool>>| match msg {
                        AuditMsg::Call(p) => {
                            m.audit_waiting(-1);
                            batch.push(*p);
                        }
                        AuditMsg::Close(told) => *closing = Some(told),
                    };
                push(first, &mut closing);
                while let Ok(msg) = rx.try_recv() {
                    push(msg, &mut closing);
                }
                // One round: every entry enqueued at once (they share
                // produce requests), the round awaited whole.
                let ledger = ledger.clone();
                let m = m.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let mut round = tokio::task::JoinSet::new();
                    for pending in entries_of(batch) {
                        let (ledger, m) = (ledger.clone(), m.clone());
                        round.spawn(async move { append_calls(&ledger, &m, pending).await });
                    }
                    while let Some(joined) = round.join_next().await {
                        if joined.is_err() {
                            tracing::error!(message = "A ledger append of live-interface calls failed (a bug); its callers were answered 503.");
                        }
                    }
                });
            }
            // Calls that arrive from now on are refused: the chain ends.
            rx.close();
            while let Ok(msg) = rx.try_recv() {
                if let AuditMsg::Call(p) = msg {
                    m.audit_waiting(-1);
                    m.audit_refused("closed", 1);
                    let _ = p.done.send(false);
                }
            }
            // Every round in flight finishes before the chain is closed.
            let _ = rounds.acquire_many(ROUNDS as u32).await;
            let closed = match ledger.close().await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(message = "Cannot close the query ledger chain.", error = %e);
                    false
                }
            };
            if let Some(told) = closing {
                let _ = told.send(closed);
            }
        });
        Audit { tx, key, metrics }
    }

    /// Records `call`; true once the ledger has it. A call not put into an
    /// entry within [`ENTRY_DEADLINE`] is given up (never recorded) and
    /// gets false; one whose entry is not acknowledged within [`ACK_WAIT`]
    /// after that also gets false, and if the broker acknowledges it later
    /// still, the ledger holds a call that was answered 503 (never the
    /// reverse: an answer without its entry).
    async fn record(&self, sub: &Arc<Subscription>, call: Call) -> bool {
        let (done, mut wait) = oneshot::channel();
        let state = Arc::new(AtomicU8::new(WAITING));
        let deadline = tokio::time::Instant::now() + ENTRY_DEADLINE;
        let msg = AuditMsg::Call(Box::new(Pending {
            sub: sub.clone(),
            call,
            state: state.clone(),
            done,
        }));
        // Counted as waiting from here; taken back if the call never
        // reaches the channel (refused, or the request dropped meanwhile).
        let mut queued = Queued {
            metrics: &self.metrics,
            sent: false,
        };
        self.metrics.audit_waiting(1);
        match tokio::time::timeout_at(deadline, self.tx.send(msg)).await {
            Ok(Ok(())) => queued.sent = true,
            Ok(Err(_)) => {
                self.metrics.audit_refused("closed", 1);
                return false;
            }
            Err(_) => {
                self.metrics.audit_refused("not_taken", 1);
                return false;
            }
        }
        if let Ok(told) = tokio::time::timeout_at(deadline, &mut wait).await {
            return told.unwrap_or(false);
        }
        if state
            .compare_exchange(WAITING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.metrics.audit_refused("not_taken", 1);
            return false;
        }
        match tokio::time::timeout(ACK_WAIT, wait).await {
            Ok(told) => told.unwrap_or(false),
            Err(_) => {
                self.metrics.audit_refused("ack_late", 1);
                false
            }
        }
    }

    /// Ends the chain: calls from now on are refused, the rounds in flight
    /// finish, and the `close` entry is written. Returns once it is
    /// acknowledged, or after `within`, saying which.
    pub(crate) async fn close(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        let (told, closed) = oneshot::channel();
        let sent = tokio::time::timeout_at(deadline, self.tx.send(AuditMsg::Close(told)));
        matches!(sent.await, Ok(Ok(())))
            && matches!(
                tokio::time::timeout_at(deadline, closed).await,
                Ok(Ok(true))
            )
    }
}

/// A call counted in `govbus_query_audit_waiting_calls` until the audit
/// task receives it; uncounted here if it never reaches the channel.
struct Queued<'a> {
    metrics: &'a Metrics,
    sent: bool,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if !self.sent {
            self.metrics.audit_waiting(-1);
        }
    }
}

// ----------------------------------------------------------- rate limit ----

/// Token buckets, one per subscription: `rate` a second, bursts of `rate`.
#[derive(Debug, Default)]
pub struct Limits {
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl Limits {
    /// Takes one token; how long until one is available when there is none.
    fn take(&self, sub: &str, rate: u32) -> Result<(), Duration> {
        let rate = f64::from(rate.max(1));
        let now = Instant::now();
        let Ok(mut b) = self.buckets.lock() else {
            return Ok(());
        };
        let (tokens, last) = b.entry(sub.to_owned()).or_insert((rate, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(rate);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / rate))
        }
    }
}

// -------------------------------------------------------- authorization ----

/// Each grant's subscription, dataset and compiled policy, built once per
/// catalog version rather than per call (cloning a dataset's schemas was
/// the largest cost of a lookup).
#[derive(Debug, Default)]
pub struct Prepared {
    inner: Mutex<PreparedInner>,
}

#[derive(Debug, Default)]
struct PreparedInner {
    catalog: Option<Arc<Catalog>>,
    grants: HashMap<String, PreparedGrant>,
}

type PreparedGrant = (Arc<Subscription>, Arc<Dataset>, Arc<Policy>);

impl Prepared {
    /// The grant `sub` under `catalog` (the catalog holds `sub`); `None`
    /// when the catalog lacks the grant's dataset.
    fn get(
        &self,
        catalog: &Arc<Catalog>,
        sub: &Subscription,
        secret: &[u8],
    ) -> Option<PreparedGrant> {
        let build = || {
            let ds = catalog.dataset(&sub.dataset)?;
            Some((
                Arc::new(sub.clone()),
                Arc::new(ds.clone()),
                Arc::new(Policy::new(sub, ds, secret)),
            ))
        };
        let Ok(mut p) = self.inner.lock() else {
            return build();
        };
        if !p.catalog.as_ref().is_some_and(|c| Arc::ptr_eq(c, catalog)) {
            p.catalog = Some(catalog.clone());
            p.grants.clear();
        }
        if let Some(g) = p.grants.get(&sub.id) {
            return Some(g.clone());
        }
        let g = build()?;
        p.grants.insert(sub.id.clone(), g.clone());
        Some(g)
    }
}

/// A call that may go ahead: its grant, compiled.
struct Granted {
    sub: Arc<Subscription>,
    ds: Arc<Dataset>,
    policy: Arc<Policy>,
    state: Arc<DatasetState>,
    catalog: Arc<Catalog>,
    batch_max: usize,
    started: Instant,
}

/// [`check_call`], with every refusal counted (a subscription id the
/// catalog does not have is counted as `-`: no caller text in labels).
fn authorize(
    st: &Inner,
    headers: &HeaderMap,
    peer: Option<&govbus_http::PeerCertificate>,
    id: &str,
    op: ApiOperation,
) -> Result<Granted, Response> {
    check_call(st, headers, peer, id, op).inspect_err(|r| {
        let status = r.status().as_u16();
        if status != 429 {
            let known = st.catalog.borrow().subscription(id).is_some();
            st.metrics
                .refused(if known { id } else { "-" }, op.as_str(), status);
        }
    })
}

fn check_call(
    st: &Inner,
    headers: &HeaderMap,
    peer: Option<&govbus_http::PeerCertificate>,
    id: &str,
    op: ApiOperation,
) -> Result<Granted, Response> {
    let started = Instant::now();
    let auth = headers
        .get("authorization")
        .map(|v| v.to_str().unwrap_or(""));
    let department = match (auth, peer) {
        (Some(v), _) => match v.strip_prefix("Bearer ").map(str::trim) {
            Some(t) if !t.is_empty() => st.credentials.department(t),
            _ => {
                return Err(problem(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "the Authorization header must be `Bearer <token>` with a token of the subscribing department",
                ))
            }
        },
        (None, Some(cert)) => st.credentials.department_for_certificate(&cert.0),
        (None, None) => None,
    };
    let Some(department) = department else {
        return Err(problem(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send `Authorization: Bearer <token>` with a token of the subscribing department, or connect with a client certificate listed for it",
        ));
    };
    let catalog = st.catalog.borrow().clone();
    let Some(sub) = catalog
        .subscription(id)
        .filter(|s| matches!(s.sink, SinkSpec::Api { .. }))
    else {
        return Err(problem(
            StatusCode::NOT_FOUND,
            "no_such_subscription",
            format!("no live-interface subscription `{}`", id.escape_debug()),
        ));
    };
    if sub.subscriber != department {
        tracing::warn!(message = "A department called another department's live interface.", subscription = %sub.id, caller = %department);
        return Err(problem(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("subscription `{id}` belongs to another department"),
        ));
    }
    let SinkSpec::Api {
        operations,
        rate,
        batch_max,
    } = &sub.sink
    else {
        return Err(problem(
            StatusCode::NOT_FOUND,
            "no_such_subscription",
            "not a live interface",
        ));
    };
    if let Some(reason) = sub.inactive_reason(now_ms()) {
        return Err(problem(
            StatusCode::FORBIDDEN,
            "grant_inactive",
            format!("subscription `{id}` does not allow calls: {reason}"),
        ));
    }
    if !operations.contains(&op) {
        return Err(problem(
            StatusCode::FORBIDDEN,
            "operation_not_granted",
            format!(
                "subscription `{id}` allows {}, not {}",
                operations
                    .iter()
                    .map(|o| o.as_str())
                    .collect::<Vec<_>>()
                    .join(" and "),
                op.as_str()
            ),
        ));
    }
    if let Err(wait) = st.limits.take(&sub.id, *rate) {
        st.metrics.refused(&sub.id, op.as_str(), 429);
        let secs = wait.as_secs_f64().ceil().max(1.0);
        let mut r = problem(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("subscription `{id}` allows {rate} requests a second; retry after {secs} s"),
        );
        if let Ok(v) = HeaderValue::from_str(&format!("{secs}")) {
            r.headers_mut().insert("retry-after", v);
        }
        return Err(r);
    }
    let Some((prepared_sub, ds, policy)) =
        st.prepared.get(&catalog, sub, &st.config.pseudonym_secret)
    else {
        return Err(problem(
            StatusCode::NOT_FOUND,
            "no_such_dataset",
            "the grant's dataset is not in the catalog",
        ));
    };
    let state = st
        .datasets
        .read()
        .ok()
        .and_then(|d| d.get(&sub.dataset).cloned());
    let Some(state) = state else {
        let mut r = problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "state_starting",
            "this dataset's state is being started; retry in a few seconds",
        );
        r.headers_mut()
            .insert("retry-after", HeaderValue::from_static("2"));
        return Err(r);
    };
    let f = state.freshness();
    if !f.caught_up || f.failing {
        let mut r = problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "state_not_current",
            if f.failing {
                "this dataset's state is not being updated (the operator is alerted); an answer now could be wrong, so none is given; retry shortly"
            } else {
                "this dataset's state is still catching up with its topic; an answer now could be wrong, so none is given; retry shortly"
            },
        );
        r.headers_mut()
            .insert("retry-after", HeaderValue::from_static("2"));
        return Err(r);
    }
    let batch_max = *batch_max;
    Ok(Granted {
        sub: prepared_sub,
        ds,
        policy,
        state,
        catalog,
        batch_max,
        started,
    })
}

// ------------------------------------------------------------- answers ----

fn check_text(what: &str, s: &str) -> Result<(), Response> {
    if s.is_empty() {
        return Err(problem(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("{what} is empty"),
        ));
    }
    if s.len() > MAX_KEY_BYTES {
        return Err(problem(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("{what} is {} bytes; at most {MAX_KEY_BYTES}", s.len()),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(problem(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("{what} contains a control character"),
        ));
    }
    Ok(())
}

/// A JSON object of `fields`, moved in: `json!` would copy every value it is
/// given through `serde_json::to_value`, a deep copy of each record.
fn object<const N: usize>(fields: [(&str, Json); N]) -> Json {
    Json::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

fn freshness(state: &DatasetState) -> Json {
    let f = state.freshness();
    json!({
        "applied_until": if f.newest_ms > 0 { Json::String(govbus_catalog::time::format_rfc3339_millis(f.newest_ms)) } else { Json::Null },
        "age_ms": if f.newest_ms > 0 { Json::from((now_ms() - f.newest_ms).max(0)) } else { Json::Null },
        "lag": f.lag,
        "caught_up": f.caught_up,
    })
}

enum Seen {
    /// Live and inside the row filter, under the policy.
    Record(Rendered),
    /// Absent, deleted or filtered out: indistinguishable to the caller.
    Absent,
}

/// The stored record (decoded, clear) if it is live and inside the row filter.
fn visible(g: &Granted, entry: Option<&Entry>) -> Result<Option<Map<String, Json>>, Response> {
    visible_only(g, entry, &|_| true)
}

/// [`visible`] with only the fields the grant's policy reads decoded (its
/// delivered fields and its row filter's): a grant of three fields of a
/// wide record does not build the rest.
fn visible_to(g: &Granted, entry: Option<&Entry>) -> Result<Option<Map<String, Json>>, Response> {
    visible_only(g, entry, &|f| g.policy.reads(f))
}

/// [`visible`] with only the fields `keep` names decoded (the row filter's
/// fields must be among them).
fn visible_only(
    g: &Granted,
    entry: Option<&Entry>,
    keep: &dyn Fn(&str) -> bool,
) -> Result<Option<Map<String, Json>>, Response> {
    let Some(value) = entry.and_then(|e| e.value.as_ref()) else {
        return Ok(None);
    };
    let record = govbus_sink::decode::to_json_only(&g.catalog, value, keep).map_err(|e| {
        tracing::error!(message = "A stored record does not decode with this catalog.", dataset = %g.sub.dataset, error = %e);
        problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "undecodable",
            "the stored record does not decode with this process's catalog (a newer schema version?); the operator is alerted",
        )
    })?;
    Ok(g.policy.admits(&record).then_some(record))
}

/// A record as the caller sees it. It serializes as the JSON object
/// `{"data", "id", "key", "sourceversion", "time"}` — the members in the
/// order a `serde_json` map would put them — without building one: a batch
/// answer is written straight from these (building and dropping that map
/// was ~6 % of a batch lookup's CPU, BENCHMARKS.md).
#[derive(Serialize)]
struct Rendered {
    data: Map<String, Json>,
    id: String,
    key: String,
    sourceversion: String,
    time: String,
}

impl Rendered {
    fn into_object(self) -> Map<String, Json> {
        let mut o = Map::new();
        o.insert("data".into(), Json::Object(self.data));
        o.insert("id".into(), Json::String(self.id));
        o.insert("key".into(), Json::String(self.key));
        o.insert("sourceversion".into(), Json::String(self.sourceversion));
        o.insert("time".into(), Json::String(self.time));
        o
    }
}

fn render(g: &Granted, key: &str, entry: Option<&Entry>) -> Result<Seen, Response> {
    let (Some(e), Some(record)) = (entry, visible_to(g, entry)?) else {
        return Ok(Seen::Absent);
    };
    Ok(Seen::Record(Rendered {
        data: g.policy.apply(record),
        id: e.id.clone(),
        key: g.policy.subject(key),
        sourceversion: e.version.to_string(),
        time: govbus_catalog::time::format_rfc3339_millis(e.time_ms),
    }))
}

/// One result of a batch by keys: `{"found", "key"[, "record"]}`.
#[derive(Serialize)]
struct KeyResult<'a> {
    found: bool,
    key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    record: Option<Rendered>,
}

/// One result of a batch by a lookup field's values: `{"records", "value"}`.
#[derive(Serialize)]
struct ValueResult<'a> {
    records: Vec<Rendered>,
    value: &'a str,
}

#[derive(Serialize)]
#[serde(untagged)]
enum BatchResults<'a> {
    Keys(Vec<KeyResult<'a>>),
    Values(Vec<ValueResult<'a>>),
}

/// A batch answer: `{"dataset", "freshness", "results", "subscription"}`.
#[derive(Serialize)]
struct BatchAnswer<'a> {
    dataset: &'a str,
    freshness: Json,
    results: BatchResults<'a>,
    subscription: &'a str,
}

fn read_entry(st: &Inner, dataset: &str, key: &str) -> Result<Option<Entry>, Response> {
    let r = st.store.read().map_err(store_error)?;
    records::get(&r, dataset, key).map_err(store_error)
}

fn store_error(e: govbus_state::StateError) -> Response {
    tracing::error!(message = "State store read failed.", error = %e);
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "state_unavailable",
        "the state store cannot be read; retry shortly",
    )
}

/// Records the call, counts it, and answers `body` — or 503 when the ledger
/// does not take it.
async fn answer<B: Serialize + Send>(
    st: &Inner,
    g: &Granted,
    op: ApiOperation,
    looked_up: &[&str],
    outcomes: BTreeMap<String, u32>,
    status: StatusCode,
    body: B,
) -> Response {
    let call = Call {
        time: govbus_catalog::time::format_rfc3339_millis(now_ms()),
        operation: op.as_str().to_owned(),
        status: status.as_u16(),
        keys: u32::try_from(looked_up.len()).unwrap_or(u32::MAX),
        outcomes: outcomes.clone(),
        lookups: looked_up
            .iter()
            .map(|v| lookup_hash(&st.audit.key, v))
            .collect(),
    };
    let recorded = st.audit.record(&g.sub, call).await;
    let (status, body) = if recorded {
        for (result, n) in &outcomes {
            st.metrics
                .result(&g.sub.id, op.as_str(), result, u64::from(*n));
        }
        // `to_vec`, not `Value::to_string` (serde_json's `Display` path,
        // through `fmt::Formatter`).
        match serde_json::to_vec(&body) {
            Ok(b) => (status, b),
            // Cannot fail for these bodies (every map key a string, written
            // to a `Vec`). If it did, the ledger would hold the call with
            // `status` while the caller got a 500: an over-record, as a late
            // acknowledgement makes (ARCHITECTURE.md), never the reverse.
            Err(e) => {
                tracing::error!(message = "An answer did not serialize.", error = %e);
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    br#"{"detail":"the answer could not be written; the operator is alerted","error":"internal"}"#.to_vec(),
                )
            }
        }
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            br#"{"detail":"the call could not be recorded in the audit ledger, so it is not answered; retry shortly","error":"audit_unavailable"}"#.to_vec(),
        )
    };
    st.metrics.call(
        &g.sub.id,
        op.as_str(),
        status.as_u16(),
        g.started.elapsed().as_secs_f64(),
    );
    let mut r = (status, [("content-type", "application/json")], body).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert("retry-after", HeaderValue::from_static("2"));
    }
    r
}

fn count(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
    pairs
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| ((*k).to_owned(), *n))
        .collect()
}

#[derive(Deserialize)]
struct WaitQuery {
    min_version: Option<String>,
    wait: Option<String>,
}

type Peer = Option<axum::Extension<govbus_http::PeerCertificate>>;

/// The steps every handler starts with: the path decoded, then the call
/// authorized for `op` on the subscription `id_of(path)` names.
fn begin<T>(
    st: &Inner,
    path: Result<Path<T>, axum::extract::rejection::PathRejection>,
    peer: &Peer,
    headers: &HeaderMap,
    op: ApiOperation,
    id_of: impl Fn(&T) -> &str,
) -> Result<(T, Granted), Response> {
    let Path(p) = path.map_err(path_error)?;
    let g = authorize(st, headers, peer.as_ref().map(|x| &x.0), id_of(&p), op)?;
    Ok((p, g))
}

fn path_error(e: axum::extract::rejection::PathRejection) -> Response {
    problem(
        StatusCode::BAD_REQUEST,
        "bad_request",
        format!("the path does not decode: {e} (percent-encode keys as UTF-8)"),
    )
}

async fn lookup_one(
    State(st): State<Arc<Inner>>,
    path: Result<Path<(String, String)>, axum::extract::rejection::PathRejection>,
    q: Result<UrlQuery<WaitQuery>, axum::extract::rejection::QueryRejection>,
    peer: Peer,
    headers: HeaderMap,
) -> Response {
    let ((_, key), g) = match begin(&st, path, &peer, &headers, ApiOperation::Lookup, |p| {
        p.0.as_str()
    }) {
        Ok(x) => x,
        Err(r) => return r,
    };
    if let Err(r) = check_text("the key", &key) {
        return r;
    }
    let UrlQuery(q) = match q {
        Ok(q) => q,
        Err(e) => return problem(StatusCode::BAD_REQUEST, "bad_request", e.body_text()),
    };
    let min_version = match q.min_version.as_deref().map(str::parse::<u64>) {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(_)) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "min_version is a non-negative integer (the source version you published)",
            )
        }
    };
    let wait = match q.wait.as_deref().map(humantime_parse) {
        None => Duration::from_secs(5).min(st.config.max_wait),
        Some(Some(d)) if d <= st.config.max_wait => d,
        Some(_) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!(
                    "wait is a duration like `2s`, at most {}",
                    humantime_format(st.config.max_wait)
                ),
            )
        }
    };
    let mut commits = g.state.commits();
    let deadline = tokio::time::Instant::now() + wait;
    let mut g = g;
    let mut waited = false;
    let entry = loop {
        if waited {
            // The grant may have been revoked or changed while we waited.
            g = match still_granted(&st, &g, ApiOperation::Lookup) {
                Ok(g) => g,
                Err(r) => return r,
            };
        }
        let entry = match read_entry(&st, &g.sub.dataset, &key) {
            Ok(e) => e,
            Err(r) => return r,
        };
        let Some(min) = min_version else { break entry };
        // Only a record this grant may see ends the wait: a deleted or
        // filtered-out key waits like one never published, so the wait
        // tells nothing about records outside the grant.
        let reached = entry.as_ref().is_some_and(|e| e.version >= min)
            && matches!(visible_to(&g, entry.as_ref()), Ok(Some(_)));
        if reached {
            break entry;
        }
        waited = true;
        let changed = tokio::time::timeout_at(deadline, commits.changed()).await;
        if !matches!(changed, Ok(Ok(()))) {
            let body = json!({
                "error": "version_not_reached",
                "detail": format!("after {}, the state does not hold version {min} of this key yet", humantime_format(wait)),
                "freshness": freshness(&g.state),
            });
            let mut r = answer(
                &st,
                &g,
                ApiOperation::Lookup,
                &[&key],
                count(&[("not_reached", 1)]),
                StatusCode::CONFLICT,
                body,
            )
            .await;
            // (A 503 from the audit keeps its own Retry-After.)
            if r.status() == StatusCode::CONFLICT {
                r.headers_mut()
                    .insert("retry-after", HeaderValue::from_static("1"));
            }
            return r;
        }
    };
    match render(&g, &key, entry.as_ref()) {
        Err(r) => r,
        Ok(Seen::Absent) => {
            let body = json!({"error": "not_found", "detail": "no record with this key", "freshness": freshness(&g.state)});
            answer(
                &st,
                &g,
                ApiOperation::Lookup,
                &[&key],
                count(&[("absent", 1)]),
                StatusCode::NOT_FOUND,
                body,
            )
            .await
        }
        Ok(Seen::Record(rec)) => {
            let mut o = rec.into_object();
            o.insert("subscription".into(), Json::String(g.sub.id.clone()));
            o.insert("dataset".into(), Json::String(g.sub.dataset.clone()));
            o.insert("freshness".into(), freshness(&g.state));
            answer(
                &st,
                &g,
                ApiOperation::Lookup,
                &[&key],
                count(&[("found", 1)]),
                StatusCode::OK,
                Json::Object(o),
            )
            .await
        }
    }
}

/// `g` again from the current catalog (after a wait): still the caller's,
/// still active, still allowing `op`; the policy as it is now.
fn still_granted(st: &Inner, g: &Granted, op: ApiOperation) -> Result<Granted, Response> {
    let catalog = st.catalog.borrow().clone();
    let sub = catalog
        .subscription(&g.sub.id)
        .filter(|s| s.subscriber == g.sub.subscriber)
        .ok_or_else(|| {
            problem(
                StatusCode::FORBIDDEN,
                "grant_inactive",
                "the subscription was removed",
            )
        })?;
    let SinkSpec::Api {
        operations,
        batch_max,
        ..
    } = &sub.sink
    else {
        return Err(problem(
            StatusCode::FORBIDDEN,
            "grant_inactive",
            "the subscription is no longer a live interface",
        ));
    };
    if let Some(reason) = sub.inactive_reason(now_ms()) {
        return Err(problem(
            StatusCode::FORBIDDEN,
            "grant_inactive",
            format!("subscription `{}` does not allow calls: {reason}", sub.id),
        ));
    }
    if !operations.contains(&op) {
        return Err(problem(
            StatusCode::FORBIDDEN,
            "operation_not_granted",
            format!("subscription `{}` no longer allows {}", sub.id, op.as_str()),
        ));
    }
    let batch_max = *batch_max;
    let (sub, ds, policy) = st
        .prepared
        .get(&catalog, sub, &st.config.pseudonym_secret)
        .ok_or_else(|| {
            problem(
                StatusCode::NOT_FOUND,
                "no_such_dataset",
                "the grant's dataset is not in the catalog",
            )
        })?;
    Ok(Granted {
        policy,
        sub,
        ds,
        state: g.state.clone(),
        catalog,
        batch_max,
        started: g.started,
    })
}

fn humantime_parse(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(
        s.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len()),
    );
    let n: f64 = num
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n >= 0.0)?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}

fn humantime_format(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// The declared lookup field `field` of the grant's dataset, checked: it
/// must be declared and delivered by the grant.
fn lookup_field<'a>(
    g: &'a Granted,
    field: &str,
) -> Result<&'a govbus_catalog::LookupField, Response> {
    let Some(l) = g.ds.lookup.iter().find(|l| l.field == field) else {
        let declared: Vec<&str> = g.ds.lookup.iter().map(|l| l.field.as_str()).collect();
        return Err(problem(
            StatusCode::BAD_REQUEST,
            "unknown_lookup_field",
            format!(
                "`{}` is not a lookup field of {}; declared: {}",
                field.escape_debug(),
                g.ds.name,
                if declared.is_empty() {
                    "none (look up by key)".to_owned()
                } else {
                    declared.join(", ")
                }
            ),
        ));
    };
    if !g.sub.delivers(field, &g.ds.key) {
        return Err(problem(
            StatusCode::FORBIDDEN,
            "field_not_granted",
            format!("`{field}` is not among the fields your grant delivers"),
        ));
    }
    Ok(l)
}

fn tag_of(ds: &Dataset, field: &str) -> Option<PiiTag> {
    ds.personal_data.get(field).copied()
}

/// The records whose `field` holds `value` that this grant may see (live,
/// inside the row filter), at most `limit`, and whether there are more
/// such records. Records the grant may not see count for nothing: they
/// neither fill the page nor set `more`.
fn find_by(
    st: &Inner,
    g: &Granted,
    field: &str,
    value: &str,
    limit: usize,
) -> Result<(Vec<(String, Entry)>, bool), Response> {
    const PAGE: usize = 256;
    let text =
        index_text(tag_of(&g.ds, field), &Json::String(value.to_owned())).unwrap_or_default();
    let r = st.store.read().map_err(store_error)?;
    let recs = records::Records::open(&r, &g.sub.dataset).map_err(store_error)?;
    let mut out = Vec::new();
    let mut after = String::new();
    loop {
        let keys = records::keys_by_after(&r, &g.sub.dataset, field, &text, &after, PAGE)
            .map_err(store_error)?;
        let last = keys.len() < PAGE;
        for k in keys {
            if let Some(e) = recs.get(&k).map_err(store_error)? {
                if visible_to(g, Some(&e))?.is_some() {
                    if out.len() == limit {
                        return Ok((out, true));
                    }
                    out.push((k.clone(), e));
                }
            }
            after = k;
        }
        if last {
            return Ok((out, false));
        }
    }
}

async fn lookup_by(
    State(st): State<Arc<Inner>>,
    path: Result<Path<(String, String, String)>, axum::extract::rejection::PathRejection>,
    peer: Peer,
    headers: HeaderMap,
) -> Response {
    let ((_, field, value), g) =
        match begin(&st, path, &peer, &headers, ApiOperation::Lookup, |p| {
            p.0.as_str()
        }) {
            Ok(x) => x,
            Err(r) => return r,
        };
    if let Err(r) = check_text("the value", &value) {
        return r;
    }
    let unique = match lookup_field(&g, &field) {
        Ok(l) => l.unique,
        Err(r) => return r,
    };
    let (found, more) = match find_by(&st, &g, &field, &value, g.batch_max) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let mut out = Vec::new();
    for (k, e) in &found {
        match render(&g, k, Some(e)) {
            Err(r) => return r,
            Ok(Seen::Record(rec)) => out.push(Json::Object(rec.into_object())),
            Ok(Seen::Absent) => {}
        }
    }
    if unique && out.len() > 1 {
        let body = json!({"error": "ambiguous", "detail": format!("`{field}` is declared unique but {} records hold this value; the source must correct its data", out.len())});
        return answer(
            &st,
            &g,
            ApiOperation::Lookup,
            &[&value],
            count(&[("ambiguous", 1)]),
            StatusCode::CONFLICT,
            body,
        )
        .await;
    }
    let n = u32::try_from(out.len()).unwrap_or(u32::MAX);
    let (status, outcomes) = if out.is_empty() {
        (StatusCode::NOT_FOUND, count(&[("absent", 1)]))
    } else {
        (StatusCode::OK, count(&[("found", n)]))
    };
    let body = object([
        ("subscription", Json::String(g.sub.id.clone())),
        ("dataset", Json::String(g.sub.dataset.clone())),
        ("field", Json::String(field.clone())),
        ("records", Json::Array(out)),
        ("truncated", Json::Bool(more)),
        ("freshness", freshness(&g.state)),
    ]);
    answer(
        &st,
        &g,
        ApiOperation::Lookup,
        &[&value],
        outcomes,
        status,
        body,
    )
    .await
}

async fn read_body(body: Body) -> Result<Json, Response> {
    let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the body is larger than {MAX_BODY} bytes"),
        )
    })?;
    serde_json::from_slice::<Json>(&bytes).map_err(|e| {
        problem(
            StatusCode::BAD_REQUEST,
            "bad_json",
            format!("the body is not JSON: {e}"),
        )
    })
}

fn strings(v: &Json, what: &str) -> Result<Vec<String>, Response> {
    let Json::Array(items) = v else {
        return Err(problem(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("`{what}` is a list of strings"),
        ));
    };
    items
        .iter()
        .map(|i| match i {
            Json::String(s) => {
                check_text(&format!("an element of `{what}`"), s).map(|()| s.clone())
            }
            Json::Number(n) => Ok(n.to_string()),
            _ => Err(problem(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("`{what}` holds strings only"),
            )),
        })
        .collect()
}

fn only_keys(o: &Map<String, Json>, allowed: &[&str]) -> Result<(), Response> {
    match o.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(problem(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!(
                "unknown member `{}`; expected {}",
                k.escape_debug(),
                allowed.join(", ")
            ),
        )),
        None => Ok(()),
    }
}

async fn batch(
    State(st): State<Arc<Inner>>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    peer: Peer,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (_, g) = match begin(
        &st,
        path,
        &peer,
        &headers,
        ApiOperation::Lookup,
        String::as_str,
    ) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let req =
        match read_body(body).await {
            Ok(Json::Object(o)) => o,
            Ok(_) => return problem(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the body is an object: {\"keys\": [..]} or {\"field\": \"..\", \"values\": [..]}",
            ),
            Err(r) => return r,
        };
    if let Err(r) = only_keys(&req, &["keys", "field", "values"]) {
        return r;
    }
    let (field, items) = match (req.get("keys"), req.get("field"), req.get("values")) {
        (Some(k), None, None) => (None, strings(k, "keys")),
        (None, Some(Json::String(f)), Some(v)) => (Some(f.clone()), strings(v, "values")),
        _ => {
            return problem(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "give `keys`, or `field` and `values`",
            )
        }
    };
    let items = match items {
        Ok(i) => i,
        Err(r) => return r,
    };
    if items.is_empty() {
        return problem(StatusCode::BAD_REQUEST, "bad_request", "nothing to look up");
    }
    if items.len() > g.batch_max {
        return problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_keys",
            format!(
                "{} keys; this grant allows at most {} per batch",
                items.len(),
                g.batch_max
            ),
        );
    }
    let (mut found, mut absent) = (0u32, 0u32);
    let results = if let Some(field) = &field {
        if let Err(r) = lookup_field(&g, field) {
            return r;
        }
        let mut results = Vec::with_capacity(items.len());
        let mut budget = g.batch_max;
        for v in &items {
            let (hits, more) = match find_by(&st, &g, field, v, budget) {
                Ok(f) => f,
                Err(r) => return r,
            };
            if more {
                return problem(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_many_records",
                    format!(
                        "these values name more than {} records in all (this grant's batch_max); ask for fewer values",
                        g.batch_max
                    ),
                );
            }
            budget -= hits.len();
            let mut records = Vec::new();
            for (k, e) in &hits {
                match render(&g, k, Some(e)) {
                    Err(r) => return r,
                    Ok(Seen::Record(rec)) => records.push(rec),
                    Ok(Seen::Absent) => {}
                }
            }
            if records.is_empty() {
                absent += 1
            } else {
                found += 1
            }
            results.push(ValueResult { records, value: v });
        }
        BatchResults::Values(results)
    } else {
        let recs = match st
            .store
            .read()
            .and_then(|r| records::Records::open(&r, &g.sub.dataset))
        {
            Ok(r) => r,
            Err(e) => return store_error(e),
        };
        let mut results = Vec::with_capacity(items.len());
        for k in &items {
            let entry = match recs.get(k) {
                Ok(e) => e,
                Err(e) => return store_error(e),
            };
            let record = match render(&g, k, entry.as_ref()) {
                Err(r) => return r,
                Ok(Seen::Record(rec)) => Some(rec),
                Ok(Seen::Absent) => None,
            };
            if record.is_some() {
                found += 1;
            } else {
                absent += 1;
            }
            results.push(KeyResult {
                found: record.is_some(),
                key: k,
                record,
            });
        }
        BatchResults::Keys(results)
    };
    let body = BatchAnswer {
        dataset: &g.sub.dataset,
        freshness: freshness(&g.state),
        results,
        subscription: &g.sub.id,
    };
    let looked: Vec<&str> = items.iter().map(String::as_str).collect();
    answer(
        &st,
        &g,
        ApiOperation::Lookup,
        &looked,
        count(&[("found", found), ("absent", absent)]),
        StatusCode::OK,
        body,
    )
    .await
}

/// Whether the caller's value equals the stored one, as values of the
/// field's type (decimals exactly, dates as dates; an ID number's `x` as
/// `X`). Surrounding spaces in the caller's text are ignored.
fn same(kind: &FieldKind, tag: Option<PiiTag>, stored: &Json, given: &Json) -> bool {
    let norm = |v: &Json| match v {
        Json::String(s) => {
            let t = s.trim();
            Json::String(if tag == Some(PiiTag::IdNumber) {
                t.to_uppercase()
            } else {
                t.to_owned()
            })
        }
        other => other.clone(),
    };
    let (a, b) = (norm(stored), norm(given));
    match (Scalar::from_record(kind, &a), Scalar::from_record(kind, &b)) {
        (Some(Scalar::Null), Some(Scalar::Null)) => true,
        (Some(x), Some(y)) => x.compare(&y) == Some(std::cmp::Ordering::Equal),
        _ => false,
    }
}

async fn verify(
    State(st): State<Arc<Inner>>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    peer: Peer,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (_, g) = match begin(
        &st,
        path,
        &peer,
        &headers,
        ApiOperation::Verify,
        String::as_str,
    ) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let req = match read_body(body).await {
        Ok(Json::Object(o)) => o,
        Ok(_) => return problem(StatusCode::BAD_REQUEST, "bad_request", "the body is an object: {\"key\": \"..\", \"fields\": {..}} or {\"field\": \"..\", \"value\": \"..\", \"fields\": {..}}"),
        Err(r) => return r,
    };
    if let Err(r) = only_keys(&req, &["key", "field", "value", "fields"]) {
        return r;
    }
    let Some(Json::Object(fields)) = req.get("fields") else {
        return problem(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "`fields` is an object of the values you hold: {\"deceased_name\": \"..\"}",
        );
    };
    if fields.is_empty() || fields.len() > MAX_VERIFY_FIELDS {
        return problem(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("`fields` names 1 to {MAX_VERIFY_FIELDS} fields"),
        );
    }
    let schema_fields = top_level(&g.ds.latest().schema);
    let mut kinds = Vec::new();
    for (name, v) in fields {
        let Some((_, info)) = schema_fields.iter().find(|(n, _)| *n == name) else {
            return problem(
                StatusCode::BAD_REQUEST,
                "unknown_field",
                format!("`{}` is not a field of {}", name.escape_debug(), g.ds.name),
            );
        };
        if !g.sub.delivers(name, &g.ds.key) {
            return problem(
                StatusCode::FORBIDDEN,
                "field_not_granted",
                format!("`{name}` is not among the fields your grant delivers"),
            );
        }
        if matches!(v, Json::Object(_) | Json::Array(_)) {
            return problem(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("`{name}`: give a plain value"),
            );
        }
        kinds.push((name.clone(), info.kind.clone()));
    }
    let (key, by) = match (req.get("key"), req.get("field"), req.get("value")) {
        (Some(Json::String(k)), None, None) => (k.clone(), None),
        (None, Some(Json::String(f)), Some(Json::String(v))) => (v.clone(), Some(f.clone())),
        _ => {
            return problem(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "name the record by `key`, or by a unique lookup `field` and its `value`",
            )
        }
    };
    if let Err(r) = check_text("the key or value", &key) {
        return r;
    }
    let entry = match &by {
        None => match read_entry(&st, &g.sub.dataset, &key) {
            Ok(e) => e,
            Err(r) => return r,
        },
        Some(field) => {
            match lookup_field(&g, field) {
                Ok(l) if l.unique => {}
                Ok(_) => {
                    return problem(
                        StatusCode::BAD_REQUEST,
                        "not_unique",
                        format!("`{field}` is not a unique lookup field: verify by key"),
                    )
                }
                Err(r) => return r,
            }
            match find_by(&st, &g, field, &key, 1) {
                Ok((_, true)) => {
                    let body = json!({"error": "ambiguous", "detail": format!("`{field}` is declared unique but several records hold this value; the source must correct its data")});
                    return answer(
                        &st,
                        &g,
                        ApiOperation::Verify,
                        &[&key],
                        count(&[("ambiguous", 1)]),
                        StatusCode::CONFLICT,
                        body,
                    )
                    .await;
                }
                Ok((hits, false)) => hits.into_iter().next().map(|(_, e)| e),
                Err(r) => return r,
            }
        }
    };
    let record = match visible(&g, entry.as_ref()) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let mut out = Map::new();
    let (mut m, mut nm) = (0u32, 0u32);
    for (name, kind) in &kinds {
        let word = match &record {
            None => "no_such_record",
            Some(rec) => {
                let stored = rec.get(name).unwrap_or(&Json::Null);
                if same(kind, tag_of(&g.ds, name), stored, &fields[name]) {
                    m += 1;
                    "match"
                } else {
                    nm += 1;
                    "no_match"
                }
            }
        };
        out.insert(name.clone(), Json::String(word.into()));
    }
    let found = record.is_some();
    let body = json!({
        "subscription": g.sub.id,
        "dataset": g.sub.dataset,
        "record": if found { "found" } else { "no_such_record" },
        "fields": out,
        "freshness": freshness(&g.state),
    });
    let outcomes = if found {
        count(&[("match", m), ("no_match", nm)])
    } else {
        count(&[("no_such_record", 1)])
    };
    answer(
        &st,
        &g,
        ApiOperation::Verify,
        &[&key],
        outcomes,
        StatusCode::OK,
        body,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The typed batch answer is, byte for byte, the `Value` tree it
    /// replaced (members in map order, `record` absent for a miss, numbers
    /// as their text).
    #[test]
    fn typed_answers_are_the_bytes_of_the_value_tree() {
        let data: Map<String, Json> = serde_json::from_str(
            r#"{"zeta":"2","amount":1.50,"big":12345678901234567,"none":null,"name":"A \"q\" \u00e9 \u001b[31m"}"#,
        )
        .unwrap();
        let rec = || Rendered {
            data: data.clone(),
            id: "e-1".into(),
            key: "pseudonym\\x".into(),
            sourceversion: "7".into(),
            time: "2026-01-01T00:00:00.000Z".into(),
        };
        let freshness = json!({"applied_until": null, "age_ms": 12, "lag": 0, "caught_up": true});
        let typed = BatchAnswer {
            dataset: "d.s",
            freshness: freshness.clone(),
            results: BatchResults::Keys(vec![
                KeyResult {
                    found: true,
                    key: "k1",
                    record: Some(rec()),
                },
                KeyResult {
                    found: false,
                    key: "k\"2",
                    record: None,
                },
            ]),
            subscription: "sub",
        };
        let tree = json!({
            "subscription": "sub",
            "dataset": "d.s",
            "freshness": freshness,
            "results": [
                {"key": "k1", "found": true, "record": Json::Object(rec().into_object())},
                {"key": "k\"2", "found": false},
            ],
        });
        assert_eq!(
            String::from_utf8(serde_json::to_vec(&typed).unwrap()).unwrap(),
            tree.to_string()
        );
        let typed = BatchAnswer {
            dataset: "d.s",
            freshness: freshness.clone(),
            results: BatchResults::Values(vec![
                ValueResult {
                    records: vec![rec(), rec()],
                    value: "v1",
                },
                ValueResult {
                    records: vec![],
                    value: "v2",
                },
            ]),
            subscription: "sub",
        };
        let r = || Json::Object(rec().into_object());
        let tree = json!({
            "subscription": "sub",
            "dataset": "d.s",
            "freshness": freshness,
            "results": [
                {"value": "v1", "records": [r(), r()]},
                {"value": "v2", "records": []},
            ],
        });
        assert_eq!(
            String::from_utf8(serde_json::to_vec(&typed).unwrap()).unwrap(),
            tree.to_string()
        );
    }

    #[test]
    fn comparison_is_by_type() {
        let d = FieldKind::Decimal {
            precision: 10,
            scale: 2,
        };
        assert!(same(&d, None, &json!("12.50"), &json!("12.5")));
        assert!(same(&d, None, &json!("12.50"), &json!(12.5)));
        assert!(!same(&d, None, &json!("12.50"), &json!("12.51")));
        assert!(same(
            &FieldKind::String,
            Some(PiiTag::IdNumber),
            &json!("11010519491231002X"),
            &json!(" 11010519491231002x ")
        ));
        assert!(!same(
            &FieldKind::String,
            Some(PiiTag::Name),
            &json!("张三"),
            &json!("张 三")
        ));
        assert!(same(
            &FieldKind::Date,
            None,
            &json!("2024-01-05"),
            &json!("2024-01-05")
        ));
        assert!(!same(
            &FieldKind::Date,
            None,
            &json!("2024-01-05"),
            &json!("2024-1-5x")
        ));
        assert!(same(&FieldKind::String, None, &Json::Null, &Json::Null));
        assert!(!same(&FieldKind::String, None, &Json::Null, &json!("")));
    }

    /// The sample catalog's live-interface grant.
    fn sample_api_grant() -> Arc<Subscription> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas");
        let catalog = Catalog::load(&dir).expect("the sample catalog loads");
        let grant = catalog
            .subscriptions()
            .find(|s| matches!(s.sink, SinkSpec::Api { .. }))
            .expect("the sample catalog has an api grant");
        Arc::new(grant.clone())
    }

    /// A call is either taken into an entry or given up by its caller,
    /// never both: a given-up call, or one whose caller went away, is not
    /// recorded; a taken one can no longer be given up.
    #[test]
    fn a_call_is_taken_into_an_entry_or_given_up_never_both() {
        let sub = sample_api_grant();
        let mut receivers = Vec::new();
        let mut states = Vec::new();
        let mut round = Vec::new();
        for (i, initial) in [WAITING, ABANDONED, WAITING].into_iter().enumerate() {
            let (done, wait) = oneshot::channel();
            let state = Arc::new(AtomicU8::new(initial));
            round.push(Pending {
                sub: sub.clone(),
                call: Call {
                    time: String::new(),
                    operation: format!("call{i}"),
                    status: 200,
                    keys: 1,
                    outcomes: BTreeMap::new(),
                    lookups: Vec::new(),
                },
                state: state.clone(),
                done,
            });
            states.push(state);
            // The third caller went away (its request was dropped).
            if i < 2 {
                receivers.push(wait);
            }
        }
        let taken: Vec<String> = take(round).into_iter().map(|p| p.call.operation).collect();
        assert_eq!(taken, vec!["call0".to_owned()]);
        assert_eq!(states[0].load(Ordering::Acquire), TAKEN);
        assert_eq!(states[1].load(Ordering::Acquire), ABANDONED);
        // The caller of a taken call can no longer give it up.
        assert!(states[0]
            .compare_exchange(WAITING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
            .is_err());
    }

    #[test]
    fn a_round_is_one_entry_per_subscription_split_before_the_producer_limit() {
        let a = sample_api_grant();
        let mut b = (*a).clone();
        b.id = format!("{}_other", a.id);
        let b = Arc::new(b);
        let call = |sub: &Arc<Subscription>, lookups: usize| {
            let (done, _) = oneshot::channel();
            Pending {
                sub: sub.clone(),
                call: Call {
                    time: String::new(),
                    operation: "lookup".into(),
                    status: 200,
                    keys: u32::try_from(lookups).unwrap_or(u32::MAX),
                    outcomes: BTreeMap::new(),
                    lookups: vec!["0123456789abcdef".into(); lookups],
                },
                state: Arc::new(AtomicU8::new(WAITING)),
                done,
            }
        };
        // 30 batch calls of 1,000 values (~20 KB of entry each) and three
        // single-key calls of another subscription.
        let mut round: Vec<Pending> = (0..30).map(|_| call(&a, 1000)).collect();
        round.extend((0..3).map(|_| call(&b, 1)));
        let entries = entries_of(round);
        let sizes: Vec<(String, usize)> = entries
            .iter()
            .map(|e| (e[0].sub.id.clone(), e.len()))
            .collect();
        assert_eq!(
            sizes,
            vec![
                (a.id.clone(), 12),
                (a.id.clone(), 12),
                (a.id.clone(), 6),
                (b.id.clone(), 3)
            ]
        );
        for e in &entries {
            let calls: Vec<&Call> = e.iter().map(|p| &p.call).collect();
            let bytes = serde_json::to_vec(&calls).map_or(0, |v| v.len());
            assert!(bytes < 1_000_000, "an entry of {bytes} bytes");
        }
    }

    #[test]
    fn waits_parse_strictly() {
        assert_eq!(humantime_parse("2s"), Some(Duration::from_secs(2)));
        assert_eq!(humantime_parse("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(humantime_parse("1h"), None);
        assert_eq!(humantime_parse("-1s"), None);
        assert_eq!(humantime_parse("nan"), None);
    }

    #[test]
    fn buckets_refill_at_the_rate() {
        let l = Limits::default();
        for _ in 0..5 {
            assert!(l.take("s", 5).is_ok());
        }
        let wait = l.take("s", 5).unwrap_err();
        assert!(wait <= Duration::from_millis(200));
    }
}
