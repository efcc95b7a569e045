//! The earlier system's `/vms` API: lifecycle, field shapes, tiers, 404s, bad input and
//! the limit shared with `/api/v1`.

use serde_json::{json, Value};

use crate::support::{Options, TestNode};

fn assert_vm_shape(vm: &Value, vm_id: u64, tier: &str, web_port: u16) {
    assert_eq!(vm["vm_id"], vm_id, "{vm}");
    assert_eq!(vm["tier"], tier, "{vm}");
    assert_eq!(vm["web_port"], web_port, "{vm}");
    assert_eq!(vm["ssh_port"], 0, "{vm}");
    assert!(vm["guest_ip"].is_string(), "{vm}");
    assert!(vm["ssh_command"].as_str().unwrap().starts_with('#'), "{vm}");
    let web_terminal = vm["web_terminal"].as_str().unwrap();
    let prefix = format!("http://127.0.0.1:{web_port}/");
    assert!(web_terminal.starts_with(&prefix), "{web_terminal}");
    assert!(
        web_terminal.len() >= prefix.len() + 22,
        "the secret holds at least 128 bits: {web_terminal}"
    );
    let pid = vm["pid"].as_u64().unwrap();
    assert!(pid > 0, "{vm}");
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} is a live host process"
    );
    // The earlier client parses exactly these fields; nothing else is needed.
    assert_eq!(vm.as_object().unwrap().len(), 8, "{vm}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vms_are_created_listed_got_and_deleted_with_the_earlier_shapes() {
    let Some(node) = TestNode::start(Options::default()).await else {
        return;
    };
    let base = node.web_port_base();
    let api = &node.api;

    let (status, health) = api.get("/health").await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(
        health,
        json!({"status": "ok", "active_vms": 0, "max_vms": 4, "ssh": false})
    );

    let (status, nano) = api
        .post("/vms", json!({"tier": "nano", "api_key": ""}))
        .await;
    assert_eq!(status, 200, "{nano}");
    assert_vm_shape(&nano, 0, "nano", base);
    let (status, micro) = api
        .post("/vms", json!({"tier": "micro", "api_key": "k"}))
        .await;
    assert_eq!(status, 200, "{micro}");
    assert_vm_shape(&micro, 1, "micro", base + 1);
    assert_ne!(nano["web_terminal"], micro["web_terminal"]);

    // The tier's size reaches the sandbox underneath.
    let sandbox_id = node.sandbox_of(1).await;
    let (_, sandbox) = api.get(&format!("/api/v1/sandboxes/{sandbox_id}")).await;
    assert_eq!(sandbox["resources"]["memory_mb"], 1024, "{sandbox}");
    assert_eq!(sandbox["backend"], "namespace", "{sandbox}");

    let (status, list) = api.get("/vms").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["count"], 2, "{list}");
    assert_eq!(list["vms"]["0"], nano);
    assert_eq!(list["vms"]["1"], micro);
    let (status, got) = api.get("/vms/1").await;
    assert_eq!((status, &got), (200, &micro));
    let (_, health) = api.get("/health").await;
    assert_eq!(health["active_vms"], 2);

    let (status, deleted) = api.delete("/vms/0").await;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(deleted, json!({"status": "deleted", "vm_id": 0}));
    // Its terminal is gone with it.
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", base)).is_err(),
        "nothing listens on a deleted VM's web port"
    );
    let (status, _) = api
        .get(&format!("/api/v1/sandboxes/{}", node.sandbox_of(1).await))
        .await;
    assert_eq!(status, 200);

    for path in [
        "/vms/0",
        "/vms/7",
        "/vms/abc",
        "/vms/-1",
        "/vms/99999999999",
    ] {
        let (status, body) = api.get(path).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["error"]["code"], "sandbox_not_found", "{body}");
        let (status, _) = api.delete(path).await;
        assert_eq!(status, 404, "DELETE {path}");
    }
    let (_, list) = api.get("/vms").await;
    assert_eq!(list["count"], 1, "{list}");

    // A freed id is taken again, with its port.
    let (status, again) = api
        .post("/vms", json!({"tier": "nano", "api_key": ""}))
        .await;
    assert_eq!(status, 200, "{again}");
    assert_vm_shape(&again, 0, "nano", base);
    assert_ne!(again["web_terminal"], nano["web_terminal"], "a new secret");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_create_requests_are_refused_and_create_nothing() {
    let Some(node) = TestNode::start(Options::default()).await else {
        return;
    };
    let api = &node.api;
    let (status, body) = api
        .post("/vms", json!({"tier": "mega", "api_key": ""}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("mega"));
    assert!(body["error"]["hint"].as_str().unwrap().contains("nano"));
    let (status, body) = api
        .post("/vms", json!({"tier": "x".repeat(100_000), "api_key": ""}))
        .await;
    assert_eq!(status, 400);
    assert!(
        body.to_string().len() < 1000,
        "the tier is not echoed whole"
    );
    let (status, body) = api.post("/vms", json!({"api_key": ""})).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("tier"),
        "{body}"
    );
    let (status, body) = api
        .post("/vms", json!({"tier": "nano", "api_key": "a\u{0}b"}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        !body.to_string().contains("a\\u0000b"),
        "the key is not echoed: {body}"
    );
    let (status, body) = api
        .post(
            "/vms",
            json!({"tier": "nano", "api_key": "k".repeat(20_000)}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("api_key"),
        "{body}"
    );
    let (status, body) = api
        .post(
            "/vms",
            json!({"tier": "nano", "api_key": "k".repeat(17 * 1024 * 1024)}),
        )
        .await;
    assert_eq!(status, 413, "{body}");
    let (status, _) = Api::send(
        api.request(reqwest::Method::POST, "/vms")
            .header("content-type", "application/json")
            .body("{not json"),
    )
    .await;
    assert_eq!(status, 400);
    let (_, list) = api.get("/vms").await;
    assert_eq!(list["count"], 0, "{list}");
    let (_, sandboxes) = api.get("/api/v1/sandboxes").await;
    assert_eq!(sandboxes["sandboxes"], json!([]), "{sandboxes}");
}

use crate::support::Api;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_past_the_limit_are_refused_cleanly_until_a_vm_is_deleted() {
    let Some(node) = TestNode::start(Options {
        max_vms: 2,
        ..Options::default()
    })
    .await
    else {
        return;
    };
    let api = &node.api;
    let base = node.web_port_base();
    for _ in 0..2 {
        let (status, vm) = api
            .post("/vms", json!({"tier": "nano", "api_key": ""}))
            .await;
        assert_eq!(status, 200, "{vm}");
    }
    let (status, body) = api
        .post("/vms", json!({"tier": "nano", "api_key": ""}))
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "capacity_exceeded", "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains('2'),
        "{body}"
    );
    assert!(
        body["error"]["hint"].as_str().unwrap().contains("DELETE"),
        "{body}"
    );
    // Nothing half-created: no third VM, sandbox or terminal.
    let (_, list) = api.get("/vms").await;
    assert_eq!(list["count"], 2, "{list}");
    let (_, sandboxes) = api.get("/api/v1/sandboxes").await;
    assert_eq!(sandboxes["sandboxes"].as_array().unwrap().len(), 2);
    assert!(std::net::TcpStream::connect(("127.0.0.1", base + 2)).is_err());
    // The same limit holds for /api/v1.
    let (status, body) = api.post("/api/v1/sandboxes", json!({})).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "capacity_exceeded", "{body}");
    let (_, health) = api.get("/health").await;
    assert_eq!(
        health,
        json!({"status": "ok", "active_vms": 2, "max_vms": 2, "ssh": false})
    );

    let (status, _) = api.delete("/vms/1").await;
    assert_eq!(status, 200);
    let (status, vm) = api
        .post("/vms", json!({"tier": "micro", "api_key": ""}))
        .await;
    assert_eq!(status, 200, "{vm}");
    assert_eq!(vm["vm_id"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_whose_sandbox_is_destroyed_through_the_api_disappears() {
    let Some(node) = TestNode::start(Options::default()).await else {
        return;
    };
    let api = &node.api;
    let (status, vm) = api
        .post("/vms", json!({"tier": "nano", "api_key": ""}))
        .await;
    assert_eq!(status, 200, "{vm}");
    let sandbox_id = node.sandbox_of(0).await;
    let (status, _) = api.delete(&format!("/api/v1/sandboxes/{sandbox_id}")).await;
    assert_eq!(status, 204);
    let (status, _) = api.get("/vms/0").await;
    assert_eq!(status, 404);
    let (_, list) = api.get("/vms").await;
    assert_eq!(list["count"], 0, "{list}");
    let port = vm["web_port"].as_u64().unwrap() as u16;
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_port_held_by_another_program_fails_the_create_cleanly() {
    let Some(node) = TestNode::start(Options::default()).await else {
        return;
    };
    let squatter = std::net::TcpListener::bind(("127.0.0.1", node.web_port_base()))
        .expect("the test holds VM 0's port");
    let (status, body) = node
        .api
        .post("/vms", json!({"tier": "nano", "api_key": ""}))
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "backend_unavailable", "{body}");
    assert!(
        body["error"]["hint"]
            .as_str()
            .unwrap()
            .contains("--web-port-base"),
        "{body}"
    );
    let (_, list) = node.api.get("/vms").await;
    assert_eq!(list["count"], 0, "{list}");
    let (_, sandboxes) = node.api.get("/api/v1/sandboxes").await;
    assert_eq!(sandboxes["sandboxes"], json!([]), "no sandbox was made");
    drop(squatter);
    let (status, vm) = node
        .api
        .post("/vms", json!({"tier": "nano", "api_key": ""}))
        .await;
    assert_eq!(status, 200, "{vm}");
    assert_eq!(vm["vm_id"], 0);
}
