//! One-shot exec.

use std::time::Duration;

use cthulu_core::{ExecSpec, SandboxError};

use crate::support::*;

#[tokio::test]
async fn exit_codes_come_back_exactly() {
    let host = TestHost::new();
    let sandbox = host.sandbox().await;
    for code in [0, 1, 3, 255] {
        let output = shell(&*sandbox, &format!("exit {code}")).await;
        assert_eq!(output.exit.exit_code, Some(code));
        assert_eq!(output.exit.signal, None);
        assert!(!output.exit.timed_out && !output.exit.truncated);
    }
}

#[tokio::test]
async fn death_by_signal_reports_the_signal() {
    let host = TestHost::new();
    let sandbox = host.sandbox().await;
    let output = shell(&*sandbox, "kill -TERM $$").await;
    assert_eq!(output.exit.exit_code, None);
    assert_eq!(output.exit.signal, Some(15));
}

#[tokio::test]
async fn argv_is_not_expanded_by_a_shell() {
    let host = TestHost::new();
    let sandbox = host.sandbox().await;
    let output = run(&*sandbox, ExecSpec::argv(["echo", "$HOME", "*", "a;b"])).await;
    assert_eq!(text(&output.stdout), "$HOME * a;b\n");
    let output = shell(&*sandbox, "echo $HOME").await;
    assert_eq!(
        text(&output.stdout).trim(),
        host.workspace(&*sandbox).display().to_string()
    );
}

#[tokio::test]
async fn binary_output_is_byte_exact_and_streams_stay_apart() {
    let host = TestHost::new();
    let sandbox = host.sandbox().await;
    let all: Vec<u8> = (0..=255).collect();
    let mut spec = ExecSpec::argv(["cat"]);
    spec.stdin = Some(all.repeat(1000));
    let output = run(&*sandbox, spec).await;
    assert!(output.stdout == all.repeat(1000));
    let output = shell(
        &*sandbox,
        "echo out1; echo err1 >&2; echo out2; echo err2 >&2",
    )
    .await;
    assert_eq!(text(&output.stdout), "out1\nout2\n");
    assert_eq!(text(&output.stderr), "err1\nerr2\n");
}

#[tokio::test]
async fn output_stops_exactly_at_the_cap_and_endless_output_ends() {
    let host = TestHost::new();
    let sandbox = host.sandbox().await;
    let mut spec = ExecSpec::shell("head -c 5000 /dev/zero; head -c 10 /dev/zero >&2");
    spec.max_output_bytes = 4096;
    let output = run(&*sandbox, spec).await;
    assert_eq!(output.stdout.len(), 4096);
    assert_eq!(output.stderr.len(), 10);
    assert!(output.exit.truncated);

    let mut exact = ExecSpec::shell("head -c 4096 /dev/zero");
    exact.max_output_bytes = 4096;
    let output = run(&*sandbox, exact).await;
    assert_eq!(output.stdout.len(), 4096);
    assert!(!output.exit.truncated, "exactly the cap is not truncated");

    // `yes` never stops by itself: the exec must end through the cap, long before the
    // timeout.
    let mut endless = ExecSpec::argv(["yes"]);
    endless.max_output_bytes = 1000;
    endless.timeout = Duration::from_secs(600);
    let output = run(&*sandbox, endless).await;
    assert_eq!(output.stdout, b"y\n".repeat(500));
    assert!(output.exit.truncated && !output.exit.timed_out);
}

#[tokio::test]
async fn stdin_is_given_then_eof() {
    let host = TestHost::new();
    let sandbox = host.sandbox().await;
    let mut spec = ExecSpec::shell("read line; echo \"got $line\"; cat; echo end");
    spec.stdin = Some(b"first\nrest".to_vec());
    let output = run(&*sandbox, spec).await;
    assert_eq!(text(&output.stdout), "got first\nrestend\n");
    // No stdin given: EOF at once, never a hang.
    let output = run(&*sandbox, ExecSpec::argv(["cat"])).await;
    assert_eq!(output.exit.exit_code, Some(0));
    assert!(output.stdout.is_empty());
    // More stdin than a pipe holds, to a program that writes while it reads.
    let big = vec![b'x'; 1 << 20];
    let mut spec = ExecSpec::argv(["cat"]);
    spec.stdin = Some(big.clone());
    assert!(run(&*sandbox, spec).await.stdout == big);
}

#[tokio::test]
async fn host_env_stays_out_and_layers_win_in_order() {
    // nextest runs every test in its own process, so setting a variable here is safe.
    std::env::set_var("CTHULU_HOST_IT_SECRET", "do-not-leak");
    let host = TestHost::new();
    let mut spec = cthulu_core::SandboxSpec::default();
    spec.env.insert("LAYER".into(), "sandbox".into());
    spec.env.insert("ONLY_SANDBOX".into(), "yes".into());
    let sandbox = cthulu_core::SandboxProvider::provision(
        &host.provider,
        &cthulu_types::SandboxId::generate(),
        &spec,
    )
    .await
    .unwrap();
    let mut exec = ExecSpec::argv(["env"]);
    exec.env.insert("LAYER".into(), "request".into());
    let output = run(&*sandbox, exec).await;
    let env = text(&output.stdout);
    assert!(!env.contains("do-not-leak"), "{env}");
    assert!(env.contains("LAYER=request\n"), "{env}");
    assert!(env.contains("ONLY_SANDBOX=yes\n"), "{env}");
    assert!(env.contains("PATH="), "{env}");
    assert!(env.contains(&format!("HOME={}\n", host.workspace(&*sandbox).display())));
    let names: Vec<&str> = env
        .lines()
        .filter_map(|line| line.split('=').next())
        .collect();
    for name in names {
        assert!(
            [
                "PATH",
                "LANG",
                "TERM",
                "HOME",
                "LAYER",
                "ONLY_SANDBOX",
                "PWD",
                "SHLVL",
                "_"
            ]
            .contains(&name),
            "unexpected variable {name} in {env}"
        );
    }
}

