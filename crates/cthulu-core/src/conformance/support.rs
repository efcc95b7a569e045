//! Small pieces scenarios are written with: [`ScenarioError`] and [`Context`], bounded
//! waits, byte helpers, a [`Canary`] directory outside every sandbox, a deterministic
//! large-file reader and a plain HTTP GET.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{self, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

use crate::{ExecOutput, SandboxError};
use cthulu_types::ErrorCode;

/// How a scenario ends when it does not pass.
#[derive(Debug)]
pub enum ScenarioError {
    /// The backend did not behave as the scenario requires.
    Failed(String),
    /// The scenario could not run here; the runner prints
    /// `SKIP <backend>: <scenario> <reason>`.
    Skipped(String),
}

/// What a scenario returns. Checks may also panic (`assert!`); the runner catches both.
pub type Outcome = Result<(), ScenarioError>;

impl fmt::Display for ScenarioError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScenarioError::Failed(message) => write!(formatter, "failed: {message}"),
            ScenarioError::Skipped(reason) => write!(formatter, "skipped: {reason}"),
        }
    }
}

impl From<String> for ScenarioError {
    fn from(message: String) -> Self {
        ScenarioError::Failed(message)
    }
}

impl From<&str> for ScenarioError {
    fn from(message: &str) -> Self {
        ScenarioError::Failed(message.to_owned())
    }
}

impl From<SandboxError> for ScenarioError {
    fn from(error: SandboxError) -> Self {
        ScenarioError::Failed(format!("unexpected error: {}", describe(&error)))
    }
}

/// A failure with this message.
pub fn fail(message: impl Into<String>) -> ScenarioError {
    ScenarioError::Failed(message.into())
}

/// `error` with its code and whole source chain, for failure messages.
pub fn describe(error: &SandboxError) -> String {
    let mut text = format!("{error} [code {}]", error.code());
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Names the step that failed.
pub trait Context<T> {
    fn context(self, what: impl fmt::Display) -> Result<T, ScenarioError>;
}

impl<T> Context<T> for Result<T, SandboxError> {
    fn context(self, what: impl fmt::Display) -> Result<T, ScenarioError> {
        self.map_err(|error| fail(format!("{what}: {}", describe(&error))))
    }
}

impl<T> Context<T> for io::Result<T> {
    fn context(self, what: impl fmt::Display) -> Result<T, ScenarioError> {
        self.map_err(|error| fail(format!("{what}: {error}")))
    }
}

impl<T> Context<T> for Result<T, String> {
    fn context(self, what: impl fmt::Display) -> Result<T, ScenarioError> {
        self.map_err(|error| fail(format!("{what}: {error}")))
    }
}

/// Runs `future`, turning a hang into a failure naming `what`. Limits are generous: they
/// exist to end a stuck test, not to measure speed.
pub async fn within<F: Future>(
    limit: Duration,
    what: impl fmt::Display,
    future: F,
) -> Result<F::Output, ScenarioError> {
    tokio::time::timeout(limit, future)
        .await
        .map_err(|_| fail(format!("{what} did not finish within {limit:?}")))
}

/// `result` must be an error with `code`; returns the error for further checks.
pub fn expect_code<T: fmt::Debug>(
    result: Result<T, SandboxError>,
    code: ErrorCode,
    what: impl fmt::Display,
) -> Result<SandboxError, ScenarioError> {
    match result {
        Err(error) if error.code() == code => Ok(error),
        Err(error) => Err(fail(format!(
            "{what}: expected a `{code}` error, got {}",
            describe(&error)
        ))),
        Ok(value) => Err(fail(format!(
            "{what}: expected a `{code}` error, but it succeeded with {value:?}"
        ))),
    }
}

/// `result` must be an error with one of `codes`.
pub fn expect_one_of<T: fmt::Debug>(
    result: Result<T, SandboxError>,
    codes: &[ErrorCode],
    what: impl fmt::Display,
) -> Result<SandboxError, ScenarioError> {
    match result {
        Err(error) if codes.contains(&error.code()) => Ok(error),
        Err(error) => Err(fail(format!(
            "{what}: expected one of {codes:?}, got {}",
            describe(&error)
        ))),
        Ok(value) => Err(fail(format!(
            "{what}: expected one of {codes:?}, but it succeeded with {value:?}"
        ))),
    }
}

/// Bytes as text for comparisons and messages (lossy).
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// At most `limit` characters of `bytes` as text, for failure messages.
pub fn excerpt(bytes: &[u8], limit: usize) -> String {
    let text = text(bytes);
    if text.chars().count() <= limit {
        text
    } else {
        let head: String = text.chars().take(limit).collect();
        format!("{head}... ({} bytes in all)", bytes.len())
    }
}

/// The whole result of an exec, for failure messages.
pub fn show(output: &ExecOutput) -> String {
    format!(
        "exit {:?}, stdout {:?}, stderr {:?}",
        output.exit,
        excerpt(&output.stdout, 400),
        excerpt(&output.stderr, 400)
    )
}

/// The exec must have exited with code 0.
pub fn require_success(output: &ExecOutput, what: impl fmt::Display) -> Result<(), ScenarioError> {
    if output.exit.exit_code == Some(0) && !output.exit.timed_out {
        Ok(())
    } else {
        Err(fail(format!("{what} did not succeed: {}", show(output))))
    }
}

/// Every byte value, in order.
pub fn all_byte_values() -> Vec<u8> {
    (0..=255).collect()
}

/// A port nobody on this machine listens on right now (the kernel picked it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("binding 127.0.0.1:0 to find a free port")
}

