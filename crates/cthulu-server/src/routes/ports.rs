//! Ports exposed from a sandbox to the host.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use cthulu_types::sandbox::Operation;
use cthulu_types::{ErrorBody, ExposePortRequest, ExposedPort, PortList};

use super::{sandbox_id, ApiJson};
use crate::error::{ApiFailure, ApiResult};
use crate::state::AppState;

#[utoipa::path(
    post, path = "/api/v1/sandboxes/{id}/ports", tag = "ports",
    params(("id" = String, Path)),
    request_body = ExposePortRequest,
    responses((status = 200, body = ExposedPort), (status = 400, description = "Nothing listens there", body = ErrorBody))
)]
pub async fn expose(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<ExposePortRequest>,
) -> ApiResult<ApiJson<ExposedPort>> {
    if request.port == 0 {
        return Err(ApiFailure::bad_request(
            "invalid field port: must be 1-65535",
        ));
    }
    let handle = state.handle(&sandbox_id(&id)?, Operation::Ports)?;
    Ok(ApiJson(handle.expose_port(request.port).await?))
}

#[utoipa::path(
    get, path = "/api/v1/sandboxes/{id}/ports", tag = "ports",
    params(("id" = String, Path)),
    responses((status = 200, body = PortList), (status = 404, body = ErrorBody))
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<ApiJson<PortList>> {
    let handle = state.handle(&sandbox_id(&id)?, Operation::Ports)?;
    Ok(ApiJson(PortList {
        ports: handle.list_ports().await?,
    }))
}

#[utoipa::path(
    delete, path = "/api/v1/sandboxes/{id}/ports/{port}", tag = "ports",
    params(("id" = String, Path), ("port" = u16, Path)),
    responses((status = 204, description = "Closed"), (status = 404, body = ErrorBody))
)]
pub async fn unexpose(
    State(state): State<Arc<AppState>>,
    Path((id, port)): Path<(String, u16)>,
) -> ApiResult<StatusCode> {
    let handle = state.handle(&sandbox_id(&id)?, Operation::Ports)?;
    handle.unexpose_port(port).await?;
    Ok(StatusCode::NO_CONTENT)
}
