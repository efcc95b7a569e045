//! The conformance scenarios of `CONFORMANCE.md`: what every backend must do the same way.
//!
//! A backend's test file implements [`ConformanceTarget`] and expands
//! [`conformance_suite!`](crate::conformance_suite) with an expression making it; that is
//! one `#[tokio::test]` per scenario, named `<area>::<scenario>` (the test crate needs
//! `tokio` with the `macros` and `rt-multi-thread` features):
//!
//! ```ignore
//! struct HostTarget { /* a temporary state directory */ }
//! impl cthulu_core::conformance::ConformanceTarget for HostTarget { /* ... */ }
//! cthulu_core::conformance_suite!(HostTarget::new());
//! ```
//!
//! Each test ([`run_scenario`]) provisions a fresh sandbox with the default spec, runs
//! the scenario against it as a [`Sandbox`], then destroys it (and any other sandbox the
//! scenario made) whatever happened, and asks the target what the destroy left behind.
//! A scenario fails by returning [`ScenarioError::Failed`] or panicking.
//!
//! Nothing is reported as passed that did not run: when the backend cannot run here, the
//! test prints `SKIP <backend>: <reason>`; an isolation scenario on a backend that does
//! not isolate prints `SKIP <backend>: not an isolating backend`; when the capabilities
//! say the backend cannot do something, the scenario checks that the call answers
//! `Unsupported` and prints `SKIP <backend>: <scenario> unsupported: <reason>`.
//!
//! Not here: expiry of a sandbox past its lifetime, which is the server's job (its reaper
//! destroys the sandbox), not the backend's; it is tested with the server.
//!
//! Timing: limits only turn hangs into failures; nothing asserts speed.

pub mod escapes;
pub mod exec;
pub mod files;
pub mod isolation;
pub mod lifecycle;
pub mod ports;
pub mod restart;
mod runner;
mod sandbox;
pub mod stream;
mod support;
mod target;
mod watch;

pub use runner::{report_skip, run_scenario, Needs, HOST_SECRET_VALUE, HOST_SECRET_VAR};
pub use sandbox::{exec_on, sh_on, Sandbox};
pub use support::{
    describe, expect_code, expect_one_of, fail, within, Canary, Context, Outcome, ScenarioError,
};
pub use target::ConformanceTarget;
pub use watch::Watched;

/// Expands to one `#[tokio::test(flavor = "multi_thread")]` per conformance scenario,
/// run against the [`ConformanceTarget`] that `$make_target` makes (evaluated afresh for
/// every test, in the calling module's scope). Use it once per test file.
#[macro_export]
macro_rules! conformance_suite {
    ($make_target:expr $(,)?) => {
        fn __conformance_target() -> ::std::sync::Arc<dyn $crate::conformance::ConformanceTarget> {
            ::std::sync::Arc::new($make_target)
        }

        $crate::__conformance_tests! { Sandbox exec:
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
        $crate::__conformance_tests! { Sandbox stream:
            chunks_arrive_while_the_program_runs,
            stdin_pieces_arrive_in_order_then_eof,
            signals_reach_the_process,
            pty_is_a_terminal_and_resizes,
            pty_ctrl_c_interrupts,
            dropping_a_stream_kills_its_process,
            detached_process_survives_and_reattaches,
        }
        $crate::__conformance_tests! { Sandbox files:
            small_files_round_trip_byte_exact,
            large_file_round_trips_byte_exact,
            mode_bits_are_kept,
            upload_into_a_missing_directory,
            read_dir_lists_names_kinds_sizes_modes,
            remove_files_directories_and_trees,
        }
        $crate::__conformance_tests! { Sandbox escapes:
            dotdot_escapes_are_refused,
            absolute_symlink_escapes_are_refused,
            symlinked_parent_escapes_are_refused,
            symlink_swapped_during_operations_does_not_escape,
        }
        $crate::__conformance_tests! { Sandbox ports:
            exposed_port_is_reachable_then_closed,
            port_nobody_listens_on_fails_promptly,
            exposed_port_survives_restart,
        }
        $crate::__conformance_tests! { Sandbox lifecycle:
            stop_freezes_and_resume_continues,
            checkpoint_restore_brings_files_back,
            destroy_is_final_and_idempotent,
        }
        $crate::__conformance_tests! { Sandbox restart:
            restart_keeps_files_status_and_processes,
            restart_keeps_a_stopped_sandbox_stopped,
            restart_keeps_checkpoints,
        }
        $crate::__conformance_tests! { Isolation isolation:
            host_files_are_out_of_reach,
            host_processes_are_invisible_and_unsignalable,
            host_loopback_and_other_sandboxes_are_unreachable,
            fork_bomb_stops_at_the_pid_limit,
            memory_bomb_stops_at_the_memory_limit,
            disk_fill_stops_at_the_disk_limit,
            endless_output_stops_at_the_cap,
        }
    };
}

/// One module of tests for [`conformance_suite!`](crate::conformance_suite).
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_tests {
    ($needs:ident $module:ident: $($scenario:ident),+ $(,)?) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $scenario() {
                    $crate::conformance::run_scenario(
                        super::__conformance_target(),
                        concat!(stringify!($module), "::", stringify!($scenario)),
                        $crate::conformance::Needs::$needs,
                        $crate::conformance::$module::$scenario,
                    )
                    .await;
                }
            )+
        }
    };
}
