//! The cgroup v2 of everything the agent runs, as PID 1 of a VM: [`Cgroup::set_up`] enables
//! the memory, pids and cpu controllers below the root and creates `sandbox`; each exec'd
//! process writes its own pid into the sandbox's `cgroup.procs` between fork and exec (see
//! [`crate::sys::join_cgroup`]), so it and all its descendants are limited together, while
//! PID 1 and the server stay in the root cgroup (the root is exempt from the rule that a
//! cgroup with controllers enabled below it holds no processes). [`Cgroup::apply`] sets the
//! limits of a `Configure`; [`Cgroup::oom_kills`] reads the `oom_kill` counter of
//! `memory.events`, which counts the processes of the cgroup (and below) killed by any OOM
//! killer, the cgroup's own or the whole machine's.
//!
//! In test mode the agent runs on a real host and never touches its cgroups.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use cthulu_guest_protocol::message::GuestLimits;

use crate::log::log;

/// Where PID 1 mounts the cgroup2 filesystem.
pub const ROOT: &str = "/sys/fs/cgroup";
/// The cgroup of everything the agent runs, below [`ROOT`].
const SANDBOX: &str = "sandbox";
/// The controllers the limits need.
const CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];
/// The period of `cpu.max`, in microseconds (the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;

/// The sandbox cgroup.
#[derive(Debug, Clone)]
pub struct Cgroup {
    dir: PathBuf,
}

/// A limit the kernel did not take.
#[derive(Debug)]
pub struct LimitError {
    pub file: PathBuf,
    pub value: String,
    pub error: io::Error,
}

impl Cgroup {
    /// Enables the controllers below `root` (a mounted cgroup2) and creates the sandbox
    /// cgroup; a controller the kernel lacks is logged, and its limits fail when set.
    pub fn set_up(root: &Path) -> io::Result<Cgroup> {
        let available = std::fs::read_to_string(root.join("cgroup.controllers"))?;
        let subtree_control = root.join("cgroup.subtree_control");
        for controller in CONTROLLERS {
            if !available.split_whitespace().any(|name| name == controller) {
                log!("cgroups: the kernel has no {controller} controller");
                continue;
            }
            // One per write: a write naming a controller the kernel refuses fails whole.
            if let Err(error) = std::fs::write(&subtree_control, format!("+{controller}")) {
                log!("cgroups: enabling the {controller} controller: {error}");
            }
        }
        let dir = root.join(SANDBOX);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(error),
        }
        Ok(Cgroup { dir })
    }

    /// `cgroup.procs` of the sandbox: a pid written into it moves that process.
    pub fn procs_path(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// [`Self::procs_path`] open for writing, close-on-exec (as std opens every file): the
    /// child that writes its pid into it keeps it only until its exec.
    pub fn open_procs(&self) -> io::Result<OwnedFd> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(self.procs_path())?;
        Ok(file.into())
    }

    /// Sets every limit (`max` for those absent). A file that is missing (its controller is
    /// not enabled) is an error only for a limit that is set; a missing `memory.swap.max`
    /// (no swap accounting, so no swap to limit) never is.
    pub fn apply(&self, limits: &GuestLimits) -> Result<(), LimitError> {
        for (file, value) in limit_files(limits) {
            let path = self.dir.join(file);
            match std::fs::write(&path, &value) {
                Ok(()) => {}
                Err(error)
                    if error.kind() == io::ErrorKind::NotFound
                        && (value.starts_with("max") || file == "memory.swap.max") => {}
                Err(error) => {
                    return Err(LimitError {
                        file: path,
                        value,
                        error,
                    })
                }
            }
        }
        Ok(())
    }

    /// How many processes of the sandbox OOM killers have killed so far; `None` when it
    /// cannot be read (no memory controller).
    pub fn oom_kills(&self) -> Option<u64> {
        let events = std::fs::read_to_string(self.dir.join("memory.events")).ok()?;
        counter(&events, "oom_kill")
    }
}

/// The files and values that set `limits`, in the order they are written.
pub fn limit_files(limits: &GuestLimits) -> Vec<(&'static str, String)> {
    let or_max = |value: Option<u64>| value.map_or_else(|| "max".to_owned(), |v| v.to_string());
    let cpu_quota = limits.cpu_millis.map_or_else(
        || "max".to_owned(),
        |millis| (u64::from(millis) * 100).to_string(),
    );
    vec![
        ("memory.max", or_max(limits.memory_bytes)),
        // With a memory limit, no swap either: the limit is on memory, not on RAM.
        (
            "memory.swap.max",
            if limits.memory_bytes.is_some() {
                "0".to_owned()
            } else {
                "max".to_owned()
            },
        ),
        ("pids.max", or_max(limits.pids)),
        ("cpu.max", format!("{cpu_quota} {CPU_PERIOD_US}")),
    ]
}

/// The value of `name` in a flat keyed file (`memory.events`: one `name value` per line).
fn counter(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == name).then(|| value.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_become_cgroup_files() {
        let all = GuestLimits {
            memory_bytes: Some(64 << 20),
            pids: Some(64),
            cpu_millis: Some(1500),
        };
        assert_eq!(
            limit_files(&all),
            [
                ("memory.max", "67108864".to_owned()),
                ("memory.swap.max", "0".to_owned()),
                ("pids.max", "64".to_owned()),
                ("cpu.max", "150000 100000".to_owned()),
            ]
        );
        assert_eq!(
            limit_files(&GuestLimits::default()),
            [
                ("memory.max", "max".to_owned()),
                ("memory.swap.max", "max".to_owned()),
                ("pids.max", "max".to_owned()),
                ("cpu.max", "max 100000".to_owned()),
            ]
        );
        let smallest = GuestLimits {
            cpu_millis: Some(10),
            ..GuestLimits::default()
        };
        assert_eq!(limit_files(&smallest)[3].1, "1000 100000");
    }

    #[test]
    fn the_oom_kill_counter_is_read_from_memory_events() {
        let events = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 3\noom_group_kill 0\n";
        assert_eq!(counter(events, "oom_kill"), Some(3));
        assert_eq!(counter(events, "oom"), Some(2));
        assert_eq!(counter(events, "missing"), None);
        assert_eq!(counter("oom_kill x\n", "oom_kill"), None);
    }

    #[test]
    fn set_up_enables_controllers_and_creates_the_sandbox() {
        // A directory that looks like a cgroup2 root (files, not the kernel's).
        let root = tempfile::tempdir().unwrap();
        std::fs::write(
            root.path().join("cgroup.controllers"),
            "cpu io memory pids\n",
        )
        .unwrap();
        std::fs::write(root.path().join("cgroup.subtree_control"), "").unwrap();
        let cgroup = Cgroup::set_up(root.path()).unwrap();
        assert!(root.path().join("sandbox").is_dir());
        // The last write wins in a plain file: each controller was its own write.
        assert_eq!(
            std::fs::read_to_string(root.path().join("cgroup.subtree_control")).unwrap(),
            "+cpu"
        );
        cgroup.apply(&GuestLimits::default()).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.path().join("sandbox/cpu.max")).unwrap(),
            "max 100000"
        );
        std::fs::write(
            root.path().join("sandbox/memory.events"),
            "oom 1\noom_kill 4\n",
        )
        .unwrap();
        assert_eq!(cgroup.oom_kills(), Some(4));
        assert!(
            Cgroup::set_up(root.path()).is_ok(),
            "again, after a restart"
        );
    }
}
