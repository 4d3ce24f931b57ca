//! The live stream: `GET /v1/subscriptions/{id}/events` as Server-Sent Events.
//!
//! - Authenticated per subscriber: `Authorization: Bearer <token>` of the
//!   subscription's department (the gateway's credentials file format), or,
//!   served over TLS with a client CA ([`govbus_http`]), a verified client
//!   certificate listed there as the department's `certificate_sha256`.
//! - Every event's `id` is an offset cursor (`partition:next_offset,...`);
//!   a client that reconnects with `Last-Event-ID` (or `?cursor=`) resumes
//!   exactly after the last event it saw. A new client starts at the end
//!   (`?from=beginning` for everything retained).
//! - Heartbeats (`: heartbeat` comments) keep proxies and clients from
//!   timing out an idle stream.
//! - Clients at the head of the topic share one reader ([`crate::hub`]); a
//!   client behind it reads with its own consumer until it catches up.
//!   None commits offsets.
//! - The grant and the client's credential are checked before each event
//!   (again in full whenever the catalog or the credentials file was
//!   reloaded, or the grant's validity ran out), and each event goes out
//!   under the grant as it is then: a narrowed field policy or a newly tagged
//!   personal field applies to the next event; a revoked or expired grant,
//!   one handed to another department, dataset or sink, or a withdrawn token
//!   or certificate gets a final `event: revoked` (its data says why) and
//!   ends the stream. At most the 128 events already in the channel can
//!   still reach the client after a change.
//! - Events are recorded in the ledger before they are handed to the
//!   client, a chunk at a time: a crash may leave an event on the ledger
//!   that no client read, never one read and not on the ledger.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use govbus_catalog::{Dataset, SinkSpec, Subscription};
use govbus_http::Credentials;
use govbus_kafka::stage::next_batch;
use rdkafka::consumer::{Consumer, DefaultConsumerContext, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};

use crate::decode::DecodeError;
use crate::event::{prepare, Prepared, SchemaWait, SCHEMA_RECHECK, SCHEMA_WAIT};
use crate::ledger;
use crate::policy::Policy;
use crate::run::{Shared, Sinks};

/// Events checked, recorded and handed to a client together; also the
/// channel's capacity (`reserve_many` needs at most that), so at most this
/// many already checked events can still reach a client after its grant
/// changes.
const CHUNK: usize = 128;

/// How often the grant of a client that has stopped reading (its channel
/// full) is looked at again.
const STALLED_RECHECK: Duration = Duration::from_secs(5);

/// An event waiting in a client's channel. The channel holds up to
/// [`CHUNK`] of them per client, so they are kept at their exact size and
/// become an axum [`Event`] only when the response takes them: a built
/// `Event`'s buffer grows by doubling and held about twice its text (1,000
/// clients at the head held ~190 MiB of channel, BENCHMARKS.md).
struct Frame {
    id: Option<Box<str>>,
    event: Box<str>,
    data: Box<str>,
}

impl Frame {
    fn new(id: Option<String>, event: &str, data: String) -> Frame {
        Frame {
            id: id.map(String::into_boxed_str),
            event: event.into(),
            data: data.into_boxed_str(),
        }
    }

    fn into_event(self) -> Event {
        let event = match self.id {
            Some(id) => Event::default().id(id),
            None => Event::default(),
        };
        event.event(self.event).data(self.data)
    }
}

/// A parsed offset cursor: partition → next offset.
pub type Cursor = BTreeMap<i32, i64>;

/// Parses `0:12,1:40`.
pub fn parse_cursor(text: &str) -> Option<Cursor> {
    let mut out = Cursor::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let (p, o) = part.split_once(':')?;
        let (p, o) = (p.trim().parse::<i32>().ok()?, o.trim().parse::<i64>().ok()?);
        if p < 0 || o < 0 {
            return None;
        }
        out.insert(p, o);
    }
    Some(out)
}

/// Formats a cursor.
pub fn format_cursor(c: &Cursor) -> String {
    c.iter()
        .map(|(p, o)| format!("{p}:{o}"))
        .collect::<Vec<_>>()
        .join(",")
}

