//! [`ServedPort`]: a listener task of one VM (its web terminal or its SSH) and the means
//! to stop it, shared by both kinds.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::watch;

/// How long [`ServedPort::stop`] waits for the listener and its sessions to end.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A task serving `address` until told to stop; dropping it tells it too.
#[derive(Debug)]
pub struct ServedPort {
    address: SocketAddr,
    /// Its receivers (the listener and every session) end when this says so or is gone.
    stop: watch::Sender<()>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// What is served, for the log (`a terminal`, `an ssh`).
    what: &'static str,
}

impl ServedPort {
    pub fn new(
        address: SocketAddr,
        stop: watch::Sender<()>,
        task: tokio::task::JoinHandle<()>,
        what: &'static str,
    ) -> ServedPort {
        ServedPort {
            address,
            stop,
            task: Some(task),
            what,
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Stops serving and returns once the port is free again (a new node or VM can bind
    /// it) and the sessions have ended.
    pub async fn stop(mut self) {
        let _ = self.stop.send(());
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(STOP_TIMEOUT, &mut task).await.is_err() {
                tracing::warn!(address = %self.address, "{} listener did not stop within {STOP_TIMEOUT:?}", self.what);
                task.abort();
            }
        }
    }
}

impl Drop for ServedPort {
    fn drop(&mut self) {
        // Wakes the listener and every session; they see the sender gone and end.
        let _ = self.stop.send(());
    }
}
