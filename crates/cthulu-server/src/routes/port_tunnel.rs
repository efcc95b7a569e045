//! `GET /api/v1/sandboxes/{id}/ports/{port}/ws`: a TCP connection to a port inside the
//! sandbox, carried over a WebSocket. Binary frames are the bytes; an empty binary frame
//! says its sender has finished writing (a half-close). A platform tunnels the ports of
//! its remote sandboxes through this route, because the node's own forwarders listen on
//! the node's loopback.

use std::sync::Arc;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use cthulu_core::Duplex;
use cthulu_types::sandbox::Operation;
use cthulu_types::ErrorBody;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::sandbox_id;
use crate::error::{ApiFailure, ApiResult};
use crate::state::AppState;

/// Bytes read from the sandbox port per frame.
const CHUNK: usize = 64 * 1024;
/// Largest frame a client may send.
const MAX_CLIENT_FRAME: usize = 1024 * 1024;

#[utoipa::path(
    get, path = "/api/v1/sandboxes/{id}/ports/{port}/ws", tag = "ports",
    params(("id" = String, Path), ("port" = u16, Path)),
    responses(
        (status = 101, description = "WebSocket: binary frames are the TCP byte stream; an empty one is a half-close"),
        (status = 400, description = "Nothing listens on the port", body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
pub async fn tunnel(
    State(state): State<Arc<AppState>>,
    Path((id, port)): Path<(String, u16)>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    if port == 0 {
        return Err(ApiFailure::bad_request("invalid port 0: must be 1-65535"));
    }
    let handle = state.handle(&sandbox_id(&id)?, Operation::Ports)?;
    // Connected before the upgrade, so a silent port is a plain 400.
    let connection = handle.connect_port(port).await?;
    let upgrade = upgrade.map_err(|rejection| {
        ApiFailure::bad_request(format!(
            "this route needs a WebSocket upgrade: {}",
            rejection.body_text()
        ))
    })?;
    Ok(upgrade
        .max_message_size(MAX_CLIENT_FRAME)
        .on_upgrade(move |socket| relay(socket, connection)))
}

async fn relay(mut socket: WebSocket, connection: Box<dyn Duplex>) {
    let (mut reader, mut writer) = tokio::io::split(connection);
    let mut buffer = vec![0u8; CHUNK];
    let (mut sending, mut receiving) = (true, true);
    while sending || receiving {
        tokio::select! {
            read = reader.read(&mut buffer), if sending => {
                let read = read.unwrap_or(0);
                if read == 0 {
                    sending = false;
                }
                // Zero bytes: the empty frame that says the port has finished.
                if socket.send(Message::Binary(buffer[..read].to_vec().into())).await.is_err() {
                    return;
                }
            }
            message = socket.recv(), if receiving => match message {
                Some(Ok(Message::Binary(data))) if data.is_empty() => {
                    receiving = false;
                    let _ = writer.shutdown().await;
                }
                Some(Ok(Message::Binary(data))) => {
                    if writer.write_all(&data).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}
