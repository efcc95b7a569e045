//! Sandboxes: the create, list and update bodies, and the status state machine.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::SandboxId;

/// Which isolation backend runs a sandbox.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Host processes in a workspace directory: trusted work only, no isolation.
    Host,
    Namespace,
    Docker,
    Gvisor,
    Qemu,
    Firecracker,
    Remote,
}

impl BackendKind {
    pub const ALL: [BackendKind; 7] = [
        BackendKind::Host,
        BackendKind::Namespace,
        BackendKind::Docker,
        BackendKind::Gvisor,
        BackendKind::Qemu,
        BackendKind::Firecracker,
        BackendKind::Remote,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Host => "host",
            BackendKind::Namespace => "namespace",
            BackendKind::Docker => "docker",
            BackendKind::Gvisor => "gvisor",
            BackendKind::Qemu => "qemu",
            BackendKind::Firecracker => "firecracker",
            BackendKind::Remote => "remote",
        }
    }

    pub fn parse(raw: &str) -> Option<BackendKind> {
        BackendKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == raw)
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Where a sandbox is in its life. Legality of every operation lives here, so every
/// backend and the server refuse the same things.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SandboxStatus {
    /// Being provisioned.
    Creating,
    Running,
    /// Frozen by `stop`; `resume` continues it.
    Stopped,
    /// Provisioning failed; only `destroy` is allowed.
    Failed,
    /// The backend could not find it again after a restart; only `destroy` is allowed.
    Lost,
    Destroyed,
}

/// The operations whose legality depends on the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Exec,
    Files,
    Ports,
    Checkpoint,
    Restore,
    Stop,
    Resume,
    Destroy,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Exec => "exec",
            Operation::Files => "files",
            Operation::Ports => "ports",
            Operation::Checkpoint => "checkpoint",
            Operation::Restore => "restore",
            Operation::Stop => "stop",
            Operation::Resume => "resume",
            Operation::Destroy => "destroy",
        }
    }
}

/// An operation that the current status does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {} a sandbox that is {}", operation.as_str(), status.as_str())]
pub struct InvalidTransition {
    pub operation: Operation,
    pub status: SandboxStatus,
}

impl SandboxStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxStatus::Creating => "creating",
            SandboxStatus::Running => "running",
            SandboxStatus::Stopped => "stopped",
            SandboxStatus::Failed => "failed",
            SandboxStatus::Lost => "lost",
            SandboxStatus::Destroyed => "destroyed",
        }
    }

    pub fn parse(raw: &str) -> Option<SandboxStatus> {
        [
            SandboxStatus::Creating,
            SandboxStatus::Running,
            SandboxStatus::Stopped,
            SandboxStatus::Failed,
            SandboxStatus::Lost,
            SandboxStatus::Destroyed,
        ]
        .into_iter()
        .find(|status| status.as_str() == raw)
    }

    pub fn can_exec(self) -> bool {
        self == SandboxStatus::Running
    }

    pub fn can_stop(self) -> bool {
        self == SandboxStatus::Running
    }

    pub fn can_resume(self) -> bool {
        self == SandboxStatus::Stopped
    }

    pub fn can_checkpoint(self) -> bool {
        matches!(self, SandboxStatus::Running | SandboxStatus::Stopped)
    }

    /// Destroy is allowed from every status; on `Destroyed` it is a no-op.
    pub fn can_destroy(self) -> bool {
        true
    }

    /// Whether `operation` is allowed now.
    pub fn allows(self, operation: Operation) -> bool {
        match operation {
            Operation::Exec | Operation::Files | Operation::Ports => self.can_exec(),
            Operation::Checkpoint | Operation::Restore => self.can_checkpoint(),
            Operation::Stop => self.can_stop(),
            Operation::Resume => self.can_resume(),
            Operation::Destroy => self.can_destroy(),
        }
    }

    /// `Ok(())` when `operation` is allowed, the typed refusal otherwise.
    pub fn check(self, operation: Operation) -> Result<(), InvalidTransition> {
        if self.allows(operation) {
            Ok(())
        } else {
            Err(InvalidTransition {
                operation,
                status: self,
            })
        }
    }

    /// Reading operations (listing processes, ports, checkpoints; attaching) are allowed
    /// while the sandbox exists, running or stopped; otherwise the refusal names exec.
    pub fn check_exists(self) -> Result<(), InvalidTransition> {
        match self {
            SandboxStatus::Running | SandboxStatus::Stopped => Ok(()),
            status => Err(InvalidTransition {
                operation: Operation::Exec,
                status,
            }),
        }
    }

    /// The status after `operation` succeeds.
    pub fn after(self, operation: Operation) -> Result<SandboxStatus, InvalidTransition> {
        self.check(operation)?;
        Ok(match operation {
            Operation::Stop => SandboxStatus::Stopped,
            Operation::Resume => SandboxStatus::Running,
            Operation::Destroy => SandboxStatus::Destroyed,
            _ => self,
        })
    }
}

