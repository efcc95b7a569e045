//! One line per event on stderr, which is the console (`/dev/console`, the serial port) in
//! PID 1 mode and the test's stderr in test mode.

use std::io::Write;

/// Writes `cthulu-agent: <message>` as one line; a failing console is ignored.
pub fn line(message: std::fmt::Arguments<'_>) {
    let text = format!("cthulu-agent: {message}\n");
    // One write per line, so lines of the reaper and the server do not interleave.
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// `log!("...", args)`: a console line.
macro_rules! log {
    ($($arg:tt)*) => {
        $crate::log::line(format_args!($($arg)*))
    };
}
pub(crate) use log;
