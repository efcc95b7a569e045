//! `sandbox create | ls | get | stop | resume | rm | extend`.

use std::time::Duration;

use anyhow::Context as _;
use cthulu_client::{CthuluClient, SandboxFilter};
use cthulu_types::{
    BackendKind, CreateSandboxRequest, NetworkMode, Resources, Sandbox, SandboxStatus,
    UpdateSandboxRequest,
};

use crate::output::{self, print_json, Table};
use crate::parse;

/// Commands that take just a sandbox id.
#[derive(Debug, clap::Args)]
pub struct SandboxArg {
    /// The sandbox id
    pub sandbox_id: String,
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Backend [default: the server's]
    #[arg(long, value_parser = parse::backend)]
    pub backend: Option<BackendKind>,
    /// Label to filter on later (repeatable)
    #[arg(long = "label", short = 'l', value_name = "KEY=VALUE", value_parser = parse::key_value)]
    pub labels: Vec<(String, String)>,
    /// Environment variable of every exec (repeatable)
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE", value_parser = parse::key_value)]
    pub env: Vec<(String, String)>,
    /// Destroy the sandbox this long after create (e.g. 30m, 1h)
    #[arg(long, value_parser = parse::duration)]
    pub timeout: Option<Duration>,
    /// Memory limit (e.g. 256M, 1G)
    #[arg(long, value_name = "SIZE", value_parser = parse::size_mib)]
    pub memory: Option<u64>,
    /// CPU share in cores (e.g. 0.5)
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Limit on the number of processes
    #[arg(long)]
    pub pids: Option<u64>,
    /// Virtual CPUs (VM backends)
    #[arg(long)]
    pub vcpus: Option<u32>,
    /// Disk limit (e.g. 1G)
    #[arg(long, value_name = "SIZE", value_parser = parse::size_mib)]
    pub disk: Option<u64>,
    /// Network access: none or full
    #[arg(long, value_parser = parse::network, default_value = "none")]
    pub network: NetworkMode,
    /// Image or rootfs, for the backends that use one
    #[arg(long)]
    pub image: Option<String>,
    /// Start from another sandbox's memory checkpoint: SANDBOX/CHECKPOINT (qemu)
    #[arg(long, value_name = "SANDBOX/CHECKPOINT")]
    pub from_checkpoint: Option<String>,
    /// Create it on this registered node (`cthulu node ls`); implies --backend remote
    #[arg(long)]
    pub node: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only sandboxes with this label (repeatable; all must match)
    #[arg(long = "label", short = 'l', value_name = "KEY=VALUE", value_parser = parse::key_value)]
    pub labels: Vec<(String, String)>,
    /// Only sandboxes in this status
    #[arg(long, value_parser = parse::status)]
    pub status: Option<SandboxStatus>,
    /// Only sandboxes of this backend
    #[arg(long, value_parser = parse::backend)]
    pub backend: Option<BackendKind>,
}

#[derive(Debug, clap::Args)]
pub struct RemoveArgs {
    /// The sandbox ids
    #[arg(required = true)]
    pub sandbox_ids: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct ExtendArgs {
    /// The sandbox id
    pub sandbox_id: String,
    /// New lifetime counted from now; 0 removes the timeout
    #[arg(long, value_parser = parse::duration)]
    pub timeout: Duration,
}

pub async fn create(client: &CthuluClient, json: bool, args: CreateArgs) -> anyhow::Result<u8> {
    let timeout_secs = match args.timeout {
        Some(timeout) if timeout.is_zero() => anyhow::bail!("--timeout must be more than 0"),
        Some(timeout) => Some(timeout.as_secs().max(1)),
        None => None,
    };
    let request = CreateSandboxRequest {
        backend: args.backend,
        labels: parse::into_map(&args.labels),
        env: parse::into_map(&args.env),
        timeout_secs,
        resources: Resources {
            memory_mb: args.memory,
            cpus: args.cpus,
            vcpus: args.vcpus,
            pids: args.pids,
            disk_mb: args.disk,
        },
        network: args.network,
        image: args.image,
        from_checkpoint: args.from_checkpoint,
        node: args.node,
    };
    let sandbox = client
        .create_sandbox(&request)
        .await
        .context("cannot create a sandbox")?;
    if json {
        print_json(&sandbox)?;
    } else {
        println!("{}", sandbox.id);
    }
    Ok(crate::exit::SUCCESS)
}

pub async fn list(client: &CthuluClient, json: bool, args: ListArgs) -> anyhow::Result<u8> {
    let filter = SandboxFilter {
        labels: args.labels,
        status: args.status,
        backend: args.backend,
    };
    let list = client
        .list_sandboxes(&filter)
        .await
        .context("cannot list sandboxes")?;
    if json {
        print_json(&list)?;
        return Ok(crate::exit::SUCCESS);
    }
    let now = cthulu_types::now_ms();
    let mut table = Table::new(&["id", "backend", "status", "age", "expires", "labels"]);
    for sandbox in &list.sandboxes {
        table.row(vec![
            sandbox.id.to_string(),
            sandbox.backend.to_string(),
            sandbox.status.to_string(),
            output::age(sandbox.created_at_ms, now),
            output::expiry(sandbox.expires_at_ms, now),
            output::labels(&sandbox.labels),
        ]);
    }
    table.print()?;
    Ok(crate::exit::SUCCESS)
}

pub async fn get(client: &CthuluClient, json: bool, args: SandboxArg) -> anyhow::Result<u8> {
    let sandbox = client
        .get_sandbox(&args.sandbox_id)
        .await
        .with_context(|| format!("cannot get sandbox {}", args.sandbox_id))?;
    if json {
        print_json(&sandbox)?;
    } else {
        print!("{}", describe(&sandbox, cthulu_types::now_ms()));
    }
    Ok(crate::exit::SUCCESS)
}

/// A sandbox as `name: value` lines.
fn describe(sandbox: &Sandbox, now: u64) -> String {
    let mut lines = vec![
        ("id", sandbox.id.to_string()),
        ("backend", sandbox.backend.to_string()),
        ("status", sandbox.status.to_string()),
        ("age", output::age(sandbox.created_at_ms, now)),
        ("expires", output::expiry(sandbox.expires_at_ms, now)),
        ("labels", output::labels(&sandbox.labels)),
        (
            "network",
            match sandbox.network {
                NetworkMode::None => "none".into(),
                NetworkMode::Full => "full".into(),
            },
        ),
    ];
    let resources = &sandbox.resources;
    if let Some(memory) = resources.memory_mb {
        lines.push(("memory", format!("{memory} MiB")));
    }
    if let Some(cpus) = resources.cpus {
        lines.push(("cpus", cpus.to_string()));
    }
    if let Some(vcpus) = resources.vcpus {
        lines.push(("vcpus", vcpus.to_string()));
    }
    if let Some(pids) = resources.pids {
        lines.push(("pids", pids.to_string()));
    }
    if let Some(disk) = resources.disk_mb {
        lines.push(("disk", format!("{disk} MiB")));
    }
    if let Some(image) = &sandbox.image {
        lines.push(("image", image.clone()));
    }
    if let Some(reason) = &sandbox.status_reason {
        lines.push(("reason", reason.clone()));
    }
    lines
        .into_iter()
        .map(|(name, value)| format!("{:<9}{value}\n", format!("{name}:")))
        .collect()
}

pub async fn stop(client: &CthuluClient, json: bool, args: SandboxArg) -> anyhow::Result<u8> {
    let sandbox = client
        .stop_sandbox(&args.sandbox_id)
        .await
        .with_context(|| format!("cannot stop sandbox {}", args.sandbox_id))?;
    if json {
        print_json(&sandbox)?;
    }
    Ok(crate::exit::SUCCESS)
}

pub async fn resume(client: &CthuluClient, json: bool, args: SandboxArg) -> anyhow::Result<u8> {
    let sandbox = client
        .resume_sandbox(&args.sandbox_id)
        .await
        .with_context(|| format!("cannot resume sandbox {}", args.sandbox_id))?;
    if json {
        print_json(&sandbox)?;
    }
    Ok(crate::exit::SUCCESS)
}

/// Destroys every sandbox named; a failure does not stop the others, and the exit code
/// is the first failure's.
pub async fn remove(client: &CthuluClient, args: RemoveArgs) -> anyhow::Result<u8> {
    let mut first_failure = None;
    for sandbox_id in &args.sandbox_ids {
        let result = client
            .delete_sandbox(sandbox_id)
            .await
            .with_context(|| format!("cannot destroy sandbox {sandbox_id}"));
        if let Err(error) = result {
            let code = crate::exit::report(&error);
            first_failure.get_or_insert(code);
        }
    }
    Ok(first_failure.unwrap_or(crate::exit::SUCCESS))
}

pub async fn extend(client: &CthuluClient, json: bool, args: ExtendArgs) -> anyhow::Result<u8> {
    let request = UpdateSandboxRequest {
        timeout_secs: Some(if args.timeout.is_zero() {
            0
        } else {
            args.timeout.as_secs().max(1)
        }),
        labels: None,
    };
    let sandbox = client
        .update_sandbox(&args.sandbox_id, &request)
        .await
        .with_context(|| format!("cannot extend sandbox {}", args.sandbox_id))?;
    if json {
        print_json(&sandbox)?;
    } else {
        let now = cthulu_types::now_ms();
        eprintln!(
            "sandbox {} expires {}",
            sandbox.id,
            match sandbox.expires_at_ms {
                None => "never".to_owned(),
                Some(_) => output::expiry(sandbox.expires_at_ms, now),
            }
        );
    }
    Ok(crate::exit::SUCCESS)
}
