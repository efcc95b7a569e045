//! [`Node`]s and the [`NodeDirectory`] of registered ones; [`probe`] asks a node what it
//! is and what it can take.

use std::collections::BTreeMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use cthulu_client::CthuluClient;
use cthulu_core::SandboxError;
use cthulu_types::{Capabilities, CheckpointSupport, ServerInfo};

use crate::errors::NodeCall;

/// How long a connection to a node may take before it is `node_unreachable`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a node that did not answer is taken as down without asking it again (so a
/// restart re-attaching many sandboxes of a dead node waits for it once, not per sandbox).
const DOWN_FOR: Duration = Duration::from_secs(10);
/// How long a node has to answer `GET /api/v1/info`.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A registered node: where it is and the token that lets the platform call it.
#[derive(Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub url: String,
    pub token: String,
}

/// The token is a credential: never printed, not even in debug output.
impl std::fmt::Debug for Node {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Node")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl Node {
    /// A client of the node that gives up connecting after [`CONNECT_TIMEOUT`].
    pub fn client(&self) -> Result<CthuluClient, SandboxError> {
        let call = self.call();
        CthuluClient::new(&self.url, Some(self.token.clone()))
            .and_then(|client| client.with_connect_timeout(CONNECT_TIMEOUT))
            .map_err(|error| call.error("connect", error))
    }

    pub(crate) fn call(&self) -> NodeCall {
        NodeCall::node(&self.name, &self.url)
    }
}

/// Checks a node name: 1-63 of `a-z 0-9 - _ .`, starting with a letter or digit.
pub fn validate_node_name(name: &str) -> Result<(), String> {
    let valid_start = name
        .chars()
        .next()
        .is_some_and(|first| first.is_ascii_lowercase() || first.is_ascii_digit());
    let valid_rest = name.chars().all(|character| {
        character.is_ascii_lowercase() || character.is_ascii_digit() || "-_.".contains(character)
    });
    if name.len() > 63 || !valid_start || !valid_rest {
        return Err(format!(
            "node name {name:?} must be 1-63 characters of a-z, 0-9, '-', '_' or '.', starting with a letter or digit"
        ));
    }
    Ok(())
}

/// Asks `node` for `GET /api/v1/info`, giving up after a few seconds.
pub async fn probe(node: &Node) -> Result<ServerInfo, SandboxError> {
    let call = node.call();
    let client = node.client()?;
    match tokio::time::timeout(PROBE_TIMEOUT, client.info()).await {
        Ok(Ok(info)) => Ok(info),
        Ok(Err(error)) => Err(call.error("info", error)),
        Err(_) => Err(call.unreachable(format!(
            "no answer to GET /api/v1/info within {PROBE_TIMEOUT:?}"
        ))),
    }
}

/// The registered nodes, shared by the server (which adds and removes them) and the
/// remote provider (which places sandboxes on them), with what each last said about
/// itself.
#[derive(Debug, Default)]
pub struct NodeDirectory {
    nodes: RwLock<BTreeMap<String, Node>>,
    last_info: RwLock<BTreeMap<String, ServerInfo>>,
    unreachable_since: RwLock<BTreeMap<String, Instant>>,
}

impl NodeDirectory {
    pub fn new(nodes: impl IntoIterator<Item = Node>) -> Self {
        NodeDirectory {
            nodes: RwLock::new(
                nodes
                    .into_iter()
                    .map(|node| (node.name.clone(), node))
                    .collect(),
            ),
            last_info: RwLock::new(BTreeMap::new()),
            unreachable_since: RwLock::new(BTreeMap::new()),
        }
    }

    pub fn insert(&self, node: Node) {
        write(&self.nodes).insert(node.name.clone(), node);
    }

    pub fn remove(&self, name: &str) -> Option<Node> {
        write(&self.last_info).remove(name);
        write(&self.unreachable_since).remove(name);
        write(&self.nodes).remove(name)
    }

    pub fn get(&self, name: &str) -> Option<Node> {
        read(&self.nodes).get(name).cloned()
    }

    /// Every node, by name.
    pub fn all(&self) -> Vec<Node> {
        read(&self.nodes).values().cloned().collect()
    }

    pub fn is_empty(&self) -> bool {
        read(&self.nodes).is_empty()
    }

    /// Remembers what `name` said about itself (capabilities for `info()`).
    pub fn record_info(&self, name: &str, info: &ServerInfo) {
        write(&self.unreachable_since).remove(name);
        write(&self.last_info).insert(name.to_owned(), info.clone());
    }

    /// Remembers that `name` did not answer just now.
    pub fn record_unreachable(&self, name: &str) {
        write(&self.unreachable_since).insert(name.to_owned(), Instant::now());
    }

    /// Whether `name` failed to answer within the last few seconds.
    pub fn recently_unreachable(&self, name: &str) -> bool {
        read(&self.unreachable_since)
            .get(name)
            .is_some_and(|since| since.elapsed() < DOWN_FOR)
    }

    /// What the nodes can do, as far as they last said: whatever any node's default
    /// backend can do (a sandbox's own capabilities are its node's).
    pub fn capabilities(&self) -> Capabilities {
        let mut merged = Capabilities::none();
        for info in read(&self.last_info).values() {
            let Some(backend) = info
                .backends
                .iter()
                .find(|backend| backend.kind == info.default_backend)
            else {
                continue;
            };
            let theirs = &backend.capabilities;
            merged.isolation |= theirs.isolation;
            merged.exec_stream |= theirs.exec_stream;
            merged.pty |= theirs.pty;
            merged.detached_processes |= theirs.detached_processes;
            merged.files |= theirs.files;
            merged.ports |= theirs.ports;
            merged.stop_resume |= theirs.stop_resume;
            merged.network_policy |= theirs.network_policy;
            merged.checkpoint = match (merged.checkpoint, theirs.checkpoint) {
                (CheckpointSupport::FilesystemAndMemory, _)
                | (_, CheckpointSupport::FilesystemAndMemory) => {
                    CheckpointSupport::FilesystemAndMemory
                }
                (CheckpointSupport::Filesystem, _) | (_, CheckpointSupport::Filesystem) => {
                    CheckpointSupport::Filesystem
                }
                _ => CheckpointSupport::None,
            };
        }
        merged
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names() {
        assert!(validate_node_name("gpu-1.eu_west").is_ok());
        for bad in ["", "-x", "Upper", "a/b", "a b", &"x".repeat(64)] {
            assert!(validate_node_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn debug_output_hides_the_token() {
        let node = Node {
            name: "a".into(),
            url: "http://127.0.0.1:1".into(),
            token: "secret-token".into(),
        };
        assert!(!format!("{node:?}").contains("secret-token"));
        let directory = NodeDirectory::new([node]);
        assert!(!format!("{directory:?}").contains("secret-token"));
    }

    #[test]
    fn a_node_that_did_not_answer_is_down_for_a_while() {
        let directory = NodeDirectory::default();
        assert!(!directory.recently_unreachable("a"));
        directory.record_unreachable("a");
        assert!(directory.recently_unreachable("a"));
        assert!(!directory.recently_unreachable("b"));
        directory.remove("a");
        assert!(!directory.recently_unreachable("a"));
    }
}
