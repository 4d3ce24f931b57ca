//! A Confluent Schema Registry API over the govbus catalog, so that stock
//! clients (Python `confluent-kafka`'s `SchemaRegistryClient` and
//! `AvroSerializer`, Java's `KafkaAvroSerializer`) serialize department data
//! with the ids the router checks.
//!
//! Key types: [`Registry`] (the subjects and versions derived from a
//! [`govbus_catalog::Catalog`]) and [`serve`] (the HTTP API, content type
//! `application/vnd.schemaregistry.v1+json`, Confluent error codes) or
//! [`serve_with`] (the same through [`govbus_http`], over TLS if configured).
//!
//! Subjects, for a dataset `D` owned by department `O` whose record's full
//! name is `R`:
//! - `data.D-value` — the canonical topic (TopicNameStrategy);
//! - `R` — RecordNameStrategy, the right choice when one ingest topic carries
//!   several datasets;
//! - `ingest.O-R` — TopicRecordNameStrategy;
//! - `ingest.O-value` — TopicNameStrategy on the ingest topic: every schema of
//!   every dataset `O` owns, so that a serializer's register-or-look-up finds
//!   the id of whichever it sends.
//!
//! Ids are the catalog's derived schema ids: every instance serves the same
//! ones with no shared state. The registry is **read-only** ("no data outside
//! the catalog"): a schema that the catalog already has is "registered" by
//! returning its id; a new schema version enters through the catalog files
//! and `govbus catalog check`, and registering it here answers 42205.
//! Not here (yet): READWRITE mode with registrations persisted in Kafka.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::Schema;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use govbus_catalog::{Catalog, Compatibility, SchemaId};
use govbus_kafka::topics::Topics;
use govbus_validate::JsonError;
use serde::Deserialize;
use serde_json::{json, Value};

/// The registry's content type.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

#[derive(Debug, Clone)]
struct Version {
    id: SchemaId,
    source: String,
    canonical: String,
    schema: Schema,
}

#[derive(Debug, Clone)]
struct Subject {
    versions: Vec<Version>,
    compatibility: Compatibility,
    /// The dataset a new version registered under this subject belongs to
    /// (none for `ingest.<dept>-value`, which spans the department's datasets).
    dataset: Option<String>,
    /// The department, for `ingest.<dept>-value`.
    department: Option<String>,
}

/// Subjects and versions derived from a catalog.
#[derive(Debug)]
struct View {
    subjects: BTreeMap<String, Subject>,
    by_id: BTreeMap<SchemaId, Version>,
}

/// Whether new schema versions may be registered through the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Known schemas return their ids; new versions come through the catalog files.
    ReadOnly,
    /// New compatible versions are checked like catalog files, appended to the
    /// schema log in Kafka (`bootstrap`, `topic`), and served by every instance.
    ReadWrite {
        /// Kafka bootstrap servers.
        bootstrap: String,
        /// The schema log topic.
        topic: String,
    },
}

/// The registry: a view of the catalog, plus versions registered at run time.
#[derive(Debug)]
pub struct Registry {
    topics: Topics,
    mode: Mode,
    catalog: std::sync::Mutex<Catalog>,
    view: std::sync::RwLock<Arc<View>>,
}

fn record_name(schema: &Schema) -> Option<String> {
    match schema {
        Schema::Record(r) => Some(r.name.fullname(None)),
        _ => None,
    }
}

impl Registry {
    /// A read-only registry over the catalog, with ingest subjects named under `topics`.
    pub fn new(catalog: &Catalog, topics: &Topics) -> Registry {
        Registry::with_mode(catalog, topics, Mode::ReadOnly)
    }

    /// A registry in the given mode.
    pub fn with_mode(catalog: &Catalog, topics: &Topics, mode: Mode) -> Registry {
        Registry {
            view: std::sync::RwLock::new(Arc::new(View::build(catalog, topics))),
            catalog: std::sync::Mutex::new(catalog.clone()),
            topics: topics.clone(),
            mode,
        }
    }

