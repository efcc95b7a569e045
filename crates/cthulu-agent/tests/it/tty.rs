//! Execs on a terminal: isatty, sizes and resizes, Ctrl-C.

use cthulu_guest_protocol::message::{Control, TtySize};

use crate::host::{argv, shell, tty, Agent};

#[test]
fn a_tty_exec_sees_a_terminal_of_its_size() {
    let agent = Agent::start();
    let host = agent.connect();
    let mut request = shell(
        "t",
        "test -t 0 && test -t 1 && test -t 2 && echo is-a-tty; stty size; echo $TERM",
    );
    request.tty = tty(24, 80);
    let output = host.exec(request).unwrap();
    let text = output.stdout().replace('\r', "");
    assert_eq!(text, "is-a-tty\n24 80\nxterm-256color\n");
    assert!(
        output.stderr.is_empty(),
        "a terminal merges stderr into main"
    );
}

#[test]
fn resizes_reach_the_terminal_and_ctrl_c_interrupts() {
    let agent = Agent::start();
    let host = agent.connect();
    let mut request = shell("t", "stty size; read line; stty size; read line");
    request.tty = tty(24, 80);
    request.stdin = true;
    let stream = host.start(request).unwrap();
    host.read_until(stream, "24 80");
    host.control(
        stream,
        Control::Resize(TtySize {
            rows: 50,
            cols: 132,
        }),
    );
    host.send(stream, b"\n");
    host.read_until(stream, "50 132");
    host.close(stream);
    // EOF on a terminal: the second read ends.
    let exit = host.collect(stream).unwrap().exit();
    assert!(exit.code.is_some(), "{exit:?}");

    let mut request = argv("sleep", &["sleep", "30"]);
    request.tty = tty(24, 80);
    request.stdin = true;
    let stream = host.start(request).unwrap();
    host.send(stream, b"\x03");
    let exit = host.collect(stream).unwrap().exit();
    assert_eq!(exit.signal, Some(2), "{exit:?}");
}

#[test]
fn an_endless_writer_on_a_terminal_ends_at_the_cap() {
    let agent = Agent::start();
    let host = agent.connect();
    let mut request = argv("yes", &["yes"]);
    request.tty = tty(24, 80);
    request.output_cap = Some(4096);
    request.timeout_ms = Some(15_000);
    let output = host.exec(request).unwrap();
    assert_eq!(output.stdout.len(), 4096);
    assert!(output.stdout().starts_with("y\r\ny\r\n"));
    let exit = output.exit();
    assert!(exit.truncated && !exit.timed_out, "{exit:?}");
    // The terminal hung up: its session leader got SIGHUP.
    assert_eq!(exit.signal, Some(libc::SIGHUP), "{exit:?}");
}
