//! Streamed processes under the namespace backend's shim: terminals of the sandbox's own
//! devpts, detached processes across a restart, nothing left after destroy, and nothing
//! of the host within reach of a command on a terminal.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cthulu_core::{ExecEvent, ExecSpec, ExecStream, ExitInfo};
use cthulu_types::{ProcessState, PtySize, Signal};

use crate::support::{alive, sh_ok, Fixture};

const WAIT: Duration = Duration::from_secs(30);

/// Output of a stream so far, and its exit once it came.
#[derive(Default)]
struct Seen {
    output: Vec<u8>,
    exit: Option<ExitInfo>,
}

impl Seen {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.output).replace('\r', "")
    }

    /// Reads events until the output holds `needle` (or the exit comes first).
    async fn until(&mut self, stream: &mut Box<dyn ExecStream>, needle: &str) {
        let reading = async {
            while !self.text().contains(needle) && self.exit.is_none() {
                match stream.next_event().await {
                    Some(ExecEvent::Stdout(chunk) | ExecEvent::Stderr(chunk)) => {
                        self.output.extend_from_slice(&chunk)
                    }
                    Some(ExecEvent::Exit(exit)) => self.exit = Some(exit),
                    None => break,
                }
            }
        };
        tokio::time::timeout(WAIT, reading)
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} within {WAIT:?}: {:?}", self.text()));
        assert!(
            self.text().contains(needle),
            "the stream ended without {needle:?}: {:?} {:?}",
            self.text(),
            self.exit
        );
    }

    /// Reads events until the exit.
    async fn exit(&mut self, stream: &mut Box<dyn ExecStream>) -> ExitInfo {
        let reading = async {
            while self.exit.is_none() {
                match stream.next_event().await {
                    Some(ExecEvent::Stdout(chunk) | ExecEvent::Stderr(chunk)) => {
                        self.output.extend_from_slice(&chunk)
                    }
                    Some(ExecEvent::Exit(exit)) => self.exit = Some(exit),
                    None => panic!("the stream ended without an exit: {:?}", self.text()),
                }
            }
        };
        tokio::time::timeout(WAIT, reading)
            .await
            .unwrap_or_else(|_| panic!("no exit within {WAIT:?}: {:?}", self.text()));
        self.exit.expect("read until the exit")
    }
}

fn on_terminal(mut spec: ExecSpec) -> ExecSpec {
    spec.tty = Some(PtySize { cols: 80, rows: 24 });
    spec
}

fn pid_record(sandbox_dir: &Path, process_id: &str) -> serde_json::Value {
    let path = sandbox_dir.join("procs").join(process_id).join("pid.json");
    let bytes = std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    serde_json::from_slice(&bytes).expect("pid.json")
}

/// The pid namespace of a host process, as `/proc/<pid>/ns/pid` names it.
fn pid_namespace(pid: i32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()
}

