//! Ports of a sandbox exposed on the host.

use cthulu_types::{ExposePortRequest, ExposedPort, PortList};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use crate::stream::Socket;
use crate::{ClientError, CthuluClient};

impl CthuluClient {
    /// `POST /api/v1/sandboxes/{id}/ports`: makes `port` reachable from the host.
    pub async fn expose_port(
        &self,
        sandbox_id: &str,
        port: u16,
    ) -> Result<ExposedPort, ClientError> {
        self.post_json(
            self.sandbox_url(sandbox_id, &["ports"]),
            &ExposePortRequest { port },
        )
        .await
    }

    /// `GET /api/v1/sandboxes/{id}/ports`.
    pub async fn ports(&self, sandbox_id: &str) -> Result<PortList, ClientError> {
        self.get_json(self.sandbox_url(sandbox_id, &["ports"]))
            .await
    }

    /// `DELETE /api/v1/sandboxes/{id}/ports/{port}`.
    pub async fn unexpose_port(&self, sandbox_id: &str, port: u16) -> Result<(), ClientError> {
        let url = self.sandbox_url(sandbox_id, &["ports", &port.to_string()]);
        self.send_empty(self.request(Method::DELETE, url)).await
    }
}

/// An open connection to a port inside a sandbox, tunnelled over
/// `GET /api/v1/sandboxes/{id}/ports/{port}/ws` (docs/api.md, Ports): binary frames carry
/// the bytes, an empty binary frame says the sender finished writing (a TCP half-close).
pub struct PortTunnel {
    url: String,
    sink: SplitSink<Socket, Message>,
    reader: SplitStream<Socket>,
}

impl std::fmt::Debug for PortTunnel {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("PortTunnel")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl CthuluClient {
    /// Connects to `port` inside the sandbox through the server. Fails (`bad_request`)
    /// when nobody listens there.
    pub async fn open_port_tunnel(
        &self,
        sandbox_id: &str,
        port: u16,
    ) -> Result<PortTunnel, ClientError> {
        let url = self.sandbox_url(sandbox_id, &["ports", &port.to_string(), "ws"]);
        let (sink, reader, url) = self.connect(url).await?;
        Ok(PortTunnel { url, sink, reader })
    }
}

impl PortTunnel {
    /// Moves bytes between `local` and the sandbox port until both sides have finished.
    pub async fn relay<S>(self, local: S) -> Result<(), ClientError>
    where
        S: AsyncRead + AsyncWrite + Send,
    {
        let PortTunnel {
            url,
            mut sink,
            mut reader,
        } = self;
        let (mut local_reader, mut local_writer) = tokio::io::split(local);
        let websocket_error = |source| ClientError::WebSocket {
            url: url.clone(),
            source: Box::new(source),
        };
        let local_error = |source: std::io::Error| ClientError::Protocol {
            url: url.clone(),
            detail: format!("local side of the tunnel: {source}"),
        };
        let mut buffer = vec![0u8; TUNNEL_CHUNK];
        let (mut sending, mut receiving) = (true, true);
        while sending || receiving {
            tokio::select! {
                read = local_reader.read(&mut buffer), if sending => {
                    let read = read.map_err(local_error)?;
                    if read == 0 {
                        sending = false;
                    }
                    // Zero bytes: the empty frame that says this side is done.
                    sink.send(Message::binary(buffer[..read].to_vec()))
                        .await
                        .map_err(websocket_error)?;
                }
                message = reader.next(), if receiving => match message {
                    Some(Ok(Message::Binary(data))) if data.is_empty() => {
                        receiving = false;
                        local_writer.shutdown().await.map_err(local_error)?;
                    }
                    Some(Ok(Message::Binary(data))) => {
                        local_writer.write_all(&data).await.map_err(local_error)?;
                    }
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Ok(_)) => {}
                    Some(Err(source)) => return Err(websocket_error(source)),
                },
            }
        }
        let _ = sink.send(Message::Close(None)).await;
        Ok(())
    }
}

/// Bytes read from the local side per frame.
const TUNNEL_CHUNK: usize = 64 * 1024;
