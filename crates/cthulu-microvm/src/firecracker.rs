//! The Firecracker driver: the VM configured through Firecracker's REST API on a Unix
//! socket, the agent reached over Firecracker's vsock (a Unix socket on the host side,
//! `CONNECT <port>`), checkpoints as snapshot create / load.
//!
//! No registry this project can reach ships a Firecracker binary, so the live path runs
//! only where `firecracker` is on PATH; the requests and their order are tested against a
//! stand-in API server.
//!
//! The API speaks HTTP/1.1 over a Unix socket: one request per connection, JSON bodies,
//! `204 No Content` or a JSON error. That subset is written here (a few dozen lines)
//! rather than pulling an HTTP client with Unix-socket support into the build.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// One API call.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiRequest {
    pub method: &'static str,
    pub path: String,
    pub body: Option<Value>,
}

impl ApiRequest {
    fn put(path: impl Into<String>, body: Value) -> ApiRequest {
        ApiRequest {
            method: "PUT",
            path: path.into(),
            body: Some(body),
        }
    }

    fn patch(path: impl Into<String>, body: Value) -> ApiRequest {
        ApiRequest {
            method: "PATCH",
            path: path.into(),
            body: Some(body),
        }
    }

    /// The request as bytes on the wire.
    pub fn to_http(&self) -> Vec<u8> {
        let body = self
            .body
            .as_ref()
            .map(|body| body.to_string())
            .unwrap_or_default();
        let mut request = format!(
            "{} {} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n",
            self.method, self.path
        );
        if self.body.is_some() {
            request.push_str("Content-Type: application/json\r\n");
        }
        request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        request.into_bytes()
    }
}

/// What a Firecracker microVM is made of.
#[derive(Debug, Clone)]
pub struct FirecrackerMachine {
    /// An uncompressed ELF kernel (`vmlinux`): Firecracker boots no bzImage.
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub boot_args: String,
    pub memory_mib: u32,
    pub vcpus: u32,
    /// The host side of the guest's vsock (a Unix socket Firecracker listens on).
    pub vsock_uds: PathBuf,
    /// A TAP device for `network: full`.
    pub tap: Option<String>,
}

/// The guest's vsock context id (any value ≥ 3; each VM has its own device).
pub const GUEST_CID: u32 = 3;
/// The vsock port the agent listens on (`cthulu.channel=vsock:1024`).
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// The calls that configure and start a VM, in order.
pub fn boot_requests(machine: &FirecrackerMachine) -> Vec<ApiRequest> {
    let mut requests = vec![
        ApiRequest::put(
            "/boot-source",
            json!({
                "kernel_image_path": machine.kernel,
                "initrd_path": machine.initramfs,
                "boot_args": machine.boot_args,
            }),
        ),
        ApiRequest::put(
            "/machine-config",
            json!({
                "vcpu_count": machine.vcpus,
                "mem_size_mib": machine.memory_mib,
                "smt": false,
            }),
        ),
        ApiRequest::put(
            "/vsock",
            json!({
                "guest_cid": GUEST_CID,
                "uds_path": machine.vsock_uds,
            }),
        ),
    ];
    if let Some(tap) = &machine.tap {
        requests.push(ApiRequest::put(
            "/network-interfaces/eth0",
            json!({ "iface_id": "eth0", "host_dev_name": tap }),
        ));
    }
    requests.push(ApiRequest::put(
        "/actions",
        json!({ "action_type": "InstanceStart" }),
    ));
    requests
}

pub fn pause_request() -> ApiRequest {
    ApiRequest::patch("/vm", json!({ "state": "Paused" }))
}

pub fn resume_request() -> ApiRequest {
    ApiRequest::patch("/vm", json!({ "state": "Resumed" }))
}

/// A full snapshot: device state in `snapshot`, guest memory in `memory`.
pub fn snapshot_create_request(snapshot: &Path, memory: &Path) -> ApiRequest {
    ApiRequest::put(
        "/snapshot/create",
        json!({
            "snapshot_type": "Full",
            "snapshot_path": snapshot,
            "mem_file_path": memory,
        }),
    )
}

