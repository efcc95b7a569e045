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
//! Inside a sandbox: root (mapped to the server's uid and gid outside, nothing else
//! mapped), its own hostname, loopback only, its own `/proc`, `/tmp` and minimal `/dev`,
//! the host's `/usr`, `/etc`, `/bin`, `/lib*`, `/sbin` and `/opt` under an overlay whose
//! writes land in the sandbox's directory, `/workspace` bound from the host, and
//! no_new_privs. The old root is detached after `pivot_root`. Every command runs under a
//! seccomp filter (x86_64; mounts, new namespaces, kernel modules, keyrings, BPF, perf,
//! io_uring... answered EPERM, other system call ABIs killed) and a Landlock ruleset (where
//! the kernel has it: writes only beneath `/workspace`, `/tmp`, `/dev`, `/root`, `/home`,
//! `/var`, `/run`, `/mnt`, `/srv` and the system overlays, so `/` itself and `/proc` are
//! read-only), both prepared once by init and applied just before each `execve` ([`init`]).
//!
//! Not yet (answered [`Unsupported`](cthulu_core::SandboxError::Unsupported), and false
//! in the capabilities): streaming exec, PTYs, detached processes, ports, checkpoints,
//! stop/resume; a create asking for resource limits, full network or an image is refused.
//! Only timeouts and output caps are enforced: no cgroups yet.
//!
//! On disk, per sandbox:
//!
//! ```text
//! <root>/<sandbox_id>/state.json     env, status, init pid and start time
//!                    /init.sock      init's control socket
//!                    /init.log       init's stderr
//!                    /workspace/     /workspace inside
//!                    /root/          / inside (/root, /home, /var... are written here)
//!                    /layer/upper/   writes to /usr, /etc... inside
//!                    /layer/work/    overlayfs work directories
//! ```

mod config;
mod error;
mod exec;
pub mod init;
mod launch;
pub mod protocol;
mod provider;
mod sandbox;
mod state;

pub use config::{InitCommand, NamespaceConfig};
pub use error::NamespaceError;
pub use provider::NamespaceProvider;
pub use sandbox::NamespaceSandbox;
