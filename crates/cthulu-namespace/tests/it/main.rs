//! Integration tests of the namespace backend: what this increment isolates, and what it
//! leaves behind (nothing). Each test prints `SKIP namespace: <reason>` and returns when
//! the backend cannot run on this machine.

mod isolation;
mod lifecycle;
mod limits;
mod support;
