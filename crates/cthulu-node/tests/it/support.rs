//! [`TestNode`]: a real node on 127.0.0.1 with a private home, the namespace backend (or
//! another) and a web port range nobody else holds; and [`Api`], a JSON client.

use std::path::PathBuf;

use cthulu_node::{Node, NodeConfig, NodeError};
use cthulu_server::{AccessToken, ServerConfig, ServerError};
use cthulu_types::BackendKind;
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const TOKEN: &str = "node-test-token-4f1c9a";

/// What a test changes about a node.
#[derive(Clone)]
pub struct Options {
    pub backend: BackendKind,
    pub max_vms: usize,
    /// Serve SSH (keys: `<home>/authorized_keys`) on ports after the web ports.
    pub ssh: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            backend: BackendKind::Namespace,
            max_vms: 4,
            ssh: false,
        }
    }
}

pub struct TestNode {
    home: TempDir,
    options: Options,
    web_port_base: u16,
    pub url: String,
    pub api: Api,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// The assets tests serve: one small file, to see the route works.
pub fn test_assets(path: &str) -> Option<(&'static [u8], &'static str)> {
    match path {
        "vendor/xterm.js" => Some((b"window.Terminal = undefined;\n", "text/javascript")),
        _ => None,
    }
}

/// A base port whose next `count` ports are free now, below the kernel's ephemeral range
/// (32768 and up by default), where outgoing connections would take them meanwhile.
fn free_port_range(count: u16) -> u16 {
    use std::hash::{BuildHasher as _, Hasher as _};
    for attempt in 0..500u64 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(attempt);
        let base = 20_000 + (hasher.finish() % 12_000) as u16;
        let all_free = (base..base + count)
            .all(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no free range of {count} ports");
}

fn ssh_port_base(options: &Options, web_port_base: u16) -> Option<u16> {
    options
        .ssh
        .then_some(web_port_base + options.max_vms as u16 + 2)
}

impl TestNode {
    /// A node, or `None` after a SKIP line when its backend cannot run here.
    pub async fn start(options: Options) -> Option<TestNode> {
        let home = tempfile::Builder::new()
            .prefix("cthulu-node-test-")
            .tempdir()
            .expect("a temporary home");
        let ports = options.max_vms as u16 + 2;
        let web_port_base = free_port_range(ports * 2);
        TestNode::start_in(home, options, web_port_base).await
    }

    /// SSH ports follow the web ports (both ranges were free at start).
    pub fn ssh_port_base(&self) -> Option<u16> {
        ssh_port_base(&self.options, self.web_port_base)
    }

    async fn start_in(home: TempDir, options: Options, web_port_base: u16) -> Option<TestNode> {
        let images = std::env::var_os("CTHULU_TEST_IMAGES")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/cache/cthulu/images"));
        let config = NodeConfig {
            server: ServerConfig {
                home: home.path().to_owned(),
                listen: "127.0.0.1:0".parse().unwrap(),
                default_backend: None,
                host_shim: cthulu_test_support::shim_command(),
                namespace_init: Some(cthulu_test_support::namespace_init_command()),
                namespace_shim: cthulu_test_support::namespace_shim_command(),
                warm_sandboxes: 0,
                vm_templates: Some(images.join(".templates")),
                images: Some(images),
                warm_vms: 0,
                runs: cthulu_server::RunsConfig::default(),
                access_token: None,
                max_sandboxes: None,
            },
            token: AccessToken::new(TOKEN),
            backend: options.backend,
            max_vms: options.max_vms,
            public_host: None,
            web_port_base,
            terminal_assets: test_assets,
            ssh: ssh_port_base(&options, web_port_base).map(|port_base| {
                cthulu_node::ssh::SshConfig {
                    port_base,
                    authorized_keys: None,
                    // Short, so the silent-client test sees it end.
                    login_timeout: std::time::Duration::from_secs(2),
                }
            }),
        };
        let node = match Node::start(config).await {
            Ok(node) => node,
            Err(NodeError::Server(ServerError::DefaultBackend { backend, reason })) => {
                cthulu_core::conformance::report_skip(&format!("SKIP {backend}: {reason}"));
                return None;
            }
            Err(error) => panic!("the node starts: {error:?}"),
        };
        let url = format!("http://{}", node.local_addr());
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            node.run_until(async move {
                let _ = stopped.await;
            })
            .await
            .expect("the node runs");
        });
        Some(TestNode {
            home,
            options,
            web_port_base,
            api: Api::new(&url, Some(TOKEN)),
            url,
            shutdown: Some(shutdown),
            task: Some(task),
        })
    }

    pub fn home(&self) -> &std::path::Path {
        self.home.path()
    }

    pub fn web_port_base(&self) -> u16 {
        self.web_port_base
    }

    /// Stops the node and starts a new one on the same home and web ports.
    pub async fn restart(mut self) -> TestNode {
        self.stop().await;
        let home = std::mem::replace(&mut self.home, tempfile::tempdir().unwrap());
        TestNode::start_in(home, self.options.clone(), self.web_port_base)
            .await
            .expect("the backend ran before the restart")
    }

    pub async fn stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// The sandbox id of VM `vm_id`, from its label.
    pub async fn sandbox_of(&self, vm_id: u64) -> String {
        let (status, list) = self
            .api
            .get(&format!(
                "/api/v1/sandboxes?label=cthulu.node.vm_id={vm_id}"
            ))
            .await;
        assert_eq!(status, 200, "{list}");
        let sandboxes = list["sandboxes"].as_array().expect("sandboxes");
        assert_eq!(sandboxes.len(), 1, "{list}");
        sandboxes[0]["id"].as_str().unwrap().to_owned()
    }
}

impl Drop for TestNode {
    /// A test that failed half-way still leaves no sandbox behind: its VMs are deleted
    /// from another thread while the node (on the test's multi-threaded runtime) serves.
    fn drop(&mut self) {
        if self.shutdown.is_some() {
            let url = self.url.clone();
            let cleanup = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the cleanup");
                runtime.block_on(async move {
                    let api = Api::new(&url, Some(TOKEN));
                    let (_, list) = api.get("/vms").await;
                    if let Some(vms) = list["vms"].as_object() {
                        for vm_id in vms.keys() {
                            api.delete(&format!("/vms/{vm_id}")).await;
                        }
                    }
                });
            });
            let _ = cleanup.join();
        }
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// A JSON-over-HTTP client that returns statuses and bodies as they are.
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    pub fn new(base: &str, token: Option<&str>) -> Api {
        Api {
            http: reqwest::Client::new(),
            base: base.to_owned(),
            token: token.map(str::to_owned),
        }
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    pub async fn send(builder: reqwest::RequestBuilder) -> (u16, Value) {
        let response = builder.send().await.expect("the node answers");
        let status = response.status().as_u16();
        let bytes = response.bytes().await.expect("a body");
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        (status, value)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        Api::send(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        Api::send(self.request(reqwest::Method::DELETE, path)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        Api::send(self.request(reqwest::Method::POST, path).json(&body)).await
    }
}
