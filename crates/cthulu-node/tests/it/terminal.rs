//! The web terminal: a ttyd client given only the URL gets a shell; the page, token and
//! assets need the URL's secret; a wrong AuthToken starts nothing; closing the socket
//! kills the shell.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{Options, TestNode};
use crate::ttyd::{self, TtydClient};

const WAIT: Duration = Duration::from_secs(20);

async fn one_vm(node: &TestNode) -> Value {
    let (status, vm) = node
        .api
        .post("/vms", json!({"tier": "nano", "api_key": ""}))
        .await;
    assert_eq!(status, 200, "{vm}");
    vm
}

/// The processes of the VM's sandbox, as the API lists them.
async fn processes(node: &TestNode, vm_id: u64) -> Vec<Value> {
    let sandbox_id = node.sandbox_of(vm_id).await;
    let (status, list) = node
        .api
        .get(&format!("/api/v1/sandboxes/{sandbox_id}/processes"))
        .await;
    assert_eq!(status, 200, "{list}");
    list["processes"].as_array().expect("processes").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttyd_client_gets_a_shell_from_the_url_alone() {
    let Some(node) = TestNode::start(Options::default()).await else {
        return;
    };
    let vm = one_vm(&node).await;
    let web_terminal = vm["web_terminal"].as_str().unwrap();
    let mut client = TtydClient::connect(web_terminal).await;
    // Quotes split the word so the echoed input never matches the output.
    client.type_line("echo hel''lo").await;
    assert!(client.wait_for("hello", WAIT).await, "{:?}", client.output);
    client
        .send_frame(b'1', br#"{"columns":111,"rows":33}"#)
        .await;
    client.type_line("stty size").await;
    assert!(client.wait_for("33 111", WAIT).await, "{:?}", client.output);
    // Pause, resume and unknown commands are ignored, the session goes on.
    client.send_frame(b'2', b"").await;
    client.send_frame(b'3', b"").await;
    client.send_frame(b'9', b"junk").await;
    client.send_frame(b'1', b"{bad json").await;
    client.type_line("echo st''ill").await;
    assert!(client.wait_for("still", WAIT).await, "{:?}", client.output);
    let running = processes(&node, 0).await;
    assert_eq!(running.len(), 1, "{running:?}");
    client.close().await;
    // Closing the socket killed the shell.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let listed = processes(&node, 0).await;
        if listed.iter().all(|process| process["state"] != "running") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the shell outlived its socket: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_token_and_assets_need_the_secret() {
    let Some(node) = TestNode::start(Options::default()).await else {
        return;
    };
    let vm = one_vm(&node).await;
    let web_terminal = vm["web_terminal"].as_str().unwrap().to_owned();
    let (origin, secret) = web_terminal.rsplit_once('/').unwrap();
    let http = reqwest::Client::new();

    for path in ["", "/", "/token", "/terminal.js", "/assets/vendor/xterm.js"] {
        let response = http
            .get(format!("{web_terminal}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(
            response.headers()["referrer-policy"],
            "no-referrer",
            "{path}"
        );
    }
    let page = http
        .get(&web_terminal)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(&format!(r#"<base href="/{secret}/">"#)),
        "{page}"
    );
    let missing = http
        .get(format!("{web_terminal}/assets/vendor/nope.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    let mut wrong = secret.to_owned();
    wrong.replace_range(0..1, if secret.starts_with('A') { "B" } else { "A" });
    let wrong_secrets = [
        wrong.clone(),
        secret[..secret.len() - 1].to_owned(),
        format!("{secret}x"),
        String::new(),
        "ws".into(),
        "..".into(),
        "x".repeat(10_000),
    ];
    for candidate in &wrong_secrets {
        for path in ["", "/", "/token", "/terminal.js", "/assets/vendor/xterm.js"] {
            let response = http
                .get(format!("{origin}/{candidate}{path}"))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body = response.text().await.unwrap();
            assert!(
                status == 404 || (candidate == "ws" && path.is_empty() && status == 400),
                "{candidate:.20}{path}: {status}"
            );
            assert!(!body.contains(secret), "{body}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_handshake_is_closed_without_starting_anything() {
    let Some(node) = TestNode::start(Options::default()).await else {
        return;
    };
    let vm = one_vm(&node).await;
    let web_terminal = vm["web_terminal"].as_str().unwrap();
    let token = ttyd::fetch_token(web_terminal).await;
    let mut wrong = token.clone();
    wrong.pop();
    for candidate in [String::new(), wrong, format!("{token}x"), "x".repeat(3000)] {
        let mut client = TtydClient::connect_with_token(web_terminal, &candidate).await;
        client.type_line("echo should-not-run").await;
        let output_frames = client.until_closed(WAIT).await;
        assert_eq!(
            output_frames,
            Some(0),
            "closed with no output for {candidate:.10}"
        );
    }
    // Not a handshake at all: input first, an oversized one, binary garbage.
    let oversized = json!({"AuthToken": token, "columns": 80, "rows": 24, "pad": "x".repeat(8192)});
    let bad_first_frames = [
        Message::Binary(b"0echo hi\n".to_vec().into()),
        Message::Text(oversized.to_string().into()),
        Message::Binary(vec![0xff, 0x00, 0x12].into()),
    ];
    for first in bad_first_frames {
        let mut socket = ttyd::open_socket(web_terminal).await;
        socket.send(first).await.unwrap();
        let closed = tokio::time::timeout(WAIT, async {
            loop {
                match socket.next().await {
                    Some(Ok(Message::Binary(data))) => {
                        assert_ne!(data.first(), Some(&b'0'), "output after a bad handshake")
                    }
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the socket is closed");
    }
    assert_eq!(
        processes(&node, 0).await,
        Vec::<Value>::new(),
        "no shell was started"
    );
    // A plain GET of /ws is no upgrade.
    let response = reqwest::get(format!("http://{}/ws", ttyd::host_port(web_terminal)))
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}

/// The process shim kills a process no client attached to within 30 s; a session, whose
/// client attached at once, must outlive that (it once did not: every terminal died at
/// 30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_session_lives_past_the_shims_attach_limit() {
    let Some(node) = TestNode::start(Options::default()).await else {
        return;
    };
    let vm = one_vm(&node).await;
    let mut client = TtydClient::connect(vm["web_terminal"].as_str().unwrap()).await;
    client.type_line("echo hel''lo").await;
    assert!(client.wait_for("hello", WAIT).await, "{:?}", client.output);
    assert_eq!(
        client.until_closed(Duration::from_secs(35)).await,
        None,
        "the session ended by itself"
    );
    client.type_line("echo st''ill").await;
    assert!(client.wait_for("still", WAIT).await, "{:?}", client.output);
    client.close().await;
}
