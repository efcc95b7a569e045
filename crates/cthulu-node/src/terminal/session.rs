//! One terminal session on `/ws`: the ttyd handshake, checked against the VM's token
//! before anything starts, then a shell under a PTY in the sandbox (the same
//! `exec_stream` with `tty` as the API's streaming exec) until either side ends it.
//! Closing the socket kills the shell.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use cthulu_core::{ExecEvent, ExecSpec, ExecStream, UNLIMITED_TIMEOUT};
use cthulu_types::sandbox::Operation;
use cthulu_types::PtySize;
use tokio::sync::watch;

use super::protocol::{self, ClientFrame};
use super::TerminalContext;

/// How long a client has to send its handshake after connecting.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server waits for the client's side of the close handshake.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Bash when the sandbox has it, else the POSIX shell; both interactive.
const SHELL: &str = "if command -v bash >/dev/null 2>&1; then exec bash -i; fi; exec sh -i";

/// The shell a session runs. The sandbox's env (`ANTHROPIC_API_KEY` among it) is laid
/// under this by the backend.
pub fn shell_spec(size: PtySize) -> ExecSpec {
    let mut spec = ExecSpec::argv(["/bin/sh", "-c", SHELL]);
    spec.env.insert("TERM".into(), "xterm-256color".into());
    spec.tty = Some(size);
    spec.timeout = UNLIMITED_TIMEOUT;
    spec.max_output_bytes = u64::MAX;
    spec
}

pub async fn run(
    mut socket: WebSocket,
    context: &TerminalContext,
    mut stopping: watch::Receiver<()>,
) {
    let vm_id = context.vm_id;
    let handshake = match read_handshake(&mut socket).await {
        Ok(handshake) => handshake,
        Err(reason) => {
            tracing::info!(vm_id, "terminal session refused: {reason}");
            return close(socket).await;
        }
    };
    if !context.token.matches(&handshake.auth_token) {
        tracing::warn!(vm_id, "terminal session refused: wrong AuthToken");
        return close(socket).await;
    }
    let stream = match start_shell(context, handshake.size).await {
        Ok(stream) => stream,
        Err(message) => {
            tracing::warn!(vm_id, "cannot start a terminal shell: {message}");
            let notice = format!("\r\n[cthulu] cannot start a shell in vm {vm_id}: {message}\r\n");
            let _ = socket
                .send(binary(protocol::OUTPUT, notice.as_bytes()))
                .await;
            return close(socket).await;
        }
    };
    let title = format!("cthulu vm {vm_id}");
    for frame in [
        binary(protocol::SET_WINDOW_TITLE, title.as_bytes()),
        binary(protocol::SET_PREFERENCES, b"{}"),
    ] {
        if socket.send(frame).await.is_err() {
            return;
        }
    }
    pump(&mut socket, stream, &mut stopping).await;
    close(socket).await;
}

async fn read_handshake(socket: &mut WebSocket) -> Result<protocol::Handshake, String> {
    let first = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        loop {
            match socket.recv().await {
                Some(Ok(Message::Text(text))) => return Some(text.as_bytes().to_vec()),
                Some(Ok(Message::Binary(data))) => return Some(data.to_vec()),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(_)) | Err(_)) | None => return None,
            }
        }
    })
    .await
    .map_err(|_| format!("no handshake within {HANDSHAKE_TIMEOUT:?}"))?
    .ok_or("closed before the handshake")?;
    protocol::parse_handshake(&first).map_err(|error| error.to_string())
}

async fn start_shell(
    context: &TerminalContext,
    size: PtySize,
) -> Result<Box<dyn ExecStream>, String> {
    let handle = context
        .app
        .handle(&context.sandbox_id, Operation::Exec)
        .map_err(|failure| failure.message)?;
    handle
        .exec_stream(shell_spec(size))
        .await
        .map_err(|error| error.to_string())
}

/// Output to the client, the client's keys and resizes to the shell, until the shell
/// exits, the client leaves or the terminal server stops. Returning drops the stream,
/// which kills the shell.
async fn pump(
    socket: &mut WebSocket,
    mut stream: Box<dyn ExecStream>,
    stopping: &mut watch::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = stopping.changed() => return,
            event = stream.next_event() => match event {
                Some(ExecEvent::Stdout(data) | ExecEvent::Stderr(data)) => {
                    if socket.send(binary(protocol::OUTPUT, &data)).await.is_err() {
                        return;
                    }
                }
                Some(ExecEvent::Exit(_)) | None => return,
            },
            message = socket.recv() => {
                let data = match message {
                    Some(Ok(Message::Binary(data))) => data.to_vec(),
                    Some(Ok(Message::Text(text))) => text.as_bytes().to_vec(),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                };
                let outcome = match protocol::parse_client_frame(&data) {
                    Ok(ClientFrame::Input(input)) => stream.write_stdin(input).await.map_err(|error| error.to_string()),
                    Ok(ClientFrame::Resize(size)) => stream.resize(size).await.map_err(|error| error.to_string()),
                    Ok(ClientFrame::Pause | ClientFrame::Resume | ClientFrame::Ignored) => Ok(()),
                    Err(error) => Err(error.to_string()),
                };
                // A bad frame is logged and skipped, as ttyd does; the session goes on.
                if let Err(reason) = outcome {
                    tracing::debug!("terminal frame ignored: {reason}");
                }
            }
        }
    }
}

fn binary(command: u8, data: &[u8]) -> Message {
    Message::Binary(protocol::server_frame(command, data).into())
}

/// Sends Close and waits briefly for the client's, so the last output is not lost to a
/// reset.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shell_runs_under_a_terminal_without_limits() {
        let spec = shell_spec(PtySize {
            cols: 200,
            rows: 50,
        });
        assert_eq!(
            spec.tty,
            Some(PtySize {
                cols: 200,
                rows: 50
            })
        );
        assert_eq!(spec.timeout, UNLIMITED_TIMEOUT);
        assert_eq!(
            spec.env.get("TERM").map(String::as_str),
            Some("xterm-256color")
        );
        assert!(!spec.detach, "closing the socket must kill the shell");
    }
}
