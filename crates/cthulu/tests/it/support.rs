//! A `cthulu serve` child on a free loopback port with its own home, and helpers to run
//! the `cthulu` binary against it.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BINARY: &str = env!("CARGO_BIN_EXE_cthulu");

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("cannot find a free port")
}

/// A running `cthulu serve`; killed on drop.
pub struct TestServer {
    child: Child,
    pub url: String,
    pub home: tempfile::TempDir,
}

impl TestServer {
    pub fn start() -> TestServer {
        TestServer::start_with_agents("[]")
    }

    /// A server that also knows the agent definitions `agents` (a JSON array), written to
    /// `<home>/agents.json` before it starts.
    pub fn start_with_agents(agents: &str) -> TestServer {
        let home = tempfile::Builder::new()
            .prefix("cthulu-cli-test-")
            .tempdir()
            .expect("cannot create a temporary home");
        std::fs::write(home.path().join("agents.json"), agents).expect("write agents.json");
        let port = free_port();
        let log = std::fs::File::create(home.path().join("server.log")).expect("server log");
        let child = Command::new(BINARY)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--home"])
            .arg(home.path())
            .env_remove("CTHULU_TOKEN")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start cthulu serve");
        let mut server = TestServer {
            child,
            url: format!("http://127.0.0.1:{port}"),
            home,
        };
        server.wait_until_healthy(SocketAddr::from(([127, 0, 0, 1], port)));
        server
    }

    fn wait_until_healthy(&mut self, address: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("cannot poll the server") {
                panic!("cthulu serve exited with {status}:\n{}", self.log());
            }
            if healthz(address) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("cthulu serve did not become healthy:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.home.path().join("server.log")).unwrap_or_default()
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// `cthulu ARGS…` against this server, without an API key.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BINARY);
        command
            .args(args)
            .env("CTHULU_URL", &self.url)
            .env("CTHULU_HOME", self.home())
            .env_remove("CTHULU_TOKEN")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        command
    }

    /// Runs `cthulu ARGS…` to the end.
    pub fn run(&self, args: &[&str]) -> Outcome {
        Outcome::of(self.command(args).output().expect("cannot run cthulu"))
    }

    /// Runs `cthulu ARGS…` and insists on exit code 0.
    pub fn ok(&self, args: &[&str]) -> String {
        let outcome = self.run(args);
        assert_eq!(
            outcome.code,
            0,
            "cthulu {args:?} failed: {outcome:?}\nserver log:\n{}",
            self.log()
        );
        outcome.stdout
    }

    /// A new sandbox's id.
    pub fn create_sandbox(&self, extra: &[&str]) -> String {
        let mut args = vec!["sandbox", "create"];
        args.extend_from_slice(extra);
        let id = self.ok(&args).trim().to_owned();
        assert!(
            !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric()),
            "{id:?}"
        );
        id
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // Sandboxes outlive their server by design (a namespace sandbox keeps its init
        // running); a test's must not outlive the test.
        let running = matches!(self.child.try_wait(), Ok(None));
        let listed = running
            .then(|| self.run(&["sandbox", "ls", "--json"]).stdout)
            .and_then(|json| serde_json::from_str::<cthulu_types::SandboxList>(&json).ok());
        for sandbox in listed.map(|list| list.sandboxes).unwrap_or_default() {
            let _ = self.run(&["sandbox", "rm", sandbox.id.as_str()]);
        }
        // SIGTERM first so the server shuts down as in production, then make sure.
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET /healthz` answered 200.
fn healthz(address: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

/// What a finished `cthulu` run left.
#[derive(Debug)]
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn of(output: Output) -> Outcome {
        Outcome {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// The stand-in agent of cthulu-runs, built next to `cthulu`.
pub fn fake_agent() -> PathBuf {
    let path = Path::new(BINARY).with_file_name("cthulu-fake-agent");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p cthulu-runs --bins`",
        path.display()
    );
    path
}

/// A path under the test's temporary directory.
pub fn temp_path(directory: &tempfile::TempDir, name: &str) -> PathBuf {
    directory.path().join(name)
}
