//! [`RemoteProvider`]: makes sandboxes on registered nodes and finds them again.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use cthulu_core::{SandboxError, SandboxHandle, SandboxProvider, SandboxSpec};
use cthulu_host::handles::Handles;
use cthulu_types::{
    BackendInfo, BackendKind, Capabilities, CreateSandboxRequest, SandboxId, ServerInfo,
};

use crate::nodes::{probe, Node, NodeDirectory};
use crate::placement::{choose_node, Placement};
use crate::sandbox::RemoteSandbox;
use crate::state::RemoteState;

/// Where the remote backend keeps its state and which nodes it may use.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// `$CTHULU_HOME/sandboxes/remote`: one directory per sandbox with its `state.json`.
    pub root: PathBuf,
    pub nodes: Arc<NodeDirectory>,
}

pub struct RemoteProvider {
    root: PathBuf,
    nodes: Arc<NodeDirectory>,
    handles: Handles<RemoteSandbox>,
}

impl RemoteProvider {
    /// Creates the root directory if needed. Nodes are not called here: one that is down
    /// must not stop the server.
    pub fn new(config: RemoteConfig) -> Result<RemoteProvider, SandboxError> {
        fs_err::create_dir_all(&config.root)
            .map_err(|error| SandboxError::io("create", &config.root, error))?;
        Ok(RemoteProvider {
            root: config.root,
            nodes: config.nodes,
            handles: Handles::default(),
        })
    }

    pub fn nodes(&self) -> &Arc<NodeDirectory> {
        &self.nodes
    }

    /// Asks every node what it is, so `info()` can say what they can do.
    pub async fn refresh_nodes(&self) {
        for (node, outcome) in self.probe_all(self.nodes.all()).await {
            if let Err(error) = outcome {
                tracing::warn!(node = %node.name, %error, "a registered node does not answer");
            }
        }
    }

    /// The live remote sandboxes on node `name`.
    pub fn sandboxes_on(&self, name: &str) -> Vec<SandboxId> {
        self.states()
            .into_iter()
            .filter(|(_, state)| {
                state.node == name && state.status != cthulu_types::SandboxStatus::Destroyed
            })
            .map(|(sandbox_id, _)| sandbox_id)
            .collect()
    }

    /// The node holding `sandbox_id` and the sandbox's id there.
    pub fn location(&self, sandbox_id: &SandboxId) -> Option<(String, String)> {
        RemoteState::load(&self.root.join(sandbox_id.as_str()))
            .ok()
            .map(|state| (state.node, state.node_sandbox_id))
    }

    fn states(&self) -> Vec<(SandboxId, RemoteState)> {
        let Ok(entries) = fs_err::read_dir(&self.root) else {
            return Vec::new();
        };
        entries
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let sandbox_id = SandboxId::parse(entry.file_name().to_str()?).ok()?;
                Some((sandbox_id, RemoteState::load(&entry.path()).ok()?))
            })
            .collect()
    }

    async fn probe_all(&self, nodes: Vec<Node>) -> Vec<(Node, Result<ServerInfo, SandboxError>)> {
        let answers = futures_util::future::join_all(nodes.iter().map(probe)).await;
        nodes
            .into_iter()
            .zip(answers)
            .map(|(node, answer)| {
                match &answer {
                    Ok(info) => self.nodes.record_info(&node.name, info),
                    Err(error) if error.code() == cthulu_types::ErrorCode::NodeUnreachable => {
                        self.nodes.record_unreachable(&node.name)
                    }
                    Err(_) => {}
                }
                (node, answer)
            })
            .collect()
    }

    /// The node a new sandbox goes to: the one asked for, or the one with the most free
    /// capacity; with what it said about itself.
    async fn place(&self, spec: &SandboxSpec) -> Result<(Node, ServerInfo), SandboxError> {
        let candidates = match &spec.node {
            Some(name) => {
                vec![self
                    .nodes
                    .get(name)
                    .ok_or_else(|| SandboxError::InvalidRequest {
                        field: "node",
                        message: format!(
                            "no node named {name:?} is registered (see `cthulu node ls`)"
                        ),
                    })?]
            }
            None => self.nodes.all(),
        };
        if candidates.is_empty() {
            return Err(no_nodes());
        }
        let mut answers = self.probe_all(candidates).await;
        // The one node asked for: its own error (unreachable, refused) says it best.
        if spec.node.is_some() {
            if let Some((_, Err(_))) = answers.first() {
                let (_, error) = answers.remove(0);
                return Err(error.expect_err("checked above"));
            }
        }
        let outcomes: Vec<(String, Result<ServerInfo, String>)> = answers
            .iter()
            .map(|(node, answer)| {
                (
                    node.name.clone(),
                    match answer {
                        Ok(info) => Ok(info.clone()),
                        Err(error) => Err(error.to_string()),
                    },
                )
            })
            .collect();
        match choose_node(&outcomes) {
            Placement::Node(name) => answers
                .into_iter()
                .find(|(node, _)| node.name == name)
                .and_then(|(node, answer)| answer.ok().map(|info| (node, info)))
                .ok_or_else(no_nodes),
            Placement::Nowhere { reasons } => Err(SandboxError::BackendUnavailable {
                backend: BackendKind::Remote,
                reason: format!("no node can take the sandbox: {}", reasons.join("; ")),
            }),
        }
    }
}

