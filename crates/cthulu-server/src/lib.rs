//! `cthulu serve`: the control plane. (Being written; the public entry points below are
//! the stable shape the CLI and tests build on.)

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use cthulu_types::BackendKind;

/// How to start the server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// State directory (`$CTHULU_HOME`, default `~/.cthulu`).
    pub home: PathBuf,
    /// Where to listen; loopback by default.
    pub listen: SocketAddr,
    /// Backend used when a create request names none.
    pub default_backend: Option<BackendKind>,
    /// How the host backend starts its process shim (`cthulu __shim` in production).
    pub host_shim: cthulu_host::ShimCommand,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {address}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A bound server, not yet serving.
pub struct Server {
    local_addr: SocketAddr,
}

impl Server {
    /// Opens the database, re-attaches to existing sandboxes and binds the listener.
    pub async fn start(config: ServerConfig) -> Result<Server, ServerError> {
        let _ = config;
        unimplemented!("server being written")
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` completes, then drains connections.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let _ = shutdown;
        unimplemented!("server being written")
    }
}

/// Creates an API key in the database under `home` and returns it (shown once).
pub fn create_api_key(home: &Path, name: Option<&str>) -> Result<String, ServerError> {
    let _ = (home, name);
    unimplemented!("server being written")
}
