//! AddOffsetsToTxn (key 25), versions 0-4.
//! v1: same as v0. v2: PRODUCER_FENCED (KIP-588; older versions get INVALID_PRODUCER_EPOCH). v3:
//! flexible. v4: TRANSACTION_ABORTABLE may be answered.
//! Adds the group's offsets to the producer's transaction (Kafka adds the group's
//! __consumer_offsets partition): its TxnOffsetCommits then count only if the transaction commits.
//! Answered in request order, like AddPartitionsToTxn.

use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, ApiKey, RequestHeader,
};
use std::sync::Arc;

use super::{ApiSpec, Reply};
use crate::{error, Broker};

pub const API: ApiSpec = ApiSpec {
    key: ApiKey::AddOffsetsToTxn,
    min: 0,
    max: 4,
};

pub fn handle(
    broker: &Arc<Broker>,
    header: &RequestHeader,
    req: AddOffsetsToTxnRequest,
) -> Reply<AddOffsetsToTxnResponse> {
    let version = header.request_api_version;
    let broker = broker.clone();
    Reply::in_order(async move {
        let code = if req.group_id.is_empty() {
            error::INVALID_GROUP_ID
        } else {
            match broker
                .txns
                .add(
                    &req.transactional_id,
                    req.producer_id.0,
                    req.producer_epoch,
                    Vec::new(),
                    Some(req.group_id.to_string()),
                )
                .await
            {
                Ok(()) => error::NONE,
                Err(error::PRODUCER_FENCED) if version < 2 => error::INVALID_PRODUCER_EPOCH,
                Err(code) => code,
            }
        };
        Reply::Now(AddOffsetsToTxnResponse::default().with_error_code(code))
    })
}
