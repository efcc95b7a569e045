//! The node end to end, in-process on loopback: the `/vms` API, its limit and token, the
//! ttyd terminal (driven by a Rust ttyd client doing what the earlier system's client
//! did), the api_key's path, restarts, and one VM on the qemu backend.

mod auth;
mod qemu;
mod restart;
mod secrets;
mod ssh;
mod support;
mod terminal;
mod ttyd;
mod vms;
