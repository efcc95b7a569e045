//! Sandboxes: create, list, get, update (labels, lifetime), stop, resume, destroy.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use cthulu_types::sandbox::Operation;
use cthulu_types::{
    BackendKind, CreateSandboxRequest, ErrorBody, Sandbox, SandboxList, SandboxStatus,
    UpdateSandboxRequest,
};

use super::{sandbox_id, ApiJson};
use crate::error::{ApiFailure, ApiResult};
use crate::state::AppState;

#[utoipa::path(
    post, path = "/api/v1/sandboxes", tag = "sandboxes",
    request_body = CreateSandboxRequest,
    responses(
        (status = 201, description = "Created", body = Sandbox),
        (status = 400, description = "Bad request", body = ErrorBody),
        (status = 503, description = "Backend unavailable", body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<CreateSandboxRequest>,
) -> ApiResult<(StatusCode, ApiJson<Sandbox>)> {
    let record = state.create(&request).await?;
    Ok((StatusCode::CREATED, ApiJson(record.to_api())))
}

/// Filters of `GET /api/v1/sandboxes`: `label=k=v` (repeatable), `status`, `backend`.
#[derive(Debug, Default, PartialEq)]
struct ListFilter {
    labels: BTreeMap<String, String>,
    status: Option<SandboxStatus>,
    backend: Option<BackendKind>,
}

impl ListFilter {
    /// Parsed by hand because `label` repeats, which serde's urlencoded format does not
    /// collect.
    fn parse(query: Option<&str>) -> ApiResult<ListFilter> {
        let mut filter = ListFilter::default();
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|pair| !pair.is_empty())
        {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value)?;
            match key {
                "label" => {
                    let (name, wanted) = value.split_once('=').ok_or_else(|| {
                        ApiFailure::bad_request(format!("label filter {value:?} is not name=value"))
                    })?;
                    filter.labels.insert(name.to_owned(), wanted.to_owned());
                }
                "status" => {
                    filter.status = Some(SandboxStatus::parse(&value).ok_or_else(|| {
                        ApiFailure::bad_request(format!("unknown status {value:?}"))
                    })?)
                }
                "backend" => {
                    filter.backend = Some(BackendKind::parse(&value).ok_or_else(|| {
                        ApiFailure::bad_request(format!("unknown backend {value:?}"))
                    })?)
                }
                other => {
                    return Err(ApiFailure::bad_request(format!(
                        "unknown query parameter {other:?}"
                    )))
                }
            }
        }
        Ok(filter)
    }

    fn matches(&self, sandbox: &Sandbox) -> bool {
        self.status.is_none_or(|status| status == sandbox.status)
            && self
                .backend
                .is_none_or(|backend| backend == sandbox.backend)
            && self
                .labels
                .iter()
                .all(|(name, wanted)| sandbox.labels.get(name) == Some(wanted))
    }
}

fn percent_decode(raw: &str) -> ApiResult<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'+' => out.push(b' '),
            b'%' => {
                let value = bytes
                    .get(index + 1..index + 3)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                    .ok_or_else(|| {
                        ApiFailure::bad_request(format!("bad percent escape in {raw:?}"))
                    })?;
                out.push(value);
                index += 2;
            }
            byte => out.push(byte),
        }
        index += 1;
    }
    String::from_utf8(out)
        .map_err(|_| ApiFailure::bad_request(format!("query value {raw:?} is not UTF-8")))
}

#[utoipa::path(
    get, path = "/api/v1/sandboxes", tag = "sandboxes",
    params(
        ("label" = Option<String>, Query, description = "name=value; repeat to AND several"),
        ("status" = Option<SandboxStatus>, Query, description = "only this status (destroyed ones only when asked)"),
        ("backend" = Option<BackendKind>, Query),
    ),
    responses((status = 200, body = SandboxList), (status = 400, body = ErrorBody))
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
) -> ApiResult<ApiJson<SandboxList>> {
    let filter = ListFilter::parse(query.as_deref())?;
    let include_destroyed = filter.status == Some(SandboxStatus::Destroyed);
    let mut sandboxes = Vec::new();
    for record in state.db.list_sandboxes(include_destroyed)? {
        let record = match state.current(&record.id) {
            Ok(current) => current,
            Err(_) => record,
        };
        let sandbox = record.to_api();
        if filter.matches(&sandbox) {
            sandboxes.push(sandbox);
        }
    }
    Ok(ApiJson(SandboxList { sandboxes }))
}

#[utoipa::path(
    get, path = "/api/v1/sandboxes/{id}", tag = "sandboxes",
    params(("id" = String, Path)),
    responses((status = 200, body = Sandbox), (status = 404, body = ErrorBody))
)]
pub async fn get(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<ApiJson<Sandbox>> {
    let sandbox_id = sandbox_id(&id)?;
    Ok(ApiJson(state.current(&sandbox_id)?.to_api()))
}

#[utoipa::path(
    patch, path = "/api/v1/sandboxes/{id}", tag = "sandboxes",
    params(("id" = String, Path)),
    request_body = UpdateSandboxRequest,
    responses((status = 200, body = Sandbox), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody))
)]
pub async fn update(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<UpdateSandboxRequest>,
) -> ApiResult<ApiJson<Sandbox>> {
    let sandbox_id = sandbox_id(&id)?;
    Ok(ApiJson(state.update(&sandbox_id, &request)?.to_api()))
}

#[utoipa::path(
    delete, path = "/api/v1/sandboxes/{id}", tag = "sandboxes",
    params(("id" = String, Path)),
    responses((status = 204, description = "Destroyed (or already destroyed)"), (status = 404, body = ErrorBody))
)]
pub async fn destroy(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let sandbox_id = sandbox_id(&id)?;
    state.destroy(&sandbox_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post, path = "/api/v1/sandboxes/{id}/stop", tag = "sandboxes",
    params(("id" = String, Path)),
    responses((status = 200, body = Sandbox), (status = 409, body = ErrorBody))
)]
pub async fn stop(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<ApiJson<Sandbox>> {
    let sandbox_id = sandbox_id(&id)?;
    Ok(ApiJson(
        state
            .lifecycle(&sandbox_id, Operation::Stop)
            .await?
            .to_api(),
    ))
}

#[utoipa::path(
    post, path = "/api/v1/sandboxes/{id}/resume", tag = "sandboxes",
    params(("id" = String, Path)),
    responses((status = 200, body = Sandbox), (status = 409, body = ErrorBody))
)]
pub async fn resume(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<ApiJson<Sandbox>> {
    let sandbox_id = sandbox_id(&id)?;
    Ok(ApiJson(
        state
            .lifecycle(&sandbox_id, Operation::Resume)
            .await?
            .to_api(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_filter_parses_repeated_labels() {
        let filter =
            ListFilter::parse(Some("label=team%3Dinfra&label=env=prod&status=running")).unwrap();
        assert_eq!(filter.labels.get("team").map(String::as_str), Some("infra"));
        assert_eq!(filter.labels.get("env").map(String::as_str), Some("prod"));
        assert_eq!(filter.status, Some(SandboxStatus::Running));
        assert!(ListFilter::parse(Some("label=novalue")).is_err());
        assert!(ListFilter::parse(Some("status=sleepy")).is_err());
        assert!(ListFilter::parse(Some("bogus=1")).is_err());
        assert!(ListFilter::parse(Some("label=a=%zz")).is_err());
    }
}
