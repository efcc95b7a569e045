//! Checkpoints of a sandbox: create, list, restore, delete.

use cthulu_types::{Checkpoint, CheckpointList, CheckpointRequest, Sandbox};
use reqwest::Method;

use crate::{ClientError, CthuluClient};

impl CthuluClient {
    /// `POST /api/v1/sandboxes/{id}/checkpoints`.
    pub async fn create_checkpoint(
        &self,
        sandbox_id: &str,
        request: &CheckpointRequest,
    ) -> Result<Checkpoint, ClientError> {
        self.post_json(self.sandbox_url(sandbox_id, &["checkpoints"]), request)
            .await
    }

    /// `GET /api/v1/sandboxes/{id}/checkpoints`.
    pub async fn checkpoints(&self, sandbox_id: &str) -> Result<CheckpointList, ClientError> {
        self.get_json(self.sandbox_url(sandbox_id, &["checkpoints"]))
            .await
    }

    /// `POST /api/v1/sandboxes/{id}/checkpoints/{checkpoint}/restore`; `checkpoint` is an
    /// id or a name.
    pub async fn restore_checkpoint(
        &self,
        sandbox_id: &str,
        checkpoint: &str,
    ) -> Result<Sandbox, ClientError> {
        let url = self.sandbox_url(sandbox_id, &["checkpoints", checkpoint, "restore"]);
        self.send_json(self.request(Method::POST, url)).await
    }

    /// `DELETE /api/v1/sandboxes/{id}/checkpoints/{checkpoint}`.
    pub async fn delete_checkpoint(
        &self,
        sandbox_id: &str,
        checkpoint: &str,
    ) -> Result<(), ClientError> {
        let url = self.sandbox_url(sandbox_id, &["checkpoints", checkpoint]);
        self.send_empty(self.request(Method::DELETE, url)).await
    }
}
