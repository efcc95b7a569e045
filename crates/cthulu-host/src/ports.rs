//! Ports. Exposing a sandbox port puts a forwarder in front of it: a loopback listener
//! of the server process that relays each connection to the sandbox's port through a
//! [`Connector`]. A host sandbox shares the host's network, so its connector dials
//! loopback ([`Loopback`]); a namespace sandbox's asks its init for a socket connected
//! inside its network namespace. Either way `unexpose_port` and destroy really close the
//! URL they handed out. Exposed ports are recorded in the sandbox's `state.json`; after a
//! restart [`restart_forwarders`] starts them again, on the same host port when it is
//! free.
//!
//! The bookkeeping (expose, unexpose, list, restart) is written once here, over the
//! [`PortSandbox`] trait that each backend's sandbox implements.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cthulu_core::SandboxError;
use cthulu_types::sandbox::Operation;
use cthulu_types::{ExposedPort, SandboxId, SandboxStatus};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::sandbox::HostSandbox;

/// A listener answers a loopback connect at once; a silent address must not hang us.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

pub use cthulu_core::Duplex;

/// How a forwarder reaches a sandbox port.
#[async_trait]
pub trait Connector: Send + Sync + 'static {
    /// A connection to `port` of the sandbox; `None` when nobody listens there.
    async fn connect(&self, port: u16) -> Option<Box<dyn Duplex>>;
}

/// The forwarders of one sandbox, by sandbox port.
pub type Forwarders = HashMap<u16, Forwarder>;

/// A running forwarder. Dropping it closes its listener and every connection it relays.
pub struct Forwarder {
    task: JoinHandle<()>,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a sandbox gives the port bookkeeping.
pub trait PortSandbox: Send + Sync {
    fn sandbox_id(&self) -> &SandboxId;

    fn connector(&self) -> Arc<dyn Connector>;

