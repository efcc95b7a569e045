//! [`HostSandbox`]: one sandbox of the host backend, its in-memory state and lifecycle
//! (stop, resume, destroy). The operations live in their own modules (`exec`, `files`,
//! `processes`, `ports`, `checkpoint`); `handle` wires them to the contract.
//!
//! Which processes belong to the sandbox: the process group of every one-shot exec (kept
//! until the group is empty, so a backgrounded child is still reached) and the group (or,
//! on a PTY, the session) of every shim's process. Stop, resume and destroy signal all of
//! them. Registering a new group and changing the status happen under the same lock, so a
//! command that starts while the sandbox stops is stopped too.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use cthulu_core::SandboxError;
use cthulu_types::sandbox::{InvalidTransition, Operation};
use cthulu_types::{SandboxId, SandboxStatus};

use crate::config::ShimCommand;
use crate::ports::Forwarders;
use crate::process_groups::{self, group_alive, reaped_group_is_ours, signal_group};
use crate::shim::records::{PidRecord, EXIT_FILE, PID_FILE};
use crate::state::{ProcessRecord, SandboxState, WORKSPACE_DIR};
use crate::workspace::Workspace;

/// How long destroy lets shims report their killed processes to attached clients.
const SHIM_EXIT_GRACE: Duration = Duration::from_secs(2);

/// One sandbox of the host backend. Made by [`HostProvider`](crate::HostProvider).
pub struct HostSandbox {
    pub(crate) sandbox_id: SandboxId,
    /// `<root>/<sandbox_id>`.
    pub(crate) dir: PathBuf,
    pub(crate) workspace: Workspace,
    pub(crate) shim: ShimCommand,
    inner: Mutex<Inner>,
}

pub(crate) struct Inner {
    pub state: SandboxState,
    pub destroyed: bool,
    /// Process groups of one-shot execs, and whether their leader has been reaped (only
    /// then may an empty group be forgotten: until the leader is reaped its id is not
    /// reused).
    pub exec_groups: HashMap<i32, bool>,
    /// Listeners of the exposed ports; dropping one closes it.
    pub forwarders: Forwarders,
}

impl Inner {
    pub fn status(&self) -> SandboxStatus {
        if self.destroyed {
            SandboxStatus::Destroyed
        } else {
            self.state.status
        }
    }

    pub fn check(&self, operation: Operation) -> Result<(), SandboxError> {
        Ok(self.status().check(operation)?)
    }

    /// See [`crate::processes::check_exists`].
    pub fn check_exists(&self) -> Result<(), SandboxError> {
        Ok(self.status().check_exists()?)
    }
}

/// A process group of the sandbox, and whether it is a PTY session (whose jobs may sit in
/// groups of their own).
#[derive(Debug, Clone, Copy)]
struct Group {
    pgid: i32,
    session: bool,
}

