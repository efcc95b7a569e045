//! The remote backend through the platform's API: a platform server with a node (another
//! real server whose API key is its node token) registered; bad nodes at registration; a
//! node that goes away and comes back; a platform restart; ports tunnelled to the node.

use std::time::Duration;

use cthulu_test_support::TestServer;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{code, Api};

/// A node: a server whose API key is also its fixed node token.
pub async fn start_node() -> (TestServer, String) {
    start_node_holding(None).await
}

/// A node that holds at most `max_sandboxes`.
async fn start_node_holding(max_sandboxes: Option<usize>) -> (TestServer, String) {
    let mut token = String::new();
    let server = TestServer::start_with(|config| {
        token = cthulu_server::create_api_key(&config.home, Some("platform")).unwrap();
        config.access_token = Some(cthulu_server::AccessToken::new(token.clone()));
        config.max_sandboxes = max_sandboxes;
    })
    .await;
    (server, token)
}

/// A platform with auth on, and a client of it holding its key.
pub async fn start_platform() -> (TestServer, Api) {
    let server = TestServer::start().await;
    let key = cthulu_server::create_api_key(server.home(), Some("user")).unwrap();
    let api = Api::new(&server).with_token(&key);
    (server, api)
}

pub async fn add_node(api: &Api, name: &str, node: &TestServer, token: &str) -> (u16, Value) {
    api.post(
        "/api/v1/nodes",
        json!({"name": name, "url": node.url(), "token": token}),
    )
    .await
}

/// A TCP server on loopback that answers every connection with junk; its address.
async fn garbage_server() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut connection, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                let _ = connection.read(&mut buffer).await;
                let _ = connection
                    .write_all(b"SSH-2.0-OpenSSH_9.2 this is not HTTP\r\n\x00\xff\r\n\r\n")
                    .await;
            });
        }
    });
    (format!("http://{address}"), task)
}

