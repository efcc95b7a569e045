//! Escapes through the file API: `..`, absolute symlinks, symlinked parents and a symlink
//! swapped in while operations run. Each is refused with `path_outside_sandbox` and
//! touches nothing outside — checked on a [`Canary`] directory outside every sandbox.

use std::time::Duration;

use cthulu_types::ErrorCode;
use tokio::io::AsyncReadExt;

use super::files::require_files;
use super::sandbox::{Sandbox, CALL_LIMIT};
use super::support::{describe, expect_code, fail, reader, within, Canary, Outcome};
use crate::{PutOptions, SandboxError, SandboxHandle};

const CREATE: PutOptions = PutOptions {
    mode: None,
    create_parents: true,
};

async fn refused_put(handle: &dyn SandboxHandle, path: &str) -> Outcome {
    let result = within(
        CALL_LIMIT,
        "put_file",
        handle.put_file(path, CREATE, reader("escaped")),
    )
    .await?;
    expect_code(
        result,
        ErrorCode::PathOutsideSandbox,
        format!("put_file {path:?}"),
    )?;
    Ok(())
}

async fn refused_get(handle: &dyn SandboxHandle, path: &str) -> Outcome {
    let result = within(CALL_LIMIT, "get_file", handle.get_file(path))
        .await?
        .map(|download| download.size);
    expect_code(
        result,
        ErrorCode::PathOutsideSandbox,
        format!("get_file {path:?}"),
    )?;
    Ok(())
}

async fn refused_read_dir(handle: &dyn SandboxHandle, path: &str) -> Outcome {
    let result = within(CALL_LIMIT, "read_dir", handle.read_dir(path)).await?;
    expect_code(
        result,
        ErrorCode::PathOutsideSandbox,
        format!("read_dir {path:?}"),
    )?;
    Ok(())
}

async fn refused_remove(handle: &dyn SandboxHandle, path: &str, recursive: bool) -> Outcome {
    let result = within(CALL_LIMIT, "remove", handle.remove(path, recursive)).await?;
    expect_code(
        result,
        ErrorCode::PathOutsideSandbox,
        format!("remove {path:?}"),
    )?;
    Ok(())
}

/// `..` paths, absolute paths outside `/workspace` and the canary's own path are refused
/// by every file operation, and nothing appears outside.
pub async fn dotdot_escapes_are_refused(sandbox: Sandbox) -> Outcome {
    require_files(&sandbox).await?;
    let canary = Canary::new()?;
    let handle = sandbox.handle();
    let handle = handle.as_ref();
    sandbox.sh("mkdir -p sub").await?;
    let canary_new = format!("{}/new.txt", canary.display());
    let canary_victim = format!("{}/victim.txt", canary.display());
    for path in [
        "../escape.txt",
        "../../escape.txt",
        "/workspace/../escape.txt",
        "sub/../../escape.txt",
        "./../escape.txt",
        "/tmp/cthulu-conformance-escape.txt",
        canary_new.as_str(),
    ] {
        refused_put(handle, path).await?;
        refused_remove(handle, path, true).await?;
    }
    let canary_root = canary.display();
    for path in ["../..", "..", "/etc", "/", canary_root.as_str()] {
        refused_read_dir(handle, path).await?;
    }
    for path in [
        "/etc/passwd",
        "../../../../../../etc/passwd",
        "/workspace/../../etc/hostname",
        canary_victim.as_str(),
    ] {
        refused_get(handle, path).await?;
    }
    refused_remove(handle, &canary_victim, false).await?;
    let outside = sandbox
        .sh(
            "for f in ../escape.txt ../../escape.txt /tmp/cthulu-conformance-escape.txt; do \
               if [ -e \"$f\" ]; then echo \"$f\"; fi; done",
        )
        .await?;
    assert_eq!(
        outside, "",
        "refused uploads must not create files outside the workspace"
    );
    canary.check_untouched()
}

