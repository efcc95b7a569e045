//! Ports: a server in the sandbox reached through the URL `expose_port` returns.

use std::time::Duration;

use cthulu_types::{ErrorCode, ExposedPort, Signal};

use super::sandbox::{Sandbox, CALL_LIMIT};
use super::stream::start;
use super::support::{
    expect_code, fail, free_port, http_get, within, Context, Outcome, ScenarioError,
};
use super::watch::Watched;
use crate::ExecSpec;

const WAIT: Duration = Duration::from_secs(60);

/// For a backend without ports: `expose_port` must answer `Unsupported`.
async fn require_ports(sandbox: &Sandbox) -> Outcome {
    if sandbox.capabilities().ports {
        return Ok(());
    }
    let result = within(
        CALL_LIMIT,
        "expose_port",
        sandbox.handle().expose_port(free_port()),
    )
    .await?;
    Err(sandbox.expect_unsupported("ports", result))
}

/// Starts `python3 -m http.server port` (or, where there is no python3, as in a microVM's
/// busybox image, `busybox httpd`) serving `www/` with a token file; returns the stream
/// (the server lives as long as it, unless `detach`) and the token.
async fn start_server(
    sandbox: &Sandbox,
    port: u16,
    detach: bool,
) -> Result<(Watched, String), ScenarioError> {
    let found = sandbox
        .sh("command -v python3 || { busybox httpd --help >/dev/null 2>&1 && echo busybox; } || echo missing")
        .await?;
    let command = match found.trim() {
        "missing" => {
            return Err(
                sandbox.skip("needs python3 or busybox httpd in the sandbox to run an HTTP server")
            )
        }
        // It prints nothing when it listens; `expose` retries until it does.
        "busybox" => format!("echo 'Serving HTTP'; exec busybox httpd -f -p {port} -h ."),
        _ => format!("exec python3 -u -m http.server {port} 2>&1"),
    };
    let token = format!("token-{}", sandbox.id());
    sandbox
        .sh(&format!("mkdir -p www && printf '{token}' > www/token.txt"))
        .await?;
    let mut spec = ExecSpec::shell(command);
    spec.cwd = Some("www".into());
    spec.detach = detach;
    let mut stream = start(sandbox, spec).await?;
    stream.wait_for("Serving HTTP", WAIT).await?;
    Ok((stream, token))
}

/// GETs the token through `exposed`, retrying while the forwarding comes up.
async fn fetch_token(exposed: &ExposedPort, token: &str) -> Outcome {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let response = http_get(&exposed.url, "/token.txt", Duration::from_secs(30)).await;
        match &response {
            Ok(body) if body.starts_with("HTTP/1.") && body.contains(token) => return Ok(()),
            _ if tokio::time::Instant::now() >= deadline => {
                return Err(fail(format!(
                    "GET {}token.txt did not return the sandbox's file: {response:?}",
                    exposed.url
                )))
            }
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Exposes `port`, retrying while the server is not yet listening.
async fn expose(sandbox: &Sandbox, port: u16) -> Result<ExposedPort, ScenarioError> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let result = within(
            CALL_LIMIT,
            "expose_port",
            sandbox.handle().expose_port(port),
        )
        .await?;
        match result {
            Err(error)
                if error.code() == ErrorCode::BadRequest
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            other => return other.context(format!("expose_port {port}")),
        }
    }
}

/// Starts a server and exposes its port; returns the server's stream, the exposed port
/// and the token it serves (for scenarios about what happens to ports later).
pub(super) async fn serve_and_expose(
    sandbox: &Sandbox,
) -> Result<(Watched, ExposedPort, String), ScenarioError> {
    let port = free_port();
    let (server, token) = start_server(sandbox, port, false).await?;
    let exposed = expose(sandbox, port).await?;
    fetch_token(&exposed, &token).await?;
    Ok((server, exposed, token))
}

