//! The sample catalog, compiled once per fuzzing process.

use std::path::Path;
use std::sync::OnceLock;

use govbus_catalog::Catalog;
use govbus_validate::Engine;

pub fn catalog() -> &'static Catalog {
    static C: OnceLock<Catalog> = OnceLock::new();
    C.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas");
        Catalog::load(&dir).unwrap_or_else(|p| panic!("{p}"))
    })
}

pub fn engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| Engine::new(catalog()).unwrap_or_else(|e| panic!("{e}")))
}

/// Picks a dataset with the first byte of the input.
pub fn dataset(selector: u8) -> &'static govbus_catalog::Dataset {
    let all: Vec<_> = catalog().datasets().collect();
    all[selector as usize % all.len()]
}
