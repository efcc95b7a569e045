//! [`VmManager`]: the earlier system's VMs on top of the server's sandboxes. A VM is a
//! sandbox of the node's backend plus a row of the [`VmTable`] (its small id, tier, web
//! port and terminal secrets) and a running [`TerminalServer`].
//!
//! A create records the VM first, binds its web port, then creates the sandbox; any
//! failure undoes what was done, so nothing is half-created. A restarted node
//! ([`VmManager::recover`]) finds every VM again and binds its terminal anew.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use cthulu_server::error::{ApiFailure, ApiResult};
use cthulu_server::state::AppState;
use cthulu_types::sandbox::Operation;
use cthulu_types::vms::{CreateVmRequest, NodeHealth, VmList, VmResponse};
use cthulu_types::{
    BackendKind, CreateSandboxRequest, ErrorCode, NetworkMode, SandboxId, SandboxStatus,
};

use crate::ssh::{SshContext, SshServer, SshService};
use crate::table::{TableError, VmRecord, VmTable};
use crate::terminal::{TerminalAssets, TerminalContext, TerminalServer};
use crate::tier::Tier;

/// The label that ties a sandbox to its VM id (it lets a restarted node clean up a create
/// that was interrupted before its row named the sandbox).
pub const VM_ID_LABEL: &str = "cthulu.node.vm_id";
/// The variable `api_key` becomes in the VM's sessions.
pub const API_KEY_VARIABLE: &str = "ANTHROPIC_API_KEY";
/// The longest `api_key` accepted (keys and OAuth tokens are a few hundred bytes).
pub const MAX_API_KEY: usize = 16 * 1024;
/// What `ssh_command` says when the node serves no SSH: a shell comment, harmless if run.
pub const SSH_UNAVAILABLE: &str =
    "# ssh is off on this node (started with --no-ssh); use web_terminal";

/// How VMs are made and shown.
#[derive(Debug, Clone)]
pub struct VmSettings {
    pub backend: BackendKind,
    pub max_vms: usize,
    /// The address the web terminals listen on (the node's listen address).
    pub listen_ip: IpAddr,
    /// The host put in `web_terminal` URLs.
    pub public_host: String,
    pub web_port_base: u16,
    /// `None`: the node serves no SSH.
    pub ssh: Option<SshService>,
}

pub struct VmManager {
    app: Arc<AppState>,
    table: VmTable,
    settings: VmSettings,
    assets: TerminalAssets,
    terminals: Mutex<HashMap<u32, TerminalServer>>,
    ssh_servers: Mutex<HashMap<u32, SshServer>>,
}

fn table_failure(error: TableError) -> ApiFailure {
    ApiFailure::internal(&error)
}

fn not_found(vm_id: &str) -> ApiFailure {
    ApiFailure::new(ErrorCode::SandboxNotFound, format!("vm {vm_id} not found"))
        .with_hint("list the VMs with GET /vms")
}

impl VmManager {
    pub fn new(
        app: Arc<AppState>,
        table: VmTable,
        settings: VmSettings,
        assets: TerminalAssets,
    ) -> VmManager {
        VmManager {
            app,
            table,
            settings,
            assets,
            terminals: Mutex::new(HashMap::new()),
            ssh_servers: Mutex::new(HashMap::new()),
        }
    }

    pub fn settings(&self) -> &VmSettings {
        &self.settings
    }

