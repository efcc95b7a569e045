//! Runs and their events in the database (tables `runs` and `run_events`, migration 2 of
//! `crate::db`). Nothing here ever sees a credential value: the stored request holds only
//! the names, and events are redacted before they are stored.

use cthulu_types::{
    BackendKind, Run, RunChanges, RunEvent, RunEventBody, RunStatus, RunTimings, SandboxId,
};
use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::db::{query_error, Database, DbError};

/// The create request as stored: no input archive, no credential values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRequest {
    pub prompt: String,
    pub agent: String,
    pub backend: Option<BackendKind>,
    pub sandbox_id: Option<SandboxId>,
    pub allowed_tools: Vec<String>,
    pub system_prompt: Option<String>,
    pub model: Option<String>,
    pub max_turns: Option<u32>,
    pub env_names: Vec<String>,
    pub timeout_secs: u64,
    pub keep: bool,
    pub input_bytes: u64,
}

/// How a run ended, written once.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunEnd {
    pub result: Option<String>,
    pub cost_usd: Option<f64>,
    pub turns: Option<u64>,
    pub error: Option<String>,
    pub changes: Option<RunChanges>,
    pub timings: Option<RunTimings>,
    /// The sandbox, when it was kept.
    pub kept_sandbox: Option<SandboxId>,
}

const RUN_COLUMNS: &str = "id, agent, status, request, sandbox_id, result, cost_usd, turns, duration_ms, error, changes, timings, events_truncated, created_at_ms, finished_at_ms,
     (SELECT COALESCE(MAX(seq), 0) FROM run_events WHERE run_id = runs.id)";

fn corrupt(run_id: &str) -> impl Fn(String) -> DbError + '_ {
    move |reason| DbError::CorruptRun {
        run_id: run_id.to_owned(),
        reason,
    }
}

fn run_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Run, DbError>> {
    let id: String = row.get(0)?;
    let status: String = row.get(2)?;
    let request: String = row.get(3)?;
    let sandbox_id: Option<String> = row.get(4)?;
    let changes: Option<String> = row.get(10)?;
    let timings: Option<String> = row.get(11)?;
    let parse = || -> Result<Run, DbError> {
        let bad = corrupt(&id);
        let request: StoredRequest =
            serde_json::from_str(&request).map_err(|error| bad(error.to_string()))?;
        Ok(Run {
            id: id.clone(),
            agent: row.get(1).map_err(|error| bad(error.to_string()))?,
            status: RunStatus::parse(&status).ok_or_else(|| bad(format!("status {status}")))?,
            prompt: request.prompt,
            env_names: request.env_names,
            backend: request.backend,
            sandbox_id: sandbox_id
                .map(|raw| SandboxId::parse(&raw).map_err(|error| bad(error.to_string())))
                .transpose()?,
            keep: request.keep,
            result: row.get(5).map_err(|error| bad(error.to_string()))?,
            cost_usd: row.get(6).map_err(|error| bad(error.to_string()))?,
            turns: row
                .get::<_, Option<i64>>(7)
                .map_err(|error| bad(error.to_string()))?
                .map(|turns| turns as u64),
            duration_ms: row
                .get::<_, Option<i64>>(8)
                .map_err(|error| bad(error.to_string()))?
                .map(|ms| ms as u64),
            error: row.get(9).map_err(|error| bad(error.to_string()))?,
            changes: changes
                .map(|text| serde_json::from_str(&text).map_err(|error| bad(error.to_string())))
                .transpose()?,
            timings: timings
                .map(|text| serde_json::from_str(&text).map_err(|error| bad(error.to_string())))
                .transpose()?,
            events_truncated: row
                .get::<_, bool>(12)
                .map_err(|error| bad(error.to_string()))?,
            created_at_ms: row
                .get::<_, i64>(13)
                .map_err(|error| bad(error.to_string()))? as u64,
            finished_at_ms: row
                .get::<_, Option<i64>>(14)
                .map_err(|error| bad(error.to_string()))?
                .map(|ms| ms as u64),
            event_count: row
                .get::<_, i64>(15)
                .map_err(|error| bad(error.to_string()))? as u64,
        })
    };
    Ok(parse())
}

impl Database {
    pub fn insert_run(
        &self,
        run_id: &str,
        request: &StoredRequest,
        created_at_ms: u64,
    ) -> Result<(), DbError> {
        let stored = serde_json::to_string(request).expect("a stored request serializes");
        self.lock()
            .execute(
                "INSERT INTO runs (id, agent, status, request, created_at_ms, updated_at_ms) VALUES (?1, ?2, 'queued', ?3, ?4, ?4)",
                params![run_id, request.agent, stored, created_at_ms as i64],
            )
            .map_err(query_error("insert run"))?;
        Ok(())
    }

