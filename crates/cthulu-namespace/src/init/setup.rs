//! The sandbox's filesystem, built by PID 1 in its new mount namespace, then entered with
//! `pivot_root`:
//!
//! ```text
//! /                  <state>/root (a bind of itself: /root, /home, /var... are written there)
//! /usr /etc          overlayfs: the host's directory below, <state>/layer/upper/<name> above
//! /bin /lib* /sbin   the host's symlinks (merged /usr), or overlays like /usr
//! /workspace         bind of <state>/workspace
//! /tmp /dev/shm      tmpfs
//! /proc              a proc of the sandbox's pid namespace
//! /dev               tmpfs with null, zero, full, random, urandom, tty bound from the host; devpts
//! ```
//!
//! Nothing propagates back to the host: `/` is made private first.

use std::path::Path;

use rustix::fs::{Mode, OFlags};
use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};

/// Host system directories shown in the sandbox (each an overlay, or a symlink when the
/// host has a symlink there).
pub const SYSTEM_DIRS: [&str; 9] = [
    "usr", "etc", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "opt",
];
/// Empty directories of the root.
pub const ROOT_DIRS: [&str; 10] = [
    "workspace",
    "tmp",
    "proc",
    "dev",
    "root",
    "home",
    "var",
    "run",
    "mnt",
    "srv",
];
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

type SetupResult = Result<(), String>;

fn failed(what: &str, path: &Path, error: impl std::fmt::Display) -> String {
    format!("{what} {}: {error}", path.display())
}

fn mkdir(path: &Path) -> SetupResult {
    match std::fs::create_dir_all(path) {
        Ok(()) => Ok(()),
        Err(error) => Err(failed("creating", path, error)),
    }
}

fn mount(source: &str, target: &Path, fs: &str, flags: MountFlags, data: &str) -> SetupResult {
    let data =
        std::ffi::CString::new(data).map_err(|_| failed("mounting", target, "NUL in options"))?;
    rustix::mount::mount(source, target, fs, flags, data.as_c_str())
        .map_err(|errno| failed(&format!("mounting {fs} on"), target, errno))
}

fn bind(source: &Path, target: &Path) -> SetupResult {
    rustix::mount::mount_bind(source, target)
        .map_err(|errno| failed(&format!("binding {} to", source.display()), target, errno))
}

/// Builds the filesystem under `<state>/root`, sets the hostname, brings loopback up,
/// pivots into the new root and sets no_new_privs.
pub fn build(state: &Path, hostname: &[u8]) -> SetupResult {
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    )
    .map_err(|errno| format!("making / private: {errno}"))?;
    let root = state.join("root");
    mkdir(&root)?;
    bind(&root, &root)?;
    for name in ROOT_DIRS {
        mkdir(&root.join(name))?;
    }
    system_dirs(state, &root)?;
    bind(&state.join("workspace"), &root.join("workspace"))?;
    let private = MountFlags::NOSUID | MountFlags::NODEV;
    mount("tmpfs", &root.join("tmp"), "tmpfs", private, "mode=1777")?;
    dev(&root)?;
    mount(
        "proc",
        &root.join("proc"),
        "proc",
        private | MountFlags::NOEXEC,
        "",
    )?;
    rustix::system::sethostname(hostname)
        .map_err(|errno| format!("setting the hostname: {errno}"))?;
    loopback_up()?;
    enter(&root)?;
    // Not dumpable: init's memory was mapped in the host's user namespace, so ptrace and
    // /proc/1/{fd,environ,mem} now need CAP_SYS_PTRACE there, which the sandbox's root
    // lacks. Its descriptors reach host files (init.log, the control socket).
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .map_err(|errno| format!("making init not dumpable: {errno}"))?;
    rustix::thread::set_no_new_privs(true).map_err(|errno| format!("setting no_new_privs: {errno}"))
}

