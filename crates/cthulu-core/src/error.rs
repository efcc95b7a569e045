//! [`SandboxError`]: what a backend operation can fail with, each mapped to a stable API
//! error code and, where one exists, a hint for the next step.

use std::io;
use std::path::PathBuf;

use cthulu_types::sandbox::InvalidTransition;
use cthulu_types::{BackendKind, ErrorCode, SandboxId};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandbox {sandbox_id} not found")]
    SandboxNotFound { sandbox_id: SandboxId },
    #[error("process {process_id} not found")]
    ProcessNotFound { process_id: String },
    #[error("checkpoint {checkpoint} not found")]
    CheckpointNotFound { checkpoint: String },
    #[error("checkpoint name {name} is already used in this sandbox")]
    CheckpointExists { name: String },
    #[error("no such file or directory: {path}")]
    FileNotFound { path: String },
    #[error("{path} already exists")]
    AlreadyExists { path: String },
    #[error("{path} is not a directory")]
    NotADirectory { path: String },
    #[error("{path} is a directory")]
    IsADirectory { path: String },
    #[error("directory {path} is not empty")]
    DirectoryNotEmpty { path: String },
    #[error("path {path} is outside the sandbox")]
    PathOutsideSandbox { path: String },
    #[error("program {program} not found in the sandbox")]
    ProgramNotFound { program: String },
    #[error("program {program} cannot be executed: permission denied")]
    ProgramNotExecutable { program: String },
    #[error("port {port} is not exposed")]
    PortNotExposed { port: u16 },
    #[error("nothing listens on port {port} in the sandbox")]
    PortNotListening { port: u16 },
    #[error(transparent)]
    InvalidState(#[from] InvalidTransition),
    #[error("{operation} is not supported by the {backend} backend: {reason}")]
    Unsupported {
        backend: BackendKind,
        operation: &'static str,
        reason: String,
    },
    #[error("invalid {field}: {message}")]
    InvalidRequest {
        field: &'static str,
        message: String,
    },
    #[error("the {backend} backend is unavailable: {reason}")]
    BackendUnavailable {
        backend: BackendKind,
        reason: String,
    },
    #[error("{operation} {path}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{operation} failed")]
    System {
        operation: &'static str,
        #[source]
        source: io::Error,
    },
    /// A remote node did not answer (connection refused or timed out, name not resolved).
    #[error("node {node} at {url} is unreachable: {reason}")]
    NodeUnreachable {
        node: String,
        url: String,
        reason: String,
    },
    /// A remote node answered something that is not the Cthulu API.
    #[error("node {node} at {url} answered something that is not the Cthulu API: {detail}")]
    NodeProtocol {
        node: String,
        url: String,
        detail: String,
    },
    /// A remote node refused the operation with its own error, passed through.
    #[error("{message}")]
    Node {
        node: String,
        code: ErrorCode,
        message: String,
        hint: Option<String>,
    },
    #[error("creating sandbox {sandbox_id} failed, and so did cleaning up after it ({cleanup})")]
    ProvisionAndCleanup {
        sandbox_id: SandboxId,
        #[source]
        source: Box<SandboxError>,
        cleanup: Box<SandboxError>,
    },
}

impl SandboxError {
    pub fn io(operation: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        SandboxError::Io {
            operation,
            path: path.into(),
            source,
        }
    }

