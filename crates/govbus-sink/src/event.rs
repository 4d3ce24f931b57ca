//! What a subscriber receives: one change event, after the field policy, as
//! a CloudEvent (structured JSON).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use govbus_catalog::{Catalog, SchemaId};
use govbus_kafka::headers as h;
use rdkafka::message::{BorrowedMessage, Message};
use serde_json::{Map, Value as Json};

use crate::decode::{self, DecodeError};
use crate::policy::Policy;

/// A canonical record, owned, as read from `data.<dataset>`.
#[derive(Debug, Clone)]
pub struct Canonical {
    /// Partition of `data.<dataset>`.
    pub partition: i32,
    /// Offset in it.
    pub offset: i64,
    /// Kafka timestamp (when the router wrote it).
    pub timestamp_ms: i64,
    /// The framed Avro value; `None` for a delete.
    pub value: Option<Vec<u8>>,
    /// The Kafka key.
    pub key: Option<Vec<u8>>,
    /// Every header, for the subscriber DLQ.
    pub headers: Headers,
}

/// A record's headers, owned, in one buffer (names and values back to
/// back): two allocations per record instead of two per header. An absent
/// value is kept as an empty one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    bytes: Vec<u8>,
    /// Where each header's name ends and its value ends in `bytes`.
    ends: Vec<(usize, usize)>,
}

impl Headers {
    /// Adds a header after the others.
    pub fn push(&mut self, name: &str, value: &[u8]) {
        self.bytes.extend_from_slice(name.as_bytes());
        let name_end = self.bytes.len();
        self.bytes.extend_from_slice(value);
        self.ends.push((name_end, self.bytes.len()));
    }

    /// Every header, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&(name_end, end)| {
            // Only `push` fills `bytes`, from a `&str`.
            let name = std::str::from_utf8(&self.bytes[start..name_end]).unwrap_or("");
            let value = &self.bytes[name_end..end];
            start = end;
            (name, value)
        })
    }

    /// The first header `name`'s value.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        let mut start = 0;
        for &(name_end, end) in &self.ends {
            if &self.bytes[start..name_end] == name.as_bytes() {
                return Some(&self.bytes[name_end..end]);
            }
            start = end;
        }
        None
    }

    /// How many headers there are.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

impl<N: AsRef<str>, V: AsRef<[u8]>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Headers {
        let mut headers = Headers::default();
        for (name, value) in iter {
            headers.push(name.as_ref(), value.as_ref());
        }
        headers
    }
}

impl Canonical {
    /// The record's event id (`ce_id`); one made of its position when it
    /// has none (a record written to the topic without the router), the
    /// same wherever it is named — delivered, dead-lettered, on the ledger.
    pub fn event_id(&self, dataset: &str) -> String {
        match self.header(h::CE_ID) {
            "" => format!("govbus-{dataset}-{}-{}", self.partition, self.offset),
            id => id.to_owned(),
        }
    }

