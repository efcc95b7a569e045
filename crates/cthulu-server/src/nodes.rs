//! The registered nodes of the remote backend, in the database: name, URL, the token the
//! platform calls the node with, and when it was added. The token never leaves the
//! server: no route returns it and nothing logs it.

use cthulu_remote::Node;
use rusqlite::params;

use crate::db::{query_error, Database, DbError};

/// A node as the database keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub node: Node,
    pub added_at_ms: u64,
}

impl Database {
    /// Stores a new node; `false` when the name is taken.
    pub fn insert_node(&self, node: &Node, added_at_ms: u64) -> Result<bool, DbError> {
        let inserted = self
            .lock()
            .execute(
                "INSERT INTO nodes (name, url, token, added_at_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name) DO NOTHING",
                params![node.name, node.url, node.token, added_at_ms as i64],
            )
            .map_err(query_error("insert node"))?;
        Ok(inserted == 1)
    }

    /// Every node, by name.
    pub fn list_nodes(&self) -> Result<Vec<NodeRecord>, DbError> {
        let connection = self.lock();
        let mut statement = connection
            .prepare("SELECT name, url, token, added_at_ms FROM nodes ORDER BY name")
            .map_err(query_error("list nodes"))?;
        let rows = statement
            .query_map([], |row| {
                Ok(NodeRecord {
                    node: Node {
                        name: row.get(0)?,
                        url: row.get(1)?,
                        token: row.get(2)?,
                    },
                    added_at_ms: row.get::<_, i64>(3)? as u64,
                })
            })
            .map_err(query_error("list nodes"))?;
        rows.collect::<Result<_, _>>()
            .map_err(query_error("list nodes"))
    }

    /// Forgets a node; `false` when there was none of that name.
    pub fn delete_node(&self, name: &str) -> Result<bool, DbError> {
        let deleted = self
            .lock()
            .execute("DELETE FROM nodes WHERE name = ?1", params![name])
            .map_err(query_error("delete node"))?;
        Ok(deleted == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn nodes_are_stored_listed_and_removed_in_a_private_file() {
        let home = tempfile::tempdir().unwrap();
        let path = home.path().join("cthulu.db");
        let db = Database::open(&path).unwrap();
        let node = Node {
            name: "gpu1".into(),
            url: "http://10.0.0.2:8081".into(),
            token: "t0ken".into(),
        };
        assert!(db.insert_node(&node, 5).unwrap());
        assert!(
            !db.insert_node(&node, 6).unwrap(),
            "a name is registered once"
        );
        assert_eq!(
            db.list_nodes().unwrap(),
            vec![NodeRecord {
                node: node.clone(),
                added_at_ms: 5
            }]
        );
        assert!(db.delete_node("gpu1").unwrap());
        assert!(!db.delete_node("gpu1").unwrap());
        for file in ["cthulu.db", "cthulu.db-wal", "cthulu.db-shm"] {
            let file = home.path().join(file);
            if let Ok(metadata) = std::fs::metadata(&file) {
                assert_eq!(
                    metadata.permissions().mode() & 0o777,
                    0o600,
                    "{}",
                    file.display()
                );
            }
        }
    }

    #[test]
    fn an_existing_readable_database_is_made_private() {
        let home = tempfile::tempdir().unwrap();
        let path = home.path().join("cthulu.db");
        drop(Database::open(&path).unwrap());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(Database::open(&path).unwrap());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
