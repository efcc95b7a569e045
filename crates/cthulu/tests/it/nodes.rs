//! `cthulu node add|ls|rm` and `sandbox create --node` against two `cthulu serve`
//! children: a platform, and a node whose API key is the node token.

use crate::support::TestServer;

#[test]
fn nodes_are_added_listed_used_and_removed() {
    let platform = TestServer::start();
    let node = TestServer::start();
    let node_token = node
        .ok(&["key", "create", "--name", "platform"])
        .trim()
        .to_owned();

    let refused = platform.run(&["node", "add", "n1", &node.url, "--token", "ck_wrong"]);
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(refused.stderr.contains("invalid API key"), "{refused:?}");
    let missing = platform.run(&["node", "add", "n1", &node.url]);
    assert_ne!(missing.code, 0, "{missing:?}");
    assert!(missing.stderr.contains("--token"), "{missing:?}");

    platform.ok(&["node", "add", "n1", &node.url, "--token", &node_token]);
    let listed = platform.ok(&["node", "ls"]);
    assert!(
        listed.contains("n1") && listed.contains(&node.url),
        "{listed}"
    );
    let json = platform.ok(&["node", "ls", "--json"]);
    assert!(!json.contains(&node_token), "the node token leaked: {json}");
    let list: cthulu_types::NodeList = serde_json::from_str(&json).unwrap();
    assert!(list.nodes[0].reachable, "{json}");

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
