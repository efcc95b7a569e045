//! Resource limits and freezing of namespace sandboxes through cgroup v1, the layout of
//! our machines (v1 hybrid: the v2 hierarchy has no controllers to give).
//!
//! Each controller the server can write gets a directory `cthulu/` below the server's own
//! cgroup in that hierarchy (so whatever limits the server also bounds its sandboxes), and
//! each sandbox a group `cthulu/<sandbox_id>/` in it. Init joins the groups before it makes
//! the namespaces, so everything the sandbox runs is inside. A controller the server
//! cannot write (an unprivileged server, no such hierarchy) is reported with the reason,
//! and a limit that needs it is refused at create rather than ignored.
//!
//! cgroup v2 (`memory.max`, `pids.max`, `cpu.max`, `cgroup.freeze`) is not implemented:
//! this machine cannot exercise it, and untested limits would be claims, not limits.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cthulu_core::SandboxError;
use cthulu_types::{BackendKind, LimitSupport, Resources, SandboxId};
use serde::{Deserialize, Serialize};

/// The CFS period the CPU quota is a share of.
const CPU_PERIOD_US: u64 = 100_000;
/// The smallest quota the kernel takes.
const MIN_CPU_QUOTA_US: u64 = 1_000;
/// How long a freeze, or the emptying of a group after its processes were killed, may take.
const SETTLE_LIMIT: Duration = Duration::from_secs(10);

/// The controllers a sandbox may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Controller {
    Memory,
    Pids,
    Cpu,
    Freezer,
}

impl Controller {
    const ALL: [Controller; 4] = [
        Controller::Memory,
        Controller::Pids,
        Controller::Cpu,
        Controller::Freezer,
    ];

    fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Cpu => "cpu",
            Controller::Freezer => "freezer",
        }
    }
}

/// Where the server may make sandbox groups, per controller; or why it may not.
#[derive(Debug)]
pub(crate) struct Cgroups {
    parents: Vec<(Controller, Result<PathBuf, String>)>,
}

impl Cgroups {
    /// Finds the v1 hierarchies of this machine and makes (or finds) `cthulu/` below the
    /// server's own group in each.
    pub fn detect() -> Cgroups {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let parents = Controller::ALL
            .into_iter()
            .map(|controller| (controller, parent_for(controller, &mountinfo, &own)))
            .collect();
        Cgroups { parents }
    }

    /// A set of controllers none of which is usable, for `reason`.
    #[cfg(test)]
    pub fn none(reason: &str) -> Cgroups {
        Cgroups {
            parents: Controller::ALL
                .into_iter()
                .map(|controller| (controller, Err(reason.to_owned())))
                .collect(),
        }
    }

    fn parent(&self, controller: Controller) -> Result<&Path, &str> {
        self.parents
            .iter()
            .find(|(candidate, _)| *candidate == controller)
            .map(|(_, parent)| parent.as_deref().map_err(String::as_str))
            .unwrap_or(Err("unknown controller"))
    }

