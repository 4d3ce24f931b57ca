//! The govbus data catalog (数据目录): which departments exist, which datasets
//! each one owns, their Avro schema versions, key fields, classification,
//! personal-data tags, freshness SLA and quality rules.
//!
//! "No data outside the catalog": the router accepts a record only if the
//! catalog knows its dataset, its publisher owns it, and its schema id is one
//! of the dataset's versions.
//!
//! Key types: [`Catalog`] (load with [`Catalog::load`], every problem reported
//! as a [`Problem`] with file and path), [`Dataset`], [`SchemaVersion`],
//! [`SchemaId`], [`Rule`] and [`Check`].
//!
//! This crate reads files and nothing else: no network, no Kafka. It does not
//! validate records — that is `govbus-validate`, which compiles the catalog.

mod decimal;
pub mod fields;
pub mod ids;
mod load;
pub mod mask;
mod model;
mod rules;
mod subscriptions;
pub mod time;

pub use decimal::{Decimal, MAX_SCALE};
pub use load::{is_dataset_name, Catalog, Problem, Problems, CONFIG_KEY_PREFIX};
pub use model::{
    Classification, Compatibility, Dataset, Department, LookupField, PiiTag, SchemaId,
    SchemaVersion,
};
pub use rules::{Check, Rule};
pub use subscriptions::{
    is_public_ip, parse_predicate, ApiOperation, Condition, FileFormat, FilterError, Op, Predicate,
    Scalar, SecretSource, Selection, SinkSpec, Subscription, Treatment,
};

#[cfg(test)]
mod tests;