#[tokio::test(flavor = "multi_thread")]
async fn registering_checks_the_node_and_never_shows_its_token() {
    let (platform, api) = start_platform().await;
    let (node, token) = start_node().await;

    // A wrong token: 400 with what the node said, nothing stored.
    let (status, body) = add_node(&api, "n1", &node, "ck_wrong").await;
    assert_eq!((status, code(&body)), (400, "bad_request"), "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("n1") && message.contains("invalid token"),
        "{body}"
    );
    assert_eq!(api.get("/api/v1/nodes").await.1["nodes"], json!([]));

    // Nothing listening: 400 saying so.
    let (status, body) = api
        .post(
            "/api/v1/nodes",
            json!({"name": "n1", "url": "http://127.0.0.1:1", "token": token}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{body}"
    );

    // Garbage: 400 naming the node, nothing stored.
    let (garbage_url, garbage) = garbage_server().await;
    let (status, body) = api
        .post(
            "/api/v1/nodes",
            json!({"name": "junk", "url": garbage_url, "token": token}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("junk"),
        "{body}"
    );
    garbage.abort();

    // Bad names and bodies.
    for bad in [
        json!({"name": "Bad Name", "url": node.url(), "token": token}),
        json!({"name": "n1", "url": node.url(), "token": ""}),
        json!({"name": "n1", "url": node.url()}),
        json!({"name": "n1", "url": node.url(), "token": "with space"}),
        json!({"name": "n1", "url": node.url(), "token": "line\nbreak"}),
        json!({"name": "n1", "url": node.url(), "token": "x".repeat(5000)}),
        json!({"name": "n1", "url": format!("{}/{}", node.url(), "x".repeat(3000)), "token": token}),
        json!({"name": "n1", "url": "ftp://127.0.0.1/", "token": token}),
        json!({"name": "n1", "url": "not a url", "token": token}),
    ] {
        let (status, body) = api.post("/api/v1/nodes", bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    assert_eq!(api.get("/api/v1/nodes").await.1["nodes"], json!([]));

    // The right token: registered, shown without its token, once.
    let (status, body) = add_node(&api, "n1", &node, &token).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["name"], "n1");
    assert!(!body.to_string().contains(&token));
    let (status, body) = add_node(&api, "n1", &node, &token).await;
    assert_eq!((status, code(&body)), (409, "conflict"), "{body}");
    let (status, listed) = api.get("/api/v1/nodes").await;
    assert_eq!(status, 200);
    let nodes = listed["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{listed}");
    assert_eq!(nodes[0]["reachable"], true, "{listed}");
    assert!(
        !nodes[0]["backends"].as_array().unwrap().is_empty(),
        "{listed}"
    );
    assert!(
        !listed.to_string().contains(&token),
        "the token leaked: {listed}"
    );

    // Without the platform's key, nodes are not even listed.
    assert_eq!(Api::new(&platform).get("/api/v1/nodes").await.0, 401);

    // The database holding the token is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(platform.home().join("cthulu.db"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let (status, _) = api.delete("/api/v1/nodes/n1").await;
    assert_eq!(status, 204);
    assert_eq!(api.get("/api/v1/nodes").await.1["nodes"], json!([]));
    assert_eq!(api.delete("/api/v1/nodes/n1").await.0, 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_nodes_remote_creates_say_how_to_add_one() {
    let (_platform, api) = start_platform().await;
    let (status, body) = api
        .post("/api/v1/sandboxes", json!({"backend": "remote"}))
        .await;
    assert_eq!(
        (status, code(&body)),
        (503, "backend_unavailable"),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cthulu node add"),
        "{body}"
    );
    let (status, body) = api
        .post("/api/v1/sandboxes", json!({"node": "nowhere"}))
        .await;
    assert_eq!(status, 503, "{body}");
    let (status, body) = api
        .post(
            "/api/v1/sandboxes",
            json!({"backend": "host", "node": "n1"}),
        )
        .await;
    assert_eq!((status, code(&body)), (400, "bad_request"), "{body}");
}

/// Starts an HTTP server detached in the sandbox (busybox httpd serving `www/`).
async fn start_http_server(api: &Api, sandbox_id: &str, port: u16) {
    let script = format!(
        "mkdir -p www && printf 'hello from {sandbox_id}' > www/token.txt && busybox httpd -p {port} -h www"
    );
    let result = api.shell(sandbox_id, &script).await;
    assert_eq!(result["exit_code"], 0, "{result}");
}

/// GETs `url` until it answers 200 (the server may take a moment to listen).
async fn fetch(url: &str) -> String {
    let client = reqwest::Client::new();
    let mut last = String::new();
    for _ in 0..50 {
        match client
            .get(url)
            .timeout(Duration::from_secs(10))
            .send()
            .await
        {
            Ok(response) if response.status() == 200 => return response.text().await.unwrap(),
            Ok(response) => last = format!("HTTP {}", response.status()),
            Err(error) => last = error.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("GET {url} never answered 200: {last}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_remote_sandbox_outlives_its_node_going_away_and_the_platform_restarting() {
    if std::process::Command::new("busybox")
        .arg("--help")
        .output()
        .is_err()
    {
        cthulu_core::conformance::report_skip("SKIP remote ports: busybox is not installed");
        return;
    }
    let (platform, api) = start_platform().await;
    let (node, token) = start_node().await;
    assert_eq!(add_node(&api, "n1", &node, &token).await.0, 201);

    let (status, sandbox) = api
        .post(
            "/api/v1/sandboxes",
            json!({"backend": "remote", "labels": {"a": "b"}}),
        )
        .await;
    assert_eq!(status, 201, "{sandbox}");
    assert_eq!(sandbox["backend"], "remote");
    let sandbox_id = sandbox["id"].as_str().unwrap().to_owned();
    assert_eq!(api.shell(&sandbox_id, "echo hi").await["stdout"], "hi\n");
    // The node has it under its own id.
    let node_api = Api::new(&node).with_token(&token);
    let on_node = node_api.get("/api/v1/sandboxes").await.1;
    assert_eq!(
        on_node["sandboxes"].as_array().unwrap().len(),
        1,
        "{on_node}"
    );
    assert_ne!(on_node["sandboxes"][0]["id"], sandbox_id.as_str());

    // A port of the sandbox, reached through the platform's own address.
    let port = 18_000 + (std::process::id() % 1000) as u16;
    start_http_server(&api, &sandbox_id, port).await;
    let (status, exposed) = api
        .post(
            &format!("/api/v1/sandboxes/{sandbox_id}/ports"),
            json!({"port": port}),
        )
        .await;
    assert_eq!(status, 200, "{exposed}");
    let url = exposed["url"].as_str().unwrap().to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert_eq!(
        fetch(&format!("{url}token.txt")).await,
        format!("hello from {sandbox_id}")
    );

    // A node with sandboxes cannot be removed.
    let (status, body) = api.delete("/api/v1/nodes/n1").await;
    assert_eq!((status, code(&body)), (409, "conflict"), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&sandbox_id),
        "{body}"
    );

    // The node goes away: clear errors, nothing forgotten.
    let mut node = node;
    node.stop().await;
    let (status, body) = api
        .post(
            &format!("/api/v1/sandboxes/{sandbox_id}/exec"),
            json!({"shell": "echo hi"}),
        )
        .await;
    assert_eq!((status, code(&body)), (503, "node_unreachable"), "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("n1") && message.contains(node.url()),
        "{body}"
    );
    assert!(
        body["error"]["hint"]
            .as_str()
            .unwrap()
            .contains("cthulu node ls"),
        "{body}"
    );
    let (status, listed) = api.get("/api/v1/sandboxes").await;
    assert_eq!(status, 200);
    assert_eq!(
        listed["sandboxes"][0]["id"],
        sandbox_id.as_str(),
        "{listed}"
    );
    assert_eq!(listed["sandboxes"][0]["status"], "running", "{listed}");
    let (_, nodes) = api.get("/api/v1/nodes").await;
    assert_eq!(nodes["nodes"][0]["reachable"], false, "{nodes}");
    assert_eq!(
        api.delete(&format!("/api/v1/sandboxes/{sandbox_id}"))
            .await
            .0,
        503,
        "a destroy that cannot reach the node keeps the sandbox"
    );

    // The platform restarts while the node is down: it starts, and keeps the sandbox.
    let key = api.token.clone().unwrap();
    let platform = platform.restart().await;
    let api = Api::new(&platform).with_token(&key);
    let (_, listed) = api.get("/api/v1/sandboxes").await;
    assert_eq!(listed["sandboxes"][0]["status"], "running", "{listed}");

    // The node comes back on the same home and address: everything works again.
    let node = node
        .restart_in_place(|config| {
            config.access_token = Some(cthulu_server::AccessToken::new(token.clone()))
        })
        .await;
    assert_eq!(
        api.shell(&sandbox_id, "echo back").await["stdout"],
        "back\n"
    );
    let (_, ports) = api
        .get(&format!("/api/v1/sandboxes/{sandbox_id}/ports"))
        .await;
    let url = ports["ports"][0]["url"].as_str().unwrap().to_owned();
    start_http_server(&api, &sandbox_id, port + 1).await;
    let (status, exposed) = api
        .post(
            &format!("/api/v1/sandboxes/{sandbox_id}/ports"),
            json!({"port": port + 1}),
        )
        .await;
    assert_eq!(status, 200, "{exposed}");
    let second = exposed["url"].as_str().unwrap().to_owned();
    assert_eq!(
        fetch(&format!("{second}token.txt")).await,
        format!("hello from {sandbox_id}")
    );
    drop(url);

    // Stop and resume go through; destroy removes it on the node too.
    let (status, stopped) = api
        .post(&format!("/api/v1/sandboxes/{sandbox_id}/stop"), json!({}))
        .await;
    assert_eq!(
        (status, stopped["status"].as_str()),
        (200, Some("stopped")),
        "{stopped}"
    );
    let (status, resumed) = api
        .post(&format!("/api/v1/sandboxes/{sandbox_id}/resume"), json!({}))
        .await;
    assert_eq!(
        (status, resumed["status"].as_str()),
        (200, Some("running")),
        "{resumed}"
    );
    assert_eq!(
        api.delete(&format!("/api/v1/sandboxes/{sandbox_id}"))
            .await
            .0,
        204
    );
    let on_node = Api::new(&node)
        .with_token(&token)
        .get("/api/v1/sandboxes")
        .await
        .1;
    assert_eq!(on_node["sandboxes"], json!([]), "{on_node}");
    assert_eq!(api.delete("/api/v1/nodes/n1").await.0, 204);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_turns_to_garbage_is_a_clear_error() {
    let (_platform, api) = start_platform().await;
    let (mut node, token) = start_node().await;
    assert_eq!(add_node(&api, "n1", &node, &token).await.0, 201);
    let sandbox_id = api.create(json!({"node": "n1"})).await;
    node.stop().await;
    // Something else answers at the node's address now.
    let listener = tokio::net::TcpListener::bind(node.url().trim_start_matches("http://"))
        .await
        .expect("the node's port is free again");
    let junk = tokio::spawn(async move {
        while let Ok((mut connection, _)) = listener.accept().await {
            let mut buffer = [0u8; 4096];
            let _ = connection.read(&mut buffer).await;
            let _ = connection.write_all(b"\x00\x01garbage\r\n\r\n").await;
        }
    });
    let (status, body) = api
        .post(
            &format!("/api/v1/sandboxes/{sandbox_id}/exec"),
            json!({"shell": "true"}),
        )
        .await;
    assert_eq!((status, code(&body)), (503, "node_unreachable"), "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("n1"),
        "{body}"
    );
    junk.abort();
    // Brought back to clean up the node's sandbox.
    let _node = node
        .restart_in_place(|config| {
            config.access_token = Some(cthulu_server::AccessToken::new(token.clone()))
        })
        .await;
    assert_eq!(
        api.delete(&format!("/api/v1/sandboxes/{sandbox_id}"))
            .await
            .0,
        204
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn placement_picks_the_node_with_the_most_room() {
    let (_platform, api) = start_platform().await;
    let (small, small_token) = start_node_holding(Some(1)).await;
    let (large, large_token) = start_node_holding(Some(3)).await;
    assert_eq!(add_node(&api, "small", &small, &small_token).await.0, 201);
    assert_eq!(add_node(&api, "large", &large, &large_token).await.0, 201);
    let count = |node: &TestServer, token: &str| {
        let node_api = Api::new(node).with_token(token);
        async move {
            node_api.get("/api/v1/sandboxes").await.1["sandboxes"]
                .as_array()
                .unwrap()
                .len()
        }
    };

    // Free room: small 1, large 3.
    let first = api.create(json!({"backend": "remote"})).await;
    assert_eq!(
        (
            count(&small, &small_token).await,
            count(&large, &large_token).await
        ),
        (0, 1)
    );
    // Asked by name, it goes there.
    let second = api.create(json!({"node": "small"})).await;
    assert_eq!(count(&small, &small_token).await, 1);
    // Small is full now; large still has room.
    let third = api.create(json!({"backend": "remote"})).await;
    assert_eq!(count(&large, &large_token).await, 2);
    let (status, body) = api
        .post("/api/v1/sandboxes", json!({"node": "small"}))
        .await;
    assert_eq!(
        (status, code(&body)),
        (503, "backend_unavailable"),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("small: it is full"),
        "{body}"
    );
    let (_, nodes) = api.get("/api/v1/nodes").await;
    let small_summary = &nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|node| node["name"] == "small")
        .unwrap()
        .clone();
    assert_eq!(
        small_summary["capacity"],
        json!({"sandboxes": 1, "max_sandboxes": 1}),
        "{nodes}"
    );
    assert_eq!(small_summary["platform_sandboxes"], 1, "{nodes}");

    for sandbox_id in [first, second, third] {
        assert_eq!(
            api.delete(&format!("/api/v1/sandboxes/{sandbox_id}"))
                .await
                .0,
            204
        );
    }
}