struct SseState {
    shared: Arc<Shared>,
    /// The shared readers of the clients at a topic's head.
    hubs: Arc<crate::hub::Hubs>,
    credentials: Credentials,
    heartbeat: Duration,
    clients: AtomicU64,
}

/// The HTTP surface of a sink process: the live streams, `/metrics`,
/// `/health`, `/ready`.
pub fn router(sinks: &Sinks, credentials: Credentials, heartbeat: Duration) -> axum::Router {
    let state = Arc::new(SseState {
        shared: sinks.shared.clone(),
        hubs: Arc::default(),
        credentials,
        heartbeat,
        clients: AtomicU64::new(0),
    });
    axum::Router::new()
        .route("/v1/subscriptions/{id}/events", get(events))
        .route("/metrics", get(metrics))
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .with_state(state)
}

/// 503 while a subscription task that panicked waits to be started again
/// (`govbus_sink_tasks_held`); the log names it.
async fn ready(State(st): State<Arc<SseState>>) -> impl IntoResponse {
    if st.shared.metrics.is_ready() {
        (axum::http::StatusCode::OK, "ready\n")
    } else {
        (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "a subscription task failed and waits to restart (govbus_sink_tasks_held; see the log)\n",
        )
    }
}

async fn metrics(State(st): State<Arc<SseState>>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        st.shared.metrics.render(),
    )
}

#[derive(Deserialize)]
struct StreamQuery {
    cursor: Option<String>,
    from: Option<String>,
}

fn problem(status: StatusCode, detail: &str) -> Response {
    let mut r = (
        status,
        [("content-type", "application/problem+json")],
        serde_json::json!({"status": status.as_u16(), "detail": detail}).to_string(),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            "www-authenticate",
            axum::http::HeaderValue::from_static("Bearer"),
        );
    }
    r
}

struct ClientGuard {
    shared: Arc<Shared>,
    subscription: String,
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.shared.metrics.sse_clients(&self.subscription, -1);
    }
}

async fn events(
    State(st): State<Arc<SseState>>,
    Path(id): Path<String>,
    Query(q): Query<StreamQuery>,
    peer: Option<axum::Extension<govbus_http::PeerCertificate>>,
    headers: HeaderMap,
) -> Response {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // A token, when sent, decides; otherwise a verified client certificate.
    let caller = match (token, peer) {
        (Some(t), _) => Some(Caller::Token(t.to_owned())),
        (None, Some(axum::Extension(cert))) => Some(Caller::Certificate(cert.0)),
        (None, None) => None,
    };
    let Some((caller, department)) =
        caller.and_then(|c| c.department(&st.credentials).map(|d| (c, d)))
    else {
        return problem(
            StatusCode::UNAUTHORIZED,
            "send `Authorization: Bearer <token>` with a token of the subscribing department, \
             or connect with a client certificate listed for it",
        );
    };
    let catalog = st.shared.catalog.borrow().clone();
    let Some(sub) = catalog
        .subscription(&id)
        .filter(|s| s.sink == SinkSpec::Sse)
    else {
        return problem(
            StatusCode::NOT_FOUND,
            &format!("no live-stream subscription `{id}`"),
        );
    };
    if sub.subscriber != department {
        return problem(
            StatusCode::FORBIDDEN,
            &format!("subscription `{id}` belongs to another department"),
        );
    }
    if let Err(reason) = st.shared.grant(&id) {
        return problem(
            StatusCode::FORBIDDEN,
            &format!("subscription `{id}` does not allow delivery: {reason}"),
        );
    }
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(q.cursor);
    let cursor = match resume.as_deref().map(parse_cursor) {
        Some(None) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "Last-Event-ID / cursor must look like `0:12,1:40` (partition:next_offset)",
            )
        }
        Some(Some(c)) => Some(c),
        None => None,
    };
    let start = match q.from.as_deref() {
        None | Some("end") => Offset::End,
        Some("beginning") => Offset::Beginning,
        Some(_) => return problem(StatusCode::BAD_REQUEST, "`from` is `beginning` or `end`"),
    };
    let n = st.clients.fetch_add(1, Ordering::Relaxed);
    // Each event is checked against the grant and the credential just before
    // it is handed over, so only what this channel holds can still go out
    // after a change (a client that stops reading holds at most this many).
    let (tx, rx) = mpsc::channel::<Frame>(CHUNK);
    let shared = st.shared.clone();
    let hubs = st.hubs.clone();
    st.shared.metrics.sse_clients(&id, 1);
    let guard = ClientGuard {
        shared: shared.clone(),
        subscription: id.clone(),
    };
    let client = Client {
        caller,
        department,
        dataset: sub.dataset.clone(),
        credentials: st.credentials.clone(),
    };
    tokio::spawn(async move {
        let _guard = guard;
        if let Err(e) = stream(shared, hubs, client, id.clone(), cursor, start, tx).await {
            tracing::warn!(message = "Live stream ended with an error.", subscription = %id, client = n, error = %e);
        }
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|f| (Ok::<_, Infallible>(f.into_event()), rx))
    });
    Sse::new(body)
        .keep_alive(KeepAlive::new().interval(st.heartbeat).text("heartbeat"))
        .into_response()
}

