//! [`HostError`]: what setting up the host backend can fail with. Operations on sandboxes
//! fail with the contract's [`SandboxError`](cthulu_core::SandboxError).

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The root directory cannot be created or opened (the io error names the path).
    #[error("cannot prepare the host backend root")]
    Root(#[source] io::Error),
    #[error("the host backend root {path} is not an absolute path")]
    RelativeRoot { path: PathBuf },
}
