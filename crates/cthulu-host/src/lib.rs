//! The host backend: sandboxes that are plain host processes working in a directory of
//! their own. No isolation at all (trusted work only); it is the reference implementation
//! of the sandbox contract that every other backend is measured against.
//!
//! - [`HostProvider`] (built from a [`HostConfig`]) implements
//!   [`SandboxProvider`](cthulu_core::SandboxProvider): it makes, lists and re-attaches
//!   sandboxes under `<root>/<sandbox_id>/`.
//! - [`HostSandbox`] implements [`SandboxHandle`](cthulu_core::SandboxHandle): one-shot
//!   exec runs the program directly with `tokio::process` (a stream past its cap is closed,
//!   so endless output ends the command); streaming exec, PTYs and detached processes run
//!   under the [`shim`], a small process of their own that outlives a restart of the
//!   server (a stream past its cap is drained, so a long-lived server is not killed by its
//!   logs); files resolve race-free beneath the workspace (`openat2` `RESOLVE_BENEATH`);
//!   exposed ports get a loopback forwarder that `unexpose_port` closes; checkpoints are
//!   gzipped tar archives of the workspace ([`archive`], shared with the namespace
//!   backend, which also keeps overlay layers and owners; [`checkpoint`] has the
//!   bookkeeping both use); stop and resume are `SIGSTOP` / `SIGCONT` to
//!   every process group of the sandbox; destroy kills them all (and sweeps `/proc` for
//!   whatever still works in the sandbox directory) and removes the directory.
//!
//! Nothing is isolated: commands run as the server's user with its view of the host.
//! Only the environment is filtered (`PATH`, `LANG`, `TERM` of the host, then `HOME`, the
//! sandbox's and the request's variables). Timeouts and output caps are enforced; memory,
//! CPU, pid and disk limits are not (and [`HostProvider`]'s info says so).
//! - The `cthulu-shim` binary of this crate (and `cthulu __shim`) is [`shim::run`].
//!
//! On disk, per sandbox:
//!
//! ```text
//! <root>/<sandbox_id>/state.json     env, status, ports, checkpoints, process records
//!                    /workspace/     HOME and default cwd of every command
//!                    /checkpoints/   <checkpoint_id>.tar.gz
//!                    /procs/<process_id>/   spec.json, sock, pid.json, exit.json, output
//! ```

pub mod archive;
pub mod checkpoint;
pub mod command;
mod config;
mod error;
mod exec;
pub mod files;
mod handle;
pub mod handles;
mod ids;
pub mod ports;
pub mod process_groups;
pub mod processes;
mod provider;
mod sandbox;
pub mod shim;
mod state;
pub mod state_file;
pub mod workspace;

pub use config::{HostConfig, ShimCommand};
pub use error::HostError;
pub use provider::HostProvider;
pub use sandbox::HostSandbox;
