//! [`ClientError`]: what can go wrong talking to a Cthulu server.

use cthulu_types::{ApiError, ErrorCode};

/// A failed call. `Api` carries the server's own error; the others are transport failures.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },

    /// Nothing answered at the server's address.
    #[error("the Cthulu server is not reachable at {url}")]
    Unreachable {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The server answered with an error body.
    #[error("{error}")]
    Api { status: u16, error: ApiError },

    /// The server answered an error status without a Cthulu error body (a proxy, say).
    #[error("{method} {url} answered HTTP {status}: {body}")]
    UnexpectedStatus {
        method: String,
        url: String,
        status: u16,
        body: String,
    },

    #[error("{method} {url} failed")]
    Request {
        method: String,
        url: String,
        #[source]
        source: reqwest::Error,
    },

    #[error("cannot decode the answer of {url}")]
    Decode {
        url: String,
        #[source]
        source: reqwest::Error,
    },

    #[error("WebSocket connection to {url} failed")]
    WebSocket {
        url: String,
        #[source]
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },

    /// The server broke the streaming protocol (docs/streaming.md).
    #[error("unexpected message from {url}: {detail}")]
    Protocol { url: String, detail: String },

    /// The stream ended before the process's exit was received.
    #[error("the connection to {url} closed before the process exited")]
    StreamClosed { url: String },
}

impl ClientError {
    /// The API error code, when the server answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { error, .. } => Some(error.code),
            _ => None,
        }
    }

    /// A next step for the user, when there is one.
    pub fn hint(&self) -> Option<String> {
        match self {
            ClientError::Api { error, .. } => error.hint.clone().or_else(|| match error.code {
                ErrorCode::Unauthorized => Some(
                    "set CTHULU_TOKEN (or --token) to an API key from `cthulu key create`".into(),
                ),
                _ => None,
            }),
            ClientError::Unreachable { .. } => Some(
                "start it with `cthulu serve`, or point CTHULU_URL (or --url) at a running server"
                    .into(),
            ),
            _ => None,
        }
    }

    /// Whether the thing asked for (sandbox, process, checkpoint, file, port, run) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.code(),
            Some(
                ErrorCode::SandboxNotFound
                    | ErrorCode::ProcessNotFound
                    | ErrorCode::CheckpointNotFound
                    | ErrorCode::FileNotFound
                    | ErrorCode::PortNotFound
                    | ErrorCode::RunNotFound
            )
        )
    }

    pub fn is_unauthorized(&self) -> bool {
        self.code() == Some(ErrorCode::Unauthorized)
    }

    pub fn is_unreachable(&self) -> bool {
        matches!(self, ClientError::Unreachable { .. })
    }

    /// Builds the error of a failed response from its status and body: the Cthulu error
    /// body when there is one, the raw text otherwise.
    pub(crate) fn from_error_body(method: &str, url: &str, status: u16, body: &[u8]) -> Self {
        match serde_json::from_slice::<cthulu_types::ErrorBody>(body) {
            Ok(parsed) => ClientError::Api {
                status,
                error: parsed.error,
            },
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                let text = text.trim();
                let shown: String = text.chars().take(200).collect();
                ClientError::UnexpectedStatus {
                    method: method.to_owned(),
                    url: url.to_owned(),
                    status,
                    body: if shown.is_empty() {
                        "(empty body)".to_owned()
                    } else {
                        shown
                    },
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_parsed() {
        let body = br#"{"error":{"code":"sandbox_not_found","message":"no sandbox abc","hint":"list them with cthulu sandbox ls"}}"#;
        let error = ClientError::from_error_body("GET", "http://x/api/v1/sandboxes/abc", 404, body);
        assert!(error.is_not_found());
        assert_eq!(error.to_string(), "no sandbox abc (sandbox_not_found)");
        assert_eq!(
            error.hint().as_deref(),
            Some("list them with cthulu sandbox ls")
        );
    }

    #[test]
    fn foreign_error_bodies_are_kept_as_text() {
        let error = ClientError::from_error_body("GET", "http://x/", 502, b"Bad Gateway\n");
        assert_eq!(
            error.to_string(),
            "GET http://x/ answered HTTP 502: Bad Gateway"
        );
        assert_eq!(error.code(), None);
    }

    #[test]
    fn unauthorized_without_hint_gets_one() {
        let body = br#"{"error":{"code":"unauthorized","message":"missing API key"}}"#;
        let error = ClientError::from_error_body("GET", "http://x/", 401, body);
        assert!(error.is_unauthorized());
        assert!(error.hint().unwrap().contains("CTHULU_TOKEN"));
    }
}
