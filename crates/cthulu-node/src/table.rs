//! [`VmTable`]: the node's own SQLite table of VMs (`<home>/node.db`): vm_id → sandbox,
//! tier, web port, terminal secret and token. It is what lets a restarted node list the
//! same VMs with the same ids, ports and terminal URLs.
//!
//! One connection behind a mutex, never held across an `.await` (every query takes
//! microseconds). A row without a sandbox is a VM being created; a node that stopped in
//! the middle finds such rows at start and cleans them up.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use cthulu_server::AccessToken;
use cthulu_types::SandboxId;
use rusqlite::{params, Connection, OptionalExtension};

use crate::tier::Tier;

const MIGRATIONS: &[&str] = &[r#"
    CREATE TABLE vms (
        vm_id INTEGER PRIMARY KEY,
        sandbox_id TEXT UNIQUE,
        tier TEXT NOT NULL,
        web_port INTEGER NOT NULL UNIQUE,
        terminal_secret TEXT NOT NULL,
        terminal_token TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL
    );
"#];

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("cannot open the node database {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot migrate the node database {path} to version {version}")]
    Migrate {
        path: PathBuf,
        version: usize,
        #[source]
        source: rusqlite::Error,
    },
    #[error("node database query {query} failed")]
    Query {
        query: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("vm {vm_id} of the node database is corrupt: {reason}")]
    Corrupt { vm_id: i64, reason: String },
    #[error("web port {web_port_base} + vm id {vm_id} is past 65535")]
    PortRange { web_port_base: u16, vm_id: u32 },
}

fn query_error(query: &'static str) -> impl FnOnce(rusqlite::Error) -> TableError {
    move |source| TableError::Query { query, source }
}

/// One VM as the node remembers it.
#[derive(Debug, Clone, PartialEq)]
pub struct VmRecord {
    pub vm_id: u32,
    /// `None` while the VM is being created.
    pub sandbox_id: Option<SandboxId>,
    pub tier: Tier,
    pub web_port: u16,
    /// The path segment of the terminal page's URL.
    pub terminal_secret: AccessToken,
    /// What the page's `token` answers and the WebSocket handshake must carry.
    pub terminal_token: AccessToken,
    pub created_at_ms: u64,
}

pub struct VmTable {
    path: PathBuf,
    connection: Mutex<Connection>,
}

