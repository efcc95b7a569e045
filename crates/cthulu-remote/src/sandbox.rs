//! [`RemoteSandbox`]: the handle of a sandbox on a node. Every operation is checked
//! against the last known status, then is a call to the node; what changes the status
//! (stop, resume, restore, destroy) records the node's answer in `state.json`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use cthulu_client::{CthuluClient, PutFileOptions};
use cthulu_core::{
    ByteReader, Duplex, ExecOutput, ExecSpec, ExecStream, ExitInfo, FileDownload, PutOptions,
    SandboxError, SandboxHandle,
};
use cthulu_host::ports::{self, update_ports, Connector, Forwarders, PortSandbox};
use cthulu_types::sandbox::Operation;
use cthulu_types::{
    BackendKind, Capabilities, Checkpoint, CheckpointRequest, Command, DirEntry, ExecRequest,
    ExposedPort, OutputEncoding, ProcessInfo, SandboxId, SandboxStatus, Signal,
};

use crate::errors::NodeCall;
use crate::state::RemoteState;
use crate::stream::RemoteExecStream;
use crate::tunnel::TunnelConnector;

/// How long a node has to answer a call that does little work (lists, signals, stop,
/// resume, destroy, a download's headers).
const CALL_LIMIT: Duration = Duration::from_secs(60);
/// How long a node has to take or restore a checkpoint.
const CHECKPOINT_LIMIT: Duration = Duration::from_secs(600);
/// What an exec may take beyond its own timeout before the node is taken as hung.
const EXEC_MARGIN: Duration = Duration::from_secs(60);
/// How long a node has to say how a sandbox is when it is re-attached.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(5);
/// Connecting a WebSocket and getting the node's `started`; past this the node is gone.
const STREAM_START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct RemoteSandbox {
    sandbox_id: SandboxId,
    /// `<root>/<id>`, holding `state.json`.
    dir: PathBuf,
    client: CthuluClient,
    node_sandbox_id: String,
    call: NodeCall,
    connector: Arc<TunnelConnector>,
    inner: Mutex<Inner>,
}

struct Inner {
    state: RemoteState,
    forwarders: Forwarders,
}