impl fmt::Display for SandboxStatus {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Network access of a sandbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Loopback only (isolating backends); the host backend cannot enforce it.
    #[default]
    None,
    /// Outbound access.
    Full,
}

/// Resource limits asked for at create. A backend that cannot enforce one says so in
/// `/api/v1/info`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// CPU share, in cores (0.5 = half a core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mb: Option<u64>,
}

/// `POST /api/v1/sandboxes`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSandboxRequest {
    /// The backend; the server's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<BackendKind>,
    /// Free-form metadata that `GET /api/v1/sandboxes?label=k=v` filters on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Environment given to every exec in the sandbox (a request's own env wins).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Lifetime in seconds: the sandbox is destroyed this long after create unless extended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub network: NetworkMode,
    /// Image or rootfs, for the backends that use one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Start from a memory checkpoint of another sandbox of the same backend instead of
    /// from scratch: `<sandbox id>/<checkpoint id or name>` (qemu backend). The new
    /// sandbox has that moment's processes and files, and its own identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_checkpoint: Option<String>,
    /// Create the sandbox on this registered node (`GET /api/v1/nodes`); implies the
    /// `remote` backend. Without it, a `remote` sandbox goes to the node with the most
    /// free capacity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// `PATCH /api/v1/sandboxes/{id}`: change labels or the lifetime of a running sandbox.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSandboxRequest {
    /// New lifetime counted from now, in seconds; `0` removes the timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Labels to set (replacing the same keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
}

/// A sandbox as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Sandbox {
    #[schema(value_type = String)]
    pub id: SandboxId,
    pub backend: BackendKind,
    pub status: SandboxStatus,
    pub labels: BTreeMap<String, String>,
    pub resources: Resources,
    pub network: NetworkMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    pub created_at_ms: u64,
    /// When the sandbox will be destroyed unless its lifetime is extended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    /// Why the sandbox is `failed` or `lost`, or what died while the server was away.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
}

/// `GET /api/v1/sandboxes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SandboxList {
    pub sandboxes: Vec<Sandbox>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_transitions() {
        use Operation::*;
        use SandboxStatus::*;
        assert_eq!(Running.after(Stop), Ok(Stopped));
        assert_eq!(Stopped.after(Resume), Ok(Running));
        assert_eq!(Running.after(Exec), Ok(Running));
        assert_eq!(Failed.after(Destroy), Ok(Destroyed));
        assert_eq!(Destroyed.after(Destroy), Ok(Destroyed));
        let refused = Stopped.check(Exec).unwrap_err();
        assert_eq!(refused.to_string(), "cannot exec a sandbox that is stopped");
        assert!(Running.check(Resume).is_err());
        assert!(Destroyed.check(Files).is_err());
        assert!(Lost.check(Checkpoint).is_err());
        assert!(Stopped.check(Checkpoint).is_ok());
    }

    #[test]
    fn create_request_names_unknown_fields() {
        let error = serde_json::from_str::<CreateSandboxRequest>(r#"{"backnd":"host"}"#)
            .unwrap_err()
            .to_string();
        assert!(error.contains("backnd"), "{error}");
        let request: CreateSandboxRequest =
            serde_json::from_str(r#"{"backend":"host","labels":{"team":"a"}}"#).unwrap();
        assert_eq!(request.backend, Some(BackendKind::Host));
    }

    #[test]
    fn names_round_trip() {
        for kind in BackendKind::ALL {
            assert_eq!(BackendKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(
            SandboxStatus::parse("stopped"),
            Some(SandboxStatus::Stopped)
        );
    }
}
