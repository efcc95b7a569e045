//! What confines every command PID 1 forks, on top of the namespaces: a Landlock ruleset
//! and a seccomp filter. [`Hardening::prepare`] builds both once in PID 1, inside the new
//! root; [`Hardening::apply`] enforces them in each forked child just before `execve`, so
//! the command and everything it starts inherit them. PID 1 itself stays unconfined: it
//! mounts nothing any more, but it forks and serves the control socket.
//!
//! Landlock (best effort, rights vetted up to ABI 5): read and execute anywhere; the
//! write-type rights (write, truncate, create, remove, rename, device ioctls) only beneath
//! the sandbox's own directories ([`WRITABLE_ROOT_DIRS`] and the system overlays), so `/`
//! itself, `/proc` and anything mounted later are read-only (so are the top-level
//! directories of an image beyond the host's system directories' names). Network rights
//! stay unhandled: the sandbox's network namespace already isolates it, or, with
//! `network: full`, the host's network is what was asked for. A kernel without Landlock, or with
//! only ABI 1 (which forbids every rename between directories), runs commands without it,
//! and init's log says so.
//!
//! seccomp (x86_64): everything is allowed but a deny list close to Docker's default profile,
//! answered EPERM: mounts, new namespaces (`unshare`, `setns`, `clone` with a `CLONE_NEW*`
//! flag), kernel modules, keyrings, BPF, perf, io_uring, reboot, clocks... `clone3` gets
//! ENOSYS (its flags are in memory the filter cannot read; libc falls back to `clone`), and a
//! system call of another ABI (i386, x32) kills the process.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use landlock::{
    Access, AccessFs, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreated, RulesetCreatedAttr, RulesetError, ABI,
};
use seccompiler::BpfProgram;

use super::setup::SYSTEM_DIRS;

/// The Landlock ABI whose file system rights this ruleset was written and tested against
/// (5 added device ioctls). Rights of later ABIs stay unhandled, so allowed, until vetted.
const LANDLOCK_ABI: ABI = ABI::V5;

/// The top-level directories where commands may write: each of setup's root directories
/// but `/proc`. The system overlays that are directories join them (their writes land in
/// the sandbox's own layer).
const WRITABLE_ROOT_DIRS: [&str; 9] = [
    "workspace",
    "tmp",
    "dev",
    "root",
    "home",
    "var",
    "run",
    "mnt",
    "srv",
];

/// The confinement of the commands, prepared before any fork.
pub(super) struct Hardening {
    /// `None` when the kernel cannot enforce it (noted in init's log).
    landlock: Option<RulesetCreated>,
    /// `None` on an architecture this filter was not written for (noted in init's log).
    seccomp: Option<BpfProgram>,
}

/// The layer [`Hardening::apply`] could not enforce, with the errno of the failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ApplyError {
    Landlock { errno: i32 },
    Seccomp { errno: i32 },
}

impl ApplyError {
    pub fn errno(self) -> i32 {
        match self {
            ApplyError::Landlock { errno } | ApplyError::Seccomp { errno } => errno,
        }
    }
}

impl Hardening {
    /// Creates the Landlock ruleset (its rules added) and compiles the seccomp filter. Runs in
    /// PID 1 after `pivot_root`, so the rules name the sandbox's directories.
    pub fn prepare() -> Result<Hardening, String> {
        Ok(Hardening {
            landlock: landlock_ruleset()?,
            seccomp: seccomp_filter()?,
        })
    }

