//! [`VmSandbox`]: one microVM sandbox and its [`SandboxHandle`].

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use cthulu_core::{
    ByteReader, ExecOutput, ExecSpec, ExecStream, FileDownload, PutOptions, SandboxError,
    SandboxHandle,
};
use cthulu_guest_protocol::message::{Control, GuestConfig, GuestLimits, ProcessEntry, Request};
use cthulu_host::ports::{self, update_ports, Connector, Duplex, Forwarders, PortSandbox};
use cthulu_types::sandbox::Operation;
use cthulu_types::{
    BackendKind, Capabilities, Checkpoint, CheckpointRequest, DirEntry, ExposedPort, ProcessInfo,
    ProcessState, SandboxId, SandboxStatus, Signal,
};

use crate::client::GuestClient;
use crate::guest::{self, refusal, GuestExec};
use crate::qemu::{Machine, Ram, DISK_FILE};
use crate::state::{now_ms, VmState};
use crate::template::{INITRAMFS_FILE, RAM_FILE as TEMPLATE_RAM};
use crate::vm::{Hypervisor, Monitor, Vm, VmError, RESTORE_TIMEOUT};

const CHECKPOINTS_DIR: &str = "checkpoints";
const VMSTATE_FILE: &str = "vmstate";
const WORKSPACE_TAR: &str = "workspace.tar";

pub fn capabilities() -> Capabilities {
    Capabilities {
        isolation: true,
        exec_stream: true,
        pty: true,
        detached_processes: true,
        files: true,
        ports: true,
        checkpoint: cthulu_types::CheckpointSupport::FilesystemAndMemory,
        stop_resume: true,
        network_policy: true,
    }
}

/// One microVM sandbox: `<root>/sandboxes/<id>/` holds its state, sockets and checkpoints.
pub struct VmSandbox {
    pub(crate) sandbox_id: SandboxId,
    pub(crate) dir: PathBuf,
    hypervisor: Arc<Hypervisor>,
    /// The backend this sandbox belongs to (qemu or firecracker).
    kind: BackendKind,
    /// The templates' directory (a memory restore maps the template's RAM file again).
    templates_root: PathBuf,
    state: Mutex<VmState>,
    /// The agent connection, made again when it broke.
    agent: tokio::sync::Mutex<Option<GuestClient>>,
    /// The control session with the VMM (QEMU serves one QMP client at a time).
    control: tokio::sync::Mutex<Option<Monitor>>,
    /// Serialises stop, resume, checkpoint, restore and destroy.
    lifecycle: tokio::sync::Mutex<()>,
    forwarders: Mutex<Forwarders>,
    next_process: AtomicU64,
    /// Dials guest ports (set once the sandbox is in its `Arc`).
    connector: std::sync::OnceLock<Arc<dyn Connector>>,
}

