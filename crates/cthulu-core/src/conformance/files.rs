//! Files: byte-exact round trips, modes, parents, listings, removal.
//! Escapes through `..` and symlinks are in [`escapes`](super::escapes).

use std::time::Duration;

use cthulu_types::{ErrorCode, FileKind};
use tokio::io::AsyncReadExt;

use super::sandbox::{Sandbox, CALL_LIMIT};
use super::support::{
    all_byte_values, compare_with_pattern, expect_code, fail, reader, within, Context, Outcome,
    PatternReader, ScenarioError,
};
use crate::PutOptions;

/// For a backend without the file API: `put_file` must answer `Unsupported`.
pub(super) async fn require_files(sandbox: &Sandbox) -> Outcome {
    if sandbox.capabilities().files {
        return Ok(());
    }
    let result = within(
        CALL_LIMIT,
        "put_file",
        sandbox
            .handle()
            .put_file("probe.txt", PutOptions::default(), reader("x")),
    )
    .await?;
    Err(sandbox.expect_unsupported("files", result))
}

async fn put_with(
    sandbox: &Sandbox,
    path: &str,
    options: PutOptions,
    contents: Vec<u8>,
) -> Result<u64, ScenarioError> {
    within(
        CALL_LIMIT,
        format!("put_file {path}"),
        sandbox.handle().put_file(path, options, reader(contents)),
    )
    .await?
    .context(format!("put_file {path}"))
}

/// An empty file, a 1-byte file, a file of all byte values and a run of NULs come back
/// byte-exact, with the sizes the upload and the download report; exec sees the same.
pub async fn small_files_round_trip_byte_exact(sandbox: Sandbox) -> Outcome {
    require_files(&sandbox).await?;
    for (path, contents) in [
        ("round/empty", Vec::new()),
        ("round/one-byte", vec![b'x']),
        ("round/all-bytes", all_byte_values().repeat(3)),
        ("round/nuls", vec![0u8; 4097]),
    ] {
        let options = PutOptions {
            mode: None,
            create_parents: true,
        };
        let written = put_with(&sandbox, path, options, contents.clone()).await?;
        assert_eq!(
            written,
            contents.len() as u64,
            "put_file's byte count for {path}"
        );
        let download = within(CALL_LIMIT, "get_file", sandbox.handle().get_file(path))
            .await?
            .context(format!("get_file {path}"))?;
        assert_eq!(
            download.size,
            contents.len() as u64,
            "get_file's size for {path}"
        );
        let mut back = Vec::new();
        let mut body = download.contents;
        body.read_to_end(&mut back)
            .await
            .context("reading the download")?;
        assert!(
            back == contents,
            "{path} came back as {} different bytes",
            back.len()
        );
        let size = sandbox.sh(&format!("wc -c < {path}")).await?;
        assert_eq!(
            size.trim(),
            contents.len().to_string(),
            "exec sees {path}'s size"
        );
    }
    let via_exec = sandbox
        .sh("od -An -tx1 -v round/all-bytes | tr -d ' \\n' | head -c 512")
        .await?;
    let expected: String = all_byte_values()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    assert_eq!(
        via_exec, expected,
        "exec reads back the bytes the file API wrote"
    );
    Ok(())
}

/// A 100 MiB file streams in and out byte-exact.
pub async fn large_file_round_trips_byte_exact(sandbox: Sandbox) -> Outcome {
    require_files(&sandbox).await?;
    const SIZE: u64 = 100 * 1024 * 1024;
    let limit = Duration::from_secs(300);
    let handle = sandbox.handle();
    let written = within(
        limit,
        "uploading 100 MiB",
        handle.put_file(
            "large.bin",
            PutOptions::default(),
            Box::new(PatternReader::new(SIZE)),
        ),
    )
    .await?
    .context("put_file large.bin")?;
    assert_eq!(written, SIZE, "bytes written");
    let size = sandbox.sh("wc -c < large.bin").await?;
    assert_eq!(size.trim(), SIZE.to_string(), "exec sees the whole file");
    let download = within(CALL_LIMIT, "get_file", handle.get_file("large.bin"))
        .await?
        .context("get_file large.bin")?;
    assert_eq!(download.size, SIZE, "the download's announced size");
    let read = within(
        limit,
        "downloading 100 MiB",
        compare_with_pattern(download.contents),
    )
    .await??;
    assert_eq!(read, SIZE, "the download's length");
    Ok(())
}

