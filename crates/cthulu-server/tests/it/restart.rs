//! Nothing a user created is lost when the server restarts.

use std::time::Duration;

use cthulu_test_support::TestServer;
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::Api;

#[tokio::test]
async fn sandboxes_files_checkpoints_and_detached_processes_survive_a_restart() {
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let sandbox_id = api
        .create(json!({"backend": "host", "labels": {"keep": "yes"}, "timeout_secs": 3600}))
        .await;
    let stopped_id = api.create_host().await;
    api.shell(&sandbox_id, "echo kept > note.txt").await;
    let (status, _) = api
        .post(
            &format!("/api/v1/sandboxes/{sandbox_id}/checkpoints"),
            json!({"name": "cp1"}),
        )
        .await;
    assert_eq!(status, 201);
    api.post(&format!("/api/v1/sandboxes/{stopped_id}/stop"), json!({}))
        .await;

    let url = format!(
        "{}/api/v1/sandboxes/{sandbox_id}/exec/ws",
        server.url().replace("http://", "ws://")
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let request =
        json!({"shell": "while true; do date +%s%N >> ticks.txt; sleep 0.1; done", "detach": true});
    socket
        .send(Message::Text(request.to_string().into()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(socket);
    let (_, before) = api.get(&format!("/api/v1/sandboxes/{sandbox_id}")).await;

    let server = server.restart().await;
    let api = Api::new(&server);
    let (status, after) = api.get(&format!("/api/v1/sandboxes/{sandbox_id}")).await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(
        after, before,
        "the sandbox looks the same after the restart"
    );
    let (_, stopped) = api.get(&format!("/api/v1/sandboxes/{stopped_id}")).await;
    assert_eq!(stopped["status"], "stopped");
    assert_eq!(
        api.shell(&sandbox_id, "cat note.txt").await["stdout"],
        "kept\n"
    );
    let (_, checkpoints) = api
        .get(&format!("/api/v1/sandboxes/{sandbox_id}/checkpoints"))
        .await;
    assert_eq!(checkpoints["checkpoints"][0]["name"], "cp1");
    let (_, processes) = api
        .get(&format!("/api/v1/sandboxes/{sandbox_id}/processes"))
        .await;
    let process = &processes["processes"][0];
    assert_eq!(process["state"], "running", "{processes}");
    // Still ticking.
    let count = |text: &str| text.lines().count();
    let first = count(
        api.shell(&sandbox_id, "cat ticks.txt").await["stdout"]
            .as_str()
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let second = count(
        api.shell(&sandbox_id, "cat ticks.txt").await["stdout"]
            .as_str()
            .unwrap(),
    );
    assert!(
        second > first,
        "the detached loop kept running across the restart"
    );
    api.delete(&format!("/api/v1/sandboxes/{sandbox_id}")).await;
}
