//! One running VM: its QEMU process, its control socket and its agent connection, and
//! the steps every lifecycle operation is made of — boot, save to a state file, restore
//! from one, kill.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use tokio::net::UnixStream;

use crate::client::{ClientError, GuestClient};
use crate::qemu::{self, Machine, Qemu, AGENT_SOCKET, QMP_SOCKET};
use crate::qmp::{Qmp, QmpError};

/// How long a booting guest may take to say hello (TCG boots in 2–3.5 s here).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a restored guest may take to say hello.
pub const RESTORE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long saving or loading a state file may take.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a VM step failed; each names what to look at.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("{0}")]
    Launch(String),
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error("the guest agent did not come up: {error}; last console lines:\n{console}")]
    Agent { error: ClientError, console: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A started QEMU and the directory it keeps its sockets in.
#[derive(Debug, Clone)]
pub struct Vm {
    pub dir: PathBuf,
    pub pid: u32,
}

impl Vm {
    /// Starts `machine`; on failure nothing of it is left running.
    pub async fn launch(qemu: &Qemu, machine: &Machine) -> Result<Vm, VmError> {
        for stale in [QMP_SOCKET, AGENT_SOCKET, qemu::PID_FILE] {
            let _ = std::fs::remove_file(machine.dir.join(stale));
        }
        let pid = qemu.launch(machine).await.map_err(VmError::Launch)?;
        Ok(Vm {
            dir: machine.dir.clone(),
            pid,
        })
    }

    /// Starts `machine` (made with `incoming`), loads `vmstate` into it, runs it and waits
    /// for its agent: a clone of a template, or a restore of a checkpoint. On failure the
    /// QEMU it started is killed.
    pub async fn resume(
        qemu: &Qemu,
        machine: &Machine,
        vmstate: &Path,
    ) -> Result<(Vm, Qmp, GuestClient), VmError> {
        let started = std::time::Instant::now();
        let vm = Vm::launch(qemu, machine).await?;
        let launched = started.elapsed();
        let running = async {
            let mut qmp = vm.qmp().await?;
            vm.load(&mut qmp, vmstate).await?;
            let loaded = started.elapsed();
            let client = vm.connect_agent(RESTORE_TIMEOUT).await?;
            tracing::debug!(?launched, ?loaded, agent = ?started.elapsed(), "resumed a VM");
            Ok::<_, VmError>((qmp, client))
        }
        .await;
        match running {
            Ok((qmp, client)) => Ok((vm, qmp, client)),
            Err(error) => {
                vm.kill().await;
                Err(error)
            }
        }
    }

    pub async fn qmp(&self) -> Result<Qmp, VmError> {
        Ok(Qmp::connect(&self.dir.join(QMP_SOCKET)).await?)
    }

    /// Connects to the agent and waits for its hello.
    pub async fn connect_agent(&self, timeout: Duration) -> Result<GuestClient, VmError> {
        let attempt = async {
            let socket = UnixStream::connect(self.dir.join(AGENT_SOCKET))
                .await
                .map_err(|error| ClientError::Disconnected(error.to_string()))?;
            GuestClient::connect(socket, timeout).await
        };
        attempt.await.map_err(|error| VmError::Agent {
            error,
            console: qemu::console_tail(&self.dir, 15),
        })
    }

    /// Stops the CPUs and writes the device state (and the RAM, unless it is a shared
    /// file) to `path`. The VM stays paused.
    pub async fn save(&self, qmp: &mut Qmp, path: &Path) -> Result<(), VmError> {
        qmp.execute(
            "migrate-set-capabilities",
            Some(json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]})),
        )
        .await?;
        // The default bandwidth cap (about 128 MiB/s) would make a save take most of a second.
        qmp.execute(
            "migrate-set-parameters",
            Some(json!({"max-bandwidth": 107_374_182_400u64})),
        )
        .await?;
        if qmp.status().await? == "running" {
            qmp.execute("stop", None).await?;
        }
        qmp.execute(
            "migrate",
            Some(json!({"uri": format!("file:{}", path.display())})),
        )
        .await?;
        qmp.wait_migration(MIGRATION_TIMEOUT).await?;
        Ok(())
    }

    /// Loads a state file into a VM started with `incoming`, and runs it.
    pub async fn load(&self, qmp: &mut Qmp, path: &Path) -> Result<(), VmError> {
        qmp.execute(
            "migrate-set-capabilities",
            Some(json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]})),
        )
        .await?;
        qmp.execute(
            "migrate-incoming",
            Some(json!({"uri": format!("file:{}", path.display())})),
        )
        .await?;
        // A failed load ends QEMU (and so this session) with the reason on its stderr.
        qmp.wait_status("paused", MIGRATION_TIMEOUT).await?;
        qmp.execute("cont", None).await?;
        Ok(())
    }

    pub fn is_running(&self) -> bool {
        qemu::is_running(self.pid, &self.dir)
    }

    /// Kills QEMU and waits for it to be gone.
    pub async fn kill(&self) {
        qemu::kill(self.pid, &self.dir).await;
    }
}
