//! Filesystem checkpoints: a gzipped tar of the workspace in
//! `checkpoints/<checkpoint_id>.tar.gz` ([`archive`](crate::archive), one tree stored at
//! the top), its metadata in `state.json`. The host cannot save processes, so a memory
//! checkpoint is `Unsupported`. The bookkeeping other backends share (names, ids, lookup)
//! is public here.

use std::io;
use std::path::{Path, PathBuf};

use cthulu_core::SandboxError;
use cthulu_types::checkpoint::valid_checkpoint_name;
use cthulu_types::sandbox::Operation;
use cthulu_types::{BackendKind, Checkpoint, CheckpointRequest};

use crate::archive::{restore_archive, write_archive, ArchiveOptions, RestoreOptions, Tree};
use crate::files::blocking;
use crate::ids::{is_valid_id, random_id};
use crate::sandbox::HostSandbox;
use crate::state::{CHECKPOINTS_DIR, WORKSPACE_DIR};

/// Where a sandbox keeps the archive of checkpoint `checkpoint_id`.
pub fn archive_path(sandbox_dir: &Path, checkpoint_id: &str) -> PathBuf {
    sandbox_dir
        .join(CHECKPOINTS_DIR)
        .join(format!("{checkpoint_id}.tar.gz"))
}

/// The answer to a memory checkpoint from a backend that saves files only: `why` says
/// why its processes cannot be saved.
pub fn memory_unsupported(backend: BackendKind, why: &str) -> SandboxError {
    SandboxError::Unsupported {
        backend,
        operation: "memory checkpoint",
        reason: format!("{why}; checkpoint without `memory`"),
    }
}

/// The record of a filesystem checkpoint taken now.
pub fn filesystem_checkpoint(checkpoint_id: String, name: Option<String>, size: u64) -> Checkpoint {
    Checkpoint {
        id: checkpoint_id,
        name,
        created_at_ms: cthulu_types::now_ms(),
        size_bytes: size,
        memory: false,
    }
}

/// A new checkpoint id (`c` and 12 random letters and digits).
pub fn new_checkpoint_id() -> String {
    random_id('c')
}

/// Where the checkpoint named or numbered `id_or_name` is in `checkpoints`.
pub fn position(checkpoints: &[Checkpoint], id_or_name: &str) -> Result<usize, SandboxError> {
    checkpoints
        .iter()
        .position(|checkpoint| {
            checkpoint.id == id_or_name || checkpoint.name.as_deref() == Some(id_or_name)
        })
        .ok_or_else(|| SandboxError::CheckpointNotFound {
            checkpoint: id_or_name.to_owned(),
        })
}

