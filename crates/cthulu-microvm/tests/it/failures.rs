//! What goes wrong inside or under a VM: the agent's server killed mid-stream, the VM's
//! QEMU killed, a guest that never says hello. Each ends in a clear error, nothing hangs
//! and nothing is left running.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cthulu_core::conformance::report_skip;
use cthulu_core::{ExecEvent, ExecSpec, SandboxHandle, SandboxProvider, SandboxSpec};
use cthulu_types::{SandboxId, SandboxStatus};

use crate::support::{images_dir, provider};

/// `error` and its sources, as the API and CLI print them.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Drains `stream` to its exit, failing if that takes longer than `within`.
async fn exit_of(
    mut stream: Box<dyn cthulu_core::ExecStream>,
    within: Duration,
) -> cthulu_core::ExitInfo {
    tokio::time::timeout(within, async move {
        while let Some(event) = stream.next_event().await {
            if let ExecEvent::Exit(exit) = event {
                return exit;
            }
        }
        panic!("the stream ended without an exit");
    })
    .await
    .expect("the stream ended in time")
}

#[tokio::test]
async fn a_killed_agent_server_ends_its_streams_and_comes_back() {
    let state = tempfile::tempdir().unwrap();
    let Some(provider) = provider(state.path()) else {
        return;
    };
    let handle = provider
        .provision(&SandboxId::generate(), &SandboxSpec::default())
        .await
        .unwrap();
    let running = handle
        .exec_stream(ExecSpec::shell("echo started; sleep 600"))
        .await
        .unwrap();
    // The shell's parent is the agent's server process: kill it (PID 1 restarts it).
    let killer = handle
        .exec_stream(ExecSpec::shell("kill -9 $PPID"))
        .await
        .unwrap();
    let exit = exit_of(running, Duration::from_secs(60)).await;
    assert_eq!(exit.exit_code, None, "{exit:?}");
    assert_eq!(
        exit.signal,
        Some(9),
        "a stream cut off reports SIGKILL: {exit:?}"
    );
    let _ = exit_of(killer, Duration::from_secs(30)).await;

    // The host connects to the restarted server; the VM goes on.
    let mut output = None;
    for _ in 0..50 {
        match handle.exec(ExecSpec::shell("echo back")).await {
            Ok(done) => {
                output = Some(done);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let output = output.expect("the agent came back");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "back\n");
    assert_eq!(handle.status(), SandboxStatus::Running);
    handle.destroy().await.unwrap();
}

#[tokio::test]
async fn a_vm_whose_qemu_dies_is_lost_and_says_so() {
    let state = tempfile::tempdir().unwrap();
    let Some(provider) = provider(state.path()) else {
        return;
    };
    let sandbox_id = SandboxId::generate();
    let handle: Arc<dyn SandboxHandle> = provider
        .provision(&sandbox_id, &SandboxSpec::default())
        .await
        .unwrap();
    let running = handle
        .exec_stream(ExecSpec::shell("sleep 600"))
        .await
        .unwrap();
    let pid = qemu_pid_of(state.path()).expect("the VM's QEMU runs");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let exit = exit_of(running, Duration::from_secs(30)).await;
    assert_eq!(exit.signal, Some(9), "{exit:?}");
    let error = handle
        .exec(ExecSpec::shell("true"))
        .await
        .expect_err("a dead VM runs nothing");
    let message = chain(&error);
    assert!(message.contains("gone"), "{message}");
    assert_eq!(handle.status(), SandboxStatus::Lost);
    handle.destroy().await.unwrap();
    assert!(!state
        .path()
        .join("sandboxes")
        .join(sandbox_id.as_str())
        .exists());
}

/// The pid in the one `qemu.pid` under `root`.
fn qemu_pid_of(root: &Path) -> Option<i32> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).ok()?.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|name| name == "qemu.pid") {
                return std::fs::read_to_string(&path).ok()?.trim().parse().ok();
            }
        }
    }
    None
}

#[tokio::test]
async fn a_guest_that_never_says_hello_fails_the_create_and_leaves_nothing() {
    let state = tempfile::tempdir().unwrap();
    if provider(state.path()).is_none() {
        return;
    }
    // An image whose /init is a script that never speaks the protocol, built with the
    // test image's cached packages.
    let images = tempfile::tempdir().unwrap();
    let script = images.path().join("silent-init");
    std::fs::write(
        &script,
        "#!/bin/busybox sh\necho silent init is up\nexec /bin/busybox sleep 100000\n",
    )
    .unwrap();
    let mut options = cthulu_image::BuildOptions::new(images.path(), &script);
    options.name = "silent".into();
    options.allow_script_agent = true;
    options.cache_dir = std::env::var_os(cthulu_image::CACHE_ENV)
        .map(std::path::PathBuf::from)
        .or_else(|| images_dir().ok().map(|dir| dir.join(".cache")));
    if let Err(error) = cthulu_image::build(&options, &mut |_| {}) {
        report_skip(&format!(
            "SKIP qemu: cannot build the silent test image here: {error}"
        ));
        return;
    }
    let templates = images.path().join(".templates");
    let provider = cthulu_microvm::QemuProvider::new(cthulu_microvm::QemuConfig {
        root: state.path().to_path_buf(),
        templates: Some(templates.clone()),
        binary: None,
        images: cthulu_microvm::image_resolver(images.path().to_path_buf()),
    })
    .with_boot_timeout(Duration::from_secs(8));
    let spec = SandboxSpec {
        image: Some("silent".into()),
        ..SandboxSpec::default()
    };
    let error = provider
        .provision(&SandboxId::generate(), &spec)
        .await
        .err()
        .expect("a guest without an agent cannot become a sandbox");
    let message = chain(&error);
    assert!(message.contains("did not come up"), "{message}");
    assert!(
        message.contains("silent init is up"),
        "the error carries the console's last lines: {message}"
    );
    // No QEMU, no half-made template, no sandbox directory.
    assert!(qemu_pid_of(&templates).is_none() && qemu_pid_of(state.path()).is_none());
    let left: Vec<_> = std::fs::read_dir(&templates)
        .map(|entries| entries.flatten().map(|entry| entry.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "template leftovers: {left:?}");
    let sandboxes: Vec<_> = std::fs::read_dir(state.path().join("sandboxes"))
        .map(|entries| entries.flatten().map(|entry| entry.path()).collect())
        .unwrap_or_default();
    assert!(sandboxes.is_empty(), "sandbox leftovers: {sandboxes:?}");
    let qemus = std::process::Command::new("pgrep")
        .args(["-f", &templates.display().to_string()])
        .output()
        .unwrap();
    assert!(
        qemus.stdout.is_empty(),
        "QEMU still runs: {}",
        String::from_utf8_lossy(&qemus.stdout)
    );
}
