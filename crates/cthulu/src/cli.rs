//! The command line grammar. Each subcommand's arguments are defined next to its code in
//! `commands/`.

use clap::{Parser, Subcommand};

use crate::commands;

#[derive(Debug, Parser)]
#[command(
    name = "cthulu",
    version,
    about = "Sandboxes for AI agents: run the server, drive it, benchmark it",
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, clap::Args)]
pub struct GlobalArgs {
    /// Server URL [env: CTHULU_URL] [default: http://127.0.0.1:8081]
    #[arg(long, global = true, value_name = "URL")]
    pub url: Option<String>,
    /// API key sent as `Authorization: Bearer`
    #[arg(
        long,
        global = true,
        env = "CTHULU_TOKEN",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub token: Option<String>,
    /// Print JSON instead of text
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the Cthulu server
    Serve(commands::serve::ServeArgs),
    /// Run a node: the VM Manager of this host (the sandbox API and the earlier `/vms`
    /// API behind one token, a web terminal per VM); `node add|ls|rm` register, list and
    /// remove the nodes remote sandboxes are placed on
    Node(commands::node::NodeArgs),
    /// Run a command in a fresh sandbox that is destroyed afterwards
    Run(commands::run::RunArgs),
    /// Create, inspect and drive sandboxes
    #[command(subcommand, visible_alias = "sb")]
    Sandbox(commands::sandbox::SandboxCommand),
    /// Open an interactive shell in a sandbox
    Shell(commands::shell::ShellArgs),
    /// Copy a file into or out of a sandbox (`ID:/path` names the sandbox side)
    Cp(commands::cp::CopyArgs),
    /// Show the server's version, backends and their capabilities
    Info,
    /// Manage API keys
    #[command(subcommand)]
    Key(commands::key::KeyCommand),
    /// Measure the server's latency, throughput and memory per sandbox
    Bench(commands::bench::BenchArgs),
    /// Build and list microVM images (kernel, initramfs with the guest agent, rootfs)
    #[command(subcommand)]
    Image(commands::image::ImageCommand),
    /// Run an AI agent (Claude Code or another CLI agent) in a sandbox, and look at runs
    #[command(subcommand)]
    Agent(commands::agent::AgentCommand),
}
