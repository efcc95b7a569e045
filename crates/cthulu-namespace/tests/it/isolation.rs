//! What a sandbox of this increment is isolated from.

use std::process::{Command, Stdio};

use cthulu_core::{ExecSpec, SandboxError, SandboxSpec};
use cthulu_types::{Resources, SandboxId};

use crate::support::{alive, sh, sh_ok, Fixture};

#[tokio::test(flavor = "multi_thread")]
async fn root_inside_is_the_callers_uid_outside() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let (sandbox_id, handle) = fixture.sandbox().await;
    assert_eq!(sh_ok(&handle, "id -u; id -g").await, "0\n0\n");
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", fixture.init_pid(&sandbox_id))).unwrap();
    let uid_line = status
        .lines()
        .find(|line| line.starts_with("Uid:"))
        .unwrap();
    let host_uid = rustix::process::getuid().as_raw().to_string();
    assert!(
        uid_line
            .split_whitespace()
            .skip(1)
            .all(|uid| uid == host_uid),
        "the host sees the sandbox's root as {uid_line}, not uid {host_uid}"
    );
    assert_eq!(
        sh_ok(&handle, "cat /proc/self/uid_map")
            .await
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["0", host_uid.as_str(), "1"]
    );
    handle.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn hostname_is_the_sandboxs() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let (sandbox_id, handle) = fixture.sandbox().await;
    assert_eq!(sh_ok(&handle, "hostname").await.trim(), sandbox_id.as_str());
    handle.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn proc_shows_only_the_sandbox_and_host_processes_are_out_of_reach() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let (_, handle) = fixture.sandbox().await;
    let mut host = Command::new("sleep")
        .arg("987655")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    // argv, no shell: nothing in the sandbox carries the pattern on its command line.
    let listing = handle.exec(ExecSpec::argv(["ls", "/proc"])).await.unwrap();
    let pids: Vec<u32> = String::from_utf8_lossy(&listing.stdout)
        .split_whitespace()
        .filter_map(|name| name.parse().ok())
        .collect();
    assert!(pids.contains(&1), "PID 1 is listed: {pids:?}");
    assert!(pids.len() <= 3, "only init and the ls itself: {pids:?}");
    let init = sh_ok(&handle, "tr '\\0' ' ' < /proc/1/cmdline").await;
    assert!(init.contains("cthulu-ns-init"), "PID 1 is init: {init}");
    let cmdlines = handle
        .exec(ExecSpec::argv([
            "cat",
            "/proc/1/cmdline",
            "/proc/self/cmdline",
        ]))
        .await
        .unwrap();
    assert!(!String::from_utf8_lossy(&cmdlines.stdout).contains("987655"));
    let killed = sh(&handle, &format!("kill -KILL {}", host.id())).await;
    std::thread::sleep(std::time::Duration::from_millis(200));
    let host_alive = host.try_wait().unwrap().is_none();
    let _ = host.kill();
    let _ = host.wait();
    assert!(
        host_alive,
        "the sandbox killed host process {}: {killed:?}",
        host.id()
    );
    handle.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn system_writes_land_in_the_sandbox_never_on_the_host() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let (sandbox_id, handle) = fixture.sandbox().await;
    let name = format!("cthulu-it-{sandbox_id}");
    sh_ok(
        &handle,
        &format!("echo inside > /usr/{name}; echo r > /root/{name}; cat /usr/{name}"),
    )
    .await;
    assert!(
        !std::path::Path::new("/usr").join(&name).exists(),
        "/usr/{name} on the host"
    );
    assert!(
        !std::path::Path::new("/root").join(&name).exists(),
        "/root/{name} on the host"
    );
    let dir = fixture.dir(&sandbox_id);
    assert_eq!(
        std::fs::read_to_string(dir.join("layer/upper/usr").join(&name)).unwrap(),
        "inside\n"
    );
    assert!(dir.join("root/root").join(&name).exists());
    handle.destroy().await.unwrap();
    assert!(!std::path::Path::new("/usr").join(&name).exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn workspace_writes_appear_on_the_host_side() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let (sandbox_id, handle) = fixture.sandbox().await;
    assert_eq!(
        sh_ok(&handle, "pwd; echo $HOME; echo hi > note.txt").await,
        "/workspace\n/workspace\n"
    );
    assert_eq!(
        std::fs::read_to_string(fixture.dir(&sandbox_id).join("workspace/note.txt")).unwrap(),
        "hi\n"
    );
    handle.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn host_files_outside_the_view_are_invisible() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let (_, handle) = fixture.sandbox().await;
    let secret = tempfile::Builder::new()
        .prefix("cthulu-it-secret-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::write(secret.path().join("secret.txt"), "secret").unwrap();
    let path = secret.path().display();
    let probe = sh(
        &handle,
        &format!(
            "cat {path}/secret.txt; ls -A /tmp; ls {}",
            fixture.state.path().display()
        ),
    )
    .await;
    assert!(
        !String::from_utf8_lossy(&probe.stdout).contains("secret"),
        "the sandbox read a host file: {probe:?}"
    );
    assert_eq!(
        String::from_utf8_lossy(&probe.stdout),
        "",
        "/tmp inside is its own and empty"
    );
    handle.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn network_is_loopback_only() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let (_, handle) = fixture.sandbox().await;
    let devices = sh_ok(&handle, "tail -n +3 /proc/net/dev | cut -d: -f1").await;
    let devices: Vec<&str> = devices.split_whitespace().collect();
    assert_eq!(devices, ["lo"]);
    let flags = sh_ok(
        &handle,
        "cat /proc/net/if_inet6 2>/dev/null; grep -c . /proc/net/route",
    )
    .await;
    assert!(
        flags.trim().ends_with('1'),
        "only the route header, no routes: {flags}"
    );
    handle.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_are_refused_until_cgroups_come() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let sandbox_id = SandboxId::generate();
    let spec = SandboxSpec {
        resources: Resources {
            pids: Some(64),
            ..Resources::default()
        },
        ..SandboxSpec::default()
    };
    let refused =
        cthulu_core::SandboxProvider::provision(fixture.provider.as_ref(), &sandbox_id, &spec)
            .await;
    assert!(
        matches!(refused, Err(SandboxError::Unsupported { .. })),
        "a pid limit must be refused, not ignored: {:?}",
        refused.map(|handle| handle.status())
    );
    assert!(
        !fixture.dir(&sandbox_id).exists(),
        "nothing is left of a refused create"
    );
    let limits = cthulu_core::SandboxProvider::info(fixture.provider.as_ref()).limits;
    for name in ["memory", "cpus", "pids", "disk"] {
        assert!(
            limits
                .iter()
                .any(|limit| limit.limit == name && !limit.enforced),
            "{name}"
        );
    }
    assert!(alive(std::process::id() as i32));
}

#[tokio::test(flavor = "multi_thread")]
async fn init_cannot_be_inspected_from_inside() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let (_, handle) = fixture.sandbox().await;
    // init's descriptors lead to host files (its log, the control socket).
    let probe = sh(
        &handle,
        "cat /proc/1/environ; echo x >> /proc/1/fd/2; readlink /proc/1/fd/2",
    )
    .await;
    assert!(
        probe.stdout.is_empty() && probe.exit.exit_code != Some(0),
        "the sandbox reached into init: {probe:?}"
    );
    // Nothing of the server's or init's descriptors is inherited: stdio and ls's own.
    let fds = handle
        .exec(ExecSpec::argv(["ls", "/proc/self/fd"]))
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&fds.stdout), "0\n1\n2\n3\n");
    handle.destroy().await.unwrap();
}
