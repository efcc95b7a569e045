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
