//! PID 1's loop: accepts control connections, forks commands, reaps every child (its own
//! and orphans reparented to it) and reports exits on the connection that started them.
//! SIGCHLD arrives through a signalfd, so one `poll` waits for everything.
//!
//! A command asking for a terminal gets one of the sandbox's devpts (so `tty` names
//! `/dev/pts/N` inside): init opens the master and the terminal, the command makes itself
//! a session leader with the terminal as its controlling terminal, and the master goes
//! back to the client with `Started`. Init keeps neither end, so the client sees the
//! hang-up once every process of the session has closed the terminal.

use std::collections::HashMap;
use std::ffi::CString;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use cthulu_host::process_groups;
use cthulu_types::PtySize;
use rustix::event::{PollFd, PollFlags};
use rustix::fs::{Mode, OFlags};
use rustix::process::{Pid, WaitOptions};
use rustix::pty::OpenptFlags;

use super::harden::Hardening;
use crate::protocol::{self, ExecRequest, Request, Response, StartStep};

/// A client must send its request this soon after connecting.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A command started for a connection.
struct Running {
    pgid: i32,
    /// On a terminal: `pgid` is also its session, whose jobs may sit in other groups.
    session: bool,
    /// `None` once the client went away (the group was killed then).
    connection: Option<UnixStream>,
}

