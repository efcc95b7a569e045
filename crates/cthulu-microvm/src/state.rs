//! `state.json` of a microVM sandbox: what a restarted server needs to find its VM again.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;

use cthulu_host::state_file::load_versioned;
use cthulu_types::{Checkpoint, ExposedPort, SandboxId, SandboxStatus};
use serde::{Deserialize, Serialize};

pub(crate) const STATE_FILE: &str = "state.json";
const STATE_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct VmState {
    pub version: u32,
    pub sandbox_id: SandboxId,
    pub created_at_ms: u64,
    pub env: BTreeMap<String, String>,
    pub status: SandboxStatus,
    /// The QEMU process (0 before it started).
    pub pid: u32,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub network: bool,
    /// The image's version id and the template the VM's RAM is mapped from.
    pub image_version: String,
    pub template: String,
    /// Whether the VM has a root disk (`disk.qcow2` in its VM directory, an overlay over
    /// its template's).
    #[serde(default)]
    pub disk: bool,
    #[serde(default)]
    pub ports: Vec<ExposedPort>,
    #[serde(default)]
    pub checkpoints: Vec<Checkpoint>,
    /// Where the VM's sockets, console and pid file are when it is not this directory (a
    /// warm VM made ahead of its sandbox lives in `vms/<id>/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_dir: Option<std::path::PathBuf>,
    /// Commands of the processes started here, by process id, for listings.
    #[serde(default)]
    pub commands: BTreeMap<String, String>,
}

impl VmState {
    pub fn new(sandbox_id: SandboxId, env: BTreeMap<String, String>) -> VmState {
        VmState {
            version: STATE_VERSION,
            sandbox_id,
            created_at_ms: now_ms(),
            env,
            status: SandboxStatus::Creating,
            pid: 0,
            memory_mib: 0,
            vcpus: 0,
            network: false,
            image_version: String::new(),
            template: String::new(),
            disk: false,
            ports: Vec::new(),
            checkpoints: Vec::new(),
            vm_dir: None,
            commands: BTreeMap::new(),
        }
    }

    pub fn load(dir: &Path) -> io::Result<VmState> {
        load_versioned(&dir.join(STATE_FILE), STATE_VERSION, |state: &VmState| {
            state.version
        })
    }

    /// Writes the state atomically (a temp file renamed over the old one).
    pub fn save(&self, dir: &Path) -> io::Result<()> {
        let temp = dir.join(".state.json.tmp");
        let mut file = fs_err::File::create(&temp)?;
        file.write_all(&serde_json::to_vec_pretty(self).map_err(io::Error::other)?)?;
        file.sync_data()?;
        fs_err::rename(&temp, dir.join(STATE_FILE))
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}
