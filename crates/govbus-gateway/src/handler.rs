//! The publish endpoint.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use govbus_kafka::headers as h;
use govbus_validate::{Context, Reason};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use serde_json::{json, Value as Json};

use crate::Gateway;

fn problem(status: StatusCode, error: &str, detail: impl Into<String>) -> Response {
    let body = json!({"error": error, "detail": detail.into()}).to_string();
    (status, [("content-type", "application/json")], body).into_response()
}

/// One record of a request, with the CloudEvents attributes that came with it.
struct Item {
    record: Result<Json, String>,
    id: Option<String>,
    time: Option<String>,
    op: Option<String>,
}

fn plain(record: Json) -> Item {
    Item {
        record: Ok(record),
        id: None,
        time: None,
        op: None,
    }
}

/// Splits the body by content type: a JSON array (or one object), NDJSON
/// (each line on its own, a bad line rejects only that record), or a
/// CloudEvents batch (`application/cloudevents-batch+json`).
fn items(content_type: &str, body: &[u8]) -> Result<Vec<Item>, Box<Response>> {
    let bad = |e: serde_json::Error| {
        problem(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("line {} column {}: not valid JSON", e.line(), e.column()),
        )
    };
    if content_type.starts_with("application/x-ndjson")
        || content_type.starts_with("application/jsonl")
    {
        return Ok(body
            .split(|b| *b == b'\n')
            .filter(|l| l.iter().any(|b| !b.is_ascii_whitespace()))
            .map(|l| Item {
                record: serde_json::from_slice(l).map_err(|e| {
                    format!("line {} column {}: not valid JSON", e.line(), e.column())
                }),
                id: None,
                time: None,
                op: None,
            })
            .collect());
    }
    let parsed: Json = serde_json::from_slice(body).map_err(bad)?;
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
        return Ok(events
            .into_iter()
            .map(|e| {
                let text = |k: &str| e.get(k).and_then(Json::as_str).map(str::to_owned);
                Item {
                    id: text("id"),
                    time: text("time"),
                    op: text("op"),
                    record: Ok(e.get("data").cloned().unwrap_or(Json::Null)),
                }
            })
            .collect());
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
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(department) = token
        .and_then(|t| g.credentials.department(t))
        .map(str::to_owned)
    else {
        g.metrics
            .requests
            .with_label_values(&["unknown", "401"])
            .inc();
        let mut r = problem(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send `Authorization: Bearer <your department's token>`",
        );
        r.headers_mut().insert(
            "www-authenticate",
            axum::http::HeaderValue::from_static("Bearer"),
        );
        return r;
    };
    let response = publish_as(&g, &department, &dataset, &headers, &body).await;
    g.metrics
        .requests
        .with_label_values(&[&department, response.status().as_str()])
        .inc();
    response
}

async fn publish_as(
    g: &Gateway,
    department: &str,
    dataset: &str,
    headers: &HeaderMap,
    body: &[u8],
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
    let idem = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let request: [u8; 32] = {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(dataset.as_bytes());
        h.update([0]);
        h.update(content_type.as_bytes());
        h.update([0]);
        h.update(body);
        h.finalize().into()
    };
    if let Some(key) = &idem {
        if let Some(r) = g.remembered(department, key) {
            if r.request != request {
                return problem(
                    StatusCode::CONFLICT,
                    "idempotency_key_reused",
                    "this Idempotency-Key was used for a different request; use a new key per request",
                );
            }
            let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::OK);
            return (
                status,
                [
                    ("content-type", "application/json"),
                    ("idempotent-replayed", "true"),
                ],
                r.body,
            )
                .into_response();
        }
    }
    let Ok(_permit) = g.permits.try_acquire() else {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            json!({"error": "busy", "detail": "too many requests in progress; retry after 1 s"})
                .to_string(),
        )
            .into_response();
    };
    let items = match items(content_type, body) {
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
    let mut results: Vec<Json> = Vec::with_capacity(items.len());
    let mut pending = Vec::new();
    let request_id = idem
        .clone()
        .unwrap_or_else(|| format!("{:x}", ctx.now_millis));
    for (index, item) in items.iter().enumerate() {
        let accepted = match &item.record {
            Ok(record) => ds
                .validate_json_value(record, &ctx)
                .map_err(|r| (r.reason, r.field, r.detail.into_owned())),
            Err(detail) => Err((Reason::JsonInvalid, None, detail.clone())),
        };
        match accepted {
            Ok(a) => {
                let id = item
                    .id
                    .clone()
                    .unwrap_or_else(|| format!("gw-{department}-{request_id}-{index}"));
                let mut hs = OwnedHeaders::new_with_capacity(5)
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
                if let Some(t) = &item.time {
                    hs = hs.insert(Header {
                        key: h::CE_TIME,
                        value: Some(t.as_str()),
                    });
                }
                if let Some(op) = &item.op {
                    hs = hs.insert(Header {
                        key: h::CE_OP,
                        value: Some(op.as_str()),
                    });
                }
                let rec = FutureRecord::to(&ingest)
                    .key(a.key.as_bytes())
                    .payload(&a.value)
                    .headers(hs);
                match g.producer.send_result(rec) {
                    Ok(f) => pending.push((index, f)),
                    Err((e, _)) => {
                        tracing::warn!(message = "Broker queue full or unavailable.", error = %e);
                        return (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "1")], json!({"error": "unavailable", "detail": "the broker is not keeping up; nothing was accepted, retry the whole request"}).to_string()).into_response();
                    }
                }
                results.push(json!({"index": index, "status": "accepted"}));
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
    let mut unacknowledged = 0;
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
    let status = StatusCode::OK;
    if let Some(key) = &idem {
        g.remember(department, key, request, status.as_u16(), &body);
    }
    (status, [("content-type", "application/json")], body).into_response()
}
