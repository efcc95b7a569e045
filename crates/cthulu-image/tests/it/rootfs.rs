//! Root filesystems: tar layers applied safely (attacked on purpose), OCI and `docker
//! save` tarballs with whiteouts, ext4 images checked with debugfs, debootstrap (opt-in).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use cthulu_image::rootfs::{self, layer, RootfsSource};
use cthulu_image::ImageError;
use tar::EntryType;

use crate::support;

/// One tar entry, its name and link target written raw (no validation by the tar crate,
/// so hostile names can be made).
struct Raw<'a> {
    name: &'a str,
    kind: EntryType,
    data: &'a [u8],
    link: Option<&'a str>,
}

fn file<'a>(name: &'a str, data: &'a [u8]) -> Raw<'a> {
    Raw {
        name,
        kind: EntryType::Regular,
        data,
        link: None,
    }
}

fn directory(name: &str) -> Raw<'_> {
    Raw {
        name,
        kind: EntryType::Directory,
        data: b"",
        link: None,
    }
}

fn symlink<'a>(name: &'a str, target: &'a str) -> Raw<'a> {
    Raw {
        name,
        kind: EntryType::Symlink,
        data: b"",
        link: Some(target),
    }
}

fn hard_link<'a>(name: &'a str, target: &'a str) -> Raw<'a> {
    Raw {
        name,
        kind: EntryType::Link,
        data: b"",
        link: Some(target),
    }
}

fn tar_bytes(entries: &[Raw<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_old();
        {
            let old = header.as_old_mut();
            old.name[..entry.name.len()].copy_from_slice(entry.name.as_bytes());
            if let Some(link) = entry.link {
                old.linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
        }
        header.set_entry_type(entry.kind);
        header.set_mode(if entry.kind == EntryType::Directory {
            0o755
        } else {
            0o644
        });
        header.set_size(entry.data.len() as u64);
        header.set_cksum();
        builder.append(&header, entry.data).unwrap();
    }
    builder.into_inner().unwrap()
}

/// A staging directory next to an `outside` directory holding `secret`.
struct Scene {
    _root: tempfile::TempDir,
    staging: PathBuf,
    outside: PathBuf,
}

fn scene() -> Scene {
    let root = tempfile::tempdir().unwrap();
    let staging = root.path().join("staging");
    let outside = root.path().join("outside");
    std::fs::create_dir(&staging).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"untouched").unwrap();
    Scene {
        staging,
        outside,
        _root: root,
    }
}

fn apply(staging: &Path, entries: &[Raw<'_>]) -> Result<(), ImageError> {
    let root = layer::open_root(staging).unwrap();
    layer::apply(
        &tar_bytes(entries)[..],
        &root,
        layer::LayerName {
            archive: Path::new("test.tar"),
            layer: "layer.tar",
        },
    )
}

fn assert_outside_untouched(scene: &Scene) {
    let mut names: Vec<_> = std::fs::read_dir(&scene.outside)
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["secret"]);
    assert_eq!(
        std::fs::read(scene.outside.join("secret")).unwrap(),
        b"untouched"
    );
}

fn assert_unsafe(result: Result<(), ImageError>, problem: &str) {
    match result {
        Err(ImageError::UnsafeEntry { problem: found, .. }) => {
            assert!(found.contains(problem), "{found:?} lacks {problem:?}")
        }
        other => panic!("expected an unsafe entry ({problem}), got {other:?}"),
    }
}

#[test]
fn dot_dot_and_absolute_names_are_refused() {
    let scene = scene();
    assert_unsafe(
        apply(&scene.staging, &[file("../outside/evil", b"x")]),
        "`..`",
    );
    assert_unsafe(
        apply(&scene.staging, &[file("ok/../../outside/evil", b"x")]),
        "`..`",
    );
    let absolute = format!("{}/evil", scene.outside.display());
    assert_unsafe(apply(&scene.staging, &[file(&absolute, b"x")]), "absolute");
    assert_outside_untouched(&scene);
}

#[test]
fn a_symlinked_parent_is_never_written_through() {
    let scene = scene();
    let outside = scene.outside.display().to_string();
    // An absolute symlink to the outside, then a file "inside" it.
    assert_unsafe(
        apply(
            &scene.staging,
            &[symlink("escape", &outside), file("escape/evil", b"x")],
        ),
        "symlink",
    );
    // A relative one, across two layers.
    apply(&scene.staging, &[symlink("up", "../outside")]).unwrap();
    assert_unsafe(apply(&scene.staging, &[file("up/evil", b"x")]), "symlink");
    assert_unsafe(apply(&scene.staging, &[directory("up/dir/")]), "symlink");
    // An opaque whiteout in a symlinked directory would empty the outside.
    assert_unsafe(
        apply(&scene.staging, &[file("up/.wh..wh..opq", b"")]),
        "symlink",
    );
    assert_outside_untouched(&scene);
}

