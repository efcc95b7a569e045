//! `cthulu run -- CMD…`: a throwaway sandbox for one command, destroyed afterwards.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use cthulu_client::CthuluClient;
use cthulu_types::{BackendKind, CreateSandboxRequest, ExecRequest};
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::GlobalArgs;
use crate::parse;
use crate::session::{self, InterruptPolicy, Outcome, StdinPolicy, StreamOptions};

/// The sandbox outlives the command's timeout by this much before the server reaps it,
/// in case this process dies before destroying it.
const LIFETIME_MARGIN: Duration = Duration::from_secs(60);

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Backend of the sandbox [default: the server's]
    #[arg(long, value_parser = parse::backend)]
    pub backend: Option<BackendKind>,
    /// Kill the command after this long (exit code 124)
    #[arg(long, value_parser = parse::duration, default_value = "15m")]
    pub timeout: Duration,
    /// Environment variable for the command (repeatable)
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE", value_parser = parse::key_value)]
    pub env: Vec<(String, String)>,
    /// Image or rootfs, for the backends that use one
    #[arg(long)]
    pub image: Option<String>,
    /// The command and its arguments
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

pub async fn run(global: &GlobalArgs, args: RunArgs) -> anyhow::Result<u8> {
    anyhow::ensure!(!args.timeout.is_zero(), "--timeout must be more than 0");
    let client = super::client(global)?;
    // Ctrl-C during create must not leave the sandbox behind: note it, finish creating,
    // then destroy.
    let mut interrupts = signal(SignalKind::interrupt()).context("cannot watch for Ctrl-C")?;
    let request = CreateSandboxRequest {
        backend: args.backend,
        labels: BTreeMap::from([("cthulu.run".to_owned(), "true".to_owned())]),
        timeout_secs: Some((args.timeout + LIFETIME_MARGIN).as_secs()),
        image: args.image.clone(),
        ..CreateSandboxRequest::default()
    };
    let create = client.create_sandbox(&request);
    tokio::pin!(create);
    let mut interrupted = false;
    let sandbox = loop {
        tokio::select! {
            created = &mut create => break created.context("cannot create a sandbox")?,
            _ = interrupts.recv() => interrupted = true,
        }
    };
    let sandbox_id = sandbox.id.to_string();
    tracing::debug!(%sandbox_id, "created");
    let outcome = if interrupted {
        Ok(crate::exit::INTERRUPTED)
    } else {
        drop(interrupts);
        execute(&client, &sandbox_id, args).await
    };
    let destroyed = client
        .delete_sandbox(&sandbox_id)
        .await
        .with_context(|| format!("cannot destroy sandbox {sandbox_id}"));
    match (outcome, destroyed) {
        (Ok(code), Ok(())) => Ok(code),
        (Ok(code), Err(error)) => {
            eprintln!("warning: {error:#}");
            Ok(code)
        }
        (Err(error), Ok(())) => Err(error),
        (Err(error), Err(cleanup)) => Err(error.context(format!("and then: {cleanup:#}"))),
    }
}

async fn execute(client: &CthuluClient, sandbox_id: &str, args: RunArgs) -> anyhow::Result<u8> {
    let request = ExecRequest {
        env: parse::into_map(&args.env),
        timeout_ms: Some(args.timeout.as_millis() as u64),
        max_output_bytes: session::UNCAPPED_OUTPUT,
        ..ExecRequest::argv(args.command)
    };
    let session = client
        .exec_stream(sandbox_id, &request)
        .await
        .context("cannot start the command")?;
    let outcome = session::stream(
        session,
        StreamOptions {
            stdin: StdinPolicy::forward_unless_terminal(StdinPolicy::Close),
            interrupt: InterruptPolicy::SignalProcess,
            follow_window_size: false,
        },
    )
    .await?;
    if let Outcome::Interrupted(_) = outcome {
        eprintln!("cthulu: interrupted; destroying sandbox {sandbox_id}");
    }
    Ok(session::exit_code(outcome))
}
