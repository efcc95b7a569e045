//! `cthulu __shim …` (hidden): the host backend's process shim, which the server starts
//! once per streamed command (see `cthulu_host::shim`).

use std::ffi::OsString;
use std::process::ExitCode;

/// The name of the hidden subcommand.
pub const SUBCOMMAND: &str = "__shim";

/// The shim's arguments when this process was started as `cthulu __shim …`.
pub fn arguments() -> Option<Vec<OsString>> {
    let mut arguments = std::env::args_os().skip(1);
    if arguments.next()? != SUBCOMMAND {
        return None;
    }
    Some(arguments.collect())
}

/// Runs the shim synchronously, before any tokio runtime exists.
pub fn run(arguments: Vec<OsString>) -> ExitCode {
    cthulu_host::shim::run(arguments)
}