    /// Enforces Landlock, then seccomp (whose filter may deny the calls Landlock needs), on
    /// the calling process, for good.
    ///
    /// # Safety
    /// Only in a child just forked from PID 1, before its `execve`. After a fork only
    /// async-signal-safe work is sound in general, and this keeps to it: system calls on
    /// memory prepared before the fork, no allocation, no lock.
    pub unsafe fn apply(&self) -> Result<(), ApplyError> {
        if let Some(ruleset) = &self.landlock {
            // `restrict_self` consumes the ruleset it enforces: a duplicate of the descriptor
            // (one fcntl) leaves PID 1's own for the next command. The crate offers no way to
            // restrict with a borrowed ruleset, which is what a prepare-before-fork needs.
            let landlock = |error: &(dyn std::error::Error + 'static)| ApplyError::Landlock {
                errno: errno_in(error),
            };
            let duplicate = ruleset.try_clone().map_err(|error| landlock(&error))?;
            duplicate
                .restrict_self()
                .map_err(|error| landlock(&error))?;
        }
        if let Some(program) = &self.seccomp {
            seccompiler::apply_filter(program).map_err(|error| ApplyError::Seccomp {
                errno: errno_in(&error),
            })?;
        }
        Ok(())
    }
}

/// The errno of the first I/O error in `error`'s chain; walking it allocates nothing.
fn errno_in(error: &(dyn std::error::Error + 'static)) -> i32 {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(errno) = error
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
        {
            return errno;
        }
        current = error.source();
    }
    libc::EINVAL
}

/// The ruleset, created and filled; `None` when this kernel cannot enforce it.
fn landlock_ruleset() -> Result<Option<RulesetCreated>, String> {
    let failed = |error: RulesetError| format!("preparing the landlock ruleset: {error}");
    let ruleset = Ruleset::default()
        // Landlock ABI 1 forbids every rename or link between directories, which would break
        // ordinary work (`mv`, package managers): no Landlock then, rather than that.
        .set_compatibility(CompatLevel::SoftRequirement)
        .handle_access(AccessFs::Refer)
        .and_then(|ruleset| {
            ruleset
                .set_compatibility(CompatLevel::BestEffort)
                .handle_access(AccessFs::from_all(LANDLOCK_ABI))
        })
        .and_then(Ruleset::create)
        .map_err(failed)?;
    let mut ruleset = ruleset
        .add_rule(beneath(Path::new("/"), AccessFs::from_read(LANDLOCK_ABI))?)
        .map_err(failed)?;
    for directory in writable_dirs() {
        ruleset = ruleset
            .add_rule(beneath(&directory, AccessFs::from_all(LANDLOCK_ABI))?)
            .map_err(failed)?;
    }
    // A ruleset the kernel could not create (no Landlock, or only ABI 1) has no descriptor.
    let descriptor = ruleset
        .try_clone()
        .map_err(|error| format!("duplicating the landlock ruleset: {error}"))?;
    if Option::<OwnedFd>::from(descriptor).is_none() {
        eprintln!(
            "cthulu-ns-init: this kernel has no Landlock (ABI 2 or later): commands run without it"
        );
        return Ok(None);
    }
    Ok(Some(ruleset))
}

fn beneath(
    path: &Path,
    access: landlock::BitFlags<AccessFs>,
) -> Result<PathBeneath<PathFd>, String> {
    let directory = PathFd::new(path)
        .map_err(|error| format!("opening {} for landlock: {error}", path.display()))?;
    Ok(PathBeneath::new(directory, access))
}

/// [`WRITABLE_ROOT_DIRS`], then the system directories that are overlays (not symlinks).
fn writable_dirs() -> Vec<PathBuf> {
    let root = Path::new("/");
    let overlays = SYSTEM_DIRS.iter().filter(|name| {
        std::fs::symlink_metadata(root.join(name)).is_ok_and(|metadata| metadata.is_dir())
    });
    WRITABLE_ROOT_DIRS
        .iter()
        .chain(overlays)
        .map(|name| root.join(name))
        .collect()
}

#[cfg(target_arch = "x86_64")]
fn seccomp_filter() -> Result<Option<BpfProgram>, String> {
    seccomp::program()
        .map(Some)
        .map_err(|error| format!("compiling the seccomp filter: {error}"))
}

#[cfg(not(target_arch = "x86_64"))]
fn seccomp_filter() -> Result<Option<BpfProgram>, String> {
    eprintln!(
        "cthulu-ns-init: no seccomp filter for {}: commands run without one",
        std::env::consts::ARCH
    );
    Ok(None)
}

