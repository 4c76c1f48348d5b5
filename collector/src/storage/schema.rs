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
//!
//! Version 3 replaces the row-per-sample head table `samples` with
//! `ingest_log` (one row per committed write, `log.rs`) and an in-memory
//! head (`head.rs`), and adds `series.log_from`: the first log row whose
//! samples of that series are not in chunks yet (replay skips the series'
//! samples in older rows). A version 2 file is migrated at open: the rows
//! of `samples` move into log rows (up to 4096 samples each) in one
//! transaction and the table is dropped.
//!
//! Version 4 adds the rollup tables `rollup_1m` (a row per series and 2 h
//! window) and `rollup_1h` (a row per series and day), see `rollup.rs`. A
//! version 3 file gets the empty tables at open; the writer's backfill pass
//! rolls up the windows compacted before (answered from their chunks until
//! then).

use rusqlite::Connection;

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = 4;

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

/// What version 3 changes (the move of `samples` rows is done in code).
const SCHEMA_V3: &str = "
-- The ingest log: one row per committed write, its samples encoded
-- (log.rs). AUTOINCREMENT: ids never go back, even after the newest rows
-- were deleted, so series.log_from stays meaningful.
CREATE TABLE ingest_log (
    id   INTEGER PRIMARY KEY AUTOINCREMENT,
    data BLOB NOT NULL
);
ALTER TABLE series ADD COLUMN log_from INTEGER NOT NULL DEFAULT 0;
";

