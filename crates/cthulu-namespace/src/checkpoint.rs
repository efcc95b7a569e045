//! Filesystem checkpoints of a namespace sandbox: one gzipped tar of its writable state
//! (`workspace/`, `root/` and the overlays' upper directories `layer/upper/`) in
//! `checkpoints/<checkpoint_id>.tar.gz`, written and restored by
//! [`cthulu_host::archive`] (whiteouts, overlay attributes and owners included), listed
//! in state.json. Processes are not saved: a memory checkpoint is `Unsupported`.
//!
//! A running sandbox is frozen while its archive is written (where it has a freezer), so
//! the archive is one moment of it. Restore may not change an upper directory under a
//! live overlay, so it ends the sandbox's processes with its init (whose mount namespace
//! holds the overlays), empties and refills the directories, and starts a new init on
//! them: the sandbox keeps its id, env, limits (its cgroups), status and directory; its
//! processes are gone, as after a reboot.

use std::path::Path;
use std::sync::atomic::Ordering;

use cthulu_core::SandboxError;
use cthulu_host::archive::{
    restore_archive, write_archive, ArchiveOptions, OwnerRange, RestoreOptions, Tree,
};
use cthulu_host::checkpoint::{
    archive_path, check_name, filesystem_checkpoint, memory_unsupported, new_checkpoint_id,
    position, remove_archive,
};
use cthulu_host::files::blocking;
use cthulu_types::sandbox::Operation;
use cthulu_types::{BackendKind, Checkpoint, CheckpointRequest, SandboxStatus};

use crate::launch::{kill_init, start_init};
use crate::sandbox::NamespaceSandbox;
use crate::state::{InitProcess, ROOT_DIR, UPPER_DIR, WORKSPACE_DIR};

