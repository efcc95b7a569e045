//! Signalling the processes of a sandbox: whole process groups (every command runs in one
//! of its own), whole sessions (a PTY's shell moves jobs into groups of their own), and a
//! `/proc` sweep for stragglers. Used by the handle and by the shim, and by the namespace
//! backend's init (inside a sandbox, `/proc` shows only the sandbox's processes).

use std::io;
use std::path::Path;

use rustix::process::{Pid, Signal};

/// A pid or group id we may signal: never 0 (our own group), 1 (init) or negative
/// (`kill(-1)` is everything we may signal).
fn target(raw: i32) -> Option<Pid> {
    if raw > 1 {
        Pid::from_raw(raw)
    } else {
        None
    }
}

fn target_and_signal(raw: i32, signal: i32) -> io::Result<(Pid, Signal)> {
    match (target(raw), Signal::from_named_raw(signal)) {
        (Some(pid), Some(signal)) => Ok((pid, signal)),
        _ => Err(io::Error::from(io::ErrorKind::InvalidInput)),
    }
}

/// Sends `signal` (a raw number) to process group `pgid`. `Ok(false)` when the group no
/// longer exists.
pub fn signal_group(pgid: i32, signal: i32) -> io::Result<bool> {
    let (pid, signal) = target_and_signal(pgid, signal)?;
    match rustix::process::kill_process_group(pid, signal) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::SRCH) => Ok(false),
        Err(errno) => Err(errno.into()),
    }
}

/// Whether any process is left in group `pgid`.
pub(crate) fn group_alive(pgid: i32) -> bool {
    match target(pgid) {
        Some(pid) => !matches!(
            rustix::process::test_kill_process_group(pid),
            Err(rustix::io::Errno::SRCH)
        ),
        _ => false,
    }
}

/// Whether a process with this pid exists (a zombie counts).
pub(crate) fn pid_exists(pid: i32) -> bool {
    match target(pid) {
        Some(pid) => !matches!(
            rustix::process::test_kill_process(pid),
            Err(rustix::io::Errno::SRCH)
        ),
        None => false,
    }
}

/// Whether group `pgid`, whose leader was ours and has been reaped, still holds processes
/// of ours. A group id stays allocated while any member lives, so a live group whose
/// leader pid is free is still ours; if a process with the leader's pid exists, the id
/// may have been recycled for someone else's group, and we keep our hands off it.
pub(crate) fn reaped_group_is_ours(pgid: i32) -> bool {
    !pid_exists(pgid) && group_alive(pgid)
}

/// When process `pid` started, in clock ticks since boot (field 22 of `/proc/<pid>/stat`):
/// with the pid, it names a process unambiguously.
pub(crate) fn start_ticks(pid: i32) -> Option<u64> {
    let raw = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name start at field 3 (the state).
    raw[raw.rfind(')')? + 1..]
        .split_whitespace()
        .nth(22 - 3)?
        .parse()
        .ok()
}

/// Sends `signal` to every process of session `sid` (found through `/proc`), and to the
/// group `sid` itself. Returns how many processes were signalled.
pub fn signal_session(sid: i32, signal: i32) -> usize {
    let mut signalled = usize::from(signal_group(sid, signal).unwrap_or(false));
    for (pid, stat) in proc_stats() {
        if stat.session == sid && stat.pgid != sid && signal_process(pid, signal).is_ok() {
            signalled += 1;
        }
    }
    signalled
}

/// Whether `pid` is alive and is the shim of `process_dir` (its command line names the
/// directory), so a recycled pid is never mistaken for a shim.
pub(crate) fn is_shim_of(pid: i32, process_dir: &Path) -> bool {
    if pid <= 1 {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let wanted = process_dir.as_os_str().as_encoded_bytes();
    // A zombie has an empty command line: it is not running any more.
    cmdline.split(|byte| *byte == 0).any(|arg| arg == wanted) && !is_zombie(pid)
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|raw| parse_stat(&raw))
        .is_some_and(|stat| stat.state == 'Z')
}

/// Sends `signal` to one process.
pub(crate) fn signal_process(pid: i32, signal: i32) -> io::Result<()> {
    let (pid, signal) = target_and_signal(pid, signal)?;
    Ok(rustix::process::kill_process(pid, signal)?)
}

/// Sends `signal` to every process whose working directory is `dir` or beneath it; for
/// SIGKILL a few rounds, until none is left (a dying parent may still fork). Returns how
/// many were signalled.
///
/// This is the backstop of destroy and resume: processes a one-shot exec left behind
/// before a server restart are in no group the new server knows of.
pub(crate) fn signal_processes_under(dir: &Path, signal: i32) -> usize {
    let own_pid = std::process::id() as i32;
    let rounds = if signal == libc::SIGKILL { 5 } else { 1 };
    let mut signalled = 0;
    for _round in 0..rounds {
        let mut found = 0;
        for pid in proc_pids() {
            if pid == own_pid {
                continue;
            }
            let Ok(cwd) = std::fs::read_link(format!("/proc/{pid}/cwd")) else {
                continue;
            };
            if cwd.starts_with(dir) && signal_process(pid, signal).is_ok() {
                found += 1;
            }
        }
        signalled += found;
        if found == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    signalled
}

fn proc_pids() -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
}

fn proc_stats() -> impl Iterator<Item = (i32, ProcStat)> {
    proc_pids().filter_map(|pid| {
        let raw = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        Some((pid, parse_stat(&raw)?))
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcStat {
    state: char,
    pgid: i32,
    session: i32,
}

/// Parses `/proc/<pid>/stat`: `pid (comm) state ppid pgrp session ...`. The command name
/// may hold spaces and parentheses, so parsing starts after the last `)`.
fn parse_stat(raw: &str) -> Option<ProcStat> {
    let rest = &raw[raw.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgid = fields.next()?.parse().ok()?;
    let session = fields.next()?.parse().ok()?;
    Some(ProcStat {
        state,
        pgid,
        session,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_whatever_the_command_name() {
        assert_eq!(
            parse_stat("42 (a) b) c) S 1 40 41 0 -1"),
            Some(ProcStat {
                state: 'S',
                pgid: 40,
                session: 41
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(parse_stat(&own).is_some());
        let own_pid = std::process::id() as i32;
        assert!(start_ticks(own_pid).is_some());
        assert!(pid_exists(own_pid));
        assert!(
            !reaped_group_is_ours(own_pid),
            "a live leader means the id is not free"
        );
    }

    #[test]
    fn refuses_to_signal_everything() {
        assert!(signal_group(0, 0).is_err());
        assert!(signal_group(1, 15).is_err());
        assert!(signal_group(-1, 15).is_err());
        assert!(!group_alive(0));
        assert!(!is_shim_of(1, Path::new("/nowhere")));
    }
}
