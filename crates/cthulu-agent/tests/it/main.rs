//! The agent binary in test mode, driven over a Unix socket by a small host built on the
//! protocol crate.

mod detached;
mod exec;
mod files;
mod host;
mod robustness;
mod tty;
mod tunnel;