/// How a client proved who it is; proved again whenever the credentials
/// file is reloaded.
enum Caller {
    Token(String),
    Certificate(Vec<u8>),
}

impl Caller {
    fn department(&self, credentials: &Credentials) -> Option<String> {
        match self {
            Caller::Token(t) => credentials.department(t),
            Caller::Certificate(der) => credentials.department_for_certificate(der),
        }
    }
}

/// An open stream's client: what it proved at connect time, and the
/// credentials (kept current by their watch) to prove it again.
struct Client {
    caller: Caller,
    department: String,
    /// The dataset whose topic the stream reads.
    dataset: String,
    credentials: Credentials,
}

impl Client {
    /// Why the stream may no longer deliver to this client, if it may not:
    /// the grant (`current`) changed sink, subscriber or dataset, or the
    /// client's token or certificate was withdrawn.
    fn refused(&self, current: &Subscription) -> Option<&'static str> {
        if current.sink != SinkSpec::Sse {
            Some("no longer a live-stream subscription")
        } else if current.subscriber != self.department {
            Some("the subscription now belongs to another department")
        } else if current.dataset != self.dataset {
            Some("the subscription now names another dataset; connect again")
        } else {
            self.withdrawn()
        }
    }

    fn withdrawn(&self) -> Option<&'static str> {
        (self.caller.department(&self.credentials).as_deref() != Some(&self.department))
            .then_some("the client's credential was withdrawn")
    }

    /// The grant as it is now, if it still allows delivery to this client.
    fn check(&self, shared: &Shared, id: &str) -> Result<(Subscription, Dataset), &'static str> {
        let (sub, ds) = shared.grant(id)?;
        match self.refused(&sub) {
            Some(reason) => Err(reason),
            None => Ok((sub, ds)),
        }
    }
}

/// Records the events streamed under one policy in the ledger.
async fn record(shared: &Shared, sub: &Subscription, sent: Vec<String>) -> Result<(), String> {
    if sent.is_empty() {
        return Ok(());
    }
    let n = sent.len();
    let entry = ledger::Record {
        subscription: &sub.id,
        subscriber: &sub.subscriber,
        dataset: &sub.dataset,
        sink: "sse",
        policy: &sub.policy_version,
        outcome: "streamed",
        events: sent,
        calls: Vec::new(),
    };
    shared
        .ledger
        .append(&entry)
        .await
        .map_err(|e| e.to_string())?;
    shared.metrics.ledger_entry("streamed");
    shared.metrics.delivered(&sub.id, "sse", n);
    Ok(())
}

/// The consumer settings of a live-stream reader (a client's own, or a
/// hub's): no group membership, no commits, small prefetch (librdkafka's
/// default queue is 64 MiB per consumer). With a queue of 2,000 records a
/// reader is "full" whenever its client reads slower than the broker
/// sends, so its pause when full is 100 ms, not `config::fetching`'s 10 ms:
/// a client that stopped reading costs 10 wake-ups a second, not 100,
/// and one catching up alone is held to about 20,000 records a second by
/// the pause (it was 2,000 at librdkafka's 1 s default).
fn reader_config(shared: &Shared, id: &str) -> rdkafka::ClientConfig {
    let mut cc = govbus_kafka::config::consumer(
        &shared.config.bootstrap,
        &format!("{}govbus.sse.{id}", shared.config.topics.prefix()),
    );
    cc.set("enable.auto.commit", "false")
        .set("queued.max.messages.kbytes", "2048")
        .set("queued.min.messages", "2000")
        .set("fetch.queue.backoff.ms", "100")
        .set("fetch.max.bytes", "1048576")
        .set("statistics.interval.ms", "0");
    cc
}

