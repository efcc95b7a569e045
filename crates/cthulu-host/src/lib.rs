//! The host backend (being written).

use std::path::PathBuf;

/// How to start the host backend's process shim: `program args... <shim arguments>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
}
