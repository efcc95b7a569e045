//! The contract's [`SandboxHandle`] for [`HostSandbox`]: each operation checks the status
//! and hands over to the module that does it.

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

use crate::processes;
use crate::sandbox::HostSandbox;
use crate::{files, ports};

impl HostSandbox {
    fn check(&self, operation: Operation) -> Result<(), SandboxError> {
        self.lock().check(operation)
    }
}

#[async_trait]
impl SandboxHandle for HostSandbox {
    fn id(&self) -> &SandboxId {
        &self.sandbox_id
    }

    fn kind(&self) -> BackendKind {
        BackendKind::Host
    }

    fn capabilities(&self) -> Capabilities {
        crate::provider::capabilities()
    }

    fn status(&self) -> SandboxStatus {
        self.current_status()
    }

    fn host_workspace(&self) -> Option<cthulu_core::HostWorkspace> {
        Some(self.workspace.host_workspace())
    }

    async fn exec(&self, spec: ExecSpec) -> Result<ExecOutput, SandboxError> {
        self.run_exec(spec).await
    }

    async fn exec_stream(&self, spec: ExecSpec) -> Result<Box<dyn ExecStream>, SandboxError> {
        self.start_stream(spec).await
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
        self.stop_sandbox().await
    }

    async fn resume(&self) -> Result<(), SandboxError> {
        self.resume_sandbox().await
    }

    async fn destroy(&self) -> Result<(), SandboxError> {
        self.destroy_sandbox().await
    }
}
