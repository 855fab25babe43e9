//! InitProducerId (key 22), versions 0-5.
//! v1: same as v0. v2: flexible. v3: producer id and epoch in the request, for epoch bumps (KIP-360).
//! v4: same as v3. v5: keep_prepared_txn (KIP-939).
//! For an idempotent (non-transactional) producer Kafka always hands out a fresh producer id, even when
//! the request carries the old one (TransactionCoordinator.handleInitProducerId); so do we, from a
//! counter kept in the metadata store so ids are never reused across restarts. With a transactional
//! id the transaction coordinator answers (`txn`): epoch bumps, fencing of the previous producer.
//! PRODUCER_FENCED exists from v4 on (KIP-588); older versions get INVALID_PRODUCER_EPOCH.

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
    header: &RequestHeader,
    req: InitProducerIdRequest,
) -> Reply<InitProducerIdResponse> {
    let resp = InitProducerIdResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    // Not in request order: nothing the client sends next depends on which id it gets.
    let broker = broker.clone();
    if let Some(id) = req.transactional_id {
        let version = header.request_api_version;
        return Reply::later(async move {
            crate::internal_topics::ensure(&broker, crate::internal_topics::TRANSACTION_STATE)
                .await;
            let expected = (req.producer_id.0, req.producer_epoch);
            match broker
                .txns
                .init_producer_id(&id, req.transaction_timeout_ms, expected)
                .await
            {
                Ok((pid, epoch)) => resp
                    .with_producer_id(ProducerId(pid))
                    .with_producer_epoch(epoch),
                Err(error::PRODUCER_FENCED) if version < 4 => {
                    resp.with_error_code(error::INVALID_PRODUCER_EPOCH)
                }
                Err(code) => resp.with_error_code(code),
            }
        });
    }
    Reply::later(async move {
        match broker.storage.allocate_producer_id().await {
            Ok(id) => resp.with_producer_id(ProducerId(id)).with_producer_epoch(0),
            Err(e) => resp.with_error_code(e.kafka_error_code()),
        }
    })
}
