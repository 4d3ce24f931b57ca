//! Record headers rdkafka's API cannot build.

use rdkafka::bindings as rd;
use rdkafka::message::{BorrowedHeaders, OwnedHeaders};

/// `headers` with one more header named by raw bytes — not UTF-8, say: what
/// a department's own Kafka client can send (a Kafka header name is bytes
/// on the wire), and rdkafka's `OwnedHeaders::insert` (a `&str` name)
/// cannot.
#[allow(unsafe_code)]
pub fn with_raw_name(headers: OwnedHeaders, name: &[u8], value: &[u8]) -> OwnedHeaders {
    let list = headers.as_borrowed() as *const BorrowedHeaders as *mut rd::rd_kafka_headers_t;
    // SAFETY: a `&BorrowedHeaders` is rdkafka's zero-sized view of the native
    // list `headers` owns (its address is the list pointer), which we hold
    // by value, so nothing else reads it while the header is added; the name
    // and value are copied by librdkafka with the sizes given.
    let err = unsafe {
        rd::rd_kafka_header_add(
            list,
            name.as_ptr().cast(),
            name.len() as isize,
            value.as_ptr().cast(),
            value.len() as isize,
        )
    };
    assert_eq!(err, rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR);
    headers
}
