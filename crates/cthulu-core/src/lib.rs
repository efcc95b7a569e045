//! The sandbox contract every backend implements, and the suite that checks it.
//!
//! - [`SandboxProvider`] makes and re-finds sandboxes of one backend;
//! - [`SandboxHandle`] is one sandbox: exec, processes, files, ports, checkpoints,
//!   stop/resume, destroy;
//! - [`ExecStream`] is one running process: output events, stdin, signals, resize.
//!
//! [`SandboxError`] is the one error type of the contract; an operation a backend cannot
//! do is [`SandboxError::Unsupported`]. Lifecycle legality is
//! [`SandboxStatus`](cthulu_types::SandboxStatus)'s. [`conformance`] holds the scenarios
//! every backend runs (`CONFORMANCE.md`).

pub mod conformance;
pub mod error;
pub mod output;
pub mod path;
pub mod provider;
pub mod spec;

pub use error::SandboxError;
pub use output::CappedBuffer;
pub use path::workspace_relative;
pub use provider::{
    ByteReader, Duplex, ExecStream, FileDownload, HostWorkspace, SandboxHandle, SandboxProvider,
};
pub use spec::{
    ExecEvent, ExecOutput, ExecSpec, ExitInfo, PutOptions, SandboxSpec, UNLIMITED_TIMEOUT,
};
