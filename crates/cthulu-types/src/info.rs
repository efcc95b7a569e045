//! `/api/v1/info`: which backends this server has, what each can do, and why a backend
//! is unavailable.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::BackendKind;

/// How far a backend checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointSupport {
    None,
    Filesystem,
    FilesystemAndMemory,
}

/// What a backend can do. An operation it cannot do answers `unsupported` at the call too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Capabilities {
    /// Whether sandboxed code is isolated from the host at all.
    pub isolation: bool,
    pub exec_stream: bool,
    pub pty: bool,
    pub detached_processes: bool,
    pub files: bool,
    pub ports: bool,
    pub checkpoint: CheckpointSupport,
    pub stop_resume: bool,
    /// Whether `network: none` is enforced.
    pub network_policy: bool,
}

/// Whether a resource limit is enforced by a backend, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LimitSupport {
    /// `memory`, `cpus`, `pids`, `disk`, `timeout`, `output`.
    pub limit: String,
    pub enforced: bool,
    /// How it is enforced, or why it is not.
    pub detail: String,
}

impl Capabilities {
    /// A backend that can do nothing (one that is not available at all).
    pub fn none() -> Self {
        Capabilities {
            isolation: false,
            exec_stream: false,
            pty: false,
            detached_processes: false,
            files: false,
            ports: false,
            checkpoint: CheckpointSupport::None,
            stop_resume: false,
            network_policy: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BackendInfo {
    pub kind: BackendKind,
    pub available: bool,
    /// Why it is unavailable, and what would make it available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable_reason: Option<String>,
    pub capabilities: Capabilities,
    pub limits: Vec<LimitSupport>,
}

/// `GET /api/v1/info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServerInfo {
    pub version: String,
    pub default_backend: BackendKind,
    pub backends: Vec<BackendInfo>,
    /// Whether requests need `Authorization: Bearer` (true once an API key exists).
    pub auth_required: bool,
    /// How many sandboxes the server holds, and how many it may (placement reads this).
    #[serde(default)]
    pub capacity: Capacity,
}

/// The sandboxes a server holds against its limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Capacity {
    /// Sandboxes that are not destroyed (creating, running, stopped, lost).
    pub sandboxes: u32,
    /// The most it holds at once; `None`: no limit is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sandboxes: Option<u32>,
}

impl Capacity {
    /// Room for more sandboxes (`u32::MAX` when unlimited).
    pub fn free(&self) -> u32 {
        self.max_sandboxes
            .map_or(u32::MAX, |max| max.saturating_sub(self.sandboxes))
    }
}
