//! The server's SQLite database: sandbox records and API keys (runs and their events:
//! `crate::runs::store`).
//!
//! One connection behind a mutex: every query is a few microseconds, so it runs inline on
//! the async threads and the lock is never held across an `.await`. WAL mode lets
//! `cthulu key create` write while the server runs. Migrations are numbered and recorded
//! in `PRAGMA user_version`.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cthulu_core::SandboxSpec;
use cthulu_types::{BackendKind, Sandbox, SandboxId, SandboxStatus};
use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};

/// The migrations, in order; the database records how many it has applied.
const MIGRATIONS: &[&str] = &[
    r#"
    CREATE TABLE sandboxes (
        id TEXT PRIMARY KEY,
        backend TEXT NOT NULL,
        status TEXT NOT NULL,
        status_reason TEXT,
        spec TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        expires_at_ms INTEGER,
        updated_at_ms INTEGER NOT NULL
    );
    CREATE INDEX sandboxes_expiry ON sandboxes (expires_at_ms) WHERE expires_at_ms IS NOT NULL;
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        name TEXT,
        key_hash TEXT NOT NULL UNIQUE,
        created_at_ms INTEGER NOT NULL
    );
"#,
    // Agent runs (crate::runs::store). `request` is the create request without the input
    // archive and with only the names of the passed environment variables.
    r#"
    CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        agent TEXT NOT NULL,
        status TEXT NOT NULL,
        request TEXT NOT NULL,
        sandbox_id TEXT,
        result TEXT,
        cost_usd REAL,
        turns INTEGER,
        duration_ms INTEGER,
        error TEXT,
        changes TEXT,
        timings TEXT,
        events_truncated INTEGER NOT NULL DEFAULT 0,
        created_at_ms INTEGER NOT NULL,
        finished_at_ms INTEGER,
        updated_at_ms INTEGER NOT NULL
    );
    CREATE INDEX runs_created ON runs (created_at_ms);
    CREATE TABLE run_events (
        run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        at_ms INTEGER NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (run_id, seq)
    ) WITHOUT ROWID;
"#,
    // Registered nodes of the remote backend (crate::nodes). The token is what the
    // platform sends to the node, so it is kept as given: the file is mode 0600.
    r#"
    CREATE TABLE nodes (
        name TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        token TEXT NOT NULL,
        added_at_ms INTEGER NOT NULL
    );
