//! `cthulu shell` driven through a pseudo-terminal, as a person at a terminal would.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::fd::OwnedFd;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
use rustix::termios::{tcgetattr, LocalModes};

use crate::support::TestServer;

/// A pseudo-terminal pair: we hold the master, the child gets the slave as its stdio.
struct Terminal {
    master: File,
    slave: OwnedFd,
}

fn open_terminal() -> Terminal {
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).expect("openpt");
    grantpt(&master).expect("grantpt");
    unlockpt(&master).expect("unlockpt");
    let name = ptsname(&master, Vec::new()).expect("ptsname");
    let slave = File::options()
        .read(true)
        .write(true)
        .open(name.to_str().unwrap())
        .expect("cannot open the terminal's slave side");
    Terminal {
        master: File::from(master),
        slave: OwnedFd::from(slave),
    }
}

fn wait_for(child: &mut Child, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn wait_for_output(output: &Mutex<Vec<u8>>, needle: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if String::from_utf8_lossy(&output.lock().unwrap()).contains(needle) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn shell_runs_under_a_terminal_and_ends_on_ctrl_d() {
    let server = TestServer::start();
    let sandbox_id = server.create_sandbox(&[]);
    let terminal = open_terminal();
    let stdio = |fd: &OwnedFd| Stdio::from(fd.try_clone().unwrap());
    let mut child = server
        .command(&["shell", &sandbox_id, "--cmd", "sh"])
        .env("TERM", "xterm")
        .stdin(stdio(&terminal.slave))
        .stdout(stdio(&terminal.slave))
        .stderr(stdio(&terminal.slave))
        .spawn()
        .unwrap();

    let output = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let output = Arc::clone(&output);
        let mut master = terminal.master.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(count) = master.read(&mut buffer) {
                if count == 0 {
                    break;
                }
                output.lock().unwrap().extend_from_slice(&buffer[..count]);
            }
        })
    };
    let mut master = terminal.master.try_clone().unwrap();
    master.write_all(b"echo $((6 * 7))-$(tty)\r").unwrap();
    let answered = wait_for_output(&output, "42-/dev/", Duration::from_secs(20));
    let shown = || String::from_utf8_lossy(&output.lock().unwrap()).into_owned();
    if !answered && shown().contains("unsupported") {
        eprintln!("SKIP shell: {}", shown());
        let _ = child.kill();
        let _ = child.wait();
        return;
    }
    assert!(
        answered,
        "no answer from the remote shell: {:?}\n{}",
        shown(),
        server.log()
    );
    master.write_all(b"\x04").unwrap();
    let code = wait_for(&mut child, Duration::from_secs(20));
    assert_eq!(code, Some(0), "{:?}", shown());

    // The local terminal is back in canonical mode with echo.
    let modes = tcgetattr(&terminal.slave).unwrap().local_modes;
    assert!(
        modes.contains(LocalModes::ICANON | LocalModes::ECHO),
        "{modes:?}"
    );

    drop(terminal);
    drop(master);
    let _ = reader.join();
}

#[test]
fn shell_passes_the_exit_code_through() {
    let server = TestServer::start();
    let sandbox_id = server.create_sandbox(&[]);
    let terminal = open_terminal();
    let stdio = |fd: &OwnedFd| Stdio::from(fd.try_clone().unwrap());
    let mut child = server
        .command(&["shell", &sandbox_id])
        .stdin(stdio(&terminal.slave))
        .stdout(stdio(&terminal.slave))
        .stderr(stdio(&terminal.slave))
        .spawn()
        .unwrap();
    let mut master = terminal.master.try_clone().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buffer = [0u8; 4096];
        while let Ok(count) = master.read(&mut buffer) {
            if count == 0 {
                break;
            }
            all.extend_from_slice(&buffer[..count]);
        }
        all
    });
    let mut master = terminal.master.try_clone().unwrap();
    master.write_all(b"exit 5\r").unwrap();
    let code = wait_for(&mut child, Duration::from_secs(20));
    drop(terminal);
    drop(master);
    let shown = String::from_utf8_lossy(&reader.join().unwrap()).into_owned();
    if code != Some(5) && shown.contains("unsupported") {
        eprintln!("SKIP shell: {shown}");
        return;
    }
    assert_eq!(code, Some(5), "{shown}");
}
