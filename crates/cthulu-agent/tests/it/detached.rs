//! Detached processes: they survive their stream and the host, keep their output for
//! attaches, are listed and signalled; non-detached ones die with their session.

use std::time::{Duration, Instant};

use cthulu_guest_protocol::message::{Control, ErrorCode, Request, Signal};

use crate::host::{argv, shell, Agent};

fn wait_for_file(path: &std::path::Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if text.ends_with('\n') {
                return text;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn alive(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())) {
        Err(_) => false,
        Ok(text) => !text
            .rsplit(')')
            .next()
            .unwrap()
            .trim_start()
            .starts_with('Z'),
    }
}

#[test]
fn a_detached_process_survives_the_host_and_replays_its_output() {
    let agent = Agent::start();
    let host = agent.connect();
    let mut request = shell(
        "bg",
        "echo first; while [ ! -e go ]; do sleep 0.05; done; echo second; exit 4",
    );
    request.detached = true;
    let stream = host.start(request).unwrap();
    host.read_until(stream, "first");
    drop(host);

    std::fs::write(agent.path("go"), "").unwrap();
    let host = agent.connect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let entry = loop {
        let entry = host
            .processes()
            .into_iter()
            .find(|entry| entry.process_id == "bg")
            .expect("the detached process is listed");
        if entry.exit.is_some() || Instant::now() > deadline {
            break entry;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(entry.detached);
    assert_eq!(entry.exit.unwrap().code, Some(4));
    for _ in 0..2 {
        let stream = host.attach("bg");
        let output = host.collect(stream).unwrap();
        assert_eq!(output.stdout(), "first\nsecond\n");
        assert_eq!(output.exit().code, Some(4));
    }
}

#[test]
fn attaching_streams_live_output_and_stdin() {
    let agent = Agent::start();
    let host = agent.connect();
    let mut request = shell(
        "echo",
        "while read line; do echo echo:$line; done; echo bye",
    );
    request.detached = true;
    request.stdin = true;
    let stream = host.start(request).unwrap();
    host.send(stream, b"a\n");
    host.read_until(stream, "echo:a");
    // Closing (resetting) the exec's stream leaves a detached process running.
    host.reset(stream);
    drop(host);

    let host = agent.connect();
    let stream = host.attach("echo");
    host.read_until(stream, "echo:a");
    host.send(stream, b"b\n");
    host.read_until(stream, "echo:b");
    host.close(stream);
    let output = host.collect(stream).unwrap();
    assert_eq!(output.stdout(), "bye\n");
    assert_eq!(output.exit().code, Some(0));

    let error = host
        .request(Request::Attach {
            process_id: "nobody".into(),
        })
        .unwrap_err();
    assert_eq!(error.code, ErrorCode::NotFound);
}

#[test]
fn list_and_signal() {
    let agent = Agent::start();
    let host = agent.connect();
    let mut request = argv("sleeper", &["sleep", "30"]);
    request.detached = true;
    let stream = host.start(request).unwrap();
    host.reset(stream);
    let live = host.start(argv("live", &["sleep", "30"])).unwrap();
    let entries = host.processes();
    let sleeper = entries.iter().find(|e| e.process_id == "sleeper").unwrap();
    assert!(sleeper.detached && sleeper.exit.is_none());
    assert_eq!(sleeper.command, "sleep 30");
    assert!(entries
        .iter()
        .any(|e| e.process_id == "live" && !e.detached));

    host.request(Request::SignalProcess {
        process_id: "sleeper".into(),
        signal: Signal::Term,
    })
    .unwrap();
    let stream = host.attach("sleeper");
    assert_eq!(host.collect(stream).unwrap().exit().signal, Some(15));
    let error = host
        .request(Request::SignalProcess {
            process_id: "nobody".into(),
            signal: Signal::Term,
        })
        .unwrap_err();
    assert_eq!(error.code, ErrorCode::NotFound);
    host.control(
        live,
        Control::Signal {
            signal: Signal::Kill,
        },
    );
    assert_eq!(host.collect(live).unwrap().exit().signal, Some(9));
}

#[test]
fn non_detached_processes_die_with_their_session() {
    let agent = Agent::start();
    let host = agent.connect();
    let stream = host
        .start(shell("doomed", "echo $$ > doomed.pid; sleep 30"))
        .unwrap();
    let pid = wait_for_file(&agent.path("doomed.pid"));
    assert!(alive(&pid));
    let _ = stream;
    drop(host);
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(&pid) {
        assert!(
            Instant::now() < deadline,
            "the process outlived its session"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // And resetting the stream kills too.
    let host = agent.connect();
    let stream = host
        .start(shell("doomed", "echo $$ > doomed2.pid; sleep 30"))
        .unwrap();
    let pid = wait_for_file(&agent.path("doomed2.pid"));
    host.reset(stream);
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(&pid) {
        assert!(Instant::now() < deadline, "the process outlived its stream");
        std::thread::sleep(Duration::from_millis(20));
    }
}
