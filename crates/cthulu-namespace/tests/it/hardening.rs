//! Attacks on the confinement of commands (seccomp filter, Landlock ruleset): each must
//! fail, and ordinary work must still succeed. The system call probes run python3's ctypes
//! (CI installs Debian's python3, which the sandbox sees through /usr). x86_64 only, like
//! the filter.

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;

use cthulu_core::{ExecOutput, ExecSpec, SandboxHandle};

use crate::support::{sh, sh_ok, Fixture};

/// Defines `probe(name, number, *args)`: calls the system call and prints
/// `<name> <result> <errno name>` (a `clone` that went through exits in the child).
const PROBE: &str = r#"
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def probe(name, number, *args):
    args = [ctypes.c_char_p(a) if isinstance(a, bytes) else ctypes.c_long(a) for a in args]
    ctypes.set_errno(0)
    result = libc.syscall(number, *args)
    if result == 0 and name.startswith("clone"):
        os._exit(0)
    code = ctypes.get_errno() if result == -1 else 0
    print(name, result, errno.errorcode.get(code, code), flush=True)
"#;

async fn python(handle: &Arc<dyn SandboxHandle>, script: &str) -> ExecOutput {
    handle
        .exec(ExecSpec::argv(["python3", "-c", script]))
        .await
        .unwrap_or_else(|error| panic!("exec of python3 failed: {error}"))
}

/// Runs `probe` calls in the sandbox; the errno name of each probe, by name.
async fn probes(handle: &Arc<dyn SandboxHandle>, calls: &str) -> HashMap<String, String> {
    let output = python(handle, &format!("{PROBE}\n{calls}")).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.exit.exit_code,
        Some(0),
        "the probes failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let name = words.next()?;
            Some((name.to_owned(), words.nth(1)?.to_owned()))
        })
        .collect()
}

