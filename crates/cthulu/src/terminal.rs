//! The local terminal: its size, and raw mode that is always restored.

use std::io::IsTerminal as _;

use anyhow::Context as _;
use cthulu_types::PtySize;
use rustix::termios::{self, OptionalActions, Termios};

/// The size of the terminal on stdin (or stdout), if there is one.
pub fn size() -> Option<PtySize> {
    let from = |size: termios::Winsize| {
        (size.ws_col > 0 && size.ws_row > 0).then_some(PtySize {
            cols: size.ws_col,
            rows: size.ws_row,
        })
    };
    termios::tcgetwinsize(std::io::stdin())
        .ok()
        .and_then(from)
        .or_else(|| termios::tcgetwinsize(std::io::stdout()).ok().and_then(from))
}

/// Raw mode on the stdin terminal while this lives; the saved settings come back on drop,
/// which also runs on errors and panics (unwinding).
#[derive(Debug)]
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Puts the stdin terminal in raw mode: bytes go through as typed, no echo, no
    /// signals from Ctrl-C (the remote terminal handles them).
    pub fn enable() -> anyhow::Result<RawMode> {
        let stdin = std::io::stdin();
        anyhow::ensure!(stdin.is_terminal(), "stdin is not a terminal");
        let saved = termios::tcgetattr(&stdin).context("cannot read the terminal settings")?;
        let mut raw = saved.clone();
        raw.make_raw();
        termios::tcsetattr(&stdin, OptionalActions::Now, &raw)
            .context("cannot put the terminal in raw mode")?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin(), OptionalActions::Now, &self.saved);
    }
}