/// The directories a checkpoint holds, by their names in the archive.
fn trees(dir: &Path) -> [(&'static str, std::path::PathBuf); 3] {
    [
        ("workspace", dir.join(WORKSPACE_DIR)),
        ("root", dir.join(ROOT_DIR)),
        ("upper", dir.join(UPPER_DIR)),
    ]
}

impl NamespaceSandbox {
    pub(crate) async fn create_checkpoint(
        &self,
        request: CheckpointRequest,
    ) -> Result<Checkpoint, SandboxError> {
        if request.memory {
            return Err(memory_unsupported(
                BackendKind::Namespace,
                "the namespace backend saves the sandbox's files only (its processes cannot \
                 be saved without CRIU)",
            ));
        }
        let _serial = self.destroying.lock().await;
        let status = {
            let state = self.lock();
            state.status.check(Operation::Checkpoint)?;
            check_name(&state.checkpoints, request.name.as_deref())?;
            state.status
        };
        if let Some(gone) = self.init_gone() {
            return Err(gone);
        }
        let checkpoint_id = new_checkpoint_id();
        let archive = archive_path(&self.dir, &checkpoint_id);
        let freeze = status == SandboxStatus::Running && self.cgroups.freezer.is_some();
        if freeze {
            self.cgroups.freeze(true).await?;
        }
        let written = {
            let (dir, archive) = (self.dir.clone(), archive.clone());
            blocking("checkpoint", move || {
                let parent = archive.parent().expect("archives are in a directory");
                fs_err::create_dir_all(parent)
                    .map_err(|error| SandboxError::io("create", parent, error))?;
                let trees = trees(&dir);
                let trees = trees.each_ref().map(|(name, path)| Tree { name, path });
                write_archive(&trees, &archive, ArchiveOptions { overlay: true })
                    .map_err(|error| SandboxError::io("write the checkpoint", &archive, error))
            })
            .await
        };
        let thawed = if freeze {
            self.cgroups.freeze(false).await
        } else {
            Ok(())
        };
        let size = written?;
        thawed?;
        let checkpoint = filesystem_checkpoint(checkpoint_id, request.name, size);
        let recorded = self.update_state(|state| state.checkpoints.push(checkpoint.clone()));
        if let Err(error) = recorded {
            let _ = fs_err::remove_file(&archive);
            return Err(error);
        }
        Ok(checkpoint)
    }

    pub(crate) fn checkpoints(&self) -> Result<Vec<Checkpoint>, SandboxError> {
        let state = self.lock();
        if state.status == SandboxStatus::Destroyed {
            state.status.check(Operation::Checkpoint)?;
        }
        Ok(state.checkpoints.clone())
    }

    pub(crate) async fn remove_checkpoint(&self, id_or_name: &str) -> Result<(), SandboxError> {
        let _serial = self.destroying.lock().await;
        let checkpoint = {
            let state = self.lock();
            if state.status == SandboxStatus::Destroyed {
                state.status.check(Operation::Checkpoint)?;
            }
            state.checkpoints[position(&state.checkpoints, id_or_name)?].clone()
        };
        self.update_state(|state| state.checkpoints.retain(|kept| kept.id != checkpoint.id))?;
        remove_archive(&self.dir, &checkpoint)
    }

    /// Ends the sandbox's processes, puts the checkpoint's files in place and starts a new
    /// init on them. The new init is started even when the files could not all be put
    /// back, so the sandbox stays usable; the error then says how far it got.
    pub(crate) async fn restore_checkpoint(&self, id_or_name: &str) -> Result<(), SandboxError> {
        let _serial = self.destroying.lock().await;
        let (status, checkpoint, ids) = {
            let state = self.lock();
            state.status.check(Operation::Restore)?;
            let checkpoint = state.checkpoints[position(&state.checkpoints, id_or_name)?].clone();
            (state.status, checkpoint, state.ids)
        };
        let archive = archive_path(&self.dir, &checkpoint.id);
        if !archive.exists() {
            return Err(SandboxError::io(
                "restore the checkpoint",
                &archive,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "its archive is missing; delete the checkpoint",
                ),
            ));
        }
        // Owners as archived where they are the sandbox's; a server that maps only itself
        // writes everything as itself anyway.
        let owners = ids
            .filter(|ids| ids.uid != rustix::process::geteuid().as_raw())
            .map(|ids| OwnerRange {
                uid: ids.uid,
                gid: ids.gid,
                count: ids.count,
            });
        self.restoring.store(true, Ordering::SeqCst);
        let restored = async {
            // Killed processes of a frozen group cannot exit until it thaws.
            if self.cgroups.freezer.is_some() {
                self.cgroups.freeze(false).await?;
            }
            kill_init(self.init()).await?;
            let dir = self.dir.clone();
            blocking("restore", move || {
                let trees = trees(&dir);
                let trees = trees.each_ref().map(|(name, path)| Tree { name, path });
                let options = RestoreOptions {
                    overlay: true,
                    owners,
                };
                restore_archive(&trees, &archive, options)
                    .map_err(|error| SandboxError::io("restore the checkpoint", &archive, error))
            })
            .await
        }
        .await;
        if self.init().is_alive() {
            // Killing it failed: nothing was touched, and a second init must not start.
            self.restoring.store(false, Ordering::SeqCst);
            return restored;
        }
        let started = self.restart_init(status).await;
        self.restoring.store(false, Ordering::SeqCst);
        match (restored, started) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(error), _) | (Ok(()), Err(error)) => Err(error),
        }
    }

    /// Starts a new init on the sandbox's directory and records it; a sandbox that was
    /// stopped is frozen again. If it cannot start, the sandbox is lost.
    async fn restart_init(&self, status: SandboxStatus) -> Result<(), SandboxError> {
        let init = match start_init(&self.init_command, &self.dir).await {
            Ok(init) => init,
            Err((error, pid)) => {
                if let Some(init) = pid.and_then(InitProcess::find) {
                    let _ = kill_init(init).await;
                }
                let _ = self.update_state(|state| state.status = SandboxStatus::Lost);
                return Err(error);
            }
        };
        self.update_state(|state| state.init = init)?;
        if status == SandboxStatus::Stopped {
            self.pause(true).await?;
        }
        Ok(())
    }
}
