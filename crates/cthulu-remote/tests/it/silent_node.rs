//! A node that accepts connections but never answers must not hang a restarted
//! platform's re-attach: the sandbox comes back with its last known status.

use std::sync::Arc;

use cthulu_core::{SandboxProvider, SandboxSpec};
use cthulu_remote::{Node, NodeDirectory, RemoteConfig, RemoteProvider};
use cthulu_test_support::TestServer;
use cthulu_types::{SandboxId, SandboxStatus};

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_node_does_not_hang_reattach() {
    let mut token = String::new();
    let server = TestServer::start_with(|config| {
        token = cthulu_server::create_api_key(&config.home, Some("platform")).unwrap();
    })
    .await;
    let node = Node {
        name: "quiet".into(),
        url: server.url().to_owned(),
        token: token.clone(),
    };
    let state = tempfile::tempdir().unwrap();
    let config = RemoteConfig {
        root: state.path().join("sandboxes"),
        nodes: Arc::new(NodeDirectory::new([node])),
    };
    let provider = RemoteProvider::new(config.clone()).unwrap();
    let sandbox_id = SandboxId::generate();
    let spec = SandboxSpec::default();
    let handle = provider.provision(&sandbox_id, &spec).await.unwrap();
    assert_eq!(handle.status(), SandboxStatus::Running);
    drop(handle);
    drop(provider);

    // The node stops; something that accepts and says nothing takes its address.
    let mut server = server;
    server.stop().await;
    let listener = tokio::net::TcpListener::bind(server.url().trim_start_matches("http://"))
        .await
        .unwrap();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((connection, _)) = listener.accept().await {
            held.push(connection);
        }
    });

    let restarted = RemoteProvider::new(config.clone()).unwrap();
    let attached = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        restarted.attach(&sandbox_id, &spec),
    )
    .await
    .expect("re-attach does not hang on a silent node")
    .expect("the sandbox is re-attached");
    assert_eq!(
        attached.status(),
        SandboxStatus::Running,
        "its last known status"
    );
    silent.abort();
    drop(attached);
    drop(restarted);

    // The node comes back: the sandbox is destroyed there.
    let server = server.restart_in_place(|_| {}).await;
    let provider = RemoteProvider::new(config).unwrap();
    let handle = provider.attach(&sandbox_id, &spec).await.unwrap();
    handle.destroy().await.unwrap();
    drop(server);
}
