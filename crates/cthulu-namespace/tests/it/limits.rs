//! cgroup limits: written where the sandbox's processes are, refused by name where they
//! cannot be enforced, removed with the sandbox. The bombs themselves are conformance
//! scenarios (`tests/conformance.rs`).

use std::path::PathBuf;

use cthulu_core::{SandboxError, SandboxProvider, SandboxSpec};
use cthulu_types::{Resources, SandboxId};

use crate::support::{sh_ok, Fixture};

/// The cgroup directories recorded in the sandbox's state.
fn cgroups_of(fixture: &Fixture, sandbox_id: &SandboxId) -> serde_json::Value {
    let state = std::fs::read(fixture.dir(sandbox_id).join("state.json")).unwrap();
    let state: serde_json::Value = serde_json::from_slice(&state).unwrap();
    state["cgroups"].clone()
}

fn enforced(fixture: &Fixture, name: &str) -> bool {
    fixture
        .provider
        .info()
        .limits
        .iter()
        .any(|limit| limit.limit == name && limit.enforced)
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_are_written_to_the_sandboxs_cgroups_and_removed_with_it() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    if !["memory", "pids", "cpus"]
        .iter()
        .all(|name| enforced(&fixture, name))
    {
        eprintln!("SKIP namespace limits: this server cannot write cgroups (see /api/v1/info)");
        return;
    }
    let sandbox_id = SandboxId::generate();
    let spec = SandboxSpec {
        resources: Resources {
            memory_mb: Some(96),
            pids: Some(40),
            cpus: Some(0.5),
            ..Resources::default()
        },
        ..SandboxSpec::default()
    };
    let handle = fixture
        .provider
        .provision(&sandbox_id, &spec)
        .await
        .unwrap();
    let groups = cgroups_of(&fixture, &sandbox_id);
    let dir = |controller: &str| PathBuf::from(groups[controller].as_str().unwrap());
    let read = |controller: &str, file: &str| {
        std::fs::read_to_string(dir(controller).join(file))
            .unwrap()
            .trim()
            .to_owned()
    };
    assert_eq!(
        read("memory", "memory.limit_in_bytes"),
        (96u64 << 20).to_string()
    );
    assert_eq!(read("pids", "pids.max"), "40");
    assert_eq!(read("cpu", "cpu.cfs_quota_us"), "50000");
    // A command of the sandbox is in every group: the limits bind what it runs.
    let pid = sh_ok(&handle, "sleep 100 >/dev/null 2>&1 & echo started").await;
    assert_eq!(pid, "started\n");
    for controller in ["memory", "pids", "cpu", "freezer"] {
        let procs = read(controller, "cgroup.procs");
        assert!(
            procs.lines().count() >= 2,
            "init and the sleep are in the {controller} group: {procs:?}"
        );
    }
    // Inside, its own cgroup namespace: it sees itself at the root.
    assert!(sh_ok(&handle, "cat /proc/self/cgroup")
        .await
        .lines()
        .all(|line| line.ends_with(":/")));
    handle.destroy().await.unwrap();
    for controller in ["memory", "pids", "cpu", "freezer"] {
        assert!(
            !dir(controller).exists(),
            "the {controller} group is left after destroy"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_that_cannot_be_enforced_are_refused_by_name() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let sandbox_id = SandboxId::generate();
    let vcpus = SandboxSpec {
        resources: Resources {
            vcpus: Some(2),
            ..Resources::default()
        },
        ..SandboxSpec::default()
    };
    match fixture.provider.provision(&sandbox_id, &vcpus).await {
        Err(SandboxError::Unsupported { operation, .. }) => assert_eq!(operation, "vcpus"),
        Err(other) => panic!("expected Unsupported, got {other}"),
        Ok(_) => panic!("vcpus must be refused, not ignored"),
    }
    assert!(
        !fixture.dir(&sandbox_id).exists(),
        "nothing is left of a refused create"
    );
    let zero = SandboxSpec {
        resources: Resources {
            pids: Some(0),
            ..Resources::default()
        },
        ..SandboxSpec::default()
    };
    assert!(matches!(
        fixture.provider.provision(&sandbox_id, &zero).await,
        Err(SandboxError::InvalidRequest {
            field: "resources.pids",
            ..
        })
    ));
    // Every limit is reported, enforced or not; the disk limit is enforced exactly when
    // the server is root (tests/it/disk.rs).
    let info = fixture.provider.info();
    let disk = info
        .limits
        .iter()
        .find(|limit| limit.limit == "disk")
        .expect("the disk limit is reported");
    assert_eq!(
        disk.enforced,
        rustix::process::geteuid().is_root(),
        "{disk:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_freezes_every_process_and_resume_thaws_them() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    if !fixture.provider.info().capabilities.stop_resume {
        eprintln!("SKIP namespace stop/resume: no writable freezer cgroup here");
        return;
    }
    let (sandbox_id, handle) = fixture.sandbox().await;
    sh_ok(
        &handle,
        "(while :; do echo x >> ticks; sleep 0.02; done) >/dev/null 2>&1 &",
    )
    .await;
    let ticks = fixture.dir(&sandbox_id).join("workspace/ticks");
    let count = || {
        std::fs::read_to_string(&ticks)
            .map(|text| text.lines().count())
            .unwrap_or(0)
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    handle.stop().await.unwrap();
    assert_eq!(handle.status(), cthulu_types::SandboxStatus::Stopped);
    let frozen_at = count();
    assert!(frozen_at > 0, "the loop ran before the stop");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        count(),
        frozen_at,
        "a process ran while the sandbox was stopped"
    );
    assert!(matches!(
        handle.exec(cthulu_core::ExecSpec::argv(["true"])).await,
        Err(SandboxError::InvalidState(_))
    ));
    // A restarted server finds it stopped.
    let restarted = fixture.restarted();
    let again = restarted
        .attach(&sandbox_id, &SandboxSpec::default())
        .await
        .unwrap();
    assert_eq!(again.status(), cthulu_types::SandboxStatus::Stopped);
    again.resume().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(count() > frozen_at, "the loop goes on after resume");
    // Destroying a stopped sandbox works too (its frozen processes must be thawed to die).
    again.stop().await.unwrap();
    again.destroy().await.unwrap();
    assert!(!fixture.dir(&sandbox_id).exists());
}
