//! Ports. A host sandbox shares the host's network, so its servers are already reachable
//! on loopback; exposing a port still puts a forwarder in front of it (a loopback listener
//! of the server process that relays each connection to the sandbox's port), so that
//! `unexpose_port` and destroy really close the URL they handed out, as on every other
//! backend. Exposed ports are recorded in `state.json`; after a restart `attach` starts
//! their forwarders again, on the same host port when it is free.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use cthulu_core::SandboxError;
use cthulu_types::sandbox::Operation;
use cthulu_types::ExposedPort;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::sandbox::HostSandbox;

/// A listener answers a loopback connect at once; a silent address must not hang us.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// The forwarders of one sandbox, by sandbox port.
pub(crate) type Forwarders = HashMap<u16, Forwarder>;

/// A running forwarder. Dropping it closes its listener and every connection it relays.
pub(crate) struct Forwarder {
    task: JoinHandle<()>,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The address of a forwarder, as the API shows it.
pub(crate) fn exposed(port: u16, address: SocketAddr) -> ExposedPort {
    ExposedPort {
        port,
        url: format!("http://{address}/"),
        host_address: address.to_string(),
    }
}

/// Connects to `port` on loopback: IPv4 first, then IPv6.
async fn connect_loopback(port: u16) -> Option<TcpStream> {
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
            return Some(stream);
        }
    }
    None
}

/// Starts a forwarder to sandbox port `port` on a loopback port of the host: `preferred`
/// when it is free, any otherwise.
fn start_forwarder(
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
                        relays.spawn(relay(inbound, port));
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

async fn relay(mut inbound: TcpStream, port: u16) {
    // Nobody listens any more: dropping the inbound connection closes it at once.
    if let Some(mut outbound) = connect_loopback(port).await {
        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
    }
}

impl HostSandbox {
    pub(crate) async fn expose(&self, port: u16) -> Result<ExposedPort, SandboxError> {
        {
            let inner = self.lock();
            inner.check(Operation::Ports)?;
            if let Some(existing) = inner
                .state
                .ports
                .iter()
                .find(|exposed| exposed.port == port)
            {
                return Ok(existing.clone());
            }
        }
        if port == 0 {
            return Err(SandboxError::invalid("port", "must be between 1 and 65535"));
        }
        if connect_loopback(port).await.is_none() {
            return Err(SandboxError::PortNotListening { port });
        }
        let (forwarder, address) = start_forwarder(port, None)
            .map_err(|error| SandboxError::system("listen for the exposed port", error))?;
        let mut inner = self.lock();
        inner.check(Operation::Ports)?;
        if let Some(existing) = inner
            .state
            .ports
            .iter()
            .find(|exposed| exposed.port == port)
        {
            // Exposed meanwhile by a concurrent call: ours goes (dropped).
            return Ok(existing.clone());
        }
        let exposed = exposed(port, address);
        inner.state.ports.push(exposed.clone());
        inner.state.ports.sort_by_key(|exposed| exposed.port);
        if let Err(error) = self.persist(&inner) {
            inner.state.ports.retain(|exposed| exposed.port != port);
            return Err(error);
        }
        inner.forwarders.insert(port, forwarder);
        Ok(exposed)
    }

    pub(crate) async fn unexpose(&self, port: u16) -> Result<(), SandboxError> {
        let mut inner = self.lock();
        inner.check(Operation::Ports)?;
        let before = inner.state.ports.clone();
        inner.state.ports.retain(|exposed| exposed.port != port);
        if inner.state.ports.len() == before.len() {
            return Err(SandboxError::PortNotExposed { port });
        }
        if let Err(error) = self.persist(&inner) {
            inner.state.ports = before;
            return Err(error);
        }
        inner.forwarders.remove(&port);
        Ok(())
    }

    pub(crate) fn ports(&self) -> Result<Vec<ExposedPort>, SandboxError> {
        let inner = self.lock();
        inner.check_exists()?;
        Ok(inner.state.ports.clone())
    }

    /// Starts the forwarders of the recorded ports again (after a server restart), on
    /// their old host ports where possible; a port that moved is recorded anew.
    pub(crate) fn restart_forwarders(&self) -> Result<(), SandboxError> {
        let mut inner = self.lock();
        let mut changed = false;
        let records = inner.state.ports.clone();
        for record in records {
            if inner.forwarders.contains_key(&record.port) {
                continue;
            }
            let preferred = record.host_address.parse().ok();
            let (forwarder, address) = match start_forwarder(record.port, preferred) {
                Ok(started) => started,
                Err(error) => {
                    // The sandbox is still usable; the port can be exposed again.
                    tracing::warn!(sandbox_id = %self.sandbox_id, port = record.port, %error, "cannot forward an exposed port after a restart");
                    continue;
                }
            };
            if Some(address) != preferred {
                let moved = exposed(record.port, address);
                if let Some(slot) = inner
                    .state
                    .ports
                    .iter_mut()
                    .find(|exposed| exposed.port == record.port)
                {
                    *slot = moved;
                }
                changed = true;
            }
            inner.forwarders.insert(record.port, forwarder);
        }
        if changed {
            self.persist(&inner)?;
        }
        Ok(())
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
        let (forwarder, address) = start_forwarder(port, None).unwrap();
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
        assert!(connect_loopback(port).await.is_some());
        drop(listener);
        assert!(connect_loopback(port).await.is_none());
    }
}
