//! One-shot exec and the processes of a sandbox: list, signal, kill.

use cthulu_types::{ExecRequest, ExecResponse, ProcessList, Signal, SignalRequest};
use reqwest::Method;

use crate::{ClientError, CthuluClient};

impl CthuluClient {
    /// `POST /api/v1/sandboxes/{id}/exec`: runs to completion and returns the output.
    pub async fn exec(
        &self,
        sandbox_id: &str,
        request: &ExecRequest,
    ) -> Result<ExecResponse, ClientError> {
        self.post_json(self.sandbox_url(sandbox_id, &["exec"]), request)
            .await
    }

    /// `GET /api/v1/sandboxes/{id}/processes`.
    pub async fn processes(&self, sandbox_id: &str) -> Result<ProcessList, ClientError> {
        self.get_json(self.sandbox_url(sandbox_id, &["processes"]))
            .await
    }

    /// `POST /api/v1/sandboxes/{id}/processes/{process_id}/signal`.
    pub async fn signal_process(
        &self,
        sandbox_id: &str,
        process_id: &str,
        signal: Signal,
    ) -> Result<(), ClientError> {
        let url = self.sandbox_url(sandbox_id, &["processes", process_id, "signal"]);
        self.send_empty(
            self.request(Method::POST, url)
                .json(&SignalRequest { signal }),
        )
        .await
    }

    /// `DELETE /api/v1/sandboxes/{id}/processes/{process_id}`: SIGKILL to its group.
    pub async fn kill_process(
        &self,
        sandbox_id: &str,
        process_id: &str,
    ) -> Result<(), ClientError> {
        let url = self.sandbox_url(sandbox_id, &["processes", process_id]);
        self.send_empty(self.request(Method::DELETE, url)).await
    }
}
