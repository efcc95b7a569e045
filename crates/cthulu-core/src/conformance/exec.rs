//! One-shot exec: what runs, how it ends, its output, input, environment, working
//! directory and timeout.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cthulu_types::ErrorCode;
use futures_util::future::join_all;

use super::runner::{HOST_SECRET_VALUE, HOST_SECRET_VAR};
use super::sandbox::{exec_on, Sandbox};
use super::support::{
    all_byte_values, describe, expect_code, fail, require_success, show, text, within, Outcome,
};
use crate::{ExecSpec, ExitInfo, SandboxError, SandboxSpec};

/// Host variables a sandbox may legitimately see with the same value as the host.
const ENV_ALLOWLIST: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "LANG", "LANGUAGE", "TZ", "PWD", "OLDPWD",
    "SHLVL", "_", "HOSTNAME", "TMPDIR",
];

fn with_timeout(mut spec: ExecSpec, timeout: Duration) -> ExecSpec {
    spec.timeout = timeout;
    spec
}

/// `argv` reaches the program as given: no expansion of `$HOME` or `*`, empty and
/// spaced arguments kept.
pub async fn argv_runs_the_program_without_a_shell(sandbox: Sandbox) -> Outcome {
    sandbox.sh("touch glob-one.txt glob-two.txt").await?;
    let echo = sandbox
        .exec(ExecSpec::argv([
            "echo",
            "$HOME",
            "glob-*.txt",
            "a  b",
            "$(id)",
        ]))
        .await?;
    require_success(&echo, "argv echo")?;
    assert_eq!(
        text(&echo.stdout),
        "$HOME glob-*.txt a  b $(id)\n",
        "argv must reach the program unexpanded"
    );
    let printf = sandbox
        .exec(ExecSpec::argv(["printf", "[%s]", "one two", "", "three"]))
        .await?;
    require_success(&printf, "argv printf")?;
    assert_eq!(
        text(&printf.stdout),
        "[one two][][three]",
        "argv arguments must keep their spaces and empty arguments"
    );
    Ok(())
}

/// `shell` runs the string under `/bin/sh -c`: expansion, globs, pipes, arithmetic.
pub async fn shell_runs_under_bin_sh(sandbox: Sandbox) -> Outcome {
    sandbox.sh("touch glob-one.txt glob-two.txt").await?;
    let output = sandbox
        .exec(ExecSpec::shell(
            "word=expanded; echo \"$word\" | tr a-z A-Z; echo glob-*.txt; echo $((40 + 2)); \
             [ \"$HOME\" != '$HOME' ] && echo home-expanded",
        ))
        .await?;
    require_success(&output, "the shell command")?;
    assert_eq!(
        text(&output.stdout),
        "EXPANDED\nglob-one.txt glob-two.txt\n42\nhome-expanded\n",
        "a shell command must get shell expansion, globs and pipes"
    );
    Ok(())
}

/// Exit codes 0, 1, 3 and 255 come back exactly, in both command forms.
pub async fn exit_codes_come_back_exactly(sandbox: Sandbox) -> Outcome {
    for code in [0, 1, 3, 255] {
        for spec in [
            ExecSpec::shell(format!("exit {code}")),
            ExecSpec::argv(["sh", "-c", &format!("exit {code}")]),
        ] {
            let described = format!("{:?}", spec.command);
            let output = sandbox.exec(spec).await?;
            assert_eq!(
                output.exit,
                ExitInfo {
                    exit_code: Some(code),
                    ..ExitInfo::default()
                },
                "{described} must report exit code {code}: {}",
                show(&output)
            );
        }
    }
    Ok(())
}

/// A process killed by a signal reports the signal and no exit code.
pub async fn signal_death_reports_the_signal(sandbox: Sandbox) -> Outcome {
    for (name, number) in [("KILL", 9), ("TERM", 15), ("USR1", 10)] {
        let output = sandbox
            .exec(ExecSpec::shell(format!(
                "echo before; kill -{name} $$; echo after"
            )))
            .await?;
        assert_eq!(
            (
                output.exit.exit_code,
                output.exit.signal,
                output.exit.timed_out
            ),
            (None, Some(number), false),
            "a shell that sends itself SIG{name} must report signal {number}, not an exit code: {}",
            show(&output)
        );
        assert_eq!(text(&output.stdout), "before\n", "output before SIG{name}");
    }
    Ok(())
}

