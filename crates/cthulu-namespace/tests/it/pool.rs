//! Warm sandboxes: a create that asks for nothing special takes one made ahead; it is
//! then an ordinary sandbox (its own id, hostname, state, restart, destroy), the pool
//! refills, spares are never listed, and a stopped or restarted server leaves none.

use std::path::Path;
use std::time::{Duration, Instant};

use cthulu_core::{SandboxProvider, SandboxSpec};
use cthulu_types::{Resources, SandboxId};

use crate::support::{alive, sh_ok, Fixture};

/// The spare directories under `root` and the pids of their inits.
fn spares(root: &Path) -> Vec<(String, Option<i32>)> {
    let mut found: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_str()?.to_owned();
            name.starts_with(".spare-").then(|| {
                let pid = std::fs::read(entry.path().join("state.json"))
                    .ok()
                    .and_then(|state| serde_json::from_slice::<serde_json::Value>(&state).ok())
                    .and_then(|state| state["init"]["pid"].as_i64())
                    .map(|pid| pid as i32);
                (name, pid)
            })
        })
        .collect();
    found.sort();
    found
}

/// Waits until `count` complete spares (with a live init) are ready.
fn wait_for_spares(root: &Path, count: usize) -> Vec<(String, Option<i32>)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let found = spares(root);
        let ready = found
            .iter()
            .filter(|(_, pid)| pid.is_some_and(alive))
            .count();
        if ready == count {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{count} warm sandboxes expected, found {found:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_take_warm_sandboxes_that_become_ordinary_ones() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let root = fixture.provider.root().to_owned();
    let provider = Fixture::provider_on(root.clone()).with_warm_sandboxes(2);
    // The first create fills the pool (and is made the ordinary way).
    let first = SandboxId::generate();
    provider
        .provision(&first, &SandboxSpec::default())
        .await
        .unwrap();
    let before = wait_for_spares(&root, 2);

    let claimed = SandboxId::generate();
    let mut spec = SandboxSpec::default();
    spec.env.insert("GREETING".into(), "warm".into());
    let handle = provider.provision(&claimed, &spec).await.unwrap();
    // One of the spares it was, now under the sandbox's id.
    let after_claim = spares(&root);
    assert!(
        before.iter().any(|spare| !after_claim.contains(spare)),
        "a spare was taken: {before:?} → {after_claim:?}"
    );
    assert_eq!(
        sh_ok(
            &handle,
            "hostname; id -u; echo $GREETING; ls /proc | grep -c '^[0-9]'"
        )
        .await,
        format!("{claimed}\n0\nwarm\n4\n"),
        "its own hostname, env, and no process but init and this command"
    );
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root.join(claimed.as_str()).join("state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["sandbox_id"], claimed.as_str());
    let mut listed = provider.list().await.unwrap();
    listed.sort();
    let mut expected = vec![first.clone(), claimed.clone()];
    expected.sort();
    assert_eq!(listed, expected, "spares are never listed");

    // The pool refills; a create with a limit never takes a spare.
    let full = wait_for_spares(&root, 2);
    let limited = SandboxSpec {
        resources: Resources {
            pids: Some(64),
            ..Resources::default()
        },
        ..SandboxSpec::default()
    };
    if let Ok(handle) = provider.provision(&SandboxId::generate(), &limited).await {
        assert_eq!(spares(&root), full, "a limited create took a spare");
        handle.destroy().await.unwrap();
    }

    // A restarted provider finds the claimed sandbox as any other.
    drop(handle);
    let restarted = fixture.restarted();
    let handle = restarted
        .attach(&claimed, &SandboxSpec::default())
        .await
        .unwrap();
    assert_eq!(sh_ok(&handle, "echo $GREETING").await, "warm\n");
    handle.destroy().await.unwrap();
    assert!(!root.join(claimed.as_str()).exists());

    // A server that stops destroys its spares.
    let held = spares(&root);
    provider.shutdown().await;
    assert!(spares(&root).is_empty(), "left: {:?}", spares(&root));
    for (_, pid) in held {
        assert!(!pid.is_some_and(alive), "a spare's init still runs");
    }
    restarted
        .attach(&first, &SandboxSpec::default())
        .await
        .unwrap()
        .destroy()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_server_destroys_the_spares_a_crashed_one_left() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let root = fixture.provider.root().to_owned();
    let crashed = Fixture::provider_on(root.clone()).with_warm_sandboxes(2);
    let sandbox_id = SandboxId::generate();
    crashed
        .provision(&sandbox_id, &SandboxSpec::default())
        .await
        .unwrap()
        .destroy()
        .await
        .unwrap();
    let left = wait_for_spares(&root, 2);
    // A crash: the provider goes without shutdown or drop, its spares keep running.
    std::mem::forget(crashed);

    let next = Fixture::provider_on(root.clone()).with_warm_sandboxes(1);
    next.provision(&SandboxId::generate(), &SandboxSpec::default())
        .await
        .unwrap()
        .destroy()
        .await
        .unwrap();
    let now = wait_for_spares(&root, 1);
    for spare in &left {
        assert!(!now.contains(spare), "an old spare is still there: {now:?}");
        assert!(
            !spare.1.is_some_and(alive),
            "an old spare's init still runs"
        );
    }
    next.shutdown().await;
    assert!(spares(&root).is_empty());
}
