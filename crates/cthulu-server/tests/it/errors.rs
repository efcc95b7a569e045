//! Bad input gets a clear error and loses nothing (the list, one test each).

use cthulu_test_support::TestServer;
use serde_json::json;

use crate::support::{code, Api};

#[tokio::test]
async fn unknown_sandbox_is_404() {
    let server = TestServer::start().await;
    let api = Api::new(&server);
    for path in [
        "/api/v1/sandboxes/nosuchsandbox",
        "/api/v1/sandboxes/NOT-AN-ID",
    ] {
        let (status, body) = api.get(path).await;
        assert_eq!((status, code(&body)), (404, "sandbox_not_found"), "{body}");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not found"));
    }
    let (status, body) = api
        .post(
            "/api/v1/sandboxes/nosuchsandbox/exec",
            json!({"shell": "true"}),
        )
        .await;
    assert_eq!((status, code(&body)), (404, "sandbox_not_found"), "{body}");
}

#[tokio::test]
async fn malformed_json_names_the_field() {
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let (status, body) = api
        .post_raw("/api/v1/sandboxes", b"{not json".to_vec())
        .await;
    assert_eq!((status, code(&body)), (400, "bad_request"), "{body}");
    let (status, body) = api
        .post("/api/v1/sandboxes", json!({"backend": "host", "labls": {}}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("labls"),
        "{body}"
    );
    let (status, body) = api
        .post("/api/v1/sandboxes", json!({"backend": "warp-drive"}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("warp-drive"),
        "{body}"
    );

    let sandbox_id = api.create_host().await;
    let exec = format!("/api/v1/sandboxes/{sandbox_id}/exec");
    let (status, body) = api.post(&exec, json!({"argv": "ls"})).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("argv"),
        "{body}"
    );
    let (status, body) = api
        .post(&exec, json!({"argv": ["ls"], "shell": "ls"}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("argv"),
        "{body}"
    );
    let (status, body) = api
        .post(&exec, json!({"shell": "true", "timeout_ms": -1}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("timeout_ms"),
        "{body}"
    );
}

#[tokio::test]
async fn paths_escaping_the_workspace_are_refused() {
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let sandbox_id = api.create_host().await;
    let outside = tempfile::tempdir().unwrap();
    let canary = outside.path().join("canary");
    std::fs::write(&canary, "untouched").unwrap();
    api.shell(
        &sandbox_id,
        &format!(
            "ln -s /etc etc_link; ln -s {dir} parent_link; ln -s {dir}/canary canary_link",
            dir = outside.path().display()
        ),
    )
    .await;
    let files = format!("/api/v1/sandboxes/{sandbox_id}/files");
    for path in [
        "../../etc/passwd",
        "/etc/passwd",
        "etc_link/passwd",
        "parent_link/canary",
        "parent_link/new",
        "canary_link",
    ] {
        let (status, body) = api.get(&format!("{files}?path={path}")).await;
        assert_eq!(
            (status, code(&body)),
            (400, "path_outside_sandbox"),
            "GET {path}: {body}"
        );
        let (status, body) = api
            .put_bytes(&format!("{files}?path={path}"), b"owned".to_vec())
            .await;
        if path == "canary_link" && status == 201 {
            // Replacing the link itself with a new file inside the workspace is safe too:
            // what matters is that its target outside stays untouched (checked below).
            let (_, listing) = api
                .get(&format!("/api/v1/sandboxes/{sandbox_id}/dirs"))
                .await;
            let entry = listing["entries"]
                .as_array()
                .unwrap()
                .iter()
                .find(|entry| entry["name"] == "canary_link")
                .cloned()
                .unwrap();
            assert_eq!(entry["kind"], "file", "{listing}");
            continue;
        }
        assert_eq!(
            (status, code(&body)),
            (400, "path_outside_sandbox"),
            "PUT {path}: {body}"
        );
    }
    let (status, body) = api
        .get(&format!(
            "/api/v1/sandboxes/{sandbox_id}/dirs?path=parent_link"
        ))
        .await;
    assert_eq!(
        (status, code(&body)),
        (400, "path_outside_sandbox"),
        "{body}"
    );
    let (status, body) = api
        .post(
            &format!("/api/v1/sandboxes/{sandbox_id}/exec"),
            json!({"shell": "pwd", "cwd": "/etc"}),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (400, "path_outside_sandbox"),
        "{body}"
    );
    assert_eq!(std::fs::read_to_string(&canary).unwrap(), "untouched");
    assert!(!outside.path().join("new").exists());
}

#[tokio::test]
async fn oversized_body_is_413() {
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let sandbox_id = api.create_host().await;
    let huge = format!(
        "{{\"shell\":\"true\",\"stdin\":\"{}\"}}",
        "x".repeat(17 * 1024 * 1024)
    );
    let (status, body) = api
        .post_raw(
            &format!("/api/v1/sandboxes/{sandbox_id}/exec"),
            huge.into_bytes(),
        )
        .await;
    assert_eq!((status, code(&body)), (413, "payload_too_large"), "{body}");
    // Still responsive.
    assert_eq!(
        api.shell(&sandbox_id, "echo alive").await["stdout"],
        "alive\n"
    );
}

#[tokio::test]
async fn missing_program_is_named() {
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let sandbox_id = api.create_host().await;
    let (status, body) = api
        .post(
            &format!("/api/v1/sandboxes/{sandbox_id}/exec"),
            json!({"argv": ["definitely-not-a-program-xyz"]}),
        )
        .await;
    assert_eq!((status, code(&body)), (400, "program_not_found"), "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("definitely-not-a-program-xyz"));
}

#[tokio::test]
async fn output_flood_is_truncated_and_server_stays_responsive() {
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let sandbox_id = api.create_host().await;
    let exec = format!("/api/v1/sandboxes/{sandbox_id}/exec");
    let flood = api.post(
        &exec,
        json!({"argv": ["yes"], "max_output_bytes": 1_000_000, "timeout_ms": 60_000}),
    );
    let probe = async {
        let (status, health) = api.get("/healthz").await;
        assert_eq!(status, 200, "{health}");
    };
    let ((status, result), ()) = tokio::join!(flood, probe);
    // `yes` never ends by itself: the cap must not block it, so it runs until the
    // timeout... unless the backend ends it at the cap. Either way the output is capped.
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["truncated"], true);
    assert_eq!(result["stdout"].as_str().unwrap().len(), 1_000_000);
}

#[tokio::test]
async fn exec_on_stopped_or_destroyed_is_409() {
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let sandbox_id = api.create_host().await;
    api.post(&format!("/api/v1/sandboxes/{sandbox_id}/stop"), json!({}))
        .await;
    let (status, body) = api
        .put_bytes(
            &format!("/api/v1/sandboxes/{sandbox_id}/files?path=x"),
            b"x".to_vec(),
        )
        .await;
    assert_eq!((status, code(&body)), (409, "invalid_state"), "{body}");
    let (status, body) = api
        .post(&format!("/api/v1/sandboxes/{sandbox_id}/stop"), json!({}))
        .await;
    assert_eq!((status, code(&body)), (409, "invalid_state"), "{body}");
    api.delete(&format!("/api/v1/sandboxes/{sandbox_id}")).await;
    let (status, body) = api
        .post(&format!("/api/v1/sandboxes/{sandbox_id}/resume"), json!({}))
        .await;
    assert_eq!((status, code(&body)), (409, "invalid_state"), "{body}");
}
