//! `network: full` keeps the host's network namespace; the default is loopback only.

use std::time::Duration;

use cthulu_core::{ExecSpec, SandboxSpec};
use cthulu_types::NetworkMode;
use tokio::io::AsyncReadExt;

use crate::support::{sh, Fixture};

/// Connects from inside to `port` on 127.0.0.1 and writes a line (bash's `/dev/tcp`).
fn connect_script(port: u16) -> ExecSpec {
    ExecSpec::argv([
        "bash",
        "-c",
        &format!("exec 3<>/dev/tcp/127.0.0.1/{port} && echo from-the-sandbox >&3"),
    ])
}

#[tokio::test(flavor = "multi_thread")]
async fn full_network_reaches_the_hosts_loopback_and_the_default_does_not() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();

    let full = SandboxSpec {
        network: NetworkMode::Full,
        ..SandboxSpec::default()
    };
    let (_, handle) = fixture.sandbox_with(&full).await;
    let interfaces = sh(&handle, "cat /proc/net/dev").await;
    let host_interfaces = std::fs::read_to_string("/proc/net/dev").unwrap();
    assert_eq!(
        String::from_utf8_lossy(&interfaces.stdout).lines().count(),
        host_interfaces.lines().count(),
        "with full network the sandbox sees the host's interfaces"
    );
    let connecting = {
        let handle = handle.clone();
        tokio::spawn(async move { handle.exec(connect_script(port)).await })
    };
    let (mut stream, _) = tokio::time::timeout(Duration::from_secs(30), listener.accept())
        .await
        .expect("the sandbox connects to the host's listener")
        .unwrap();
    let mut received = String::new();
    stream.read_to_string(&mut received).await.unwrap();
    assert_eq!(received, "from-the-sandbox\n");
    let output = connecting.await.unwrap().unwrap();
    assert_eq!(output.exit.exit_code, Some(0), "{output:?}");
    handle.destroy().await.unwrap();

    let (_, isolated) = fixture.sandbox().await;
    let interfaces = sh(&isolated, "cat /proc/net/dev").await;
    let names: Vec<String> = String::from_utf8_lossy(&interfaces.stdout)
        .lines()
        .skip(2)
        .filter_map(|line| line.split(':').next().map(|name| name.trim().to_owned()))
        .collect();
    assert_eq!(names, ["lo"], "the default network has loopback only");
    let output = isolated.exec(connect_script(port)).await.unwrap();
    assert_ne!(
        output.exit.exit_code,
        Some(0),
        "the default network cannot reach the host's loopback: {output:?}"
    );
    isolated.destroy().await.unwrap();
}