/// Refuses a checkpoint name that is malformed or already taken in `checkpoints`.
pub fn check_name(checkpoints: &[Checkpoint], name: Option<&str>) -> Result<(), SandboxError> {
    let Some(name) = name else {
        return Ok(());
    };
    if !valid_checkpoint_name(name) {
        return Err(SandboxError::invalid(
            "name",
            "1 to 64 letters, digits, `-`, `_` or `.`, not starting with `.`",
        ));
    }
    if checkpoints
        .iter()
        .any(|checkpoint| checkpoint.name.as_deref() == Some(name))
    {
        return Err(SandboxError::CheckpointExists {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Removes the archive of a checkpoint already taken off the sandbox's list (one that is
/// already gone is fine).
pub fn remove_archive(sandbox_dir: &Path, checkpoint: &Checkpoint) -> Result<(), SandboxError> {
    debug_assert!(is_valid_id(&checkpoint.id, 'c'));
    let path = archive_path(sandbox_dir, &checkpoint.id);
    match fs_err::remove_file(&path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => {
            Err(SandboxError::io("remove the checkpoint", path, error))
        }
        _ => Ok(()),
    }
}

impl HostSandbox {
    fn find_checkpoint(&self, id_or_name: &str) -> Result<Checkpoint, SandboxError> {
        let inner = self.lock();
        let checkpoints = &inner.state.checkpoints;
        Ok(checkpoints[position(checkpoints, id_or_name)?].clone())
    }

    pub(crate) async fn create_checkpoint(
        &self,
        request: CheckpointRequest,
    ) -> Result<Checkpoint, SandboxError> {
        if request.memory {
            return Err(memory_unsupported(
                BackendKind::Host,
                "host processes cannot be saved",
            ));
        }
        {
            let inner = self.lock();
            inner.check(Operation::Checkpoint)?;
            check_name(&inner.state.checkpoints, request.name.as_deref())?;
        }
        let checkpoint_id = new_checkpoint_id();
        let archive = archive_path(&self.dir, &checkpoint_id);
        let workspace = self.dir.join(WORKSPACE_DIR);
        let size = {
            let archive = archive.clone();
            blocking("checkpoint", move || {
                let trees = [Tree {
                    name: "",
                    path: &workspace,
                }];
                write_archive(&trees, &archive, ArchiveOptions::default())
                    .map_err(|error| SandboxError::io("write the checkpoint", &archive, error))
            })
            .await?
        };
        let checkpoint = filesystem_checkpoint(checkpoint_id, request.name, size);
        let mut inner = self.lock();
        let refused = inner
            .check(Operation::Checkpoint)
            .err()
            .or_else(|| check_name(&inner.state.checkpoints, checkpoint.name.as_deref()).err());
        if let Some(error) = refused {
            let _ = fs_err::remove_file(&archive);
            return Err(error);
        }
        inner.state.checkpoints.push(checkpoint.clone());
        if let Err(error) = self.persist(&inner) {
            inner.state.checkpoints.pop();
            let _ = fs_err::remove_file(&archive);
            return Err(error);
        }
        Ok(checkpoint)
    }

    pub(crate) fn checkpoints(&self) -> Result<Vec<Checkpoint>, SandboxError> {
        let inner = self.lock();
        inner.check_exists()?;
        Ok(inner.state.checkpoints.clone())
    }

    pub(crate) async fn restore_checkpoint(&self, id_or_name: &str) -> Result<(), SandboxError> {
        self.lock().check(Operation::Restore)?;
        let checkpoint = self.find_checkpoint(id_or_name)?;
        let archive = archive_path(&self.dir, &checkpoint.id);
        let workspace = self.dir.join(WORKSPACE_DIR);
        blocking("restore", move || {
            let trees = [Tree {
                name: "",
                path: &workspace,
            }];
            restore_archive(&trees, &archive, RestoreOptions::default())
                .map_err(|error| SandboxError::io("restore the checkpoint", &archive, error))
        })
        .await
    }

    pub(crate) async fn remove_checkpoint(&self, id_or_name: &str) -> Result<(), SandboxError> {
        let checkpoint = {
            let mut inner = self.lock();
            inner.check_exists()?;
            let position = position(&inner.state.checkpoints, id_or_name)?;
            let checkpoint = inner.state.checkpoints.remove(position);
            if let Err(error) = self.persist(&inner) {
                inner.state.checkpoints.insert(position, checkpoint);
                return Err(error);
            }
            checkpoint
        };
        remove_archive(&self.dir, &checkpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_unique() {
        let taken = Checkpoint {
            id: new_checkpoint_id(),
            name: Some("first".into()),
            created_at_ms: 0,
            size_bytes: 0,
            memory: false,
        };
        let checkpoints = [taken.clone()];
        assert!(check_name(&checkpoints, None).is_ok());
        assert!(check_name(&checkpoints, Some("second")).is_ok());
        assert!(matches!(
            check_name(&checkpoints, Some("first")),
            Err(SandboxError::CheckpointExists { .. })
        ));
        assert!(matches!(
            check_name(&checkpoints, Some("../x")),
            Err(SandboxError::InvalidRequest { .. })
        ));
        assert_eq!(position(&checkpoints, "first").unwrap(), 0);
        assert_eq!(position(&checkpoints, &taken.id).unwrap(), 0);
        assert!(matches!(
            position(&checkpoints, "other"),
            Err(SandboxError::CheckpointNotFound { .. })
        ));
    }
}