/// stdout and stderr stay apart, each in the order it was written.
pub async fn stdout_and_stderr_stay_separate_and_ordered(sandbox: Sandbox) -> Outcome {
    let output = sandbox
        .exec(ExecSpec::shell(
            "i=1; while [ $i -le 300 ]; do echo \"out $i\"; echo \"err $i\" >&2; i=$((i + 1)); done",
        ))
        .await?;
    require_success(&output, "the interleaved writer")?;
    let expected = |stream: &str| -> String {
        (1..=300)
            .map(|index| format!("{stream} {index}\n"))
            .collect()
    };
    assert_eq!(
        text(&output.stdout),
        expected("out"),
        "stdout, in order, alone"
    );
    assert_eq!(
        text(&output.stderr),
        expected("err"),
        "stderr, in order, alone"
    );
    Ok(())
}

/// All 256 byte values, NUL included, come back byte-exact on stdout and stderr.
pub async fn binary_output_is_byte_exact(sandbox: Sandbox) -> Outcome {
    let bytes = all_byte_values().repeat(4);
    // printf's format turns `\ooo` into the byte; nothing else in it is special.
    let format: String = bytes.iter().map(|byte| format!("\\{byte:03o}")).collect();
    let stdout = sandbox.exec(ExecSpec::argv(["printf", &format])).await?;
    require_success(&stdout, "printf of every byte value")?;
    assert!(
        stdout.stdout == bytes,
        "stdout must hold all byte values exactly; got {} bytes, first difference at {:?}",
        stdout.stdout.len(),
        first_difference(&stdout.stdout, &bytes)
    );
    let stderr = sandbox
        .exec(ExecSpec::shell(format!("printf '{format}' >&2")))
        .await?;
    require_success(&stderr, "printf of every byte value to stderr")?;
    assert!(
        stderr.stderr == bytes && stderr.stdout.is_empty(),
        "stderr must hold all byte values exactly; got {} bytes, first difference at {:?}",
        stderr.stderr.len(),
        first_difference(&stderr.stderr, &bytes)
    );
    Ok(())
}

fn first_difference(actual: &[u8], expected: &[u8]) -> Option<usize> {
    actual
        .iter()
        .zip(expected)
        .position(|(a, b)| a != b)
        .or((actual.len() != expected.len()).then_some(actual.len().min(expected.len())))
}

/// Output past the cap stops at exactly the cap and sets `truncated`; output of exactly
/// the cap is not truncated; the cap is per stream.
pub async fn output_stops_at_the_cap(sandbox: Sandbox) -> Outcome {
    let capped = |script: &str, cap: u64| {
        let mut spec = ExecSpec::shell(script);
        spec.max_output_bytes = cap;
        spec.timeout = Duration::from_secs(120);
        spec
    };
    let exact = sandbox.exec(capped("head -c 1000 /dev/zero", 1000)).await?;
    require_success(&exact, "output of exactly the cap")?;
    assert_eq!(exact.stdout, vec![0u8; 1000], "output of exactly the cap");
    assert!(
        !exact.exit.truncated,
        "output of exactly the cap is not truncated"
    );

    let over = sandbox.exec(capped("head -c 1001 /dev/zero", 1000)).await?;
    assert_eq!(
        over.stdout.len(),
        1000,
        "one byte over the cap: {}",
        show(&over)
    );
    assert!(over.exit.truncated, "one byte over the cap sets truncated");

    let large = sandbox
        .exec(capped("echo small; head -c 300000 /dev/zero >&2", 1000))
        .await?;
    assert_eq!(
        text(&large.stdout),
        "small\n",
        "the cap is per stream: {}",
        show(&large)
    );
    assert_eq!(
        large.stderr,
        vec![0u8; 1000],
        "stderr stops at exactly the cap"
    );
    assert!(large.exit.truncated, "a capped stderr sets truncated");
    Ok(())
}