    /// Copies a consumed message.
    pub fn from_message(m: &BorrowedMessage<'_>) -> Canonical {
        let headers = m
            .headers()
            .map(|hs| {
                h::named(hs)
                    .0
                    .into_iter()
                    .map(|(name, value)| (name, value.unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default();
        Canonical {
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis().unwrap_or(0),
            value: m.payload().map(<[u8]>::to_vec),
            key: m.key().map(<[u8]>::to_vec),
            headers,
        }
    }

    /// The well-formed `traceparent` the record carries, if any.
    pub fn traceparent(&self) -> Option<govbus_trace::Traceparent> {
        let v = self.headers.get(h::TRACEPARENT)?;
        if !h::is_traceparent(v) {
            return None;
        }
        v.try_into().ok()
    }

    /// The first header `name` as UTF-8, or `""`.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| std::str::from_utf8(v).ok())
            .unwrap_or("")
    }
}

/// One event as delivered.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// `ce_id` of the canonical record: stable across retries and replays.
    pub id: String,
    /// `/departments/<owner>`.
    pub source: String,
    /// The dataset.
    pub dataset: String,
    /// The record key under the policy's treatments.
    pub subject: String,
    /// When the change happened at the source.
    pub time: String,
    /// `create`, `update`, `delete`, `snapshot`, or [`OUT_OF_SCOPE`]
    /// (only in [`Prepared::Filtered`]).
    pub op: String,
    /// Per-key version at the source.
    pub source_version: u64,
    /// The record after the policy; `None` for a delete (or out of scope).
    pub data: Option<Map<String, Json>>,
    /// Partition of `data.<dataset>`.
    pub partition: i32,
    /// Offset in it.
    pub offset: i64,
    /// Kafka timestamp of the canonical record.
    pub timestamp_ms: i64,
    /// The W3C trace context the subscriber gets (CloudEvents' distributed
    /// tracing extension): the sink's span for it while tracing is on,
    /// otherwise the one the canonical record carried.
    pub traceparent: Option<govbus_trace::Traceparent>,
}

/// A sink's spans for one batch of `sub` (`None` while tracing is off).
pub fn sink_spans(sub: &govbus_catalog::Subscription) -> Option<govbus_trace::Batch> {
    govbus_trace::Batch::start(
        "govbus.sink deliver",
        govbus_trace::Kind::Consumer,
        vec![
            govbus_trace::Attribute::new("govbus.stage", "sink"),
            govbus_trace::Attribute::new("govbus.subscription", sub.id.clone()),
            govbus_trace::Attribute::new("govbus.sink", sub.sink.kind()),
            govbus_trace::Attribute::new("govbus.dataset", sub.dataset.clone()),
        ],
    )
}

impl Delivery {
    /// Continues this delivery's trace in the sink's `spans`: it leaves with
    /// its span's context.
    pub fn continue_in(&mut self, spans: Option<&govbus_trace::Batch>) {
        if let Some(tp) =
            spans.and_then(|t| t.continue_from(self.traceparent.as_ref().map(|tp| &tp[..])))
        {
            self.traceparent = Some(tp);
        }
    }

    /// The CloudEvents structured-mode JSON (one element of a batch).
    /// Extensions: `op`, `sourceversion`, `policyversion`.
    pub fn cloudevent(&self, policy_version: &str) -> Json {
        serde_json::to_value(self.cloudevent_ref(policy_version)).unwrap_or(Json::Null)
    }

    /// [`Delivery::cloudevent`] borrowed from the delivery, to serialize
    /// straight into a body, a file or a stream (no `Value` tree, no copy of
    /// `data`): the same bytes as serializing `cloudevent`.
    pub fn cloudevent_ref<'a>(&'a self, policy_version: &'a str) -> CloudEvent<'a> {
        CloudEvent {
            data: self.data.as_ref(),
            datacontenttype: "application/json",
            id: &self.id,
            op: &self.op,
            policyversion: policy_version,
            source: &self.source,
            sourceversion: self.source_version,
            specversion: "1.0",
            subject: &self.subject,
            time: &self.time,
            traceparent: self.traceparent.as_ref().map(govbus_trace::as_str),
            r#type: &self.dataset,
        }
    }
}

/// A delivery as a structured-mode CloudEvent, borrowed
/// ([`Delivery::cloudevent_ref`]). Members are declared in the order a JSON
/// map writes them (alphabetical), so its bytes are those of the `Value`.
#[derive(Debug, serde::Serialize)]
pub struct CloudEvent<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a Map<String, Json>>,
    datacontenttype: &'static str,
    id: &'a str,
    op: &'a str,
    policyversion: &'a str,
    source: &'a str,
    /// A string in the event (a CloudEvents extension attribute).
    #[serde(serialize_with = "as_decimal_string")]
    sourceversion: u64,
    specversion: &'static str,
    subject: &'a str,
    /// Optional, and an empty one is not a timestamp (a record written to
    /// the topic without `ce_time`, not by the router).
    #[serde(skip_serializing_if = "str::is_empty")]
    time: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<&'a str>,
    #[serde(rename = "type")]
    r#type: &'a str,
}

fn as_decimal_string<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// What the policy made of a canonical record.
#[derive(Debug)]
pub enum Prepared {
    /// Deliver it.
    Deliver(Delivery),
    /// The row filter excludes it (its offset still moves). The delivery,
    /// op [`OUT_OF_SCOPE`] and no data, is for a sink that keeps rows: it
    /// removes the key's row if it holds one, and tells nobody.
    Filtered(Delivery),
    /// The value does not decode with the catalog the sink has: it goes to
    /// `dlq.sub.<id>` with this reason.
    Undecodable(DecodeError),
}

/// How long a record under a schema id its catalog does not have yet waits
/// for the catalog to learn it before it is dead-lettered (delivery sinks)
/// or announced as skipped (live streams).
pub const SCHEMA_WAIT: Duration = Duration::from_secs(10);

/// How often a waiting record's catalog is looked at again.
pub const SCHEMA_RECHECK: Duration = Duration::from_millis(250);

/// The one rule, for delivery sinks and live streams alike, for records
/// under a schema id the catalog does not have yet.
///
/// The router writes only under ids its catalog has, and a sink's catalog
/// may follow a moment later (it reloads every second; a schema registered
/// through the registry arrives by the schema log): such a record holds its
/// place — a delivery sink's batch, a live-stream client's position — for up
/// to [`SCHEMA_WAIT`], and goes on once it decodes. An id waited for in vain
/// is not waited for again until the catalog changes, so a topic full of
/// records under a foreign id costs one wait, not one per record.
#[derive(Debug)]
pub struct SchemaWait {
    wait: Duration,
    since: Option<Instant>,
    given_up: HashSet<SchemaId>,
}

impl Default for SchemaWait {
    fn default() -> SchemaWait {
        SchemaWait::new(SCHEMA_WAIT)
    }
}

impl SchemaWait {
    /// A rule that waits `wait` per unknown id ([`SCHEMA_WAIT`] by default).
    pub fn new(wait: Duration) -> SchemaWait {
        SchemaWait {
            wait,
            since: None,
            given_up: HashSet::new(),
        }
    }

