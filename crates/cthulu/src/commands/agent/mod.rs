//! `cthulu agent …`: agent runs. `run` copies a directory into a sandbox, runs the agent
//! there and follows it live; the others look at runs and cancel them.

mod archive;
mod render;
mod run;
mod runs;

use crate::cli::GlobalArgs;

#[derive(Debug, clap::Subcommand)]
pub enum AgentCommand {
    /// Run an agent on a copy of a directory in a sandbox, following it live; exits 0 when
    /// the agent reported success
    Run(Box<run::AgentRunArgs>),
    /// List runs, newest first
    #[command(visible_alias = "list")]
    Ls,
    /// Show one run: status, result, cost, turns, changes
    Show(runs::RunArg),
    /// Print a run's events; with --follow, live until it ends
    Logs(runs::LogsArgs),
    /// Cancel a run: its agent is killed and its sandbox destroyed unless kept
    Cancel(runs::RunArg),
}

pub async fn run(global: &GlobalArgs, command: AgentCommand) -> anyhow::Result<u8> {
    match command {
        AgentCommand::Run(args) => run::run(global, *args).await,
        AgentCommand::Ls => runs::list(global).await,
        AgentCommand::Show(args) => runs::show(global, args).await,
        AgentCommand::Logs(args) => runs::logs(global, args).await,
        AgentCommand::Cancel(args) => runs::cancel(global, args).await,
    }
}
