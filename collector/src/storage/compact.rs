//! Moving samples from the head into chunks, and deleting what retention
//! no longer keeps. Only the writer thread calls these, inside its own
//! transaction, so a step is atomic; the writer drops the moved samples
//! from the in-memory head only once the chunk holding them is committed.
//!
//! Chunk rules: a chunk never crosses a [`WINDOW_MS`] boundary (windows are
//! aligned to the Unix epoch), holds at most [`CHUNK_MAX_SAMPLES`] samples
//! and is full once its encoding reaches about [`CHUNK_FULL_BYTES`] (two
//! fit in one 4 KiB SQLite page). Chunks are appended (ids ascend) and,
//! in the usual case, written once: compaction writes only full chunks and
//! leaves the rest of an open window's samples in the head, so pages fill up
//! and no hole is left behind by a rewrite.
//!
//! A unit compacts the head samples of a series' oldest window (at most
//! [`UNIT_MAX_ROWS`]) merged with every chunk they overlap (late samples).
//! When the window is closed — the series has rows in a later window, or
//! the wall clock is past the window and the series went quiet, or the
//! caller forces it — it also merges the window's last chunk if that one is
//! not full, and writes everything. Whenever an existing chunk was merged,
//! everything is written too (its samples must land somewhere). Merged
//! chunks are deleted in the same transaction that writes their samples.
//! Chunks that do not decode are left in place, counted and logged; the new
//! chunks win over them on read anyway.
//!
//! A unit that wrote or merged chunks recomputes the window's rollup rows
//! (`rollup.rs`) from all of the window's chunks in the same transaction
//! when no head sample of the window is left after it (it closed the
//! window, merged into its chunks, or its chunks took every sample), or
//! when the window has rows already, unless the
//! window starts before [`Close::rollups_from`] (raw retention may have
//! taken some of its chunks already; its rows stay as they are). A window
//! still in the head is read by folding its raw samples, so rows of an
//! open window written in order are made once, when it closes, not once
//! per chunk; a row, once there, always holds every chunk of its window.

use super::chunk::{self, ChunkEncoder};
use super::index::SeriesId;
use super::read::{self, Run};
use super::rollup;
use rusqlite::{Connection, params};

/// Width of the aligned time windows chunks never cross (2 h).
pub const WINDOW_MS: i64 = 2 * 3600 * 1000;
/// Most samples in one chunk.
pub const CHUNK_MAX_SAMPLES: usize = 8192;
/// A chunk is full once its encoding is within the largest sample encoding
/// (20 bytes) of this size: a row then stays under half of a 4 KiB page.
pub const CHUNK_FULL_BYTES: usize = 1990;
const LARGEST_SAMPLE_BYTES: usize = 20;
/// Most head rows one compaction unit moves.
pub const UNIT_MAX_ROWS: usize = 8192;

/// First timestamp of the window holding `ts`.
pub fn window_start(ts: i64) -> i64 {
    ts.saturating_sub(ts.rem_euclid(WINDOW_MS))
}

/// Last timestamp of the window holding `ts`.
pub fn window_last(ts: i64) -> i64 {
    window_start(ts).saturating_add(WINDOW_MS - 1)
}

/// When a unit may close its window.
#[derive(Debug, Clone, Copy)]
pub struct Close {
    /// Close whatever the clock says (explicit compaction).
    pub force: bool,
    /// The wall clock is past this timestamp and the series went quiet:
    /// windows ending before it are closed.
    pub quiet_before: Option<i64>,
    /// Windows starting before this are older than raw retention: their
    /// rollup rows are not recomputed.
    pub rollups_from: i64,
}

/// What one compaction unit did.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct UnitOutcome {
    /// Head rows moved into chunks.
    pub rows: usize,
    /// Existing chunks merged (and deleted).
    pub merged: usize,
    /// Chunks written.
    pub written: usize,
    /// Chunks that did not decode (left in place).
    pub corrupt: usize,
    /// Another unit of this series would move rows now (a later window's
    /// rows follow, or the row limit cut this one short).
    pub more: bool,
    /// Encoded bytes per sample seen, to size the next compaction.
    pub bytes_per_sample: Option<f64>,
    /// Head samples up to this timestamp are in chunks now.
    pub moved_to: Option<i64>,
    /// Rollup rows written.
    pub rollups: rollup::Written,
}

