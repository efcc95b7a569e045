//! The system calls rustix does not wrap (signalfd, waitpid of any child, vsock,
//! finit_module, RNDADDENTROPY, the classic network ioctls) and the steps of a forked child
//! before its exec (joining a cgroup, resetting `oom_score_adj`): small safe functions
//! around `libc`, each unsafe block with its reason.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

fn check(result: libc::c_int) -> io::Result<libc::c_int> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

/// Blocks SIGCHLD and returns a non-blocking signalfd that becomes readable when a child
/// changes state. Children get an empty signal mask from `std::process::Command`.
pub fn sigchld_fd() -> io::Result<OwnedFd> {
    // SAFETY: the sigset is initialised by sigemptyset before use; the pointers are to
    // locals that outlive the calls.
    unsafe {
        let mut mask: libc::sigset_t = zeroed();
        libc::sigemptyset(&mut mask);
        libc::sigaddset(&mut mask, libc::SIGCHLD);
        check(libc::sigprocmask(
            libc::SIG_BLOCK,
            &mask,
            std::ptr::null_mut(),
        ))?;
        let fd = check(libc::signalfd(
            -1,
            &mask,
            libc::SFD_NONBLOCK | libc::SFD_CLOEXEC,
        ))?;
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Empties a signalfd (its readiness is all that matters).
pub fn drain_signalfd(fd: &OwnedFd) {
    let mut buffer = [0u8; 128 * 8];
    while let Ok(read) = rustix::io::read(fd, &mut buffer) {
        if read == 0 {
            break;
        }
    }
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Code(i32),
    Signal(i32),
}

/// Reaps one child that ended, if any: `(pid, how)`.
pub fn reap_any(block: bool) -> Option<(i32, Ended)> {
    loop {
        let mut status = 0;
        let flags = if block { 0 } else { libc::WNOHANG };
        // SAFETY: `status` is a valid out pointer for the call.
        let pid = unsafe { libc::waitpid(-1, &mut status, flags) };
        if pid < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        if pid <= 0 {
            return None;
        }
        if libc::WIFEXITED(status) {
            return Some((pid, Ended::Code(libc::WEXITSTATUS(status))));
        }
        if libc::WIFSIGNALED(status) {
            return Some((pid, Ended::Signal(libc::WTERMSIG(status))));
        }
        // Stopped or continued: not an end.
    }
}

/// Sends `signal` to the process group `pgid`; a group that is gone is not an error.
pub fn kill_group(pgid: i32, signal: i32) {
    if pgid > 1 {
        // SAFETY: kill has no memory effects; a negative pid names the group.
        unsafe {
            libc::kill(-pgid, signal);
        }
    }
}

/// Listens on AF_VSOCK `port` for any CID.
pub fn vsock_listen(port: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket calls; the address is a fully initialised sockaddr_vm whose
    // size is passed with it; the fd is owned by the OwnedFd right after creation.
    unsafe {
        let fd = check(libc::socket(
            libc::AF_VSOCK,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        ))?;
        let socket = OwnedFd::from_raw_fd(fd);
        let mut address: libc::sockaddr_vm = zeroed();
        address.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        address.svm_port = port;
        address.svm_cid = libc::VMADDR_CID_ANY;
        check(libc::bind(
            socket.as_raw_fd(),
            (&address as *const libc::sockaddr_vm).cast(),
            size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        ))?;
        check(libc::listen(socket.as_raw_fd(), 8))?;
        Ok(socket)
    }
}

/// Loads a kernel module from its file with `parameters` (`name=value`, space-separated;
/// `MODULE_INIT_COMPRESSED_FILE` for `.ko.xz` and the like, which the kernel decompresses
/// itself when built to).
pub fn finit_module(module: &OwnedFd, parameters: &str, compressed: bool) -> io::Result<()> {
    const MODULE_INIT_COMPRESSED_FILE: libc::c_int = 4;
    let flags = if compressed {
        MODULE_INIT_COMPRESSED_FILE
    } else {
        0
    };
    let parameters = std::ffi::CString::new(parameters)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in module parameters"))?;
    // SAFETY: `parameters` is a valid NUL-terminated string that outlives the call.
    let result = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            module.as_raw_fd(),
            parameters.as_ptr(),
            flags,
        )
    };
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Credits `bytes` to the kernel's entropy pool (`RNDADDENTROPY` on /dev/random).
pub fn add_entropy(random: &OwnedFd, bytes: &[u8]) -> io::Result<()> {
    const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let words = bytes.len().div_ceil(4);
    let mut info = vec![0u32; 2 + words];
    info[0] = (bytes.len() * 8) as u32;
    info[1] = bytes.len() as u32;
    for (index, byte) in bytes.iter().enumerate() {
        info[2 + index / 4] |= u32::from(*byte) << (8 * (index % 4));
    }
    // SAFETY: `info` is a rand_pool_info laid out as the kernel expects, with buf_size
    // bytes of buffer behind the header; it lives across the call.
    check(unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) })?;
    Ok(())
}

fn inet_socket() -> io::Result<OwnedFd> {
    // SAFETY: a plain socket call whose fd is owned right away.
    unsafe {
        let fd = check(libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            0,
        ))?;
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}"),
        ));
    }
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    Ok(request)
}

fn sockaddr_in(address: Ipv4Addr) -> libc::sockaddr {
    let inet = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(address.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size on Linux; the bytes are copied.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(inet) }
}

