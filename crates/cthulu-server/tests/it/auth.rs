//! API keys: none → open; once one exists, every request needs it.

use cthulu_test_support::TestServer;

use crate::support::{code, Api};

#[tokio::test]
async fn bad_tokens_are_refused_once_a_key_exists() {
    let server = TestServer::start().await;
    let open = Api::new(&server);
    let (status, _) = open.get("/api/v1/sandboxes").await;
    assert_eq!(status, 200);

    let key = cthulu_server::create_api_key(server.home(), Some("test")).unwrap();
    let (status, body) = open.get("/api/v1/sandboxes").await;
    assert_eq!((status, code(&body)), (401, "unauthorized"), "{body}");
    assert!(body["error"]["hint"]
        .as_str()
        .unwrap()
        .contains("CTHULU_TOKEN"));
    for wrong in ["ck_wrong", "", &format!("{key}x"), &key[..key.len() - 1]] {
        let (status, body) = Api::new(&server)
            .with_token(wrong)
            .get("/api/v1/info")
            .await;
        assert_eq!(
            (status, code(&body)),
            (401, "unauthorized"),
            "token {wrong:?}: {body}"
        );
    }
    let raw = reqwest::Client::new()
        .get(server.api("/api/v1/info"))
        .header("authorization", format!("Basic {key}"))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 401);

    let authed = Api::new(&server).with_token(&key);
    let (status, info) = authed.get("/api/v1/info").await;
    assert_eq!((status, info["auth_required"].as_bool()), (200, Some(true)));
    let sandbox_id = authed.create_host().await;
    assert_eq!(authed.shell(&sandbox_id, "echo ok").await["stdout"], "ok\n");
    // Health stays open for probes.
    assert_eq!(open.get("/healthz").await.0, 200);
}
