//! The govbus validation engine: given a dataset and a record — as
//! Confluent-framed Avro or as JSON — return the canonical Avro bytes, the
//! record key and the schema id ([`Accepted`]), or a [`Rejection`] with a
//! [`Reason`] code from a bounded list and the field path.
//!
//! Key types: [`Engine`] (compiled once from a [`govbus_catalog::Catalog`]),
//! [`DatasetRef`] (a cheap handle for the hot path), [`Limits`], [`Context`].
//!
//! How it is fast: each schema version is compiled into a node program
//! ([`program`]) and the quality rules into per-field checks; the walker reads
//! the Avro bytes once, checking lengths, UTF-8, union/enum indexes and rules
//! as it passes each field, without building a value tree. When the input is
//! already Avro under one of the dataset's schema ids, the canonical bytes
//! *are* the input bytes (only a lowercase ID-number check `x` is patched to
//! `X`). JSON is first encoded to Avro under the latest version, then walked
//! by the same code, so both paths apply exactly the same rules.
//!
//! How it is safe: the message size is checked first; every length and block
//! count is checked against the bytes left and a total item budget before it
//! is used; nesting depth is bounded; every byte must be consumed. Nothing
//! here allocates in proportion to a length read from the input.
//!
//! What it does not do: I/O of any kind (the clock is passed in [`Context`]),
//! the publisher-owns-dataset gate (the router's), or logging. Rejection
//! details never contain a value from the record.
//!
//! # Reason codes
//!
//! See [`Reason::ALL`]; each code's meaning is [`Reason::description`].

mod decode;
pub mod envelope;
mod ids;
mod json;
mod plan;
mod program;
mod reason;
mod text;
mod walk;

use std::collections::{HashMap, HashSet};

use govbus_catalog::{Catalog, SchemaId};

pub use decode::JsonDecoder;
pub use ids::{
    check_credit_code, check_mobile_phone, check_resident_id, credit_code_check_char,
    resident_id_check_char, IdNormalization,
};
pub use program::CompileError;
pub use reason::{Reason, Rejection};
pub use text::{parse as parse_json, JsonError};

use plan::VersionPlan;

/// The Confluent wire format's magic byte.
pub const MAGIC: u8 = 0;

/// Hard limits on a single record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted message (framed Avro or JSON text), in bytes. Default 1 MiB.
    pub max_message_bytes: usize,
    /// Deepest nesting of records, arrays, maps and unions. Default 32.
    pub max_depth: u32,
    /// Most array and map items in one record, in total. Default 100,000.
    pub max_items: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 1 << 20,
            max_depth: 32,
            max_items: 100_000,
        }
    }
}

/// What the rules need from the world: the current time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    /// Milliseconds since the epoch, UTC.
    pub now_millis: i64,
}

impl Context {
    /// The context at the system clock's current time.
    pub fn now() -> Context {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        Context { now_millis: now }
    }

    /// A fixed time, for tests and replays.
    pub fn at(now_millis: i64) -> Context {
        Context { now_millis }
    }
}

/// A record that passed: ready to produce to `data.<dataset>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The schema the value is written with.
    pub schema_id: SchemaId,
    /// That schema's version number within the dataset.
    pub version: u32,
    /// The record key, from the dataset's key fields (composite keys are
    /// joined with `/`, with `%` and `/` inside parts escaped as `%25`, `%2F`).
    pub key: String,
    /// Confluent-framed canonical Avro: `0x00`, schema id (big-endian), datum.
    pub value: Vec<u8>,
}

#[derive(Debug)]
struct DatasetPlan {
    name: String,
    owner: String,
    /// Oldest first; the last is the latest.
    versions: Vec<VersionPlan>,
}

/// The compiled catalog. Build once; share across threads (`Engine: Sync`).
#[derive(Debug)]
pub struct Engine {
    datasets: Vec<DatasetPlan>,
    by_name: HashMap<String, usize>,
    by_id: HashMap<SchemaId, (usize, usize)>,
    departments: HashSet<String>,
    limits: Limits,
}

/// A handle on one dataset's validator; look it up once, use it per record.
#[derive(Debug, Clone, Copy)]
pub struct DatasetRef<'e> {
    engine: &'e Engine,
    idx: usize,
}

