//! [`Node`]: a `cthulu serve` with the node's token in place of API keys, its VM routes
//! and the VMs' terminals.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use cthulu_server::{AccessToken, Server, ServerConfig, ServerError};
use cthulu_types::BackendKind;

use crate::manager::{VmManager, VmSettings};
use crate::ssh::keys::KeyError;
use crate::ssh::{SshConfig, SshService};
use crate::table::{TableError, VmTable};
use crate::terminal::TerminalAssets;

/// VMs a node holds unless told otherwise (as the earlier system did).
pub const DEFAULT_MAX_VMS: usize = 20;
/// The web port of VM 0 unless told otherwise; VM `n` gets this + `n`.
pub const DEFAULT_WEB_PORT_BASE: u16 = 7700;

/// How to start a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The server underneath: home, listen address, backends. Its `access_token`,
    /// `default_backend` and `max_sandboxes` are set from the fields below.
    pub server: ServerConfig,
    /// The bearer token of every call.
    pub token: AccessToken,
    /// The backend VMs are made on.
    pub backend: BackendKind,
    pub max_vms: usize,
    /// The host in `web_terminal` URLs; `None`: the listen address (or, when that is a
    /// wildcard, this machine's host name).
    pub public_host: Option<String>,
    pub web_port_base: u16,
    /// xterm.js and friends for the terminal page.
    pub terminal_assets: TerminalAssets,
    /// `None`: no SSH (`ssh_port` 0).
    pub ssh: Option<SshConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot make the node's home {path} private")]
    Home {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error(transparent)]
    Table(#[from] TableError),
    #[error(transparent)]
    SshKey(#[from] KeyError),
    #[error("--max-vms must be at least 1")]
    NoVms,
}

pub struct Node {
    server: Server,
    manager: Arc<VmManager>,
}

/// The node's own table lives beside the server's database.
fn table_path(home: &std::path::Path) -> PathBuf {
    home.join("node.db")
}

impl Node {
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        if config.max_vms == 0 {
            return Err(NodeError::NoVms);
        }
        private_home(&config.server.home)?;
        let ssh = match &config.ssh {
            Some(ssh) => Some(SshService::start(ssh, &config.server.home)?),
            None => None,
        };
        let mut server_config = config.server;
        server_config.access_token = Some(config.token);
        server_config.default_backend = Some(config.backend);
        // One limit for /vms and /api/v1 sandboxes alike.
        server_config.max_sandboxes = Some(config.max_vms);
        let home = server_config.home.clone();
        let server = Server::start(server_config).await?;
        let listen = server.local_addr();
        let table = VmTable::open(&table_path(&home))?;
        let settings = VmSettings {
            backend: config.backend,
            max_vms: config.max_vms,
            listen_ip: listen.ip(),
            public_host: config
                .public_host
                .unwrap_or_else(|| default_public_host(listen.ip())),
            web_port_base: config.web_port_base,
            ssh,
        };
        let manager = Arc::new(VmManager::new(
            server.state(),
            table,
            settings,
            config.terminal_assets,
        ));
        manager.recover().await?;
        let server = server.with_routes(crate::routes::router(manager.clone()));
        Ok(Node { server, manager })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    pub fn manager(&self) -> &Arc<VmManager> {
        &self.manager
    }

    /// Serves until `shutdown` completes, then stops the terminals and SSH listeners. The VMs keep running;
    /// a node started again on the same home serves them again.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), NodeError> {
        let outcome = self.server.run_until(shutdown).await;
        self.manager.stop_terminals().await;
        Ok(outcome?)
    }
}

/// Creates the home, readable by its owner only: it holds the terminal secrets.
fn private_home(home: &std::path::Path) -> Result<(), NodeError> {
    use std::os::unix::fs::PermissionsExt as _;
    let failed = |source| NodeError::Home {
        path: home.to_owned(),
        source,
    };
    fs_err::create_dir_all(home).map_err(failed)?;
    fs_err::set_permissions(home, std::fs::Permissions::from_mode(0o700)).map_err(failed)
}

/// The listen address, unless it is a wildcard, which no client can connect to: then
/// this machine's host name.
fn default_public_host(listen: IpAddr) -> String {
    if !listen.is_unspecified() {
        return listen.to_string();
    }
    let host_name = fs_err::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_default();
    if host_name.is_empty() {
        tracing::warn!(
            "cannot tell this machine's host name; pass --public-host for usable terminal URLs"
        );
        "localhost".into()
    } else {
        tracing::warn!(host = %host_name, "listening on a wildcard address: terminal URLs name this host; pass --public-host to change it");
        host_name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_host_defaults_to_the_listen_address() {
        assert_eq!(default_public_host(IpAddr::from([10, 0, 0, 5])), "10.0.0.5");
        assert_ne!(default_public_host(IpAddr::from([0, 0, 0, 0])), "0.0.0.0");
    }
}
