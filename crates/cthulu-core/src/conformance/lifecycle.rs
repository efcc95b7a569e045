//! Lifecycle: stop and resume, checkpoint and restore, destroy. Restarts of the server
//! are in [`restart`](super::restart).
//!
//! Not here: a sandbox past its lifetime is destroyed by the server's reaper, not by the
//! backend, so that is tested with the server.

use std::time::Duration;

use cthulu_types::{
    CheckpointRequest, CheckpointSupport, ErrorCode, ProcessState, SandboxStatus, Signal,
};

use super::ports::serve_and_expose;
use super::sandbox::{Sandbox, CALL_LIMIT};
use super::stream::start;
use super::support::{
    describe, expect_code, expect_one_of, fail, http_get, reader, within, Context, Outcome,
    ScenarioError,
};
use crate::{ExecSpec, PutOptions, SandboxError, SandboxHandle};

const WAIT: Duration = Duration::from_secs(60);
const GONE: &[ErrorCode] = &[ErrorCode::InvalidState, ErrorCode::SandboxNotFound];

/// stop freezes processes (a counter printing to a live stream goes silent), exec and
/// files are refused with `invalid_state` while stopped, resume continues the counter;
/// stopping twice and resuming a running sandbox are refused too.
pub async fn stop_freezes_and_resume_continues(sandbox: Sandbox) -> Outcome {
    let handle = sandbox.handle();
    if !sandbox.capabilities().stop_resume {
        let result = within(CALL_LIMIT, "stop", handle.stop()).await?;
        return Err(sandbox.expect_unsupported("stop", result));
    }
    let mut counter = start(
        &sandbox,
        ExecSpec::shell("i=0; while :; do i=$((i + 1)); echo tick-$i; sleep 0.2; done"),
    )
    .await?;
    counter.wait_for("tick-3\n", WAIT).await?;

    within(CALL_LIMIT, "stop", handle.stop())
        .await?
        .context("stop")?;
    assert_eq!(
        handle.status(),
        SandboxStatus::Stopped,
        "the status after stop"
    );
    // Output written just before the freeze may still be on its way.
    counter.drain_for(Duration::from_secs(1)).await?;
    let frozen_at = counter.stdout.len();
    counter.drain_for(Duration::from_secs(3)).await?;
    assert!(
        counter.stdout.len() == frozen_at && counter.exit.is_none(),
        "a stopped sandbox's counter went on: {:?}",
        String::from_utf8_lossy(&counter.stdout[frozen_at..])
    );

    let result = within(CALL_LIMIT, "exec", handle.exec(ExecSpec::argv(["true"]))).await?;
    expect_code(result, ErrorCode::InvalidState, "exec on a stopped sandbox")?;
    let result = within(
        CALL_LIMIT,
        "put_file",
        handle.put_file("while-stopped", PutOptions::default(), reader("x")),
    )
    .await?;
    expect_code(
        result,
        ErrorCode::InvalidState,
        "put_file on a stopped sandbox",
    )?;
    let result = within(CALL_LIMIT, "stop", handle.stop()).await?;
    expect_code(
        result,
        ErrorCode::InvalidState,
        "stopping a stopped sandbox",
    )?;

    within(CALL_LIMIT, "resume", handle.resume())
        .await?
        .context("resume")?;
    assert_eq!(
        handle.status(),
        SandboxStatus::Running,
        "the status after resume"
    );
    let resumed_at = counter.stdout.len();
    let deadline = tokio::time::Instant::now() + WAIT;
    while counter.stdout.len() == resumed_at {
        if tokio::time::Instant::now() >= deadline || counter.exit.is_some() {
            return Err(fail(format!(
                "the counter did not continue after resume (exit {:?})",
                counter.exit
            )));
        }
        counter.drain_for(Duration::from_millis(500)).await?;
    }
    let result = within(CALL_LIMIT, "resume", handle.resume()).await?;
    expect_code(
        result,
        ErrorCode::InvalidState,
        "resuming a running sandbox",
    )?;
    assert_eq!(
        sandbox.sh("echo alive").await?,
        "alive\n",
        "exec after resume"
    );
    Ok(())
}

