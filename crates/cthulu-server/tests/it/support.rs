//! A thin JSON-over-HTTP client for asserting on exact statuses and bodies.

use cthulu_test_support::TestServer;
use serde_json::{json, Value};

pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
    pub token: Option<String>,
}

impl Api {
    pub fn new(server: &TestServer) -> Api {
        Api {
            http: reqwest::Client::new(),
            base: server.url().to_owned(),
            token: None,
        }
    }

    pub fn with_token(mut self, token: &str) -> Api {
        self.token = Some(token.to_owned());
        self
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    async fn finish(builder: reqwest::RequestBuilder) -> (u16, Value) {
        let response = builder.send().await.expect("the server answers");
        let status = response.status().as_u16();
        let bytes = response.bytes().await.expect("a body");
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        (status, value)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        Api::finish(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        Api::finish(self.request(reqwest::Method::DELETE, path)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        Api::finish(self.request(reqwest::Method::POST, path).json(&body)).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        Api::finish(self.request(reqwest::Method::PATCH, path).json(&body)).await
    }

    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        Api::finish(
            self.request(reqwest::Method::POST, path)
                .header("content-type", "application/json")
                .body(body),
        )
        .await
    }

    pub async fn put_bytes(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        Api::finish(self.request(reqwest::Method::PUT, path).body(body)).await
    }

    pub async fn get_bytes(&self, path: &str) -> (u16, Vec<u8>) {
        let response = self
            .request(reqwest::Method::GET, path)
            .send()
            .await
            .expect("the server answers");
        let status = response.status().as_u16();
        (status, response.bytes().await.expect("a body").to_vec())
    }

    /// Creates a host sandbox and returns its id.
    pub async fn create(&self, body: Value) -> String {
        let (status, sandbox) = self.post("/api/v1/sandboxes", body).await;
        assert_eq!(status, 201, "{sandbox}");
        sandbox["id"].as_str().expect("an id").to_owned()
    }

    pub async fn create_host(&self) -> String {
        self.create(json!({"backend": "host"})).await
    }

    /// Runs a shell command and returns the whole response.
    pub async fn shell(&self, sandbox_id: &str, script: &str) -> Value {
        let (status, result) = self
            .post(
                &format!("/api/v1/sandboxes/{sandbox_id}/exec"),
                json!({"shell": script}),
            )
            .await;
        assert_eq!(status, 200, "{result}");
        result
    }
}

/// The error code of an error body.
pub fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}