/// Compacts the oldest window of a series' head (see the module header).
/// `head` is the series' whole head, ascending, one sample per timestamp.
/// `corrupt` hears about chunks that do not decode. The head samples with
/// timestamps up to [`UnitOutcome::moved_to`] are in chunks once the
/// transaction commits; the caller drops them from the head then.
pub fn compact_unit(
    conn: &Connection,
    id: SeriesId,
    head: &[(i64, f64)],
    close: Close,
    corrupt: &mut dyn FnMut(read::CorruptChunk),
) -> rusqlite::Result<UnitOutcome> {
    let mut out = UnitOutcome::default();
    let Some(&(a, _)) = head.first() else {
        return Ok(out);
    };
    let (ws, we) = (window_start(a), window_last(a));
    let in_window = head.partition_point(|s| s.0 <= we).min(UNIT_MAX_ROWS);
    let (unit, rest) = head.split_at(in_window);
    let head: Run = unit.to_vec();
    let b = head.last().map_or(a, |s| s.0);
    let later = !rest.is_empty();
    let moved_on = rest.last().is_some_and(|s| s.0 > we);
    let closed = close.force || moved_on || close.quiet_before.is_some_and(|q| we < q);

    // Chunks to merge: those overlapping [a, b], and, closing, the window's
    // last chunk ending before a if it is not full.
    let mut take: Vec<i64> = Vec::new();
    let mut open: Option<(i64, i64)> = None; // (end_ts, id)
    {
        let mut stmt = conn.prepare_cached(
            "SELECT id, start_ts, end_ts, count, length(data) FROM chunks
             WHERE series_id = ?1 AND end_ts >= ?2 AND start_ts <= ?3",
        )?;
        let mut rows = stmt.query((id.0, ws, b))?;
        while let Some(r) = rows.next()? {
            let (cid, s, e, n, len): (i64, i64, i64, i64, i64) =
                (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
            if e >= a {
                take.push(cid);
            } else if closed
                && s >= ws
                && (n as usize) < CHUNK_MAX_SAMPLES
                && (len as usize) + LARGEST_SAMPLE_BYTES < CHUNK_FULL_BYTES
                && open.is_none_or(|(oe, _)| e > oe)
            {
                open = Some((e, cid));
            }
        }
    }
    take.extend(open.map(|(_, cid)| cid));
    take.sort_unstable();

    let mut runs: Vec<Run> = Vec::with_capacity(take.len());
    let mut merged_ids = Vec::with_capacity(take.len());
    {
        let mut get = conn.prepare_cached("SELECT data FROM chunks WHERE id = ?1")?;
        for cid in take {
            let decoded = get.query_row([cid], |r| {
                Ok(read::blob(r.get_ref(0)?).and_then(chunk::decode))
            })?;
            match decoded {
                Ok(run) => {
                    runs.push(run);
                    merged_ids.push(cid);
                }
                Err(error) => {
                    out.corrupt += 1;
                    corrupt(read::CorruptChunk { id: cid, error });
                }
            }
        }
    }
    let rows = head.len();
    let merged = read::merge_two(read::merge_runs(runs), head);
    let write_all = closed || !merged_ids.is_empty();

    let mut del = conn.prepare_cached("DELETE FROM chunks WHERE id = ?1")?;
    for cid in &merged_ids {
        del.execute([cid])?;
    }
    out.merged = merged_ids.len();
    let cut = write_chunks(conn, id, &merged, write_all)?;
    out.written = cut.written;
    out.bytes_per_sample = cut.bytes_per_sample;
    // Samples now in chunks leave the head. Without write_all only head
    // samples were merged, so those after the last written chunk stay.
    out.moved_to = if write_all { Some(b) } else { cut.last_written };
    if let Some(to) = out.moved_to {
        out.rows = unit.partition_point(|s| s.0 <= to);
    }
    debug_assert!(out.rows <= rows);
    // Rolled up once the window's head part is all in chunks (readers fold
    // the raw samples of a window still in the head anyway), and again
    // whenever chunks of a rolled-up window change, so a row always holds
    // every chunk of its window. A window filled in order is read once for
    // its rows, not once per chunk.
    let left_head = out.rows == unit.len() && rest.first().is_none_or(|s| s.0 > we);
    if (out.written > 0 || out.merged > 0)
        && ws >= close.rollups_from
        && (left_head || rollup::has_rows(conn, id, ws)?)
    {
        out.rollups = rollup::update_window(conn, id, ws, corrupt)?;
    }
    out.more = (closed && later) || (rows == UNIT_MAX_ROWS && out.rows > 0);
    Ok(out)
}

/// What [`write_chunks`] did.
#[derive(Debug, Default)]
pub struct Cut {
    /// Chunks written.
    pub written: usize,
    /// Last timestamp written.
    pub last_written: Option<i64>,
    /// Encoded bytes per sample.
    pub bytes_per_sample: Option<f64>,
}

/// Cuts an ascending run into chunks by the rules above and inserts them;
/// the last, not full one only with `write_tail`.
pub fn write_chunks(
    conn: &Connection,
    id: SeriesId,
    samples: &[(i64, f64)],
    write_tail: bool,
) -> rusqlite::Result<Cut> {
    let mut put = conn.prepare_cached(
        "INSERT INTO chunks (series_id, start_ts, end_ts, count, data) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    let mut cut = Cut::default();
    let (mut bytes, mut count) = (0usize, 0usize);
    let mut enc = ChunkEncoder::new();
    let mut first = 0i64;
    let mut flush = |enc: ChunkEncoder, first: i64, cut: &mut Cut| -> rusqlite::Result<()> {
        let (n, last) = (enc.len(), enc.last_ts().unwrap_or(first));
        let data = enc
            .finish()
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        put.execute(params![id.0, first, last, n as i64, data])?;
        cut.written += 1;
        cut.last_written = Some(last);
        Ok(())
    };
    for &(t, v) in samples {
        if !enc.is_empty()
            && (enc.len() >= CHUNK_MAX_SAMPLES
                || enc.size() + LARGEST_SAMPLE_BYTES >= CHUNK_FULL_BYTES
                || window_start(t) != window_start(first))
        {
            bytes += enc.size();
            count += enc.len();
            flush(std::mem::take(&mut enc), first, &mut cut)?;
        }
        if enc.is_empty() {
            first = t;
        }
        enc.push(t, v)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    }
    if !enc.is_empty() {
        bytes += enc.size();
        count += enc.len();
        if write_tail {
            flush(enc, first, &mut cut)?;
        }
    }
    if count > 0 {
        cut.bytes_per_sample = Some(bytes as f64 / count as f64);
    }
    Ok(cut)
}

/// What retention deleted for one series.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Deleted {
    /// Chunks deleted.
    pub chunks: usize,
    /// Samples deleted (in those chunks and from the head).
    pub samples: usize,
}

/// Deletes a series' chunks that end before `cutoff` (the caller drops
/// head samples before it once the transaction commits). A chunk that
/// straddles the cutoff is kept whole until it ends before it.
pub fn expire_series(conn: &Connection, id: SeriesId, cutoff: i64) -> rusqlite::Result<Deleted> {
    let (chunks, in_chunks): (i64, i64) = conn
        .prepare_cached(
            "SELECT count(*), coalesce(sum(count), 0) FROM chunks
             WHERE series_id = ?1 AND end_ts < ?2",
        )?
        .query_row((id.0, cutoff), |r| Ok((r.get(0)?, r.get(1)?)))?;
    if chunks > 0 {
        conn.prepare_cached("DELETE FROM chunks WHERE series_id = ?1 AND end_ts < ?2")?
            .execute((id.0, cutoff))?;
    }
    Ok(Deleted {
        chunks: chunks as usize,
        samples: in_chunks as usize,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_aligned_and_saturate_at_the_ends() {
        assert_eq!(window_start(0), 0);
        assert_eq!(window_start(WINDOW_MS - 1), 0);
        assert_eq!(window_start(WINDOW_MS), WINDOW_MS);
        assert_eq!(window_start(-1), -WINDOW_MS);
        assert_eq!(window_last(-1), -1);
        assert_eq!(window_start(i64::MIN), i64::MIN);
        assert_eq!(window_last(i64::MAX), i64::MAX);
    }
}
