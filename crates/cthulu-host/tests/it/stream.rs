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
    // The shim records the exit just after the process is gone: poll the list for it.
    let mut record = None;
    for _ in 0..200 {
        let listed = sandbox.list_processes().await.unwrap();
        let found = listed
            .into_iter()
            .find(|process| process.id == process_id)
            .unwrap();
        if found.state != ProcessState::Running {
            record = Some(found);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let record = record.expect("the dropped stream's process is listed as ended within 10 s");
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
    // Its main thread can show as a zombie while its other threads still hold the socket
    // open: wait until the socket refuses connections.
    let socket = process_dir.join("sock");
    eventually("the shim's socket to close", || {
        std::os::unix::net::UnixStream::connect(&socket).is_err()
    })
    .await;
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

// ---------------------------------------------------------------------------------------
// Every byte of a stream, in order: output produced before the server's first connection
// to the shim, under a slow consumer, and up to the cap.

/// How a test reads a stream: at once, slowly for its first bytes, or with one long pause.
#[derive(Clone, Copy, PartialEq)]
enum Pace {
    Fast,
    /// A pause after the first event (every buffer on the way fills up and the program
    /// waits), then a short sleep before each of the next few hundred events while less
    /// than this many bytes have arrived.
    SlowFor(usize),
    /// One long pause once this many bytes have arrived.
    PauseAt(usize),
}

/// Reads a stream to its exit, handing every output chunk to `check` in order.
async fn consume(
    stream: &mut Box<dyn cthulu_core::ExecStream>,
    pace: Pace,
    mut check: impl FnMut(cthulu_core::ExecEvent),
) -> cthulu_core::ExitInfo {
    let deadline = tokio::time::Instant::now() + WAIT * 4;
    let mut received = 0usize;
    let mut events = 0usize;
    let mut paused = false;
    loop {
        if let Pace::SlowFor(limit) = pace {
            if events == 1 {
                tokio::time::sleep(Duration::from_millis(1000)).await;
            } else if received < limit && events < 400 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        if let Pace::PauseAt(at) = pace {
            if received >= at && !paused {
                paused = true;
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
        }
        let event = tokio::time::timeout_at(deadline, stream.next_event())
            .await
            .unwrap_or_else(|_| panic!("timed out after {received} bytes"));
        events += 1;
        match event {
            Some(cthulu_core::ExecEvent::Exit(exit)) => {
                assert!(
                    stream.next_event().await.is_none(),
                    "nothing after the exit"
                );
                return exit;
            }
            Some(event) => {
                if let cthulu_core::ExecEvent::Stdout(data) | cthulu_core::ExecEvent::Stderr(data) =
                    &event
                {
                    received += data.len();
                }
                check(event);
            }
            None => panic!("the stream ended without an exit after {received} bytes"),
        }
    }
}

fn uncapped(script: &str) -> ExecSpec {
    let mut spec = ExecSpec::shell(script);
    spec.max_output_bytes = u64::MAX;
    spec
}

async fn stream_zeros(sandbox: &dyn SandboxHandle, pace: Pace, rounds: usize) {
    const TOTAL: usize = 64 << 20;
    for round in 0..rounds {
        let mut stream = sandbox
            .exec_stream(uncapped("head -c 64M /dev/zero"))
            .await
            .unwrap();
        let mut count = 0usize;
        let exit = consume(&mut stream, pace, |event| match event {
            cthulu_core::ExecEvent::Stdout(data) => {
                assert!(data.iter().all(|&byte| byte == 0), "round {round}");
                count += data.len();
            }
            other => panic!("round {round}: unexpected {other:?}"),
        })
        .await;
        assert_eq!(count, TOTAL, "round {round}: every byte, {pace:?}");
        assert_eq!(exit.exit_code, Some(0), "round {round}: {exit:?}");
        assert!(!exit.truncated, "round {round}: {exit:?}");
    }
}

/// Checks that the output is exactly the lines `1`, `2`, … in order.
#[derive(Default)]
struct Sequence {
    next: u64,
    value: u64,
    digits: usize,
}

impl Sequence {
    fn feed(&mut self, data: &[u8]) {
        for &byte in data {
            if byte == b'\n' {
                assert!(self.digits > 0, "an empty line after {}", self.next);
                assert_eq!(self.value, self.next + 1, "the line after {}", self.next);
                self.next = self.value;
                self.value = 0;
                self.digits = 0;
            } else {
                assert!(
                    byte.is_ascii_digit(),
                    "a stray {byte:#04x} after {}",
                    self.next
                );
                self.value = self.value * 10 + u64::from(byte - b'0');
                self.digits += 1;
            }
        }
    }

    /// The last complete line, checking nothing follows it.
    fn last(&self) -> u64 {
        assert_eq!(self.digits, 0, "a partial last line after {}", self.next);
        self.next
    }
}

impl std::fmt::Debug for Pace {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pace::Fast => write!(formatter, "fast consumer"),
            Pace::SlowFor(bytes) => write!(formatter, "slow consumer for {bytes} bytes"),
            Pace::PauseAt(bytes) => write!(formatter, "consumer pausing at {bytes} bytes"),
        }
    }
}

async fn stream_sequence(sandbox: &dyn SandboxHandle, pace: Pace, rounds: usize) {
    for round in 0..rounds {
        let mut stream = sandbox
            .exec_stream(uncapped("seq 1 3000000"))
            .await
            .unwrap();
        let mut sequence = Sequence::default();
        let exit = consume(&mut stream, pace, |event| match event {
            cthulu_core::ExecEvent::Stdout(data) => sequence.feed(&data),
            other => panic!("round {round}: unexpected {other:?}"),
        })
        .await;
        assert_eq!(sequence.last(), 3_000_000, "round {round}, {pace:?}");
        assert_eq!(exit.exit_code, Some(0), "round {round}: {exit:?}");
        assert!(!exit.truncated, "round {round}: {exit:?}");
    }
}

#[tokio::test]
async fn fast_output_arrives_whole_to_a_fast_consumer() {
    let host = TestHost::new();
    let sandbox = host.sandbox().await;
    stream_zeros(&*sandbox, Pace::Fast, 5).await;
}

#[tokio::test]
async fn fast_lines_arrive_whole_and_in_order_to_a_fast_consumer() {
    let host = TestHost::new();
    let sandbox = host.sandbox().await;
    stream_sequence(&*sandbox, Pace::Fast, 5).await;
}

#[tokio::test]
async fn fast_output_arrives_whole_to_a_slow_consumer() {
    let host = TestHost::new();
    let sandbox = host.sandbox().await;
    stream_zeros(&*sandbox, Pace::SlowFor(8 << 20), 3).await;
}

#[tokio::test]
async fn fast_lines_arrive_whole_and_in_order_to_a_slow_consumer() {
    let host = TestHost::new();
    let sandbox = host.sandbox().await;
    stream_sequence(&*sandbox, Pace::SlowFor(8 << 20), 3).await;
}

#[tokio::test]
async fn the_tail_of_the_output_reaches_a_consumer_slow_to_the_end() {
    // The program is done long before the consumer: what it wrote last still arrives,
    // whether the consumer is slow throughout or pauses just before the end.
    let host = TestHost::new();
    let sandbox = host.sandbox().await;
    let bytes = |last: u32| -> usize { (1..=last).map(|n| n.to_string().len() + 1).sum() };
    for (round, (last, pace)) in [
        (300_000u32, Pace::SlowFor(usize::MAX)),
        (2_500_000, Pace::PauseAt(bytes(2_500_000) - (1 << 20))),
    ]
    .into_iter()
    .enumerate()
    {
        let mut stream = sandbox
            .exec_stream(uncapped(&format!("seq 1 {last}")))
            .await
            .unwrap();
        let mut sequence = Sequence::default();
        let exit = consume(&mut stream, pace, |event| match event {
            cthulu_core::ExecEvent::Stdout(data) => sequence.feed(&data),
            other => panic!("round {round}: unexpected {other:?}"),
        })
        .await;
        assert_eq!(sequence.last(), u64::from(last), "round {round}, {pace:?}");
        assert!(exit.exit_code == Some(0) && !exit.truncated, "{exit:?}");
    }
}

#[tokio::test]
async fn a_pty_stream_keeps_output_written_just_before_the_exit() {
    let host = TestHost::new();
    let sandbox = host.sandbox().await;
    for round in 0..5 {
        let mut spec = ExecSpec::shell("seq 1 20000; printf end");
        spec.tty = Some(PtySize { cols: 80, rows: 24 });
        let mut stream = sandbox.exec_stream(spec).await.unwrap();
        let collected = collect_all(&mut stream).await;
        let output = text(&collected.stdout).replace("\r\n", "\n");
        let expected: String = (1..=20000).map(|n| format!("{n}\n")).collect::<String>() + "end";
        assert!(output == expected, "round {round}: {} bytes", output.len());
        assert_eq!(collected.exit.unwrap().exit_code, Some(0));
    }
}

#[tokio::test]
async fn the_output_cap_cuts_a_stream_exactly() {
    let host = TestHost::new();
    let sandbox = host.sandbox().await;
    // Each channel capped on its own, exactly; the program still runs to its end.
    let mut spec = ExecSpec::shell("head -c 20M /dev/zero; seq 1 1000000 >&2; echo done >&2");
    spec.max_output_bytes = 3_000_000;
    let mut stream = sandbox.exec_stream(spec).await.unwrap();
    let (mut stdout, mut stderr) = (0usize, Vec::new());
    let exit = consume(&mut stream, Pace::Fast, |event| match event {
        cthulu_core::ExecEvent::Stdout(data) => {
            assert!(data.iter().all(|&byte| byte == 0));
            stdout += data.len();
        }
        cthulu_core::ExecEvent::Stderr(data) => stderr.extend_from_slice(&data),
        other => panic!("unexpected {other:?}"),
    })
    .await;
    assert_eq!(stdout, 3_000_000);
    let expected: Vec<u8> = (1..=1_000_000)
        .flat_map(|n: u32| format!("{n}\n").into_bytes())
        .take(3_000_000)
        .collect();
    assert!(
        stderr == expected,
        "stderr is the first 3 MB of the sequence"
    );
    assert!(exit.truncated && exit.exit_code == Some(0), "{exit:?}");

    // Exactly the cap is not truncated; slow reading changes nothing.
    let mut spec = ExecSpec::shell("head -c 3000000 /dev/zero");
    spec.max_output_bytes = 3_000_000;
    let mut stream = sandbox.exec_stream(spec).await.unwrap();
    let mut count = 0usize;
    let exit = consume(&mut stream, Pace::SlowFor(1 << 20), |event| {
        if let cthulu_core::ExecEvent::Stdout(data) = event {
            count += data.len();
        }
    })
    .await;
    assert_eq!(count, 3_000_000);
    assert!(!exit.truncated && exit.exit_code == Some(0), "{exit:?}");
}

/// The shim on its own, with a client that connects late: what the process wrote before
/// the first client came is all there, not just the last MiB the shim keeps for replays.
#[test]
fn a_shim_holds_output_back_until_its_first_client() {
    use std::io::{BufRead, Write};
    use std::os::unix::net::UnixStream;

    use cthulu_host::shim::protocol::{read_frame, ClientFrame, Role, ShimFrame, PROTOCOL_VERSION};

    let dir = tempfile::tempdir().unwrap();
    let process_dir = dir.path().join("p");
    std::fs::create_dir(&process_dir).unwrap();
    let spec = serde_json::json!({
        "argv": ["sh", "-c", "head -c 8388608 /dev/zero; echo done >&2"],
        "env": {"PATH": std::env::var("PATH").unwrap()},
        "cwd": dir.path(),
        "tty": null,
        "detach": true,
        "timeout_ms": 60_000,
        "max_output_bytes": u64::MAX,
    });
    std::fs::write(process_dir.join("spec.json"), spec.to_string()).unwrap();
    let mut shim = std::process::Command::new(env!("CARGO_BIN_EXE_cthulu-shim"))
        .arg(&process_dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut handshake = String::new();
    std::io::BufReader::new(shim.stdout.take().unwrap())
        .read_line(&mut handshake)
        .unwrap();
    assert!(handshake.contains("started"), "{handshake}");
    // Long enough for the process to have written everything if nothing held it back.
    std::thread::sleep(Duration::from_millis(1000));

    let mut socket = UnixStream::connect(process_dir.join("sock")).unwrap();
    socket
        .write_all(
            &ClientFrame::Hello {
                version: PROTOCOL_VERSION,
                role: Role::Attach,
            }
            .encode(),
        )
        .unwrap();
    socket.set_read_timeout(Some(WAIT)).unwrap();
    let (mut stdout, mut stderr) = (0usize, Vec::new());
    let exit = loop {
        let (kind, payload) = read_frame(&mut socket).unwrap().expect("a frame");
        match ShimFrame::decode(kind, &payload).unwrap() {
            ShimFrame::Output { channel, data } => match channel {
                cthulu_host::shim::protocol::Channel::Stdout => stdout += data.len(),
                cthulu_host::shim::protocol::Channel::Stderr => stderr.extend(data),
            },
            ShimFrame::Exit(exit) => break exit,
            ShimFrame::Refused(reason) => panic!("refused: {reason}"),
        }
    };
    assert_eq!(stdout, 8 << 20);
    assert_eq!(text(&stderr), "done\n");
    assert_eq!(exit.exit_code, Some(0));
    assert!(!exit.truncated);
    drop(socket);
    assert!(shim.wait().unwrap().success());
}

// ---------------------------------------------------------------------------------------
// Attaching to a process that was just killed: the replay and the exit, every time.

#[tokio::test]
async fn attaching_right_after_a_kill_replays_and_exits() {
    let host = TestHost::new();
    let sandbox = host.sandbox().await;
    // Several frames of replay (a part of it would show), well under the 1 MiB kept.
    let expected: String = (1..=40_000).map(|n| format!("{n}\n")).collect();
    for round in 0..20 {
        let mut spec = ExecSpec::shell("seq 1 40000; echo err >&2; exec sleep 1000");
        spec.detach = true;
        let mut first = sandbox.exec_stream(spec).await.unwrap();
        let process_id = first.process_id().to_owned();
        let mut collected = Collected::default();
        collect_until(&mut first, &mut collected, |c| {
            c.stdout.len() == expected.len() && c.stderr == b"err\n"
        })
        .await;
        // Half the rounds keep the first stream (the shim then lingers to deliver the exit
        // to it), half let it go (the shim exits as soon as it recorded the exit).
        let kept = (round % 2 == 0).then_some(first);
        sandbox
            .signal_process(&process_id, Signal::Kill)
            .await
            .unwrap();
        // Different moments of the shim's ending.
        if round % 4 >= 2 {
            tokio::time::sleep(Duration::from_millis((round % 5) as u64)).await;
        }
        let mut stream = sandbox
            .attach_process(&process_id)
            .await
            .unwrap_or_else(|error| panic!("round {round}: attach: {error:?}"));
        // What the CLI does when its stdin is not a terminal: input racing the exit is
        // accepted (and goes nowhere), not an error.
        stream
            .close_stdin()
            .await
            .unwrap_or_else(|error| panic!("round {round}: close_stdin: {error:?}"));
        if round % 3 == 0 {
            stream
                .signal(Signal::Int)
                .await
                .unwrap_or_else(|error| panic!("round {round}: signal: {error:?}"));
        }
        let replayed = collect_all(&mut stream).await;
        assert!(
            text(&replayed.stdout) == expected,
            "round {round}: {} bytes replayed",
            replayed.stdout.len()
        );
        assert_eq!(text(&replayed.stderr), "err\n", "round {round}");
        let exit = replayed
            .exit
            .unwrap_or_else(|| panic!("round {round}: no exit"));
        assert_eq!(exit.signal, Some(9), "round {round}: {exit:?}");
        // Once the exit was delivered, the process is gone for good.
        let error = stream.write_stdin(b"late").await.unwrap_err();
        assert!(
            matches!(&error, SandboxError::InvalidRequest { message, .. } if message.contains("has exited")),
            "round {round}: {error:?}"
        );
        let error = sandbox
            .signal_process(&process_id, Signal::Kill)
            .await
            .unwrap_err();
        assert!(
            matches!(&error, SandboxError::InvalidRequest { message, .. } if message.contains("has exited")),
            "round {round}: {error:?}"
        );
        if let Some(mut first) = kept {
            let rest = collect_all(&mut first).await;
            assert_eq!(rest.exit.unwrap().signal, Some(9), "round {round}");
        }
    }
}
