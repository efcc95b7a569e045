//! The per-sandbox init process (`cthulu-ns-init <state dir>`, or `cthulu __ns-init`).
//! Synchronous and single-threaded on purpose: it forks. What to build comes from
//! `<state>/init.json` ([`InitConfig`]), written by the provider.
//!
//! 1. In the host's namespaces: a session of its own (it outlives the server), the control
//!    socket bound at `<state>/init.sock`, its cgroups joined (everything the sandbox
//!    runs inherits them), the sandbox's directories made and given to the
//!    sandbox's root ([`setup::prepare`]).
//! 2. `unshare` of the user, mount, pid, net (unless the sandbox has the host's network),
//!    ipc, uts and cgroup namespaces; root inside
//!    is mapped to [`IdMapping`]: a range of subordinate ids when the server is root (a
//!    short-lived helper forked before the `unshare` writes that map from the host's user
//!    namespace, as only it may), the caller's own uid and gid otherwise.
//! 3. It forks: the child is PID 1 of the new pid namespace. The parent prints
//!    `pid <host pid of the child>` and exits.
//! 4. PID 1 becomes root of the sandbox, builds the sandbox's filesystem and pivots into it
//!    ([`setup`]), prepares the Landlock ruleset and seccomp filter of the commands
//!    ([`harden`]), prints `ready` (or `error <message>`), closes stdout and serves the
//!    socket ([`serve`]), forking each command, which confines itself just before its
//!    `execve`.
//!
//! Errors go to stderr, which the provider points at `<state>/init.log`.

mod harden;
mod serve;
mod setup;

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use rustix::thread::UnshareFlags;
use serde::{Deserialize, Serialize};

/// Name of the control socket in the state directory.
pub const SOCKET_FILE: &str = "init.sock";
/// Name of init's configuration in the state directory.
pub const CONFIG_FILE: &str = "init.json";

/// What init builds: written by the provider, read once by init.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitConfig {
    pub hostname: String,
    /// Who root of the sandbox is outside.
    pub ids: IdMapping,
    /// cgroup directories init joins before it makes the namespaces.
    #[serde(default)]
    pub cgroups: Vec<PathBuf>,
    /// Keep the host's network namespace (`network: full`) instead of one with loopback
    /// only.
    #[serde(default)]
    pub host_network: bool,
    /// A directory used as the read-only lower root instead of the host's system
    /// directories.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<PathBuf>,
    /// A pids limit without a pids cgroup: PID 1's RLIMIT_NPROC (soft and hard), which
    /// every process of the sandbox inherits and cannot raise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nproc: Option<u64>,
}

/// Ids `0..count` inside are `uid..uid + count` (and `gid..gid + count`) outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMapping {
    pub uid: u32,
    pub gid: u32,
    pub count: u32,
}

impl IdMapping {
    /// The first id of the range the sandboxes of a root server get: above anything a
    /// distribution hands out to users (`/etc/subuid` ranges start at 100000 and grow by
    /// 65536 per user), so no host user owns a sandbox's files or processes.
    pub const SUBORDINATE_BASE: u32 = 1_000_000_000;
    pub const SUBORDINATE_COUNT: u32 = 65536;

    /// What a server running as `uid`/`gid` gives its sandboxes: a root server a range of
    /// subordinate ids (root inside must not be root outside), any other user itself.
    pub fn for_server(uid: u32, gid: u32) -> IdMapping {
        if uid == 0 {
            IdMapping {
                uid: IdMapping::SUBORDINATE_BASE,
                gid: IdMapping::SUBORDINATE_BASE,
                count: IdMapping::SUBORDINATE_COUNT,
            }
        } else {
            IdMapping { uid, gid, count: 1 }
        }
    }

    /// Whether this is the caller's own id alone, which a process may map for itself.
    fn is_own(&self) -> bool {
        self.count == 1
            && self.uid == rustix::process::getuid().as_raw()
            && self.gid == rustix::process::getgid().as_raw()
    }
}