    fn view(&self) -> Arc<View> {
        self.view
            .read()
            .map(|v| v.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Applies a schema-log change (a version of a dataset, or its
    /// compatibility level), after the same checks as a catalog file. A known
    /// schema changes nothing.
    pub fn apply(&self, key: &str, value: &str) -> Result<(), govbus_catalog::Problems> {
        let mut catalog = self.catalog.lock().unwrap_or_else(|p| p.into_inner());
        let next = catalog.apply_change(key, value)?;
        let view = Arc::new(View::build(&next, &self.topics));
        *catalog = next;
        if let Ok(mut v) = self.view.write() {
            *v = view;
        }
        Ok(())
    }

    /// Checks a new version without applying it.
    fn check(&self, dataset: &str, schema: &str) -> Result<Catalog, govbus_catalog::Problems> {
        self.catalog
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .with_version(dataset, schema)
    }

    /// The dataset of `department` whose record has `schema`'s full name.
    fn dataset_by_record(&self, department: &str, schema: &Schema) -> Option<String> {
        let name = record_name(schema)?;
        let catalog = self.catalog.lock().unwrap_or_else(|p| p.into_inner());
        let found = catalog
            .datasets()
            .find(|d| {
                d.owner == department
                    && record_name(&d.latest().schema).as_deref() == Some(name.as_str())
            })
            .map(|d| d.name.clone());
        found
    }
}

impl View {
    fn build(catalog: &Catalog, topics: &Topics) -> View {
        let mut subjects: BTreeMap<String, Subject> = BTreeMap::new();
        let mut by_id = BTreeMap::new();
        for ds in catalog.datasets() {
            let versions: Vec<Version> = ds
                .versions
                .iter()
                .map(|v| Version {
                    id: v.id,
                    source: v.source.clone(),
                    canonical: v.canonical_form.clone(),
                    schema: v.schema.clone(),
                })
                .collect();
            for v in &versions {
                by_id.insert(v.id, v.clone());
            }
            let subject = Subject {
                versions: versions.clone(),
                compatibility: ds.compatibility,
                dataset: Some(ds.name.clone()),
                department: None,
            };
            subjects.insert(format!("{}-value", topics.data(&ds.name)), subject.clone());
            if let Some(r) = record_name(&ds.latest().schema) {
                subjects.insert(r.clone(), subject.clone());
                subjects.insert(format!("{}-{r}", topics.ingest(&ds.owner)), subject.clone());
            }
            subjects
                .entry(format!("{}-value", topics.ingest(&ds.owner)))
                .or_insert_with(|| Subject {
                    versions: Vec::new(),
                    compatibility: Compatibility::None,
                    dataset: None,
                    department: Some(ds.owner.clone()),
                })
                .versions
                .extend(versions);
        }
        View { subjects, by_id }
    }
}

struct ApiError(StatusCode, i64, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error_code": self.1, "message": self.2});
        (self.0, [("content-type", CONTENT_TYPE)], body.to_string()).into_response()
    }
}

fn ok(v: Value) -> Response {
    (
        StatusCode::OK,
        [("content-type", CONTENT_TYPE)],
        v.to_string(),
    )
        .into_response()
}

fn subject_not_found(s: &str) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        40401,
        format!("Subject '{s}' not found."),
    )
}

type Shared = Arc<Registry>;

/// Serves the registry API on `listener` until `shutdown` completes (plain
/// HTTP, default bounds).
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(
        listener,
        registry,
        govbus_http::Options::default(),
        shutdown,
    )
    .await
}

/// Serves the registry API on `listener` until `shutdown` completes, with
/// the given bounds and TLS (a client certificate is accepted if the
/// options verify them, never required: the registry's API is read by every
/// serializer).
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    options: govbus_http::Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/", get(|| async { ok(json!({})) }))
        .route("/subjects", get(subjects))
        .route("/subjects/{subject}", post(lookup))
        .route("/subjects/{subject}/versions", get(versions).post(register))
        .route("/subjects/{subject}/versions/{version}", get(version))
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(version_schema),
        )
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/schema", get(raw_schema_by_id))
        .route("/schemas/ids/{id}/versions", get(versions_of_id))
        .route("/schemas/types", get(|| async { ok(json!(["AVRO"])) }))
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(compatibility),
        )
        .route("/config", get(global_config).put(refuse_config))
        .route(
            "/config/{subject}",
            get(subject_config).put(put_subject_config),
        )
        .route("/mode", get(mode))
        .with_state(registry);
    govbus_http::serve(listener, app, options, shutdown).await
}

