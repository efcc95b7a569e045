//! `cthulu bench --runs N`: what an agent run costs beyond the agent's own time, and how
//! fast its events reach an SSE client. An in-process server runs the stand-in agent
//! (`cthulu-fake-agent`, next to this binary) on a 10 MB working directory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use cthulu_client::{CthuluClient, RunStreamItem};
use cthulu_server::{Server, ServerConfig};
use cthulu_types::{BackendKind, CreateRunRequest, Run, RunEventBody, RunStatus};
use serde::Serialize;

use super::BenchArgs;
use crate::cli::GlobalArgs;
use crate::output::print_json;

/// The working directory: this many files of this many pseudo-random (incompressible)
/// bytes, 10 MB in all.
const FILES: usize = 100;
const FILE_BYTES: usize = 100 * 1000;
/// Stamped events per SSE latency run, and the pause between them.
const STAMPS: usize = 200;
const STAMP_DELAY_MS: &str = "5";

const TRANSCRIPT: &[u8] = include_bytes!("../../../../cthulu-runs/tests/transcripts/success.jsonl");

/// p50 and p95 in milliseconds (nearest rank).
#[derive(Debug, Clone, Copy, Serialize)]
struct Percentiles {
    p50_ms: f64,
    p95_ms: f64,
    max_ms: f64,
    samples: usize,
}

impl Percentiles {
    fn of(mut samples: Vec<f64>) -> Option<Percentiles> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_by(f64::total_cmp);
        let rank = |quantile: f64| {
            let index = (quantile * samples.len() as f64).ceil() as usize;
            samples[index.clamp(1, samples.len()) - 1]
        };
        Some(Percentiles {
            p50_ms: rank(0.5),
            p95_ms: rank(0.95),
            max_ms: samples[samples.len() - 1],
            samples: samples.len(),
        })
    }

    fn render(&self) -> String {
        format!(
            "p50 {:.2} ms, p95 {:.2} ms, max {:.2} ms ({} samples)",
            self.p50_ms, self.p95_ms, self.max_ms, self.samples
        )
    }
}

#[derive(Debug, Serialize)]
struct RunsReport {
    backend: BackendKind,
    workdir_bytes: usize,
    /// provision + copy-in + start + teardown, as the server measured them.
    overhead: Option<Percentiles>,
    provision: Option<Percentiles>,
    copy_in: Option<Percentiles>,
    start: Option<Percentiles>,
    teardown: Option<Percentiles>,
    /// From the create request to the end event at the client, less the agent's time.
    client_overhead: Option<Percentiles>,
    /// From the agent printing an event to the SSE client receiving it.
    sse_latency: Option<Percentiles>,
}

impl RunsReport {
    fn render(&self) -> String {
        let line = |name: &str, value: &Option<Percentiles>| {
            format!(
                "  {name:<16} {}\n",
                value.map_or("-".to_owned(), |value| value.render())
            )
        };
        let mut text = format!(
            "agent runs on {} ({} byte working directory)\n",
            self.backend, self.workdir_bytes
        );
        text.push_str(&line("overhead", &self.overhead));
        text.push_str(&line("  provision", &self.provision));
        text.push_str(&line("  copy-in", &self.copy_in));
        text.push_str(&line("  start", &self.start));
        text.push_str(&line("  teardown", &self.teardown));
        text.push_str(&line("client overhead", &self.client_overhead));
        text.push_str(&line("sse latency", &self.sse_latency));
        text
    }
}

fn fake_agent() -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe()
        .context("cannot find the path of this executable")?
        .with_file_name("cthulu-fake-agent");
    anyhow::ensure!(
        path.exists(),
        "{} is missing: build it with `cargo build --release -p cthulu-runs --bins`",
        path.display()
    );
    Ok(path)
}