    fn terminals(&self) -> std::sync::MutexGuard<'_, HashMap<u32, TerminalServer>> {
        self.terminals
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn ssh_servers(&self) -> std::sync::MutexGuard<'_, HashMap<u32, SshServer>> {
        self.ssh_servers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `POST /vms`.
    pub async fn create(&self, request: &CreateVmRequest) -> ApiResult<VmResponse> {
        if request.api_key.len() > MAX_API_KEY {
            // Each process gets it in its environment, where the kernel caps one string.
            return Err(ApiFailure::bad_request(format!(
                "api_key is {} bytes, more than {MAX_API_KEY}",
                request.api_key.len()
            )));
        }
        let tier = Tier::parse(&request.tier).ok_or_else(|| {
            // Only the start of what was sent is echoed back.
            let shown: String = request.tier.chars().take(32).collect();
            ApiFailure::bad_request(format!("unknown tier {shown:?}"))
                .with_hint("tier is nano (1 vCPU, 512 MB) or micro (2 vCPUs, 1024 MB)")
        })?;
        let mut record = self
            .table
            .allocate(tier, self.settings.web_port_base, self.settings.max_vms)
            .map_err(|error| match error {
                TableError::PortRange { .. } => ApiFailure::new(
                    ErrorCode::BackendUnavailable,
                    format!("no web port left: {error}"),
                )
                .with_hint("start the node with a lower --web-port-base"),
                other => table_failure(other),
            })?
            .ok_or_else(|| self.full())?;
        match self.complete(&mut record, &request.api_key).await {
            Ok(response) => Ok(response),
            Err(failure) => {
                if let Err(error) = self.table.remove(record.vm_id) {
                    tracing::error!(vm_id = record.vm_id, %error, "cannot forget a VM whose create failed");
                }
                Err(failure)
            }
        }
    }

    fn full(&self) -> ApiFailure {
        ApiFailure::new(
            ErrorCode::CapacityExceeded,
            format!(
                "this node holds its maximum of {} VMs",
                self.settings.max_vms
            ),
        )
        .with_hint("delete a VM (DELETE /vms/{id}) or start the node with a larger --max-vms")
    }

