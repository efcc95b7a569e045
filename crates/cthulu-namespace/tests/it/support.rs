//! A provider on a temporary root, with the init binary of this crate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cthulu_core::{ExecOutput, ExecSpec, SandboxHandle, SandboxProvider, SandboxSpec};
use cthulu_host::ShimCommand;
use cthulu_namespace::{InitCommand, NamespaceConfig, NamespaceProvider};
use cthulu_types::SandboxId;

pub struct Fixture {
    pub state: tempfile::TempDir,
    pub provider: Arc<NamespaceProvider>,
}

impl Fixture {
    /// `None` (after printing the SKIP line) when the backend cannot run here.
    pub fn new() -> Option<Fixture> {
        let state = tempfile::Builder::new()
            .prefix("cthulu-namespace-it-")
            .tempdir()
            .expect("creating the state directory");
        let provider = Fixture::provider_on(state.path().join("sandboxes"));
        let info = provider.info();
        if !info.available {
            eprintln!(
                "SKIP namespace: {}",
                info.unavailable_reason.unwrap_or_default()
            );
            return None;
        }
        Some(Fixture {
            state,
            provider: Arc::new(provider),
        })
    }

    pub fn provider_on(root: PathBuf) -> NamespaceProvider {
        NamespaceProvider::new(NamespaceConfig {
            root,
            init: InitCommand {
                program: env!("CARGO_BIN_EXE_cthulu-ns-init").into(),
                args: Vec::new(),
            },
            shim: ShimCommand {
                program: env!("CARGO_BIN_EXE_cthulu-ns-shim").into(),
                args: Vec::new(),
            },
        })
        .expect("making the provider")
    }

    /// A provider on the same root, as a restarted server makes it.
    pub fn restarted(&self) -> NamespaceProvider {
        Fixture::provider_on(self.provider.root().to_owned())
    }

    /// The sandbox as a restarted server finds it: attached by a new provider on the
    /// same root.
    pub async fn reattached(&self, sandbox_id: &SandboxId) -> Arc<dyn SandboxHandle> {
        self.restarted()
            .attach(sandbox_id, &SandboxSpec::default())
            .await
            .expect("attaching after a restart")
    }

    pub async fn sandbox(&self) -> (SandboxId, Arc<dyn SandboxHandle>) {
        let sandbox_id = SandboxId::generate();
        let handle = self
            .provider
            .provision(&sandbox_id, &SandboxSpec::default())
            .await
            .expect("provisioning");
        (sandbox_id, handle)
    }

    /// A sandbox made from `spec`.
    pub async fn sandbox_with(&self, spec: &SandboxSpec) -> (SandboxId, Arc<dyn SandboxHandle>) {
        let sandbox_id = SandboxId::generate();
        let handle = self
            .provider
            .provision(&sandbox_id, spec)
            .await
            .unwrap_or_else(|error| panic!("provisioning {spec:?}: {error}"));
        (sandbox_id, handle)
    }

    pub fn dir(&self, sandbox_id: &SandboxId) -> PathBuf {
        self.provider.root().join(sandbox_id.as_str())
    }

    /// The host pid of the sandbox's init, from its state file.
    pub fn init_pid(&self, sandbox_id: &SandboxId) -> i32 {
        let state = std::fs::read(self.dir(sandbox_id).join("state.json")).expect("state.json");
        let state: serde_json::Value = serde_json::from_slice(&state).expect("state.json");
        state["init"]["pid"].as_i64().expect("init pid") as i32
    }
}

/// Runs `script` under `/bin/sh -c`.
pub async fn sh(handle: &Arc<dyn SandboxHandle>, script: &str) -> ExecOutput {
    handle
        .exec(ExecSpec::shell(script))
        .await
        .unwrap_or_else(|error| panic!("exec of {script:?} failed: {error}"))
}

/// stdout of `script`, which must succeed.
pub async fn sh_ok(handle: &Arc<dyn SandboxHandle>, script: &str) -> String {
    let output = sh(handle, script).await;
    assert_eq!(
        output.exit.exit_code,
        Some(0),
        "{script:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

/// Whether `pid` is a live (not zombie) process on the host.
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let rest = &stat[stat.rfind(')')? + 1..];
            rest.split_whitespace().next().map(|state| state != "Z")
        })
        .unwrap_or(false)
}

/// Files of `dir`, recursively, with their contents (symlinks by target).
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).unwrap() {
            let path = entry.unwrap().path();
            let metadata = path.symlink_metadata().unwrap();
            if metadata.is_dir() {
                pending.push(path.clone());
                found.push((path, Vec::new()));
            } else if metadata.is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                found.push((path, target.into_os_string().into_encoded_bytes()));
            } else {
                let contents = std::fs::read(&path).unwrap();
                found.push((path, contents));
            }
        }
    }
    found.sort();
    found
}