impl HostSandbox {
    pub(crate) fn new(
        sandbox_id: SandboxId,
        dir: PathBuf,
        state: SandboxState,
        shim: ShimCommand,
    ) -> HostSandbox {
        HostSandbox {
            sandbox_id,
            workspace: Workspace::new(dir.join(WORKSPACE_DIR)),
            dir,
            shim,
            inner: Mutex::new(Inner {
                state,
                destroyed: false,
                exec_groups: HashMap::new(),
                forwarders: Forwarders::new(),
            }),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn current_status(&self) -> SandboxStatus {
        self.lock().status()
    }

    /// Checks `operation` and returns the sandbox env for a command.
    pub(crate) fn env_for(
        &self,
        operation: Operation,
    ) -> Result<BTreeMap<String, String>, SandboxError> {
        let inner = self.lock();
        inner.check(operation)?;
        Ok(inner.state.env.clone())
    }

    /// Writes `state.json`.
    pub(crate) fn persist(&self, inner: &Inner) -> Result<(), SandboxError> {
        self.persist_state(&inner.state)
    }

    /// Writes `state` as `state.json`.
    pub(crate) fn persist_state(&self, state: &SandboxState) -> Result<(), SandboxError> {
        state
            .save(&self.dir)
            .map_err(|error| SandboxError::io("save the sandbox state", &self.dir, error))
    }

    pub(crate) fn process_dir(&self, process_id: &str) -> PathBuf {
        crate::processes::process_dir(&self.dir, process_id)
    }

    /// Adds a just-started one-shot exec group. If the sandbox was stopped or destroyed
    /// since the exec was allowed, the group is stopped or killed to match.
    pub(crate) fn register_exec_group(&self, pgid: i32) -> Result<(), SandboxError> {
        let mut inner = self.lock();
        inner
            .exec_groups
            .retain(|pgid, reaped| !*reaped || reaped_group_is_ours(*pgid));
        inner.exec_groups.insert(pgid, false);
        self.match_status(
            &inner,
            Group {
                pgid,
                session: false,
            },
        )
    }

    /// The leader of a one-shot exec group has been reaped (or abandoned to the runtime's
    /// reaper); the group is forgotten once it is empty.
    pub(crate) fn exec_group_done(&self, pgid: i32) {
        let mut inner = self.lock();
        if group_alive(pgid) {
            // A backgrounded child lives on in the group: keep reaching it.
            if let Some(reaped) = inner.exec_groups.get_mut(&pgid) {
                *reaped = true;
            }
        } else {
            inner.exec_groups.remove(&pgid);
        }
    }

    /// Records the pids of a just-started shim process; as for exec groups, a status change
    /// that happened meanwhile is applied to it.
    pub(crate) fn register_shim_process(&self, record: ProcessRecord) -> Result<(), SandboxError> {
        let mut inner = self.lock();
        let group = record.child_pgid.map(|pgid| Group {
            pgid,
            session: record.tty,
        });
        inner.state.processes.push(record);
        let persisted = self.persist(&inner);
        if let Some(group) = group {
            self.match_status(&inner, group)?;
        }
        persisted
    }

    fn match_status(&self, inner: &Inner, group: Group) -> Result<(), SandboxError> {
        match inner.status() {
            SandboxStatus::Running => Ok(()),
            SandboxStatus::Stopped => {
                signal(group, libc::SIGSTOP);
                Ok(())
            }
            status => {
                signal(group, libc::SIGKILL);
                Err(InvalidTransition {
                    operation: Operation::Exec,
                    status,
                }
                .into())
            }
        }
    }

    /// Every live group of the sandbox: one-shot execs, and shim processes that have not
    /// recorded an exit. A group id that may have been recycled for a process that is not
    /// ours is left out.
    fn groups(&self, inner: &Inner) -> Vec<Group> {
        let mut groups: Vec<Group> = inner
            .exec_groups
            .iter()
            .filter(|(pgid, reaped)| !**reaped || reaped_group_is_ours(**pgid))
            .map(|(pgid, _)| Group {
                pgid: *pgid,
                session: false,
            })
            .collect();
        groups.extend(
            inner
                .state
                .processes
                .iter()
                .filter_map(|record| self.shim_group(record)),
        );
        groups
    }

    /// The group of a shim's process, while it may still run.
    fn shim_group(&self, record: &ProcessRecord) -> Option<Group> {
        let process_dir = self.process_dir(&record.process_id);
        if process_dir.join(EXIT_FILE).exists() {
            return None;
        }
        let pids = pid_record(&process_dir);
        let shim_pid = record.shim_pid.or(pids.map(|pids| pids.shim_pid))?;
        let pgid = record.child_pgid.or(pids.map(|pids| pids.child_pgid))?;
        // A running shim has not reaped its process, so the pid is still that process's.
        // Without the shim (it died), the pid is the process's only if it started when
        // the shim recorded.
        let ours = process_groups::is_shim_of(shim_pid, &process_dir)
            || if process_groups::pid_exists(pgid) {
                let recorded = pids.and_then(|pids| pids.child_start_ticks);
                recorded.is_some() && process_groups::start_ticks(pgid) == recorded
            } else {
                group_alive(pgid)
            };
        ours.then_some(Group {
            pgid,
            session: record.tty,
        })
    }

    pub(crate) async fn stop_sandbox(&self) -> Result<(), SandboxError> {
        let mut inner = self.lock();
        let next = inner.status().after(Operation::Stop)?;
        inner.state.status = next;
        if let Err(error) = self.persist(&inner) {
            inner.state.status = SandboxStatus::Running;
            return Err(error);
        }
        for group in self.groups(&inner) {
            signal(group, libc::SIGSTOP);
        }
        Ok(())
    }

    pub(crate) async fn resume_sandbox(&self) -> Result<(), SandboxError> {
        {
            let mut inner = self.lock();
            let next = inner.status().after(Operation::Resume)?;
            inner.state.status = next;
            if let Err(error) = self.persist(&inner) {
                inner.state.status = SandboxStatus::Stopped;
                return Err(error);
            }
            for group in self.groups(&inner) {
                signal(group, libc::SIGCONT);
            }
        }
        // Processes stopped by a server that has restarted since are in no group we know
        // of; continuing every process working in the sandbox reaches them.
        let dir = self.dir.clone();
        let _ = tokio::task::spawn_blocking(move || {
            process_groups::signal_processes_under(&dir, libc::SIGCONT)
        })
        .await;
        Ok(())
    }

    pub(crate) async fn destroy_sandbox(&self) -> Result<(), SandboxError> {
        let (groups, shims) = {
            let mut inner = self.lock();
            if inner.destroyed && !self.dir.exists() {
                return Ok(());
            }
            inner.destroyed = true;
            inner.forwarders.clear();
            let shims = crate::processes::shims_of(&self.dir, &inner.state.processes);
            (self.groups(&inner), shims)
        };
        for group in groups {
            signal(group, libc::SIGKILL);
        }
        // Their processes dead, the shims tell attached clients how they ended and exit.
        crate::processes::end_shims(shims, SHIM_EXIT_GRACE).await;
        let dir = self.dir.clone();
        crate::files::blocking("destroy", move || remove_sandbox_dir(&dir)).await
    }
}

fn signal(group: Group, number: i32) {
    if group.session {
        process_groups::signal_session(group.pgid, number);
    } else {
        let _ = signal_group(group.pgid, number);
    }
}

fn pid_record(process_dir: &Path) -> Option<PidRecord> {
    crate::shim::records::read_record(&process_dir.join(PID_FILE))
        .ok()
        .flatten()
}

/// Kills whatever still works in the sandbox directory, then removes it. A process killed
/// a moment ago may still be writing, so removal is retried.
fn remove_sandbox_dir(dir: &Path) -> Result<(), SandboxError> {
    let mut last_error = None;
    for _attempt in 0..5 {
        process_groups::signal_processes_under(dir, libc::SIGKILL);
        match fs_err::remove_dir_all(dir) {
            Ok(()) => return Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => last_error = Some(error),
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Err(SandboxError::io(
        "remove the sandbox directory",
        dir,
        last_error.expect("an attempt failed"),
    ))
}
