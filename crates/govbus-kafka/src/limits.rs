//! How large a record the bus writes, and the checks that keep every write
//! within it.
//!
//! Every govbus producer has `message.max.bytes` = [`MAX_RECORD_BYTES`], and
//! librdkafka refuses a larger record locally, on every attempt. The bus
//! retries a failed write for as long as it takes (nothing is skipped), so a
//! record that can never be written would stall its partition for good.
//! Hence three nested bounds, each leaving room for what the next stage adds:
//! a publishing path (gateway, table-dump adapter, change capture) refuses a
//! record above [`MAX_PUBLISHED_BYTES`] with `message_too_large`; the router
//! dead-letters a canonical record above [`MAX_ROUTED_BYTES`]; and a dead
//! letter that would still exceed [`MAX_RECORD_BYTES`] carries its error
//! headers alone ([`crate::headers::fitted_dead_letter`]).

use std::borrow::Cow;

use govbus_validate::{Accepted, Reason, Rejection};
use rdkafka::message::{Headers, OwnedHeaders};

/// The largest record a govbus producer writes, key, value and headers
/// together: the `message.max.bytes` of [`crate::config::producer`].
pub const MAX_RECORD_BYTES: usize = 1_000_000;

/// Room a routed record leaves below [`MAX_RECORD_BYTES`], so that a sink's
/// dead letter of it (its error headers added) still fits.
pub const DEAD_LETTER_ROOM: usize = 16 * 1024;

/// The largest canonical record (key, value and headers) the router writes.
pub const MAX_ROUTED_BYTES: usize = MAX_RECORD_BYTES - DEAD_LETTER_ROOM;

/// The largest key and value together a publishing path accepts: room for
/// the headers it and the router add (`ce_subject` repeats the key).
pub const MAX_PUBLISHED_BYTES: usize = MAX_ROUTED_BYTES - 8 * 1024;

/// A record's size as librdkafka checks it against `message.max.bytes`:
/// key, value, and each header's name and value with their length prefixes.
pub fn record_bytes(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: Option<&OwnedHeaders>,
) -> usize {
    let headers = headers.map_or(0, |hs| {
        hs.iter()
            .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len) + 2 * 5)
            .sum()
    });
    key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len) + headers
}

/// The publishing edge's size check on a validated record: one whose key
/// and canonical value exceed [`MAX_PUBLISHED_BYTES`] is refused with
/// `message_too_large` (the router would only dead-letter it).
pub fn publishable(a: Accepted) -> Result<Accepted, Rejection> {
    let size = a.key.len() + a.value.len();
    if size > MAX_PUBLISHED_BYTES {
        return Err(Rejection {
            reason: Reason::MessageTooLarge,
            field: None,
            detail: Cow::Owned(format!(
                "the record is {size} bytes as canonical Avro with its key; the bus carries at most {MAX_PUBLISHED_BYTES}"
            )),
        });
    }
    Ok(a)
}