    /// Binds the web port, creates the sandbox and starts the terminal. On failure, what
    /// this made is undone (the caller forgets the row).
    async fn complete(&self, record: &mut VmRecord, api_key: &str) -> ApiResult<VmResponse> {
        let address = SocketAddr::new(self.settings.listen_ip, record.web_port);
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|error| {
                ApiFailure::new(
                    ErrorCode::BackendUnavailable,
                    format!("cannot listen on web port {address} for vm {}: {error}", record.vm_id),
                )
                .with_hint("another program holds that port: stop it or start the node with another --web-port-base")
            })?;
        let ssh_listener = self.bind_ssh(record.vm_id).await?;
        let sandbox = self
            .app
            .create(&sandbox_request(&self.settings, record, api_key))
            .await?;
        if let Err(error) = self.table.set_sandbox(record.vm_id, &sandbox.id) {
            if let Err(failure) = self.app.destroy(&sandbox.id).await {
                tracing::error!(sandbox_id = %sandbox.id, message = %failure.message, "cannot destroy the sandbox of a VM that could not be recorded");
            }
            return Err(table_failure(error));
        }
        record.sandbox_id = Some(sandbox.id.clone());
        if let Some(ssh_listener) = ssh_listener {
            self.start_ssh(ssh_listener, record.vm_id, sandbox.id.clone());
        }
        self.start_terminal(listener, record, sandbox.id);
        tracing::info!(vm_id = record.vm_id, tier = %record.tier, web_port = record.web_port, "vm created");
        Ok(self.describe(record))
    }

    /// The VM's SSH listener, `None` when the node serves no SSH.
    async fn bind_ssh(&self, vm_id: u32) -> ApiResult<Option<tokio::net::TcpListener>> {
        let Some(ssh) = &self.settings.ssh else {
            return Ok(None);
        };
        let port = ssh.port(vm_id).ok_or_else(|| {
            ApiFailure::new(
                ErrorCode::BackendUnavailable,
                format!(
                    "no ssh port left: {} + vm id {vm_id} is past 65535",
                    ssh.port_base
                ),
            )
            .with_hint("start the node with a lower --ssh-port-base")
        })?;
        let address = SocketAddr::new(self.settings.listen_ip, port);
        let listener = tokio::net::TcpListener::bind(address).await.map_err(|error| {
            ApiFailure::new(
                ErrorCode::BackendUnavailable,
                format!("cannot listen on ssh port {address} for vm {vm_id}: {error}"),
            )
            .with_hint("another program holds that port: stop it or start the node with another --ssh-port-base")
        })?;
        Ok(Some(listener))
    }

    fn start_ssh(&self, listener: tokio::net::TcpListener, vm_id: u32, sandbox_id: SandboxId) {
        let Some(ssh) = &self.settings.ssh else {
            return;
        };
        let server = SshServer::serve(
            listener,
            ssh,
            SshContext {
                vm_id,
                sandbox_id,
                app: self.app.clone(),
                authorized_keys: ssh.authorized_keys.clone(),
            },
        );
        self.ssh_servers().insert(vm_id, server);
    }

    fn start_terminal(
        &self,
        listener: tokio::net::TcpListener,
        record: &VmRecord,
        sandbox_id: SandboxId,
    ) {
        let terminal = TerminalServer::serve(
            listener,
            TerminalContext {
                vm_id: record.vm_id,
                sandbox_id,
                secret: record.terminal_secret.clone(),
                token: record.terminal_token.clone(),
                app: self.app.clone(),
                assets: self.assets,
            },
        );
        self.terminals().insert(record.vm_id, terminal);
    }

    /// The VM as the earlier API shows it.
    fn describe(&self, record: &VmRecord) -> VmResponse {
        let ssh_port = self
            .settings
            .ssh
            .as_ref()
            .and_then(|ssh| ssh.port(record.vm_id));
        let handle = record
            .sandbox_id
            .as_ref()
            .and_then(|sandbox_id| self.app.handle(sandbox_id, Operation::Exec).ok());
        VmResponse {
            vm_id: record.vm_id,
            tier: record.tier.as_str().to_owned(),
            guest_ip: handle
                .as_ref()
                .and_then(|handle| handle.guest_address())
                .map(|address| address.to_string())
                .unwrap_or_default(),
            ssh_port: ssh_port.unwrap_or(0),
            ssh_command: match ssh_port {
                Some(port) => crate::ssh::ssh_command(&self.settings.public_host, port),
                None => SSH_UNAVAILABLE.to_owned(),
            },
            web_port: record.web_port,
            web_terminal: terminal_url(
                &self.settings.public_host,
                record.web_port,
                record.terminal_secret.expose(),
            ),
            pid: handle
                .as_ref()
                .and_then(|handle| handle.host_pid())
                .unwrap_or(0),
        }
    }

    /// The complete VMs. One whose sandbox was destroyed meanwhile (through
    /// `/api/v1`, or its lifetime ended) is forgotten here.
    async fn live_records(&self) -> ApiResult<Vec<VmRecord>> {
        let mut live = Vec::new();
        for record in self.table.list().map_err(table_failure)? {
            let Some(sandbox_id) = &record.sandbox_id else {
                continue;
            };
            let gone = match self.app.db.get_sandbox(sandbox_id)? {
                Some(sandbox) => sandbox.status == SandboxStatus::Destroyed,
                None => true,
            };
            if gone {
                tracing::info!(vm_id = record.vm_id, %sandbox_id, "vm forgotten: its sandbox was destroyed");
                self.forget(record.vm_id).await?;
            } else {
                live.push(record);
            }
        }
        Ok(live)
    }

    /// Stops the VM's terminal and SSH (their ports are free when this returns) and
    /// forgets it.
    async fn forget(&self, vm_id: u32) -> ApiResult<()> {
        let terminal = self.terminals().remove(&vm_id);
        if let Some(terminal) = terminal {
            terminal.stop().await;
        }
        let ssh_server = self.ssh_servers().remove(&vm_id);
        if let Some(ssh_server) = ssh_server {
            ssh_server.stop().await;
        }
        self.table.remove(vm_id).map_err(table_failure)
    }

    /// `GET /vms`.
    pub async fn list(&self) -> ApiResult<VmList> {
        let vms: BTreeMap<String, VmResponse> = self
            .live_records()
            .await?
            .iter()
            .map(|record| (record.vm_id.to_string(), self.describe(record)))
            .collect();
        Ok(VmList {
            count: vms.len() as u32,
            vms,
        })
    }

    async fn live_record(&self, raw_id: &str) -> ApiResult<VmRecord> {
        let vm_id: u32 = raw_id.parse().map_err(|_| not_found(raw_id))?;
        self.live_records()
            .await?
            .into_iter()
            .find(|record| record.vm_id == vm_id)
            .ok_or_else(|| not_found(raw_id))
    }

    /// `GET /vms/{id}`.
    pub async fn get(&self, raw_id: &str) -> ApiResult<VmResponse> {
        Ok(self.describe(&self.live_record(raw_id).await?))
    }

    /// `DELETE /vms/{id}`: destroys the sandbox, stops the terminal, forgets the VM.
    pub async fn delete(&self, raw_id: &str) -> ApiResult<u32> {
        let record = self.live_record(raw_id).await?;
        if let Some(sandbox_id) = &record.sandbox_id {
            self.app.destroy(sandbox_id).await?;
        }
        self.forget(record.vm_id).await?;
        tracing::info!(vm_id = record.vm_id, "vm deleted");
        Ok(record.vm_id)
    }

    /// `GET /health`.
    pub async fn health(&self) -> ApiResult<NodeHealth> {
        Ok(NodeHealth {
            status: "ok".into(),
            active_vms: self.live_records().await?.len() as u32,
            max_vms: self.settings.max_vms as u32,
            ssh: self.settings.ssh.is_some(),
        })
    }

    /// At start: forgets VMs whose create was interrupted (destroying a sandbox such a
    /// create left) and VMs whose sandbox is gone, and serves every other VM's terminal
    /// again on its port.
    pub async fn recover(&self) -> Result<(), TableError> {
        let records = self.table.list()?;
        let known: Vec<SandboxId> = records
            .iter()
            .filter_map(|record| record.sandbox_id.clone())
            .collect();
        for record in records {
            match &record.sandbox_id {
                None => {
                    self.clean_interrupted(record.vm_id, &known).await;
                    self.table.remove(record.vm_id)?;
                }
                Some(sandbox_id) => {
                    let status = self
                        .app
                        .db
                        .get_sandbox(sandbox_id)
                        .ok()
                        .flatten()
                        .map(|sandbox| sandbox.status);
                    if matches!(status, None | Some(SandboxStatus::Destroyed)) {
                        tracing::warn!(vm_id = record.vm_id, %sandbox_id, "vm forgotten: its sandbox is gone");
                        self.table.remove(record.vm_id)?;
                        continue;
                    }
                    let address = SocketAddr::new(self.settings.listen_ip, record.web_port);
                    match self.bind_ssh(record.vm_id).await {
                        Ok(Some(listener)) => {
                            self.start_ssh(listener, record.vm_id, sandbox_id.clone())
                        }
                        Ok(None) => {}
                        Err(failure) => tracing::error!(
                            vm_id = record.vm_id,
                            message = %failure.message,
                            "cannot serve the ssh of a vm again"
                        ),
                    }
                    match tokio::net::TcpListener::bind(address).await {
                        Ok(listener) => self.start_terminal(listener, &record, sandbox_id.clone()),
                        Err(error) => tracing::error!(
                            vm_id = record.vm_id,
                            %address,
                            %error,
                            "cannot serve the terminal of a vm again: its web port is taken"
                        ),
                    }
                }
            }
        }
        Ok(())
    }

    /// Destroys a live sandbox labelled with `vm_id` that no recorded VM owns: what a
    /// create interrupted after the sandbox was made and before its row named it left.
    async fn clean_interrupted(&self, vm_id: u32, known: &[SandboxId]) {
        let sandboxes = match self.app.db.list_sandboxes(false) {
            Ok(sandboxes) => sandboxes,
            Err(error) => {
                tracing::error!(%error, "cannot look for the sandbox of an interrupted vm create");
                return;
            }
        };
        let label = vm_id.to_string();
        for sandbox in sandboxes {
            if sandbox.spec.labels.get(VM_ID_LABEL) == Some(&label) && !known.contains(&sandbox.id)
            {
                tracing::warn!(vm_id, sandbox_id = %sandbox.id, "destroying the sandbox of an interrupted vm create");
                if let Err(failure) = self.app.destroy(&sandbox.id).await {
                    tracing::error!(sandbox_id = %sandbox.id, message = %failure.message, "cannot destroy it");
                }
            }
        }
    }

    /// Stops every terminal (the node stops; the VMs stay); their ports are free when
    /// this returns.
    pub async fn stop_terminals(&self) {
        let terminals: Vec<TerminalServer> = self
            .terminals()
            .drain()
            .map(|(_, terminal)| terminal)
            .collect();
        for terminal in terminals {
            terminal.stop().await;
        }
        let ssh_servers: Vec<SshServer> = self
            .ssh_servers()
            .drain()
            .map(|(_, server)| server)
            .collect();
        for server in ssh_servers {
            server.stop().await;
        }
    }
}

