//! One-shot exec.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, State};
use cthulu_core::ExecSpec;
use cthulu_types::sandbox::Operation;
use cthulu_types::{ErrorBody, ExecRequest, ExecResponse};

use super::{sandbox_id, ApiJson};
use crate::error::ApiResult;
use crate::state::AppState;

#[utoipa::path(
    post, path = "/api/v1/sandboxes/{id}/exec", tag = "exec",
    params(("id" = String, Path)),
    request_body = ExecRequest,
    responses(
        (status = 200, body = ExecResponse),
        (status = 400, description = "Bad request, program not found, cwd outside the sandbox", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Sandbox not running", body = ErrorBody),
        (status = 413, body = ErrorBody),
    )
)]
pub async fn exec(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<ExecRequest>,
) -> ApiResult<ApiJson<ExecResponse>> {
    let sandbox_id = sandbox_id(&id)?;
    let mut spec = ExecSpec::from_request(&request)?;
    // A one-shot exec cannot be attached to or resized.
    spec.detach = false;
    spec.tty = None;
    let handle = state.handle(&sandbox_id, Operation::Exec)?;
    let output = handle.exec(spec).await?;
    state.metrics.execs.fetch_add(1, Ordering::Relaxed);
    state
        .metrics
        .exec_milliseconds
        .fetch_add(output.duration.as_millis() as u64, Ordering::Relaxed);
    Ok(ApiJson(
        output.to_response(request.output_encoding.unwrap_or_default()),
    ))
}