/// Loads a snapshot into a fresh Firecracker and runs it. The memory file is mapped
/// private, so clones of one snapshot share its pages copy-on-write.
pub fn snapshot_load_request(snapshot: &Path, memory: &Path) -> ApiRequest {
    ApiRequest::put(
        "/snapshot/load",
        json!({
            "snapshot_path": snapshot,
            "mem_backend": { "backend_type": "File", "backend_path": memory },
            "enable_diff_snapshots": false,
            "resume_vm": true,
        }),
    )
}

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("talking to Firecracker's API socket {socket}: {source}")]
    Io {
        socket: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Firecracker refused {method} {path} ({status}): {message}")]
    Refused {
        method: &'static str,
        path: String,
        status: u16,
        message: String,
    },
    #[error("Firecracker's API answered something that is not HTTP: {0}")]
    Garbage(String),
}

/// A client of one Firecracker's API socket.
#[derive(Debug, Clone)]
pub struct Api {
    socket: PathBuf,
}

/// Largest response body read (Firecracker's are small JSON documents).
const MAX_RESPONSE: u64 = 1 << 20;
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

impl Api {
    pub fn new(socket: impl Into<PathBuf>) -> Api {
        Api {
            socket: socket.into(),
        }
    }

    /// Sends `request` on a new connection; `Ok` with the response body on a 2xx.
    pub async fn call(&self, request: &ApiRequest) -> Result<String, ApiError> {
        let io = |source| ApiError::Io {
            socket: self.socket.display().to_string(),
            source,
        };
        let exchange = async {
            let mut stream = UnixStream::connect(&self.socket).await.map_err(io)?;
            stream.write_all(&request.to_http()).await.map_err(io)?;
            let mut reader = BufReader::new(stream);
            let mut status_line = String::new();
            reader.read_line(&mut status_line).await.map_err(io)?;
            let status: u16 = status_line
                .split_whitespace()
                .nth(1)
                .and_then(|code| code.parse().ok())
                .ok_or_else(|| ApiError::Garbage(status_line.trim().to_string()))?;
            let mut length = 0u64;
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).await.map_err(io)? == 0 {
                    break;
                }
                let header = header.trim();
                if header.is_empty() {
                    break;
                }
                if let Some((name, value)) = header.split_once(':') {
                    if name.eq_ignore_ascii_case("content-length") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
            }
            let mut body = Vec::new();
            reader
                .take(length.min(MAX_RESPONSE))
                .read_to_end(&mut body)
                .await
                .map_err(io)?;
            let body = String::from_utf8_lossy(&body).into_owned();
            if (200..300).contains(&status) {
                Ok(body)
            } else {
                let message = serde_json::from_str::<Value>(&body)
                    .ok()
                    .and_then(|value| value.get("fault_message")?.as_str().map(str::to_string))
                    .unwrap_or(body);
                Err(ApiError::Refused {
                    method: request.method,
                    path: request.path.clone(),
                    status,
                    message,
                })
            }
        };
        tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .map_err(|_| io(std::io::Error::other("no answer within 30 s")))?
    }

    /// Configures and starts `machine`.
    pub async fn boot(&self, machine: &FirecrackerMachine) -> Result<(), ApiError> {
        for request in boot_requests(machine) {
            self.call(&request).await?;
        }
        Ok(())
    }

    /// A checkpoint of a running VM: pause, snapshot, resume (resumed even when the
    /// snapshot failed, so a failed checkpoint leaves the VM as it was).
    pub async fn checkpoint(&self, snapshot: &Path, memory: &Path) -> Result<(), ApiError> {
        self.call(&pause_request()).await?;
        let created = self.call(&snapshot_create_request(snapshot, memory)).await;
        let resumed = self.call(&resume_request()).await;
        created?;
        resumed.map(|_| ())
    }

    /// Loads a snapshot into this (fresh) Firecracker and runs it.
    pub async fn restore(&self, snapshot: &Path, memory: &Path) -> Result<(), ApiError> {
        self.call(&snapshot_load_request(snapshot, memory))
            .await
            .map(|_| ())
    }
}

/// Connects to the agent's vsock port through Firecracker's host-side socket.
pub async fn connect_vsock(uds: &Path, port: u32) -> std::io::Result<UnixStream> {
    let mut stream = UnixStream::connect(uds).await?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await?;
    // The answer is one line, `OK <host port>`, read byte by byte so nothing of the
    // agent's first frame is consumed.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 64 {
        stream.read_exact(&mut byte).await?;
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    if !line.starts_with(b"OK ") {
        return Err(std::io::Error::other(format!(
            "Firecracker's vsock refused the connection to port {port}: {}",
            String::from_utf8_lossy(&line)
        )));
    }
    Ok(stream)
}

