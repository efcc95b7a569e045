//! The real Claude Code CLI (`@anthropic-ai/claude-code`) in a sandbox: it starts
//! (`claude --version`) wherever npm can install it, and answers a prompt as an agent run
//! when `ANTHROPIC_API_KEY` is set. Otherwise each test prints `SKIP claude-code: …`.
//!
//! The package is installed once under `$CTHULU_CLAUDE_PREFIX` (default
//! `/opt/cthulu/npm`, which `.ci/run` pre-installs): under `/opt` so that namespace
//! sandboxes, which show the host's `/opt` read-only, see it too.

use std::path::PathBuf;
use std::process::Command;

use cthulu_core::conformance::report_skip;
use cthulu_test_support::TestServer;
use serde_json::json;

use crate::support::Api;

fn prefix() -> PathBuf {
    std::env::var_os("CTHULU_CLAUDE_PREFIX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/cthulu/npm"))
}

/// The `claude` executable, installed if needed; `Err` is the reason to skip.
fn claude() -> Result<PathBuf, String> {
    let prefix = prefix();
    let claude = prefix.join("bin/claude");
    if claude.exists() {
        return Ok(claude);
    }
    let output = Command::new("npm")
        .args(["install", "-g", "--prefix"])
        .arg(&prefix)
        .arg("@anthropic-ai/claude-code")
        .output()
        .map_err(|error| format!("npm is not available: {error}"))?;
    if !output.status.success() || !claude.exists() {
        return Err(format!(
            "npm install @anthropic-ai/claude-code into {} failed: {}",
            prefix.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(claude)
}

/// `namespace` when it runs here and sees the install, `host` otherwise.
async fn backend(api: &Api, claude: &std::path::Path) -> &'static str {
    let (_, info) = api.get("/api/v1/info").await;
    let namespace_available = info["backends"]
        .as_array()
        .unwrap()
        .iter()
        .any(|backend| backend["kind"] == "namespace" && backend["available"] == true);
    if namespace_available && (claude.starts_with("/opt") || claude.starts_with("/usr")) {
        "namespace"
    } else {
        "host"
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn claude_code_starts_inside_a_sandbox() {
    let claude = match claude() {
        Ok(claude) => claude,
        Err(reason) => return report_skip(&format!("SKIP claude-code: {reason}")),
    };
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let backend = backend(&api, &claude).await;
    let sandbox_id = api.create(json!({"backend": backend})).await;
    let (status, result) = api
        .post(
            &format!("/api/v1/sandboxes/{sandbox_id}/exec"),
            json!({"argv": [claude.display().to_string(), "--version"], "timeout_ms": 60000}),
        )
        .await;
    // Destroyed before asserting, so a failure leaves no sandbox running.
    let (deleted, _) = api.delete(&format!("/api/v1/sandboxes/{sandbox_id}")).await;
    assert_eq!(deleted, 204);
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["exit_code"], 0, "{backend}: {result}");
    assert!(
        result["stdout"].as_str().unwrap().contains("Claude Code"),
        "{backend}: {result}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn claude_code_answers_a_prompt_as_an_agent_run() {
    let Ok(key) = std::env::var("ANTHROPIC_API_KEY") else {
        return report_skip("SKIP claude-code live: ANTHROPIC_API_KEY is not set");
    };
    let claude = match claude() {
        Ok(claude) => claude,
        Err(reason) => return report_skip(&format!("SKIP claude-code live: {reason}")),
    };
    let mut definition = serde_json::to_value(cthulu_runs::AgentDefinition::claude_code()).unwrap();
    definition["program"] = json!(claude.display().to_string());
    let server = TestServer::start_with_agents(&json!([definition])).await;
    let api = Api::new(&server);
    // The host backend shares the host's network, which the live service needs.
    let (status, run) = api
        .post(
            "/api/v1/runs",
            json!({"prompt": "Reply with exactly the word: pong", "backend": "host",
                   "env": {"ANTHROPIC_API_KEY": key}, "max_turns": 1, "timeout_secs": 300}),
        )
        .await;
    assert_eq!(status, 201, "{run}");
    let run_id = run["id"].as_str().unwrap().to_owned();
    let run = loop {
        let (_, run) = api.get(&format!("/api/v1/runs/{run_id}")).await;
        if !matches!(
            run["status"].as_str(),
            Some("queued" | "provisioning" | "running")
        ) {
            break run;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    assert_eq!(run["status"], "succeeded", "{run}");
    assert!(
        run["result"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("pong"),
        "{run}"
    );
    assert!(run["cost_usd"].as_f64().is_some(), "{run}");
    assert!(!run.to_string().contains(&key));
}
