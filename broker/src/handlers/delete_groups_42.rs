//! DeleteGroups (key 42), versions 0-2.
//! v1: same as v0. v2: flexible. Only groups without members can be deleted (NON_EMPTY_GROUP);
//! their committed offsets go with them.

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

pub async fn handle(
    broker: &Arc<Broker>,
    _header: &RequestHeader,
    req: DeleteGroupsRequest,
) -> Reply<DeleteGroupsResponse> {
    let broker = broker.clone();
    Reply::Later(Box::pin(async move {
        let mut results = Vec::with_capacity(req.groups_names.len());
        for g in req.groups_names {
            let code = if g.is_empty() {
                error::INVALID_GROUP_ID
            } else {
                broker.groups.delete_group(&g).await
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