/// The filter, for x86_64 (system call numbers and argument positions are the
/// architecture's).
#[cfg(target_arch = "x86_64")]
mod seccomp {
    use std::collections::BTreeMap;

    use seccompiler::{
        sock_filter, BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp,
        SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
    };

    /// Answered EPERM whatever their arguments, roughly Docker's default profile: calls that
    /// would remake the sandbox's view (mounts, namespaces), reach what no namespace covers
    /// (the kernel, keyrings, clocks) or widen the kernel's attack surface (BPF, perf,
    /// io_uring, userfaultfd). Many would fail anyway for want of a capability in the host's
    /// user namespace; root inside holds every capability over its own namespaces, which
    /// is what most of the others check. Not here, on purpose: `ptrace` (the pid namespace
    /// hides every process outside, and init is not dumpable), `chroot` (harmless inside),
    /// `seccomp` and `landlock_*` (they only restrict further).
    pub(super) const DENIED: [(libc::c_long, &str); 49] = [
        // The file system tree is final: no mounts, no new views of it.
        (libc::SYS_mount, "mount"),
        (libc::SYS_umount2, "umount2"),
        (libc::SYS_pivot_root, "pivot_root"),
        (libc::SYS_move_mount, "move_mount"),
        (libc::SYS_open_tree, "open_tree"),
        (libc::SYS_fsopen, "fsopen"),
        (libc::SYS_fsconfig, "fsconfig"),
        (libc::SYS_fsmount, "fsmount"),
        (libc::SYS_fspick, "fspick"),
        (libc::SYS_mount_setattr, "mount_setattr"),
        (libc::SYS_swapon, "swapon"),
        (libc::SYS_swapoff, "swapoff"),
        (libc::SYS_quotactl, "quotactl"),
        (libc::SYS_quotactl_fd, "quotactl_fd"),
        // File handles bypass the path walk (and Landlock).
        (libc::SYS_open_by_handle_at, "open_by_handle_at"),
        (libc::SYS_name_to_handle_at, "name_to_handle_at"),
        // No new namespaces (clone with a CLONE_NEW* flag is refused below).
        (libc::SYS_unshare, "unshare"),
        (libc::SYS_setns, "setns"),
        // The kernel itself.
        (libc::SYS_reboot, "reboot"),
        (libc::SYS_kexec_load, "kexec_load"),
        (libc::SYS_kexec_file_load, "kexec_file_load"),
        (libc::SYS_init_module, "init_module"),
        (libc::SYS_finit_module, "finit_module"),
        (libc::SYS_delete_module, "delete_module"),
        (libc::SYS_bpf, "bpf"),
        (libc::SYS_perf_event_open, "perf_event_open"),
        (libc::SYS_userfaultfd, "userfaultfd"),
        (libc::SYS_lookup_dcookie, "lookup_dcookie"),
        (libc::SYS_iopl, "iopl"),
        (libc::SYS_ioperm, "ioperm"),
        (libc::SYS_syslog, "syslog"),
        (libc::SYS_acct, "acct"),
        (libc::SYS_vhangup, "vhangup"),
        (libc::SYS_nfsservctl, "nfsservctl"),
        (libc::SYS_uselib, "uselib"),
        (libc::SYS_ustat, "ustat"),
        (libc::SYS_sysfs, "sysfs"),
        (libc::SYS__sysctl, "_sysctl"),
        // Keyrings are not namespaced.
        (libc::SYS_keyctl, "keyctl"),
        (libc::SYS_add_key, "add_key"),
        (libc::SYS_request_key, "request_key"),
        // Clocks are not namespaced (time namespaces only offset monotonic and boottime).
        (libc::SYS_settimeofday, "settimeofday"),
        (libc::SYS_clock_settime, "clock_settime"),
        (libc::SYS_clock_adjtime, "clock_adjtime"),
        (libc::SYS_adjtimex, "adjtimex"),
        // io_uring's operations never pass through this filter.
        (libc::SYS_io_uring_setup, "io_uring_setup"),
        (libc::SYS_io_uring_enter, "io_uring_enter"),
        (libc::SYS_io_uring_register, "io_uring_register"),
        // Never used by x86_64 programs: an i386 leftover.
        (libc::SYS_modify_ldt, "modify_ldt"),
    ];

