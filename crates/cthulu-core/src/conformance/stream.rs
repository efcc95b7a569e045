//! Streaming exec and processes: live output, stdin, signals, PTYs, and what happens to
//! a process when its stream goes away.

use std::time::Duration;

use cthulu_types::{ErrorCode, ProcessState, PtySize, Signal};

use super::sandbox::{Sandbox, CALL_LIMIT};
use super::support::{expect_code, fail, text, within, Context, Outcome, ScenarioError};
use super::watch::{contains, Watched};
use crate::ExecSpec;

const WAIT: Duration = Duration::from_secs(60);

/// Starts `spec` as a stream, or answers for a backend without streaming exec.
pub(super) async fn start(sandbox: &Sandbox, spec: ExecSpec) -> Result<Watched, ScenarioError> {
    let handle = sandbox.handle();
    let what = format!("exec_stream `{}`", spec.command.display());
    if !sandbox.capabilities().exec_stream {
        let result = within(CALL_LIMIT, &what, handle.exec_stream(spec)).await?;
        return Err(sandbox.expect_unsupported("exec_stream", result));
    }
    let stream = within(CALL_LIMIT, &what, handle.exec_stream(spec))
        .await?
        .context(&what)?;
    Ok(Watched::new(stream))
}

/// Chunks arrive while the program runs: the first line of `echo a; sleep 2; echo b`
/// arrives well before the second, and the exit event comes last.
pub async fn chunks_arrive_while_the_program_runs(sandbox: Sandbox) -> Outcome {
    let mut stream = start(
        &sandbox,
        ExecSpec::shell("echo a; sleep 2; echo b; echo e >&2; printf tail"),
    )
    .await?;
    let first = stream.wait_for("a\n", WAIT).await?;
    assert!(
        !contains(&stream.stdout, b"b") && stream.exit.is_none(),
        "the first line must arrive alone, before the second and the exit"
    );
    let second = stream.wait_for("b\n", WAIT).await?;
    let gap = second - first;
    assert!(
        gap >= Duration::from_secs(1),
        "`a` arrived only {gap:?} before `b`, which was printed 2 s later: output is not streamed"
    );
    let exit = stream.wait_exit(WAIT).await?;
    assert_eq!(exit.exit_code, Some(0), "exit after the stream");
    assert_eq!(
        text(&stream.stdout),
        "a\nb\ntail",
        "all stdout, the last chunk before the exit"
    );
    assert_eq!(text(&stream.stderr), "e\n", "stderr is its own channel");
    Ok(())
}

/// stdin written in pieces arrives in order while the program runs; close-stdin
/// delivers EOF.
pub async fn stdin_pieces_arrive_in_order_then_eof(sandbox: Sandbox) -> Outcome {
    let mut stream = start(
        &sandbox,
        ExecSpec::shell("while read line; do echo \"got:$line\"; done; echo eof-seen"),
    )
    .await?;
    stream.write(b"ping\n").await?;
    stream.wait_for("got:ping\n", WAIT).await?;
    for piece in [&b"a"[..], b"b", b"c", b"\n"] {
        stream.write(piece).await?;
    }
    stream.wait_for("got:abc\n", WAIT).await?;
    for index in 0..200 {
        stream.write(format!("line-{index}\n").as_bytes()).await?;
    }
    stream.wait_for("got:line-199\n", WAIT).await?;
    assert!(
        stream.exit.is_none(),
        "the program must still wait for input before close-stdin"
    );
    within(CALL_LIMIT, "close_stdin", stream.stream().close_stdin())
        .await?
        .context("close_stdin")?;
    stream.wait_for("eof-seen", WAIT).await?;
    let exit = stream.wait_exit(WAIT).await?;
    assert_eq!(exit.exit_code, Some(0));
    let mut expected = String::from("got:ping\ngot:abc\n");
    for index in 0..200 {
        expected.push_str(&format!("got:line-{index}\n"));
    }
    expected.push_str("eof-seen\n");
    assert_eq!(
        text(&stream.stdout),
        expected,
        "stdin pieces in the order written"
    );
    Ok(())
}

