//! The namespace backend's per-sandbox init: `cthulu-ns-init <state dir>`.
//! The `cthulu` binary exposes the same entry point as `cthulu __ns-init`.

fn main() -> std::process::ExitCode {
    cthulu_namespace::init::main(std::env::args_os().skip(1).collect())
}
