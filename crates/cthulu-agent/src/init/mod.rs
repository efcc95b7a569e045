//! PID 1 of a microVM: mounts the API filesystems (cgroup2 among them), loads the virtio
//! modules, brings up `lo`, reads the `cthulu.*` options of the kernel command line
//! (switching into a root disk and configuring `eth0` when asked), mounts a tmpfs on the
//! workspace when the root stays the initramfs, sets up the sandbox cgroup (see
//! [`crate::cgroup`]), then splits: PID 1 stays a small reaper that restarts the server
//! when it dies, and a forked child serves the host. So orphans reparented to PID 1 are
//! reaped without the server losing its own children's statuses. Both keep
//! `oom_score_adj` −1000, so the OOM killer never picks them (a memory bomb in the sandbox
//! cannot take the agent down); what they run starts at 0 again.
//!
//! The initramfs root is a tmpfs limited to half the RAM; the workspace of an
//! initramfs-only image is a tmpfs of its own, of 90% of the RAM, so an upload can use most
//! of the guest's memory. Either way, the files of such an image live in the guest's RAM
//! (and count against it). With a root disk, the workspace is the disk's.

mod cmdline;

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags};
use rustix::mount::{MountFlags, MountPropagationFlags};

use crate::cgroup::{self, Cgroup};
use crate::link::ChannelSpec;
use crate::log::log;
use crate::server::Settings;
use crate::sys;

/// The modules to load, one absolute path per line, in load order.
const MODULE_LIST: &str = "/etc/cthulu/modules";
/// Where execs run and files go unless `Configure` says otherwise.
const DEFAULT_WORKSPACE: &str = "/workspace";
/// How long devices (the root disk, eth0) may take to appear after their modules load.
const DEVICE_WAIT: Duration = Duration::from_secs(5);

pub fn run() -> ! {
    mount_api_filesystems();
    ensure_standard_fds();
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    load_modules(&cmdline);
    if let Err(error) = sys::interface_up("lo") {
        log!("bringing up lo: {error}");
    }
    let (options, complaints) = cmdline::parse(&cmdline);
    for complaint in complaints {
        log!("kernel command line: {complaint}");
    }
    let mut on_disk = false;
    if let Some(root) = &options.root {
        match switch_root(root) {
            Ok(()) => on_disk = true,
            Err(error) => {
                log!("switching into the root disk {root}: {error}; staying in the initramfs")
            }
        }
    }
    if let Some(net) = &options.net {
        if let Err(error) = configure_network(net) {
            log!("configuring eth0: {error}");
        }
    }
    if let Err(error) = std::fs::create_dir_all(DEFAULT_WORKSPACE) {
        log!("creating {DEFAULT_WORKSPACE}: {error}");
    }
    if !on_disk {
        mount_workspace();
    }
    let cgroup = Cgroup::set_up(Path::new(cgroup::ROOT)).map_err(|error| {
        log!("setting up the sandbox cgroup: {error}; resource limits are unsupported");
        format!("setting up the sandbox cgroup failed: {error}")
    });
    // Allocations succeed as on a host (whose RAM dwarfs a sandbox's limit): a program
    // over its memory limit meets the cgroup's OOM killer, reported as `oom_killed`,
    // rather than a refused allocation the VM's small RAM would cause under the
    // kernel's default heuristic.
    if let Err(error) = std::fs::write("/proc/sys/vm/overcommit_memory", "1") {
        log!("allowing memory overcommit: {error}");
    }
    // Inherited by the server; its children set theirs back to 0 before they exec.
    if let Err(error) = std::fs::write("/proc/self/oom_score_adj", "-1000") {
        log!("protecting the agent from the OOM killer: {error}");
    }
    let settings = Settings {
        workspace: DEFAULT_WORKSPACE.into(),
        env: Default::default(),
        vm: true,
        cgroup,
    };
    reap_and_serve(&options.channel, settings)
}

fn mount_api_filesystems() {
    let mounts: [(&str, &str, &str, MountFlags); 7] = [
        (
            "proc",
            "/proc",
            "",
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        ),
        (
            "sysfs",
            "/sys",
            "",
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        ),
        // Moved along with /sys when switching into a root disk.
        (
            "cgroup2",
            cgroup::ROOT,
            "",
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        ),
        ("devtmpfs", "/dev", "mode=0755", MountFlags::NOSUID),
        (
            "devpts",
            "/dev/pts",
            "newinstance,ptmxmode=0666,mode=0620",
            MountFlags::NOSUID | MountFlags::NOEXEC,
        ),
        (
            "tmpfs",
            "/run",
            "mode=0755",
            MountFlags::NOSUID | MountFlags::NODEV,
        ),
        (
            "tmpfs",
            "/tmp",
            "mode=1777",
            MountFlags::NOSUID | MountFlags::NODEV,
        ),
    ];
    for (fstype, target, data, flags) in mounts {
        let _ = std::fs::create_dir_all(target);
        let data = std::ffi::CString::new(data).unwrap_or_default();
        match rustix::mount::mount(fstype, target, fstype, flags, Some(data.as_c_str())) {
            Ok(()) | Err(rustix::io::Errno::BUSY) => {}
            Err(errno) => log!("mounting {fstype} on {target}: {errno}"),
        }
    }
    // Terminals come from the devpts instance just mounted.
    let _ = std::fs::remove_file("/dev/ptmx");
    if let Err(error) = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx") {
        log!("linking /dev/ptmx to pts/ptmx: {error}");
    }
}

