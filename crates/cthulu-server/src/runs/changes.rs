//! What an agent changed: the workspace before and after the run as [`Tree`]s read from
//! tar archives, compared into a unified diff, the lists of changed and deleted paths, and
//! an archive of the changed files (what `--apply` writes back, exactly, binary files
//! included).
//!
//! The diff is computed in-process with `similar` rather than by running `diff -ruN` on
//! the server: both trees are already in memory as tar archives (the input as sent, the
//! workspace as fetched), so there is no need to unpack them into temporary directories
//! first, no dependency on the server host's diffutils, and binary detection, path
//! normalisation and a time limit per file stay in our hands. `similar` is small, has no
//! required dependencies and is widely used (insta); writing a Myers diff here would be
//! more code to keep.

use std::collections::BTreeMap;
use std::io::Read;
use std::time::Duration;

use cthulu_runs::Redactor;
use cthulu_types::RunChanges;

/// Mode bits git shows for a symbolic link.
const SYMLINK_MODE: u32 = 0o120000;
/// A diff of one file gives up refining after this long (the result stays a correct, if
/// coarser, diff).
const DIFF_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ChangesError {
    #[error("the archive is not a readable tar archive: {reason}")]
    Unreadable { reason: String },
    #[error("the archive holds the path {path:?}, which leaves the workspace")]
    UnsafePath { path: String },
    #[error("the archive unpacks to more than {limit} bytes")]
    TooLarge { limit: u64 },
}

/// One entry of a workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    File { mode: u32, contents: Vec<u8> },
    Symlink { target: String },
    Dir,
}

/// A workspace's contents by relative path (`src/main.rs`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree {
    entries: BTreeMap<String, Entry>,
}

/// `./a/b/` → `a/b`; `None` for the root itself; an error for `..` or an absolute path.
fn normalize(raw: &str) -> Result<Option<String>, ChangesError> {
    let mut parts = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(ChangesError::UnsafePath {
                    path: raw.to_owned(),
                })
            }
            other => parts.push(other),
        }
    }
    if raw.starts_with('/') {
        return Err(ChangesError::UnsafePath {
            path: raw.to_owned(),
        });
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}

/// Gunzips `bytes` when they are gzip (magic `1f 8b`), refusing more than `limit` bytes.
pub fn plain_tar(bytes: Vec<u8>, limit: u64) -> Result<Vec<u8>, ChangesError> {
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return Ok(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len() * 2);
    flate2::read::GzDecoder::new(bytes.as_slice())
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|error| ChangesError::Unreadable {
            reason: format!("gzip: {error}"),
        })?;
    if out.len() as u64 > limit {
        return Err(ChangesError::TooLarge { limit });
    }
    Ok(out)
}

