//! One module per Kafka API, named by api key like franz-go's kfake. Each module opens with the
//! versions it serves and what they added, and declares them in its `API` constant; [`SUPPORTED`] lists
//! those constants, ApiVersions answers from it and dispatch refuses anything outside it, so the
//! advertised versions cannot drift from what is implemented.

pub mod add_offsets_to_txn_25;
pub mod add_partitions_to_txn_24;
pub mod api_versions_18;
pub mod consumer_group_describe_69;
pub mod consumer_group_heartbeat_68;
pub mod create_partitions_37;
pub mod create_topics_19;
pub mod delete_groups_42;
pub mod delete_records_21;
pub mod delete_topics_20;
pub mod describe_cluster_60;
pub mod describe_configs_32;
pub mod describe_groups_15;
pub mod describe_log_dirs_35;
pub mod describe_producers_61;
pub mod describe_transactions_65;
pub mod end_txn_26;
pub mod fetch_01;
pub mod find_coordinator_10;
pub mod heartbeat_12;
pub mod incremental_alter_configs_44;
pub mod init_producer_id_22;
pub mod join_group_11;
pub mod leave_group_13;
pub mod list_groups_16;
pub mod list_offsets_02;
pub mod list_transactions_66;
pub mod metadata_03;
pub mod offset_commit_08;
pub mod offset_delete_47;
pub mod offset_fetch_09;
pub mod produce_00;
pub mod sync_group_14;
pub mod txn_offset_commit_28;
pub mod write_txn_markers_27;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::{Encodable, HeaderVersion, StrBytes};
use std::net::SocketAddr;
use std::sync::Arc;
use streamhouse_protocol::codec::{self, CodecError, RawRequest};

use crate::limits::Held;
use crate::Broker;

/// An API and the versions this broker serves of it.
#[derive(Debug, Clone, Copy)]
pub struct ApiSpec {
    pub key: ApiKey,
    pub min: i16,
    pub max: i16,
}

pub const SUPPORTED: &[ApiSpec] = &[
    produce_00::API,
    fetch_01::API,
    list_offsets_02::API,
    metadata_03::API,
    offset_commit_08::API,
    offset_fetch_09::API,
    find_coordinator_10::API,
    join_group_11::API,
    heartbeat_12::API,
    leave_group_13::API,
    sync_group_14::API,
    describe_groups_15::API,
    list_groups_16::API,
    api_versions_18::API,
    create_topics_19::API,
    delete_topics_20::API,
    delete_records_21::API,
    init_producer_id_22::API,
    add_partitions_to_txn_24::API,
    add_offsets_to_txn_25::API,
    end_txn_26::API,
    write_txn_markers_27::API,
    txn_offset_commit_28::API,
    describe_configs_32::API,
    describe_log_dirs_35::API,
    create_partitions_37::API,
    delete_groups_42::API,
    incremental_alter_configs_44::API,
    offset_delete_47::API,
    describe_cluster_60::API,
    describe_producers_61::API,
    describe_transactions_65::API,
    list_transactions_66::API,
    consumer_group_heartbeat_68::API,
    consumer_group_describe_69::API,
];

pub fn spec(key: ApiKey) -> Option<&'static ApiSpec> {
    SUPPORTED.iter().find(|s| s.key == key)
}

/// A request's reply as the connection queues it: resolves, in any order, to what is written back;
/// the connection writes the finished ones in request order.
pub type QueuedReply = BoxFuture<'static, Outcome>;

/// What becomes of a request once its reply is ready.
pub enum Outcome {
    /// A response, encoded only when its turn to be written comes (see `limits`).
    Respond(Response),
    /// Kafka sends nothing (produce with acks=0), once the request is done.
    Silent,
    /// The response could not be encoded: close rather than leave the client waiting forever.
    Close,
}

/// A finished response, not encoded yet: its frame size, how to encode it, and the response bytes it
/// holds from queued.max.response.bytes (a fetch's), released once it is written.
pub struct Response {
    pub size: usize,
    encode: Box<dyn FnOnce() -> Option<Bytes> + Send>,
    pub held: Held,
}

impl Response {
    /// The encoded frame; `None` if it cannot be encoded (the connection is then closed).
    pub fn encode(self) -> Option<Bytes> {
        (self.encode)()
    }
}

