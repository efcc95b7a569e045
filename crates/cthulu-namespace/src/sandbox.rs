//! [`NamespaceSandbox`]: one sandbox, its [`SandboxHandle`] and destroy. Exec is in
//! [`exec`](crate::exec); files in [`cthulu_host::files`] and streamed processes in
//! [`cthulu_host::processes`] (the same code as the host backend, on the records of this
//! sandbox's `state.json` and shims of [`crate::shim`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use cthulu_core::{
    ByteReader, ExecOutput, ExecSpec, ExecStream, FileDownload, PutOptions, SandboxError,
    SandboxHandle,
};
use cthulu_types::sandbox::Operation;
use cthulu_types::{
    BackendKind, Capabilities, Checkpoint, CheckpointRequest, DirEntry, ExposedPort, ProcessInfo,
    SandboxId, SandboxStatus, Signal,
};

use crate::cgroup::SandboxCgroups;
use crate::config::InitCommand;
use crate::init::SOCKET_FILE;
use crate::launch::{ask, kill_init, remove_dir};
use crate::protocol::Request;
use crate::state::{InitProcess, SandboxState, STATE_FILE, WORKSPACE_DIR};
use cthulu_host::files;
use cthulu_host::ports::{self, Forwarders};
use cthulu_host::processes::{self, ProcessRecord, ProcessStore};
use cthulu_host::workspace::Workspace;
use cthulu_host::ShimCommand;

/// How long destroy lets shims report their processes' deaths to attached clients.
const SHIM_EXIT_GRACE: Duration = Duration::from_secs(2);

/// One namespace sandbox: `<root>/<sandbox_id>/` on the host, an init process in its
/// namespaces.
pub struct NamespaceSandbox {
    pub(crate) sandbox_id: SandboxId,
    pub(crate) dir: PathBuf,
    pub(crate) workspace: Workspace,
    /// The init's control socket.
    pub(crate) socket: PathBuf,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) cgroups: SandboxCgroups,
    /// How to start a streamed process's shim.
    shim: ShimCommand,
    /// What goes into state.json again when the status changes; its status is the
    /// sandbox's, its init the sandbox's init.
    state: Mutex<SandboxState>,
    /// Serialises destroys, stops, resumes, checkpoints and restores.
    pub(crate) destroying: tokio::sync::Mutex<()>,
    /// How to start init again (a restore replaces it).
    pub(crate) init_command: InitCommand,
    /// A restore has killed init and not yet started the next: a command failing now
    /// does not mean the sandbox is lost.
    pub(crate) restoring: AtomicBool,
    /// Listeners of the exposed ports (locked after `state` when both are).
    forwarders: Mutex<Forwarders>,
}

impl NamespaceSandbox {
    pub(crate) fn new(
        dir: PathBuf,
        state: SandboxState,
        init_command: InitCommand,
        shim: ShimCommand,
    ) -> NamespaceSandbox {
        NamespaceSandbox {
            sandbox_id: state.sandbox_id.clone(),
            // Files the server writes there belong to the sandbox's root.
            workspace: Workspace::owned_by(dir.join(WORKSPACE_DIR), state.root_outside()),
            socket: dir.join(SOCKET_FILE),
            dir,
            env: state.env.clone(),
            cgroups: state.cgroups.clone(),
            shim,
            state: Mutex::new(state),
            destroying: tokio::sync::Mutex::new(()),
            init_command,
            restoring: AtomicBool::new(false),
            forwarders: Mutex::new(Forwarders::new()),
        }
    }

    pub(crate) fn forwarders(&self) -> MutexGuard<'_, Forwarders> {
        self.forwarders
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, SandboxState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn check(&self, operation: Operation) -> Result<(), SandboxError> {
        Ok(self.lock().status.check(operation)?)
    }