#[test]
fn a_symlink_in_the_way_is_replaced_not_followed() {
    let scene = scene();
    let secret = scene.outside.join("secret").display().to_string();
    apply(
        &scene.staging,
        &[symlink("passwd", &secret), file("passwd", b"replaced")],
    )
    .unwrap();
    assert_eq!(
        std::fs::read(scene.staging.join("passwd")).unwrap(),
        b"replaced"
    );
    assert!(!std::fs::symlink_metadata(scene.staging.join("passwd"))
        .unwrap()
        .is_symlink());
    // Whiting out a symlink to a directory removes the link only.
    apply(
        &scene.staging,
        &[symlink("dir", &scene.outside.display().to_string())],
    )
    .unwrap();
    apply(&scene.staging, &[file(".wh.dir", b"")]).unwrap();
    assert!(!scene.staging.join("dir").exists());
    assert_unsafe(apply(&scene.staging, &[file(".wh..", b"")]), "whiteout");
    assert_outside_untouched(&scene);
}

#[test]
fn hard_links_stay_inside() {
    let scene = scene();
    assert_unsafe(
        apply(&scene.staging, &[hard_link("stolen", "../outside/secret")]),
        "`..`",
    );
    let secret = scene.outside.join("secret").display().to_string();
    assert_unsafe(
        apply(&scene.staging, &[hard_link("stolen", &secret)]),
        "absolute",
    );
    apply(&scene.staging, &[symlink("out", "../outside")]).unwrap();
    assert_unsafe(
        apply(&scene.staging, &[hard_link("stolen", "out/secret")]),
        "symlink",
    );
    assert!(!scene.staging.join("stolen").exists());
    // A good one.
    apply(&scene.staging, &[file("a", b"shared"), hard_link("b", "a")]).unwrap();
    assert_eq!(std::fs::read(scene.staging.join("b")).unwrap(), b"shared");
    assert_outside_untouched(&scene);
}

/// A `docker save` archive: `manifest.json` naming `<id>/layer.tar` files.
fn docker_save(path: &Path, layers: &[Vec<u8>]) {
    let mut builder = tar::Builder::new(std::fs::File::create(path).unwrap());
    let mut names = Vec::new();
    for (index, layer) in layers.iter().enumerate() {
        let name = format!("{index:064x}/layer.tar");
        let mut header = tar::Header::new_gnu();
        header.set_size(layer.len() as u64);
        header.set_mode(0o644);
        builder.append_data(&mut header, &name, &layer[..]).unwrap();
        names.push(name);
    }
    let manifest =
        serde_json::json!([{ "Config": "config.json", "RepoTags": ["t:latest"], "Layers": names }]);
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let mut header = tar::Header::new_gnu();
    header.set_size(manifest.len() as u64);
    header.set_mode(0o644);
    builder
        .append_data(&mut header, "manifest.json", &manifest[..])
        .unwrap();
    builder.finish().unwrap();
}

/// An OCI image layout: index.json → index → (arm64, amd64) manifests → gzipped layers.
fn oci_layout(path: &Path, layers: &[Vec<u8>]) {
    use sha2::Digest as _;
    let mut blobs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |bytes: Vec<u8>| {
        let digest: String = sha2::Sha256::digest(&bytes)
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        blobs.push((digest.clone(), bytes));
        format!("sha256:{digest}")
    };
    let layer_descriptors: Vec<_> = layers
        .iter()
        .map(|layer| {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(layer).unwrap();
            let digest = add(encoder.finish().unwrap());
            serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": 1})
        })
        .collect();
    let amd64 = add(serde_json::to_vec(
        &serde_json::json!({"schemaVersion": 2, "layers": layer_descriptors}),
    )
    .unwrap());
    let arm64 =
        add(serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "layers": []})).unwrap());
    let inner = add(
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [
            {"digest": arm64, "platform": {"architecture": "arm64", "os": "linux"}},
            {"digest": amd64, "platform": {"architecture": "amd64", "os": "linux"}},
        ]}))
        .unwrap(),
    );
    let index = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": inner}
    ]}))
    .unwrap();
    let mut builder = tar::Builder::new(std::fs::File::create(path).unwrap());
    let mut append = |name: &str, bytes: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        builder.append_data(&mut header, name, bytes).unwrap();
    };
    append("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    append("index.json", &index);
    for (digest, bytes) in &blobs {
        append(&format!("blobs/sha256/{digest}"), bytes);
    }
    builder.finish().unwrap();
}

