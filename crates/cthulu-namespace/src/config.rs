//! How the namespace backend is set up: where its sandboxes live and how it starts init.

use std::path::PathBuf;

/// How to start a sandbox's init process: `program args... <state dir> <hostname>`. In
/// production this is the `cthulu` binary with `args = ["__ns-init"]`; tests use the
/// `cthulu-ns-init` binary of this crate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
}

/// Configuration of a [`NamespaceProvider`](crate::NamespaceProvider).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceConfig {
    /// Directory holding one state directory per sandbox (e.g.
    /// `$CTHULU_HOME/sandboxes/namespace`). Created if missing.
    pub root: PathBuf,
    pub init: InitCommand,
    /// How to start the shim of a streamed process: `program args... <process dir>`. In
    /// production the `cthulu` binary with `args = ["__ns-shim"]`; tests use the
    /// `cthulu-ns-shim` binary of this crate (see [`crate::shim`]).
    pub shim: cthulu_host::ShimCommand,
}
