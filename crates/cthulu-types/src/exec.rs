//! Exec: one-shot requests and results, processes (sessions) and signals.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Default exec timeout: 15 minutes.
pub const DEFAULT_TIMEOUT_MS: u64 = 15 * 60 * 1000;
/// Default cap on each of stdout and stderr, in bytes.
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 10 * 1024 * 1024;

/// `POST /api/v1/sandboxes/{id}/exec`, and the first frame of a streaming exec.
/// Exactly one of `argv` and `shell` is given.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// Run this program with these arguments; no shell expansion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    /// Run this string under `/bin/sh -c`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// Added to the sandbox's env; wins on conflicts.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory inside the sandbox; relative paths start at the workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Text given on stdin, then EOF. Without stdin the program sees EOF at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Binary stdin, base64; instead of `stdin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin_base64: Option<String>,
    /// Kill the process group after this long. Default 15 minutes; no limit for a
    /// streaming exec with `tty` or `detach`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Cap on each of stdout and stderr, in bytes (default 10 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_bytes: Option<u64>,
    /// How stdout and stderr are encoded in the response; `auto` picks utf8 when both are
    /// valid UTF-8, base64 otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_encoding: Option<OutputEncoding>,
    /// Streaming only: run under a pseudo-terminal of this size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<PtySize>,
    /// Streaming only: the process outlives the connection and can be re-attached.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub detach: bool,
}

/// What to run: a program and its arguments, or a shell string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    Argv(Vec<String>),
    Shell(String),
}

impl Command {
    /// The argv that runs this command: `argv` as given, `shell` under `/bin/sh -c`.
    pub fn to_argv(&self) -> Vec<String> {
        match self {
            Command::Argv(argv) => argv.clone(),
            Command::Shell(script) => vec!["/bin/sh".into(), "-c".into(), script.clone()],
        }
    }

    /// A one-line description for process lists and logs.
    pub fn display(&self) -> String {
        match self {
            Command::Argv(argv) => argv.join(" "),
            Command::Shell(script) => script.clone(),
        }
    }
}

/// A request field that is missing, contradictory or malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        FieldError {
            field,
            message: message.into(),
        }
    }
}

impl ExecRequest {
    pub fn argv<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ExecRequest {
            argv: Some(argv.into_iter().map(Into::into).collect()),
            ..ExecRequest::default()
        }
    }

    pub fn shell(script: impl Into<String>) -> Self {
        ExecRequest {
            shell: Some(script.into()),
            ..ExecRequest::default()
        }
    }

    /// The command, checked: exactly one of `argv` and `shell`, and a program name.
    pub fn command(&self) -> Result<Command, FieldError> {
        match (&self.argv, &self.shell) {
            (Some(_), Some(_)) => Err(FieldError::new(
                "argv",
                "give either `argv` or `shell`, not both",
            )),
            (None, None) => Err(FieldError::new("argv", "give `argv` or `shell`")),
            (Some(argv), None) => match argv.first() {
                None => Err(FieldError::new("argv", "must name a program")),
                Some(program) if program.is_empty() => {
                    Err(FieldError::new("argv", "the program name is empty"))
                }
                Some(_) if argv.iter().any(|arg| arg.contains('\0')) => Err(FieldError::new(
                    "argv",
                    "arguments cannot contain NUL bytes",
                )),
                Some(_) => Ok(Command::Argv(argv.clone())),
            },
            (None, Some(script)) if script.contains('\0') => {
                Err(FieldError::new("shell", "cannot contain NUL bytes"))
            }
            (None, Some(script)) => Ok(Command::Shell(script.clone())),
        }
    }

    /// The stdin bytes, if any were given.
    pub fn stdin_bytes(&self) -> Result<Option<Vec<u8>>, FieldError> {
        match (&self.stdin, &self.stdin_base64) {
            (Some(_), Some(_)) => Err(FieldError::new(
                "stdin",
                "give either `stdin` or `stdin_base64`, not both",
            )),
            (Some(text), None) => Ok(Some(text.clone().into_bytes())),
            (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map(Some)
                .map_err(|error| FieldError::new("stdin_base64", error.to_string())),
            (None, None) => Ok(None),
        }
    }

    /// Checks the env names: no `=` or NUL, not empty.
    pub fn check_env(&self) -> Result<(), FieldError> {
        check_env(&self.env)
    }
}

