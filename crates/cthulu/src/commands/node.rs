//! `cthulu node`: runs a node, the VM Manager of this host (docs/node.md), until Ctrl-C
//! or SIGTERM. Its subcommands `cthulu node add|ls|rm` are the platform's side
//! (`node_registry`); given none, `cthulu node` runs the node.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use cthulu_node::{Node, NodeConfig, NodeError};
use cthulu_server::{AccessToken, ServerConfig, ServerError};
use cthulu_types::BackendKind;

use crate::exit::Hint;

/// Tokens shorter than this are accepted with a warning.
const SHORT_TOKEN: usize = 16;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct NodeArgs {
    #[command(subcommand)]
    pub command: Option<super::node_registry::NodeCommand>,
    #[command(flatten)]
    pub run: RunNodeArgs,
}

#[derive(Debug, clap::Args)]
pub struct RunNodeArgs {
    /// Address of the API (`/api/v1`, `/vms`, `/health`); the VMs' web terminals listen
    /// on the same IP
    #[arg(long, env = "CTHULU_NODE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The bearer token every call must carry (`Authorization: Bearer <token>`)
    #[arg(long, env = "CTHULU_NODE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// State directory [default: ~/.cthulu-node]
    #[arg(long, env = "CTHULU_NODE_HOME")]
    pub home: Option<PathBuf>,
    /// The most VMs (and API sandboxes) held at once
    #[arg(long, env = "CTHULU_NODE_MAX_VMS", default_value_t = cthulu_node::DEFAULT_MAX_VMS)]
    pub max_vms: usize,
    /// Backend of the VMs [default: qemu where it can run, namespace otherwise]
    #[arg(long, env = "CTHULU_NODE_BACKEND", value_parser = crate::parse::backend)]
    pub backend: Option<BackendKind>,
    /// Host name put in `web_terminal` URLs [default: the listen address]
    #[arg(long, env = "CTHULU_NODE_PUBLIC_HOST")]
    pub public_host: Option<String>,
    /// Web port of VM 0; VM n gets this + n
    #[arg(long, env = "CTHULU_NODE_WEB_PORT_BASE", default_value_t = cthulu_node::DEFAULT_WEB_PORT_BASE)]
    pub web_port_base: u16,
    /// SSH port of VM 0; VM n gets this + n
    #[arg(long, env = "CTHULU_NODE_SSH_PORT_BASE", default_value_t = cthulu_node::ssh::DEFAULT_SSH_PORT_BASE)]
    pub ssh_port_base: u16,
    /// The OpenSSH `authorized_keys` file whose keys may log in to the VMs, read at each
    /// login [default: <home>/authorized_keys]
    #[arg(long, env = "CTHULU_NODE_SSH_AUTHORIZED_KEYS")]
    pub ssh_authorized_keys: Option<PathBuf>,
    /// Serve no SSH (`ssh_port` is 0)
    #[arg(long, env = "CTHULU_NODE_NO_SSH")]
    pub no_ssh: bool,
}

/// The node's state directory: `--home`, else `$CTHULU_NODE_HOME` (clap reads it), else
/// `~/.cthulu-node`.
fn node_home(home: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(home) = home {
        return Ok(home);
    }
    let user_home = std::env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .context("neither --home, CTHULU_NODE_HOME nor HOME is set")?;
    Ok(PathBuf::from(user_home).join(".cthulu-node"))
}

pub async fn run(global: &crate::cli::GlobalArgs, args: NodeArgs) -> anyhow::Result<u8> {
    match args.command {
        Some(command) => super::node_registry::run(global, command).await,
        None => run_node(args.run).await,
    }
}

