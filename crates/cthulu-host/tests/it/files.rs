//! The file API, and attacks on it.

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cthulu_core::{ByteReader, PutOptions, SandboxError, SandboxHandle};
use cthulu_types::FileKind;
use tokio::io::AsyncReadExt;

use crate::support::*;

fn reader(bytes: Vec<u8>) -> ByteReader {
    Box::new(std::io::Cursor::new(bytes))
}

async fn put(sandbox: &dyn SandboxHandle, path: &str, bytes: &[u8]) -> Result<u64, SandboxError> {
    sandbox
        .put_file(path, PutOptions::default(), reader(bytes.to_vec()))
        .await
}

async fn get(sandbox: &dyn SandboxHandle, path: &str) -> Result<Vec<u8>, SandboxError> {
    let mut download = sandbox.get_file(path).await?;
    let mut bytes = Vec::new();
    download.contents.read_to_end(&mut bytes).await.unwrap();
    assert_eq!(bytes.len() as u64, download.size);
    Ok(bytes)
}

fn outside(path: &str, error: SandboxError) {
    assert!(
        matches!(error, SandboxError::PathOutsideSandbox { .. }),
        "{path}: {error:?}"
    );
}

#[tokio::test]
async fn files_round_trip_byte_exact() {
    let host = TestHost::new();
    let sandbox = host.sandbox().await;
    let all: Vec<u8> = (0..=255).collect();
    // 100 MiB of a pattern that is not periodic at any power of two.
    let large: Vec<u8> = (0..100u32 << 20).map(|index| (index % 251) as u8).collect();
    for (path, bytes) in [
        ("empty", Vec::new()),
        ("one", vec![7u8]),
        ("/workspace/all-bytes", all.clone()),
        ("large.bin", large),
    ] {
        assert_eq!(
            put(&*sandbox, path, &bytes).await.unwrap(),
            bytes.len() as u64
        );
        assert!(get(&*sandbox, path).await.unwrap() == bytes, "{path}");
    }
    // Overwriting replaces the contents.
    put(&*sandbox, "one", b"replaced").await.unwrap();
    assert_eq!(get(&*sandbox, "one").await.unwrap(), b"replaced");
    // The real path of the workspace works too (it is what `$HOME` says).
    let real = format!("{}/one", host.workspace(&*sandbox).display());
    assert_eq!(get(&*sandbox, &real).await.unwrap(), b"replaced");
    // No upload temporaries are left behind.
    let names: Vec<String> = sandbox
        .read_dir("")
        .await
        .unwrap()
        .into_iter()
        .map(|entry| entry.name)
        .collect();
    assert_eq!(names, ["all-bytes", "empty", "large.bin", "one"]);
}

#[tokio::test]
async fn modes_are_kept() {
    let host = TestHost::new();
    let sandbox = host.sandbox().await;
    put(&*sandbox, "default", b"x").await.unwrap();
    for (path, mode) in [("script.sh", 0o755), ("secret", 0o600), ("odd", 0o741)] {
        sandbox
            .put_file(
                path,
                PutOptions {
                    mode: Some(mode),
                    create_parents: false,
                },
                reader(b"#!/bin/sh\necho ran\n".to_vec()),
            )
            .await
            .unwrap();
        let download = sandbox.get_file(path).await.unwrap();
        assert_eq!(download.mode, mode, "{path}");
    }
    assert_eq!(sandbox.get_file("default").await.unwrap().mode, 0o644);
    let on_disk = std::fs::metadata(host.workspace(&*sandbox).join("odd")).unwrap();
    assert_eq!(on_disk.permissions().mode() & 0o7777, 0o741);
    assert_eq!(text(&shell(&*sandbox, "./script.sh").await.stdout), "ran\n");
}

