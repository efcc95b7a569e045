//! `cthulu sandbox create | exec | ls | get | rm | extend | checkpoint | restore | port`.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};

use cthulu_types::{CheckpointList, PortList, Sandbox, SandboxList};

use crate::support::TestServer;

#[test]
fn create_exec_and_remove() {
    let server = TestServer::start();
    let sandbox_id = server.create_sandbox(&["--env", "GREETING=hi", "--timeout", "1h"]);

    let outcome = server.run(&[
        "sandbox",
        "exec",
        &sandbox_id,
        "--env",
        "NAME=cthulu",
        "--",
        "sh",
        "-c",
        "echo $GREETING $NAME; exit 4",
    ]);
    assert_eq!(outcome.code, 4, "{outcome:?}");
    assert_eq!(outcome.stdout, "hi cthulu\n");

    let shell = server.run(&[
        "sandbox",
        "exec",
        &sandbox_id,
        "--shell",
        "echo from a shell",
    ]);
    assert_eq!((shell.code, shell.stdout.as_str()), (0, "from a shell\n"));

    let killed = server.run(&[
        "sandbox",
        "exec",
        &sandbox_id,
        "--",
        "sh",
        "-c",
        "kill -9 $$",
    ]);
    assert_eq!(killed.code, 137, "{killed:?}");

    let sandbox: Sandbox =
        serde_json::from_str(&server.ok(&["sandbox", "get", &sandbox_id, "--json"])).unwrap();
    assert_eq!(sandbox.id.as_str(), sandbox_id);
    assert!(sandbox.expires_at_ms.is_some());
    let text = server.ok(&["sandbox", "get", &sandbox_id]);
    assert!(text.contains("running"), "{text}");

    server.ok(&["sandbox", "extend", &sandbox_id, "--timeout", "0"]);
    let sandbox: Sandbox =
        serde_json::from_str(&server.ok(&["sandbox", "get", &sandbox_id, "--json"])).unwrap();
    assert_eq!(sandbox.expires_at_ms, None);

    server.ok(&["sandbox", "rm", &sandbox_id]);
    let gone = server.run(&["sandbox", "exec", &sandbox_id, "--", "true"]);
    assert_ne!(gone.code, 0, "{gone:?}");
}

#[test]
fn ls_filters_by_label() {
    let server = TestServer::start();
    let team_a = server.create_sandbox(&["--label", "team=a", "--label", "tier=dev"]);
    let team_b = server.create_sandbox(&["--label", "team=b"]);

    let listing = server.ok(&["sandbox", "ls", "--label", "team=a", "--json"]);
    let list: SandboxList = serde_json::from_str(&listing).unwrap();
    let ids: Vec<&str> = list
        .sandboxes
        .iter()
        .map(|sandbox| sandbox.id.as_str())
        .collect();
    assert_eq!(ids, vec![team_a.as_str()]);

    let both = server.ok(&["sandbox", "ls", "--status", "running"]);
    assert!(both.starts_with("ID "), "{both}");
    assert!(both.contains(&team_a) && both.contains(&team_b), "{both}");
    assert!(both.contains("team=a,tier=dev"), "{both}");
}

#[test]
fn checkpoint_and_restore() {
    let server = TestServer::start();
    let sandbox_id = server.create_sandbox(&[]);
    server.ok(&[
        "sandbox",
        "exec",
        &sandbox_id,
        "--shell",
        "echo one > state.txt",
    ]);
    let checkpoint = server.run(&["sandbox", "checkpoint", &sandbox_id, "--name", "first"]);
    if checkpoint.code != 0 && checkpoint.stderr.contains("unsupported") {
        eprintln!("SKIP checkpoint_and_restore: {}", checkpoint.stderr.trim());
        return;
    }
    assert_eq!(checkpoint.code, 0, "{checkpoint:?}\n{}", server.log());
    let checkpoint_id = checkpoint.stdout.trim().to_owned();
    assert!(!checkpoint_id.is_empty());

    let list: CheckpointList =
        serde_json::from_str(&server.ok(&["sandbox", "checkpoints", &sandbox_id, "--json"]))
            .unwrap();
    assert_eq!(list.checkpoints.len(), 1);
    assert_eq!(list.checkpoints[0].id, checkpoint_id);
    assert_eq!(list.checkpoints[0].name.as_deref(), Some("first"));

    server.ok(&[
        "sandbox",
        "exec",
        &sandbox_id,
        "--shell",
        "echo two > state.txt",
    ]);
    server.ok(&["sandbox", "restore", &sandbox_id, "first"]);
    let restored = server.ok(&["sandbox", "exec", &sandbox_id, "--", "cat", "state.txt"]);
    assert_eq!(restored, "one\n");

    server.ok(&["sandbox", "restore", &sandbox_id, &checkpoint_id]);
    let missing = server.run(&["sandbox", "restore", &sandbox_id, "nosuchcheckpoint"]);
    assert_eq!(missing.code, 3, "{missing:?}");
}

#[test]
fn ports_are_exposed_listed_and_removed() {
    let server = TestServer::start();
    let sandbox_id = server.create_sandbox(&[]);
    // A server in the sandbox (of the default backend, whichever it is) on a port that is
    // free on the host too (a host sandbox shares the host's network).
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let script = format!(
        "echo 'hello through the port' > greeting.txt; \
         python3 -m http.server {port} --bind 127.0.0.1 >/dev/null 2>&1 &"
    );
    server.ok(&["sandbox", "exec", &sandbox_id, "--shell", &script]);
    // Exposing checks that something listens: retried while the server starts.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let exposed = loop {
        let exposed = server.run(&["sandbox", "port", &sandbox_id, &port]);
        if exposed.code == 0 || std::time::Instant::now() > deadline {
            break exposed;
        }
        assert!(exposed.stderr.contains("listens"), "{exposed:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    if exposed.code != 0 && exposed.stderr.contains("unsupported") {
        eprintln!("SKIP ports: {}", exposed.stderr.trim());
        return;
    }
    assert_eq!(exposed.code, 0, "{exposed:?}\n{}", server.log());
    assert!(exposed.stdout.trim().starts_with("http://"), "{exposed:?}");

    let list: PortList =
        serde_json::from_str(&server.ok(&["sandbox", "ports", &sandbox_id, "--json"])).unwrap();
    assert_eq!(list.ports.len(), 1);
    assert_eq!(list.ports[0].port.to_string(), port);
    assert_eq!(list.ports[0].url, exposed.stdout.trim());
    let mut connection = TcpStream::connect(&list.ports[0].host_address).unwrap();
    connection
        .write_all(b"GET /greeting.txt HTTP/1.0\r\n\r\n")
        .unwrap();
    let mut relayed = String::new();
    connection.read_to_string(&mut relayed).unwrap();
    assert!(
        relayed.ends_with("\r\n\r\nhello through the port\n"),
        "{relayed}"
    );

    let table = server.ok(&["sandbox", "ports", &sandbox_id]);
    assert!(table.contains(&list.ports[0].url), "{table}");
    server.ok(&["sandbox", "unport", &sandbox_id, &port]);
    let list: PortList =
        serde_json::from_str(&server.ok(&["sandbox", "ports", &sandbox_id, "--json"])).unwrap();
    assert!(list.ports.is_empty());
}
