//! Isolation (isolating backends only): the host's files, processes and loopback
//! services are out of reach, and resource bombs stop at their limits without hurting
//! the host, other sandboxes or the caller.

use std::process::{Command, Stdio};
use std::time::Duration;

use cthulu_types::Resources;

use super::sandbox::{exec_on, sh_on, Sandbox};
use super::support::{fail, show, text, within, Canary, Context, Outcome, ScenarioError};
use crate::{ExecSpec, SandboxSpec};

/// Host files outside what was granted can be neither read, listed nor written.
pub async fn host_files_are_out_of_reach(sandbox: Sandbox) -> Outcome {
    let canary = Canary::new()?;
    let root = canary.display();
    let output = sandbox
        .exec(ExecSpec::shell(format!(
            "cat {root}/victim.txt /proc/1/root{root}/victim.txt 2>/dev/null; \
             ls {root} 2>/dev/null; echo written > {root}/new.txt 2>/dev/null; \
             echo written > {root}/victim.txt 2>/dev/null; rm -rf {root}/sub 2>/dev/null; true"
        )))
        .await?;
    assert!(
        !text(&output.stdout).contains(Canary::secret().trim())
            && !text(&output.stdout).contains("victim"),
        "the sandbox read a host file: {}",
        show(&output)
    );
    canary.check_untouched()
}

/// Host processes are invisible and cannot be signalled.
pub async fn host_processes_are_invisible_and_unsignalable(sandbox: Sandbox) -> Outcome {
    let mut host = Command::new("sleep")
        .arg("987654")
        .stdin(Stdio::null())
        .spawn()
        .context("starting a host process")?;
    let pid = host.id();
    let result = sandbox
        .exec(ExecSpec::shell(format!(
            // `98765[4]` matches the host's `sleep 987654` but not the command lines of
            // this shell or grep, which hold the pattern itself.
            "grep -l '98765[4]' /proc/[0-9]*/cmdline 2>/dev/null; kill -KILL {pid} 2>/dev/null; \
             kill -TERM {pid} 2>/dev/null; true"
        )))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let alive = host
        .try_wait()
        .context("checking the host process")?
        .is_none();
    let _ = host.kill();
    let _ = host.wait();
    let output = result?;
    assert!(alive, "a sandbox killed host process {pid}");
    assert_eq!(
        text(&output.stdout),
        "",
        "a sandbox sees host processes: {}",
        show(&output)
    );
    Ok(())
}