/// An absolute symlink inside the workspace pointing at `/etc` or the canary is not
/// followed: reads, writes, listings and removals through it are refused.
pub async fn absolute_symlink_escapes_are_refused(sandbox: Sandbox) -> Outcome {
    require_files(&sandbox).await?;
    let canary = Canary::new()?;
    let root = canary.display();
    sandbox
        .sh(&format!(
            "ln -s /etc etc-link && ln -s /etc/passwd passwd-link && ln -s {root} canary-link \
             && ln -s {root}/victim.txt victim-link"
        ))
        .await?;
    let handle = sandbox.handle();
    let handle = handle.as_ref();
    for path in [
        "etc-link/passwd",
        "passwd-link",
        "/workspace/passwd-link",
        "victim-link",
        "canary-link/victim.txt",
        "canary-link/sub/inner.txt",
    ] {
        refused_get(handle, path).await?;
    }
    for path in ["etc-link", "canary-link", "canary-link/sub"] {
        refused_read_dir(handle, path).await?;
    }
    for path in [
        "canary-link/new.txt",
        "canary-link/victim.txt",
        "canary-link/sub/deep/new.txt",
        "etc-link/cthulu-conformance-escape",
    ] {
        refused_put(handle, path).await?;
    }
    refused_remove(handle, "canary-link/victim.txt", false).await?;
    refused_remove(handle, "canary-link/sub", true).await?;

    // The symlink itself is inside: writing over it may replace it or be refused, and
    // removing it may remove the link or be refused — but the target outside stays.
    let result = within(
        CALL_LIMIT,
        "put_file",
        handle.put_file("victim-link", CREATE, reader("overwritten")),
    )
    .await?;
    allowed_or_refused(result, "put_file over a symlink pointing outside")?;
    let result = within(CALL_LIMIT, "remove", handle.remove("canary-link", true)).await?;
    allowed_or_refused(result, "remove of a symlink pointing outside")?;
    canary.check_untouched()?;
    assert!(
        std::path::Path::new("/etc/passwd").exists(),
        "/etc/passwd is still there"
    );
    Ok(())
}

fn allowed_or_refused<T>(result: Result<T, SandboxError>, what: &str) -> Outcome {
    match result {
        Ok(_) => Ok(()),
        Err(error) if error.code() == ErrorCode::PathOutsideSandbox => Ok(()),
        Err(error) => Err(fail(format!(
            "{what}: expected success or path_outside_sandbox, got {}",
            describe(&error)
        ))),
    }
}

/// A relative symlink whose target climbs out of the workspace, used as a parent
/// directory, is refused.
pub async fn symlinked_parent_escapes_are_refused(sandbox: Sandbox) -> Outcome {
    require_files(&sandbox).await?;
    let canary = Canary::new()?;
    sandbox
        .sh(&format!(
            "mkdir -p nest/deeper && ln -s .. up && ln -s ../.. nest/up2 \
             && ln -s ../../../../../../../../../.. nest/deeper/top && ln -s {} nest/abs",
            canary.display()
        ))
        .await?;
    let handle = sandbox.handle();
    let handle = handle.as_ref();
    for path in [
        "up/escape-parent.txt",
        "nest/up2/escape-parent.txt",
        "nest/deeper/top/tmp/cthulu-escape.txt",
        "nest/abs/new.txt",
        "nest/abs/sub/new.txt",
    ] {
        refused_put(handle, path).await?;
    }
    // (`up/..` is not here: paths are normalized lexically, so it names the workspace.)
    for path in ["up", "nest/up2", "nest/deeper/top/etc", "nest/abs"] {
        refused_read_dir(handle, path).await?;
    }
    for path in [
        "nest/deeper/top/etc/passwd",
        "nest/abs/victim.txt",
        "up/workspace/../escape",
    ] {
        refused_get(handle, path).await?;
    }
    refused_remove(handle, "nest/abs/victim.txt", false).await?;
    refused_remove(handle, "nest/deeper/top/tmp/cthulu-escape.txt", false).await?;
    let outside = sandbox
        .sh(
            "for f in ../escape-parent.txt ../../escape-parent.txt /tmp/cthulu-escape.txt; do \
               if [ -e \"$f\" ]; then echo \"$f\"; fi; done",
        )
        .await?;
    assert_eq!(
        outside, "",
        "refused uploads must not create files outside the workspace"
    );
    canary.check_untouched()
}

