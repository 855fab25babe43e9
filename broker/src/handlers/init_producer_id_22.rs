//! InitProducerId (key 22), versions 0-5.
//! v1: same as v0. v2: flexible. v3: producer id and epoch in the request, for epoch bumps (KIP-360).
//! v4: same as v3. v5: keep_prepared_txn (KIP-939).
//! For an idempotent (non-transactional) producer Kafka always hands out a fresh producer id, even when
//! the request carries the old one (TransactionCoordinator.handleInitProducerId); so do we, from a
//! counter kept in the metadata store so ids are never reused across restarts.

use kafka_protocol::messages::{
    ApiKey, InitProducerIdRequest, InitProducerIdResponse, ProducerId, RequestHeader,
};
use std::sync::Arc;

use super::{ApiSpec, Reply};
use crate::{error, Broker};

pub const API: ApiSpec = ApiSpec {
    key: ApiKey::InitProducerId,
    min: 0,
    max: 5,
};

pub fn handle(
    broker: &Arc<Broker>,
    _header: &RequestHeader,
    req: InitProducerIdRequest,
) -> Reply<InitProducerIdResponse> {
    let resp = InitProducerIdResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    if req.transactional_id.is_some() {
        // Transactions are not implemented yet; a clear non-retriable error beats a hang.
        return Reply::Now(resp.with_error_code(error::TRANSACTIONAL_ID_AUTHORIZATION_FAILED));
    }
    // Not in request order: nothing the client sends next depends on which id it gets.
    let broker = broker.clone();
    Reply::later(async move {
        match broker.storage.allocate_producer_id().await {
            Ok(id) => resp.with_producer_id(ProducerId(id)).with_producer_epoch(0),
            Err(e) => resp.with_error_code(e.kafka_error_code()),
        }
    })
}
