//! The publish endpoint.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use govbus_kafka::headers as h;
use govbus_validate::envelope;
use govbus_validate::{Context, Reason, Rejection};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use serde_json::{json, Value as Json};

use crate::{idempotency, Gateway};

fn problem(status: StatusCode, error: &str, detail: impl Into<String>) -> Response {
    let body = json!({"error": error, "detail": detail.into()}).to_string();
    (status, [("content-type", "application/json")], body).into_response()
}

/// One record of a request, with the CloudEvents attributes that came with
/// it — checked by [`envelope::attributes`], the router's own function, so
/// that a record the gateway accepts is never dead-lettered by the router.
struct Item {
    record: Result<Json, Rejection>,
    attributes: envelope::Attributes,
}

fn plain(record: Json) -> Item {
    Item {
        record: Ok(record),
        attributes: envelope::Attributes::default(),
    }
}

/// One event of a CloudEvents batch: its checked attributes and its `data`.
fn event(dataset: &str, e: Json) -> Item {
    let Json::Object(mut e) = e else {
        return plain(Json::Null);
    };
    let checked = envelope::attributes(&e, false).and_then(|a| match &a.dataset {
        Some(t) if t != dataset => Err(envelope::error(
            "type",
            "must be the dataset named in the path (or absent)",
        )),
        _ => Ok(a),
    });
    match checked {
        Ok(attributes) => Item {
            record: Ok(e.remove("data").unwrap_or(Json::Null)),
            attributes,
        },
        Err(r) => Item {
            record: Err(r),
            attributes: envelope::Attributes::default(),
        },
    }
}

/// Why text is not a JSON document the gateway takes: where, and what
/// (never an excerpt of the input).
fn not_json(e: &govbus_validate::JsonError) -> String {
    match e {
        govbus_validate::JsonError::Syntax { line, column, .. } => {
            format!("line {line} column {column}: not valid JSON")
        }
        duplicate => duplicate.to_string(),
    }
}

/// Splits the body by content type: a JSON array (or one object), NDJSON
/// (each line on its own, a bad line rejects only that record), or a
/// CloudEvents batch (`application/cloudevents-batch+json`).
fn items(content_type: &str, dataset: &str, body: &[u8]) -> Result<Vec<Item>, Box<Response>> {
    let bad = |e: govbus_validate::JsonError| {
        problem(StatusCode::BAD_REQUEST, "malformed_json", not_json(&e))
    };
    if content_type.starts_with("application/x-ndjson")
        || content_type.starts_with("application/jsonl")
    {
        return Ok(body
            .split(|b| *b == b'\n')
            .filter(|l| l.iter().any(|b| !b.is_ascii_whitespace()))
            .map(|l| Item {
                record: govbus_validate::parse_json(l).map_err(|e| Rejection {
                    reason: Reason::JsonInvalid,
                    field: None,
                    detail: not_json(&e).into(),
                }),
                attributes: envelope::Attributes::default(),
            })
            .collect());
    }
    let parsed: Json = govbus_validate::parse_json(body).map_err(bad)?;
    // The document promises objects; anything else is a malformed request, not a record.
    let not_object = |what: &str, i: usize, v: &Json| {
        Box::new(problem(
            StatusCode::BAD_REQUEST,
            "malformed_batch",
            format!(
                "{what} {i} is {}, not a JSON object",
                match v {
                    Json::Null => "null",
                    Json::Bool(_) => "a boolean",
                    Json::Number(_) => "a number",
                    Json::String(_) => "a string",
                    Json::Array(_) => "an array",
                    Json::Object(_) => "an object",
                }
            ),
        ))
    };
    let elements: &[Json] = match &parsed {
        Json::Array(a) => a,
        other => std::slice::from_ref(other),
    };
    if let Some((i, v)) = elements.iter().enumerate().find(|(_, v)| !v.is_object()) {
        let what = if content_type.starts_with("application/cloudevents-batch+json") {
            "event"
        } else {
            "record"
        };
        return Err(not_object(what, i, v));
    }
    if content_type.starts_with("application/cloudevents-batch+json") {
        let Json::Array(events) = parsed else {
            return Err(Box::new(problem(
                StatusCode::BAD_REQUEST,
                "malformed_batch",
                "a CloudEvents batch is a JSON array of events",
            )));
        };
        return Ok(events.into_iter().map(|e| event(dataset, e)).collect());
    }
    Ok(match parsed {
        Json::Array(records) => records.into_iter().map(plain).collect(),
        one => vec![plain(one)],
    })
}