    /// Refuses limits this machine cannot enforce, naming each and why (the disk limit is
    /// [`Disk::check`](crate::disk::Disk::check)'s).
    pub fn check(&self, resources: &Resources) -> Result<(), SandboxError> {
        let refuse = |operation: &'static str, reason: String| SandboxError::Unsupported {
            backend: BackendKind::Namespace,
            operation,
            reason,
        };
        if let Some(cpus) = resources.cpus {
            if !(cpus.is_finite() && cpus > 0.0) {
                return Err(SandboxError::InvalidRequest {
                    field: "resources.cpus",
                    message: format!("{cpus} is not a positive number of cores"),
                });
            }
        }
        for (value, field) in [
            (resources.memory_mb, "resources.memory_mb"),
            (resources.pids, "resources.pids"),
        ] {
            if value == Some(0) {
                return Err(SandboxError::InvalidRequest {
                    field,
                    message: "must be at least 1".into(),
                });
            }
        }
        let needs = [
            (
                resources.memory_mb.is_some(),
                Controller::Memory,
                "memory limit",
            ),
            (resources.pids.is_some(), Controller::Pids, "pids limit"),
            (resources.cpus.is_some(), Controller::Cpu, "cpus limit"),
        ];
        for (asked, controller, operation) in needs {
            if asked {
                if let Err(reason) = self.parent(controller) {
                    // Without a pids group, the sandbox's RLIMIT_NPROC does the same.
                    if controller == Controller::Pids && nproc_is_per_sandbox() {
                        continue;
                    }
                    return Err(refuse(operation, reason.to_owned()));
                }
            }
        }
        if resources.vcpus.is_some() {
            return Err(refuse(
                "vcpus",
                "a namespace sandbox shares the host's CPUs; limit them with cpus".into(),
            ));
        }
        Ok(())
    }

    /// Makes the groups of a sandbox (those its limits need, and the freezer's for
    /// stop/resume) and writes its limits. Call [`check`](Self::check) first. On failure
    /// nothing is left behind.
    pub fn create(
        &self,
        sandbox_id: &SandboxId,
        resources: &Resources,
    ) -> Result<SandboxCgroups, SandboxError> {
        let mut groups = SandboxCgroups::default();
        let result = (|| {
            let wanted = [
                (Controller::Memory, resources.memory_mb.is_some()),
                (Controller::Pids, resources.pids.is_some()),
                (Controller::Cpu, resources.cpus.is_some()),
                (Controller::Freezer, true),
            ];
            for (controller, asked) in wanted {
                let Ok(parent) = self.parent(controller) else {
                    continue;
                };
                if !asked {
                    continue;
                }
                let dir = parent.join(sandbox_id.as_str());
                fs_err::create_dir(&dir)
                    .map_err(|error| SandboxError::io("create the cgroup", &dir, error))?;
                *groups.slot(controller) = Some(dir);
            }
            groups.write_limits(resources)
        })();
        match result {
            Ok(()) => Ok(groups),
            Err(error) => {
                groups.remove_now();
                Err(error)
            }
        }
    }

    /// What `/api/v1/info` says of each limit.
    pub fn limit_support(&self) -> Vec<LimitSupport> {
        let limit = |name: &str, enforced: bool, detail: String| LimitSupport {
            limit: name.to_owned(),
            enforced,
            detail,
        };
        let by = |controller: Controller, how: &str| match self.parent(controller) {
            Ok(parent) => (true, format!("{how} (cgroup v1, {})", parent.display())),
            Err(reason) => (
                false,
                format!("not enforced here, a create asking for it is refused: {reason}"),
            ),
        };
        let (memory, memory_detail) = by(
            Controller::Memory,
            "memory.limit_in_bytes (and memsw where swap is accounted); an exec during which \
             the sandbox was OOM-killed reports oom_killed",
        );
        let (mut pids, mut pids_detail) = by(Controller::Pids, "pids.max: fork fails at the limit");
        if !pids && nproc_is_per_sandbox() {
            pids = true;
            pids_detail = "RLIMIT_NPROC of the sandbox's root, which the kernel counts per \
                           sandbox (each has its own user namespace): fork fails at the limit \
                           (no pids cgroup the server can write)"
                .into();
        }
        let (cpus, cpus_detail) = by(
            Controller::Cpu,
            "cpu.cfs_quota_us: the sandbox is throttled to that many cores",
        );
        vec![
            limit("memory", memory, memory_detail),
            limit("pids", pids, pids_detail),
            limit("cpus", cpus, cpus_detail),
        ]
    }
}

/// Whether RLIMIT_NPROC counts the processes of a user namespace's user apart from the
/// same user's elsewhere: since Linux 5.14 (per-namespace ucounts). Earlier, the sandbox's
/// root outside is the server's own uid for an unprivileged server, and the limit would
/// count the server's processes and every other sandbox's too.
pub(crate) fn nproc_is_per_sandbox() -> bool {
    let release = rustix::system::uname();
    let release = release.release().to_string_lossy();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|part| part.parse::<u32>().ok());
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    version >= (5, 14)
}

/// The v1 directory `<mount>/<own group>/cthulu` of `controller`, created if missing.
fn parent_for(controller: Controller, mountinfo: &str, own: &str) -> Result<PathBuf, String> {
    let name = controller.name();
    let mount = v1_mount(mountinfo, name).ok_or_else(|| {
        format!("no cgroup v1 hierarchy has the {name} controller (cgroup v2 limits are not implemented yet)")
    })?;
    let own = own_group(own, name).unwrap_or_else(|| "/".to_owned());
    let parent = mount.join(own.trim_start_matches('/')).join("cthulu");
    // An existing directory (made by an earlier root server) may still not be ours.
    let writable = |parent: &Path| {
        rustix::fs::access(
            parent,
            rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
        )
    };
    match std::fs::create_dir_all(&parent).and_then(|()| Ok(writable(&parent)?)) {
        Ok(()) => Ok(parent),
        Err(error) if error.kind() == io::ErrorKind::PermissionDenied => Err(format!(
            "the server cannot write the {name} cgroup {} (run it as root, or give its user \
             that directory)",
            parent.display()
        )),
        Err(error) => Err(format!(
            "cannot create the cgroup {}: {error}",
            parent.display()
        )),
    }
}

