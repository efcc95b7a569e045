//! The walk-through over HTTP: create, exec, files, checkpoints, ports, labels.

use cthulu_test_support::TestServer;
use serde_json::json;

use crate::support::{code, Api};

#[tokio::test]
async fn create_exec_and_destroy() {
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let sandbox_id = api.create_host().await;
    assert!(
        sandbox_id.len() <= 24
            && sandbox_id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    );

    let (status, result) = api
        .post(
            &format!("/api/v1/sandboxes/{sandbox_id}/exec"),
            json!({"argv": ["python3", "-c", "print(6*7)"]}),
        )
        .await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["stdout"], "42\n");
    assert_eq!(result["exit_code"], 0);
    assert_eq!(result["timed_out"], false);
    assert_eq!(result["truncated"], false);
    assert!(result["duration_ms"].is_u64());

    let result = api
        .shell(&sandbox_id, "echo hello; echo oops >&2; exit 3")
        .await;
    assert_eq!(
        (result["stdout"].as_str(), result["stderr"].as_str()),
        (Some("hello\n"), Some("oops\n"))
    );
    assert_eq!(result["exit_code"], 3);

    // argv is not a shell: `$HOME` stays literal.
    let (_, result) = api
        .post(
            &format!("/api/v1/sandboxes/{sandbox_id}/exec"),
            json!({"argv": ["echo", "$HOME"]}),
        )
        .await;
    assert_eq!(result["stdout"], "$HOME\n");

    let (status, _) = api.delete(&format!("/api/v1/sandboxes/{sandbox_id}")).await;
    assert_eq!(status, 204);
    // A second destroy is a no-op success; exec afterwards is invalid_state.
    let (status, _) = api.delete(&format!("/api/v1/sandboxes/{sandbox_id}")).await;
    assert_eq!(status, 204);
    let (status, body) = api
        .post(
            &format!("/api/v1/sandboxes/{sandbox_id}/exec"),
            json!({"shell": "true"}),
        )
        .await;
    assert_eq!((status, code(&body)), (409, "invalid_state"), "{body}");
    let (_, listed) = api.get("/api/v1/sandboxes").await;
    assert!(listed["sandboxes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|sandbox| sandbox["id"] != sandbox_id.as_str()));
}

#[tokio::test]
async fn files_round_trip_and_listing() {
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let sandbox_id = api.create_host().await;
    let contents: Vec<u8> = (0..=255u8).cycle().take(3 * 1024 * 1024 + 7).collect();
    let (status, written) = api
        .put_bytes(
            &format!("/api/v1/sandboxes/{sandbox_id}/files?path=/workspace/dir/data.bin&create_parents=true&mode=0600"),
            contents.clone(),
        )
        .await;
    assert_eq!(status, 201, "{written}");
    assert_eq!(written["size"], contents.len() as u64);
    let (status, read) = api
        .get_bytes(&format!(
            "/api/v1/sandboxes/{sandbox_id}/files?path=dir/data.bin"
        ))
        .await;
    assert_eq!(status, 200);
    assert!(read == contents, "downloaded bytes differ");
    let (status, listing) = api
        .get(&format!(
            "/api/v1/sandboxes/{sandbox_id}/dirs?path=/workspace/dir"
        ))
        .await;
    assert_eq!(status, 200, "{listing}");
    let entry = &listing["entries"][0];
    assert_eq!(
        (entry["name"].as_str(), entry["kind"].as_str()),
        (Some("data.bin"), Some("file"))
    );
    assert_eq!(entry["mode"], 0o600);
    // The program sees the same file.
    let result = api.shell(&sandbox_id, "wc -c < dir/data.bin").await;
    assert_eq!(
        result["stdout"].as_str().unwrap().trim(),
        contents.len().to_string()
    );

    let (status, body) = api
        .delete(&format!("/api/v1/sandboxes/{sandbox_id}/files?path=dir"))
        .await;
    assert_eq!((status, code(&body)), (409, "conflict"), "{body}");
    let (status, _) = api
        .delete(&format!(
            "/api/v1/sandboxes/{sandbox_id}/files?path=dir&recursive=true"
        ))
        .await;
    assert_eq!(status, 204);
    let (status, body) = api
        .get(&format!(
            "/api/v1/sandboxes/{sandbox_id}/files?path=dir/data.bin"
        ))
        .await;
    assert_eq!((status, code(&body)), (404, "file_not_found"), "{body}");
    let (status, body) = api
        .delete(&format!(
            "/api/v1/sandboxes/{sandbox_id}/files?path=/workspace&recursive=true"
        ))
        .await;
    assert_eq!(
        status / 100,
        4,
        "removing the workspace root must be refused: {body}"
    );
}

#[tokio::test]
async fn checkpoint_and_restore_by_name() {
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let sandbox_id = api.create_host().await;
    api.shell(&sandbox_id, "echo before > state.txt").await;
    let (status, checkpoint) = api
        .post(
            &format!("/api/v1/sandboxes/{sandbox_id}/checkpoints"),
            json!({"name": "before"}),
        )
        .await;
    assert_eq!(status, 201, "{checkpoint}");
    assert_eq!(checkpoint["memory"], false);
    let (status, body) = api
        .post(
            &format!("/api/v1/sandboxes/{sandbox_id}/checkpoints"),
            json!({"name": "before"}),
        )
        .await;
    assert_eq!((status, code(&body)), (409, "conflict"), "{body}");
    api.shell(&sandbox_id, "echo after > state.txt; touch extra.txt")
        .await;
    let (status, body) = api
        .post(
            &format!("/api/v1/sandboxes/{sandbox_id}/checkpoints/before/restore"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let result = api.shell(&sandbox_id, "cat state.txt; ls").await;
    assert_eq!(result["stdout"], "before\nstate.txt\n");
    let (_, listed) = api
        .get(&format!("/api/v1/sandboxes/{sandbox_id}/checkpoints"))
        .await;
    assert_eq!(listed["checkpoints"].as_array().unwrap().len(), 1);
    let (status, body) = api
        .post(
            &format!("/api/v1/sandboxes/{sandbox_id}/checkpoints/nope/restore"),
            json!({}),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (404, "checkpoint_not_found"),
        "{body}"
    );
    let (status, body) = api
        .post(
            &format!("/api/v1/sandboxes/{sandbox_id}/checkpoints"),
            json!({"memory": true}),
        )
        .await;
    assert_eq!((status, code(&body)), (501, "unsupported"), "{body}");
}

#[tokio::test]
async fn stop_refuses_exec_until_resume() {
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let sandbox_id = api.create_host().await;
    let (status, sandbox) = api
        .post(&format!("/api/v1/sandboxes/{sandbox_id}/stop"), json!({}))
        .await;
    assert_eq!(
        (status, sandbox["status"].as_str()),
        (200, Some("stopped")),
        "{sandbox}"
    );
    let (status, body) = api
        .post(
            &format!("/api/v1/sandboxes/{sandbox_id}/exec"),
            json!({"shell": "true"}),
        )
        .await;
    assert_eq!((status, code(&body)), (409, "invalid_state"), "{body}");
    assert!(body["error"]["hint"]
        .as_str()
        .unwrap_or_default()
        .contains("resume"));
    let (status, sandbox) = api
        .post(&format!("/api/v1/sandboxes/{sandbox_id}/resume"), json!({}))
        .await;
    assert_eq!(
        (status, sandbox["status"].as_str()),
        (200, Some("running")),
        "{sandbox}"
    );
    assert_eq!(
        api.shell(&sandbox_id, "echo back").await["stdout"],
        "back\n"
    );
}

#[tokio::test]
async fn labels_filter_the_list() {
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let infra = api
        .create(json!({"backend": "host", "labels": {"team": "infra", "env": "prod"}}))
        .await;
    let web = api
        .create(json!({"backend": "host", "labels": {"team": "web"}}))
        .await;
    let (_, listed) = api.get("/api/v1/sandboxes?label=team=infra").await;
    let ids: Vec<&str> = listed["sandboxes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![infra.as_str()]);
    let (_, listed) = api
        .get("/api/v1/sandboxes?label=team=infra&label=env=dev")
        .await;
    assert!(listed["sandboxes"].as_array().unwrap().is_empty());
    let (_, listed) = api.get("/api/v1/sandboxes?backend=host").await;
    assert_eq!(listed["sandboxes"].as_array().unwrap().len(), 2);
    let (status, updated) = api
        .patch(
            &format!("/api/v1/sandboxes/{web}"),
            json!({"labels": {"env": "dev"}}),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["labels"], json!({"team": "web", "env": "dev"}));
}

#[tokio::test]
async fn ports_expose_a_listening_server() {
    use std::io::Write as _;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let server = TestServer::start().await;
    let api = Api::new(&server);
    let sandbox_id = api.create_host().await;
    // A listener in the test process stands for a server in the (host) sandbox; it greets
    // every connection (the backend may probe it first).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let greeter = std::thread::spawn({
        let stop = stop.clone();
        move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut socket, _)) => {
                        let _ = socket.set_nonblocking(false);
                        let _ = socket.write_all(b"from the sandbox");
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
                }
            }
        }
    });
    let (status, exposed) = api
        .post(
            &format!("/api/v1/sandboxes/{sandbox_id}/ports"),
            json!({"port": port}),
        )
        .await;
    assert_eq!(status, 200, "{exposed}");
    let address = exposed["host_address"].as_str().unwrap().to_owned();
    assert_eq!(exposed["url"], format!("http://{address}/"));
    let mut client = tokio::net::TcpStream::connect(&address).await.unwrap();
    let mut greeting = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(20),
        tokio::io::AsyncReadExt::read_to_end(&mut client, &mut greeting),
    )
    .await
    .expect("the forwarded connection answers")
    .unwrap();
    assert_eq!(greeting, b"from the sandbox");
    let (_, listed) = api
        .get(&format!("/api/v1/sandboxes/{sandbox_id}/ports"))
        .await;
    assert_eq!(listed["ports"][0]["port"], port);
    let (status, _) = api
        .delete(&format!("/api/v1/sandboxes/{sandbox_id}/ports/{port}"))
        .await;
    assert_eq!(status, 204);
    stop.store(true, Ordering::Relaxed);
    greeter.join().unwrap();
    let (status, body) = api
        .post(
            &format!("/api/v1/sandboxes/{sandbox_id}/ports"),
            json!({"port": port}),
        )
        .await;
    assert_eq!(
        status / 100,
        4,
        "a port nobody listens on is refused: {body}"
    );
}