fn two_layers() -> Vec<Vec<u8>> {
    vec![
        tar_bytes(&[
            directory("etc/"),
            file("etc/keep", b"kept"),
            file("etc/gone", b"removed by a whiteout"),
            directory("opaque/"),
            file("opaque/old", b"hidden by an opaque whiteout"),
            directory("opaque/sub/"),
            file("opaque/sub/deep", b"also hidden"),
            file("bin/tool", b"#!/bin/sh\n"),
        ]),
        tar_bytes(&[
            file("etc/.wh.gone", b""),
            file("opaque/.wh..wh..opq", b""),
            file("opaque/new", b"from the upper layer"),
            file("bin/tool", b"#!/bin/sh\necho v2\n"),
        ]),
    ]
}

fn tree(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(directory) = pending.pop() {
        for entry in std::fs::read_dir(directory).unwrap() {
            let path = entry.unwrap().path();
            found.push(path.strip_prefix(root).unwrap().display().to_string());
            if path.is_dir() && !path.is_symlink() {
                pending.push(path);
            }
        }
    }
    found.sort();
    found
}

fn assert_layers_applied(root: &Path) {
    assert_eq!(
        tree(root),
        ["bin", "bin/tool", "etc", "etc/keep", "opaque", "opaque/new"]
    );
    assert_eq!(
        std::fs::read(root.join("bin/tool")).unwrap(),
        b"#!/bin/sh\necho v2\n"
    );
}

#[test]
fn docker_save_layers_apply_in_order_with_whiteouts() {
    let directory = tempfile::tempdir().unwrap();
    let archive = directory.path().join("image.tar");
    docker_save(&archive, &two_layers());
    let staging = directory.path().join("root");
    std::fs::create_dir(&staging).unwrap();
    let mut seen = Vec::new();
    rootfs::oci::unpack(&archive, &staging, &mut |layer, count| {
        seen.push((layer, count))
    })
    .unwrap();
    assert_eq!(seen, [(1, 2), (2, 2)]);
    assert_layers_applied(&staging);
}

#[test]
fn oci_layouts_pick_the_amd64_manifest_and_gunzip_layers() {
    let directory = tempfile::tempdir().unwrap();
    let archive = directory.path().join("image.tar");
    oci_layout(&archive, &two_layers());
    let staging = directory.path().join("root");
    std::fs::create_dir(&staging).unwrap();
    rootfs::oci::unpack(&archive, &staging, &mut |_, _| {}).unwrap();
    assert_layers_applied(&staging);
}

#[test]
fn a_hostile_layer_in_an_archive_is_named() {
    let directory = tempfile::tempdir().unwrap();
    let archive = directory.path().join("image.tar");
    docker_save(&archive, &[tar_bytes(&[file("../../evil", b"x")])]);
    let staging = directory.path().join("root");
    std::fs::create_dir(&staging).unwrap();
    let error = rootfs::oci::unpack(&archive, &staging, &mut |_, _| {}).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("has an unsafe entry \"../../evil\": `..` component"),
        "{error}"
    );
    assert!(!directory.path().join("evil").exists());

    std::fs::write(&archive, tar_bytes(&[file("random.txt", b"x")])).unwrap();
    let error = rootfs::oci::unpack(&archive, &staging, &mut |_, _| {}).unwrap_err();
    assert!(matches!(error, ImageError::OciFormat { .. }), "{error}");
}

fn mkfs_available() -> bool {
    std::process::Command::new("mkfs.ext4")
        .arg("-V")
        .output()
        .is_ok_and(|output| output.status.success())
}

#[test]
fn a_directory_becomes_ext4_with_symlinks_kept_as_symlinks() {
    if !mkfs_available() {
        return support::skip("image-rootfs", "mkfs.ext4 is not installed (e2fsprogs)");
    }
    let directory = tempfile::tempdir().unwrap();
    let tree = directory.path().join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/hostname"), b"guest\n").unwrap();
    std::os::unix::fs::symlink("/etc/shadow", tree.join("escape")).unwrap();
    let output = directory.path().join("rootfs.ext4");
    let content = rootfs::content_bytes(&tree).unwrap();
    let size = rootfs::image_size(content, None).unwrap();
    assert_eq!(size, rootfs::MIN_ROOTFS_BYTES);
    rootfs::make_ext4(&tree, &output, size).unwrap();
    assert_eq!(std::fs::metadata(&output).unwrap().len(), size);
    let listing = support::debugfs(&output, "ls -l /");
    assert!(listing.contains(" etc"), "{listing}");
    assert!(
        listing.contains("120777") && listing.contains("escape"),
        "{listing}"
    );
    assert_eq!(support::debugfs(&output, "cat /etc/hostname"), "guest\n");
    let link = support::debugfs(&output, "stat /escape");
    assert!(link.contains("Fast link dest: \"/etc/shadow\""), "{link}");
}