impl Tree {
    /// Reads a tar archive. Paths are normalised; one that leaves the workspace is an
    /// error; hard links, devices and the like are skipped (tar keeps them, a diff of
    /// them means nothing).
    pub fn from_tar(bytes: &[u8]) -> Result<Tree, ChangesError> {
        let unreadable = |error: std::io::Error| ChangesError::Unreadable {
            reason: error.to_string(),
        };
        let mut archive = tar::Archive::new(bytes);
        let mut entries = BTreeMap::new();
        for entry in archive.entries().map_err(unreadable)? {
            let mut entry = entry.map_err(unreadable)?;
            let raw_path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let Some(path) = normalize(&raw_path)? else {
                continue;
            };
            let header = entry.header();
            let kind = header.entry_type();
            let mode = header.mode().map_err(unreadable)? & 0o7777;
            let value = if kind.is_file() {
                let mut contents = Vec::with_capacity(entry.size() as usize);
                entry.read_to_end(&mut contents).map_err(unreadable)?;
                Entry::File { mode, contents }
            } else if kind.is_symlink() {
                let target = entry
                    .link_name_bytes()
                    .map(|target| String::from_utf8_lossy(&target).into_owned())
                    .unwrap_or_default();
                Entry::Symlink { target }
            } else if kind.is_dir() {
                Entry::Dir
            } else {
                continue;
            };
            entries.insert(path, value);
        }
        Ok(Tree { entries })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The comparison of two trees.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub changes: RunChanges,
    /// A tar archive of every changed or added file and symlink, with its mode.
    pub archive: Vec<u8>,
}

fn git_mode(entry: &Entry) -> u32 {
    match entry {
        Entry::File { mode, .. } if mode & 0o111 != 0 => 0o100755,
        Entry::File { .. } => 0o100644,
        Entry::Symlink { .. } => SYMLINK_MODE,
        Entry::Dir => 0o040000,
    }
}

fn content(entry: &Entry) -> &[u8] {
    match entry {
        Entry::File { contents, .. } => contents,
        Entry::Symlink { target } => target.as_bytes(),
        Entry::Dir => &[],
    }
}

fn is_text(bytes: &[u8]) -> bool {
    !bytes.contains(&0) && std::str::from_utf8(bytes).is_ok()
}

/// The git-style diff of one path; `None` on either side means absent.
fn file_diff(path: &str, before: Option<&Entry>, after: Option<&Entry>) -> String {
    let mut out = format!("diff --git a/{path} b/{path}\n");
    match (before, after) {
        (None, Some(after)) => out.push_str(&format!("new file mode {:o}\n", git_mode(after))),
        (Some(before), None) => {
            out.push_str(&format!("deleted file mode {:o}\n", git_mode(before)))
        }
        (Some(before), Some(after)) if git_mode(before) != git_mode(after) => {
            out.push_str(&format!(
                "old mode {:o}\nnew mode {:o}\n",
                git_mode(before),
                git_mode(after)
            ));
        }
        _ => {}
    }
    let old = before.map(content).unwrap_or_default();
    let new = after.map(content).unwrap_or_default();
    if old == new {
        return out;
    }
    let old_name = before.map_or("/dev/null".to_owned(), |_| format!("a/{path}"));
    let new_name = after.map_or("/dev/null".to_owned(), |_| format!("b/{path}"));
    if !is_text(old) || !is_text(new) {
        out.push_str(&format!("Binary files {old_name} and {new_name} differ\n"));
        return out;
    }
    let old = std::str::from_utf8(old).expect("checked by is_text");
    let new = std::str::from_utf8(new).expect("checked by is_text");
    let diff = similar::TextDiff::configure()
        .timeout(DIFF_TIMEOUT)
        .diff_lines(old, new);
    out.push_str(
        &diff
            .unified_diff()
            .context_radius(3)
            .header(&old_name, &new_name)
            .to_string(),
    );
    out
}

/// Compares the workspace `before` and `after` the run. The diff is redacted and cut at
/// `diff_limit` bytes; the lists and the archive are complete.
pub fn compare(before: &Tree, after: &Tree, redactor: &Redactor, diff_limit: usize) -> Comparison {
    let mut changes = RunChanges::default();
    let mut builder = tar::Builder::new(Vec::new());
    let mut diff = String::new();
    let mut push_diff = |text: String, changes: &mut RunChanges| {
        if changes.diff_truncated {
            return;
        }
        if diff.len() + text.len() > diff_limit {
            changes.diff_truncated = true;
            return;
        }
        diff.push_str(&text);
    };
    for (path, entry) in &after.entries {
        if matches!(entry, Entry::Dir) {
            continue;
        }
        let old = before
            .entries
            .get(path)
            .filter(|old| !matches!(old, Entry::Dir));
        if old == Some(entry) {
            continue;
        }
        push_diff(file_diff(path, old, Some(entry)), &mut changes);
        changes.changed.push(path.clone());
        let mut header = tar::Header::new_gnu();
        match entry {
            Entry::File { mode, contents } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(contents.len() as u64);
                builder
                    .append_data(&mut header, path, contents.as_slice())
                    .expect("writing a tar archive to memory cannot fail");
            }
            Entry::Symlink { target } => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder
                    .append_link(&mut header, path, target)
                    .expect("writing a tar archive to memory cannot fail");
            }
            Entry::Dir => unreachable!("skipped above"),
        }
    }
    for (path, entry) in &before.entries {
        if matches!(entry, Entry::Dir) {
            continue;
        }
        let gone = after
            .entries
            .get(path)
            .is_none_or(|now| matches!(now, Entry::Dir));
        if gone {
            push_diff(file_diff(path, Some(entry), None), &mut changes);
            changes.deleted.push(path.clone());
        }
    }
    changes.diff = redactor.redact(&diff);
    Comparison {
        changes,
        archive: builder
            .into_inner()
            .expect("writing a tar archive to memory cannot fail"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, contents, mode) in files {
            let mut header = tar::Header::new_gnu();
            header.set_mode(*mode);
            header.set_size(contents.len() as u64);
            builder.append_data(&mut header, path, *contents).unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn changed_added_and_deleted_files_are_diffed_and_archived() {
        let before = Tree::from_tar(&tar_of(&[
            (
                "./src/math.rs",
                b"fn add(a: i32, b: i32) -> i32 {\n    a - b\n}\n",
                0o644,
            ),
            ("gone.txt", b"bye\n", 0o644),
            ("same.bin", b"\0\x01", 0o644),
        ]))
        .unwrap();
        let after = Tree::from_tar(&tar_of(&[
            (
                "src/math.rs",
                b"fn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n",
                0o644,
            ),
            ("new.sh", b"echo sk-secret-value-1\n", 0o755),
            ("same.bin", b"\0\x01", 0o644),
            ("blob.bin", b"\0\x02", 0o644),
        ]))
        .unwrap();
        let redactor = Redactor::new(["sk-secret-value-1"]);
        let comparison = compare(&before, &after, &redactor, 1 << 20);
        let changes = &comparison.changes;
        assert_eq!(changes.changed, ["blob.bin", "new.sh", "src/math.rs"]);
        assert_eq!(changes.deleted, ["gone.txt"]);
        assert!(
            changes.diff.contains("-    a - b\n+    a + b\n"),
            "{}",
            changes.diff
        );
        assert!(changes
            .diff
            .contains("--- a/src/math.rs\n+++ b/src/math.rs\n"));
        assert!(changes
            .diff
            .contains("new file mode 100755\n--- /dev/null\n+++ b/new.sh\n"));
        assert!(changes.diff.contains("deleted file mode 100644\n"));
        assert!(changes
            .diff
            .contains("Binary files /dev/null and b/blob.bin differ"));
        assert!(changes.diff.contains("+echo [redacted]"));
        assert!(!changes.diff.contains("same.bin"));
        // The archive holds the exact new contents, unredacted, with modes.
        let archived = Tree::from_tar(&comparison.archive).unwrap();
        assert_eq!(archived.len(), 3);
        assert_eq!(
            archived.entries["new.sh"],
            Entry::File {
                mode: 0o755,
                contents: b"echo sk-secret-value-1\n".to_vec()
            }
        );
    }

    #[test]
    fn the_diff_is_cut_at_its_limit_but_the_lists_are_not() {
        let after = Tree::from_tar(&tar_of(&[
            ("a.txt", &[b'a'; 100], 0o644),
            ("b.txt", &[b'b'; 100], 0o644),
        ]))
        .unwrap();
        let comparison = compare(&Tree::default(), &after, &Redactor::default(), 150);
        assert!(comparison.changes.diff_truncated);
        assert_eq!(comparison.changes.changed.len(), 2);
        assert!(comparison.changes.diff.len() <= 150);
    }

    #[test]
    fn paths_that_leave_the_workspace_are_refused() {
        assert!(normalize("../etc/passwd").is_err());
        assert!(normalize("/etc/passwd").is_err());
        assert_eq!(normalize("./a//b/").unwrap().as_deref(), Some("a/b"));
        assert_eq!(normalize("./").unwrap(), None);
    }

    #[test]
    fn gzip_is_unpacked_within_its_limit() {
        use std::io::Write;
        let tar = tar_of(&[("a", &[b'x'; 4096], 0o644)]);
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(&tar).unwrap();
        let gz = encoder.finish().unwrap();
        assert_eq!(plain_tar(gz.clone(), 1 << 20).unwrap(), tar);
        assert!(matches!(
            plain_tar(gz, 1000),
            Err(ChangesError::TooLarge { limit: 1000 })
        ));
        assert!(Tree::from_tar(b"not a tar at all, clearly not").is_err());
    }
}
