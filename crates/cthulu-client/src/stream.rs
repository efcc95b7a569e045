//! Streaming exec and attach over WebSocket (docs/streaming.md).
//!
//! An [`ExecSession`] owns the read half of the socket and hands out [`ExecEvent`]s in
//! order; a background task owns the write half and sends what any clone of the session's
//! [`ExecSender`] queues (stdin, EOF, signals, resizes). Reading only when asked keeps
//! memory bounded: a slow consumer slows the server down instead of buffering.

use bytes::Bytes;
use cthulu_types::stream::{ClientMessage, ServerMessage, STDERR, STDIN, STDOUT};
use cthulu_types::{ExecRequest, PtySize, Signal};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use reqwest::Url;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{ClientError, CthuluClient};

pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Frames queued for sending; the writer task applies backpressure past this many.
const OUTGOING_QUEUE: usize = 64;

/// Something the process did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    Stdout(Bytes),
    Stderr(Bytes),
    /// The process ended; no output follows.
    Exit(ExecExit),
}

/// How a streamed process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecExit {
    /// The exit code; absent when a signal killed it or it timed out.
    pub exit_code: Option<i32>,
    /// The signal that killed it.
    pub signal: Option<i32>,
    pub timed_out: bool,
    /// Output past the cap was dropped.
    pub truncated: bool,
    pub oom_killed: bool,
}

impl ExecExit {
    /// The status a shell would report: the exit code, `128 + n` for death by signal `n`,
    /// `124` for a timeout (like `timeout(1)`).
    pub fn shell_status(&self) -> i32 {
        if self.timed_out {
            124
        } else if let Some(signal) = self.signal {
            128 + signal
        } else {
            self.exit_code.unwrap_or(1)
        }
    }
}

/// Sends stdin, EOF, signals and resizes to a streamed process. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ExecSender {
    url: String,
    outgoing: mpsc::Sender<Message>,
}

impl ExecSender {
    async fn send(&self, message: Message) -> Result<(), ClientError> {
        self.outgoing
            .send(message)
            .await
            .map_err(|_| ClientError::StreamClosed {
                url: self.url.clone(),
            })
    }

    async fn send_control(&self, message: &ClientMessage) -> Result<(), ClientError> {
        let text = serde_json::to_string(message).expect("client messages always serialize");
        self.send(Message::text(text)).await
    }

    /// Writes `data` to the process's stdin.
    pub async fn stdin(&self, data: &[u8]) -> Result<(), ClientError> {
        if data.is_empty() {
            return Ok(());
        }
        let mut frame = Vec::with_capacity(data.len() + 1);
        frame.push(STDIN);
        frame.extend_from_slice(data);
        self.send(Message::binary(frame)).await
    }

    /// EOF on the process's stdin.
    pub async fn close_stdin(&self) -> Result<(), ClientError> {
        self.send_control(&ClientMessage::CloseStdin).await
    }

    pub async fn signal(&self, signal: Signal) -> Result<(), ClientError> {
        self.send_control(&ClientMessage::Signal { signal }).await
    }

    /// New size of the process's pseudo-terminal.
    pub async fn resize(&self, size: PtySize) -> Result<(), ClientError> {
        self.send_control(&ClientMessage::resize(size)).await
    }

    /// Closes the connection. The process is killed unless it was started detached.
    pub async fn close(&self) -> Result<(), ClientError> {
        self.send(Message::Close(None)).await
    }
}

/// A running streamed exec or an attach to a process.
pub struct ExecSession {
    process_id: String,
    url: String,
    reader: SplitStream<Socket>,
    sender: ExecSender,
    exited: bool,
}

impl std::fmt::Debug for ExecSession {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ExecSession")
            .field("process_id", &self.process_id)
            .field("url", &self.url)
            .field("exited", &self.exited)
            .finish_non_exhaustive()
    }
}

impl ExecSession {
    /// The process id, for attach, signal and kill.
    pub fn process_id(&self) -> &str {
        &self.process_id
    }

    /// A handle that sends to the process; clone it freely.
    pub fn sender(&self) -> ExecSender {
        self.sender.clone()
    }

