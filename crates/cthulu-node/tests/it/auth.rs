//! Every route of the node's main port needs the node's token: the VM routes, the API,
//! metrics and the public pages of a plain server alike.

use serde_json::json;

use crate::support::{Api, Options, TestNode, TOKEN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_a_missing_or_wrong_token() {
    let Some(node) = TestNode::start(Options::default()).await else {
        return;
    };
    let routes: [(reqwest::Method, &str); 12] = [
        (reqwest::Method::GET, "/health"),
        (reqwest::Method::GET, "/vms"),
        (reqwest::Method::POST, "/vms"),
        (reqwest::Method::GET, "/vms/0"),
        (reqwest::Method::DELETE, "/vms/0"),
        (reqwest::Method::GET, "/api/v1/info"),
        (reqwest::Method::GET, "/api/v1/sandboxes"),
        (reqwest::Method::POST, "/api/v1/sandboxes"),
        (reqwest::Method::GET, "/metrics"),
        (reqwest::Method::GET, "/healthz"),
        (reqwest::Method::GET, "/"),
        (reqwest::Method::GET, "/no/such/route"),
    ];
    let http = reqwest::Client::new();
    let long_token = "x".repeat(100_000);
    let wrong_headers: [Option<String>; 7] = [
        None,
        Some("Bearer wrong".into()),
        Some(format!("Bearer {TOKEN}x")),
        Some(format!("Bearer {}", &TOKEN[..TOKEN.len() - 1])),
        Some(format!("Basic {TOKEN}")),
        Some(TOKEN.into()),
        Some(format!("Bearer {long_token}")),
    ];
    for (method, path) in &routes {
        for header in &wrong_headers {
            let mut request = http
                .request(method.clone(), format!("{}{path}", node.url))
                .json(&json!({"tier": "nano", "api_key": ""}));
            if let Some(header) = header {
                request = request.header("authorization", header);
            }
            let (status, body) = Api::send(request).await;
            // A header too large for the server is refused before routing (431).
            if header.as_deref().is_some_and(|value| value.len() > 50_000) && status == 431 {
                continue;
            }
            assert_eq!(status, 401, "{method} {path} with {header:?}: {body}");
            assert_eq!(body["error"]["code"], "unauthorized", "{body}");
            assert!(!body.to_string().contains(TOKEN), "{body}");
        }
    }
    // Nothing was created by the refused POSTs.
    let (status, list) = node.api.get("/vms").await;
    assert_eq!(status, 200);
    assert_eq!(list["count"], 0, "{list}");
    let (_, sandboxes) = node.api.get("/api/v1/sandboxes").await;
    assert_eq!(sandboxes["sandboxes"], json!([]));
    // The right token opens every kind of route.
    for path in ["/health", "/api/v1/info", "/metrics", "/healthz"] {
        let (status, body) = node.api.get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (_, info) = node.api.get("/api/v1/info").await;
    assert_eq!(info["auth_required"], true, "{info}");
    assert_eq!(info["capacity"]["max_sandboxes"], 4, "{info}");
    assert_eq!(info["default_backend"], "namespace", "{info}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_do_not_replace_the_node_token() {
    let Some(node) = TestNode::start(Options::default()).await else {
        return;
    };
    // A key made in the server's database the usual way is no token for a node.
    let key = cthulu_server::create_api_key(&node_home(&node), Some("stray")).unwrap();
    let (status, _) = Api::new(&node.url, Some(&key)).get("/vms").await;
    assert_eq!(status, 401);
    let (status, _) = node.api.get("/vms").await;
    assert_eq!(status, 200);
}

fn node_home(node: &TestNode) -> std::path::PathBuf {
    node.home().to_owned()
}
