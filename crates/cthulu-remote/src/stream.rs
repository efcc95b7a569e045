//! [`RemoteExecStream`]: a process on a node, through the node's WebSocket session.

use async_trait::async_trait;
use cthulu_client::{ExecSender, ExecSession};
use cthulu_core::{ExecEvent, ExecStream, ExitInfo, SandboxError};
use cthulu_types::{PtySize, Signal};

use crate::errors::NodeCall;

pub struct RemoteExecStream {
    session: ExecSession,
    sender: ExecSender,
    process_id: String,
    /// Whether the process has a PTY; `None` for an attach, where only the node knows.
    tty: Option<bool>,
    call: NodeCall,
    ended: bool,
}

impl RemoteExecStream {
    pub fn new(session: ExecSession, tty: Option<bool>, call: NodeCall) -> Self {
        RemoteExecStream {
            sender: session.sender(),
            process_id: session.process_id().to_owned(),
            session,
            tty,
            call,
            ended: false,
        }
    }
}

#[async_trait]
impl ExecStream for RemoteExecStream {
    fn process_id(&self) -> &str {
        &self.process_id
    }

    async fn next_event(&mut self) -> Option<ExecEvent> {
        if self.ended {
            return None;
        }
        match self.session.next_event().await {
            Ok(Some(cthulu_client::ExecEvent::Stdout(data))) => Some(ExecEvent::Stdout(data)),
            Ok(Some(cthulu_client::ExecEvent::Stderr(data))) => Some(ExecEvent::Stderr(data)),
            Ok(Some(cthulu_client::ExecEvent::Exit(exit))) => {
                self.ended = true;
                Some(ExecEvent::Exit(ExitInfo {
                    exit_code: exit.exit_code,
                    signal: exit.signal,
                    timed_out: exit.timed_out,
                    truncated: exit.truncated,
                    oom_killed: exit.oom_killed,
                }))
            }
            Ok(None) => {
                self.ended = true;
                None
            }
            Err(error) => {
                // The contract has no error event: the stream ends without an exit, which
                // the client sees as a closed stream.
                let error = self.call.error("exec_stream", error);
                tracing::warn!(process_id = %self.process_id, %error, "a remote stream broke");
                self.ended = true;
                None
            }
        }
    }

    async fn write_stdin(&mut self, data: &[u8]) -> Result<(), SandboxError> {
        self.sender
            .stdin(data)
            .await
            .map_err(|error| self.call.error("write_stdin", error))
    }

    async fn close_stdin(&mut self) -> Result<(), SandboxError> {
        self.sender
            .close_stdin()
            .await
            .map_err(|error| self.call.error("close_stdin", error))
    }

    async fn signal(&mut self, signal: Signal) -> Result<(), SandboxError> {
        self.sender
            .signal(signal)
            .await
            .map_err(|error| self.call.error("signal", error))
    }

    async fn resize(&mut self, size: PtySize) -> Result<(), SandboxError> {
        if self.tty == Some(false) {
            return Err(SandboxError::invalid(
                "resize",
                "the process has no terminal (start it with tty)",
            ));
        }
        self.sender
            .resize(size)
            .await
            .map_err(|error| self.call.error("resize", error))
    }
}