    /// `clone` is refused when its flags (argument 0 on x86_64) hold any of these.
    /// CLONE_NEWTIME shares its bit with the exit signal's byte, where no valid signal sets
    /// it: refusing it costs nothing.
    pub(super) const NAMESPACE_FLAGS: [libc::c_int; 8] = [
        libc::CLONE_NEWUSER,
        libc::CLONE_NEWNS,
        libc::CLONE_NEWPID,
        libc::CLONE_NEWNET,
        libc::CLONE_NEWIPC,
        libc::CLONE_NEWUTS,
        libc::CLONE_NEWCGROUP,
        libc::CLONE_NEWTIME,
    ];

    /// The `personality` values allowed, as Docker does: the query, Linux, and the 32-bit
    /// and 2.6 `uname` flavours. Flags like ADDR_NO_RANDOMIZE or READ_IMPLIES_EXEC are not.
    pub(super) const PERSONALITIES: [u32; 5] = [0, 0x0008, 0x0002_0000, 0x0002_0008, 0xffff_ffff];

    /// x86_64's audit architecture: EM_X86_64, 64-bit, little-endian.
    pub(super) const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    /// Set in the number of an x32 system call, which shares x86_64's audit architecture
    /// and so passes its check.
    pub(super) const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    /// Offsets in `struct seccomp_data`.
    pub(super) const DATA_NR: u32 = 0;
    pub(super) const DATA_ARCH: u32 = 4;

