//! The sandbox's filesystem, built by PID 1 in its new mount namespace, then entered with
//! `pivot_root`:
//!
//! ```text
//! /                  <state>/root (a bind of itself: /root, /home, /var... are written there)
//! /usr /etc          overlayfs: the host's directory below, <state>/layer/upper/<name> above
//! /bin /lib* /sbin   the host's symlinks (merged /usr), or overlays like /usr
//!                    (with an image: every top-level directory of the image, /var, /root...
//!                    included, is such an overlay, every top-level symlink is copied)
//! /workspace         bind of <state>/workspace
//! /tmp /dev/shm      tmpfs
//! /proc              a proc of the sandbox's pid namespace
//! /dev               tmpfs with null, zero, full, random, urandom, tty bound from the host; devpts
//! ```
//!
//! Nothing propagates back to the host: `/` is made private first.
//!
//! The overlays are mounted with `userxattr`: in a user namespace overlayfs may not write
//! its `trusted.overlay.*` attributes, and without attributes it cannot make a directory
//! opaque (a directory removed from the lower layer and made again failed with EIO). With
//! it the upper layer holds whiteouts (character devices 0:0) and `user.overlay.*`
//! attributes (`opaque`...), which checkpoints keep.

use std::path::Path;

use rustix::fs::{Mode, OFlags};
use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};

use super::{IdMapping, InitConfig};

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
/// Top-level names of an image that are the sandbox's own mounts, never overlays.
const MOUNTED_ROOT_DIRS: [&str; 4] = ["workspace", "tmp", "proc", "dev"];
/// Lower directories the sandbox's root is given (with their immediate subdirectories), so
/// installs there work: lower files keep their owners, and the host's (or an image's)
/// root is nobody inside. Made in the upper layer before the mount, with the lower modes.
const GIVEN_DIRS: [&str; 1] = ["usr/local"];

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

/// The top-level entries of the lower root that the sandbox shows: for the host the
/// [`SYSTEM_DIRS`] it has, for an image every directory and symlink but those the sandbox
/// mounts itself. Names overlayfs options cannot carry are refused.
pub fn lower_entries(lower: &Path, image: bool) -> Result<Vec<String>, String> {
    if !image {
        return Ok(SYSTEM_DIRS
            .iter()
            .filter(|name| std::fs::symlink_metadata(lower.join(name)).is_ok())
            .map(|name| (*name).to_owned())
            .collect());
    }
    let entries = std::fs::read_dir(lower).map_err(|error| failed("listing", lower, error))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|error| failed("listing", lower, error))?;
        let Ok(name) = entry.file_name().into_string() else {
            return Err(failed(
                "using the image",
                &entry.path(),
                "the name is not UTF-8",
            ));
        };
        if MOUNTED_ROOT_DIRS.contains(&name.as_str()) {
            continue;
        }
        if name.contains([',', ':', '\\']) {
            return Err(failed(
                "using the image",
                &entry.path(),
                "overlayfs options cannot carry `,`, `:` or `\\` in a name",
            ));
        }
        let kind = entry
            .file_type()
            .map_err(|error| failed("reading", &entry.path(), error))?;
        if kind.is_dir() || kind.is_symlink() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Makes the directories of the sandbox's filesystem, before the namespaces exist (as
/// the host user that owns the state directory): `root/`, its directories and the
/// workspace belong to the sandbox's root (`ids`); so do the overlays' directories
/// (overlayfs in a user namespace wants its mounter to own them). `image` is the lower
/// root when the sandbox has one (the host's `/` otherwise).
pub fn prepare(state: &Path, ids: IdMapping, image: Option<&Path>) -> SetupResult {
    let root = state.join("root");
    let mut owned = vec![root.clone(), state.join("workspace")];
    mkdir(&root)?;
    for name in ROOT_DIRS {
        mkdir(&root.join(name))?;
        owned.push(root.join(name));
    }
    for layer in ["layer/upper", "layer/work"] {
        mkdir(&state.join(layer))?;
    }
    let lower = image.unwrap_or(Path::new("/"));
    for name in lower_entries(lower, image.is_some())? {
        if !std::fs::symlink_metadata(lower.join(&name)).is_ok_and(|metadata| metadata.is_dir()) {
            continue;
        }
        for layer in ["layer/upper", "layer/work"] {
            let dir = state.join(layer).join(&name);
            mkdir(&dir)?;
            owned.push(dir);
        }
    }
    for given in GIVEN_DIRS {
        owned.extend(give(lower, &state.join("layer/upper"), Path::new(given))?);
    }
    if rustix::process::geteuid().as_raw() != ids.uid {
        for path in owned {
            std::os::unix::fs::lchown(&path, Some(ids.uid), Some(ids.gid))
                .map_err(|error| failed("giving to the sandbox's root", &path, error))?;
        }
        // The sandbox's root builds its filesystem from here by relative paths: it may
        // pass through the state directory, not list it. Its files (the state, the
        // socket, the log) stay the server's.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(state, std::fs::Permissions::from_mode(0o711))
            .map_err(|error| failed("opening up", state, error))?;
    }
    Ok(())
}