/// A server on port P is reachable through the returned URL and listed; `unexpose_port`
/// closes the URL; unexposing again is `port_not_found`.
pub async fn exposed_port_is_reachable_then_closed(sandbox: Sandbox) -> Outcome {
    require_ports(&sandbox).await?;
    let port = free_port();
    let (server, token) = start_server(&sandbox, port, false).await?;
    let exposed = expose(&sandbox, port).await?;
    assert_eq!(exposed.port, port, "the exposed port");
    assert!(
        exposed.url.starts_with("http://"),
        "an http URL: {exposed:?}"
    );
    fetch_token(&exposed, &token).await?;
    let handle = sandbox.handle();
    let listed = within(CALL_LIMIT, "list_ports", handle.list_ports())
        .await?
        .context("list_ports")?;
    assert!(
        listed.contains(&exposed),
        "list_ports shows the exposed port: {listed:?}"
    );

    within(CALL_LIMIT, "unexpose_port", handle.unexpose_port(port))
        .await?
        .context("unexpose_port")?;
    let listed = within(CALL_LIMIT, "list_ports", handle.list_ports())
        .await?
        .context("list_ports")?;
    assert!(
        listed.iter().all(|listed| listed.port != port),
        "an unexposed port is no longer listed: {listed:?}"
    );
    let after = http_get(&exposed.url, "/token.txt", Duration::from_secs(30)).await;
    if let Ok(body) = &after {
        assert!(
            !body.contains(&token),
            "{} still serves the sandbox's file after unexpose_port",
            exposed.url
        );
    }
    let result = within(CALL_LIMIT, "unexpose_port", handle.unexpose_port(port)).await?;
    expect_code(
        result,
        ErrorCode::PortNotFound,
        "unexposing a port that is not exposed",
    )?;
    drop(server);
    Ok(())
}

/// Exposing a port nobody listens on gives a clear error, or a URL whose connections
/// are refused or closed — promptly, never a hang.
pub async fn port_nobody_listens_on_fails_promptly(sandbox: Sandbox) -> Outcome {
    require_ports(&sandbox).await?;
    let port = free_port();
    let handle = sandbox.handle();
    match within(
        CALL_LIMIT,
        "expose_port of a silent port",
        handle.expose_port(port),
    )
    .await?
    {
        Err(error) => assert!(
            !error.is_internal(),
            "exposing a port nobody listens on must be a clear error: {error}"
        ),
        Ok(exposed) => {
            let response = http_get(&exposed.url, "/", Duration::from_secs(60)).await;
            match response {
                Err(reason) if reason.contains("hung") => {
                    return Err(fail(format!("GET {} to a silent port hung", exposed.url)))
                }
                Ok(body) if body.starts_with("HTTP/1.") && body.contains(" 200 ") => {
                    return Err(fail(format!("a silent port answered 200: {body:?}")))
                }
                _ => {}
            }
            within(CALL_LIMIT, "unexpose_port", handle.unexpose_port(port))
                .await?
                .context("unexpose_port")?;
        }
    }
    Ok(())
}

/// An exposed port of a detached server is still listed and reachable after a restart.
pub async fn exposed_port_survives_restart(sandbox: Sandbox) -> Outcome {
    require_ports(&sandbox).await?;
    if !sandbox.capabilities().detached_processes {
        return Err(sandbox.skip("needs detached processes to keep a server across a restart"));
    }
    let port = free_port();
    let (server, token) = start_server(&sandbox, port, true).await?;
    let process_id = server.process_id();
    drop(server);
    let exposed = expose(&sandbox, port).await?;
    fetch_token(&exposed, &token).await?;

    let handle = sandbox.restart().await?;
    let listed = within(CALL_LIMIT, "list_ports", handle.list_ports())
        .await?
        .context("list_ports after the restart")?;
    let again = listed
        .iter()
        .find(|listed| listed.port == port)
        .ok_or_else(|| {
            fail(format!(
                "the exposed port is not listed after a restart: {listed:?}"
            ))
        })?;
    fetch_token(again, &token).await?;
    within(
        CALL_LIMIT,
        "signal_process",
        handle.signal_process(&process_id, Signal::Kill),
    )
    .await?
    .context("killing the server")?;
    Ok(())
}
