//! Streaming exec and attach over WebSocket (docs/streaming.md).

use std::time::Duration;

use cthulu_test_support::TestServer;
use cthulu_types::stream::{ClientMessage, ServerMessage, STDIN, STDOUT};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::Api;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(server: &TestServer, path: &str) -> Socket {
    let url = format!("{}{path}", server.url().replace("http://", "ws://"));
    let (socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("the upgrade succeeds");
    socket
}

/// Everything until the exit: (stdout, exit message).
async fn collect(socket: &mut Socket) -> (Vec<u8>, ServerMessage) {
    let mut stdout = Vec::new();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(30), socket.next())
            .await
            .expect("the stream ends in time")
            .expect("the socket stays open until the exit")
            .expect("a frame");
        match message {
            Message::Binary(data) if data[0] == STDOUT => stdout.extend_from_slice(&data[1..]),
            Message::Binary(_) => {}
            Message::Text(text) => {
                let parsed: ServerMessage = serde_json::from_str(&text).unwrap();
                if matches!(
                    parsed,
                    ServerMessage::Exit { .. } | ServerMessage::Error { .. }
                ) {
                    return (stdout, parsed);
                }
            }
            _ => {}
        }
    }
}

async fn started(socket: &mut Socket) -> String {
    match socket.next().await.unwrap().unwrap() {
        Message::Text(text) => match serde_json::from_str(&text).unwrap() {
            ServerMessage::Started { process_id } => process_id,
            other => panic!("expected started, got {other:?}"),
        },
        other => panic!("expected a text frame, got {other:?}"),
    }
}

#[tokio::test]
async fn streaming_exec_with_stdin() {
    let server = TestServer::start().await;
    let sandbox_id = Api::new(&server).create_host().await;
    let mut socket = connect(&server, &format!("/api/v1/sandboxes/{sandbox_id}/exec/ws")).await;
    socket
        .send(Message::Text(
            json!({"argv": ["sh", "-c", "tr a-z A-Z; exit 7"]})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    started(&mut socket).await;
    for piece in ["hello ", "stream", "ing\n"] {
        let mut frame = vec![STDIN];
        frame.extend_from_slice(piece.as_bytes());
        socket.send(Message::Binary(frame.into())).await.unwrap();
    }
    let close = serde_json::to_string(&ClientMessage::CloseStdin).unwrap();
    socket.send(Message::Text(close.into())).await.unwrap();
    let (stdout, exit) = collect(&mut socket).await;
    assert_eq!(String::from_utf8_lossy(&stdout), "HELLO STREAMING\n");
    match exit {
        ServerMessage::Exit { exit_code, .. } => assert_eq!(exit_code, Some(7)),
        other => panic!("expected exit, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_first_frame_is_an_error_frame() {
    let server = TestServer::start().await;
    let sandbox_id = Api::new(&server).create_host().await;
    let mut socket = connect(&server, &format!("/api/v1/sandboxes/{sandbox_id}/exec/ws")).await;
    socket
        .send(Message::Text(r#"{"argv": 5}"#.into()))
        .await
        .unwrap();
    let (_, message) = collect(&mut socket).await;
    match message {
        ServerMessage::Error { error } => {
            assert!(error.message.contains("argv"), "{}", error.message)
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn detached_process_is_listed_and_reattached() {
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let sandbox_id = api.create_host().await;
    let mut socket = connect(&server, &format!("/api/v1/sandboxes/{sandbox_id}/exec/ws")).await;
    let request =
        json!({"shell": "echo first; read line; echo got $line; sleep 600", "detach": true});
    socket
        .send(Message::Text(request.to_string().into()))
        .await
        .unwrap();
    let process_id = started(&mut socket).await;
    drop(socket);

    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, listed) = api
        .get(&format!("/api/v1/sandboxes/{sandbox_id}/processes"))
        .await;
    let entry = listed["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|process| process["id"] == process_id.as_str())
        .unwrap_or_else(|| panic!("process {process_id} not listed: {listed}"))
        .clone();
    assert_eq!(
        (entry["state"].as_str(), entry["detached"].as_bool()),
        (Some("running"), Some(true))
    );

    let mut attached = connect(
        &server,
        &format!("/api/v1/sandboxes/{sandbox_id}/processes/{process_id}/ws"),
    )
    .await;
    assert_eq!(started(&mut attached).await, process_id);
    let mut frame = vec![STDIN];
    frame.extend_from_slice(b"ping\n");
    attached.send(Message::Binary(frame.into())).await.unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("got ping") {
        match tokio::time::timeout(Duration::from_secs(20), attached.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Message::Binary(data) if data[0] == STDOUT => seen.extend_from_slice(&data[1..]),
            _ => {}
        }
    }
    assert!(
        String::from_utf8_lossy(&seen).starts_with("first\n"),
        "the output produced before attach is replayed"
    );
    drop(attached);

    let (status, _) = api
        .delete(&format!(
            "/api/v1/sandboxes/{sandbox_id}/processes/{process_id}"
        ))
        .await;
    assert_eq!(status, 204);
    let mut exited = false;
    for _ in 0..100 {
        let (_, listed) = api
            .get(&format!("/api/v1/sandboxes/{sandbox_id}/processes"))
            .await;
        let state = listed["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == process_id.as_str())
            .map(|p| p["state"].clone());
        if state.as_ref().and_then(|s| s.as_str()) == Some("exited") {
            exited = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(exited, "the killed process is reported as exited");
    let (status, _) = api
        .get(&format!(
            "/api/v1/sandboxes/{sandbox_id}/processes/pnosuch/ws"
        ))
        .await;
    assert_eq!(status, 404);
}