impl VmSandbox {
    pub(crate) fn new(
        dir: PathBuf,
        state: VmState,
        hypervisor: Arc<Hypervisor>,
        kind: BackendKind,
        templates_root: PathBuf,
        agent: Option<GuestClient>,
    ) -> VmSandbox {
        VmSandbox {
            sandbox_id: state.sandbox_id.clone(),
            dir,
            hypervisor,
            kind,
            templates_root,
            next_process: AtomicU64::new(state.commands.len() as u64 + 1),
            state: Mutex::new(state),
            agent: tokio::sync::Mutex::new(agent),
            control: tokio::sync::Mutex::new(None),
            lifecycle: tokio::sync::Mutex::new(()),
            forwarders: Mutex::new(Forwarders::new()),
            connector: std::sync::OnceLock::new(),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, VmState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn check(&self, operation: Operation) -> Result<(), SandboxError> {
        Ok(self.lock().status.check(operation)?)
    }

    fn vm(&self) -> Vm {
        let state = self.lock();
        Vm {
            dir: state.vm_dir.clone().unwrap_or_else(|| self.dir.clone()),
            pid: state.pid,
        }
    }

    /// The pid of the sandbox's QEMU.
    pub fn qemu_pid(&self) -> u32 {
        self.lock().pid
    }

    fn save_state(&self, state: &VmState) -> Result<(), SandboxError> {
        state
            .save(&self.dir)
            .map_err(|error| SandboxError::io("write", self.dir.join("state.json"), error))
    }

    fn set_status(&self, status: SandboxStatus) -> Result<(), SandboxError> {
        let mut state = self.lock();
        state.status = status;
        let snapshot = state.clone();
        drop(state);
        self.save_state(&snapshot)
    }

    /// The agent connection, connecting again when there is none or it broke. A VM whose
    /// QEMU died is lost.
    pub(crate) async fn client(&self) -> Result<GuestClient, SandboxError> {
        let mut agent = self.agent.lock().await;
        if let Some(client) = agent.as_ref().filter(|client| !client.is_closed()) {
            return Ok(client.clone());
        }
        let vm = self.vm();
        if !vm.is_running() {
            let mut state = self.lock();
            if state.status == SandboxStatus::Running {
                state.status = SandboxStatus::Lost;
                let snapshot = state.clone();
                drop(state);
                let _ = self.save_state(&snapshot);
            }
            return Err(SandboxError::system(
                "reach the VM",
                std::io::Error::other(
                    "its VM process (QEMU or Firecracker) is gone: the sandbox is lost",
                ),
            ));
        }
        let client = self
            .hypervisor
            .connect_agent(&vm, RESTORE_TIMEOUT)
            .await
            .map_err(vm_failure("connect to the guest agent"))?;
        *agent = Some(client.clone());
        Ok(client)
    }

    /// The VMM's control session in `control`, connected first when there is none.
    async fn monitor<'a>(
        &self,
        control: &'a mut Option<Monitor>,
    ) -> Result<&'a mut Monitor, SandboxError> {
        if control.is_none() {
            let session = self
                .hypervisor
                .control(&self.vm())
                .await
                .map_err(vm_failure("reach the VM's monitor"))?;
            *control = Some(session);
        }
        Ok(control.as_mut().expect("connected above"))
    }

