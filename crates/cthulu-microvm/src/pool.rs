//! Warm VMs: clones of the default template started ahead of demand, their agent
//! connected and the guest's first commands already run (under TCG the first run of any
//! code path is translated, and that is most of a cold clone's first exec). A create of
//! the default shape takes one instead of starting QEMU, then the pool refills in the
//! background.
//!
//! A warm VM lives in `<root>/vms/<id>/`; a sandbox that takes one records that
//! directory in its state. A VM directory no sandbox records belongs to a spare of a
//! server that stopped without cleaning up (a crash): the next server removes it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cthulu_core::ExecSpec;

use crate::client::GuestClient;
use crate::provider::{ImageResolver, DEFAULT_MEMORY_MIB, DEFAULT_VCPUS};
use crate::qemu;
use crate::sandbox::{machine_of, prepare_disk};
use crate::state::VmState;
use crate::template::{TemplateKey, Templates};
use crate::vm::{Hypervisor, Vm, VmError};

/// A started clone of the default template, waiting for a sandbox.
pub(crate) struct Spare {
    pub vm: Vm,
    pub client: GuestClient,
    pub template: String,
}

pub(crate) struct Pool {
    target: usize,
    hypervisor: Option<Arc<Hypervisor>>,
    templates: Arc<Templates>,
    images: ImageResolver,
    /// `<root>/vms`.
    vms: PathBuf,
    /// `<root>/sandboxes`, to tell whose VM directories are whose.
    sandboxes: PathBuf,
    spares: Mutex<Vec<Spare>>,
    refilling: AtomicBool,
    swept: AtomicBool,
    draining: AtomicBool,
}

impl Pool {
    pub fn new(
        target: usize,
        hypervisor: Option<Arc<Hypervisor>>,
        templates: Arc<Templates>,
        images: ImageResolver,
        root: &Path,
    ) -> Pool {
        Pool {
            target,
            hypervisor,
            templates,
            images,
            vms: root.join("vms"),
            sandboxes: root.join("sandboxes"),
            spares: Mutex::new(Vec::new()),
            refilling: AtomicBool::new(false),
            swept: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        }
    }

    fn spares(&self) -> std::sync::MutexGuard<'_, Vec<Spare>> {
        self.spares
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn ready(&self) -> usize {
        self.spares().len()
    }

    /// A warm VM of `template` (whose agent still answers), if there is one.
    pub fn take(&self, template: &str) -> Option<Spare> {
        let mut spares = self.spares();
        while let Some(index) = spares.iter().position(|spare| spare.template == template) {
            let spare = spares.swap_remove(index);
            if !spare.client.is_closed() && spare.vm.is_running() {
                return Some(spare);
            }
            let vm = spare.vm;
            tokio::spawn(async move { discard(&vm).await });
        }
        None
    }

    /// Starts making spares up to the target, in the background.
    pub fn refill(self: &Arc<Self>) {
        if self.target == 0
            || self.hypervisor.is_none()
            || self.draining.load(Ordering::SeqCst)
            || self.refilling.swap(true, Ordering::SeqCst)
        {
            return;
        }
        let pool = self.clone();
        tokio::spawn(async move {
            if !pool.swept.swap(true, Ordering::SeqCst) {
                pool.sweep().await;
            }
            while pool.spares().len() < pool.target && !pool.draining.load(Ordering::SeqCst) {
                match pool.make().await {
                    Ok(spare) => {
                        if pool.draining.load(Ordering::SeqCst) {
                            discard(&spare.vm).await;
                            break;
                        }
                        pool.spares().push(spare);
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot make a warm VM; creates start their own");
                        break;
                    }
                }
            }
            pool.refilling.store(false, Ordering::SeqCst);
        });
    }

    async fn make(&self) -> Result<Spare, VmError> {
        let hypervisor = self.hypervisor.as_ref().expect("checked by refill");
        let image = (self.images)(None).map_err(VmError::Launch)?;
        let key = TemplateKey {
            image_version: image.version.clone(),
            memory_mib: DEFAULT_MEMORY_MIB,
            vcpus: DEFAULT_VCPUS,
            network: false,
        };
        let template = self.templates.get(hypervisor, &image, &key).await?;
        let dir = self.vms.join(format!("spare-{}", crate::random_hex(8)));
        fs_err::create_dir_all(&dir)?;
        let made = async {
            let disk = prepare_disk(hypervisor, &template.dir, &dir, None).await?;
            let machine = machine_of(
                &dir,
                &template.dir,
                DEFAULT_MEMORY_MIB,
                DEFAULT_VCPUS,
                false,
                disk,
            );
            let (vm, _control, client) = hypervisor
                .resume(&machine, &template.state, &template.ram)
                .await?;
            // Run what a first create runs, so its code is translated already.
            let mut warm_up = ExecSpec::shell("true");
            warm_up.timeout = std::time::Duration::from_secs(30);
            let _ = crate::guest::exec(&client, warm_up, "warm-up-1").await;
            let _ = crate::guest::exec(&client, ExecSpec::argv(["true"]), "warm-up-2").await;
            Ok::<_, VmError>(Spare {
                vm,
                client,
                template: template.name.clone(),
            })
        }
        .await;
        if made.is_err() {
            let _ = fs_err::remove_dir_all(&dir);
        }
        made
    }

    /// Destroys every spare (a stopping server), and makes no more.
    pub async fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        let spares: Vec<Spare> = std::mem::take(&mut *self.spares());
        for spare in spares {
            discard(&spare.vm).await;
        }
    }

    /// Removes VM directories no sandbox records (spares of a server that crashed).
    async fn sweep(&self) {
        let Ok(entries) = fs_err::read_dir(&self.vms) else {
            return;
        };
        let recorded: Vec<PathBuf> = fs_err::read_dir(&self.sandboxes)
            .map(|entries| {
                entries
                    .filter_map(|entry| VmState::load(&entry.ok()?.path()).ok()?.vm_dir)
                    .collect()
            })
            .unwrap_or_default();
        let live: Vec<PathBuf> = self
            .spares()
            .iter()
            .map(|spare| spare.vm.dir.clone())
            .collect();
        for entry in entries.flatten() {
            let dir = entry.path();
            if recorded.contains(&dir) || live.contains(&dir) {
                continue;
            }
            tracing::info!(dir = %dir.display(), "removing a warm VM a crashed server left");
            if let Some(pid) = qemu::read_pid(&dir) {
                qemu::kill(pid, &dir).await;
            }
            let _ = fs_err::remove_dir_all(&dir);
        }
    }
}

/// Kills a spare's QEMU and removes its directory.
async fn discard(vm: &Vm) {
    vm.kill().await;
    let _ = fs_err::remove_dir_all(&vm.dir);
}
