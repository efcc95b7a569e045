//! The SSH part of `cthulu bench --node`: a key made with `ssh-keygen` is registered in
//! the bench node's home, then the OpenSSH client runs `true` on VM 0 `--iterations`
//! times, each timed from spawning `ssh` to its exit (TCP connect, key exchange,
//! public-key login, the command and its exit status). Without OpenSSH on this machine
//! the node serves no SSH and the figure is left out.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// How long one `ssh … true` may take before the bench gives up on it.
const SSH_TIMEOUT: Duration = Duration::from_secs(60);

/// Makes a key pair under `home` and authorizes it; `None` (with a note) when OpenSSH
/// is missing.
pub fn prepare(home: &Path) -> anyhow::Result<Option<PathBuf>> {
    if let Some(tool) = ["/usr/bin/ssh", "/usr/bin/ssh-keygen"]
        .into_iter()
        .find(|tool| !Path::new(tool).exists())
    {
        eprintln!("bench: node: {tool} is missing, ssh is not measured");
        return Ok(None);
    }
    let key = home.join("bench_ed25519");
    let status = std::process::Command::new("/usr/bin/ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "cthulu-bench", "-f"])
        .arg(&key)
        .status()
        .context("cannot run ssh-keygen")?;
    anyhow::ensure!(status.success(), "ssh-keygen failed: {status}");
    let public = key.with_extension("pub");
    std::fs::copy(
        &public,
        home.join(cthulu_node::ssh::keys::AUTHORIZED_KEYS_FILE),
    )
    .with_context(|| format!("cannot authorize {}", public.display()))?;
    Ok(Some(key))
}

/// `iterations` runs of `ssh -p <port> root@127.0.0.1 true`.
pub async fn measure(key: &Path, port: u16, iterations: u32) -> anyhow::Result<Vec<Duration>> {
    let mut samples = Vec::new();
    for _ in 0..iterations {
        let started = Instant::now();
        let status = tokio::time::timeout(
            SSH_TIMEOUT,
            tokio::process::Command::new("/usr/bin/ssh")
                .args([
                    "-F",
                    "/dev/null",
                    "-o",
                    "BatchMode=yes",
                    "-o",
                    "IdentitiesOnly=yes",
                ])
                .args([
                    "-o",
                    "StrictHostKeyChecking=no",
                    "-o",
                    "UserKnownHostsFile=/dev/null",
                ])
                .args(["-o", "LogLevel=ERROR", "-i"])
                .arg(key)
                .args(["-p", &port.to_string(), "root@127.0.0.1", "true"])
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .status(),
        )
        .await
        .with_context(|| format!("ssh did not end within {SSH_TIMEOUT:?}"))?
        .context("cannot run ssh")?;
        anyhow::ensure!(status.success(), "ssh … true failed: {status}");
        samples.push(started.elapsed());
    }
    Ok(samples)
}