/// The mount point of the v1 hierarchy holding `controller`, from `/proc/self/mountinfo`.
fn v1_mount(mountinfo: &str, controller: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (mount, filesystem) = line.split_once(" - ")?;
        let mut filesystem = filesystem.split_whitespace();
        if filesystem.next()? != "cgroup" {
            return None;
        }
        let options = filesystem.nth(1)?;
        if !options.split(',').any(|option| option == controller) {
            return None;
        }
        let fields: Vec<&str> = mount.split_whitespace().collect();
        // Only a hierarchy mounted from its root shows every group under its mount point.
        if fields.get(3) != Some(&"/") {
            return None;
        }
        fields.get(4).map(PathBuf::from)
    })
}

/// This process's group in the hierarchy holding `controller`, from `/proc/self/cgroup`.
fn own_group(cgroup: &str, controller: &str) -> Option<String> {
    cgroup.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let _id = fields.next()?;
        let controllers = fields.next()?;
        let path = fields.next()?;
        controllers
            .split(',')
            .any(|candidate| candidate == controller)
            .then(|| path.to_owned())
    })
}

/// A sandbox's groups, remembered in its state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SandboxCgroups {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freezer: Option<PathBuf>,
}

impl SandboxCgroups {
    fn slot(&mut self, controller: Controller) -> &mut Option<PathBuf> {
        match controller {
            Controller::Memory => &mut self.memory,
            Controller::Pids => &mut self.pids,
            Controller::Cpu => &mut self.cpu,
            Controller::Freezer => &mut self.freezer,
        }
    }

    /// Every group, for init to join.
    pub fn dirs(&self) -> Vec<PathBuf> {
        [&self.memory, &self.pids, &self.cpu, &self.freezer]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }

    fn write_limits(&self, resources: &Resources) -> Result<(), SandboxError> {
        let write = |dir: &Path, file: &str, value: String| {
            let path = dir.join(file);
            fs_err::write(&path, value)
                .map_err(|error| SandboxError::io("write the limit", &path, error))
        };
        if let (Some(dir), Some(megabytes)) = (&self.memory, resources.memory_mb) {
            let bytes = megabytes.saturating_mul(1 << 20).to_string();
            write(dir, "memory.limit_in_bytes", bytes.clone())?;
            // Memory plus swap: without it the sandbox could spill past its limit into
            // swap. Absent when the kernel does not account swap.
            if dir.join("memory.memsw.limit_in_bytes").exists() {
                write(dir, "memory.memsw.limit_in_bytes", bytes)?;
            }
        }
        if let (Some(dir), Some(pids)) = (&self.pids, resources.pids) {
            write(dir, "pids.max", pids.to_string())?;
        }
        if let (Some(dir), Some(cpus)) = (&self.cpu, resources.cpus) {
            let quota = ((cpus * CPU_PERIOD_US as f64) as u64).max(MIN_CPU_QUOTA_US);
            write(dir, "cpu.cfs_period_us", CPU_PERIOD_US.to_string())?;
            write(dir, "cpu.cfs_quota_us", quota.to_string())?;
        }
        Ok(())
    }

    /// How many processes of the sandbox the kernel has OOM-killed so far (`None` without
    /// a memory group).
    pub fn oom_kills(&self) -> Option<u64> {
        let control =
            std::fs::read_to_string(self.memory.as_ref()?.join("memory.oom_control")).ok()?;
        control.lines().find_map(|line| {
            let value = line.strip_prefix("oom_kill ")?;
            value.trim().parse().ok()
        })
    }