/// `yes` under a small cap returns: the process is not left blocked on a full pipe, nor
/// left to run until the timeout.
pub async fn endless_output_does_not_block(sandbox: Sandbox) -> Outcome {
    let mut spec = ExecSpec::argv(["yes", "conformance"]);
    spec.max_output_bytes = 4096;
    spec.timeout = Duration::from_secs(120);
    let output = sandbox.exec(spec).await?;
    assert_eq!(output.stdout.len(), 4096, "`yes` stops at exactly the cap");
    let expected: Vec<u8> = b"conformance\n"
        .iter()
        .copied()
        .cycle()
        .take(4096)
        .collect();
    assert!(
        output.stdout == expected,
        "the capped output is the start of what was written"
    );
    assert!(output.exit.truncated, "`yes` under a cap is truncated");
    assert!(
        !output.exit.timed_out,
        "`yes` under a cap must end because of the cap, not run into the 120 s timeout"
    );
    Ok(())
}

/// stdin given in the request reaches the program, then EOF — also when it is larger
/// than any pipe buffer and the program writes while it reads.
pub async fn stdin_is_given_then_eof(sandbox: Sandbox) -> Outcome {
    let mut lines = ExecSpec::shell("read first; echo \"first=$first\"; cat; echo eof-seen");
    lines.stdin = Some(b"alpha\nbeta\ngamma".to_vec());
    let output = sandbox.exec(lines).await?;
    require_success(&output, "reading stdin")?;
    assert_eq!(text(&output.stdout), "first=alpha\nbeta\ngammaeof-seen\n");

    let bytes = all_byte_values().repeat(16);
    let mut binary = ExecSpec::argv(["cat"]);
    binary.stdin = Some(bytes.clone());
    let output = sandbox.exec(binary).await?;
    require_success(&output, "cat of binary stdin")?;
    assert!(
        output.stdout == bytes,
        "binary stdin must reach the program byte-exact"
    );

    let large: Vec<u8> = (0..4 * 1024 * 1024u32)
        .map(|index| (index % 251) as u8)
        .collect();
    let mut spec = ExecSpec::argv(["cat"]);
    spec.stdin = Some(large.clone());
    spec.timeout = Duration::from_secs(120);
    let output = sandbox.exec(spec).await?;
    require_success(&output, "cat of 4 MiB of stdin")?;
    assert!(
        output.stdout == large,
        "4 MiB through cat came back as {} bytes (a backend that writes all stdin before \
         reading stdout deadlocks here)",
        output.stdout.len()
    );
    Ok(())
}

/// A program that reads stdin with none given sees EOF at once.
pub async fn no_stdin_means_eof_at_once(sandbox: Sandbox) -> Outcome {
    let cat = sandbox
        .exec(with_timeout(
            ExecSpec::argv(["cat"]),
            Duration::from_secs(60),
        ))
        .await?;
    assert_eq!(
        (cat.exit.exit_code, cat.exit.timed_out, cat.stdout.len()),
        (Some(0), false, 0),
        "`cat` without stdin must see EOF and exit at once: {}",
        show(&cat)
    );
    let read = sandbox
        .exec(with_timeout(
            ExecSpec::shell("if read line; then echo got-a-line; else echo eof; fi"),
            Duration::from_secs(60),
        ))
        .await?;
    require_success(&read, "read without stdin")?;
    assert_eq!(text(&read.stdout), "eof\n");
    Ok(())
}