/// TERM, INT and KILL sent through the stream reach the process.
pub async fn signals_reach_the_process(sandbox: Sandbox) -> Outcome {
    for (signal, name, code) in [(Signal::Term, "TERM", 42), (Signal::Int, "INT", 43)] {
        let mut stream = start(
            &sandbox,
            ExecSpec::shell(format!(
                "trap 'echo got-{name}; exit {code}' {name}; echo ready; \
                 while :; do sleep 0.1; done"
            )),
        )
        .await?;
        stream.wait_for("ready", WAIT).await?;
        within(CALL_LIMIT, "signal", stream.stream().signal(signal))
            .await?
            .context(format!("sending {name}"))?;
        stream.wait_for(&format!("got-{name}"), WAIT).await?;
        let exit = stream.wait_exit(WAIT).await?;
        assert_eq!(exit.exit_code, Some(code), "the {name} trap's exit code");
    }
    for (signal, number) in [(Signal::Kill, 9), (Signal::Term, 15)] {
        let mut stream = start(&sandbox, ExecSpec::shell("echo ready; exec sleep 100")).await?;
        stream.wait_for("ready", WAIT).await?;
        within(CALL_LIMIT, "signal", stream.stream().signal(signal))
            .await?
            .context(format!("sending {signal}"))?;
        let exit = stream.wait_exit(WAIT).await?;
        assert_eq!(
            (exit.exit_code, exit.signal),
            (None, Some(number)),
            "`sleep` killed by {signal} must report signal {number}"
        );
    }
    Ok(())
}

fn pty_spec(script: &str) -> ExecSpec {
    let mut spec = ExecSpec::shell(script);
    spec.tty = Some(PtySize { cols: 80, rows: 24 });
    spec
}

/// Under a PTY, `tty` names a terminal and resize changes what `stty size` prints; a
/// stream without a PTY refuses resize.
pub async fn pty_is_a_terminal_and_resizes(sandbox: Sandbox) -> Outcome {
    let spec = pty_spec("tty; stty size; echo ready; read line; stty size; echo done");
    if !sandbox.capabilities().pty {
        let result = within(
            CALL_LIMIT,
            "exec_stream",
            sandbox.handle().exec_stream(spec),
        )
        .await?;
        return Err(sandbox.expect_unsupported("pty", result));
    }
    let mut stream = start(&sandbox, spec).await?;
    stream.wait_for("ready", WAIT).await?;
    let before = text(&stream.stdout).replace('\r', "");
    assert!(
        before.starts_with("/dev/"),
        "`tty` must name a terminal device under a PTY: {before:?}"
    );
    assert!(
        before.contains("\n24 80\n"),
        "`stty size` must show 24 rows, 80 cols: {before:?}"
    );
    within(
        CALL_LIMIT,
        "resize",
        stream.stream().resize(PtySize {
            cols: 100,
            rows: 40,
        }),
    )
    .await?
    .context("resize")?;
    stream.write(b"\n").await?;
    stream.wait_for("done", WAIT).await?;
    assert!(
        contains(&stream.stdout, b"40 100"),
        "after resize, `stty size` must show 40 rows, 100 cols: {:?}",
        text(&stream.stdout)
    );
    let exit = stream.wait_exit(WAIT).await?;
    assert_eq!(exit.exit_code, Some(0));
    assert!(stream.stderr.is_empty(), "a PTY's output is all on stdout");

    let mut plain = start(&sandbox, ExecSpec::shell("echo ready; exec sleep 100")).await?;
    plain.wait_for("ready", WAIT).await?;
    let result = within(
        CALL_LIMIT,
        "resize",
        plain.stream().resize(PtySize { cols: 10, rows: 10 }),
    )
    .await?;
    expect_code(
        result,
        ErrorCode::BadRequest,
        "resize of a stream without a PTY",
    )?;
    Ok(())
}

/// Ctrl-C typed into a PTY interrupts the foreground program.
pub async fn pty_ctrl_c_interrupts(sandbox: Sandbox) -> Outcome {
    let spec = pty_spec("echo ready; exec sleep 100");
    if !sandbox.capabilities().pty {
        let result = within(
            CALL_LIMIT,
            "exec_stream",
            sandbox.handle().exec_stream(spec),
        )
        .await?;
        return Err(sandbox.expect_unsupported("pty", result));
    }
    let mut stream = start(&sandbox, spec).await?;
    stream.wait_for("ready", WAIT).await?;
    stream.write(b"\x03").await?;
    let exit = stream.wait_exit(WAIT).await?;
    assert!(
        exit.signal == Some(2) || exit.exit_code == Some(130),
        "Ctrl-C must interrupt `sleep` with SIGINT: {exit:?}"
    );
    Ok(())
}

