//! The SSH server of each VM: a listener on `<listen ip>:<ssh_port>` (russh, in
//! process, so the guest needs no SSH server of its own).
//!
//! - [`keys`]: the node's ed25519 host key (made once, kept in the home) and the
//!   operator's `authorized_keys`, read again at each login.
//! - [`session`]: one connection: public-key login only, then shells and commands in
//!   the VM's sandbox; forwarding, agent, X11, subsystems and most env are refused.
//!
//! Connections are bounded per VM ([`MAX_CONNECTIONS`]), and one that has not logged in
//! within [`LOGIN_TIMEOUT`] (from connect) is dropped, so silent or slow clients hold nothing for long.

pub mod keys;
pub mod session;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cthulu_server::state::AppState;
use cthulu_types::SandboxId;
use russh::keys::PrivateKey;
use tokio::sync::{watch, Semaphore};

/// The SSH port of VM 0 unless told otherwise; VM `n` gets this + `n`.
pub const DEFAULT_SSH_PORT_BASE: u16 = 2222;
/// Connections one VM's listener serves at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 16;
/// From connect to a successful login (version exchange, key exchange, auth), unless
/// [`SshConfig::login_timeout`] says otherwise.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);
/// A client silent this long is asked whether it is alive; after 3 unanswered asks, it
/// is dropped (an idle but live shell stays).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// `cthulu node --ssh-port-base`, `--ssh-authorized-keys`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshConfig {
    pub port_base: u16,
    /// `None`: `<home>/authorized_keys`.
    pub authorized_keys: Option<PathBuf>,
    /// A connection not logged in by then is dropped.
    pub login_timeout: Duration,
}

impl Default for SshConfig {
    fn default() -> SshConfig {
        SshConfig {
            port_base: DEFAULT_SSH_PORT_BASE,
            authorized_keys: None,
            login_timeout: LOGIN_TIMEOUT,
        }
    }
}

/// How the node serves SSH: shared by every VM's listener.
#[derive(Clone)]
pub struct SshService {
    pub port_base: u16,
    pub authorized_keys: PathBuf,
    login_timeout: Duration,
    config: Arc<russh::server::Config>,
}

impl std::fmt::Debug for SshService {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SshService")
            .field("port_base", &self.port_base)
            .field("authorized_keys", &self.authorized_keys)
            .finish_non_exhaustive()
    }
}

impl SshService {
    pub fn new(host_key: PrivateKey, port_base: u16, authorized_keys: PathBuf) -> SshService {
        let config = russh::server::Config {
            server_id: russh::SshId::Standard("SSH-2.0-cthulu-node".into()),
            methods: session::login_methods(),
            keys: vec![host_key],
            // Refusals take this long, so trying keys fast gains nothing.
            auth_rejection_time: Duration::from_millis(300),
            // OpenSSH's first "none" probe is answered at once.
            auth_rejection_time_initial: Some(Duration::ZERO),
            max_auth_attempts: 6,
            // An idle shell is fine; a dead client is found by keepalives.
            inactivity_timeout: None,
            keepalive_interval: Some(KEEPALIVE_INTERVAL),
            keepalive_max: 3,
            nodelay: true,
            ..russh::server::Config::default()
        };
        SshService {
            port_base,
            authorized_keys,
            login_timeout: LOGIN_TIMEOUT,
            config: Arc::new(config),
        }
    }

    /// The host key (made on first use) in `home`; logs its fingerprint and what in the
    /// authorized keys grants nothing.
    pub fn start(config: &SshConfig, home: &std::path::Path) -> Result<SshService, keys::KeyError> {
        let host_key = keys::load_or_create_host_key(home)?;
        let authorized_keys = config
            .authorized_keys
            .clone()
            .unwrap_or_else(|| home.join(keys::AUTHORIZED_KEYS_FILE));
        let mut service = SshService::new(host_key, config.port_base, authorized_keys);
        service.login_timeout = config.login_timeout;
        tracing::info!(
            host_key = %service.host_key_fingerprint(),
            authorized_keys = %service.authorized_keys.display(),
            "ssh on: public-key logins only"
        );
        keys::check_authorized_keys(&service.authorized_keys);
        Ok(service)
    }

    /// `base + vm_id`, `None` past 65535.
    pub fn port(&self, vm_id: u32) -> Option<u16> {
        u16::try_from(u32::from(self.port_base) + vm_id).ok()
    }

    /// `SHA256:…` of the host key.
    pub fn host_key_fingerprint(&self) -> String {
        self.config
            .keys
            .first()
            .map(|key| keys::fingerprint(key.public_key()))
            .unwrap_or_default()
    }
}

/// `ssh -p <port> root@<host>`, an IPv6 host in brackets is given bare (ssh takes it so).
pub fn ssh_command(host: &str, port: u16) -> String {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    format!("ssh -p {port} root@{host}")
}

