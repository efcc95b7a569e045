//! Sandbox lifecycle routes: create, list, get, update, delete, stop, resume.

use cthulu_types::{
    BackendKind, CreateSandboxRequest, Sandbox, SandboxList, SandboxStatus, UpdateSandboxRequest,
};
use reqwest::{Method, Url};

use crate::{ClientError, CthuluClient};

/// Filters of `GET /api/v1/sandboxes`; all given ones must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxFilter {
    /// `key=value` pairs; a sandbox must carry every one.
    pub labels: Vec<(String, String)>,
    pub status: Option<SandboxStatus>,
    pub backend: Option<BackendKind>,
}

impl SandboxFilter {
    fn apply(&self, url: &mut Url) {
        let mut query = url.query_pairs_mut();
        for (key, value) in &self.labels {
            query.append_pair("label", &format!("{key}={value}"));
        }
        if let Some(status) = self.status {
            query.append_pair("status", status.as_str());
        }
        if let Some(backend) = self.backend {
            query.append_pair("backend", backend.as_str());
        }
    }
}

impl CthuluClient {
    /// `POST /api/v1/sandboxes`.
    pub async fn create_sandbox(
        &self,
        request: &CreateSandboxRequest,
    ) -> Result<Sandbox, ClientError> {
        self.post_json(self.api_url(&["sandboxes"]), request).await
    }

    /// `GET /api/v1/sandboxes` with filters.
    pub async fn list_sandboxes(&self, filter: &SandboxFilter) -> Result<SandboxList, ClientError> {
        let mut url = self.api_url(&["sandboxes"]);
        filter.apply(&mut url);
        if url.query() == Some("") {
            url.set_query(None);
        }
        self.get_json(url).await
    }

    /// `GET /api/v1/sandboxes/{id}`.
    pub async fn get_sandbox(&self, sandbox_id: &str) -> Result<Sandbox, ClientError> {
        self.get_json(self.sandbox_url(sandbox_id, &[])).await
    }

    /// `PATCH /api/v1/sandboxes/{id}`: labels or lifetime.
    pub async fn update_sandbox(
        &self,
        sandbox_id: &str,
        request: &UpdateSandboxRequest,
    ) -> Result<Sandbox, ClientError> {
        let url = self.sandbox_url(sandbox_id, &[]);
        self.send_json(self.request(Method::PATCH, url).json(request))
            .await
    }

    /// `DELETE /api/v1/sandboxes/{id}`; succeeds for an already destroyed sandbox too.
    pub async fn delete_sandbox(&self, sandbox_id: &str) -> Result<(), ClientError> {
        let url = self.sandbox_url(sandbox_id, &[]);
        self.send_empty(self.request(Method::DELETE, url)).await
    }

    /// `POST /api/v1/sandboxes/{id}/stop`.
    pub async fn stop_sandbox(&self, sandbox_id: &str) -> Result<Sandbox, ClientError> {
        let url = self.sandbox_url(sandbox_id, &["stop"]);
        self.send_json(self.request(Method::POST, url)).await
    }

    /// `POST /api/v1/sandboxes/{id}/resume`.
    pub async fn resume_sandbox(&self, sandbox_id: &str) -> Result<Sandbox, ClientError> {
        let url = self.sandbox_url(sandbox_id, &["resume"]);
        self.send_json(self.request(Method::POST, url)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_become_query_pairs() {
        let client = CthuluClient::new("http://127.0.0.1:8081", None).unwrap();
        let mut url = client.api_url(&["sandboxes"]);
        SandboxFilter {
            labels: vec![("team".into(), "a b".into()), ("x".into(), "1".into())],
            status: Some(SandboxStatus::Running),
            backend: Some(BackendKind::Host),
        }
        .apply(&mut url);
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(key, value)| (key.into_owned(), value.into_owned()))
            .collect();
        assert_eq!(
            pairs,
            vec![
                ("label".into(), "team=a b".into()),
                ("label".into(), "x=1".into()),
                ("status".into(), "running".into()),
                ("backend".into(), "host".into()),
            ]
        );
    }
}
