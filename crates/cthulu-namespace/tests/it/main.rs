//! Integration tests of the namespace backend: what this increment isolates, and what it
//! leaves behind (nothing). Each test prints `SKIP namespace: <reason>` and returns when
//! the backend cannot run on this machine.

mod checkpoint;
mod disk;
// The seccomp filter, and so these attacks on it, are x86_64 only.
#[cfg(target_arch = "x86_64")]
mod hardening;
mod image;
mod isolation;
mod lifecycle;
mod limits;
mod network;
mod pool;
mod ports;
mod processes;
mod support;
mod unprivileged;