/// Files changed after a checkpoint are back after restore (by name and by id): changed
/// content, deleted files, created files. Names are unique; unknown checkpoints are
/// `checkpoint_not_found`; delete removes one. A memory checkpoint brings processes back,
/// or is `unsupported` on a backend that checkpoints the filesystem only.
pub async fn checkpoint_restore_brings_files_back(sandbox: Sandbox) -> Outcome {
    let handle = sandbox.handle();
    let support = sandbox.capabilities().checkpoint;
    if support == CheckpointSupport::None {
        let result = within(
            CALL_LIMIT,
            "checkpoint",
            handle.checkpoint(CheckpointRequest::default()),
        )
        .await?;
        return Err(sandbox.expect_unsupported("checkpoint", result));
    }
    sandbox
        .sh("mkdir -p cp && echo before > cp/changed.txt && echo kept > cp/deleted.txt")
        .await?;
    let request = CheckpointRequest {
        name: Some("first".into()),
        memory: false,
    };
    let checkpoint = within(CALL_LIMIT, "checkpoint", handle.checkpoint(request.clone()))
        .await?
        .context("checkpoint")?;
    assert_eq!(
        (checkpoint.name.as_deref(), checkpoint.memory),
        (Some("first"), false),
        "the checkpoint as created: {checkpoint:?}"
    );
    let listed = within(CALL_LIMIT, "list_checkpoints", handle.list_checkpoints())
        .await?
        .context("list_checkpoints")?;
    assert!(
        listed.iter().any(|listed| listed.id == checkpoint.id),
        "listed: {listed:?}"
    );
    let result = within(CALL_LIMIT, "checkpoint", handle.checkpoint(request)).await?;
    expect_code(
        result,
        ErrorCode::Conflict,
        "a second checkpoint with the same name",
    )?;

    let change = "echo after > cp/changed.txt && rm cp/deleted.txt && echo new > cp/created.txt";
    let state = "cat cp/changed.txt cp/deleted.txt 2>&1; ls cp";
    sandbox.sh(change).await?;
    for name in ["first".to_owned(), checkpoint.id.clone()] {
        within(CALL_LIMIT, "restore", handle.restore(&name))
            .await?
            .context(format!("restore {name}"))?;
        assert_eq!(
            handle.status(),
            SandboxStatus::Running,
            "the status after restore"
        );
        assert_eq!(
            sandbox.sh(state).await?,
            "before\nkept\nchanged.txt\ndeleted.txt\n",
            "after restoring {name}: changed and deleted files are back, created ones gone"
        );
        sandbox.sh(change).await?;
    }
    let result = within(CALL_LIMIT, "restore", handle.restore("no-such-checkpoint")).await?;
    expect_code(
        result,
        ErrorCode::CheckpointNotFound,
        "restore of an unknown checkpoint",
    )?;

    within(
        CALL_LIMIT,
        "delete_checkpoint",
        handle.delete_checkpoint(&checkpoint.id),
    )
    .await?
    .context("delete_checkpoint")?;
    let listed = within(CALL_LIMIT, "list_checkpoints", handle.list_checkpoints())
        .await?
        .context("list_checkpoints")?;
    assert!(
        listed.iter().all(|listed| listed.id != checkpoint.id),
        "deleted, still listed: {listed:?}"
    );
    let result = within(CALL_LIMIT, "restore", handle.restore(&checkpoint.id)).await?;
    expect_code(
        result,
        ErrorCode::CheckpointNotFound,
        "restore of a deleted checkpoint",
    )?;

    let memory = CheckpointRequest {
        name: Some("memory".into()),
        memory: true,
    };
    if support == CheckpointSupport::Filesystem {
        let result = within(CALL_LIMIT, "checkpoint", handle.checkpoint(memory)).await?;
        match sandbox.expect_unsupported("memory checkpoint", result) {
            ScenarioError::Skipped(reason) => sandbox.note_skip(reason),
            failure => return Err(failure),
        }
        return Ok(());
    }
    memory_checkpoint_brings_processes_back(&sandbox, handle.as_ref(), memory).await
}

async fn memory_checkpoint_brings_processes_back(
    sandbox: &Sandbox,
    handle: &dyn SandboxHandle,
    request: CheckpointRequest,
) -> Outcome {
    let mut spec =
        ExecSpec::shell("i=0; while :; do i=$((i + 1)); echo $i > mem-counter; sleep 0.2; done");
    spec.detach = true;
    let counter = start(sandbox, spec).await?;
    let process_id = counter.process_id();
    drop(counter);
    wait_counter_moves(sandbox).await?;
    within(CALL_LIMIT, "checkpoint", handle.checkpoint(request))
        .await?
        .context("memory checkpoint")?;
    within(
        CALL_LIMIT,
        "signal_process",
        handle.signal_process(&process_id, Signal::Kill),
    )
    .await?
    .context("killing the counter")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    within(CALL_LIMIT, "restore", handle.restore("memory"))
        .await?
        .context("restore of the memory checkpoint")?;
    wait_counter_moves(sandbox).await
}

async fn wait_counter_moves(sandbox: &Sandbox) -> Outcome {
    let read = "cat mem-counter 2>/dev/null || echo none";
    let first = sandbox.sh(read).await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = sandbox.sh(read).await?;
        if now != first && now.trim() != "none" {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(fail(
                "the counter process is not running (its file does not change)",
            ));
        }
    }
}

