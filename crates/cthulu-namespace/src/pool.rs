//! Warm sandboxes: a few sandboxes made ahead of demand, each claimed whole by a create
//! that asks for nothing they were not made with (no limits, loopback network, the host's
//! system view).
//!
//! Why: most of a create is not ours to speed up. Init joins the sandbox's cgroups, and on
//! cgroup v1 every join waits for an RCU grace period (5–15 ms on our machines, against
//! about 1 ms with `/sys/kernel/rcu_expedited`), then builds the namespaces and mounts. A
//! spare has done all of that; claiming it renames its directory to the sandbox's id
//! (`renameat2` `RENAME_NOREPLACE`, so an existing sandbox is never replaced), gives it
//! its hostname through init, and writes its `state.json`: well under a millisecond.
//!
//! Spares live in `<root>/.spare-<id>/` (not a sandbox id, so `list` never shows them)
//! with a `state.json` of their own. A server that stops destroys its spares
//! ([`SandboxProvider::shutdown`](cthulu_core::SandboxProvider::shutdown)); one that starts
//! destroys whatever spares the one before left (it crashed) before it makes new ones. A spare whose init died is
//! destroyed instead of claimed. The pool refills in the background after each claim.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cthulu_core::{SandboxError, SandboxSpec};
use cthulu_types::{NetworkMode, Resources, SandboxId};

use crate::launch::{ask, kill_init, remove_dir};
use crate::maker::Maker;
use crate::protocol::Request;
use crate::state::{SandboxState, STATE_FILE};

/// Directory names of spares start with this.
pub(crate) const SPARE_PREFIX: &str = ".spare-";

pub(crate) struct Pool {
    /// How many spares to keep ready.
    size: usize,
    maker: Arc<Maker>,
    spares: Mutex<Vec<Spare>>,
    /// Set while a task refills the pool (one at a time).
    filling: AtomicBool,
    /// Set by [`Pool::drain`]: no more spares are made.
    closed: AtomicBool,
    /// Set once the spares of an earlier server were looked for (by the first refill,
    /// before this pool has any spare of its own: a later sweep could take a spare being
    /// claimed for a leftover).
    swept: AtomicBool,
}

struct Spare {
    dir: PathBuf,
    state: SandboxState,
}

impl Pool {
    pub fn new(size: usize, maker: Arc<Maker>) -> Arc<Pool> {
        Arc::new(Pool {
            size,
            maker,
            spares: Mutex::new(Vec::new()),
            filling: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            swept: AtomicBool::new(false),
        })
    }

    /// Whether a spare can be this sandbox: it asks for nothing spares are not made with.
    pub fn fits(spec: &SandboxSpec) -> bool {
        spec.resources == Resources::default()
            && spec.network == NetworkMode::None
            && spec.image.is_none()
    }

    fn take(&self) -> Option<Spare> {
        self.spares
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop()
    }

    fn len(&self) -> usize {
        self.spares
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }

    /// A spare made into sandbox `sandbox_id` at `dir` (which must not exist), with `spec`'s
    /// env; `None` when no spare is ready (the caller makes the sandbox the slow way).
    /// Starts a refill either way.
    pub async fn claim(
        self: &Arc<Self>,
        sandbox_id: &SandboxId,
        dir: &Path,
        spec: &SandboxSpec,
    ) -> Result<Option<SandboxState>, SandboxError> {
        self.refill();
        while let Some(spare) = self.take() {
            if !spare.state.init.is_alive() {
                discard(spare.dir, spare.state).await;
                continue;
            }
            rustix::fs::renameat_with(
                rustix::fs::CWD,
                &spare.dir,
                rustix::fs::CWD,
                dir,
                rustix::fs::RenameFlags::NOREPLACE,
            )
            .map_err(|errno| match errno {
                rustix::io::Errno::EXIST => SandboxError::AlreadyExists {
                    path: dir.display().to_string(),
                },
                errno => SandboxError::io("rename a warm sandbox to", dir, errno.into()),
            })
            .inspect_err(|_| self.put_back(spare.dir.clone(), spare.state.clone()))?;
            let mut state = spare.state;
            state.sandbox_id = sandbox_id.clone();
            state.env = spec.env.clone();
            state.created_at_ms = cthulu_types::now_ms();
            let named = set_hostname(dir, crate::maker::hostname(sandbox_id)).await;
            let saved = named.and_then(|()| {
                state
                    .save(dir)
                    .map_err(|error| SandboxError::io("write", dir.join(STATE_FILE), error))
            });
            return match saved {
                Ok(()) => Ok(Some(state)),
                Err(error) => {
                    discard(dir.to_owned(), state).await;
                    Err(error)
                }
            };
        }
        Ok(None)
    }

