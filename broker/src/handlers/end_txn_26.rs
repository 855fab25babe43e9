//! EndTxn (key 26), versions 0-5.
//! v1: same as v0. v2: PRODUCER_FENCED (KIP-588; older versions get INVALID_PRODUCER_EPOCH). v3:
//! flexible. v4: TRANSACTION_ABORTABLE may be answered. v5: transaction.version 2 (KIP-890): the end
//! bumps the producer's epoch (the markers carry the new one) and the answer holds the producer id and
//! epoch to continue with; as in Kafka, the request's version decides this.
//! The answer comes once the decision is durable and, unless writing them fails, once the markers are
//! written: the client's next transaction then never waits on CONCURRENT_TRANSACTIONS.

use kafka_protocol::messages::{ApiKey, EndTxnRequest, EndTxnResponse, ProducerId, RequestHeader};
use std::sync::Arc;

use super::{ApiSpec, Reply};
use crate::{error, Broker};

pub const API: ApiSpec = ApiSpec {
    key: ApiKey::EndTxn,
    min: 0,
    max: 5,
};

pub fn handle(
    broker: &Arc<Broker>,
    header: &RequestHeader,
    req: EndTxnRequest,
) -> Reply<EndTxnResponse> {
    let version = header.request_api_version;
    let broker = broker.clone();
    Reply::in_order(async move {
        let resp = EndTxnResponse::default()
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
        let resp = match broker
            .txns
            .end(
                &req.transactional_id,
                req.producer_id.0,
                req.producer_epoch,
                req.committed,
                version >= 5,
            )
            .await
        {
            Ok((pid, epoch)) if version >= 5 => resp
                .with_producer_id(ProducerId(pid))
                .with_producer_epoch(epoch),
            Ok(_) => resp,
            Err(error::PRODUCER_FENCED) if version < 2 => {
                resp.with_error_code(error::INVALID_PRODUCER_EPOCH)
            }
            Err(code) => resp.with_error_code(code),
        };
        Reply::Now(resp)
    })
}