async fn run_node(args: RunNodeArgs) -> anyhow::Result<u8> {
    let token = args
        .token
        .filter(|token| !token.trim().is_empty())
        .context("a node needs a token")
        .context(Hint(
            "pass --token <secret> or set CTHULU_NODE_TOKEN (e.g. `openssl rand -hex 32`)".into(),
        ))?;
    if token.len() < SHORT_TOKEN {
        tracing::warn!("the token is shorter than {SHORT_TOKEN} characters: anyone who guesses it owns this node's VMs");
    }
    let home = node_home(args.home)?;
    let server = ServerConfig {
        home: home.clone(),
        listen: args.listen,
        default_backend: None,
        host_shim: super::serve::shim_command()?,
        namespace_init: Some(super::serve::namespace_init_command()?),
        namespace_shim: super::serve::namespace_shim_command()?,
        warm_sandboxes: cthulu_server::DEFAULT_WARM_SANDBOXES,
        images: None,
        vm_templates: None,
        warm_vms: cthulu_server::DEFAULT_WARM_VMS,
        runs: cthulu_server::RunsConfig::default(),
        access_token: None,
        max_sandboxes: None,
    };
    let config = NodeConfig {
        server,
        token: AccessToken::new(token),
        backend: args.backend.unwrap_or(BackendKind::Qemu),
        max_vms: args.max_vms,
        public_host: args.public_host,
        web_port_base: args.web_port_base,
        terminal_assets,
        ssh: (!args.no_ssh).then_some(cthulu_node::ssh::SshConfig {
            port_base: args.ssh_port_base,
            authorized_keys: args.ssh_authorized_keys,
            ..cthulu_node::ssh::SshConfig::default()
        }),
    };
    let node = match Node::start(config.clone()).await {
        // Without --backend, qemu is only the first choice.
        Err(NodeError::Server(ServerError::DefaultBackend { backend, reason }))
            if args.backend.is_none() =>
        {
            tracing::warn!(
                %reason,
                "the {backend} backend cannot run here; VMs are namespace sandboxes"
            );
            Node::start(NodeConfig {
                backend: BackendKind::Namespace,
                ..config
            })
            .await
        }
        other => other,
    }
    .with_context(|| format!("cannot start the node with home {}", home.display()))?;
    let manager = node.manager().settings().clone();
    tracing::info!(
        home = %home.display(),
        backend = %manager.backend,
        max_vms = manager.max_vms,
        web_ports = %format!("{}..{}", manager.web_port_base, u32::from(manager.web_port_base) + manager.max_vms as u32 - 1),
        ssh_ports = %manager.ssh.as_ref().map_or("off".to_owned(), |ssh| format!("{}..{}", ssh.port_base, u32::from(ssh.port_base) + manager.max_vms as u32 - 1)),
        "node listening on http://{}",
        node.local_addr()
    );
    node.run_until(super::serve::shutdown_signal())
        .await
        .context("the node failed")?;
    tracing::info!(
        "stopped; the VMs keep running and a node started on the same home serves them again"
    );
    Ok(crate::exit::SUCCESS)
}

/// The node terminal page's files: xterm.js and its add-on, from the web UI's embedded
/// assets (`vendor/…` only; the UI's own pages are not the node's to serve).
fn terminal_assets(path: &str) -> Option<(&'static [u8], &'static str)> {
    if !path.starts_with("vendor/") {
        return None;
    }
    cthulu_web::asset(path).map(|asset| (asset.bytes, asset.content_type))
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use crate::cli::{Cli, Command};

    #[test]
    fn the_node_flags_parse_with_their_defaults() {
        let cli = Cli::try_parse_from(["cthulu", "node", "--token", "t0ken"]).unwrap();
        let Command::Node(args) = cli.command else {
            panic!("not the node command")
        };
        assert!(args.command.is_none());
        assert_eq!(args.run.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(args.run.token.as_deref(), Some("t0ken"));
        assert_eq!(args.run.max_vms, 20);
        assert_eq!(args.run.web_port_base, 7700);
        assert_eq!(args.run.backend, None);
        let cli = Cli::try_parse_from([
            "cthulu",
            "node",
            "--token",
            "t",
            "--listen",
            "0.0.0.0:9000",
            "--max-vms",
            "3",
            "--backend",
            "namespace",
            "--public-host",
            "vm.example",
            "--web-port-base",
            "8800",
        ])
        .unwrap();
        let Command::Node(args) = cli.command else {
            panic!("not the node command")
        };
        assert_eq!(args.run.max_vms, 3);
        assert_eq!(args.run.backend, Some(cthulu_types::BackendKind::Namespace));
        assert_eq!(args.run.public_host.as_deref(), Some("vm.example"));
        assert_eq!(args.run.web_port_base, 8800);
    }
}
