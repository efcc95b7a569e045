//! A quick benchmark of the namespace backend (not a test): create → first exec result,
//! and exec round trips into a running sandbox, medians over 50 runs.
//!
//! ```text
//! cargo build --release -p cthulu-namespace --bins --examples
//! target/release/examples/bench [runs]
//! ```
//!
//! It uses the `cthulu-ns-init` next to the `examples` directory it runs from.

use std::time::{Duration, Instant};

use cthulu_core::{ExecSpec, SandboxProvider, SandboxSpec};
use cthulu_namespace::{InitCommand, NamespaceConfig, NamespaceProvider};
use cthulu_types::SandboxId;

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |fraction: f64| samples[((samples.len() - 1) as f64 * fraction).round() as usize];
    let ms = |duration: Duration| duration.as_secs_f64() * 1000.0;
    println!(
        "{name}: n={} min {:.2} ms, p50 {:.2} ms, p90 {:.2} ms, max {:.2} ms",
        samples.len(),
        ms(samples[0]),
        ms(at(0.5)),
        ms(at(0.9)),
        ms(samples[samples.len() - 1])
    );
}

#[tokio::main]
async fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|runs| runs.parse().ok())
        .unwrap_or(50);
    let exe = std::env::current_exe().expect("own path");
    let target = exe
        .parent()
        .and_then(|examples| examples.parent())
        .expect("target directory");
    let init = target.join("cthulu-ns-init");
    let shim = target.join("cthulu-ns-shim");
    let state = tempfile::Builder::new()
        .prefix("cthulu-namespace-bench-")
        .tempdir()
        .expect("state directory");
    let provider = NamespaceProvider::new(NamespaceConfig {
        root: state.path().join("sandboxes"),
        init: InitCommand {
            program: init,
            args: Vec::new(),
        },
        shim: cthulu_host::ShimCommand {
            program: shim,
            args: Vec::new(),
        },
    })
    .expect("provider");
    if let Some(reason) = provider.info().unavailable_reason {
        println!("SKIP namespace: {reason}");
        return;
    }

    let mut first_exec = Vec::new();
    let mut provision = Vec::new();
    let mut destroy = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let handle = provider
            .provision(&SandboxId::generate(), &SandboxSpec::default())
            .await
            .expect("provision");
        provision.push(started.elapsed());
        let output = handle.exec(ExecSpec::argv(["true"])).await.expect("exec");
        assert_eq!(output.exit.exit_code, Some(0));
        first_exec.push(started.elapsed());
        let destroying = Instant::now();
        handle.destroy().await.expect("destroy");
        destroy.push(destroying.elapsed());
    }
    summary("create (provision)", provision);
    summary("create -> first exec result", first_exec);
    summary("destroy", destroy);

    let handle = provider
        .provision(&SandboxId::generate(), &SandboxSpec::default())
        .await
        .expect("provision");
    let mut round_trips = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        handle.exec(ExecSpec::argv(["true"])).await.expect("exec");
        round_trips.push(started.elapsed());
    }
    summary("exec round trip (true)", round_trips);
    let state_file = std::fs::read(
        provider
            .root()
            .join(handle.id().as_str())
            .join("state.json"),
    )
    .expect("state.json");
    let state: serde_json::Value = serde_json::from_slice(&state_file).expect("state.json");
    let pid = state["init"]["pid"].as_i64().unwrap_or_default();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    for line in status.lines().filter(|line| line.starts_with("VmRSS")) {
        println!("idle init {line}");
    }
    handle.destroy().await.expect("destroy");
}
