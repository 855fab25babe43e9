//! ListTransactions (key 66), versions 0-2.
//! v1: duration filter (KIP-994: transactions started more than this long ago). v2: transactional id
//! pattern (KIP-1152, a regular expression the whole id must match).
//! Kafka's TransactionStateManager.listTransactionStates: Dead ids are left out; each filter given
//! narrows the list; state filters that name no state are echoed back in unknown_state_filters.
//! Serves `kafka-transactions list`.

use kafka_protocol::messages::list_transactions_response::TransactionState;
use kafka_protocol::messages::{
    ApiKey, ListTransactionsRequest, ListTransactionsResponse, ProducerId, RequestHeader,
    TransactionalId,
};
use std::sync::Arc;

use super::{str_bytes, ApiSpec, Reply};
use crate::txn::TxnState;
use crate::{error, Broker};

pub const API: ApiSpec = ApiSpec {
    key: ApiKey::ListTransactions,
    min: 0,
    max: 2,
};

const STATES: [TxnState; 8] = [
    TxnState::Empty,
    TxnState::Ongoing,
    TxnState::PrepareCommit,
    TxnState::PrepareAbort,
    TxnState::CompleteCommit,
    TxnState::CompleteAbort,
    TxnState::PrepareEpochFence,
    TxnState::Dead,
];

pub fn handle(
    broker: &Arc<Broker>,
    header: &RequestHeader,
    req: ListTransactionsRequest,
) -> Reply<ListTransactionsResponse> {
    let version = header.request_api_version;
    let resp = ListTransactionsResponse::default();
    let unknown: Vec<_> = req
        .state_filters
        .iter()
        .filter(|f| !STATES.iter().any(|s| s.name() == f.as_str()))
        .cloned()
        .collect();
    let pattern = match req
        .transactional_id_pattern
        .as_ref()
        .filter(|_| version >= 2)
    {
        // Anchored: the whole id must match (Kafka's Pattern.matcher(id).matches()).
        Some(p) if !p.is_empty() => match regex::Regex::new(&format!("^(?:{})$", p.as_str())) {
            Ok(re) => Some(re),
            Err(_) => return Reply::Now(resp.with_error_code(error::INVALID_REGULAR_EXPRESSION)),
        },
        _ => None,
    };
    let duration = if version >= 1 {
        req.duration_filter
    } else {
        -1
    };
    let now = crate::group::now_ms();
    let states = broker
        .txns
        .list()
        .into_iter()
        .filter(|t| t.meta.state != TxnState::Dead)
        .filter(|t| {
            req.producer_id_filters.is_empty()
                || req
                    .producer_id_filters
                    .contains(&ProducerId(t.meta.producer_id))
        })
        .filter(|t| {
            req.state_filters.is_empty()
                || req
                    .state_filters
                    .iter()
                    .any(|f| f.as_str() == t.meta.state.name())
        })
        .filter(|t| duration < 0 || now - t.meta.start_ms > duration)
        .filter(|t| {
            pattern
                .as_ref()
                .is_none_or(|re| re.is_match(&t.transactional_id))
        })
        .map(|t| {
            TransactionState::default()
                .with_transactional_id(TransactionalId(str_bytes(&t.transactional_id)))
                .with_producer_id(ProducerId(t.meta.producer_id))
                .with_transaction_state(str_bytes(t.meta.state.name()))
        })
        .collect();
    Reply::Now(
        resp.with_unknown_state_filters(unknown)
            .with_transaction_states(states),
    )
}
