//! VMs survive a node restart: the same ids, ports and terminal URLs, and the terminal
//! works again.

use std::time::Duration;

use serde_json::json;

use crate::support::{Options, TestNode};
use crate::ttyd::TtydClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vms_and_their_terminals_survive_a_restart() {
    let Some(node) = TestNode::start(Options::default()).await else {
        return;
    };
    for tier in ["nano", "micro"] {
        let (status, vm) = node
            .api
            .post("/vms", json!({"tier": tier, "api_key": "k-restart"}))
            .await;
        assert_eq!(status, 200, "{vm}");
    }
    let (_, deleted) = node.api.delete("/vms/0").await;
    assert_eq!(deleted["status"], "deleted");
    let (_, before) = node.api.get("/vms").await;
    assert_eq!(before["count"], 1, "{before}");
    let web_terminal = before["vms"]["1"]["web_terminal"]
        .as_str()
        .unwrap()
        .to_owned();

    let node = node.restart().await;
    let (status, after) = node.api.get("/vms").await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(after, before, "the same VMs, ids, ports and URLs");

    let mut client = TtydClient::connect(&web_terminal).await;
    client.type_line("echo $ANTHROPIC_API_KEY-ba''ck").await;
    assert!(
        client
            .wait_for("k-restart-back", Duration::from_secs(20))
            .await,
        "{:?}",
        client.output
    );
    client.close().await;
    // The freed id 0 is still the next one.
    let (status, vm) = node
        .api
        .post("/vms", json!({"tier": "nano", "api_key": ""}))
        .await;
    assert_eq!(status, 200, "{vm}");
    assert_eq!(vm["vm_id"], 0);
}
