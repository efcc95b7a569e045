//! `cthulu bench --node N`: a node's terminal as the earlier system's clients use it. An
//! in-process node (`--backend`, default namespace) creates N VMs through `POST /vms`;
//! each is timed from the request to the first echo over its ttyd WebSocket (token
//! fetched, socket opened, handshake, `echo` typed), then keystroke-to-echo is timed on
//! that terminal `--iterations` times (one key sent, its echo awaited). One untimed VM
//! comes first, so that a qemu template exists before the timed creates.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use super::report::Latency;
use super::BenchArgs;
use crate::cli::GlobalArgs;
use crate::output::print_json;

/// How long one echo may take before the bench gives up on it.
const ECHO_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Serialize)]
struct NodeReport {
    backend: String,
    vms: u32,
    create_to_first_echo: Option<Latency>,
    keystroke_to_echo: Option<Latency>,
    /// `ssh … true` on VM 0 (node_ssh.rs); absent without OpenSSH.
    ssh_exec: Option<Latency>,
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn run(global: &GlobalArgs, args: &BenchArgs, vms: u32) -> anyhow::Result<u8> {
    let backend = args.backend.unwrap_or(cthulu_types::BackendKind::Namespace);
    let user_home = super::super::home_dir(args.home.clone())?;
    let home = tempfile::Builder::new()
        .prefix("cthulu-bench-node-")
        .tempdir()
        .context("cannot create a temporary home for the bench node")?;
    let token = cthulu_server::AccessToken::generate();
    let ssh_key = super::node_ssh::prepare(home.path())?;
    // Web ports first, then as many SSH ports.
    let web_port_base = free_port_range(vms * 2)?;
    let ssh_port_base = web_port_base + vms as u16;
    let config = cthulu_node::NodeConfig {
        server: cthulu_server::ServerConfig {
            home: home.path().to_owned(),
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            default_backend: None,
            host_shim: super::super::serve::shim_command()?,
            namespace_init: Some(super::super::serve::namespace_init_command()?),
            namespace_shim: super::super::serve::namespace_shim_command()?,
            warm_sandboxes: 0,
            images: Some(user_home.join("images")),
            vm_templates: Some(user_home.join("qemu-templates")),
            warm_vms: 0,
            runs: cthulu_server::RunsConfig::default(),
            access_token: None,
            max_sandboxes: None,
        },
        token: token.clone(),
        backend,
        // The warm-up VM is gone before the timed ones fill the node to its maximum.
        max_vms: vms as usize,
        public_host: None,
        web_port_base,
        terminal_assets: cthulu_node::no_assets,
        ssh: ssh_key.as_ref().map(|_| cthulu_node::ssh::SshConfig {
            port_base: ssh_port_base,
            ..cthulu_node::ssh::SshConfig::default()
        }),
    };
    let node = cthulu_node::Node::start(config)
        .await
        .context("cannot start the in-process bench node")?;
    let url = format!("http://{}", node.local_addr());
    let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(node.run_until(async move {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();
    let mut outcome = measure(&http, &url, token.expose(), vms, args.iterations).await;
    let mut ssh_exec = Vec::new();
    if let (Ok(_), Some(key)) = (&outcome, &ssh_key) {
        eprintln!("bench: node: ssh exec on vm 0");
        match super::node_ssh::measure(key, ssh_port_base, args.iterations).await {
            Ok(samples) => ssh_exec = samples,
            Err(error) => outcome = Err(error),
        }
    }
    // Every VM goes, whatever happened.
    for vm_id in 0..vms {
        let _ = http
            .delete(format!("{url}/vms/{vm_id}"))
            .bearer_auth(token.expose())
            .send()
            .await;
    }
    let _ = shutdown.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    let (create_to_first_echo, keystroke_to_echo) = outcome?;
    let report = NodeReport {
        backend: backend.to_string(),
        vms,
        create_to_first_echo: Latency::of(&create_to_first_echo),
        keystroke_to_echo: Latency::of(&keystroke_to_echo),
        ssh_exec: Latency::of(&ssh_exec),
    };
    if global.json {
        print_json(&report)?;
    } else {
        let show = |latency: &Option<Latency>| match latency {
            Some(latency) => format!(
                "median {:.2} ms, p99 {:.2} ms ({} samples)",
                latency.median_ms, latency.p99_ms, latency.samples
            ),
            None => "no samples".into(),
        };
        println!("node terminal ({backend} backend, {vms} VMs)");
        println!(
            "  POST /vms → first echo:  {}",
            show(&report.create_to_first_echo)
        );
        println!(
            "  keystroke → echo:        {}",
            show(&report.keystroke_to_echo)
        );
        println!("  ssh … true (VM 0):       {}", show(&report.ssh_exec));
    }
    Ok(crate::exit::SUCCESS)
}

async fn measure(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    vms: u32,
    iterations: u32,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let mut creates = Vec::new();
    let mut keystrokes = Vec::new();
    // Untimed: the first create of a shape on qemu boots the template it then clones.
    eprintln!("bench: node: warm-up vm");
    let mut warm_up = create_and_echo(http, url, token, "warmup").await?;
    let _ = warm_up.socket.close(None).await;
    http.delete(format!("{url}/vms/{}", warm_up.vm_id))
        .bearer_auth(token)
        .send()
        .await
        .context("DELETE the warm-up VM")?
        .error_for_status()
        .context("DELETE the warm-up VM")?;
    for index in 0..vms {
        eprintln!("bench: node: vm {}/{vms}", index + 1);
        let started = Instant::now();
        let mut created = create_and_echo(http, url, token, &index.to_string()).await?;
        creates.push(started.elapsed());
        let socket = &mut created.socket;
        if index == 0 {
            settle(socket, Duration::from_millis(300)).await?;
            for key in (0..iterations).map(|step| b'a' + (step % 26) as u8) {
                let sent = Instant::now();
                send_input(socket, &[key]).await?;
                wait_for_frame(socket, &[key]).await?;
                keystrokes.push(sent.elapsed());
                // Untimed: rub the key out, so the line never wraps (a wrapped echo is
                // not the key alone).
                send_input(socket, &[DELETE]).await?;
                wait_for_any_output(socket).await?;
            }
        }
        let _ = socket.close(None).await;
    }
    Ok((creates, keystrokes))
}

struct CreatedVm {
    vm_id: u64,
    socket: Socket,
}

/// `POST /vms`, then its terminal until an `echo` typed there comes back.
async fn create_and_echo(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    marker: &str,
) -> anyhow::Result<CreatedVm> {
    let response = http
        .post(format!("{url}/vms"))
        .bearer_auth(token)
        .json(&serde_json::json!({"tier": "nano", "api_key": ""}))
        .send()
        .await
        .context("POST /vms")?;
    let status = response.status();
    let body = response.text().await.context("POST /vms")?;
    anyhow::ensure!(status.is_success(), "POST /vms answered {status}: {body}");
    let vm: serde_json::Value = serde_json::from_str(&body).context("POST /vms answered no VM")?;
    let web_terminal = vm["web_terminal"]
        .as_str()
        .context("the VM has no web_terminal")?;
    let mut socket = open_terminal(http, web_terminal).await?;
    // The quotes keep the typed line from matching the output.
    send_input(&mut socket, format!("echo rea''dy{marker}\n").as_bytes()).await?;
    wait_for(&mut socket, &format!("ready{marker}")).await?;
    Ok(CreatedVm {
        vm_id: vm["vm_id"].as_u64().context("the VM has no vm_id")?,
        socket,
    })
}

/// Fetches the token, opens `/ws` with subprotocol `tty` and sends the handshake, as the
/// earlier ttyd client did.
async fn open_terminal(http: &reqwest::Client, web_terminal: &str) -> anyhow::Result<Socket> {
    let body: serde_json::Value = http
        .get(format!("{web_terminal}/token"))
        .send()
        .await
        .context("GET <web_terminal>/token")?
        .json()
        .await
        .context("the terminal's token is not JSON")?;
    let terminal_token = body["token"].as_str().unwrap_or_default();
    let host_port = web_terminal
        .strip_prefix("http://")
        .and_then(|rest| rest.split('/').next())
        .context("web_terminal is not an http:// URL")?;
    let mut request = format!("ws://{host_port}/ws").into_client_request()?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("tty"));
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .context("cannot open the terminal's WebSocket")?;
    let handshake = serde_json::json!({"AuthToken": terminal_token, "columns": 200, "rows": 50});
    socket
        .send(Message::Text(handshake.to_string().into()))
        .await?;
    Ok(socket)
}

async fn send_input(socket: &mut Socket, data: &[u8]) -> anyhow::Result<()> {
    let mut frame = vec![b'0'];
    frame.extend_from_slice(data);
    socket.send(Message::Binary(frame.into())).await?;
    Ok(())
}

/// Reads output frames until one holds `needle`.
async fn wait_for(socket: &mut Socket, needle: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + ECHO_TIMEOUT;
    let mut seen = String::new();
    loop {
        let message = tokio::time::timeout_at(deadline, socket.next())
            .await
            .with_context(|| format!("no {needle:?} within {ECHO_TIMEOUT:?}"))?;
        match message {
            Some(Ok(Message::Binary(data))) if data.first() == Some(&b'0') => {
                seen.push_str(&String::from_utf8_lossy(&data[1..]));
                if seen.contains(needle) {
                    return Ok(());
                }
            }
            Some(Ok(_)) => {}
            Some(Err(error)) => return Err(error).context("the terminal's socket failed"),
            None => anyhow::bail!("the terminal closed before {needle:?}"),
        }
    }
}

/// Reads output frames until one ends with `expected`: a line editor echoes a key typed
/// at the end of the line alone, or right after what it was still writing (busybox's
/// shell asks for the cursor position after its prompt).
async fn wait_for_frame(socket: &mut Socket, expected: &[u8]) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + ECHO_TIMEOUT;
    loop {
        let message = tokio::time::timeout_at(deadline, socket.next())
            .await
            .with_context(|| format!("no echo of {expected:?} within {ECHO_TIMEOUT:?}"))?;
        match message {
            Some(Ok(Message::Binary(data))) if data.first() == Some(&b'0') => {
                if data[1..].ends_with(expected) {
                    return Ok(());
                }
            }
            Some(Ok(_)) => {}
            Some(Err(error)) => return Err(error).context("the terminal's socket failed"),
            None => anyhow::bail!("the terminal closed before the echo"),
        }
    }
}

/// Reads output until the terminal has been quiet for `quiet` (the prompt is written).
async fn settle(socket: &mut Socket, quiet: Duration) -> anyhow::Result<()> {
    loop {
        match tokio::time::timeout(quiet, socket.next()).await {
            Err(_) => return Ok(()),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(error))) => return Err(error).context("the terminal's socket failed"),
            Ok(None) => anyhow::bail!("the terminal closed"),
        }
    }
}