/// Live host processes in pid namespace `namespace`, or whose command line names `dir`.
fn processes_of(namespace: &Path, dir: &Path) -> Vec<String> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if !alive(pid) {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let names_dir = cmdline.windows(needle.len()).any(|window| window == needle);
        if names_dir || pid_namespace(pid).as_deref() == Some(namespace) {
            found.push(format!(
                "{pid} ({})",
                String::from_utf8_lossy(&cmdline).replace('\0', " ")
            ));
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn a_terminal_is_one_of_the_sandboxs_devpts_and_controls_its_session() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let (_sandbox_id, handle) = fixture.sandbox().await;
    // /proc/<pid>/stat: pid (comm) state ppid pgrp session tty_nr ...
    let mut stream = handle
        .exec_stream(on_terminal(ExecSpec::shell(
            "tty; ls -1 /dev/pts; echo $$; cut -d' ' -f6,7 /proc/$$/stat; echo end",
        )))
        .await
        .unwrap();
    let mut seen = Seen::default();
    assert_eq!(seen.exit(&mut stream).await.exit_code, Some(0));
    let text = seen.text();
    let lines: Vec<&str> = text.lines().collect();
    let number = lines[0]
        .strip_prefix("/dev/pts/")
        .unwrap_or_else(|| panic!("`tty` must name a terminal of /dev/pts: {text:?}"));
    assert!(
        number.parse::<u32>().is_ok(),
        "`tty` must name /dev/pts/<number>: {text:?}"
    );
    // The sandbox's devpts is its own instance: its terminals and ptmx are there.
    assert!(
        lines.contains(&number) && lines.contains(&"ptmx"),
        "/dev/pts inside must list the terminal and ptmx: {text:?}"
    );
    let [.., shell, session_and_tty, end] = lines[..] else {
        panic!("{text:?}");
    };
    let (session, tty_nr) = session_and_tty.split_once(' ').expect("two fields");
    assert_eq!(session, shell, "the command leads a session of its own");
    assert_ne!(tty_nr, "0", "the terminal is its controlling terminal");
    assert_eq!(end, "end");
    handle.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn dropping_a_terminal_stream_kills_every_job_of_its_session() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let (_sandbox_id, handle) = fixture.sandbox().await;
    // With job control the background job gets a process group of its own: killing the
    // shell's group alone would leave it.
    let mut stream = handle
        .exec_stream(on_terminal(ExecSpec::shell(
            "set -m; sleep 1000 & echo $! > job.pid; \
             echo groups $$ $(cut -d' ' -f5 /proc/$!/stat) ready; exec sleep 1000",
        )))
        .await
        .unwrap();
    let mut seen = Seen::default();
    seen.until(&mut stream, "ready").await;
    let text = seen.text();
    let groups: Vec<&str> = text
        .lines()
        .find_map(|line| line.strip_prefix("groups "))
        .expect("the groups line")
        .split_whitespace()
        .collect();
    assert_ne!(
        groups[0], groups[1],
        "the job has a group of its own: {text:?}"
    );
    drop(stream);
    let deadline = tokio::time::Instant::now() + WAIT;
    while sh_ok(
        &handle,
        "kill -0 $(cat job.pid) 2>/dev/null && echo alive || echo gone",
    )
    .await
    .trim()
        == "alive"
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the background job of a dropped terminal still runs"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    handle.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_detached_process_survives_a_restart_and_is_reattached() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let (sandbox_id, handle) = fixture.sandbox().await;
    let mut spec = ExecSpec::shell(
        "echo before-restart; while [ ! -e go ]; do sleep 0.05; done; echo after-restart; \
         exec sleep 1000",
    );
    spec.detach = true;
    let mut stream = handle.exec_stream(spec).await.unwrap();
    Seen::default().until(&mut stream, "before-restart").await;
    let process_id = stream.process_id().to_owned();
    drop(stream);
    drop(handle);

    let handle = fixture.reattached(&sandbox_id).await;
    let listed = handle.list_processes().await.unwrap();
    let info = listed
        .iter()
        .find(|process| process.id == process_id)
        .unwrap_or_else(|| panic!("{process_id} is not listed after a restart: {listed:?}"));
    assert_eq!((info.state, info.detached), (ProcessState::Running, true));

    sh_ok(&handle, "touch go").await;
    let mut attached = handle.attach_process(&process_id).await.unwrap();
    let mut seen = Seen::default();
    seen.until(&mut attached, "after-restart").await;
    let text = seen.text();
    assert!(
        text.find("before-restart") < text.find("after-restart"),
        "the attach replays the output from before the restart first: {text:?}"
    );
    handle
        .signal_process(&process_id, Signal::Kill)
        .await
        .unwrap();
    assert_eq!(seen.exit(&mut attached).await.signal, Some(9));
    let listed = handle.list_processes().await.unwrap();
    let info = listed
        .iter()
        .find(|process| process.id == process_id)
        .unwrap();
    assert_eq!((info.state, info.signal), (ProcessState::Exited, Some(9)));
    handle.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn destroy_leaves_no_shim_and_no_process_of_the_sandbox() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let (sandbox_id, handle) = fixture.sandbox().await;
    let dir = fixture.dir(&sandbox_id);
    let init_pid = fixture.init_pid(&sandbox_id);
    let namespace = pid_namespace(init_pid).expect("init's pid namespace");

    let mut detached = ExecSpec::shell("echo ready; exec sleep 1000");
    detached.detach = true;
    let mut detached = handle.exec_stream(detached).await.unwrap();
    Seen::default().until(&mut detached, "ready").await;
    // A terminal whose shell left a job in a group of its own.
    let mut terminal = handle
        .exec_stream(on_terminal(ExecSpec::shell(
            "set -m; sleep 1000 & echo ready; exec sleep 1000",
        )))
        .await
        .unwrap();
    Seen::default().until(&mut terminal, "ready").await;
    let shims: Vec<i32> = [detached.process_id(), terminal.process_id()]
        .iter()
        .map(|process_id| pid_record(&dir, process_id)["shim_pid"].as_i64().unwrap() as i32)
        .collect();
    assert!(shims.iter().all(|pid| alive(*pid)));
    let before = processes_of(&namespace, &dir);
    // init, the two sleeps of the terminal, the detached sleep; two shims.
    assert!(before.len() >= 6, "{before:#?}");

    handle.destroy().await.unwrap();
    for pid in shims {
        assert!(!alive(pid), "shim {pid} outlived destroy");
    }
    let after = processes_of(&namespace, &dir);
    assert!(after.is_empty(), "left after destroy: {after:#?}");
    assert!(!dir.exists());
    // The streams learn how their processes ended: killed with the sandbox.
    for stream in [&mut detached, &mut terminal] {
        let exit = Seen::default().exit(stream).await;
        assert_eq!(exit.signal, Some(9), "{exit:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_command_on_a_terminal_holds_nothing_that_reaches_the_host() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let (sandbox_id, handle) = fixture.sandbox().await;
    // What the command inherits: only its terminal on 0, 1 and 2 (ls adds 3, the
    // directory it reads). No master, no connection to init or to the shim.
    let mut listing = handle
        .exec_stream(on_terminal(ExecSpec::argv(["ls", "-l", "/proc/self/fd"])))
        .await
        .unwrap();
    let mut seen = Seen::default();
    assert_eq!(seen.exit(&mut listing).await.exit_code, Some(0));
    let text = seen.text();
    let fds: Vec<&str> = text
        .lines()
        .filter(|line| line.contains(" -> "))
        .map(|line| line.split(" -> ").nth(1).unwrap_or_default())
        .collect();
    assert_eq!(fds.len(), 4, "{text:?}");
    assert!(
        fds[..3]
            .iter()
            .all(|target| target.starts_with("/dev/pts/")),
        "stdin, stdout and stderr are the sandbox's terminal: {text:?}"
    );

    // The shim (a host process) and the server cannot be seen or signalled; typed into
    // the terminal, their pids reach nothing.
    let mut probe = handle
        .exec_stream(on_terminal(ExecSpec::shell(
            "echo ready; read shim; read server; \
             for pid in $shim $server; do \
               if kill -0 $pid 2>/dev/null || [ -e /proc/$pid ]; then echo REACHED $pid; fi; \
             done; echo probed",
        )))
        .await
        .unwrap();
    let mut seen = Seen::default();
    seen.until(&mut probe, "ready").await;
    let shim = pid_record(&fixture.dir(&sandbox_id), probe.process_id())["shim_pid"]
        .as_i64()
        .unwrap();
    let server = std::process::id();
    probe
        .write_stdin(format!("{shim}\n{server}\n").as_bytes())
        .await
        .unwrap();
    seen.until(&mut probe, "probed").await;
    assert!(
        !seen.text().contains("REACHED"),
        "host processes are out of reach: {:?}",
        seen.text()
    );
    assert_eq!(seen.exit(&mut probe).await.exit_code, Some(0));
    handle.destroy().await.unwrap();
}
