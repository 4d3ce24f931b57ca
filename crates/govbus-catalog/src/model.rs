//! The validated catalog: what runtime code sees after [`crate::Catalog::load`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use apache_avro::Schema;
use serde::{Deserialize, Serialize};

use crate::rules::Rule;

/// A Confluent-style schema id: the 4-byte big-endian number after the magic
/// byte of every canonical message. Derived from the schema's Parsing
/// Canonical Form (see [`crate::ids`]), so every instance agrees without
/// coordination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct SchemaId(pub u32);

impl fmt::Display for SchemaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A department (部门): publishes the datasets it owns, subscribes to others.
#[derive(Debug, Clone, Serialize)]
pub struct Department {
    /// `[a-z][a-z0-9_]*`, used in topic and dataset names.
    pub id: String,
    /// Chinese name.
    pub name_zh: String,
    /// English name.
    pub name_en: String,
}

/// How widely a dataset may be shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Classification {
    /// Open data.
    Public,
    /// Any city department.
    Internal,
    /// Departments with a grant; personal data is masked by default.
    Sensitive,
    /// Departments with a grant and a documented legal purpose.
    Restricted,
}

impl Classification {
    /// The lowercase name used in files and output.
    pub fn as_str(self) -> &'static str {
        match self {
            Classification::Public => "public",
            Classification::Internal => "internal",
            Classification::Sensitive => "sensitive",
            Classification::Restricted => "restricted",
        }
    }
}

/// What kind of personal data a field holds; drives masking in sinks and
/// keeps values out of logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PiiTag {
    /// Resident ID number (公民身份号码).
    IdNumber,
    /// A person's name.
    Name,
    /// A phone number.
    Phone,
    /// A home or registered address.
    Address,
    /// An e-mail address.
    Email,
    /// A bank account or card number.
    BankAccount,
    /// Any other personal data.
    Other,
}

/// Which schema evolution a dataset allows between successive versions
/// (Confluent semantics; the `_TRANSITIVE` forms check every earlier version).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Compatibility {
    /// No check.
    None,
    /// The new schema can read data written with the previous one.
    #[default]
    Backward,
    /// As `BACKWARD`, against every earlier version.
    BackwardTransitive,
    /// Data written with the new schema can be read with the previous one.
    Forward,
    /// As `FORWARD`, against every earlier version.
    ForwardTransitive,
    /// Both `BACKWARD` and `FORWARD`.
    Full,
    /// Both, against every earlier version.
    FullTransitive,
}

impl Compatibility {
    /// The Confluent name (`BACKWARD`, `FULL_TRANSITIVE`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Compatibility::None => "NONE",
            Compatibility::Backward => "BACKWARD",
            Compatibility::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Compatibility::Forward => "FORWARD",
            Compatibility::ForwardTransitive => "FORWARD_TRANSITIVE",
            Compatibility::Full => "FULL",
            Compatibility::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    /// Parses a Confluent level name (`BACKWARD`, `FULL_TRANSITIVE`, ...).
    pub fn parse(name: &str) -> Option<Compatibility> {
        [
            Compatibility::None,
            Compatibility::Backward,
            Compatibility::BackwardTransitive,
            Compatibility::Forward,
            Compatibility::ForwardTransitive,
            Compatibility::Full,
            Compatibility::FullTransitive,
        ]
        .into_iter()
        .find(|c| c.as_str() == name)
    }

    /// Whether every earlier version is checked, not only the latest.
    pub fn transitive(self) -> bool {
        matches!(
            self,
            Compatibility::BackwardTransitive
                | Compatibility::ForwardTransitive
                | Compatibility::FullTransitive
        )
    }

    /// Whether the new schema must read old data.
    pub fn backward(self) -> bool {
        matches!(
            self,
            Compatibility::Backward
                | Compatibility::BackwardTransitive
                | Compatibility::Full
                | Compatibility::FullTransitive
        )
    }

    /// Whether old schemas must read new data.
    pub fn forward(self) -> bool {
        matches!(
            self,
            Compatibility::Forward
                | Compatibility::ForwardTransitive
                | Compatibility::Full
                | Compatibility::FullTransitive
        )
    }
}

/// One version of a dataset's Avro schema.
#[derive(Debug, Clone)]
pub struct SchemaVersion {
    /// 1, 2, ... in the order the versions were added.
    pub version: u32,
    /// Derived from [`SchemaVersion::canonical_form`].
    pub id: SchemaId,
    /// The parsed schema; always a record.
    pub schema: Schema,
    /// Avro Parsing Canonical Form.
    pub canonical_form: String,
    /// The schema as written in the file (with docs), for the registry API.
    pub source: String,
    /// Where it was loaded from.
    pub file: PathBuf,
}

/// A field a live interface may look records up by (`[[lookup]]` in
/// `dataset.toml`): a top-level string, int, long, enum or date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupField {
    /// The field.
    pub field: String,
    /// Whether one value names at most one record (an ID number in a death
    /// registration): a lookup answers one record, and verification by it is
    /// allowed. The state does not enforce it; two live records with one
    /// value of a unique field answer 409.
    pub unique: bool,
}

/// A dataset (数据资源): one authoritative source, many versions, quality rules.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// `<owner>.<name>`.
    pub name: String,
    /// The one department that may publish it (一数一源).
    pub owner: String,
    /// Chinese title.
    pub title_zh: String,
    /// English title.
    pub title_en: String,
    /// How widely it may be shared.
    pub classification: Classification,
    /// Top-level fields whose values identify a record (the Kafka key).
    pub key: Vec<String>,
    /// How fresh the published data is expected to be.
    pub freshness: Duration,
    /// Evolution rule between versions.
    pub compatibility: Compatibility,
    /// Personal-data tag of each tagged field.
    pub personal_data: BTreeMap<String, PiiTag>,
    /// Quality rules, checked on every record at the edge and in the router.
    pub rules: Vec<Rule>,
    /// Fields besides the key that live interfaces may look records up by.
    pub lookup: Vec<LookupField>,
    /// Schema versions, oldest first; never empty.
    pub versions: Vec<SchemaVersion>,
    /// The `dataset.toml` it was loaded from.
    pub file: PathBuf,
}

impl Dataset {
    /// The newest schema version.
    pub fn latest(&self) -> &SchemaVersion {
        // `versions` is never empty: the loader rejects a dataset without one.
        &self.versions[self.versions.len() - 1]
    }

    /// Version `v` (1-based), if it exists.
    pub fn version(&self, v: u32) -> Option<&SchemaVersion> {
        self.versions.iter().find(|s| s.version == v)
    }

    /// The canonical topic, `data.<dataset>`.
    pub fn topic(&self) -> String {
        format!("data.{}", self.name)
    }

    /// The short name, after the owner prefix.
    pub fn short_name(&self) -> &str {
        self.name
            .split_once('.')
            .map_or(self.name.as_str(), |(_, n)| n)
    }
}