/// The key that rubs out the previous one.
const DELETE: u8 = 0x7f;

/// Reads until an output frame arrives.
async fn wait_for_any_output(socket: &mut Socket) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + ECHO_TIMEOUT;
    loop {
        let message = tokio::time::timeout_at(deadline, socket.next())
            .await
            .with_context(|| format!("no output within {ECHO_TIMEOUT:?}"))?;
        match message {
            Some(Ok(Message::Binary(data))) if data.first() == Some(&b'0') => return Ok(()),
            Some(Ok(_)) => {}
            Some(Err(error)) => return Err(error).context("the terminal's socket failed"),
            None => anyhow::bail!("the terminal closed"),
        }
    }
}

/// A base port whose next `count` ports are free now, below the kernel's ephemeral range
/// (32768 and up by default), where outgoing connections would take them meanwhile.
fn free_port_range(count: u32) -> anyhow::Result<u16> {
    use std::hash::{BuildHasher as _, Hasher as _};
    let count = u16::try_from(count).context("too many VMs")?;
    for attempt in 0..200u64 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(attempt);
        let base = 20_000 + (hasher.finish() % 12_000) as u16;
        if (base..base + count).all(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
        {
            return Ok(base);
        }
    }
    anyhow::bail!("no {count} free ports in a row on 127.0.0.1 between 20000 and 32768")
}
