//! Ports of a remote sandbox: the node's own forwarder listens on the node's loopback,
//! which the platform may not reach, so each connection to our forwarder is tunnelled
//! over the node's `GET /api/v1/sandboxes/{id}/ports/{port}/ws` instead.

use std::time::Duration;

use async_trait::async_trait;
use cthulu_client::{CthuluClient, PortTunnel};
use cthulu_core::{Duplex, SandboxError};
use cthulu_host::ports::Connector;

use crate::errors::NodeCall;

/// Buffer between a forwarder's connection and its tunnel.
const PIPE_BYTES: usize = 64 * 1024;
/// Connecting and upgrading; a node that takes longer is treated as gone.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// Reaches a port of the sandbox `node_sandbox_id` on the node through a tunnel.
pub struct TunnelConnector {
    pub client: CthuluClient,
    pub node_sandbox_id: String,
    pub call: NodeCall,
}

impl TunnelConnector {
    /// Opens a tunnel to `port`; the node refuses one nobody listens on.
    pub async fn open(&self, port: u16) -> Result<PortTunnel, SandboxError> {
        match tokio::time::timeout(
            OPEN_TIMEOUT,
            self.client.open_port_tunnel(&self.node_sandbox_id, port),
        )
        .await
        {
            Ok(Ok(tunnel)) => Ok(tunnel),
            Ok(Err(error)) => Err(self.call.error("connect_port", error)),
            Err(_) => Err(self
                .call
                .unreachable(format!("no port tunnel within {OPEN_TIMEOUT:?}"))),
        }
    }
}

#[async_trait]
impl Connector for TunnelConnector {
    async fn connect(&self, port: u16) -> Option<Box<dyn Duplex>> {
        let tunnel = match self.open(port).await {
            Ok(tunnel) => tunnel,
            Err(error) => {
                tracing::debug!(port, %error, "cannot tunnel to a remote sandbox port");
                return None;
            }
        };
        let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
        tokio::spawn(async move {
            if let Err(error) = tunnel.relay(theirs).await {
                tracing::debug!(port, %error, "port tunnel ended with an error");
            }
        });
        Some(Box::new(ours))
    }
}