fn interface_ioctl(
    socket: RawFd,
    request: libc::c_ulong,
    ifreq: &mut libc::ifreq,
) -> io::Result<()> {
    // SAFETY: `ifreq` is a valid, initialised ifreq for the duration of the call.
    check(unsafe { libc::ioctl(socket, request as _, ifreq as *mut libc::ifreq) })?;
    Ok(())
}

/// Brings interface `name` up (`SIOCSIFFLAGS` with `IFF_UP`).
pub fn interface_up(name: &str) -> io::Result<()> {
    let socket = inet_socket()?;
    let mut request = ifreq(name)?;
    interface_ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe {
        request.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    interface_ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &mut request)
}

/// Gives interface `name` the address `address/prefix`.
pub fn interface_address(name: &str, address: Ipv4Addr, prefix: u8) -> io::Result<()> {
    let socket = inet_socket()?;
    let mut request = ifreq(name)?;
    request.ifr_ifru.ifru_addr = sockaddr_in(address);
    interface_ioctl(socket.as_raw_fd(), libc::SIOCSIFADDR, &mut request)?;
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    };
    let mut request = ifreq(name)?;
    request.ifr_ifru.ifru_netmask = sockaddr_in(Ipv4Addr::from(mask));
    interface_ioctl(socket.as_raw_fd(), libc::SIOCSIFNETMASK, &mut request)
}

/// Adds the default route through `gateway` (`SIOCADDRT`).
pub fn add_default_route(gateway: Ipv4Addr) -> io::Result<()> {
    let socket = inet_socket()?;
    // SAFETY: rtentry is plain old data; all zeroes is a valid value.
    let mut route: libc::rtentry = unsafe { zeroed() };
    route.rt_dst = sockaddr_in(Ipv4Addr::UNSPECIFIED);
    route.rt_genmask = sockaddr_in(Ipv4Addr::UNSPECIFIED);
    route.rt_gateway = sockaddr_in(gateway);
    route.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    // SAFETY: `route` is a valid rtentry for the duration of the call (rt_dev stays null:
    // the kernel picks the interface that reaches the gateway).
    check(unsafe {
        libc::ioctl(
            socket.as_raw_fd(),
            libc::SIOCADDRT as _,
            &mut route as *mut libc::rtentry,
        )
    })?;
    Ok(())
}

/// Forks; `None` in the child. Only called from PID 1, which has a single thread.
pub fn fork() -> io::Result<Option<i32>> {
    // SAFETY: the caller is single-threaded, so the child's copy of every lock and
    // allocator state is consistent.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        pid => Ok(Some(pid)),
    }
}

/// Ends the process at once (a forked child must not run its parent's exit path).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(code) }
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is open as `procs`, by
/// writing its pid there. For a forked child before exec: async-signal-safe, no allocation.
pub fn join_cgroup(procs: RawFd) -> io::Result<()> {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let mut digits = [0u8; 20];
    let text = decimal(pid as u64, &mut digits);
    // SAFETY: `text` is a valid buffer of `text.len()` bytes for the duration of the call.
    let written = unsafe { libc::write(procs, text.as_ptr().cast(), text.len()) };
    if written < 0 {
        return Err(io::Error::last_os_error());
    }
    if written as usize != text.len() {
        return Err(io::Error::from(io::ErrorKind::WriteZero));
    }
    Ok(())
}

/// Sets the calling process's `oom_score_adj` back to 0 (the agent's own −1000 is
/// inherited across fork, and would make its children unkillable by the OOM killer too).
/// For a forked child before exec: async-signal-safe, no allocation.
pub fn reset_oom_score_adj() -> io::Result<()> {
    // SAFETY: the path is a valid NUL-terminated string; the descriptor is closed before
    // returning, whatever the write gave.
    unsafe {
        let fd = check(libc::open(
            c"/proc/self/oom_score_adj".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        ))?;
        let written = libc::write(fd, b"0".as_ptr().cast(), 1);
        let error = io::Error::last_os_error();
        libc::close(fd);
        if written != 1 {
            return Err(error);
        }
    }
    Ok(())
}

/// `value` in decimal, in `buffer` (20 digits hold any u64).
fn decimal(mut value: u64, buffer: &mut [u8; 20]) -> &[u8] {
    let mut start = buffer.len();
    loop {
        start -= 1;
        buffer[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            return &buffer[start..];
        }
    }
}

/// poll(2) over raw descriptors; an interrupted poll reports nothing ready.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    // SAFETY: `fds` is a valid array of `fds.len()` pollfd structures.
    let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if ready < 0 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::EINTR) {
            return Ok(0);
        }
        return Err(error);
    }
    Ok(ready as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_without_allocation() {
        let mut buffer = [0u8; 20];
        assert_eq!(decimal(0, &mut buffer), b"0");
        assert_eq!(decimal(4_194_304, &mut buffer), b"4194304");
        assert_eq!(decimal(u64::MAX, &mut buffer), b"18446744073709551615");
    }

    #[test]
    fn joining_a_cgroup_writes_the_pid() {
        let file = tempfile::tempfile().unwrap();
        join_cgroup(file.as_raw_fd()).unwrap();
        let mut file = file;
        use std::io::{Read, Seek};
        file.rewind().unwrap();
        let mut text = String::new();
        file.read_to_string(&mut text).unwrap();
        assert_eq!(text, std::process::id().to_string());
    }
}
