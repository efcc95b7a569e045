//! Destroy leaves nothing; a restarted server finds its sandboxes again.

use std::time::Duration;

use cthulu_core::{SandboxError, SandboxProvider, SandboxSpec};
use cthulu_types::SandboxStatus;

use crate::support::{alive, sh_ok, Fixture};

#[tokio::test(flavor = "multi_thread")]
async fn destroy_leaves_no_process_mount_or_directory() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let (sandbox_id, handle) = fixture.sandbox().await;
    let init_pid = fixture.init_pid(&sandbox_id);
    // A background process that would outlive a careless destroy.
    sh_ok(&handle, "sleep 1000 >/dev/null 2>&1 &").await;
    let inside = sh_ok(&handle, "ls /proc | grep -c '^[0-9]'").await;
    assert!(
        inside.trim().parse::<u32>().unwrap() >= 3,
        "init, sleep and grep: {inside}"
    );
    assert!(alive(init_pid));
    let dir = fixture.dir(&sandbox_id);
    handle.destroy().await.unwrap();
    handle.destroy().await.expect("a second destroy is a no-op");
    assert!(!alive(init_pid), "init {init_pid} still runs");
    assert!(!dir.exists(), "{} is left", dir.display());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&dir.display().to_string()),
        "a mount of the sandbox is left: {mounts}"
    );
    assert!(matches!(
        handle.exec(cthulu_core::ExecSpec::argv(["true"])).await,
        Err(SandboxError::InvalidState(_))
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn background_processes_live_between_execs_and_across_a_restart() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let (sandbox_id, handle) = fixture.sandbox().await;
    sh_ok(
        &handle,
        "echo 'while :; do sleep 0.05; done' > loop.sh; sh loop.sh >/dev/null 2>&1 &",
    )
    .await;
    drop(handle);
    let restarted = fixture.restarted();
    let handle = restarted
        .attach(&sandbox_id, &SandboxSpec::default())
        .await
        .unwrap();
    assert_eq!(handle.status(), SandboxStatus::Running);
    let running = sh_ok(&handle, "grep -l loop.sh /proc/[0-9]*/cmdline | wc -l").await;
    // The loop and the probing shell itself.
    assert!(
        running.trim().parse::<u32>().unwrap() >= 2,
        "the loop survived: {running}"
    );
    assert_eq!(restarted.list().await.unwrap(), vec![sandbox_id.clone()]);
    handle.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sandbox_whose_init_died_is_lost_and_can_be_destroyed() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let (sandbox_id, handle) = fixture.sandbox().await;
    let init_pid = fixture.init_pid(&sandbox_id);
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(init_pid).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    for _ in 0..200 {
        if !alive(init_pid) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The running server notices at the next exec...
    assert!(matches!(
        handle.exec(cthulu_core::ExecSpec::argv(["true"])).await,
        Err(SandboxError::InvalidState(_))
    ));
    assert_eq!(handle.status(), SandboxStatus::Lost);
    drop(handle);
    // ...and a restarted one at attach.
    let restarted = fixture.restarted();
    let handle = restarted
        .attach(&sandbox_id, &SandboxSpec::default())
        .await
        .unwrap();
    assert_eq!(handle.status(), SandboxStatus::Lost);
    assert!(matches!(
        handle.exec(cthulu_core::ExecSpec::argv(["true"])).await,
        Err(SandboxError::InvalidState(_))
    ));
    handle.destroy().await.unwrap();
    assert!(!fixture.dir(&sandbox_id).exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_create_leaves_nothing_and_says_why() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let broken = cthulu_namespace::NamespaceProvider::new(cthulu_namespace::NamespaceConfig {
        root: fixture.provider.root().to_owned(),
        init: cthulu_namespace::InitCommand {
            program: "/bin/false".into(),
            args: Vec::new(),
        },
        shim: cthulu_host::ShimCommand {
            program: "/bin/false".into(),
            args: Vec::new(),
        },
    })
    .unwrap();
    let sandbox_id = cthulu_types::SandboxId::generate();
    let error = match broken.provision(&sandbox_id, &SandboxSpec::default()).await {
        Ok(_) => panic!("a create whose init fails must fail"),
        Err(error) => error,
    };
    assert!(
        error.to_string().contains("init") || format!("{error:?}").contains("init"),
        "{error:?}"
    );
    assert!(!fixture.dir(&sandbox_id).exists());
}
