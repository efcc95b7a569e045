//! `POST /api/v1/sandboxes/{id}/terminal`: a short-lived URL that opens the sandbox's
//! exec WebSocket without the API key, for a browser terminal. For a remote sandbox the
//! URL is the node's: the terminal goes straight there, not through this server.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::header::HOST;
use axum::http::HeaderMap;
use cthulu_types::sandbox::Operation;
use cthulu_types::{BackendKind, ErrorBody, ErrorCode, TerminalAccess};

use super::{sandbox_id, ApiJson};
use crate::error::{ApiFailure, ApiResult};
use crate::state::AppState;
use crate::terminal::{TerminalKey, TOKEN_LIFETIME_MS};

#[utoipa::path(
    post, path = "/api/v1/sandboxes/{id}/terminal", tag = "exec",
    params(("id" = String, Path)),
    responses(
        (status = 200, body = TerminalAccess),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<ApiJson<TerminalAccess>> {
    let sandbox_id = sandbox_id(&id)?;
    let handle = state.handle(&sandbox_id, Operation::Exec)?;
    handle
        .status()
        .check(Operation::Exec)
        .map_err(cthulu_core::SandboxError::from)?;
    let expires_at_ms = cthulu_types::now_ms() + TOKEN_LIFETIME_MS;
    let url = if handle.kind() == BackendKind::Remote {
        let (node_name, node_sandbox_id) = state.remote.location(&sandbox_id).ok_or_else(|| {
            ApiFailure::new(
                ErrorCode::BackendUnavailable,
                format!("sandbox {sandbox_id} has no recorded node"),
            )
        })?;
        let node = state.remote.nodes().get(&node_name).ok_or_else(|| {
            ApiFailure::new(
                ErrorCode::BackendUnavailable,
                format!(
                    "sandbox {sandbox_id} lives on node {node_name}, which is no longer registered"
                ),
            )
        })?;
        let token = TerminalKey::for_node_token(&node.token).sign(&node_sandbox_id, expires_at_ms);
        terminal_url(&node.url, &node_sandbox_id, &token)
    } else {
        let host = headers
            .get(HOST)
            .and_then(|host| host.to_str().ok())
            .filter(|host| !host.is_empty() && !host.contains(['/', '?', '#', ' ', '@']))
            .ok_or_else(|| {
                ApiFailure::bad_request("the request has no usable Host header")
                    .with_hint("send Host: <the address the browser reaches this server at>")
            })?;
        let token = state.terminal_key.sign(sandbox_id.as_str(), expires_at_ms);
        terminal_url(&format!("http://{host}"), sandbox_id.as_str(), &token)
    };
    Ok(ApiJson(TerminalAccess { url, expires_at_ms }))
}

/// `ws(s)://<base>/api/v1/sandboxes/<id>/exec/ws?token=<token>` for an `http(s)` base.
fn terminal_url(base: &str, sandbox_id: &str, token: &str) -> String {
    let base = base.trim_end_matches('/');
    let base = match base.split_once("://") {
        Some(("https", rest)) => format!("wss://{rest}"),
        Some((_, rest)) => format!("ws://{rest}"),
        None => format!("ws://{base}"),
    };
    format!("{base}/api/v1/sandboxes/{sandbox_id}/exec/ws?token={token}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_follow_the_scheme() {
        assert_eq!(
            terminal_url("http://10.0.0.2:8081/", "abc", "t.s"),
            "ws://10.0.0.2:8081/api/v1/sandboxes/abc/exec/ws?token=t.s"
        );
        assert_eq!(
            terminal_url("https://node.example/prefix", "abc", "t"),
            "wss://node.example/prefix/api/v1/sandboxes/abc/exec/ws?token=t"
        );
    }
}