/// A symlink swapped between a directory inside and the canary outside, as fast as the
/// sandbox can, while uploads, downloads and listings go through it: each operation either
/// stays inside or is refused, and the canary is never read or touched.
pub async fn symlink_swapped_during_operations_does_not_escape(sandbox: Sandbox) -> Outcome {
    require_files(&sandbox).await?;
    let canary = Canary::new()?;
    sandbox
        .sh("mkdir -p race/real && printf inside > race/real/victim.txt && ln -s real race/swap")
        .await?;
    let swapper = {
        let sandbox = sandbox.clone();
        let script = format!(
            "n=0; while [ ! -e race-stop ]; do ln -sfn {} race/swap; ln -sfn real race/swap; \
             n=$((n + 1)); done; echo $n",
            canary.display()
        );
        tokio::spawn(async move { sandbox.sh(&script).await })
    };
    // Let the swap loop get going.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let handle = sandbox.handle();
    let (mut inside, mut refused) = (0u32, 0u32);
    let mut unexpected = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    let mut round = 0u32;
    while tokio::time::Instant::now() < deadline || round < 50 {
        round += 1;
        let path = format!("race/swap/put-{round}.txt");
        let put = within(
            CALL_LIMIT,
            "put_file",
            handle.put_file(&path, PutOptions::default(), reader("raced")),
        )
        .await?;
        tally(
            put.map(|_| ()),
            &mut inside,
            &mut refused,
            &mut unexpected,
            &path,
        );
        let got = within(CALL_LIMIT, "get_file", async {
            let mut download = handle.get_file("race/swap/victim.txt").await?;
            let mut contents = Vec::new();
            download
                .contents
                .read_to_end(&mut contents)
                .await
                .map_err(|source| SandboxError::system("reading a download", source))?;
            Ok::<_, SandboxError>(contents)
        })
        .await?;
        if let Ok(contents) = &got {
            if contents.as_slice() != b"inside" {
                return Err(fail(format!(
                    "get_file through the swapped symlink read {:?} — the file outside the sandbox",
                    super::support::excerpt(contents, 80)
                )));
            }
        }
        tally(
            got.map(|_| ()),
            &mut inside,
            &mut refused,
            &mut unexpected,
            "get victim.txt",
        );
        let listed = within(CALL_LIMIT, "read_dir", handle.read_dir("race/swap")).await?;
        if let Ok(entries) = &listed {
            if entries.iter().any(|entry| entry.name == "sub") {
                return Err(fail(
                    "read_dir through the swapped symlink listed the directory outside the sandbox",
                ));
            }
        }
        tally(
            listed.map(|_| ()),
            &mut inside,
            &mut refused,
            &mut unexpected,
            "read_dir",
        );
    }
    sandbox.put("race-stop", b"stop".to_vec()).await?;
    let swaps = within(Duration::from_secs(120), "the swap loop", swapper)
        .await?
        .map_err(|error| fail(format!("the swap loop panicked: {error}")))??;
    eprintln!(
        "{} {}: {round} rounds against {} swaps: {inside} inside, {refused} refused",
        sandbox.backend(),
        sandbox.scenario(),
        swaps.trim()
    );
    canary.check_untouched()?;
    if !unexpected.is_empty() {
        return Err(fail(format!(
            "operations raced with a symlink swap must succeed inside or answer \
             path_outside_sandbox (or file_not_found while the link is replaced); got: {}",
            unexpected.join("; ")
        )));
    }
    Ok(())
}

fn tally(
    result: Result<(), SandboxError>,
    inside: &mut u32,
    refused: &mut u32,
    unexpected: &mut Vec<String>,
    what: &str,
) {
    match result {
        Ok(()) => *inside += 1,
        Err(error)
            if matches!(
                error.code(),
                ErrorCode::PathOutsideSandbox | ErrorCode::FileNotFound
            ) =>
        {
            *refused += 1
        }
        Err(error) if unexpected.len() < 10 => {
            unexpected.push(format!("{what}: {}", describe(&error)))
        }
        Err(_) => {}
    }
}