pub(crate) async fn ready(State(g): State<Arc<Gateway>>) -> Response {
    use rdkafka::producer::Producer;
    let ok = tokio::task::spawn_blocking(move || {
        g.producer
            .client()
            .fetch_metadata(None, std::time::Duration::from_secs(2))
            .is_ok()
    })
    .await
    .unwrap_or(false);
    if ok {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not connected to the broker\n",
        )
            .into_response()
    }
}

pub(crate) async fn publish(
    State(g): State<Arc<Gateway>>,
    Path(dataset): Path<String>,
    peer: Option<axum::Extension<govbus_http::PeerCertificate>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        // The scheme is case-insensitive (RFC 7235).
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    // A token, when sent, decides; otherwise a verified client certificate
    // listed in the credentials (mTLS) does.
    let department = match (token, &peer) {
        (Some(t), _) => g.credentials.department(t),
        (None, Some(axum::Extension(cert))) => g.credentials.department_for_certificate(&cert.0),
        (None, None) => None,
    };
    let Some(department) = department else {
        g.metrics
            .requests
            .with_label_values(&["unknown", "401"])
            .inc();
        let mut r = problem(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send `Authorization: Bearer <your department's token>`, or connect with a client certificate listed in the gateway's credentials",
        );
        r.headers_mut().insert(
            "www-authenticate",
            axum::http::HeaderValue::from_static("Bearer"),
        );
        return r;
    };
    // A permit before the body is read: at most `max_concurrent` bodies are
    // buffered at once (the owner of an idempotency key keeps its permit
    // until it has answered, even if its client went away).
    let Ok(permit) = g.permits.clone().try_acquire_owned() else {
        g.metrics
            .requests
            .with_label_values(&[&department, "429"])
            .inc();
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("content-type", "application/json"), ("retry-after", "1")],
            json!({"error": "busy", "detail": "too many requests in progress; retry after 1 s"})
                .to_string(),
        )
            .into_response();
    };
    // The body is read only now, for a known department: an unauthenticated
    // client never gets a byte of its body buffered.
    let body = match read_body(&g, &headers, body).await {
        Ok(b) => b,
        Err(r) => {
            g.metrics
                .requests
                .with_label_values(&[&department, r.status().as_str()])
                .inc();
            return r;
        }
    };
    // The request's span, continuing the caller's `traceparent`; its
    // records carry the span's context (with tracing off, none).
    let incoming = headers
        .get(h::TRACEPARENT)
        .map(|v| v.as_bytes())
        .filter(|v| h::is_traceparent(v));
    let mut span = govbus_trace::Request::start(
        "govbus.gateway publish",
        incoming,
        vec![
            govbus_trace::Attribute::new("govbus.stage", "gateway"),
            govbus_trace::Attribute::new("govbus.department", department.clone()),
        ],
    );
    let trace: Option<Vec<u8>> = span.as_ref().map(|s| s.traceparent().to_vec());
    let response = publish_as(&g, permit, &department, &dataset, &headers, body, trace).await;
    g.metrics
        .requests
        .with_label_values(&[&department, response.status().as_str()])
        .inc();
    if let Some(s) = &mut span {
        s.answered(response.status().as_u16(), "the request was not published");
    }
    response
}

