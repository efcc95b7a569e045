//! Files: round trips, modes, parents, listings, removal, and every way out of the
//! workspace.

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cthulu_guest_protocol::message::{EntryKind, ErrorCode};

use crate::host::Agent;

#[test]
fn round_trips_are_byte_exact_with_modes() {
    let agent = Agent::start();
    let host = agent.connect();
    host.put("one", b"x", 0o600).unwrap();
    assert_eq!(host.get("one").unwrap(), (0o600, b"x".to_vec()));
    let big: Vec<u8> = (0..10 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    host.put("big.bin", &big, 0o755).unwrap();
    let on_disk = std::fs::read(agent.path("big.bin")).unwrap();
    assert!(on_disk == big, "the upload differs");
    assert_eq!(
        std::fs::metadata(agent.path("big.bin"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o755
    );
    let (mode, bytes) = host.get("big.bin").unwrap();
    assert_eq!(mode, 0o755);
    assert!(bytes == big, "the download differs");
    host.put("empty", b"", 0o644).unwrap();
    assert_eq!(host.get("empty").unwrap(), (0o644, Vec::new()));
    // Replacing keeps nothing of the old file, and no temporaries stay behind.
    host.put("one", b"second", 0o640).unwrap();
    assert_eq!(host.get("one").unwrap(), (0o640, b"second".to_vec()));
    let names: Vec<String> = host.list("").unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["big.bin", "empty", "one"]);
    assert_eq!(host.get("missing").unwrap_err().code, ErrorCode::NotFound);
    std::fs::create_dir(agent.path("dir")).unwrap();
    assert_eq!(host.get("dir").unwrap_err().code, ErrorCode::IsADirectory);
}

#[test]
fn parents_are_created_only_when_asked() {
    let agent = Agent::start();
    let host = agent.connect();
    let error = host.put("a/b/c.txt", b"c", 0o644).unwrap_err();
    assert_eq!(error.code, ErrorCode::NotFound);
    host.put_with("a/b/c.txt", b"c", 0o644, true).unwrap();
    assert_eq!(std::fs::read(agent.path("a/b/c.txt")).unwrap(), b"c");
    assert_eq!(
        std::fs::metadata(agent.path("a/b"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
}

#[test]
fn listings_describe_entries_without_following_symlinks() {
    let agent = Agent::start();
    let host = agent.connect();
    std::fs::write(agent.path("file"), "12345").unwrap();
    std::fs::create_dir(agent.path("dir")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", agent.path("link")).unwrap();
    let entries = host.list("").unwrap();
    let kinds: Vec<(String, EntryKind)> =
        entries.iter().map(|e| (e.name.clone(), e.kind)).collect();
    assert_eq!(
        kinds,
        [
            ("dir".to_string(), EntryKind::Dir),
            ("file".to_string(), EntryKind::File),
            ("link".to_string(), EntryKind::Symlink)
        ]
    );
    assert_eq!(entries[1].size, 5);
    assert!(entries[1].modified_ms > 1_600_000_000_000);
    assert_eq!(entries[2].link_target.as_deref(), Some("/etc/passwd"));
    for index in 0..5000 {
        std::fs::write(agent.path(&format!("dir/f{index}")), "").unwrap();
    }
    assert_eq!(host.list("dir").unwrap().len(), 5000);
    assert_eq!(
        host.list("file").unwrap_err().code,
        ErrorCode::NotADirectory
    );
}

#[test]
fn removal() {
    let agent = Agent::start();
    let host = agent.connect();
    std::fs::write(agent.path("file"), "x").unwrap();
    std::fs::create_dir_all(agent.path("tree/a/b")).unwrap();
    std::fs::write(agent.path("tree/a/b/f"), "x").unwrap();
    std::fs::create_dir(agent.path("empty")).unwrap();
    let outside = agent.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("keep"), "x").unwrap();
    std::os::unix::fs::symlink(&outside, agent.path("tree/a/link")).unwrap();
    std::os::unix::fs::symlink(&outside, agent.path("link")).unwrap();

    host.remove("file", false).unwrap();
    host.remove("link", false).unwrap();
    assert!(
        outside.join("keep").exists(),
        "a symlink is removed, not its target"
    );
    host.remove("empty", false).unwrap();
    assert_eq!(
        host.remove("tree", false).unwrap_err().code,
        ErrorCode::DirectoryNotEmpty
    );
    host.remove("tree", true).unwrap();
    assert!(!agent.path("tree").exists());
    assert!(
        outside.join("keep").exists(),
        "the walk never follows a symlink"
    );
    assert_eq!(
        host.remove("", true).unwrap_err().code,
        ErrorCode::InvalidRequest
    );
    assert_eq!(
        host.remove(".", true).unwrap_err().code,
        ErrorCode::InvalidRequest
    );
    assert!(agent.workspace.exists());
    assert_eq!(
        host.remove("missing", false).unwrap_err().code,
        ErrorCode::NotFound
    );
}

#[test]
fn every_way_out_of_the_workspace_is_refused() {
    let agent = Agent::start();
    let host = agent.connect();
    let outside = agent.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), "secret").unwrap();
    std::os::unix::fs::symlink(&outside, agent.path("absolute")).unwrap();
    std::os::unix::fs::symlink("../outside", agent.path("relative")).unwrap();
    let outside_workspace = |result: Result<(), cthulu_guest_protocol::message::ErrorReply>,
                             what: &str| {
        assert_eq!(
            result.unwrap_err().code,
            ErrorCode::OutsideWorkspace,
            "{what}"
        );
    };
    for path in [
        "../outside/secret",
        "/etc/passwd",
        "absolute/secret",
        "relative/secret",
    ] {
        outside_workspace(host.get(path).map(|_| ()), path);
        outside_workspace(host.put(path, b"pwned", 0o644), path);
        outside_workspace(
            host.list(path.rsplit_once('/').unwrap().0).map(|_| ()),
            path,
        );
        outside_workspace(host.remove(path, true), path);
    }
    outside_workspace(
        host.put_with("absolute/new/file", b"x", 0o644, true),
        "create parents",
    );
    assert_eq!(
        std::fs::read_to_string(outside.join("secret")).unwrap(),
        "secret"
    );
    assert!(!outside.join("new").exists());
    // The absolute path of the workspace itself is accepted.
    let inside = format!("{}/ok", agent.workspace.display());
    host.put(&inside, b"ok", 0o644).unwrap();
    assert_eq!(std::fs::read(agent.path("ok")).unwrap(), b"ok");
}

#[test]
fn a_symlink_swapped_in_during_puts_never_leads_out() {
    let agent = Agent::start();
    let host = agent.connect();
    let outside = agent.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let stop = stop.clone();
        let target = agent.path("d");
        let outside = outside.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let _ = std::fs::remove_dir_all(&target);
                let _ = std::fs::remove_file(&target);
                let _ = std::fs::create_dir(&target);
                let _ = std::fs::remove_dir_all(&target);
                let _ = std::os::unix::fs::symlink(&outside, &target);
            }
        })
    };
    for index in 0..200 {
        let _ = host.put(&format!("d/f{index}"), b"x", 0o644);
        let _ = host.put_with(&format!("d/sub/f{index}"), b"x", 0o644, true);
    }
    stop.store(true, Ordering::SeqCst);
    swapper.join().unwrap();
    let leaked: Vec<_> = std::fs::read_dir(&outside).unwrap().collect();
    assert!(leaked.is_empty(), "files written outside: {leaked:?}");
}
