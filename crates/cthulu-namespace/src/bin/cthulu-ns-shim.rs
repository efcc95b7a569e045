//! The namespace backend's process shim: `cthulu-ns-shim <process dir>`.
//! The `cthulu` binary exposes the same entry point as `cthulu __ns-shim`.

fn main() -> std::process::ExitCode {
    cthulu_namespace::shim::main(std::env::args_os().skip(1).collect())
}
