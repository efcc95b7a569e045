//! Reading a backend's versioned JSON state file (`state.json`), the same way for every
//! backend that keeps one per sandbox.

use std::io;
use std::path::Path;

/// Reads the JSON state file at `path`, refusing one of another `version` than `expected`
/// (a state written by a newer or older server: say so rather than misread it).
pub fn load_versioned<T: serde::de::DeserializeOwned>(
    path: &Path,
    expected: u32,
    version: impl Fn(&T) -> u32,
) -> io::Result<T> {
    let bytes = fs_err::read(path)?;
    let state: T = serde_json::from_slice(&bytes).map_err(|error| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {error}", path.display()),
        )
    })?;
    let found = version(&state);
    if found != expected {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: state version {found} is not {expected}",
                path.display()
            ),
        ));
    }
    Ok(state)
}

/// The sandboxes under a provider's `root`: the directories named by a valid id whose
/// state `load` can read (anything else there, a spare or a half-removed directory, is
/// not a sandbox), sorted.
pub async fn list_sandboxes<T: 'static>(
    root: &Path,
    load: fn(&Path) -> io::Result<T>,
) -> Result<Vec<cthulu_types::SandboxId>, cthulu_core::SandboxError> {
    let root = root.to_owned();
    crate::files::blocking("list sandboxes", move || {
        let entries = fs_err::read_dir(&root)
            .map_err(|error| cthulu_core::SandboxError::io("list", &root, error))?;
        let mut sandbox_ids: Vec<_> = entries
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let sandbox_id =
                    cthulu_types::SandboxId::parse(entry.file_name().to_str()?).ok()?;
                load(&entry.path()).ok()?;
                Some(sandbox_id)
            })
            .collect();
        sandbox_ids.sort();
        Ok(sandbox_ids)
    })
    .await
}
