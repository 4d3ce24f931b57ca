//! The routing decision for one ingest message: pure, no I/O.
//!
//! Order of checks (each failure is a dead letter with a reason code):
//! department known → header count → envelope headers well-formed → dataset
//! identified (`ce_type`, a structured CloudEvent's `type`, or the Avro schema
//! id) → publisher owns it → value decodes and passes the rules (the engine)
//! → the message key, if set, is the record's key.

use std::borrow::Cow;

use govbus_catalog::time;
use govbus_kafka::headers as h;
use govbus_kafka::topics::Topics;
use govbus_validate::{Accepted, Context, DatasetRef, Engine, Reason, Rejection};
use rdkafka::message::{BorrowedHeaders, Header, Headers, OwnedHeaders};
use serde_json::Value as Json;

/// Most headers a message may carry.
pub const MAX_HEADERS: usize = 64;
/// Longest accepted `ce_id`.
pub use govbus_validate::envelope::MAX_ID_LEN;

/// One message read from `ingest.<dept>` (not `Debug`: rdkafka's header
/// list is not, and a record is never printed).
#[derive(Clone, Copy)]
#[allow(missing_debug_implementations)]
pub struct Incoming<'a> {
    /// `ingest.<dept>`.
    pub topic: &'a str,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// The broker or producer timestamp, ms since the epoch.
    pub timestamp_ms: Option<i64>,
    /// Message key.
    pub key: Option<&'a [u8]>,
    /// Message value.
    pub value: Option<&'a [u8]>,
    /// Message headers.
    pub headers: Option<&'a BorrowedHeaders>,
}

/// Where in the pipeline a record was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Topic, headers, dataset identification, ownership.
    Gate,
    /// Framing, Avro or JSON decoding.
    Decode,
    /// Quality rules and key extraction.
    Rules,
}

impl Stage {
    /// `gate`, `decode` or `rules`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Gate => "gate",
            Stage::Decode => "decode",
            Stage::Rules => "rules",
        }
    }

    /// The stage a reason code belongs to.
    pub fn of(reason: Reason) -> Stage {
        use Reason::*;
        match reason {
            DepartmentUnknown | DatasetMissing | DatasetUnknown | PublisherNotOwner
            | EnvelopeInvalid | HeadersTooMany | KeyMismatch | SchemaUnknown
            | SchemaWrongDataset => Stage::Gate,
            KeyMissing | RequiredMissing | LengthOutOfRange | PatternMismatch | ValueNotAllowed
            | RangeOutOfBounds | DecimalScale | DecimalPrecision | DateInFuture
            | DateOutOfRange | FieldOrder | ResidentIdLength | ResidentIdFormat
            | ResidentIdRegion | ResidentIdBirthDate | ResidentIdChecksum | CreditCodeFormat
            | CreditCodeChecksum | MobilePhoneInvalid => Stage::Rules,
            _ => Stage::Decode,
        }
    }
}

pub use govbus_validate::envelope::Op;

/// A record for `data.<dataset>`.
#[derive(Debug)]
pub struct Routed<'e> {
    /// The dataset (and its canonical topic).
    pub dataset: DatasetRef<'e>,
    /// The record key.
    pub key: String,
    /// Canonical Confluent-framed Avro; `None` for a delete (tombstone).
    pub value: Option<Vec<u8>>,
    /// CloudEvents headers.
    pub headers: OwnedHeaders,
    /// `ce_time` in ms, for the record-age metric.
    pub event_time_ms: i64,
}

/// A record for `dlq.<dept>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The publishing department (from the topic).
    pub department: String,
    /// The dataset, once identified.
    pub dataset: Option<String>,
    /// Why.
    pub reason: Reason,
    /// Which field, when the reason concerns one.
    pub field: Option<String>,
    /// Where in the pipeline.
    pub stage: Stage,
    /// Human-readable detail; never a value from the record.
    pub detail: Cow<'static, str>,
}

/// The routing decision.
#[derive(Debug)]
pub enum Decision<'e> {
    /// Valid: to `data.<dataset>`.
    Route(Box<Routed<'e>>),
    /// Invalid: to `dlq.<dept>`.
    Reject(DeadLetter),
}