/// What a handler returns: the one name for "answered now or later".
///
/// A handler is a plain (not `async`) function: everything it does before returning is its in-order
/// part, run on the connection in the order the requests were read, and it cannot wait there by
/// accident. Waiting in request order is spelled [`Reply::InOrder`]; every other wait happens after the
/// connection has moved on to the next request.
pub enum Reply<T> {
    Now(T),
    /// Work the connection finishes before it starts the next request, because the client's next
    /// request must see its effects (Kafka handles one request of a connection at a time): produce's
    /// validation and submit to the writer, topic admin, a KIP-848 heartbeat step, the transaction
    /// steps (AddPartitionsToTxn, AddOffsetsToTxn, TxnOffsetCommit, EndTxn) whose effects the
    /// producer's next request relies on. It stalls every pipelined request behind it, so nothing
    /// else belongs here.
    InOrder(BoxFuture<'static, Reply<T>>),
    /// After the in-order part, concurrently with the requests read next.
    Later(BoxFuture<'static, T>),
    /// Later, with response bytes held until the answer is written (fetches).
    LaterHeld(BoxFuture<'static, (T, Held)>),
    /// No answer (acks=0), but the request is not done before the given work is.
    SilentAfter(BoxFuture<'static, ()>),
    Silent,
}

impl<T: Send + 'static> Reply<T> {
    /// `f` run in request order; what it returns is the reply.
    pub fn in_order(f: impl std::future::Future<Output = Reply<T>> + Send + 'static) -> Self {
        Reply::InOrder(Box::pin(f))
    }

    /// The answer `f` gives, after the in-order part.
    pub fn later(f: impl std::future::Future<Output = T> + Send + 'static) -> Self {
        Reply::Later(Box::pin(f))
    }
}

/// Runs a reply's in-order part, then turns it into the connection's queue entry.
async fn queue<T: Encodable + HeaderVersion + Send + 'static>(
    correlation_id: i32,
    version: i16,
    mut reply: Reply<T>,
) -> QueuedReply {
    let respond = move |body: T, held: Held| match codec::response_size(version, &body) {
        Ok(size) => Outcome::Respond(Response {
            size,
            encode: Box::new(move || {
                codec::encode_response(correlation_id, version, &body)
                    .map_err(|e| tracing::error!(error = %e, "failed to encode a response"))
                    .ok()
            }),
            held,
        }),
        Err(e) => {
            tracing::error!(error = %e, "failed to size a response; closing the connection");
            Outcome::Close
        }
    };
    loop {
        return match reply {
            Reply::InOrder(first) => {
                reply = first.await;
                continue;
            }
            Reply::Now(body) => {
                let out = respond(body, Held::none());
                Box::pin(async move { out })
            }
            Reply::Later(fut) => Box::pin(async move { respond(fut.await, Held::none()) }),
            Reply::LaterHeld(fut) => Box::pin(async move {
                let (body, held) = fut.await;
                respond(body, held)
            }),
            Reply::SilentAfter(fut) => Box::pin(async move {
                fut.await;
                Outcome::Silent
            }),
            Reply::Silent => Box::pin(async { Outcome::Silent }),
        };
    }
}

/// Runs one request frame (without its size prefix) through decoding and its handler, as a connection
/// would, and returns the encoded response frame: for the fuzzer and the property tests, which reach
/// every served API this way.
pub async fn serve_frame(broker: &Arc<Broker>, frame: Bytes) -> Option<Bytes> {
    let queued = dispatch(broker, frame, SocketAddr::from(([127, 0, 0, 1], 1)))
        .await
        .ok()?;
    match queued.await {
        Outcome::Respond(r) => r.encode(),
        Outcome::Silent | Outcome::Close => None,
    }
}

/// A request frame for `SUPPORTED[pick % len]` at a version chosen by `version_pick` within its range,
/// with `body` as its body bytes (fuzzing: arbitrary bytes become a request of a served API).
pub fn fuzz_frame(pick: u8, version_pick: u8, body: &[u8]) -> Bytes {
    let spec = SUPPORTED[pick as usize % SUPPORTED.len()];
    let span = (spec.max - spec.min + 1) as u8;
    let version = spec.min + (version_pick % span) as i16;
    let header = kafka_protocol::messages::RequestHeader::default()
        .with_request_api_key(spec.key as i16)
        .with_request_api_version(version)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str("fuzz")));
    let mut buf = bytes::BytesMut::new();
    // Encoding a default header into a growable buffer cannot fail.
    let _ = header.encode(&mut buf, spec.key.request_header_version(version));
    buf.extend_from_slice(body);
    buf.freeze()
}

