//! One running VM and the hypervisor that runs it: QEMU (driven over QMP) or Firecracker
//! (driven over its REST API). [`Hypervisor`] holds the steps every lifecycle operation is
//! made of — launch, save to a state file, load one, pause, continue, reach the agent — so
//! templates, clones, checkpoints and the sandbox handle are written once for both.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use tokio::net::UnixStream;

use crate::client::{ClientError, GuestClient};
use crate::firecracker::{self, Firecracker};
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
    #[error(transparent)]
    Firecracker(#[from] firecracker::ApiError),
    #[error("the guest agent did not come up: {error}; last console lines:\n{console}")]
    Agent { error: ClientError, console: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A started VMM process and the directory it keeps its sockets in.
#[derive(Debug, Clone)]
pub struct Vm {
    pub dir: PathBuf,
    pub pid: u32,
}

/// A control session with a VM's VMM (its monitor).
pub enum Monitor {
    Qmp(Qmp),
    Firecracker(firecracker::Api),
}

/// What runs the VMs of a backend.
#[derive(Debug)]
pub enum Hypervisor {
    Qemu(Qemu),
    Firecracker(Firecracker),
}

impl Hypervisor {
    /// Starts the VMM of `machine`: booting it, or (with `incoming`) waiting for a state
    /// to load. On failure nothing of it is left running.
    pub async fn launch(&self, machine: &Machine) -> Result<Vm, VmError> {
        for stale in [
            QMP_SOCKET,
            AGENT_SOCKET,
            qemu::PID_FILE,
            firecracker::API_SOCKET,
            firecracker::VSOCK_SOCKET,
            firecracker::PID_FILE,
        ] {
            let _ = std::fs::remove_file(machine.dir.join(stale));
        }
        match self {
            Hypervisor::Qemu(qemu) => {
                let pid = qemu.launch(machine).await.map_err(VmError::Launch)?;
                Ok(Vm {
                    dir: machine.dir.clone(),
                    pid,
                })
            }
            Hypervisor::Firecracker(fc) => {
                let pid = fc.launch(&machine.dir).await.map_err(VmError::Launch)?;
                let vm = Vm {
                    dir: machine.dir.clone(),
                    pid,
                };
                if !machine.incoming {
                    let mut boot_args = qemu::kernel_args(machine);
                    boot_args.push(format!(
                        "cthulu.channel=vsock:{}",
                        firecracker::AGENT_VSOCK_PORT
                    ));
                    boot_args.push("pci=off".into());
                    let config = firecracker::machine_in_dir(
                        machine.memory_mib,
                        machine.vcpus,
                        boot_args.join(" "),
                    );
                    if let Err(error) = api(&vm).boot(&config).await {
                        vm.kill().await;
                        return Err(error.into());
                    }
                }
                Ok(vm)
            }
        }
    }

    /// Starts `machine` (made with `incoming`), loads the state `vmstate` (and, for
    /// Firecracker, the guest memory `memory`; QEMU maps memory through the machine's RAM
    /// backend or reads it from the state), runs it and waits for its agent: a clone of a
    /// template, or a restore of a checkpoint. On failure the VMM it started is killed.
    pub async fn resume(
        &self,
        machine: &Machine,
        vmstate: &Path,
        memory: &Path,
    ) -> Result<(Vm, Monitor, GuestClient), VmError> {
        let started = std::time::Instant::now();
        let vm = self.launch(machine).await?;
        let launched = started.elapsed();
        let running = async {
            let mut control = self.control(&vm).await?;
            self.load(&mut control, vmstate, memory).await?;
            let loaded = started.elapsed();
            let client = self.connect_agent(&vm, RESTORE_TIMEOUT).await?;
            tracing::debug!(?launched, ?loaded, agent = ?started.elapsed(), "resumed a VM");
            Ok::<_, VmError>((control, client))
        }
        .await;
        match running {
            Ok((control, client)) => Ok((vm, control, client)),
            Err(error) => {
                vm.kill().await;
                Err(error)
            }
        }
    }

    /// A control session with the VM's VMM.
    pub async fn control(&self, vm: &Vm) -> Result<Monitor, VmError> {
        Ok(match self {
            Hypervisor::Qemu(_) => Monitor::Qmp(Qmp::connect(&vm.dir.join(QMP_SOCKET)).await?),
            Hypervisor::Firecracker(_) => Monitor::Firecracker(api(vm)),
        })
    }

    /// Connects to the agent and waits for its hello.
    pub async fn connect_agent(&self, vm: &Vm, timeout: Duration) -> Result<GuestClient, VmError> {
        let attempt = async {
            let socket = match self {
                Hypervisor::Qemu(_) => UnixStream::connect(vm.dir.join(AGENT_SOCKET)).await,
                Hypervisor::Firecracker(_) => firecracker::connect_agent(&vm.dir, timeout).await,
            }
            .map_err(|error| ClientError::Disconnected(error.to_string()))?;
            GuestClient::connect(socket, timeout).await
        };
        attempt.await.map_err(|error| VmError::Agent {
            error,
            console: qemu::console_tail(&vm.dir, 15),
        })
    }

    /// Stops the CPUs and writes the device state to `vmstate`, and the guest memory: for
    /// QEMU into the state unless it lives in a shared file (`x-ignore-shared`), for
    /// Firecracker into `memory`. The VM stays paused.
    pub async fn save(
        &self,
        control: &mut Monitor,
        vmstate: &Path,
        memory: &Path,
    ) -> Result<(), VmError> {
        match control {
            Monitor::Qmp(qmp) => {
                ignore_shared_memory(qmp).await?;
                // The default bandwidth cap (about 128 MiB/s) would make a save take most
                // of a second.
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
                    Some(json!({"uri": format!("file:{}", vmstate.display())})),
                )
                .await?;
                qmp.wait_migration(MIGRATION_TIMEOUT).await?;
            }
            Monitor::Firecracker(api) => {
                api.call(&firecracker::pause_request()).await?;
                api.call(&firecracker::snapshot_create_request(vmstate, memory))
                    .await?;
            }
        }
        Ok(())
    }

    /// Loads a state into a VM launched with `incoming`, and runs it.
    async fn load(
        &self,
        control: &mut Monitor,
        vmstate: &Path,
        memory: &Path,
    ) -> Result<(), VmError> {
        match control {
            Monitor::Qmp(qmp) => {
                ignore_shared_memory(qmp).await?;
                qmp.execute(
                    "migrate-incoming",
                    Some(json!({"uri": format!("file:{}", vmstate.display())})),
                )
                .await?;
                // A failed load ends QEMU (and so this session) with the reason on its
                // stderr.
                qmp.wait_status("paused", MIGRATION_TIMEOUT).await?;
                qmp.execute("cont", None).await?;
            }
            Monitor::Firecracker(api) => api.restore(vmstate, memory).await?,
        }
        Ok(())
    }

    /// Pauses the VM's CPUs.
    pub async fn pause(&self, control: &mut Monitor) -> Result<(), VmError> {
        match control {
            Monitor::Qmp(qmp) => qmp.execute("stop", None).await.map(|_| ())?,
            Monitor::Firecracker(api) => {
                api.call(&firecracker::pause_request()).await.map(|_| ())?
            }
        }
        Ok(())
    }

    /// Runs the VM's CPUs again.
    pub async fn cont(&self, control: &mut Monitor) -> Result<(), VmError> {
        match control {
            Monitor::Qmp(qmp) => qmp.execute("cont", None).await.map(|_| ())?,
            Monitor::Firecracker(api) => {
                api.call(&firecracker::resume_request()).await.map(|_| ())?
            }
        }
        Ok(())
    }

    /// Ends a VMM that has served its purpose (a template once saved) cleanly, where it
    /// can; [`Vm::kill`] follows either way.
    pub async fn quit(&self, control: &mut Monitor) {
        if let Monitor::Qmp(qmp) = control {
            let _ = qmp.execute("quit", None).await;
        }
    }
}

/// Leaves guest RAM that lives in a shared file (a template's) out of the migration stream:
/// the file is the snapshot.
async fn ignore_shared_memory(qmp: &mut Qmp) -> Result<(), VmError> {
    qmp.execute(
        "migrate-set-capabilities",
        Some(json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]})),
    )
    .await?;
    Ok(())
}

fn api(vm: &Vm) -> firecracker::Api {
    firecracker::Api::new(vm.dir.join(firecracker::API_SOCKET))
}

impl Vm {
    pub fn is_running(&self) -> bool {
        qemu::is_running(self.pid, &self.dir)
    }

    /// Kills the VMM and waits for it to be gone.
    pub async fn kill(&self) {
        qemu::kill(self.pid, &self.dir).await;
    }
}
