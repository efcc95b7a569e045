//! Exposed ports reach the sandbox's own loopback, and only through the forwarder: the
//! sandbox's servers are not on the host's loopback, two sandboxes may use the same port,
//! and a forwarder closes with unexpose and destroy and comes back after a restart.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cthulu_core::{SandboxError, SandboxHandle, SandboxProvider, SandboxSpec};
use cthulu_types::ExposedPort;

use crate::support::{sh_ok, Fixture};

/// A loopback port that nothing on the host listens on (bound and released).
fn free_host_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Serves `token` over HTTP on `port` of the sandbox's loopback, in the background.
async fn serve(handle: &Arc<dyn SandboxHandle>, port: u16, token: &str) {
    sh_ok(
        handle,
        &format!(
            "mkdir -p www && printf {token} > www/token.txt && cd www && \
             (python3 -m http.server {port} --bind 127.0.0.1 >/dev/null 2>&1 &)"
        ),
    )
    .await;
}

/// Exposes `port`, retrying while the server is not yet listening.
async fn expose(handle: &Arc<dyn SandboxHandle>, port: u16) -> ExposedPort {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match handle.expose_port(port).await {
            Ok(exposed) => return exposed,
            Err(SandboxError::PortNotListening { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(error) => panic!("expose_port {port}: {error}"),
        }
    }
}

/// The body of `GET /token.txt` at `address`, or the error.
fn get_token(address: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"GET /token.txt HTTP/1.0\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    match response.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.0 200") => Ok(body.to_owned()),
        _ => Err(std::io::Error::other(format!("bad response {response:?}"))),
    }
}

/// Whether `address` refuses connections or closes them without an answer. (Blocking:
/// the tests run on a multi-threaded runtime so the forwarders keep running meanwhile.)
fn closed(address: &str) -> bool {
    get_token(address).is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sandboxes_serve_one_port_reachable_only_through_their_forwarders() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let port = free_host_port();
    let (_, first) = fixture.sandbox().await;
    let (_, second) = fixture.sandbox().await;
    serve(&first, port, "first-token").await;
    serve(&second, port, "second-token").await;
    let first_url = expose(&first, port).await;
    let second_url = expose(&second, port).await;
    assert_ne!(first_url.host_address, second_url.host_address);
    assert_eq!(get_token(&first_url.host_address).unwrap(), "first-token");
    assert_eq!(get_token(&second_url.host_address).unwrap(), "second-token");
    // Neither server is on the host's loopback.
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "a sandbox's server must not listen on the host's loopback"
    );
    assert_eq!(first.list_ports().await.unwrap(), vec![first_url.clone()]);

    first.unexpose_port(port).await.unwrap();
    assert!(closed(&first_url.host_address), "unexpose closes the URL");
    assert!(matches!(
        first.unexpose_port(port).await,
        Err(SandboxError::PortNotExposed { .. })
    ));
    // The other sandbox's forwarder is untouched, until its sandbox goes.
    assert_eq!(get_token(&second_url.host_address).unwrap(), "second-token");
    second.destroy().await.unwrap();
    assert!(closed(&second_url.host_address), "destroy closes the URL");
    first.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_nobody_listens_on_is_refused_and_nothing_is_recorded() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let (_, handle) = fixture.sandbox().await;
    let port = free_host_port();
    // Something listens on the host's loopback: the sandbox's port is still empty.
    let _host_listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let error = handle.expose_port(port).await.unwrap_err();
    assert!(
        matches!(error, SandboxError::PortNotListening { port: refused } if refused == port),
        "{error}"
    );
    assert!(error.to_string().contains(&port.to_string()), "{error}");
    assert!(handle.list_ports().await.unwrap().is_empty());
    handle.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exposed_ports_forward_again_after_a_restart() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let (sandbox_id, handle) = fixture.sandbox().await;
    let port = free_host_port();
    serve(&handle, port, "kept-token").await;
    let exposed = expose(&handle, port).await;
    assert_eq!(get_token(&exposed.host_address).unwrap(), "kept-token");

    // The server stops; its forwarders go with it. The sandbox's server keeps running.
    drop(handle);
    let restarted = fixture.restarted();
    assert!(closed(&exposed.host_address), "the old forwarder is gone");
    let handle = restarted
        .attach(&sandbox_id, &SandboxSpec::default())
        .await
        .unwrap();
    let listed = handle.list_ports().await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].port, port);
    assert_eq!(get_token(&listed[0].host_address).unwrap(), "kept-token");
    handle.destroy().await.unwrap();
}
