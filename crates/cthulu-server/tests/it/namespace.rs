//! The namespace backend through the API: listed in /api/v1/info, sandboxes created with
//! limits, exec isolated, a port exposed, limits it cannot enforce refused by name, and
//! found again (ports included) by a restarted server.

use cthulu_test_support::TestServer;
use serde_json::{json, Value};

use crate::support::Api;

/// The namespace backend's entry of /api/v1/info; `None` (after the SKIP line) when it
/// cannot run here.
async fn namespace_info(api: &Api) -> Option<Value> {
    let (status, info) = api.get("/api/v1/info").await;
    assert_eq!(status, 200, "{info}");
    let backend = info["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .find(|backend| backend["kind"] == "namespace")
        .expect("the namespace backend is listed")
        .clone();
    if backend["available"] != true {
        eprintln!("SKIP namespace: {}", backend["unavailable_reason"]);
        return None;
    }
    Some(backend)
}

/// Exposes `port`, retrying while the sandbox's server is not yet listening; its host
/// address.
async fn expose(api: &Api, sandbox_id: &str, port: u16) -> String {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, exposed) = api
            .post(
                &format!("/api/v1/sandboxes/{sandbox_id}/ports"),
                json!({"port": port}),
            )
            .await;
        if status == 200 {
            return exposed["host_address"].as_str().unwrap().to_owned();
        }
        assert!(
            status == 400 && tokio::time::Instant::now() < deadline,
            "{status} {exposed}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The whole HTTP/1.0 response to `GET path` at `address`.
async fn http_get(address: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(20),
        stream.read_to_string(&mut response),
    )
    .await
    .expect("the forwarded connection answers")
    .unwrap();
    response
}

#[tokio::test]
async fn namespace_sandboxes_run_isolated_and_survive_a_restart() {
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let Some(info) = namespace_info(&api).await else {
        return;
    };
    let pids_enforced = info["limits"]
        .as_array()
        .unwrap()
        .iter()
        .any(|limit| limit["limit"] == "pids" && limit["enforced"] == true);
    let mut request = json!({"backend": "namespace"});
    if pids_enforced {
        request["resources"] = json!({"pids": 64});
    }
    let (status, created) = api.post("/api/v1/sandboxes", request).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["backend"], "namespace");
    let sandbox_id = created["id"].as_str().unwrap().to_owned();
    let result = api
        .shell(
            &sandbox_id,
            "id -u; hostname; tr '\\0' ' ' < /proc/1/cmdline; echo; ls /proc | grep -c '^[0-9]'",
        )
        .await;
    let stdout = result["stdout"].as_str().unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "0", "{result}");
    assert_eq!(lines[1], sandbox_id, "its own hostname: {result}");
    assert!(
        lines[2].contains("__ns-init") || lines[2].contains("cthulu-ns-init"),
        "{result}"
    );
    assert!(
        lines[3].parse::<u32>().unwrap() <= 4,
        "only the sandbox's processes are visible: {result}"
    );
    api.shell(
        &sandbox_id,
        "echo kept > note.txt; sleep 1000 >/dev/null 2>&1 &",
    )
    .await;
    // A server on the sandbox's own loopback, exposed on the host's.
    let port = 8000;
    api.shell(
        &sandbox_id,
        &format!("python3 -m http.server {port} --bind 127.0.0.1 >/dev/null 2>&1 &"),
    )
    .await;
    let address = expose(&api, &sandbox_id, port).await;
    assert!(http_get(&address, "/note.txt").await.ends_with("kept\n"));

    let server = server.restart().await;
    let api = Api::new(&server);
    let (status, sandbox) = api.get(&format!("/api/v1/sandboxes/{sandbox_id}")).await;
    assert_eq!(status, 200, "{sandbox}");
    assert_eq!(sandbox["status"], "running");
    let result = api.shell(&sandbox_id, "cat note.txt; pgrep -c sleep").await;
    assert_eq!(result["stdout"], "kept\n1\n", "{result}");
    let (_, listed) = api
        .get(&format!("/api/v1/sandboxes/{sandbox_id}/ports"))
        .await;
    let address = listed["ports"][0]["host_address"].as_str().unwrap();
    assert!(
        http_get(address, "/note.txt").await.ends_with("kept\n"),
        "the exposed port forwards again after the restart"
    );
    let (status, _) = api.delete(&format!("/api/v1/sandboxes/{sandbox_id}")).await;
    assert_eq!(status, 204);
}

#[tokio::test]
async fn unenforceable_limits_are_refused_by_name() {
    let server = TestServer::start().await;
    let api = Api::new(&server);
    if namespace_info(&api).await.is_none() {
        return;
    }
    let (status, body) = api
        .post(
            "/api/v1/sandboxes",
            json!({"backend": "namespace", "resources": {"vcpus": 2}}),
        )
        .await;
    assert_eq!(status, 501, "{body}");
    assert_eq!(body["error"]["code"], "unsupported", "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("vcpus"),
        "{body}"
    );
    let (_, list) = api.get("/api/v1/sandboxes").await;
    assert_eq!(list["sandboxes"], json!([]), "nothing half-created: {list}");
}
