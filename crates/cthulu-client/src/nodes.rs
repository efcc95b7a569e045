//! Registered nodes of the remote backend, and terminal access URLs.

use cthulu_types::{AddNodeRequest, NodeList, NodeSummary, TerminalAccess};
use reqwest::Method;

use crate::{ClientError, CthuluClient};

impl CthuluClient {
    /// `POST /api/v1/nodes`: registers a node (the server checks it answers with `token`).
    pub async fn add_node(&self, request: &AddNodeRequest) -> Result<NodeSummary, ClientError> {
        self.post_json(self.api_url(&["nodes"]), request).await
    }

    /// `GET /api/v1/nodes`: every node, each asked how it is.
    pub async fn nodes(&self) -> Result<NodeList, ClientError> {
        self.get_json(self.api_url(&["nodes"])).await
    }

    /// `DELETE /api/v1/nodes/{name}`; refused while sandboxes live there.
    pub async fn remove_node(&self, name: &str) -> Result<(), ClientError> {
        let url = self.api_url(&["nodes", name]);
        self.send_empty(self.request(Method::DELETE, url)).await
    }

    /// `POST /api/v1/sandboxes/{id}/terminal`: a short-lived URL that opens a terminal
    /// WebSocket without the API key.
    pub async fn terminal(&self, sandbox_id: &str) -> Result<TerminalAccess, ClientError> {
        let url = self.sandbox_url(sandbox_id, &["terminal"]);
        self.send_json(self.request(Method::POST, url)).await
    }
}
