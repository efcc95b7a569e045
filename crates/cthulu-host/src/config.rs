//! How the host backend is set up: where its sandboxes live and how it starts its shim.

use std::path::PathBuf;

/// How to start the host backend's process shim: `program args... <process directory>`.
/// In production this is the `cthulu` binary with `args = ["__shim"]`; tests use the
/// `cthulu-shim` binary of this crate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
}

/// Configuration of a [`HostProvider`](crate::HostProvider).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostConfig {
    /// Directory holding one directory per sandbox (e.g. `$CTHULU_HOME/sandboxes/host`).
    /// Created if missing.
    pub root: PathBuf,
    pub shim: ShimCommand,
}
