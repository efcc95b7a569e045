//! What the contract's operations take and give: sandbox and exec specs, exec results and
//! stream events.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use cthulu_types::exec::{check_env, FieldError, DEFAULT_MAX_OUTPUT_BYTES, DEFAULT_TIMEOUT_MS};
use cthulu_types::{
    Command, CreateSandboxRequest, ExecRequest, ExecResponse, NetworkMode, OutputEncoding, PtySize,
    Resources,
};
use serde::{Deserialize, Serialize};

/// Everything a backend needs to make a sandbox. The server keeps it in its database and
/// hands it back to `attach` after a restart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SandboxSpec {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub network: NetworkMode,
    #[serde(default)]
    pub image: Option<String>,
    /// `<sandbox id>/<checkpoint>`: a memory checkpoint to start from (backends that can).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_checkpoint: Option<String>,
    /// The node a `remote` sandbox was asked for (`None`: placed by free capacity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl SandboxSpec {
    pub fn from_request(request: &CreateSandboxRequest) -> Result<Self, FieldError> {
        check_env(&request.env)?;
        Ok(SandboxSpec {
            labels: request.labels.clone(),
            env: request.env.clone(),
            resources: request.resources.clone(),
            network: request.network,
            image: request.image.clone(),
            from_checkpoint: request.from_checkpoint.clone(),
            node: request.node.clone(),
        })
    }
}

/// The timeout of terminals and detached processes when the request names none: ten
/// years, i.e. none (a finite value keeps deadline arithmetic from overflowing).
pub const UNLIMITED_TIMEOUT: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// One exec, checked and with defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecSpec {
    pub command: Command,
    /// The request's env; the backend lays it over the sandbox's env.
    pub env: BTreeMap<String, String>,
    /// As the user gave it; resolve with [`workspace_relative`](crate::workspace_relative).
    pub cwd: Option<String>,
    /// Given on stdin, then EOF. `None`: EOF at once (one-shot exec), or a pipe the client
    /// writes to (streaming exec).
    pub stdin: Option<Vec<u8>>,
    pub timeout: Duration,
    /// Cap on each of stdout and stderr.
    pub max_output_bytes: u64,
    pub tty: Option<PtySize>,
    pub detach: bool,
}

impl ExecSpec {
    /// A spec for `command` with every default.
    pub fn new(command: Command) -> Self {
        ExecSpec {
            command,
            env: BTreeMap::new(),
            cwd: None,
            stdin: None,
            timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            tty: None,
            detach: false,
        }
    }

    pub fn argv<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ExecSpec::new(Command::Argv(argv.into_iter().map(Into::into).collect()))
    }

    pub fn shell(script: impl Into<String>) -> Self {
        ExecSpec::new(Command::Shell(script.into()))
    }

    pub fn from_request(request: &ExecRequest) -> Result<Self, FieldError> {
        let command = request.command()?;
        request.check_env()?;
        if request.timeout_ms == Some(0) {
            return Err(FieldError::new("timeout_ms", "must be at least 1"));
        }
        if let Some(size) = request.tty {
            if size.cols == 0 || size.rows == 0 {
                return Err(FieldError::new("tty", "cols and rows must be at least 1"));
            }
        }
        Ok(ExecSpec {
            command,
            env: request.env.clone(),
            cwd: request.cwd.clone(),
            stdin: request.stdin_bytes()?,
            timeout: match request.timeout_ms {
                Some(timeout_ms) => Duration::from_millis(timeout_ms),
                // A terminal or a detached process (a shell, a dev server) lives until it
                // is ended, not until the one-shot default.
                None if request.detach || request.tty.is_some() => UNLIMITED_TIMEOUT,
                None => Duration::from_millis(DEFAULT_TIMEOUT_MS),
            },
            max_output_bytes: request.max_output_bytes.unwrap_or(DEFAULT_MAX_OUTPUT_BYTES),
            tty: request.tty,
            detach: request.detach,
        })
    }

    /// The program a failure to start should name.
    pub fn program(&self) -> String {
        match &self.command {
            Command::Argv(argv) => argv.first().cloned().unwrap_or_default(),
            Command::Shell(_) => "/bin/sh".to_owned(),
        }
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// `None` when a signal killed it.
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    /// Some output was dropped at the cap (streams) or not kept (buffers).
    pub truncated: bool,
    pub oom_killed: bool,
}

/// The result of a one-shot exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit: ExitInfo,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub duration: Duration,
}

impl ExecOutput {
    pub fn to_response(&self, encoding: OutputEncoding) -> ExecResponse {
        let (stdout, stderr, encoding) =
            ExecResponse::encode_output(&self.stdout, &self.stderr, encoding);
        ExecResponse {
            exit_code: self.exit.exit_code,
            signal: self.exit.signal,
            stdout,
            stderr,
            encoding,
            timed_out: self.exit.timed_out,
            truncated: self.exit.truncated,
            oom_killed: self.exit.oom_killed,
            duration_ms: self.duration.as_millis() as u64,
        }
    }
}

/// One event of a streaming exec. `Exit` comes after the last output and is the last event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    Stdout(Bytes),
    Stderr(Bytes),
    Exit(ExitInfo),
}

/// Options of a file upload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Permission bits of the file; the default is 0644.
    pub mode: Option<u32>,
    /// Create missing parent directories (otherwise a missing parent is an error).
    pub create_parents: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_validation() {
        let spec = ExecSpec::from_request(&ExecRequest::argv(["true"])).unwrap();
        assert_eq!(spec.timeout, Duration::from_secs(15 * 60));
        assert_eq!(spec.max_output_bytes, DEFAULT_MAX_OUTPUT_BYTES);
        let zero = ExecRequest {
            timeout_ms: Some(0),
            ..ExecRequest::argv(["true"])
        };
        assert_eq!(
            ExecSpec::from_request(&zero).unwrap_err().field,
            "timeout_ms"
        );
        assert_eq!(ExecSpec::shell("x").program(), "/bin/sh");
        let detached = ExecRequest {
            detach: true,
            ..ExecRequest::argv(["sleep", "1"])
        };
        assert_eq!(
            ExecSpec::from_request(&detached).unwrap().timeout,
            UNLIMITED_TIMEOUT
        );
        let terminal = ExecRequest {
            tty: Some(cthulu_types::PtySize::default()),
            ..ExecRequest::argv(["sh"])
        };
        assert_eq!(
            ExecSpec::from_request(&terminal).unwrap().timeout,
            UNLIMITED_TIMEOUT
        );
    }
}
