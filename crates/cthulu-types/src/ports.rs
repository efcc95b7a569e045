//! Ports exposed from a sandbox to the host.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A sandbox port reachable from the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExposedPort {
    /// The port inside the sandbox.
    pub port: u16,
    /// Where to reach it, e.g. `http://127.0.0.1:40123/`.
    pub url: String,
    /// The host address that forwards to it.
    pub host_address: String,
}

/// `GET /api/v1/sandboxes/{id}/ports`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PortList {
    pub ports: Vec<ExposedPort>,
}

/// `POST /api/v1/sandboxes/{id}/ports`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExposePortRequest {
    pub port: u16,
}