/// A consumer of the client's own, assigned from `cursor` (a partition it
/// does not name: from the beginning) or, without one, from `start`; and
/// the position it starts at, naming every partition.
fn own_reader(
    shared: &Shared,
    id: &str,
    topic: &str,
    cursor: Option<&Cursor>,
    start: Offset,
) -> Result<(StreamConsumer<DefaultConsumerContext>, Cursor), String> {
    let consumer: StreamConsumer<DefaultConsumerContext> = reader_config(shared, id)
        .create()
        .map_err(|e| e.to_string())?;
    let metadata = govbus_kafka::stage::blocking(|| {
        consumer.fetch_metadata(Some(topic), Duration::from_secs(10))
    })
    .map_err(|e| e.to_string())?;
    let mut position: Cursor = Cursor::new();
    let mut tpl = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            // "The beginning" and "the end" are resolved now, so that the
            // first cursor names every partition (a resume never falls back
            // to the beginning) and the position can be compared with a hub's.
            let watermarks = || {
                govbus_kafka::stage::blocking(|| {
                    consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                })
                .map_err(|e| e.to_string())
            };
            let offset = match (cursor.and_then(|c| c.get(&p.id())), cursor, start) {
                (Some(o), _, _) => {
                    // A cursor past the partition's end (a topic recreated
                    // since, a forged id) starts at its beginning, as the
                    // consumer's reset would: an offset it will not reach
                    // for a long time must not hide what comes meanwhile.
                    let (low, high) = watermarks()?;
                    if *o > high {
                        tracing::info!(message = "Live-stream cursor past the partition's end; reading it from its beginning.", subscription = %id, partition = p.id());
                        low
                    } else {
                        *o
                    }
                }
                (None, Some(_), _) | (None, None, Offset::Beginning) => watermarks()?.0,
                (None, None, _) => watermarks()?.1,
            };
            position.insert(p.id(), offset);
            tpl.add_partition_offset(topic, p.id(), Offset::Offset(offset))
                .map_err(|e| e.to_string())?;
        }
    }
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    Ok((consumer, position))
}

/// Where a client's records come from.
enum Source {
    /// Its own consumer, behind the head; `next` is its place on the hub,
    /// taken once it is near the head.
    Own {
        consumer: StreamConsumer<DefaultConsumerContext>,
        next: Option<crate::hub::Ticket>,
        /// After a failed join, not before this.
        retry: Option<tokio::time::Instant>,
    },
    /// The topic's shared reader.
    Hub(crate::hub::Ticket),
}

/// Closes a consumer off the async worker (librdkafka's close waits).
fn close(consumer: StreamConsumer<DefaultConsumerContext>) {
    drop(tokio::task::spawn_blocking(move || drop(consumer)));
}

impl Source {
    /// A consumer of the client's own from `position`.
    fn own(shared: &Shared, id: &str, topic: &str, position: &Cursor) -> Result<Source, String> {
        let (consumer, _) = own_reader(shared, id, topic, Some(position), Offset::End)?;
        Ok(Source::Own {
            consumer,
            next: None,
            retry: None,
        })
    }

