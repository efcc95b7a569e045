//! `cthulu serve`: runs the server until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use cthulu_host::ShimCommand;
use cthulu_server::{Server, ServerConfig};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on
    #[arg(long, env = "CTHULU_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
    /// State directory [default: ~/.cthulu]
    #[arg(long, env = "CTHULU_HOME")]
    pub home: Option<PathBuf>,
    /// Backend of sandboxes created without one [default: namespace where it can run,
    /// host otherwise]
    #[arg(long, env = "CTHULU_DEFAULT_BACKEND", value_parser = crate::parse::backend)]
    pub default_backend: Option<cthulu_types::BackendKind>,
    /// Namespace sandboxes kept made ahead of demand (0: none): a create that asks for no
    /// limits, network or image takes one instead of starting one
    #[arg(long, env = "CTHULU_WARM_SANDBOXES", default_value_t = cthulu_server::DEFAULT_WARM_SANDBOXES)]
    pub warm_sandboxes: usize,
    /// MicroVMs of the default shape (qemu backend) kept started ahead of demand, so a
    /// create takes one instead of starting QEMU (about 100 MiB each; 0 disables)
    #[arg(long, env = "CTHULU_WARM_VMS", default_value_t = cthulu_server::DEFAULT_WARM_VMS)]
    pub warm_vms: usize,
    /// Agent definitions (a JSON array, docs/api.md) added to the built-in ones
    /// [default: $CTHULU_HOME/agents.json when it exists]
    #[arg(long, env = "CTHULU_AGENTS", value_name = "FILE")]
    pub agents: Option<PathBuf>,
    /// Largest input archive of an agent run, in bytes (as sent and unpacked)
    #[arg(long, env = "CTHULU_MAX_RUN_INPUT", default_value_t = cthulu_server::runs::config::DEFAULT_MAX_INPUT_BYTES)]
    pub max_run_input: u64,
    /// The most sandboxes held at once; a create past it answers `capacity_exceeded`
    /// [default: no limit]
    #[arg(long, env = "CTHULU_MAX_SANDBOXES")]
    pub max_sandboxes: Option<usize>,
}

/// How the host backend starts its process shim: this very binary, `cthulu __shim`.
pub fn shim_command() -> anyhow::Result<ShimCommand> {
    let program = std::env::current_exe().context("cannot find the path of this executable")?;
    Ok(ShimCommand {
        program,
        args: vec![super::shim::SUBCOMMAND.into()],
    })
}

/// `cthulu __ns-init`: how the namespace backend starts each sandbox's init.
pub fn namespace_init_command() -> anyhow::Result<cthulu_namespace::InitCommand> {
    let program = std::env::current_exe().context("cannot find the path of this executable")?;
    Ok(cthulu_namespace::InitCommand {
        program,
        args: vec![super::shim::NS_INIT_SUBCOMMAND.into()],
    })
}

/// `cthulu __ns-shim`: how the namespace backend starts the shim of a streamed process.
pub fn namespace_shim_command() -> anyhow::Result<ShimCommand> {
    let program = std::env::current_exe().context("cannot find the path of this executable")?;
    Ok(ShimCommand {
        program,
        args: vec![super::shim::NS_SHIM_SUBCOMMAND.into()],
    })
}

pub async fn run(args: ServeArgs) -> anyhow::Result<u8> {
    let home = super::home_dir(args.home)?;
    let config = ServerConfig {
        home: home.clone(),
        listen: args.listen,
        default_backend: args.default_backend,
        host_shim: shim_command()?,
        namespace_init: Some(namespace_init_command()?),
        namespace_shim: namespace_shim_command()?,
        warm_sandboxes: args.warm_sandboxes,
        images: None,
        vm_templates: None,
        warm_vms: args.warm_vms,
        runs: cthulu_server::RunsConfig {
            agents_file: args.agents,
            max_input_bytes: args.max_run_input,
            ..cthulu_server::RunsConfig::default()
        },
        node_token: None,
        max_sandboxes: args.max_sandboxes,
    };
    let server = Server::start(config)
        .await
        .with_context(|| format!("cannot start the server with home {}", home.display()))?;
    let address = server.local_addr();
    tracing::info!(home = %home.display(), "listening on http://{address}");
    server
        .run_until(shutdown_signal())
        .await
        .context("the server failed")?;
    tracing::info!("stopped");
    Ok(crate::exit::SUCCESS)
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(terminate) => terminate,
        Err(error) => {
            tracing::warn!("cannot watch for SIGTERM: {error}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted, shutting down"),
        _ = terminate.recv() => tracing::info!("terminated, shutting down"),
    }
}
