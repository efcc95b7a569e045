//! `sandbox checkpoint | checkpoints | restore`.

use anyhow::Context as _;
use cthulu_client::CthuluClient;
use cthulu_types::CheckpointRequest;

use super::lifecycle::SandboxArg;
use crate::output::{self, print_json, Table};

#[derive(Debug, clap::Args)]
pub struct CheckpointArgs {
    /// The sandbox id
    pub sandbox_id: String,
    /// A name to restore by (unique within the sandbox)
    #[arg(long)]
    pub name: Option<String>,
    /// Save running processes too, on backends that can
    #[arg(long)]
    pub memory: bool,
}

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The sandbox id
    pub sandbox_id: String,
    /// The checkpoint id or name
    pub checkpoint: String,
}

pub async fn create(client: &CthuluClient, json: bool, args: CheckpointArgs) -> anyhow::Result<u8> {
    if let Some(name) = &args.name {
        anyhow::ensure!(
            cthulu_types::checkpoint::valid_checkpoint_name(name),
            "invalid checkpoint name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.', not starting with '.'"
        );
    }
    let request = CheckpointRequest {
        name: args.name,
        memory: args.memory,
    };
    let checkpoint = client
        .create_checkpoint(&args.sandbox_id, &request)
        .await
        .with_context(|| format!("cannot checkpoint sandbox {}", args.sandbox_id))?;
    if json {
        print_json(&checkpoint)?;
    } else {
        println!("{}", checkpoint.id);
    }
    Ok(crate::exit::SUCCESS)
}

pub async fn list(client: &CthuluClient, json: bool, args: SandboxArg) -> anyhow::Result<u8> {
    let list = client
        .checkpoints(&args.sandbox_id)
        .await
        .with_context(|| format!("cannot list the checkpoints of sandbox {}", args.sandbox_id))?;
    if json {
        print_json(&list)?;
        return Ok(crate::exit::SUCCESS);
    }
    let now = cthulu_types::now_ms();
    let mut table = Table::new(&["id", "name", "size", "memory", "age"]);
    for checkpoint in &list.checkpoints {
        table.row(vec![
            checkpoint.id.clone(),
            checkpoint.name.clone().unwrap_or_else(|| "-".into()),
            output::bytes(checkpoint.size_bytes),
            if checkpoint.memory { "yes" } else { "no" }.into(),
            output::age(checkpoint.created_at_ms, now),
        ]);
    }
    table.print()?;
    Ok(crate::exit::SUCCESS)
}

pub async fn restore(client: &CthuluClient, json: bool, args: RestoreArgs) -> anyhow::Result<u8> {
    let sandbox = client
        .restore_checkpoint(&args.sandbox_id, &args.checkpoint)
        .await
        .with_context(|| {
            format!(
                "cannot restore sandbox {} to checkpoint {}",
                args.sandbox_id, args.checkpoint
            )
        })?;
    if json {
        print_json(&sandbox)?;
    }
    Ok(crate::exit::SUCCESS)
}
