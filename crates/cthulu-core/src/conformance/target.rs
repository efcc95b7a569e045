//! [`ConformanceTarget`]: what a backend's test file gives the suite.

use std::sync::Arc;

use cthulu_types::SandboxId;

use crate::SandboxProvider;

/// One backend under test, as its test file sets it up (a state directory, a shim, a
/// daemon socket...). The suite makes one target per test.
pub trait ConformanceTarget: Send + Sync + 'static {
    /// The backend's name in `SKIP` lines and failure messages (`host`, `namespace`...).
    fn name(&self) -> &'static str;

    /// A provider on this target's state, or why the backend cannot run on this machine
    /// (the test then prints `SKIP <name>: <reason>` and returns). Called once per test,
    /// inside the tokio runtime. A provider whose `info()` says it is unavailable is
    /// skipped the same way.
    fn provider(&self) -> Result<Arc<dyn SandboxProvider>, String>;

    /// A new provider instance on the same state, as a restarted `cthulu serve` would
    /// make it. The suite drops every handle and provider it holds before calling this.
    fn restarted_provider(&self) -> Result<Arc<dyn SandboxProvider>, String>;

    /// Whether the backend isolates sandboxed code from the host; only then do the
    /// isolation scenarios run.
    fn isolating(&self) -> bool;

    /// What is left on this machine of a destroyed sandbox (processes, directories,
    /// mounts, cgroups, sockets...), one description per trace; empty when nothing is.
    /// Checked after every scenario's destroy. `None` (the default): the target cannot
    /// tell, and the check is skipped.
    fn leftovers(&self, sandbox_id: &SandboxId) -> Option<Vec<String>> {
        let _ = sandbox_id;
        None
    }
}
