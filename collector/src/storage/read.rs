//! Reading a series back: the chunks that overlap a range and the head
//! samples in it (copied from memory by the caller, before the read
//! transaction starts), merged into one ascending run with one value per
//! timestamp.
//!
//! Precedence at a timestamp held more than once: a head sample wins over
//! any chunk, and among chunks the one with the larger id (created later)
//! wins. Both follow from how data moves: a chunk only ever holds what was
//! in the head when it was built, and the head holds one value per
//! timestamp (a later write replaces it), so whatever is in the head now,
//! or in a later chunk, was written later.
//!
//! The head is copied before the snapshot is taken: a compaction that
//! commits in between leaves its samples in the copy and in the chunks the
//! snapshot sees (the same values), never in neither.
//!
//! A chunk that does not decode is skipped and reported to the caller; it
//! never fails the read.

use super::chunk::{self, ChunkError};
use super::index::SeriesId;
use rusqlite::Connection;
use rusqlite::types::ValueRef;

/// Samples ascending by timestamp.
pub type Run = Vec<(i64, f64)>;

/// A chunk that could not be decoded.
#[derive(Debug)]
pub struct CorruptChunk {
    /// The chunk's id.
    pub id: i64,
    /// Why.
    pub error: ChunkError,
}

/// A stored chunk's bytes; anything but a blob is corrupt.
pub fn blob(v: ValueRef<'_>) -> Result<&[u8], ChunkError> {
    match v {
        ValueRef::Blob(b) => Ok(b),
        _ => Err(ChunkError::Corrupt("not a blob")),
    }
}

/// Merges runs given in increasing precedence (each strictly ascending)
/// into one strictly ascending run; at a shared timestamp the run given
/// later wins.
pub fn merge_runs(mut runs: Vec<Run>) -> Run {
    runs.retain(|r| !r.is_empty());
    match runs.len() {
        0 => return Vec::new(),
        1 => return runs.pop().unwrap_or_default(),
        _ => {}
    }
    let mut order: Vec<usize> = (0..runs.len()).collect();
    order.sort_by_key(|&i| runs[i][0].0);
    let disjoint = order
        .windows(2)
        .all(|w| runs[w[0]][runs[w[0]].len() - 1].0 < runs[w[1]][0].0);
    let total = runs.iter().map(Vec::len).sum();
    let mut out: Run = Vec::with_capacity(total);
    if disjoint {
        // The usual case: chunks side by side.
        for i in order {
            out.extend_from_slice(&runs[i]);
        }
        return out;
    }
    // Overlaps: a stable sort keeps equal timestamps in precedence order,
    // and the last of each wins.
    let mut all: Run = Vec::with_capacity(total);
    for r in runs {
        all.extend(r);
    }
    all.sort_by_key(|s| s.0);
    for s in all {
        match out.last_mut() {
            Some(last) if last.0 == s.0 => *last = s,
            _ => out.push(s),
        }
    }
    out
}

/// Merges `low` with `high` (both strictly ascending); `high` wins at a
/// shared timestamp.
pub fn merge_two(low: Run, high: Run) -> Run {
    if high.is_empty() {
        return low;
    }
    if low.is_empty() {
        return high;
    }
    let mut out = Vec::with_capacity(low.len() + high.len());
    let (mut i, mut j) = (0, 0);
    while i < low.len() && j < high.len() {
        let (a, b) = (low[i], high[j]);
        if a.0 < b.0 {
            out.push(a);
            i += 1;
        } else {
            if a.0 == b.0 {
                i += 1;
            }
            out.push(b);
            j += 1;
        }
    }
    out.extend_from_slice(&low[i..]);
    out.extend_from_slice(&high[j..]);
    out
}

/// Every sample of a series in `[start, end]`: chunks and `head` (its head
/// samples in the range) merged. Corrupt chunks are passed to `corrupt`
/// and left out.
pub fn read_series(
    conn: &Connection,
    id: SeriesId,
    start: i64,
    end: i64,
    head: Run,
    corrupt: &mut dyn FnMut(CorruptChunk),
) -> rusqlite::Result<Run> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, data FROM chunks
         WHERE series_id = ?1 AND end_ts >= ?2 AND start_ts <= ?3 ORDER BY id",
    )?;
    let mut rows = stmt.query((id.0, start, end))?;
    let mut runs = Vec::new();
    while let Some(row) = rows.next()? {
        let chunk_id: i64 = row.get(0)?;
        let mut run = Vec::new();
        match blob(row.get_ref(1)?).and_then(|d| chunk::decode_range(d, start, end, &mut run)) {
            Ok(_) => runs.push(run),
            Err(error) => corrupt(CorruptChunk {
                id: chunk_id,
                error,
            }),
        }
    }
    Ok(merge_two(merge_runs(runs), head))
}

