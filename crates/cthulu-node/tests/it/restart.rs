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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_interrupted_by_a_crash_is_cleaned_up_at_the_next_start() {
    let Some(mut node) = TestNode::start(Options::default()).await else {
        return;
    };
    // What a crash between making the sandbox and recording it leaves: a labelled
    // sandbox, and a row without one.
    let (status, orphan) = node
        .api
        .post(
            "/api/v1/sandboxes",
            json!({"labels": {"cthulu.node.vm_id": "0"}}),
        )
        .await;
    assert_eq!(status, 201, "{orphan}");
    let orphan_id = orphan["id"].as_str().unwrap().to_owned();
    node.stop().await;
    let table = cthulu_node::table::VmTable::open(&node.home().join("node.db")).unwrap();
    let row = table
        .allocate(cthulu_node::Tier::Nano, node.web_port_base(), 4)
        .unwrap()
        .unwrap();
    assert_eq!(row.vm_id, 0);
    drop(table);

    let node = node.restart().await;
    let (_, list) = node.api.get("/vms").await;
    assert_eq!(list["count"], 0, "{list}");
    let (status, sandbox) = node
        .api
        .get(&format!("/api/v1/sandboxes/{orphan_id}"))
        .await;
    assert_eq!(status, 200, "{sandbox}");
    assert_eq!(sandbox["status"], "destroyed", "{sandbox}");
    let (status, vm) = node
        .api
        .post("/vms", json!({"tier": "nano", "api_key": ""}))
        .await;
    assert_eq!(status, 200, "{vm}");
    assert_eq!(vm["vm_id"], 0, "the interrupted id is free again");
}
