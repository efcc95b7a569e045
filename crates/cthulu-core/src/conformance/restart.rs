//! Restarts of `cthulu serve`, simulated by dropping the provider and handle and
//! attaching with [`ConformanceTarget::restarted_provider`](super::ConformanceTarget):
//! nothing the user can see changes, except that processes that died meanwhile are
//! reported as such.
//!
//! The simulation cannot stop tasks the old provider left running in this process; a
//! backend whose state lives only in such tasks may pass here and still lose it in a
//! real restart.

use std::time::Duration;

use cthulu_types::{CheckpointRequest, CheckpointSupport, ProcessState, SandboxStatus, Signal};

use super::lifecycle::process_state;
use super::sandbox::{sh_on, Sandbox, CALL_LIMIT};
use super::stream::start;
use super::support::{fail, within, Context, Outcome};
use super::watch::Watched;
use crate::ExecSpec;

const WAIT: Duration = Duration::from_secs(60);

/// Files, status and detached processes are still there after a restart: a process
/// still running can be re-attached with its earlier output and killed; one that ended
/// while the server was away is reported as exited (with its code) or lost.
pub async fn restart_keeps_files_status_and_processes(sandbox: Sandbox) -> Outcome {
    sandbox
        .put("kept/file.txt", b"survives restarts".to_vec())
        .await?;
    let detached = sandbox.capabilities().detached_processes;
    let mut processes = None;
    if detached {
        let mut spec = ExecSpec::shell("echo before-restart; exec sleep 1000");
        spec.detach = true;
        let mut running = start(&sandbox, spec).await?;
        running.wait_for("before-restart", WAIT).await?;
        let mut spec = ExecSpec::shell("echo short-lived; sleep 2; exit 7");
        spec.detach = true;
        let mut ending = start(&sandbox, spec).await?;
        ending.wait_for("short-lived", WAIT).await?;
        processes = Some((running.process_id(), ending.process_id()));
    } else {
        sandbox.note_skip("detached processes unsupported: only files and status checked");
    }

    // The short-lived process ends while no provider is there.
    let handle = sandbox.restart_after(Duration::from_secs(4)).await?;
    assert_eq!(
        handle.status(),
        SandboxStatus::Running,
        "the status after a restart"
    );
    assert_eq!(handle.id(), sandbox.id(), "attach returns the same sandbox");
    assert_eq!(
        sandbox.get("kept/file.txt").await?,
        b"survives restarts",
        "files after a restart"
    );
    assert_eq!(
        sh_on(&handle, "echo works").await?,
        "works\n",
        "exec after a restart"
    );
    let listed = within(CALL_LIMIT, "list", sandbox.provider().list())
        .await?
        .context("list")?;
    assert!(
        listed.contains(sandbox.id()),
        "the restarted provider lists the sandbox: {listed:?}"
    );

    let Some((running, ending)) = processes else {
        return Ok(());
    };
    match process_state(handle.as_ref(), &running).await? {
        Some((ProcessState::Running, _)) => {}
        other => {
            return Err(fail(format!(
                "the detached process {running} must still run after a restart, listed as {other:?}"
            )))
        }
    }
    match process_state(handle.as_ref(), &ending).await? {
        Some((ProcessState::Exited, code)) => assert_eq!(
            code,
            Some(7),
            "a process that exited during the restart keeps its exit code"
        ),
        Some((ProcessState::Lost, _)) => {}
        other => {
            return Err(fail(format!(
                "a process that ended during the restart must be listed as exited or lost, not {other:?}"
            )))
        }
    }
    let attached = within(
        CALL_LIMIT,
        "attach_process",
        handle.attach_process(&running),
    )
    .await?
    .context("attach_process after a restart")?;
    let mut attached = Watched::new(attached);
    attached.wait_for("before-restart", WAIT).await?;
    within(
        CALL_LIMIT,
        "signal_process",
        handle.signal_process(&running, Signal::Kill),
    )
    .await?
    .context("signal_process after a restart")?;
    let exit = attached.wait_exit(WAIT).await?;
    assert_eq!(exit.signal, Some(9), "the re-attached process's exit");
    Ok(())
}

/// A stopped sandbox is still stopped after a restart, and resume continues it.
pub async fn restart_keeps_a_stopped_sandbox_stopped(sandbox: Sandbox) -> Outcome {
    let handle = sandbox.handle();
    if !sandbox.capabilities().stop_resume {
        let result = within(CALL_LIMIT, "stop", handle.stop()).await?;
        return Err(sandbox.expect_unsupported("stop", result));
    }
    sandbox.put("stopped.txt", b"still here".to_vec()).await?;
    within(CALL_LIMIT, "stop", handle.stop())
        .await?
        .context("stop")?;
    drop(handle);
    let handle = sandbox.restart().await?;
    assert_eq!(
        handle.status(),
        SandboxStatus::Stopped,
        "a stopped sandbox after a restart"
    );
    within(CALL_LIMIT, "resume", handle.resume())
        .await?
        .context("resume after a restart")?;
    assert_eq!(
        handle.status(),
        SandboxStatus::Running,
        "the status after resume"
    );
    assert_eq!(sandbox.get("stopped.txt").await?, b"still here");
    assert_eq!(sh_on(&handle, "echo resumed").await?, "resumed\n");
    Ok(())
}

/// Checkpoints are still listed after a restart and can be restored.
pub async fn restart_keeps_checkpoints(sandbox: Sandbox) -> Outcome {
    let handle = sandbox.handle();
    if sandbox.capabilities().checkpoint == CheckpointSupport::None {
        let result = within(
            CALL_LIMIT,
            "checkpoint",
            handle.checkpoint(CheckpointRequest::default()),
        )
        .await?;
        return Err(sandbox.expect_unsupported("checkpoint", result));
    }
    sandbox
        .put("versioned.txt", b"checkpointed".to_vec())
        .await?;
    let request = CheckpointRequest {
        name: Some("before-restart".into()),
        memory: false,
    };
    let checkpoint = within(CALL_LIMIT, "checkpoint", handle.checkpoint(request))
        .await?
        .context("checkpoint")?;
    sandbox.put("versioned.txt", b"changed".to_vec()).await?;
    drop(handle);
    let handle = sandbox.restart().await?;
    let listed = within(CALL_LIMIT, "list_checkpoints", handle.list_checkpoints())
        .await?
        .context("list_checkpoints after a restart")?;
    assert!(
        listed.contains(&checkpoint),
        "the checkpoint is listed unchanged after a restart: {listed:?} vs {checkpoint:?}"
    );
    within(CALL_LIMIT, "restore", handle.restore("before-restart"))
        .await?
        .context("restore after a restart")?;
    assert_eq!(sandbox.get("versioned.txt").await?, b"checkpointed");
    Ok(())
}