#[tokio::test]
async fn info_health_metrics_and_status_page() {
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let (status, health) = api.get("/healthz").await;
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    let (status, info) = api.get("/api/v1/info").await;
    assert_eq!(status, 200);
    // Namespace where it can run, host otherwise.
    let namespace_available = info["backends"]
        .as_array()
        .unwrap()
        .iter()
        .any(|backend| backend["kind"] == "namespace" && backend["available"] == true);
    let expected_default = if namespace_available {
        "namespace"
    } else {
        "host"
    };
    assert_eq!(info["default_backend"], expected_default, "{info}");
    let host = info["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["kind"] == "host")
        .expect("host backend listed");
    assert_eq!(host["available"], true);
    assert_eq!(host["capabilities"]["isolation"], false);
    // Every other kind is listed too; one this server cannot run says why.
    let firecracker = info["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|backend| backend["kind"] == "firecracker")
        .expect("firecracker listed");
    assert_eq!(firecracker["available"], false);
    assert!(firecracker["unavailable_reason"]
        .as_str()
        .unwrap()
        .contains("firecracker"));
    let qemu = info["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|backend| backend["kind"] == "qemu")
        .expect("qemu listed");
    if qemu["available"] == false {
        let reason = qemu["unavailable_reason"].as_str().unwrap();
        assert!(
            reason.contains("qemu") || reason.contains("image"),
            "the reason names what is missing: {reason}"
        );
    }
    api.create_host().await;
    let (status, metrics) = api.get("/metrics").await;
    assert_eq!(status, 200);
    let metrics = metrics.as_str().unwrap().to_owned();
    assert!(
        metrics.contains("cthulu_sandboxes_created_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("cthulu_sandboxes{backend=\"host\",status=\"running\"} 1"),
        "{metrics}"
    );
    let (status, page) = api.get("/").await;
    assert_eq!(status, 200);
    assert!(page.as_str().unwrap().contains("<h1>Cthulu"));
}

#[tokio::test(flavor = "multi_thread")]
async fn starting_from_a_checkpoint_needs_a_backend_with_memory_checkpoints() {
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let (status, body) = api
        .post(
            "/api/v1/sandboxes",
            json!({"backend": "host", "from_checkpoint": "abc/snap"}),
        )
        .await;
    assert_eq!(status, 501, "{body}");
    assert_eq!(code(&body), "unsupported", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("memory checkpoints"),
        "{body}"
    );
    let (_, listed) = api.get("/api/v1/sandboxes").await;
    assert_eq!(listed["sandboxes"].as_array().unwrap().len(), 0, "{listed}");
}
