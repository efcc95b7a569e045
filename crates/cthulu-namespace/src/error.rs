//! [`NamespaceError`]: what setting up the namespace backend can fail with. Operations on
//! sandboxes fail with the contract's [`SandboxError`](cthulu_core::SandboxError).

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    /// The root directory cannot be created (the io error names the path).
    #[error("cannot prepare the namespace backend root")]
    Root(#[source] io::Error),
    #[error("the namespace backend root {path} is not an absolute path")]
    RelativeRoot { path: PathBuf },
    #[error("the namespace backend root {path} contains `,` or `:`, which overlayfs options cannot hold")]
    UnusableRoot { path: PathBuf },
}
