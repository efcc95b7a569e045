//! The process shim: one small process per streamed command, so the command outlives the
//! server that started it (a dev server an agent leaves running, a shell) and can be
//! re-attached after `cthulu serve` restarts.
//!
//! The handle writes `procs/<process_id>/spec.json` (`records::ShimSpec`) and starts
//! `<shim program> <shim args>... <process directory>` (`cthulu __shim <dir>` in production,
//! the `cthulu-shim` binary of this crate in tests). [`run`] is the whole program:
//! `server` leaves the server's session, starts the process (on pipes or a PTY),
//! answers one JSON line on stdout (`records::Handshake`), then serves clients on the
//! Unix socket `sock` with the framed [`protocol`]: the first client (the server that
//! started it) gets every byte of the output, with backpressure; the last 1 MiB of each
//! channel is kept for clients that attach later. It records the exit (`exit.json` plus
//! the kept output) before any client hears of it, and exits once every attached client
//! has it.
//! `client` is the server side of that socket: an [`ExecStream`](cthulu_core::ExecStream).
//!
//! How the process is started, waited for and signalled is a [`Launcher`]: the host
//! backend's [`LocalLauncher`] makes it a child of the shim; the namespace backend's asks
//! a sandbox's init to start it inside and passes it its own pipe ends (or receives a PTY
//! master), then [`run_with`] serves it exactly like a local one.

mod child;
pub(crate) mod client;
pub mod protocol;
pub mod records;
mod server;

pub use child::{Ended, Launcher, LocalLauncher, Process, SpawnError, Spawned, Stdin};

use std::ffi::OsString;
use std::io;
use std::path::PathBuf;
use std::process::ExitCode;

/// What stops the shim before or after its process ran. Failures to start the process
/// itself go to the server in the handshake.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("usage: cthulu-shim <process directory>")]
    Usage,
    #[error("cannot use the process directory")]
    Io(#[source] io::Error),
    #[error("invalid process spec {path}")]
    Spec {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot enter {path}")]
    Chdir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen on {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{message}")]
    Spawn { message: String },
}

/// The shim program. `args` are its arguments without the program name (and without the
/// `__shim` subcommand): exactly one, the process directory.
pub fn run(args: Vec<OsString>) -> ExitCode {
    run_with(args, |_| Box::new(LocalLauncher))
}

/// The shim program with the launcher `launcher` makes for the process directory (a
/// launcher that cannot serve it says so when asked to spawn, so the server hears why).
pub fn run_with(
    args: Vec<OsString>,
    launcher: impl FnOnce(&std::path::Path) -> Box<dyn Launcher>,
) -> ExitCode {
    let result = match <[OsString; 1]>::try_from(args) {
        Ok([process_dir]) => {
            let process_dir = PathBuf::from(process_dir);
            server::serve(&process_dir, launcher(&process_dir).as_ref())
        }
        Err(_) => Err(ShimError::Usage),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // stderr is the process directory's shim.log.
            let mut message = format!("cthulu-shim: {error}");
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}
