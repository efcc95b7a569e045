//! The HTTP routes (docs/api.md), the extractors that turn bad input into clear errors,
//! and the middleware: authentication, metrics.

mod checkpoints;
mod exec;
mod files;
mod nodes;
mod port_tunnel;
mod ports;
mod processes;
mod runs;
mod sandboxes;
mod stream;
mod system;
mod terminal;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use cthulu_types::{ErrorCode, SandboxId};

use crate::error::{ApiFailure, ApiResult};
use crate::state::AppState;

pub use system::ApiDoc;

/// Largest JSON body accepted.
pub const MAX_JSON_BODY: usize = 16 * 1024 * 1024;

/// A JSON body whose rejection is an [`ApiFailure`] naming the bad field.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiFailure))]
pub struct ApiJson<T>(pub T);

impl<T: serde::Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// A query string whose rejection is an [`ApiFailure`].
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiFailure))]
pub struct ApiQuery<T>(pub T);

/// Parses a sandbox id from the path; an id that cannot exist is simply not found.
pub fn sandbox_id(raw: &str) -> ApiResult<SandboxId> {
    SandboxId::parse(raw).map_err(|_| {
        ApiFailure::new(
            ErrorCode::SandboxNotFound,
            format!("sandbox {raw} not found"),
        )
        .with_hint("list sandboxes with `cthulu sandbox ls`")
    })
}

/// The whole application: the API, `extra` routes (a node's `/vms`, behind the same
/// authentication as the API), and the public pages. With an access token
/// ([`AppState::access_token`]), every route, the public pages included, needs it and API
/// keys are not consulted.
pub fn router(state: Arc<AppState>, extra: Router) -> Router {
    let fixed_token = state.access_token().is_some();
    let api = Router::new()
        .route("/info", get(system::info))
        .route("/openapi.json", get(system::openapi))
        .route("/sandboxes", post(sandboxes::create).get(sandboxes::list))
        .route(
            "/sandboxes/{id}",
            get(sandboxes::get)
                .patch(sandboxes::update)
                .delete(sandboxes::destroy),
        )
        .route("/sandboxes/{id}/stop", post(sandboxes::stop))
        .route("/sandboxes/{id}/resume", post(sandboxes::resume))
        .route("/sandboxes/{id}/exec", post(exec::exec))
        .route("/sandboxes/{id}/exec/ws", get(stream::exec_ws))
        .route("/sandboxes/{id}/processes", get(processes::list))
        .route(
            "/sandboxes/{id}/processes/{process_id}",
            axum::routing::delete(processes::kill),
        )
        .route(
            "/sandboxes/{id}/processes/{process_id}/signal",
            post(processes::signal),
        )
        .route(
            "/sandboxes/{id}/processes/{process_id}/ws",
            get(stream::attach_ws),
        )
        .route(
            "/sandboxes/{id}/files",
            put(files::put)
                .get(files::get)
                .delete(files::remove)
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/sandboxes/{id}/dirs", get(files::list_dir))
        .route(
            "/sandboxes/{id}/ports",
            post(ports::expose).get(ports::list),
        )
        .route(
            "/sandboxes/{id}/ports/{port}",
            axum::routing::delete(ports::unexpose),
        )
        .route("/sandboxes/{id}/ports/{port}/ws", get(port_tunnel::tunnel))
        .route("/sandboxes/{id}/terminal", post(terminal::create))
        .route("/nodes", post(nodes::add).get(nodes::list))
        .route("/nodes/{name}", axum::routing::delete(nodes::remove))
        .route(
            "/sandboxes/{id}/checkpoints",
            post(checkpoints::create).get(checkpoints::list),
        )
        .route(
            "/sandboxes/{id}/checkpoints/{checkpoint}",
            axum::routing::delete(checkpoints::delete),
        )
        .route(
            "/sandboxes/{id}/checkpoints/{checkpoint}/restore",
            post(checkpoints::restore),
        )
        .route(
            "/runs",
            post(runs::create)
                .get(runs::list)
                .layer(DefaultBodyLimit::max(state.runs.max_request_body())),
        )
        .route("/runs/{id}", get(runs::get).delete(runs::cancel))
        .route("/runs/{id}/events", get(runs::events))
        .route("/runs/{id}/changes.tar", get(runs::changes_archive));
    let authenticated = Router::new()
        .nest("/api/v1", api)
        .route("/metrics", get(system::metrics))
        .with_state(state.clone())
        .merge(extra)
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    let public = Router::new()
        .route("/healthz", get(system::healthz))
        // The web UI: static files, served without a key (the API calls it makes are
        // authenticated like any other).
        .route("/", get(system::ui_index))
        .route("/ui/{*path}", get(system::ui_asset))
        .fallback(not_found)
        .with_state(state.clone());
    let public = if fixed_token {
        public.layer(middleware::from_fn_with_state(state.clone(), authenticate))
    } else {
        public
    };
    authenticated
        .merge(public)
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .layer(middleware::from_fn_with_state(state, count_responses))
}

async fn not_found() -> ApiFailure {
    ApiFailure::new(ErrorCode::BadRequest, "no such route")
        .with_hint("see docs/api.md or GET /api/v1/openapi.json")
}

/// With an access token, every request needs `Authorization: Bearer <token>`; without,
/// once an API key exists, every request needs `Authorization: Bearer <key>`.
async fn authenticate(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    match check_token(&state, &request) {
        Ok(()) => next.run(request).await,
        Err(failure) => failure.into_response(),
    }
}

fn check_token(state: &AppState, request: &Request) -> ApiResult<()> {
    // A terminal token opens one sandbox's terminal WebSocket in place of the key; one
    // that is given is always checked, and a bad one is never passed on to the key check.
    if let Some(sandbox_id) = crate::terminal::terminal_path_sandbox(request.uri().path()) {
        if let Some(token) = crate::terminal::query_token(request.uri().query()) {
            return state
                .terminal_key
                .verify(token, sandbox_id, cthulu_types::now_ms())
                .map_err(|error| {
                    ApiFailure::new(ErrorCode::Unauthorized, error.to_string()).with_hint(
                        "ask for a new terminal URL: POST /api/v1/sandboxes/{id}/terminal",
                    )
                });
        }
    }
    let fixed = state.access_token();
    if fixed.is_none() && !state.db.has_api_keys()? {
        return Ok(());
    }
    let unauthorized = |message: &str| {
        let failure = ApiFailure::new(ErrorCode::Unauthorized, message);
        if fixed.is_some() {
            failure.with_hint("send Authorization: Bearer <token>, the node's --token")
        } else {
            failure.with_hint("send Authorization: Bearer <key> (CLI: export CTHULU_TOKEN=<key>); create a key with `cthulu key create`")
        }
    };
    let header = request.headers().get(AUTHORIZATION).ok_or_else(|| {
        unauthorized(if fixed.is_some() {
            "missing token"
        } else {
            "missing API key"
        })
    })?;
    let token = header
        .to_str()
        .ok()
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| unauthorized("the Authorization header is not `Bearer <key>`"))?;
    if let Some(fixed) = fixed {
        return if fixed.matches(token) {
            Ok(())
        } else {
            Err(unauthorized("invalid token"))
        };
    }
    if state.db.api_key_valid(token)? {
        Ok(())
    } else {
        Err(unauthorized("invalid API key"))
    }
}

async fn count_responses(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    state.metrics.count_response(response.status().as_u16());
    response
}