pub fn serve(listener: UnixListener, hardening: &Hardening) -> Result<(), String> {
    listener
        .set_nonblocking(true)
        .map_err(|error| format!("setting the control socket non-blocking: {error}"))?;
    let signals = child_signals().map_err(|error| format!("creating the signalfd: {error}"))?;
    let mut running: HashMap<i32, Running> = HashMap::new();
    loop {
        let watched: Vec<i32> = running
            .iter()
            .filter(|(_, command)| command.connection.is_some())
            .map(|(pid, _)| *pid)
            .collect();
        let (listener_ready, signal_ready, ready) = {
            let mut fds = vec![
                PollFd::new(&listener, PollFlags::IN),
                PollFd::new(&signals, PollFlags::IN),
            ];
            for pid in &watched {
                let connection = running[pid].connection.as_ref().expect("filtered above");
                fds.push(PollFd::new(connection, PollFlags::IN));
            }
            match rustix::event::poll(&mut fds, None) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(errno) => return Err(format!("poll: {errno}")),
            }
            let ready: Vec<i32> = watched
                .iter()
                .zip(&fds[2..])
                .filter(|(_, fd)| !fd.revents().is_empty())
                .map(|(pid, _)| *pid)
                .collect();
            (
                !fds[0].revents().is_empty(),
                !fds[1].revents().is_empty(),
                ready,
            )
        };
        if signal_ready {
            drain(&signals);
        }
        // Reaping on every round is cheap and catches a SIGCHLD merged with another.
        reap(&mut running);
        for pid in ready {
            client_message(&mut running, pid);
        }
        if listener_ready {
            loop {
                match listener.accept() {
                    Ok((connection, _)) => {
                        if handle(connection, &mut running, hardening) == Flow::Shutdown {
                            return Ok(());
                        }
                    }
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                    Err(error) => return Err(format!("accept: {error}")),
                }
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Shutdown,
}

/// Reads and answers the request of a new connection.
fn handle(
    mut connection: UnixStream,
    running: &mut HashMap<i32, Running>,
    hardening: &Hardening,
) -> Flow {
    if connection.set_nonblocking(false).is_err()
        || connection.set_read_timeout(Some(REQUEST_TIMEOUT)).is_err()
    {
        return Flow::Continue;
    }
    let (request, fds) = match protocol::receive::<Request>(&mut connection) {
        Ok(Some(received)) => received,
        Ok(None) => return Flow::Continue,
        Err(error) => {
            let _ = answer(
                &connection,
                &Response::Refused {
                    message: error.to_string(),
                },
            );
            return Flow::Continue;
        }
    };
    match request {
        Request::Exec(exec) => {
            let started = match exec.tty {
                None => {
                    let Ok(stdio) = <[OwnedFd; 3]>::try_from(fds) else {
                        let message = "an exec request needs stdin, stdout and stderr".to_owned();
                        let _ = answer(&connection, &Response::Refused { message });
                        return Flow::Continue;
                    };
                    start(&exec, stdio, false, hardening).map(|pid| (pid, None))
                }
                Some(size) => {
                    if !fds.is_empty() {
                        let message = "an exec request on a terminal takes no descriptors".into();
                        let _ = answer(&connection, &Response::Refused { message });
                        return Flow::Continue;
                    }
                    open_terminal(size)
                        .map_err(|errno| (errno.raw_os_error(), StartStep::Exec))
                        .and_then(|(master, terminal)| {
                            let stdio = [terminal.try_clone(), terminal.try_clone(), Ok(terminal)];
                            let stdio = match stdio {
                                [Ok(stdin), Ok(stdout), Ok(stderr)] => [stdin, stdout, stderr],
                                _ => return Err((libc::EMFILE, StartStep::Exec)),
                            };
                            start(&exec, stdio, true, hardening).map(|pid| (pid, Some(master)))
                        })
                }
            };
            match started {
                Ok((pid, master)) => {
                    let fds: Vec<BorrowedFd<'_>> = master.iter().map(|fd| fd.as_fd()).collect();
                    let session = master.is_some();
                    if protocol::send(&connection, &Response::Started { pid }, &fds).is_err() {
                        kill_all(pid, session);
                    }
                    // The client holds the master now; ours must go, or the client would
                    // never see the terminal hang up.
                    drop(master);
                    let _ = connection.set_read_timeout(None);
                    running.insert(
                        pid,
                        Running {
                            pgid: pid,
                            session,
                            connection: Some(connection),
                        },
                    );
                }
                Err((errno, during)) => {
                    let _ = answer(&connection, &Response::StartFailed { errno, during });
                }
            }
            Flow::Continue
        }
        Request::SignalGroup { .. } => {
            let message = "signal_group is only valid on an exec connection".to_owned();
            let _ = answer(&connection, &Response::Refused { message });
            Flow::Continue
        }
        Request::Connect { port } => {
            let _ = match connect_inside(port) {
                Ok((socket, in_progress)) => protocol::send(
                    &connection,
                    &Response::Connected { in_progress },
                    &[socket.as_fd()],
                ),
                Err(errno) => answer(
                    &connection,
                    &Response::ConnectFailed {
                        errno: errno.raw_os_error(),
                    },
                ),
            };
            Flow::Continue
        }
        Request::Shutdown => {
            // SAFETY: kill(-1) from PID 1 signals every other process of its pid namespace
            // (only those: it cannot see others); no memory is involved.
            unsafe { libc::kill(-1, libc::SIGKILL) };
            let _ = answer(&connection, &Response::Done);
            Flow::Shutdown
        }
        Request::KillAll => {
            let message = "kill_all is only valid on an exec connection".to_owned();
            let _ = answer(&connection, &Response::Refused { message });
            Flow::Continue
        }
        Request::SignalAll { signal } => {
            // SAFETY: kill(-1) from PID 1 signals every other process of its pid namespace
            // (only those: it cannot see others); no memory is involved.
            let response = match unsafe { libc::kill(-1, signal) } {
                // ESRCH: there was no other process to signal.
                0 => Response::Done,
                _ if io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) => {
                    Response::Done
                }
                _ => Response::Refused {
                    message: format!("kill(-1, {signal}): {}", io::Error::last_os_error()),
                },
            };
            let _ = answer(&connection, &response);
            Flow::Continue
        }
        Request::SetHostname { name } => {
            let response = match rustix::system::sethostname(name.as_bytes()) {
                Ok(()) => Response::Done,
                Err(errno) => Response::Refused {
                    message: format!("sethostname: {errno}"),
                },
            };
            let _ = answer(&connection, &response);
            Flow::Continue
        }
    }
}

/// How long init waits for a loopback connect to complete before handing the socket over
/// still connecting. Loopback answers within microseconds; only a listener whose backlog
/// is full stalls, and that must not stall init for long.
const CONNECT_WAIT: Duration = Duration::from_millis(20);

/// A non-blocking TCP connection to `port` on loopback (IPv4, then IPv6), and whether it is
/// still in progress.
fn connect_inside(port: u16) -> Result<(OwnedFd, bool), rustix::io::Errno> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    let mut last = rustix::io::Errno::CONNREFUSED;
    for ip in [
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ] {
        let family = match ip {
            IpAddr::V4(_) => AddressFamily::INET,
            IpAddr::V6(_) => AddressFamily::INET6,
        };
        let socket = rustix::net::socket_with(
            family,
            SocketType::STREAM,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            None,
        )?;
        match rustix::net::connect(&socket, &SocketAddr::new(ip, port)) {
            Ok(()) => return Ok((socket, false)),
            Err(rustix::io::Errno::INPROGRESS) => {}
            Err(errno) => {
                last = errno;
                continue;
            }
        }
        let mut fds = [PollFd::new(&socket, PollFlags::OUT)];
        let timeout = rustix::event::Timespec::try_from(CONNECT_WAIT).expect("a short wait");
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(0) | Err(rustix::io::Errno::INTR) => return Ok((socket, true)),
            Ok(_) => match rustix::net::sockopt::socket_error(&socket)? {
                Ok(()) => return Ok((socket, false)),
                Err(errno) => last = errno,
            },
            Err(errno) => return Err(errno),
        }
    }
    Err(last)
}