/// The request body, within the size and time limits: 413 and 408 as JSON
/// problems like every other answer.
async fn read_body(
    g: &Gateway,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<Bytes, Response> {
    let limit = g.config.max_body_bytes;
    let too_large = || {
        problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is over the limit of {limit} bytes; send fewer records per request"),
        )
    };
    let declared = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match tokio::time::timeout(g.config.body_timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) if is_length_limit(&e) => Err(too_large()),
        Ok(Err(_)) => Err(problem(
            StatusCode::BAD_REQUEST,
            "body_unreadable",
            "the body ended early or was malformed",
        )),
        Err(_) => Err(problem(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!("the body did not arrive within {:?}", g.config.body_timeout),
        )),
    }
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// Runs `publish_records` under the request's idempotency key, if any: a
/// replay answers from the kept answer, a concurrent duplicate waits for the
/// first one's answer, and a kept answer is durable before it is sent.
async fn publish_as(
    g: &Arc<Gateway>,
    permit: tokio::sync::OwnedSemaphorePermit,
    department: &str,
    dataset: &str,
    headers: &HeaderMap,
    body: Bytes,
    trace: Option<Vec<u8>>,
) -> Response {
    let engine = g.engine();
    let Some(ds) = engine.dataset(dataset) else {
        return problem(
            StatusCode::NOT_FOUND,
            "dataset_unknown",
            format!("`{dataset}` is not in the catalog"),
        );
    };
    if ds.owner() != department {
        return problem(
            StatusCode::FORBIDDEN,
            "publisher_not_owner",
            format!("{dataset} is published only by {}", ds.owner()),
        );
    }
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let mut keys = headers.get_all("idempotency-key").iter();
    let key = match (keys.next(), keys.next()) {
        (None, _) => None,
        (Some(_), Some(_)) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "idempotency_key_invalid",
                "send at most one Idempotency-Key header",
            )
        }
        (Some(v), None) => match idempotency::key_hash(department, v.as_bytes()) {
            Ok(k) => Some(k),
            Err(why) => return problem(StatusCode::BAD_REQUEST, "idempotency_key_invalid", why),
        },
    };
    let Some(key) = key else {
        let response =
            publish_records(g, department, ds, content_type, &body, trace.as_deref()).await;
        drop(permit);
        return response;
    };
    let request: [u8; 32] = {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(dataset.as_bytes());
        h.update([0]);
        h.update(content_type.as_bytes());
        h.update([0]);
        h.update(&body);
        h.finalize().into()
    };
    if !g.idempotency_loaded().await {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [("content-type", "application/json"), ("retry-after", "2")],
            json!({"error": "unavailable", "detail": "the gateway is still reading its idempotency keys from the broker; retry shortly"}).to_string(),
        )
            .into_response();
    }
    let deadline = tokio::time::Instant::now() + g.config.ack_timeout * 2;
    let reservation = loop {
        match g.idempotency.begin(key) {
            idempotency::Begin::Replay(a) => {
                if a.request != idempotency::hex(&request) {
                    return problem(
                        StatusCode::CONFLICT,
                        "idempotency_key_reused",
                        "this Idempotency-Key was used for a different request; use a new key per request",
                    );
                }
                let status = StatusCode::from_u16(a.status).unwrap_or(StatusCode::OK);
                return (
                    status,
                    [
                        ("content-type", "application/json"),
                        ("idempotent-replayed", "true"),
                    ],
                    a.body,
                )
                    .into_response();
            }
            idempotency::Begin::Wait(mut rx) => {
                // Woken when the first request answers or gives up; then ask again.
                if tokio::time::timeout_at(deadline, rx.changed())
                    .await
                    .is_err()
                {
                    return (
                        StatusCode::CONFLICT,
                        [("content-type", "application/json"), ("retry-after", "5")],
                        json!({"error": "idempotency_key_in_flight", "detail": "a request with this Idempotency-Key is still being processed; retry later"}).to_string(),
                    )
                        .into_response();
                }
            }
            idempotency::Begin::Owner(r) => break r,
        }
    };
    // The owner's publish runs to its end in a task of its own: a client that
    // disconnects drops this request's future, and with it the reservation
    // — its retry would then publish the same records again.
    let (g2, department, dataset, content_type) = (
        g.clone(),
        department.to_owned(),
        dataset.to_owned(),
        content_type.to_owned(),
    );
    let owner = tokio::spawn(async move {
        let _permit = permit;
        let engine = g2.engine();
        let Some(ds) = engine.dataset(&dataset) else {
            return problem(
                StatusCode::NOT_FOUND,
                "dataset_unknown",
                format!("`{dataset}` is not in the catalog"),
            );
        };
        let response =
            publish_records(&g2, &department, ds, &content_type, &body, trace.as_deref()).await;
        // Only a processed batch (200, whatever its records' fates) is kept: a
        // 4xx/5xx answer leaves the key free for a corrected retry.
        if response.status() != StatusCode::OK {
            return response;
        }
        let (parts, body) = response.into_parts();
        let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
            tracing::error!(message = "A publish answer could not be buffered; the caller was answered 500; its records were published.", dataset = %ds.name());
            return problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "could not buffer the answer; the records were published, and a retry publishes them again",
            );
        };
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let answer = idempotency::answer_now(parts.status.as_u16(), text, &request);
        g2.persist_answer(reservation.key(), &answer).await;
        reservation.finish(answer);
        Response::from_parts(parts, axum::body::Body::from(bytes))
    });
    owner.await.unwrap_or_else(|error| {
        tracing::error!(message = "A publish task failed (a bug); the caller was answered 500, and some of its records may be published.", %error);
        problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the publish task failed; some records may already be published, and a retry publishes them again",
        )
    })
}

