//! Nodes of the remote backend: register (checked by calling the node), list (each asked
//! how it is), remove (refused while sandboxes live there). Tokens go in, never out.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use cthulu_remote::{probe, validate_node_name, Node};
use cthulu_types::{AddNodeRequest, ErrorBody, ErrorCode, NodeList, NodeSummary, ServerInfo};

use super::ApiJson;
use crate::error::{ApiFailure, ApiResult};
use crate::state::AppState;

/// Longest node token accepted.
const MAX_TOKEN_BYTES: usize = 4096;
/// Longest node URL accepted.
const MAX_URL_BYTES: usize = 2048;

#[utoipa::path(
    post, path = "/api/v1/nodes", tag = "nodes",
    request_body = AddNodeRequest,
    responses(
        (status = 201, description = "Registered", body = NodeSummary),
        (status = 400, description = "Bad name or URL, or the node refused the token or did not answer as a node", body = ErrorBody),
        (status = 409, description = "A node of that name exists", body = ErrorBody),
    )
)]
pub async fn add(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<AddNodeRequest>,
) -> ApiResult<(StatusCode, ApiJson<NodeSummary>)> {
    validate_node_name(&request.name).map_err(ApiFailure::bad_request)?;
    if request.token.trim().is_empty() {
        return Err(ApiFailure::bad_request("the node's token is empty")
            .with_hint("give the token the node was started with (--token)"));
    }
    // It goes into an HTTP header: printable ASCII only, and not a novel.
    if request.token.len() > MAX_TOKEN_BYTES
        || !request.token.bytes().all(|byte| byte.is_ascii_graphic())
    {
        return Err(ApiFailure::bad_request(format!(
            "the node's token must be 1-{MAX_TOKEN_BYTES} printable ASCII characters without spaces"
        )));
    }
    if request.url.len() > MAX_URL_BYTES {
        return Err(ApiFailure::bad_request(format!(
            "the node's URL is longer than {MAX_URL_BYTES} bytes"
        )));
    }
    if state.remote.nodes().get(&request.name).is_some() {
        return Err(conflict(&request.name));
    }
    let node = Node {
        name: request.name,
        url: request.url.trim().trim_end_matches('/').to_owned(),
        token: request.token,
    };
    // Nothing is stored unless the node answers as a node, with this token.
    let info = probe(&node).await.map_err(|error| {
        ApiFailure::bad_request(format!(
            "node {} at {} cannot be registered: {error}",
            node.name, node.url
        ))
        .with_hint(match error.code() {
            ErrorCode::BackendUnavailable => {
                "check the token: it must be the one the node was started with"
            }
            _ => "check the URL and that `cthulu node` runs there",
        })
    })?;
    let added_at_ms = cthulu_types::now_ms();
    if !state.db.insert_node(&node, added_at_ms)? {
        return Err(conflict(&node.name));
    }
    state.remote.nodes().insert(node.clone());
    state.remote.nodes().record_info(&node.name, &info);
    tracing::info!(node = %node.name, url = %node.url, "node registered");
    Ok((
        StatusCode::CREATED,
        ApiJson(summary(&state, &node, added_at_ms, Ok(&info))),
    ))
}

fn conflict(name: &str) -> ApiFailure {
    ApiFailure::new(
        ErrorCode::Conflict,
        format!("a node named {name} is already registered"),
    )
    .with_hint("remove it first with `cthulu node rm NAME`, or pick another name")
}

#[utoipa::path(
    get, path = "/api/v1/nodes", tag = "nodes",
    responses((status = 200, body = NodeList))
)]
pub async fn list(State(state): State<Arc<AppState>>) -> ApiResult<ApiJson<NodeList>> {
    let records = state.db.list_nodes()?;
    let answers =
        futures_util::future::join_all(records.iter().map(|record| probe(&record.node))).await;
    let nodes = records
        .iter()
        .zip(answers)
        .map(|(record, answer)| {
            if let Ok(info) = &answer {
                state.remote.nodes().record_info(&record.node.name, info);
            }
            let answer = answer.as_ref().map_err(|error| error.to_string());
            summary(&state, &record.node, record.added_at_ms, answer)
        })
        .collect();
    Ok(ApiJson(NodeList { nodes }))
}

fn summary(
    state: &AppState,
    node: &Node,
    added_at_ms: u64,
    answer: Result<&ServerInfo, String>,
) -> NodeSummary {
    let platform_sandboxes = state.remote.sandboxes_on(&node.name).len() as u64;
    let (reachable, error, info) = match answer {
        Ok(info) => (true, None, Some(info)),
        Err(error) => (false, Some(error), None),
    };
    NodeSummary {
        name: node.name.clone(),
        url: node.url.clone(),
        reachable,
        error,
        capacity: info.map(|info| info.capacity.clone()),
        backends: info
            .map(|info| {
                info.backends
                    .iter()
                    .filter(|backend| backend.available)
                    .map(|backend| backend.kind)
                    .collect()
            })
            .unwrap_or_default(),
        default_backend: info.map(|info| info.default_backend),
        platform_sandboxes,
        added_at_ms,
    }
}

#[utoipa::path(
    delete, path = "/api/v1/nodes/{name}", tag = "nodes",
    params(("name" = String, Path)),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "No such node", body = ErrorBody),
        (status = 409, description = "Sandboxes live there", body = ErrorBody),
    )
)]
pub async fn remove(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    if state.remote.nodes().get(&name).is_none() {
        return Err(ApiFailure::new(
            ErrorCode::BadRequest,
            format!("no node named {name} is registered"),
        )
        .with_hint("list them with `cthulu node ls`"));
    }
    let live = state.remote.sandboxes_on(&name);
    if !live.is_empty() {
        let ids: Vec<&str> = live.iter().map(|id| id.as_str()).collect();
        return Err(ApiFailure::new(
            ErrorCode::Conflict,
            format!(
                "node {name} still holds {} sandbox(es): {}",
                ids.len(),
                ids.join(", ")
            ),
        )
        .with_hint("destroy them first (`cthulu sandbox rm ID`)"));
    }
    state.db.delete_node(&name)?;
    state.remote.nodes().remove(&name);
    tracing::info!(node = %name, "node removed");
    Ok(StatusCode::NO_CONTENT)
}
