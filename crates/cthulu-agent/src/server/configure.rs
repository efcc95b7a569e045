//! `Configure`: the guest's identity and defaults. The settings that change the whole
//! machine (hostname, clock, entropy, machine id) are applied only as PID 1 of a VM: in
//! test mode the agent runs on a real host, often as root, and must not change it, so it
//! answers `permission_denied` naming the setting. Resource limits need the agent's cgroup
//! (see [`crate::cgroup`]): without one (test mode, or a kernel without cgroup v2) they are
//! refused with `unsupported`, before anything else of the config is applied.

use std::collections::BTreeMap;
use std::path::PathBuf;

use cthulu_guest_protocol::message::{
    ErrorCode, ErrorReply, GuestConfig, GuestLimits, MAX_ENTROPY,
};
use rustix::fs::{Mode, OFlags};

use crate::cgroup::Cgroup;
use crate::paths::reply;

/// Why test mode has no cgroups.
pub const NO_CGROUPS_IN_TEST_MODE: &str =
    "the agent uses cgroups only as PID 1 of a VM, not in test mode";

/// What later requests run with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub workspace: PathBuf,
    pub env: BTreeMap<String, String>,
    /// PID 1 of a VM: machine-wide settings may be changed.
    pub vm: bool,
    /// The cgroup of everything the agent runs, or why there is none (named when limits
    /// are refused).
    pub cgroup: Result<Cgroup, String>,
}

impl Settings {
    pub fn workspace_str(&self) -> String {
        self.workspace.to_string_lossy().into_owned()
    }
}

/// Checks everything first, then applies in order; the first failure is the answer.
pub fn apply(settings: &mut Settings, config: GuestConfig) -> Result<(), ErrorReply> {
    let invalid = |message: String| reply(ErrorCode::InvalidRequest, message);
    let entropy = config
        .entropy_hex
        .as_deref()
        .map(|hex| decode_hex(hex).ok_or_else(|| invalid("entropy_hex is not hex".into())))
        .transpose()?;
    if entropy
        .as_ref()
        .is_some_and(|bytes| bytes.len() > MAX_ENTROPY)
    {
        return Err(invalid(format!("more than {MAX_ENTROPY} bytes of entropy")));
    }
    if let Some(machine_id) = &config.machine_id {
        if machine_id.len() != 32
            || !machine_id
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(invalid("machine_id must be 32 lowercase hex digits".into()));
        }
    }
    if let Some(hostname) = &config.hostname {
        if hostname.is_empty() || hostname.len() > 64 || hostname.contains(['\0', '/', '\n']) {
            return Err(invalid(format!("invalid hostname {hostname:?}")));
        }
    }
    let workspace = config.workspace.as_deref().map(PathBuf::from);
    if let Some(workspace) = &workspace {
        if !workspace.is_absolute() || workspace.as_os_str().to_string_lossy().contains('\0') {
            return Err(invalid(format!(
                "the workspace must be an absolute path: {}",
                workspace.display()
            )));
        }
    }
    if let Some(env) = &config.env {
        if let Some(name) = env
            .keys()
            .find(|name| name.is_empty() || name.contains(['=', '\0']))
        {
            return Err(invalid(format!("invalid environment variable {name:?}")));
        }
        if env.values().any(|value| value.contains('\0')) {
            return Err(invalid("an environment value contains a NUL byte".into()));
        }
    }

    let cgroup = match &config.limits {
        Some(limits) => {
            check_limits(limits).map_err(invalid)?;
            let cgroup = settings.cgroup.as_ref().map_err(|why| {
                reply(
                    ErrorCode::Unsupported,
                    format!("resource limits need cgroups: {why}"),
                )
            })?;
            Some((cgroup.clone(), *limits))
        }
        None => None,
    };

    let machine_wide = |setting: &str| -> Result<(), ErrorReply> {
        if settings.vm {
            Ok(())
        } else {
            Err(reply(
                ErrorCode::PermissionDenied,
                format!("the {setting} is not changed in test mode (not PID 1 of a VM)"),
            ))
        }
    };
    let failed = |setting: &str, error: &dyn std::fmt::Display| {
        reply(
            ErrorCode::Internal,
            format!("setting the {setting}: {error}"),
        )
    };
    if let Some(hostname) = &config.hostname {
        machine_wide("hostname")?;
        rustix::system::sethostname(hostname.as_bytes())
            .map_err(|errno| failed("hostname", &errno))?;
        std::fs::write("/etc/hostname", format!("{hostname}\n"))
            .map_err(|error| failed("hostname", &error))?;
    }
    if let Some(unix_ms) = config.clock_unix_ms {
        machine_wide("clock")?;
        let time = rustix::time::Timespec {
            tv_sec: (unix_ms / 1000) as i64,
            tv_nsec: ((unix_ms % 1000) * 1_000_000) as _,
        };
        rustix::time::clock_settime(rustix::time::ClockId::Realtime, time)
            .map_err(|errno| failed("clock", &errno))?;
    }
    if let Some(bytes) = &entropy {
        machine_wide("entropy")?;
        let random = rustix::fs::open(
            "/dev/random",
            OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| failed("entropy", &errno))?;
        crate::sys::add_entropy(&random, bytes).map_err(|error| failed("entropy", &error))?;
    }
    if let Some(machine_id) = &config.machine_id {
        machine_wide("machine id")?;
        std::fs::write("/etc/machine-id", format!("{machine_id}\n"))
            .map_err(|error| failed("machine id", &error))?;
    }
    if let Some(workspace) = workspace {
        std::fs::create_dir_all(&workspace).map_err(|error| {
            reply(
                ErrorCode::Internal,
                format!("creating the workspace {}: {error}", workspace.display()),
            )
        })?;
        settings.workspace = workspace;
    }
    if let Some(env) = config.env {
        settings.env = env;
    }
    if let Some((cgroup, limits)) = cgroup {
        cgroup.apply(&limits).map_err(|error| {
            // A missing file: the kernel has no such controller enabled.
            let code = if error.error.kind() == std::io::ErrorKind::NotFound {
                ErrorCode::Unsupported
            } else {
                ErrorCode::Internal
            };
            reply(
                code,
                format!(
                    "setting the limits: writing {:?} to {}: {}",
                    error.value,
                    error.file.display(),
                    error.error
                ),
            )
        })?;
    }
    Ok(())
}