/// Validates and publishes a request's records; answers per record after the
/// broker acknowledged every accepted one.
async fn publish_records(
    g: &Gateway,
    department: &str,
    ds: govbus_validate::DatasetRef<'_>,
    content_type: &str,
    body: &[u8],
    trace: Option<&[u8]>,
) -> Response {
    let dataset = ds.name();
    // Counted before parsing: a body of millions of `{}` would otherwise be
    // parsed and split whole before the limit applied.
    let counted = count_records(content_type, body);
    if counted > g.config.max_records {
        return problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_records",
            format!(
                "{counted} records; the limit per request is {}",
                g.config.max_records
            ),
        );
    }
    let items = match items(content_type, dataset, body) {
        Ok(i) => i,
        Err(r) => return *r,
    };
    if items.len() > g.config.max_records {
        return problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_records",
            format!(
                "{} records; the limit per request is {}",
                items.len(),
                g.config.max_records
            ),
        );
    }

    let ctx = Context::now();
    let ingest = g.config.topics.ingest(department);
    if g.topic_exists(&ingest).await == Some(false) {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "topic_missing",
            format!("the topic `{ingest}` does not exist on the broker; nothing was accepted. Create the catalog's topics with `govbus topics ensure` (the gateway, router and `govbus up` create them at start unless --no-create-topics)"),
        );
    }
    let mut results: Vec<Json> = Vec::with_capacity(items.len());
    let mut pending = Vec::new();
    let mut queue_full = false;
    for (index, item) in items.iter().enumerate() {
        let accepted = match &item.record {
            Ok(record) => ds
                .validate_json_value(record, &ctx)
                .and_then(govbus_kafka::limits::publishable)
                .map_err(|r| (r.reason, r.field, r.detail.into_owned())),
            Err(r) => Err((r.reason, r.field.clone(), r.detail.clone().into_owned())),
        };
        match accepted {
            Ok(a) => {
                let a_ = &item.attributes;
                // A caller's CloudEvent id is its own event id; otherwise a
                // UUIDv7 — unique across requests, instances and restarts,
                // and never made of caller text (an Idempotency-Key may be
                // personal data).
                let id = a_
                    .id
                    .clone()
                    .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
                let version = a_.source_version.map(|v| v.to_string());
                let mut hs = OwnedHeaders::new_with_capacity(6)
                    .insert(Header {
                        key: h::CE_TYPE,
                        value: Some(dataset),
                    })
                    .insert(Header {
                        key: h::CE_ID,
                        value: Some(id.as_str()),
                    })
                    .insert(Header {
                        key: h::CONTENT_TYPE,
                        value: Some(h::AVRO_CONTENT_TYPE),
                    });
                if let Some((t, _)) = &a_.time {
                    hs = hs.insert(Header {
                        key: h::CE_TIME,
                        value: Some(t.as_str()),
                    });
                }
                if let Some(op) = a_.op {
                    hs = hs.insert(Header {
                        key: h::CE_OP,
                        value: Some(op.as_str()),
                    });
                }
                if let Some(v) = &version {
                    hs = hs.insert(Header {
                        key: h::CE_SOURCEVERSION,
                        value: Some(v.as_str()),
                    });
                }
                if let Some(tp) = trace {
                    hs = hs.insert(Header {
                        key: h::TRACEPARENT,
                        value: Some(tp),
                    });
                }
                let rec = FutureRecord::to(&ingest)
                    .key(a.key.as_bytes())
                    .payload(&a.value)
                    .headers(hs);
                if queue_full {
                    // Not sent: answered as not acknowledged, like a record
                    // the broker did not confirm (the ones before it were sent).
                    results.push(json!({"index": index, "status": "not_acknowledged"}));
                    continue;
                }
                match g.producer.send_result(rec) {
                    Ok(f) => pending.push((index, f)),
                    Err((e, _)) => {
                        tracing::warn!(message = "Broker queue full or unavailable.", error = %e);
                        queue_full = true;
                        results.push(json!({"index": index, "status": "not_acknowledged"}));
                        continue;
                    }
                }
                results.push(json!({"index": index, "status": "accepted", "id": id}));
                g.metrics
                    .records
                    .with_label_values(&[department, dataset, "accepted"])
                    .inc();
            }
            Err((reason, field, detail)) => {
                g.metrics
                    .records
                    .with_label_values(&[department, dataset, reason.code()])
                    .inc();
                results.push(json!({"index": index, "status": "rejected", "reason": reason.code(), "field": field, "detail": detail}));
            }
        }
    }
    // Answer only after the broker has acknowledged every accepted record.
    let mut unacknowledged = results
        .iter()
        .filter(|r| r["status"] == "not_acknowledged")
        .count();
    for (index, f) in pending {
        if !matches!(f.await, Ok(Ok(_))) {
            unacknowledged += 1;
            results[index] = json!({"index": index, "status": "not_acknowledged"});
        }
    }
    let rejected = results.iter().filter(|r| r["status"] == "rejected").count();
    let accepted = results.len() - rejected - unacknowledged;
    let body = json!({"dataset": dataset, "accepted": accepted, "rejected": rejected, "not_acknowledged": unacknowledged, "results": results}).to_string();
    if unacknowledged > 0 {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [("content-type", "application/json"), ("retry-after", "5")],
            body,
        )
            .into_response();
    }
    // A processed batch is a 200 whatever its records' fates: the answer is per record.
    (StatusCode::OK, [("content-type", "application/json")], body).into_response()
}

