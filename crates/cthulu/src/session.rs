//! Streams a remote process ([`ExecSession`]) to this process's stdout and stderr, feeds it
//! stdin, and turns Ctrl-C into a signal for it.

use std::io::IsTerminal as _;

use anyhow::Context as _;
use cthulu_client::{ExecEvent, ExecExit, ExecSender, ExecSession};
use cthulu_types::Signal;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::signal::unix::{signal, SignalKind};

/// Output cap asked for streamed commands: none. The API's default cap (10 MiB) protects
/// the memory of one-shot answers; a stream has backpressure instead, and a terminal
/// session or `cthulu run -- cat big` must not be cut off.
pub const UNCAPPED_OUTPUT: Option<u64> = Some(u64::MAX);

/// What happens to this process's stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdinPolicy {
    /// Copy it to the process, then close the process's stdin at EOF.
    Forward,
    /// Close the process's stdin at once.
    Close,
    /// Leave the process's stdin alone (attach to a process that has its own).
    Leave,
}

impl StdinPolicy {
    /// Forward piped or redirected stdin; a terminal is not forwarded, the process sees
    /// EOF instead of waiting for typing nobody will do.
    pub fn forward_unless_terminal(otherwise: StdinPolicy) -> StdinPolicy {
        if std::io::stdin().is_terminal() {
            otherwise
        } else {
            StdinPolicy::Forward
        }
    }
}

/// What the first Ctrl-C does (the second always gives up on the process).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptPolicy {
    /// Send SIGINT to the process and keep streaming until it exits.
    SignalProcess,
    /// Stop streaming at once and leave the process as it is.
    Detach,
}

/// How streaming ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Exited(ExecExit),
    /// This process was interrupted or terminated; the code to exit with (128 + signal).
    Interrupted(u8),
}

/// Options of [`stream`].
#[derive(Debug, Clone, Copy)]
pub struct StreamOptions {
    pub stdin: StdinPolicy,
    pub interrupt: InterruptPolicy,
    /// Send the local terminal's size to the process's PTY whenever it changes.
    pub follow_window_size: bool,
}

/// Streams `session` until its process exits or this process is interrupted.
pub async fn stream(mut session: ExecSession, options: StreamOptions) -> anyhow::Result<Outcome> {
    let sender = session.sender();
    let stdin_task = match options.stdin {
        StdinPolicy::Forward => Some(tokio::spawn(forward_stdin(sender.clone()))),
        StdinPolicy::Close => {
            sender
                .close_stdin()
                .await
                .context("cannot close the process's stdin")?;
            None
        }
        StdinPolicy::Leave => None,
    };
    let outcome = pump(&mut session, &sender, options).await;
    if let Some(task) = stdin_task {
        task.abort();
    }
    outcome
}

async fn pump(
    session: &mut ExecSession,
    sender: &ExecSender,
    options: StreamOptions,
) -> anyhow::Result<Outcome> {
    let mut interrupts = signal(SignalKind::interrupt()).context("cannot watch for Ctrl-C")?;
    let mut terminations = signal(SignalKind::terminate()).context("cannot watch for SIGTERM")?;
    let mut hangups = signal(SignalKind::hangup()).context("cannot watch for SIGHUP")?;
    let mut window_changes = if options.follow_window_size {
        Some(signal(SignalKind::window_change()).context("cannot watch for SIGWINCH")?)
    } else {
        None
    };
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    let mut interrupted = false;
    loop {
        tokio::select! {
            event = session.next_event() => {
                match event.context("streaming the process failed")? {
                    Some(ExecEvent::Stdout(data)) => {
                        stdout.write_all(&data).await.context("cannot write to stdout")?;
                        stdout.flush().await.context("cannot write to stdout")?;
                    }
                    Some(ExecEvent::Stderr(data)) => {
                        stderr.write_all(&data).await.context("cannot write to stderr")?;
                        stderr.flush().await.context("cannot write to stderr")?;
                    }
                    Some(ExecEvent::Exit(exit)) => return Ok(Outcome::Exited(exit)),
                    None => anyhow::bail!("the server closed the stream without an exit status"),
                }
            }
            _ = interrupts.recv() => {
                if interrupted || options.interrupt == InterruptPolicy::Detach {
                    return Ok(Outcome::Interrupted(crate::exit::INTERRUPTED));
                }
                interrupted = true;
                // Ignore failure: the process may have just exited, its exit frame follows.
                let _ = sender.signal(Signal::Int).await;
            }
            _ = terminations.recv() => return Ok(Outcome::Interrupted(128 + 15)),
            _ = hangups.recv() => return Ok(Outcome::Interrupted(128 + 1)),
            Some(()) = next_window_change(&mut window_changes) => {
                if let Some(size) = crate::terminal::size() {
                    let _ = sender.resize(size).await;
                }
            }
        }
    }
}

async fn next_window_change(
    window_changes: &mut Option<tokio::signal::unix::Signal>,
) -> Option<()> {
    match window_changes {
        Some(signals) => signals.recv().await,
        None => std::future::pending().await,
    }
}

/// Copies stdin to the process, then sends EOF.
async fn forward_stdin(sender: ExecSender) {
    let mut stdin = tokio::io::stdin();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match stdin.read(&mut buffer).await {
            Ok(0) => break,
            Ok(count) => {
                if sender.stdin(&buffer[..count]).await.is_err() {
                    return;
                }
            }
            Err(error) => {
                tracing::warn!("cannot read stdin: {error}");
                break;
            }
        }
    }
    let _ = sender.close_stdin().await;
}

/// The exit code of this process for `outcome`, telling on stderr why a process that
/// did not exit normally ended.
pub fn exit_code(outcome: Outcome) -> u8 {
    match outcome {
        Outcome::Interrupted(code) => code,
        Outcome::Exited(exit) => {
            if exit.timed_out {
                eprintln!("cthulu: the command timed out");
            } else if exit.oom_killed {
                eprintln!("cthulu: the command ran out of memory and was killed");
            }
            if exit.truncated {
                eprintln!("cthulu: output past the limit was dropped");
            }
            crate::exit::program_code(exit.shell_status())
        }
    }
}