    /// Locks the sandbox, checks `operation` against its status (`None`: it only has to
    /// exist, running or stopped), and hands `change` its recorded ports and their
    /// forwarders. When `change` altered the records they are saved (in `state.json`);
    /// if saving fails, the records and forwarders are put back as they were and the
    /// error returned.
    fn with_ports<R>(
        &self,
        operation: Option<Operation>,
        change: impl FnOnce(&mut Vec<ExposedPort>, &mut Forwarders) -> R,
    ) -> Result<R, SandboxError>;
}

/// For [`PortSandbox::with_ports`] implementations: runs `change`, then `save` when the
/// records changed, undoing the change when saving fails.
pub fn change_and_save<R>(
    records: &mut Vec<ExposedPort>,
    forwarders: &mut Forwarders,
    change: impl FnOnce(&mut Vec<ExposedPort>, &mut Forwarders) -> R,
    save: impl FnOnce(&[ExposedPort]) -> Result<(), SandboxError>,
) -> Result<R, SandboxError> {
    let before = records.clone();
    let result = change(records, forwarders);
    if *records != before {
        if let Err(error) = save(records) {
            forwarders.retain(|port, _| before.iter().any(|exposed| exposed.port == *port));
            *records = before;
            return Err(error);
        }
    }
    Ok(result)
}

/// The body of every backend's [`PortSandbox::with_ports`]: checks `status` against
/// `operation` (`None`: the sandbox only has to exist), hands `change` the records that
/// `ports` finds in `state`, and when they changed saves a copy of `state` holding the
/// new ones (undoing the change when saving fails).
pub fn update_ports<S: Clone, R>(
    state: &mut S,
    status: SandboxStatus,
    operation: Option<Operation>,
    ports: fn(&mut S) -> &mut Vec<ExposedPort>,
    forwarders: &mut Forwarders,
    change: impl FnOnce(&mut Vec<ExposedPort>, &mut Forwarders) -> R,
    save: impl FnOnce(&S) -> Result<(), SandboxError>,
) -> Result<R, SandboxError> {
    match operation {
        Some(operation) => status.check(operation)?,
        None => status.check_exists()?,
    }
    let mut records = std::mem::take(ports(state));
    let result = change_and_save(&mut records, forwarders, change, |records| {
        let mut saved = state.clone();
        *ports(&mut saved) = records.to_vec();
        save(&saved)
    });
    *ports(state) = records;
    result
}

/// The address of a forwarder, as the API shows it.
pub fn exposed(port: u16, address: SocketAddr) -> ExposedPort {
    ExposedPort {
        port,
        url: format!("http://{address}/"),
        host_address: address.to_string(),
    }
}

/// The host's own loopback: the connector of sandboxes that share the host's network.
pub struct Loopback;

#[async_trait]
impl Connector for Loopback {
    /// Connects to `port` on loopback: IPv4 first, then IPv6.
    async fn connect(&self, port: u16) -> Option<Box<dyn Duplex>> {
        for ip in [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ] {
            let connected = tokio::time::timeout(
                CONNECT_TIMEOUT,
                TcpStream::connect(SocketAddr::new(ip, port)),
            )
            .await;
            if let Ok(Ok(stream)) = connected {
                return Some(Box::new(stream));
            }
        }
        None
    }
}

/// Starts a forwarder to sandbox port `port` on a loopback port of the host: `preferred`
/// when it is free, any otherwise.
fn start_forwarder(
    connector: Arc<dyn Connector>,
    port: u16,
    preferred: Option<SocketAddr>,
) -> io::Result<(Forwarder, SocketAddr)> {
    let any = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
    let listener = preferred
        .and_then(|address| std::net::TcpListener::bind(address).ok())
        .map_or_else(|| std::net::TcpListener::bind(any), Ok)?;
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let address = listener.local_addr()?;
    let task = tokio::spawn(async move {
        // Owned by this task: aborting it drops the set, which aborts every relay.
        let mut relays = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((inbound, _)) => {
                        relays.spawn(relay(inbound, connector.clone(), port));
                    }
                    // Out of descriptors or similar: back off instead of spinning.
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                },
                Some(_) = relays.join_next(), if !relays.is_empty() => {}
            }
        }
    });
    Ok((Forwarder { task }, address))
}

async fn relay(mut inbound: TcpStream, connector: Arc<dyn Connector>, port: u16) {
    // Nobody listens any more: dropping the inbound connection closes it at once.
    if let Some(mut outbound) = connector.connect(port).await {
        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
    }
}

/// Exposes `port` of the sandbox (again: the existing record), after checking that
/// something listens there.
pub async fn expose(sandbox: &impl PortSandbox, port: u16) -> Result<ExposedPort, SandboxError> {
    let existing = |records: &mut Vec<ExposedPort>, _: &mut Forwarders| {
        records.iter().find(|exposed| exposed.port == port).cloned()
    };
    if let Some(existing) = sandbox.with_ports(Some(Operation::Ports), existing)? {
        return Ok(existing);
    }
    if port == 0 {
        return Err(SandboxError::invalid("port", "must be between 1 and 65535"));
    }
    let connector = sandbox.connector();
    if connector.connect(port).await.is_none() {
        return Err(SandboxError::PortNotListening { port });
    }
    let (forwarder, address) = start_forwarder(connector, port, None)
        .map_err(|error| SandboxError::system("listen for the exposed port", error))?;
    sandbox.with_ports(Some(Operation::Ports), |records, forwarders| {
        // Exposed meanwhile by a concurrent call: that one stays, ours goes (dropped).
        if let Some(existing) = existing(records, forwarders) {
            return existing;
        }
        let exposed = exposed(port, address);
        records.push(exposed.clone());
        records.sort_by_key(|exposed| exposed.port);
        forwarders.insert(port, forwarder);
        exposed
    })
}