/// How many records a body holds, counted without parsing it: non-blank
/// lines of NDJSON; elements of a top-level JSON array (commas at depth 1
/// outside strings); 1 for anything else. Malformed JSON is counted as far
/// as it goes (the parser then says what is wrong).
fn count_records(content_type: &str, body: &[u8]) -> usize {
    if content_type.starts_with("application/x-ndjson")
        || content_type.starts_with("application/jsonl")
    {
        return body
            .split(|b| *b == b'\n')
            .filter(|l| l.iter().any(|b| !b.is_ascii_whitespace()))
            .count();
    }
    let mut bytes = body.iter().skip_while(|b| b.is_ascii_whitespace());
    if bytes.next() != Some(&b'[') {
        return 1;
    }
    let (mut depth, mut in_string, mut escaped) = (1usize, false, false);
    let (mut commas, mut any) = (0usize, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                any = true;
            }
            b'[' | b'{' => {
                depth += 1;
                any = true;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    break;
                }
            }
            b',' if depth == 1 => commas += 1,
            b if !b.is_ascii_whitespace() => any = true,
            _ => {}
        }
    }
    if any {
        commas + 1
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::count_records;

    #[test]
    fn records_are_counted_without_parsing() {
        for (ct, body, n) in [
            ("application/json", "[]", 0),
            ("application/json", " [ ] ", 0),
            ("application/json", "[{}]", 1),
            ("application/json", "[{},{},{}]", 3),
            (
                "application/json",
                r#"[{"a":"x,y]"},{"b":[1,2,{"c":3}]}]"#,
                2,
            ),
            ("application/json", r#"[{"a":"\",\""}]"#, 1),
            ("application/json", r#"{"a":1}"#, 1),
            ("application/cloudevents-batch+json", "[{},{}]", 2),
            ("application/x-ndjson", "{}\n\n{}\n  \n{}", 3),
        ] {
            assert_eq!(count_records(ct, body.as_bytes()), n, "{body}");
        }
        let big = format!("[{}{{}}]", "{},".repeat(1_000_000));
        assert_eq!(count_records("application/json", big.as_bytes()), 1_000_001);
    }
}