impl VmTable {
    pub fn open(path: &Path) -> Result<VmTable, TableError> {
        let open_error = |source| TableError::Open {
            path: path.to_owned(),
            source,
        };
        let connection = Connection::open(path).map_err(open_error)?;
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(open_error)?;
        connection
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_error)?;
        migrate(&connection, path)?;
        Ok(VmTable {
            path: path.to_owned(),
            connection: Mutex::new(connection),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes the smallest free vm_id (so ids and ports stay in `0..limit`) and records a
    /// VM being created on `web_port_base + vm_id`, with fresh terminal secrets; `None`
    /// when `limit` VMs (complete or being created) exist already.
    pub fn allocate(
        &self,
        tier: Tier,
        web_port_base: u16,
        limit: usize,
    ) -> Result<Option<VmRecord>, TableError> {
        let mut connection = self.lock();
        let transaction = connection
            .transaction()
            .map_err(query_error("begin allocate"))?;
        let taken: Vec<u32> = {
            let mut statement = transaction
                .prepare("SELECT vm_id FROM vms ORDER BY vm_id")
                .map_err(query_error("list vm ids"))?;
            let rows = statement
                .query_map([], |row| row.get::<_, u32>(0))
                .map_err(query_error("list vm ids"))?;
            rows.collect::<Result<_, _>>()
                .map_err(query_error("list vm ids"))?
        };
        if taken.len() >= limit {
            return Ok(None);
        }
        let vm_id = smallest_free(&taken);
        let web_port =
            u16::try_from(u32::from(web_port_base) + vm_id).map_err(|_| TableError::PortRange {
                web_port_base,
                vm_id,
            })?;
        let record = VmRecord {
            vm_id,
            sandbox_id: None,
            tier,
            web_port,
            terminal_secret: AccessToken::generate(),
            terminal_token: AccessToken::generate(),
            created_at_ms: cthulu_types::now_ms(),
        };
        transaction
            .execute(
                "INSERT INTO vms (vm_id, sandbox_id, tier, web_port, terminal_secret, terminal_token, created_at_ms)
                 VALUES (?1, NULL, ?2, ?3, ?4, ?5, ?6)",
                params![
                    record.vm_id,
                    record.tier.as_str(),
                    record.web_port,
                    record.terminal_secret.expose(),
                    record.terminal_token.expose(),
                    record.created_at_ms as i64,
                ],
            )
            .map_err(query_error("insert vm"))?;
        transaction
            .commit()
            .map_err(query_error("commit allocate"))?;
        Ok(Some(record))
    }

    /// The VM's sandbox exists: the VM is complete.
    pub fn set_sandbox(&self, vm_id: u32, sandbox_id: &SandboxId) -> Result<(), TableError> {
        self.lock()
            .execute(
                "UPDATE vms SET sandbox_id = ?2 WHERE vm_id = ?1",
                params![vm_id, sandbox_id.as_str()],
            )
            .map_err(query_error("set vm sandbox"))?;
        Ok(())
    }

    /// Forgets a VM; forgetting an unknown one does nothing.
    pub fn remove(&self, vm_id: u32) -> Result<(), TableError> {
        self.lock()
            .execute("DELETE FROM vms WHERE vm_id = ?1", params![vm_id])
            .map_err(query_error("delete vm"))?;
        Ok(())
    }

    pub fn get(&self, vm_id: u32) -> Result<Option<VmRecord>, TableError> {
        let row = self
            .lock()
            .query_row(
                &format!("{SELECT} WHERE vm_id = ?1"),
                params![vm_id],
                raw_row,
            )
            .optional()
            .map_err(query_error("get vm"))?;
        row.map(RawRow::into_record).transpose()
    }

    /// Every VM, complete or being created, by id.
    pub fn list(&self) -> Result<Vec<VmRecord>, TableError> {
        let connection = self.lock();
        let mut statement = connection
            .prepare(&format!("{SELECT} ORDER BY vm_id"))
            .map_err(query_error("list vms"))?;
        let rows = statement
            .query_map([], raw_row)
            .map_err(query_error("list vms"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(query_error("list vms"))?;
        rows.into_iter().map(RawRow::into_record).collect()
    }
}

const SELECT: &str = "SELECT vm_id, sandbox_id, tier, web_port, terminal_secret, terminal_token, created_at_ms FROM vms";

/// A row as stored, checked by [`RawRow::into_record`].
struct RawRow {
    vm_id: i64,
    sandbox_id: Option<String>,
    tier: String,
    web_port: i64,
    terminal_secret: String,
    terminal_token: String,
    created_at_ms: i64,
}

fn raw_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
    Ok(RawRow {
        vm_id: row.get(0)?,
        sandbox_id: row.get(1)?,
        tier: row.get(2)?,
        web_port: row.get(3)?,
        terminal_secret: row.get(4)?,
        terminal_token: row.get(5)?,
        created_at_ms: row.get(6)?,
    })
}

impl RawRow {
    fn into_record(self) -> Result<VmRecord, TableError> {
        let corrupt = |reason: String| TableError::Corrupt {
            vm_id: self.vm_id,
            reason,
        };
        let vm_id =
            u32::try_from(self.vm_id).map_err(|_| corrupt("the id is out of range".into()))?;
        let web_port = u16::try_from(self.web_port)
            .map_err(|_| corrupt(format!("web port {} is out of range", self.web_port)))?;
        let tier = Tier::parse(&self.tier)
            .ok_or_else(|| corrupt(format!("unknown tier {:?}", self.tier)))?;
        let sandbox_id = self
            .sandbox_id
            .as_deref()
            .map(SandboxId::parse)
            .transpose()
            .map_err(|error| corrupt(format!("bad sandbox id: {error}")))?;
        Ok(VmRecord {
            vm_id,
            sandbox_id,
            tier,
            web_port,
            terminal_secret: AccessToken::new(self.terminal_secret),
            terminal_token: AccessToken::new(self.terminal_token),
            created_at_ms: self.created_at_ms.max(0) as u64,
        })
    }
}

/// The smallest id not in `taken` (sorted ascending).
fn smallest_free(taken: &[u32]) -> u32 {
    let mut candidate = 0;
    for &vm_id in taken {
        if vm_id != candidate {
            break;
        }
        candidate += 1;
    }
    candidate
}

fn migrate(connection: &Connection, path: &Path) -> Result<(), TableError> {
    cthulu_server::db::apply_migrations(connection, MIGRATIONS).map_err(|(version, source)| {
        TableError::Migrate {
            path: path.to_owned(),
            version,
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> (tempfile::TempDir, VmTable) {
        let dir = tempfile::tempdir().unwrap();
        let table = VmTable::open(&dir.path().join("node.db")).unwrap();
        (dir, table)
    }

    #[test]
    fn ids_are_the_smallest_free_and_ports_follow_them() {
        let (_dir, table) = table();
        let first = table.allocate(Tier::Nano, 7700, 10).unwrap().unwrap();
        let second = table.allocate(Tier::Micro, 7700, 10).unwrap().unwrap();
        let third = table.allocate(Tier::Nano, 7700, 10).unwrap().unwrap();
        assert_eq!(
            (first.vm_id, second.vm_id, third.vm_id),
            (0, 1, 2),
            "ids count from 0"
        );
        assert_eq!((first.web_port, third.web_port), (7700, 7702));
        assert_ne!(first.terminal_secret, second.terminal_secret);
        assert_ne!(first.terminal_secret, first.terminal_token);
        table.remove(1).unwrap();
        assert_eq!(
            table.allocate(Tier::Nano, 7700, 10).unwrap().unwrap().vm_id,
            1
        );
        assert_eq!(
            table.allocate(Tier::Nano, 7700, 10).unwrap().unwrap().vm_id,
            3
        );
    }

    #[test]
    fn records_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.db");
        let sandbox_id = SandboxId::generate();
        let created = {
            let table = VmTable::open(&path).unwrap();
            let record = table.allocate(Tier::Micro, 9000, 10).unwrap().unwrap();
            table.set_sandbox(record.vm_id, &sandbox_id).unwrap();
            record
        };
        let table = VmTable::open(&path).unwrap();
        let found = table.get(created.vm_id).unwrap().unwrap();
        assert_eq!(found.sandbox_id.as_ref(), Some(&sandbox_id));
        assert_eq!(found.terminal_secret, created.terminal_secret);
        assert_eq!(found.terminal_token, created.terminal_token);
        assert_eq!((found.tier, found.web_port), (Tier::Micro, 9000));
        assert_eq!(table.list().unwrap().len(), 1);
        assert!(table.get(7).unwrap().is_none());
    }

    #[test]
    fn a_port_past_65535_is_refused() {
        let (_dir, table) = table();
        table.allocate(Tier::Nano, 65535, 10).unwrap().unwrap();
        assert!(matches!(
            table.allocate(Tier::Nano, 65535, 10),
            Err(TableError::PortRange { vm_id: 1, .. })
        ));
        assert_eq!(table.list().unwrap().len(), 1, "nothing half-recorded");
    }

    #[test]
    fn nothing_is_allocated_past_the_limit() {
        let (_dir, table) = table();
        table.allocate(Tier::Nano, 7700, 2).unwrap().unwrap();
        table.allocate(Tier::Nano, 7700, 2).unwrap().unwrap();
        assert!(table.allocate(Tier::Nano, 7700, 2).unwrap().is_none());
        table.remove(0).unwrap();
        assert_eq!(
            table.allocate(Tier::Nano, 7700, 2).unwrap().unwrap().vm_id,
            0
        );
    }

    #[test]
    fn smallest_free_fills_gaps() {
        assert_eq!(smallest_free(&[]), 0);
        assert_eq!(smallest_free(&[0, 1, 2]), 3);
        assert_eq!(smallest_free(&[1, 2]), 0);
        assert_eq!(smallest_free(&[0, 2, 3]), 1);
    }
}