    /// The whole program: [`guard`], then the deny list compiled by seccompiler (default
    /// action allow, EPERM on a match).
    pub fn program() -> Result<BpfProgram, BackendError> {
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = DENIED
            .iter()
            .map(|(number, _)| (*number, Vec::new()))
            .collect();
        // One rule per flag: a chain of rules matches when any of them does.
        let clone = NAMESPACE_FLAGS
            .iter()
            .map(|flag| {
                let flag = *flag as u64;
                let condition = SeccompCondition::new(
                    0,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::MaskedEq(flag),
                    flag,
                )?;
                SeccompRule::new(vec![condition])
            })
            .collect::<Result<_, _>>()?;
        rules.insert(libc::SYS_clone, clone);
        // One rule whose conditions must all hold: a value none of those allowed. The kernel
        // reads an unsigned int, so the comparison takes the low 32 bits only.
        let personality = PERSONALITIES
            .iter()
            .map(|value| {
                SeccompCondition::new(
                    0,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::Ne,
                    u64::from(*value),
                )
            })
            .collect::<Result<_, _>>()?;
        rules.insert(libc::SYS_personality, vec![SeccompRule::new(personality)?]);
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EPERM as u32),
            TargetArch::x86_64,
        )?;
        let mut program = guard();
        program.extend(BpfProgram::try_from(filter)?);
        Ok(program)
    }

    /// What seccompiler cannot say (one filter has one match action, and system call
    /// numbers are matched exactly): kill a call of another architecture or of the x32 ABI
    /// (numbers with bit 30 set, which the deny list would miss) and answer `clone3` with
    /// ENOSYS. Number -1 passes, as libseccomp lets it: a tracer sets it to skip a call,
    /// and the kernel answers ENOSYS anyway.
    pub(super) fn guard() -> BpfProgram {
        let load = |offset: u32| statement(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, offset);
        let jump = |operation: u32, value: u32, if_true: u8, if_false: u8| sock_filter {
            code: (libc::BPF_JMP | operation | libc::BPF_K) as u16,
            jt: if_true,
            jf: if_false,
            k: value,
        };
        let give = |action: u32| statement(libc::BPF_RET | libc::BPF_K, action);
        vec![
            load(DATA_ARCH),
            jump(libc::BPF_JEQ, AUDIT_ARCH_X86_64, 1, 0),
            give(libc::SECCOMP_RET_KILL_PROCESS),
            load(DATA_NR),
            jump(libc::BPF_JGE, X32_SYSCALL_BIT, 0, 2),
            jump(libc::BPF_JEQ, u32::MAX, 1, 0),
            give(libc::SECCOMP_RET_KILL_PROCESS),
            jump(libc::BPF_JEQ, libc::SYS_clone3 as u32, 0, 1),
            give(libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        ]
    }

    fn statement(code: u32, value: u32) -> sock_filter {
        sock_filter {
            code: code as u16,
            jt: 0,
            jf: 0,
            k: value,
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        const AUDIT_ARCH_I386: u32 = 0x4000_0003;
        const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
        const KILL: u32 = libc::SECCOMP_RET_KILL_PROCESS;
        const EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
        const ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;

        /// Runs `program` on a system call as the kernel would: a classic BPF interpreter
        /// for the instructions seccompiler and [`guard`] emit (any other one panics).
        fn run(program: &[sock_filter], arch: u32, number: u32, args: [u64; 6]) -> u32 {
            // struct seccomp_data: nr, arch, instruction_pointer, args[6].
            let mut data = [0u8; 64];
            data[0..4].copy_from_slice(&number.to_ne_bytes());
            data[4..8].copy_from_slice(&arch.to_ne_bytes());
            for (index, arg) in args.iter().enumerate() {
                data[16 + index * 8..24 + index * 8].copy_from_slice(&arg.to_ne_bytes());
            }
            let mut accumulator = 0u32;
            let mut pc = 0usize;
            loop {
                let instruction = &program[pc];
                let code = u32::from(instruction.code);
                let k = instruction.k;
                pc += 1;
                match code {
                    c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => {
                        let offset = k as usize;
                        let word: [u8; 4] = data[offset..offset + 4].try_into().unwrap();
                        accumulator = u32::from_ne_bytes(word);
                    }
                    c if c == libc::BPF_ALU | libc::BPF_AND | libc::BPF_K => accumulator &= k,
                    c if c == libc::BPF_JMP | libc::BPF_JA => pc += k as usize,
                    c if c & 0x07 == libc::BPF_JMP && c & 0x08 == libc::BPF_K => {
                        let taken = match c & 0xf0 {
                            operation if operation == libc::BPF_JEQ => accumulator == k,
                            operation if operation == libc::BPF_JGT => accumulator > k,
                            operation if operation == libc::BPF_JGE => accumulator >= k,
                            operation if operation == libc::BPF_JSET => accumulator & k != 0,
                            other => panic!("jump {other:#x} not interpreted"),
                        };
                        pc += usize::from(if taken {
                            instruction.jt
                        } else {
                            instruction.jf
                        });
                    }
                    c if c == libc::BPF_RET | libc::BPF_K => return k,
                    other => panic!("instruction {other:#x} not interpreted"),
                }
            }
        }

        fn call(number: libc::c_long, args: [u64; 6]) -> u32 {
            let program = program().unwrap();
            run(&program, AUDIT_ARCH_X86_64, number as u32, args)
        }

        #[test]
        fn the_filter_compiles_to_a_program_the_kernel_accepts() {
            let program = program().unwrap();
            assert!(
                program.len() > guard().len(),
                "{} instructions",
                program.len()
            );
            assert!(program.len() < 4096, "{} instructions", program.len());
            assert_eq!(program[..guard().len()], guard()[..]);
            assert!(
                matches!(program.last(), Some(last) if last.k == ALLOW),
                "the default is allow"
            );
        }

        #[test]
        fn every_denied_call_gets_eperm() {
            for (number, name) in DENIED {
                assert_eq!(call(number, [0; 6]), EPERM, "{name}");
                assert_eq!(call(number, [u64::MAX; 6]), EPERM, "{name}");
            }
        }

        #[test]
        fn ordinary_calls_are_allowed() {
            for number in [
                libc::SYS_read,
                libc::SYS_write,
                libc::SYS_openat,
                libc::SYS_execve,
                libc::SYS_fork,
                libc::SYS_vfork,
                libc::SYS_wait4,
                libc::SYS_ptrace,
                libc::SYS_chroot,
                libc::SYS_seccomp,
                libc::SYS_landlock_restrict_self,
                libc::SYS_sethostname,
            ] {
                assert_eq!(call(number, [0; 6]), ALLOW, "{number}");
            }
        }

        #[test]
        fn clone_is_refused_only_with_a_namespace_flag() {
            let sigchld = libc::SIGCHLD as u64;
            let thread = (libc::CLONE_VM
                | libc::CLONE_FS
                | libc::CLONE_FILES
                | libc::CLONE_SIGHAND
                | libc::CLONE_THREAD
                | libc::CLONE_SYSVSEM
                | libc::CLONE_SETTLS
                | libc::CLONE_PARENT_SETTID
                | libc::CLONE_CHILD_CLEARTID) as u64;
            for flags in [sigchld, thread, libc::CLONE_VFORK as u64 | sigchld] {
                assert_eq!(call(libc::SYS_clone, [flags, 0, 0, 0, 0, 0]), ALLOW);
            }
            for flag in NAMESPACE_FLAGS {
                for flags in [flag as u64, flag as u64 | sigchld, flag as u64 | thread] {
                    assert_eq!(
                        call(libc::SYS_clone, [flags, 0, 0, 0, 0, 0]),
                        EPERM,
                        "{flags:#x}"
                    );
                }
            }
        }

        #[test]
        fn clone3_gets_enosys_so_libc_falls_back_to_clone() {
            assert_eq!(call(libc::SYS_clone3, [0; 6]), ENOSYS);
        }

        #[test]
        fn personality_only_queries_and_plain_flavours() {
            for value in PERSONALITIES {
                assert_eq!(
                    call(libc::SYS_personality, [u64::from(value), 0, 0, 0, 0, 0]),
                    ALLOW
                );
            }
            for value in [
                0x0004_0000u64, // ADDR_NO_RANDOMIZE
                0x0040_0000,    // READ_IMPLIES_EXEC
                0x0100_0000,    // ADDR_LIMIT_3GB
                0x1_0004_0000,  // the kernel reads the low 32 bits only
            ] {
                assert_eq!(
                    call(libc::SYS_personality, [value, 0, 0, 0, 0, 0]),
                    EPERM,
                    "{value:#x}"
                );
            }
        }

        #[test]
        fn other_abis_are_killed() {
            let program = program().unwrap();
            // i386's getpid through int 0x80, and i386's own mount.
            assert_eq!(run(&program, AUDIT_ARCH_I386, 20, [0; 6]), KILL);
            assert_eq!(run(&program, AUDIT_ARCH_I386, 21, [0; 6]), KILL);
            // x32's mount and getpid: x86_64's architecture, bit 30 in the number.
            for number in [libc::SYS_mount, libc::SYS_getpid] {
                let x32 = X32_SYSCALL_BIT | number as u32;
                assert_eq!(run(&program, AUDIT_ARCH_X86_64, x32, [0; 6]), KILL);
            }
            // -1, a tracer's skipped call, passes (the kernel answers ENOSYS).
            assert_eq!(run(&program, AUDIT_ARCH_X86_64, u32::MAX, [0; 6]), ALLOW);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_root_dir_but_proc_is_writable() {
        for name in super::super::setup::ROOT_DIRS {
            assert_eq!(
                WRITABLE_ROOT_DIRS.contains(&name),
                name != "proc",
                "/{name} is writable exactly when it is not /proc"
            );
        }
        assert_eq!(
            WRITABLE_ROOT_DIRS.len(),
            super::super::setup::ROOT_DIRS.len() - 1
        );
    }

    #[test]
    fn errno_is_found_through_the_error_chain() {
        let seccomp = seccompiler::Error::Seccomp(io::Error::from_raw_os_error(libc::E2BIG));
        assert_eq!(errno_in(&seccomp), libc::E2BIG);
        assert_eq!(
            errno_in(&io::Error::from_raw_os_error(libc::EMFILE)),
            libc::EMFILE
        );
        assert_eq!(errno_in(&std::fmt::Error), libc::EINVAL);
    }
}
