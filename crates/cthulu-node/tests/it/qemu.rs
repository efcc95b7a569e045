//! One VM on the qemu backend: created through `/vms`, its terminal a shell in the guest,
//! the api_key in its env, its pid QEMU's; skipped, saying why, where QEMU or the test
//! image is missing.

use std::time::Duration;

use serde_json::json;

use crate::support::{Options, TestNode};
use crate::ttyd::TtydClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qemu_vm_gets_a_working_terminal() {
    let Some(node) = TestNode::start(Options {
        backend: cthulu_types::BackendKind::Qemu,
        max_vms: 2,
        ..Options::default()
    })
    .await
    else {
        return;
    };
    let (status, vm) = node
        .api
        .post("/vms", json!({"tier": "nano", "api_key": "sk-qemu-test"}))
        .await;
    assert_eq!(status, 200, "{vm}");
    assert_eq!(vm["guest_ip"], "10.0.2.15", "{vm}");
    let pid = vm["pid"].as_u64().unwrap();
    let command = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(command.contains("qemu"), "pid {pid} is QEMU: {command:?}");

    let mut client = TtydClient::connect(vm["web_terminal"].as_str().unwrap()).await;
    client.type_line("echo $ANTHROPIC_API_KEY-in-g''uest").await;
    assert!(
        client
            .wait_for("sk-qemu-test-in-guest", Duration::from_secs(60))
            .await,
        "{:?}",
        client.output
    );
    client.close().await;
    let sandbox_id = node.sandbox_of(0).await;
    let (status, output) = node
        .api
        .post(
            &format!("/api/v1/sandboxes/{sandbox_id}/exec"),
            json!({"shell": "grep -rlsF -e \"$ANTHROPIC_API_KEY\" / --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev; echo \"grep exit $?\"", "timeout_ms": 300_000}),
        )
        .await;
    assert_eq!(status, 200, "{output}");
    // `-l` prints each file holding the key; unreadable files only make the exit 2.
    let stdout = output["stdout"].as_str().unwrap();
    let holding: Vec<&str> = stdout
        .lines()
        .filter(|line| !line.starts_with("grep exit"))
        .collect();
    assert!(
        holding.is_empty(),
        "guest files holding the key: {holding:?}"
    );
    assert!(!stdout.contains("grep exit 0"), "{stdout}");
    let (status, _) = node.api.delete("/vms/0").await;
    assert_eq!(status, 200);
}
