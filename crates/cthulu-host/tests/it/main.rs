//! Integration tests of the host backend through the contract's traits, on a provider
//! rooted in a temporary directory and the `cthulu-shim` binary of this crate.
//! (The cross-backend scenarios are in `tests/conformance.rs`; these go further into what
//! is particular to the host backend: its files on disk, its shim, restarts.)

mod exec;
mod files;
mod lifecycle;
mod stream;
mod support;
