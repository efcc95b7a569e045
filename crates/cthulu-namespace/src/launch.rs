//! Starting a sandbox's init and, on failure or destroy, ending it and removing what was
//! made for it.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use cthulu_core::SandboxError;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::config::InitCommand;
use crate::state::{InitProcess, INIT_LOG};

/// How long init may take to report ready.
const READY_LIMIT: Duration = Duration::from_secs(20);
/// How long a killed init and its namespace may take to disappear.
const EXIT_LIMIT: Duration = Duration::from_secs(10);

/// What init reported on stdout.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Report {
    pub pid: Option<i32>,
    pub ready: bool,
    pub errors: Vec<String>,
}

impl Report {
    /// Takes one line: `pid <n>`, `ready` or `error <message>` (anything else is kept as
    /// an error: init prints nothing else).
    pub fn take(&mut self, line: &str) {
        if let Some(pid) = line.strip_prefix("pid ") {
            self.pid = pid.trim().parse().ok();
        } else if line.trim() == "ready" {
            self.ready = true;
        } else if let Some(message) = line.strip_prefix("error ") {
            self.errors.push(message.to_owned());
        } else if !line.trim().is_empty() {
            self.errors.push(format!("unexpected output: {line}"));
        }
    }
}

/// Starts init for the sandbox in `dir` and waits until it serves its socket. On failure
/// the init process found so far (if any) is returned with the error, for cleanup.
pub(crate) async fn start_init(
    init: &InitCommand,
    dir: &Path,
) -> Result<InitProcess, (SandboxError, Option<i32>)> {
    let log_path = dir.join(INIT_LOG);
    let log = std::fs::File::create(&log_path)
        .map_err(|error| (SandboxError::io("create", &log_path, error), None))?;
    let mut command = tokio::process::Command::new(&init.program);
    command
        .args(&init.args)
        .arg(dir)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(false);
    let mut child = command.spawn().map_err(|error| {
        (
            SandboxError::io("start the namespace init", &init.program, error),
            None,
        )
    })?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut report = Report::default();
    let reading = async {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            report.take(&line);
        }
        child.wait().await
    };
    let waited = tokio::time::timeout(READY_LIMIT, reading).await;
    let failure = |message: String, pid| {
        (
            SandboxError::system("start the sandbox's init", std::io::Error::other(message)),
            pid,
        )
    };
    let log_tail = || {
        std::fs::read_to_string(&log_path)
            .map(|log| log.trim().to_owned())
            .unwrap_or_default()
    };
    match waited {
        Err(_) => {
            return Err(failure(
                format!("init did not report ready within {READY_LIMIT:?}"),
                report.pid,
            ))
        }
        Ok(Err(error)) => return Err(failure(format!("waiting for init: {error}"), report.pid)),
        Ok(Ok(_)) => {}
    }
    if !report.errors.is_empty() || !report.ready {
        let mut message = report.errors.join("; ");
        if message.is_empty() {
            message = format!("init ended without reporting ready: {}", log_tail());
        }
        return Err(failure(message, report.pid));
    }
    let Some(pid) = report.pid else {
        return Err(failure("init did not report its pid".into(), None));
    };
    match InitProcess::find(pid) {
        Some(init) => Ok(init),
        None => Err(failure(
            format!(
                "init (pid {pid}) ended right after reporting ready: {}",
                log_tail()
            ),
            Some(pid),
        )),
    }
}

/// Kills init (PID 1 of the sandbox: the kernel then kills everything in its pid
/// namespace, and its mounts go with its mount namespace) and waits until it is gone.
pub(crate) async fn kill_init(init: InitProcess) -> Result<(), SandboxError> {
    if !init.is_alive() {
        return Ok(());
    }
    if let Some(pid) = rustix::process::Pid::from_raw(init.pid) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
    let deadline = tokio::time::Instant::now() + EXIT_LIMIT;
    while init.is_alive() {
        if tokio::time::Instant::now() >= deadline {
            return Err(SandboxError::system(
                "kill the sandbox's init",
                std::io::Error::other(format!(
                    "pid {} still runs {EXIT_LIMIT:?} after SIGKILL",
                    init.pid
                )),
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Removes the sandbox's directory. The overlay's work directories are mode 000; as
/// their owner we may open them up first when not root.
pub(crate) async fn remove_dir(dir: &Path) -> Result<(), SandboxError> {
    let deadline = tokio::time::Instant::now() + EXIT_LIMIT;
    loop {
        let target = dir.to_owned();
        let result = tokio::task::spawn_blocking(move || {
            if target.symlink_metadata().is_err() {
                return Ok(());
            }
            open_up(&target.join("layer/work"));
            fs_err::remove_dir_all(&target)
        })
        .await
        .map_err(|error| {
            SandboxError::system("remove the sandbox directory", std::io::Error::other(error))
        })?;
        match result {
            Ok(()) => return Ok(()),
            // A mount of a namespace still being torn down: wait a little.
            Err(error)
                if error.raw_os_error() == Some(libc::EBUSY)
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => return Err(SandboxError::io("remove", dir, error)),
        }
    }
}

/// Gives the owner access to every directory below `dir` (not following symlinks).
fn open_up(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700));
            open_up(&path);
        }
    }
}

/// Sends `request` to the init listening on `socket` and waits for its `Done`; `what`
/// names the operation in errors.
pub(crate) async fn ask(
    socket: &Path,
    request: crate::protocol::Request,
    what: &'static str,
) -> Result<(), SandboxError> {
    use crate::protocol::{self, Response};
    let socket = socket.to_owned();
    cthulu_host::files::blocking(what, move || {
        let answer = (|| {
            let mut connection = std::os::unix::net::UnixStream::connect(&socket)?;
            connection.set_read_timeout(Some(Duration::from_secs(5)))?;
            protocol::send(&connection, &request, &[])?;
            protocol::receive::<Response>(&mut connection)
        })();
        match answer {
            Ok(Some((Response::Done, _))) => Ok(()),
            Ok(other) => Err(SandboxError::system(
                what,
                std::io::Error::other(format!("the sandbox's init answered {other:?}")),
            )),
            Err(error) => Err(SandboxError::io(
                "reach the sandbox's init at",
                &socket,
                error,
            )),
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lines_in_any_order() {
        let mut report = Report::default();
        for line in ["ready", "pid 42"] {
            report.take(line);
        }
        assert_eq!(
            report,
            Report {
                pid: Some(42),
                ready: true,
                errors: vec![]
            }
        );
        let mut failed = Report::default();
        failed.take("pid 7");
        failed.take("error mounting overlay on /x: EPERM");
        assert_eq!(
            failed.errors,
            vec!["mounting overlay on /x: EPERM".to_owned()]
        );
        assert!(!failed.ready);
    }
}
