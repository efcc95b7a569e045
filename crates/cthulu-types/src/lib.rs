//! Wire types of the Cthulu API: every request and response body, shared by the server,
//! the typed client, the CLI and (later) the node. Serde only, no I/O.
//!
//! - [`SandboxId`]: the ids we generate (`[a-z0-9]{1,24}`).
//! - [`sandbox`]: create/list/update bodies and the [`SandboxStatus`] state machine.
//! - [`exec`]: one-shot and streaming exec, processes, signals.
//! - [`files`], [`ports`], [`checkpoint`], [`info`]: the other resources.
//! - [`nodes`]: registered nodes of the remote backend, and terminal access URLs.
//! - [`error`]: the `{ "error": { "code", "message", "hint" } }` body and its codes.
//! - [`runs`]: agent runs: the create body, the run, its events (docs/api.md, Runs).
//! - [`stream`]: the WebSocket frame protocol of streaming exec (docs/streaming.md).
//! - [`vms`]: the VM Manager API of a `cthulu node` (`/vms`, `/health`; docs/node.md).

pub mod checkpoint;
pub mod error;
pub mod exec;
pub mod files;
pub mod id;
pub mod info;
pub mod nodes;
pub mod ports;
pub mod runs;
pub mod sandbox;
pub mod stream;
pub mod vms;

pub use checkpoint::{Checkpoint, CheckpointList, CheckpointRequest};
pub use error::{ApiError, ErrorBody, ErrorCode};
pub use exec::{
    Command, ExecRequest, ExecResponse, OutputEncoding, ProcessInfo, ProcessList, ProcessState,
    PtySize, Signal, SignalRequest,
};
pub use files::{DirEntry, DirListing, FileKind, FileWritten};
pub use id::{IdError, SandboxId};
pub use info::{BackendInfo, Capabilities, Capacity, CheckpointSupport, LimitSupport, ServerInfo};
pub use nodes::{AddNodeRequest, NodeList, NodeSummary, TerminalAccess};
pub use ports::{ExposePortRequest, ExposedPort, PortList};
pub use runs::{
    CreateRunRequest, Run, RunChanges, RunEvent, RunEventBody, RunList, RunStatus, RunTimings,
};
pub use sandbox::{
    BackendKind, CreateSandboxRequest, NetworkMode, Resources, Sandbox, SandboxList, SandboxStatus,
    UpdateSandboxRequest,
};

/// Milliseconds since the Unix epoch, the one time format of the API.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}