struct Envelope<'a> {
    dataset: Option<Cow<'a, str>>,
    op: Op,
    id: Option<Cow<'a, str>>,
    time_ms: Option<i64>,
    source_version: Option<u64>,
    traceparent: Option<&'a [u8]>,
    content_type: Option<&'a str>,
}

fn header_str<'a>(value: Option<&'a [u8]>, name: &'static str) -> Result<&'a str, Rejection> {
    value
        .and_then(|v| std::str::from_utf8(v).ok())
        .ok_or_else(|| envelope_error(name, "is not UTF-8 text"))
}

use govbus_validate::envelope;

fn envelope_error(field: &'static str, detail: &'static str) -> Rejection {
    envelope::error(field, detail)
}

fn read_headers(headers: Option<&BorrowedHeaders>) -> Result<Envelope<'_>, Rejection> {
    let mut env = Envelope {
        dataset: None,
        op: Op::Create,
        id: None,
        time_ms: None,
        source_version: None,
        traceparent: None,
        content_type: None,
    };
    let Some(headers) = headers else {
        return Ok(env);
    };
    for (name, value) in h::raw(headers) {
        let Ok(name) = std::str::from_utf8(name) else {
            return Err(envelope_error("headers", "a header name is not UTF-8 text"));
        };
        let header = Header { key: name, value };
        match header.key {
            h::CE_TYPE => env.dataset = Some(Cow::Borrowed(header_str(header.value, h::CE_TYPE)?)),
            h::CE_OP => {
                let s = header_str(header.value, h::CE_OP)?;
                env.op = envelope::op(s, h::CE_OP)?;
            }
            h::CE_ID => {
                let s = header_str(header.value, h::CE_ID)?;
                envelope::id(s, h::CE_ID)?;
                env.id = Some(Cow::Borrowed(s));
            }
            h::CE_TIME => {
                env.time_ms = Some(envelope::time_ms(
                    header_str(header.value, h::CE_TIME)?,
                    h::CE_TIME,
                )?)
            }
            h::CE_SOURCEVERSION => {
                env.source_version = Some(envelope::source_version(
                    header_str(header.value, h::CE_SOURCEVERSION)?,
                    h::CE_SOURCEVERSION,
                )?)
            }
            h::CONTENT_TYPE => env.content_type = Some(header_str(header.value, h::CONTENT_TYPE)?),
            // A malformed trace context is dropped, not fatal: tracing is best effort.
            h::TRACEPARENT => env.traceparent = header.value.filter(|v| h::is_traceparent(v)),
            _ => {}
        }
    }
    Ok(env)
}

/// A CloudEvents structured-mode envelope's attributes override the headers;
/// its `data` is the record.
fn read_structured<'a>(env: &mut Envelope<'a>, value: &[u8]) -> Result<Json, Rejection> {
    let parsed: Json = govbus_validate::parse_json(value).map_err(|e| Rejection {
        reason: Reason::JsonInvalid,
        field: None,
        detail: Cow::Owned(format!("the CloudEvent is not valid JSON: {e}")),
    })?;
    let Json::Object(mut ce) = parsed else {
        return Err(envelope_error(
            "specversion",
            "a structured CloudEvent is a JSON object",
        ));
    };
    let a = envelope::attributes(&ce, true)?;
    if let Some(t) = a.dataset {
        env.dataset = Some(Cow::Owned(t));
    }
    if let Some(id) = a.id {
        env.id = Some(Cow::Owned(id));
    }
    if let Some((_, ms)) = a.time {
        env.time_ms = Some(ms);
    }
    if let Some(op) = a.op {
        env.op = op;
    }
    if let Some(v) = a.source_version {
        env.source_version = Some(v);
    }
    Ok(ce.remove("data").unwrap_or(Json::Null))
}

/// Decides where one ingest message goes. A routed record carries the
/// `traceparent` it arrived with.
pub fn decide<'e>(
    engine: &'e Engine,
    topics: &Topics,
    msg: &Incoming<'_>,
    ctx: &Context,
) -> Decision<'e> {
    decide_traced(engine, topics, msg, ctx, None)
}