/// A plain tar of `files` (path, contents, mode).
fn tar_of(files: &[(String, Vec<u8>, u32)]) -> anyhow::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, contents, mode) in files {
        let mut header = tar::Header::new_gnu();
        header.set_mode(*mode);
        header.set_size(contents.len() as u64);
        builder
            .append_data(&mut header, path, contents.as_slice())
            .context("cannot build the working directory")?;
    }
    builder
        .into_inner()
        .context("cannot build the working directory")
}

/// The 10 MB working directory; on backends that do not see the host's files the agent
/// and its transcript travel in it (under `.agent/`).
fn workdir(agent: &Path, with_agent: bool) -> anyhow::Result<(Vec<u8>, usize)> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut files = Vec::new();
    for index in 0..FILES {
        let contents: Vec<u8> = (0..FILE_BYTES)
            .map(|_| {
                // xorshift: fast, incompressible enough.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        files.push((format!("data/file{index:03}.bin"), contents, 0o644));
    }
    let data_bytes = FILES * FILE_BYTES;
    if with_agent {
        let binary =
            std::fs::read(agent).with_context(|| format!("cannot read {}", agent.display()))?;
        files.push((".agent/cthulu-fake-agent".into(), binary, 0o755));
        files.push((".agent/transcript.jsonl".into(), TRANSCRIPT.to_vec(), 0o644));
        files.push((".agent/empty.jsonl".into(), Vec::new(), 0o644));
    }
    Ok((tar_of(&files)?, data_bytes))
}

fn definitions(agent: &Path, host_dir: &Path, inside: bool) -> serde_json::Value {
    let (program, transcript, empty) = if inside {
        (
            "/workspace/.agent/cthulu-fake-agent".to_owned(),
            "/workspace/.agent/transcript.jsonl".to_owned(),
            "/workspace/.agent/empty.jsonl".to_owned(),
        )
    } else {
        (
            agent.display().to_string(),
            host_dir.join("transcript.jsonl").display().to_string(),
            host_dir.join("empty.jsonl").display().to_string(),
        )
    };
    serde_json::json!([
        {"name": "bench-replay", "program": program,
         "args": ["--transcript", transcript, "--", "{prompt}"],
         "output_format": "claude-stream-json"},
        {"name": "bench-stamps", "program": program,
         "args": ["--transcript", empty, "--stamps", STAMPS.to_string(), "--delay-ms", STAMP_DELAY_MS, "--", "{prompt}"],
         "output_format": "claude-stream-json"},
    ])
}

fn now_micros() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_micros())
        .unwrap_or(0)
}

/// Follows a run to its end; with `stamps`, the delay of each stamped event.
async fn follow(client: &CthuluClient, run_id: &str, stamps: &mut Vec<f64>) -> anyhow::Result<Run> {
    let mut events = client.run_events(run_id, 0).await?;
    loop {
        match events.next().await? {
            Some(RunStreamItem::Event(event)) => {
                let received = now_micros();
                if let RunEventBody::Agent { event } = &event.body {
                    let stamp = event["text"]
                        .as_str()
                        .and_then(|text| text.strip_prefix("stamp "))
                        .and_then(|micros| micros.parse::<u128>().ok());
                    if let Some(stamp) = stamp {
                        stamps.push(received.saturating_sub(stamp) as f64 / 1000.0);
                    }
                }
            }
            Some(RunStreamItem::End(run)) => return Ok(*run),
            None => anyhow::bail!("the event stream of run {run_id} ended early"),
        }
    }
}