fn assert_refused(results: &HashMap<String, String>, expected: &[(&str, &str)]) {
    for (name, errno) in expected {
        assert_eq!(
            results.get(*name).map(String::as_str),
            Some(*errno),
            "{name} must fail with {errno}: {results:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_run_under_a_seccomp_filter_with_no_new_privs() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let (_, handle) = fixture.sandbox().await;
    let status = sh_ok(
        &handle,
        "grep -E '^(NoNewPrivs|Seccomp|Seccomp_filters):' /proc/self/status",
    )
    .await;
    let fields: Vec<Vec<&str>> = status
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert_eq!(
        fields,
        [
            ["NoNewPrivs:", "1"],
            ["Seccomp:", "2"],
            ["Seccomp_filters:", "1"]
        ],
        "{status}"
    );
    handle.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn mounting_and_new_namespaces_are_refused() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let (_, handle) = fixture.sandbox().await;
    // Root inside owns its mount namespace: without the filter, all of these succeed.
    for attack in [
        "mount -t tmpfs none /mnt",
        "mount --bind /workspace /mnt",
        "umount -l /proc",
        "unshare -U true",
        "unshare -m true",
        "unshare -n true",
        "unshare -p -f true",
        "unshare -r true",
    ] {
        let output = sh(&handle, attack).await;
        assert_ne!(
            output.exit.exit_code,
            Some(0),
            "{attack:?} succeeded: {}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
    let mounts = sh_ok(&handle, "cut -d' ' -f5 /proc/self/mountinfo").await;
    assert!(
        !mounts.lines().any(|mount| mount == "/mnt"),
        "something is mounted on /mnt: {mounts}"
    );
    assert!(mounts.lines().any(|mount| mount == "/proc"), "{mounts}");
    let results = probes(
        &handle,
        &format!(
            "probe('mount', {mount}, b'none', b'/mnt', b'tmpfs', 0, 0)
probe('umount2', {umount2}, b'/tmp', 2)
probe('pivot_root', {pivot_root}, b'.', b'.')
probe('fsopen', {fsopen}, b'tmpfs', 0)
probe('open_tree', {open_tree}, -100, b'/tmp', 1)
probe('unshare_user', {unshare}, {newuser})
probe('unshare_mount', {unshare}, {newns})
probe('setns', {setns}, -1, 0)
probe('clone_user', {clone}, {newuser} | {sigchld}, 0, 0, 0, 0)
probe('clone_net', {clone}, {newnet} | {sigchld}, 0, 0, 0, 0)
probe('clone_pid', {clone}, {newpid} | {sigchld}, 0, 0, 0, 0)
probe('clone3', {clone3}, 0, 0)
",
            mount = libc::SYS_mount,
            umount2 = libc::SYS_umount2,
            pivot_root = libc::SYS_pivot_root,
            fsopen = libc::SYS_fsopen,
            open_tree = libc::SYS_open_tree,
            unshare = libc::SYS_unshare,
            setns = libc::SYS_setns,
            clone = libc::SYS_clone,
            clone3 = libc::SYS_clone3,
            newuser = libc::CLONE_NEWUSER,
            newns = libc::CLONE_NEWNS,
            newnet = libc::CLONE_NEWNET,
            newpid = libc::CLONE_NEWPID,
            sigchld = libc::SIGCHLD,
        ),
    )
    .await;
    assert_refused(
        &results,
        &[
            ("mount", "EPERM"),
            ("umount2", "EPERM"),
            ("pivot_root", "EPERM"),
            ("fsopen", "EPERM"),
            ("open_tree", "EPERM"),
            ("unshare_user", "EPERM"),
            ("unshare_mount", "EPERM"),
            ("setns", "EPERM"),
            ("clone_user", "EPERM"),
            ("clone_net", "EPERM"),
            ("clone_pid", "EPERM"),
            // Its flags are out of the filter's reach: "not implemented", so libc uses clone.
            ("clone3", "ENOSYS"),
        ],
    );
    handle.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_into_the_kernel_are_refused() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let (_, handle) = fixture.sandbox().await;
    // Arguments chosen so that, without the filter, most would not answer EPERM: keyctl
    // would succeed, reboot say EINVAL (root inside may reboot its pid namespace), the
    // perf and io_uring calls EFAULT, personality return the old persona.
    let results = probes(
        &handle,
        &format!(
            "probe('keyctl', {keyctl}, 0, -3, 1)
probe('add_key', {add_key}, b'user', b'cthulu', b'x', 1, -2)
probe('request_key', {request_key}, b'user', b'cthulu', 0, 0)
probe('bpf', {bpf}, 0, 0, 0)
probe('perf_event_open', {perf_event_open}, 0, 0, -1, -1, 0)
probe('init_module', {init_module}, 0, 0, b'')
probe('finit_module', {finit_module}, 0, b'', 0)
probe('delete_module', {delete_module}, b'loop', 0)
probe('kexec_load', {kexec_load}, 0, 0, 0, 0)
probe('reboot', {reboot}, 0, 0, 0, 0)
probe('syslog', {syslog}, 10, 0, 0)
probe('acct', {acct}, 0)
probe('swapon', {swapon}, b'/tmp/swap', 0)
probe('userfaultfd', {userfaultfd}, 0)
probe('io_uring_setup', {io_uring_setup}, 1, 0)
probe('open_by_handle_at', {open_by_handle_at}, -100, 0, 0)
probe('name_to_handle_at', {name_to_handle_at}, -100, b'/', 0, 0, 0)
probe('clock_settime', {clock_settime}, 0, 0)
probe('settimeofday', {settimeofday}, 0, 0)
probe('iopl', {iopl}, 3)
probe('personality_no_aslr', {personality}, 0x0040000)
probe('personality_query', {personality}, 0xffffffff)
",
            keyctl = libc::SYS_keyctl,
            add_key = libc::SYS_add_key,
            request_key = libc::SYS_request_key,
            bpf = libc::SYS_bpf,
            perf_event_open = libc::SYS_perf_event_open,
            init_module = libc::SYS_init_module,
            finit_module = libc::SYS_finit_module,
            delete_module = libc::SYS_delete_module,
            kexec_load = libc::SYS_kexec_load,
            reboot = libc::SYS_reboot,
            syslog = libc::SYS_syslog,
            acct = libc::SYS_acct,
            swapon = libc::SYS_swapon,
            userfaultfd = libc::SYS_userfaultfd,
            io_uring_setup = libc::SYS_io_uring_setup,
            open_by_handle_at = libc::SYS_open_by_handle_at,
            name_to_handle_at = libc::SYS_name_to_handle_at,
            clock_settime = libc::SYS_clock_settime,
            settimeofday = libc::SYS_settimeofday,
            iopl = libc::SYS_iopl,
            personality = libc::SYS_personality,
        ),
    )
    .await;
    let refused: Vec<(&str, &str)> = [
        "keyctl",
        "add_key",
        "request_key",
        "bpf",
        "perf_event_open",
        "init_module",
        "finit_module",
        "delete_module",
        "kexec_load",
        "reboot",
        "syslog",
        "acct",
        "swapon",
        "userfaultfd",
        "io_uring_setup",
        "open_by_handle_at",
        "name_to_handle_at",
        "clock_settime",
        "settimeofday",
        "iopl",
        "personality_no_aslr",
    ]
    .into_iter()
    .map(|name| (name, "EPERM"))
    .collect();
    assert_refused(&results, &refused);
    // Asking for the current persona still works (0 is "no error" in the probe's output).
    assert_eq!(
        results.get("personality_query").map(String::as_str),
        Some("0"),
        "{results:?}"
    );
    handle.destroy().await.unwrap();
}

/// i386's `getpid` through `int 0x80` from machine code mapped by python: prints the pid
/// when the kernel runs it.
const INT_0X80_GETPID: &str = r#"
import ctypes, mmap
code = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
code.write(b"\xb8\x14\x00\x00\x00\xcd\x80\xc3")  # mov eax, 20; int 0x80; ret
getpid = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(code)))
print("pid", getpid(), flush=True)
"#;

#[tokio::test(flavor = "multi_thread")]
async fn system_calls_of_other_abis_kill_the_process() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let (_, handle) = fixture.sandbox().await;
    // x32's getpid: x86_64's architecture with bit 30 in the number. A kernel without x32
    // would answer ENOSYS; the filter kills first.
    let x32 = python(
        &handle,
        "import ctypes; ctypes.CDLL(None).syscall(0x40000000 | 39); print('survived')",
    )
    .await;
    assert_eq!(x32.exit.signal, Some(libc::SIGSYS), "{x32:?}");
    assert!(x32.stdout.is_empty(), "{x32:?}");
    // The same i386 call on the host shows whether this kernel runs i386 code at all.
    let host = Command::new("/usr/bin/python3")
        .args(["-c", INT_0X80_GETPID])
        .output()
        .expect("running python3 on the host");
    let i386 = python(&handle, INT_0X80_GETPID).await;
    assert!(
        i386.stdout.is_empty(),
        "an i386 call went through: {i386:?}"
    );
    if String::from_utf8_lossy(&host.stdout).starts_with("pid ") {
        assert_eq!(i386.exit.signal, Some(libc::SIGSYS), "{i386:?}");
    } else {
        eprintln!("this kernel runs no i386 code: only checked that the call failed");
        assert_ne!(i386.exit.exit_code, Some(0), "{i386:?}");
    }
    handle.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn proc_and_the_root_directory_are_read_only() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let (sandbox_id, handle) = fixture.sandbox().await;
    // Without Landlock, a process may write its own comm, oom_score_adj and clear_refs, and
    // root inside may create files in / (the sandbox's own directory).
    let attempts = sh(
        &handle,
        "for target in /proc/self/comm /proc/self/oom_score_adj /proc/self/clear_refs \
           /proc/self/attr/current /proc/sys/kernel/hostname /proc/sysrq-trigger \
           /cthulu-probe; do
           if (printf 1 > \"$target\") 2>/dev/null; then echo \"wrote $target\"; fi
         done
         mkdir /cthulu-probe-dir 2>/dev/null && echo 'made /cthulu-probe-dir'
         ln -s /tmp /cthulu-probe-link 2>/dev/null && echo 'made /cthulu-probe-link'
         printf 1 > /proc/self/comm",
    )
    .await;
    let stdout = String::from_utf8_lossy(&attempts.stdout);
    assert_eq!(stdout, "", "writes went through");
    assert!(
        String::from_utf8_lossy(&attempts.stderr).contains("Permission denied"),
        "Landlock answers EACCES: {attempts:?}"
    );
    let root = fixture.dir(&sandbox_id).join("root");
    for name in ["cthulu-probe", "cthulu-probe-dir", "cthulu-probe-link"] {
        assert!(!root.join(name).exists(), "/{name} was made");
    }
    // Reading stays open.
    assert_eq!(sh_ok(&handle, "cat /proc/self/comm").await, "cat\n");
    assert!(sh_ok(&handle, "ls /").await.contains("workspace"));
    handle.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn ordinary_work_still_works() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let (_, handle) = fixture.sandbox().await;
    for (script, expected) in [
        ("echo hi > /workspace/a && cat /workspace/a", "hi\n"),
        (": > /workspace/a && wc -c < /workspace/a", "0\n"),
        ("echo t > /tmp/t && cat /tmp/t && rm /tmp/t", "t\n"),
        ("ls / | grep -c -x -e workspace -e tmp -e usr", "3\n"),
        // Renames and links between directories (Landlock's Refer right).
        (
            "mkdir -p d1 d2 && echo m > d1/f && mv d1/f d2/f && ln d2/f d1/g && \
             ln -s ../d2/f d1/s && cat d1/g d1/s && rm -r d1 d2",
            "m\nm\n",
        ),
        // The overlays, the home directories, /dev.
        (
            "echo e > /etc/cthulu-probe && cat /etc/cthulu-probe && rm /etc/cthulu-probe",
            "e\n",
        ),
        ("echo v > /var/v && mv /var/v /root/v && cat /root/v", "v\n"),
        (
            "echo s > /dev/shm/s && cat /dev/shm/s && rm /dev/shm/s",
            "s\n",
        ),
        (
            "echo gone > /dev/null && head -c 3 /dev/zero | wc -c",
            "3\n",
        ),
        // /dev/stdout leads through /proc/self/fd to the pipe.
        ("echo out > /dev/stdout", "out\n"),
        ("mkfifo /tmp/fifo && rm /tmp/fifo && echo fifo", "fifo\n"),
        // Processes and threads: clone without a namespace flag.
        ("sh -c 'true & wait' && echo forked", "forked\n"),
        ("python3 -c 'print(1)'", "1\n"),
        (
            "python3 -c 'import threading; t = threading.Thread(target=lambda: None); \
             t.start(); t.join(); print(\"joined\")'",
            "joined\n",
        ),
        (
            "python3 -c 'import multiprocessing as m
with m.Pool(2) as pool: print(pool.map(abs, [-1, -2]))'",
            "[1, 2]\n",
        ),
        // Terminals: opening /dev/ptmx and its ioctls (Landlock's device ioctl right).
        (
            "python3 -c 'import os; leader, follower = os.openpty(); \
             print(os.isatty(follower), os.ttyname(follower).startswith(\"/dev/pts/\"))'",
            "True True\n",
        ),
        ("chroot / true && echo chroot", "chroot\n"),
    ] {
        assert_eq!(sh_ok(&handle, script).await, expected, "{script}");
    }
    handle.destroy().await.unwrap();
}