/// File names inside a Firecracker VM's directory (its working directory: the paths the
/// VM is configured with are relative, so a snapshot taken in a template's directory
/// restores in a clone's, each binding its own vsock socket).
pub const API_SOCKET: &str = "firecracker.sock";
pub const VSOCK_SOCKET: &str = "vsock.sock";
pub const PID_FILE: &str = "firecracker.pid";
/// What a finished template's directory does not keep.
pub const SCRATCH_FILES: [&str; 3] = [API_SOCKET, VSOCK_SOCKET, PID_FILE];
/// The memory file a snapshot writes next to its state file.
pub const MEMORY_FILE: &str = "memory";

/// How this machine runs Firecracker, found once at start.
#[derive(Debug, Clone)]
pub struct Firecracker {
    pub binary: PathBuf,
}

impl Firecracker {
    /// Finds `firecracker` (or takes `binary`) and checks that hardware KVM is there: it
    /// has no software CPU. `Err` says why it cannot run here.
    pub fn detect(binary: Option<&Path>) -> Result<Firecracker, String> {
        let binary = match binary {
            Some(binary) => binary.to_path_buf(),
            None => find_binary()?,
        };
        let (accel, reason) = crate::qemu::choose_accel();
        if accel != crate::qemu::Accel::Kvm {
            return Err(format!(
                "Firecracker runs only on hardware KVM, and here {reason} (use --backend qemu)"
            ));
        }
        Ok(Firecracker { binary })
    }

