//! The host backend's process shim as a binary of its own (`cthulu __shim` is the same
//! program inside the `cthulu` binary). See `cthulu_host::shim`.

fn main() -> std::process::ExitCode {
    cthulu_host::shim::run(std::env::args_os().skip(1).collect())
}