/// Mode bits given at upload are kept exactly (umask does not apply); the default is
/// 0644; an uploaded 0755 script runs.
pub async fn mode_bits_are_kept(sandbox: Sandbox) -> Outcome {
    require_files(&sandbox).await?;
    let handle = sandbox.handle();
    for mode in [0o600, 0o640, 0o700, 0o755, 0o777, 0o444] {
        let path = format!("modes/file-{mode:o}");
        let options = PutOptions {
            mode: Some(mode),
            create_parents: true,
        };
        put_with(&sandbox, &path, options, b"#!/bin/sh\necho ran\n".to_vec()).await?;
        let download = within(CALL_LIMIT, "get_file", handle.get_file(&path))
            .await?
            .context(format!("get_file {path}"))?;
        assert_eq!(download.mode & 0o7777, mode, "get_file's mode for {path}");
        let stat = sandbox.sh(&format!("stat -c %a {path}")).await?;
        assert_eq!(
            stat.trim(),
            format!("{mode:o}"),
            "the mode exec sees for {path}"
        );
    }
    let entries = within(CALL_LIMIT, "read_dir", handle.read_dir("modes"))
        .await?
        .context("read_dir modes")?;
    for entry in &entries {
        let expected = u32::from_str_radix(entry.name.trim_start_matches("file-"), 8).unwrap_or(0);
        assert_eq!(
            entry.mode & 0o7777,
            expected,
            "read_dir's mode of {}",
            entry.name
        );
    }
    sandbox.put("modes/default", b"x".to_vec()).await?;
    let stat = sandbox.sh("stat -c %a modes/default").await?;
    assert_eq!(stat.trim(), "644", "the default mode of an upload");
    let ran = sandbox.sh("./modes/file-755").await?;
    assert_eq!(ran, "ran\n", "an uploaded 0755 script runs");
    Ok(())
}

/// Upload into a directory that does not exist: created with `create_parents`, a clear
/// error naming the path without (and nothing created).
pub async fn upload_into_a_missing_directory(sandbox: Sandbox) -> Outcome {
    require_files(&sandbox).await?;
    let handle = sandbox.handle();
    let result = within(
        CALL_LIMIT,
        "put_file",
        handle.put_file(
            "absent/deeper/file.txt",
            PutOptions::default(),
            reader("data"),
        ),
    )
    .await?;
    let error = expect_code(
        result,
        ErrorCode::FileNotFound,
        "put_file into a missing directory",
    )?;
    assert!(
        error.to_string().contains("absent"),
        "the error must name the path: {error}"
    );
    assert_eq!(
        sandbox
            .sh("test -e absent && echo exists || echo absent")
            .await?,
        "absent\n",
        "a failed upload must not create directories"
    );
    let options = PutOptions {
        mode: None,
        create_parents: true,
    };
    put_with(
        &sandbox,
        "absent/deeper/file.txt",
        options,
        b"data".to_vec(),
    )
    .await?;
    assert_eq!(
        sandbox.get("/workspace/absent/deeper/file.txt").await?,
        b"data"
    );
    let entries = within(CALL_LIMIT, "read_dir", handle.read_dir("absent"))
        .await?
        .context("read_dir absent")?;
    assert!(
        entries
            .iter()
            .any(|entry| entry.name == "deeper" && entry.kind == FileKind::Dir),
        "the created parent is a directory: {entries:?}"
    );
    sandbox.put("plain-file", b"x".to_vec()).await?;
    let result = within(
        CALL_LIMIT,
        "put_file",
        handle.put_file("plain-file/child", options, reader("data")),
    )
    .await?;
    match result {
        Err(error) if !error.is_internal() => {}
        other => {
            return Err(fail(format!(
                "an upload below a regular file must be a clear error, got {other:?}"
            )))
        }
    }
    Ok(())
}

