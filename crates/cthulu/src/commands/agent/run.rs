//! `cthulu agent run`: archive the working directory, start the run, follow its events
//! live, print the outcome and the diff, optionally write the changes back.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use cthulu_client::{CthuluClient, RunStreamItem};
use cthulu_types::{BackendKind, CreateRunRequest, Run, SandboxId};
use tokio::signal::unix::{signal, SignalKind};

use super::{archive, render};
use crate::cli::GlobalArgs;
use crate::exit::Hint;
use crate::parse;

#[derive(Debug, clap::Args)]
pub struct AgentRunArgs {
    /// The directory the agent works on (copied in whole, `.git` included)
    #[arg(long, value_name = "DIR")]
    pub workdir: PathBuf,
    /// What to ask the agent
    #[arg(long)]
    pub prompt: String,
    /// Agent definition [default: claude-code]
    #[arg(long)]
    pub agent: Option<String>,
    /// Backend of the run's sandbox [default: the server's]
    #[arg(long, value_parser = parse::backend, conflicts_with = "sandbox")]
    pub backend: Option<BackendKind>,
    /// Run in this existing sandbox (kept afterwards)
    #[arg(long, value_name = "ID")]
    pub sandbox: Option<String>,
    /// Tools the agent may use, comma-separated (`Bash,Read,Edit`)
    #[arg(long, value_name = "TOOLS")]
    pub allowed_tools: Option<String>,
    /// Appended to the agent's system prompt
    #[arg(long)]
    pub system_prompt: Option<String>,
    /// Model name passed to the agent
    #[arg(long)]
    pub model: Option<String>,
    /// Pass this environment variable of this shell to the agent (repeatable); its value
    /// is never stored and is redacted from events
    #[arg(long = "pass-env", value_name = "NAME")]
    pub pass_env: Vec<String>,
    /// Leave paths out of the archive (repeatable): a name matches anywhere (`target`,
    /// `node_modules`), a path with a slash from the top (`build/out`)
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Kill the agent after this long
    #[arg(long, value_parser = parse::duration, default_value = "30m")]
    pub timeout: Duration,
    /// Write the agent's changes back into DIR at the end
    #[arg(long)]
    pub apply: bool,
    /// Keep the sandbox after the run
    #[arg(long)]
    pub keep: bool,
}

fn request(args: &AgentRunArgs) -> anyhow::Result<CreateRunRequest> {
    let mut env = BTreeMap::new();
    for name in &args.pass_env {
        let value = std::env::var(name)
            .with_context(|| format!("--pass-env {name}: the variable is not set here"))?;
        env.insert(name.clone(), value);
    }
    let sandbox_id = args
        .sandbox
        .as_deref()
        .map(SandboxId::parse)
        .transpose()
        .context("--sandbox is not a sandbox id")?;
    let packed = archive::pack(&args.workdir, &args.exclude)?;
    Ok(CreateRunRequest {
        prompt: args.prompt.clone(),
        agent: args.agent.clone(),
        backend: args.backend,
        sandbox_id,
        input_archive: Some(base64::engine::general_purpose::STANDARD.encode(packed)),
        allowed_tools: args
            .allowed_tools
            .iter()
            .flat_map(|tools| tools.split(','))
            .map(str::trim)
            .filter(|tool| !tool.is_empty())
            .map(str::to_owned)
            .collect(),
        system_prompt: args.system_prompt.clone(),
        model: args.model.clone(),
        max_turns: None,
        env,
        timeout_secs: Some(args.timeout.as_secs().max(1)),
        keep: args.keep,
    })
}

pub async fn run(global: &GlobalArgs, args: AgentRunArgs) -> anyhow::Result<u8> {
    let client = super::super::client(global)?;
    let request = request(&args)?;
    let created = client
        .create_run(&request)
        .await
        .context("cannot start the run")?;
    eprintln!("run {} started (agent {})", created.id, created.agent);
    let mut interrupts = signal(SignalKind::interrupt()).context("cannot watch for Ctrl-C")?;
    let followed = tokio::select! {
        followed = follow(&client, &created.id, !global.json) => followed,
        _ = interrupts.recv() => {
            eprintln!("cthulu: interrupted; cancelling run {}", created.id);
            client
                .cancel_run(&created.id)
                .await
                .with_context(|| format!("cannot cancel run {}", created.id))
        }
    };
    let run = followed?;
    if global.json {
        crate::output::print_json(&run)?;
    } else {
        print!("{}", render::outcome(&run));
        std::io::stdout()
            .flush()
            .context("cannot write to stdout")?;
    }
    if args.apply {
        apply(&client, &run, &args.workdir).await?;
    }
    Ok(render::exit_code(run.status))
}

/// Prints the run's events (to stderr when `print`) until it ends; reconnects with
/// `Last-Event-ID` when the connection drops.
pub async fn follow(client: &CthuluClient, run_id: &str, print: bool) -> anyhow::Result<Run> {
    let mut after = 0;
    let mut retries = 0;
    loop {
        let mut events = client
            .run_events(run_id, after)
            .await
            .with_context(|| format!("cannot follow run {run_id}"))?;
        loop {
            match events.next().await {
                Ok(Some(RunStreamItem::Event(event))) => {
                    retries = 0;
                    if print {
                        if let Some(text) = render::event(&event) {
                            eprintln!("{text}");
                        }
                    }
                }
                Ok(Some(RunStreamItem::End(run))) => return Ok(*run),
                Ok(None) => anyhow::bail!("the event stream of run {run_id} ended early"),
                Err(error) => {
                    retries += 1;
                    if retries > 5 {
                        return Err(error)
                            .with_context(|| format!("lost the event stream of run {run_id}"));
                    }
                    tracing::warn!(%error, "event stream interrupted; resuming");
                    after = events.last_event_id;
                    tokio::time::sleep(Duration::from_millis(200 * retries)).await;
                    break;
                }
            }
        }
    }
}

async fn apply(client: &CthuluClient, run: &Run, workdir: &std::path::Path) -> anyhow::Result<()> {
    let Some(changes) = &run.changes else {
        return Err(
            anyhow::anyhow!("run {} has no known changes to apply", run.id)
                .context(Hint(format!("see `cthulu agent show {}`", run.id))),
        );
    };
    let archive = client
        .run_changes_archive(&run.id)
        .await
        .with_context(|| format!("cannot download the changes of run {}", run.id))?;
    let touched = archive::apply(workdir, &archive, &changes.deleted)?;
    eprintln!("applied {touched} changes to {}", workdir.display());
    Ok(())
}