/// The entry point; `args` are what follows the program (and subcommand) name.
pub fn main(args: Vec<OsString>) -> ExitCode {
    let [state] = match <[OsString; 1]>::try_from(args) {
        Ok(args) => args,
        Err(_) => {
            eprintln!("usage: cthulu-ns-init <state dir>");
            return ExitCode::from(2);
        }
    };
    let state = PathBuf::from(state);
    match start(&state) {
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

fn read_config(state: &Path) -> Result<InitConfig, String> {
    let path = state.join(CONFIG_FILE);
    let bytes =
        std::fs::read(&path).map_err(|error| format!("reading {}: {error}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|error| format!("reading {}: {error}", path.display()))
}

fn start(state: &Path) -> Result<ExitCode, String> {
    // Whatever the server left open without CLOEXEC (a jobserver pipe, a log) must reach
    // neither init nor the commands it forks.
    // SAFETY: nothing in this process owns a descriptor above 2 yet; closing them cannot
    // invalidate a live OwnedFd.
    unsafe { libc::close_range(3, libc::c_uint::MAX, 0) };
    // Already the leader of a new session if the provider made it so; otherwise become it.
    let _ = rustix::process::setsid();
    let config = read_config(state)?;
    let socket_path = state.join(SOCKET_FILE);
    let _ = std::fs::remove_file(&socket_path);
    let listener = UnixListener::bind(&socket_path)
        .map_err(|error| format!("binding {}: {error}", socket_path.display()))?;
    join_cgroups(&config.cgroups)?;
    setup::prepare(state, config.ids, config.image.as_deref())?;
    let mut namespaces = UnshareFlags::NEWUSER
        | UnshareFlags::NEWNS
        | UnshareFlags::NEWPID
        | UnshareFlags::NEWIPC
        | UnshareFlags::NEWUTS
        | UnshareFlags::NEWCGROUP;
    if !config.host_network {
        namespaces |= UnshareFlags::NEWNET;
    }
    let map_writer = if config.ids.is_own() {
        None
    } else {
        Some(MapWriter::fork(config.ids)?)
    };
    // SAFETY: this process is single-threaded and FILES is not among the flags, so no
    // thread can observe a descriptor table that changed under it.
    unsafe { rustix::thread::unshare_unsafe(namespaces) }
        .map_err(|errno| format!("unshare of the sandbox namespaces: {errno}"))?;
    match map_writer {
        Some(writer) => writer.write_maps()?,
        None => write_own_id_maps(config.ids)?,
    }
    // SAFETY: single-threaded, so the child starts with a consistent copy of everything
    // (no lock can be held by another thread at the fork).
    match unsafe { libc::fork() } {
        -1 => Err(format!("fork: {}", std::io::Error::last_os_error())),
        0 => Ok(pid_one(state, &config, listener)),
        child => {
            report(&format!("pid {child}"));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Moves init into each cgroup (v1: one directory per controller).
fn join_cgroups(cgroups: &[PathBuf]) -> Result<(), String> {
    let pid = std::process::id().to_string();
    for dir in cgroups {
        let procs = dir.join("cgroup.procs");
        std::fs::write(&procs, &pid)
            .map_err(|error| format!("joining the cgroup {}: {error}", dir.display()))?;
    }
    Ok(())
}

/// Root inside is the caller outside; nothing else is mapped. (A process may map its own
/// ids in a namespace it made, once setgroups is denied.)
fn write_own_id_maps(ids: IdMapping) -> Result<(), String> {
    let write = |file: &str, contents: String| {
        std::fs::write(format!("/proc/self/{file}"), contents)
            .map_err(|error| format!("writing /proc/self/{file}: {error}"))
    };
    write("setgroups", "deny".into())?;
    write("uid_map", format!("0 {} 1", ids.uid))?;
    write("gid_map", format!("0 {} 1", ids.gid))
}

/// A child forked before the `unshare`, so still in the host's user namespace, that
/// writes init's id maps once told to: a range of ids other than one's own can only be
/// mapped from the parent namespace, by a process with CAP_SETUID and CAP_SETGID there.
struct MapWriter {
    pid: i32,
    go: std::fs::File,
    result: std::fs::File,
}

impl MapWriter {
    fn fork(ids: IdMapping) -> Result<MapWriter, String> {
        let pipe = || {
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                .map_err(|errno| format!("creating a pipe: {errno}"))
        };
        let (go_read, go_write) = pipe()?;
        let (result_read, result_write) = pipe()?;
        let parent = std::process::id();
        // Prepared before the fork: the child only writes these.
        let uid_map = format!("0 {} {}", ids.uid, ids.count);
        let gid_map = format!("0 {} {}", ids.gid, ids.count);
        // SAFETY: init is single-threaded; the child only reads a pipe, writes files and
        // exits.
        match unsafe { libc::fork() } {
            -1 => Err(format!("fork: {}", std::io::Error::last_os_error())),
            0 => {
                drop((go_write, result_read));
                let mut go = std::fs::File::from(go_read);
                let mut byte = [0u8; 1];
                let code = match go.read(&mut byte) {
                    Ok(1) => {
                        let written = std::fs::write(format!("/proc/{parent}/uid_map"), &uid_map)
                            .and_then(|()| {
                                std::fs::write(format!("/proc/{parent}/gid_map"), &gid_map)
                            });
                        match written {
                            Ok(()) => 0,
                            Err(error) => error.raw_os_error().unwrap_or(libc::EIO),
                        }
                    }
                    // init gave up: nothing to do.
                    _ => 0,
                };
                let mut result = std::fs::File::from(result_write);
                let _ = result.write_all(&code.to_le_bytes());
                // SAFETY: ends the forked child without running the parent's atexit
                // handlers or flushing its buffers twice.
                unsafe { libc::_exit(0) }
            }
            pid => Ok(MapWriter {
                pid,
                go: std::fs::File::from(go_write),
                result: std::fs::File::from(result_read),
            }),
        }
    }

    /// Tells the helper init has unshared, and waits for its answer.
    fn write_maps(mut self) -> Result<(), String> {
        let outcome = (|| {
            self.go
                .write_all(b"1")
                .map_err(|error| format!("waking the id map writer: {error}"))?;
            let mut code = [0u8; 4];
            self.result
                .read_exact(&mut code)
                .map_err(|error| format!("waiting for the id map writer: {error}"))?;
            match i32::from_le_bytes(code) {
                0 => Ok(()),
                errno => Err(format!(
                    "writing the id maps of the sandbox: {}",
                    std::io::Error::from_raw_os_error(errno)
                )),
            }
        })();
        let _ = rustix::process::waitpid(
            rustix::process::Pid::from_raw(self.pid),
            rustix::process::WaitOptions::empty(),
        );
        outcome
    }
}

/// PID 1 of the sandbox: builds its filesystem, then serves until shutdown.
fn pid_one(state: &Path, config: &InitConfig, listener: UnixListener) -> ExitCode {
    let limited = match config.nproc {
        Some(limit) => rustix::process::setrlimit(
            rustix::process::Resource::Nproc,
            rustix::process::Rlimit {
                current: Some(limit),
                maximum: Some(limit),
            },
        )
        .map_err(|errno| format!("setting RLIMIT_NPROC to {limit}: {errno}")),
        None => Ok(()),
    };
    let hardening = match limited
        .and_then(|()| setup::build(state, config))
        .and_then(|()| harden::Hardening::prepare())
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