/// Each limit that is set must be one the kernel can take: no zero (which would stop
/// everything), and a CPU quota of at least 1 ms per 100 ms period.
fn check_limits(limits: &GuestLimits) -> Result<(), String> {
    if limits.memory_bytes == Some(0) {
        return Err("limits.memory_bytes must be at least 1".into());
    }
    if limits.pids == Some(0) {
        return Err("limits.pids must be at least 1".into());
    }
    if limits.cpu_millis.is_some_and(|millis| millis < 10) {
        return Err("limits.cpu_millis must be at least 10 (1 ms per 100 ms)".into());
    }
    Ok(())
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(hex.get(at..at + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_settings() -> Settings {
        Settings {
            workspace: PathBuf::from("/nonexistent"),
            env: BTreeMap::new(),
            vm: false,
            cgroup: Err(NO_CGROUPS_IN_TEST_MODE.into()),
        }
    }

    #[test]
    fn hex() {
        assert_eq!(decode_hex("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(decode_hex("0"), None);
        assert_eq!(decode_hex("zz"), None);
        assert_eq!(decode_hex("é0"), None);
    }

    #[test]
    fn machine_wide_settings_are_refused_in_test_mode() {
        let mut settings = test_settings();
        let config = GuestConfig {
            hostname: Some("box".into()),
            ..GuestConfig::default()
        };
        let error = apply(&mut settings, config).unwrap_err();
        assert_eq!(error.code, ErrorCode::PermissionDenied);
        assert!(error.message.contains("hostname"), "{}", error.message);
        let too_much = GuestConfig {
            entropy_hex: Some("00".repeat(MAX_ENTROPY + 1)),
            ..GuestConfig::default()
        };
        assert_eq!(
            apply(&mut settings, too_much).unwrap_err().code,
            ErrorCode::InvalidRequest
        );
    }

    #[test]
    fn limits_are_refused_without_cgroups_before_anything_is_applied() {
        let mut settings = test_settings();
        let config = GuestConfig {
            env: Some(BTreeMap::from([("A".into(), "1".into())])),
            limits: Some(GuestLimits {
                memory_bytes: Some(64 << 20),
                ..GuestLimits::default()
            }),
            ..GuestConfig::default()
        };
        let error = apply(&mut settings, config).unwrap_err();
        assert_eq!(error.code, ErrorCode::Unsupported);
        assert!(error.message.contains("cgroups"), "{}", error.message);
        assert!(settings.env.is_empty(), "nothing was applied");
        for bad in [
            GuestLimits {
                pids: Some(0),
                ..GuestLimits::default()
            },
            GuestLimits {
                cpu_millis: Some(9),
                ..GuestLimits::default()
            },
        ] {
            let config = GuestConfig {
                limits: Some(bad),
                ..GuestConfig::default()
            };
            let error = apply(&mut settings, config).unwrap_err();
            assert_eq!(error.code, ErrorCode::InvalidRequest, "{bad:?}");
        }
    }

    #[test]
    fn limits_are_written_to_the_cgroup() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), "memory pids cpu").unwrap();
        let mut settings = test_settings();
        settings.cgroup = Ok(Cgroup::set_up(root.path()).unwrap());
        let config = GuestConfig {
            limits: Some(GuestLimits {
                pids: Some(64),
                ..GuestLimits::default()
            }),
            ..GuestConfig::default()
        };
        apply(&mut settings, config).unwrap();
        let read = |file: &str| std::fs::read_to_string(root.path().join("sandbox").join(file));
        assert_eq!(read("pids.max").unwrap(), "64");
        assert_eq!(read("memory.max").unwrap(), "max");
    }

    #[test]
    fn workspace_and_env_are_set() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = test_settings();
        let workspace = dir.path().join("a/b");
        let config = GuestConfig {
            workspace: Some(workspace.to_string_lossy().into_owned()),
            env: Some(BTreeMap::from([("A".into(), "1".into())])),
            ..GuestConfig::default()
        };
        apply(&mut settings, config).unwrap();
        assert!(workspace.is_dir());
        assert_eq!(settings.workspace, workspace);
        assert_eq!(settings.env["A"], "1");
    }
}