/// Dropping a stream that was not detached kills its process.
pub async fn dropping_a_stream_kills_its_process(sandbox: Sandbox) -> Outcome {
    let mut stream = start(
        &sandbox,
        ExecSpec::shell("echo $$ > dropped.pid; echo ready; exec sleep 1000"),
    )
    .await?;
    stream.wait_for("ready", WAIT).await?;
    drop(stream);
    let pid = sandbox.sh("cat dropped.pid").await?;
    sandbox
        .wait_process_gone(&pid, Duration::from_secs(20))
        .await
}

/// A detached process survives its stream, is listed, can be re-attached with the output
/// it produced meanwhile, and can be killed.
pub async fn detached_process_survives_and_reattaches(sandbox: Sandbox) -> Outcome {
    let mut spec = ExecSpec::shell(
        "echo started; while [ ! -e go ]; do sleep 0.1; done; echo produced-meanwhile; \
         echo done > produced; exec sleep 1000",
    );
    spec.detach = true;
    let handle = sandbox.handle();
    if !sandbox.capabilities().detached_processes {
        let result = within(CALL_LIMIT, "exec_stream", handle.exec_stream(spec)).await?;
        return Err(sandbox.expect_unsupported("detached processes", result));
    }
    let mut stream = start(&sandbox, spec).await?;
    stream.wait_for("started", WAIT).await?;
    let process_id = stream.process_id();
    drop(stream);

    tokio::time::sleep(Duration::from_millis(500)).await;
    let listed = within(CALL_LIMIT, "list_processes", handle.list_processes())
        .await?
        .context("list_processes")?;
    let info = listed
        .iter()
        .find(|process| process.id == process_id)
        .ok_or_else(|| {
            fail(format!(
                "the detached process {process_id} is not listed: {listed:?}"
            ))
        })?;
    assert_eq!(
        (info.state, info.detached),
        (ProcessState::Running, true),
        "the detached process must be listed as running and detached after its stream is gone: {info:?}"
    );

    sandbox.sh("touch go").await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    while sandbox
        .sh("test -e produced && echo yes || echo no")
        .await?
        .trim()
        != "yes"
    {
        if tokio::time::Instant::now() >= deadline {
            return Err(fail(
                "the detached process did not go on after its stream was dropped",
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let attached = within(
        CALL_LIMIT,
        "attach_process",
        handle.attach_process(&process_id),
    )
    .await?
    .context("attach_process")?;
    let mut attached = Watched::new(attached);
    attached.wait_for("produced-meanwhile", WAIT).await?;
    let replay = text(&attached.stdout);
    let started = replay.find("started");
    let meanwhile = replay.find("produced-meanwhile");
    assert!(
        started.is_some() && started < meanwhile,
        "attach must replay the output produced before it, in order: {replay:?}"
    );

    within(
        CALL_LIMIT,
        "signal_process",
        handle.signal_process(&process_id, Signal::Kill),
    )
    .await?
    .context("signal_process KILL")?;
    let exit = attached.wait_exit(WAIT).await?;
    assert_eq!(
        exit.signal,
        Some(9),
        "the killed process's exit, seen by the attached stream"
    );

    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let listed = within(CALL_LIMIT, "list_processes", handle.list_processes())
            .await?
            .context("list_processes")?;
        match listed.iter().find(|process| process.id == process_id) {
            Some(info) if info.state == ProcessState::Running => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(fail(format!(
                        "the killed process is still listed as running: {info:?}"
                    )));
                }
            }
            Some(info) => {
                assert_eq!(
                    info.signal,
                    Some(9),
                    "a killed process is listed with its signal: {info:?}"
                );
                break;
            }
            None => break,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let result = within(
        CALL_LIMIT,
        "signal_process",
        handle.signal_process("no-such-process", Signal::Term),
    )
    .await?;
    expect_code(
        result,
        ErrorCode::ProcessNotFound,
        "signal_process of an unknown id",
    )?;
    let result = within(
        CALL_LIMIT,
        "attach_process",
        handle.attach_process("no-such-process"),
    )
    .await?
    .map(|stream| stream.process_id().to_owned());
    expect_code(
        result,
        ErrorCode::ProcessNotFound,
        "attach_process of an unknown id",
    )?;
    Ok(())
}