    /// Whether records under `id` are past waiting for (until the catalog
    /// changes).
    pub fn given_up(&self, id: &SchemaId) -> bool {
        self.given_up.contains(id)
    }

    /// The records at the head name `ids` (none given up): `true` while
    /// they are still to wait (look again after [`SCHEMA_RECHECK`]); once
    /// the wait is over, `false`, and the ids are given up. `started` runs
    /// when a wait begins (the operator's log line).
    pub fn hold(&mut self, ids: &[SchemaId], started: impl FnOnce()) -> bool {
        let since = *self.since.get_or_insert_with(|| {
            started();
            Instant::now()
        });
        if since.elapsed() < self.wait {
            return true;
        }
        self.given_up.extend(ids.iter().copied());
        self.since = None;
        false
    }

    /// The head decoded (or was given up): the next unknown id waits anew.
    pub fn settled(&mut self) {
        self.since = None;
    }

    /// The catalog changed: an id given up on may decode now.
    pub fn catalog_changed(&mut self) {
        self.given_up.clear();
    }
}

/// The `op` of a change that leaves a record outside a grant's row filter
/// (never sent to a subscriber; see [`prepare`]).
pub const OUT_OF_SCOPE: &str = "out_of_scope";

/// Applies `policy` to a canonical record.
///
/// A record outside the row filter is [`Prepared::Filtered`]: event sinks
/// drop it (telling a subscriber about every change outside its filter
/// would tell it the filtered value — "outside `cause != accident`" is
/// "an accident" — and keys it may never see); the PostgreSQL sink uses it
/// to remove a row it holds. Only the fields the policy reads are decoded.
pub fn prepare(catalog: &Arc<Catalog>, policy: &Policy, c: &Canonical) -> Prepared {
    let key = c.header(h::CE_SUBJECT);
    let key = if key.is_empty() {
        c.key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
            .unwrap_or("")
    } else {
        key
    };
    let mut outside = false;
    let data = match &c.value {
        None => None,
        Some(v) => match decode::to_json_only(catalog, v, &|f| policy.reads(f)) {
            Ok(record) if policy.admits(&record) => Some(policy.apply(record)),
            Ok(_) => {
                outside = true;
                None
            }
            Err(e) => return Prepared::Undecodable(e),
        },
    };
    // Only an op the router could have written goes on (in its canonical
    // name): the live stream makes it the event's type, where a line break
    // would end the field (axum refuses it).
    let op = match c.header(h::CE_OP) {
        _ if outside => OUT_OF_SCOPE,
        "" => "",
        op => match govbus_validate::envelope::Op::parse(op) {
            Some(op) => op.as_str(),
            None => return Prepared::Undecodable(DecodeError::Op),
        },
    };
    // Absent: 0 (the oldest). Present, it must be a version a PostgreSQL
    // sink can store, or every attempt to store it would fail.
    let source_version = match c.header(h::CE_SOURCEVERSION) {
        "" => 0,
        v => match v.parse::<u64>() {
            Ok(v) if v <= i64::MAX as u64 => v,
            _ => return Prepared::Undecodable(DecodeError::SourceVersion),
        },
    };
    // The router writes every one of these; a record written to the topic
    // some other way may lack them, and a CloudEvent may not (`id` and
    // `source` are required, non-empty): the owner is the source, the
    // position the id.
    let dataset = &policy.subscription().dataset;
    let id = c.event_id(dataset);
    let source = match c.header(h::CE_SOURCE) {
        // The form the router writes.
        "" => format!(
            "/departments/{}",
            dataset.split('.').next().unwrap_or(dataset)
        ),
        s => s.to_owned(),
    };
    let delivery = Delivery {
        id,
        source,
        dataset: dataset.clone(),
        subject: policy.subject(key),
        time: c.header(h::CE_TIME).to_owned(),
        op: if op.is_empty() {
            if data.is_some() { "update" } else { "delete" }.to_owned()
        } else {
            op.to_owned()
        },
        source_version,
        data,
        partition: c.partition,
        offset: c.offset,
        timestamp_ms: c.timestamp_ms,
        // Only while tracing is on (the sink then replaces it with its
        // span): with tracing off a subscriber gets no publisher's context.
        traceparent: if govbus_trace::enabled() {
            c.traceparent()
        } else {
            None
        },
    };
    if outside {
        Prepared::Filtered(delivery)
    } else {
        Prepared::Deliver(delivery)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The event as it was built before `CloudEvent`: a `Value` map.
    fn as_value_tree(d: &Delivery, policy_version: &str) -> Json {
        let mut ce = json!({
            "specversion": "1.0",
            "id": d.id,
            "source": d.source,
            "type": d.dataset,
            "subject": d.subject,
            "time": d.time,
            "datacontenttype": "application/json",
            "op": d.op,
            "sourceversion": d.source_version.to_string(),
            "policyversion": policy_version,
        });
        if let Json::Object(o) = &mut ce {
            if d.time.is_empty() {
                o.remove("time");
            }
            if let Some(tp) = &d.traceparent {
                o.insert("traceparent".into(), govbus_trace::as_str(tp).into());
            }
            if let Some(data) = &d.data {
                o.insert("data".into(), Json::Object(data.clone()));
            }
        }
        ce
    }

    #[test]
    fn a_cloudevent_written_from_the_delivery_is_the_bytes_of_the_value_tree() {
        let data: Map<String, Json> = serde_json::from_str(
            r#"{"amount":"3251.5000","n":12345678901234567,"name":"张*\"\u0001","z":null,"nested":{"b":[1,2.5e3],"a":true}}"#,
        )
        .unwrap_or_default();
        let tp = *b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let full = Delivery {
            id: "ev-1".into(),
            source: "/departments/hrss".into(),
            dataset: "hrss.pension_payment".into(),
            subject: "P\"1\u{7f}".into(),
            time: "2026-11-30T08:00:00.000Z".into(),
            op: "update".into(),
            source_version: u64::MAX,
            data: Some(data),
            partition: 0,
            offset: 0,
            timestamp_ms: 0,
            traceparent: Some(tp),
        };
        let bare = Delivery {
            time: String::new(),
            data: None,
            traceparent: None,
            op: "delete".into(),
            source_version: 0,
            ..full.clone()
        };
        for d in [&full, &bare] {
            let typed = serde_json::to_vec(&d.cloudevent_ref("pv-2")).unwrap_or_default();
            let tree = serde_json::to_vec(&as_value_tree(d, "pv-2")).unwrap_or_default();
            assert_eq!(
                String::from_utf8_lossy(&typed),
                String::from_utf8_lossy(&tree)
            );
            assert_eq!(d.cloudevent("pv-2"), as_value_tree(d, "pv-2"));
        }
    }

    #[test]
    fn headers_keep_every_name_and_value_in_order() {
        let pairs: [(&str, &[u8]); 4] = [
            ("ce_id", b"ev-1"),
            ("empty", b""),
            ("ce_id", b"second"),
            ("bytes", &[0xff, 0, 1]),
        ];
        let headers: Headers = pairs.into_iter().collect();
        assert_eq!(headers.len(), 4);
        assert_eq!(headers.iter().collect::<Vec<_>>(), pairs);
        // A repeated name: the first one counts.
        assert_eq!(headers.get("ce_id"), Some(&b"ev-1"[..]));
        assert_eq!(headers.get("empty"), Some(&b""[..]));
        assert_eq!(headers.get("missing"), None);
        assert!(Headers::default().is_empty());
    }

    #[test]
    fn an_unknown_schema_id_is_waited_for_once_until_the_catalog_changes() {
        let (a, b) = (SchemaId(900), SchemaId(901));
        // Long enough that two back-to-back calls on a loaded machine stay
        // inside it.
        let mut w = SchemaWait::new(Duration::from_millis(500));
        let mut started = 0;
        // The wait starts once, and holds while it lasts.
        assert!(w.hold(&[a], || started += 1));
        assert!(w.hold(&[a], || started += 1));
        assert_eq!(started, 1);
        std::thread::sleep(Duration::from_millis(520));
        // Past it: given up, and never held again for that id.
        assert!(!w.hold(&[a, b], || started += 1));
        assert!(w.given_up(&a) && w.given_up(&b));
        // A record that decodes ends a wait; the next unknown id waits anew.
        let c = SchemaId(902);
        assert!(w.hold(&[c], || started += 1));
        w.settled();
        assert!(w.hold(&[c], || started += 1));
        assert_eq!(started, 3);
        // A new catalog may know the ids given up on: they wait again.
        w.catalog_changed();
        assert!(!w.given_up(&a));
    }
}
