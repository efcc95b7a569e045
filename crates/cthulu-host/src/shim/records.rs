//! The files of a process directory (`<sandbox>/procs/<process_id>/`) through which the
//! handle and the shim talk besides the socket, and the one-line start handshake.
//!
//! - `spec.json` ([`ShimSpec`]): written by the handle before starting the shim, removed by
//!   the shim once read (it holds the environment, credentials included).
//! - the shim's stdout: one JSON line, [`Handshake`], once the process runs (or failed to
//!   start); the shim then points its stdout at `/dev/null`.
//! - `pid.json` ([`PidRecord`]): the shim's and the process's pids, for stop/resume and
//!   liveness after a server restart.
//! - `exit.json` ([`ExitRecord`]) and `stdout.out` / `stderr.out` (the last 1 MiB of each
//!   channel): written when the process has ended, so its status and output outlive the
//!   shim. `exit.json` is written last; when it exists the output files are complete.
//! - `sock`: the shim's socket ([`protocol`](super::protocol)); `shim.log`: its stderr.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cthulu_core::ExitInfo;
use cthulu_types::PtySize;
use serde::{Deserialize, Serialize};

use super::protocol::Channel;

pub const SPEC_FILE: &str = "spec.json";
pub const PID_FILE: &str = "pid.json";
pub const EXIT_FILE: &str = "exit.json";
pub const SOCKET_FILE: &str = "sock";
pub const LOG_FILE: &str = "shim.log";

/// The file holding the kept output of `channel` once the process has ended.
pub fn output_file(channel: Channel) -> &'static str {
    match channel {
        Channel::Stdout => "stdout.out",
        Channel::Stderr => "stderr.out",
    }
}

/// What the shim runs, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimSpec {
    /// Program and arguments; the program is looked up in `env`'s `PATH`.
    pub argv: Vec<String>,
    /// The complete environment of the process (nothing is inherited).
    pub env: BTreeMap<String, String>,
    /// Absolute, already resolved inside the workspace.
    pub cwd: PathBuf,
    /// Run under a pseudo-terminal of this size.
    pub tty: Option<PtySize>,
    /// Keep running when the last client goes away.
    pub detach: bool,
    pub timeout_ms: u64,
    /// Cap on each output channel; the rest is dropped.
    pub max_output_bytes: u64,
}

/// Why the process could not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpawnFailure {
    NotFound,
    NotExecutable,
    Other,
}

/// The shim's first and only line on stdout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Handshake {
    Started {
        shim_pid: i32,
        child_pid: i32,
    },
    Failed {
        failure: SpawnFailure,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidRecord {
    pub shim_pid: i32,
    pub child_pid: i32,
    /// The process group of the process (its pid; for a PTY also its session id).
    pub child_pgid: i32,
    /// When the process started (clock ticks since boot), to tell it from a later process
    /// that got the same pid once the shim is gone.
    #[serde(default)]
    pub child_start_ticks: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub exit: ExitInfo,
    pub finished_at_ms: u64,
}

/// Reads and parses a JSON record; `Ok(None)` when the file does not exist.
pub fn read_record<T: for<'de> Deserialize<'de>>(path: &Path) -> std::io::Result<Option<T>> {
    match fs_err::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|error| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {error}", path.display()),
            )
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_is_one_json_line() {
        let line = serde_json::to_string(&Handshake::Started {
            shim_pid: 1,
            child_pid: 2,
        })
        .unwrap();
        assert_eq!(line, r#"{"started":{"shim_pid":1,"child_pid":2}}"#);
        let failed: Handshake =
            serde_json::from_str(r#"{"failed":{"failure":"not_found","message":"no such file"}}"#)
                .unwrap();
        assert!(matches!(
            failed,
            Handshake::Failed {
                failure: SpawnFailure::NotFound,
                ..
            }
        ));
    }

    #[test]
    fn missing_record_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let missing: Option<PidRecord> = read_record(&dir.path().join("nope")).unwrap();
        assert!(missing.is_none());
        fs_err::write(dir.path().join("bad"), "{").unwrap();
        assert!(read_record::<PidRecord>(&dir.path().join("bad")).is_err());
    }
}
