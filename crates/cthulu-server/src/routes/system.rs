//! Server-wide routes: info, health, metrics, the status page and the OpenAPI document.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use cthulu_types::{BackendKind, ErrorBody, ServerInfo};
use utoipa::OpenApi;

use super::ApiJson;
use crate::error::ApiResult;
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
        auth_required: state.db.has_api_keys()?,
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

/// A minimal page for a person: version, backends, sandbox counts. It shows no ids, so
/// it needs no key.
pub async fn status_page(State(state): State<Arc<AppState>>) -> ApiResult<Html<String>> {
    let counts = state.db.counts()?;
    let mut backends = String::new();
    for info in state.backend_infos() {
        let status = if info.available {
            "available".to_owned()
        } else {
            format!(
                "unavailable: {}",
                escape(&info.unavailable_reason.unwrap_or_default())
            )
        };
        let live: u64 = counts
            .iter()
            .filter(|(backend, _, _)| BackendKind::parse(backend) == Some(info.kind))
            .map(|(_, _, count)| count)
            .sum();
        backends.push_str(&format!(
            "<tr><td>{}</td><td>{status}</td><td>{live}</td></tr>",
            info.kind
        ));
    }
    let mut statuses = String::new();
    for (backend, status, count) in &counts {
        statuses.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{count}</td></tr>",
            escape(backend),
            escape(status)
        ));
    }
    Ok(Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Cthulu</title>\
         <style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:.2em 1em;text-align:left}}</style></head>\
         <body><h1>Cthulu {version}</h1><p>Default backend: {default}. API under <code>/api/v1</code>, \
         document at <a href=\"/api/v1/openapi.json\">/api/v1/openapi.json</a>.</p>\
         <h2>Backends</h2><table><tr><th>backend</th><th>status</th><th>sandboxes</th></tr>{backends}</table>\
         <h2>Sandboxes</h2><table><tr><th>backend</th><th>status</th><th>count</th></tr>{statuses}</table></body></html>",
        version = env!("CARGO_PKG_VERSION"),
        default = state.default_backend,
    )))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
