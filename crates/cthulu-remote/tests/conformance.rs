//! The conformance suite of `cthulu_core::conformance` against the remote backend: every
//! scenario runs on a provider whose one registered node is a real server (the test
//! support's `TestServer`, with an API key so that auth is on), started in the test's own
//! runtime. The node runs its default backend (namespace where it can, host otherwise);
//! the scenarios see only the remote provider.

use std::sync::{Arc, Mutex, OnceLock};

use cthulu_core::conformance::ConformanceTarget;
use cthulu_core::SandboxProvider;
use cthulu_remote::{Node, NodeDirectory, RemoteConfig, RemoteProvider};
use cthulu_test_support::TestServer;

struct RemoteTarget {
    state: tempfile::TempDir,
    node: Mutex<Option<TestServer>>,
    directory: OnceLock<Arc<NodeDirectory>>,
}

impl RemoteTarget {
    fn new() -> Self {
        let state = tempfile::Builder::new()
            .prefix("cthulu-remote-conformance-")
            .tempdir()
            .expect("creating the state directory");
        RemoteTarget {
            state,
            node: Mutex::new(None),
            directory: OnceLock::new(),
        }
    }

    /// The directory holding the node, started on first use (the suite asks for the
    /// provider inside the test's multi-threaded runtime).
    fn directory(&self) -> Arc<NodeDirectory> {
        self.directory
            .get_or_init(|| {
                let (server, token) = tokio::task::block_in_place(|| {
                    tokio::runtime::Handle::current().block_on(start_node())
                });
                let node = Node {
                    name: "node1".into(),
                    url: server.url().to_owned(),
                    token,
                };
                *self.node.lock().unwrap() = Some(server);
                Arc::new(NodeDirectory::new([node]))
            })
            .clone()
    }

    fn make_provider(&self) -> Result<Arc<dyn SandboxProvider>, String> {
        let provider = RemoteProvider::new(RemoteConfig {
            root: self.state.path().join("sandboxes"),
            nodes: self.directory(),
        })
        .map_err(|error| error.to_string())?;
        Ok(Arc::new(provider))
    }
}

/// A node: a server whose API key is also its node token.
async fn start_node() -> (TestServer, String) {
    let mut token = String::new();
    let server = TestServer::start_with(|config| {
        token = cthulu_server::create_api_key(&config.home, Some("platform"))
            .expect("an API key for the platform");
        config.node_token = Some(token.clone());
    })
    .await;
    (server, token)
}

impl ConformanceTarget for RemoteTarget {
    fn name(&self) -> &'static str {
        "remote"
    }

    fn provider(&self) -> Result<Arc<dyn SandboxProvider>, String> {
        self.make_provider()
    }

    fn restarted_provider(&self) -> Result<Arc<dyn SandboxProvider>, String> {
        self.make_provider()
    }

    /// The isolation is the node's backend's, which its own suite checks.
    fn isolating(&self) -> bool {
        false
    }
}

cthulu_core::conformance_suite!(RemoteTarget::new());