/// A directory outside every sandbox, with known contents that escape scenarios aim at
/// and then check untouched.
pub struct Canary {
    dir: tempfile::TempDir,
}

/// What a [`Canary`] holds: relative path and contents (`None` for a directory).
const CANARY_CONTENTS: [(&str, Option<&str>); 3] = [
    (
        "victim.txt",
        Some("canary: never to be read or written by a sandbox\n"),
    ),
    ("sub", None),
    ("sub/inner.txt", Some("canary inner file\n")),
];

impl Canary {
    pub fn new() -> Result<Self, ScenarioError> {
        let dir = tempfile::Builder::new()
            .prefix("cthulu-canary-")
            .tempdir()
            .context("creating the canary directory")?;
        for (relative, contents) in CANARY_CONTENTS {
            let path = dir.path().join(relative);
            match contents {
                Some(contents) => std::fs::write(&path, contents),
                None => std::fs::create_dir(&path),
            }
            .context(format!("creating {}", path.display()))?;
        }
        Ok(Canary { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The canary's path as a string for scripts (temp paths are plain ASCII).
    pub fn display(&self) -> String {
        self.dir.path().display().to_string()
    }

    /// The secret a read through an escape would return.
    pub fn secret() -> &'static str {
        CANARY_CONTENTS[0].1.unwrap_or_default()
    }

    /// Fails when anything in the canary was added, removed or changed.
    pub fn check_untouched(&self) -> Result<(), ScenarioError> {
        let mut found = Vec::new();
        list_tree(self.dir.path(), Path::new(""), &mut found)
            .context("listing the canary directory")?;
        found.sort();
        let mut expected: Vec<PathBuf> = CANARY_CONTENTS
            .iter()
            .map(|(relative, _)| PathBuf::from(relative))
            .collect();
        expected.sort();
        if found != expected {
            return Err(fail(format!(
                "the canary directory {} outside the sandbox changed: expected {expected:?}, found {found:?}",
                self.display()
            )));
        }
        for (relative, contents) in CANARY_CONTENTS {
            let path = self.dir.path().join(relative);
            let metadata =
                std::fs::symlink_metadata(&path).context(format!("{}", path.display()))?;
            match contents {
                Some(contents) => {
                    let actual = std::fs::read(&path).context(format!("{}", path.display()))?;
                    if !metadata.is_file() || actual != contents.as_bytes() {
                        return Err(fail(format!(
                            "the canary file {} outside the sandbox was modified",
                            path.display()
                        )));
                    }
                }
                None if !metadata.is_dir() => {
                    return Err(fail(format!(
                        "the canary directory {} outside the sandbox was replaced",
                        path.display()
                    )));
                }
                None => {}
            }
        }
        Ok(())
    }
}

fn list_tree(root: &Path, relative: &Path, found: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in std::fs::read_dir(root.join(relative))? {
        let entry = entry?;
        let path = relative.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            list_tree(root, &path, found)?;
        }
        found.push(path);
    }
    Ok(())
}

/// The byte at `offset` of the deterministic test pattern (splitmix64 of the offset), so
/// any stretch of it can be produced again for comparison without keeping it in memory.
pub fn pattern_byte(offset: u64) -> u8 {
    let mut z = offset.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as u8
}

/// Streams `len` bytes of [`pattern_byte`].
pub struct PatternReader {
    offset: u64,
    len: u64,
}

impl PatternReader {
    pub fn new(len: u64) -> Self {
        PatternReader { offset: 0, len }
    }
}

impl AsyncRead for PatternReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _context: &mut task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let left = self.len - self.offset;
        let count = left.min(buf.remaining() as u64).min(256 * 1024);
        let start = self.offset;
        let chunk: Vec<u8> = (start..start + count).map(pattern_byte).collect();
        buf.put_slice(&chunk);
        self.offset += count;
        Poll::Ready(Ok(()))
    }
}