    pub fn system(operation: &'static str, source: io::Error) -> Self {
        SandboxError::System { operation, source }
    }

    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        SandboxError::InvalidRequest {
            field,
            message: message.into(),
        }
    }

    /// The API error code this error is answered with.
    pub fn code(&self) -> ErrorCode {
        match self {
            SandboxError::SandboxNotFound { .. } => ErrorCode::SandboxNotFound,
            SandboxError::ProcessNotFound { .. } => ErrorCode::ProcessNotFound,
            SandboxError::CheckpointNotFound { .. } => ErrorCode::CheckpointNotFound,
            SandboxError::FileNotFound { .. } => ErrorCode::FileNotFound,
            SandboxError::PortNotExposed { .. } => ErrorCode::PortNotFound,
            SandboxError::CheckpointExists { .. }
            | SandboxError::AlreadyExists { .. }
            | SandboxError::DirectoryNotEmpty { .. } => ErrorCode::Conflict,
            SandboxError::NotADirectory { .. }
            | SandboxError::IsADirectory { .. }
            | SandboxError::InvalidRequest { .. }
            | SandboxError::PortNotListening { .. } => ErrorCode::BadRequest,
            SandboxError::PathOutsideSandbox { .. } => ErrorCode::PathOutsideSandbox,
            SandboxError::ProgramNotFound { .. } | SandboxError::ProgramNotExecutable { .. } => {
                ErrorCode::ProgramNotFound
            }
            SandboxError::InvalidState(_) => ErrorCode::InvalidState,
            SandboxError::Unsupported { .. } => ErrorCode::Unsupported,
            SandboxError::BackendUnavailable { .. } => ErrorCode::BackendUnavailable,
            SandboxError::NodeUnreachable { .. } | SandboxError::NodeProtocol { .. } => {
                ErrorCode::NodeUnreachable
            }
            SandboxError::Node { code, .. } => *code,
            SandboxError::Io { .. }
            | SandboxError::System { .. }
            | SandboxError::ProvisionAndCleanup { .. } => ErrorCode::Internal,
        }
    }

    /// A next step for the user, where one exists.
    pub fn hint(&self) -> Option<String> {
        match self {
            SandboxError::SandboxNotFound { .. } => {
                Some("list sandboxes with `cthulu sandbox ls`".into())
            }
            SandboxError::PathOutsideSandbox { .. } => Some(
                "use a path under /workspace (or relative to it) that does not leave it through `..` or a symlink"
                    .into(),
            ),
            SandboxError::ProgramNotFound { .. } => Some(
                "check the name and PATH, or use `shell` to run a shell command line".into(),
            ),
            SandboxError::InvalidState(transition) => Some(match transition.status {
                cthulu_types::SandboxStatus::Stopped => {
                    "resume it first: `cthulu sandbox resume <id>`".into()
                }
                _ => "check its status with `cthulu sandbox ls`".into(),
            }),
            SandboxError::DirectoryNotEmpty { .. } => {
                Some("remove it recursively (`recursive=true`)".into())
            }
            SandboxError::PortNotListening { .. } => {
                Some("start a server on that port inside the sandbox first".into())
            }
            SandboxError::NodeUnreachable { .. } => Some(
                "see `cthulu node ls`; the node's sandboxes work again once it answers".into(),
            ),
            SandboxError::NodeProtocol { .. } => {
                Some("check the node's URL with `cthulu node ls`".into())
            }
            SandboxError::Node { hint, .. } => hint.clone(),
            SandboxError::Unsupported { .. } | SandboxError::BackendUnavailable { .. } => {
                Some("see `GET /api/v1/info` for what each backend can do here".into())
            }
            _ => None,
        }
    }

    /// Whether this is a server-side failure whose details belong in the log, not in the
    /// response.
    pub fn is_internal(&self) -> bool {
        self.code() == ErrorCode::Internal
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cthulu_types::sandbox::Operation;
    use cthulu_types::SandboxStatus;

    #[test]
    fn codes_and_hints() {
        let stopped: SandboxError = SandboxStatus::Stopped
            .check(Operation::Exec)
            .unwrap_err()
            .into();
        assert_eq!(stopped.code(), ErrorCode::InvalidState);
        assert!(stopped.hint().unwrap().contains("resume"));
        let escape = SandboxError::PathOutsideSandbox {
            path: "../etc".into(),
        };
        assert_eq!(escape.code().http_status(), 400);
        let io = SandboxError::io(
            "read",
            "/x",
            io::Error::from(io::ErrorKind::PermissionDenied),
        );
        assert!(io.is_internal());
    }
}