"#,
];

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot open the database {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot migrate the database {path} to version {version}")]
    Migrate {
        path: PathBuf,
        version: usize,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database query {query} failed")]
    Query {
        query: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot make the database {path} private (mode 0600)")]
    Permissions {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("sandbox record {sandbox_id} is corrupt: {reason}")]
    Corrupt { sandbox_id: String, reason: String },
    #[error("run record {run_id} is corrupt: {reason}")]
    CorruptRun { run_id: String, reason: String },
}

pub(crate) fn query_error(query: &'static str) -> impl FnOnce(rusqlite::Error) -> DbError {
    move |source| DbError::Query { query, source }
}

/// A sandbox as the server remembers it.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxRecord {
    pub id: SandboxId,
    pub backend: BackendKind,
    pub status: SandboxStatus,
    pub status_reason: Option<String>,
    pub spec: SandboxSpec,
    pub created_at_ms: u64,
    pub expires_at_ms: Option<u64>,
}

impl SandboxRecord {
    pub fn to_api(&self) -> Sandbox {
        Sandbox {
            id: self.id.clone(),
            backend: self.backend,
            status: self.status,
            labels: self.spec.labels.clone(),
            resources: self.spec.resources.clone(),
            network: self.spec.network,
            image: self.spec.image.clone(),
            created_at_ms: self.created_at_ms,
            expires_at_ms: self.expires_at_ms,
            status_reason: self.status_reason.clone(),
        }
    }
}

pub struct Database {
    connection: Mutex<Connection>,
}

impl Database {
    /// Opens (creating if needed) and migrates the database at `path`.
    pub fn open(path: &Path) -> Result<Database, DbError> {
        restrict_mode(path).map_err(|source| DbError::Permissions {
            path: path.to_owned(),
            source,
        })?;
        let connection = Connection::open(path).map_err(|source| DbError::Open {
            path: path.to_owned(),
            source,
        })?;
        let setup = || -> rusqlite::Result<()> {
            connection.pragma_update(None, "journal_mode", "WAL")?;
            connection.pragma_update(None, "synchronous", "NORMAL")?;
            connection.busy_timeout(std::time::Duration::from_secs(5))?;
            Ok(())
        };
        setup().map_err(|source| DbError::Open {
            path: path.to_owned(),
            source,
        })?;
        migrate(&connection, path)?;
        Ok(Database {
            connection: Mutex::new(connection),
        })
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves the connection usable: SQLite rolls back
        // the unfinished statement.
        self.connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn insert_sandbox(&self, record: &SandboxRecord) -> Result<(), DbError> {
        let spec = serde_json::to_string(&record.spec).expect("a spec always serializes");
        self.lock()
            .execute(
                "INSERT INTO sandboxes (id, backend, status, status_reason, spec, created_at_ms, expires_at_ms, updated_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?6)",
                params![
                    record.id.as_str(),
                    record.backend.as_str(),
                    record.status.as_str(),
                    record.status_reason,
                    spec,
                    record.created_at_ms as i64,
                    record.expires_at_ms.map(|at| at as i64),
                ],
            )
            .map_err(query_error("insert sandbox"))?;
        Ok(())
    }

    pub fn set_status(
        &self,
        sandbox_id: &SandboxId,
        status: SandboxStatus,
        reason: Option<&str>,
    ) -> Result<(), DbError> {
        self.lock()
            .execute(
                "UPDATE sandboxes SET status = ?2, status_reason = ?3, updated_at_ms = ?4 WHERE id = ?1",
                params![sandbox_id.as_str(), status.as_str(), reason, cthulu_types::now_ms() as i64],
            )
            .map_err(query_error("update sandbox status"))?;
        Ok(())
    }

    pub fn set_expiry(
        &self,
        sandbox_id: &SandboxId,
        expires_at_ms: Option<u64>,
    ) -> Result<(), DbError> {
        self.lock()
            .execute(
                "UPDATE sandboxes SET expires_at_ms = ?2, updated_at_ms = ?3 WHERE id = ?1",
                params![
                    sandbox_id.as_str(),
                    expires_at_ms.map(|at| at as i64),
                    cthulu_types::now_ms() as i64
                ],
            )
            .map_err(query_error("update sandbox expiry"))?;
        Ok(())
    }

    pub fn set_spec(&self, sandbox_id: &SandboxId, spec: &SandboxSpec) -> Result<(), DbError> {
        let spec = serde_json::to_string(spec).expect("a spec always serializes");
        self.lock()
            .execute(
                "UPDATE sandboxes SET spec = ?2, updated_at_ms = ?3 WHERE id = ?1",
                params![sandbox_id.as_str(), spec, cthulu_types::now_ms() as i64],
            )
            .map_err(query_error("update sandbox spec"))?;
        Ok(())
    }

    pub fn get_sandbox(&self, sandbox_id: &SandboxId) -> Result<Option<SandboxRecord>, DbError> {
        let connection = self.lock();
        let row = connection
            .query_row(
                "SELECT id, backend, status, status_reason, spec, created_at_ms, expires_at_ms FROM sandboxes WHERE id = ?1",
                params![sandbox_id.as_str()],
                RawRecord::from_row,
            )
            .optional()
            .map_err(query_error("get sandbox"))?;
        row.map(RawRecord::parse).transpose()
    }

    /// Every record; destroyed ones only when `include_destroyed`.
    pub fn list_sandboxes(&self, include_destroyed: bool) -> Result<Vec<SandboxRecord>, DbError> {
        let connection = self.lock();
        let mut statement = connection
            .prepare_cached(
                "SELECT id, backend, status, status_reason, spec, created_at_ms, expires_at_ms FROM sandboxes
                 WHERE ?1 OR status != 'destroyed' ORDER BY created_at_ms, id",
            )
            .map_err(query_error("list sandboxes"))?;
        let rows = statement
            .query_map(params![include_destroyed], RawRecord::from_row)
            .map_err(query_error("list sandboxes"))?;
        let mut records = Vec::new();
        for row in rows {
            records.push(row.map_err(query_error("list sandboxes"))?.parse()?);
        }
        Ok(records)
    }

    /// Ids of live sandboxes whose lifetime ended at or before `now_ms`.
    pub fn expired(&self, now_ms: u64) -> Result<Vec<SandboxId>, DbError> {
        let connection = self.lock();
        let mut statement = connection
            .prepare_cached(
                "SELECT id FROM sandboxes WHERE expires_at_ms IS NOT NULL AND expires_at_ms <= ?1 AND status != 'destroyed'",
            )
            .map_err(query_error("find expired sandboxes"))?;
        let rows = statement
            .query_map(params![now_ms as i64], |row| row.get::<_, String>(0))
            .map_err(query_error("find expired sandboxes"))?;
        let mut ids = Vec::new();
        for row in rows {
            let raw = row.map_err(query_error("find expired sandboxes"))?;
            if let Ok(id) = SandboxId::parse(&raw) {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// Forgets destroyed sandboxes older than `before_ms`.
    pub fn prune_destroyed(&self, before_ms: u64) -> Result<usize, DbError> {
        self.lock()
            .execute(
                "DELETE FROM sandboxes WHERE status = 'destroyed' AND updated_at_ms < ?1",
                params![before_ms as i64],
            )
            .map_err(query_error("prune destroyed sandboxes"))
    }

    /// Counts of sandboxes per backend and status, destroyed excluded.
    pub fn counts(&self) -> Result<Vec<(String, String, u64)>, DbError> {
        let connection = self.lock();
        let mut statement = connection
            .prepare_cached(
                "SELECT backend, status, COUNT(*) FROM sandboxes WHERE status != 'destroyed' GROUP BY backend, status",
            )
            .map_err(query_error("count sandboxes"))?;
        let rows = statement
            .query_map([], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get::<_, i64>(2)? as u64))
            })
            .map_err(query_error("count sandboxes"))?;
        rows.collect::<Result<_, _>>()
            .map_err(query_error("count sandboxes"))
    }

    /// Stores a new API key (only its hash) and returns the key.
    pub fn create_api_key(&self, name: Option<&str>) -> Result<String, DbError> {
        let key = format!("ck_{}", random_alphanumeric(40));
        let key_id = random_alphanumeric(12);
        self.lock()
            .execute(
                "INSERT INTO api_keys (id, name, key_hash, created_at_ms) VALUES (?1, ?2, ?3, ?4)",
                params![key_id, name, hash_key(&key), cthulu_types::now_ms() as i64],
            )
            .map_err(query_error("create api key"))?;
        Ok(key)
    }

    pub fn has_api_keys(&self) -> Result<bool, DbError> {
        self.lock()
            .query_row("SELECT EXISTS (SELECT 1 FROM api_keys)", [], |row| {
                row.get(0)
            })
            .map_err(query_error("check for api keys"))
    }

    pub fn api_key_valid(&self, key: &str) -> Result<bool, DbError> {
        self.lock()
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM api_keys WHERE key_hash = ?1)",
                params![hash_key(key)],
                |row| row.get(0),
            )
            .map_err(query_error("check api key"))
    }
}