/// Starts tailing the schema log (READWRITE mode): versions registered by any
/// instance are applied here too. Returns the tail, to keep alive.
pub fn follow_log(registry: &Arc<Registry>) -> Option<govbus_kafka::schema_log::Tail> {
    let Mode::ReadWrite { bootstrap, topic } = &registry.mode else {
        return None;
    };
    let reg = registry.clone();
    govbus_kafka::schema_log::Tail::start(bootstrap, topic, move |dataset, schema| {
        if let Err(p) = reg.apply(dataset, schema) {
            tracing::warn!(message = "Schema log entry refused.", dataset, error = %p);
        }
    })
    .map_err(|e| tracing::warn!(message = "Cannot follow the schema log.", error = %e))
    .ok()
}

async fn subjects(State(reg): State<Shared>) -> Response {
    let r = reg.view();
    ok(json!(r.subjects.keys().collect::<Vec<_>>()))
}

async fn versions(State(reg): State<Shared>, Path(s): Path<String>) -> Result<Response, ApiError> {
    let r = reg.view();
    let subject = r.subjects.get(&s).ok_or_else(|| subject_not_found(&s))?;
    Ok(ok(json!((1..=subject.versions.len()).collect::<Vec<_>>())))
}

fn pick<'a>(r: &'a View, s: &str, v: &str) -> Result<(usize, &'a Version), ApiError> {
    let subject = r.subjects.get(s).ok_or_else(|| subject_not_found(s))?;
    let n = subject.versions.len();
    let idx = match v {
        "latest" | "-1" => n,
        other => other.parse::<usize>().map_err(|_| {
            ApiError(
                StatusCode::UNPROCESSABLE_ENTITY,
                42202,
                format!("The specified version '{other}' is not a valid version id."),
            )
        })?,
    };
    let found = idx.checked_sub(1).and_then(|i| subject.versions.get(i));
    found.map(|ver| (idx, ver)).ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            40402,
            format!("Version {v} not found."),
        )
    })
}

async fn version(
    State(reg): State<Shared>,
    Path((s, v)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let r = reg.view();
    let (n, ver) = pick(&r, &s, &v)?;
    Ok(ok(
        json!({"subject": s, "version": n, "id": ver.id.0, "schema": ver.source}),
    ))
}

async fn version_schema(
    State(reg): State<Shared>,
    Path((s, v)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let r = reg.view();
    let (_, ver) = pick(&r, &s, &v)?;
    Ok((
        StatusCode::OK,
        [("content-type", CONTENT_TYPE)],
        ver.source.clone(),
    )
        .into_response())
}

fn by_id(r: &View, id: &str) -> Result<Version, ApiError> {
    id.parse::<u32>()
        .ok()
        .and_then(|i| r.by_id.get(&SchemaId(i)))
        .cloned()
        .ok_or_else(|| {
            ApiError(
                StatusCode::NOT_FOUND,
                40403,
                format!("Schema {id} not found"),
            )
        })
}

async fn schema_by_id(
    State(reg): State<Shared>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let r = reg.view();
    Ok(ok(json!({"schema": by_id(&r, &id)?.source})))
}

async fn raw_schema_by_id(
    State(reg): State<Shared>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let r = reg.view();
    Ok((
        StatusCode::OK,
        [("content-type", CONTENT_TYPE)],
        by_id(&r, &id)?.source,
    )
        .into_response())
}

async fn versions_of_id(
    State(reg): State<Shared>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let r = reg.view();
    let v = by_id(&r, &id)?;
    let list: Vec<Value> = r
        .subjects
        .iter()
        .filter_map(|(s, sub)| {
            sub.versions
                .iter()
                .position(|x| x.id == v.id)
                .map(|i| json!({"subject": s, "version": i + 1}))
        })
        .collect();
    Ok(ok(json!(list)))
}

#[derive(Deserialize)]
struct SchemaBody {
    schema: String,
    #[serde(rename = "schemaType", default)]
    schema_type: Option<String>,
}

fn parse(body: &SchemaBody) -> Result<Schema, ApiError> {
    if body.schema_type.as_deref().is_some_and(|t| t != "AVRO") {
        return Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
            "Only AVRO schemas are supported".into(),
        ));
    }
    // A schema that names a member twice is refused, not read as its last
    // one (apache-avro's parser keeps the last, and the text is kept as
    // sent in the schema log).
    if let Err(e @ (JsonError::Duplicate { .. } | JsonError::Reserved { .. })) =
        govbus_validate::parse_json(body.schema.as_bytes())
    {
        return Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
            format!("Invalid schema: {e}"),
        ));
    }
    Schema::parse_str(&body.schema).map_err(|e| {
        ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
            format!("Invalid schema: {e}"),
        )
    })
}