/// Why a request frame closes the connection.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// The frame is not a well-formed request.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A well-formed request of an API or version outside what ApiVersions advertised.
    #[error("{api:?} v{version} is not served (see ApiVersions)")]
    NotServed { api: ApiKey, version: i16 },
}

/// Decodes one request frame and runs its handler's in-order part. An error means the connection must
/// be closed.
pub async fn dispatch(
    broker: &Arc<Broker>,
    frame: Bytes,
    peer: SocketAddr,
) -> Result<QueuedReply, DispatchError> {
    let raw = codec::decode_request_header(frame)?;
    let version = raw.header.request_api_version;
    let correlation_id = raw.header.correlation_id;
    // ApiVersions answers any version (KIP-511: an unknown one gets a v0 answer with the list).
    if raw.api_key == ApiKey::ApiVersions {
        let (v, resp) = api_versions_18::handle_raw(&raw, broker.config.transaction_version as i16);
        return Ok(queue(correlation_id, v, Reply::Now(resp)).await);
    }
    if !spec(raw.api_key).is_some_and(|s| (s.min..=s.max).contains(&version)) {
        // Kafka closes the connection on an API or version it does not serve; a well-behaved client
        // never sends one, because ApiVersions told it what is served.
        return Err(DispatchError::NotServed {
            api: raw.api_key,
            version,
        });
    }
    let RawRequest {
        api_key,
        header,
        body,
    } = raw;
    macro_rules! serve {
        ($module:ident, $what:literal) => {{
            let req = codec::decode_body(body, version, $what)?;
            queue(
                correlation_id,
                version,
                $module::handle(broker, &header, req),
            )
            .await
        }};
        ($module:ident, $what:literal, peer) => {{
            let req = codec::decode_body(body, version, $what)?;
            queue(
                correlation_id,
                version,
                $module::handle(broker, &header, req, peer),
            )
            .await
        }};
    }
    Ok(match api_key {
        ApiKey::Produce => serve!(produce_00, "Produce"),
        ApiKey::Fetch => serve!(fetch_01, "Fetch"),
        ApiKey::ListOffsets => serve!(list_offsets_02, "ListOffsets"),
        ApiKey::Metadata => serve!(metadata_03, "Metadata"),
        ApiKey::CreateTopics => serve!(create_topics_19, "CreateTopics"),
        ApiKey::DeleteTopics => serve!(delete_topics_20, "DeleteTopics"),
        ApiKey::InitProducerId => serve!(init_producer_id_22, "InitProducerId"),
        ApiKey::AddPartitionsToTxn => serve!(add_partitions_to_txn_24, "AddPartitionsToTxn"),
        ApiKey::AddOffsetsToTxn => serve!(add_offsets_to_txn_25, "AddOffsetsToTxn"),
        ApiKey::EndTxn => serve!(end_txn_26, "EndTxn"),
        ApiKey::WriteTxnMarkers => serve!(write_txn_markers_27, "WriteTxnMarkers"),
        ApiKey::DescribeProducers => serve!(describe_producers_61, "DescribeProducers"),
        ApiKey::TxnOffsetCommit => serve!(txn_offset_commit_28, "TxnOffsetCommit"),
        ApiKey::DescribeConfigs => serve!(describe_configs_32, "DescribeConfigs"),
        ApiKey::DescribeLogDirs => serve!(describe_log_dirs_35, "DescribeLogDirs"),
        ApiKey::DescribeCluster => serve!(describe_cluster_60, "DescribeCluster"),
        ApiKey::DescribeTransactions => {
            serve!(describe_transactions_65, "DescribeTransactions")
        }
        ApiKey::ListTransactions => serve!(list_transactions_66, "ListTransactions"),
        ApiKey::OffsetCommit => serve!(offset_commit_08, "OffsetCommit"),
        ApiKey::OffsetFetch => serve!(offset_fetch_09, "OffsetFetch"),
        ApiKey::FindCoordinator => serve!(find_coordinator_10, "FindCoordinator"),
        ApiKey::JoinGroup => serve!(join_group_11, "JoinGroup", peer),
        ApiKey::Heartbeat => serve!(heartbeat_12, "Heartbeat"),
        ApiKey::LeaveGroup => serve!(leave_group_13, "LeaveGroup"),
        ApiKey::SyncGroup => serve!(sync_group_14, "SyncGroup"),
        ApiKey::DescribeGroups => serve!(describe_groups_15, "DescribeGroups"),
        ApiKey::ListGroups => serve!(list_groups_16, "ListGroups"),
        ApiKey::DeleteGroups => serve!(delete_groups_42, "DeleteGroups"),
        ApiKey::OffsetDelete => serve!(offset_delete_47, "OffsetDelete"),
        ApiKey::CreatePartitions => serve!(create_partitions_37, "CreatePartitions"),
        ApiKey::DeleteRecords => serve!(delete_records_21, "DeleteRecords"),
        ApiKey::IncrementalAlterConfigs => {
            serve!(incremental_alter_configs_44, "IncrementalAlterConfigs")
        }
        ApiKey::ConsumerGroupHeartbeat => {
            serve!(consumer_group_heartbeat_68, "ConsumerGroupHeartbeat", peer)
        }
        ApiKey::ConsumerGroupDescribe => {
            serve!(consumer_group_describe_69, "ConsumerGroupDescribe")
        }
        other => {
            return Err(DispatchError::NotServed {
                api: other,
                version,
            })
        }
    })
}

