//! Kafka wire protocol for StreamHouse: length-prefixed framing with a size cap checked before any
//! allocation, request header decoding by api key and version, response encoding with the right
//! header version, and record-batch (magic v2) validation and offset patching.
//!
//! Message bodies come from the `kafka-protocol` crate (vendored with a fix for untrusted array counts,
//! see `vendor/README.md`). Records are never decoded into objects: a batch is validated by walking its
//! header and the varint structure of its records (compressed ones through a bounded streaming
//! decompressor, `compression` and `records`), checked against the topic's rules (`validator`, Kafka's
//! LogValidator) and stored verbatim unless the topic asks for a rewrite.

pub mod batch;
pub mod cleaner;
pub mod codec;
pub mod compression;
pub mod control;
pub mod frame;
pub mod records;
pub mod validator;

pub use kafka_protocol;
