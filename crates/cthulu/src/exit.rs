//! Stable exit codes (docs/cli.md) and the printing of errors: `error: <chain>` and
//! `hint: …` lines on stderr.

use std::process::ExitCode;
use std::time::Duration;

use cthulu_client::ClientError;
use cthulu_types::ErrorCode;

use crate::cli::{Cli, Command};

/// The command did what was asked.
pub const SUCCESS: u8 = 0;
/// Any failure without a more specific code.
pub const FAILURE: u8 = 1;
/// The sandbox, process, checkpoint, port or file named does not exist.
pub const NOT_FOUND: u8 = 3;
/// No server answered at the URL.
pub const UNREACHABLE: u8 = 4;
/// The server wants an API key, or refused the one given.
pub const UNAUTHORIZED: u8 = 5;
/// A command or agent run went past its time limit (as `timeout(1)` reports it).
pub const TIMED_OUT: u8 = 124;
/// The program to run does not exist, as shells report it.
pub const COMMAND_NOT_FOUND: u8 = 127;
/// Interrupted with Ctrl-C (128 + SIGINT), as shells report it.
pub const INTERRUPTED: u8 = 130;

/// A hint attached to an error as context, printed as a `hint:` line.
#[derive(Debug)]
pub struct Hint(pub String);

impl std::fmt::Display for Hint {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::error::Error for Hint {}

/// Runs the parsed command line and turns its outcome into the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    let default_level = match &cli.command {
        Command::Serve(_) => "info",
        Command::Node(args) if args.command.is_none() => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person: a log file or journal gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(FAILURE);
        }
    };
    let outcome = runtime.block_on(crate::commands::run(cli));
    // Reading stdin occupies a blocking thread that never returns on its own; do not
    // wait for it.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(error) => ExitCode::from(report(&error)),
    }
}

/// Prints `error: …` and any hints on stderr and returns the exit code for `error`.
pub fn report(error: &anyhow::Error) -> u8 {
    eprintln!("error: {error:#}");
    let mut hints = Vec::new();
    for cause in error.chain() {
        if let Some(Hint(hint)) = cause.downcast_ref::<Hint>() {
            hints.push(hint.clone());
        }
        if let Some(hint) = cause
            .downcast_ref::<ClientError>()
            .and_then(ClientError::hint)
        {
            hints.push(hint);
        }
    }
    hints.dedup();
    for hint in hints {
        eprintln!("hint: {hint}");
    }
    code_of(error)
}

/// The exit code of a failed command.
pub fn code_of(error: &anyhow::Error) -> u8 {
    let client_error = error
        .chain()
        .find_map(|cause| cause.downcast_ref::<ClientError>());
    match client_error {
        Some(error) if error.is_not_found() => NOT_FOUND,
        Some(error) if error.is_unreachable() => UNREACHABLE,
        Some(error) if error.is_unauthorized() => UNAUTHORIZED,
        Some(error) if error.code() == Some(ErrorCode::ProgramNotFound) => COMMAND_NOT_FOUND,
        _ => FAILURE,
    }
}

/// An exit status of a remote program as this process's exit code (shells keep the low
/// 8 bits too).
pub fn program_code(status: i32) -> u8 {
    (status & 0xff) as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context as _;
    use cthulu_types::ApiError;

    fn api_error(code: ErrorCode) -> anyhow::Error {
        let error = ClientError::Api {
            status: code.http_status(),
            error: ApiError {
                code,
                message: "x".into(),
                hint: None,
            },
        };
        Err::<(), _>(error).context("cannot do it").unwrap_err()
    }

    #[test]
    fn exit_codes_follow_the_error_kind() {
        assert_eq!(code_of(&api_error(ErrorCode::SandboxNotFound)), NOT_FOUND);
        assert_eq!(
            code_of(&api_error(ErrorCode::CheckpointNotFound)),
            NOT_FOUND
        );
        assert_eq!(code_of(&api_error(ErrorCode::Unauthorized)), UNAUTHORIZED);
        assert_eq!(code_of(&api_error(ErrorCode::Conflict)), FAILURE);
        assert_eq!(
            code_of(&api_error(ErrorCode::ProgramNotFound)),
            COMMAND_NOT_FOUND
        );
        assert_eq!(code_of(&anyhow::anyhow!("plain")), FAILURE);
    }

    #[test]
    fn program_codes_keep_the_low_byte() {
        assert_eq!(program_code(3), 3);
        assert_eq!(program_code(137), 137);
        assert_eq!(program_code(256 + 7), 7);
    }
}