/// An engine that readers share while a newer one replaces it: run-time
/// schema versions (the schema log) recompile the catalog, and each batch or
/// request takes whichever engine is current when it starts. Clones share
/// the slot.
#[derive(Debug, Clone)]
pub struct SharedEngine(std::sync::Arc<std::sync::RwLock<std::sync::Arc<Engine>>>);

impl SharedEngine {
    /// Starts with `engine`.
    pub fn new(engine: std::sync::Arc<Engine>) -> SharedEngine {
        SharedEngine(std::sync::Arc::new(std::sync::RwLock::new(engine)))
    }

    /// The engine in force now.
    pub fn current(&self) -> std::sync::Arc<Engine> {
        self.0
            .read()
            .map(|e| e.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Compiles `catalog` and puts it in force; when it does not compile,
    /// the engine in force stays.
    pub fn recompile(&self, catalog: &Catalog) -> Result<(), CompileError> {
        let engine = std::sync::Arc::new(Engine::new(catalog)?);
        match self.0.write() {
            Ok(mut e) => *e = engine,
            Err(p) => *p.into_inner() = engine,
        }
        Ok(())
    }
}

impl Engine {
    /// Compiles every dataset version of the catalog with default limits.
    pub fn new(catalog: &Catalog) -> Result<Engine, CompileError> {
        Engine::with_limits(catalog, Limits::default())
    }

    /// Compiles every dataset version of the catalog.
    pub fn with_limits(catalog: &Catalog, limits: Limits) -> Result<Engine, CompileError> {
        let mut datasets = Vec::new();
        let mut by_name = HashMap::new();
        let mut by_id = HashMap::new();
        for ds in catalog.datasets() {
            let idx = datasets.len();
            let mut versions = Vec::new();
            for sv in &ds.versions {
                let plan = VersionPlan::compile(ds, sv)
                    .map_err(|e| CompileError(format!("{} v{}: {}", ds.name, sv.version, e.0)))?;
                by_id.insert(sv.id, (idx, versions.len()));
                versions.push(plan);
            }
            by_name.insert(ds.name.clone(), idx);
            datasets.push(DatasetPlan {
                name: ds.name.clone(),
                owner: ds.owner.clone(),
                versions,
            });
        }
        let departments = catalog.departments().map(|d| d.id.clone()).collect();
        Ok(Engine {
            datasets,
            by_name,
            by_id,
            departments,
            limits,
        })
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Whether the catalog has this department.
    pub fn has_department(&self, id: &str) -> bool {
        self.departments.contains(id)
    }

    /// Every department id.
    pub fn departments(&self) -> impl Iterator<Item = &str> {
        self.departments.iter().map(String::as_str)
    }

    /// Every dataset, in name order.
    pub fn datasets(&self) -> impl Iterator<Item = DatasetRef<'_>> {
        (0..self.datasets.len()).map(|idx| DatasetRef { engine: self, idx })
    }

    /// A dataset's validator.
    pub fn dataset(&self, name: &str) -> Option<DatasetRef<'_>> {
        self.by_name.get(name).map(|idx| DatasetRef {
            engine: self,
            idx: *idx,
        })
    }

    /// The dataset a schema id belongs to.
    pub fn dataset_of(&self, id: SchemaId) -> Option<DatasetRef<'_>> {
        self.by_id.get(&id).map(|(idx, _)| DatasetRef {
            engine: self,
            idx: *idx,
        })
    }

    /// Validates Confluent-framed Avro for `dataset`.
    pub fn validate_avro(
        &self,
        dataset: &str,
        framed: &[u8],
        ctx: &Context,
    ) -> Result<Accepted, Rejection> {
        self.dataset(dataset)
            .ok_or_else(unknown_dataset)?
            .validate_avro(framed, ctx)
    }

    /// Validates a JSON record for `dataset`, encoding it under the latest version.
    pub fn validate_json(
        &self,
        dataset: &str,
        json: &[u8],
        ctx: &Context,
    ) -> Result<Accepted, Rejection> {
        self.dataset(dataset)
            .ok_or_else(unknown_dataset)?
            .validate_json(json, ctx)
    }
}