/// Reads `reader` to its end, comparing with [`pattern_byte`]; returns the length read
/// or where the first difference is.
pub async fn compare_with_pattern(
    mut reader: impl AsyncRead + Unpin,
) -> Result<u64, ScenarioError> {
    let mut buffer = vec![0u8; 256 * 1024];
    let mut offset = 0u64;
    loop {
        let count = reader
            .read(&mut buffer)
            .await
            .context(format!("reading the download at offset {offset}"))?;
        if count == 0 {
            return Ok(offset);
        }
        for (index, byte) in buffer[..count].iter().enumerate() {
            let at = offset + index as u64;
            if *byte != pattern_byte(at) {
                return Err(fail(format!(
                    "the download differs from the upload at offset {at}: {byte:#04x} instead of {:#04x}",
                    pattern_byte(at)
                )));
            }
        }
        offset += count as u64;
    }
}

/// A reader over `bytes`, as the file API takes it.
pub fn reader(bytes: impl Into<Vec<u8>>) -> crate::ByteReader {
    Box::new(io::Cursor::new(bytes.into()))
}

/// What a plain HTTP/1.0 GET of `path` at `url` (`http://host:port/...`) returned: the
/// whole response, status line included. `Err` when no connection could be made or it
/// broke. Bounded by `limit`.
pub async fn http_get(url: &str, path: &str, limit: Duration) -> Result<String, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url} is not an http:// URL"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let address = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(&address)
            .await
            .map_err(|error| format!("connecting to {address}: {error}"))?;
        let request =
            format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|error| format!("sending to {address}: {error}"))?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|error| format!("reading from {address}: {error}"))?;
        Ok(text(&response))
    };
    tokio::time::timeout(limit, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("GET {url} hung for {limit:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pattern_reader_and_comparison_agree() {
        let mut produced = Vec::new();
        PatternReader::new(1_000_003)
            .read_to_end(&mut produced)
            .await
            .unwrap();
        assert_eq!(produced.len(), 1_000_003);
        let read = compare_with_pattern(io::Cursor::new(produced.clone()))
            .await
            .unwrap();
        assert_eq!(read, 1_000_003);
        produced[777] ^= 1;
        let error = compare_with_pattern(io::Cursor::new(produced))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("offset 777"), "{error}");
    }

    #[test]
    fn canary_notices_changes() {
        let canary = Canary::new().unwrap();
        canary.check_untouched().unwrap();
        std::fs::write(canary.path().join("sub/extra"), "x").unwrap();
        assert!(canary.check_untouched().is_err());
        std::fs::remove_file(canary.path().join("sub/extra")).unwrap();
        std::fs::write(canary.path().join("victim.txt"), "changed").unwrap();
        assert!(canary.check_untouched().is_err());
    }

    #[test]
    fn expected_codes() {
        let refused: Result<(), SandboxError> = Err(SandboxError::PathOutsideSandbox {
            path: "../x".into(),
        });
        assert!(expect_code(refused, ErrorCode::PathOutsideSandbox, "put").is_ok());
        let wrong: Result<(), SandboxError> = Err(SandboxError::FileNotFound { path: "x".into() });
        let message = expect_code(wrong, ErrorCode::PathOutsideSandbox, "put")
            .unwrap_err()
            .to_string();
        assert!(message.contains("file_not_found"), "{message}");
        assert!(expect_code(Ok(()), ErrorCode::PathOutsideSandbox, "put").is_err());
    }
}
