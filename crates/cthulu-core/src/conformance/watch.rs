//! [`Watched`]: an [`ExecStream`] whose events are collected and checked as they come —
//! output after the exit event, or a stream that ends without one, is a failure.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::support::{excerpt, fail, Context, ScenarioError};
use crate::{ExecEvent, ExecStream, ExitInfo};

/// How long a stream may stay silent after its exit before `None` must come.
const END_LIMIT: Duration = Duration::from_secs(30);

pub struct Watched {
    stream: Box<dyn ExecStream>,
    /// Everything received on stdout so far (a PTY's output is all here).
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit: Option<ExitInfo>,
    /// Every event's arrival time and kind, in order (`'o'`, `'e'`, `'x'`).
    pub arrivals: Vec<(Instant, char)>,
    ended: bool,
}

impl Watched {
    pub fn new(stream: Box<dyn ExecStream>) -> Self {
        Watched {
            stream,
            stdout: Vec::new(),
            stderr: Vec::new(),
            exit: None,
            arrivals: Vec::new(),
            ended: false,
        }
    }

    pub fn process_id(&self) -> String {
        self.stream.process_id().to_owned()
    }

    /// The stream itself, for stdin, signals and resize.
    pub fn stream(&mut self) -> &mut dyn ExecStream {
        self.stream.as_mut()
    }

    /// The next event, recorded. `Ok(None)` once the stream has ended after its exit.
    async fn next(&mut self) -> Result<Option<()>, ScenarioError> {
        if self.ended {
            return Ok(None);
        }
        let event = self.stream.next_event().await;
        let now = Instant::now();
        match event {
            None if self.exit.is_some() => {
                self.ended = true;
                Ok(None)
            }
            None => Err(fail(format!(
                "the stream ended without an exit event (stdout so far: {:?}, stderr: {:?})",
                excerpt(&self.stdout, 300),
                excerpt(&self.stderr, 300)
            ))),
            Some(event) if self.exit.is_some() => Err(fail(format!(
                "an event came after the exit event, which must be the last: {event:?}"
            ))),
            Some(ExecEvent::Stdout(data)) => {
                self.record(now, 'o', &data);
                Ok(Some(()))
            }
            Some(ExecEvent::Stderr(data)) => {
                self.record(now, 'e', &data);
                Ok(Some(()))
            }
            Some(ExecEvent::Exit(exit)) => {
                self.arrivals.push((now, 'x'));
                self.exit = Some(exit);
                Ok(Some(()))
            }
        }
    }

    fn record(&mut self, now: Instant, kind: char, data: &Bytes) {
        self.arrivals.push((now, kind));
        match kind {
            'o' => self.stdout.extend_from_slice(data),
            _ => self.stderr.extend_from_slice(data),
        }
    }

    /// Reads until stdout contains `needle`; returns when it arrived.
    pub async fn wait_for(
        &mut self,
        needle: &str,
        limit: Duration,
    ) -> Result<Instant, ScenarioError> {
        let deadline = Instant::now() + limit;
        loop {
            if contains(&self.stdout, needle.as_bytes()) {
                return Ok(Instant::now());
            }
            if self.exit.is_some() {
                return Err(fail(format!(
                    "the process exited ({:?}) before printing {needle:?}; stdout {:?}, stderr {:?}",
                    self.exit,
                    excerpt(&self.stdout, 400),
                    excerpt(&self.stderr, 400)
                )));
            }
            match tokio::time::timeout_at(deadline, self.next()).await {
                Ok(result) => result?,
                Err(_) => {
                    return Err(fail(format!(
                        "{needle:?} did not appear on stdout within {limit:?}; stdout {:?}, stderr {:?}",
                        excerpt(&self.stdout, 400),
                        excerpt(&self.stderr, 400)
                    )))
                }
            };
        }
    }

    /// Collects whatever arrives during `period` (the process may exit meanwhile).
    pub async fn drain_for(&mut self, period: Duration) -> Result<(), ScenarioError> {
        let deadline = Instant::now() + period;
        while self.exit.is_none() {
            match tokio::time::timeout_at(deadline, self.next()).await {
                Ok(result) => {
                    result?;
                }
                Err(_) => return Ok(()),
            }
        }
        Ok(())
    }

    /// Reads to the exit event, then checks that the stream ends after it.
    pub async fn wait_exit(&mut self, limit: Duration) -> Result<ExitInfo, ScenarioError> {
        let deadline = Instant::now() + limit;
        while self.exit.is_none() {
            match tokio::time::timeout_at(deadline, self.next()).await {
                Ok(result) => {
                    result?;
                }
                Err(_) => {
                    return Err(fail(format!(
                        "the process did not exit within {limit:?}; stdout {:?}, stderr {:?}",
                        excerpt(&self.stdout, 400),
                        excerpt(&self.stderr, 400)
                    )))
                }
            }
        }
        tokio::time::timeout(END_LIMIT, self.next())
            .await
            .map_err(|_| fail("the stream did not end after its exit event"))??;
        Ok(self.exit.expect("set above"))
    }

    pub async fn write(&mut self, data: &[u8]) -> Result<(), ScenarioError> {
        tokio::time::timeout(END_LIMIT, self.stream.write_stdin(data))
            .await
            .map_err(|_| fail("write_stdin hung"))?
            .context("write_stdin")
    }
}

/// Whether `haystack` contains `needle`, ignoring the `\r` a terminal adds.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    let cleaned: Vec<u8> = haystack
        .iter()
        .copied()
        .filter(|byte| *byte != b'\r')
        .collect();
    needle.is_empty() || cleaned.windows(needle.len()).any(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::contains;

    #[test]
    fn contains_ignores_terminal_carriage_returns() {
        assert!(contains(b"a\r\nb\r\n", b"a\nb\n"));
        assert!(contains(b"anything", b""));
        assert!(!contains(b"a\r\n", b"b"));
    }
}
