//! `cthulu key create`, then calls without a key fail with 5 and with one succeed.

use cthulu_types::ServerInfo;

use crate::support::TestServer;

#[test]
fn key_create_turns_auth_on() {
    let server = TestServer::start();
    let info: ServerInfo = serde_json::from_str(&server.ok(&["info", "--json"])).unwrap();
    assert!(!info.auth_required);

    let created = server.run(&["key", "create", "--name", "ci"]);
    assert_eq!(created.code, 0, "{created:?}");
    let key = created.stdout.trim().to_owned();
    assert!(!key.is_empty());
    assert!(
        created.stderr.contains("export CTHULU_TOKEN="),
        "{created:?}"
    );

    let refused = server.run(&["sandbox", "ls"]);
    assert_eq!(refused.code, 5, "{refused:?}");
    assert!(refused.stderr.contains("hint:"), "{refused:?}");

    let accepted = server
        .command(&["sandbox", "ls", "--json"])
        .env("CTHULU_TOKEN", &key)
        .output()
        .unwrap();
    assert_eq!(
        accepted.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&accepted.stderr)
    );

    // The key also works for the streaming WebSocket.
    let run = server
        .command(&["run", "--", "echo", "authorized"])
        .env("CTHULU_TOKEN", &key)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&run.stdout), "authorized\n");

    let wrong = server.run(&["--token", "not-a-key", "sandbox", "ls"]);
    assert_eq!(wrong.code, 5, "{wrong:?}");
}
