//! The web terminal of each VM: a listener on `<listen ip>:<web_port>` serving a
//! ttyd-compatible terminal.
//!
//! - `GET /<secret>` and `/<secret>/`: the page ([`page`]), `/<secret>/terminal.js` its
//!   script, `/<secret>/assets/<path>` xterm.js and friends ([`TerminalAssets`]).
//! - `GET /<secret>/token`: `{"token"}`, what the handshake must carry.
//! - `GET /ws`: the WebSocket (subprotocol `tty`, [`protocol`]); it lives at `/ws`
//!   because the earlier ttyd client drops the URL's path. A session ([`session`]) starts
//!   a shell only after a handshake with the right token.
//!
//! Anything else, a wrong secret included, is a 404 that says nothing more.

pub mod page;
pub mod protocol;
pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use cthulu_server::state::AppState;
use cthulu_server::AccessToken;
use cthulu_types::SandboxId;
use tokio::sync::watch;

/// The terminal's static files: a path under `assets/` (`vendor/xterm.js`, …) → its bytes
/// and content type; `None` for an unknown path.
pub type TerminalAssets = fn(&str) -> Option<(&'static [u8], &'static str)>;

/// Terminal assets for a node built without them: the page says so.
pub fn no_assets(_path: &str) -> Option<(&'static [u8], &'static str)> {
    None
}

/// Largest frame a terminal client may send (keys and pastes).
const MAX_CLIENT_FRAME: usize = 1024 * 1024;

/// What one VM's terminal serves.
pub struct TerminalContext {
    pub vm_id: u32,
    pub sandbox_id: SandboxId,
    pub secret: AccessToken,
    pub token: AccessToken,
    pub app: Arc<AppState>,
    pub assets: TerminalAssets,
}

/// A running terminal listener. Stopping it (or dropping it) closes the listener and
/// ends its sessions, which kills their shells.
pub struct TerminalServer {
    port: crate::listener::ServedPort,
}

struct Shared {
    context: TerminalContext,
    stopping: watch::Receiver<()>,
}

impl TerminalServer {
    /// Serves `context` on `listener` until stopped.
    pub fn serve(listener: tokio::net::TcpListener, context: TerminalContext) -> TerminalServer {
        let address = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (stop, stopping) = watch::channel(());
        let vm_id = context.vm_id;
        let shared = Arc::new(Shared {
            context,
            stopping: stopping.clone(),
        });
        let mut shutdown = stopping;
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, router(shared))
                .with_graceful_shutdown(async move {
                    let _ = shutdown.changed().await;
                })
                .await;
            if let Err(error) = served {
                tracing::error!(vm_id, %error, "the terminal listener failed");
            }
        });
        TerminalServer {
            port: crate::listener::ServedPort::new(address, stop, task, "a terminal"),
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.port.address()
    }

    /// Stops serving; returns once the port is free again and the sessions have ended.
    pub async fn stop(self) {
        self.port.stop().await;
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/ws", get(websocket))
        .route("/{secret}", get(page))
        .route("/{secret}/", get(page))
        .route("/{secret}/terminal.js", get(script))
        .route("/{secret}/token", get(token))
        .route("/{secret}/assets/{*path}", get(asset))
        .fallback(not_found)
        .with_state(shared)
}

async fn not_found() -> Response {
    not_found_response()
}

fn not_found_response() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

/// Whether the path's secret is this VM's; any other answers the same 404 as an unknown
/// path.
fn secret_matches(shared: &Shared, secret: &str) -> bool {
    shared.context.secret.matches(secret)
}

fn private(content_type: &'static str, body: impl IntoResponse) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    for (name, value) in page::SECURITY_HEADERS {
        headers.insert(name, header::HeaderValue::from_static(value));
    }
    response
}

async fn page(State(shared): State<Arc<Shared>>, Path(secret): Path<String>) -> Response {
    if !secret_matches(&shared, &secret) {
        return not_found_response();
    }
    let context = &shared.context;
    private(
        "text/html; charset=utf-8",
        page::page(context.vm_id, context.secret.expose()),
    )
}

async fn script(State(shared): State<Arc<Shared>>, Path(secret): Path<String>) -> Response {
    if !secret_matches(&shared, &secret) {
        return not_found_response();
    }
    private("text/javascript; charset=utf-8", page::SCRIPT)
}

async fn token(State(shared): State<Arc<Shared>>, Path(secret): Path<String>) -> Response {
    if !secret_matches(&shared, &secret) {
        return not_found_response();
    }
    let body = serde_json::json!({ "token": shared.context.token.expose() }).to_string();
    private("application/json", body)
}

async fn asset(
    State(shared): State<Arc<Shared>>,
    Path((secret, path)): Path<(String, String)>,
) -> Response {
    if !secret_matches(&shared, &secret) {
        return not_found_response();
    }
    match (shared.context.assets)(&path) {
        Some((bytes, content_type)) => private(content_type, bytes),
        None => not_found_response(),
    }
}

async fn websocket(
    State(shared): State<Arc<Shared>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let Ok(upgrade) = upgrade else {
        return (
            StatusCode::BAD_REQUEST,
            "this route needs a WebSocket upgrade\n",
        )
            .into_response();
    };
    let stopping = shared.stopping.clone();
    upgrade
        .protocols(["tty"])
        .max_message_size(MAX_CLIENT_FRAME)
        .on_upgrade(
            move |socket| async move { session::run(socket, &shared.context, stopping).await },
        )
}
