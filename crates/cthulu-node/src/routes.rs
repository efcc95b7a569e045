//! The earlier system's VM Manager routes: `POST|GET /vms`, `GET|DELETE /vms/{id}`,
//! `GET /health`. They sit beside `/api/v1` behind the node's token.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::Router;
use cthulu_server::error::ApiResult;
use cthulu_server::routes::ApiJson;
use cthulu_types::vms::{CreateVmRequest, NodeHealth, VmDeleted, VmList, VmResponse};

use crate::manager::VmManager;

pub fn router(manager: Arc<VmManager>) -> Router {
    Router::new()
        .route("/vms", get(list).post(create))
        .route("/vms/{id}", get(get_one).delete(delete))
        .route("/health", get(health))
        .with_state(manager)
}

async fn create(
    State(manager): State<Arc<VmManager>>,
    ApiJson(request): ApiJson<CreateVmRequest>,
) -> ApiResult<ApiJson<VmResponse>> {
    Ok(ApiJson(manager.create(&request).await?))
}

async fn list(State(manager): State<Arc<VmManager>>) -> ApiResult<ApiJson<VmList>> {
    Ok(ApiJson(manager.list().await?))
}

async fn get_one(
    State(manager): State<Arc<VmManager>>,
    Path(id): Path<String>,
) -> ApiResult<ApiJson<VmResponse>> {
    Ok(ApiJson(manager.get(&id).await?))
}

async fn delete(
    State(manager): State<Arc<VmManager>>,
    Path(id): Path<String>,
) -> ApiResult<ApiJson<VmDeleted>> {
    let vm_id = manager.delete(&id).await?;
    Ok(ApiJson(VmDeleted {
        status: "deleted".into(),
        vm_id,
    }))
}

async fn health(State(manager): State<Arc<VmManager>>) -> ApiResult<ApiJson<NodeHealth>> {
    Ok(ApiJson(manager.health().await?))
}