fn parse_env(output: &[u8]) -> BTreeMap<String, String> {
    text(output)
        .lines()
        .filter_map(|line| line.split_once('='))
        .filter(|(name, _)| {
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

/// Sandbox env < request env; no host variable outside the allowlist is visible; `HOME`
/// and `PATH` are set and usable.
pub async fn env_request_wins_and_host_env_stays_out(sandbox: Sandbox) -> Outcome {
    let mut spec = SandboxSpec::default();
    spec.env.insert("CTHULU_LAYER".into(), "sandbox".into());
    spec.env.insert("CTHULU_FROM_SANDBOX".into(), "yes".into());
    let layered = sandbox.provision_another(spec).await?;
    let mut exec = ExecSpec::argv(["env"]);
    exec.env.insert("CTHULU_LAYER".into(), "request".into());
    exec.env.insert("CTHULU_FROM_REQUEST".into(), "yes".into());
    let output = exec_on(&layered, exec).await?;
    require_success(&output, "env")?;
    let env = parse_env(&output.stdout);
    let get = |name: &str| env.get(name).map(String::as_str);
    assert_eq!(
        get("CTHULU_LAYER"),
        Some("request"),
        "the request's env wins over the sandbox's"
    );
    assert_eq!(
        get("CTHULU_FROM_SANDBOX"),
        Some("yes"),
        "the sandbox's env reaches execs"
    );
    assert_eq!(
        get("CTHULU_FROM_REQUEST"),
        Some("yes"),
        "the request's env reaches the exec"
    );

    for handle in [sandbox.handle(), layered] {
        let output = exec_on(&handle, ExecSpec::argv(["env"])).await?;
        require_success(&output, "env")?;
        let env = parse_env(&output.stdout);
        assert!(
            !env.contains_key(HOST_SECRET_VAR) && !text(&output.stdout).contains(HOST_SECRET_VALUE),
            "{HOST_SECRET_VAR}, set in the host process, is visible in the sandbox"
        );
        // Names only: the values may be secrets.
        let leaked: Vec<String> = std::env::vars()
            .filter(|(name, value)| {
                !ENV_ALLOWLIST.contains(&name.as_str())
                    && !name.starts_with("LC_")
                    && env.get(name) == Some(value)
            })
            .map(|(name, _)| name)
            .collect();
        assert!(
            leaked.is_empty(),
            "host variables outside the allowlist reached the sandbox: {leaked:?}"
        );
        for name in ["HOME", "PATH"] {
            assert!(
                env.get(name).is_some_and(|value| !value.is_empty()),
                "{name} must be set in the sandbox: {env:?}"
            );
        }
    }
    let usable = sandbox
        .sh("cd \"$HOME\" && command -v sh >/dev/null && echo usable")
        .await?;
    assert_eq!(
        usable, "usable\n",
        "HOME must be a directory and PATH must find sh"
    );
    Ok(())
}

/// The default cwd is the workspace; relative and `/workspace/...` cwds resolve in it.
pub async fn cwd_defaults_to_the_workspace(sandbox: Sandbox) -> Outcome {
    sandbox
        .sh("mkdir -p sub/dir && echo root > root-marker.txt && echo deep > sub/dir/deep-marker.txt")
        .await?;
    let read = |cwd: Option<&str>, file: &str| {
        let mut spec = ExecSpec::argv(["cat", file]);
        spec.cwd = cwd.map(str::to_owned);
        spec
    };
    for (cwd, file, expected) in [
        (None, "root-marker.txt", "root\n"),
        (Some("sub/dir"), "deep-marker.txt", "deep\n"),
        (Some("./sub/../sub/dir"), "deep-marker.txt", "deep\n"),
        (Some("/workspace/sub"), "dir/deep-marker.txt", "deep\n"),
        (Some("/workspace"), "root-marker.txt", "root\n"),
    ] {
        let output = sandbox.exec(read(cwd, file)).await?;
        require_success(&output, format!("cat {file} with cwd {cwd:?}"))?;
        assert_eq!(text(&output.stdout), expected, "cwd {cwd:?}");
    }
    let mut missing = ExecSpec::argv(["true"]);
    missing.cwd = Some("no-such-directory".into());
    match within(
        Duration::from_secs(120),
        "exec",
        sandbox.handle().exec(missing),
    )
    .await?
    {
        Err(error) => assert!(!error.is_internal(), "a missing cwd: {}", describe(&error)),
        Ok(output) => {
            return Err(fail(format!(
                "a cwd that does not exist must be an error, not a run somewhere else: {}",
                show(&output)
            )))
        }
    }
    Ok(())
}

/// A cwd outside the workspace — absolute, through `..`, or through a symlink — is
/// refused with `path_outside_sandbox`.
pub async fn cwd_outside_the_workspace_is_refused(sandbox: Sandbox) -> Outcome {
    sandbox
        .sh("ln -s /etc etc-link && ln -s .. up-link")
        .await?;
    for cwd in [
        "/etc",
        "/",
        "/tmp",
        "..",
        "../..",
        "/workspace/..",
        "sub/../../x",
        "etc-link",
        "up-link",
    ] {
        let mut spec = ExecSpec::argv(["pwd"]);
        spec.cwd = Some(cwd.into());
        let result = within(
            Duration::from_secs(120),
            "exec",
            sandbox.handle().exec(spec),
        )
        .await?;
        expect_code(
            result,
            ErrorCode::PathOutsideSandbox,
            format!("exec with cwd {cwd:?}"),
        )?;
    }
    Ok(())
}

/// A `sleep 100` with a 1 s timeout returns `timed_out` soon after, and every process it
/// started, including a backgrounded grandchild, is gone.
pub async fn timeout_kills_the_whole_process_tree(sandbox: Sandbox) -> Outcome {
    let mut spec =
        ExecSpec::shell("(sleep 1000 & echo $! > grandchild.pid); echo started; sleep 100");
    spec.timeout = Duration::from_secs(1);
    let started = Instant::now();
    let output = sandbox.exec(spec).await?;
    let elapsed = started.elapsed();
    assert!(
        output.exit.timed_out,
        "a 1 s timeout on `sleep 100` sets timed_out: {}",
        show(&output)
    );
    assert_eq!(
        output.exit.exit_code, None,
        "a timed-out exec has no exit code"
    );
    assert!(
        elapsed < Duration::from_secs(60),
        "a 1 s timeout on `sleep 100` returned only after {elapsed:?}"
    );
    assert_eq!(
        text(&output.stdout),
        "started\n",
        "output from before the timeout is kept"
    );
    let pid = sandbox.sh("cat grandchild.pid").await?;
    sandbox
        .wait_process_gone(&pid, Duration::from_secs(15))
        .await
}

/// A program that does not exist is `program_not_found` naming it, not exit code 127;
/// so is a file that cannot be executed.
pub async fn missing_program_is_a_clear_error(sandbox: Sandbox) -> Outcome {
    for program in ["cthulu-conformance-no-such-program", "./no-such-script.sh"] {
        let result = within(
            Duration::from_secs(120),
            "exec",
            sandbox.handle().exec(ExecSpec::argv([program, "argument"])),
        )
        .await?;
        match result {
            Err(SandboxError::ProgramNotFound { program: named })
                if named.contains(program.trim_start_matches("./")) => {}
            Err(error) => {
                return Err(fail(format!(
                    "running {program}: expected ProgramNotFound naming it, got {}",
                    describe(&error)
                )))
            }
            Ok(output) => {
                return Err(fail(format!(
                    "running the missing program {program} must be an error, not {}",
                    show(&output)
                )))
            }
        }
    }
    sandbox
        .sh("printf '#!/bin/sh\\necho ran\\n' > not-executable.sh && chmod 644 not-executable.sh")
        .await?;
    let result = within(
        Duration::from_secs(120),
        "exec",
        sandbox
            .handle()
            .exec(ExecSpec::argv(["./not-executable.sh"])),
    )
    .await?;
    let error = expect_code(
        result,
        ErrorCode::ProgramNotFound,
        "running a mode-644 file",
    )?;
    assert!(
        error.to_string().contains("not-executable.sh"),
        "the error must name the program: {error}"
    );
    Ok(())
}

/// 50 concurrent execs on one sandbox each return their own output.
pub async fn concurrent_execs_keep_their_own_output(sandbox: Sandbox) -> Outcome {
    let runs = (0..50).map(|index| {
        let sandbox = sandbox.clone();
        async move {
            let output = sandbox
                .exec(ExecSpec::shell(format!(
                    "echo start-{index}; sleep 0.{}; echo end-{index}; echo err-{index} >&2; exit {}",
                    index % 5,
                    index % 7
                )))
                .await?;
            Ok::<_, super::support::ScenarioError>((index, output))
        }
    });
    for result in join_all(runs).await {
        let (index, output) = result?;
        assert_eq!(
            (
                output.exit.exit_code,
                text(&output.stdout),
                text(&output.stderr)
            ),
            (
                Some(index % 7),
                format!("start-{index}\nend-{index}\n"),
                format!("err-{index}\n")
            ),
            "concurrent exec {index} got someone else's result"
        );
    }
    Ok(())
}