    /// The next event; `Ok(None)` after the exit once the server closes.
    pub async fn next_event(&mut self) -> Result<Option<ExecEvent>, ClientError> {
        loop {
            let message = match self.reader.next().await {
                Some(Ok(message)) => message,
                None | Some(Err(_)) if self.exited => return Ok(None),
                None => {
                    return Err(ClientError::StreamClosed {
                        url: self.url.clone(),
                    })
                }
                Some(Err(source)) => {
                    return Err(ClientError::WebSocket {
                        url: self.url.clone(),
                        source: Box::new(source),
                    })
                }
            };
            match message {
                Message::Binary(data) => match data.first() {
                    None => continue,
                    Some(&STDOUT) => return Ok(Some(ExecEvent::Stdout(data.slice(1..)))),
                    Some(&STDERR) => return Ok(Some(ExecEvent::Stderr(data.slice(1..)))),
                    Some(channel) => {
                        return Err(self.protocol(format!("unknown output channel {channel}")))
                    }
                },
                Message::Text(text) => match parse_server_message(&self.url, &text)? {
                    ServerMessage::Started { .. } => continue,
                    ServerMessage::Exit {
                        exit_code,
                        signal,
                        timed_out,
                        truncated,
                        oom_killed,
                    } => {
                        self.exited = true;
                        return Ok(Some(ExecEvent::Exit(ExecExit {
                            exit_code,
                            signal,
                            timed_out,
                            truncated,
                            oom_killed,
                        })));
                    }
                    // After `started`, an error frame answers one control message
                    // (stdin, signal, resize) and the session goes on; a fatal failure
                    // closes the socket, which ends it below.
                    ServerMessage::Error { error } => {
                        tracing::warn!(code = %error.code, message = %error.message, "the server refused a control message");
                        continue;
                    }
                },
                Message::Close(_) if self.exited => return Ok(None),
                Message::Close(_) => {
                    return Err(ClientError::StreamClosed {
                        url: self.url.clone(),
                    })
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            }
        }
    }

    /// Reads everything to the end: stdout, stderr and the exit.
    pub async fn collect(mut self) -> Result<(Vec<u8>, Vec<u8>, ExecExit), ClientError> {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        while let Some(event) = self.next_event().await? {
            match event {
                ExecEvent::Stdout(data) => stdout.extend_from_slice(&data),
                ExecEvent::Stderr(data) => stderr.extend_from_slice(&data),
                ExecEvent::Exit(exit) => return Ok((stdout, stderr, exit)),
            }
        }
        Err(ClientError::StreamClosed { url: self.url })
    }

    fn protocol(&self, detail: String) -> ClientError {
        ClientError::Protocol {
            url: self.url.clone(),
            detail,
        }
    }
}

fn parse_server_message(url: &str, text: &str) -> Result<ServerMessage, ClientError> {
    serde_json::from_str(text).map_err(|error| ClientError::Protocol {
        url: url.to_owned(),
        detail: format!("{error} in {text:?}"),
    })
}

/// Sends the queued frames until every sender is gone or the socket fails.
async fn write_frames(mut sink: SplitSink<Socket, Message>, mut outgoing: mpsc::Receiver<Message>) {
    while let Some(message) = outgoing.recv().await {
        let closing = matches!(message, Message::Close(_));
        if sink.send(message).await.is_err() || closing {
            break;
        }
    }
}

impl CthuluClient {
    /// `GET /api/v1/sandboxes/{id}/exec/ws`: starts `request` and streams it. Returns once
    /// the server says the process started.
    pub async fn exec_stream(
        &self,
        sandbox_id: &str,
        request: &ExecRequest,
    ) -> Result<ExecSession, ClientError> {
        let url = self.sandbox_url(sandbox_id, &["exec", "ws"]);
        let (mut sink, mut reader, url) = self.connect(url).await?;
        let first = serde_json::to_string(request).expect("exec requests always serialize");
        sink.send(Message::text(first))
            .await
            .map_err(|source| ClientError::WebSocket {
                url: url.clone(),
                source: Box::new(source),
            })?;
        let process_id = loop {
            match reader.next().await {
                Some(Ok(Message::Text(text))) => match parse_server_message(&url, &text)? {
                    ServerMessage::Started { process_id } => break process_id,
                    ServerMessage::Error { error } => {
                        return Err(ClientError::Api {
                            status: error.code.http_status(),
                            error,
                        })
                    }
                    ServerMessage::Exit { .. } => {
                        return Err(ClientError::Protocol {
                            url,
                            detail: "exit before started".into(),
                        })
                    }
                },
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(_))) | None => {
                    return Err(ClientError::StreamClosed { url })
                }
                Some(Ok(other)) => {
                    return Err(ClientError::Protocol {
                        url,
                        detail: format!("expected the started message, got {other:?}"),
                    })
                }
                Some(Err(source)) => {
                    return Err(ClientError::WebSocket {
                        url,
                        source: Box::new(source),
                    })
                }
            }
        };
        Ok(ExecSession::new(process_id, url, sink, reader))
    }

    /// `GET /api/v1/sandboxes/{id}/processes/{process_id}/ws`: the kept output of the
    /// process, then its live output and exit.
    pub async fn attach(
        &self,
        sandbox_id: &str,
        process_id: &str,
    ) -> Result<ExecSession, ClientError> {
        let url = self.sandbox_url(sandbox_id, &["processes", process_id, "ws"]);
        let (sink, reader, url) = self.connect(url).await?;
        Ok(ExecSession::new(process_id.to_owned(), url, sink, reader))
    }

    pub(crate) async fn connect(
        &self,
        http_url: Url,
    ) -> Result<(SplitSink<Socket, Message>, SplitStream<Socket>, String), ClientError> {
        let url = websocket_url(http_url);
        let url_text = url.to_string();
        let mut request =
            url.as_str()
                .into_client_request()
                .map_err(|source| ClientError::WebSocket {
                    url: url_text.clone(),
                    source: Box::new(source),
                })?;
        if let Some(token) = self.token() {
            let value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                ClientError::InvalidUrl {
                    url: url_text.clone(),
                    reason: "the API key holds characters not allowed in a header".into(),
                }
            })?;
            request.headers_mut().insert("authorization", value);
        }
        let (socket, _) = tokio_tungstenite::connect_async_with_config(request, None, true)
            .await
            .map_err(|error| match error {
                tungstenite::Error::Http(response) => {
                    let body = response.body().as_deref().unwrap_or_default();
                    ClientError::from_error_body("GET", &url_text, response.status().as_u16(), body)
                }
                tungstenite::Error::Io(source) => ClientError::Unreachable {
                    url: self.base_url().to_string(),
                    source: Box::new(source),
                },
                other => ClientError::WebSocket {
                    url: url_text.clone(),
                    source: Box::new(other),
                },
            })?;
        let (sink, reader) = socket.split();
        Ok((sink, reader, url_text))
    }
}

