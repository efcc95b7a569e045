//! `image`: a directory used as the sandbox's read-only lower root. The test makes a tiny
//! root filesystem from host programs and the libraries they load.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use cthulu_core::{SandboxError, SandboxProvider, SandboxSpec};
use cthulu_types::SandboxId;

use crate::support::{sh, sh_ok, snapshot, Fixture};

const PROGRAMS: [&str; 7] = ["sh", "cat", "ls", "mkdir", "rm", "id", "touch"];

/// A root filesystem under `root` with [`PROGRAMS`] in /usr/bin (bin and lib symlinked
/// into /usr, as on a merged-/usr distribution), /etc/marker and an empty /usr/local.
/// `Err` says why it cannot be made here.
pub fn make_rootfs(root: &Path) -> Result<(), String> {
    for dir in ["usr/bin", "usr/lib", "usr/local/bin", "etc", "lib64", "var"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
    std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
    std::fs::write(root.join("etc/marker"), "from the image\n").unwrap();
    // As in real root filesystems: a home of root's that only the host's root may enter.
    std::fs::create_dir(root.join("root")).unwrap();
    std::fs::set_permissions(root.join("root"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut libraries = Vec::new();
    for program in PROGRAMS {
        let host = Path::new("/bin").join(program);
        let resolved = std::fs::canonicalize(&host)
            .map_err(|error| format!("no {} on this host: {error}", host.display()))?;
        std::fs::copy(&resolved, root.join("usr/bin").join(program)).unwrap();
        let ldd = Command::new("ldd")
            .arg(&resolved)
            .output()
            .map_err(|error| format!("cannot run ldd: {error}"))?;
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            if let Some(path) = path.filter(|path| path.starts_with('/')) {
                libraries.push(PathBuf::from(path));
            }
        }
    }
    for library in libraries {
        let target = root.join(library.strip_prefix("/").unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&library, &target)
            .map_err(|error| format!("copying {}: {error}", library.display()))?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_directory_is_the_sandboxs_root_and_stays_unchanged() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let image = fixture.state.path().join("image");
    if let Err(reason) = make_rootfs(&image) {
        eprintln!("SKIP namespace image: {reason}");
        return;
    }
    let before = snapshot(&image);
    let spec = SandboxSpec {
        image: Some(image.display().to_string()),
        ..SandboxSpec::default()
    };
    let (sandbox_id, handle) = fixture.sandbox_with(&spec).await;
    assert_eq!(sh_ok(&handle, "cat /etc/marker").await, "from the image\n");
    // The host's system files are not there: only the image is.
    let host_file = sh(&handle, "cat /etc/os-release").await;
    assert_ne!(host_file.exit.exit_code, Some(0), "{host_file:?}");
    assert_eq!(
        sh_ok(&handle, "ls /usr/bin").await.lines().count(),
        PROGRAMS.len()
    );
    // Writes land in the sandbox's layer: /etc (an overlay whose top is the sandbox's;
    // the image's files keep their owner, nobody inside, so replaced rather than written),
    // /usr/local (given to the sandbox's root), /var (an overlay of the image's /var).
    sh_ok(
        &handle,
        "echo installed > /usr/local/bin/tool && rm /etc/marker && echo changed > /etc/marker && \
         mkdir /var/lib && echo state > /var/lib/file",
    )
    .await;
    assert_eq!(
        sh_ok(&handle, "cat /usr/local/bin/tool /etc/marker /var/lib/file").await,
        "installed\nchanged\nstate\n"
    );
    let upper = fixture.dir(&sandbox_id).join("layer/upper");
    assert_eq!(
        std::fs::read_to_string(upper.join("usr/local/bin/tool")).unwrap(),
        "installed\n"
    );
    assert_eq!(
        snapshot(&image),
        before,
        "the image itself is never written"
    );
    handle.destroy().await.unwrap();
    assert_eq!(snapshot(&image), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn images_that_are_not_directories_are_refused_and_leave_nothing() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let file = fixture.state.path().join("a-file");
    std::fs::write(&file, b"not a rootfs").unwrap();
    let missing = fixture.state.path().join("missing");
    let cases = [
        ("debian:12".to_owned(), "absolute path of a directory"),
        ("rootfs".to_owned(), "absolute path of a directory"),
        (missing.display().to_string(), "does not exist"),
        (file.display().to_string(), "is not a directory"),
    ];
    for (image, expected) in cases {
        let spec = SandboxSpec {
            image: Some(image.clone()),
            ..SandboxSpec::default()
        };
        let sandbox_id = SandboxId::generate();
        match fixture.provider.provision(&sandbox_id, &spec).await {
            Err(SandboxError::InvalidRequest {
                field: "image",
                message,
            }) => {
                assert!(
                    message.contains(expected) && message.contains(image.as_str()),
                    "{image}: {message}"
                );
            }
            Err(other) => panic!("{image}: expected an invalid image, got {other}"),
            Ok(_) => panic!("{image}: accepted"),
        }
        assert!(
            !fixture.dir(&sandbox_id).exists(),
            "{image}: a refused create left its directory"
        );
    }
    assert!(fixture.provider.list().await.unwrap().is_empty());
}