/// The database holds API key hashes and node tokens: only its owner may read it. SQLite
/// gives its `-wal` and `-shm` files the database file's mode, so setting it here, before
/// SQLite opens the file, covers them too.
fn restrict_mode(path: &Path) -> std::io::Result<()> {
    use fs_err::os::unix::fs::OpenOptionsExt;
    use std::os::unix::fs::PermissionsExt;
    fs_err::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    fs_err::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

fn migrate(connection: &Connection, path: &Path) -> Result<(), DbError> {
    apply_migrations(connection, MIGRATIONS).map_err(|(version, source)| DbError::Migrate {
        path: path.to_owned(),
        version,
        source,
    })
}

/// Runs the migrations of `migrations` not yet applied (SQLite's `user_version` counts
/// them), each in a transaction with its version; `Err` names the version that failed
/// (0: reading the version). Also the node's table (crates/cthulu-node).
pub fn apply_migrations(
    connection: &Connection,
    migrations: &[&str],
) -> Result<(), (usize, rusqlite::Error)> {
    let applied = connection
        .pragma_query_value(None, "user_version", |row| row.get::<_, i64>(0))
        .map_err(|source| (0, source))? as usize;
    for (index, migration) in migrations.iter().enumerate().skip(applied) {
        let version = index + 1;
        let run = || -> rusqlite::Result<()> {
            let transaction = connection.unchecked_transaction()?;
            transaction.execute_batch(migration)?;
            transaction.pragma_update(None, "user_version", version as i64)?;
            transaction.commit()
        };
        run().map_err(|source| (version, source))?;
    }
    Ok(())
}

/// A row as stored, before its text columns are parsed.
struct RawRecord {
    id: String,
    backend: String,
    status: String,
    status_reason: Option<String>,
    spec: String,
    created_at_ms: i64,
    expires_at_ms: Option<i64>,
}

impl RawRecord {
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawRecord> {
        Ok(RawRecord {
            id: row.get(0)?,
            backend: row.get(1)?,
            status: row.get(2)?,
            status_reason: row.get(3)?,
            spec: row.get(4)?,
            created_at_ms: row.get(5)?,
            expires_at_ms: row.get(6)?,
        })
    }

    fn parse(self) -> Result<SandboxRecord, DbError> {
        let corrupt = |reason: String| DbError::Corrupt {
            sandbox_id: self.id.clone(),
            reason,
        };
        Ok(SandboxRecord {
            id: SandboxId::parse(&self.id).map_err(|error| corrupt(error.to_string()))?,
            backend: BackendKind::parse(&self.backend)
                .ok_or_else(|| corrupt(format!("unknown backend {}", self.backend)))?,
            status: SandboxStatus::parse(&self.status)
                .ok_or_else(|| corrupt(format!("unknown status {}", self.status)))?,
            spec: serde_json::from_str(&self.spec).map_err(|error| corrupt(error.to_string()))?,
            status_reason: self.status_reason,
            created_at_ms: self.created_at_ms as u64,
            expires_at_ms: self.expires_at_ms.map(|at| at as u64),
        })
    }
}

fn hash_key(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn random_alphanumeric(length: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut raw = vec![0u8; length];
    getrandom::fill(&mut raw).expect("the operating system random source failed");
    // 62 symbols: the modulo bias (4/256) costs well under a bit over 40 characters.
    raw.iter()
        .map(|byte| ALPHABET[*byte as usize % ALPHABET.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(status: SandboxStatus, expires_at_ms: Option<u64>) -> SandboxRecord {
        SandboxRecord {
            id: SandboxId::generate(),
            backend: BackendKind::Host,
            status,
            status_reason: None,
            spec: SandboxSpec::default(),
            created_at_ms: 1,
            expires_at_ms,
        }
    }

    #[test]
    fn records_round_trip_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let database = Database::open(&dir.path().join("db.sqlite")).unwrap();
        let live = record(SandboxStatus::Running, Some(100));
        let later = record(SandboxStatus::Running, Some(10_000));
        database.insert_sandbox(&live).unwrap();
        database.insert_sandbox(&later).unwrap();
        assert_eq!(
            database.get_sandbox(&live.id).unwrap().as_ref(),
            Some(&live)
        );
        assert_eq!(database.expired(500).unwrap(), vec![live.id.clone()]);
        database
            .set_status(&live.id, SandboxStatus::Destroyed, None)
            .unwrap();
        assert!(database.expired(500).unwrap().is_empty());
        assert_eq!(database.list_sandboxes(false).unwrap().len(), 1);
        assert_eq!(database.list_sandboxes(true).unwrap().len(), 2);
        // Reopening keeps everything and does not re-run migrations.
        drop(database);
        let reopened = Database::open(&dir.path().join("db.sqlite")).unwrap();
        assert_eq!(reopened.list_sandboxes(true).unwrap().len(), 2);
    }

    #[test]
    fn api_keys_are_stored_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let database = Database::open(&dir.path().join("db.sqlite")).unwrap();
        assert!(!database.has_api_keys().unwrap());
        let key = database.create_api_key(Some("ci")).unwrap();
        assert!(database.has_api_keys().unwrap());
        assert!(database.api_key_valid(&key).unwrap());
        assert!(!database.api_key_valid("ck_wrong").unwrap());
        let stored: String = database
            .lock()
            .query_row("SELECT key_hash FROM api_keys", [], |row| row.get(0))
            .unwrap();
        assert!(!stored.contains(&key));
    }
}