/// A tmpfs on the default workspace, before anything is written there: the initramfs root
/// may hold only half the RAM.
fn mount_workspace() {
    let data = c"size=90%,mode=0755";
    if let Err(errno) = rustix::mount::mount(
        "tmpfs",
        DEFAULT_WORKSPACE,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        Some(data),
    ) {
        log!("mounting a tmpfs on {DEFAULT_WORKSPACE}: {errno}");
    }
}

/// stdin, stdout and stderr on the console (the kernel opens them only when the
/// initramfs has a /dev/console).
fn ensure_standard_fds() {
    for fd in 0..3 {
        if rustix::io::fcntl_getfd(
            // SAFETY: only probed; a closed fd gives EBADF.
            unsafe { rustix::fd::BorrowedFd::borrow_raw(fd) },
        )
        .is_err()
        {
            let flags = if fd == 0 {
                OFlags::RDONLY
            } else {
                OFlags::WRONLY
            };
            if let Ok(console) =
                rustix::fs::open("/dev/console", flags | OFlags::NOCTTY, Mode::empty())
            {
                std::mem::forget(console);
            }
        }
    }
}

fn load_modules(cmdline: &str) {
    let list = match std::fs::read_to_string(MODULE_LIST) {
        Ok(list) => list,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return,
        Err(error) => {
            log!("reading {MODULE_LIST}: {error}");
            return;
        }
    };
    for path in list.lines().map(str::trim) {
        if path.is_empty() || path.starts_with('#') {
            continue;
        }
        let module = match rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()) {
            Ok(module) => module,
            Err(errno) => {
                log!("opening the module {path}: {errno}");
                continue;
            }
        };
        let compressed = [".xz", ".zst", ".gz"]
            .iter()
            .any(|suffix| path.ends_with(suffix));
        let name = Path::new(path)
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.split('.').next())
            .unwrap_or_default();
        let parameters = cmdline::module_parameters(cmdline, name);
        match sys::finit_module(&module, &parameters, compressed) {
            Ok(()) => {}
            Err(error) if error.raw_os_error() == Some(libc::EEXIST) => {}
            Err(error) => log!("loading the module {path}: {error}"),
        }
    }
}

fn wait_for(path: &Path) -> io::Result<()> {
    let deadline = Instant::now() + DEVICE_WAIT;
    while !path.exists() {
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} did not appear", path.display()),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Mounts the ext4 root disk and switches into it, the API filesystems moved along. The
/// agent keeps running from memory (its binary is mapped from the initramfs).
fn switch_root(device: &str) -> io::Result<()> {
    const NEW_ROOT: &str = "/newroot";
    wait_for(Path::new(device))?;
    std::fs::create_dir_all(NEW_ROOT)?;
    rustix::mount::mount(device, NEW_ROOT, "ext4", MountFlags::empty(), None)?;
    for api in ["/dev", "/proc", "/sys", "/run", "/tmp"] {
        let target = format!("{NEW_ROOT}{api}");
        std::fs::create_dir_all(&target)?;
        rustix::mount::mount_move(api, target.as_str())?;
    }
    std::env::set_current_dir(NEW_ROOT)?;
    rustix::mount::mount_move(".", "/")?;
    rustix::process::chroot(".")?;
    std::env::set_current_dir("/")?;
    // Mounts made later (by programs in the sandbox) stay private to this root.
    let _ = rustix::mount::mount_change(
        "/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    );
    if !Path::new("/bin/sh").exists() {
        log!("the root disk {device} has no /bin/sh: shell commands will fail");
    }
    Ok(())
}

fn configure_network(net: &cmdline::NetConfig) -> io::Result<()> {
    wait_for(Path::new("/sys/class/net/eth0"))?;
    sys::interface_address("eth0", net.address, net.prefix)?;
    sys::interface_up("eth0")?;
    if let Some(gateway) = net.gateway {
        sys::add_default_route(gateway)?;
    }
    if let Some(dns) = net.dns {
        std::fs::create_dir_all("/etc")?;
        std::fs::write("/etc/resolv.conf", format!("nameserver {dns}\n"))?;
    }
    Ok(())
}

/// PID 1 from here on: forks the server and reaps whatever ends, restarting the server
/// when it is what ended (after a pause that grows while it keeps dying young).
fn reap_and_serve(channel: &ChannelSpec, settings: Settings) -> ! {
    let mut pause = Duration::from_millis(100);
    loop {
        let started = Instant::now();
        let server = match sys::fork() {
            Ok(None) => {
                let result =
                    std::panic::catch_unwind(|| crate::server::serve(channel, settings.clone()));
                match result {
                    Ok(Ok(())) => sys::exit_now(0),
                    Ok(Err(error)) => {
                        log!("the server failed: {error}");
                        sys::exit_now(1)
                    }
                    // The panic hook already said why.
                    Err(_) => sys::exit_now(101),
                }
            }
            Ok(Some(pid)) => pid,
            Err(error) => {
                log!("forking the server: {error}");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        loop {
            match sys::reap_any(true) {
                Some((pid, ended)) if pid == server => {
                    log!("the server (pid {pid}) ended ({ended:?}); restarting it");
                    break;
                }
                Some(_) => {}
                None => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        if started.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_secs(5));
        } else {
            pause = Duration::from_millis(100);
        }
    }
}