/// What version 4 adds: rollups (rollup.rs). Rowid tables with a unique
/// key: rows are one to a few KB, too large for a WITHOUT ROWID table's
/// pages.
const SCHEMA_V4: &str = "
CREATE TABLE rollup_1m (
    id           INTEGER PRIMARY KEY,
    series_id    INTEGER NOT NULL,
    window_start INTEGER NOT NULL,
    data         BLOB NOT NULL
);
CREATE UNIQUE INDEX rollup_1m_key ON rollup_1m (series_id, window_start);
CREATE TABLE rollup_1h (
    id        INTEGER PRIMARY KEY,
    series_id INTEGER NOT NULL,
    day_start INTEGER NOT NULL,
    data      BLOB NOT NULL
);
CREATE UNIQUE INDEX rollup_1h_key ON rollup_1h (series_id, day_start);
-- Named values the store keeps about itself: raw_deleted_before, the
-- largest raw retention cutoff ever applied (windows starting before it
-- may have lost chunks, so their rollup rows are not recomputed), and
-- rollup_backfill_done, once a backfill pass went through every series.
CREATE TABLE storage_marks (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
";

/// Most samples one migrated log row holds.
const MIGRATED_ROW_SAMPLES: usize = 4096;

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
    conn.pragma_update(None, "cache_size", -16384)
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
                "BEGIN; {SCHEMA_V1} {SCHEMA_V2} {SCHEMA_V3} {SCHEMA_V4} DROP TABLE samples;
                 PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            ))
            .map_err(err)?;
        }
        1 | 2 => {
            conn.execute_batch("BEGIN").map_err(err)?;
            let step = (|| {
                if version == 1 {
                    conn.execute_batch(SCHEMA_V2)?;
                }
                conn.execute_batch(SCHEMA_V3)?;
                conn.execute_batch(SCHEMA_V4)?;
                let moved = samples_to_log(conn)?;
                conn.execute_batch(&format!(
                    "DROP TABLE samples; PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
                ))?;
                Ok::<_, rusqlite::Error>(moved)
            })();
            match step {
                Ok(moved) => tracing::info!(
                    from = version,
                    to = SCHEMA_VERSION,
                    head_samples = moved,
                    "storage schema migrated"
                ),
                Err(e) => {
                    let _ = conn.execute_batch("ROLLBACK");
                    return Err(err(e));
                }
            }
        }
        3 => {
            conn.execute_batch(&format!(
                "BEGIN; {SCHEMA_V4} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            ))
            .map_err(|e| {
                let _ = conn.execute_batch("ROLLBACK");
                err(e)
            })?;
            tracing::info!(from = 3, to = SCHEMA_VERSION, "storage schema migrated");
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

/// Moves every `samples` row into `ingest_log` rows; returns how many.
fn samples_to_log(conn: &Connection) -> rusqlite::Result<usize> {
    let mut stmt =
        conn.prepare("SELECT series_id, ts, value FROM samples ORDER BY series_id, ts")?;
    let mut rows = stmt.query([])?;
    let mut put = conn.prepare("INSERT INTO ingest_log (data) VALUES (?1)")?;
    let mut groups: Vec<super::log::Group> = Vec::new();
    let (mut pending, mut moved) = (0usize, 0usize);
    while let Some(r) = rows.next()? {
        let (id, ts, bits): (i64, i64, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
        match groups.last_mut() {
            Some(g) if g.0.0 == id => g.1.push((ts, bits as u64)),
            _ => groups.push((super::index::SeriesId(id), vec![(ts, bits as u64)])),
        }
        pending += 1;
        moved += 1;
        if pending >= MIGRATED_ROW_SAMPLES {
            put.execute([super::log::encode(&groups)])?;
            groups.clear();
            pending = 0;
        }
    }
    if pending > 0 {
        put.execute([super::log::encode(&groups)])?;
    }
    Ok(moved)
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
        assert_eq!(pragma(&conn, "user_version"), SCHEMA_VERSION);
        let data: Vec<u8> = conn
            .query_row("SELECT data FROM ingest_log", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            super::super::log::decode(&data).unwrap(),
            vec![(
                super::super::index::SeriesId(1),
                vec![(1000, 4607182418800017408)]
            )]
        );
        let n: i64 = conn
            .query_row("SELECT count(*) FROM chunks", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
    }

    #[test]
    fn a_version_3_file_gets_the_rollup_tables_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v3.db");
        {
            let conn = Connection::open(&path).unwrap();
            configure(&conn).unwrap();
            conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
                .unwrap();
            conn.execute_batch(&format!(
                "BEGIN; {SCHEMA_V1} {SCHEMA_V2} {SCHEMA_V3} DROP TABLE samples;
                 PRAGMA user_version = 3; COMMIT;"
            ))
            .unwrap();
            conn.execute_batch(
                "INSERT INTO series (id, metric, labels) VALUES (1, 'm', '[[\"__name__\",\"m\"]]');
                 INSERT INTO chunks (series_id, start_ts, end_ts, count, data) VALUES (1, 0, 5, 2, x'00');
                 INSERT INTO ingest_log (data) VALUES (x'01');",
            )
            .unwrap();
        }
        let conn = Connection::open(&path).unwrap();
        configure(&conn).unwrap();
        migrate(&conn).unwrap();
        assert_eq!(pragma(&conn, "user_version"), SCHEMA_VERSION);
        let count = |t: &str| -> i64 {
            conn.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(
            (count("series"), count("chunks"), count("ingest_log")),
            (1, 1, 1)
        );
        assert_eq!((count("rollup_1m"), count("rollup_1h")), (0, 0));
        // The key is unique: an upsert replaces.
        for _ in 0..2 {
            conn.execute(
                "INSERT INTO rollup_1m (series_id, window_start, data) VALUES (1, 0, x'02')
                 ON CONFLICT (series_id, window_start) DO UPDATE SET data = excluded.data",
                [],
            )
            .unwrap();
        }
        assert_eq!(count("rollup_1m"), 1);
        // Opening again changes nothing.
        migrate(&conn).unwrap();
        assert_eq!(count("rollup_1m"), 1);
    }

    #[test]
    fn a_newer_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("x.db")).unwrap();
        conn.execute_batch("PRAGMA user_version = 99").unwrap();
        assert!(migrate(&conn).unwrap_err().contains("newer"));
    }
}
