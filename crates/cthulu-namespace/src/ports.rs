//! Ports of a namespace sandbox: the host crate's forwarders ([`cthulu_host::ports`]) with
//! a connector that asks the sandbox's init for a socket connected inside the sandbox's
//! network namespace ([`Request::Connect`]). Nothing is routed and no firewall rule is
//! needed, so it works for an unprivileged server too; the sandbox's loopback stays its
//! own (a server there is reachable only through the forwarder the host exposed).

use std::io;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use cthulu_core::SandboxError;
use cthulu_host::ports::{
    update_ports, Connector, Duplex, Forwarders, PortSandbox, CONNECT_TIMEOUT,
};
use cthulu_types::sandbox::Operation;
use cthulu_types::{ExposedPort, SandboxId};
use tokio::net::TcpStream;

use crate::protocol::{self, Request, Response};
use crate::sandbox::NamespaceSandbox;

/// Dials sandbox ports through the sandbox's init.
pub(crate) struct InitConnector {
    /// The init's control socket.
    pub socket: PathBuf,
}

impl InitConnector {
    /// Asks init for a connection to `port`: the socket, and whether it is still
    /// connecting.
    fn ask(socket: &PathBuf, port: u16) -> io::Result<(std::net::TcpStream, bool)> {
        let mut connection = UnixStream::connect(socket)?;
        connection.set_read_timeout(Some(CONNECT_TIMEOUT))?;
        protocol::send(&connection, &Request::Connect { port }, &[])?;
        match protocol::receive::<Response>(&mut connection)? {
            Some((Response::Connected { in_progress }, fds)) => {
                let socket = fds
                    .into_iter()
                    .next()
                    .ok_or_else(|| io::Error::other("init sent no socket"))?;
                Ok((std::net::TcpStream::from(socket), in_progress))
            }
            Some((Response::ConnectFailed { errno }, _)) => {
                Err(io::Error::from_raw_os_error(errno))
            }
            other => Err(io::Error::other(format!("init answered {other:?}"))),
        }
    }
}

#[async_trait]
impl Connector for InitConnector {
    async fn connect(&self, port: u16) -> Option<Box<dyn Duplex>> {
        let socket = self.socket.clone();
        let (stream, in_progress) = tokio::task::spawn_blocking(move || Self::ask(&socket, port))
            .await
            .ok()?
            .ok()?;
        // Made non-blocking by init; tokio requires it anyway.
        stream.set_nonblocking(true).ok()?;
        let stream = TcpStream::from_std(stream).ok()?;
        if in_progress {
            tokio::time::timeout(CONNECT_TIMEOUT, stream.writable())
                .await
                .ok()?
                .ok()?;
            if stream.take_error().ok()?.is_some() {
                return None;
            }
        }
        Some(Box::new(stream))
    }
}

impl PortSandbox for NamespaceSandbox {
    fn sandbox_id(&self) -> &SandboxId {
        &self.sandbox_id
    }

    fn connector(&self) -> Arc<dyn Connector> {
        Arc::new(InitConnector {
            socket: self.socket.clone(),
        })
    }

    fn with_ports<R>(
        &self,
        operation: Option<Operation>,
        change: impl FnOnce(&mut Vec<ExposedPort>, &mut Forwarders) -> R,
    ) -> Result<R, SandboxError> {
        let mut state = self.lock();
        let status = state.status;
        let mut forwarders = self.forwarders();
        update_ports(
            &mut *state,
            status,
            operation,
            |state| &mut state.ports,
            &mut forwarders,
            change,
            |saved| self.save_state(saved),
        )
    }
}