pub async fn run(global: &GlobalArgs, args: &BenchArgs, runs: u32) -> anyhow::Result<u8> {
    let backend = args.backend.unwrap_or(BackendKind::Namespace);
    let agent = fake_agent()?;
    let home = tempfile::Builder::new()
        .prefix("cthulu-bench-runs-")
        .tempdir()
        .context("cannot create a temporary home for the bench server")?;
    let inside = backend != BackendKind::Host;
    std::fs::write(home.path().join("transcript.jsonl"), TRANSCRIPT)
        .context("cannot write the transcript")?;
    std::fs::write(home.path().join("empty.jsonl"), b"").context("cannot write the transcript")?;
    let agents_file = home.path().join("bench-agents.json");
    std::fs::write(
        &agents_file,
        serde_json::to_vec(&definitions(&agent, home.path(), inside))?,
    )
    .context("cannot write the agents file")?;
    let config = ServerConfig {
        home: home.path().join("server"),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        default_backend: Some(backend),
        host_shim: super::super::serve::shim_command()?,
        namespace_init: Some(super::super::serve::namespace_init_command()?),
        namespace_shim: super::super::serve::namespace_shim_command()?,
        warm_sandboxes: args.warm_sandboxes,
        images: None,
        vm_templates: None,
        warm_vms: 0,
        runs: cthulu_server::RunsConfig {
            agents_file: Some(agents_file),
            ..cthulu_server::RunsConfig::default()
        },
        node_token: None,
        max_sandboxes: None,
    };
    let server = Server::start(config)
        .await
        .context("cannot start the in-process bench server")?;
    let address = server.local_addr();
    let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run_until(async move {
        let _ = stopped.await;
    }));
    let client = CthuluClient::new(&format!("http://{address}"), None)?;
    let outcome = measure(&client, backend, &agent, inside, runs).await;
    let _ = shutdown.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    let report = outcome?;
    if global.json {
        print_json(&report)?;
    } else {
        print!("{}", report.render());
    }
    Ok(crate::exit::SUCCESS)
}

async fn measure(
    client: &CthuluClient,
    backend: BackendKind,
    agent: &Path,
    inside: bool,
    runs: u32,
) -> anyhow::Result<RunsReport> {
    let (archive, workdir_bytes) = workdir(agent, inside)?;
    let encoded = base64::engine::general_purpose::STANDARD.encode(&archive);
    let request = |agent: &str| CreateRunRequest {
        prompt: "bench".into(),
        agent: Some(agent.into()),
        backend: Some(backend),
        input_archive: Some(encoded.clone()),
        env: BTreeMap::new(),
        ..CreateRunRequest::default()
    };
    let mut phases: [Vec<f64>; 5] = Default::default();
    let mut client_overhead = Vec::new();
    let mut stamps = Vec::new();
    // One untimed run first: caches, the first sandbox.
    for index in 0..=runs {
        let started = Instant::now();
        let run = client.create_run(&request("bench-replay")).await?;
        let run = follow(client, &run.id, &mut Vec::new()).await?;
        let wall = started.elapsed().as_secs_f64() * 1000.0;
        anyhow::ensure!(
            run.status == RunStatus::Succeeded,
            "bench run {} {}: {}",
            run.id,
            run.status,
            run.error.unwrap_or_default()
        );
        let timings = run.timings.context("the run has no timings")?;
        if index == 0 {
            continue;
        }
        phases[0].push(timings.overhead_ms());
        phases[1].push(timings.provision_ms);
        phases[2].push(timings.copy_in_ms);
        phases[3].push(timings.start_ms);
        phases[4].push(timings.teardown_ms);
        client_overhead.push(wall - timings.agent_ms);
        eprint!(".");
    }
    for _ in 0..runs.clamp(1, 5) {
        let run = client.create_run(&request("bench-stamps")).await?;
        let run = follow(client, &run.id, &mut stamps).await?;
        anyhow::ensure!(run.status.is_final(), "the stamps run did not end");
        eprint!("s");
    }
    eprintln!();
    let [overhead, provision, copy_in, start, teardown] = phases.map(Percentiles::of);
    Ok(RunsReport {
        backend,
        workdir_bytes,
        overhead,
        provision,
        copy_in,
        start,
        teardown,
        client_overhead: Percentiles::of(client_overhead),
        sse_latency: Percentiles::of(stamps),
    })
}