    /// When init died under a running sandbox (killed from outside, OOM): the sandbox is
    /// lost, and this is the error that says so. `None` while init lives.
    pub(crate) fn init_gone(&self) -> Option<SandboxError> {
        if self.init().is_alive() {
            return None;
        }
        if self.restoring.load(Ordering::SeqCst) {
            return Some(SandboxError::system(
                "run a command",
                std::io::Error::other(
                    "the sandbox is being restored from a checkpoint (its processes were \
                     ended); run it again once the restore has returned",
                ),
            ));
        }
        let mut state = self.lock();
        if state.status == SandboxStatus::Running {
            state.status = SandboxStatus::Lost;
        }
        state.status.check(Operation::Exec).err().map(Into::into)
    }

    /// The host pid of the sandbox's init (PID 1 inside).
    pub fn init_pid(&self) -> i32 {
        self.init().pid
    }

    /// The sandbox's init now (a restore starts a new one).
    pub(crate) fn init(&self) -> InitProcess {
        self.lock().init
    }

    /// The sandbox's directory on the host.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    async fn destroy_sandbox(&self) -> Result<(), SandboxError> {
        let _serial = self.destroying.lock().await;
        let status = self.lock().status;
        if status == SandboxStatus::Destroyed {
            return Ok(());
        }
        status.check(Operation::Destroy)?;
        // Killed processes of a frozen group cannot exit until it thaws.
        if self.cgroups.freezer.is_some() {
            let _ = self.cgroups.freeze(false).await;
        }
        self.forwarders().clear();
        let shims = processes::shims_of(&self.dir, &self.lock().processes);
        kill_init(self.init()).await?;
        // Every process of the sandbox died with init; their shims record that, tell
        // attached clients and exit (or are killed after a grace).
        processes::end_shims(shims, SHIM_EXIT_GRACE).await;
        self.cgroups.remove().await?;
        crate::disk::release(&self.dir)?;
        remove_dir(&self.dir).await?;
        self.lock().status = SandboxStatus::Destroyed;
        Ok(())
    }
}

impl NamespaceSandbox {
    /// Stop (freeze every process of the sandbox) or resume (thaw them), remembered in
    /// state.json so a restarted server knows.
    async fn freeze(&self, operation: Operation, frozen: bool) -> Result<(), SandboxError> {
        let _serial = self.destroying.lock().await;
        let status = self.lock().status;
        let next = status.after(operation)?;
        if let Some(gone) = self.init_gone() {
            return Err(gone);
        }
        self.pause(frozen).await?;
        self.set_status(next)
    }

    /// Stops (`true`) or resumes every process of the sandbox: through its freezer cgroup,
    /// or, where it has none (an unprivileged server), by init sending SIGSTOP / SIGCONT to
    /// every other process of its pid namespace (which, unlike the freezer, their parents
    /// can see).
    pub(crate) async fn pause(&self, stopped: bool) -> Result<(), SandboxError> {
        if self.cgroups.freezer.is_some() {
            return self.cgroups.freeze(stopped).await;
        }
        let signal = if stopped {
            libc::SIGSTOP
        } else {
            libc::SIGCONT
        };
        ask(
            &self.socket,
            Request::SignalAll { signal },
            "stop or resume the sandbox",
        )
        .await
    }

    /// Records a new status, in memory and in state.json.
    fn set_status(&self, status: SandboxStatus) -> Result<(), SandboxError> {
        self.update_state(|state| state.status = status)
    }

    /// Changes the state, in memory and in state.json (in memory only once written).
    pub(crate) fn update_state(
        &self,
        change: impl FnOnce(&mut SandboxState),
    ) -> Result<(), SandboxError> {
        let mut state = self.lock();
        let mut changed = state.clone();
        change(&mut changed);
        self.save_state(&changed)?;
        *state = changed;
        Ok(())
    }

    /// Writes `state` as state.json.
    pub(crate) fn save_state(&self, state: &SandboxState) -> Result<(), SandboxError> {
        state
            .save(&self.dir)
            .map_err(|error| SandboxError::io("write", self.dir.join(STATE_FILE), error))
    }
}

impl ProcessStore for NamespaceSandbox {
    fn sandbox_dir(&self) -> &Path {
        &self.dir
    }

