//! The conformance suite of `cthulu_core::conformance` against the remote backend: every
//! scenario runs on a provider whose one registered node is a real server (the test
//! support's `TestServer`, with an API key so that auth is on), started in the test's own
//! runtime. The node runs its default backend (namespace where it can, host otherwise);
//! the scenarios see only the remote provider, and the isolation scenarios run when the
//! node's backend isolates.

use std::sync::{Arc, Mutex, OnceLock};

use cthulu_core::conformance::ConformanceTarget;
use cthulu_core::SandboxProvider;
use cthulu_remote::{Node, NodeDirectory, RemoteConfig, RemoteProvider};
use cthulu_test_support::TestServer;

struct RemoteTarget {
    state: tempfile::TempDir,
    node: Mutex<Option<TestServer>>,
    /// The node's directory, and whether the node's default backend isolates.
    directory: OnceLock<(Arc<NodeDirectory>, bool)>,
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
    fn node(&self) -> &(Arc<NodeDirectory>, bool) {
        self.directory.get_or_init(|| {
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(async {
                    let (server, token) = start_node().await;
                    let node = Node {
                        name: "node1".into(),
                        url: server.url().to_owned(),
                        token,
                    };
                    let info = cthulu_remote::probe(&node).await.expect("the node answers");
                    let isolating = info.backends.iter().any(|backend| {
                        backend.kind == info.default_backend && backend.capabilities.isolation
                    });
                    *self.node.lock().unwrap() = Some(server);
                    (Arc::new(NodeDirectory::new([node])), isolating)
                })
            })
        })
    }

    fn directory(&self) -> Arc<NodeDirectory> {
        self.node().0.clone()
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
        config.access_token = Some(cthulu_server::AccessToken::new(token.clone()));
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

    /// The node's default backend's: the isolation scenarios then check that limits and
    /// network settings pass through the platform to the node.
    fn isolating(&self) -> bool {
        self.node().1
    }
}

cthulu_core::conformance_suite!(RemoteTarget::new());
