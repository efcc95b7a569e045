//! `state.json`: what a sandbox must remember across server restarts (its env, its status,
//! which process is its init, and its streamed processes), written atomically.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;

use cthulu_host::processes::ProcessRecord;
use cthulu_host::state_file::load_versioned;
use cthulu_host::workspace::Owner;
use cthulu_types::{Checkpoint, ExposedPort, SandboxId, SandboxStatus};
use serde::{Deserialize, Serialize};

use crate::cgroup::SandboxCgroups;
use crate::init::IdMapping;

pub(crate) const STATE_FILE: &str = "state.json";
pub(crate) const WORKSPACE_DIR: &str = "workspace";
pub(crate) const INIT_LOG: &str = "init.log";
/// `/` inside: /root, /home, /var... are written here.
pub(crate) const ROOT_DIR: &str = "root";
/// The overlays' upper directories, one per lower directory.
pub(crate) const UPPER_DIR: &str = "layer/upper";

const STATE_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SandboxState {
    pub version: u32,
    pub sandbox_id: SandboxId,
    pub created_at_ms: u64,
    /// The sandbox's env, laid under every command's own.
    pub env: BTreeMap<String, String>,
    pub status: SandboxStatus,
    pub init: InitProcess,
    /// Who the sandbox's root is outside (absent in the states of the first increment:
    /// the server's own user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<IdMapping>,
    #[serde(default)]
    pub cgroups: SandboxCgroups,
    /// Exposed ports and their host addresses (forwarders are started again on attach).
    #[serde(default)]
    pub ports: Vec<ExposedPort>,
    /// Processes started by `exec_stream`, each under a shim (`procs/<process_id>/`).
    #[serde(default)]
    pub processes: Vec<ProcessRecord>,
    /// Filesystem checkpoints, oldest first (archives in `checkpoints/`).
    #[serde(default)]
    pub checkpoints: Vec<Checkpoint>,
    /// The size of the disk image its writable directories are on, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mb: Option<u64>,
}

/// The sandbox's init as the host sees it. The start time tells it apart from a later
/// process that got the same pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct InitProcess {
    pub pid: i32,
    /// Field 22 of `/proc/<pid>/stat`, in clock ticks since boot.
    pub start_time: u64,
}

impl InitProcess {
    /// Finds the live (not zombie) process `pid`.
    pub fn find(pid: i32) -> Option<InitProcess> {
        let (state, start_time) = stat_of(pid)?;
        (state != 'Z').then_some(InitProcess { pid, start_time })
    }

    /// Whether this very process still runs.
    pub fn is_alive(&self) -> bool {
        InitProcess::find(self.pid).is_some_and(|found| found.start_time == self.start_time)
    }
}

/// State letter and start time of `pid`, from `/proc/<pid>/stat`.
fn stat_of(pid: i32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

/// The command name may hold spaces and parentheses: fields count from the last `)`.
pub(crate) fn parse_stat(stat: &str) -> Option<(char, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: field 3 (state) is index 0, field 22 (starttime) is index 19.
    let state = fields.first()?.chars().next()?;
    let start_time = fields.get(19)?.parse().ok()?;
    Some((state, start_time))
}

impl SandboxState {
    pub fn load(sandbox_dir: &Path) -> io::Result<SandboxState> {
        load_versioned(
            &sandbox_dir.join(STATE_FILE),
            STATE_VERSION,
            |state: &SandboxState| state.version,
        )
    }

    pub fn new(
        sandbox_id: SandboxId,
        env: BTreeMap<String, String>,
        init: InitProcess,
        ids: IdMapping,
        cgroups: SandboxCgroups,
    ) -> Self {
        SandboxState {
            version: STATE_VERSION,
            sandbox_id,
            created_at_ms: cthulu_types::now_ms(),
            env,
            status: SandboxStatus::Running,
            init,
            ids: Some(ids),
            cgroups,
            ports: Vec::new(),
            processes: Vec::new(),
            checkpoints: Vec::new(),
            disk_mb: None,
        }
    }

    /// Who the sandbox's root is on the host, when it is not the server's own user:
    /// what the server hands the sandbox (workspace files, pipes) is given to it.
    pub fn root_outside(&self) -> Option<Owner> {
        self.ids
            .filter(|ids| ids.uid != rustix::process::geteuid().as_raw())
            .map(|ids| Owner {
                uid: ids.uid,
                gid: ids.gid,
            })
    }

    /// Writes a temporary file and renames it over `state.json`: atomic against a crash
    /// of the server, which is what a restart recovers from. Not synced: after a crash of
    /// the machine the sandbox's processes are gone anyway (it is lost at best), and an
    /// fsync costs about 4 ms of every create here.
    pub fn save(&self, sandbox_dir: &Path) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        let temporary = sandbox_dir.join(format!(".{STATE_FILE}.tmp"));
        let mut file = fs_err::File::create(&temporary)?;
        file.write_all(&bytes)?;
        fs_err::rename(&temporary, sandbox_dir.join(STATE_FILE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_count_from_the_last_parenthesis() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 12345 0 0";
        assert_eq!(parse_stat(stat), Some(('S', 12345)));
        assert_eq!(parse_stat("garbage"), None);
        let own = InitProcess::find(std::process::id() as i32).unwrap();
        assert!(own.is_alive());
        assert!(!InitProcess {
            start_time: own.start_time + 1,
            ..own
        }
        .is_alive());
    }

    #[test]
    fn state_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let state = SandboxState::new(
            SandboxId::generate(),
            BTreeMap::from([("A".to_owned(), "1".to_owned())]),
            InitProcess {
                pid: 7,
                start_time: 9,
            },
            IdMapping::for_server(0, 0),
            SandboxCgroups {
                memory: Some("/sys/fs/cgroup/memory/cthulu/x".into()),
                ..SandboxCgroups::default()
            },
        );
        state.save(dir.path()).unwrap();
        assert_eq!(SandboxState::load(dir.path()).unwrap(), state);
    }
}
