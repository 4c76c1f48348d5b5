//! The SQLite schema and the connection settings every connection gets.
//! Versioned with `PRAGMA user_version`; a file from a newer nines is
//! refused rather than misread.
//!
//! Version 2 adds `chunks` (compressed runs of samples, see `chunk.rs`) and
//! turns on `auto_vacuum = INCREMENTAL` so deleted pages can be returned to
//! the file system. A version 1 file is migrated in place at open: the
//! table is added, and the file is rebuilt once with `VACUUM` (needed to
//! change the auto-vacuum mode; it takes time and free disk space in
//! proportion to the file). Its raw rows stay in `samples`, the head, and
//! the writer compacts them into chunks in the background.

use rusqlite::Connection;

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = 2;

const SCHEMA_V1: &str = "
CREATE TABLE series (
    id      INTEGER PRIMARY KEY,
    metric  TEXT NOT NULL,
    labels  TEXT NOT NULL UNIQUE          -- JSON array of [name, value], sorted
);
-- The head: recently written samples, one row each (the ingest log).
-- Values are stored as the f64's bits so NaN (and the stale marker's
-- payload) survive: SQLite turns a NaN REAL into NULL.
CREATE TABLE samples (
    series_id INTEGER NOT NULL,
    ts        INTEGER NOT NULL,
    value     INTEGER NOT NULL,
    PRIMARY KEY (series_id, ts)
) WITHOUT ROWID;
CREATE TABLE applied_batches (
    stream     TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    applied_at INTEGER NOT NULL,
    PRIMARY KEY (stream, seq)
) WITHOUT ROWID;
CREATE INDEX applied_batches_by_time ON applied_batches (applied_at);
CREATE TABLE metadata (
    metric TEXT PRIMARY KEY,
    kind   TEXT NOT NULL,
    help   TEXT NOT NULL,
    unit   TEXT NOT NULL
);
";

/// What version 2 adds to version 1.
const SCHEMA_V2: &str = "
-- Compacted samples: one blob per run (chunk.rs). The id orders chunks by
-- creation: where two overlap at a timestamp, the later chunk wins (and a
-- head row wins over both). The index covers the range test of a read.
CREATE TABLE chunks (
    id        INTEGER PRIMARY KEY,
    series_id INTEGER NOT NULL,
    start_ts  INTEGER NOT NULL,
    end_ts    INTEGER NOT NULL,
    count     INTEGER NOT NULL,
    data      BLOB NOT NULL
);
CREATE INDEX chunks_by_series ON chunks (series_id, end_ts, start_ts);
";

/// Settings for every connection: WAL so readers never block the writer,
/// and a busy timeout so a reader opening during a checkpoint waits.
pub fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a commit is on disk before the push is acknowledged, across
    // power loss as well as process death. Group commit keeps the fsyncs
    // to one per write round, not one per batch.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

/// The writer's page cache: the head (one row per recent sample, keyed by
/// series) is touched all over by every write round, so it should stay in
/// memory. Negative: KiB.
pub fn configure_writer(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "cache_size", -65536)
}

/// Creates or checks the schema, migrating older versions.
pub fn migrate(conn: &Connection) -> Result<(), String> {
    let err = |e: rusqlite::Error| e.to_string();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(err)?;
    match version {
        0 => {
            // Only takes effect before the first table exists.
            conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
                .map_err(err)?;
            conn.execute_batch(&format!(
                "BEGIN; {SCHEMA_V1} {SCHEMA_V2} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            ))
            .map_err(err)?;
        }
        1 => {
            conn.execute_batch(&format!(
                "BEGIN; {SCHEMA_V2} PRAGMA user_version = 2; COMMIT;"
            ))
            .map_err(err)?;
            tracing::info!("storage schema migrated from version 1 to 2");
        }
        SCHEMA_VERSION => {}
        v => {
            return Err(format!(
                "database schema version {v} is newer than this collector understands ({SCHEMA_VERSION})"
            ));
        }
    }
    ensure_incremental_vacuum(conn).map_err(err)
}

/// Turns on incremental auto-vacuum if the file does not have it yet (a
/// file created by version 1): that takes one `VACUUM`.
fn ensure_incremental_vacuum(conn: &Connection) -> rusqlite::Result<()> {
    let mode: i64 = conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?;
    if mode == 2 {
        return Ok(());
    }
    let started = std::time::Instant::now();
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    conn.execute_batch("VACUUM")?;
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        "storage file rebuilt once for incremental auto-vacuum"
    );
    Ok(())
}

/// Frees up to `pages` free pages by moving them off the end of the file
/// (needs `auto_vacuum = INCREMENTAL`); returns how many remain free.
pub fn incremental_vacuum(conn: &Connection, pages: u32) -> rusqlite::Result<i64> {
    // Every step of the statement frees one page: run it to the end.
    let mut stmt = conn.prepare(&format!("PRAGMA incremental_vacuum({pages})"))?;
    let mut rows = stmt.query([])?;
    while rows.next()?.is_some() {}
    drop(rows);
    conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v1_file(path: &std::path::Path) {
        let conn = Connection::open(path).unwrap();
        configure(&conn).unwrap();
        conn.execute_batch(&format!(
            "BEGIN; {SCHEMA_V1} PRAGMA user_version = 1; COMMIT;"
        ))
        .unwrap();
        conn.execute_batch(
            "INSERT INTO series (id, metric, labels) VALUES (1, 'm', '[[\"__name__\",\"m\"]]');
             INSERT INTO samples VALUES (1, 1000, 4607182418800017408);",
        )
        .unwrap();
    }

    fn pragma(conn: &Connection, name: &str) -> i64 {
        conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_new_file_gets_incremental_vacuum_and_the_current_version() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("n.db")).unwrap();
        configure(&conn).unwrap();
        migrate(&conn).unwrap();
        assert_eq!(pragma(&conn, "auto_vacuum"), 2);
        assert_eq!(pragma(&conn, "user_version"), SCHEMA_VERSION);
        // Opening again changes nothing.
        migrate(&conn).unwrap();
    }

    #[test]
    fn a_version_1_file_is_migrated_keeping_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        v1_file(&path);
        let conn = Connection::open(&path).unwrap();
        configure(&conn).unwrap();
        assert_eq!(pragma(&conn, "auto_vacuum"), 0);
        migrate(&conn).unwrap();
        assert_eq!(pragma(&conn, "auto_vacuum"), 2);
        assert_eq!(pragma(&conn, "user_version"), 2);
        let n: i64 = conn
            .query_row("SELECT count(*) FROM samples", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        let n: i64 = conn
            .query_row("SELECT count(*) FROM chunks", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
    }

    #[test]
    fn a_newer_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("x.db")).unwrap();
        conn.execute_batch("PRAGMA user_version = 99").unwrap();
        assert!(migrate(&conn).unwrap_err().contains("newer"));
    }
}