/// Env names must be non-empty and free of `=` and NUL; values free of NUL.
pub fn check_env(env: &BTreeMap<String, String>) -> Result<(), FieldError> {
    for (name, value) in env {
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            return Err(FieldError::new(
                "env",
                format!("invalid variable name {name:?}"),
            ));
        }
        if value.contains('\0') {
            return Err(FieldError::new(
                "env",
                format!("value of {name} contains NUL"),
            ));
        }
    }
    Ok(())
}

/// Encoding of `stdout` and `stderr` in an [`ExecResponse`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutputEncoding {
    #[default]
    Auto,
    Utf8,
    Base64,
}

/// The result of a one-shot exec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExecResponse {
    /// The exit code; absent when the process was killed by a signal or timed out.
    pub exit_code: Option<i32>,
    /// The signal that killed the process, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// `utf8` or `base64`: how `stdout` and `stderr` are encoded.
    pub encoding: OutputEncoding,
    pub timed_out: bool,
    /// Output past `max_output_bytes` was dropped.
    pub truncated: bool,
    /// The kernel's OOM killer ended the process (backends with a memory limit).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub oom_killed: bool,
    pub duration_ms: u64,
}

impl ExecResponse {
    /// Encodes raw output for the wire as asked.
    pub fn encode_output(
        stdout: &[u8],
        stderr: &[u8],
        asked: OutputEncoding,
    ) -> (String, String, OutputEncoding) {
        let utf8 = match asked {
            OutputEncoding::Base64 => None,
            OutputEncoding::Utf8 => Some((
                String::from_utf8_lossy(stdout).into_owned(),
                String::from_utf8_lossy(stderr).into_owned(),
            )),
            OutputEncoding::Auto => {
                match (std::str::from_utf8(stdout), std::str::from_utf8(stderr)) {
                    (Ok(out), Ok(err)) => Some((out.to_owned(), err.to_owned())),
                    _ => None,
                }
            }
        };
        match utf8 {
            Some((out, err)) => (out, err, OutputEncoding::Utf8),
            None => {
                let engine = base64::engine::general_purpose::STANDARD;
                (
                    engine.encode(stdout),
                    engine.encode(stderr),
                    OutputEncoding::Base64,
                )
            }
        }
    }

    /// The raw bytes of stdout and stderr, whatever the encoding.
    pub fn decode_output(&self) -> Result<(Vec<u8>, Vec<u8>), base64::DecodeError> {
        match self.encoding {
            OutputEncoding::Base64 => {
                let engine = base64::engine::general_purpose::STANDARD;
                Ok((engine.decode(&self.stdout)?, engine.decode(&self.stderr)?))
            }
            _ => Ok((
                self.stdout.clone().into_bytes(),
                self.stderr.clone().into_bytes(),
            )),
        }
    }
}

/// Size of a pseudo-terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PtySize {
    pub cols: u16,
    pub rows: u16,
}

impl Default for PtySize {
    fn default() -> Self {
        PtySize { cols: 80, rows: 24 }
    }
}

/// Signals a client may send to a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Signal {
    Hup,
    Int,
    Quit,
    Kill,
    Usr1,
    Usr2,
    Term,
    Cont,
    Stop,
    Winch,
}

impl Signal {
    /// The Linux signal number.
    pub fn number(self) -> i32 {
        match self {
            Signal::Hup => 1,
            Signal::Int => 2,
            Signal::Quit => 3,
            Signal::Kill => 9,
            Signal::Usr1 => 10,
            Signal::Usr2 => 12,
            Signal::Term => 15,
            Signal::Cont => 18,
            Signal::Stop => 19,
            Signal::Winch => 28,
        }
    }