/// destroy ends the sandbox's processes (its streams end) and closes its exposed ports,
/// a second destroy succeeds,
/// and every later call is `invalid_state` or `sandbox_not_found`; the provider no
/// longer lists or attaches it.
pub async fn destroy_is_final_and_idempotent(sandbox: Sandbox) -> Outcome {
    let handle = sandbox.handle();
    sandbox.sh("echo data > file.txt").await?;
    let stream = if sandbox.capabilities().exec_stream {
        let mut stream = start(&sandbox, ExecSpec::shell("echo ready; exec sleep 1000")).await?;
        stream.wait_for("ready", WAIT).await?;
        Some(stream)
    } else {
        None
    };
    let capabilities = sandbox.capabilities();
    let served = if capabilities.ports && capabilities.exec_stream {
        match serve_and_expose(&sandbox).await {
            Ok(served) => Some(served),
            Err(ScenarioError::Skipped(reason)) => {
                sandbox.note_skip(format!("(exposed port after destroy) {reason}"));
                None
            }
            Err(failure) => return Err(failure),
        }
    } else {
        None
    };
    within(CALL_LIMIT, "destroy", handle.destroy())
        .await?
        .context("destroy")?;
    assert_eq!(
        handle.status(),
        SandboxStatus::Destroyed,
        "the status after destroy"
    );
    if let Some(mut stream) = stream {
        let exit = stream.wait_exit(WAIT).await?;
        assert!(
            exit.exit_code != Some(0),
            "a process of a destroyed sandbox was killed: {exit:?}"
        );
    }
    if let Some((mut server, exposed, token)) = served {
        server.wait_exit(WAIT).await?;
        let response = http_get(&exposed.url, "/token.txt", Duration::from_secs(30)).await;
        if let Ok(body) = response {
            assert!(
                !body.contains(&token),
                "{} still serves the destroyed sandbox's file",
                exposed.url
            );
        }
    }
    within(CALL_LIMIT, "destroy", handle.destroy())
        .await?
        .context("a second destroy must succeed and do nothing")?;

    let refused = |what: &str, result: Result<(), SandboxError>| {
        expect_one_of(result, GONE, format!("{what} after destroy")).map(|_| ())
    };
    refused(
        "exec",
        handle.exec(ExecSpec::argv(["true"])).await.map(|_| ()),
    )?;
    refused(
        "exec_stream",
        handle
            .exec_stream(ExecSpec::argv(["true"]))
            .await
            .map(|_| ()),
    )?;
    refused("list_processes", handle.list_processes().await.map(|_| ()))?;
    refused(
        "put_file",
        handle
            .put_file("after.txt", PutOptions::default(), reader("x"))
            .await
            .map(|_| ()),
    )?;
    refused("get_file", handle.get_file("file.txt").await.map(|_| ()))?;
    refused("read_dir", handle.read_dir("").await.map(|_| ()))?;
    refused("remove", handle.remove("file.txt", false).await)?;
    refused("expose_port", handle.expose_port(8080).await.map(|_| ()))?;
    refused(
        "checkpoint",
        handle
            .checkpoint(CheckpointRequest::default())
            .await
            .map(|_| ()),
    )?;
    refused("stop", handle.stop().await)?;
    refused("resume", handle.resume().await)?;

    let provider = sandbox.provider();
    let listed = within(CALL_LIMIT, "list", provider.list())
        .await?
        .context("list")?;
    assert!(
        !listed.contains(sandbox.id()),
        "a destroyed sandbox is still listed: {listed:?}"
    );
    match within(
        CALL_LIMIT,
        "attach",
        provider.attach(sandbox.id(), sandbox.spec()),
    )
    .await?
    {
        Err(error) if GONE.contains(&error.code()) => {}
        Err(error) => return Err(fail(format!("attach after destroy: {}", describe(&error)))),
        Ok(attached) => {
            return Err(fail(format!(
                "attach after destroy must be sandbox_not_found, got a handle with status {}",
                attached.status()
            )))
        }
    }
    Ok(())
}

/// The state and exit code `list_processes` gives `process_id`, if it lists it.
pub(super) async fn process_state(
    handle: &dyn SandboxHandle,
    process_id: &str,
) -> Result<Option<(ProcessState, Option<i32>)>, ScenarioError> {
    let listed = within(CALL_LIMIT, "list_processes", handle.list_processes())
        .await?
        .context("list_processes")?;
    Ok(listed
        .iter()
        .find(|process| process.id == process_id)
        .map(|process| (process.state, process.exit_code)))
}
