//! Provider, ports, checkpoints, stop/resume, destroy.

use std::time::Duration;

use cthulu_core::{
    ExecSpec, PutOptions, SandboxError, SandboxHandle, SandboxProvider, SandboxSpec,
};
use cthulu_types::{CheckpointRequest, CheckpointSupport, SandboxId, SandboxStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

#[tokio::test]
async fn provider_reports_what_it_does_and_finds_its_sandboxes() {
    let mut host = TestHost::new();
    let info = host.provider.info();
    assert!(info.available);
    assert!(!info.capabilities.isolation);
    assert!(
        info.capabilities.exec_stream
            && info.capabilities.pty
            && info.capabilities.detached_processes
    );
    assert_eq!(info.capabilities.checkpoint, CheckpointSupport::Filesystem);
    let enforced = |limit: &str| {
        info.limits
            .iter()
            .find(|support| support.limit == limit)
            .unwrap()
            .enforced
    };
    assert!(enforced("timeout") && enforced("output"));
    assert!(!enforced("memory") && !enforced("pids") && !enforced("cpus") && !enforced("disk"));

    let first = host.sandbox().await;
    let second = host.sandbox().await;
    let error = host
        .provider
        .provision(first.id(), &SandboxSpec::default())
        .await
        .err()
        .unwrap();
    assert!(
        matches!(error, SandboxError::AlreadyExists { .. }),
        "{error:?}"
    );
    // A stray directory without a state file is not a sandbox.
    std::fs::create_dir_all(host.root().join("notasandbox")).unwrap();
    let mut expected = vec![first.id().clone(), second.id().clone()];
    expected.sort();
    assert_eq!(host.provider.list().await.unwrap(), expected);
    let workspace = host.workspace(&*first);
    assert!(workspace.is_dir());
    for sub in ["checkpoints", "procs", "state.json"] {
        assert!(workspace.parent().unwrap().join(sub).exists(), "{sub}");
    }

    let first_id = first.id().clone();
    drop((first, second));
    host.restart();
    let again = host
        .provider
        .attach(&first_id, &SandboxSpec::default())
        .await
        .unwrap();
    assert_eq!(again.status(), SandboxStatus::Running);
    let error = host
        .provider
        .attach(&SandboxId::generate(), &SandboxSpec::default())
        .await
        .err()
        .unwrap();
    assert!(
        matches!(error, SandboxError::SandboxNotFound { .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn exposed_ports_forward_until_unexposed() {
    let host = TestHost::new();
    let sandbox = host.sandbox().await;
    let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = server.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut connection, _) = server.accept().await.unwrap();
            let _ = connection.write_all(b"hello from the sandbox").await;
        }
    });
    let exposed = sandbox.expose_port(port).await.unwrap();
    assert_eq!(exposed.port, port);
    assert!(exposed.url.starts_with("http://127.0.0.1:"));
    assert_eq!(
        sandbox.expose_port(port).await.unwrap(),
        exposed,
        "exposing twice is the same"
    );
    let mut through = tokio::net::TcpStream::connect(&exposed.host_address)
        .await
        .unwrap();
    let mut greeting = String::new();
    through.read_to_string(&mut greeting).await.unwrap();
    assert_eq!(greeting, "hello from the sandbox");
    assert_eq!(sandbox.list_ports().await.unwrap(), vec![exposed.clone()]);

    sandbox.unexpose_port(port).await.unwrap();
    assert!(sandbox.list_ports().await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(tokio::net::TcpStream::connect(&exposed.host_address)
        .await
        .is_err());
    let error = sandbox.unexpose_port(port).await.unwrap_err();
    assert!(
        matches!(error, SandboxError::PortNotExposed { .. }),
        "{error:?}"
    );

    let silent = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let error = tokio::time::timeout(WAIT, sandbox.expose_port(silent))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(error, SandboxError::PortNotListening { .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn checkpoint_and_restore_bring_the_workspace_back() {
    let host = TestHost::new();
    let sandbox = host.sandbox().await;
    shell(&*sandbox, "mkdir -p src/deep && echo v1 > src/deep/file && echo keep > top && ln -s src/deep link && chmod 700 src").await;
    let checkpoint = sandbox
        .checkpoint(CheckpointRequest {
            name: Some("before".into()),
            memory: false,
        })
        .await
        .unwrap();
    assert!(!checkpoint.memory && checkpoint.size_bytes > 0);
    assert_eq!(checkpoint.name.as_deref(), Some("before"));

    shell(
        &*sandbox,
        "echo v2 > src/deep/file && rm top && echo new > new && rm link",
    )
    .await;
    sandbox.restore("before").await.unwrap();
    let workspace = host.workspace(&*sandbox);
    assert_eq!(
        std::fs::read_to_string(workspace.join("src/deep/file")).unwrap(),
        "v1\n"
    );
    assert_eq!(
        std::fs::read_to_string(workspace.join("top")).unwrap(),
        "keep\n"
    );
    assert!(!workspace.join("new").exists());
    assert_eq!(
        std::fs::read_link(workspace.join("link")).unwrap().to_str(),
        Some("src/deep")
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(workspace.join("src"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );

    // By id too; names are unique; memory is not something the host can save.
    shell(&*sandbox, "echo v3 > src/deep/file").await;
    sandbox.restore(&checkpoint.id).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(workspace.join("src/deep/file")).unwrap(),
        "v1\n"
    );
    let error = sandbox
        .checkpoint(CheckpointRequest {
            name: Some("before".into()),
            memory: false,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(error, SandboxError::CheckpointExists { .. }),
        "{error:?}"
    );
    let error = sandbox
        .checkpoint(CheckpointRequest {
            name: Some("../bad".into()),
            memory: false,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(error, SandboxError::InvalidRequest { .. }),
        "{error:?}"
    );
    let error = sandbox
        .checkpoint(CheckpointRequest {
            name: None,
            memory: true,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(error, SandboxError::Unsupported { .. }),
        "{error:?}"
    );
    let error = sandbox.restore("nope").await.unwrap_err();
    assert!(
        matches!(error, SandboxError::CheckpointNotFound { .. }),
        "{error:?}"
    );

    let unnamed = sandbox
        .checkpoint(CheckpointRequest::default())
        .await
        .unwrap();
    assert_eq!(sandbox.list_checkpoints().await.unwrap().len(), 2);
    sandbox.delete_checkpoint("before").await.unwrap();
    assert_eq!(
        sandbox.list_checkpoints().await.unwrap(),
        vec![unnamed.clone()]
    );
    let archives: Vec<_> = std::fs::read_dir(workspace.parent().unwrap().join("checkpoints"))
        .unwrap()
        .collect();
    assert_eq!(archives.len(), 1);
    let error = sandbox.delete_checkpoint("before").await.unwrap_err();
    assert!(
        matches!(error, SandboxError::CheckpointNotFound { .. }),
        "{error:?}"
    );
}

fn counter(host: &TestHost, sandbox: &dyn SandboxHandle, name: &str) -> u64 {
    std::fs::read_to_string(host.workspace(sandbox).join(name))
        .ok()
        .and_then(|raw| raw.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn stop_freezes_every_process_and_resume_continues() {
    let host = TestHost::new();
    let sandbox = host.sandbox().await;
    let count = |file: &str| {
        format!("i=0; while true; do i=$((i+1)); echo $i > {file}.tmp; mv {file}.tmp {file}; sleep 0.02; done")
    };
    // One counter under a one-shot exec that backgrounds it, one under a detached stream.
    shell(
        &*sandbox,
        &format!("({}) >/dev/null 2>&1 &", count("oneshot")),
    )
    .await;
    let mut spec = ExecSpec::shell(count("streamed"));
    spec.detach = true;
    let stream = sandbox.exec_stream(spec).await.unwrap();
    for file in ["oneshot", "streamed"] {
        eventually("the counter to run", || counter(&host, &*sandbox, file) > 3).await;
    }

    sandbox.stop().await.unwrap();
    assert_eq!(sandbox.status(), SandboxStatus::Stopped);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let frozen = (
        counter(&host, &*sandbox, "oneshot"),
        counter(&host, &*sandbox, "streamed"),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        (
            counter(&host, &*sandbox, "oneshot"),
            counter(&host, &*sandbox, "streamed")
        ),
        frozen,
        "nothing runs while stopped"
    );
    for (what, error) in [
        ("exec", sandbox.exec(ExecSpec::argv(["true"])).await.err()),
        (
            "exec_stream",
            sandbox.exec_stream(ExecSpec::argv(["true"])).await.err(),
        ),
        (
            "put_file",
            sandbox
                .put_file(
                    "x",
                    PutOptions::default(),
                    Box::new(std::io::Cursor::new(Vec::new())),
                )
                .await
                .err(),
        ),
        ("read_dir", sandbox.read_dir("").await.err()),
        ("expose_port", sandbox.expose_port(1).await.err()),
        ("stop", sandbox.stop().await.err()),
    ] {
        assert!(
            matches!(error, Some(SandboxError::InvalidState(_))),
            "{what}: {error:?}"
        );
    }
    // Checkpoints are allowed while stopped.
    sandbox
        .checkpoint(CheckpointRequest::default())
        .await
        .unwrap();

    sandbox.resume().await.unwrap();
    assert_eq!(sandbox.status(), SandboxStatus::Running);
    for (index, file) in ["oneshot", "streamed"].into_iter().enumerate() {
        let before = if index == 0 { frozen.0 } else { frozen.1 };
        eventually("the counter to go on", || {
            counter(&host, &*sandbox, file) > before + 3
        })
        .await;
    }
    let error = sandbox.resume().await.unwrap_err();
    assert!(matches!(error, SandboxError::InvalidState(_)), "{error:?}");
    drop(stream);
    sandbox.destroy().await.unwrap();
}

#[tokio::test]
async fn stop_survives_a_restart() {
    let mut host = TestHost::new();
    let sandbox = host.sandbox().await;
    let sandbox_id = sandbox.id().clone();
    sandbox.stop().await.unwrap();
    drop(sandbox);
    host.restart();
    let sandbox = host
        .provider
        .attach(&sandbox_id, &SandboxSpec::default())
        .await
        .unwrap();
    assert_eq!(sandbox.status(), SandboxStatus::Stopped);
    sandbox.resume().await.unwrap();
    assert_eq!(shell(&*sandbox, "echo ok").await.stdout, b"ok\n");
}

/// Live processes working in `dir` or naming it on their command line.
fn processes_using(dir: &std::path::Path) -> Vec<String> {
    let needle = dir.as_os_str().as_encoded_bytes().to_vec();
    let own = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.to_owned();
            if !pid.bytes().all(|byte| byte.is_ascii_digit())
                || pid == own
                || !alive(pid.parse().ok()?)
            {
                return None;
            }
            let cwd_inside =
                std::fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(dir));
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let named = cmdline.windows(needle.len()).any(|window| window == needle);
            (cwd_inside || named).then(|| format!("{pid}: {}", String::from_utf8_lossy(&cmdline)))
        })
        .collect()
}

#[tokio::test]
async fn destroy_leaves_nothing_and_is_final() {
    let host = TestHost::new();
    let sandbox = host.sandbox().await;
    let dir = host.root().join(sandbox.id().as_str());
    shell(
        &*sandbox,
        "sleep 1000 >/dev/null 2>&1 & cd /tmp && sleep 1001 >/dev/null 2>&1 &",
    )
    .await;
    let mut spec = ExecSpec::shell("echo ready; exec sleep 1002");
    spec.detach = true;
    let mut detached = sandbox.exec_stream(spec).await.unwrap();
    let mut collected = Collected::default();
    collect_until(&mut detached, &mut collected, |c| c.stdout == b"ready\n").await;
    let mut tty = ExecSpec::shell("sleep 1003 & exec sleep 1004");
    tty.tty = Some(cthulu_types::PtySize { cols: 80, rows: 24 });
    let attached = sandbox.exec_stream(tty).await.unwrap();
    let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let exposed = sandbox
        .expose_port(server.local_addr().unwrap().port())
        .await
        .unwrap();
    assert!(!processes_using(&dir).is_empty());

    sandbox.destroy().await.unwrap();
    assert_eq!(sandbox.status(), SandboxStatus::Destroyed);
    // The open stream hears how its process ended.
    collect_until(&mut detached, &mut collected, |_| false).await;
    assert_eq!(collected.exit.unwrap().signal, Some(9));
    drop((detached, attached));
    assert!(!dir.exists());
    eventually("every process of the sandbox to be gone", || {
        processes_using(&dir).is_empty()
    })
    .await;
    assert!(tokio::net::TcpStream::connect(&exposed.host_address)
        .await
        .is_err());

    sandbox.destroy().await.unwrap();
    let gone = |result: Result<(), SandboxError>| {
        assert!(
            matches!(result, Err(SandboxError::InvalidState(_))),
            "{result:?}"
        );
    };
    gone(sandbox.exec(ExecSpec::argv(["true"])).await.map(|_| ()));
    gone(
        sandbox
            .exec_stream(ExecSpec::argv(["true"]))
            .await
            .map(|_| ()),
    );
    gone(sandbox.list_processes().await.map(|_| ()));
    gone(sandbox.read_dir("").await.map(|_| ()));
    gone(
        sandbox
            .checkpoint(CheckpointRequest::default())
            .await
            .map(|_| ()),
    );
    gone(sandbox.stop().await);
    gone(sandbox.resume().await);
    assert!(!host.provider.list().await.unwrap().contains(sandbox.id()));
    let error = host
        .provider
        .attach(sandbox.id(), &SandboxSpec::default())
        .await
        .err()
        .unwrap();
    assert!(
        matches!(error, SandboxError::SandboxNotFound { .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn destroy_after_a_restart_still_reaches_stray_processes() {
    let mut host = TestHost::new();
    let sandbox = host.sandbox().await;
    let sandbox_id = sandbox.id().clone();
    let dir = host.root().join(sandbox_id.as_str());
    // Left behind by a one-shot exec: in no group a new server knows of.
    shell(&*sandbox, "sleep 1000 >/dev/null 2>&1 &").await;
    drop(sandbox);
    host.restart();
    let sandbox = host
        .provider
        .attach(&sandbox_id, &SandboxSpec::default())
        .await
        .unwrap();
    sandbox.destroy().await.unwrap();
    eventually("the stray process to be gone", || {
        processes_using(&dir).is_empty()
    })
    .await;
}
