//! Execs: argv and shell, exit codes and signals, output channels, stdin, environment,
//! working directory, timeouts, output caps, spawn failures, process ids.

use std::collections::BTreeMap;
use std::time::Duration;

use cthulu_guest_protocol::message::{Control, ErrorCode, GuestConfig, GuestLimits, Request};

use crate::host::{argv, shell, Agent};

#[test]
fn argv_shell_exit_codes_and_signals() {
    let agent = Agent::start();
    let host = agent.connect();
    let output = host
        .exec(argv("echo", &["echo", "hello", "world"]))
        .unwrap();
    assert_eq!(output.stdout(), "hello world\n");
    assert_eq!(output.exit().code, Some(0));
    assert_eq!(
        host.exec(argv("false", &["false"])).unwrap().exit().code,
        Some(1)
    );
    let output = host.sh("echo $0; exit 7");
    assert_eq!(output.stdout(), "/bin/sh\n");
    assert_eq!(output.exit().code, Some(7));
    let exit = host.sh("kill -TERM $$").exit();
    assert_eq!((exit.code, exit.signal), (None, Some(15)));
    assert!(!exit.timed_out && !exit.truncated);
}

#[test]
fn stdout_and_stderr_stay_apart_and_binary_output_is_exact() {
    let agent = Agent::start();
    let host = agent.connect();
    let output = host.sh("echo out; echo err >&2; echo out2");
    assert_eq!(output.stdout(), "out\nout2\n");
    assert_eq!(output.stderr(), "err\n");
    let blob: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(agent.path("blob"), &blob).unwrap();
    let output = host.exec(argv("cat", &["cat", "blob"])).unwrap();
    assert!(output.stdout == blob, "cat returned different bytes");
}

#[test]
fn stdin_is_the_stream_then_eof() {
    let agent = Agent::start();
    let host = agent.connect();
    let mut request = argv("cat", &["cat"]);
    request.stdin = true;
    let stream = host.start(request).unwrap();
    let input: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    host.send(stream, &input);
    host.close(stream);
    let output = host.collect(stream).unwrap();
    assert!(output.stdout == input, "cat echoed different bytes");
    assert_eq!(output.exit().code, Some(0));
    // Without stdin, the command reads /dev/null.
    assert_eq!(
        host.exec(argv("wc", &["wc", "-c"]))
            .unwrap()
            .stdout()
            .trim(),
        "0"
    );
}

#[test]
fn environment_layers() {
    let agent = Agent::start();
    let host = agent.connect();
    let config = GuestConfig {
        env: Some(BTreeMap::from([
            ("A".to_string(), "sandbox".to_string()),
            ("B".to_string(), "sandbox".to_string()),
        ])),
        ..GuestConfig::default()
    };
    host.request(Request::Configure(config)).unwrap();
    let mut request = shell(
        "env",
        "echo $A $B $HOME $LANG; echo $PATH; env | grep -c CARGO",
    );
    request.env.insert("B".into(), "request".into());
    let output = host.exec(request).unwrap();
    let lines: Vec<&str> = output
        .stdout
        .split(|b| *b == b'\n')
        .map(|l| std::str::from_utf8(l).unwrap())
        .collect();
    assert_eq!(
        lines[0],
        format!("sandbox request {} C.UTF-8", agent.workspace.display())
    );
    assert_eq!(
        lines[1],
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    );
    assert_eq!(
        lines[2], "0",
        "nothing of the agent's own environment leaks"
    );
}

#[test]
fn working_directory_defaults_to_the_workspace_and_stays_beneath_it() {
    let agent = Agent::start();
    let host = agent.connect();
    assert_eq!(
        host.sh("pwd").stdout().trim(),
        agent.workspace.display().to_string()
    );
    std::fs::create_dir_all(agent.path("sub/dir")).unwrap();
    let mut request = argv("pwd", &["pwd"]);
    request.cwd = Some("sub/dir".into());
    assert_eq!(
        host.exec(request).unwrap().stdout().trim(),
        agent.path("sub/dir").display().to_string()
    );
    std::os::unix::fs::symlink("/etc", agent.path("etc-link")).unwrap();
    for escape in ["..", "/etc", "sub/../..", "etc-link"] {
        let mut request = argv("pwd", &["pwd"]);
        request.cwd = Some(escape.into());
        let error = host.exec(request).unwrap_err();
        assert_eq!(
            error.code,
            ErrorCode::OutsideWorkspace,
            "{escape}: {error:?}"
        );
    }
    let mut request = argv("pwd", &["pwd"]);
    request.cwd = Some("missing".into());
    assert_eq!(host.exec(request).unwrap_err().code, ErrorCode::NotFound);
}