    /// Starts a Firecracker process serving its API in `dir` (also its working directory;
    /// its output, the guest's serial console, goes to the console log) and returns its
    /// pid once the API socket exists. The process is in a session of its own, so it
    /// outlives the server like a daemonized QEMU.
    pub async fn launch(&self, dir: &Path) -> Result<u32, String> {
        let console = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(crate::qemu::CONSOLE_LOG))
            .map_err(|error| format!("opening the console log in {}: {error}", dir.display()))?;
        let errors = console
            .try_clone()
            .map_err(|error| format!("duplicating the console log: {error}"))?;
        let mut command = std::process::Command::new(&self.binary);
        command
            .args(launch_args(dir))
            .current_dir(dir)
            .stdin(std::process::Stdio::null())
            .stdout(console)
            .stderr(errors)
            .process_group(0);
        let mut child = command
            .spawn()
            .map_err(|error| format!("running {}: {error}", self.binary.display()))?;
        let pid = child.id();
        // Reaped here while this server runs; a later server finds it by its pid file.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        std::fs::write(dir.join(PID_FILE), format!("{pid}\n"))
            .map_err(|error| format!("writing the pid file in {}: {error}", dir.display()))?;
        let socket = dir.join(API_SOCKET);
        for _ in 0..500 {
            if socket.exists() {
                return Ok(pid);
            }
            if !crate::qemu::is_running(pid, dir) {
                return Err(format!(
                    "Firecracker exited at start: {}",
                    crate::qemu::console_tail(dir, 10)
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err("Firecracker did not open its API socket within 5 s".into())
    }
}

use std::os::unix::process::CommandExt;

/// The command line of a Firecracker serving its API in `dir`.
pub fn launch_args(dir: &Path) -> Vec<String> {
    vec![
        "--api-sock".into(),
        dir.join(API_SOCKET).display().to_string(),
        "--id".into(),
        dir.file_name()
            .map(|name| {
                name.to_string_lossy()
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .take(60)
                    .collect()
            })
            .filter(|id: &String| !id.is_empty())
            .unwrap_or_else(|| "cthulu".into()),
    ]
}

/// The Firecracker configuration of a VM booted in its directory: every path relative to
/// it. `boot_args` is the kernel command line (without the devices: Firecracker adds
/// `virtio_mmio.device=` words, which the agent passes to the module).
pub fn machine_in_dir(memory_mib: u32, vcpus: u32, boot_args: String) -> FirecrackerMachine {
    FirecrackerMachine {
        kernel: PathBuf::from(crate::template::VMLINUX_FILE),
        initramfs: PathBuf::from(crate::template::INITRAMFS_FILE),
        boot_args,
        memory_mib,
        vcpus,
        vsock_uds: PathBuf::from(VSOCK_SOCKET),
        tap: None,
    }
}

/// Connects to the agent through the VM's vsock socket in `dir`, retrying until it
/// listens or `timeout` passes.
pub async fn connect_agent(dir: &Path, timeout: Duration) -> std::io::Result<UnixStream> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match connect_vsock(&dir.join(VSOCK_SOCKET), AGENT_VSOCK_PORT).await {
            Ok(stream) => return Ok(stream),
            Err(error) if tokio::time::Instant::now() >= deadline => return Err(error),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// The `firecracker` binary on PATH, or why there is none.
pub fn find_binary() -> Result<PathBuf, String> {
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("firecracker"))
                .find(|candidate| candidate.is_file())
        })
        .ok_or_else(|| {
            "no firecracker binary on PATH (no registry this project can reach ships one; put a \
             release binary on PATH to enable it)"
                .to_string()
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::net::UnixListener;

    fn machine(tap: Option<&str>) -> FirecrackerMachine {
        FirecrackerMachine {
            kernel: "/img/vmlinux".into(),
            initramfs: "/img/initramfs.cpio.gz".into(),
            boot_args: "console=ttyS0 cthulu.channel=vsock:1024".into(),
            memory_mib: 256,
            vcpus: 2,
            vsock_uds: "/vm/vsock.sock".into(),
            tap: tap.map(str::to_string),
        }
    }

    #[test]
    fn boot_configures_then_starts() {
        let requests = boot_requests(&machine(None));
        let paths: Vec<&str> = requests
            .iter()
            .map(|request| request.path.as_str())
            .collect();
        assert_eq!(
            paths,
            ["/boot-source", "/machine-config", "/vsock", "/actions"]
        );
        assert!(requests.iter().all(|request| request.method == "PUT"));
        assert_eq!(
            requests[0].body.as_ref().unwrap()["kernel_image_path"],
            "/img/vmlinux"
        );
        assert_eq!(requests[1].body.as_ref().unwrap()["mem_size_mib"], 256);
        assert_eq!(requests[1].body.as_ref().unwrap()["vcpu_count"], 2);
        assert_eq!(requests[2].body.as_ref().unwrap()["guest_cid"], 3);
        assert_eq!(
            requests[3].body.as_ref().unwrap()["action_type"],
            "InstanceStart"
        );
        let with_tap = boot_requests(&machine(Some("cthulu0")));
        assert_eq!(with_tap[3].path, "/network-interfaces/eth0");
        assert_eq!(
            with_tap[3].body.as_ref().unwrap()["host_dev_name"],
            "cthulu0"
        );
        assert_eq!(with_tap.last().unwrap().path, "/actions");
    }

    #[test]
    fn a_vm_is_configured_with_paths_relative_to_its_directory() {
        // A snapshot records the vsock socket's path: relative, it is bound again in each
        // clone's own directory (Firecracker's working directory).
        let machine = machine_in_dir(512, 2, "console=ttyS0 cthulu.channel=vsock:1024".into());
        let requests = boot_requests(&machine);
        let body = |index: usize| requests[index].body.clone().unwrap();
        assert_eq!(body(0)["kernel_image_path"], "vmlinux");
        assert_eq!(body(0)["initrd_path"], "initramfs");
        assert_eq!(body(2)["uds_path"], "vsock.sock");
        assert_eq!(body(1)["mem_size_mib"], 512);
        let args = launch_args(Path::new("/state/sandboxes/k3v0abc"));
        assert_eq!(
            args,
            [
                "--api-sock",
                "/state/sandboxes/k3v0abc/firecracker.sock",
                "--id",
                "k3v0abc"
            ]
        );
        assert_eq!(launch_args(Path::new("/"))[3], "cthulu");
    }

    #[test]
    fn a_request_is_http_with_its_length() {
        let http = String::from_utf8(pause_request().to_http()).unwrap();
        let body = r#"{"state":"Paused"}"#;
        assert!(http.starts_with("PATCH /vm HTTP/1.1\r\n"), "{http}");
        assert!(http.contains(&format!("Content-Length: {}\r\n", body.len())));
        assert!(http.ends_with(&format!("\r\n\r\n{body}")), "{http}");
    }

    /// A stand-in for Firecracker's API: records each request line and body, answers 204,
    /// or 400 with a fault message for paths in `failing`.
    async fn fake_api(
        socket: PathBuf,
        failing: &'static [&'static str],
    ) -> Arc<Mutex<Vec<(String, String)>>> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let listener = UnixListener::bind(&socket).unwrap();
        let record = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                reader.read_line(&mut line).await.unwrap();
                let mut length = 0usize;
                loop {
                    let mut header = String::new();
                    reader.read_line(&mut header).await.unwrap();
                    if header.trim().is_empty() {
                        break;
                    }
                    if let Some(value) = header.strip_prefix("Content-Length:") {
                        length = value.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0u8; length];
                reader.read_exact(&mut body).await.unwrap();
                let request_line = line.trim().to_string();
                let path = request_line.split(' ').nth(1).unwrap().to_string();
                record
                    .lock()
                    .unwrap()
                    .push((request_line, String::from_utf8(body).unwrap()));
                let mut stream = reader.into_inner();
                let answer = if failing.contains(&path.as_str()) {
                    let body = r#"{"fault_message":"disk full"}"#;
                    format!(
                        "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 204 No Content\r\n\r\n".to_string()
                };
                stream.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        seen
    }

    #[tokio::test]
    async fn a_checkpoint_pauses_snapshots_and_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let seen = fake_api(socket.clone(), &[]).await;
        let api = Api::new(&socket);
        api.checkpoint(Path::new("/c/state"), Path::new("/c/mem"))
            .await
            .unwrap();
        let seen = seen.lock().unwrap().clone();
        let lines: Vec<&str> = seen.iter().map(|(line, _)| line.as_str()).collect();
        assert_eq!(
            lines,
            [
                "PATCH /vm HTTP/1.1",
                "PUT /snapshot/create HTTP/1.1",
                "PATCH /vm HTTP/1.1"
            ]
        );
        assert_eq!(seen[0].1, r#"{"state":"Paused"}"#);
        let create: Value = serde_json::from_str(&seen[1].1).unwrap();
        assert_eq!(create["snapshot_path"], "/c/state");
        assert_eq!(create["mem_file_path"], "/c/mem");
        assert_eq!(create["snapshot_type"], "Full");
        assert_eq!(seen[2].1, r#"{"state":"Resumed"}"#);
    }

    #[tokio::test]
    async fn a_failed_snapshot_still_resumes_and_names_the_fault() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let seen = fake_api(socket.clone(), &["/snapshot/create"]).await;
        let error = Api::new(&socket)
            .checkpoint(Path::new("/c/state"), Path::new("/c/mem"))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("disk full"), "{error}");
        assert!(error.to_string().contains("400"), "{error}");
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 3, "pause, failed create, resume: {seen:?}");
        assert_eq!(seen[2].1, r#"{"state":"Resumed"}"#);
    }

    #[tokio::test]
    async fn a_restore_loads_and_resumes_in_one_call() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let seen = fake_api(socket.clone(), &[]).await;
        Api::new(&socket)
            .restore(Path::new("/c/state"), Path::new("/c/mem"))
            .await
            .unwrap();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].0, "PUT /snapshot/load HTTP/1.1");
        let load: Value = serde_json::from_str(&seen[0].1).unwrap();
        assert_eq!(load["mem_backend"]["backend_type"], "File");
        assert_eq!(load["mem_backend"]["backend_path"], "/c/mem");
        assert_eq!(load["resume_vm"], true);
    }

    #[tokio::test]
    async fn the_vsock_handshake_leaves_the_agents_bytes_unread() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("vsock.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut line = vec![0u8; "CONNECT 1024\n".len()];
            stream.read_exact(&mut line).await.unwrap();
            assert_eq!(line, b"CONNECT 1024\n");
            stream.write_all(b"OK 1073741824\nHELLO").await.unwrap();
        });
        let mut stream = connect_vsock(&socket, AGENT_VSOCK_PORT).await.unwrap();
        let mut rest = [0u8; 5];
        stream.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"HELLO");
    }

    #[tokio::test]
    async fn live_firecracker_answers_its_api() {
        let binary = match find_binary() {
            Ok(binary) => binary,
            Err(reason) => {
                cthulu_core::conformance::report_skip(&format!("SKIP firecracker: {reason}"));
                return;
            }
        };
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let mut child = tokio::process::Command::new(binary)
            .arg("--api-sock")
            .arg(&socket)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        for _ in 0..100 {
            if socket.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let api = Api::new(&socket);
        api.call(&ApiRequest::put(
            "/machine-config",
            json!({"vcpu_count": 1, "mem_size_mib": 128, "smt": false}),
        ))
        .await
        .unwrap();
        let _ = child.kill().await;
    }
}
