//! Agent runs: an agent working in a sandbox on a copy of a directory, its events stored
//! and streamed, its changes computed (docs/api.md, Runs).
//!
//! - [`manager::RunManager`]: checks a request, records the run, starts its task; cancel,
//!   subscribe, recovery after a restart.
//! - [`execute`]: the task of one run, from provisioning to teardown.
//! - [`recorder::Recorder`]: numbers, stores and broadcasts a run's events.
//! - [`changes`]: the workspace before and after as trees, the diff and the archive of
//!   changed files.
//! - [`store`]: the `runs` and `run_events` tables.
//! - [`config`]: limits and the agent definitions (built-in and from an agents file).

pub mod changes;
pub mod config;
pub mod execute;
pub mod manager;
pub mod recorder;
pub mod store;

pub use config::{load_agents, RunsConfig, RunsConfigError};
pub use manager::RunManager;
