//! `cthulu bench`: latency, throughput and memory of every available backend, measured
//! through the real HTTP API of an in-process server (or of the server at `--url`).

mod measure;
mod node;
mod node_ssh;
mod report;
mod runs;
mod vm;

use std::net::SocketAddr;

use anyhow::Context as _;
use cthulu_client::CthuluClient;
use cthulu_server::{Server, ServerConfig};
use cthulu_types::BackendKind;
use tokio::sync::oneshot;

use crate::cli::GlobalArgs;
use crate::output::print_json;
use report::BenchReport;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Only this backend [default: every available one]
    #[arg(long, value_parser = crate::parse::backend)]
    pub backend: Option<BackendKind>,
    /// Samples of each latency measurement
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub iterations: u32,
    /// Idle sandboxes created to measure memory per sandbox (0 skips it)
    #[arg(long, default_value_t = 1000)]
    pub sandboxes: u32,
    /// Bytes streamed, uploaded and downloaded by the throughput measurements, in MiB
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    pub transfer_mib: u64,
    /// Warm namespace sandboxes of the in-process server (as `serve --warm-sandboxes`);
    /// 0 measures every create from scratch
    #[arg(long, default_value_t = cthulu_server::DEFAULT_WARM_SANDBOXES)]
    pub warm_sandboxes: usize,
    /// Idle microVMs created to measure memory per VM (0 skips it)
    #[arg(long, default_value_t = 10)]
    pub vms: u32,
    /// MicroVMs booted from nothing (no template) to measure the cold boot (0 skips it)
    #[arg(long, default_value_t = 3)]
    pub cold_boots: u32,
    /// State directory whose microVM images (`images/`) and templates (`qemu-templates/`)
    /// the in-process server uses [default: $CTHULU_HOME, else ~/.cthulu]
    #[arg(long, env = "CTHULU_HOME")]
    pub home: Option<std::path::PathBuf>,
    /// Instead: measure N agent runs (overhead beyond the agent, SSE latency) with the
    /// stand-in agent on a 10 MB working directory; `--backend` default namespace
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: Option<u32>,
    /// Instead: measure a node's web terminal on N VMs (`POST /vms` to the first echo
    /// over the ttyd socket; keystroke to echo); `--backend` default namespace
    #[arg(long, value_name = "N", conflicts_with = "runs", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub node: Option<u32>,
}

/// The server under test: ours, in this process, or someone else's.
struct Target {
    client: CthuluClient,
    description: String,
    in_process: Option<InProcessServer>,
}

struct InProcessServer {
    shutdown: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), cthulu_server::ServerError>>,
    // Removed (with every sandbox's files) when the bench ends.
    _home: tempfile::TempDir,
}

async fn start_target(
    global: &GlobalArgs,
    warm_sandboxes: usize,
    user_home: &std::path::Path,
) -> anyhow::Result<Target> {
    if global.url.is_some() {
        let client = super::client(global)?;
        return Ok(Target {
            description: client.base_url().to_string(),
            client,
            in_process: None,
        });
    }
    let home = tempfile::Builder::new()
        .prefix("cthulu-bench-")
        .tempdir()
        .context("cannot create a temporary home for the bench server")?;
    let config = ServerConfig {
        home: home.path().to_owned(),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        default_backend: None,
        host_shim: super::serve::shim_command()?,
        namespace_init: Some(super::serve::namespace_init_command()?),
        namespace_shim: super::serve::namespace_shim_command()?,
        warm_sandboxes,
        images: Some(user_home.join("images")),
        vm_templates: Some(user_home.join("qemu-templates")),
        warm_vms: cthulu_server::DEFAULT_WARM_VMS,
        runs: cthulu_server::RunsConfig::default(),
        access_token: None,
        max_sandboxes: None,
    };
    let server = Server::start(config)
        .await
        .context("cannot start the in-process bench server")?;
    let address = server.local_addr();
    let (shutdown, shutdown_received) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run_until(async move {
        let _ = shutdown_received.await;
    }));
    let client = CthuluClient::new(&format!("http://{address}"), None)
        .context("cannot set up the API client")?;
    Ok(Target {
        client,
        description: format!("in-process server on {address}"),
        in_process: Some(InProcessServer {
            shutdown,
            task,
            _home: home,
        }),
    })
}

pub async fn run(global: &GlobalArgs, args: BenchArgs) -> anyhow::Result<u8> {
    if let Some(count) = args.runs {
        return runs::run(global, &args, count).await;
    }
    if let Some(vms) = args.node {
        return node::run(global, &args, vms).await;
    }
    let user_home = super::home_dir(args.home.clone())?;
    let target = start_target(global, args.warm_sandboxes, &user_home).await?;
    let outcome = bench(&target, &args, &user_home).await;
    if let Some(server) = target.in_process {
        let _ = server.shutdown.send(());
        match tokio::time::timeout(std::time::Duration::from_secs(10), server.task).await {
            Ok(Ok(Err(error))) => tracing::warn!("the bench server failed: {error}"),
            Ok(_) => {}
            Err(_) => tracing::warn!("the bench server did not stop within 10 s"),
        }
    }
    let report = outcome?;
    if global.json {
        print_json(&report)?;
    } else {
        print!("{}", report.render());
    }
    Ok(crate::exit::SUCCESS)
}

async fn bench(
    target: &Target,
    args: &BenchArgs,
    user_home: &std::path::Path,
) -> anyhow::Result<BenchReport> {
    let info = target
        .client
        .info()
        .await
        .context("cannot get the server's info")?;
    let backends: Vec<_> = info
        .backends
        .iter()
        .filter(|backend| args.backend.is_none_or(|wanted| wanted == backend.kind))
        .collect();
    if let Some(wanted) = args.backend {
        let found = backends
            .first()
            .with_context(|| format!("the server has no {wanted} backend"))?;
        anyhow::ensure!(
            found.available,
            "the {wanted} backend is unavailable: {}",
            found
                .unavailable_reason
                .as_deref()
                .unwrap_or("no reason given")
        );
    }
    let mut reports = Vec::new();
    for backend in backends {
        if !backend.available {
            eprintln!(
                "bench: SKIP {}: {}",
                backend.kind,
                backend
                    .unavailable_reason
                    .as_deref()
                    .unwrap_or("unavailable")
            );
            continue;
        }
        let microvm = backend.kind == BackendKind::Qemu;
        let bench = measure::BackendBench {
            client: &target.client,
            backend,
            iterations: args.iterations,
            transfer_bytes: args.transfer_mib * 1024 * 1024,
            idle_sandboxes: if microvm { args.vms } else { args.sandboxes },
            measure_memory: target.in_process.is_some(),
        };
        let mut report = bench.run().await;
        if microvm && args.cold_boots > 0 {
            eprintln!("bench: {}: cold boot ×{}", backend.kind, args.cold_boots);
            match vm::cold_boots(&user_home.join("images"), args.cold_boots).await {
                Ok(latency) => report.cold_boot = latency,
                Err(error) => report.notes.push(format!("cold boot: {error:#}")),
            }
        }
        reports.push(report);
    }
    Ok(BenchReport {
        server: target.description.clone(),
        version: info.version,
        iterations: args.iterations,
        backends: reports,
    })
}