/// A new terminal of the sandbox's devpts, of `size`: its master and the terminal itself
/// (opened from the master, so no path is looked up), neither a controlling terminal of
/// init.
fn open_terminal(size: PtySize) -> rustix::io::Result<(OwnedFd, OwnedFd)> {
    let master = rustix::fs::open(
        "/dev/pts/ptmx",
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    rustix::pty::unlockpt(&master)?;
    rustix::termios::tcsetwinsize(
        &master,
        rustix::termios::Winsize {
            ws_row: size.rows,
            ws_col: size.cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )?;
    let terminal = rustix::pty::ioctl_tiocgptpeer(
        &master,
        OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC,
    )?;
    Ok((master, terminal))
}

fn answer(connection: &UnixStream, response: &Response) -> io::Result<()> {
    protocol::send(connection, response, &[])
}

/// A message (or the end) on the connection of a running command.
fn client_message(running: &mut HashMap<i32, Running>, pid: i32) {
    let Some(command) = running.get_mut(&pid) else {
        return;
    };
    let Some(connection) = command.connection.as_mut() else {
        return;
    };
    match protocol::receive::<Request>(connection) {
        Ok(Some((Request::SignalGroup { signal }, _))) => kill_group(command.pgid, signal),
        Ok(Some((Request::KillAll, _))) => kill_all(command.pgid, command.session),
        Ok(Some(_)) => {
            let message = "only signal_group and kill_all are valid on an exec connection";
            let _ = answer(
                connection,
                &Response::Refused {
                    message: message.to_owned(),
                },
            );
        }
        // The client is gone (its exec was abandoned): the command goes too.
        Ok(None) | Err(_) => {
            kill_all(command.pgid, command.session);
            command.connection = None;
        }
    }
}

/// SIGKILLs the group `pgid` and, for a session, every process of it (`/proc` shows
/// init only the sandbox's processes).
fn kill_all(pgid: i32, session: bool) {
    if session {
        if pgid > 1 {
            process_groups::signal_session(pgid, libc::SIGKILL);
        }
    } else {
        kill_group(pgid, libc::SIGKILL);
    }
}

fn kill_group(pgid: i32, signal: i32) {
    if pgid > 1 {
        // SAFETY: kill() takes no memory; a negative pid names the process group.
        unsafe { libc::kill(-pgid, signal) };
    }
}

/// Reaps every child that ended, reporting those started for a connection.
fn reap(running: &mut HashMap<i32, Running>) {
    loop {
        // `wait` is waitpid(-1): any child, whatever its process group.
        match rustix::process::wait(WaitOptions::NOHANG) {
            Ok(Some((pid, status))) => {
                let pid = pid.as_raw_nonzero().get();
                if let Some(command) = running.remove(&pid) {
                    if let Some(connection) = command.connection {
                        let exited = Response::Exited {
                            code: status.exit_status(),
                            signal: status.terminating_signal(),
                        };
                        let _ = answer(&connection, &exited);
                    }
                }
            }
            Ok(None) | Err(_) => return,
        }
    }
}

/// A signalfd for SIGCHLD, which is blocked (and unblocked again in every command).
fn child_signals() -> io::Result<OwnedFd> {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it before use, and
    // sigprocmask and signalfd only read it.
    unsafe {
        let mut mask: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut mask);
        libc::sigaddset(&mut mask, libc::SIGCHLD);
        if libc::sigprocmask(libc::SIG_BLOCK, &mask, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = libc::signalfd(-1, &mask, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(<OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd))
    }
}

fn drain(signals: &OwnedFd) {
    let mut buffer = [0u8; 1024];
    let mut file = std::fs::File::from(signals.try_clone().expect("dup of the signalfd"));
    while matches!(file.read(&mut buffer), Ok(read) if read > 0) {}
}

/// What the forked child needs, prepared before the fork.
struct Prepared {
    argv: Vec<CString>,
    env: Vec<CString>,
    cwd: CString,
    /// Candidate paths of the program (PATH search done here, tried in order).
    candidates: Vec<CString>,
}

fn cstring(text: &str) -> Option<CString> {
    CString::new(text).ok()
}

fn prepare(exec: &ExecRequest) -> Option<Prepared> {
    let program = exec.argv.first()?;
    let argv = exec
        .argv
        .iter()
        .map(|arg| cstring(arg))
        .collect::<Option<Vec<_>>>()?;
    let env = exec
        .env
        .iter()
        .map(|(name, value)| cstring(&format!("{name}={value}")))
        .collect::<Option<Vec<_>>>()?;
    let candidates = if program.contains('/') {
        vec![cstring(program)?]
    } else {
        let path = exec
            .env
            .iter()
            .find(|(name, _)| name == "PATH")
            .map(|(_, value)| value.as_str())
            .unwrap_or("/usr/local/bin:/usr/bin:/bin");
        path.split(':')
            .map(|dir| if dir.is_empty() { "." } else { dir })
            .filter_map(|dir| cstring(&format!("{dir}/{program}")))
            .collect()
    };
    Some(Prepared {
        argv,
        env,
        cwd: cstring(&exec.cwd)?,
        candidates,
    })
}

/// Forks and execs the command in a process group of its own. The child reports a
/// failed `chdir` or `execve` through a CLOEXEC pipe: EOF there means the exec happened.
fn start(
    exec: &ExecRequest,
    stdio: [OwnedFd; 3],
    terminal: bool,
    hardening: &Hardening,
) -> Result<i32, (i32, StartStep)> {
    let prepared = prepare(exec).ok_or((libc::EINVAL, StartStep::Exec))?;
    let (error_read, error_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|errno| (errno.raw_os_error(), StartStep::Exec))?;
    let mut argv: Vec<*const libc::c_char> = prepared.argv.iter().map(|arg| arg.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = prepared.env.iter().map(|var| var.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: PID 1 is single-threaded, so the child may run any code; it only calls
    // async-signal-safe functions anyway, on memory prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err((
            io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
            StartStep::Exec,
        ));
    }
    if pid == 0 {
        // SAFETY: see above; every pointer refers to memory owned by `prepared`, `argv`
        // and `envp`, alive until exec or _exit.
        unsafe {
            child(
                &prepared,
                &stdio,
                terminal,
                error_write.as_raw_fd(),
                &argv,
                &envp,
                hardening,
            )
        }
    }
    drop(error_write);
    drop(stdio);
    let mut report = [0u8; 5];
    let mut file = std::fs::File::from(error_read);
    let mut filled = 0;
    while filled < report.len() {
        match file.read(&mut report[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    if filled == 0 {
        return Ok(pid);
    }
    // The child failed and exits at once: reap it here so no exit is reported for it.
    let _ = rustix::process::waitpid(Pid::from_raw(pid), WaitOptions::empty());
    let errno = i32::from_le_bytes([report[1], report[2], report[3], report[4]]);
    let during = if report[0] == 0 {
        StartStep::Cwd
    } else {
        StartStep::Exec
    };
    Err((errno, during))
}

/// The forked child: own process group (on a terminal: own session, the terminal as its
/// controlling terminal), stdio, cwd, default signal mask, Landlock and seccomp
/// ([`Hardening::apply`]), then exec.
///
/// # Safety
/// Only in the child of a fork of a single-threaded process, with valid NULL-terminated
/// `argv` and `envp` arrays.
unsafe fn child(
    prepared: &Prepared,
    stdio: &[OwnedFd; 3],
    terminal: bool,
    error_pipe: i32,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    hardening: &Hardening,
) -> ! {
    // SAFETY: plain system calls on descriptors and memory this process owns.
    unsafe {
        let fail = |step: u8| -> ! {
            let errno = *libc::__errno_location();
            let mut report = [step, 0, 0, 0, 0];
            report[1..].copy_from_slice(&errno.to_le_bytes());
            libc::write(error_pipe, report.as_ptr().cast(), report.len());
            libc::_exit(127)
        };
        if terminal {
            libc::setsid();
        } else {
            libc::setpgid(0, 0);
        }
        let mut mask: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut mask);
        libc::sigprocmask(libc::SIG_SETMASK, &mask, std::ptr::null_mut());
        for (target, fd) in stdio.iter().enumerate() {
            if libc::dup2(fd.as_raw_fd(), target as i32) < 0 {
                fail(1);
            }
        }
        // The session leader takes its terminal: job control and Ctrl-C work.
        if terminal && libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
            fail(1);
        }
        if libc::chdir(prepared.cwd.as_ptr()) != 0 {
            fail(0);
        }
        // SAFETY: a child just forked from PID 1, before its execve, as apply requires.
        if let Err(error) = hardening.apply() {
            *libc::__errno_location() = error.errno();
            fail(1);
        }
        // The most telling error of all candidates: EACCES beats ENOENT, as in execvp.
        let mut errno = libc::ENOENT;
        for candidate in &prepared.candidates {
            libc::execve(candidate.as_ptr(), argv.as_ptr(), envp.as_ptr());
            let this = *libc::__errno_location();
            if this != libc::ENOENT && this != libc::ENOTDIR {
                errno = this;
                if this != libc::EACCES {
                    break;
                }
            }
        }
        *libc::__errno_location() = errno;
        fail(1)
    }
}