/// `read_dir` lists names, kinds (file, dir, symlink with its target), sizes and modes,
/// without `.` and `..`; a file or a missing path is an error.
pub async fn read_dir_lists_names_kinds_sizes_modes(sandbox: Sandbox) -> Outcome {
    require_files(&sandbox).await?;
    sandbox
        .sh(
            "mkdir -p listing/sub && printf hello > listing/a.txt && chmod 640 listing/a.txt \
             && ln -s a.txt listing/link && printf 123 > listing/sub/x && chmod 750 listing/sub",
        )
        .await?;
    let handle = sandbox.handle();
    let mut entries = within(CALL_LIMIT, "read_dir", handle.read_dir("listing"))
        .await?
        .context("read_dir listing")?;
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let summary: Vec<(&str, FileKind)> = entries
        .iter()
        .map(|entry| (entry.name.as_str(), entry.kind))
        .collect();
    assert_eq!(
        summary,
        [
            ("a.txt", FileKind::File),
            ("link", FileKind::Symlink),
            ("sub", FileKind::Dir)
        ],
        "names and kinds"
    );
    assert_eq!(
        (entries[0].size, entries[0].mode & 0o7777),
        (5, 0o640),
        "a.txt's size and mode"
    );
    assert_eq!(
        entries[1].link_target.as_deref(),
        Some("a.txt"),
        "the symlink's target, not followed"
    );
    assert_eq!(entries[2].mode & 0o7777, 0o750, "sub's mode");
    for path in ["/workspace", "", "."] {
        let root = within(CALL_LIMIT, "read_dir", handle.read_dir(path))
            .await?
            .context(format!("read_dir {path:?}"))?;
        assert!(
            root.iter().any(|entry| entry.name == "listing"),
            "read_dir {path:?} lists the workspace: {root:?}"
        );
    }
    let result = within(CALL_LIMIT, "read_dir", handle.read_dir("listing/a.txt")).await?;
    match result {
        Err(error) if !error.is_internal() => {}
        other => {
            return Err(fail(format!(
                "read_dir of a file must be a clear error, got {other:?}"
            )))
        }
    }
    let result = within(CALL_LIMIT, "read_dir", handle.read_dir("no-such-dir")).await?;
    expect_code(
        result,
        ErrorCode::FileNotFound,
        "read_dir of a missing path",
    )?;
    Ok(())
}

/// Remove a file, an empty directory, a tree (recursive only) and a symlink (not its
/// target); the workspace root cannot be removed.
pub async fn remove_files_directories_and_trees(sandbox: Sandbox) -> Outcome {
    require_files(&sandbox).await?;
    sandbox
        .sh(
            "mkdir -p rm/empty rm/tree/a/b rm/kept && echo x > rm/file && echo y > rm/tree/a/b/c \
             && echo z > rm/tree/top && echo kept > rm/kept/inside && ln -s kept rm/link \
             && echo sentinel > sentinel",
        )
        .await?;
    let handle = sandbox.handle();
    let remove = |path: &'static str, recursive: bool| {
        let handle = handle.clone();
        async move {
            within(
                CALL_LIMIT,
                format!("remove {path}"),
                handle.remove(path, recursive),
            )
            .await
        }
    };
    let exists = |path: &'static str| {
        let sandbox = sandbox.clone();
        async move {
            Ok::<_, ScenarioError>(
                sandbox
                    .sh(&format!(
                        "if [ -e {path} ] || [ -L {path} ]; then echo y; else echo n; fi"
                    ))
                    .await?
                    == "y\n",
            )
        }
    };
    remove("rm/file", false).await?.context("remove a file")?;
    assert!(!exists("rm/file").await?, "the removed file is gone");
    remove("rm/empty", false)
        .await?
        .context("remove an empty directory")?;
    assert!(!exists("rm/empty").await?, "the removed directory is gone");
    expect_code(
        remove("rm/tree", false).await?,
        ErrorCode::Conflict,
        "remove of a non-empty directory without recursive",
    )?;
    assert!(
        exists("rm/tree/a/b/c").await?,
        "a refused remove leaves the tree"
    );
    remove("rm/tree", true)
        .await?
        .context("remove a tree recursively")?;
    assert!(!exists("rm/tree").await?, "the removed tree is gone");
    remove("rm/link", true)
        .await?
        .context("remove a symlink to a directory")?;
    assert!(!exists("rm/link").await?, "the symlink is gone");
    assert!(
        exists("rm/kept/inside").await?,
        "removing a symlink leaves its target"
    );
    expect_code(
        remove("rm/missing", false).await?,
        ErrorCode::FileNotFound,
        "remove of a missing path",
    )?;
    for root in ["/workspace", "/workspace/", "", ".", "rm/.."] {
        let result = within(CALL_LIMIT, "remove", handle.remove(root, true)).await?;
        if result.is_ok() {
            return Err(fail(format!(
                "removing the workspace root as {root:?} must be refused"
            )));
        }
    }
    assert!(
        exists("sentinel").await?,
        "the workspace survives attempts to remove it"
    );
    Ok(())
}
