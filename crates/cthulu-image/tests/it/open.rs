//! Opening images: missing, corrupt, truncated, of another format; listing them.

use std::collections::BTreeMap;
use std::path::Path;

use cthulu_image::manifest::{FileRecord, Inputs, Manifest, RootfsRecord};
use cthulu_image::ImageError;
use sha2::Digest as _;

fn sha256(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Writes a small but well-formed image `name` by hand (no build needed).
fn fake_image(images_dir: &Path, name: &str, with_rootfs: bool) -> Manifest {
    let dir = images_dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = BTreeMap::new();
    let mut contents = vec![
        ("vmlinuz", b"kernel bytes".to_vec()),
        ("initramfs.cpio.gz", vec![7u8; 1843]),
    ];
    if with_rootfs {
        contents.push(("rootfs.ext4", vec![0u8; 4096]));
    }
    for (file, bytes) in contents {
        std::fs::write(dir.join(file), &bytes).unwrap();
        files.insert(
            file.to_owned(),
            FileRecord {
                size: bytes.len() as u64,
                sha256: sha256(&bytes),
            },
        );
    }
    let manifest = Manifest {
        format: 1,
        name: name.to_owned(),
        version: "0123456789ab".into(),
        created: "2026-11-22T10:00:00Z".into(),
        kernel_version: "6.1.0-56-cloud-amd64".into(),
        packages: BTreeMap::from([(
            "linux-image-6.1.0-56-cloud-amd64".into(),
            "6.1.192-2".into(),
        )]),
        agent_sha256: "00".repeat(32),
        modules: vec!["/lib/modules/6.1.0-56-cloud-amd64/kernel/drivers/virtio/virtio.ko".into()],
        rootfs: with_rootfs.then(|| RootfsRecord {
            source: "debootstrap".into(),
        }),
        inputs: Inputs {
            kernel: "k".into(),
            initramfs: "i".into(),
            rootfs: with_rootfs.then(|| "r".into()),
        },
        files,
    };
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
    manifest
}

#[test]
fn a_missing_image_says_how_to_build_one() {
    let images = tempfile::tempdir().unwrap();
    let error = cthulu_image::open(images.path(), "default").unwrap_err();
    assert!(error.is_not_found());
    assert_eq!(
        error.to_string(),
        format!(
            "no microVM image \"default\" in {}: run `cthulu image build`",
            images.path().display()
        )
    );
}

#[test]
fn a_good_image_opens_and_verifies() {
    let images = tempfile::tempdir().unwrap();
    let manifest = fake_image(images.path(), "default", true);
    let image = cthulu_image::open(images.path(), "default").unwrap();
    assert_eq!(image.manifest(), &manifest);
    assert_eq!(image.version(), "0123456789ab");
    assert_eq!(image.kernel(), images.path().join("default/vmlinuz"));
    assert_eq!(
        image.initramfs(),
        images.path().join("default/initramfs.cpio.gz")
    );
    assert_eq!(
        image.rootfs(),
        Some(images.path().join("default/rootfs.ext4").as_path())
    );
    image.verify().unwrap();
}

#[test]
fn a_truncated_file_is_corrupt() {
    let images = tempfile::tempdir().unwrap();
    fake_image(images.path(), "default", false);
    std::fs::write(images.path().join("default/initramfs.cpio.gz"), b"").unwrap();
    let error = cthulu_image::open(images.path(), "default").unwrap_err();
    assert_eq!(
        error.to_string(),
        "image \"default\" is corrupt: initramfs.cpio.gz is 0 bytes, the manifest says 1843: \
         run `cthulu image build --force`"
    );
    std::fs::write(
        images.path().join("default/initramfs.cpio.gz"),
        vec![7u8; 1843],
    )
    .unwrap();
    std::fs::remove_file(images.path().join("default/vmlinuz")).unwrap();
    let error = cthulu_image::open(images.path(), "default").unwrap_err();
    assert!(error.to_string().contains("vmlinuz is missing"), "{error}");
}

#[test]
fn a_changed_byte_fails_verify_but_not_open() {
    let images = tempfile::tempdir().unwrap();
    fake_image(images.path(), "default", false);
    std::fs::write(images.path().join("default/vmlinuz"), b"kernel bytez").unwrap();
    let image = cthulu_image::open(images.path(), "default").unwrap();
    let error = image.verify().unwrap_err();
    assert!(matches!(error, ImageError::Corrupt { .. }));
    assert!(error.to_string().contains("vmlinuz has sha256"), "{error}");
}

#[test]
fn a_broken_manifest_is_corrupt() {
    let images = tempfile::tempdir().unwrap();
    fake_image(images.path(), "default", false);
    let manifest_path = images.path().join("default/manifest.json");

    std::fs::write(&manifest_path, b"{ not json").unwrap();
    let error = cthulu_image::open(images.path(), "default").unwrap_err();
    assert!(matches!(error, ImageError::Corrupt { .. }), "{error}");
    assert!(error.to_string().contains("manifest.json is not valid"));
    assert!(error
        .to_string()
        .ends_with("run `cthulu image build --force`"));

    std::fs::write(&manifest_path, br#"{"format": 99}"#).unwrap();
    let error = cthulu_image::open(images.path(), "default").unwrap_err();
    assert!(
        matches!(error, ImageError::ManifestFormat { found: 99, .. }),
        "{error}"
    );

    let mut manifest = fake_image(images.path(), "default", false);
    manifest.name = "other".into();
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let error = cthulu_image::open(images.path(), "default").unwrap_err();
    assert!(
        error.to_string().contains("names image \"other\""),
        "{error}"
    );

    let mut manifest = fake_image(images.path(), "default", false);
    manifest
        .files
        .insert("../../etc/passwd".into(), manifest.files["vmlinuz"].clone());
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let error = cthulu_image::open(images.path(), "default").unwrap_err();
    assert!(error.to_string().contains("unknown file"), "{error}");

    std::fs::remove_file(&manifest_path).unwrap();
    let error = cthulu_image::open(images.path(), "default").unwrap_err();
    assert!(
        error.to_string().contains("it has no manifest.json"),
        "{error}"
    );
}

#[test]
fn list_shows_good_and_broken_images_by_name() {
    let images = tempfile::tempdir().unwrap();
    assert!(cthulu_image::list(&images.path().join("absent")).is_empty());
    fake_image(images.path(), "b-broken", false);
    std::fs::write(images.path().join("b-broken/vmlinuz"), b"").unwrap();
    fake_image(images.path(), "a-good", true);
    std::fs::create_dir(images.path().join(".cache")).unwrap();
    let listed = cthulu_image::list(images.path());
    let names: Vec<&str> = listed.iter().map(|summary| summary.name.as_str()).collect();
    assert_eq!(names, ["a-good", "b-broken"]);
    assert_eq!(listed[0].version.as_deref(), Some("0123456789ab"));
    assert_eq!(
        listed[0].kernel_version.as_deref(),
        Some("6.1.0-56-cloud-amd64")
    );
    assert!(listed[0].rootfs);
    assert_eq!(listed[0].size, Some(12 + 1843 + 4096));
    assert!(listed[0].error.is_none());
    assert!(listed[1]
        .error
        .as_deref()
        .unwrap()
        .contains("vmlinuz is 0 bytes"));
}