    /// The next batch from `position` on (empty after 250 ms without one).
    async fn next(
        &mut self,
        shared: &Shared,
        hubs: &crate::hub::Hubs,
        id: &str,
        topic: &str,
        position: &Cursor,
    ) -> Result<crate::hub::Shared, String> {
        match self {
            Source::Own {
                consumer,
                next,
                retry,
            } => {
                let batch = next_batch(
                    consumer,
                    Some(Duration::from_millis(250)),
                    500,
                    Duration::from_millis(10),
                    None,
                    |m| crate::event::Canonical::from_message(&m),
                )
                .await;
                // Each offset once (see `hub::after`).
                let mut seen = position.clone();
                let batch = crate::hub::after(&mut seen, batch);
                // Far behind (a full batch), or a place held so long that
                // its channel fills: holding it would only pin the channel.
                if batch.len() >= 500
                    || next
                        .as_ref()
                        .is_some_and(|t| t.waiting() > crate::hub::CAPACITY / 2)
                {
                    *next = None;
                    return Ok(Arc::new(batch));
                }
                if next.is_none() {
                    // Near the head: take a place, to move there once this
                    // client reaches it (after a failed join, 30 s later).
                    if retry.is_some_and(|at| tokio::time::Instant::now() < at) {
                        return Ok(Arc::new(batch));
                    }
                    match hubs
                        .join(reader_config(shared, id), topic, &shared.metrics)
                        .await
                    {
                        Ok(t) => *next = Some(t),
                        Err(error) => {
                            tracing::warn!(message = "Cannot join the shared reader; this client keeps its own consumer and tries again in 30 s.", subscription = %id, %error);
                            *retry = Some(tokio::time::Instant::now() + Duration::from_secs(30));
                        }
                    }
                    return Ok(Arc::new(batch));
                }
                // Caught up: everything before the place was read — by what
                // it delivered, or by where its consumer stands (librdkafka's
                // position: after the last message handed to the
                // application, so past offsets that hold no record —
                // transaction markers, aborted or compacted records — and
                // never past one still queued).
                let mut at = seen;
                if let Ok(tpl) = govbus_kafka::stage::blocking(|| consumer.position()) {
                    for e in tpl.elements_for_topic(topic) {
                        if let Offset::Offset(o) = e.offset() {
                            let p = at.entry(e.partition()).or_insert(o);
                            *p = (*p).max(o);
                        }
                    }
                }
                let arrived = next
                    .as_ref()
                    .is_some_and(|t| crate::hub::reached(&at, &t.from));
                // (The batch in hand is past the place on every partition:
                // the channel holds whatever follows it.)
                if arrived {
                    if let Some(ticket) = next.take() {
                        tracing::debug!(message = "Live-stream client caught up; it reads from the shared reader now.", subscription = %id);
                        let Source::Own { consumer, .. } =
                            std::mem::replace(self, Source::Hub(ticket))
                        else {
                            unreachable!("matched Own above")
                        };
                        close(consumer);
                    }
                }
                Ok(Arc::new(batch))
            }
            Source::Hub(ticket) => {
                let fall_back = match tokio::time::timeout(
                    Duration::from_millis(250),
                    ticket.rx.recv(),
                )
                .await
                {
                    Err(_) if ticket.alive() => return Ok(Arc::new(Vec::new())),
                    Err(_) => {
                        tracing::warn!(message = "The shared live-stream reader stopped; this client reads with its own consumer.", subscription = %id);
                        true
                    }
                    Ok(Ok(batch)) => {
                        // Just after joining, the channel may still hold
                        // what the client already has.
                        let past = |c: &crate::event::Canonical| {
                            position.get(&c.partition).is_none_or(|at| c.offset >= *at)
                        };
                        if batch.iter().all(past) {
                            return Ok(batch);
                        }
                        return Ok(Arc::new(
                            batch.iter().filter(|c| past(c)).cloned().collect(),
                        ));
                    }
                    Ok(Err(broadcast::error::RecvError::Lagged(n))) => {
                        tracing::info!(message = "Live-stream client fell behind the shared reader; it reads with its own consumer until it catches up.", subscription = %id, batches = n);
                        true
                    }
                    Ok(Err(broadcast::error::RecvError::Closed)) => true,
                };
                if fall_back {
                    *self = Source::own(shared, id, topic, position)?;
                }
                Ok(Arc::new(Vec::new()))
            }
        }
    }
}

