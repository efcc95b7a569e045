//! Starting, serving and stopping the server.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cthulu_core::SandboxProvider;
use cthulu_host::{HostConfig, HostProvider};
use cthulu_namespace::{NamespaceConfig, NamespaceProvider};
use cthulu_types::BackendKind;

use crate::db::{Database, DbError};
use crate::state::AppState;

/// How often sandboxes past their lifetime are looked for.
const REAPER_PERIOD: Duration = Duration::from_secs(1);
/// How long shutdown waits for open connections (streams) before it stops anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Warm namespace sandboxes a server keeps unless told otherwise.
pub const DEFAULT_WARM_SANDBOXES: usize = 2;
/// Warm microVMs a server keeps unless told otherwise (each holds about 100 MiB).
pub const DEFAULT_WARM_VMS: usize = 1;

/// How to start the server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// State directory (`$CTHULU_HOME`, default `~/.cthulu`).
    pub home: PathBuf,
    /// Where to listen; loopback by default.
    pub listen: SocketAddr,
    /// Backend used when a create request names none; `None`: namespace where it can run,
    /// host otherwise.
    pub default_backend: Option<BackendKind>,
    /// How the host backend starts its process shim (`cthulu __shim` in production).
    pub host_shim: cthulu_host::ShimCommand,
    /// How the namespace backend starts a sandbox's init (`cthulu __ns-init` in
    /// production); `None` leaves the backend out of this server.
    pub namespace_init: Option<cthulu_namespace::InitCommand>,
    /// Namespace sandboxes kept made ahead of demand, so that a create asking for no
    /// limits, network or image is a claim rather than a start.
    pub warm_sandboxes: usize,
    /// How the namespace backend starts the shim of a streamed process (`cthulu
    /// __ns-shim` in production); used only with `namespace_init`.
    pub namespace_shim: cthulu_host::ShimCommand,
    /// Where microVM images are (`cthulu image build` writes `$CTHULU_HOME/images`);
    /// `None`: that default.
    pub images: Option<PathBuf>,
    /// Where VM templates are kept; `None`: `$CTHULU_HOME/qemu-templates`.
    pub vm_templates: Option<PathBuf>,
    /// MicroVMs of the default shape kept started ahead of demand.
    pub warm_vms: usize,
    /// Agent runs: limits and the agents file.
    pub runs: crate::runs::RunsConfig,
    /// The one bearer token of every route, in place of API keys (`cthulu node`); `None`:
    /// API keys, once one exists.
    pub access_token: Option<crate::AccessToken>,
    /// The most sandboxes held at once (a node's `--max-vms`); `None`: no limit.
    pub max_sandboxes: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot create the state directory {path}")]
    Home {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Database(#[from] DbError),
    #[error("cannot start the host backend")]
    HostBackend(#[source] cthulu_host::HostError),
    #[error("cannot start the namespace backend")]
    NamespaceBackend(#[source] cthulu_namespace::NamespaceError),
    #[error("the default backend {backend} is not available here: {reason}")]
    DefaultBackend {
        backend: BackendKind,
        reason: String,
    },
    #[error("cannot start the remote backend")]
    RemoteBackend(#[source] cthulu_core::SandboxError),
    #[error("cannot read or create the terminal key in {path}")]
    TerminalKey {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot re-attach to the sandboxes of {path}: {message}")]
    Reattach { path: PathBuf, message: String },
    #[error("cannot listen on {address}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Agents(#[from] crate::runs::RunsConfigError),
    #[error("serving failed")]
    Serve(#[source] std::io::Error),
}

/// A bound server, not yet serving.
pub struct Server {
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    local_addr: SocketAddr,
    /// Routes served beside the API, behind the same authentication ([`Server::with_routes`]).
    extra_routes: axum::Router,
}

fn database_path(home: &Path) -> PathBuf {
    home.join("cthulu.db")
}

fn open_database(home: &Path) -> Result<Database, ServerError> {
    fs_err::create_dir_all(home).map_err(|source| ServerError::Home {
        path: home.to_owned(),
        source,
    })?;
    Ok(Database::open(&database_path(home))?)
}

impl Server {
    /// Opens the database, re-attaches to existing sandboxes and binds the listener.
    pub async fn start(mut config: ServerConfig) -> Result<Server, ServerError> {
        let db = open_database(&config.home)?;
        // Backends keep absolute paths in their state, so a relative home is resolved once.
        config.home = std::path::absolute(&config.home).map_err(|source| ServerError::Home {
            path: config.home.clone(),
            source,
        })?;
        let mut providers: BTreeMap<BackendKind, Arc<dyn SandboxProvider>> = BTreeMap::new();
        let host = HostProvider::new(HostConfig {
            root: config.home.join("sandboxes").join("host"),
            shim: config.host_shim.clone(),
        })
        .map_err(ServerError::HostBackend)?;
        providers.insert(BackendKind::Host, Arc::new(host));
        if let Some(init) = &config.namespace_init {
            // Inserted even where namespaces are unavailable: its info says why.
            let namespace = NamespaceProvider::new(NamespaceConfig {
                root: config.home.join("sandboxes").join("namespace"),
                init: init.clone(),
                shim: config.namespace_shim.clone(),
            })
            .map_err(ServerError::NamespaceBackend)?
            .with_warm_sandboxes(config.warm_sandboxes);
            providers.insert(BackendKind::Namespace, Arc::new(namespace));
        }

        // Inserted even where QEMU or an image is missing: its info says what to install
        // or build.
        let images = config
            .images
            .clone()
            .unwrap_or_else(|| config.home.join("images"));
        let qemu = cthulu_microvm::QemuProvider::new(cthulu_microvm::QemuConfig {
            root: config.home.join("sandboxes").join("qemu"),
            templates: Some(
                config
                    .vm_templates
                    .clone()
                    .unwrap_or_else(|| config.home.join("qemu-templates")),
            ),
            binary: None,
            images: cthulu_microvm::image_resolver(images.clone()),
        })
        .with_warm_vms(config.warm_vms);
        providers.insert(BackendKind::Qemu, Arc::new(qemu));
        // Firecracker: the same microVMs through its API, where a binary and hardware KVM
        // exist; otherwise its info says which is missing.
        let firecracker = cthulu_microvm::QemuProvider::firecracker(cthulu_microvm::QemuConfig {
            root: config.home.join("sandboxes").join("firecracker"),
            templates: Some(config.home.join("firecracker-templates")),
            binary: None,
            images: cthulu_microvm::image_resolver(images),
        });
        providers.insert(BackendKind::Firecracker, Arc::new(firecracker));

        // Nodes are not called here: one that is down must not stop the server.
        let nodes = db.list_nodes()?.into_iter().map(|record| record.node);
        let remote = Arc::new(
            cthulu_remote::RemoteProvider::new(cthulu_remote::RemoteConfig {
                root: config.home.join("sandboxes").join("remote"),
                nodes: Arc::new(cthulu_remote::NodeDirectory::new(nodes)),
            })
            .map_err(ServerError::RemoteBackend)?,
        );
        providers.insert(BackendKind::Remote, remote.clone());
        let terminal_key = crate::terminal::TerminalKey::for_server(
            config.access_token.as_ref().map(crate::AccessToken::expose),
            &config.home,
        )
        .map_err(|source| ServerError::TerminalKey {
            path: config.home.clone(),
            source,
        })?;

        let default_backend = config
            .default_backend
            .unwrap_or_else(|| automatic_default(&providers));
        match providers
            .get(&default_backend)
            .map(|provider| provider.info())
        {
            Some(info) if info.available => {}
            Some(info) => {
                return Err(ServerError::DefaultBackend {
                    backend: default_backend,
                    reason: info.unavailable_reason.unwrap_or_default(),
                })
            }
            None => {
                return Err(ServerError::DefaultBackend {
                    backend: default_backend,
                    reason: "not built into this server".into(),
                })
            }
        }

        let agents = crate::runs::load_agents(&config.runs, &config.home)?;
        let runs =
            crate::runs::RunManager::new(config.runs.clone(), agents, config.home.join("runs"));
        let state = Arc::new(
            AppState::new(
                db,
                providers,
                default_backend,
                runs,
                remote.clone(),
                terminal_key,
            )
            .with_max_sandboxes(config.max_sandboxes)
            .with_access_token(config.access_token.clone()),
        );
        state
            .reattach_all()
            .await
            .map_err(|failure| ServerError::Reattach {
                path: database_path(&config.home),
                message: failure.message,
            })?;
        state
            .runs
            .recover(&state)
            .await
            .map_err(|failure| ServerError::Reattach {
                path: database_path(&config.home),
                message: failure.message,
            })?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServerError::Bind {
                address: config.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| ServerError::Bind {
            address: config.listen,
            source,
        })?;
        Ok(Server {
            state,
            listener,
            local_addr,
            extra_routes: axum::Router::new(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The server's state, for code that serves more than the API (a node's `/vms`).
    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Adds routes served beside the API and behind its authentication.
    pub fn with_routes(mut self, routes: axum::Router) -> Server {
        self.extra_routes = self.extra_routes.merge(routes);
        self
    }

    /// Serves until `shutdown` completes, then gives open connections a few seconds.
    /// Detached processes and every sandbox keep running; a restarted server finds them.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let reaper = self.state.spawn_reaper(REAPER_PERIOD);
        // What the nodes can do, for `GET /api/v1/info`; in the background, since a node
        // that does not answer takes seconds to say so.
        let remote = self.state.remote.clone();
        let node_refresh = tokio::spawn(async move { remote.refresh_nodes().await });
        let app = crate::routes::router(self.state.clone(), self.extra_routes);
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let serve = axum::serve(self.listener, app).with_graceful_shutdown(async move {
            shutdown.await;
            let _ = stopping_tx.send(());
        });
        let serve = tokio::spawn(async move { serve.await });
        tokio::pin!(serve);
        let outcome = tokio::select! {
            outcome = &mut serve => outcome,
            _ = async {
                let _ = stopping_rx.await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => {
                tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}; stopping anyway");
                serve.abort();
                Ok(Ok(()))
            }
        };
        reaper.abort();
        node_refresh.abort();
        self.state.runs.shutdown();
        for provider in self.state.providers.values() {
            provider.shutdown().await;
        }
        match outcome {
            Ok(result) => result.map_err(ServerError::Serve),
            Err(_) => Ok(()),
        }
    }
}

/// Creates an API key in the database under `home` and returns it (shown once).
pub fn create_api_key(home: &Path, name: Option<&str>) -> Result<String, ServerError> {
    Ok(open_database(home)?.create_api_key(name)?)
}

/// The default backend when none is configured: namespace where it can run (real
/// isolation, no daemon), the host backend otherwise, saying why.
fn automatic_default(providers: &BTreeMap<BackendKind, Arc<dyn SandboxProvider>>) -> BackendKind {
    match providers
        .get(&BackendKind::Namespace)
        .map(|provider| provider.info())
    {
        Some(info) if info.available => BackendKind::Namespace,
        Some(info) => {
            tracing::warn!(
                reason = info.unavailable_reason.as_deref().unwrap_or("unknown"),
                "the namespace backend cannot run here; the default backend is host (no isolation)"
            );
            BackendKind::Host
        }
        None => BackendKind::Host,
    }
}