/// A service on the host's 127.0.0.1 and a server in another sandbox (on the same port
/// of its own loopback) are unreachable. Sandboxes have no address the API names, so the
/// other sandbox is probed where a shared network would put it: 127.0.0.1.
pub async fn host_loopback_and_other_sandboxes_are_unreachable(sandbox: Sandbox) -> Outcome {
    // python3 where there is one; busybox's nc in a microVM's busybox image.
    let tool = sandbox
        .sh("command -v python3 >/dev/null && echo python3 || { busybox nc --help >/dev/null 2>&1 && echo nc; } || echo missing")
        .await?;
    let python = match tool.trim() {
        "python3" => true,
        "nc" => false,
        _ => {
            return Err(
                sandbox.skip("needs python3 or busybox nc in the sandbox to open connections")
            )
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("listening on the host loopback")?;
    let port = listener.local_addr().context("local_addr")?.port();
    let probe = if python {
        format!(
            "python3 -c \"import socket; \
             socket.create_connection(('127.0.0.1', {port}), timeout=5); print('connected')\" \
             2>/dev/null; true"
        )
    } else {
        format!("busybox nc -w 5 127.0.0.1 {port} </dev/null 2>/dev/null && echo connected; true")
    };
    let output = sandbox.exec(ExecSpec::shell(probe.clone())).await?;
    let accepted = tokio::time::timeout(Duration::from_millis(500), listener.accept()).await;
    assert!(
        accepted.is_err() && !text(&output.stdout).contains("connected"),
        "a sandbox reached a service on the host's 127.0.0.1:{port}"
    );

    let other = sandbox.provision_another(SandboxSpec::default()).await?;
    let mut server = ExecSpec::shell(if python {
        format!(
            "exec python3 -c \"import socket; s=socket.socket(); s.bind(('0.0.0.0', {port})); \
             s.listen(); print('listening', flush=True); c, _ = s.accept(); print('accepted')\""
        )
    } else {
        format!("echo listening; busybox nc -l -p {port} </dev/null >/dev/null && echo accepted")
    });
    server.timeout = Duration::from_secs(30);
    let serving = tokio::spawn(async move { exec_on(&other, server).await });
    tokio::time::sleep(Duration::from_secs(2)).await;
    sandbox.exec(ExecSpec::shell(probe)).await?;
    let served = within(
        Duration::from_secs(120),
        "the other sandbox's server",
        serving,
    )
    .await?
    .map_err(|error| fail(format!("the server task panicked: {error}")))??;
    assert!(
        text(&served.stdout).contains("listening"),
        "the server in the other sandbox did not start, so nothing was checked: {}",
        show(&served)
    );
    assert!(
        !text(&served.stdout).contains("accepted"),
        "a sandbox reached a server in another sandbox: {}",
        show(&served)
    );
    Ok(())
}

/// Another sandbox with `resources`; a limit the backend refuses as `Unsupported` on this
/// machine (an unprivileged server cannot write cgroups or mount a disk image) skips the
/// scenario with its reason.
async fn limited(
    sandbox: &Sandbox,
    resources: Resources,
) -> Result<std::sync::Arc<dyn crate::SandboxHandle>, ScenarioError> {
    sandbox
        .provision_another_or_skip(SandboxSpec {
            resources,
            ..SandboxSpec::default()
        })
        .await
}

/// While a bomb runs, the host can start processes and the first sandbox still execs.
async fn still_responsive(sandbox: &Sandbox) -> Outcome {
    let mut host = Command::new("true")
        .spawn()
        .context("starting a host process")?;
    host.wait().context("waiting for a host process")?;
    assert_eq!(
        sandbox.sh("echo responsive").await?,
        "responsive\n",
        "another sandbox during a bomb"
    );
    Ok(())
}

/// A fork bomb stops at the pid limit; the host and other sandboxes are unaffected.
pub async fn fork_bomb_stops_at_the_pid_limit(sandbox: Sandbox) -> Outcome {
    let bombed = limited(
        &sandbox,
        Resources {
            pids: Some(64),
            ..Resources::default()
        },
    )
    .await?;
    let mut bomb = ExecSpec::shell("bomb() { bomb | bomb & }; bomb; sleep 5");
    bomb.timeout = Duration::from_secs(20);
    let running = tokio::spawn(async move { exec_on(&bombed, bomb).await });
    tokio::time::sleep(Duration::from_secs(2)).await;
    still_responsive(&sandbox).await?;
    within(Duration::from_secs(180), "the fork bomb", running)
        .await?
        .map_err(|error| fail(format!("the fork bomb task panicked: {error}")))??;
    Ok(())
}

/// A memory bomb is OOM-killed at the memory limit and says so.
pub async fn memory_bomb_stops_at_the_memory_limit(sandbox: Sandbox) -> Outcome {
    let bombed = limited(
        &sandbox,
        Resources {
            memory_mb: Some(64),
            ..Resources::default()
        },
    )
    .await?;
    let mut bomb = ExecSpec::shell("head -c 2000000000 /dev/zero | tail -c 1000000000 > /dev/null");
    bomb.timeout = Duration::from_secs(120);
    let output = exec_on(&bombed, bomb).await?;
    assert!(
        output.exit.oom_killed,
        "a memory bomb must end with oom_killed: {}",
        show(&output)
    );
    still_responsive(&sandbox).await
}

/// Filling the disk stops at the disk limit with an error.
pub async fn disk_fill_stops_at_the_disk_limit(sandbox: Sandbox) -> Outcome {
    let bombed = limited(
        &sandbox,
        Resources {
            disk_mb: Some(64),
            ..Resources::default()
        },
    )
    .await?;
    let mut fill = ExecSpec::shell("dd if=/dev/zero of=fill bs=1M count=1024");
    fill.timeout = Duration::from_secs(120);
    let output = exec_on(&bombed, fill).await?;
    assert!(
        output.exit.exit_code.is_some_and(|code| code != 0) && !output.stderr.is_empty(),
        "writing 1 GiB under a 64 MB disk limit must fail with an error: {}",
        show(&output)
    );
    let size = sh_on(&bombed, "wc -c < fill").await?;
    let size: u64 = size.trim().parse().unwrap_or(u64::MAX);
    assert!(
        size <= 80 * 1024 * 1024,
        "the file grew to {size} bytes past a 64 MB limit"
    );
    still_responsive(&sandbox).await
}

/// Endless output stops at the default cap while the sandbox and host stay responsive.
pub async fn endless_output_stops_at_the_cap(sandbox: Sandbox) -> Outcome {
    let mut spec = ExecSpec::shell("cat /dev/zero");
    spec.timeout = Duration::from_secs(120);
    let flood = {
        let sandbox = sandbox.clone();
        tokio::spawn(async move { sandbox.exec(spec).await })
    };
    still_responsive(&sandbox).await?;
    let output = within(Duration::from_secs(240), "the flood", flood)
        .await?
        .map_err(|error| fail(format!("the flood task panicked: {error}")))??;
    assert!(
        output.exit.truncated
            && output.stdout.len() as u64 == cthulu_types::exec::DEFAULT_MAX_OUTPUT_BYTES,
        "endless output stops at the default cap: {} bytes, {:?}",
        output.stdout.len(),
        output.exit
    );
    Ok(())
}
