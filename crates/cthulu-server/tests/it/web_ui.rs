//! The web UI: its files are served without a key while the API it calls still needs
//! one; its pure modules pass their unit tests (`node --test`); and it works in a real
//! headless Chromium (`web/tests/ui.test.mjs` with playwright-core): create a sandbox,
//! `echo hello` in its terminal, upload a file, look at a finished agent run, destroy
//! the sandbox. Without node, Chromium or `scripts/web-assets` having run, the browser
//! tests print `SKIP web-ui: <reason>`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use cthulu_core::conformance::report_skip;
use cthulu_test_support::{fake_agent, target_dir, transcripts_dir, TestServer};
use cthulu_types::BackendKind;
use serde_json::{json, Value};

use crate::support::Api;

const CHROMIUM: &str = "/usr/bin/chromium";

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn web() -> PathBuf {
    repository().join("web")
}

/// `Err(reason)` when node is not installed.
fn node() -> Result<(), String> {
    match Command::new("node").arg("--version").output() {
        Ok(output) if output.status.success() => Ok(()),
        Ok(output) => Err(format!(
            "`node --version` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )),
        Err(error) => Err(format!("node is not installed: {error}")),
    }
}

/// `Err(reason)` when the browser test cannot run here.
fn browser_test_possible() -> Result<(), String> {
    node()?;
    if !Path::new(CHROMIUM).exists() {
        return Err(format!(
            "{CHROMIUM} is missing (Debian's chromium package; .ci/run installs it)"
        ));
    }
    if !web().join("node_modules/playwright-core").is_dir() {
        return Err("web/node_modules/playwright-core is missing: run scripts/web-assets".into());
    }
    if !cthulu_web::terminal_assets_built() {
        return Err(
            "terminal assets were not built into this server: run scripts/web-assets, then build again"
                .into(),
        );
    }
    Ok(())
}

#[tokio::test]
async fn the_ui_is_served_without_a_key_and_nothing_else_is() {
    let server = TestServer::start().await;
    cthulu_server::create_api_key(server.home(), Some("ui")).unwrap();
    let http = reqwest::Client::new();

    let page = http.get(server.api("/")).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let headers = page.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let policy = headers["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("default-src 'self'"), "{policy}");
    assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
    let html = page.text().await.unwrap();
    assert!(
        html.contains(r#"<script type="module" src="/ui/js/app.js">"#),
        "{html}"
    );
    // Nothing the page loads comes from another site.
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "{html}"
    );

    let script = http.get(server.api("/ui/js/app.js")).send().await.unwrap();
    assert_eq!(script.status().as_u16(), 200);
    assert_eq!(
        script.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    let style = http.get(server.api("/ui/app.css")).send().await.unwrap();
    assert_eq!(style.headers()["content-type"], "text/css; charset=utf-8");

    // The terminal's files are there, or a 404 that says how to get them.
    let xterm = http
        .get(server.api("/ui/vendor/xterm.js"))
        .send()
        .await
        .unwrap();
    if cthulu_web::terminal_assets_built() {
        assert_eq!(xterm.status().as_u16(), 200);
    } else {
        assert_eq!(xterm.status().as_u16(), 404);
        let body: Value = xterm.json().await.unwrap();
        assert!(
            body["error"]["hint"]
                .as_str()
                .unwrap()
                .contains("scripts/web-assets"),
            "{body}"
        );
    }

    // Only embedded files: no way up into the repository or the home, nothing of npm's.
    for path in [
        "/ui/",
        "/ui/../Cargo.toml",
        "/ui/%2e%2e/Cargo.toml",
        "/ui/..%2fCargo.toml",
        "/ui/js/../../Cargo.toml",
        "/ui/package.json",
        "/ui/node_modules/@xterm/xterm/package.json",
        "/ui/tests/ui.test.mjs",
        "/ui/state.db",
        "/ui/index.html%00.js",
    ] {
        let response = http.get(server.api(path)).send().await.unwrap();
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        assert!(
            status == 404 || status == 400,
            "{path} answered {status}: {body}"
        );
        assert!(
            !body.contains("[workspace]"),
            "{path} leaked a file: {body}"
        );
    }

    // The API the page calls still needs the key.
    let api = http
        .get(server.api("/api/v1/sandboxes"))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status().as_u16(), 401);
}

#[tokio::test]
async fn the_ui_modules_pass_their_unit_tests() {
    if let Err(reason) = node() {
        report_skip(&format!("SKIP web-ui unit tests: {reason}"));
        return;
    }
    let output = Command::new("node")
        .arg("--test")
        .arg(web().join("tests/unit.test.mjs"))
        .output()
        .expect("node runs");
    assert!(
        output.status.success(),
        "node --test web/tests/unit.test.mjs failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Stand-in agents, as the runs tests use them (host backend): one "fixes" src/math.rs,
/// one prints part of a transcript and hangs until cancelled.
fn fake_agent_definitions() -> Value {
    let transcript = |name: &str| transcripts_dir().join(name).display().to_string();
    json!([{
        "name": "fake-fixer",
        "program": fake_agent().display().to_string(),
        "args": [
            "--transcript", transcript("success.jsonl"),
            "--write", "src/math.rs=pub fn add(a: i32, b: i32) -> i32 {{ a + b }}",
            "--", "{prompt}"
        ],
        "output_format": "claude-stream-json",
    }, {
        "name": "fake-hang",
        "program": fake_agent().display().to_string(),
        "args": ["--transcript", transcript("truncated.jsonl"), "--hang", "--", "{prompt}"],
        "output_format": "claude-stream-json",
    }])
}

/// A gzipped tar holding src/math.rs, base64-encoded as the API takes it.
fn math_archive() -> String {
    let contents = b"pub fn add(a: i32, b: i32) -> i32 {\n    a - b\n}\n";
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o644);
    header.set_size(contents.len() as u64);
    builder
        .append_data(&mut header, "src/math.rs", &contents[..])
        .unwrap();
    let gz = builder.into_inner().unwrap().finish().unwrap();
    base64::engine::general_purpose::STANDARD.encode(gz)
}

/// Starts a run of the stand-in agent `agent` and waits until its status is `wanted`
/// (`succeeded`, or `running` for one that hangs); its id.
async fn run_until(api: &Api, agent: &str, wanted: &str) -> String {
    let (status, run) = api
        .post(
            "/api/v1/runs",
            json!({"prompt": "fix add", "agent": agent, "backend": "host", "input_archive": math_archive()}),
        )
        .await;
    assert_eq!(status, 201, "{run}");
    let id = run["id"].as_str().unwrap().to_owned();
    for _ in 0..600 {
        let (_, run) = api.get(&format!("/api/v1/runs/{id}")).await;
        match run["status"].as_str() {
            Some(status) if status == wanted => return id,
            Some("queued" | "provisioning" | "running") => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            _ => panic!("the stand-in run never became {wanted}: {run}"),
        }
    }
    panic!("the stand-in run {id} did not become {wanted} within a minute");
}

/// `target/ui-artifacts`: the browser tests' screenshots, kept after the run.
fn artifacts() -> PathBuf {
    target_dir()
        .parent()
        .expect("the profile directory is in the target directory")
        .join("ui-artifacts")
}

/// Runs `node web/tests/<script> <server url> <artifact dir> <extra>` and asserts that it
/// passed, printing its steps and the failure otherwise.
async fn run_browser_test(script: &str, url: &str, artifacts: &Path, extra: &[&str]) {
    let mut command = Command::new("node");
    command
        .arg(web().join("tests").join(script))
        .arg(url)
        .arg(artifacts)
        .args(extra);
    let output = tokio::task::spawn_blocking(move || command.output().expect("node runs"))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The steps it took, for the test's log.
    println!("{stdout}");
    assert!(
        output.status.success() && stdout.contains("ok web-ui"),
        "{script} failed (screenshots in {}):\n{stdout}\n{stderr}",
        artifacts.display()
    );
}

/// Destroys every sandbox of the server; the ids of those the UI made (labelled
/// `made-by=ui-test`; a cancelled run's sandbox may still be going away on its own).
async fn destroy_all(api: &Api) -> Vec<String> {
    let (_, list) = api.get("/api/v1/sandboxes").await;
    let mut made_by_the_ui = Vec::new();
    for sandbox in list["sandboxes"].as_array().unwrap() {
        let id = sandbox["id"].as_str().unwrap();
        api.delete(&format!("/api/v1/sandboxes/{id}")).await;
        if sandbox["labels"]["made-by"] == "ui-test" {
            made_by_the_ui.push(id.to_owned());
        }
    }
    made_by_the_ui
}

#[tokio::test(flavor = "multi_thread")]
async fn a_person_uses_the_ui_in_a_headless_browser() {
    person_session(None, artifacts()).await;
}

/// The same session on the host backend, the default where namespaces cannot run: its
/// sandboxes share the machine's network and see host paths.
#[tokio::test(flavor = "multi_thread")]
async fn a_person_uses_the_ui_on_the_host_backend() {
    person_session(Some(BackendKind::Host), artifacts().join("host")).await;
}

/// Runs web/tests/ui.test.mjs on a server whose default backend is `backend` (the
/// server's own choice when `None`), with a finished and a live agent run to look at.
async fn person_session(backend: Option<BackendKind>, artifacts: PathBuf) {
    if let Err(reason) = browser_test_possible() {
        report_skip(&format!("SKIP web-ui: {reason}"));
        return;
    }
    let server = TestServer::start_configured(&fake_agent_definitions(), |config| {
        config.default_backend = backend;
    })
    .await;
    let api = Api::new(&server);
    let finished_run = run_until(&api, "fake-fixer", "succeeded").await;
    let live_run = run_until(&api, "fake-hang", "running").await;
    let outcome = tokio::spawn({
        let url = server.url().to_owned();
        let live_run = live_run.clone();
        let artifacts = artifacts.clone();
        async move {
            run_browser_test("ui.test.mjs", &url, &artifacts, &[&finished_run, &live_run]).await
        }
    })
    .await;
    // Whatever happened in the browser, no run or sandbox outlives the test.
    api.delete(&format!("/api/v1/runs/{live_run}")).await;
    let leftover = destroy_all(&api).await;
    if let Err(failure) = outcome {
        std::panic::resume_unwind(failure.into_panic());
    }
    assert!(
        leftover.is_empty(),
        "the UI left sandboxes behind: {leftover:?}"
    );
    for screenshot in ["sandbox.png", "sandboxes.png", "run.png"] {
        let path = artifacts.join(screenshot);
        let size = std::fs::metadata(&path)
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
            .len();
        assert!(size > 1000, "{} is only {size} bytes", path.display());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ui_asks_for_an_api_key_refuses_a_wrong_one_and_keeps_the_right_one() {
    if let Err(reason) = browser_test_possible() {
        report_skip(&format!("SKIP web-ui: {reason}"));
        return;
    }
    let server = TestServer::start().await;
    let key = cthulu_server::create_api_key(server.home(), Some("browser")).unwrap();
    let api = crate::support::Api::new(&server).with_token(&key);
    let (status, created) = api
        .post("/api/v1/sandboxes", serde_json::json!({"backend": "host"}))
        .await;
    assert_eq!(status, 201, "{created}");
    let sandbox_id = created["id"].as_str().unwrap().to_owned();
    run_browser_test(
        "auth.test.mjs",
        server.url(),
        &artifacts(),
        &[&key, &sandbox_id],
    )
    .await;
    api.delete(&format!("/api/v1/sandboxes/{sandbox_id}")).await;
}
