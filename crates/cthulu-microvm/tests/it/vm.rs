//! Lifecycle of one VM: create, exec, files, stop/resume, destroy.

use cthulu_core::{ExecSpec, SandboxProvider, SandboxSpec};
use cthulu_types::SandboxId;

use crate::support::provider;

#[tokio::test]
async fn a_vm_runs_a_command_and_leaves_nothing_behind() {
    let state = tempfile::tempdir().unwrap();
    let Some(provider) = provider(state.path()) else {
        return;
    };
    let sandbox_id = SandboxId::generate();
    let started = std::time::Instant::now();
    let handle = provider
        .provision(&sandbox_id, &SandboxSpec::default())
        .await
        .unwrap();
    eprintln!("provisioned in {:?}", started.elapsed());
    let output = handle
        .exec(ExecSpec::shell("uname -s; echo $((6*7)); hostname; pwd"))
        .await
        .unwrap();
    eprintln!("first exec after {:?}", started.elapsed());
    for _ in 0..3 {
        let t = std::time::Instant::now();
        handle.exec(ExecSpec::argv(["true"])).await.unwrap();
        eprintln!("exec true {:?}", t.elapsed());
    }
    for _ in 0..3 {
        let t = std::time::Instant::now();
        handle.read_dir("").await.unwrap();
        eprintln!("read_dir {:?}", t.elapsed());
    }
    let diag = handle.exec(ExecSpec::shell("t0=$(date +%s%N); for i in 1 2 3 4 5 6 7 8 9 10; do /bin/true; done; t1=$(date +%s%N); echo fork-exec-us $(( (t1-t0)/10000 ))")).await.unwrap();
    eprintln!("DIAG {}", String::from_utf8_lossy(&diag.stdout));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.exit.exit_code, Some(0), "{output:?}");
    assert_eq!(
        stdout,
        format!("Linux\n42\n{sandbox_id}\n/workspace\n"),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    handle.destroy().await.unwrap();
    assert!(!state
        .path()
        .join("sandboxes")
        .join(sandbox_id.as_str())
        .exists());
}

#[tokio::test]
async fn a_new_vm_starts_from_another_ones_memory_checkpoint() {
    use cthulu_core::SandboxError;
    use cthulu_types::{CheckpointRequest, Resources};

    let state = tempfile::tempdir().unwrap();
    let Some(provider) = provider(state.path()) else {
        return;
    };
    let source_id = SandboxId::generate();
    let source = provider
        .provision(&source_id, &SandboxSpec::default())
        .await
        .unwrap();
    source
        .exec(ExecSpec::shell(
            "echo kept > note.txt; (i=0; while true; do i=$((i+1)); echo $i > count; sleep 0.2; done) >/dev/null 2>&1 &",
        ))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    source
        .checkpoint(CheckpointRequest {
            name: Some("snap".into()),
            memory: true,
        })
        .await
        .unwrap();
    source
        .checkpoint(CheckpointRequest {
            name: Some("files".into()),
            memory: false,
        })
        .await
        .unwrap();

    let clone_id = SandboxId::generate();
    let spec = SandboxSpec {
        from_checkpoint: Some(format!("{source_id}/snap")),
        ..SandboxSpec::default()
    };
    let clone = provider.provision(&clone_id, &spec).await.unwrap();
    let read = |handle: std::sync::Arc<dyn cthulu_core::SandboxHandle>| async move {
        let output = handle
            .exec(ExecSpec::shell("cat note.txt; cat count; hostname"))
            .await
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let first = read(clone.clone()).await;
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let later = read(clone.clone()).await;
    let lines = |text: &str| text.lines().map(str::to_string).collect::<Vec<_>>();
    let (first, later) = (lines(&first), lines(&later));
    assert_eq!(first[0], "kept", "the checkpoint's files: {first:?}");
    assert_eq!(first[2], clone_id.as_str(), "the clone's own hostname");
    let (a, b): (u64, u64) = (first[1].parse().unwrap(), later[1].parse().unwrap());
    assert!(
        b > a,
        "the checkpoint's process runs on in the clone: {a} then {b}"
    );

    let refused = |spec: SandboxSpec| {
        let provider = &provider;
        async move {
            provider
                .provision(&SandboxId::generate(), &spec)
                .await
                .err()
                .expect("refused")
        }
    };
    let files_only = refused(SandboxSpec {
        from_checkpoint: Some(format!("{source_id}/files")),
        ..SandboxSpec::default()
    })
    .await;
    assert!(files_only.to_string().contains("--memory"), "{files_only}");
    let other_size = refused(SandboxSpec {
        from_checkpoint: Some(format!("{source_id}/snap")),
        resources: Resources {
            vcpus: Some(2),
            ..Resources::default()
        },
        ..SandboxSpec::default()
    })
    .await;
    assert!(
        other_size.to_string().contains("256 MiB, 1 vCPU"),
        "{other_size}"
    );
    let missing = refused(SandboxSpec {
        from_checkpoint: Some(format!("{source_id}/nope")),
        ..SandboxSpec::default()
    })
    .await;
    assert!(
        matches!(missing, SandboxError::CheckpointNotFound { .. }),
        "{missing}"
    );

    clone.destroy().await.unwrap();
    source.destroy().await.unwrap();
    let left: Vec<_> = std::fs::read_dir(state.path().join("sandboxes"))
        .unwrap()
        .flatten()
        .map(|entry| entry.file_name())
        .collect();
    assert!(left.is_empty(), "refused creates leave nothing: {left:?}");
}
