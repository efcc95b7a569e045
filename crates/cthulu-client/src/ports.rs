//! Ports of a sandbox exposed on the host.

use cthulu_types::{ExposePortRequest, ExposedPort, PortList};
use reqwest::Method;

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
