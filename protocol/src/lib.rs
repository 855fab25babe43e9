//! Kafka wire protocol for StreamHouse: length-prefixed framing with a size cap checked before any
//! allocation, request header decoding by api key and version, response encoding with the right
//! header version, and record-batch (magic v2) validation and offset patching.
//!
//! Message bodies come from the `kafka-protocol` crate (vendored with a fix for untrusted array counts,
//! see `vendor/README.md`). Records are never decoded on the hot path: a batch is validated by walking its
//! header and, for uncompressed batches, the varint structure of its records, then stored verbatim.

pub mod batch;
pub mod codec;
pub mod frame;

pub use kafka_protocol;
