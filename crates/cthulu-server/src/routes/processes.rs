//! Processes (sessions) of a sandbox: list, signal, kill. Attach is in `stream.rs`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use cthulu_types::sandbox::Operation;
use cthulu_types::{ErrorBody, ProcessList, Signal, SignalRequest};

use super::{sandbox_id, ApiJson};
use crate::error::ApiResult;
use crate::state::AppState;

#[utoipa::path(
    get, path = "/api/v1/sandboxes/{id}/processes", tag = "processes",
    params(("id" = String, Path)),
    responses((status = 200, body = ProcessList), (status = 404, body = ErrorBody))
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<ApiJson<ProcessList>> {
    let handle = state.handle(&sandbox_id(&id)?, Operation::Exec)?;
    Ok(ApiJson(ProcessList {
        processes: handle.list_processes().await?,
    }))
}

#[utoipa::path(
    post, path = "/api/v1/sandboxes/{id}/processes/{process_id}/signal", tag = "processes",
    params(("id" = String, Path), ("process_id" = String, Path)),
    request_body = SignalRequest,
    responses((status = 204, description = "Sent"), (status = 404, body = ErrorBody))
)]
pub async fn signal(
    State(state): State<Arc<AppState>>,
    Path((id, process_id)): Path<(String, String)>,
    ApiJson(request): ApiJson<SignalRequest>,
) -> ApiResult<StatusCode> {
    let handle = state.handle(&sandbox_id(&id)?, Operation::Exec)?;
    handle.signal_process(&process_id, request.signal).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    delete, path = "/api/v1/sandboxes/{id}/processes/{process_id}", tag = "processes",
    params(("id" = String, Path), ("process_id" = String, Path)),
    responses((status = 204, description = "Killed"), (status = 404, body = ErrorBody))
)]
pub async fn kill(
    State(state): State<Arc<AppState>>,
    Path((id, process_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let handle = state.handle(&sandbox_id(&id)?, Operation::Exec)?;
    handle.signal_process(&process_id, Signal::Kill).await?;
    Ok(StatusCode::NO_CONTENT)
}
