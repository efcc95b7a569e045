//! A QMP client: QEMU's line-delimited JSON control protocol on a Unix socket. It is a
//! handful of lines of JSON, so it is written here rather than pulled in as a crate.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// Why a QMP exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("connecting to QEMU's control socket {path}: {source}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to QEMU's control socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("QEMU closed its control socket")]
    Closed,
    #[error("QEMU's control socket sent something that is not QMP: {0}")]
    Garbage(String),
    #[error("QEMU refused {command}: {message}")]
    Command { command: String, message: String },
    #[error("QEMU did not answer {command} within {timeout:?}")]
    Timeout { command: String, timeout: Duration },
}

/// One QMP session.
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    /// Asynchronous events seen while waiting for answers, oldest first.
    events: Vec<Value>,
}

/// How long one command may take; migrations are polled, not awaited.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

impl Qmp {
    /// Connects, reads the greeting and leaves capabilities negotiation mode.
    pub async fn connect(path: &Path) -> Result<Qmp, QmpError> {
        let socket = UnixStream::connect(path)
            .await
            .map_err(|source| QmpError::Connect {
                path: path.display().to_string(),
                source,
            })?;
        let (reader, writer) = socket.into_split();
        let mut qmp = Qmp {
            reader: BufReader::new(reader),
            writer,
            events: Vec::new(),
        };
        let greeting = qmp.read_message().await?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Garbage(greeting.to_string()));
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// Runs `command` and returns its `return` value.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let mut request = json!({ "execute": command });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let mut line = request.to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes()).await?;
        let answer = tokio::time::timeout(COMMAND_TIMEOUT, async {
            loop {
                let message = self.read_message().await?;
                if message.get("event").is_some() {
                    self.events.push(message);
                    continue;
                }
                return Ok::<Value, QmpError>(message);
            }
        })
        .await
        .map_err(|_| QmpError::Timeout {
            command: command.to_string(),
            timeout: COMMAND_TIMEOUT,
        })??;
        if let Some(error) = answer.get("error") {
            return Err(QmpError::Command {
                command: command.to_string(),
                message: error
                    .get("desc")
                    .and_then(Value::as_str)
                    .unwrap_or("no description")
                    .to_string(),
            });
        }
        answer
            .get("return")
            .cloned()
            .ok_or_else(|| QmpError::Garbage(answer.to_string()))
    }

    /// The run state (`running`, `paused`, `inmigrate`, `postmigrate`, …).
    pub async fn status(&mut self) -> Result<String, QmpError> {
        let status = self.execute("query-status", None).await?;
        status
            .get("status")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| QmpError::Garbage(status.to_string()))
    }

    /// Polls `query-migrate` until the migration completed; an error names QEMU's reason.
    pub async fn wait_migration(&mut self, limit: Duration) -> Result<(), QmpError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let state = self.execute("query-migrate", None).await?;
            match state.get("status").and_then(Value::as_str) {
                Some("completed") => return Ok(()),
                Some("failed") | Some("cancelled") => {
                    return Err(QmpError::Command {
                        command: "migrate".into(),
                        message: state
                            .get("error-desc")
                            .and_then(Value::as_str)
                            .unwrap_or("the migration failed")
                            .to_string(),
                    })
                }
                _ => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(QmpError::Timeout {
                    command: "migrate".into(),
                    timeout: limit,
                });
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Polls `query-status` until QEMU reports `wanted`.
    pub async fn wait_status(&mut self, wanted: &str, limit: Duration) -> Result<(), QmpError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let status = self.status().await?;
            if status == wanted {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(QmpError::Timeout {
                    command: format!("waiting for status {wanted} (last: {status})"),
                    timeout: limit,
                });
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn read_message(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        // QMP lines are small; a line longer than this is not QMP.
        let read = (&mut self.reader)
            .take(1 << 20)
            .read_line(&mut line)
            .await?;
        if read == 0 {
            return Err(QmpError::Closed);
        }
        serde_json::from_str(&line).map_err(|_| QmpError::Garbage(line.trim().to_string()))
    }
}