/// A connection to `port` inside the sandbox through its connector (the server's port
/// tunnel), after checking the status allows port traffic.
pub async fn connect(
    sandbox: &impl PortSandbox,
    port: u16,
) -> Result<Box<dyn Duplex>, SandboxError> {
    sandbox.with_ports(Some(Operation::Ports), |_, _| ())?;
    sandbox
        .connector()
        .connect(port)
        .await
        .ok_or(SandboxError::PortNotListening { port })
}

/// Closes the forwarder of `port` and forgets it.
pub fn unexpose(sandbox: &impl PortSandbox, port: u16) -> Result<(), SandboxError> {
    sandbox.with_ports(Some(Operation::Ports), |records, forwarders| {
        let before = records.len();
        records.retain(|exposed| exposed.port != port);
        forwarders.remove(&port);
        if records.len() == before {
            return Err(SandboxError::PortNotExposed { port });
        }
        Ok(())
    })?
}

/// The exposed ports.
pub fn list(sandbox: &impl PortSandbox) -> Result<Vec<ExposedPort>, SandboxError> {
    sandbox.with_ports(None, |records, _| records.clone())
}

/// Starts the forwarders of the recorded ports again (after a server restart), on their
/// old host ports where possible; a port that moved is recorded anew.
pub fn restart_forwarders(sandbox: &impl PortSandbox) -> Result<(), SandboxError> {
    let connector = sandbox.connector();
    sandbox.with_ports(None, |records, forwarders| {
        for record in records.iter_mut() {
            if forwarders.contains_key(&record.port) {
                continue;
            }
            let preferred = record.host_address.parse().ok();
            match start_forwarder(connector.clone(), record.port, preferred) {
                Ok((forwarder, address)) => {
                    if Some(address) != preferred {
                        *record = exposed(record.port, address);
                    }
                    forwarders.insert(record.port, forwarder);
                }
                // The sandbox is still usable; the port can be exposed again.
                Err(error) => {
                    tracing::warn!(sandbox_id = %sandbox.sandbox_id(), port = record.port, %error, "cannot forward an exposed port after a restart")
                }
            }
        }
    })
}

impl PortSandbox for HostSandbox {
    fn sandbox_id(&self) -> &SandboxId {
        &self.sandbox_id
    }

    fn connector(&self) -> Arc<dyn Connector> {
        Arc::new(Loopback)
    }

    fn with_ports<R>(
        &self,
        operation: Option<Operation>,
        change: impl FnOnce(&mut Vec<ExposedPort>, &mut Forwarders) -> R,
    ) -> Result<R, SandboxError> {
        let mut inner = self.lock();
        let status = inner.status();
        let inner = &mut *inner;
        update_ports(
            &mut inner.state,
            status,
            operation,
            |state| &mut state.ports,
            &mut inner.forwarders,
            change,
            |saved| self.persist_state(saved),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn addresses_read_as_urls() {
        let v4 = exposed(80, SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080));
        assert_eq!(v4.url, "http://127.0.0.1:8080/");
        assert_eq!(v4.host_address, "127.0.0.1:8080");
        assert_eq!(v4.port, 80);
    }

    #[tokio::test]
    async fn forwarder_relays_until_dropped() {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = server.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut connection, _) = server.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buffer = [0u8; 5];
                    connection.read_exact(&mut buffer).await.unwrap();
                    connection.write_all(&buffer).await.unwrap();
                });
            }
        });
        let (forwarder, address) = start_forwarder(Arc::new(Loopback), port, None).unwrap();
        let mut client = TcpStream::connect(address).await.unwrap();
        client.write_all(b"hello").await.unwrap();
        let mut echoed = [0u8; 5];
        client.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b"hello");

        drop(forwarder);
        // The relayed connection is closed, and so is the listener.
        let mut rest = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut rest)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(TcpStream::connect(address).await.is_err());
    }

    #[tokio::test]
    async fn only_listening_ports_are_found() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(Loopback.connect(port).await.is_some());
        drop(listener);
        assert!(Loopback.connect(port).await.is_none());
    }
}
