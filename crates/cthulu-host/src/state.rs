//! `state.json`: what a sandbox must remember across server restarts (env, status, ports,
//! checkpoints, streamed processes), and the atomic write every record file uses.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use cthulu_types::{Checkpoint, ExposedPort, SandboxId, SandboxStatus};
use serde::{Deserialize, Serialize};

use crate::state_file::load_versioned;

pub(crate) const STATE_FILE: &str = "state.json";
pub(crate) const WORKSPACE_DIR: &str = "workspace";
pub(crate) const CHECKPOINTS_DIR: &str = "checkpoints";
pub(crate) const PROCS_DIR: &str = "procs";

const STATE_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SandboxState {
    pub version: u32,
    pub sandbox_id: SandboxId,
    pub created_at_ms: u64,
    /// The sandbox's env, laid under every command's own.
    pub env: BTreeMap<String, String>,
    /// `running` or `stopped` (a destroyed sandbox has no state file).
    pub status: SandboxStatus,
    #[serde(default)]
    pub ports: Vec<ExposedPort>,
    #[serde(default)]
    pub checkpoints: Vec<Checkpoint>,
    #[serde(default)]
    pub processes: Vec<ProcessRecord>,
}

/// A process started by `exec_stream`. How it ended is in its directory's `exit.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    pub process_id: String,
    pub command: String,
    pub detached: bool,
    pub tty: bool,
    pub started_at_ms: u64,
    /// Known once the shim has started it.
    #[serde(default)]
    pub shim_pid: Option<i32>,
    #[serde(default)]
    pub child_pgid: Option<i32>,
}

impl SandboxState {
    pub fn new(sandbox_id: SandboxId, env: BTreeMap<String, String>) -> SandboxState {
        SandboxState {
            version: STATE_VERSION,
            sandbox_id,
            created_at_ms: cthulu_types::now_ms(),
            env,
            status: SandboxStatus::Running,
            ports: Vec::new(),
            checkpoints: Vec::new(),
            processes: Vec::new(),
        }
    }

    pub fn load(sandbox_dir: &Path) -> io::Result<SandboxState> {
        load_versioned(
            &sandbox_dir.join(STATE_FILE),
            STATE_VERSION,
            |state: &SandboxState| state.version,
        )
    }

    pub fn save(&self, sandbox_dir: &Path) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).expect("sandbox state serializes");
        write_durable(&sandbox_dir.join(STATE_FILE), &bytes)
    }
}

/// Writes `path` so a reader sees the old or the new contents, never a mix: a temporary
/// file beside it, renamed over it. For records that are rewritten by the next event
/// anyway (process files), a crash may lose the write; see [`write_durable`].
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_replacing(path, bytes, false)
}

/// [`write_atomic`], and synced before the rename, so that after a crash the file holds
/// the old or the new contents, never nothing (`state.json`).
pub(crate) fn write_durable(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_replacing(path, bytes, true)
}

fn write_replacing(path: &Path, bytes: &[u8], sync: bool) -> io::Result<()> {
    let mut temporary: PathBuf = path.to_owned();
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(".tmp{}", std::process::id()));
    temporary.set_file_name(name);
    let result = (|| {
        let mut file = fs_err::File::create(&temporary)?;
        file.write_all(bytes)?;
        if sync {
            file.sync_data()?;
        }
        fs_err::rename(&temporary, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = SandboxState::new(
            SandboxId::parse("abc").unwrap(),
            BTreeMap::from([("A".into(), "1".into())]),
        );
        state.save(dir.path()).unwrap();
        state.status = SandboxStatus::Stopped;
        state.processes.push(ProcessRecord {
            process_id: "pabc".into(),
            command: "sleep 1".into(),
            detached: true,
            tty: false,
            started_at_ms: 1,
            shim_pid: Some(10),
            child_pgid: Some(11),
        });
        state.save(dir.path()).unwrap();
        assert_eq!(SandboxState::load(dir.path()).unwrap(), state);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
        fs_err::write(dir.path().join(STATE_FILE), "{}").unwrap();
        assert!(SandboxState::load(dir.path()).is_err());
    }
}
