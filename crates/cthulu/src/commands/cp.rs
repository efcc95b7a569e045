//! `cthulu cp SRC DST`: streams a file into or out of a sandbox. `ID:/path` names the
//! sandbox side, `-` is stdin or stdout.

use std::io::IsTerminal as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use cthulu_client::{CthuluClient, PutFileOptions};
use cthulu_types::SandboxId;
use futures_util::StreamExt as _;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::{AsyncRead, AsyncWriteExt as _};

use crate::cli::GlobalArgs;
use crate::exit::Hint;

/// Files at least this large get a progress bar (when stderr is a terminal).
const PROGRESS_THRESHOLD_BYTES: u64 = 1024 * 1024;

#[derive(Debug, clap::Args)]
pub struct CopyArgs {
    /// Source: a local path, `-` for stdin, or ID:/path in a sandbox
    pub source: String,
    /// Destination: a local path, `-` for stdout, or ID:/path in a sandbox
    pub destination: String,
}

/// One side of a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    Local(PathBuf),
    /// stdin as a source, stdout as a destination.
    Standard,
    Sandbox {
        sandbox_id: String,
        path: String,
    },
}

/// `ID:/path` when the part before the first `:` is a valid sandbox id; `./a:b` is local.
fn parse_endpoint(raw: &str) -> Endpoint {
    if raw == "-" {
        return Endpoint::Standard;
    }
    if let Some((sandbox_id, path)) = raw.split_once(':') {
        if SandboxId::parse(sandbox_id).is_ok() && !path.is_empty() {
            return Endpoint::Sandbox {
                sandbox_id: sandbox_id.to_owned(),
                path: path.to_owned(),
            };
        }
    }
    Endpoint::Local(PathBuf::from(raw))
}

/// The last component of a sandbox path.
fn remote_file_name(path: &str) -> Option<&str> {
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|name| !name.is_empty() && *name != "." && *name != "..")
}

pub async fn run(global: &GlobalArgs, args: CopyArgs) -> anyhow::Result<u8> {
    let source = parse_endpoint(&args.source);
    let destination = parse_endpoint(&args.destination);
    match (source, destination) {
        (Endpoint::Sandbox { .. }, Endpoint::Sandbox { .. }) => Err(anyhow::Error::new(Hint(
            "copy through a local file: cthulu cp A:/x x && cthulu cp x B:/x".into(),
        ))
        .context("cannot copy from one sandbox to another directly")),
        (Endpoint::Sandbox { sandbox_id, path }, local) => {
            let client = super::client(global)?;
            download(&client, &sandbox_id, &path, local).await
        }
        (local, Endpoint::Sandbox { sandbox_id, path }) => {
            let client = super::client(global)?;
            upload(&client, local, &sandbox_id, &path).await
        }
        _ => Err(anyhow::Error::new(Hint(
            "name the sandbox side as ID:/path, e.g. cthulu cp ./data.csv abc123:/workspace/"
                .into(),
        ))
        .context("neither side of the copy is in a sandbox")),
    }
}

fn progress_bar(size: Option<u64>) -> Option<ProgressBar> {
    let size = size.filter(|size| *size >= PROGRESS_THRESHOLD_BYTES)?;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new(size);
    bar.set_style(
        ProgressStyle::with_template(
            "{bytes:>10}/{total_bytes:<10} [{bar:30}] {binary_bytes_per_sec:>12} eta {eta}",
        )
        .expect("the template is valid")
        .progress_chars("=> "),
    );
    Some(bar)
}

async fn upload(
    client: &CthuluClient,
    source: Endpoint,
    sandbox_id: &str,
    remote_path: &str,
) -> anyhow::Result<u8> {
    let (reader, size, mode, file_name): (Box<dyn AsyncRead + Send + Unpin>, _, _, _) =
        match &source {
            Endpoint::Local(path) => {
                let file = tokio::fs::File::open(path)
                    .await
                    .with_context(|| format!("cannot open {}", path.display()))?;
                let metadata = file
                    .metadata()
                    .await
                    .with_context(|| format!("cannot read the metadata of {}", path.display()))?;
                if metadata.is_dir() {
                    return Err(anyhow::Error::new(Hint(
                        "copy a tar archive and unpack it with `cthulu sandbox exec ID -- tar xf …`"
                            .into(),
                    ))
                    .context(format!(
                        "{} is a directory; cp copies single files",
                        path.display()
                    )));
                }
                let name = path
                    .file_name()
                    .map(|name| name.to_string_lossy().into_owned());
                (
                    Box::new(file) as Box<dyn AsyncRead + Send + Unpin>,
                    Some(metadata.len()),
                    Some(metadata.permissions().mode() & 0o7777),
                    name,
                )
            }
            _ => (Box::new(tokio::io::stdin()) as _, None, None, None),
        };
    let target = if remote_path.ends_with('/') {
        let name = file_name.context("reading stdin, name the destination file: ID:/path/file")?;
        format!("{remote_path}{name}")
    } else {
        remote_path.to_owned()
    };
    let bar = progress_bar(size);
    let progress = bar.clone().map(|bar| {
        Box::new(move |sent: u64| bar.set_position(sent)) as cthulu_client::ProgressCallback
    });
    let written = client
        .put_file(
            sandbox_id,
            &target,
            reader,
            PutFileOptions {
                mode,
                create_parents: true,
                progress,
            },
        )
        .await
        .with_context(|| format!("cannot upload to {target} in sandbox {sandbox_id}"));
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let written = written?;
    if let Some(size) = size {
        anyhow::ensure!(
            written.size == size,
            "the server stored {} bytes of {size}",
            written.size
        );
    }
    Ok(crate::exit::SUCCESS)
}

