//! How large a record the bus writes, and the checks that keep every write
//! within it.
//!
//! Every producer made from [`crate::config::producer`] has
//! `message.max.bytes` = [`MAX_RECORD_BYTES`] (librdkafka's default, so
//! other clients agree unless told otherwise), and
//! librdkafka refuses a larger record locally, on every attempt. The bus
//! retries a failed write for as long as it takes (nothing is skipped), so a
//! record that can never be written would stall its partition for good.
//! Hence three nested bounds, each leaving room for what the next stage adds:
//! a publishing path (gateway, table-dump adapter, change capture) refuses a
//! record above [`MAX_PUBLISHED_BYTES`] with `message_too_large`; the router
//! dead-letters a canonical record above [`MAX_ROUTED_BYTES`]; and a dead
//! letter that would still exceed [`MAX_RECORD_BYTES`] leaves out what does not
//! fit, and says so ([`crate::headers::fitted_dead_letter`]).

use std::borrow::Cow;

use govbus_validate::{Accepted, Reason, Rejection};
use rdkafka::message::OwnedHeaders;

/// The largest record a govbus producer writes, key, value and headers
/// together: the `message.max.bytes` of [`crate::config::producer`].
pub const MAX_RECORD_BYTES: usize = 1_000_000;

/// Room a routed record leaves below [`MAX_RECORD_BYTES`], so that a sink's
/// dead letter of it (its error headers added) still fits.
pub const DEAD_LETTER_ROOM: usize = 16 * 1024;

/// The largest canonical record (key, value and headers) the router writes.
pub const MAX_ROUTED_BYTES: usize = MAX_RECORD_BYTES - DEAD_LETTER_ROOM;

/// The largest key (counted twice: `ce_subject` repeats it) and value
/// together a publishing path accepts: room for the headers it and the
/// router add.
pub const MAX_PUBLISHED_BYTES: usize = MAX_ROUTED_BYTES - 8 * 1024;

/// librdkafka's fixed allowance per record (`RD_KAFKAP_MESSAGE_V2_MAX_OVERHEAD`:
/// the varint length, attributes, timestamp and offset deltas, key and value
/// lengths and header count at their largest).
const RECORD_OVERHEAD: usize = 36;

/// A record's size as librdkafka checks it against `message.max.bytes`
/// (`rd_kafka_msg_max_wire_size`): the fixed allowance, key, value, and each
/// header's name and value with their zigzag-varint lengths.
pub fn record_bytes(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: Option<&OwnedHeaders>,
) -> usize {
    let headers: usize = headers.map_or(0, |hs| {
        crate::headers::raw(hs)
            .map(|(name, value)| {
                let v = value.map_or(0, <[u8]>::len);
                name.len() + v + varint_len(name.len()) + varint_len(v)
            })
            .sum()
    });
    RECORD_OVERHEAD + key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len) + headers
}

/// Bytes of `n` as a zigzag varint (how librdkafka writes header lengths).
fn varint_len(n: usize) -> usize {
    let mut z = (n as u64) << 1;
    let mut len = 1;
    while z >= 0x80 {
        z >>= 7;
        len += 1;
    }
    len
}

/// The publishing edge's size check on a validated record: one whose key
/// and canonical value exceed [`MAX_PUBLISHED_BYTES`] is refused with
/// `message_too_large` (the router would only dead-letter it).
pub fn publishable(a: Accepted) -> Result<Accepted, Rejection> {
    // The key travels twice: as the message key and as `ce_subject`.
    let size = 2 * a.key.len() + a.value.len();
    if size > MAX_PUBLISHED_BYTES {
        return Err(Rejection {
            reason: Reason::MessageTooLarge,
            field: None,
            detail: Cow::Owned(format!(
                "the record is {size} bytes as canonical Avro with its key (counted twice: it is also the ce_subject header); the bus carries at most {MAX_PUBLISHED_BYTES}"
            )),
        });
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Header;

    #[test]
    fn record_bytes_is_librdkafkas_count() {
        assert_eq!(record_bytes(None, None, None), 36);
        let hs = OwnedHeaders::new()
            .insert(Header {
                key: "ce_id",
                value: Some("e-1".as_bytes()),
            })
            .insert(Header::<&[u8]> {
                key: "n",
                value: None,
            });
        // 36 + key 1 + value 2 + ("ce_id" 5 + "e-1" 3 + 1 + 1) + ("n" 1 + 0 + 1 + 1)
        assert_eq!(
            record_bytes(Some(b"k"), Some(b"vv"), Some(&hs)),
            36 + 3 + 10 + 3
        );
        assert_eq!(varint_len(63), 1);
        assert_eq!(varint_len(64), 2);
        assert_eq!(varint_len(1_000_000), 3);
    }
}
