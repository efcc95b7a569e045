//! Checkpoints: create, list, restore, delete.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use cthulu_types::checkpoint::valid_checkpoint_name;
use cthulu_types::sandbox::Operation;
use cthulu_types::{Checkpoint, CheckpointList, CheckpointRequest, ErrorBody, Sandbox};

use super::{sandbox_id, ApiJson};
use crate::error::{ApiFailure, ApiResult};
use crate::state::AppState;

#[utoipa::path(
    post, path = "/api/v1/sandboxes/{id}/checkpoints", tag = "checkpoints",
    params(("id" = String, Path)),
    request_body = CheckpointRequest,
    responses(
        (status = 201, body = Checkpoint),
        (status = 409, description = "Name already used, or sandbox not running/stopped", body = ErrorBody),
        (status = 501, description = "Memory checkpoints unsupported by this backend", body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<CheckpointRequest>,
) -> ApiResult<(StatusCode, ApiJson<Checkpoint>)> {
    if let Some(name) = &request.name {
        if !valid_checkpoint_name(name) {
            return Err(ApiFailure::bad_request(format!(
                "invalid field name: {name:?} must be 1-64 letters, digits, '-', '_' or '.', not starting with '.'"
            )));
        }
    }
    let handle = state.handle(&sandbox_id(&id)?, Operation::Checkpoint)?;
    Ok((
        StatusCode::CREATED,
        ApiJson(handle.checkpoint(request).await?),
    ))
}

#[utoipa::path(
    get, path = "/api/v1/sandboxes/{id}/checkpoints", tag = "checkpoints",
    params(("id" = String, Path)),
    responses((status = 200, body = CheckpointList), (status = 404, body = ErrorBody))
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<ApiJson<CheckpointList>> {
    let handle = state.handle(&sandbox_id(&id)?, Operation::Checkpoint)?;
    Ok(ApiJson(CheckpointList {
        checkpoints: handle.list_checkpoints().await?,
    }))
}

#[utoipa::path(
    post, path = "/api/v1/sandboxes/{id}/checkpoints/{checkpoint}/restore", tag = "checkpoints",
    params(("id" = String, Path), ("checkpoint" = String, Path, description = "checkpoint id or name")),
    responses((status = 200, body = Sandbox), (status = 404, body = ErrorBody))
)]
pub async fn restore(
    State(state): State<Arc<AppState>>,
    Path((id, checkpoint)): Path<(String, String)>,
) -> ApiResult<ApiJson<Sandbox>> {
    let sandbox_id = sandbox_id(&id)?;
    let handle = state.handle(&sandbox_id, Operation::Restore)?;
    handle.restore(&checkpoint).await?;
    Ok(ApiJson(state.current(&sandbox_id)?.to_api()))
}

#[utoipa::path(
    delete, path = "/api/v1/sandboxes/{id}/checkpoints/{checkpoint}", tag = "checkpoints",
    params(("id" = String, Path), ("checkpoint" = String, Path, description = "checkpoint id or name")),
    responses((status = 204, description = "Deleted"), (status = 404, body = ErrorBody))
)]
pub async fn delete(
    State(state): State<Arc<AppState>>,
    Path((id, checkpoint)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let handle = state.handle(&sandbox_id(&id)?, Operation::Checkpoint)?;
    handle.delete_checkpoint(&checkpoint).await?;
    Ok(StatusCode::NO_CONTENT)
}