    /// Accepts `TERM`, `SIGTERM`, `term` or `15`.
    pub fn parse(raw: &str) -> Option<Signal> {
        let upper = raw.trim().to_ascii_uppercase();
        let name = upper.strip_prefix("SIG").unwrap_or(&upper);
        let all = [
            Signal::Hup,
            Signal::Int,
            Signal::Quit,
            Signal::Kill,
            Signal::Usr1,
            Signal::Usr2,
            Signal::Term,
            Signal::Cont,
            Signal::Stop,
            Signal::Winch,
        ];
        if let Ok(number) = name.parse::<i32>() {
            return all.into_iter().find(|signal| signal.number() == number);
        }
        all.into_iter().find(|signal| signal.to_string() == name)
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Signal::Hup => "HUP",
            Signal::Int => "INT",
            Signal::Quit => "QUIT",
            Signal::Kill => "KILL",
            Signal::Usr1 => "USR1",
            Signal::Usr2 => "USR2",
            Signal::Term => "TERM",
            Signal::Cont => "CONT",
            Signal::Stop => "STOP",
            Signal::Winch => "WINCH",
        };
        formatter.write_str(name)
    }
}

/// State of a process (session) in a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProcessState {
    Running,
    Exited,
    /// It was running when the server stopped and had died by the time it came back, or
    /// its output could no longer be followed.
    Lost,
}

/// One process of a sandbox, as `GET /api/v1/sandboxes/{id}/processes` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProcessInfo {
    /// Process id within Cthulu (not the host pid).
    pub id: String,
    pub command: String,
    pub state: ProcessState,
    pub detached: bool,
    pub tty: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    pub started_at_ms: u64,
}

/// `GET /api/v1/sandboxes/{id}/processes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProcessList {
    pub processes: Vec<ProcessInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_needs_exactly_one_form() {
        assert_eq!(
            ExecRequest::argv(["ls", "-l"]).command(),
            Ok(Command::Argv(vec!["ls".into(), "-l".into()]))
        );
        assert_eq!(
            ExecRequest::shell("echo hi").command().unwrap().to_argv(),
            vec!["/bin/sh", "-c", "echo hi"]
        );
        assert!(ExecRequest::default().command().is_err());
        let both = ExecRequest {
            argv: Some(vec!["a".into()]),
            shell: Some("b".into()),
            ..ExecRequest::default()
        };
        assert_eq!(both.command().unwrap_err().field, "argv");
        assert!(ExecRequest::argv(Vec::<String>::new()).command().is_err());
        assert!(ExecRequest::argv([""]).command().is_err());
        assert!(ExecRequest::argv(["a\0b"]).command().is_err());
    }

    #[test]
    fn output_encoding_falls_back_to_base64_for_binary() {
        let binary: Vec<u8> = (0..=255).collect();
        let (out, err, encoding) =
            ExecResponse::encode_output(&binary, b"ok", OutputEncoding::Auto);
        assert_eq!(encoding, OutputEncoding::Base64);
        let response = ExecResponse {
            exit_code: Some(0),
            signal: None,
            stdout: out,
            stderr: err,
            encoding,
            timed_out: false,
            truncated: false,
            oom_killed: false,
            duration_ms: 0,
        };
        assert_eq!(response.decode_output().unwrap(), (binary, b"ok".to_vec()));
        let (out, _, encoding) = ExecResponse::encode_output(b"hi", b"", OutputEncoding::Auto);
        assert_eq!((out.as_str(), encoding), ("hi", OutputEncoding::Utf8));
    }

    #[test]
    fn signals_parse_in_every_spelling() {
        assert_eq!(Signal::parse("TERM"), Some(Signal::Term));
        assert_eq!(Signal::parse("sigint"), Some(Signal::Int));
        assert_eq!(Signal::parse("9"), Some(Signal::Kill));
        assert_eq!(Signal::parse("BOGUS"), None);
        assert_eq!(serde_json::to_string(&Signal::Usr1).unwrap(), "\"USR1\"");
    }

    #[test]
    fn env_names_are_checked() {
        let mut env = BTreeMap::new();
        env.insert("A=B".to_owned(), "x".to_owned());
        assert!(check_env(&env).is_err());
        env.clear();
        env.insert("OK".to_owned(), "x".to_owned());
        assert!(check_env(&env).is_ok());
    }
}

/// `POST /api/v1/sandboxes/{id}/processes/{process_id}/signal`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalRequest {
    pub signal: Signal,
}