    pub fn set_run_status(&self, run_id: &str, status: RunStatus) -> Result<(), DbError> {
        self.lock()
            .execute(
                "UPDATE runs SET status = ?2, updated_at_ms = ?3 WHERE id = ?1",
                params![run_id, status.as_str(), cthulu_types::now_ms() as i64],
            )
            .map_err(query_error("update run status"))?;
        Ok(())
    }

    pub fn set_run_sandbox(
        &self,
        run_id: &str,
        sandbox_id: Option<&SandboxId>,
    ) -> Result<(), DbError> {
        self.lock()
            .execute(
                "UPDATE runs SET sandbox_id = ?2, updated_at_ms = ?3 WHERE id = ?1",
                params![
                    run_id,
                    sandbox_id.map(SandboxId::as_str),
                    cthulu_types::now_ms() as i64
                ],
            )
            .map_err(query_error("update run sandbox"))?;
        Ok(())
    }

    /// Records the final status and outcome.
    pub fn finish_run(&self, run_id: &str, status: RunStatus, end: &RunEnd) -> Result<(), DbError> {
        let now = cthulu_types::now_ms() as i64;
        let changes = end
            .changes
            .as_ref()
            .map(|changes| serde_json::to_string(changes).expect("changes serialize"));
        let timings = end
            .timings
            .as_ref()
            .map(|timings| serde_json::to_string(timings).expect("timings serialize"));
        self.lock()
            .execute(
                "UPDATE runs SET status = ?2, result = ?3, cost_usd = ?4, turns = ?5, error = ?6, changes = ?7, timings = ?8,
                     sandbox_id = ?9, finished_at_ms = ?10, duration_ms = ?10 - created_at_ms, updated_at_ms = ?10
                 WHERE id = ?1",
                params![
                    run_id,
                    status.as_str(),
                    end.result,
                    end.cost_usd,
                    end.turns.map(|turns| turns as i64),
                    end.error,
                    changes,
                    timings,
                    end.kept_sandbox.as_ref().map(SandboxId::as_str),
                    now,
                ],
            )
            .map_err(query_error("finish run"))?;
        Ok(())
    }

    pub fn get_run(&self, run_id: &str) -> Result<Option<Run>, DbError> {
        let connection = self.lock();
        connection
            .query_row(
                &format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"),
                params![run_id],
                run_from_row,
            )
            .optional()
            .map_err(query_error("get run"))?
            .transpose()
    }

    /// The stored request of a run (to know its sandbox and `keep` after a restart).
    pub fn get_run_request(&self, run_id: &str) -> Result<Option<StoredRequest>, DbError> {
        let raw: Option<String> = self
            .lock()
            .query_row(
                "SELECT request FROM runs WHERE id = ?1",
                params![run_id],
                |row| row.get(0),
            )
            .optional()
            .map_err(query_error("get run request"))?;
        raw.map(|text| {
            serde_json::from_str(&text).map_err(|error| corrupt(run_id)(error.to_string()))
        })
        .transpose()
    }

    /// Runs, newest first, at most `limit`.
    pub fn list_runs(&self, limit: usize) -> Result<Vec<Run>, DbError> {
        let connection = self.lock();
        let mut statement = connection
            .prepare_cached(&format!(
                "SELECT {RUN_COLUMNS} FROM runs ORDER BY created_at_ms DESC, id LIMIT ?1"
            ))
            .map_err(query_error("list runs"))?;
        let rows = statement
            .query_map(params![limit as i64], run_from_row)
            .map_err(query_error("list runs"))?;
        let mut runs = Vec::new();
        for row in rows {
            runs.push(row.map_err(query_error("list runs"))??);
        }
        Ok(runs)
    }