    /// Destroys every spare held (the server stops). Spares a refill makes meanwhile are
    /// destroyed by the next server.
    pub async fn drain(&self) {
        self.closed.store(true, Ordering::SeqCst);
        // A refill stops after the spare it is making (a create takes well under this).
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        while self.filling.load(Ordering::SeqCst) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        while let Some(spare) = self.take() {
            discard(spare.dir, spare.state).await;
        }
    }

    fn put_back(&self, dir: PathBuf, state: SandboxState) {
        self.spares
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(Spare { dir, state });
    }

    /// Makes spares in the background until there are `size` of them (the first time,
    /// after destroying those a previous server left).
    pub fn refill(self: &Arc<Self>) {
        if self.size == 0
            || self.closed.load(Ordering::SeqCst)
            || self.filling.swap(true, Ordering::SeqCst)
        {
            return;
        }
        let pool = self.clone();
        tokio::spawn(async move {
            if !pool.swept.swap(true, Ordering::SeqCst) {
                pool.destroy_leftovers().await;
            }
            while pool.len() < pool.size && !pool.closed.load(Ordering::SeqCst) {
                let spare_id = SandboxId::generate();
                let dir = pool
                    .maker
                    .root()
                    .join(format!("{SPARE_PREFIX}{}", spare_id.as_str()));
                match pool
                    .maker
                    .provision_in(&spare_id, &dir, &SandboxSpec::default(), None)
                    .await
                {
                    Ok(state) => pool.put_back(dir, state),
                    Err(error) => {
                        // No warm sandboxes then: creates take the slow way, and say why
                        // if it fails for them too.
                        tracing::warn!(%error, "cannot make a warm namespace sandbox");
                        break;
                    }
                }
            }
            pool.filling.store(false, Ordering::SeqCst);
        });
    }

    /// Destroys the spares found on disk (left by a server that did not stop gracefully).
    /// Only before this pool made any.
    async fn destroy_leftovers(&self) {
        let Ok(entries) = std::fs::read_dir(self.maker.root()) else {
            return;
        };
        for entry in entries.flatten() {
            let dir = entry.path();
            let is_spare = entry
                .file_name()
                .to_str()
                .is_some_and(|name| name.starts_with(SPARE_PREFIX));
            if !is_spare {
                continue;
            }
            match SandboxState::load(&dir) {
                Ok(state) => discard(dir, state).await,
                // Made halfway when its server stopped: nothing runs from it but maybe init.
                Err(_) => {
                    if let Err(error) = remove_dir(&dir).await {
                        tracing::warn!(dir = %dir.display(), %error, "cannot remove a leftover warm sandbox");
                    }
                }
            }
        }
    }
}

impl Drop for Pool {
    /// A pool dropped without [`Pool::drain`] (a server that did not stop gracefully, a
    /// test) must not leave spare sandboxes running: their inits are killed, which ends
    /// everything in them; their directories and cgroups go at the next start.
    fn drop(&mut self) {
        let spares = self
            .spares
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for spare in spares.drain(..) {
            if spare.state.init.is_alive() {
                if let Some(pid) = rustix::process::Pid::from_raw(spare.state.init.pid) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
        }
    }
}

/// Destroys a spare: its init (and so everything in it), its cgroups, its directory.
async fn discard(dir: PathBuf, state: SandboxState) {
    let result = async {
        kill_init(state.init).await?;
        state.cgroups.remove().await?;
        remove_dir(&dir).await
    }
    .await;
    if let Err(error) = result {
        tracing::warn!(dir = %dir.display(), %error, "cannot destroy a warm sandbox");
    }
}

/// Asks the init of the sandbox at `dir` to set its hostname.
async fn set_hostname(dir: &Path, name: &str) -> Result<(), SandboxError> {
    let request = Request::SetHostname {
        name: name.to_owned(),
    };
    ask(
        &dir.join(crate::init::SOCKET_FILE),
        request,
        "name the sandbox",
    )
    .await
}
