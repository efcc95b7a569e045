//! The conformance suite of `cthulu_core::conformance` against the namespace backend: one
//! test per scenario, each on a provider rooted in a temporary directory, with the init
//! binary this crate builds.
//!
//! Every scenario runs. The disk fill needs a root server (the disk limit is a
//! loop-mounted image); elsewhere a create asking for one is refused with `Unsupported`,
//! which the scenario reports as a skip with the reason.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cthulu_core::conformance::ConformanceTarget;
use cthulu_core::SandboxProvider;
use cthulu_host::ShimCommand;
use cthulu_namespace::{InitCommand, NamespaceConfig, NamespaceProvider};
use cthulu_types::SandboxId;

struct NamespaceTarget {
    state: tempfile::TempDir,
}

impl NamespaceTarget {
    fn new() -> Self {
        let state = tempfile::Builder::new()
            .prefix("cthulu-namespace-conformance-")
            .tempdir()
            .expect("creating the state directory");
        NamespaceTarget { state }
    }

    fn root(&self) -> PathBuf {
        self.state.path().join("sandboxes")
    }

    fn make_provider(&self) -> Result<Arc<dyn SandboxProvider>, String> {
        let config = NamespaceConfig {
            root: self.root(),
            init: InitCommand {
                program: env!("CARGO_BIN_EXE_cthulu-ns-init").into(),
                args: Vec::new(),
            },
            shim: ShimCommand {
                program: env!("CARGO_BIN_EXE_cthulu-ns-shim").into(),
                args: Vec::new(),
            },
        };
        let provider = NamespaceProvider::new(config).map_err(|error| error.to_string())?;
        Ok(Arc::new(provider))
    }
}

impl ConformanceTarget for NamespaceTarget {
    fn name(&self) -> &'static str {
        "namespace"
    }

    fn provider(&self) -> Result<Arc<dyn SandboxProvider>, String> {
        self.make_provider()
    }

    fn restarted_provider(&self) -> Result<Arc<dyn SandboxProvider>, String> {
        self.make_provider()
    }

    fn isolating(&self) -> bool {
        true
    }

    /// The sandbox's directory, its init (which names the directory on its command
    /// line) and any mount of it in this mount namespace.
    fn leftovers(&self, sandbox_id: &SandboxId) -> Option<Vec<String>> {
        let dir = self.root().join(sandbox_id.to_string());
        let mut found = Vec::new();
        if dir.symlink_metadata().is_ok() {
            found.push(format!("its directory {}", dir.display()));
        }
        found.extend(processes_naming(&dir));
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let needle = dir.display().to_string();
        found.extend(
            mounts
                .lines()
                .filter(|line| line.contains(&needle))
                .map(|line| format!("mount {line}")),
        );
        Some(found)
    }
}

/// Live (not zombie) processes whose command line names `dir`.
fn processes_naming(dir: &Path) -> Vec<String> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|byte| byte.is_ascii_digit()) {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if cmdline
            .windows(needle.len().max(1))
            .any(|window| window == needle)
        {
            let command = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            found.push(format!("process {pid} ({})", command.trim()));
        }
    }
    found
}

fn __conformance_target() -> Arc<dyn ConformanceTarget> {
    Arc::new(NamespaceTarget::new())
}

// What `cthulu_core::conformance_suite!` expands to.
cthulu_core::__conformance_tests! { Sandbox exec:
    argv_runs_the_program_without_a_shell,
    shell_runs_under_bin_sh,
    exit_codes_come_back_exactly,
    signal_death_reports_the_signal,
    stdout_and_stderr_stay_separate_and_ordered,
    binary_output_is_byte_exact,
    output_stops_at_the_cap,
    endless_output_does_not_block,
    stdin_is_given_then_eof,
    no_stdin_means_eof_at_once,
    env_request_wins_and_host_env_stays_out,
    cwd_defaults_to_the_workspace,
    cwd_outside_the_workspace_is_refused,
    timeout_kills_the_whole_process_tree,
    missing_program_is_a_clear_error,
    concurrent_execs_keep_their_own_output,
}
cthulu_core::__conformance_tests! { Sandbox stream:
    chunks_arrive_while_the_program_runs,
    stdin_pieces_arrive_in_order_then_eof,
    signals_reach_the_process,
    pty_is_a_terminal_and_resizes,
    pty_ctrl_c_interrupts,
    dropping_a_stream_kills_its_process,
    detached_process_survives_and_reattaches,
}
cthulu_core::__conformance_tests! { Sandbox files:
    small_files_round_trip_byte_exact,
    large_file_round_trips_byte_exact,
    mode_bits_are_kept,
    upload_into_a_missing_directory,
    read_dir_lists_names_kinds_sizes_modes,
    remove_files_directories_and_trees,
}
cthulu_core::__conformance_tests! { Sandbox escapes:
    dotdot_escapes_are_refused,
    absolute_symlink_escapes_are_refused,
    symlinked_parent_escapes_are_refused,
    symlink_swapped_during_operations_does_not_escape,
}
cthulu_core::__conformance_tests! { Sandbox ports:
    exposed_port_is_reachable_then_closed,
    port_nobody_listens_on_fails_promptly,
    exposed_port_survives_restart,
}
cthulu_core::__conformance_tests! { Sandbox lifecycle:
    stop_freezes_and_resume_continues,
    checkpoint_restore_brings_files_back,
    destroy_is_final_and_idempotent,
}
cthulu_core::__conformance_tests! { Sandbox restart:
    restart_keeps_files_status_and_processes,
    restart_keeps_a_stopped_sandbox_stopped,
    restart_keeps_checkpoints,
}
cthulu_core::__conformance_tests! { Isolation isolation:
    host_files_are_out_of_reach,
    host_processes_are_invisible_and_unsignalable,
    host_loopback_and_other_sandboxes_are_unreachable,
    endless_output_stops_at_the_cap,
    fork_bomb_stops_at_the_pid_limit,
    memory_bomb_stops_at_the_memory_limit,
    disk_fill_stops_at_the_disk_limit,
}
