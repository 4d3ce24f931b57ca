//! Where the catalog comes from: a directory, or the sample embedded at build time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use govbus_catalog::{Catalog, Problems};

include!(concat!(env!("OUT_DIR"), "/embedded_catalog.rs"));

/// The embedded sample catalog's files, keyed by relative path.
pub fn embedded_files() -> BTreeMap<PathBuf, String> {
    EMBEDDED_CATALOG
        .iter()
        .map(|(p, t)| (PathBuf::from(p), (*t).to_owned()))
        .collect()
}

/// Loads the catalog from `dir`, or the embedded sample when `dir` is `None`.
pub fn load(dir: Option<&Path>) -> Result<Catalog, Problems> {
    match dir {
        Some(d) => Catalog::load(d),
        None => Catalog::from_files(Path::new("<embedded>"), &embedded_files()),
    }
}

/// How to name the source in messages.
pub fn describe(dir: Option<&Path>) -> String {
    match dir {
        Some(d) => d.display().to_string(),
        None => "the embedded sample catalog".to_owned(),
    }
}

/// [`load`], with the problems turned into one error that says what to run.
pub fn load_checked(dir: Option<&Path>) -> anyhow::Result<Catalog> {
    load(dir)
        .map_err(|p| anyhow::anyhow!("the catalog has problems; run `govbus catalog check`:\n{p}"))
}
