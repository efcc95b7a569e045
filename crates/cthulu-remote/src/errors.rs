//! What a failed call to a node becomes: [`SandboxError`]s that name the node.
//!
//! A node that does not answer is `node_unreachable`; a node's own error keeps its code,
//! message and hint (with the node's sandbox id replaced by ours), and the errors the
//! contract matches on by variant (not found, unsupported, missing program) are rebuilt
//! as those variants; anything that is not the Cthulu API is a protocol error naming the
//! node.

use cthulu_client::ClientError;
use cthulu_core::SandboxError;
use cthulu_types::{ApiError, BackendKind, ErrorCode, SandboxId};

/// Who was called, for the errors of one sandbox's calls.
#[derive(Debug, Clone)]
pub struct NodeCall {
    pub node: String,
    pub url: String,
    /// Our id and the node's, so the node's messages name ours.
    pub sandbox: Option<(SandboxId, String)>,
}

impl NodeCall {
    pub fn node(node: &str, url: &str) -> Self {
        NodeCall {
            node: node.to_owned(),
            url: url.to_owned(),
            sandbox: None,
        }
    }

    pub fn unreachable(&self, reason: impl Into<String>) -> SandboxError {
        SandboxError::NodeUnreachable {
            node: self.node.clone(),
            url: self.url.clone(),
            reason: reason.into(),
        }
    }

    pub fn protocol(&self, detail: impl Into<String>) -> SandboxError {
        SandboxError::NodeProtocol {
            node: self.node.clone(),
            url: self.url.clone(),
            detail: detail.into(),
        }
    }

    /// The error of `operation` failing with `error`.
    pub fn error(&self, operation: &'static str, error: ClientError) -> SandboxError {
        self.error_running(operation, None, error)
    }

    /// [`NodeCall::error`] for an exec of `program`, so a missing program is named.
    pub fn error_running(
        &self,
        operation: &'static str,
        program: Option<&str>,
        error: ClientError,
    ) -> SandboxError {
        match error {
            ClientError::Api { error, .. } => self.api_error(operation, program, error),
            ClientError::Unreachable { source, .. } => self.unreachable(source.to_string()),
            ClientError::Request { source, .. } if source.is_connect() || source.is_timeout() => {
                self.unreachable(chain(&source))
            }
            ClientError::Request { source, .. } => self.protocol(chain(&source)),
            ClientError::Decode { source, .. } => {
                self.protocol(format!("cannot decode its answer: {}", chain(&source)))
            }
            ClientError::UnexpectedStatus { status, body, .. } => {
                self.protocol(format!("HTTP {status} without a Cthulu error body: {body}"))
            }
            ClientError::WebSocket { source, .. } => match *source {
                cthulu_client::WebSocketError::Io(io) => self.unreachable(io.to_string()),
                other => self.protocol(format!("WebSocket: {other}")),
            },
            ClientError::Protocol { detail, .. } => self.protocol(detail),
            ClientError::StreamClosed { .. } => {
                self.unreachable("the connection closed before the process exited")
            }
            ClientError::InvalidUrl { reason, .. } => {
                self.unreachable(format!("its URL is not usable: {reason}"))
            }
        }
    }

    fn api_error(
        &self,
        operation: &'static str,
        program: Option<&str>,
        error: ApiError,
    ) -> SandboxError {
        let message = match &self.sandbox {
            Some((ours, theirs)) => error.message.replace(theirs.as_str(), ours.as_str()),
            None => error.message.clone(),
        };
        match (error.code, &self.sandbox, program) {
            (ErrorCode::SandboxNotFound, Some((ours, _)), _) => SandboxError::SandboxNotFound {
                sandbox_id: ours.clone(),
            },
            (ErrorCode::Unsupported, _, _) => SandboxError::Unsupported {
                backend: BackendKind::Remote,
                operation,
                reason: format!("node {}: {message}", self.node),
            },
            (ErrorCode::ProgramNotFound, _, Some(program)) => SandboxError::ProgramNotFound {
                program: program.to_owned(),
            },
            (ErrorCode::Unauthorized, _, _) => SandboxError::Node {
                node: self.node.clone(),
                // Our key was fine; the node refused ours for it: a platform-side problem
                // the user can fix, not a 401 for them.
                code: ErrorCode::BackendUnavailable,
                message: format!("node {} refused the platform's token: {message}", self.node),
                hint: Some(
                    "register the node again with its token: `cthulu node rm NAME` then `cthulu node add NAME URL --token T`"
                        .into(),
                ),
            },
            (code, _, _) => SandboxError::Node {
                node: self.node.clone(),
                code,
                message,
                hint: error.hint,
            },
        }
    }
}

/// An error and its causes on one line.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> NodeCall {
        NodeCall {
            node: "gpu1".into(),
            url: "http://10.0.0.2:8081/".into(),
            sandbox: Some((SandboxId::parse("ours1").unwrap(), "theirs9".into())),
        }
    }

    fn api(code: ErrorCode, message: &str) -> ClientError {
        ClientError::Api {
            status: code.http_status(),
            error: ApiError {
                code,
                message: message.into(),
                hint: Some("a hint".into()),
            },
        }
    }

    #[test]
    fn node_errors_keep_their_code_and_name_our_sandbox() {
        let error = call().error(
            "exec",
            api(ErrorCode::InvalidState, "sandbox theirs9 is stopped"),
        );
        assert_eq!(error.code(), ErrorCode::InvalidState);
        assert_eq!(error.to_string(), "sandbox ours1 is stopped");
        assert_eq!(error.hint().as_deref(), Some("a hint"));
        let missing = call().error(
            "exec",
            api(ErrorCode::SandboxNotFound, "sandbox theirs9 not found"),
        );
        assert!(
            matches!(missing, SandboxError::SandboxNotFound { sandbox_id } if sandbox_id.as_str() == "ours1")
        );
    }

    #[test]
    fn variants_the_contract_matches_are_rebuilt() {
        let unsupported = call().error("checkpoint", api(ErrorCode::Unsupported, "no checkpoints"));
        assert!(matches!(
            unsupported,
            SandboxError::Unsupported {
                backend: BackendKind::Remote,
                operation: "checkpoint",
                ..
            }
        ));
        let program = call().error_running(
            "exec",
            Some("nope"),
            api(ErrorCode::ProgramNotFound, "program nope not found"),
        );
        assert!(matches!(program, SandboxError::ProgramNotFound { program } if program == "nope"));
    }

    #[test]
    fn a_refused_token_is_not_the_users_401() {
        let error = call().error("exec", api(ErrorCode::Unauthorized, "invalid API key"));
        assert_eq!(error.code(), ErrorCode::BackendUnavailable);
        assert!(error.to_string().contains("gpu1"), "{error}");
    }

    #[test]
    fn garbage_and_silence_name_the_node() {
        let garbage = call().error(
            "exec",
            ClientError::UnexpectedStatus {
                method: "POST".into(),
                url: "x".into(),
                status: 502,
                body: "<html>".into(),
            },
        );
        assert_eq!(garbage.code(), ErrorCode::NodeUnreachable);
        assert!(garbage.to_string().contains("gpu1"), "{garbage}");
        let closed = call().error("exec", ClientError::StreamClosed { url: "x".into() });
        assert_eq!(closed.code(), ErrorCode::NodeUnreachable);
        assert!(
            closed.to_string().contains("http://10.0.0.2:8081/"),
            "{closed}"
        );
    }
}
