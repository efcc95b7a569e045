//! The VMs' SSH, driven by the real OpenSSH client: exec and PTY sessions, the api_key,
//! keys re-read at each login, what is refused (unknown keys, passwords, subsystems),
//! bad clients (garbage, silent connections), restarts and deletes.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::json;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::support::{Options, TestNode};

/// A key pair made by `ssh-keygen`; `None` after a SKIP line without OpenSSH.
struct KeyPair {
    private: PathBuf,
    public: String,
}

fn openssh_missing() -> Option<String> {
    ["/usr/bin/ssh", "/usr/bin/ssh-keygen"]
        .iter()
        .find(|tool| !Path::new(tool).exists())
        .map(|tool| format!("{tool} is not installed"))
}

fn key_pair(dir: &Path, name: &str, key_type: &str) -> KeyPair {
    let private = dir.join(name);
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", key_type, "-N", "", "-C", name, "-f"])
        .arg(&private)
        .status()
        .expect("ssh-keygen runs");
    assert!(status.success());
    let public = std::fs::read_to_string(private.with_extension("pub")).unwrap();
    KeyPair { private, public }
}

/// `ssh` with no user config, no agent and no prompts. `arguments`: options, then the
/// destination (the first with an `@`) and the command; the options come first because
/// ssh keeps the first value it is given for each.
async fn ssh(port: u16, key: &Path, arguments: &[&str], stdin: &[u8]) -> Output {
    let split = arguments
        .iter()
        .position(|argument| argument.contains('@'))
        .expect("a destination");
    let (options, destination) = arguments.split_at(split);
    let mut command = tokio::process::Command::new("ssh");
    command
        .args(options)
        .args([
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
        ])
        .args(["-o", "IdentityAgent=none", "-o", "ConnectTimeout=20"])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args(["-o", "LogLevel=ERROR", "-i"])
        .arg(key)
        .args(["-p", &port.to_string()])
        .args(destination)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("ssh runs");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    drop(input);
    tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("ssh ends")
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

struct SshNode {
    node: TestNode,
    keys: TempDir,
    alice: KeyPair,
    mallory: KeyPair,
}

async fn ssh_node() -> Option<SshNode> {
    if let Some(reason) = openssh_missing() {
        cthulu_core::conformance::report_skip(&format!("SKIP ssh: {reason}"));
        return None;
    }
    let node = TestNode::start(Options {
        ssh: true,
        ..Options::default()
    })
    .await?;
    let keys = tempfile::tempdir().unwrap();
    let alice = key_pair(keys.path(), "alice", "ed25519");
    // ECDSA, so that kind is seen working too once it is added.
    let mallory = key_pair(keys.path(), "mallory", "ecdsa");
    std::fs::write(
        node.home().join("authorized_keys"),
        format!("# the operator's keys\n{}", alice.public),
    )
    .unwrap();
    Some(SshNode {
        node,
        keys,
        alice,
        mallory,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_keys_run_commands_and_shells_in_the_vm() {
    let Some(SshNode {
        node,
        keys: _keys,
        alice,
        mallory,
    }) = ssh_node().await
    else {
        return;
    };
    let (_, health) = node.api.get("/health").await;
    assert_eq!(health["ssh"], true, "{health}");
    let (status, vm) = node
        .api
        .post("/vms", json!({"tier": "nano", "api_key": "k-ssh-7"}))
        .await;
    assert_eq!(status, 200, "{vm}");
    let port = node.ssh_port_base().unwrap();
    assert_eq!(vm["ssh_port"], port);
    assert_eq!(vm["ssh_command"], format!("ssh -p {port} root@127.0.0.1"));
    let key = &alice.private;

    let exec = ssh(port, key, &["root@127.0.0.1", "echo hi; exit 3"], b"").await;
    assert_eq!(text(&exec.stdout), "hi\n", "{}", text(&exec.stderr));
    assert_eq!(exec.status.code(), Some(3));

    let env = ssh(
        port,
        key,
        &["root@127.0.0.1", "echo $ANTHROPIC_API_KEY"],
        b"",
    )
    .await;
    assert_eq!(text(&env.stdout), "k-ssh-7\n", "{}", text(&env.stderr));

    // Input reaches the command; its EOF ends it.
    let cat = ssh(port, key, &["root@127.0.0.1", "wc -c"], b"12345").await;
    assert_eq!(text(&cat.stdout).trim(), "5");

    let pty_exec = ssh(
        port,
        key,
        &[
            "-tt",
            "root@127.0.0.1",
            "tty; stty size; echo $TERM; exit 4",
        ],
        b"",
    )
    .await;
    let pty_output = text(&pty_exec.stdout);
    assert!(pty_output.contains("/dev/"), "{pty_exec:?}");
    // This client has no terminal of its own, so it asks for no size: 80×24 it is.
    assert!(pty_output.contains("24 80"), "{pty_exec:?}");
    assert_eq!(pty_exec.status.code(), Some(4));

    let shell = ssh(
        port,
        key,
        &["-tt", "root@127.0.0.1"],
        b"echo hel''lo\nexit 5\n",
    )
    .await;
    assert!(text(&shell.stdout).contains("hello"), "{shell:?}");
    assert_eq!(shell.status.code(), Some(5));

    // The user name is not a credential: another name gets the same sandbox.
    let other_user = ssh(port, key, &["someone@127.0.0.1", "echo ok"], b"").await;
    assert_eq!(text(&other_user.stdout), "ok\n");

    // Refused: a key not in the file, a password, sftp.
    let unknown = ssh(port, &mallory.private, &["root@127.0.0.1", "echo in"], b"").await;
    assert_eq!(unknown.status.code(), Some(255));
    assert!(unknown.stdout.is_empty());
    assert!(
        text(&unknown.stderr).contains("Permission denied"),
        "{unknown:?}"
    );
    let password = ssh(
        port,
        key,
        &[
            "-o",
            "PreferredAuthentications=password,keyboard-interactive",
            "-o",
            "PubkeyAuthentication=no",
            "root@127.0.0.1",
            "echo in",
        ],
        b"",
    )
    .await;
    assert_eq!(password.status.code(), Some(255));
    assert!(password.stdout.is_empty());
    assert!(
        text(&password.stderr).contains("Permission denied"),
        "{password:?}"
    );
    let sftp = ssh(port, key, &["-s", "root@127.0.0.1", "sftp"], b"").await;
    assert_ne!(sftp.status.code(), Some(0), "{sftp:?}");
    assert!(
        text(&sftp.stderr).contains("subsystem request failed"),
        "{sftp:?}"
    );

    // Forwarding is refused (the client gives up at once with ExitOnForwardFailure), and
    // only TERM and LANG of the client's env pass.
    let forward = ssh(
        port,
        key,
        &[
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            "0:127.0.0.1:9",
            "root@127.0.0.1",
            "echo forwarded",
        ],
        b"",
    )
    .await;
    assert_ne!(forward.status.code(), Some(0), "{forward:?}");
    assert!(
        text(&forward.stderr).contains("forwarding failed"),
        "{forward:?}"
    );
    let env = ssh(
        port,
        key,
        &[
            "-o",
            "SetEnv=LD_PRELOAD=/x LANG=C.UTF-8",
            "root@127.0.0.1",
            "echo \"[$LD_PRELOAD][$LANG]\"",
        ],
        b"",
    )
    .await;
    assert_eq!(text(&env.stdout), "[][C.UTF-8]\n", "{env:?}");

    // Megabytes both ways: flow control holds.
    let big = vec![b'x'; 4 * 1024 * 1024];
    let echoed = ssh(port, key, &["root@127.0.0.1", "cat"], &big).await;
    assert_eq!(echoed.stdout.len(), big.len(), "{}", text(&echoed.stderr));

    // A key added to the file works at once, without a restart.
    let file = node.home().join("authorized_keys");
    let mut contents = std::fs::read_to_string(&file).unwrap();
    contents.push_str(&mallory.public);
    std::fs::write(&file, contents).unwrap();
    let added = ssh(
        port,
        &mallory.private,
        &["root@127.0.0.1", "echo added"],
        b"",
    )
    .await;
    assert_eq!(text(&added.stdout), "added\n", "{added:?}");

    // Garbage on the port gets no shell, and leaves the listener serving.
    let mut garbage = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\xff\xfe")
        .await
        .unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        garbage.read_to_end(&mut reply),
    )
    .await
    .expect("a connection sending garbage is closed");
    assert!(text(&reply).starts_with("SSH-2.0-"), "{reply:?}");
    // Silent connections hold a slot each, yet a real client still gets in.
    let mut silent = Vec::new();
    for _ in 0..8 {
        silent.push(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap(),
        );
    }
    let still = ssh(port, key, &["root@127.0.0.1", "echo still"], b"").await;
    assert_eq!(text(&still.stdout), "still\n", "{still:?}");
    // Past the login timeout (2 s in these tests), the node closes them.
    for mut connection in silent {
        let mut rest = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(30),
            connection.read_to_end(&mut rest),
        )
        .await
        .expect("a silent connection is closed")
        .ok();
    }

    // DELETE frees the port.
    let (status, _) = node.api.delete("/vms/0").await;
    assert_eq!(status, 200);
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("the ssh port is free");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_keeps_its_port_and_host_key_across_a_restart() {
    let Some(SshNode {
        node,
        keys,
        alice,
        mallory: _,
    }) = ssh_node().await
    else {
        return;
    };
    let (status, vm) = node.api.post("/vms", json!({"tier": "nano"})).await;
    assert_eq!(status, 200, "{vm}");
    let port = node.ssh_port_base().unwrap();
    let known_hosts = keys.path().join("known_hosts");
    let known = format!("UserKnownHostsFile={}", known_hosts.display());
    let first = ssh(
        port,
        &alice.private,
        &[
            "-o",
            &known,
            "-o",
            "StrictHostKeyChecking=accept-new",
            "root@127.0.0.1",
            "echo one",
        ],
        b"",
    )
    .await;
    assert_eq!(text(&first.stdout), "one\n", "{first:?}");
    assert!(std::fs::read_to_string(&known_hosts)
        .unwrap()
        .contains("ssh-ed25519"));

    let node = node.restart().await;
    let (_, after) = node.api.get("/vms/0").await;
    assert_eq!(after["ssh_port"], port, "{after}");
    // StrictHostKeyChecking=yes: a changed host key would fail this.
    let again = ssh(
        port,
        &alice.private,
        &[
            "-o",
            &known,
            "-o",
            "StrictHostKeyChecking=yes",
            "root@127.0.0.1",
            "echo two",
        ],
        b"",
    )
    .await;
    assert_eq!(text(&again.stdout), "two\n", "{again:?}");
    let (status, _) = node.api.delete("/vms/0").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_squatted_ssh_port_fails_the_create_cleanly() {
    let Some(SshNode { node, .. }) = ssh_node().await else {
        return;
    };
    let port = node.ssh_port_base().unwrap();
    let squatter = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let (status, body) = node.api.post("/vms", json!({"tier": "nano"})).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ssh port"),
        "{body}"
    );
    let (_, list) = node.api.get("/vms").await;
    assert_eq!(list["count"], 0, "nothing half-created: {list}");
    std::net::TcpListener::bind(("127.0.0.1", node.web_port_base()))
        .expect("the web port was given back");
    drop(squatter);
    let (status, vm) = node.api.post("/vms", json!({"tier": "nano"})).await;
    assert_eq!(status, 200, "{vm}");
    let (status, _) = node.api.delete("/vms/0").await;
    assert_eq!(status, 200);
}

/// Runs `ssh` under a terminal of its own (Python's `pty`), resizes that terminal twice
/// and waits, each time, for `stty size` in the VM to show the new size: the client's
/// window-change requests reach the shell's PTY.
const RESIZE_DRIVER: &str = r#"
import fcntl, os, pty, select, struct, sys, termios, time
pid, fd = pty.fork()
if pid == 0:
    os.execv("/usr/bin/ssh", ["ssh"] + sys.argv[1:])
seen = b""
def size_shows(rows, cols):
    global seen
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    want = b"%d %d" % (rows, cols)
    for _ in range(40):
        os.write(fd, b"stty size\n")
        end = time.time() + 0.5
        while time.time() < end:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    return False
                seen += data
                if want in seen:
                    seen = b""
                    return True
    return False
ok = size_shows(30, 100) and size_shows(41, 132)
os.write(fd, b"exit\n")
os.waitpid(pid, 0)
sys.stdout.write("resized" if ok else "not resized: %r" % seen[-400:])
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_changes_resize_the_shell() {
    if !Path::new("/usr/bin/python3").exists() {
        cthulu_core::conformance::report_skip("SKIP ssh resize: /usr/bin/python3 is missing");
        return;
    }
    let Some(SshNode {
        node,
        keys: _keys,
        alice,
        mallory: _,
    }) = ssh_node().await
    else {
        return;
    };
    let (status, vm) = node.api.post("/vms", json!({"tier": "nano"})).await;
    assert_eq!(status, 200, "{vm}");
    let port = node.ssh_port_base().unwrap().to_string();
    let output = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        tokio::process::Command::new("/usr/bin/python3")
            .args(["-c", RESIZE_DRIVER])
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
            .arg(&alice.private)
            .args(["-p", &port, "root@127.0.0.1"])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the driver ends")
    .unwrap();
    assert_eq!(text(&output.stdout), "resized", "{output:?}");
    let (status, _) = node.api.delete("/vms/0").await;
    assert_eq!(status, 200);
}
