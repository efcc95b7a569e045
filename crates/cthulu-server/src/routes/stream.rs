//! Streaming exec and process attach over WebSocket (docs/streaming.md).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use cthulu_core::{ExecEvent, ExecSpec, ExecStream, SandboxHandle};
use cthulu_types::sandbox::Operation;
use cthulu_types::stream::{ClientMessage, ServerMessage, STDERR, STDIN, STDOUT};
use cthulu_types::{ErrorBody, ExecRequest, PtySize};

use super::sandbox_id;
use crate::error::{ApiFailure, ApiResult};
use crate::state::AppState;

/// How long the client has to send its exec request after the upgrade.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the server waits for the client's side of the close handshake.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest frame a client may send (stdin chunks, the exec request).
const MAX_CLIENT_FRAME: usize = 16 * 1024 * 1024;

#[utoipa::path(
    get, path = "/api/v1/sandboxes/{id}/exec/ws", tag = "exec",
    params(("id" = String, Path)),
    responses(
        (status = 101, description = "WebSocket: first frame an ExecRequest, then the frames of docs/streaming.md"),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
    )
)]
pub async fn exec_ws(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    upgrade: WebSocketUpgrade,
) -> ApiResult<Response> {
    // Refuse before the upgrade, so a plain HTTP client sees a plain error.
    let handle = state.handle(&sandbox_id(&id)?, Operation::Exec)?;
    handle
        .status()
        .check(Operation::Exec)
        .map_err(cthulu_core::SandboxError::from)?;
    Ok(upgrade
        .max_message_size(MAX_CLIENT_FRAME)
        .on_upgrade(move |socket| run_exec(socket, handle, state)))
}

#[utoipa::path(
    get, path = "/api/v1/sandboxes/{id}/processes/{process_id}/ws", tag = "processes",
    params(("id" = String, Path), ("process_id" = String, Path)),
    responses(
        (status = 101, description = "WebSocket: buffered output, then live output and the exit"),
        (status = 404, body = ErrorBody),
    )
)]
pub async fn attach_ws(
    State(state): State<Arc<AppState>>,
    Path((id, process_id)): Path<(String, String)>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let handle = state.handle(&sandbox_id(&id)?, Operation::Exec)?;
    // Attach now, so an unknown process is a 404 rather than a closed socket.
    let stream = handle.attach_process(&process_id).await?;
    Ok(require_upgrade(upgrade)?
        .max_message_size(MAX_CLIENT_FRAME)
        .on_upgrade(move |socket| pump(socket, stream)))
}

/// The upgrade is checked after the sandbox and process, so that a wrong id is a 404
/// whatever the request looks like.
fn require_upgrade(
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<WebSocketUpgrade> {
    upgrade.map_err(|rejection| {
        ApiFailure::bad_request(format!(
            "this route needs a WebSocket upgrade: {}",
            rejection.body_text()
        ))
        .with_hint("connect with a WebSocket client; see docs/streaming.md")
    })
}

async fn run_exec(mut socket: WebSocket, handle: Arc<dyn SandboxHandle>, state: Arc<AppState>) {
    let request = match read_request(&mut socket).await {
        Ok(request) => request,
        Err(failure) => return send_error(socket, failure).await,
    };
    let spec = match ExecSpec::from_request(&request) {
        Ok(spec) => spec,
        Err(error) => return send_error(socket, error.into()).await,
    };
    match handle.exec_stream(spec).await {
        Ok(stream) => {
            state.metrics.exec_streams.fetch_add(1, Ordering::Relaxed);
            pump(socket, stream).await
        }
        Err(error) => send_error(socket, error.into()).await,
    }
}

async fn read_request(socket: &mut WebSocket) -> ApiResult<ExecRequest> {
    loop {
        let message = tokio::time::timeout(REQUEST_TIMEOUT, socket.recv())
            .await
            .map_err(|_| ApiFailure::bad_request("no exec request within 30 s of connecting"))?;
        match message {
            Some(Ok(Message::Text(text))) => {
                // The path names the bad field, as for the HTTP JSON bodies.
                let mut deserializer = serde_json::Deserializer::from_str(&text);
                return serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
                    ApiFailure::bad_request(format!(
                        "invalid exec request: {}: {}",
                        error.path(),
                        error.inner()
                    ))
                });
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(_)) => {
                return Err(ApiFailure::bad_request(
                    "the first frame must be a text frame holding an exec request",
                ))
            }
            Some(Err(_)) | None => {
                return Err(ApiFailure::bad_request(
                    "connection closed before the exec request",
                ))
            }
        }
    }
}