fn no_nodes() -> SandboxError {
    SandboxError::BackendUnavailable {
        backend: BackendKind::Remote,
        reason: "no node is registered; add one with `cthulu node add NAME URL --token T`".into(),
    }
}

/// What the node's default backend can do.
fn default_capabilities(info: &ServerInfo) -> Capabilities {
    info.backends
        .iter()
        .find(|backend| backend.kind == info.default_backend)
        .map(|backend| backend.capabilities.clone())
        .unwrap_or_else(Capabilities::none)
}

#[async_trait]
impl SandboxProvider for RemoteProvider {
    fn kind(&self) -> BackendKind {
        BackendKind::Remote
    }

    fn info(&self) -> BackendInfo {
        let available = !self.nodes.is_empty();
        BackendInfo {
            kind: BackendKind::Remote,
            available,
            unavailable_reason: (!available).then(|| {
                "no node is registered; add one with `cthulu node add NAME URL --token T`".into()
            }),
            capabilities: self.nodes.capabilities(),
            limits: Vec::new(),
        }
    }

    async fn provision(
        &self,
        sandbox_id: &SandboxId,
        spec: &SandboxSpec,
    ) -> Result<Arc<dyn SandboxHandle>, SandboxError> {
        if spec.from_checkpoint.is_some() {
            return Err(SandboxError::Unsupported {
                backend: BackendKind::Remote,
                operation: "from_checkpoint",
                reason: "create it on the node directly; the platform does not map checkpoints of other sandboxes".into(),
            });
        }
        let (node, info) = self.place(spec).await?;
        let call = node.call();
        let client = node.client()?;
        let request = CreateSandboxRequest {
            labels: spec.labels.clone(),
            env: spec.env.clone(),
            resources: spec.resources.clone(),
            network: spec.network,
            image: spec.image.clone(),
            ..CreateSandboxRequest::default()
        };
        let created = client
            .create_sandbox(&request)
            .await
            .map_err(|error| call.error("create", error))?;
        let state = RemoteState::new(
            &node.name,
            &node.url,
            created.id.as_str(),
            created.status,
            default_capabilities(&info),
            spec,
        );
        let dir = self.root.join(sandbox_id.as_str());
        let saved = fs_err::create_dir_all(&dir)
            .map_err(|error| SandboxError::io("create", &dir, error))
            .and_then(|()| state.save(&dir));
        if let Err(error) = saved {
            // Nothing half-created: the node's sandbox goes too.
            let _ = fs_err::remove_dir_all(&dir);
            return match client.delete_sandbox(created.id.as_str()).await {
                Ok(()) => Err(error),
                Err(cleanup) => Err(SandboxError::ProvisionAndCleanup {
                    sandbox_id: sandbox_id.clone(),
                    source: Box::new(error),
                    cleanup: Box::new(call.error("destroy", cleanup)),
                }),
            };
        }
        let sandbox = RemoteSandbox::new(sandbox_id.clone(), dir, client, state);
        Ok(self.handles.remember(sandbox_id.clone(), sandbox))
    }

    async fn attach(
        &self,
        sandbox_id: &SandboxId,
        _spec: &SandboxSpec,
    ) -> Result<Arc<dyn SandboxHandle>, SandboxError> {
        if let Some(handle) = self.handles.get(sandbox_id) {
            if handle.status() == cthulu_types::SandboxStatus::Destroyed {
                return Err(SandboxError::SandboxNotFound {
                    sandbox_id: sandbox_id.clone(),
                });
            }
            return Ok(handle);
        }
        let dir = self.root.join(sandbox_id.as_str());
        let state = match RemoteState::load(&dir) {
            Ok(state) => state,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(SandboxError::SandboxNotFound {
                    sandbox_id: sandbox_id.clone(),
                })
            }
            Err(error) => return Err(SandboxError::io("read", dir.join("state.json"), error)),
        };
        let node = self
            .nodes
            .get(&state.node)
            .ok_or_else(|| SandboxError::BackendUnavailable {
                backend: BackendKind::Remote,
                reason: format!(
                    "sandbox {sandbox_id} lives on node {} ({}), which is no longer registered",
                    state.node, state.node_url
                ),
            })?;
        let client = node.client()?;
        let sandbox = RemoteSandbox::new(sandbox_id.clone(), dir, client, state);
        let refreshed = if self.nodes.recently_unreachable(&node.name) {
            Err(node.call().unreachable("it did not answer a moment ago"))
        } else {
            sandbox.refresh().await
        };
        match refreshed {
            Ok(()) => {}
            Err(SandboxError::SandboxNotFound { sandbox_id }) => {
                return Err(SandboxError::SandboxNotFound { sandbox_id })
            }
            // Down for now: the sandbox keeps its last known status and works again once
            // the node answers.
            Err(error) => {
                if error.code() == cthulu_types::ErrorCode::NodeUnreachable {
                    self.nodes.record_unreachable(&node.name);
                }
                tracing::warn!(%sandbox_id, %error, "the node of a remote sandbox does not answer")
            }
        }
        sandbox.restart_forwarders()?;
        Ok(self.handles.remember(sandbox_id.clone(), sandbox))
    }

    async fn list(&self) -> Result<Vec<SandboxId>, SandboxError> {
        cthulu_host::state_file::list_sandboxes(&self.root, RemoteState::load).await
    }
}