#[tokio::test]
async fn cwd_resolves_inside_and_escapes_are_refused() {
    let host = TestHost::new();
    let sandbox = host.sandbox().await;
    let workspace = host.workspace(&*sandbox);
    std::fs::create_dir_all(workspace.join("sub/dir")).unwrap();
    std::os::unix::fs::symlink("/etc", workspace.join("etc-link")).unwrap();
    std::os::unix::fs::symlink("sub", workspace.join("sub-link")).unwrap();
    let mut spec = ExecSpec::argv(["pwd"]);
    spec.cwd = Some("sub/dir".into());
    assert_eq!(
        text(&run(&*sandbox, spec).await.stdout).trim(),
        workspace.join("sub/dir").display().to_string()
    );
    let mut spec = ExecSpec::argv(["pwd"]);
    spec.cwd = Some("/workspace/sub-link".into());
    assert_eq!(
        text(&run(&*sandbox, spec).await.stdout).trim(),
        workspace.join("sub").display().to_string()
    );
    assert_eq!(
        text(&shell(&*sandbox, "pwd").await.stdout).trim(),
        workspace.display().to_string()
    );
    for escape in [
        "../..",
        "/etc",
        "etc-link",
        "sub/../../..",
        "/workspace/../tmp",
    ] {
        let mut spec = ExecSpec::argv(["pwd"]);
        spec.cwd = Some(escape.into());
        let error = sandbox.exec(spec).await.unwrap_err();
        assert!(
            matches!(error, SandboxError::PathOutsideSandbox { .. }),
            "{escape}: {error:?}"
        );
    }
    let mut spec = ExecSpec::argv(["pwd"]);
    spec.cwd = Some("missing".into());
    assert!(matches!(
        sandbox.exec(spec).await.unwrap_err(),
        SandboxError::FileNotFound { .. }
    ));
}

#[tokio::test]
async fn timeout_kills_the_whole_group_including_a_backgrounded_grandchild() {
    let host = TestHost::new();
    let sandbox = host.sandbox().await;
    let mut spec = ExecSpec::shell("sleep 1000 & echo $! > grandchild.pid; sleep 1000");
    spec.timeout = Duration::from_secs(1);
    let output = run(&*sandbox, spec).await;
    assert!(output.exit.timed_out);
    assert_eq!(output.exit.exit_code, None);
    let pid: i32 = std::fs::read_to_string(host.workspace(&*sandbox).join("grandchild.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Not `kill -0`: the killed grandchild is an orphan, and until whatever reaps orphans
    // here gets to it, it is a zombie that `kill -0` still finds.
    eventually("the grandchild to die", || !alive(pid)).await;
}

#[tokio::test]
async fn a_background_child_holding_the_pipe_does_not_hold_the_exec() {
    let host = TestHost::new();
    let sandbox = host.sandbox().await;
    // The background sleep inherits stdout: the exec must still return (after a short
    // grace), with what was written.
    let output = tokio::time::timeout(WAIT, sandbox.exec(ExecSpec::shell("sleep 30 & echo done")))
        .await
        .expect("exec returns while the background child holds stdout")
        .unwrap();
    assert_eq!(text(&output.stdout), "done\n");
    assert_eq!(output.exit.exit_code, Some(0));
    sandbox.destroy().await.unwrap();
}

#[tokio::test]
async fn programs_that_cannot_run_are_clear_errors() {
    let host = TestHost::new();
    let sandbox = host.sandbox().await;
    let error = sandbox
        .exec(ExecSpec::argv(["no-such-program-anywhere"]))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, SandboxError::ProgramNotFound { program } if program == "no-such-program-anywhere"),
        "{error:?}"
    );
    std::fs::write(host.workspace(&*sandbox).join("plain.txt"), "not a program").unwrap();
    let error = sandbox
        .exec(ExecSpec::argv(["./plain.txt"]))
        .await
        .unwrap_err();
    assert!(
        matches!(error, SandboxError::ProgramNotExecutable { .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn fifty_concurrent_execs_get_their_own_output() {
    let host = TestHost::new();
    let sandbox = host.sandbox().await;
    let runs = (0..50).map(|index| {
        let sandbox = sandbox.clone();
        async move {
            let output = sandbox
                .exec(ExecSpec::shell(format!(
                    "echo out-{index}; echo err-{index} >&2; exit {}",
                    index % 7
                )))
                .await
                .unwrap();
            (index, output)
        }
    });
    for (index, output) in futures_util::future::join_all(runs).await {
        assert_eq!(text(&output.stdout), format!("out-{index}\n"));
        assert_eq!(text(&output.stderr), format!("err-{index}\n"));
        assert_eq!(output.exit.exit_code, Some(index % 7));
    }
}

#[tokio::test]
async fn a_dropped_exec_kills_its_process() {
    let host = TestHost::new();
    let sandbox = host.sandbox().await;
    let pid_file = host.workspace(&*sandbox).join("pid");
    let exec = sandbox.exec(ExecSpec::shell(
        "echo $$ > pid.tmp; mv pid.tmp pid; exec sleep 1000",
    ));
    tokio::select! {
        _ = exec => panic!("the exec ended by itself"),
        _ = eventually("the pid file", || pid_file.exists()) => {}
    }
    // The exec future is dropped here.
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    eventually("the abandoned exec's process to die", || !alive(pid)).await;
}
