//! Streaming exec, PTYs and detached processes under the shim.

use std::time::Duration;

use cthulu_core::{ExecSpec, SandboxError, SandboxHandle, SandboxProvider, SandboxSpec};
use cthulu_types::{ProcessState, PtySize, Signal};

use crate::support::*;

#[tokio::test]
async fn output_streams_in_order_and_exit_comes_last() {
    let host = TestHost::new();
    let sandbox = host.sandbox().await;
    let mut stream = sandbox
        .exec_stream(ExecSpec::shell(
            "echo one; echo err >&2; read go; echo two; exit 4",
        ))
        .await
        .unwrap();
    assert!(stream.process_id().starts_with('p'));
    let mut collected = Collected::default();
    collect_until(&mut stream, &mut collected, |c| {
        c.stdout == b"one\n" && c.stderr == b"err\n"
    })
    .await;
    assert!(
        collected.exit.is_none(),
        "the program still waits for input"
    );
    stream.write_stdin(b"go\n").await.unwrap();
    collect_until(&mut stream, &mut collected, |_| false).await;
    assert_eq!(text(&collected.stdout), "one\ntwo\n");
    assert_eq!(collected.exit.unwrap().exit_code, Some(4));
    assert!(
        stream.next_event().await.is_none(),
        "nothing after the exit"
    );
    let error = stream.write_stdin(b"late").await.unwrap_err();
    assert!(
        matches!(error, SandboxError::InvalidRequest { .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn stdin_in_pieces_then_close() {
    let host = TestHost::new();
    let sandbox = host.sandbox().await;
    let mut stream = sandbox.exec_stream(ExecSpec::argv(["cat"])).await.unwrap();
    for piece in ["a", "b", "c\n", "d"] {
        stream.write_stdin(piece.as_bytes()).await.unwrap();
    }
    let big = vec![b'z'; 300_000];
    stream.write_stdin(&big).await.unwrap();
    stream.close_stdin().await.unwrap();
    let collected = collect_all(&mut stream).await;
    let mut expected = b"abc\nd".to_vec();
    expected.extend_from_slice(&big);
    assert!(collected.stdout == expected);
    assert_eq!(collected.exit.unwrap().exit_code, Some(0));
    // stdin given with the spec: written, then closed.
    let mut spec = ExecSpec::argv(["wc", "-c"]);
    spec.stdin = Some(b"12345".to_vec());
    let mut stream = sandbox.exec_stream(spec).await.unwrap();
    assert_eq!(text(&collect_all(&mut stream).await.stdout).trim(), "5");
}

#[tokio::test]
async fn signals_reach_the_process() {
    let host = TestHost::new();
    let sandbox = host.sandbox().await;
    let mut stream = sandbox
        .exec_stream(ExecSpec::shell(
            "trap 'echo got-usr1' USR1; echo ready; while true; do sleep 0.05; done",
        ))
        .await
        .unwrap();
    let mut collected = Collected::default();
    collect_until(&mut stream, &mut collected, |c| {
        c.stdout.ends_with(b"ready\n")
    })
    .await;
    stream.signal(Signal::Usr1).await.unwrap();
    collect_until(&mut stream, &mut collected, |c| {
        text(&c.stdout).contains("got-usr1")
    })
    .await;
    sandbox
        .signal_process(stream.process_id(), Signal::Term)
        .await
        .unwrap();
    collect_until(&mut stream, &mut collected, |_| false).await;
    assert_eq!(collected.exit.unwrap().signal, Some(15));
    let error = sandbox
        .signal_process(stream.process_id(), Signal::Kill)
        .await
        .unwrap_err();
    assert!(
        matches!(error, SandboxError::InvalidRequest { .. }),
        "{error:?}"
    );
    let error = sandbox
        .signal_process("pnosuchprocess", Signal::Kill)
        .await
        .unwrap_err();
    assert!(
        matches!(error, SandboxError::ProcessNotFound { .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn pty_is_a_terminal_and_resizes() {
    let host = TestHost::new();
    let sandbox = host.sandbox().await;
    let mut spec = ExecSpec::shell(
        "tty >/dev/null && echo is-a-tty; stty size; read go; stty size; echo \"term=$TERM\"",
    );
    spec.tty = Some(PtySize {
        cols: 100,
        rows: 30,
    });
    let mut stream = sandbox.exec_stream(spec).await.unwrap();
    let mut collected = Collected::default();
    collect_until(&mut stream, &mut collected, |c| {
        text(&c.stdout).contains("30 100")
    })
    .await;
    assert!(text(&collected.stdout).contains("is-a-tty"));
    stream
        .resize(PtySize {
            cols: 132,
            rows: 43,
        })
        .await
        .unwrap();
    stream.write_stdin(b"go\r").await.unwrap();
    collect_until(&mut stream, &mut collected, |_| false).await;
    let output = text(&collected.stdout);
    assert!(output.contains("43 132"), "{output}");
    // The host's TERM when it has one, a default otherwise: never none.
    assert!(
        output.contains("term=") && !output.contains("term=\r"),
        "{output}"
    );
    assert_eq!(collected.exit.unwrap().exit_code, Some(0));
    assert!(
        collected.stderr.is_empty(),
        "a terminal's output is all on stdout"
    );

    // Ctrl-C interrupts the foreground program.
    let mut spec = ExecSpec::shell("sleep 1000");
    spec.tty = Some(PtySize { cols: 80, rows: 24 });
    let mut stream = sandbox.exec_stream(spec).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream.write_stdin(b"\x03").await.unwrap();
    let exit = collect_all(&mut stream).await.exit.unwrap();
    assert_eq!(exit.signal, Some(2), "{exit:?}");

    // Resizing a stream without a terminal is refused.
    let mut plain = sandbox.exec_stream(ExecSpec::argv(["true"])).await.unwrap();
    let error = plain
        .resize(PtySize { cols: 10, rows: 10 })
        .await
        .unwrap_err();
    assert!(
        matches!(error, SandboxError::InvalidRequest { .. }),
        "{error:?}"
    );
}

async fn pid_of(host: &TestHost, sandbox: &dyn SandboxHandle, file: &str) -> i32 {
    let path = host.workspace(sandbox).join(file);
    eventually("the pid file", || path.exists()).await;
    eventually("the pid file to be written", || {
        std::fs::read_to_string(&path).is_ok_and(|raw| raw.ends_with('\n'))
    })
    .await;
    std::fs::read_to_string(&path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn dropping_a_stream_kills_its_process_unless_detached() {
    let host = TestHost::new();
    let sandbox = host.sandbox().await;
    let stream = sandbox
        .exec_stream(ExecSpec::shell("echo $$ > attached.pid; exec sleep 1000"))
        .await
        .unwrap();
    let process_id = stream.process_id().to_owned();
    let pid = pid_of(&host, &*sandbox, "attached.pid").await;
    drop(stream);
    eventually("the process of the dropped stream to die", || !alive(pid)).await;
    let listed = sandbox.list_processes().await.unwrap();
    let record = listed
        .iter()
        .find(|process| process.id == process_id)
        .unwrap();
    assert_eq!(record.state, ProcessState::Exited);
    assert_eq!(record.signal, Some(9));

    let mut spec = ExecSpec::shell("echo $$ > detached.pid; echo started; exec sleep 1000");
    spec.detach = true;
    let stream = sandbox.exec_stream(spec).await.unwrap();
    let process_id = stream.process_id().to_owned();
    let pid = pid_of(&host, &*sandbox, "detached.pid").await;
    drop(stream);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(alive(pid), "a detached process survives its stream");
    let listed = sandbox.list_processes().await.unwrap();
    let record = listed
        .iter()
        .find(|process| process.id == process_id)
        .unwrap();
    assert_eq!(
        (record.state, record.detached),
        (ProcessState::Running, true)
    );
    sandbox
        .signal_process(&process_id, Signal::Kill)
        .await
        .unwrap();
    eventually("the killed detached process to die", || !alive(pid)).await;
}

#[tokio::test]
async fn a_detached_process_survives_a_restart_and_replays_its_output() {
    let mut host = TestHost::new();
    let sandbox = host.sandbox().await;
    let sandbox_id = sandbox.id().clone();
    let mut spec = ExecSpec::shell(
        "echo $$ > server.pid; echo before; echo warn >&2; read line; echo \"after $line\"; exec sleep 1000",
    );
    spec.detach = true;
    let mut stream = sandbox.exec_stream(spec).await.unwrap();
    let process_id = stream.process_id().to_owned();
    let mut collected = Collected::default();
    collect_until(&mut stream, &mut collected, |c| c.stdout == b"before\n").await;
    let pid = pid_of(&host, &*sandbox, "server.pid").await;

    // The server goes away: every stream, handle and the provider.
    drop(stream);
    drop(sandbox);
    host.restart();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(alive(pid), "the detached process outlives the server");

    let sandbox = host
        .provider
        .attach(&sandbox_id, &SandboxSpec::default())
        .await
        .unwrap();
    let listed = sandbox.list_processes().await.unwrap();
    let record = listed
        .iter()
        .find(|process| process.id == process_id)
        .unwrap();
    assert_eq!(record.state, ProcessState::Running);
    let mut stream = sandbox.attach_process(&process_id).await.unwrap();
    let mut replayed = Collected::default();
    collect_until(&mut stream, &mut replayed, |c| {
        c.stdout == b"before\n" && c.stderr == b"warn\n"
    })
    .await;
    stream.write_stdin(b"input\n").await.unwrap();
    collect_until(&mut stream, &mut replayed, |c| {
        c.stdout.ends_with(b"after input\n")
    })
    .await;
    stream.signal(Signal::Kill).await.unwrap();
    collect_until(&mut stream, &mut replayed, |_| false).await;
    assert_eq!(replayed.exit.unwrap().signal, Some(9));
    drop(stream);

    // Once the shim is gone too, the recorded exit and output are still there.
    let shim_gone = host
        .root()
        .join(sandbox_id.as_str())
        .join("procs")
        .join(&process_id)
        .join("sock");
    eventually("the shim to go", || !shim_gone.exists()).await;
    host.restart();
    let sandbox = host
        .provider
        .attach(&sandbox_id, &SandboxSpec::default())
        .await
        .unwrap();
    let mut stream = sandbox.attach_process(&process_id).await.unwrap();
    let again = collect_all(&mut stream).await;
    assert_eq!(text(&again.stdout), "before\nafter input\n");
    assert_eq!(text(&again.stderr), "warn\n");
    assert_eq!(again.exit.unwrap().signal, Some(9));
    let listed = sandbox.list_processes().await.unwrap();
    assert_eq!(listed[0].state, ProcessState::Exited);
    sandbox.destroy().await.unwrap();
}

#[tokio::test]
async fn a_process_whose_shim_died_is_lost() {
    let mut host = TestHost::new();
    let sandbox = host.sandbox().await;
    let sandbox_id = sandbox.id().clone();
    let mut spec = ExecSpec::shell("exec sleep 1000");
    spec.detach = true;
    let stream = sandbox.exec_stream(spec).await.unwrap();
    let process_id = stream.process_id().to_owned();
    drop(stream);
    drop(sandbox);
    host.restart();
    let process_dir = host
        .root()
        .join(sandbox_id.as_str())
        .join("procs")
        .join(&process_id);
    let pids: serde_json::Value =
        serde_json::from_slice(&std::fs::read(process_dir.join("pid.json")).unwrap()).unwrap();
    let shim_pid = pids["shim_pid"].as_i64().unwrap() as i32;
    let child_pid = pids["child_pid"].as_i64().unwrap() as i32;
    // The shim dies without a word (as in a crash or a reboot).
    std::process::Command::new("kill")
        .args(["-KILL", &shim_pid.to_string()])
        .status()
        .unwrap();
    eventually("the shim to die", || !alive(shim_pid)).await;
    let sandbox = host
        .provider
        .attach(&sandbox_id, &SandboxSpec::default())
        .await
        .unwrap();
    let listed = sandbox.list_processes().await.unwrap();
    assert_eq!(listed[0].state, ProcessState::Lost);
    let error = sandbox.attach_process(&process_id).await.err().unwrap();
    assert!(
        matches!(error, SandboxError::InvalidRequest { .. }),
        "{error:?}"
    );
    // Destroy still reaches the orphaned process.
    sandbox.destroy().await.unwrap();
    eventually("the orphaned process to die", || !alive(child_pid)).await;
}

#[tokio::test]
async fn streamed_output_is_capped_and_timed_out() {
    let host = TestHost::new();
    let sandbox = host.sandbox().await;
    let mut spec = ExecSpec::shell("head -c 100000 /dev/zero; echo done >&2");
    spec.max_output_bytes = 1000;
    let mut stream = sandbox.exec_stream(spec).await.unwrap();
    let collected = collect_all(&mut stream).await;
    assert_eq!(collected.stdout.len(), 1000);
    assert_eq!(text(&collected.stderr), "done\n");
    let exit = collected.exit.unwrap();
    assert!(exit.truncated && exit.exit_code == Some(0), "{exit:?}");

    let mut spec = ExecSpec::shell("sleep 1000 & echo $! > bg.pid; sleep 1000");
    spec.timeout = Duration::from_secs(1);
    let mut stream = sandbox.exec_stream(spec).await.unwrap();
    let exit = collect_all(&mut stream).await.exit.unwrap();
    assert!(exit.timed_out && exit.exit_code.is_none(), "{exit:?}");
    let pid = pid_of(&host, &*sandbox, "bg.pid").await;
    eventually("the backgrounded child to die", || !alive(pid)).await;
}

#[tokio::test]
async fn a_missing_program_is_refused_at_start() {
    let host = TestHost::new();
    let sandbox = host.sandbox().await;
    let error = sandbox
        .exec_stream(ExecSpec::argv(["no-such-program-anywhere"]))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(error, SandboxError::ProgramNotFound { .. }),
        "{error:?}"
    );
    assert!(sandbox.list_processes().await.unwrap().is_empty());
}

#[tokio::test]
async fn finished_processes_are_pruned_past_a_hundred() {
    let host = TestHost::new();
    let sandbox = host.sandbox().await;
    let mut first = None;
    for _ in 0..105 {
        let mut stream = sandbox.exec_stream(ExecSpec::argv(["true"])).await.unwrap();
        first.get_or_insert_with(|| stream.process_id().to_owned());
        assert_eq!(
            collect_all(&mut stream).await.exit.unwrap().exit_code,
            Some(0)
        );
    }
    let listed = sandbox.list_processes().await.unwrap();
    assert_eq!(listed.len(), 100);
    let first = first.unwrap();
    assert!(
        listed.iter().all(|process| process.id != first),
        "the oldest go first"
    );
    let procs = host.root().join(sandbox.id().as_str()).join("procs");
    assert_eq!(std::fs::read_dir(&procs).unwrap().count(), 100);
    let error = sandbox.attach_process(&first).await.err().unwrap();
    assert!(
        matches!(error, SandboxError::ProcessNotFound { .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn socket_paths_longer_than_an_address_still_work() {
    let dir = tempfile::tempdir().unwrap();
    // Longer than the 108 bytes a Unix socket address holds, once the sandbox and process
    // ids are added.
    let root = dir
        .path()
        .join("a-root-directory-with-a-rather-long-name-".repeat(3));
    let provider = provider_on(&root);
    let sandbox = provider
        .provision(
            &cthulu_types::SandboxId::generate(),
            &SandboxSpec::default(),
        )
        .await
        .unwrap();
    let mut spec = ExecSpec::shell("echo hello; read line; echo \"got $line\"");
    spec.detach = true;
    let stream = sandbox.exec_stream(spec).await.unwrap();
    let process_id = stream.process_id().to_owned();
    assert!(
        root.join(sandbox.id().as_str())
            .join("procs")
            .join(&process_id)
            .join("sock")
            .as_os_str()
            .len()
            > 108
    );
    drop(stream);
    let mut stream = sandbox.attach_process(&process_id).await.unwrap();
    stream.write_stdin(b"more\n").await.unwrap();
    let collected = collect_all(&mut stream).await;
    assert_eq!(text(&collected.stdout), "hello\ngot more\n");
    sandbox.destroy().await.unwrap();
}