/// Whether a request that has already added `added` partitions may add `more`: at most
/// max.partitions.per.request per request, max.broker.partitions in all. `Err` holds the message for
/// INVALID_PARTITIONS. (Two requests at once may together pass the broker limit by one request's worth.)
pub fn check_new_partitions(broker: &Broker, added: i64, more: i64) -> Result<(), String> {
    let c = &broker.config;
    if added + more > c.max_partitions_per_request as i64 {
        return Err(format!(
            "The request would create {} partitions, more than max.partitions.per.request {}.",
            added + more,
            c.max_partitions_per_request
        ));
    }
    let total = broker.storage.partition_count() as i64 + added + more;
    if total > c.max_broker_partitions as i64 {
        return Err(format!(
            "The broker would have {total} partitions, more than max.broker.partitions {}.",
            c.max_broker_partitions
        ));
    }
    Ok(())
}

/// Kafka's topic-name rule (Topic.validate): 1-249 characters of [a-zA-Z0-9._-], not "." or "..".
pub fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

pub fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// Kafka's value for "authorized operations not requested".
pub const AUTHORIZED_OPERATIONS_OMITTED: i32 = i32::MIN;

/// Authorized operations as Kafka answers them without an authorizer: every operation the resource
/// type supports (AuthHelper.authorizedOperations over AclEntry.supportedOperations), one bit per
/// AclOperation code (READ 3, WRITE 4, CREATE 5, DELETE 6, ALTER 7, DESCRIBE 8, CLUSTER_ACTION 9,
/// DESCRIBE_CONFIGS 10, ALTER_CONFIGS 11, IDEMPOTENT_WRITE 12).
const fn operations(codes: &[u8]) -> i32 {
    let mut bits = 0i32;
    let mut i = 0;
    while i < codes.len() {
        bits |= 1 << codes[i];
        i += 1;
    }
    bits
}
pub const TOPIC_AUTHORIZED_OPERATIONS: i32 = operations(&[3, 4, 5, 6, 7, 8, 10, 11]);
pub const CLUSTER_AUTHORIZED_OPERATIONS: i32 = operations(&[5, 7, 8, 9, 10, 11, 12]);
pub const GROUP_AUTHORIZED_OPERATIONS: i32 = operations(&[3, 6, 8, 10, 11]);

/// The bitfield when asked for, else Kafka's "omitted".
pub fn authorized_operations(included: bool, ops: i32) -> i32 {
    if included {
        ops
    } else {
        AUTHORIZED_OPERATIONS_OMITTED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_name_rules() {
        assert!(valid_topic_name("orders.v1_x-2"));
        for bad in ["", ".", "..", "a b", "ü", &"x".repeat(250)] {
            assert!(!valid_topic_name(bad), "{bad}");
        }
    }

    #[test]
    fn every_supported_api_has_a_decodable_range() {
        for s in SUPPORTED {
            assert!(s.min <= s.max, "{:?}", s.key);
        }
    }
}
