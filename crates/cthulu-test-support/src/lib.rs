//! Test helpers shared by the integration tests: [`TestServer`] starts the real server on
//! a loopback port with its own `$CTHULU_HOME`, and can restart it on the same home.

use std::path::{Path, PathBuf};

use cthulu_host::ShimCommand;
use cthulu_server::{Server, ServerConfig};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The host backend's shim binary, built by cargo next to the test binaries.
pub fn shim_command() -> ShimCommand {
    let program = target_dir().join("cthulu-shim");
    assert!(
        program.exists(),
        "{} is missing: build it with `cargo build -p cthulu-host --bin cthulu-shim` (cargo nextest run --workspace builds it)",
        program.display()
    );
    ShimCommand {
        program,
        args: Vec::new(),
    }
}

/// The namespace backend's init as tests run it: the `cthulu-ns-init` binary next to the
/// test binary's directory.
pub fn namespace_init_command() -> cthulu_namespace::InitCommand {
    let program = target_dir().join("cthulu-ns-init");
    assert!(
        program.exists(),
        "{} is missing: build it with `cargo build -p cthulu-namespace --bin cthulu-ns-init` (cargo nextest run --workspace builds it)",
        program.display()
    );
    cthulu_namespace::InitCommand {
        program,
        args: Vec::new(),
    }
}

/// The namespace backend's process shim as tests run it: the `cthulu-ns-shim` binary next
/// to the test binary's directory.
pub fn namespace_shim_command() -> ShimCommand {
    let program = target_dir().join("cthulu-ns-shim");
    assert!(
        program.exists(),
        "{} is missing: build it with `cargo build -p cthulu-namespace --bin cthulu-ns-shim` (cargo nextest run --workspace builds it)",
        program.display()
    );
    ShimCommand {
        program,
        args: Vec::new(),
    }
}

/// The stand-in agent of cthulu-runs, built by cargo next to the test binaries.
pub fn fake_agent() -> PathBuf {
    let program = target_dir().join("cthulu-fake-agent");
    assert!(
        program.exists(),
        "{} is missing: build it with `cargo build -p cthulu-runs --bins` (cargo nextest run --workspace builds it)",
        program.display()
    );
    program
}

/// The recorded transcripts of cthulu-runs' tests.
pub fn transcripts_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../cthulu-runs/tests/transcripts")
}

/// `target/debug` (or the profile's directory) of the running test binary.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    // target/debug/deps/<test>-<hash> → target/debug
    let deps = exe.parent().expect("the test binary is in a directory");
    if deps.ends_with("deps") {
        deps.parent().expect("deps has a parent").to_owned()
    } else {
        deps.to_owned()
    }
}

/// A real server on 127.0.0.1 with a private home, stopped when dropped.
pub struct TestServer {
    home: TempDir,
    url: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        let home = tempfile::Builder::new()
            .prefix("cthulu-test-")
            .tempdir()
            .expect("a temporary home");
        TestServer::start_in(home).await
    }

    /// A server with its configuration changed by `configure` (which may also prepare
    /// the home it names, e.g. create an API key there).
    pub async fn start_with(configure: impl FnOnce(&mut ServerConfig)) -> TestServer {
        let home = tempfile::Builder::new()
            .prefix("cthulu-test-")
            .tempdir()
            .expect("a temporary home");
        TestServer::start_in_configured(home, configure).await
    }

    /// A server that knows the agent definitions `agents` (a JSON array) besides the
    /// built-in ones: they are written to `<home>/agents.json` before it starts.
    pub async fn start_with_agents(agents: &serde_json::Value) -> TestServer {
        TestServer::start_configured(agents, |_| {}).await
    }

    /// [`TestServer::start_with_agents`], with the configuration changed by `configure`.
    pub async fn start_configured(
        agents: &serde_json::Value,
        configure: impl FnOnce(&mut ServerConfig),
    ) -> TestServer {
        let home = tempfile::Builder::new()
            .prefix("cthulu-test-")
            .tempdir()
            .expect("a temporary home");
        std::fs::write(
            home.path().join("agents.json"),
            serde_json::to_vec_pretty(agents).expect("agents serialize"),
        )
        .expect("write agents.json");
        TestServer::start_in_configured(home, configure).await
    }

    async fn start_in(home: TempDir) -> TestServer {
        TestServer::start_in_configured(home, |_| {}).await
    }

    async fn start_in_configured(
        home: TempDir,
        configure: impl FnOnce(&mut ServerConfig),
    ) -> TestServer {
        let mut config = ServerConfig {
            home: home.path().to_owned(),
            listen: "127.0.0.1:0".parse().expect("a loopback address"),
            default_backend: None,
            host_shim: shim_command(),
            namespace_init: Some(namespace_init_command()),
            namespace_shim: namespace_shim_command(),
            // None: a test server is dropped without a graceful stop (the namespace crate
            // tests the warm pool).
            warm_sandboxes: 0,
            images: std::env::var_os("CTHULU_TEST_IMAGES").map(PathBuf::from),
            vm_templates: std::env::var_os("CTHULU_TEST_IMAGES")
                .map(|images| PathBuf::from(images).join(".templates")),
            warm_vms: 0,
            // Agents come from `<home>/agents.json` ([`TestServer::start_with_agents`]).
            runs: cthulu_server::RunsConfig::default(),
            access_token: None,
            max_sandboxes: None,
        };
        configure(&mut config);
        let server = Server::start(config).await.expect("the server starts");
        let url = format!("http://{}", server.local_addr());
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run_until(async move {
                    let _ = stopped.await;
                })
                .await
                .expect("the server runs");
        });
        TestServer {
            home,
            url,
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `url` + `path`.
    pub fn api(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// Stops the server gracefully and starts a new one on the same home (a new port).
    pub async fn restart(mut self) -> TestServer {
        self.stop().await;
        let home = std::mem::replace(
            &mut self.home,
            tempfile::tempdir().expect("a placeholder directory"),
        );
        TestServer::start_in(home).await
    }

    /// Stops the server (if it still runs) and starts a new one on the same home and the
    /// same address, configured by `configure`: a node that went away and came back.
    pub async fn restart_in_place(
        mut self,
        configure: impl FnOnce(&mut ServerConfig),
    ) -> TestServer {
        self.stop().await;
        let home = std::mem::replace(
            &mut self.home,
            tempfile::tempdir().expect("a placeholder directory"),
        );
        let address = self
            .url
            .trim_start_matches("http://")
            .parse()
            .expect("the server's URL is http://<address>");
        TestServer::start_in_configured(home, move |config| {
            config.listen = address;
            configure(config);
        })
        .await
    }

    pub async fn stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}