    /// Pauses (`run == false`) or continues the VM, connecting the control session
    /// (again) when needed.
    async fn set_running(&self, run: bool) -> Result<(), SandboxError> {
        let mut control = self.control.lock().await;
        for attempt in 0..2 {
            let session = self.monitor(&mut control).await?;
            let result = if run {
                self.hypervisor.cont(session).await
            } else {
                self.hypervisor.pause(session).await
            };
            match result {
                Ok(()) => return Ok(()),
                Err(error) if attempt == 0 => {
                    tracing::debug!(%error, "the control session broke; connecting again");
                    *control = None;
                }
                Err(error) => return Err(vm_failure("control the VM")(error)),
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    fn process_id(&self) -> String {
        let counter = self.next_process.fetch_add(1, Ordering::Relaxed);
        format!("p{counter}-{}", crate::random_hex(4))
    }

    fn remember_command(&self, process_id: &str, spec: &ExecSpec) {
        let mut state = self.lock();
        state
            .commands
            .insert(process_id.to_string(), spec.command.display());
        // Bounded like the agent's own list.
        while state.commands.len() > 256 {
            let oldest = state.commands.keys().next().cloned();
            if let Some(oldest) = oldest {
                state.commands.remove(&oldest);
            }
        }
        let snapshot = state.clone();
        drop(state);
        let _ = self.save_state(&snapshot);
    }

    /// Identity, clock and environment of the guest: after every boot and restore. The
    /// identity (hostname, machine id) and the limits are set on a new sandbox only; a
    /// restore brings back those the checkpoint had.
    pub(crate) async fn configure(
        client: &GuestClient,
        sandbox_id: &SandboxId,
        env: &std::collections::BTreeMap<String, String>,
        identity: bool,
        limits: Option<GuestLimits>,
    ) -> Result<(), SandboxError> {
        let config = GuestConfig {
            hostname: identity.then(|| sandbox_id.to_string()),
            clock_unix_ms: Some(now_ms()),
            entropy_hex: Some(crate::random_hex(64)),
            machine_id: identity.then(|| crate::random_hex(16)),
            workspace: Some(guest::WORKSPACE.into()),
            env: Some(env.clone()),
            limits,
        };
        client
            .call(Request::Configure(config))
            .await
            .map(|_| ())
            .map_err(|error| refusal(error, "configure"))
    }

    fn checkpoint_dir(&self, checkpoint_id: &str) -> PathBuf {
        self.dir.join(CHECKPOINTS_DIR).join(checkpoint_id)
    }

    fn find_checkpoint(&self, checkpoint: &str) -> Result<Checkpoint, SandboxError> {
        self.lock()
            .checkpoints
            .iter()
            .find(|found| found.id == checkpoint || found.name.as_deref() == Some(checkpoint))
            .cloned()
            .ok_or_else(|| SandboxError::CheckpointNotFound {
                checkpoint: checkpoint.to_string(),
            })
    }

    /// Replaces the VM by a new QEMU loading the memory checkpoint in `checkpoint_dir`, its
    /// RAM mapped from the template, its root disk (if any) the one saved with it.
    async fn restore_memory(&self, checkpoint_dir: PathBuf) -> Result<(), SandboxError> {
        let old = self.vm();
        *self.agent.lock().await = None;
        *self.control.lock().await = None;
        old.kill().await;
        let state = self.lock().clone();
        if state.disk {
            let saved = checkpoint_dir.join(DISK_FILE);
            let disk = old.dir.join(DISK_FILE);
            fs_err::copy(&saved, &disk).map_err(|error| SandboxError::io("copy", &saved, error))?;
        }
        let template_dir = self.templates_root.join(&state.template);
        let machine = clone_machine(&old.dir, &template_dir, &state);
        let memory = checkpoint_memory(&checkpoint_dir, &template_dir);
        let resumed = self
            .hypervisor
            .resume(&machine, &checkpoint_dir.join(VMSTATE_FILE), &memory)
            .await;
        match resumed {
            Ok((vm, control, client)) => {
                self.lock().pid = vm.pid;
                Self::configure(&client, &self.sandbox_id, &state.env, false, None).await?;
                *self.control.lock().await = Some(control);
                *self.agent.lock().await = Some(client);
                self.set_status(SandboxStatus::Running)
            }
            Err(error) => {
                let _ = self.set_status(SandboxStatus::Lost);
                Err(vm_failure("restore the VM")(error))
            }
        }
    }

    pub(crate) async fn kill_vm(&self) {
        *self.agent.lock().await = None;
        *self.control.lock().await = None;
        self.vm().kill().await;
    }
}

/// A VM of `state`'s size whose RAM is the template in `template_dir`, waiting for a state
/// file to load.
pub(crate) fn clone_machine(
    dir: &std::path::Path,
    template_dir: &std::path::Path,
    state: &VmState,
) -> Machine {
    machine_of(
        dir,
        template_dir,
        state.memory_mib,
        state.vcpus,
        state.network,
        state.disk,
    )
}

/// A VM in `dir` whose RAM is the template in `template_dir`, waiting for a state file;
/// with `disk`, its root disk is `dir`'s overlay ([`prepare_disk`]).
pub(crate) fn machine_of(
    dir: &std::path::Path,
    template_dir: &std::path::Path,
    memory_mib: u32,
    vcpus: u32,
    network: bool,
    disk: bool,
) -> Machine {
    Machine {
        dir: dir.to_path_buf(),
        memory_mib,
        vcpus,
        network,
        kernel: crate::template::boot_kernel(template_dir),
        initramfs: template_dir.join(INITRAMFS_FILE),
        ram: Ram::Private(template_dir.join(TEMPLATE_RAM)),
        disk: disk.then(|| dir.join(DISK_FILE)),
        incoming: true,
    }
}

/// Gives the VM in `vm_dir` its root disk when its template has one: a copy of `from` (a
/// checkpoint's disk, itself an overlay over the template's) or a new empty overlay over
/// the template's disk. Returns whether the VM has a disk.
pub(crate) async fn prepare_disk(
    hypervisor: &Hypervisor,
    template_dir: &std::path::Path,
    vm_dir: &std::path::Path,
    from: Option<&std::path::Path>,
) -> Result<bool, VmError> {
    let template_disk = template_dir.join(DISK_FILE);
    if !template_disk.is_file() {
        return Ok(false);
    }
    let disk = vm_dir.join(DISK_FILE);
    match from {
        Some(from) => {
            fs_err::copy(from, &disk)?;
        }
        None => match hypervisor {
            Hypervisor::Qemu(qemu) => qemu
                .create_overlay(&template_disk, "qcow2", &disk)
                .await
                .map_err(VmError::Launch)?,
            Hypervisor::Firecracker(_) => {
                return Err(VmError::Launch(
                    "Firecracker VMs have no copy-on-write root disk".into(),
                ))
            }
        },
    }
    Ok(true)
}

/// The guest memory a memory checkpoint restores from: its own file where the VMM wrote
/// one (Firecracker), else the template's (QEMU maps that and reads the rest from the
/// state).
pub(crate) fn checkpoint_memory(
    checkpoint_dir: &std::path::Path,
    template_dir: &std::path::Path,
) -> PathBuf {
    let own = checkpoint_dir.join(crate::firecracker::MEMORY_FILE);
    if own.is_file() {
        own
    } else {
        template_dir.join(TEMPLATE_RAM)
    }
}

pub(crate) fn vm_failure(operation: &'static str) -> impl Fn(VmError) -> SandboxError {
    move |error| SandboxError::system(operation, std::io::Error::other(error.to_string()))
}

fn process_info(
    entry: ProcessEntry,
    commands: &std::collections::BTreeMap<String, String>,
) -> ProcessInfo {
    let (state, exit_code, signal) = match entry.exit {
        None => (ProcessState::Running, None, None),
        Some(exit) => (ProcessState::Exited, exit.code, exit.signal),
    };
    ProcessInfo {
        command: commands
            .get(&entry.process_id)
            .cloned()
            .unwrap_or(entry.command),
        id: entry.process_id,
        state,
        detached: entry.detached,
        tty: entry.tty,
        exit_code,
        signal,
        started_at_ms: entry.started_unix_ms,
    }
}

#[async_trait]
impl SandboxHandle for VmSandbox {
    fn id(&self) -> &SandboxId {
        &self.sandbox_id
    }

    fn kind(&self) -> BackendKind {
        self.kind
    }

    fn capabilities(&self) -> Capabilities {
        capabilities()
    }

    fn status(&self) -> SandboxStatus {
        self.lock().status
    }

    fn host_pid(&self) -> Option<u32> {
        Some(self.qemu_pid())
    }

    fn guest_address(&self) -> Option<std::net::IpAddr> {
        self.lock()
            .network
            .then_some(std::net::IpAddr::V4(crate::qemu::GUEST_ADDRESS))
    }

    async fn exec(&self, spec: ExecSpec) -> Result<ExecOutput, SandboxError> {
        self.check(Operation::Exec)?;
        if spec.detach || spec.tty.is_some() {
            return Err(SandboxError::invalid(
                "exec",
                "detached and terminal commands need a streaming exec",
            ));
        }
        let client = self.client().await?;
        let process_id = self.process_id();
        guest::exec(&client, spec, &process_id).await
    }

    async fn exec_stream(&self, spec: ExecSpec) -> Result<Box<dyn ExecStream>, SandboxError> {
        self.check(Operation::Exec)?;
        let client = self.client().await?;
        let process_id = self.process_id();
        let stream = GuestExec::start(&client, &spec, &process_id).await?;
        self.remember_command(&process_id, &spec);
        Ok(Box::new(stream))
    }

    async fn list_processes(&self) -> Result<Vec<ProcessInfo>, SandboxError> {
        self.check(Operation::Exec)?;
        let client = self.client().await?;
        let controls = client
            .call(Request::ProcessList)
            .await
            .map_err(|error| refusal(error, "processes"))?;
        let commands = self.lock().commands.clone();
        let mut processes: Vec<ProcessInfo> = controls
            .into_iter()
            .filter_map(|control| match control {
                Control::Processes { processes } => Some(processes),
                _ => None,
            })
            .flatten()
            .map(|entry| process_info(entry, &commands))
            .collect();
        processes.sort_by_key(|process| process.started_at_ms);
        Ok(processes)
    }

    async fn attach_process(&self, process_id: &str) -> Result<Box<dyn ExecStream>, SandboxError> {
        self.check(Operation::Exec)?;
        let client = self.client().await?;
        Ok(Box::new(GuestExec::attach(&client, process_id).await?))
    }

    async fn signal_process(&self, process_id: &str, signal: Signal) -> Result<(), SandboxError> {
        self.check(Operation::Exec)?;
        let client = self.client().await?;
        client
            .call(Request::SignalProcess {
                process_id: process_id.to_string(),
                signal: guest::wire_signal(signal),
            })
            .await
            .map(|_| ())
            .map_err(|error| match error.code() {
                Some(cthulu_guest_protocol::message::ErrorCode::NotFound) => {
                    SandboxError::ProcessNotFound {
                        process_id: process_id.to_string(),
                    }
                }
                _ => refusal(error, process_id),
            })
    }

    async fn put_file(
        &self,
        path: &str,
        options: PutOptions,
        contents: ByteReader,
    ) -> Result<u64, SandboxError> {
        self.check(Operation::Files)?;
        let relative = cthulu_core::workspace_relative(path)?;
        let client = self.client().await?;
        guest::put_file(
            &client,
            &relative,
            options.mode.unwrap_or(0o644),
            options.create_parents,
            contents,
        )
        .await
    }

    async fn get_file(&self, path: &str) -> Result<FileDownload, SandboxError> {
        self.check(Operation::Files)?;
        let relative = cthulu_core::workspace_relative(path)?;
        let client = self.client().await?;
        let (size, mode, contents) = guest::get_file(&client, &relative).await?;
        Ok(FileDownload {
            size,
            mode,
            contents,
        })
    }

    async fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>, SandboxError> {
        self.check(Operation::Files)?;
        let relative = cthulu_core::workspace_relative(path)?;
        let client = self.client().await?;
        guest::read_dir(&client, &relative).await
    }

    async fn remove(&self, path: &str, recursive: bool) -> Result<(), SandboxError> {
        self.check(Operation::Files)?;
        let relative = cthulu_core::workspace_relative(path)?;
        let (path, shown) = guest::wire_path(&relative);
        let client = self.client().await?;
        client
            .call(Request::Remove { path, recursive })
            .await
            .map(|_| ())
            .map_err(|error| refusal(error, &shown))
    }

    async fn expose_port(&self, port: u16) -> Result<ExposedPort, SandboxError> {
        ports::expose(self, port).await
    }

    async fn unexpose_port(&self, port: u16) -> Result<(), SandboxError> {
        ports::unexpose(self, port)
    }

    async fn list_ports(&self) -> Result<Vec<ExposedPort>, SandboxError> {
        ports::list(self)
    }

    async fn connect_port(&self, port: u16) -> Result<Box<dyn cthulu_core::Duplex>, SandboxError> {
        ports::connect(self, port).await
    }

    async fn checkpoint(&self, request: CheckpointRequest) -> Result<Checkpoint, SandboxError> {
        let _lifecycle = self.lifecycle.lock().await;
        self.check(Operation::Checkpoint)?;
        if let Some(name) = &request.name {
            if self.find_checkpoint(name).is_ok() {
                return Err(SandboxError::CheckpointExists { name: name.clone() });
            }
        }
        let checkpoint_id = format!("c{}", now_ms());
        let dir = self.checkpoint_dir(&checkpoint_id);
        fs_err::create_dir_all(&dir).map_err(|error| SandboxError::io("create", &dir, error))?;
        let result = async {
            if request.memory {
                let was_running = self.status() == SandboxStatus::Running;
                let mut control = self.control.lock().await;
                let session = self.monitor(&mut control).await?;
                let vm = self.vm();
                let mut saved = self
                    .hypervisor
                    .save(
                        session,
                        &dir.join(VMSTATE_FILE),
                        &dir.join(crate::firecracker::MEMORY_FILE),
                    )
                    .await;
                if saved.is_ok() && self.lock().disk {
                    // The disk as the saved memory knows it: copied while the CPUs are
                    // stopped and QEMU has flushed and released it after the save.
                    let disk = vm.dir.join(DISK_FILE);
                    saved = fs_err::copy(&disk, dir.join(DISK_FILE))
                        .map(|_| ())
                        .map_err(VmError::from);
                }
                if was_running {
                    self.hypervisor
                        .cont(session)
                        .await
                        .map_err(vm_failure("continue the VM"))?;
                }
                saved.map_err(vm_failure("save the VM"))?;
            } else {
                self.check(Operation::Exec)?;
                let client = self.client().await?;
                let mut spec = ExecSpec::argv(["tar", "-C", guest::WORKSPACE, "-cf", "-", "."]);
                spec.max_output_bytes = u64::MAX / 2;
                spec.timeout = Duration::from_secs(600);
                let mut stream = GuestExec::start(&client, &spec, &self.process_id()).await?;
                let path = dir.join(WORKSPACE_TAR);
                let mut file = tokio::fs::File::create(&path)
                    .await
                    .map_err(|error| SandboxError::io("create", &path, error))?;
                let mut exit = None;
                while let Some(event) = stream.next_event().await {
                    match event {
                        cthulu_core::ExecEvent::Stdout(bytes) => {
                            tokio::io::AsyncWriteExt::write_all(&mut file, &bytes)
                                .await
                                .map_err(|error| SandboxError::io("write", &path, error))?
                        }
                        cthulu_core::ExecEvent::Stderr(_) => {}
                        cthulu_core::ExecEvent::Exit(info) => exit = Some(info),
                    }
                }
                if exit.and_then(|exit| exit.exit_code) != Some(0) {
                    return Err(SandboxError::system(
                        "archive the workspace",
                        std::io::Error::other("tar in the guest failed"),
                    ));
                }
            }
            Ok(())
        }
        .await;
        if let Err(error) = result {
            let _ = fs_err::remove_dir_all(&dir);
            return Err(error);
        }
        let checkpoint = Checkpoint {
            id: checkpoint_id,
            name: request.name,
            created_at_ms: now_ms(),
            size_bytes: dir_size(&dir),
            memory: request.memory,
        };
        let mut state = self.lock();
        state.checkpoints.push(checkpoint.clone());
        let snapshot = state.clone();
        drop(state);
        self.save_state(&snapshot)?;
        Ok(checkpoint)
    }

    async fn list_checkpoints(&self) -> Result<Vec<Checkpoint>, SandboxError> {
        Ok(self.lock().checkpoints.clone())
    }

    async fn restore(&self, checkpoint: &str) -> Result<(), SandboxError> {
        let _lifecycle = self.lifecycle.lock().await;
        self.check(Operation::Restore)?;
        let found = self.find_checkpoint(checkpoint)?;
        let dir = self.checkpoint_dir(&found.id);
        if found.memory {
            return self.restore_memory(dir).await;
        }
        self.check(Operation::Exec)?;
        let archive = fs_err::read(dir.join(WORKSPACE_TAR))
            .map_err(|error| SandboxError::io("read", dir.join(WORKSPACE_TAR), error))?;
        let client = self.client().await?;
        let mut spec = ExecSpec::shell(format!(
            "cd {workspace} && find . -mindepth 1 -maxdepth 1 -exec rm -rf {{}} + && tar -xf -",
            workspace = guest::WORKSPACE
        ));
        spec.stdin = Some(archive);
        spec.timeout = Duration::from_secs(600);
        let output = guest::exec(&client, spec, &self.process_id()).await?;
        if output.exit.exit_code != Some(0) {
            return Err(SandboxError::system(
                "restore the workspace",
                std::io::Error::other(String::from_utf8_lossy(&output.stderr).into_owned()),
            ));
        }
        Ok(())
    }

    async fn delete_checkpoint(&self, checkpoint: &str) -> Result<(), SandboxError> {
        let _lifecycle = self.lifecycle.lock().await;
        let found = self.find_checkpoint(checkpoint)?;
        let dir = self.checkpoint_dir(&found.id);
        let _ = fs_err::remove_dir_all(&dir);
        let mut state = self.lock();
        state.checkpoints.retain(|kept| kept.id != found.id);
        let snapshot = state.clone();
        drop(state);
        self.save_state(&snapshot)
    }

    async fn stop(&self) -> Result<(), SandboxError> {
        let _lifecycle = self.lifecycle.lock().await;
        self.check(Operation::Stop)?;
        // A paused guest cannot answer liveness probes: its streams wait for the resume.
        if let Some(client) = self.agent.lock().await.as_ref() {
            client.set_heartbeat(false);
        }
        self.set_running(false).await?;
        self.set_status(SandboxStatus::Stopped)
    }

    async fn resume(&self) -> Result<(), SandboxError> {
        let _lifecycle = self.lifecycle.lock().await;
        self.check(Operation::Resume)?;
        self.set_running(true).await?;
        self.set_status(SandboxStatus::Running)?;
        if let Some(client) = self.agent.lock().await.as_ref() {
            client.set_heartbeat(true);
        }
        // The guest's clock stood still while it was stopped.
        if let Ok(client) = self.client().await {
            let env = self.lock().env.clone();
            let _ = Self::configure(&client, &self.sandbox_id, &env, false, None).await;
        }
        Ok(())
    }

    async fn destroy(&self) -> Result<(), SandboxError> {
        let _lifecycle = self.lifecycle.lock().await;
        if self.status() == SandboxStatus::Destroyed {
            return Ok(());
        }
        self.forwarders
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clear();
        self.kill_vm().await;
        let vm_dir = self.lock().vm_dir.clone();
        for dir in vm_dir.iter().chain([&self.dir]) {
            match fs_err::remove_dir_all(dir) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    return Err(SandboxError::io("remove", dir, error))
                }
                _ => {}
            }
        }
        self.lock().status = SandboxStatus::Destroyed;
        Ok(())
    }
}

fn dir_size(dir: &std::path::Path) -> u64 {
    fs_err::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok()?.metadata().ok())
                .map(|metadata| {
                    use std::os::unix::fs::MetadataExt;
                    metadata.blocks() * 512
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Dials guest ports through the agent.
struct AgentConnector {
    sandbox: std::sync::Weak<VmSandbox>,
}

#[async_trait]
impl Connector for AgentConnector {
    async fn connect(&self, port: u16) -> Option<Box<dyn Duplex>> {
        let sandbox = self.sandbox.upgrade()?;
        let client = sandbox.client().await.ok()?;
        guest::tunnel(&client, port).await
    }
}

impl VmSandbox {
    /// Puts the sandbox in its `Arc`; its port connector holds a weak reference to it.
    pub(crate) fn into_arc(self) -> Arc<VmSandbox> {
        let sandbox = Arc::new(self);
        let connector: Arc<dyn Connector> = Arc::new(AgentConnector {
            sandbox: Arc::downgrade(&sandbox),
        });
        let _ = sandbox.connector.set(connector);
        sandbox
    }
}

impl PortSandbox for VmSandbox {
    fn sandbox_id(&self) -> &SandboxId {
        &self.sandbox_id
    }

    fn connector(&self) -> Arc<dyn Connector> {
        self.connector
            .get()
            .cloned()
            .expect("set when the sandbox was made")
    }

    fn with_ports<R>(
        &self,
        operation: Option<Operation>,
        change: impl FnOnce(&mut Vec<ExposedPort>, &mut Forwarders) -> R,
    ) -> Result<R, SandboxError> {
        let mut state = self.lock();
        let status = state.status;
        let mut forwarders = self
            .forwarders
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        update_ports(
            &mut *state,
            status,
            operation,
            |state| &mut state.ports,
            &mut forwarders,
            change,
            |saved| self.save_state(saved),
        )
    }
}