#[test]
fn a_timeout_kills_the_whole_tree() {
    let agent = Agent::start();
    let host = agent.connect();
    let mut request = shell(
        "slow",
        "sleep 30 & echo $! > grandchild.pid; echo started; sleep 30",
    );
    request.timeout_ms = Some(500);
    let output = host.exec(request).unwrap();
    assert_eq!(output.stdout(), "started\n");
    let exit = output.exit();
    assert!(exit.timed_out);
    assert_eq!(exit.signal, Some(9));
    let pid = std::fs::read_to_string(agent.path("grandchild.pid")).unwrap();
    let stat = format!("/proc/{}/stat", pid.trim());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        // Gone, or a zombie waiting for whoever inherited it.
        match std::fs::read_to_string(&stat) {
            Err(_) => break,
            Ok(text)
                if text
                    .rsplit(')')
                    .next()
                    .unwrap()
                    .trim_start()
                    .starts_with('Z') =>
            {
                break
            }
            Ok(_) => {}
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the grandchild survived"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_channel_past_its_cap_is_closed_and_the_other_keeps_flowing() {
    let agent = Agent::start();
    let host = agent.connect();
    let mut request = shell("cap", "head -c 5000000 /dev/zero; echo tail >&2; exit 3");
    request.output_cap = Some(1000);
    let output = host.exec(request).unwrap();
    assert_eq!(output.stdout.len(), 1000);
    assert_eq!(output.stderr(), "tail\n", "each channel has its own cap");
    let exit = output.exit();
    assert!(exit.truncated);
    assert_eq!(exit.code, Some(3), "the shell goes on after head's SIGPIPE");
}

#[test]
fn an_endless_writer_ends_at_the_cap() {
    let agent = Agent::start();
    let host = agent.connect();
    let mut request = argv("yes", &["yes"]);
    request.output_cap = Some(4096);
    request.timeout_ms = Some(15_000);
    let output = host.exec(request).unwrap();
    assert_eq!(output.stdout, "y\n".repeat(2048).into_bytes());
    let exit = output.exit();
    assert!(exit.truncated && !exit.timed_out, "{exit:?}");
    assert_eq!(exit.signal, Some(libc::SIGPIPE), "{exit:?}");

    // stdout closed at the cap while stderr goes on, in the same process.
    let mut request = shell(
        "both",
        "yes & for i in 1 2 3; do echo err$i >&2; sleep 0.1; done; wait; echo done >&2",
    );
    request.output_cap = Some(4096);
    request.timeout_ms = Some(15_000);
    let output = host.exec(request).unwrap();
    assert_eq!(output.stdout.len(), 4096);
    assert_eq!(output.stderr(), "err1\nerr2\nerr3\ndone\n");
    let exit = output.exit();
    assert!(exit.truncated && !exit.timed_out, "{exit:?}");
    assert_eq!(exit.code, Some(0));

    // Exactly the cap is not past it.
    let mut request = shell("exact", "head -c 4096 /dev/zero");
    request.output_cap = Some(4096);
    let output = host.exec(request).unwrap();
    assert_eq!(output.stdout.len(), 4096);
    assert!(!output.exit().truncated);
}

#[test]
fn a_missing_program_and_bad_process_ids_are_refused() {
    let agent = Agent::start();
    let host = agent.connect();
    let error = host
        .exec(argv("missing", &["no-such-program-xyz", "a"]))
        .unwrap_err();
    assert_eq!(error.code, ErrorCode::NotFound);
    assert_eq!(error.message, "program not found: no-such-program-xyz");
    for bad in ["", "a b", "../x", &"x".repeat(65)] {
        let error = host.exec(argv(bad, &["true"])).unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidRequest, "{bad:?}");
    }
    let running = host.start(argv("same", &["sleep", "30"])).unwrap();
    let error = host.exec(argv("same", &["true"])).unwrap_err();
    assert_eq!(error.code, ErrorCode::AlreadyExists);
    host.control(
        running,
        Control::Signal {
            signal: cthulu_guest_protocol::message::Signal::Kill,
        },
    );
    assert_eq!(host.collect(running).unwrap().exit().signal, Some(9));
    // The id is free again once the process ended.
    assert_eq!(
        host.exec(argv("same", &["true"])).unwrap().exit().code,
        Some(0)
    );
}

#[test]
fn limits_are_refused_in_test_mode_and_nothing_is_oom_killed() {
    let agent = Agent::start();
    let host = agent.connect();
    let config = GuestConfig {
        env: Some(BTreeMap::from([("A".to_string(), "set".to_string())])),
        limits: Some(GuestLimits {
            memory_bytes: Some(64 << 20),
            pids: Some(64),
            cpu_millis: Some(500),
        }),
        ..GuestConfig::default()
    };
    let error = host.request(Request::Configure(config)).unwrap_err();
    assert_eq!(error.code, ErrorCode::Unsupported);
    assert!(error.message.contains("cgroups"), "{}", error.message);
    assert_eq!(
        host.sh("echo ${A:-unset}").stdout(),
        "unset\n",
        "a refused config changes nothing"
    );
    // Without cgroups a SIGKILL is never an OOM kill.
    let exit = host.sh("kill -KILL $$").exit();
    assert_eq!(exit.signal, Some(libc::SIGKILL));
    assert!(!exit.oom_killed);
    // No limits at all is fine.
    let config = GuestConfig {
        env: Some(BTreeMap::from([("A".to_string(), "set".to_string())])),
        ..GuestConfig::default()
    };
    host.request(Request::Configure(config)).unwrap();
    assert_eq!(host.sh("echo ${A:-unset}").stdout(), "set\n");
}
