//! `cthulu image build` and `cthulu image ls` against a temporary CTHULU_HOME, with
//! busybox-static as the (static) agent and a download cache shared between tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::support::{Outcome, BINARY};

const BUSYBOX: &str = "/bin/busybox";

fn cache_dir() -> PathBuf {
    std::env::var_os("CTHULU_IMAGE_CACHE")
        .filter(|value| !value.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("cthulu-image-test-cache"))
}

fn cthulu(home: &Path, args: &[&str]) -> Outcome {
    let output = Command::new(BINARY)
        .args(args)
        .env("CTHULU_HOME", home)
        .env("CTHULU_IMAGE_CACHE", cache_dir())
        .env_remove("CTHULU_AGENT")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("cannot run cthulu");
    Outcome::of(output)
}

/// Why an image cannot be built here, if it cannot.
fn unavailable() -> Option<&'static str> {
    let apt_knows_the_kernel = Command::new("apt-cache")
        .args(["show", "--no-all-versions", "linux-image-cloud-amd64"])
        .output()
        .is_ok_and(|output| output.status.success() && !output.stdout.is_empty());
    if !apt_knows_the_kernel {
        return Some("apt knows no linux-image-cloud-amd64 (run apt-get update)");
    }
    if !Path::new(BUSYBOX).exists() {
        return Some("busybox-static is not installed");
    }
    None
}

fn skip(reason: &str) {
    println!("SKIP image-cli: {reason}");
    if let Some(path) = std::env::var_os("CTHULU_SKIP_LOG") {
        use std::io::Write as _;
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(file, "SKIP image-cli: {reason}");
        }
    }
}

#[test]
fn build_then_list_then_up_to_date() {
    if let Some(reason) = unavailable() {
        return skip(reason);
    }
    let home = tempfile::tempdir().unwrap();
    let empty = cthulu(home.path(), &["image", "ls", "--json"]);
    assert_eq!(empty.code, 0, "{empty:?}");
    assert_eq!(empty.stdout.trim(), "[]");

    let built = cthulu(home.path(), &["image", "build", "--agent", BUSYBOX]);
    assert_eq!(built.code, 0, "{built:?}");
    assert!(
        built.stderr.contains("built image \"default\""),
        "{built:?}"
    );
    assert!(
        built.stderr.contains("done: writing initramfs.cpio.gz"),
        "{built:?}"
    );
    assert!(built.stdout.is_empty(), "{built:?}");
    let image_dir = home.path().join("images/default");
    for file in ["vmlinuz", "initramfs.cpio.gz", "manifest.json"] {
        assert!(image_dir.join(file).is_file(), "{file}");
    }

    let listed = cthulu(home.path(), &["image", "ls", "--json"]);
    assert_eq!(listed.code, 0, "{listed:?}");
    let images: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    let image = &images[0];
    assert_eq!(image["name"], "default");
    assert_eq!(image["rootfs"], false);
    assert!(image["error"].is_null(), "{image}");
    let version = image["version"].as_str().unwrap().to_owned();
    assert!(image["kernel_version"]
        .as_str()
        .unwrap()
        .ends_with("-cloud-amd64"));

    let table = cthulu(home.path(), &["image", "ls"]);
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{table:?}");
    assert!(
        lines[1].starts_with("default") && lines[1].contains(&version),
        "{table:?}"
    );

    let again = cthulu(
        home.path(),
        &["image", "build", "--agent", BUSYBOX, "--json"],
    );
    assert_eq!(again.code, 0, "{again:?}");
    assert!(again.stderr.contains("is up to date"), "{again:?}");
    let manifest: serde_json::Value = serde_json::from_str(&again.stdout).unwrap();
    assert_eq!(manifest["version"], version.as_str());
}

#[test]
fn a_dynamic_agent_is_refused_with_the_way_out() {
    let home = tempfile::tempdir().unwrap();
    let outcome = cthulu(home.path(), &["image", "build", "--agent", "/bin/sh"]);
    assert_eq!(outcome.code, 1, "{outcome:?}");
    assert!(outcome.stderr.contains("dynamically linked"), "{outcome:?}");
    assert!(
        outcome.stderr.contains("scripts/build-agent"),
        "{outcome:?}"
    );
    assert!(!home.path().join("images/default").exists());
}

#[test]
fn a_missing_agent_or_rootfs_source_is_named() {
    let home = tempfile::tempdir().unwrap();
    let outcome = cthulu(
        home.path(),
        &["image", "build", "--agent", "/nonexistent/agent"],
    );
    assert_eq!(outcome.code, 1, "{outcome:?}");
    assert!(
        outcome
            .stderr
            .contains("guest agent /nonexistent/agent does not exist"),
        "{outcome:?}"
    );
    let outcome = cthulu(
        home.path(),
        &[
            "image",
            "build",
            "--agent",
            BUSYBOX,
            "--rootfs",
            "/nonexistent/rootfs",
        ],
    );
    assert_eq!(outcome.code, 1, "{outcome:?}");
    assert!(outcome.stderr.contains("rootfs source"), "{outcome:?}");
    let outcome = cthulu(
        home.path(),
        &[
            "image",
            "build",
            "--agent",
            BUSYBOX,
            "--rootfs",
            "debootstrap",
            "--rootfs-size",
            "lots",
        ],
    );
    assert_eq!(outcome.code, 1, "{outcome:?}");
    assert!(
        outcome.stderr.contains("invalid size \"lots\""),
        "{outcome:?}"
    );
}
