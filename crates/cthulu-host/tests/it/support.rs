//! A host provider on a temporary root, and helpers to drive streams.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cthulu_core::{
    ExecEvent, ExecOutput, ExecSpec, ExecStream, ExitInfo, SandboxHandle, SandboxProvider,
    SandboxSpec,
};
use cthulu_host::{HostConfig, HostProvider, ShimCommand};
use cthulu_types::SandboxId;

/// Generous: a loaded 2-core machine runs many tests at once.
pub const WAIT: Duration = Duration::from_secs(30);

pub struct TestHost {
    pub dir: tempfile::TempDir,
    pub provider: HostProvider,
}

impl TestHost {
    pub fn new() -> TestHost {
        let dir = tempfile::Builder::new()
            .prefix("cthulu-host-it-")
            .tempdir()
            .unwrap();
        let provider = provider_on(&dir.path().join("sandboxes"));
        TestHost { dir, provider }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("sandboxes")
    }

    /// Replaces the provider by a new one on the same root, as a restarted server would
    /// (the caller drops its handles first).
    pub fn restart(&mut self) {
        self.provider = provider_on(&self.root());
    }

    pub async fn sandbox(&self) -> Arc<dyn SandboxHandle> {
        self.provider
            .provision(&SandboxId::generate(), &SandboxSpec::default())
            .await
            .unwrap()
    }

    pub fn workspace(&self, sandbox: &dyn SandboxHandle) -> PathBuf {
        self.root().join(sandbox.id().as_str()).join("workspace")
    }
}

pub fn provider_on(root: &Path) -> HostProvider {
    HostProvider::new(HostConfig {
        root: root.to_owned(),
        shim: ShimCommand {
            program: env!("CARGO_BIN_EXE_cthulu-shim").into(),
            args: Vec::new(),
        },
    })
    .unwrap()
}

pub async fn run(sandbox: &dyn SandboxHandle, spec: ExecSpec) -> ExecOutput {
    tokio::time::timeout(WAIT * 2, sandbox.exec(spec))
        .await
        .expect("exec finishes")
        .unwrap()
}

pub async fn shell(sandbox: &dyn SandboxHandle, script: &str) -> ExecOutput {
    run(sandbox, ExecSpec::shell(script)).await
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// What a stream has produced so far.
#[derive(Default)]
pub struct Collected {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit: Option<ExitInfo>,
}

/// Reads events until `done` says so (or the stream ends); fails after [`WAIT`].
pub async fn collect_until(
    stream: &mut Box<dyn ExecStream>,
    collected: &mut Collected,
    done: impl Fn(&Collected) -> bool,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done(collected) {
        let event = tokio::time::timeout_at(deadline, stream.next_event())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "timed out; stdout so far {:?}, stderr {:?}",
                    text(&collected.stdout),
                    text(&collected.stderr)
                )
            });
        match event {
            Some(ExecEvent::Stdout(data)) => collected.stdout.extend_from_slice(&data),
            Some(ExecEvent::Stderr(data)) => collected.stderr.extend_from_slice(&data),
            Some(ExecEvent::Exit(exit)) => {
                assert!(collected.exit.is_none(), "a second exit event");
                collected.exit = Some(exit);
            }
            None => break,
        }
    }
}

/// Reads the whole stream to its end.
pub async fn collect_all(stream: &mut Box<dyn ExecStream>) -> Collected {
    let mut collected = Collected::default();
    collect_until(stream, &mut collected, |_| false).await;
    collected
}

/// Waits until `condition` holds, polling; panics after [`WAIT`].
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether a process with this pid is alive (zombies count as dead).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat[stat.rfind(')').unwrap() + 2..].chars().next().unwrap();
            state != 'Z' && state != 'X'
        }
        Err(_) => false,
    }
}