    /// Marks every live run `interrupted` (the server stopped under it); returns their
    /// ids and sandboxes.
    pub fn interrupt_live_runs(
        &self,
        message: &str,
    ) -> Result<Vec<(String, Option<SandboxId>)>, DbError> {
        let connection = self.lock();
        let mut statement = connection
            .prepare(
                "UPDATE runs SET status = 'interrupted', error = ?1 || ' (it was ' || status || ')',
                     finished_at_ms = ?2, duration_ms = ?2 - created_at_ms, updated_at_ms = ?2
                 WHERE status IN ('queued', 'provisioning', 'running')
                 RETURNING id, sandbox_id",
            )
            .map_err(query_error("interrupt live runs"))?;
        let rows = statement
            .query_map(params![message, cthulu_types::now_ms() as i64], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, Option<String>>(1)?))
            })
            .map_err(query_error("interrupt live runs"))?;
        let mut interrupted = Vec::new();
        for row in rows {
            let (run_id, sandbox_id) = row.map_err(query_error("interrupt live runs"))?;
            interrupted.push((
                run_id,
                sandbox_id.and_then(|raw| SandboxId::parse(&raw).ok()),
            ));
        }
        Ok(interrupted)
    }

    pub fn insert_run_event(&self, run_id: &str, event: &RunEvent) -> Result<(), DbError> {
        let body = serde_json::to_string(&event.body).expect("an event serializes");
        self.lock()
            .prepare_cached(
                "INSERT INTO run_events (run_id, seq, at_ms, body) VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut statement| {
                statement.execute(params![run_id, event.seq as i64, event.at_ms as i64, body])
            })
            .map_err(query_error("insert run event"))?;
        Ok(())
    }

    pub fn set_run_events_truncated(&self, run_id: &str) -> Result<(), DbError> {
        self.lock()
            .execute(
                "UPDATE runs SET events_truncated = 1 WHERE id = ?1",
                params![run_id],
            )
            .map_err(query_error("mark run events truncated"))?;
        Ok(())
    }

    /// Stored events with `seq > after`, in order, at most `limit`.
    pub fn run_events_after(
        &self,
        run_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<RunEvent>, DbError> {
        let connection = self.lock();
        let mut statement = connection
            .prepare_cached(
                "SELECT seq, at_ms, body FROM run_events WHERE run_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )
            .map_err(query_error("read run events"))?;
        let rows = statement
            .query_map(params![run_id, after as i64, limit as i64], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, String>(2)?,
                ))
            })
            .map_err(query_error("read run events"))?;
        let mut events = Vec::new();
        for row in rows {
            let (seq, at_ms, body) = row.map_err(query_error("read run events"))?;
            let body: RunEventBody = serde_json::from_str(&body)
                .map_err(|error| corrupt(run_id)(format!("event {seq}: {error}")))?;
            events.push(RunEvent {
                seq: seq as u64,
                at_ms: at_ms as u64,
                body,
            });
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> StoredRequest {
        StoredRequest {
            prompt: "fix it".into(),
            agent: "claude-code".into(),
            backend: Some(BackendKind::Host),
            sandbox_id: None,
            allowed_tools: vec!["Bash".into()],
            system_prompt: None,
            model: None,
            max_turns: None,
            env_names: vec!["ANTHROPIC_API_KEY".into()],
            timeout_secs: 60,
            keep: false,
            input_bytes: 0,
        }
    }

    #[test]
    fn runs_and_events_round_trip_and_live_ones_are_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let database = Database::open(&dir.path().join("db.sqlite")).unwrap();
        database.insert_run("done", &request(), 1).unwrap();
        database.insert_run("live", &request(), 2).unwrap();
        for seq in 1..=3 {
            let event = RunEvent {
                seq,
                at_ms: seq,
                body: RunEventBody::Notice {
                    message: format!("n{seq}"),
                },
            };
            database.insert_run_event("done", &event).unwrap();
        }
        database
            .finish_run(
                "done",
                RunStatus::Succeeded,
                &RunEnd {
                    result: Some("ok".into()),
                    cost_usd: Some(0.5),
                    turns: Some(2),
                    ..RunEnd::default()
                },
            )
            .unwrap();
        database.set_run_status("live", RunStatus::Running).unwrap();
        let done = database.get_run("done").unwrap().unwrap();
        assert_eq!(done.status, RunStatus::Succeeded);
        assert_eq!(done.event_count, 3);
        assert_eq!(done.turns, Some(2));
        assert_eq!(done.env_names, ["ANTHROPIC_API_KEY"]);
        let after = database.run_events_after("done", 1, 10).unwrap();
        assert_eq!(after.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
        let interrupted = database.interrupt_live_runs("the server stopped").unwrap();
        assert_eq!(interrupted, [("live".to_owned(), None)]);
        let live = database.get_run("live").unwrap().unwrap();
        assert_eq!(live.status, RunStatus::Interrupted);
        assert_eq!(
            live.error.as_deref(),
            Some("the server stopped (it was running)")
        );
        let listed = database.list_runs(10).unwrap();
        assert_eq!(listed[0].id, "live");
        assert!(database.get_run("nope").unwrap().is_none());
    }
}
