//! The namespace backend: each sandbox is a set of Linux namespaces (user, pid, mount,
//! net, ipc, uts, cgroup) kept alive by a small init process that is PID 1 inside them
//! and outlives the server. No daemon, no package: kernel features only.
//!
//! - [`NamespaceProvider`] (built from a [`NamespaceConfig`]) implements
//!   [`SandboxProvider`](cthulu_core::SandboxProvider): it makes, lists and re-attaches
//!   sandboxes under `<root>/<sandbox_id>/`, starting each one's [`init`] with the
//!   [`InitCommand`] of its config.
//! - [`NamespaceSandbox`] implements [`SandboxHandle`](cthulu_core::SandboxHandle):
//!   one-shot exec sends the command and its three pipe ends to init over the control
//!   socket ([`protocol`]); init forks it inside the namespaces. Files resolve race-free
//!   beneath the host side of `/workspace` (`openat2` `RESOLVE_BENEATH`). Destroy kills
//!   init, which takes every process of the sandbox with it, and removes the directory.
//!
//! Inside a sandbox: root. Outside it is not: a root server maps the sandbox's ids
//! `0..65536` to a subordinate range from [`init::IdMapping::SUBORDINATE_BASE`]; any other
//! user maps root to itself alone. Host files owned by root (or anyone unmapped) show as
//! `nobody`, so root inside cannot read `/etc/shadow` or change the host's files. Its own
//! hostname, loopback only (or, with `network: full`, the host's network namespace: the
//! host's interfaces and loopback, outbound access, still its own user, pid and mount
//! namespaces), its own `/proc`, `/tmp` and minimal `/dev`, the host's `/usr`, `/etc`,
//! `/bin`, `/lib*`, `/sbin` and `/opt` (or, with `image` naming a directory, that
//! directory's top level) under overlays whose writes land in the sandbox's directory
//! (`/usr/local` and its subdirectories belong to the sandbox's root, so installs there
//! work; other lower files keep their owners), `/workspace` bound from the host (files
//! the server writes there are given to the sandbox's root), and no_new_privs. The old
//! root is detached after `pivot_root`. Every command runs under a seccomp filter (x86_64; mounts, new
//! namespaces, kernel modules, keyrings, BPF, perf, io_uring... answered EPERM, other
//! system call ABIs killed) and a Landlock ruleset (where the kernel has it: writes only
//! beneath `/workspace`, `/tmp`, `/dev`, `/root`, `/home`, `/var`, `/run`, `/mnt`, `/srv`
//! and the system overlays, so `/` itself and `/proc` are read-only), both prepared once
//! by init and applied just before each `execve` ([`init`]).
//!
//! Limits (module `cgroup`): memory (OOM kills reported on the exec), pids and cpus through
//! cgroup v1 when the server can write it (without a pids cgroup, pids through PID 1's
//! RLIMIT_NPROC, which the kernel counts per user namespace and so per sandbox);
//! stop/resume through the v1 freezer (without one, init sends SIGSTOP / SIGCONT to every
//! other process of the sandbox). Disk
//! (module `disk`, root servers only): the sandbox's writable directories live on an ext4
//! image of `disk_mb` that the server loop-mounts (`LOOP_CONFIGURE`, autoclear) and binds
//! into the sandbox's directory, so writes stop with ENOSPC. A limit the machine cannot
//! enforce is refused at create, by name.
//!
//! Streaming exec, PTYs and detached processes run under a process [`shim`] each (the
//! host backend's shim, [`cthulu_host::shim`], with a launcher that asks init): the shim
//! passes init its pipe ends, or gets the master of a terminal init opened on the
//! sandbox's own devpts (`tty` inside names `/dev/pts/N`; the command leads a session
//! with it as controlling terminal), keeps the last 1 MiB of output, and outlives the
//! stream and the server. Processes are listed, re-attached and signalled with
//! [`cthulu_host::processes`] on the records in `state.json`; destroy kills init, and so
//! every command, then waits for the shims to record that and exit (or kills them).
//! Exposed ports use the host crate's loopback forwarders ([`cthulu_host::ports`]) with a
//! connector that asks init for a socket connected inside the sandbox's network namespace
//! (module `ports`): no routing, no firewall rule, works unprivileged.
//!
//! Filesystem checkpoints (module `checkpoint`) archive the sandbox's whole writable state
//! (workspace, `root/`, the overlays' upper layer with its whiteouts, opaque directories
//! and owners); restore ends the sandbox's processes, puts the files back while no
//! overlay is mounted on them, and starts a new init: id, env, limits, ports and status
//! stay, processes do not (a memory checkpoint is `Unsupported`).
//!
//! On disk, per sandbox:
//!
//! ```text
//! <root>/<sandbox_id>/state.json     env, status, init pid and start time, ids, cgroups,
//!                                    streamed processes, exposed ports, checkpoints
//!                    /init.json      what init builds (hostname, ids, cgroups, network,
//!                                    image)
//!                    /init.sock      init's control socket
//!                    /init.log       init's stderr
//!                    /workspace/     /workspace inside
//!                    /root/          / inside (/root, /home, /var... are written here;
//!                                    with an image, its directories are overlays too)
//!                    /layer/upper/   writes to /usr, /etc... inside
//!                    /layer/work/    overlayfs work directories
//!                    /procs/<process_id>/   the shim's spec.json, sock, pid.json,
//!                                    exit.json, kept output (not visible inside)
//!                    /checkpoints/   <checkpoint_id>.tar.gz
//!                    /disk.img       with a disk limit: the ext4 image whose workspace/,
//!                                    root/ and layer/ are bound over those above
//! ```

mod cgroup;
mod checkpoint;
mod config;
mod disk;
mod error;
mod exec;
pub mod init;
mod launch;
mod maker;
mod pool;
mod ports;
pub mod protocol;
mod provider;
mod sandbox;
pub mod shim;
mod state;

pub use config::{InitCommand, NamespaceConfig};
pub use error::NamespaceError;
pub use provider::NamespaceProvider;
pub use sandbox::NamespaceSandbox;
