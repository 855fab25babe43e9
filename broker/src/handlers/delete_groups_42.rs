//! DeleteGroups (key 42), versions 0-2.
//! v1: same as v0. v2: flexible. Only groups without members can be deleted (NON_EMPTY_GROUP);
//! their committed offsets go with them. Validated and queued in the in-order part (see
//! offset_commit_08.rs), so a commit sent after it on the connection lands after the deletion.

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{ApiKey, DeleteGroupsRequest, DeleteGroupsResponse, RequestHeader};
use std::sync::Arc;

use super::{ApiSpec, Reply};
use crate::{error, Broker};

pub const API: ApiSpec = ApiSpec {
    key: ApiKey::DeleteGroups,
    min: 0,
    max: 2,
};

pub fn handle(
    broker: &Arc<Broker>,
    _header: &RequestHeader,
    req: DeleteGroupsRequest,
) -> Reply<DeleteGroupsResponse> {
    let queued: Vec<_> = req
        .groups_names
        .into_iter()
        .map(|g| {
            let r = broker.groups.delete_group(&g);
            (g, r)
        })
        .collect();
    Reply::Later(Box::pin(async move {
        let mut results = Vec::with_capacity(queued.len());
        for (g, r) in queued {
            let code = match r {
                Err(code) => code,
                Ok(deleted) => match deleted.await {
                    Ok(true) => error::NONE,
                    _ => error::COORDINATOR_NOT_AVAILABLE,
                },
            };
            results.push(
                DeletableGroupResult::default()
                    .with_group_id(g)
                    .with_error_code(code),
            );
        }
        DeleteGroupsResponse::default().with_results(results)
    }))
}