/// True when a series has a chunk sample in `[start, end]` (without
/// loading them unless a chunk straddles the whole range). The caller asks
/// the head first.
pub fn has_data(
    conn: &Connection,
    id: SeriesId,
    start: i64,
    end: i64,
    corrupt: &mut dyn FnMut(CorruptChunk),
) -> rusqlite::Result<bool> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, start_ts, end_ts FROM chunks
         WHERE series_id = ?1 AND end_ts >= ?2 AND start_ts <= ?3",
    )?;
    let mut rows = stmt.query((id.0, start, end))?;
    let mut straddling = Vec::new();
    while let Some(row) = rows.next()? {
        let (chunk_id, first, last): (i64, i64, i64) = (row.get(0)?, row.get(1)?, row.get(2)?);
        // A chunk holds samples at its first and last timestamps.
        if (start..=end).contains(&first) || (start..=end).contains(&last) {
            return Ok(true);
        }
        straddling.push(chunk_id);
    }
    drop(rows);
    let mut get = conn.prepare_cached("SELECT data FROM chunks WHERE id = ?1")?;
    for chunk_id in straddling {
        let mut found = false;
        let mut bad = None;
        get.query_row([chunk_id], |r| {
            let mut run = Vec::new();
            match blob(r.get_ref(0)?).and_then(|d| chunk::decode_range(d, start, end, &mut run)) {
                Ok(_) => found = !run.is_empty(),
                Err(e) => bad = Some(e),
            }
            Ok(())
        })?;
        if let Some(error) = bad {
            corrupt(CorruptChunk {
                id: chunk_id,
                error,
            });
        }
        if found {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Runs `f` inside one read transaction, so every statement sees the same
/// snapshot (a compaction committing in between cannot hide or double
/// samples).
pub fn in_snapshot<R, E: From<rusqlite::Error>>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<R, E>,
) -> Result<R, E> {
    // Prepared once per connection: a query opens a snapshot per select.
    conn.prepare_cached("BEGIN DEFERRED")?.execute([])?;
    let out = f(conn);
    // A read transaction has nothing to keep: end it either way.
    let end = conn
        .prepare_cached("COMMIT")
        .and_then(|mut s| s.execute([]).map(|_| ()));
    if end.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    let out = out?;
    end?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bits(r: &Run) -> Vec<(i64, u64)> {
        r.iter().map(|&(t, v)| (t, v.to_bits())).collect()
    }

    /// The reference: apply the runs in precedence order to a map.
    fn reference(runs: &[Run]) -> Vec<(i64, u64)> {
        let mut m = std::collections::BTreeMap::new();
        for r in runs {
            for &(t, v) in r {
                m.insert(t, v.to_bits());
            }
        }
        m.into_iter().collect()
    }

    fn run_strategy() -> impl Strategy<Value = Run> {
        prop::collection::btree_map(0i64..200, any::<u64>(), 0..40)
            .prop_map(|m| m.into_iter().map(|(t, b)| (t, f64::from_bits(b))).collect())
    }

    proptest! {
        #[test]
        fn merging_matches_applying_writes_in_order(runs in prop::collection::vec(run_strategy(), 0..6)) {
            prop_assert_eq!(bits(&merge_runs(runs.clone())), reference(&runs));
            if runs.len() >= 2 {
                let two = merge_two(runs[0].clone(), runs[1].clone());
                prop_assert_eq!(bits(&two), reference(&runs[..2]));
            }
        }
    }

    #[test]
    fn disjoint_runs_are_concatenated_in_time_order() {
        let a = vec![(10, 1.0), (20, 2.0)];
        let b = vec![(1, 0.5), (5, 0.7)];
        assert_eq!(
            merge_runs(vec![a, b]),
            vec![(1, 0.5), (5, 0.7), (10, 1.0), (20, 2.0)]
        );
    }
}
