//! `cthulu shell ID`: an interactive shell under a pseudo-terminal in the sandbox.
//!
//! The local terminal goes to raw mode so every key (Ctrl-C, Ctrl-D, arrows) reaches the
//! remote terminal as typed; the remote shell exits on Ctrl-D at an empty prompt, its exit
//! frame ends the session, and raw mode is undone on every way out.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;

use anyhow::Context as _;
use cthulu_types::{ExecRequest, PtySize};

use crate::cli::GlobalArgs;
use crate::session::{self, InterruptPolicy, StdinPolicy, StreamOptions};
use crate::terminal::{self, RawMode};

/// Bash when the sandbox has it, else the POSIX shell; both interactive.
const DEFAULT_SHELL: &str = "if command -v bash >/dev/null 2>&1; then exec bash -i; fi; exec sh -i";

#[derive(Debug, clap::Args)]
pub struct ShellArgs {
    /// The sandbox id
    pub sandbox_id: String,
    /// The program to run instead of the default shell, e.g. /bin/bash or "python3 -q"
    #[arg(long)]
    pub cmd: Option<String>,
}

/// The request that starts the shell: `cmd` split on whitespace, or the default.
fn shell_request(cmd: Option<&str>, size: PtySize, term: String) -> ExecRequest {
    let base = match cmd.map(str::split_whitespace) {
        Some(words) if cmd.is_some_and(|cmd| !cmd.trim().is_empty()) => ExecRequest::argv(words),
        _ => ExecRequest::argv(["/bin/sh", "-c", DEFAULT_SHELL]),
    };
    ExecRequest {
        env: BTreeMap::from([("TERM".to_owned(), term)]),
        tty: Some(size),
        max_output_bytes: session::UNCAPPED_OUTPUT,
        ..base
    }
}

pub async fn run(global: &GlobalArgs, args: ShellArgs) -> anyhow::Result<u8> {
    let client = super::client(global)?;
    let interactive = std::io::stdin().is_terminal();
    let size = terminal::size().unwrap_or_default();
    let term = std::env::var("TERM")
        .ok()
        .filter(|term| !term.is_empty() && term != "dumb")
        .unwrap_or_else(|| "xterm-256color".into());
    let request = shell_request(args.cmd.as_deref(), size, term);
    let session = client
        .exec_stream(&args.sandbox_id, &request)
        .await
        .with_context(|| format!("cannot open a shell in sandbox {}", args.sandbox_id))?;
    // Raw mode only once the shell runs, so errors above print on a sane terminal.
    let raw_mode = if interactive {
        Some(RawMode::enable()?)
    } else {
        None
    };
    let outcome = session::stream(
        session,
        StreamOptions {
            stdin: StdinPolicy::Forward,
            interrupt: InterruptPolicy::SignalProcess,
            follow_window_size: interactive,
        },
    )
    .await;
    drop(raw_mode);
    Ok(session::exit_code(outcome?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_run_under_a_terminal() {
        let size = PtySize {
            cols: 120,
            rows: 40,
        };
        let request = shell_request(None, size, "xterm".into());
        assert_eq!(request.tty, Some(size));
        assert_eq!(request.argv.as_ref().unwrap()[0], "/bin/sh");
        assert_eq!(request.env["TERM"], "xterm");
        let custom = shell_request(Some("python3 -q"), size, "xterm".into());
        assert_eq!(custom.argv, Some(vec!["python3".into(), "-q".into()]));
        let blank = shell_request(Some("  "), size, "xterm".into());
        assert_eq!(blank.argv.as_ref().unwrap()[0], "/bin/sh");
    }
}