/// The sandbox of a VM: the tier's limits on the node's backend, outbound network (the
/// agent in it talks to its API), the key as the sandbox's env (held host-side and given
/// to each process; never written to a file in the guest).
pub fn sandbox_request(
    settings: &VmSettings,
    record: &VmRecord,
    api_key: &str,
) -> CreateSandboxRequest {
    let mut request = CreateSandboxRequest {
        backend: Some(settings.backend),
        resources: record.tier.resources(settings.backend),
        network: NetworkMode::Full,
        ..CreateSandboxRequest::default()
    };
    request
        .labels
        .insert(VM_ID_LABEL.into(), record.vm_id.to_string());
    request
        .labels
        .insert("cthulu.node.tier".into(), record.tier.as_str().into());
    if !api_key.is_empty() {
        request.env.insert(API_KEY_VARIABLE.into(), api_key.into());
    }
    request
}

/// `http://<host>:<port>/<secret>`, an IPv6 host in brackets.
pub fn terminal_url(host: &str, web_port: u16, secret: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("http://[{host}]:{web_port}/{secret}")
    } else {
        format!("http://{host}:{web_port}/{secret}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cthulu_server::AccessToken;

    fn record(tier: Tier) -> VmRecord {
        VmRecord {
            vm_id: 4,
            sandbox_id: None,
            tier,
            web_port: 7704,
            terminal_secret: AccessToken::new("secret"),
            terminal_token: AccessToken::new("token"),
            created_at_ms: 0,
        }
    }

    fn settings(backend: BackendKind) -> VmSettings {
        VmSettings {
            backend,
            max_vms: 20,
            listen_ip: IpAddr::from([127, 0, 0, 1]),
            public_host: "node.example".into(),
            web_port_base: 7700,
            ssh: None,
        }
    }

    #[test]
    fn the_api_key_becomes_the_sandbox_env_only_when_given() {
        let with_key = sandbox_request(&settings(BackendKind::Qemu), &record(Tier::Micro), "sk-1");
        assert_eq!(
            with_key.env.get(API_KEY_VARIABLE).map(String::as_str),
            Some("sk-1")
        );
        assert_eq!(with_key.backend, Some(BackendKind::Qemu));
        assert_eq!(with_key.resources.vcpus, Some(2));
        assert_eq!(with_key.network, NetworkMode::Full);
        assert_eq!(
            with_key.labels.get(VM_ID_LABEL).map(String::as_str),
            Some("4")
        );
        let without = sandbox_request(&settings(BackendKind::Namespace), &record(Tier::Nano), "");
        assert!(without.env.is_empty());
        assert_eq!(without.resources.memory_mb, Some(512));
    }

    #[test]
    fn terminal_urls_name_the_host_port_and_secret() {
        assert_eq!(
            terminal_url("10.1.2.3", 7701, "abc"),
            "http://10.1.2.3:7701/abc"
        );
        assert_eq!(terminal_url("::1", 7701, "abc"), "http://[::1]:7701/abc");
        assert_eq!(terminal_url("[::1]", 7701, "abc"), "http://[::1]:7701/abc");
    }
}
