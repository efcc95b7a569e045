//! The working directory as a tar archive, and the changes of a run written back.

use std::io::Write as _;
use std::path::{Component, Path};

use anyhow::Context as _;

/// Whether `relative` (a path inside the working directory) is excluded: an exclude
/// without a slash matches any path component (`target`), one with a slash matches that
/// path and everything beneath it (`build/out`).
fn excluded(relative: &Path, excludes: &[String]) -> bool {
    excludes.iter().any(|exclude| {
        let exclude = exclude.trim_matches('/');
        if exclude.contains('/') {
            relative.starts_with(exclude)
        } else {
            relative
                .components()
                .any(|component| component.as_os_str() == exclude)
        }
    })
}

fn add_dir(
    builder: &mut tar::Builder<impl std::io::Write>,
    root: &Path,
    relative: &Path,
    excludes: &[String],
) -> anyhow::Result<()> {
    let dir = root.join(relative);
    let mut entries: Vec<_> = fs_err_read_dir(&dir)?;
    entries.sort();
    for name in entries {
        let relative = relative.join(&name);
        if excluded(&relative, excludes) {
            continue;
        }
        let path = root.join(&relative);
        let metadata = std::fs::symlink_metadata(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if metadata.is_dir() {
            builder
                .append_dir(&relative, &path)
                .with_context(|| format!("cannot archive {}", path.display()))?;
            add_dir(builder, root, &relative, excludes)?;
        } else if metadata.is_file() || metadata.file_type().is_symlink() {
            builder
                .append_path_with_name(&path, &relative)
                .with_context(|| format!("cannot archive {}", path.display()))?;
        }
    }
    Ok(())
}

fn fs_err_read_dir(dir: &Path) -> anyhow::Result<Vec<std::ffi::OsString>> {
    std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the directory {}", dir.display()))?
        .map(|entry| {
            entry
                .map(|entry| entry.file_name())
                .with_context(|| format!("cannot read the directory {}", dir.display()))
        })
        .collect()
}

/// `dir` as a gzipped tar archive (paths relative to it, symlinks kept as links),
/// without the excluded paths.
pub fn pack(dir: &Path, excludes: &[String]) -> anyhow::Result<Vec<u8>> {
    let metadata = std::fs::metadata(dir)
        .with_context(|| format!("the working directory {} does not exist", dir.display()))?;
    anyhow::ensure!(
        metadata.is_dir(),
        "the working directory {} is not a directory",
        dir.display()
    );
    // Fast compression: the archive usually crosses a loopback or a LAN, where time spent
    // compressing harder is not won back.
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(encoder);
    builder.follow_symlinks(false);
    add_dir(&mut builder, dir, Path::new(""), excludes)?;
    let mut encoder = builder.into_inner().context("cannot finish the archive")?;
    encoder.flush().context("cannot finish the archive")?;
    encoder.finish().context("cannot finish the archive")
}

/// A path of the server's change list, checked to stay inside `dir`.
fn inside(dir: &Path, relative: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = Path::new(relative);
    anyhow::ensure!(
        path.components()
            .all(|component| matches!(component, Component::Normal(_))),
        "the server named the path {relative:?}, which leaves the working directory"
    );
    Ok(dir.join(path))
}

/// Writes the run's changed files (`archive`, from the server) into `dir` and removes
/// the deleted ones. Returns how many paths it touched.
pub fn apply(dir: &Path, archive: &[u8], deleted: &[String]) -> anyhow::Result<usize> {
    let mut touched = 0;
    let mut entries = tar::Archive::new(archive);
    entries.set_preserve_permissions(true);
    entries.set_overwrite(true);
    for entry in entries
        .entries()
        .context("cannot read the changes archive")?
    {
        let mut entry = entry.context("cannot read the changes archive")?;
        let relative = entry
            .path()
            .context("a path in the changes archive is not valid")?
            .into_owned();
        let target = inside(dir, &relative.to_string_lossy())?;
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        // A symlink or file in the way is replaced, not written through.
        if std::fs::symlink_metadata(&target).is_ok_and(|meta| !meta.is_dir()) {
            std::fs::remove_file(&target)
                .with_context(|| format!("cannot replace {}", target.display()))?;
        }
        entry
            .unpack(&target)
            .with_context(|| format!("cannot write {}", target.display()))?;
        touched += 1;
    }
    for relative in deleted {
        let target = inside(dir, relative)?;
        match std::fs::remove_file(&target) {
            Ok(()) => touched += 1,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(error).with_context(|| format!("cannot remove {}", target.display()))
            }
        }
    }
    Ok(touched)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excludes_match_names_anywhere_or_paths_from_the_root() {
        let excludes = vec!["target".to_owned(), "build/out".to_owned()];
        assert!(excluded(Path::new("target"), &excludes));
        assert!(excluded(Path::new("crates/x/target/debug"), &excludes));
        assert!(excluded(Path::new("build/out/a"), &excludes));
        assert!(!excluded(Path::new("build/other"), &excludes));
        assert!(!excluded(Path::new("targets"), &excludes));
    }

    #[test]
    fn packed_directories_round_trip_and_changes_apply() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".git")).unwrap();
        std::fs::write(dir.path().join(".git/HEAD"), "ref").unwrap();
        std::fs::create_dir_all(dir.path().join("target")).unwrap();
        std::fs::write(dir.path().join("target/big"), "x").unwrap();
        std::fs::write(dir.path().join("gone.txt"), "bye").unwrap();
        let packed = pack(dir.path(), &["target".to_owned()]).unwrap();
        let mut names = Vec::new();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(packed.as_slice()));
        for entry in archive.entries().unwrap() {
            names.push(entry.unwrap().path().unwrap().display().to_string());
        }
        assert!(names.contains(&".git/HEAD".to_owned()), "{names:?}");
        assert!(
            !names.iter().any(|name| name.starts_with("target")),
            "{names:?}"
        );

        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o755);
        header.set_size(3);
        builder
            .append_data(&mut header, "src/new.sh", &b"new"[..])
            .unwrap();
        let changes = builder.into_inner().unwrap();
        let touched = apply(dir.path(), &changes, &["gone.txt".to_owned()]).unwrap();
        assert_eq!(touched, 2);
        assert_eq!(
            std::fs::read(dir.path().join("src/new.sh")).unwrap(),
            b"new"
        );
        assert!(!dir.path().join("gone.txt").exists());
        assert!(apply(dir.path(), &[0u8; 1024], &["../escape".to_owned()]).is_err());
    }

    #[test]
    fn a_missing_directory_is_named() {
        let error = pack(Path::new("/nonexistent/cthulu-dir"), &[]).unwrap_err();
        assert!(format!("{error:#}").contains("/nonexistent/cthulu-dir does not exist"));
    }
}
