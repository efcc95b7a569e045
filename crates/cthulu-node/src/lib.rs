//! `cthulu node`: the VM Manager of a Linux host. It is the Cthulu server (the whole
//! `/api/v1`) with one bearer token for every call, plus the earlier system's VM API so
//! its clients keep working:
//!
//! - [`Node`] starts the server ([`cthulu_server::Server`]) with the node's token and adds
//!   the [`routes`] (`/vms`, `/health`).
//! - [`VmManager`] makes a VM out of a sandbox of the node's backend, a row of its own
//!   SQLite table ([`table::VmTable`]: small vm ids, ports, terminal secrets) and a
//!   terminal listener, and finds them all again after a restart.
//! - [`terminal`] serves each VM's ttyd-compatible web terminal on its own port.
//! - [`ssh`] serves each VM's SSH (public keys only) on its own port.
//! - [`Tier`]: the VM sizes.

pub mod listener;
pub mod manager;
pub mod node;
pub mod routes;
pub mod ssh;
pub mod table;
pub mod terminal;
pub mod tier;

pub use manager::VmManager;
pub use node::{Node, NodeConfig, NodeError, DEFAULT_MAX_VMS, DEFAULT_WEB_PORT_BASE};
pub use terminal::{no_assets, TerminalAssets};
pub use tier::Tier;
