//! `cthulu-agent`, the guest agent of a microVM: `/init` of its initramfs (see [`init`]),
//! serving the host over one byte stream with `cthulu-guest-protocol` (see [`server`]).
//! In test mode (not PID 1) it serves on a Unix socket with a workspace directory, so the
//! whole protocol can be exercised on the host.
//!
//! Modules: [`cli`] (arguments), [`init`] (PID 1), [`cgroup`] (the limits of what the
//! agent runs, as PID 1), [`link`] (virtio-serial, vsock, Unix
//! sockets), [`inbound`] (decoding and resynchronising), [`server`] (the poll loop, streams
//! and processes), [`paths`] (resolution beneath the workspace), [`ring`] (retained output),
//! [`sys`] (the few raw system calls).

mod cgroup;
mod cli;
mod inbound;
mod init;
mod link;
mod log;
mod paths;
mod ring;
mod server;
mod sys;

fn main() {
    let is_pid1 = rustix::process::getpid().is_init();
    let mode = match cli::parse(std::env::args_os().skip(1), is_pid1) {
        Ok(mode) => mode,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    let result = match mode {
        cli::Mode::Init => init::run(),
        cli::Mode::ListenUnix { path, workspace } => {
            server::serve_test(&link::ChannelSpec::ListenUnix(path), &workspace)
        }
        cli::Mode::ConnectUnix { path, workspace } => {
            server::serve_test(&link::ChannelSpec::ConnectUnix(path), &workspace)
        }
    };
    if let Err(error) = result {
        log::line(format_args!("{error}"));
        std::process::exit(1);
    }
}