impl ExecSession {
    fn new(
        process_id: String,
        url: String,
        sink: SplitSink<Socket, Message>,
        reader: SplitStream<Socket>,
    ) -> Self {
        let (sender, receiver) = mpsc::channel(OUTGOING_QUEUE);
        tokio::spawn(write_frames(sink, receiver));
        ExecSession {
            process_id,
            sender: ExecSender {
                url: url.clone(),
                outgoing: sender,
            },
            url,
            reader,
            exited: false,
        }
    }
}

/// `http://…` becomes `ws://…`, `https://…` becomes `wss://…`.
fn websocket_url(mut url: Url) -> Url {
    let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
    url.set_scheme(scheme)
        .expect("http and ws are both special schemes");
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_urls_follow_the_http_scheme() {
        let plain = Url::parse("http://127.0.0.1:8081/api/v1/sandboxes/a/exec/ws").unwrap();
        assert_eq!(
            websocket_url(plain).as_str(),
            "ws://127.0.0.1:8081/api/v1/sandboxes/a/exec/ws"
        );
        let secure = Url::parse("https://example.test/x").unwrap();
        assert_eq!(websocket_url(secure).as_str(), "wss://example.test/x");
    }

    #[test]
    fn shell_status_follows_shell_conventions() {
        let exit = |exit_code, signal, timed_out| ExecExit {
            exit_code,
            signal,
            timed_out,
            truncated: false,
            oom_killed: false,
        };
        assert_eq!(exit(Some(3), None, false).shell_status(), 3);
        assert_eq!(exit(None, Some(9), false).shell_status(), 137);
        assert_eq!(exit(None, Some(9), true).shell_status(), 124);
    }
}
