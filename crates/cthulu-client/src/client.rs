//! [`CthuluClient`]: the base URL, the API key and the request plumbing every route
//! module builds on.

use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::ClientError;

/// Where `cthulu serve` listens by default.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8081";

/// A client of one Cthulu server. Cheap to clone; clones share the connection pool.
#[derive(Debug, Clone)]
pub struct CthuluClient {
    base_url: Url,
    token: Option<String>,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct Health {
    status: String,
}

impl CthuluClient {
    /// A client of the server at `base_url` (`http://host:port`, optionally with a path
    /// prefix), sending `token` as `Authorization: Bearer` when given.
    pub fn new(base_url: &str, token: Option<String>) -> Result<Self, ClientError> {
        let invalid = |reason: String| ClientError::InvalidUrl {
            url: base_url.to_owned(),
            reason,
        };
        let mut parsed = Url::parse(base_url.trim()).map_err(|error| invalid(error.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(invalid("the scheme must be http or https".into()));
        }
        if parsed.cannot_be_a_base() {
            return Err(invalid("not a base URL".into()));
        }
        parsed.set_query(None);
        parsed.set_fragment(None);
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|error| invalid(error.to_string()))?;
        Ok(CthuluClient {
            base_url: parsed,
            token: token.filter(|token| !token.trim().is_empty()),
            http,
        })
    }

    /// The same client with another connect timeout (default 10 s): a platform calling
    /// its nodes wants a dead one to fail fast.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Result<Self, ClientError> {
        self.http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .build()
            .map_err(|error| ClientError::InvalidUrl {
                url: self.base_url.to_string(),
                reason: error.to_string(),
            })?;
        Ok(self)
    }

    /// A client configured from `CTHULU_URL` (default [`DEFAULT_URL`]) and `CTHULU_TOKEN`.
    pub fn from_env() -> Result<Self, ClientError> {
        let url = std::env::var("CTHULU_URL")
            .ok()
            .filter(|url| !url.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_URL.to_owned());
        CthuluClient::new(&url, std::env::var("CTHULU_TOKEN").ok())
    }

    /// The server's base URL as given (normalised).
    pub fn base_url(&self) -> &Url {
        &self.base_url
    }

    pub(crate) fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// `GET /healthz`: succeeds when the server answers `{"status":"ok"}`.
    pub async fn health(&self) -> Result<(), ClientError> {
        let url = self.url(&["healthz"]);
        let health: Health = self.get_json(url.clone()).await?;
        if health.status == "ok" {
            Ok(())
        } else {
            Err(ClientError::Protocol {
                url: url.to_string(),
                detail: format!("health status is {:?}", health.status),
            })
        }
    }

    /// `GET /api/v1/info`: backends, their capabilities and whether auth is on.
    pub async fn info(&self) -> Result<cthulu_types::ServerInfo, ClientError> {
        self.get_json(self.api_url(&["info"])).await
    }

    /// The base URL followed by `segments`, each percent-encoded as one path segment.
    pub(crate) fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base_url.clone();
        {
            let mut path = url
                .path_segments_mut()
                .expect("checked in new: the base URL can be a base");
            path.pop_if_empty();
            path.extend(segments);
        }
        url
    }

    /// `/api/v1/<segments>`.
    pub(crate) fn api_url(&self, segments: &[&str]) -> Url {
        let mut all = vec!["api", "v1"];
        all.extend_from_slice(segments);
        self.url(&all)
    }

    /// `/api/v1/sandboxes/<sandbox_id>/<rest>`.
    pub(crate) fn sandbox_url(&self, sandbox_id: &str, rest: &[&str]) -> Url {
        let mut all = vec!["sandboxes", sandbox_id];
        all.extend_from_slice(rest);
        self.api_url(&all)
    }

    pub(crate) fn request(&self, method: Method, url: Url) -> RequestBuilder {
        let builder = self.http.request(method, url);
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    /// Sends a request; a refused connection becomes [`ClientError::Unreachable`] and an
    /// error status becomes [`ClientError::Api`].
    pub(crate) async fn send(&self, builder: RequestBuilder) -> Result<Response, ClientError> {
        let request = builder.build().map_err(|source| ClientError::Request {
            method: "?".into(),
            url: self.base_url.to_string(),
            source,
        })?;
        let method = request.method().to_string();
        let url = request.url().to_string();
        let response = self.http.execute(request).await.map_err(|source| {
            if source.is_connect() {
                ClientError::Unreachable {
                    url: self.base_url.to_string(),
                    source: root_cause(source),
                }
            } else {
                ClientError::Request {
                    method: method.clone(),
                    url: url.clone(),
                    source,
                }
            }
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.bytes().await.unwrap_or_default();
        Err(ClientError::from_error_body(
            &method,
            &url,
            status.as_u16(),
            &body,
        ))
    }

    /// Sends a request and decodes its JSON answer.
    pub(crate) async fn send_json<T: DeserializeOwned>(
        &self,
        builder: RequestBuilder,
    ) -> Result<T, ClientError> {
        let response = self.send(builder).await?;
        let url = response.url().to_string();
        response
            .json::<T>()
            .await
            .map_err(|source| ClientError::Decode { url, source })
    }

    pub(crate) async fn get_json<T: DeserializeOwned>(&self, url: Url) -> Result<T, ClientError> {
        self.send_json(self.request(Method::GET, url)).await
    }

    pub(crate) async fn post_json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        url: Url,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send_json(self.request(Method::POST, url).json(body))
            .await
    }

    /// Sends a request whose answer has no body worth reading (204).
    pub(crate) async fn send_empty(&self, builder: RequestBuilder) -> Result<(), ClientError> {
        self.send(builder).await.map(drop)
    }
}

/// The innermost cause of a connection failure ("Connection refused"), without the
/// layers of reqwest and hyper around it.
fn root_cause(error: reqwest::Error) -> Box<dyn std::error::Error + Send + Sync> {
    let mut cause: &(dyn std::error::Error + 'static) = &error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    match cause.downcast_ref::<std::io::Error>() {
        Some(io_error) => Box::new(std::io::Error::new(io_error.kind(), io_error.to_string())),
        None => Box::new(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_built_segment_by_segment() {
        let client = CthuluClient::new("http://127.0.0.1:8081", None).unwrap();
        assert_eq!(
            client.sandbox_url("abc", &["exec"]).as_str(),
            "http://127.0.0.1:8081/api/v1/sandboxes/abc/exec"
        );
        assert_eq!(
            client.url(&["healthz"]).as_str(),
            "http://127.0.0.1:8081/healthz"
        );
    }

    #[test]
    fn a_path_prefix_is_kept_and_segments_are_escaped() {
        let client = CthuluClient::new("http://example.test/cthulu/", None).unwrap();
        assert_eq!(
            client.sandbox_url("a/../b", &[]).as_str(),
            "http://example.test/cthulu/api/v1/sandboxes/a%2F..%2Fb"
        );
    }

    #[test]
    fn bad_urls_are_refused() {
        assert!(matches!(
            CthuluClient::new("127.0.0.1:8081", None),
            Err(ClientError::InvalidUrl { .. })
        ));
        assert!(matches!(
            CthuluClient::new("ftp://host/", None),
            Err(ClientError::InvalidUrl { .. })
        ));
    }

    #[test]
    fn empty_tokens_are_no_tokens() {
        let client = CthuluClient::new(DEFAULT_URL, Some(String::new())).unwrap();
        assert_eq!(client.token(), None);
    }
}
