//! [`run_scenario`]: provisions a sandbox, runs one scenario against it, destroys it
//! whatever happened, and reports pass, skip or failure.

use std::future::Future;
use std::sync::{Arc, Once};
use std::time::Duration;

use cthulu_types::SandboxId;

use super::sandbox::{Sandbox, CALL_LIMIT};
use super::support::{describe, Outcome, ScenarioError};
use super::target::ConformanceTarget;
use crate::SandboxSpec;

/// A variable set in the test process that no sandbox may see (scenario
/// `exec::env_request_wins_and_host_env_stays_out`).
pub const HOST_SECRET_VAR: &str = "CTHULU_CONFORMANCE_SECRET";
pub const HOST_SECRET_VALUE: &str = "host-secret-that-must-not-reach-a-sandbox";

/// Ends a stuck scenario in time to clean up before nextest kills the test (after 5
/// minutes, `.config/nextest.toml`).
const SCENARIO_LIMIT: Duration = Duration::from_secs(240);
/// How long traces of a destroyed sandbox may take to disappear.
const LEFTOVER_LIMIT: Duration = Duration::from_secs(10);

/// What a scenario needs of the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Any backend.
    Sandbox,
    /// Only backends that isolate ([`ConformanceTarget::isolating`]).
    Isolation,
}

/// Runs one scenario as one test. Prints `SKIP <backend>: <reason>` and returns when the
/// backend cannot run here or the scenario does not apply; panics on failure.
pub async fn run_scenario<F, Fut>(
    target: Arc<dyn ConformanceTarget>,
    scenario: &'static str,
    needs: Needs,
    body: F,
) where
    F: FnOnce(Sandbox) -> Fut,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    set_host_secret();
    let backend = target.name();
    if needs == Needs::Isolation && !target.isolating() {
        report_skip(&format!("SKIP {backend}: not an isolating backend"));
        return;
    }
    let provider = match target.provider() {
        Ok(provider) => provider,
        Err(reason) => {
            report_skip(&format!("SKIP {backend}: {reason}"));
            return;
        }
    };
    let info = provider.info();
    if !info.available {
        let reason = info
            .unavailable_reason
            .unwrap_or_else(|| "the provider says it is unavailable".into());
        report_skip(&format!("SKIP {backend}: {reason}"));
        return;
    }

    let sandbox_id = SandboxId::generate();
    let spec = SandboxSpec::default();
    let handle =
        match tokio::time::timeout(CALL_LIMIT, provider.provision(&sandbox_id, &spec)).await {
            Ok(Ok(handle)) => handle,
            Ok(Err(error)) => panic!(
                "{backend} {scenario}: provisioning sandbox {sandbox_id} failed: {}",
                describe(&error)
            ),
            Err(_) => panic!("{backend} {scenario}: provisioning hung for {CALL_LIMIT:?}"),
        };
    let sandbox = Sandbox::new(scenario, target.clone(), sandbox_id, spec, provider, handle);

    let mut task = tokio::spawn(body(sandbox.clone()));
    let verdict = match tokio::time::timeout(SCENARIO_LIMIT, &mut task).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(ScenarioError::Skipped(reason)))) => Err(Verdict::Skipped(reason)),
        Ok(Ok(Err(ScenarioError::Failed(message)))) => Err(Verdict::Failed(message)),
        Ok(Err(join_error)) => Err(Verdict::Failed(match join_error.try_into_panic() {
            Ok(payload) => panic_message(payload.as_ref()),
            Err(join_error) => join_error.to_string(),
        })),
        Err(_) => {
            task.abort();
            Err(Verdict::Failed(format!(
                "did not finish within {SCENARIO_LIMIT:?}"
            )))
        }
    };

    let ids = sandbox.all_ids();
    let mut problems = sandbox.cleanup().await;
    drop(sandbox);
    problems.extend(check_leftovers(target, ids).await);

    match (verdict, problems.is_empty()) {
        (Ok(()), true) => {}
        (Err(Verdict::Skipped(reason)), true) => {
            report_skip(&format!("SKIP {backend}: {scenario} {reason}"));
        }
        (Err(Verdict::Failed(message)), _) => {
            let cleanup = if problems.is_empty() {
                String::new()
            } else {
                format!("\nand cleaning up failed too:\n  {}", problems.join("\n  "))
            };
            panic!("{backend} {scenario} failed: {message}{cleanup}");
        }
        (_, false) => panic!(
            "{backend} {scenario}: the scenario itself passed or skipped, but cleaning up failed:\n  {}",
            problems.join("\n  ")
        ),
    }
}

/// Prints a `SKIP` line to stderr and, when `$CTHULU_SKIP_LOG` names a file, appends it
/// there too: nextest hides a passing test's output, and `scripts/test` shows that file.
pub fn report_skip(line: &str) {
    eprintln!("{line}");
    if let Some(path) = std::env::var_os(SKIP_LOG_VAR) {
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| {
                std::io::Write::write_all(&mut file, format!("{line}\n").as_bytes())
            });
        if let Err(error) = appended {
            eprintln!(
                "cannot append to {}: {error}",
                std::path::Path::new(&path).display()
            );
        }
    }
}

/// The file `SKIP` lines are collected in, if set.
pub const SKIP_LOG_VAR: &str = "CTHULU_SKIP_LOG";

enum Verdict {
    Skipped(String),
    Failed(String),
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "panicked".to_owned()
    }
}

/// Asks the target what is left of the destroyed sandboxes, allowing a few seconds for
/// asynchronous teardown.
async fn check_leftovers(target: Arc<dyn ConformanceTarget>, ids: Vec<SandboxId>) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + LEFTOVER_LIMIT;
    loop {
        let probe = target.clone();
        let probe_ids = ids.clone();
        let found = tokio::task::spawn_blocking(move || {
            let mut found: Option<Vec<String>> = None;
            for sandbox_id in &probe_ids {
                if let Some(traces) = probe.leftovers(sandbox_id) {
                    found.get_or_insert_with(Vec::new).extend(
                        traces
                            .into_iter()
                            .map(|trace| format!("sandbox {sandbox_id} left {trace}")),
                    );
                }
            }
            found
        })
        .await
        .unwrap_or_else(|error| Some(vec![format!("the leftovers check panicked: {error}")]));
        match found {
            None => return Vec::new(),
            Some(traces) if traces.is_empty() => return Vec::new(),
            Some(traces) if tokio::time::Instant::now() >= deadline => {
                return vec![format!(
                    "destroy left traces {LEFTOVER_LIMIT:?} later: {}",
                    traces.join("; ")
                )]
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Puts [`HOST_SECRET_VAR`] into this process's environment, once, before any provider
/// exists, so a backend that passes the host environment through is caught.
fn set_host_secret() {
    static SET: Once = Once::new();
    // With nextest every test is its own process, so nothing else reads the environment
    // yet; under `cargo test` the variable is set once, before this test makes a provider.
    SET.call_once(|| std::env::set_var(HOST_SECRET_VAR, HOST_SECRET_VALUE));
}
