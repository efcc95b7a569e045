//! The per-sandbox init process (`cthulu-ns-init <state dir> <hostname>`, or `cthulu
//! __ns-init`). Synchronous and single-threaded on purpose: it forks.
//!
//! 1. In the host's namespaces: a session of its own (it outlives the server), the control
//!    socket bound at `<state>/init.sock`, then `unshare` of the user, mount, pid, net,
//!    ipc, uts and cgroup namespaces, with root inside mapped to the caller's uid and gid.
//! 2. It forks: the child is PID 1 of the new pid namespace. The parent prints
//!    `pid <host pid of the child>` and exits.
//! 3. PID 1 builds the sandbox's filesystem and pivots into it ([`setup`]), prepares the
//!    Landlock ruleset and seccomp filter of the commands ([`harden`]), prints `ready` (or
//!    `error <message>`), closes stdout and serves the socket ([`serve`]), forking each
//!    command, which confines itself just before its `execve`.
//!
//! Errors go to stderr, which the provider points at `<state>/init.log`.

mod harden;
mod serve;
mod setup;

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::ExitCode;

use rustix::thread::UnshareFlags;

/// Name of the control socket in the state directory.
pub const SOCKET_FILE: &str = "init.sock";

/// The entry point; `args` are what follows the program (and subcommand) name.
pub fn main(args: Vec<OsString>) -> ExitCode {
    let [state, hostname] = match <[OsString; 2]>::try_from(args) {
        Ok(args) => args,
        Err(_) => {
            eprintln!("usage: cthulu-ns-init <state dir> <hostname>");
            return ExitCode::from(2);
        }
    };
    let state = PathBuf::from(state);
    match start(&state, hostname.to_string_lossy().as_bytes()) {
        Ok(code) => code,
        Err(message) => {
            report(&format!("error {message}"));
            eprintln!("cthulu-ns-init: {message}");
            ExitCode::FAILURE
        }
    }
}

/// One line to the provider on stdout.
fn report(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

fn start(state: &std::path::Path, hostname: &[u8]) -> Result<ExitCode, String> {
    // Whatever the server left open without CLOEXEC (a jobserver pipe, a log) must reach
    // neither init nor the commands it forks.
    // SAFETY: nothing in this process owns a descriptor above 2 yet; closing them cannot
    // invalidate a live OwnedFd.
    unsafe { libc::close_range(3, libc::c_uint::MAX, 0) };
    // Already the leader of a new session if the provider made it so; otherwise become it.
    let _ = rustix::process::setsid();
    let socket_path = state.join(SOCKET_FILE);
    let _ = std::fs::remove_file(&socket_path);
    let listener = UnixListener::bind(&socket_path)
        .map_err(|error| format!("binding {}: {error}", socket_path.display()))?;
    let uid = rustix::process::getuid().as_raw();
    let gid = rustix::process::getgid().as_raw();
    let namespaces = UnshareFlags::NEWUSER
        | UnshareFlags::NEWNS
        | UnshareFlags::NEWPID
        | UnshareFlags::NEWNET
        | UnshareFlags::NEWIPC
        | UnshareFlags::NEWUTS
        | UnshareFlags::NEWCGROUP;
    // SAFETY: this process is single-threaded and FILES is not among the flags, so no
    // thread can observe a descriptor table that changed under it.
    unsafe { rustix::thread::unshare_unsafe(namespaces) }
        .map_err(|errno| format!("unshare of the sandbox namespaces: {errno}"))?;
    write_id_maps(uid, gid)?;
    // SAFETY: single-threaded, so the child starts with a consistent copy of everything
    // (no lock can be held by another thread at the fork).
    match unsafe { libc::fork() } {
        -1 => Err(format!("fork: {}", std::io::Error::last_os_error())),
        0 => Ok(pid_one(state, hostname, listener)),
        child => {
            report(&format!("pid {child}"));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Root inside is the caller outside; nothing else is mapped.
fn write_id_maps(uid: u32, gid: u32) -> Result<(), String> {
    let write = |file: &str, contents: String| {
        std::fs::write(format!("/proc/self/{file}"), contents)
            .map_err(|error| format!("writing /proc/self/{file}: {error}"))
    };
    write("setgroups", "deny".into())?;
    write("uid_map", format!("0 {uid} 1"))?;
    write("gid_map", format!("0 {gid} 1"))
}

/// PID 1 of the sandbox: builds its filesystem, then serves until shutdown.
fn pid_one(state: &std::path::Path, hostname: &[u8], listener: UnixListener) -> ExitCode {
    let hardening = match setup::build(state, hostname).and_then(|()| harden::Hardening::prepare())
    {
        Ok(hardening) => hardening,
        Err(message) => {
            report(&format!("error {message}"));
            eprintln!("cthulu-ns-init: {message}");
            return ExitCode::FAILURE;
        }
    };
    report("ready");
    // The provider reads until EOF: stdin and stdout go to /dev/null from now on.
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let _ = rustix::stdio::dup2_stdin(&null);
        let _ = rustix::stdio::dup2_stdout(&null);
    }
    match serve::serve(listener, &hardening) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("cthulu-ns-init: {message}");
            ExitCode::FAILURE
        }
    }
}