/// [`decide`], with the router's spans for the batch: a routed record
/// carries its span's `traceparent` instead (`govbus_trace::Batch::continue_from`).
pub fn decide_traced<'e>(
    engine: &'e Engine,
    topics: &Topics,
    msg: &Incoming<'_>,
    ctx: &Context,
    trace: Option<&govbus_trace::Batch>,
) -> Decision<'e> {
    let department = topics.department_of_ingest(msg.topic).unwrap_or(msg.topic);
    match decide_inner(engine, department, msg, ctx, trace) {
        Ok(routed) => {
            // Written as it is, it must fit, and leave a sink room to
            // dead-letter it: librdkafka refuses a larger record on every
            // attempt, which would stall the partition for good.
            let size = govbus_kafka::limits::record_bytes(
                Some(routed.key.as_bytes()),
                routed.value.as_deref(),
                Some(&routed.headers),
            );
            if size > govbus_kafka::limits::MAX_ROUTED_BYTES {
                return Decision::Reject(DeadLetter {
                    department: department.to_owned(),
                    dataset: Some(routed.dataset.name().to_owned()),
                    reason: Reason::MessageTooLarge,
                    field: None,
                    stage: Stage::of(Reason::MessageTooLarge),
                    detail: Cow::Owned(format!(
                        "the canonical record is {size} bytes with its key and headers; the bus writes at most {}",
                        govbus_kafka::limits::MAX_ROUTED_BYTES
                    )),
                });
            }
            Decision::Route(Box::new(routed))
        }
        Err((dataset, r)) => Decision::Reject(DeadLetter {
            department: department.to_owned(),
            dataset,
            reason: r.reason,
            field: r.field,
            stage: Stage::of(r.reason),
            detail: r.detail,
        }),
    }
}

type Failure = (Option<String>, Rejection);