#[tokio::test]
async fn parents_are_created_only_when_asked() {
    let host = TestHost::new();
    let sandbox = host.sandbox().await;
    let error = put(&*sandbox, "a/b/c.txt", b"x").await.unwrap_err();
    assert!(
        matches!(&error, SandboxError::FileNotFound { path } if path == "/workspace/a/b"),
        "{error:?}"
    );
    assert!(!host.workspace(&*sandbox).join("a").exists());
    sandbox
        .put_file(
            "a/b/c.txt",
            PutOptions {
                mode: None,
                create_parents: true,
            },
            reader(b"x".to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(get(&*sandbox, "a/b/c.txt").await.unwrap(), b"x");
    put(&*sandbox, "plain", b"x").await.unwrap();
    let error = put(&*sandbox, "plain/child", b"x").await.unwrap_err();
    assert!(
        matches!(error, SandboxError::NotADirectory { .. }),
        "{error:?}"
    );
    let error = put(&*sandbox, "a", b"x").await.unwrap_err();
    assert!(
        matches!(error, SandboxError::IsADirectory { .. }),
        "{error:?}"
    );
    let error = sandbox.get_file("a").await.err().unwrap();
    assert!(
        matches!(error, SandboxError::IsADirectory { .. }),
        "{error:?}"
    );
    let error = sandbox.get_file("missing").await.err().unwrap();
    assert!(
        matches!(error, SandboxError::FileNotFound { .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn read_dir_lists_names_kinds_sizes_modes_and_links() {
    let host = TestHost::new();
    let sandbox = host.sandbox().await;
    put(&*sandbox, "file.txt", b"12345").await.unwrap();
    shell(
        &*sandbox,
        "mkdir -p dir/inner && chmod 750 dir && ln -s /etc/passwd link && mkfifo fifo",
    )
    .await;
    let entries = sandbox.read_dir("/workspace").await.unwrap();
    let names: Vec<&str> = entries.iter().map(|entry| entry.name.as_str()).collect();
    assert_eq!(names, ["dir", "fifo", "file.txt", "link"]);
    let by_name = |name: &str| entries.iter().find(|entry| entry.name == name).unwrap();
    assert_eq!(by_name("dir").kind, FileKind::Dir);
    assert_eq!(by_name("dir").mode, 0o750);
    assert_eq!(by_name("file.txt").kind, FileKind::File);
    assert_eq!(by_name("file.txt").size, 5);
    assert_eq!(by_name("file.txt").mode, 0o644);
    assert!(by_name("file.txt").modified_ms > 1_600_000_000_000);
    assert_eq!(by_name("link").kind, FileKind::Symlink);
    assert_eq!(by_name("link").link_target.as_deref(), Some("/etc/passwd"));
    assert_eq!(by_name("fifo").kind, FileKind::Other);
    assert_eq!(sandbox.read_dir("dir").await.unwrap()[0].name, "inner");
    let error = sandbox.read_dir("file.txt").await.unwrap_err();
    assert!(
        matches!(error, SandboxError::NotADirectory { .. }),
        "{error:?}"
    );
    // A FIFO is refused, not opened (which would hang).
    let error = sandbox.get_file("fifo").await.err().unwrap();
    assert!(
        matches!(error, SandboxError::InvalidRequest { .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn remove_follows_the_rules() {
    let host = TestHost::new();
    let sandbox = host.sandbox().await;
    let workspace = host.workspace(&*sandbox);
    shell(
        &*sandbox,
        "mkdir -p empty tree/a/b && touch file tree/a/b/c tree/top",
    )
    .await;
    sandbox.remove("file", false).await.unwrap();
    sandbox.remove("empty", false).await.unwrap();
    let error = sandbox.remove("tree", false).await.unwrap_err();
    assert!(
        matches!(error, SandboxError::DirectoryNotEmpty { .. }),
        "{error:?}"
    );
    sandbox.remove("tree", true).await.unwrap();
    assert_eq!(std::fs::read_dir(&workspace).unwrap().count(), 0);
    let error = sandbox.remove("missing", false).await.unwrap_err();
    assert!(
        matches!(error, SandboxError::FileNotFound { .. }),
        "{error:?}"
    );
    put(&*sandbox, "keep", b"x").await.unwrap();
    for root in ["", "/workspace", "/workspace/", "."] {
        let error = sandbox.remove(root, true).await.unwrap_err();
        assert!(
            matches!(
                error,
                SandboxError::InvalidRequest { .. } | SandboxError::PathOutsideSandbox { .. }
            ),
            "{root:?}: {error:?}"
        );
    }
    assert!(workspace.join("keep").exists());
}

#[tokio::test]
async fn recursive_remove_does_not_follow_symlinks_out() {
    let host = TestHost::new();
    let sandbox = host.sandbox().await;
    let canary = host.dir.path().join("canary");
    std::fs::create_dir_all(canary.join("sub")).unwrap();
    std::fs::write(canary.join("sub/precious"), "x").unwrap();
    let workspace = host.workspace(&*sandbox);
    std::fs::create_dir_all(workspace.join("tree")).unwrap();
    std::os::unix::fs::symlink(&canary, workspace.join("tree/out")).unwrap();
    std::os::unix::fs::symlink(&canary, workspace.join("direct")).unwrap();
    sandbox.remove("tree", true).await.unwrap();
    sandbox.remove("direct", true).await.unwrap();
    assert!(canary.join("sub/precious").exists());
    assert!(!workspace.join("tree").exists() && !workspace.join("direct").exists());
}

#[tokio::test]
async fn escapes_are_refused_and_touch_nothing_outside() {
    let host = TestHost::new();
    let sandbox = host.sandbox().await;
    let workspace = host.workspace(&*sandbox);
    let canary = host.dir.path().join("canary");
    std::fs::create_dir_all(&canary).unwrap();
    std::fs::write(canary.join("file"), "original").unwrap();
    std::os::unix::fs::symlink("/etc", workspace.join("etc")).unwrap();
    std::os::unix::fs::symlink(&canary, workspace.join("parent")).unwrap();
    std::os::unix::fs::symlink("../../..", workspace.join("up")).unwrap();
    std::os::unix::fs::symlink(canary.join("file"), workspace.join("file-link")).unwrap();

    for path in [
        "../../x",
        "/etc/passwd",
        "/workspace/../x",
        "etc/passwd",
        "parent/file",
        "up/x",
    ] {
        outside(path, sandbox.get_file(path).await.err().unwrap());
        outside(path, put(&*sandbox, path, b"pwned").await.unwrap_err());
        outside(path, sandbox.read_dir(path).await.unwrap_err());
    }
    // Reading through a symlink that leads out is refused; writing to it replaces the
    // symlink itself (an upload is renamed into place), never the file it points to.
    outside(
        "file-link",
        sandbox.get_file("file-link").await.err().unwrap(),
    );
    put(&*sandbox, "file-link", b"replaced").await.unwrap();
    assert!(!workspace.join("file-link").is_symlink());
    assert_eq!(get(&*sandbox, "file-link").await.unwrap(), b"replaced");
    for path in ["parent/file", "up/x", "etc/passwd", "../x"] {
        outside(path, sandbox.remove(path, true).await.unwrap_err());
    }
    let error = sandbox
        .put_file(
            "parent/new/deep",
            PutOptions {
                mode: None,
                create_parents: true,
            },
            reader(b"x".to_vec()),
        )
        .await
        .unwrap_err();
    outside("parent/new/deep", error);
    assert_eq!(
        std::fs::read_to_string(canary.join("file")).unwrap(),
        "original"
    );
    assert_eq!(std::fs::read_dir(&canary).unwrap().count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_swapped_in_during_puts_never_lets_a_write_out() {
    let host = TestHost::new();
    let sandbox = host.sandbox().await;
    let workspace = host.workspace(&*sandbox);
    let canary = host.dir.path().join("canary");
    std::fs::create_dir_all(&canary).unwrap();
    std::fs::create_dir_all(workspace.join("target")).unwrap();

    // A thread swaps `target` between a real directory and a symlink to the canary as
    // fast as it can, while uploads write into `target/`.
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let stop = stop.clone();
        let workspace = workspace.clone();
        let canary = canary.clone();
        std::thread::spawn(move || {
            let dir = workspace.join("target");
            let real = workspace.join("real");
            let link = workspace.join("link");
            std::fs::create_dir_all(&real).unwrap();
            let _ = std::os::unix::fs::symlink(&canary, &link);
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // rename() swaps atomically: `target` is always one or the other.
                let _ = std::fs::rename(&dir, workspace.join("parked"));
                let _ = std::fs::rename(&link, &dir);
                let _ = std::fs::rename(&dir, &link);
                let _ = std::fs::rename(workspace.join("parked"), &dir);
                swaps += 1;
            }
            swaps
        })
    };
    let mut written = 0;
    let mut refused = 0;
    for index in 0..400 {
        let options = PutOptions {
            mode: None,
            create_parents: index % 2 == 0,
        };
        match sandbox
            .put_file(
                &format!("target/file-{index}"),
                options,
                reader(b"escaped?".to_vec()),
            )
            .await
        {
            Ok(_) => written += 1,
            Err(SandboxError::PathOutsideSandbox { .. } | SandboxError::FileNotFound { .. }) => {
                refused += 1
            }
            Err(error) => panic!("unexpected error: {error:?}"),
        }
        let _ = sandbox.get_file(&format!("target/file-{index}")).await;
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert!(swaps > 0 && written + refused == 400);
    let leaked: Vec<_> = std::fs::read_dir(&canary).unwrap().collect();
    assert!(
        leaked.is_empty(),
        "files written outside the workspace: {leaked:?}"
    );
}