impl RemoteSandbox {
    pub(crate) fn new(
        sandbox_id: SandboxId,
        dir: PathBuf,
        client: CthuluClient,
        state: RemoteState,
    ) -> Self {
        let call = NodeCall {
            node: state.node.clone(),
            url: client.base_url().to_string(),
            sandbox: Some((sandbox_id.clone(), state.node_sandbox_id.clone())),
        };
        let connector = Arc::new(TunnelConnector {
            client: client.clone(),
            node_sandbox_id: state.node_sandbox_id.clone(),
            call: call.clone(),
        });
        RemoteSandbox {
            sandbox_id,
            dir,
            node_sandbox_id: state.node_sandbox_id.clone(),
            client,
            call,
            connector,
            inner: Mutex::new(Inner {
                state,
                forwarders: Forwarders::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The node this sandbox lives on.
    pub fn node(&self) -> String {
        self.lock().state.node.clone()
    }

    /// The sandbox's id on its node.
    pub fn node_sandbox_id(&self) -> &str {
        &self.node_sandbox_id
    }

    fn check(&self, operation: Operation) -> Result<(), SandboxError> {
        Ok(self.status().check(operation)?)
    }

    /// Records a status the node reported; a state file that cannot be written is logged
    /// (the node holds the truth, and the next change writes it again).
    pub(crate) fn set_status(&self, status: SandboxStatus) {
        let mut inner = self.lock();
        if inner.state.status == status {
            return;
        }
        inner.state.status = status;
        if let Err(error) = inner.state.save(&self.dir) {
            tracing::warn!(sandbox_id = %self.sandbox_id, %error, "cannot record a remote sandbox's status");
        }
    }

    /// Starts the forwarders of the recorded ports again (after a restart).
    pub(crate) fn restart_forwarders(&self) -> Result<(), SandboxError> {
        ports::restart_forwarders(self)
    }

    /// Asks the node for the sandbox's status and records it; a node that accepts the
    /// connection but does not answer is unreachable after [`REFRESH_TIMEOUT`] (this runs
    /// while a restarted server re-attaches, before it serves).
    pub(crate) async fn refresh(&self) -> Result<(), SandboxError> {
        let sandbox = tokio::time::timeout(
            REFRESH_TIMEOUT,
            self.client.get_sandbox(&self.node_sandbox_id),
        )
        .await
        .map_err(|_| {
            self.call
                .unreachable(format!("no answer within {REFRESH_TIMEOUT:?}"))
        })?
        .map_err(|error| self.call.error("get", error))?;
        self.set_status(sandbox.status);
        Ok(())
    }

    /// Runs a call to the node, giving up after `limit`: a node that accepted the
    /// connection and went silent must not hold the caller forever.
    async fn bounded<T>(
        &self,
        operation: &'static str,
        limit: Duration,
        call: impl std::future::Future<Output = Result<T, cthulu_client::ClientError>>,
    ) -> Result<T, SandboxError> {
        match tokio::time::timeout(limit, call).await {
            Ok(result) => result.map_err(|error| self.call.error(operation, error)),
            Err(_) => Err(self
                .call
                .unreachable(format!("no answer to {operation} within {limit:?}"))),
        }
    }

    async fn start_stream(
        &self,
        started: impl std::future::Future<
            Output = Result<cthulu_client::ExecSession, cthulu_client::ClientError>,
        >,
        program: Option<String>,
        tty: Option<bool>,
    ) -> Result<Box<dyn ExecStream>, SandboxError> {
        let session = match tokio::time::timeout(STREAM_START_TIMEOUT, started).await {
            Ok(Ok(session)) => session,
            Ok(Err(error)) => {
                return Err(self
                    .call
                    .error_running("exec_stream", program.as_deref(), error))
            }
            Err(_) => {
                return Err(self
                    .call
                    .unreachable(format!("no stream started within {STREAM_START_TIMEOUT:?}")))
            }
        };
        Ok(Box::new(RemoteExecStream::new(
            session,
            tty,
            self.call.clone(),
        )))
    }
}

/// The node's exec request for `spec`; output comes back base64 so it stays byte-exact.
fn exec_request(spec: &ExecSpec) -> ExecRequest {
    let (argv, shell) = match &spec.command {
        Command::Argv(argv) => (Some(argv.clone()), None),
        Command::Shell(script) => (None, Some(script.clone())),
    };
    ExecRequest {
        argv,
        shell,
        env: spec.env.clone(),
        cwd: spec.cwd.clone(),
        stdin: None,
        stdin_base64: spec
            .stdin
            .as_ref()
            .map(|stdin| base64::engine::general_purpose::STANDARD.encode(stdin)),
        timeout_ms: Some(spec.timeout.as_millis().min(u128::from(u64::MAX)) as u64),
        max_output_bytes: Some(spec.max_output_bytes),
        output_encoding: Some(OutputEncoding::Base64),
        tty: spec.tty,
        detach: spec.detach,
    }
}

#[async_trait]
impl SandboxHandle for RemoteSandbox {
    fn id(&self) -> &SandboxId {
        &self.sandbox_id
    }

    fn kind(&self) -> BackendKind {
        BackendKind::Remote
    }

    fn capabilities(&self) -> Capabilities {
        self.lock().state.capabilities.clone()
    }

    fn status(&self) -> SandboxStatus {
        self.lock().state.status
    }

    async fn exec(&self, spec: ExecSpec) -> Result<ExecOutput, SandboxError> {
        self.check(Operation::Exec)?;
        let program = spec.program();
        let limit = spec.timeout.saturating_add(EXEC_MARGIN);
        let response = match tokio::time::timeout(
            limit,
            self.client
                .exec(&self.node_sandbox_id, &exec_request(&spec)),
        )
        .await
        {
            Ok(response) => {
                response.map_err(|error| self.call.error_running("exec", Some(&program), error))?
            }
            Err(_) => {
                return Err(self
                    .call
                    .unreachable(format!("no answer to exec within {limit:?}")))
            }
        };
        let (stdout, stderr) = response.decode_output().map_err(|error| {
            self.call
                .protocol(format!("exec output is not base64: {error}"))
        })?;
        Ok(ExecOutput {
            exit: ExitInfo {
                exit_code: response.exit_code,
                signal: response.signal,
                timed_out: response.timed_out,
                truncated: response.truncated,
                oom_killed: response.oom_killed,
            },
            stdout,
            stderr,
            duration: Duration::from_millis(response.duration_ms),
        })
    }

    async fn exec_stream(&self, spec: ExecSpec) -> Result<Box<dyn ExecStream>, SandboxError> {
        self.check(Operation::Exec)?;
        let request = exec_request(&spec);
        self.start_stream(
            self.client.exec_stream(&self.node_sandbox_id, &request),
            Some(spec.program()),
            Some(spec.tty.is_some()),
        )
        .await
    }

    async fn list_processes(&self) -> Result<Vec<ProcessInfo>, SandboxError> {
        self.check(Operation::Exec)?;
        let list = self
            .bounded(
                "list_processes",
                CALL_LIMIT,
                self.client.processes(&self.node_sandbox_id),
            )
            .await?;
        Ok(list.processes)
    }

    async fn attach_process(&self, process_id: &str) -> Result<Box<dyn ExecStream>, SandboxError> {
        self.check(Operation::Exec)?;
        self.start_stream(
            self.client.attach(&self.node_sandbox_id, process_id),
            None,
            None,
        )
        .await
    }

    async fn signal_process(&self, process_id: &str, signal: Signal) -> Result<(), SandboxError> {
        self.check(Operation::Exec)?;
        self.bounded(
            "signal_process",
            CALL_LIMIT,
            self.client
                .signal_process(&self.node_sandbox_id, process_id, signal),
        )
        .await
    }

    async fn put_file(
        &self,
        path: &str,
        options: PutOptions,
        contents: ByteReader,
    ) -> Result<u64, SandboxError> {
        self.check(Operation::Files)?;
        let options = PutFileOptions {
            mode: options.mode,
            create_parents: options.create_parents,
            progress: None,
        };
        let written = self
            .client
            .put_file(&self.node_sandbox_id, path, contents, options)
            .await
            .map_err(|error| self.call.error("put_file", error))?;
        Ok(written.size)
    }

    async fn get_file(&self, path: &str) -> Result<FileDownload, SandboxError> {
        self.check(Operation::Files)?;
        let download = self
            .bounded(
                "get_file",
                CALL_LIMIT,
                self.client.get_file(&self.node_sandbox_id, path),
            )
            .await?;
        let size = download
            .size
            .ok_or_else(|| self.call.protocol("a download without Content-Length"))?;
        let mode = download.mode.unwrap_or(0o644);
        Ok(FileDownload {
            size,
            mode,
            contents: Box::new(download.into_reader()),
        })
    }

    async fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>, SandboxError> {
        self.check(Operation::Files)?;
        let listing = self
            .bounded(
                "read_dir",
                CALL_LIMIT,
                self.client.read_dir(&self.node_sandbox_id, path),
            )
            .await?;
        Ok(listing.entries)
    }

    async fn remove(&self, path: &str, recursive: bool) -> Result<(), SandboxError> {
        self.check(Operation::Files)?;
        self.bounded(
            "remove",
            CALL_LIMIT,
            self.client
                .remove_file(&self.node_sandbox_id, path, recursive),
        )
        .await
    }

    async fn expose_port(&self, port: u16) -> Result<ExposedPort, SandboxError> {
        self.check(Operation::Ports)?;
        if let Some(existing) = ports::list(self)?
            .into_iter()
            .find(|exposed| exposed.port == port)
        {
            return Ok(existing);
        }
        // Asked first so that a dead node or a silent port is said as such; the forwarder's
        // own check would only see "no connection".
        drop(self.connector.open(port).await?);
        ports::expose(self, port).await
    }

    async fn unexpose_port(&self, port: u16) -> Result<(), SandboxError> {
        ports::unexpose(self, port)
    }

    async fn list_ports(&self) -> Result<Vec<ExposedPort>, SandboxError> {
        ports::list(self)
    }

    async fn connect_port(&self, port: u16) -> Result<Box<dyn Duplex>, SandboxError> {
        self.check(Operation::Ports)?;
        drop(self.connector.open(port).await?);
        self.connector
            .connect(port)
            .await
            .ok_or(SandboxError::PortNotListening { port })
    }

    async fn checkpoint(&self, request: CheckpointRequest) -> Result<Checkpoint, SandboxError> {
        self.check(Operation::Checkpoint)?;
        self.bounded(
            "checkpoint",
            CHECKPOINT_LIMIT,
            self.client
                .create_checkpoint(&self.node_sandbox_id, &request),
        )
        .await
    }

    async fn list_checkpoints(&self) -> Result<Vec<Checkpoint>, SandboxError> {
        self.status().check_exists()?;
        let list = self
            .bounded(
                "list_checkpoints",
                CALL_LIMIT,
                self.client.checkpoints(&self.node_sandbox_id),
            )
            .await?;
        Ok(list.checkpoints)
    }

    async fn restore(&self, checkpoint: &str) -> Result<(), SandboxError> {
        self.check(Operation::Restore)?;
        let sandbox = self
            .bounded(
                "restore",
                CHECKPOINT_LIMIT,
                self.client
                    .restore_checkpoint(&self.node_sandbox_id, checkpoint),
            )
            .await?;
        self.set_status(sandbox.status);
        Ok(())
    }

    async fn delete_checkpoint(&self, checkpoint: &str) -> Result<(), SandboxError> {
        self.status().check_exists()?;
        self.bounded(
            "delete_checkpoint",
            CALL_LIMIT,
            self.client
                .delete_checkpoint(&self.node_sandbox_id, checkpoint),
        )
        .await
    }

    async fn stop(&self) -> Result<(), SandboxError> {
        self.check(Operation::Stop)?;
        let sandbox = self
            .bounded(
                "stop",
                CALL_LIMIT,
                self.client.stop_sandbox(&self.node_sandbox_id),
            )
            .await?;
        self.set_status(sandbox.status);
        Ok(())
    }

    async fn resume(&self) -> Result<(), SandboxError> {
        self.check(Operation::Resume)?;
        let sandbox = self
            .bounded(
                "resume",
                CALL_LIMIT,
                self.client.resume_sandbox(&self.node_sandbox_id),
            )
            .await?;
        self.set_status(sandbox.status);
        Ok(())
    }

    async fn destroy(&self) -> Result<(), SandboxError> {
        if self.status() == SandboxStatus::Destroyed {
            return Ok(());
        }
        match self
            .bounded(
                "destroy",
                CALL_LIMIT,
                self.client.delete_sandbox(&self.node_sandbox_id),
            )
            .await
        {
            Ok(()) => {}
            // Gone on the node already: nothing is left there.
            Err(SandboxError::SandboxNotFound { .. }) => {}
            Err(error) => return Err(error),
        }
        {
            let mut inner = self.lock();
            inner.forwarders.clear();
            inner.state.status = SandboxStatus::Destroyed;
        }
        match fs_err::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(SandboxError::io("remove", &self.dir, error)),
        }
    }
}

impl PortSandbox for RemoteSandbox {
    fn sandbox_id(&self) -> &SandboxId {
        &self.sandbox_id
    }

    fn connector(&self) -> Arc<dyn Connector> {
        self.connector.clone()
    }

    fn with_ports<R>(
        &self,
        operation: Option<Operation>,
        change: impl FnOnce(&mut Vec<ExposedPort>, &mut Forwarders) -> R,
    ) -> Result<R, SandboxError> {
        let mut inner = self.lock();
        let status = inner.state.status;
        let inner = &mut *inner;
        update_ports(
            &mut inner.state,
            status,
            operation,
            |state| &mut state.ports,
            &mut inner.forwarders,
            change,
            |saved| saved.save(&self.dir),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_requests_carry_the_spec_byte_exact() {
        let mut spec = ExecSpec::shell("cat");
        spec.stdin = Some(vec![0, 255, 10]);
        spec.detach = true;
        let request = exec_request(&spec);
        assert_eq!(request.shell.as_deref(), Some("cat"));
        assert_eq!(request.stdin_bytes().unwrap(), Some(vec![0, 255, 10]));
        assert_eq!(request.output_encoding, Some(OutputEncoding::Base64));
        assert!(request.detach);
        let back = ExecSpec::from_request(&request).unwrap();
        assert_eq!(back.timeout, spec.timeout);
        assert_eq!(back.command, spec.command);
    }
}