/// What one VM's SSH listener serves.
pub struct SshContext {
    pub vm_id: u32,
    pub sandbox_id: SandboxId,
    pub app: Arc<AppState>,
    pub authorized_keys: PathBuf,
}

/// A running SSH listener. Stopping (or dropping) it closes the listener and ends its
/// connections, which kills their processes.
pub struct SshServer {
    port: crate::listener::ServedPort,
}

impl SshServer {
    pub fn serve(
        listener: tokio::net::TcpListener,
        service: &SshService,
        context: SshContext,
    ) -> SshServer {
        let address = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (stop, stopping) = watch::channel(());
        let task = tokio::spawn(accept_loop(
            listener,
            Limits {
                config: service.config.clone(),
                login_timeout: service.login_timeout,
            },
            Arc::new(context),
            stopping,
        ));
        SshServer {
            port: crate::listener::ServedPort::new(address, stop, task, "an ssh"),
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.port.address()
    }

    /// Stops serving; returns once the port is free again and the sessions have ended.
    pub async fn stop(self) {
        self.port.stop().await;
    }
}

/// What every connection of a listener is held to.
#[derive(Clone)]
struct Limits {
    config: Arc<russh::server::Config>,
    login_timeout: Duration,
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    limits: Limits,
    context: Arc<SshContext>,
    mut stopping: watch::Receiver<()>,
) {
    let vm_id = context.vm_id;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        // A slot first: at the limit, new clients wait in the backlog, not in memory.
        let slot = tokio::select! {
            _ = stopping.changed() => return,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
        let (socket, peer) = tokio::select! {
            _ = stopping.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait, then go on.
                    tracing::warn!(vm_id, %error, "ssh accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let limits = limits.clone();
        let context = context.clone();
        let stopping = stopping.clone();
        tokio::spawn(async move {
            serve_connection(socket, peer, limits, context, stopping).await;
            drop(slot);
        });
    }
}

/// One connection until it ends, its login deadline passes or the server stops.
async fn serve_connection(
    socket: tokio::net::TcpStream,
    peer: SocketAddr,
    limits: Limits,
    context: Arc<SshContext>,
    mut stopping: watch::Receiver<()>,
) {
    let connected = tokio::time::Instant::now();
    let vm_id = context.vm_id;
    let authenticated = Arc::new(AtomicBool::new(false));
    let handler =
        session::Connection::new(context, Some(peer), authenticated.clone(), stopping.clone());
    // The version exchange happens in here: a client that says nothing is cut off.
    let login_timeout = limits.login_timeout;
    let running = match tokio::time::timeout(
        login_timeout,
        russh::server::run_stream(limits.config, socket, handler),
    )
    .await
    {
        Ok(Ok(running)) => running,
        Ok(Err(error)) => {
            tracing::debug!(vm_id, %peer, %error, "ssh connection failed before its login");
            return;
        }
        Err(_) => {
            tracing::info!(vm_id, %peer, "ssh connection dropped: nothing sent within {login_timeout:?}");
            return;
        }
    };
    let handle = running.handle();
    // The deadline counts from connect, so it covers the version exchange too.
    let deadline = tokio::time::sleep_until(connected + login_timeout);
    tokio::pin!(running);
    tokio::pin!(deadline);
    let mut deadline_armed = true;
    loop {
        tokio::select! {
            outcome = &mut running => {
                if let Err(error) = outcome {
                    tracing::debug!(vm_id, %peer, %error, "ssh connection ended");
                }
                return;
            }
            _ = &mut deadline, if deadline_armed => {
                if authenticated.load(Ordering::SeqCst) {
                    deadline_armed = false;
                } else {
                    tracing::info!(vm_id, %peer, "ssh connection dropped: no login within {login_timeout:?}");
                    let _ = handle
                        .disconnect(russh::Disconnect::ByApplication, "login timed out".into(), "en".into())
                        .await;
                    return;
                }
            }
            _ = stopping.changed() => {
                let _ = handle
                    .disconnect(russh::Disconnect::ByApplication, "the node is stopping".into(), "en".into())
                    .await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_follow_the_base_and_stop_at_65535() {
        let home = tempfile::tempdir().unwrap();
        let key = keys::load_or_create_host_key(home.path()).unwrap();
        let service = SshService::new(key, 65530, home.path().join("authorized_keys"));
        assert_eq!(service.port(0), Some(65530));
        assert_eq!(service.port(5), Some(65535));
        assert_eq!(service.port(6), None);
        assert!(service.host_key_fingerprint().starts_with("SHA256:"));
    }

    #[test]
    fn the_command_names_the_port_and_host() {
        assert_eq!(ssh_command("10.0.0.5", 2223), "ssh -p 2223 root@10.0.0.5");
        assert_eq!(ssh_command("[::1]", 2222), "ssh -p 2222 root@::1");
    }
}
