//! The backend run by an unprivileged server: sandboxes still work (root inside is the
//! server's own uid outside), limits it cannot enforce are reported so and refused.
//!
//! Run as root, the test runs itself again as `nobody` (the same test binary, this test
//! only) and checks that run's result; run as anyone else it runs directly.

use std::os::unix::process::CommandExt;
use std::process::Command;

use cthulu_core::{ExecSpec, SandboxError, SandboxProvider, SandboxSpec};
use cthulu_types::{Resources, SandboxId};

use crate::support::{sh, sh_ok, Fixture};

const NOBODY: u32 = 65534;
const TEST: &str = "unprivileged::an_unprivileged_server_runs_sandboxes_with_fewer_limits";

#[test]
fn an_unprivileged_server_runs_sandboxes_with_fewer_limits() {
    if rustix::process::geteuid().is_root() {
        let output = Command::new(std::env::current_exe().unwrap())
            .args([TEST, "--exact", "--nocapture", "--test-threads=1"])
            .uid(NOBODY)
            .gid(NOBODY)
            // (std drops root's supplementary groups when it sets the uid.)
            .env("HOME", "/tmp")
            .env("TMPDIR", "/tmp")
            .output()
            .expect("running the test again as nobody");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if let Some(skip) = stderr.lines().find(|line| line.starts_with("SKIP ")) {
            eprintln!("{skip}");
            return;
        }
        assert!(
            output.status.success() && stdout.contains("1 passed"),
            "the unprivileged run failed:\n{stdout}\n{stderr}"
        );
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(unprivileged());
}

async fn unprivileged() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let uid = rustix::process::geteuid().as_raw();
    let info = fixture.provider.info();
    let (_, handle) = fixture.sandbox().await;
    // Root inside is this user outside, alone.
    assert_eq!(sh_ok(&handle, "id -u").await, "0\n");
    assert_eq!(
        sh_ok(&handle, "cat /proc/self/uid_map")
            .await
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["0".to_owned(), uid.to_string(), "1".to_owned()]
    );
    // Still isolated: its own pids and hostname, the host's root files out of reach.
    let pids = sh_ok(&handle, "ls /proc | grep -c '^[0-9]'").await;
    // init, sh, ls and grep.
    assert!(pids.trim().parse::<u32>().unwrap() <= 4, "{pids}");
    let shadow = sh(&handle, "cat /etc/shadow").await;
    assert_ne!(
        shadow.exit.exit_code,
        Some(0),
        "/etc/shadow is not readable"
    );
    // The host's root-owned system files are not this user's: they stay read-only (in
    // the sandbox too), and the host's copies are never touched.
    let passwd = std::fs::read("/etc/passwd").unwrap();
    sh(
        &handle,
        "echo x >> /etc/passwd; echo x > /usr/bin/cthulu-probe",
    )
    .await;
    assert!(!std::path::Path::new("/usr/bin/cthulu-probe").exists());
    assert_eq!(std::fs::read("/etc/passwd").unwrap(), passwd);
    // Its own places are writable: a user install lands in /root.
    assert_eq!(
        sh_ok(
            &handle,
            "mkdir -p /root/.local/bin /tmp/t && echo ok > /root/.local/bin/tool && \
             cat /root/.local/bin/tool && touch /tmp/t/x /workspace/y && echo done"
        )
        .await,
        "ok\ndone\n"
    );
    // Files through the API belong to this user outside and to root inside.
    handle
        .put_file(
            "note.txt",
            Default::default(),
            Box::new(std::io::Cursor::new(b"hello".to_vec())),
        )
        .await
        .unwrap();
    assert_eq!(
        sh_ok(&handle, "stat -c %u note.txt; cat note.txt").await,
        "0\nhello"
    );
    let exec = handle.exec(ExecSpec::argv(["true"])).await.unwrap();
    assert_eq!(exec.exit.exit_code, Some(0));

    // A pids limit holds without a pids cgroup (RLIMIT_NPROC, counted per sandbox): of
    // 40 background processes, the limit's worth run; the sandbox before is not counted.
    let pids = info
        .limits
        .iter()
        .find(|limit| limit.limit == "pids")
        .unwrap();
    if pids.enforced {
        let spec = SandboxSpec {
            resources: Resources {
                pids: Some(12),
                ..Resources::default()
            },
            ..SandboxSpec::default()
        };
        let limited = fixture
            .provider
            .provision(&SandboxId::generate(), &spec)
            .await
            .unwrap();
        let forked = sh_ok(
            &limited,
            "python3 -c 'import os, time\n\
             n = 0\n\
             for _ in range(40):\n    \
                 try:\n        \
                     if os.fork() == 0:\n            \
                         time.sleep(30)\n            \
                         os._exit(0)\n        \
                     n += 1\n    \
                 except OSError:\n        \
                     pass\n\
             print(n)'",
        )
        .await;
        let count: u32 = forked.trim().parse().unwrap();
        assert!(
            (5..12).contains(&count),
            "{count} of 40 forks succeeded under a limit of 12 processes"
        );
        // The other sandbox still forks freely.
        assert_eq!(
            sh_ok(
                &handle,
                "for i in 1 2 3 4 5 6 7 8 9 10 11 12 13; do true & done; wait; echo ok"
            )
            .await,
            "ok\n"
        );
        limited.destroy().await.unwrap();
    }

    // Stop and resume without a freezer cgroup: init stops every process of the sandbox.
    sh_ok(
        &handle,
        "(while true; do echo x >> /workspace/ticks; sleep 0.02; done) >/dev/null 2>&1 &",
    )
    .await;
    let ticks = fixture.dir(handle.id()).join("workspace/ticks");
    let size = || {
        std::fs::metadata(&ticks)
            .map(|meta| meta.len())
            .unwrap_or(0)
    };
    let grows = || async {
        let before = size();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        size() > before
    };
    assert!(grows().await, "the background loop runs");
    handle.stop().await.unwrap();
    assert_eq!(handle.status(), cthulu_types::SandboxStatus::Stopped);
    // (A write already under way may still land right after the stop.)
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(!grows().await, "a stopped sandbox's processes do not run");
    handle.resume().await.unwrap();
    assert!(grows().await, "they run again after resume");

    // Every limit the machine cannot enforce for this user is said so and refused.
    for limit in &info.limits {
        if limit.enforced {
            continue;
        }
        let mut resources = Resources::default();
        match limit.limit.as_str() {
            "memory" => resources.memory_mb = Some(64),
            "pids" => resources.pids = Some(64),
            "cpus" => resources.cpus = Some(0.5),
            "disk" => resources.disk_mb = Some(64),
            _ => continue,
        }
        let spec = SandboxSpec {
            resources,
            ..SandboxSpec::default()
        };
        let refused = fixture
            .provider
            .provision(&SandboxId::generate(), &spec)
            .await
            .err()
            .unwrap_or_else(|| panic!("a create asking for {} was accepted", limit.limit));
        assert!(
            matches!(&refused, SandboxError::Unsupported { .. })
                && refused.to_string().contains(&limit.limit),
            "{refused}"
        );
    }
    handle.destroy().await.unwrap();
    let left: Vec<_> = std::fs::read_dir(fixture.provider.root())
        .unwrap()
        .collect();
    assert!(
        left.is_empty(),
        "destroy and refused creates leave nothing: {left:?}"
    );
}
