//! A ttyd client that does what the earlier system's `TtydSession` did: fetch
//! `<web_terminal>/token`, open `ws://host:port/ws` (the URL's path dropped) with
//! subprotocol `tty`, send the JSON handshake, then `'0'`-prefixed frames both ways.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub struct TtydClient {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Output so far, as text.
    pub output: String,
}

/// `host:port` of a `http://host:port/...` URL.
pub fn host_port(web_terminal: &str) -> &str {
    let rest = web_terminal
        .strip_prefix("http://")
        .expect("an http:// terminal URL");
    rest.split('/').next().unwrap()
}

pub async fn fetch_token(web_terminal: &str) -> String {
    let response = reqwest::get(format!("{web_terminal}/token"))
        .await
        .expect("the terminal answers");
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.expect("JSON");
    body["token"].as_str().expect("a token").to_owned()
}

/// Opens `/ws` with subprotocol `tty`; the server must agree to it.
pub async fn open_socket(web_terminal: &str) -> WebSocketStream<MaybeTlsStream<TcpStream>> {
    let mut request = format!("ws://{}/ws", host_port(web_terminal))
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("tty"));
    let (socket, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("the WebSocket opens");
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|value| value.to_str().ok()),
        Some("tty")
    );
    socket
}

impl TtydClient {
    pub async fn connect(web_terminal: &str) -> TtydClient {
        let token = fetch_token(web_terminal).await;
        TtydClient::connect_with_token(web_terminal, &token).await
    }

    pub async fn connect_with_token(web_terminal: &str, token: &str) -> TtydClient {
        let mut socket = open_socket(web_terminal).await;
        let handshake = serde_json::json!({"AuthToken": token, "columns": 200, "rows": 50});
        socket
            .send(Message::Text(handshake.to_string().into()))
            .await
            .expect("the handshake is sent");
        TtydClient {
            socket,
            output: String::new(),
        }
    }

    pub async fn send_frame(&mut self, command: u8, data: &[u8]) {
        let mut frame = vec![command];
        frame.extend_from_slice(data);
        self.socket
            .send(Message::Binary(frame.into()))
            .await
            .expect("a frame is sent");
    }

    pub async fn type_line(&mut self, line: &str) {
        self.send_frame(b'0', format!("{line}\n").as_bytes()).await;
    }

    /// Reads output until it contains `needle`; `false` on timeout or when the socket
    /// closes first.
    pub async fn wait_for(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.output.contains(needle) {
            match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Ok(Some(Ok(Message::Binary(data)))) => {
                    if data.first() == Some(&b'0') {
                        self.output.push_str(&String::from_utf8_lossy(&data[1..]));
                    }
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_)) | None) | Err(_) => return false,
            }
        }
        true
    }

    /// Reads until the server closes the socket; the output frames seen meanwhile, or
    /// `None` if it stayed open for `timeout`.
    pub async fn until_closed(&mut self, timeout: Duration) -> Option<usize> {
        let mut output_frames = 0;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Ok(Some(Ok(Message::Binary(data)))) if data.first() == Some(&b'0') => {
                    output_frames += 1
                }
                Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) => {
                    return Some(output_frames)
                }
                Ok(Some(Ok(_))) => {}
                Err(_) => return None,
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
        // Drain until the server's Close.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(_)) = self.socket.next().await {}
        })
        .await;
    }
}
