//! Helpers for StreamHouse's tests, benchmarks and nothing else (a dev-dependency only): one
//! record-batch builder ([`batch`]), one request framing and response decoding, with a socket
//! client on top ([`frame`]), and, behind the `broker` feature, the one way tests start a broker
//! in-process ([`broker`]).
//!
//! Why the split: `batch` and `frame` use raw bytes, the codec crates and kafka-protocol only, none
//! of our crates, so protocol's and storage's tests can use them without linking a second copy of
//! the crate under test (and the batches are made independently of the code that reads them).
//! Starting a broker needs streamhouse-broker, which depends on protocol and storage, so it is the
//! opt-in `broker` feature: broker's own tests (a dev-dependency cycle cargo allows, since
//! integration tests link the same library the helper does) and compat-tests turn it on.

pub mod batch;
#[cfg(feature = "broker")]
pub mod broker;
pub mod frame;
