//! Server-wide routes: info, health, metrics, the OpenAPI document and the web UI's
//! static files (embedded by cthulu-web).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use cthulu_types::{ErrorBody, ErrorCode, ServerInfo};
use utoipa::OpenApi;

use super::ApiJson;
use crate::error::{ApiFailure, ApiResult};
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "Cthulu API", description = "Sandboxes for AI agents: one API over many isolation backends."),
    paths(
        info,
        super::sandboxes::create, super::sandboxes::list, super::sandboxes::get,
        super::sandboxes::update, super::sandboxes::destroy, super::sandboxes::stop,
        super::sandboxes::resume,
        super::exec::exec, super::stream::exec_ws,
        super::processes::list, super::processes::signal, super::processes::kill,
        super::stream::attach_ws,
        super::files::put, super::files::get, super::files::remove, super::files::list_dir,
        super::ports::expose, super::ports::list, super::ports::unexpose,
        super::port_tunnel::tunnel, super::terminal::create,
        super::nodes::add, super::nodes::list, super::nodes::remove,
        super::checkpoints::create, super::checkpoints::list, super::checkpoints::restore,
        super::checkpoints::delete,
        super::runs::create, super::runs::list, super::runs::get, super::runs::cancel,
        super::runs::events, super::runs::changes_archive,
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[utoipa::path(
    get, path = "/api/v1/info", tag = "system",
    responses((status = 200, body = ServerInfo), (status = 401, body = ErrorBody))
)]
pub async fn info(State(state): State<Arc<AppState>>) -> ApiResult<ApiJson<ServerInfo>> {
    Ok(ApiJson(ServerInfo {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        default_backend: state.default_backend,
        backends: state.backend_infos(),
        auth_required: state.auth_required()?,
        capacity: state.capacity()?,
    }))
}

pub async fn openapi() -> impl IntoResponse {
    axum::Json(ApiDoc::openapi())
}

pub async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> ApiResult<Response> {
    let counts = state.db.counts()?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(&counts),
    )
        .into_response())
}

/// What the UI's pages may load and connect to: scripts, styles and images from this
/// server only (no CDN), inline styles for xterm.js, never framed by another page. Fetches
/// go to this server; WebSockets to the URL the server hands out for a terminal, whose
/// host name may be spelled otherwise than the page's (`127.0.0.1` / `localhost`).
const UI_CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// `GET /`: the web UI's page.
pub async fn ui_index() -> Response {
    ui_response("index.html")
}

/// `GET /ui/{path}`: the UI's scripts, styles and the terminal's files (`vendor/…`).
pub async fn ui_asset(Path(path): Path<String>) -> Response {
    ui_response(&path)
}

fn ui_response(name: &str) -> Response {
    match cthulu_web::asset(name) {
        Some(asset) => (
            [
                (header::CONTENT_TYPE, asset.content_type),
                // Always revalidated: a rebuilt server serves its own UI at once.
                (header::CACHE_CONTROL, "no-cache"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (header::CONTENT_SECURITY_POLICY, UI_CONTENT_SECURITY_POLICY),
            ],
            asset.bytes,
        )
            .into_response(),
        None if cthulu_web::TERMINAL_ASSETS.contains(&name) => ApiFailure::new(
            ErrorCode::FileNotFound,
            "terminal assets were not built: this server was built without web/node_modules",
        )
        .with_hint("run scripts/web-assets, then build and start the server again")
        .into_response(),
        None => ApiFailure::new(
            ErrorCode::FileNotFound,
            format!("the web UI has no file {name}"),
        )
        .with_hint("the UI is at /")
        .into_response(),
    }
}
