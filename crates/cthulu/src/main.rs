//! The `cthulu` binary: the server (`cthulu serve`), the command line client of its API,
//! and the benchmark. See docs/cli.md.
//!
//! - [`cli`]: the command line grammar (clap); each command's arguments live next to its
//!   implementation in [`commands`].
//! - [`exit`]: stable exit codes and how errors are printed.
//! - [`session`]: streams a remote process to this terminal; [`terminal`]: raw mode.

mod cli;
mod commands;
mod exit;
mod output;
mod parse;
mod session;
mod terminal;

fn main() -> std::process::ExitCode {
    // The host backend's process shim and the namespace init are synchronous and must
    // start before any runtime.
    if let Some(hidden) = commands::shim::arguments() {
        return commands::shim::run(hidden);
    }
    let cli = <cli::Cli as clap::Parser>::parse();
    exit::run(cli)
}
