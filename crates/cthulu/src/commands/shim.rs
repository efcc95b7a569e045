//! The hidden subcommands the server starts itself with: `cthulu __shim …`, the host
//! backend's process shim (once per streamed command, see `cthulu_host::shim`),
//! `cthulu __ns-init …`, a namespace sandbox's init (see `cthulu_namespace::init`), and
//! `cthulu __ns-shim …`, the namespace backend's process shim (see
//! `cthulu_namespace::shim`). All are synchronous programs that must run before any
//! tokio runtime exists.

use std::ffi::OsString;
use std::process::ExitCode;

/// The name of the shim's subcommand.
pub const SUBCOMMAND: &str = "__shim";
/// The name of the namespace init's subcommand.
pub const NS_INIT_SUBCOMMAND: &str = "__ns-init";
/// The name of the namespace backend's shim subcommand.
pub const NS_SHIM_SUBCOMMAND: &str = "__ns-shim";

/// A hidden subcommand this process was started as, and its arguments.
pub enum Hidden {
    Shim(Vec<OsString>),
    NamespaceInit(Vec<OsString>),
    NamespaceShim(Vec<OsString>),
}

/// The hidden subcommand of this process, if it was started as one.
pub fn arguments() -> Option<Hidden> {
    let mut arguments = std::env::args_os().skip(1);
    let subcommand = arguments.next()?;
    if subcommand == SUBCOMMAND {
        Some(Hidden::Shim(arguments.collect()))
    } else if subcommand == NS_INIT_SUBCOMMAND {
        Some(Hidden::NamespaceInit(arguments.collect()))
    } else if subcommand == NS_SHIM_SUBCOMMAND {
        Some(Hidden::NamespaceShim(arguments.collect()))
    } else {
        None
    }
}

/// Runs the hidden subcommand synchronously, before any tokio runtime exists.
pub fn run(hidden: Hidden) -> ExitCode {
    match hidden {
        Hidden::Shim(arguments) => cthulu_host::shim::run(arguments),
        Hidden::NamespaceInit(arguments) => cthulu_namespace::init::main(arguments),
        Hidden::NamespaceShim(arguments) => cthulu_namespace::shim::main(arguments),
    }
}