async fn download(
    client: &CthuluClient,
    sandbox_id: &str,
    remote_path: &str,
    destination: Endpoint,
) -> anyhow::Result<u8> {
    let file = client
        .get_file(sandbox_id, remote_path)
        .await
        .with_context(|| format!("cannot download {remote_path} from sandbox {sandbox_id}"))?;
    let mode = file.mode;
    let target = match destination {
        Endpoint::Local(path) => {
            let is_dir = path.is_dir() || path.as_os_str().to_string_lossy().ends_with('/');
            if is_dir {
                let name = remote_file_name(remote_path)
                    .with_context(|| format!("{remote_path} names no file"))?;
                Some(path.join(name))
            } else {
                Some(path)
            }
        }
        _ => None,
    };
    let bar = progress_bar(file.size);
    let result = match &target {
        Some(path) => write_file(path, file, bar.as_ref(), mode).await,
        None => {
            let mut stdout = tokio::io::stdout();
            copy_stream(file, &mut stdout, bar.as_ref()).await
        }
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    result.with_context(|| format!("cannot download {remote_path} from sandbox {sandbox_id}"))?;
    Ok(crate::exit::SUCCESS)
}

/// Writes the download next to `path` and renames it into place when complete, so a
/// failed copy leaves no half file behind.
async fn write_file(
    path: &Path,
    file: cthulu_client::FileDownload,
    bar: Option<&ProgressBar>,
    mode: Option<u32>,
) -> anyhow::Result<()> {
    let file_name = path
        .file_name()
        .with_context(|| format!("{} names no file", path.display()))?;
    let partial = path.with_file_name(format!(".{}.cthulu-part", file_name.to_string_lossy()));
    let mut output = tokio::fs::File::create(&partial)
        .await
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let copied = async {
        copy_stream(file, &mut output, bar).await?;
        output
            .sync_all()
            .await
            .with_context(|| format!("cannot write {}", partial.display()))?;
        if let Some(mode) = mode {
            tokio::fs::set_permissions(&partial, std::fs::Permissions::from_mode(mode & 0o7777))
                .await
                .with_context(|| format!("cannot set the mode of {}", partial.display()))?;
        }
        tokio::fs::rename(&partial, path)
            .await
            .with_context(|| format!("cannot rename {} to {}", partial.display(), path.display()))
    }
    .await;
    if copied.is_err() {
        let _ = tokio::fs::remove_file(&partial).await;
    }
    copied
}

async fn copy_stream<W>(
    file: cthulu_client::FileDownload,
    output: &mut W,
    bar: Option<&ProgressBar>,
) -> anyhow::Result<()>
where
    W: tokio::io::AsyncWrite + Unpin,
{
    let expected = file.size;
    let mut stream = file.into_stream();
    let mut received: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        output
            .write_all(&chunk)
            .await
            .context("cannot write the download")?;
        received += chunk.len() as u64;
        if let Some(bar) = bar {
            bar.set_position(received);
        }
    }
    output.flush().await.context("cannot write the download")?;
    if let Some(expected) = expected {
        anyhow::ensure!(
            received == expected,
            "the download stopped after {received} of {expected} bytes"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoint("abc123:/workspace/x"),
            Endpoint::Sandbox {
                sandbox_id: "abc123".into(),
                path: "/workspace/x".into()
            }
        );
        assert_eq!(
            parse_endpoint("./abc:x"),
            Endpoint::Local(PathBuf::from("./abc:x"))
        );
        assert_eq!(
            parse_endpoint("Data:x"),
            Endpoint::Local(PathBuf::from("Data:x"))
        );
        assert_eq!(parse_endpoint("-"), Endpoint::Standard);
        assert_eq!(
            parse_endpoint("file.txt"),
            Endpoint::Local(PathBuf::from("file.txt"))
        );
    }

    #[test]
    fn remote_file_names() {
        assert_eq!(remote_file_name("/workspace/a.txt"), Some("a.txt"));
        assert_eq!(remote_file_name("/workspace/dir/"), Some("dir"));
        assert_eq!(remote_file_name("a.txt"), Some("a.txt"));
        assert_eq!(remote_file_name("/"), None);
    }
}
