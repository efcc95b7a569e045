//! Files: streamed upload and download, directory listing, removal.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use cthulu_core::PutOptions;
use cthulu_types::sandbox::Operation;
use cthulu_types::{DirListing, ErrorBody, FileWritten};
use futures_util::TryStreamExt;
use serde::Deserialize;
use tokio_util::io::{ReaderStream, StreamReader};

use super::{sandbox_id, ApiJson, ApiQuery};
use crate::error::{ApiFailure, ApiResult};
use crate::state::AppState;

/// Read size of downloads: large reads keep throughput near the disk's.
const DOWNLOAD_CHUNK: usize = 1024 * 1024;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FileQuery {
    /// `/workspace/...` or relative to the workspace.
    path: String,
    /// Upload: permission bits in octal, e.g. `0755` (default 0644).
    #[serde(default)]
    mode: Option<String>,
    /// Upload: create missing parent directories.
    #[serde(default)]
    create_parents: Option<bool>,
    /// Remove: remove a directory and everything in it.
    #[serde(default)]
    recursive: Option<bool>,
}

fn parse_mode(raw: Option<&str>) -> ApiResult<Option<u32>> {
    raw.map(|text| {
        u32::from_str_radix(text.trim_start_matches("0o"), 8)
            .ok()
            .filter(|mode| *mode <= 0o7777)
            .ok_or_else(|| {
                ApiFailure::bad_request(format!(
                    "mode {text:?} is not octal permission bits like 0644"
                ))
            })
    })
    .transpose()
}

#[utoipa::path(
    put, path = "/api/v1/sandboxes/{id}/files", tag = "files",
    params(("id" = String, Path), FileQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 201, body = FileWritten),
        (status = 400, description = "Path outside the sandbox, or bad query", body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
pub async fn put(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<FileQuery>,
    body: Body,
) -> ApiResult<(StatusCode, ApiJson<FileWritten>)> {
    let handle = state.handle(&sandbox_id(&id)?, Operation::Files)?;
    let options = PutOptions {
        mode: parse_mode(query.mode.as_deref())?,
        create_parents: query.create_parents.unwrap_or(false),
    };
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let size = handle
        .put_file(&query.path, options, Box::new(StreamReader::new(stream)))
        .await?;
    state
        .metrics
        .bytes_uploaded
        .fetch_add(size, Ordering::Relaxed);
    Ok((
        StatusCode::CREATED,
        ApiJson(FileWritten {
            path: query.path,
            size,
        }),
    ))
}

#[utoipa::path(
    get, path = "/api/v1/sandboxes/{id}/files", tag = "files",
    params(("id" = String, Path), FileQuery),
    responses(
        (status = 200, description = "The file's bytes; X-Cthulu-Mode holds its permission bits", content_type = "application/octet-stream"),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
pub async fn get(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<FileQuery>,
) -> ApiResult<Response> {
    let handle = state.handle(&sandbox_id(&id)?, Operation::Files)?;
    let download = handle.get_file(&query.path).await?;
    state
        .metrics
        .bytes_downloaded
        .fetch_add(download.size, Ordering::Relaxed);
    let body = Body::from_stream(ReaderStream::with_capacity(
        download.contents,
        DOWNLOAD_CHUNK,
    ));
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(download.size));
    if let Ok(mode) = HeaderValue::from_str(&format!("{:04o}", download.mode & 0o7777)) {
        headers.insert("x-cthulu-mode", mode);
    }
    Ok(response)
}

#[utoipa::path(
    delete, path = "/api/v1/sandboxes/{id}/files", tag = "files",
    params(("id" = String, Path), FileQuery),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Directory not empty and not recursive", body = ErrorBody),
    )
)]
pub async fn remove(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<FileQuery>,
) -> ApiResult<StatusCode> {
    let handle = state.handle(&sandbox_id(&id)?, Operation::Files)?;
    handle
        .remove(&query.path, query.recursive.unwrap_or(false))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DirQuery {
    /// The directory; the workspace when absent.
    #[serde(default)]
    path: Option<String>,
}

#[utoipa::path(
    get, path = "/api/v1/sandboxes/{id}/dirs", tag = "files",
    params(("id" = String, Path), DirQuery),
    responses((status = 200, body = DirListing), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
pub async fn list_dir(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<DirQuery>,
) -> ApiResult<ApiJson<DirListing>> {
    let handle = state.handle(&sandbox_id(&id)?, Operation::Files)?;
    let path = query.path.unwrap_or_else(|| "/workspace".to_owned());
    let entries = handle.read_dir(&path).await?;
    Ok(ApiJson(DirListing { path, entries }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn modes_are_octal() {
        assert_eq!(super::parse_mode(Some("0755")).unwrap(), Some(0o755));
        assert_eq!(super::parse_mode(Some("644")).unwrap(), Some(0o644));
        assert_eq!(super::parse_mode(None).unwrap(), None);
        assert!(super::parse_mode(Some("999")).is_err());
        assert!(super::parse_mode(Some("77777")).is_err());
    }
}
