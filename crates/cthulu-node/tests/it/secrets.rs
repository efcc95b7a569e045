//! `api_key` reaches the VM's terminal and exec sessions as `ANTHROPIC_API_KEY`, and no
//! file in the sandbox and no log line holds it (nor the node's token or a terminal
//! secret).

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use crate::support::{Options, TestNode, TOKEN};
use crate::ttyd::{self, TtydClient};

/// Every log line of this test process, at every level.
#[derive(Clone, Default)]
struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl Write for CapturedLogs {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLogs {
    fn install() -> CapturedLogs {
        let logs = CapturedLogs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
        logs
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_is_env_in_sessions_and_nowhere_else() {
    let logs = CapturedLogs::install();
    let Some(node) = TestNode::start(Options::default()).await else {
        return;
    };
    let api_key = format!("sk-ant-test-{}", std::process::id());
    let (status, vm) = node
        .api
        .post("/vms", json!({"tier": "nano", "api_key": api_key}))
        .await;
    assert_eq!(status, 200, "{vm}");
    assert!(!vm.to_string().contains(&api_key), "{vm}");
    let sandbox_id = node.sandbox_of(0).await;
    let (_, sandbox) = node
        .api
        .get(&format!("/api/v1/sandboxes/{sandbox_id}"))
        .await;
    assert!(!sandbox.to_string().contains(&api_key), "{sandbox}");

    // An exec sees it.
    let exec_path = format!("/api/v1/sandboxes/{sandbox_id}/exec");
    let exec = |shell: &str| {
        node.api
            .post(&exec_path, json!({"shell": shell, "timeout_ms": 120_000}))
    };
    let (status, output) = exec("printenv ANTHROPIC_API_KEY").await;
    assert_eq!(status, 200, "{output}");
    assert_eq!(output["stdout"].as_str().unwrap().trim(), api_key);

    // So does the terminal's shell.
    let web_terminal = vm["web_terminal"].as_str().unwrap();
    let mut client = TtydClient::connect(web_terminal).await;
    client.type_line("printenv ANTHROPIC_API_KEY").await;
    assert!(
        client.wait_for(&api_key, Duration::from_secs(20)).await,
        "{:?}",
        client.output
    );
    // The shell's rc files and everything else the sandbox can write do not hold it.
    // (The read-only system directories are the host's own, which nothing here writes;
    // /proc is where env lives.)
    let (status, output) = exec(
        "grep -rlsF -e \"$ANTHROPIC_API_KEY\" / --exclude-dir=proc --exclude-dir=sys \
         --exclude-dir=dev --exclude-dir=usr --exclude-dir=lib --exclude-dir=lib64 \
         --exclude-dir=bin --exclude-dir=sbin; echo \"grep exit $?\"",
    )
    .await;
    assert_eq!(status, 200, "{output}");
    // `-l` prints each file holding the key; unreadable files only make the exit 2.
    let stdout = output["stdout"].as_str().unwrap();
    let holding: Vec<&str> = stdout
        .lines()
        .filter(|line| !line.starts_with("grep exit"))
        .collect();
    assert!(holding.is_empty(), "files holding the key: {holding:?}");
    assert!(!stdout.contains("grep exit 0"), "{stdout}");
    let token = ttyd::fetch_token(web_terminal).await;
    client.close().await;

    let secret = web_terminal.rsplit('/').next().unwrap();
    let logged = logs.text();
    assert!(
        logged.contains("vm created"),
        "logs were captured: {logged}"
    );
    assert!(!logged.contains(&api_key), "the api key was logged");
    assert!(!logged.contains(TOKEN), "the node token was logged");
    assert!(!logged.contains(secret), "a terminal secret was logged");
    assert!(!logged.contains(&token), "a terminal token was logged");
}
