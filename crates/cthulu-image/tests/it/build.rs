//! Building the image from Debian's packages: contents, manifest, caching.

use std::os::unix::fs::MetadataExt as _;

use cthulu_image::cpio::EntryKind;
use cthulu_image::{ImageError, Progress};

use crate::support;

/// The contents of a freshly built image: initramfs entries, module order, manifest.
#[test]
fn builds_an_image_and_reuses_what_did_not_change() {
    if let Some(reason) = support::unavailable() {
        return support::skip("image-build", &reason);
    }
    let images = tempfile::tempdir().unwrap();
    let options = support::options(images.path());
    let (image, events) = support::build(&options);
    assert!(
        events
            .iter()
            .any(|event| matches!(event, Progress::Finished { label, .. } if label == "writing initramfs.cpio.gz")),
        "{events:?}"
    );
    image.verify().unwrap();
    let manifest = image.manifest().clone();
    assert_eq!(image.dir(), images.path().join("default"));
    assert_eq!(manifest.name, "default");
    assert_eq!(manifest.version.len(), 12);
    assert!(
        manifest.kernel_version.starts_with("6.1.0-")
            && manifest.kernel_version.ends_with("-cloud-amd64"),
        "{}",
        manifest.kernel_version
    );
    assert!(manifest
        .packages
        .contains_key(&format!("linux-image-{}", manifest.kernel_version)));
    assert!(manifest.packages.contains_key("busybox-static"));
    assert!(image.rootfs().is_none());
    assert!(std::fs::metadata(image.kernel()).unwrap().len() > 1 << 20);
    println!(
        "kernel {} modules {:#?}",
        manifest.kernel_version, manifest.modules
    );

    // The initramfs, read back.
    let entries = support::read_initramfs(image.initramfs());
    let entry = |name: &str| {
        entries
            .iter()
            .find(|entry| entry.name == name)
            .unwrap_or_else(|| panic!("no {name} in the initramfs"))
    };
    let busybox = std::fs::read(support::BUSYBOX).unwrap();
    assert_eq!(entry("init").kind, EntryKind::File(busybox.clone()));
    assert_eq!(entry("init").permissions, 0o755);
    assert_eq!(entry("bin/busybox").kind, EntryKind::File(busybox));
    assert_eq!(
        entry("bin/sh").kind,
        EntryKind::Symlink("/bin/busybox".into())
    );
    assert_eq!(
        entry("sbin/insmod").kind,
        EntryKind::Symlink("/bin/busybox".into())
    );
    assert_eq!(
        entry("dev/console").kind,
        EntryKind::CharDevice { major: 5, minor: 1 }
    );
    for directory in ["dev", "proc", "sys", "tmp", "root", "etc", "mnt", "run"] {
        assert_eq!(entry(directory).kind, EntryKind::Directory, "{directory}");
    }
    assert_eq!(entry("tmp").permissions, 0o1777);
    assert!(
        matches!(&entry("etc/passwd").kind, EntryKind::File(text) if text.starts_with(b"root:x:0:0:"))
    );
    entry("etc/group");
    entry("etc/hostname");
    // Every directory comes before what is in it.
    for (index, item) in entries.iter().enumerate() {
        if let Some((parent, _)) = item.name.rsplit_once('/') {
            let parent_index = entries.iter().position(|entry| entry.name == parent);
            assert!(parent_index.is_some_and(|at| at < index), "{}", item.name);
        }
    }

    // The module list: absolute paths in the archive, dependencies first.
    let EntryKind::File(list) = &entry("etc/cthulu/modules").kind else {
        panic!("the module list is not a file")
    };
    let listed: Vec<String> = String::from_utf8(list.clone())
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(listed, manifest.modules);
    for path in &listed {
        assert!(path.starts_with(&format!("/lib/modules/{}/", manifest.kernel_version)));
        assert!(
            matches!(entry(&path[1..]).kind, EntryKind::File(_)),
            "{path}"
        );
    }
    let position = |module: &str| {
        listed
            .iter()
            .position(|path| path.ends_with(&format!("/{module}.ko")))
            .unwrap_or_else(|| panic!("{module} is not in {listed:#?}"))
    };
    for (dependency, dependent) in [
        ("virtio", "virtio_mmio"),
        ("virtio_ring", "virtio_mmio"),
        ("virtio_ring", "virtio_blk"),
        ("virtio", "virtio_console"),
        ("failover", "net_failover"),
        ("net_failover", "virtio_net"),
        ("vsock", "vmw_vsock_virtio_transport_common"),
        (
            "vmw_vsock_virtio_transport_common",
            "vmw_vsock_virtio_transport",
        ),
    ] {
        assert!(
            position(dependency) < position(dependent),
            "{dependency} after {dependent}"
        );
    }

    // What a crashed build left is removed by the next one (the final listing shows it).
    std::fs::create_dir_all(images.path().join(".build+default+image-crashed/half")).unwrap();

    // Same inputs: nothing is done.
    let manifest_mtime = std::fs::metadata(image.dir().join("manifest.json"))
        .unwrap()
        .modified()
        .unwrap();
    let (again, events) = support::build(&options);
    assert_eq!(
        events.last(),
        Some(&Progress::UpToDate {
            version: manifest.version.clone()
        })
    );
    assert!(!events.iter().any(
        |event| matches!(event, Progress::Started { label } if label.starts_with("downloading"))
    ));
    assert_eq!(again.version(), manifest.version);
    assert_eq!(
        std::fs::metadata(image.dir().join("manifest.json"))
            .unwrap()
            .modified()
            .unwrap(),
        manifest_mtime
    );

    // A changed agent: only the initramfs is rebuilt; the kernel file is the same inode.
    let kernel_inode = std::fs::metadata(image.kernel()).unwrap().ino();
    let changed_agent = images.path().join("agent");
    let mut bytes = std::fs::read(support::BUSYBOX).unwrap();
    bytes.extend_from_slice(b"\0another build");
    std::fs::write(&changed_agent, bytes).unwrap();
    let mut changed = options.clone();
    changed.agent = changed_agent;
    let (rebuilt, events) = support::build(&changed);
    assert_ne!(rebuilt.version(), manifest.version);
    assert!(
        events.contains(&Progress::Reused {
            label: "kernel (unchanged)".into()
        }),
        "{events:?}"
    );
    assert_eq!(
        std::fs::metadata(rebuilt.kernel()).unwrap().ino(),
        kernel_inode
    );
    assert_ne!(
        rebuilt.manifest().files["initramfs.cpio.gz"].sha256,
        manifest.files["initramfs.cpio.gz"].sha256
    );
    assert_ne!(rebuilt.manifest().agent_sha256, manifest.agent_sha256);
    rebuilt.verify().unwrap();

    // --force rebuilds even when up to date; nothing is left behind but the image, the
    // lock and the cache.
    let mut forced = changed.clone();
    forced.force = true;
    let (forced_image, events) = support::build(&forced);
    assert_eq!(forced_image.version(), rebuilt.version());
    assert!(events
        .iter()
        .any(|event| matches!(event, Progress::Finished { label, .. } if label.starts_with("writing kernel"))));
    assert_ne!(
        std::fs::metadata(forced_image.kernel()).unwrap().ino(),
        kernel_inode
    );
    let mut left: Vec<String> = std::fs::read_dir(images.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, [".lock+default", "agent", "default"]);
    let listed = cthulu_image::list(images.path());
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].version.as_deref(), Some(rebuilt.version()));
}

#[test]
fn a_dynamic_agent_is_refused_before_anything_is_fetched() {
    let images = tempfile::tempdir().unwrap();
    let mut options = support::options(images.path());
    options.agent = "/bin/sh".into();
    let mut events = Vec::new();
    let error = cthulu_image::build(&options, &mut |event| events.push(event)).unwrap_err();
    assert!(matches!(error, ImageError::AgentDynamic { .. }), "{error}");
    assert!(error.to_string().contains("scripts/build-agent"));
    assert!(events.is_empty());
    assert!(!images.path().join("default").exists());
}

#[test]
fn invalid_names_are_refused() {
    let images = tempfile::tempdir().unwrap();
    let mut options = support::options(images.path());
    options.name = "../escape".into();
    let error = cthulu_image::build(&options, &mut |_| {}).unwrap_err();
    assert!(matches!(error, ImageError::InvalidName { .. }), "{error}");
}