    /// Freezes (or thaws) every process of the sandbox; waits until the kernel is done.
    pub async fn freeze(&self, frozen: bool) -> Result<(), SandboxError> {
        let Some(dir) = &self.freezer else {
            return Err(SandboxError::system(
                "freeze the sandbox",
                io::Error::other("the sandbox has no freezer cgroup"),
            ));
        };
        let state = dir.join("freezer.state");
        let wanted = if frozen { "FROZEN" } else { "THAWED" };
        fs_err::write(&state, wanted).map_err(|error| SandboxError::io("write", &state, error))?;
        let deadline = tokio::time::Instant::now() + SETTLE_LIMIT;
        loop {
            let now = fs_err::read_to_string(&state)
                .map_err(|error| SandboxError::io("read", &state, error))?;
            if now.trim() == wanted {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(SandboxError::system(
                    "freeze the sandbox",
                    io::Error::other(format!(
                        "{} still reads {} after {SETTLE_LIMIT:?}",
                        state.display(),
                        now.trim()
                    )),
                ));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Removes the groups once their processes are gone (they may take a moment to leave
    /// after init was killed). A frozen group is thawed first, or its killed processes
    /// could never exit.
    pub async fn remove(&self) -> Result<(), SandboxError> {
        if let Some(freezer) = &self.freezer {
            let _ = std::fs::write(freezer.join("freezer.state"), "THAWED");
        }
        let deadline = tokio::time::Instant::now() + SETTLE_LIMIT;
        for dir in self.dirs() {
            loop {
                match std::fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(error) if error.kind() == io::ErrorKind::NotFound => break,
                    Err(error)
                        if error.raw_os_error() == Some(libc::EBUSY)
                            && tokio::time::Instant::now() < deadline =>
                    {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(error) => return Err(SandboxError::io("remove the cgroup", &dir, error)),
                }
            }
        }
        Ok(())
    }

    /// Removes the (still empty) groups of a create that failed before init joined them.
    fn remove_now(&self) {
        for dir in self.dirs() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 /inner /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
42 31 0:39 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn hierarchies_are_found_by_controller() {
        assert_eq!(
            v1_mount(MOUNTINFO, "memory"),
            Some(PathBuf::from("/sys/fs/cgroup/memory"))
        );
        assert_eq!(
            v1_mount(MOUNTINFO, "cpu"),
            Some(PathBuf::from("/sys/fs/cgroup/cpu"))
        );
        // Not `cpuacct` for `cpu`, nor a hierarchy mounted from a subgroup.
        assert_eq!(v1_mount(MOUNTINFO, "pids"), None);
        assert_eq!(v1_mount(MOUNTINFO, "freezer"), None);
    }

    #[test]
    fn own_group_per_controller() {
        let cgroup = "9:name=systemd:/\n4:memory:/process_api/48e7\n2:cpu,cpuacct:/x\n0::/\n";
        assert_eq!(
            own_group(cgroup, "memory").as_deref(),
            Some("/process_api/48e7")
        );
        assert_eq!(own_group(cgroup, "cpu").as_deref(), Some("/x"));
        assert_eq!(own_group(cgroup, "pids"), None);
    }

    #[test]
    fn limits_without_their_controller_are_refused_by_name() {
        let none = Cgroups::none("no cgroups in this test");
        assert!(none.check(&Resources::default()).is_ok());
        let memory = Resources {
            memory_mb: Some(64),
            ..Resources::default()
        };
        match none.check(&memory) {
            Err(SandboxError::Unsupported {
                operation, reason, ..
            }) => {
                assert_eq!(operation, "memory limit");
                assert_eq!(reason, "no cgroups in this test");
            }
            other => panic!("expected Unsupported, got {other:?}"),
        }
        // Without cgroups only a pids limit holds (by RLIMIT_NPROC, where the kernel counts
        // it per user namespace).
        let pids = Resources {
            pids: Some(64),
            ..Resources::default()
        };
        assert_eq!(none.check(&pids).is_ok(), nproc_is_per_sandbox());
        for limit in none.limit_support() {
            let expected = limit.limit == "pids" && nproc_is_per_sandbox();
            assert_eq!(limit.enforced, expected, "{limit:?}");
        }
    }

    #[test]
    fn nonsense_limits_are_invalid_requests() {
        let none = Cgroups::none("unused");
        for resources in [
            Resources {
                pids: Some(0),
                ..Resources::default()
            },
            Resources {
                memory_mb: Some(0),
                ..Resources::default()
            },
        ] {
            assert!(matches!(
                none.check(&resources),
                Err(SandboxError::InvalidRequest { .. })
            ));
        }
    }
}
