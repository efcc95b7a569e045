//! `max_sandboxes`: a full server refuses creates with `capacity_exceeded`, leaves no
//! record of the refused one, reports its capacity in `/api/v1/info`, and has room again
//! after a destroy.

use cthulu_test_support::TestServer;
use serde_json::json;

use crate::support::Api;

#[tokio::test]
async fn a_full_server_refuses_creates_until_a_sandbox_is_destroyed() {
    let server =
        TestServer::start_configured(&json!([]), |config| config.max_sandboxes = Some(2)).await;
    let api = Api::new(&server);
    let (_, info) = api.get("/api/v1/info").await;
    assert_eq!(
        info["capacity"],
        json!({"sandboxes": 0, "max_sandboxes": 2})
    );

    let mut ids = Vec::new();
    for _ in 0..2 {
        let (status, created) = api
            .post("/api/v1/sandboxes", json!({"backend": "host"}))
            .await;
        assert_eq!(status, 201, "{created}");
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    let (status, refused) = api
        .post("/api/v1/sandboxes", json!({"backend": "host"}))
        .await;
    assert_eq!(status, 503, "{refused}");
    assert_eq!(refused["error"]["code"], "capacity_exceeded");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limit is 2"),
        "{refused}"
    );
    let (_, listed) = api.get("/api/v1/sandboxes?status=destroyed").await;
    assert_eq!(
        listed["sandboxes"].as_array().unwrap().len(),
        0,
        "a refused create leaves no record: {listed}"
    );
    let (_, info) = api.get("/api/v1/info").await;
    assert_eq!(
        info["capacity"],
        json!({"sandboxes": 2, "max_sandboxes": 2})
    );

    let (status, _) = api.delete(&format!("/api/v1/sandboxes/{}", ids[0])).await;
    assert_eq!(status, 204);
    let (status, created) = api
        .post("/api/v1/sandboxes", json!({"backend": "host"}))
        .await;
    assert_eq!(status, 201, "room again after a destroy: {created}");
    for id in [&ids[1], created["id"].as_str().unwrap()] {
        api.delete(&format!("/api/v1/sandboxes/{id}")).await;
    }
}

#[tokio::test]
async fn an_unlimited_server_reports_no_maximum() {
    let server = TestServer::start().await;
    let (_, info) = Api::new(&server).get("/api/v1/info").await;
    assert_eq!(info["capacity"], json!({"sandboxes": 0}));
}
