//! The small SQLite files the collector keeps beside its store in the data
//! dir (`rules.db`, `slo.db`, `notify.db`, `agents.db`): one way to open
//! them, so each is in WAL mode with a busy timeout and the durability its
//! owner asks for, and has its tables before it is used.

use rusqlite::Connection;
use std::path::Path;
use std::time::Duration;

/// How much a commit waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=FULL`: a commit survives power loss (what was
    /// acknowledged to someone: API-made SLOs, the notification outbox).
    Full,
    /// `synchronous=NORMAL`: a commit may be lost on power loss, never
    /// corrupted (state that is rebuilt or re-saved every few seconds).
    Normal,
}

/// Opens (creating) the file at `path` and runs `schema` (statements that
/// are safe to run again, such as `CREATE TABLE IF NOT EXISTS`).
pub fn open(path: &Path, durability: Durability, schema: &str) -> rusqlite::Result<Connection> {
    prepare(Connection::open(path)?, durability, schema)
}

/// As [`open`], for a connection already made (e.g. in memory, for tests).
pub fn prepare(
    conn: Connection,
    durability: Durability,
    schema: &str,
) -> rusqlite::Result<Connection> {
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let sync = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    conn.execute_batch(schema)?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_in_wal_with_the_asked_durability_and_the_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let c = open(
            &path,
            Durability::Full,
            "CREATE TABLE IF NOT EXISTS t (a INTEGER);",
        )
        .unwrap();
        let mode: String = c
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        let sync: i64 = c.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(sync, 2);
        drop(c);
        // Opening again keeps the table and its rows.
        let c = open(
            &path,
            Durability::Normal,
            "CREATE TABLE IF NOT EXISTS t (a INTEGER);",
        )
        .unwrap();
        c.execute("INSERT INTO t VALUES (1)", []).unwrap();
        let sync: i64 = c.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
        assert_eq!(sync, 1);
    }
}
