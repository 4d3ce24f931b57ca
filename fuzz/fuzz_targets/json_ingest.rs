//! Input: [selector, json...]: JSON ingest, then the canonical bytes again as Avro.
#![no_main]

mod common;

use govbus_validate::Context;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [selector, json @ ..] = data else { return };
    let ds = common::dataset(*selector);
    let engine = common::engine();
    let ctx = Context::at(1_795_996_800_000);
    if let Ok(accepted) = engine.validate_json(&ds.name, json, &ctx) {
        let again = engine.validate_avro(&ds.name, &accepted.value, &ctx);
        assert_eq!(again.as_ref(), Ok(&accepted));
    }
});