fn body(raw: &str) -> Result<SchemaBody, ApiError> {
    let invalid = |e: &dyn std::fmt::Display| {
        ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
            format!("Invalid request body: {e}"),
        )
    };
    let value = govbus_validate::parse_json(raw.as_bytes()).map_err(|e| invalid(&e))?;
    serde_json::from_value(value).map_err(|e| invalid(&e))
}

async fn lookup(
    State(reg): State<Shared>,
    Path(s): Path<String>,
    raw: String,
) -> Result<Response, ApiError> {
    let r = reg.view();
    let schema = parse(&body(&raw)?)?;
    let subject = r.subjects.get(&s).ok_or_else(|| subject_not_found(&s))?;
    let canonical = schema.canonical_form();
    let (i, v) = subject
        .versions
        .iter()
        .enumerate()
        .find(|(_, v)| v.canonical == canonical)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, 40403, "Schema not found".into()))?;
    Ok(ok(
        json!({"subject": s, "version": i + 1, "id": v.id.0, "schema": v.source}),
    ))
}

async fn register(
    State(reg): State<Shared>,
    Path(s): Path<String>,
    raw: String,
) -> Result<Response, ApiError> {
    let r = reg.view();
    let schema = parse(&body(&raw)?)?;
    let subject = r.subjects.get(&s).ok_or_else(|| {
        ApiError(StatusCode::UNPROCESSABLE_ENTITY, 42205, format!("Subject '{s}' is not in the govbus catalog; datasets are added through the catalog files"))
    })?;
    let canonical = schema.canonical_form();
    if let Some(v) = subject.versions.iter().find(|v| v.canonical == canonical) {
        return Ok(ok(json!({"id": v.id.0})));
    }
    let Mode::ReadWrite { bootstrap, topic } = reg.mode.clone() else {
        return Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            42205,
            format!("Subject '{s}' is in read-only mode: new schema versions enter through the catalog (schemas/datasets/*/v<N>.avsc, checked by `govbus catalog check`)"),
        ));
    };
    let dataset = match (&subject.dataset, &subject.department) {
        (Some(d), _) => d.clone(),
        (None, Some(dept)) => reg.dataset_by_record(dept, &schema).ok_or_else(|| {
            ApiError(
                StatusCode::UNPROCESSABLE_ENTITY,
                42201,
                format!("no dataset of {dept} has a record named like this schema"),
            )
        })?,
        (None, None) => return Err(subject_not_found(&s)),
    };
    // The same checks as a catalog file; a failure is 409 when it is about
    // compatibility, 422 otherwise.
    let checked = reg.check(&dataset, &body(&raw)?.schema).map_err(|p| {
        let text = p.to_string();
        if text.contains("compatible") {
            ApiError(StatusCode::CONFLICT, 409, format!("Schema being registered is incompatible with an earlier schema for subject '{s}': {text}"))
        } else {
            ApiError(StatusCode::UNPROCESSABLE_ENTITY, 42201, format!("Invalid schema: {text}"))
        }
    })?;
    let id = checked
        .dataset(&dataset)
        .map(|d| d.latest().id.0)
        .unwrap_or_default();
    // Durable first (every instance replays the log), then served here.
    let text = body(&raw)?.schema;
    append_log(bootstrap, topic, dataset.clone(), text.clone()).await?;
    reg.apply(&dataset, &text)
        .map_err(|p| ApiError(StatusCode::CONFLICT, 409, p.to_string()))?;
    tracing::info!(message = "Schema version registered.", dataset = %dataset, id);
    Ok(ok(json!({"id": id})))
}

async fn compatibility(
    State(reg): State<Shared>,
    Path((s, v)): Path<(String, String)>,
    raw: String,
) -> Result<Response, ApiError> {
    let r = reg.view();
    let schema = parse(&body(&raw)?)?;
    let (_, existing) = pick(&r, &s, &v)?;
    let mode = r
        .subjects
        .get(&s)
        .map_or(Compatibility::Backward, |x| x.compatibility);
    let backward =
        !mode.backward() || SchemaCompatibility::can_read(&existing.schema, &schema).is_ok();
    let forward =
        !mode.forward() || SchemaCompatibility::can_read(&schema, &existing.schema).is_ok();
    Ok(ok(json!({"is_compatible": backward && forward})))
}

async fn mode(State(reg): State<Shared>) -> Response {
    let mode = match reg.mode {
        Mode::ReadOnly => "READONLY",
        Mode::ReadWrite { .. } => "READWRITE",
    };
    ok(json!({"mode": mode}))
}

