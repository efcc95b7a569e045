//! Filesystem checkpoints of the whole writable state (workspace, /root and friends, the
//! overlays' upper layer): installs, whiteouts, opaque directories and owners come back;
//! a doctored archive cannot write outside the sandbox. The contract's own scenarios are
//! in `tests/conformance.rs`.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use cthulu_core::{SandboxHandle, SandboxProvider, SandboxSpec};
use cthulu_namespace::init::IdMapping;
use cthulu_types::{Checkpoint, CheckpointRequest, SandboxStatus};

use crate::support::{sh, sh_ok, snapshot, Fixture};

async fn checkpoint(handle: &std::sync::Arc<dyn SandboxHandle>) -> Checkpoint {
    handle
        .checkpoint(CheckpointRequest::default())
        .await
        .expect("checkpoint")
}

/// The ids the sandbox's root has on the host.
fn mapped_root() -> IdMapping {
    IdMapping::for_server(
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_install_in_usr_local_and_root_files_come_back_with_their_owners() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let spec = SandboxSpec {
        env: [("KEPT".to_owned(), "yes".to_owned())].into(),
        ..SandboxSpec::default()
    };
    let (sandbox_id, handle) = fixture.sandbox_with(&spec).await;
    // A server that maps only itself gives its sandboxes no other ids to hand out.
    let ids = mapped_root();
    let other_owner = ids.count > 2345;
    let chown = if other_owner {
        "chown 1234:2345 /usr/local/pkg"
    } else {
        "true"
    };
    sh_ok(
        &handle,
        &format!(
            "mkdir -p /usr/local/pkg/bin && printf '#!/bin/sh\\necho tool-ran\\n' > \
             /usr/local/pkg/bin/tool && chmod 755 /usr/local/pkg/bin/tool && {chown} && \
             echo settings > /root/.toolrc && echo data > /workspace/data"
        ),
    )
    .await;
    let init_before = fixture.init_pid(&sandbox_id);
    let saved = checkpoint(&handle).await;

    sh_ok(
        &handle,
        "rm -r /usr/local/pkg && echo other > /usr/local/other && echo changed > /root/.toolrc \
         && rm /workspace/data && sleep 1000 >/dev/null 2>&1 &",
    )
    .await;
    handle.restore(&saved.id).await.expect("restore");

    assert_eq!(handle.status(), SandboxStatus::Running);
    assert_eq!(
        sh_ok(&handle, "/usr/local/pkg/bin/tool; cat /root/.toolrc /workspace/data; ls /usr/local | grep -c other; echo $KEPT").await,
        "tool-ran\nsettings\ndata\n0\nyes\n"
    );
    // Owners inside as they were, which are the sandbox's ids outside.
    let expected = if other_owner {
        "1234:2345\n0:0\n"
    } else {
        "0:0\n0:0\n"
    };
    assert_eq!(
        sh_ok(
            &handle,
            "stat -c %u:%g /usr/local/pkg /usr/local/pkg/bin/tool"
        )
        .await,
        expected
    );
    let upper = fixture.dir(&sandbox_id).join("layer/upper/usr/local/pkg");
    let metadata = upper.metadata().unwrap();
    if other_owner {
        assert_eq!(
            (metadata.uid(), metadata.gid()),
            (ids.uid + 1234, ids.gid + 2345)
        );
    } else {
        assert_eq!((metadata.uid(), metadata.gid()), (ids.uid, ids.gid));
    }
    // Processes did not survive: a new init runs the sandbox.
    assert_ne!(fixture.init_pid(&sandbox_id), init_before);
    assert_eq!(sh_ok(&handle, "pgrep -c sleep || true").await, "0\n");
    // And after a restart of the server the checkpoint is still there.
    let restarted = fixture.restarted();
    let handle = restarted.attach(&sandbox_id, &spec).await.unwrap();
    assert_eq!(handle.list_checkpoints().await.unwrap(), vec![saved]);
    handle.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn whiteouts_and_opaque_directories_are_restored() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let image = fixture.state.path().join("image");
    if let Err(reason) = crate::image::make_rootfs(&image) {
        eprintln!("SKIP namespace checkpoint: {reason}");
        return;
    }
    // A lower directory the sandbox's root owns, so it may empty it.
    let lower = image.join("etc/lowerdir");
    std::fs::create_dir(&lower).unwrap();
    for name in ["a", "b"] {
        std::fs::write(lower.join(name), name).unwrap();
    }
    let ids = mapped_root();
    for path in [lower.clone(), lower.join("a"), lower.join("b")] {
        std::os::unix::fs::lchown(&path, Some(ids.uid), Some(ids.gid)).unwrap();
    }
    let spec = SandboxSpec {
        image: Some(image.display().to_string()),
        ..SandboxSpec::default()
    };
    let (sandbox_id, handle) = fixture.sandbox_with(&spec).await;
    sh_ok(
        &handle,
        "rm /etc/marker && rm -r /etc/lowerdir && mkdir /etc/lowerdir && echo n > /etc/lowerdir/new",
    )
    .await;
    assert_eq!(sh_ok(&handle, "ls /etc/lowerdir").await, "new\n");
    let upper = fixture.dir(&sandbox_id).join("layer/upper/etc");
    let marker = std::fs::symlink_metadata(upper.join("marker")).unwrap();
    assert_eq!(marker.rdev(), 0, "a whiteout is a character device 0:0");
    let saved = checkpoint(&handle).await;

    sh_ok(
        &handle,
        "echo again > /etc/marker && rm -r /etc/lowerdir && mkdir /etc/lowerdir",
    )
    .await;
    handle.restore(&saved.id).await.expect("restore");
    let marker = sh(&handle, "cat /etc/marker").await;
    assert_ne!(
        marker.exit.exit_code,
        Some(0),
        "the deleted file stays deleted: {marker:?}"
    );
    assert_eq!(
        sh_ok(&handle, "ls /etc/lowerdir").await,
        "new\n",
        "the opaque directory still hides the lower one's files"
    );
    handle.destroy().await.unwrap();
}

/// One tar entry written byte by byte, so its path may be anything (the `tar` crate's
/// builder refuses `..` and absolute paths).
fn raw_entry(
    archive: &mut Vec<u8>,
    path: &str,
    kind: tar::EntryType,
    link: &str,
    contents: &[u8],
    uid: u64,
) {
    let mut header = tar::Header::new_gnu();
    let gnu = header.as_gnu_mut().unwrap();
    gnu.name[..path.len()].copy_from_slice(path.as_bytes());
    gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
    header.set_entry_type(kind);
    header.set_mode(0o4755);
    header.set_uid(uid);
    header.set_gid(uid);
    header.set_size(contents.len() as u64);
    header.set_cksum();
    archive.extend_from_slice(header.as_bytes());
    archive.extend_from_slice(contents);
    archive.resize(archive.len().div_ceil(512) * 512, 0);
}

fn gzip(mut tar: Vec<u8>) -> Vec<u8> {
    tar.extend_from_slice(&[0; 1024]);
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(&tar).unwrap();
    encoder.finish().unwrap()
}

/// Every path under `dir`.
fn listing(dir: &Path) -> Vec<String> {
    snapshot(dir)
        .into_iter()
        .map(|(path, _)| path.display().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_doctored_archive_cannot_write_outside_the_sandbox() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let outside = fixture.state.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("victim"), "untouched").unwrap();
    let (sandbox_id, handle) = fixture.sandbox().await;
    let dir = fixture.dir(&sandbox_id);
    let saved = checkpoint(&handle).await;
    let archive = dir.join("checkpoints").join(format!("{}.tar.gz", saved.id));
    let outside_text = outside.display().to_string();
    let file = tar::EntryType::Regular;

    // Paths that leave their tree, trees that do not exist, a device, a hard link to a
    // host file, and a setuid file owned by the host's root.
    let mut tar = Vec::new();
    raw_entry(&mut tar, "../../../outside/dotdot", file, "", b"x", 0);
    raw_entry(&mut tar, "workspace/../../escape", file, "", b"x", 0);
    let absolute = format!("{outside_text}/absolute");
    raw_entry(&mut tar, &absolute, file, "", b"x", 0);
    raw_entry(&mut tar, "nosuchtree/file", file, "", b"x", 0);
    raw_entry(&mut tar, "upper/etc/null", tar::EntryType::Char, "", b"", 0);
    raw_entry(
        &mut tar,
        "workspace/shadow",
        tar::EntryType::Link,
        "/etc/shadow",
        b"",
        0,
    );
    raw_entry(&mut tar, "workspace/setuid", file, "", b"#!/bin/sh\n", 0);
    std::fs::write(&archive, gzip(tar)).unwrap();
    handle
        .restore(&saved.id)
        .await
        .expect("the placeable entries are restored");
    let workspace = dir.join("workspace");
    assert_eq!(
        listing(&workspace),
        [workspace.join("setuid").display().to_string()]
    );
    let setuid = workspace.join("setuid").metadata().unwrap();
    let ids = mapped_root();
    assert_eq!(
        (setuid.uid(), setuid.gid()),
        (ids.uid, ids.gid),
        "an owner outside the sandbox's ids is given to its root"
    );
    assert!(!dir.join("layer/upper/etc/null").exists());

    // Symlinks out, absolute and relative, then entries through them or onto them.
    for (link, target) in [
        ("workspace/abs", outside_text.clone()),
        ("root/rel", "../../../outside".to_owned()),
    ] {
        for through in [format!("{link}/escaped"), link.to_owned()] {
            let mut tar = Vec::new();
            raw_entry(&mut tar, link, tar::EntryType::Symlink, &target, b"", 0);
            raw_entry(&mut tar, &through, file, "", b"escaped", 0);
            std::fs::write(&archive, gzip(tar)).unwrap();
            let error = handle
                .restore(&saved.id)
                .await
                .expect_err("writing through a symlink out is refused");
            assert!(
                error.to_string().contains("restore the checkpoint"),
                "{error}"
            );
        }
    }
    assert_eq!(
        listing(&outside),
        [outside.join("victim").display().to_string()]
    );
    assert_eq!(
        std::fs::read_to_string(outside.join("victim")).unwrap(),
        "untouched"
    );
    // The sandbox runs on after a failed restore.
    assert_eq!(sh_ok(&handle, "echo alive").await, "alive\n");
    handle.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restore_keeps_a_stopped_sandbox_stopped_in_its_cgroups() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let info = fixture.provider.info();
    let pids = info
        .limits
        .iter()
        .any(|limit| limit.limit == "pids" && limit.enforced);
    if !(info.capabilities.stop_resume && pids) {
        eprintln!("SKIP namespace checkpoint: this server cannot write cgroups here");
        return;
    }
    let spec = SandboxSpec {
        resources: cthulu_types::Resources {
            pids: Some(64),
            ..cthulu_types::Resources::default()
        },
        ..SandboxSpec::default()
    };
    let (sandbox_id, handle) = fixture.sandbox_with(&spec).await;
    sh_ok(&handle, "echo before > /root/file").await;
    let saved = checkpoint(&handle).await;
    sh_ok(&handle, "echo after > /root/file").await;
    handle.stop().await.unwrap();
    handle
        .restore(&saved.id)
        .await
        .expect("restore of a stopped sandbox");
    assert_eq!(handle.status(), SandboxStatus::Stopped);
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixture.dir(&sandbox_id).join("state.json")).unwrap(),
    )
    .unwrap();
    let init = fixture.init_pid(&sandbox_id).to_string();
    for controller in ["pids", "freezer"] {
        let group = Path::new(state["cgroups"][controller].as_str().unwrap()).to_owned();
        let procs = std::fs::read_to_string(group.join("cgroup.procs")).unwrap();
        assert!(
            procs.lines().any(|pid| pid == init),
            "the new init {init} is in the {controller} group: {procs:?}"
        );
    }
    let group = Path::new(state["cgroups"]["freezer"].as_str().unwrap()).to_owned();
    assert_eq!(
        std::fs::read_to_string(group.join("freezer.state"))
            .unwrap()
            .trim(),
        "FROZEN"
    );
    handle.resume().await.unwrap();
    assert_eq!(sh_ok(&handle, "cat /root/file").await, "before\n");
    handle.destroy().await.unwrap();
}
