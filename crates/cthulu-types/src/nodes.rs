//! Nodes of the remote backend (`/api/v1/nodes`) and terminal access
//! (`POST /api/v1/sandboxes/{id}/terminal`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{BackendKind, Capacity};

/// `POST /api/v1/nodes`: registers a node; the platform checks it by calling the node's
/// `GET /api/v1/info` with the token first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddNodeRequest {
    /// 1-63 of `a-z 0-9 - _ .`.
    pub name: String,
    /// The node's base URL, `http://host:port`.
    pub url: String,
    /// The node's token, sent as `Authorization: Bearer`; kept by the platform, never
    /// shown again.
    pub token: String,
}

/// A registered node as `GET /api/v1/nodes` shows it (never with its token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeSummary {
    pub name: String,
    pub url: String,
    /// Whether it answered just now.
    pub reachable: bool,
    /// Why it is not reachable or not usable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Its capacity, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Capacity>,
    /// The backends available on it.
    pub backends: Vec<BackendKind>,
    /// The backend its sandboxes get.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_backend: Option<BackendKind>,
    /// Sandboxes of this platform on it.
    pub platform_sandboxes: u64,
    pub added_at_ms: u64,
}

/// `GET /api/v1/nodes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeList {
    pub nodes: Vec<NodeSummary>,
}

/// `POST /api/v1/sandboxes/{id}/terminal`: where the browser connects, without the API
/// key, for a short while.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TerminalAccess {
    /// `ws://…/api/v1/sandboxes/<id>/exec/ws?token=…`: the server's own for a local
    /// sandbox, the node's for a remote one (the terminal does not go through the
    /// platform).
    pub url: String,
    /// When the token stops opening connections (an open one stays open).
    pub expires_at_ms: u64,
}
