//! The error body of every failed API call: `{ "error": { "code", "message", "hint"? } }`.

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Stable machine-readable error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    SandboxNotFound,
    ProcessNotFound,
    CheckpointNotFound,
    FileNotFound,
    PortNotFound,
    RunNotFound,
    PathOutsideSandbox,
    ProgramNotFound,
    InvalidState,
    Unsupported,
    BackendUnavailable,
    Conflict,
    PayloadTooLarge,
    NodeUnreachable,
    /// The server holds as many sandboxes as it is configured to (`max_sandboxes`).
    CapacityExceeded,
    Internal,
}

impl ErrorCode {
    /// The HTTP status this code is answered with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest | ErrorCode::PathOutsideSandbox | ErrorCode::ProgramNotFound => {
                400
            }
            ErrorCode::Unauthorized => 401,
            ErrorCode::SandboxNotFound
            | ErrorCode::ProcessNotFound
            | ErrorCode::CheckpointNotFound
            | ErrorCode::FileNotFound
            | ErrorCode::PortNotFound
            | ErrorCode::RunNotFound => 404,
            ErrorCode::InvalidState | ErrorCode::Conflict => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::Unsupported => 501,
            ErrorCode::BackendUnavailable
            | ErrorCode::NodeUnreachable
            | ErrorCode::CapacityExceeded => 503,
            ErrorCode::Internal => 500,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::SandboxNotFound => "sandbox_not_found",
            ErrorCode::ProcessNotFound => "process_not_found",
            ErrorCode::CheckpointNotFound => "checkpoint_not_found",
            ErrorCode::FileNotFound => "file_not_found",
            ErrorCode::PortNotFound => "port_not_found",
            ErrorCode::RunNotFound => "run_not_found",
            ErrorCode::PathOutsideSandbox => "path_outside_sandbox",
            ErrorCode::ProgramNotFound => "program_not_found",
            ErrorCode::InvalidState => "invalid_state",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::BackendUnavailable => "backend_unavailable",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::NodeUnreachable => "node_unreachable",
            ErrorCode::CapacityExceeded => "capacity_exceeded",
            ErrorCode::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// What to do about it, when there is something to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ApiError,
}

impl fmt::Display for ApiError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{} ({})", self.message, self.code)
    }
}