fn unknown_dataset() -> Rejection {
    Rejection::new(Reason::DatasetUnknown, "no such dataset in the catalog")
}

impl<'e> DatasetRef<'e> {
    fn plan(&self) -> &'e DatasetPlan {
        &self.engine.datasets[self.idx]
    }

    /// `<owner>.<name>`.
    pub fn name(&self) -> &'e str {
        &self.plan().name
    }

    /// The one department allowed to publish it.
    pub fn owner(&self) -> &'e str {
        &self.plan().owner
    }

    /// The latest schema id.
    pub fn latest_schema_id(&self) -> SchemaId {
        self.latest().id
    }

    fn latest(&self) -> &'e VersionPlan {
        let versions = &self.plan().versions;
        &versions[versions.len() - 1]
    }

    /// Validates Confluent-framed Avro written with any of the dataset's schema versions.
    pub fn validate_avro(&self, framed: &[u8], ctx: &Context) -> Result<Accepted, Rejection> {
        let limits = &self.engine.limits;
        if framed.len() > limits.max_message_bytes {
            return Err(too_large(framed.len(), limits.max_message_bytes));
        }
        if framed.len() < 5 || framed[0] != MAGIC {
            let detail = if framed.len() < 5 {
                format!("{} bytes; a framed value has at least 5", framed.len())
            } else {
                format!("first byte is 0x{:02x}, expected 0x00", framed[0])
            };
            return Err(Rejection::new(Reason::FramingInvalid, detail));
        }
        let id = SchemaId(u32::from_be_bytes([
            framed[1], framed[2], framed[3], framed[4],
        ]));
        // The dataset's own versions (a handful) first: cheaper than hashing.
        let own = self.plan().versions.iter().find(|v| v.id == id);
        let Some(plan) = own else {
            return Err(match self.engine.by_id.get(&id) {
                Some((idx, _)) => Rejection::new(
                    Reason::SchemaWrongDataset,
                    format!(
                        "schema id {id} belongs to {}",
                        self.engine.datasets[*idx].name
                    ),
                ),
                None => Rejection::new(
                    Reason::SchemaUnknown,
                    format!("schema id {id} is not in the catalog"),
                ),
            });
        };
        let datum = &framed[5..];
        let walked = plan.walk(datum, ctx, limits)?;
        Ok(accept(plan, framed.to_vec(), walked))
    }

    /// Validates a JSON object, encoding it under the latest schema version.
    pub fn validate_json(&self, json: &[u8], ctx: &Context) -> Result<Accepted, Rejection> {
        let limits = &self.engine.limits;
        if json.len() > limits.max_message_bytes {
            return Err(too_large(json.len(), limits.max_message_bytes));
        }
        let parsed =
            text::parse(json).map_err(|e| Rejection::new(Reason::JsonInvalid, e.to_string()))?;
        self.validate_json_value(&parsed, ctx)
    }

    /// Validates an already-parsed JSON value (e.g. one element of a batch).
    pub fn validate_json_value(
        &self,
        json: &serde_json::Value,
        ctx: &Context,
    ) -> Result<Accepted, Rejection> {
        let plan = self.latest();
        let mut value = Vec::with_capacity(256);
        value.push(MAGIC);
        value.extend_from_slice(&plan.id.0.to_be_bytes());
        json::encode(&plan.prog, json, &mut value)?;
        let limits = &self.engine.limits;
        if value.len() > limits.max_message_bytes {
            return Err(too_large(value.len(), limits.max_message_bytes));
        }
        let walked = plan.walk(&value[5..], ctx, limits)?;
        Ok(accept(plan, value, walked))
    }
}

/// The accepted record: the framed value with the walk's normalisations
/// (a resident ID's check `x` → `X`) patched in place.
fn accept(plan: &VersionPlan, mut value: Vec<u8>, walked: plan::Walked) -> Accepted {
    for p in walked.patches {
        value[5 + p] = b'X';
    }
    Accepted {
        schema_id: plan.id,
        version: plan.version,
        key: walked.key,
        value,
    }
}

fn too_large(len: usize, max: usize) -> Rejection {
    Rejection::new(
        Reason::MessageTooLarge,
        format!("{len} bytes; the limit is {max}"),
    )
}

#[cfg(test)]
mod tests;