    fn shim(&self) -> &ShimCommand {
        &self.shim
    }

    /// Readable while the sandbox exists, running or stopped.
    fn records(&self) -> Result<Vec<ProcessRecord>, SandboxError> {
        let state = self.lock();
        processes::check_exists(state.status)?;
        Ok(state.processes.clone())
    }

    /// A stop or destroy since the start needs nothing here: the freezer holds the new
    /// process too, and init's death takes it along.
    fn add_record(&self, record: ProcessRecord) -> Result<(), SandboxError> {
        self.update_state(|state| state.processes.push(record))
    }

    fn forget_records(&self, process_ids: &[String]) -> Result<(), SandboxError> {
        self.update_state(|state| {
            state
                .processes
                .retain(|record| !process_ids.contains(&record.process_id))
        })
    }
}

#[async_trait]
impl SandboxHandle for NamespaceSandbox {
    fn id(&self) -> &SandboxId {
        &self.sandbox_id
    }

    fn kind(&self) -> BackendKind {
        BackendKind::Namespace
    }

    fn capabilities(&self) -> Capabilities {
        crate::provider::capabilities()
    }

    fn status(&self) -> SandboxStatus {
        self.lock().status
    }

    fn host_workspace(&self) -> Option<cthulu_core::HostWorkspace> {
        Some(self.workspace.host_workspace())
    }

    fn host_pid(&self) -> Option<u32> {
        u32::try_from(self.init_pid()).ok()
    }

    async fn exec(&self, spec: ExecSpec) -> Result<ExecOutput, SandboxError> {
        self.run_exec(spec).await
    }

    async fn exec_stream(&self, spec: ExecSpec) -> Result<Box<dyn ExecStream>, SandboxError> {
        self.run_exec_stream(spec).await
    }

    async fn list_processes(&self) -> Result<Vec<ProcessInfo>, SandboxError> {
        processes::list(self).await
    }

    async fn attach_process(&self, process_id: &str) -> Result<Box<dyn ExecStream>, SandboxError> {
        processes::attach(self, process_id).await
    }

    async fn signal_process(&self, process_id: &str, signal: Signal) -> Result<(), SandboxError> {
        processes::signal(self, process_id, signal).await
    }

    async fn put_file(
        &self,
        path: &str,
        options: PutOptions,
        contents: ByteReader,
    ) -> Result<u64, SandboxError> {
        self.check(Operation::Files)?;
        files::put_file(&self.workspace, path, options, contents).await
    }

    async fn get_file(&self, path: &str) -> Result<FileDownload, SandboxError> {
        self.check(Operation::Files)?;
        files::get_file(&self.workspace, path).await
    }

    async fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>, SandboxError> {
        self.check(Operation::Files)?;
        files::read_dir(&self.workspace, path).await
    }

    async fn remove(&self, path: &str, recursive: bool) -> Result<(), SandboxError> {
        self.check(Operation::Files)?;
        files::remove(&self.workspace, path, recursive).await
    }

    async fn expose_port(&self, port: u16) -> Result<ExposedPort, SandboxError> {
        if let Some(gone) = self.init_gone() {
            return Err(gone);
        }
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
        self.create_checkpoint(request).await
    }

    async fn list_checkpoints(&self) -> Result<Vec<Checkpoint>, SandboxError> {
        self.checkpoints()
    }

    async fn restore(&self, checkpoint: &str) -> Result<(), SandboxError> {
        self.restore_checkpoint(checkpoint).await
    }

    async fn delete_checkpoint(&self, checkpoint: &str) -> Result<(), SandboxError> {
        self.remove_checkpoint(checkpoint).await
    }

    async fn stop(&self) -> Result<(), SandboxError> {
        self.freeze(Operation::Stop, true).await
    }

    async fn resume(&self) -> Result<(), SandboxError> {
        self.freeze(Operation::Resume, false).await
    }

    async fn destroy(&self) -> Result<(), SandboxError> {
        self.destroy_sandbox().await
    }
}