/// The whole build with a directory rootfs and then an OCI one.
#[test]
fn images_with_a_directory_or_oci_rootfs() {
    if let Some(reason) = support::unavailable() {
        return support::skip("image-build", &reason);
    }
    if !mkfs_available() {
        return support::skip("image-rootfs", "mkfs.ext4 is not installed (e2fsprogs)");
    }
    let directory = tempfile::tempdir().unwrap();
    let tree = directory.path().join("tree");
    std::fs::create_dir_all(tree.join("srv")).unwrap();
    std::fs::write(tree.join("srv/data"), b"payload").unwrap();
    let images = directory.path().join("images");
    let mut options = support::options(&images);
    options.rootfs = Some(RootfsSource::parse(tree.to_str().unwrap()).unwrap());
    options.rootfs_size = Some(300 << 20);
    let (image, _) = support::build(&options);
    let rootfs = image.rootfs().expect("a rootfs");
    assert_eq!(std::fs::metadata(rootfs).unwrap().len(), 300 << 20);
    assert_eq!(support::debugfs(rootfs, "cat /srv/data"), "payload");
    assert_eq!(
        image.manifest().rootfs.as_ref().unwrap().source,
        format!("dir:{}", tree.display())
    );
    image.verify().unwrap();

    // The directory changes: only the rootfs is rebuilt.
    std::fs::write(tree.join("srv/data"), b"payload v2").unwrap();
    let (changed, events) = support::build(&options);
    assert_ne!(changed.version(), image.version());
    assert!(events.contains(&cthulu_image::Progress::Reused {
        label: "kernel and initramfs (unchanged)".into()
    }));
    assert_eq!(
        support::debugfs(changed.rootfs().unwrap(), "cat /srv/data"),
        "payload v2"
    );

    let archive = directory.path().join("image.tar");
    docker_save(&archive, &two_layers());
    options.name = "oci".into();
    options.rootfs = Some(RootfsSource::parse(archive.to_str().unwrap()).unwrap());
    options.rootfs_size = None;
    let (image, _) = support::build(&options);
    let rootfs = image.rootfs().expect("a rootfs");
    assert_eq!(
        std::fs::metadata(rootfs).unwrap().len(),
        rootfs::MIN_ROOTFS_BYTES
    );
    assert_eq!(
        support::debugfs(rootfs, "cat /bin/tool"),
        "#!/bin/sh\necho v2\n"
    );
    let listing = support::debugfs(rootfs, "ls /opaque");
    assert!(
        listing.contains("new") && !listing.contains("old"),
        "{listing}"
    );
    assert!(!support::debugfs(rootfs, "ls /etc").contains("gone"));

    let too_small = {
        let mut options = options.clone();
        options.rootfs = Some(RootfsSource::Directory(tree.clone()));
        options.rootfs_size = Some(4096);
        cthulu_image::build(&options, &mut |_| {}).unwrap_err()
    };
    assert!(
        matches!(too_small, ImageError::RootfsTooSmall { .. }),
        "{too_small}"
    );
    // The failed build left the working image alone.
    cthulu_image::open(&images, "oci")
        .unwrap()
        .verify()
        .unwrap();
}

/// debootstrap takes about a minute and needs root: opt in with CTHULU_TEST_DEBOOTSTRAP=1.
#[test]
fn image_with_a_debootstrap_rootfs() {
    if std::env::var("CTHULU_TEST_DEBOOTSTRAP").as_deref() != Ok("1") {
        return support::skip(
            "image-debootstrap",
            "slow; set CTHULU_TEST_DEBOOTSTRAP=1 to run it",
        );
    }
    if let Some(reason) = support::unavailable() {
        return support::skip("image-debootstrap", &reason);
    }
    let images = tempfile::tempdir().unwrap();
    let mut options = support::options(images.path());
    options.rootfs = Some(RootfsSource::Debootstrap);
    let (image, _) = support::build(&options);
    let rootfs = image.rootfs().unwrap();
    let listing = support::debugfs(rootfs, "ls -l /usr/bin");
    assert!(
        listing.contains("python3") && listing.contains("git"),
        "{listing}"
    );
    assert_eq!(
        image.manifest().rootfs.as_ref().unwrap().source,
        "debootstrap"
    );
}