async fn global_config() -> Response {
    ok(json!({"compatibilityLevel": "BACKWARD"}))
}

async fn subject_config(
    State(reg): State<Shared>,
    Path(s): Path<String>,
) -> Result<Response, ApiError> {
    let r = reg.view();
    let subject = r.subjects.get(&s).ok_or_else(|| subject_not_found(&s))?;
    Ok(ok(
        json!({"compatibilityLevel": subject.compatibility.as_str()}),
    ))
}

/// Changes a dataset's compatibility level (READWRITE mode): checked like an
/// edit of its `dataset.toml` (a level its versions violate is refused),
/// logged, then applied.
async fn put_subject_config(
    State(reg): State<Shared>,
    Path(s): Path<String>,
    raw: String,
) -> Result<Response, ApiError> {
    let r = reg.view();
    let subject = r.subjects.get(&s).ok_or_else(|| subject_not_found(&s))?;
    let Mode::ReadWrite { bootstrap, topic } = reg.mode.clone() else {
        return Err(refuse_config().await);
    };
    let dataset = subject.dataset.clone().ok_or_else(|| {
        ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            42205,
            format!("'{s}' spans several datasets; set the level on a dataset subject"),
        )
    })?;
    let body: serde_json::Value = serde_json::from_str(&raw).map_err(|e| {
        ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            42203,
            format!("Invalid request body: {e}"),
        )
    })?;
    let level = body
        .get("compatibility")
        .and_then(Value::as_str)
        .and_then(Compatibility::parse)
        .ok_or_else(|| {
            ApiError(
                StatusCode::UNPROCESSABLE_ENTITY,
                42203,
                "Invalid compatibility level".into(),
            )
        })?;
    let key = format!("{}{dataset}", govbus_catalog::CONFIG_KEY_PREFIX);
    reg.catalog
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .with_compatibility(&dataset, level)
        .map_err(|p| {
            ApiError(
                StatusCode::CONFLICT,
                409,
                format!(
                    "the dataset's versions do not satisfy {}: {p}",
                    level.as_str()
                ),
            )
        })?;
    append_log(bootstrap, topic, key.clone(), level.as_str().to_owned()).await?;
    reg.apply(&key, level.as_str())
        .map_err(|p| ApiError(StatusCode::CONFLICT, 409, p.to_string()))?;
    Ok(ok(json!({"compatibility": level.as_str()})))
}

/// Appends a change to the schema log and waits for the broker's
/// acknowledgement: durable before it is served.
async fn append_log(
    bootstrap: String,
    topic: String,
    key: String,
    value: String,
) -> Result<(), ApiError> {
    let failed = |e: String| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            50001,
            format!("Error in the backend datastore: {e}"),
        )
    };
    tokio::task::spawn_blocking(move || {
        govbus_kafka::schema_log::append(&bootstrap, &topic, &key, &value)
    })
    .await
    .map_err(|e| failed(e.to_string()))?
    .map_err(|e| failed(e.to_string()))
}

async fn refuse_config() -> ApiError {
    ApiError(
        StatusCode::UNPROCESSABLE_ENTITY,
        42205,
        "Compatibility is set per dataset in the catalog (dataset.toml `compatibility`)".into(),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::{body, parse};

    /// A request or a schema that names a member twice is refused, never
    /// read as its last one.
    #[test]
    fn a_member_named_twice_is_refused_in_the_body_and_in_the_schema() {
        let e = body(r#"{"schema": "\"string\"", "schema": "\"long\""}"#)
            .err()
            .unwrap();
        assert_eq!(e.1, 42201);
        assert!(e.2.contains("appears twice"), "{}", e.2);
        let twice = r#"{"type": "record", "name": "r", "fields": [{"name": "a", "type": "string"}], "fields": []}"#;
        let b = body(&serde_json::json!({ "schema": twice }).to_string())
            .ok()
            .unwrap();
        let e = parse(&b).err().unwrap();
        assert_eq!(e.1, 42201);
        assert!(e.2.contains("appears twice"), "{}", e.2);
        let once =
            r#"{"type": "record", "name": "r", "fields": [{"name": "a", "type": "string"}]}"#;
        let b = body(&serde_json::json!({ "schema": once }).to_string())
            .ok()
            .unwrap();
        assert!(parse(&b).is_ok());
    }
}
