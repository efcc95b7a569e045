//! `cthulu sandbox …`: one module per group of subcommands.

mod checkpoints;
mod files;
mod lifecycle;
mod ports;
mod processes;

use crate::cli::GlobalArgs;

#[derive(Debug, clap::Subcommand)]
pub enum SandboxCommand {
    /// Create a sandbox and print its id
    Create(lifecycle::CreateArgs),
    /// List sandboxes
    #[command(visible_alias = "list")]
    Ls(lifecycle::ListArgs),
    /// Show one sandbox
    Get(lifecycle::SandboxArg),
    /// Run a command in a sandbox, streaming its output; exits with its exit code
    Exec(processes::ExecArgs),
    /// Freeze a sandbox
    Stop(lifecycle::SandboxArg),
    /// Continue a stopped sandbox
    Resume(lifecycle::SandboxArg),
    /// Destroy sandboxes
    #[command(visible_alias = "destroy")]
    Rm(lifecycle::RemoveArgs),
    /// Set a new lifetime, counted from now
    Extend(lifecycle::ExtendArgs),
    /// Save the sandbox's state and print the checkpoint id
    Checkpoint(checkpoints::CheckpointArgs),
    /// List a sandbox's checkpoints
    Checkpoints(lifecycle::SandboxArg),
    /// Bring a sandbox back to a checkpoint (id or name)
    Restore(checkpoints::RestoreArgs),
    /// Expose a sandbox port on the host and print its URL
    Port(ports::PortArgs),
    /// List a sandbox's exposed ports
    Ports(lifecycle::SandboxArg),
    /// Stop exposing a sandbox port
    Unport(ports::PortArgs),
    /// List a sandbox's processes
    Ps(lifecycle::SandboxArg),
    /// Stream a (detached) process's output again
    Attach(processes::ProcessArgs),
    /// Signal a process (TERM by default; KILL kills its whole group)
    Kill(processes::KillArgs),
    /// List a directory of a sandbox
    LsFiles(files::ListFilesArgs),
}

pub async fn run(global: &GlobalArgs, command: SandboxCommand) -> anyhow::Result<u8> {
    let client = super::client(global)?;
    let json = global.json;
    match command {
        SandboxCommand::Create(args) => lifecycle::create(&client, json, args).await,
        SandboxCommand::Ls(args) => lifecycle::list(&client, json, args).await,
        SandboxCommand::Get(args) => lifecycle::get(&client, json, args).await,
        SandboxCommand::Exec(args) => processes::exec(&client, args).await,
        SandboxCommand::Stop(args) => lifecycle::stop(&client, json, args).await,
        SandboxCommand::Resume(args) => lifecycle::resume(&client, json, args).await,
        SandboxCommand::Rm(args) => lifecycle::remove(&client, args).await,
        SandboxCommand::Extend(args) => lifecycle::extend(&client, json, args).await,
        SandboxCommand::Checkpoint(args) => checkpoints::create(&client, json, args).await,
        SandboxCommand::Checkpoints(args) => checkpoints::list(&client, json, args).await,
        SandboxCommand::Restore(args) => checkpoints::restore(&client, json, args).await,
        SandboxCommand::Port(args) => ports::expose(&client, json, args).await,
        SandboxCommand::Ports(args) => ports::list(&client, json, args).await,
        SandboxCommand::Unport(args) => ports::unexpose(&client, args).await,
        SandboxCommand::Ps(args) => processes::list(&client, json, args).await,
        SandboxCommand::Attach(args) => processes::attach(&client, args).await,
        SandboxCommand::Kill(args) => processes::kill(&client, args).await,
        SandboxCommand::LsFiles(args) => files::list(&client, json, args).await,
    }
}
