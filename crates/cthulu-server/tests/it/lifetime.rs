//! Sandbox lifetimes: destroyed without anyone asking, extendable, removable.

use std::time::Duration;

use cthulu_test_support::TestServer;
use serde_json::json;

use crate::support::Api;

async fn wait_for_status(api: &Api, sandbox_id: &str, wanted: &str) -> bool {
    for _ in 0..100 {
        let (_, sandbox) = api.get(&format!("/api/v1/sandboxes/{sandbox_id}")).await;
        if sandbox["status"] == wanted {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn expired_sandboxes_are_destroyed() {
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let short = api
        .create(json!({"backend": "host", "timeout_secs": 1}))
        .await;
    let extended = api
        .create(json!({"backend": "host", "timeout_secs": 1}))
        .await;
    let (status, body) = api
        .patch(
            &format!("/api/v1/sandboxes/{extended}"),
            json!({"timeout_secs": 3600}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let expires = body["expires_at_ms"].as_u64().unwrap();
    assert!(expires > cthulu_types::now_ms() + 3_000_000);
    assert!(
        wait_for_status(&api, &short, "destroyed").await,
        "the expired sandbox was not destroyed"
    );
    let (_, sandbox) = api.get(&format!("/api/v1/sandboxes/{extended}")).await;
    assert_eq!(sandbox["status"], "running");
    // 0 removes the timeout.
    let (_, body) = api
        .patch(
            &format!("/api/v1/sandboxes/{extended}"),
            json!({"timeout_secs": 0}),
        )
        .await;
    assert!(body.get("expires_at_ms").is_none(), "{body}");
}
