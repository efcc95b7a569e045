use std::net::SocketAddr;

use cthulu_client::{CthuluClient, ExecEvent};
use cthulu_types::stream::{ClientMessage, ServerMessage, STDERR, STDIN, STDOUT};
use cthulu_types::{ExecRequest, PtySize, Signal};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// What the fake server saw from the client.
#[derive(Debug, Default)]
struct Seen {
    request: Option<ExecRequest>,
    stdin: Vec<u8>,
    controls: Vec<ClientMessage>,
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut bytes = vec![channel];
    bytes.extend_from_slice(data);
    Message::binary(bytes)
}

fn text(message: &ServerMessage) -> Message {
    Message::text(serde_json::to_string(message).unwrap())
}

/// A WebSocket peer that plays a streaming exec: it echoes stdin back on stdout until
/// `close_stdin`, then exits with 3.
async fn fake_exec_server() -> (SocketAddr, tokio::task::JoinHandle<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut seen = Seen::default();
        let mut socket = tokio_tungstenite::accept_async(stream).await.unwrap();
        let Some(Ok(Message::Text(first))) = socket.next().await else {
            panic!("no first frame")
        };
        seen.request = Some(serde_json::from_str(&first).unwrap());
        socket
            .send(text(&ServerMessage::Started {
                process_id: "p1".into(),
            }))
            .await
            .unwrap();
        socket.send(frame(STDERR, b"warming up\n")).await.unwrap();
        while let Some(Ok(message)) = socket.next().await {
            match message {
                Message::Binary(data) => {
                    assert_eq!(data[0], STDIN);
                    seen.stdin.extend_from_slice(&data[1..]);
                    socket.send(frame(STDOUT, &data[1..])).await.unwrap();
                }
                Message::Text(control) => {
                    let control: ClientMessage = serde_json::from_str(&control).unwrap();
                    let done = control == ClientMessage::CloseStdin;
                    seen.controls.push(control);
                    if done {
                        break;
                    }
                }
                _ => {}
            }
        }
        socket
            .send(text(&ServerMessage::Exit {
                exit_code: Some(3),
                signal: None,
                timed_out: false,
                truncated: false,
                oom_killed: false,
            }))
            .await
            .unwrap();
        let _ = socket.close(None).await;
        seen
    });
    (address, task)
}

#[tokio::test]
async fn streaming_exec_follows_the_frame_protocol() {
    let (address, server) = fake_exec_server().await;
    let client = CthuluClient::new(&format!("http://{address}"), Some("k".into())).unwrap();
    let request = ExecRequest {
        tty: Some(PtySize {
            cols: 100,
            rows: 30,
        }),
        ..ExecRequest::argv(["cat"])
    };
    let mut session = client.exec_stream("abc", &request).await.unwrap();
    assert_eq!(session.process_id(), "p1");
    let sender = session.sender();
    sender
        .resize(PtySize {
            cols: 120,
            rows: 40,
        })
        .await
        .unwrap();
    sender.signal(Signal::Winch).await.unwrap();
    sender.stdin(b"hello ").await.unwrap();
    sender.clone().stdin(b"world").await.unwrap();
    sender.close_stdin().await.unwrap();

    let (mut stdout, mut stderr, mut exit) = (Vec::new(), Vec::new(), None);
    while let Some(event) = session.next_event().await.unwrap() {
        match event {
            ExecEvent::Stdout(data) => stdout.extend_from_slice(&data),
            ExecEvent::Stderr(data) => stderr.extend_from_slice(&data),
            ExecEvent::Exit(status) => exit = Some(status),
        }
    }
    assert_eq!(stdout, b"hello world");
    assert_eq!(stderr, b"warming up\n");
    assert_eq!(exit.unwrap().exit_code, Some(3));
    assert_eq!(exit.unwrap().shell_status(), 3);

    let seen = server.await.unwrap();
    assert_eq!(seen.request.unwrap(), request);
    assert_eq!(seen.stdin, b"hello world");
    assert_eq!(
        seen.controls,
        vec![
            ClientMessage::Resize {
                cols: 120,
                rows: 40
            },
            ClientMessage::Signal {
                signal: Signal::Winch
            },
            ClientMessage::CloseStdin,
        ]
    );
}

#[tokio::test]
async fn a_refused_upgrade_carries_the_api_error() {
    let (address, _heads) = crate::fake::http_responder(
        "404 Not Found",
        r#"{"error":{"code":"process_not_found","message":"no process p9"}}"#,
    )
    .await;
    let client = CthuluClient::new(&format!("http://{address}"), None).unwrap();
    let Err(error) = client.attach("abc", "p9").await else {
        panic!("attach to a missing process succeeded")
    };
    assert!(error.is_not_found(), "{error:?}");
}