async fn send_error(mut socket: WebSocket, failure: ApiFailure) {
    let message = ServerMessage::Error {
        error: failure.body().error,
    };
    let _ = socket.send(text(&message)).await;
    close(socket).await;
}

/// Ends the session with a proper close handshake: sends Close, then reads (and drops)
/// whatever the client still sends until its Close arrives. Dropping the socket with a
/// client frame unread (a late `close_stdin`, say) would make the kernel answer with a
/// reset, and a reset throws away the exit frame still waiting in the client's buffer.
async fn close(mut socket: WebSocket) {
    if socket.send(Message::Close(None)).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

fn text(message: &ServerMessage) -> Message {
    Message::Text(
        serde_json::to_string(message)
            .expect("server messages always serialize")
            .into(),
    )
}

fn channel_frame(channel: u8, data: &[u8]) -> Message {
    let mut frame = Vec::with_capacity(data.len() + 1);
    frame.push(channel);
    frame.extend_from_slice(data);
    Message::Binary(frame.into())
}

/// Moves output to the client and the client's input to the process until the exit.
/// Returning drops the stream, which kills a process that was not detached.
async fn pump(mut socket: WebSocket, mut stream: Box<dyn ExecStream>) {
    let started = ServerMessage::Started {
        process_id: stream.process_id().to_owned(),
    };
    if socket.send(text(&started)).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            event = stream.next_event() => {
                let message = match event {
                    Some(ExecEvent::Stdout(data)) => channel_frame(STDOUT, &data),
                    Some(ExecEvent::Stderr(data)) => channel_frame(STDERR, &data),
                    Some(ExecEvent::Exit(exit)) => {
                        let exit = ServerMessage::Exit {
                            exit_code: exit.exit_code,
                            signal: exit.signal,
                            timed_out: exit.timed_out,
                            truncated: exit.truncated,
                            oom_killed: exit.oom_killed,
                        };
                        if socket.send(text(&exit)).await.is_ok() {
                            close(socket).await;
                        }
                        return;
                    }
                    None => {
                        close(socket).await;
                        return;
                    }
                };
                if socket.send(message).await.is_err() {
                    return;
                }
            }
            message = socket.recv() => {
                let outcome = match message {
                    Some(Ok(Message::Binary(data))) => match data.split_first() {
                        Some((&STDIN, input)) => stream.write_stdin(input).await.map_err(ApiFailure::from),
                        _ => Err(ApiFailure::bad_request("binary frames from the client must start with channel 0 (stdin)")),
                    },
                    Some(Ok(Message::Text(raw))) => match serde_json::from_str::<ClientMessage>(&raw) {
                        Ok(ClientMessage::CloseStdin) => stream.close_stdin().await.map_err(ApiFailure::from),
                        Ok(ClientMessage::Signal { signal }) => stream.signal(signal).await.map_err(ApiFailure::from),
                        Ok(ClientMessage::Resize { cols, rows }) => stream.resize(PtySize { cols, rows }).await.map_err(ApiFailure::from),
                        Err(error) => Err(ApiFailure::bad_request(format!("invalid control message: {error}"))),
                    },
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                };
                // A bad control message is reported but does not end the session.
                if let Err(failure) = outcome {
                    let error = ServerMessage::Error { error: failure.body().error };
                    if socket.send(text(&error)).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}
