//! EndTxn (key 26), versions 0-4.
//! v1: same as v0. v2: PRODUCER_FENCED (KIP-588; older versions get INVALID_PRODUCER_EPOCH). v3:
//! flexible. v4: TRANSACTION_ABORTABLE may be answered. v5 (transaction.version 2, KIP-890's epoch
//! bump at every end) is not served, so clients use the version 1 protocol.
//! The answer comes once the decision is durable and, unless writing them fails, once the markers are
//! written: the client's next transaction then never waits on CONCURRENT_TRANSACTIONS.

use kafka_protocol::messages::{ApiKey, EndTxnRequest, EndTxnResponse, RequestHeader};
use std::sync::Arc;

use super::{ApiSpec, Reply};
use crate::{error, Broker};

pub const API: ApiSpec = ApiSpec {
    key: ApiKey::EndTxn,
    min: 0,
    max: 4,
};

pub fn handle(
    broker: &Arc<Broker>,
    header: &RequestHeader,
    req: EndTxnRequest,
) -> Reply<EndTxnResponse> {
    let version = header.request_api_version;
    let broker = broker.clone();
    Reply::in_order(async move {
        let code = match broker
            .txns
            .end(
                &req.transactional_id,
                req.producer_id.0,
                req.producer_epoch,
                req.committed,
            )
            .await
        {
            Ok(()) => error::NONE,
            Err(error::PRODUCER_FENCED) if version < 2 => error::INVALID_PRODUCER_EPOCH,
            Err(code) => code,
        };
        Reply::Now(EndTxnResponse::default().with_error_code(code))
    })
}
