//! Terminal tokens: `POST /api/v1/sandboxes/{id}/terminal` gives a short-lived URL that
//! opens the sandbox's exec WebSocket without the API key; a token for another sandbox,
//! an expired one or a tampered one is refused with 401; for a remote sandbox the URL is
//! the node's, and works against the node directly.

use std::time::Duration;

use cthulu_server::terminal::TerminalKey;
use cthulu_types::stream::{STDIN, STDOUT};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::remote::{add_node, start_node, start_platform};
use crate::support::{code, Api};

async fn terminal_url(api: &Api, sandbox_id: &str) -> String {
    let (status, access) = api
        .post(
            &format!("/api/v1/sandboxes/{sandbox_id}/terminal"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{access}");
    assert!(access["expires_at_ms"].as_u64().unwrap() > cthulu_types::now_ms());
    access["url"].as_str().unwrap().to_owned()
}

/// Opens `url` without any key, starts a shell under a PTY, types `echo hello` and
/// expects it back.
async fn shell_says_hello(url: &str) {
    let (mut socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("the token opens the WebSocket");
    let request = json!({"argv": ["/bin/sh"], "tty": {"cols": 80, "rows": 24}});
    socket
        .send(Message::text(request.to_string()))
        .await
        .unwrap();
    let mut input = vec![STDIN];
    input.extend_from_slice(b"echo hel''lo\nexit\n");
    socket.send(Message::binary(input)).await.unwrap();
    let mut seen = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(Ok(message)) = socket.next().await {
            if let Message::Binary(data) = message {
                if data.first() == Some(&STDOUT) {
                    seen.extend_from_slice(&data[1..]);
                    if String::from_utf8_lossy(&seen).contains("hello") {
                        return true;
                    }
                }
            }
        }
        false
    })
    .await;
    assert_eq!(
        found,
        Ok(true),
        "the shell never said hello: {:?}",
        String::from_utf8_lossy(&seen)
    );
}

/// Connects to `url` and expects the upgrade refused with 401 and `expected` in the body.
async fn refused(url: &str, expected: &str) {
    match tokio_tungstenite::connect_async(url).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 401, "{url}");
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                .into_owned();
            let body: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(code(&body), "unauthorized", "{body}");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains(expected),
                "{url}: expected {expected:?} in {body}"
            );
        }
        Err(other) => panic!("{url}: expected a 401, got {other}"),
        Ok(_) => panic!("{url}: the WebSocket opened with a bad token"),
    }
}

/// The URL with its token replaced by `token`.
fn with_token(url: &str, token: &str) -> String {
    let (base, _) = url.split_once("?token=").unwrap();
    format!("{base}?token={token}")
}

fn token_of(url: &str) -> &str {
    url.split_once("?token=").unwrap().1
}

#[tokio::test(flavor = "multi_thread")]
async fn a_terminal_token_opens_only_its_own_sandbox_and_only_for_a_while() {
    let (platform, api) = start_platform().await;
    let first = api.create_host().await;
    let second = api.create_host().await;

    let url = terminal_url(&api, &first).await;
    let address = platform.url().trim_start_matches("http://");
    assert!(
        url.starts_with(&format!(
            "ws://{address}/api/v1/sandboxes/{first}/exec/ws?token="
        )),
        "{url}"
    );
    shell_says_hello(&url).await;

    // The token of the first sandbox on the second.
    let elsewhere = url.replace(&first, &second);
    refused(&elsewhere, "not").await;
    refused(&elsewhere.replace("/exec/ws", "/processes/p1/ws"), "not").await;
    // Expired: signed with the server's own key, a moment in the past.
    let key = TerminalKey::for_server(None, platform.home()).unwrap();
    let expired = key.sign(&first, cthulu_types::now_ms() - 1);
    refused(&with_token(&url, &expired), "expired").await;
    // Tampered: one character of the signature changed; a key of another server.
    // (The signature's first character: every bit of it counts, unlike the last's.)
    let (payload, signature) = token_of(&url).split_once('.').unwrap();
    let first_character = signature.chars().next().unwrap();
    let swapped = if first_character == 'A' { 'B' } else { 'A' };
    let tampered = format!("{payload}.{swapped}{}", &signature[1..]);
    refused(&with_token(&url, &tampered), "signature").await;
    let foreign = TerminalKey::for_node_token("someone else").sign(&first, u64::MAX);
    refused(&with_token(&url, &foreign), "signature").await;
    refused(&with_token(&url, "garbage"), "malformed").await;
    // A token opens nothing but terminals: not the API.
    let (status, _) = Api::new(&platform)
        .get(&format!(
            "/api/v1/sandboxes/{first}?token={}",
            token_of(&url)
        ))
        .await;
    assert_eq!(status, 401);
    // Asking for one needs the key.
    let (status, _) = Api::new(&platform)
        .post(&format!("/api/v1/sandboxes/{first}/terminal"), json!({}))
        .await;
    assert_eq!(status, 401);
    for sandbox_id in [first, second] {
        assert_eq!(
            api.delete(&format!("/api/v1/sandboxes/{sandbox_id}"))
                .await
                .0,
            204
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_remote_sandbox_terminal_goes_straight_to_its_node() {
    let (platform, api) = start_platform().await;
    let (node, token) = start_node().await;
    assert_eq!(add_node(&api, "n1", &node, &token).await.0, 201);
    let sandbox_id = api.create(json!({"node": "n1"})).await;

    let url = terminal_url(&api, &sandbox_id).await;
    let node_address = node.url().trim_start_matches("http://");
    assert!(url.starts_with(&format!("ws://{node_address}/")), "{url}");
    assert!(
        !url.contains(&sandbox_id),
        "the node knows its own id: {url}"
    );
    assert!(!url.contains(&token), "the node token leaked: {url}");
    shell_says_hello(&url).await;

    // The platform's own key does not sign for the node.
    let node_sandbox_id = url
        .split("/sandboxes/")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_owned();
    let platform_key = TerminalKey::for_server(None, platform.home()).unwrap();
    let forged = platform_key.sign(&node_sandbox_id, u64::MAX);
    refused(&with_token(&url, &forged), "signature").await;

    assert_eq!(
        api.delete(&format!("/api/v1/sandboxes/{sandbox_id}"))
            .await
            .0,
        204
    );
}
