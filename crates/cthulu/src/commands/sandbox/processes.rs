//! `sandbox exec | ps | attach | kill`: processes of a sandbox.

use std::time::Duration;

use anyhow::Context as _;
use cthulu_client::CthuluClient;
use cthulu_types::{ExecRequest, ProcessState, Signal};

use super::lifecycle::SandboxArg;
use crate::output::{self, print_json, Table};
use crate::parse;
use crate::session::{self, InterruptPolicy, StdinPolicy, StreamOptions};

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// The sandbox id
    pub sandbox_id: String,
    /// Environment variable (repeatable); wins over the sandbox's
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE", value_parser = parse::key_value)]
    pub env: Vec<(String, String)>,
    /// Working directory; relative paths start at the workspace
    #[arg(long)]
    pub cwd: Option<String>,
    /// Kill the command after this long (exit code 124) [default: 15m]
    #[arg(long, value_parser = parse::duration)]
    pub timeout: Option<Duration>,
    /// Run this string with /bin/sh -c instead of a command
    #[arg(long, conflicts_with = "command")]
    pub shell: Option<String>,
    /// Start the command, print its process id and leave it running (see `attach`)
    #[arg(long)]
    pub detach: bool,
    /// The command and its arguments
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        required_unless_present = "shell"
    )]
    pub command: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct ProcessArgs {
    /// The sandbox id
    pub sandbox_id: String,
    /// The process id (from `ps` or `exec --detach`)
    pub process_id: String,
}

#[derive(Debug, clap::Args)]
pub struct KillArgs {
    /// The sandbox id
    pub sandbox_id: String,
    /// The process id
    pub process_id: String,
    /// Signal to send: TERM, INT, HUP, KILL (the whole process group), …
    #[arg(long, short = 's', value_parser = parse::signal, default_value = "TERM")]
    pub signal: Signal,
}

pub async fn exec(client: &CthuluClient, args: ExecArgs) -> anyhow::Result<u8> {
    if let Some(timeout) = args.timeout {
        anyhow::ensure!(!timeout.is_zero(), "--timeout must be more than 0");
    }
    let base = match args.shell {
        Some(script) => ExecRequest::shell(script),
        None => ExecRequest::argv(args.command),
    };
    let request = ExecRequest {
        env: parse::into_map(&args.env),
        cwd: args.cwd,
        timeout_ms: args.timeout.map(|timeout| timeout.as_millis() as u64),
        detach: args.detach,
        max_output_bytes: session::UNCAPPED_OUTPUT,
        ..base
    };
    let mut session = client
        .exec_stream(&args.sandbox_id, &request)
        .await
        .with_context(|| format!("cannot run the command in sandbox {}", args.sandbox_id))?;
    if args.detach {
        println!("{}", session.process_id());
        // Closing a detached process's connection leaves it running; wait for the server
        // to acknowledge so the close is not lost when this process exits.
        let _ = session.sender().close().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Ok(Some(_)) = session.next_event().await {}
        })
        .await;
        return Ok(crate::exit::SUCCESS);
    }
    let outcome = session::stream(
        session,
        StreamOptions {
            stdin: StdinPolicy::forward_unless_terminal(StdinPolicy::Close),
            interrupt: InterruptPolicy::SignalProcess,
            follow_window_size: false,
        },
    )
    .await?;
    Ok(session::exit_code(outcome))
}

pub async fn list(client: &CthuluClient, json: bool, args: SandboxArg) -> anyhow::Result<u8> {
    let list = client
        .processes(&args.sandbox_id)
        .await
        .with_context(|| format!("cannot list the processes of sandbox {}", args.sandbox_id))?;
    if json {
        print_json(&list)?;
        return Ok(crate::exit::SUCCESS);
    }
    let now = cthulu_types::now_ms();
    let mut table = Table::new(&["id", "state", "exit", "tty", "detached", "age", "command"]);
    for process in &list.processes {
        let state = match process.state {
            ProcessState::Running => "running",
            ProcessState::Exited => "exited",
            ProcessState::Lost => "lost",
        };
        let exit = match (process.exit_code, process.signal) {
            (_, Some(signal)) => format!("signal {signal}"),
            (Some(code), None) => code.to_string(),
            (None, None) => "-".into(),
        };
        table.row(vec![
            process.id.clone(),
            state.into(),
            exit,
            if process.tty { "yes" } else { "no" }.into(),
            if process.detached { "yes" } else { "no" }.into(),
            output::age(process.started_at_ms, now),
            process.command.clone(),
        ]);
    }
    table.print()?;
    Ok(crate::exit::SUCCESS)
}

pub async fn attach(client: &CthuluClient, args: ProcessArgs) -> anyhow::Result<u8> {
    let session = client
        .attach(&args.sandbox_id, &args.process_id)
        .await
        .with_context(|| {
            format!(
                "cannot attach to process {} of sandbox {}",
                args.process_id, args.sandbox_id
            )
        })?;
    let outcome = session::stream(
        session,
        StreamOptions {
            stdin: StdinPolicy::forward_unless_terminal(StdinPolicy::Leave),
            interrupt: InterruptPolicy::Detach,
            follow_window_size: false,
        },
    )
    .await?;
    if let session::Outcome::Interrupted(_) = outcome {
        eprintln!(
            "cthulu: detached; process {} keeps running",
            args.process_id
        );
    }
    Ok(session::exit_code(outcome))
}

pub async fn kill(client: &CthuluClient, args: KillArgs) -> anyhow::Result<u8> {
    let context = || {
        format!(
            "cannot signal process {} of sandbox {}",
            args.process_id, args.sandbox_id
        )
    };
    if args.signal == Signal::Kill {
        client
            .kill_process(&args.sandbox_id, &args.process_id)
            .await
            .with_context(context)?;
    } else {
        client
            .signal_process(&args.sandbox_id, &args.process_id, args.signal)
            .await
            .with_context(context)?;
    }
    Ok(crate::exit::SUCCESS)
}