fn decide_inner<'e>(
    engine: &'e Engine,
    department: &str,
    msg: &Incoming<'_>,
    ctx: &Context,
    trace: Option<&govbus_trace::Batch>,
) -> Result<Routed<'e>, Failure> {
    let fail = |dataset: Option<&str>, r: Rejection| (dataset.map(str::to_owned), r);
    if !engine.has_department(department) {
        return Err(fail(
            None,
            Rejection {
                reason: Reason::DepartmentUnknown,
                field: None,
                detail: Cow::Borrowed("no such department in the catalog"),
            },
        ));
    }
    if let Some(headers) = msg.headers {
        if headers.count() > MAX_HEADERS {
            let detail = format!("{} headers; the limit is {MAX_HEADERS}", headers.count());
            return Err(fail(
                None,
                Rejection {
                    reason: Reason::HeadersTooMany,
                    field: None,
                    detail: Cow::Owned(detail),
                },
            ));
        }
    }
    let mut env = read_headers(msg.headers).map_err(|r| fail(None, r))?;
    let value = msg.value.unwrap_or_default();
    let structured = env
        .content_type
        .is_some_and(|c| c.starts_with("application/cloudevents+json"));
    let json_record = if structured {
        Some(read_structured(&mut env, value).map_err(|r| fail(None, r))?)
    } else {
        None
    };
    let is_avro = json_record.is_none()
        && match env.content_type {
            Some(c) if c.contains("json") => false,
            Some(_) => true,
            None => value.first() == Some(&0),
        };

    // Identify the dataset.
    let dataset = match (&env.dataset, is_avro && value.len() >= 5) {
        (Some(name), _) => engine.dataset(name).ok_or_else(|| {
            fail(
                None,
                Rejection {
                    reason: Reason::DatasetUnknown,
                    field: Some(h::CE_TYPE.to_owned()),
                    detail: Cow::Borrowed("no such dataset in the catalog"),
                },
            )
        })?,
        (None, true) => {
            let id = govbus_catalog::SchemaId(u32::from_be_bytes([
                value[1], value[2], value[3], value[4],
            ]));
            engine.dataset_of(id).ok_or_else(|| {
                fail(
                    None,
                    Rejection {
                        reason: Reason::SchemaUnknown,
                        field: None,
                        detail: Cow::Owned(format!("schema id {id} is not in the catalog")),
                    },
                )
            })?
        }
        (None, false) => {
            return Err(fail(
                None,
                Rejection {
                    reason: Reason::DatasetMissing,
                    field: Some(h::CE_TYPE.to_owned()),
                    detail: Cow::Borrowed("set the ce_type header to the dataset name"),
                },
            ))
        }
    };
    let name = Some(dataset.name());
    if dataset.owner() != department {
        return Err(fail(
            name,
            Rejection {
                reason: Reason::PublisherNotOwner,
                field: None,
                detail: Cow::Owned(format!(
                    "{} is published only by {}",
                    dataset.name(),
                    dataset.owner()
                )),
            },
        ));
    }

    let message_key = msg
        .key
        .and_then(|k| std::str::from_utf8(k).ok())
        .filter(|k| !k.is_empty());
    let (key, canonical, schema_id) = if env.op == Op::Delete {
        let key = message_key.ok_or_else(|| {
            fail(
                name,
                Rejection {
                    reason: Reason::KeyMissing,
                    field: None,
                    detail: Cow::Borrowed("a delete needs the record key as the message key"),
                },
            )
        })?;
        (key.to_owned(), None, None)
    } else {
        let accepted: Accepted = match (&json_record, is_avro) {
            (Some(record), _) => dataset.validate_json_value(record, ctx),
            (None, true) => dataset.validate_avro(value, ctx),
            (None, false) => dataset.validate_json(value, ctx),
        }
        .map_err(|r| fail(name, r))?;
        if let Some(k) = message_key {
            if !k.eq_ignore_ascii_case(&accepted.key) {
                return Err(fail(
                    name,
                    Rejection {
                        reason: Reason::KeyMismatch,
                        field: None,
                        detail: Cow::Borrowed("the message key is not the record's key"),
                    },
                ));
            }
        }
        (accepted.key, Some(accepted.value), Some(accepted.schema_id))
    };

    let id: Cow<'_, str> = env
        .id
        .clone()
        .unwrap_or_else(|| Cow::Owned(format!("{}-{}-{}", msg.topic, msg.partition, msg.offset)));
    let event_time_ms = env.time_ms.or(msg.timestamp_ms).unwrap_or(ctx.now_millis);
    // Without a source version, the ingest offset is one: it grows per partition,
    // and a key always maps to the same ingest partition.
    let source_version = env
        .source_version
        .unwrap_or(u64::try_from(msg.offset).unwrap_or(0));
    let source = format!("/departments/{department}");
    let time = time::format_rfc3339_millis(event_time_ms);
    let version = source_version.to_string();
    let schema = schema_id.map(|s| s.0.to_string());
    let mut headers = OwnedHeaders::new_with_capacity(12)
        .insert(Header {
            key: h::CE_SPECVERSION,
            value: Some("1.0"),
        })
        .insert(Header {
            key: h::CE_ID,
            value: Some(id.as_ref()),
        })
        .insert(Header {
            key: h::CE_SOURCE,
            value: Some(source.as_str()),
        })
        .insert(Header {
            key: h::CE_TYPE,
            value: Some(dataset.name()),
        })
        .insert(Header {
            key: h::CE_SUBJECT,
            value: Some(key.as_str()),
        })
        .insert(Header {
            key: h::CE_TIME,
            value: Some(time.as_str()),
        })
        .insert(Header {
            key: h::CONTENT_TYPE,
            value: Some(h::AVRO_CONTENT_TYPE),
        })
        .insert(Header {
            key: h::CE_OP,
            value: Some(env.op.as_str()),
        })
        .insert(Header {
            key: h::CE_SOURCEVERSION,
            value: Some(version.as_str()),
        });
    if let Some(s) = &schema {
        headers = headers.insert(Header {
            key: h::CE_SCHEMAID,
            value: Some(s.as_str()),
        });
    }
    let continued = trace.and_then(|t| t.continue_from(env.traceparent));
    if let Some(tp) = continued.as_ref().map(|t| &t[..]).or(env.traceparent) {
        headers = headers.insert(Header {
            key: h::TRACEPARENT,
            value: Some(tp),
        });
    }
    Ok(Routed {
        dataset,
        key,
        value: canonical,
        headers,
        event_time_ms,
    })
}