/// Overlays (or symlinks) of the host's system directories.
fn system_dirs(state: &Path, root: &Path) -> SetupResult {
    for name in SYSTEM_DIRS {
        let host = Path::new("/").join(name);
        let Ok(metadata) = std::fs::symlink_metadata(&host) else {
            continue;
        };
        let target = root.join(name);
        if metadata.file_type().is_symlink() {
            let link =
                std::fs::read_link(&host).map_err(|error| failed("reading", &host, error))?;
            match std::os::unix::fs::symlink(&link, &target) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(error) => return Err(failed("creating", &target, error)),
            }
            continue;
        }
        if !metadata.is_dir() {
            continue;
        }
        let upper = state.join("layer/upper").join(name);
        let work = state.join("layer/work").join(name);
        mkdir(&upper)?;
        mkdir(&work)?;
        mkdir(&target)?;
        mount(
            "overlay",
            &target,
            "overlay",
            MountFlags::empty(),
            &overlay_options(&host, &upper, &work),
        )?;
    }
    Ok(())
}

/// The options of an overlay of `lower` (paths were checked for `,` and `:` by the
/// provider).
pub fn overlay_options(lower: &Path, upper: &Path, work: &Path) -> String {
    format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    )
}

/// A minimal /dev: device nodes cannot be created in a user namespace, so the host's are
/// bound onto empty files.
fn dev(root: &Path) -> SetupResult {
    let dev = root.join("dev");
    mount("tmpfs", &dev, "tmpfs", MountFlags::NOSUID, "mode=755")?;
    for name in DEVICES {
        let target = dev.join(name);
        std::fs::File::create(&target).map_err(|error| failed("creating", &target, error))?;
        bind(&Path::new("/dev").join(name), &target)?;
    }
    let pts = dev.join("pts");
    mkdir(&pts)?;
    mount(
        "devpts",
        &pts,
        "devpts",
        MountFlags::NOSUID | MountFlags::NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620",
    )?;
    let shm = dev.join("shm");
    mkdir(&shm)?;
    mount(
        "tmpfs",
        &shm,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        "mode=1777",
    )?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let path = dev.join(link);
        std::os::unix::fs::symlink(target, &path)
            .map_err(|error| failed("creating", &path, error))?;
    }
    Ok(())
}

/// `ip link set lo up` in the new network namespace.
fn loopback_up() -> SetupResult {
    let socket = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::DGRAM,
        None,
    )
    .map_err(|errno| format!("opening a socket for loopback: {errno}"))?;
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *slot = *byte as libc::c_char;
    }
    use std::os::fd::AsRawFd;
    // SAFETY: SIOCGIFFLAGS reads an ifreq we own, valid for the call, on an open socket.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) } < 0 {
        return Err(format!(
            "reading the flags of lo: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: the flags member is the one SIOCGIFFLAGS filled in.
    unsafe { request.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    // SAFETY: as above, with the flags to set.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) } < 0 {
        return Err(format!(
            "bringing lo up: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// `pivot_root` into `root` and detach the old root, so no host path stays reachable.
fn enter(root: &Path) -> SetupResult {
    let directory = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| failed("opening", root, errno))?;
    rustix::process::fchdir(&directory).map_err(|errno| failed("entering", root, errno))?;
    // Stacking the old root under the new one, then detaching it, needs no directory for it.
    rustix::process::pivot_root(".", ".")
        .map_err(|errno| failed("pivot_root into", root, errno))?;
    rustix::mount::unmount(".", UnmountFlags::DETACH)
        .map_err(|errno| format!("detaching the old root: {errno}"))?;
    rustix::process::chdir("/workspace")
        .map_err(|errno| format!("entering /workspace: {errno}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_options_name_all_three_layers() {
        assert_eq!(
            overlay_options(
                Path::new("/usr"),
                Path::new("/s/u/usr"),
                Path::new("/s/w/usr")
            ),
            "lowerdir=/usr,upperdir=/s/u/usr,workdir=/s/w/usr"
        );
    }
}
