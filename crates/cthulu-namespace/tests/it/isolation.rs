//! What a sandbox of this increment is isolated from.

use std::process::{Command, Stdio};

use cthulu_core::ExecSpec;
use cthulu_namespace::init::IdMapping;

use crate::support::{sh, sh_ok, Fixture};

#[tokio::test(flavor = "multi_thread")]
async fn root_inside_is_an_unprivileged_uid_outside() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let (sandbox_id, handle) = fixture.sandbox().await;
    assert_eq!(sh_ok(&handle, "id -u; id -g").await, "0\n0\n");
    let server_uid = rustix::process::geteuid().as_raw();
    let ids = IdMapping::for_server(server_uid, rustix::process::getegid().as_raw());
    if server_uid == 0 {
        assert_ne!(
            ids.uid, 0,
            "a root server maps its sandboxes' root elsewhere"
        );
    }
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", fixture.init_pid(&sandbox_id))).unwrap();
    for (field, id) in [("Uid:", ids.uid), ("Gid:", ids.gid)] {
        let line = status.lines().find(|line| line.starts_with(field)).unwrap();
        assert!(
            line.split_whitespace()
                .skip(1)
                .all(|value| value == id.to_string()),
            "the host sees the sandbox's root as {line}, not {id}"
        );
    }
    let groups = status
        .lines()
        .find(|line| line.starts_with("Groups:"))
        .unwrap();
    if server_uid == 0 {
        assert_eq!(groups.trim(), "Groups:", "host root's groups were dropped");
    }
    assert_eq!(
        sh_ok(&handle, "cat /proc/self/uid_map")
            .await
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["0".to_owned(), ids.uid.to_string(), ids.count.to_string()]
    );
    handle.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn root_inside_cannot_read_or_change_root_only_host_files() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let (_, handle) = fixture.sandbox().await;
    let passwd = std::fs::read("/etc/passwd").unwrap();
    let probe = sh(
        &handle,
        "cat /etc/shadow; echo x >> /etc/passwd; echo x > /usr/bin/cthulu-it-probe",
    )
    .await;
    let stdout = String::from_utf8_lossy(&probe.stdout);
    assert!(
        !stdout.contains("root:"),
        "the sandbox read /etc/shadow: {stdout}"
    );
    let stderr = String::from_utf8_lossy(&probe.stderr);
    assert_eq!(
        stderr.matches("Permission denied").count()
            + stderr.matches("Operation not permitted").count(),
        3,
        "every attempt is refused: {stderr}"
    );
    assert!(!std::path::Path::new("/usr/bin/cthulu-it-probe").exists());
    assert_eq!(std::fs::read("/etc/passwd").unwrap(), passwd);
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
async fn the_sandboxs_own_directories_are_writable_and_stay_inside() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let (sandbox_id, handle) = fixture.sandbox().await;
    let name = format!("cthulu-it-{sandbox_id}");
    sh_ok(
        &handle,
        &format!("for d in /root /home /var /tmp /workspace; do echo r > $d/{name}; done"),
    )
    .await;
    assert!(
        !std::path::Path::new("/root").join(&name).exists(),
        "/root/{name} on the host"
    );
    let dir = fixture.dir(&sandbox_id);
    assert!(dir.join("root/root").join(&name).exists());
    handle.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn uploaded_files_belong_to_the_sandboxs_root() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let (_, handle) = fixture.sandbox().await;
    let contents: cthulu_core::ByteReader = Box::new(std::io::Cursor::new(b"one\n".to_vec()));
    handle
        .put_file(
            "made/by/upload.txt",
            cthulu_core::PutOptions {
                create_parents: true,
                mode: Some(0o644),
            },
            contents,
        )
        .await
        .unwrap();
    assert_eq!(
        sh_ok(
            &handle,
            "stat -c %u:%g made made/by made/by/upload.txt; echo two >> made/by/upload.txt; \
             cat made/by/upload.txt"
        )
        .await,
        "0:0\n0:0\n0:0\none\ntwo\n"
    );
    handle.destroy().await.unwrap();
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
