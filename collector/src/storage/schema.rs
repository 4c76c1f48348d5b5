//! The SQLite schema and the connection settings every connection gets.
//! Versioned with `PRAGMA user_version`; a file from a newer nines is
//! refused rather than misread.

use rusqlite::Connection;

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = 1;

const SCHEMA_V1: &str = "
CREATE TABLE series (
    id      INTEGER PRIMARY KEY,
    metric  TEXT NOT NULL,
    labels  TEXT NOT NULL UNIQUE          -- JSON array of [name, value], sorted
);
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

/// Creates or checks the schema.
pub fn migrate(conn: &Connection) -> Result<(), String> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    match version {
        0 => {
            conn.execute_batch(&format!(
                "BEGIN; {SCHEMA_V1} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            ))
            .map_err(|e| e.to_string())?;
            Ok(())
        }
        SCHEMA_VERSION => Ok(()),
        v => Err(format!(
            "database schema version {v} is newer than this collector understands ({SCHEMA_VERSION})"
        )),
    }
}
