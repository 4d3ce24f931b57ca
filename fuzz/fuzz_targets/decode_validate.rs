//! Input: [selector, mode, bytes...]. Mode 0: `bytes` is a datum, framed here
//! with one of the dataset's real schema ids so the fuzzer explores Avro
//! decoding and the rules. Mode 1: `bytes` is the whole framed message.
#![no_main]

mod common;

use govbus_validate::Context;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [selector, mode, rest @ ..] = data else { return };
    let ds = common::dataset(*selector);
    let engine = common::engine();
    let ctx = Context::at(1_795_996_800_000);
    let input = if mode % 2 == 0 {
        let v = &ds.versions[(*mode as usize / 2) % ds.versions.len()];
        let mut framed = vec![0];
        framed.extend_from_slice(&v.id.0.to_be_bytes());
        framed.extend_from_slice(rest);
        framed
    } else {
        rest.to_vec()
    };
    if let Ok(accepted) = engine.validate_avro(&ds.name, &input, &ctx) {
        // Canonical output validates again to itself.
        let again = engine.validate_avro(&ds.name, &accepted.value, &ctx);
        assert_eq!(again.as_ref(), Ok(&accepted));
    }
});
