//! Writes the decode_validate fuzz seeds: `[dataset selector, 0, datum]` for
//! every sample record. `cargo run -p govbus-validate --example fuzz_seeds`.

use std::path::Path;

use govbus_catalog::Catalog;
use govbus_validate::{Context, Engine};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let catalog = Catalog::load(&repo.join("schemas"))?;
    let engine = Engine::new(&catalog)?;
    let out = repo.join("fuzz/corpus/decode_validate");
    std::fs::create_dir_all(&out)?;
    let ctx = Context::at(1_795_996_800_000);
    let mut n = 0;
    for (i, ds) in catalog.datasets().enumerate() {
        let text =
            std::fs::read_to_string(repo.join(format!("examples/records/{}.json", ds.name)))?;
        let records: Vec<serde_json::Value> = serde_json::from_str(&text)?;
        for (j, r) in records.iter().enumerate() {
            let a = engine.validate_json(&ds.name, r.to_string().as_bytes(), &ctx)?;
            // Mode 2 × (version index) selects the latest version's id in the target.
            let mode = u8::try_from(2 * (ds.versions.len() - 1))?;
            let mut seed = vec![u8::try_from(i)?, mode];
            seed.extend_from_slice(&a.value[5..]);
            std::fs::write(out.join(format!("{}-{j}", ds.name)), seed)?;
            n += 1;
        }
    }
    eprintln!("{n} seeds in {}", out.display());
    Ok(())
}
