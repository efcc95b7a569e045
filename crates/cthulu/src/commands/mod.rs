//! One module per command group; [`run`] dispatches the parsed command line.

pub mod agent;
pub mod bench;
pub mod cp;
pub mod image;
pub mod info;
pub mod key;
pub mod node;
pub mod node_registry;
pub mod run;
pub mod sandbox;
pub mod serve;
pub mod shell;
pub mod shim;

use std::path::PathBuf;

use anyhow::Context as _;
use cthulu_client::{CthuluClient, DEFAULT_URL};

use crate::cli::{Cli, Command, GlobalArgs};

/// Runs one command; the `Ok` value is the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    let global = cli.global;
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Node(args) => node::run(&global, args).await,
        Command::Run(args) => run::run(&global, args).await,
        Command::Sandbox(command) => sandbox::run(&global, command).await,
        Command::Shell(args) => shell::run(&global, args).await,
        Command::Cp(args) => cp::run(&global, args).await,
        Command::Info => info::run(&global).await,
        Command::Key(command) => key::run(command),
        Command::Bench(args) => bench::run(&global, args).await,
        Command::Image(command) => image::run(&global, command).await,
        Command::Agent(command) => agent::run(&global, command).await,
    }
}

/// The server URL: `--url`, else `CTHULU_URL`, else the default.
pub fn server_url(global: &GlobalArgs) -> String {
    global
        .url
        .clone()
        .or_else(|| std::env::var("CTHULU_URL").ok())
        .filter(|url| !url.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_URL.to_owned())
}

/// A client of the server named by the global options.
pub fn client(global: &GlobalArgs) -> anyhow::Result<CthuluClient> {
    CthuluClient::new(&server_url(global), global.token.clone())
        .context("cannot set up the API client")
}

/// The server's state directory: `--home`, else `$CTHULU_HOME` (clap reads it), else
/// `~/.cthulu`.
pub fn home_dir(home: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(home) = home {
        return Ok(home);
    }
    let user_home = std::env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .context("neither --home, CTHULU_HOME nor HOME is set")?;
    Ok(PathBuf::from(user_home).join(".cthulu"))
}
