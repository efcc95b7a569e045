//! `cthulu node add|ls|rm` and `sandbox create --node` between two children: a platform
//! (`cthulu serve`) and a real node (`cthulu node --token T`, namespace backend).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{free_port, TestServer, BINARY};

const NODE_TOKEN: &str = "cli-test-node-token-7d2e41b9";

/// A `cthulu node` child on a free port with its own home; stopped on drop.
struct NodeProcess {
    child: Child,
    url: String,
    home: tempfile::TempDir,
}

impl NodeProcess {
    fn start() -> NodeProcess {
        let home = tempfile::Builder::new()
            .prefix("cthulu-cli-node-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let web_port_base = free_port();
        let log = std::fs::File::create(home.path().join("node.log")).unwrap();
        let child = Command::new(BINARY)
            .args(["node", "--listen", &format!("127.0.0.1:{port}")])
            .args([
                "--token",
                NODE_TOKEN,
                "--backend",
                "namespace",
                "--max-vms",
                "4",
            ])
            .args(["--web-port-base", &web_port_base.to_string(), "--home"])
            .arg(home.path().join("state"))
            .env_remove("CTHULU_TOKEN")
            .env_remove("CTHULU_NODE_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start cthulu node");
        let mut node = NodeProcess {
            child,
            url: format!("http://127.0.0.1:{port}"),
            home,
        };
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(30);
        // Every route of a node wants its token, so "up" is: something accepts there.
        while std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = node.child.try_wait() {
                panic!("cthulu node exited with {status}:\n{}", node.log());
            }
            assert!(
                Instant::now() < deadline,
                "cthulu node did not come up:\n{}",
                node.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        node
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.home.path().join("node.log")).unwrap_or_default()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
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

#[test]
fn nodes_are_added_listed_used_and_removed() {
    let platform = TestServer::start();
    let node = NodeProcess::start();

    let refused = platform.run(&["node", "add", "n1", &node.url, "--token", "wrong-token"]);
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(
        refused.stderr.contains("refused the platform's token"),
        "{refused:?}"
    );
    let missing = platform.run(&["node", "add", "n1", &node.url]);
    assert_ne!(missing.code, 0, "{missing:?}");
    assert!(missing.stderr.contains("--token"), "{missing:?}");

    platform.ok(&["node", "add", "n1", &node.url, "--token", NODE_TOKEN]);
    let listed = platform.ok(&["node", "ls"]);
    assert!(
        listed.contains("n1") && listed.contains(&node.url),
        "{listed}"
    );
    let json = platform.ok(&["node", "ls", "--json"]);
    assert!(!json.contains(NODE_TOKEN), "the node token leaked: {json}");
    let list: cthulu_types::NodeList = serde_json::from_str(&json).unwrap();
    assert!(list.nodes[0].reachable, "{json}");
    assert_eq!(
        list.nodes[0]
            .capacity
            .as_ref()
            .and_then(|capacity| capacity.max_sandboxes),
        Some(4),
        "{json}"
    );

    let sandbox_id = platform.create_sandbox(&["--node", "n1"]);
    let said = platform.ok(&[
        "sandbox",
        "exec",
        &sandbox_id,
        "--",
        "echo",
        "from-the-node",
    ]);
    assert_eq!(said.trim(), "from-the-node");
    let busy = platform.run(&["node", "rm", "n1"]);
    assert_ne!(busy.code, 0, "{busy:?}");
    assert!(busy.stderr.contains(&sandbox_id), "{busy:?}");
    platform.ok(&["sandbox", "rm", &sandbox_id]);
    platform.ok(&["node", "rm", "n1"]);
    assert!(!platform.ok(&["node", "ls"]).contains("n1"));
}
