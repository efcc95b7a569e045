//! The VM Manager API of a `cthulu node` (`/vms`, `/health`), kept as the earlier system
//! defined it so that its clients work unchanged (docs/node.md).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `POST /vms`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateVmRequest {
    /// `nano` (1 vCPU, 512 MB) or `micro` (2 vCPUs, 1024 MB).
    pub tier: String,
    /// Given to the VM's terminal and exec sessions as `ANTHROPIC_API_KEY`; empty: none.
    #[serde(default)]
    pub api_key: String,
}

/// One VM, as `POST /vms`, `GET /vms/{id}` and `GET /vms` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmResponse {
    /// Small integers from 0, reused once freed.
    pub vm_id: u32,
    pub tier: String,
    /// The guest's address when it has one of its own, else empty.
    pub guest_ip: String,
    /// The VM's SSH port (public keys only, docs/node.md); 0: this node serves no SSH.
    pub ssh_port: u16,
    /// `ssh -p <ssh_port> root@<host>`, or a shell comment saying SSH is off.
    pub ssh_command: String,
    /// The port of the VM's web terminal.
    pub web_port: u16,
    /// `http://<host>:<web_port>/<secret>`: a ttyd-compatible terminal page.
    pub web_terminal: String,
    /// The host process of the VM (QEMU), or the sandbox's init; 0 when unknown.
    pub pid: u32,
}

/// `GET /vms`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmList {
    /// Keyed by the VM id as a decimal string.
    pub vms: BTreeMap<String, VmResponse>,
    pub count: u32,
}

/// `DELETE /vms/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmDeleted {
    /// `deleted`.
    pub status: String,
    pub vm_id: u32,
}

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeHealth {
    /// `ok`.
    pub status: String,
    pub active_vms: u32,
    pub max_vms: u32,
    /// Whether the node serves SSH to its VMs (absent from older nodes: false).
    #[serde(default)]
    pub ssh: bool,
}
