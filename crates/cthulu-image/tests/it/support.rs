//! Shared helpers: the download cache shared by every test, a static agent, skipping.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use cthulu_image::{BuildOptions, Progress};

/// Prints `SKIP <what>: <reason>` and records it in `$CTHULU_SKIP_LOG` when set.
pub fn skip(what: &str, reason: &str) {
    let line = format!("SKIP {what}: {reason}");
    println!("{line}");
    if let Some(path) = std::env::var_os("CTHULU_SKIP_LOG") {
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(file, "{line}");
        }
    }
}

/// The download cache every test shares: `$CTHULU_IMAGE_CACHE`, else one under the
/// system temporary directory, so the kernel package is fetched once per machine.
pub fn cache_dir() -> PathBuf {
    std::env::var_os(cthulu_image::CACHE_ENV)
        .filter(|value| !value.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("cthulu-image-test-cache"))
}

/// Why images cannot be built here, if they cannot: apt must know the kernel package and
/// a static busybox must be installed (the stand-in agent).
pub fn unavailable() -> Option<String> {
    let known = Command::new("apt-cache")
        .args(["show", "--no-all-versions", "linux-image-cloud-amd64"])
        .output()
        .is_ok_and(|output| output.status.success() && !output.stdout.is_empty());
    if !known {
        return Some("apt knows no linux-image-cloud-amd64 (run apt-get update)".into());
    }
    if cthulu_image::check_agent(Path::new(BUSYBOX), false).is_err() {
        return Some(format!(
            "{BUSYBOX} is not a static busybox (apt-get install busybox-static)"
        ));
    }
    None
}

/// busybox-static's binary: static, so it passes as an agent.
pub const BUSYBOX: &str = "/bin/busybox";

/// Build options for `images_dir` with busybox as the agent and the shared cache.
pub fn options(images_dir: &Path) -> BuildOptions {
    let mut options = BuildOptions::new(images_dir, BUSYBOX);
    options.cache_dir = Some(cache_dir());
    options
}

/// Builds and returns the image and every progress event.
pub fn build(options: &BuildOptions) -> (cthulu_image::Image, Vec<Progress>) {
    let mut events = Vec::new();
    let image = cthulu_image::build(options, &mut |event| events.push(event))
        .unwrap_or_else(|error| panic!("build failed: {error}"));
    // Every step that starts finishes, right after the steps it contains.
    let mut open = Vec::new();
    for event in &events {
        match event {
            Progress::Started { label } => open.push(label.clone()),
            Progress::Finished { label, .. } => {
                assert_eq!(open.pop().as_ref(), Some(label), "{events:?}")
            }
            _ => {}
        }
    }
    assert!(open.is_empty(), "{events:?}");
    (image, events)
}

/// The entries of a gzipped newc archive.
pub fn read_initramfs(path: &Path) -> Vec<cthulu_image::cpio::Entry> {
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap()),
        &mut bytes,
    )
    .unwrap();
    cthulu_image::cpio::read_archive(&bytes).unwrap()
}

/// `debugfs -R "<request>" <image>` output.
pub fn debugfs(image: &Path, request: &str) -> String {
    let output = Command::new("debugfs")
        .arg("-R")
        .arg(request)
        .arg(image)
        .output()
        .expect("debugfs (e2fsprogs) runs");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}