/// Makes `upper/<given>` and its immediate subdirectories where `lower` has them and the
/// upper layer has nothing yet (a whiteout or an earlier copy wins), with the lower modes;
/// returns what it made, for the caller to give to the sandbox's root.
fn give(lower: &Path, upper: &Path, given: &Path) -> Result<Vec<std::path::PathBuf>, String> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let source = lower.join(given);
    let Ok(metadata) = std::fs::symlink_metadata(&source) else {
        return Ok(Vec::new());
    };
    if !metadata.is_dir() {
        return Ok(Vec::new());
    }
    let mut made = Vec::new();
    let mut make = |target: std::path::PathBuf, mode: u32| -> SetupResult {
        if std::fs::symlink_metadata(&target).is_ok() {
            return Ok(());
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode & 0o7777)
            .create(&target)
            .map_err(|error| failed("creating", &target, error))?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode & 0o7777))
            .map_err(|error| failed("setting the mode of", &target, error))?;
        made.push(target);
        Ok(())
    };
    make(upper.join(given), metadata.permissions().mode())?;
    let entries = std::fs::read_dir(&source).map_err(|error| failed("listing", &source, error))?;
    for entry in entries.flatten() {
        let Ok(metadata) = entry.path().symlink_metadata() else {
            continue;
        };
        if metadata.is_dir() {
            make(
                upper.join(given).join(entry.file_name()),
                metadata.permissions().mode(),
            )?;
        }
    }
    Ok(made)
}

/// Becomes the sandbox's root, builds the filesystem under `<state>/root`, sets the
/// hostname, brings loopback up, pivots into the new root and sets no_new_privs.
///
/// Everything is mounted as the sandbox's root (overlayfs refuses a mounter whose ids
/// the namespace does not map), by paths relative to the state directory, entered
/// before the change of ids: its ancestors (say `/root`) may be closed to that user.
pub fn build(state: &Path, config: &InitConfig) -> SetupResult {
    rustix::process::chdir(state).map_err(|errno| failed("entering", state, errno))?;
    let state = Path::new(".");
    // The image is opened as the host user and named through this descriptor: the
    // sandbox's root may not be allowed through the image's ancestors.
    let image = config
        .image
        .as_deref()
        .map(|image| {
            rustix::fs::open(
                image,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|errno| failed("opening the image", image, errno))
        })
        .transpose()?;
    become_root()?;
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    )
    .map_err(|errno| format!("making / private: {errno}"))?;
    let root = Path::new("root");
    bind(root, root)?;
    match &image {
        Some(descriptor) => {
            use std::os::fd::AsRawFd;
            let lower = format!("/proc/self/fd/{}", descriptor.as_raw_fd());
            let lower = Path::new(&lower);
            system_dirs(state, root, lower, lower_entries(lower, true)?)?;
        }
        None => system_dirs(
            state,
            root,
            Path::new("/"),
            lower_entries(Path::new("/"), false)?,
        )?,
    }
    drop(image);
    bind(&state.join("workspace"), &root.join("workspace"))?;
    let private = MountFlags::NOSUID | MountFlags::NODEV;
    // uid=0,gid=0 are ids of the sandbox: its root owns its /tmp.
    mount(
        "tmpfs",
        &root.join("tmp"),
        "tmpfs",
        private,
        "mode=1777,uid=0,gid=0",
    )?;
    dev(root)?;
    mount(
        "proc",
        &root.join("proc"),
        "proc",
        private | MountFlags::NOEXEC,
        "",
    )?;
    rustix::system::sethostname(config.hostname.as_bytes())
        .map_err(|errno| format!("setting the hostname: {errno}"))?;
    // With the host's network there is no loopback of our own to bring up.
    if !config.host_network {
        loopback_up()?;
    }
    enter(root)?;
    // Not dumpable: init's memory was mapped in the host's user namespace, so ptrace and
    // /proc/1/{fd,environ,mem} now need CAP_SYS_PTRACE there, which the sandbox's root
    // lacks. Its descriptors reach host files (init.log, the control socket). After the
    // change of uid, which resets this flag.
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .map_err(|errno| format!("making init not dumpable: {errno}"))?;
    rustix::thread::set_no_new_privs(true).map_err(|errno| format!("setting no_new_privs: {errno}"))
}

/// Takes the ids of the sandbox's root (0 inside) for good, dropping the host user's
/// supplementary groups. Until here init kept the host user's ids (which may be root's:
/// the groups must go before anything runs in the sandbox).
fn become_root() -> SetupResult {
    // SAFETY: plain system calls without memory arguments (setgroups with an empty list).
    unsafe {
        // Refused (EPERM) when setgroups is denied, as for a caller mapping only itself:
        // its groups are then unmapped in the sandbox and grant nothing there.
        libc::setgroups(0, std::ptr::null());
        if libc::setresgid(0, 0, 0) != 0 {
            return Err(format!(
                "becoming the sandbox's root (gid): {}",
                std::io::Error::last_os_error()
            ));
        }
        if libc::setresuid(0, 0, 0) != 0 {
            return Err(format!(
                "becoming the sandbox's root (uid): {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// Overlays (or symlinks) of the lower root's `names` (the host's system directories, or
/// an image's top level).
fn system_dirs(state: &Path, root: &Path, lower: &Path, names: Vec<String>) -> SetupResult {
    for name in names {
        let host = lower.join(&name);
        let Ok(metadata) = std::fs::symlink_metadata(&host) else {
            continue;
        };
        let target = root.join(&name);
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
        let upper = state.join("layer/upper").join(&name);
        let work = state.join("layer/work").join(&name);
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
        "lowerdir={},upperdir={},workdir={},userxattr",
        lower.display(),
        upper.display(),
        work.display()
    )
}

/// A minimal /dev: device nodes cannot be created in a user namespace, so the host's are
/// bound onto empty files.
fn dev(root: &Path) -> SetupResult {
    let dev = root.join("dev");
    mount(
        "tmpfs",
        &dev,
        "tmpfs",
        MountFlags::NOSUID,
        "mode=755,uid=0,gid=0",
    )?;
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
        "mode=1777,uid=0,gid=0",
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
            "lowerdir=/usr,upperdir=/s/u/usr,workdir=/s/w/usr,userxattr"
        );
    }
}
