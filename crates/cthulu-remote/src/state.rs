//! `<root>/<id>/state.json`: which node holds a remote sandbox, its id there, the last
//! status we saw, its capabilities and the ports we forward for it.

use std::io;
use std::path::Path;

use cthulu_core::{SandboxError, SandboxSpec};
use cthulu_types::{Capabilities, ExposedPort, SandboxStatus};
use serde::{Deserialize, Serialize};

pub const STATE_FILE: &str = "state.json";
const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteState {
    pub version: u32,
    pub node: String,
    /// The node's URL when the sandbox was made (for messages if the node is removed).
    pub node_url: String,
    pub node_sandbox_id: String,
    /// The last status the node reported (or we caused).
    pub status: SandboxStatus,
    /// The node's backend's, as it said at create.
    pub capabilities: Capabilities,
    pub spec: SandboxSpec,
    #[serde(default)]
    pub ports: Vec<ExposedPort>,
}

impl RemoteState {
    pub fn new(
        node: &str,
        node_url: &str,
        node_sandbox_id: &str,
        status: SandboxStatus,
        capabilities: Capabilities,
        spec: &SandboxSpec,
    ) -> Self {
        RemoteState {
            version: VERSION,
            node: node.to_owned(),
            node_url: node_url.to_owned(),
            node_sandbox_id: node_sandbox_id.to_owned(),
            status,
            capabilities,
            spec: spec.clone(),
            ports: Vec::new(),
        }
    }

    /// Reads the state of the sandbox directory `dir`.
    pub fn load(dir: &Path) -> io::Result<RemoteState> {
        cthulu_host::state_file::load_versioned(
            &dir.join(STATE_FILE),
            VERSION,
            |state: &RemoteState| state.version,
        )
    }

    /// Writes the state of `dir` atomically (a temporary file renamed over it).
    pub fn save(&self, dir: &Path) -> Result<(), SandboxError> {
        let path = dir.join(STATE_FILE);
        let temporary = dir.join(format!("{STATE_FILE}.tmp"));
        let bytes = serde_json::to_vec_pretty(self).expect("a remote state always serializes");
        fs_err::write(&temporary, bytes)
            .and_then(|()| fs_err::rename(&temporary, &path))
            .map_err(|error| SandboxError::io("write", &path, error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let state = RemoteState::new(
            "gpu1",
            "http://127.0.0.1:9/",
            "abc",
            SandboxStatus::Running,
            Capabilities::none(),
            &SandboxSpec::default(),
        );
        state.save(dir.path()).unwrap();
        assert_eq!(RemoteState::load(dir.path()).unwrap(), state);
        assert!(RemoteState::load(&dir.path().join("missing")).is_err());
    }
}