async fn stream(
    shared: Arc<Shared>,
    hubs: Arc<crate::hub::Hubs>,
    client: Client,
    id: String,
    cursor: Option<Cursor>,
    start: Offset,
    tx: mpsc::Sender<Frame>,
) -> Result<(), String> {
    let mut catalog = shared.catalog.borrow().clone();
    let (mut sub, ds) = client.check(&shared, &id).map_err(str::to_owned)?;
    let topic = shared.config.topics.data(&sub.dataset);
    // A new client at the end reads from the shared reader at once; one
    // that resumes or starts at the beginning reads with its own consumer
    // until it reaches where the shared reader was when it joined.
    let (mut source, mut position) = match (&cursor, start) {
        (None, Offset::End) => {
            let ticket = hubs
                .join(reader_config(&shared, &id), &topic, &shared.metrics)
                .await?;
            let from = ticket.from.clone();
            (Source::Hub(ticket), from)
        }
        _ => {
            let (consumer, position) = own_reader(&shared, &id, &topic, cursor.as_ref(), start)?;
            (
                Source::Own {
                    consumer,
                    next: None,
                    retry: None,
                },
                position,
            )
        }
    };
    let mut policy = Policy::new(&sub, &ds, &shared.config.pseudonym_secret);
    // The record at the head waits for a schema id the catalog does not
    // have yet, as a delivery sink's batch does.
    let mut schema_wait = SchemaWait::default();
    loop {
        let batch = tokio::select! {
            () = tx.closed() => return Ok(()),
            b = source.next(&shared, &hubs, &id, &topic, &position) => b?,
        };
        let mut rest = &batch[..];
        loop {
            // The grant and the client's credential are checked on every
            // batch and again whenever either changes mid-batch; what is
            // delivered goes out under the grant as it is then.
            let credentials = client.credentials.generation();
            let now = shared.catalog.borrow().clone();
            let (current, current_ds) = match client.check(&shared, &id) {
                Ok(g) => g,
                Err(reason) => {
                    // A client that stopped reading does not hold the stream
                    // (and its consumer) open.
                    let _ = tokio::time::timeout(
                        Duration::from_secs(5),
                        tx.send(Frame::new(None, "revoked", reason.to_owned())),
                    )
                    .await;
                    tracing::warn!(message = "Live stream closed: the grant no longer allows delivery to this client.", subscription = %id, reason);
                    return Ok(());
                }
            };
            // Any catalog change rebuilds the policy: a field's treatment,
            // the dataset's personal-data tags, its key or its schema may
            // have changed.
            if !Arc::ptr_eq(&now, &catalog) {
                if current.policy_version != sub.policy_version {
                    tracing::info!(message = "Field policy changed; the live stream follows it.", subscription = %id, policy = %current.policy_version);
                }
                policy = Policy::new(&current, &current_ds, &shared.config.pseudonym_secret);
                (sub, catalog) = (current, now);
                schema_wait.catalog_changed();
            }
            if rest.is_empty() {
                break;
            }
            // A chunk of events at a time: room for all of them in the
            // channel first (a slow client waits here), then the check,
            // then the ledger entry, then the hand-over. An event reaches
            // the client only once the ledger holds it, so a crash can
            // leave the ledger listing an event the client never read,
            // never the other way round.
            let mut changed = false;
            let mut wait_schema = false;
            while !rest.is_empty() {
                let mut ahead = position.clone();
                // (event id for the ledger, or none for a skipped record; the event)
                let mut chunk: Vec<(Option<String>, Frame)> = Vec::new();
                let mut taken = 0;
                let (mut filtered, mut skipped) = (0, 0);
                // The chunk's spans end when it is handed over (dropped).
                let trace = crate::event::sink_spans(&sub);
                for c in rest {
                    if chunk.len() == CHUNK {
                        break;
                    }
                    let prepared = prepare(&catalog, &policy, c);
                    if let Prepared::Undecodable(DecodeError::UnknownSchema(schema)) = &prepared {
                        // Waited for in vain already: skipped at once.
                        if !schema_wait.given_up(schema)
                            && schema_wait.hold(&[*schema], || {
                                tracing::warn!(message = "A record names a schema id this catalog does not have yet; the live stream waits for the catalog.", subscription = %sub.id, partition = c.partition, offset = c.offset, wait_s = SCHEMA_WAIT.as_secs());
                            })
                        {
                            wait_schema = true;
                            break;
                        }
                    }
                    schema_wait.settled();
                    taken += 1;
                    ahead.insert(c.partition, c.offset + 1);
                    match prepared {
                        Prepared::Deliver(mut d) => {
                            d.continue_in(trace.as_ref());
                            let data =
                                serde_json::to_string(&d.cloudevent_ref(&sub.policy_version))
                                    .unwrap_or_default();
                            let event = Frame::new(Some(format_cursor(&ahead)), &d.op, data);
                            chunk.push((Some(d.id), event));
                        }
                        Prepared::Filtered(_) => filtered += 1,
                        // The subscription's delivery sinks dead-letter it
                        // (`dlq.sub.<id>`); a live stream has no place of
                        // its own to keep it, so it tells the client where
                        // and why (never a value) and goes on: the client
                        // is not left believing it missed nothing.
                        Prepared::Undecodable(e) => {
                            tracing::warn!(message = "A record does not decode with this catalog; the live stream skips it and tells its client.", subscription = %sub.id, partition = c.partition, offset = c.offset, error = %e);
                            skipped += 1;
                            let data = serde_json::json!({
                                "dataset": sub.dataset,
                                "partition": c.partition,
                                "offset": c.offset,
                                "reason": e.to_string(),
                            });
                            chunk.push((
                                None,
                                Frame::new(
                                    Some(format_cursor(&ahead)),
                                    "skipped",
                                    data.to_string(),
                                ),
                            ));
                        }
                    }
                }
                let permits = match chunk.len() {
                    0 => None,
                    n => loop {
                        // A client that stopped reading is waited for, but
                        // its grant and credential are looked at again every
                        // few seconds: once they no longer allow delivery,
                        // the stream ends (its reader — its own consumer or
                        // its place on the hub — is let go) instead of
                        // waiting for the client to read again. (Losing the
                        // place in the channel's queue is harmless: this
                        // task is its only sender.)
                        tokio::select! {
                            // Room first: a reading client's chunk never
                            // starts the timer.
                            biased;
                            p = tx.reserve_many(n) => match p {
                                Ok(p) => break Some(p),
                                Err(_) => return Ok(()),
                            },
                            () = tokio::time::sleep(STALLED_RECHECK) => {
                                if let Err(reason) = client.check(&shared, &id) {
                                    tracing::warn!(message = "Live stream closed: the grant no longer allows delivery to this client, which has stopped reading.", subscription = %id, reason);
                                    return Ok(());
                                }
                            }
                        }
                    },
                };
                // What can change without a reload: the grant's validity
                // window runs out.
                let unchanged = || {
                    Arc::ptr_eq(&shared.catalog.borrow(), &catalog)
                        && client.credentials.generation() == credentials
                        && sub.inactive_reason(crate::run::now_ms()).is_none()
                };
                if !unchanged() {
                    if let Some(t) = &trace {
                        t.fail("the grant changed; the chunk is prepared again under the new one");
                    }
                    changed = true;
                    break;
                }
                let (ids, events): (Vec<Option<String>>, Vec<Frame>) = chunk.into_iter().unzip();
                let ids: Vec<String> = ids.into_iter().flatten().collect();
                record(&shared, &sub, ids).await?;
                // The ledger may have taken long (an outage): a grant revoked
                // or narrowed meanwhile holds back what it no longer allows.
                // (The entry then lists events no client read: the
                // direction the ledger may err in.)
                if !unchanged() {
                    if let Some(t) = &trace {
                        t.fail("the grant changed; the chunk is prepared again under the new one");
                    }
                    changed = true;
                    break;
                }
                if let Some(permits) = permits {
                    for (permit, event) in permits.zip(events) {
                        permit.send(event);
                    }
                }
                shared.metrics.filtered(&sub.id, "sse", filtered);
                shared.metrics.skipped(&sub.id, "sse", skipped);
                position = ahead;
                rest = &rest[taken..];
                if wait_schema {
                    // Then the catalog is looked at again.
                    tokio::select! {
                        () = tx.closed() => return Ok(()),
                        () = tokio::time::sleep(SCHEMA_RECHECK) => {}
                    }
                    changed = true;
                    break;
                }
            }
            if tx.is_closed() {
                return Ok(());
            }
            if !changed {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        let c = parse_cursor("0:12,3:40").unwrap();
        assert_eq!(format_cursor(&c), "0:12,3:40");
        assert_eq!(parse_cursor(""), Some(Cursor::new()));
        assert!(parse_cursor("0-12").is_none());
        assert!(parse_cursor("-1:3").is_none());
        assert!(parse_cursor("x:3").is_none());
    }
}
