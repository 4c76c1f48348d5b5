//! Rollup rows: a series' raw samples reduced to buckets of one minute and
//! of one hour ([`crate::query::rollup`]), kept in the SQLite file so that
//! long ranges are answered without the raw samples, and after retention
//! has deleted them.
//!
//! - `rollup_1m(series_id, window_start, data)`: one row per series and
//!   aligned 2 h chunk window, the minute buckets of that window's samples.
//! - `rollup_1h(series_id, day_start, data)`: one row per series and
//!   aligned UTC day, per 2 h window of the day the hour buckets of that
//!   window's samples (a day row is rewritten whenever one of its windows
//!   changes: about 1 KB, where a week row would be seven times larger,
//!   spill onto overflow pages and be rewritten as often).
//!
//! Both are computed by folding the window's raw samples (never by
//! coarsening minute buckets: float sums must come out bit for bit as a fold
//! of the raw samples does). Compaction recomputes a window's rows from
//! every chunk of the window in the transaction that writes or merges its
//! chunks, so late samples reach them; a window that may already have lost
//! chunks to raw retention is left alone (its rows are the only complete
//! record left).
//!
//! A bucket is named by its end `e` and covers `(e - res, e]`, while a
//! window covers `[ws, ws + 2 h)`: the bucket ending at a window's start
//! and the one ending at its end are split between two windows. A row keeps
//! each window's *pieces* — the buckets of exactly that window's samples —
//! and a reader joins pieces with the same end ([`Bucket::merge`]; the later
//! piece is then only the sample on the boundary, so the join is exact).
//!
//! # Row format
//!
//! ```text
//! u8       format version (1)
//! varint   number of segments (one per 2 h window in the row)
//! per segment:
//!   varint   (window start - row start) / 2 h
//!   varint   number of buckets
//!   per bucket:
//!     varint   (end - previous end) / res (the first from window start - res)
//!     u8       flags: 1 stale_after, 2 last = first, 4 min = first,
//!              8 min = last, 16 max = first, 32 max = last,
//!              64 resets or reset correction, 128 sum = first
//!     varint   count
//!     varint   zigzag(first offset - previous first offset)
//!     value    first (against the previous bucket's last)
//!     [varint  zigzag(last offset - previous last offset), value last
//!              (against first)]                      unless last = first
//!     [value   sum (against the previous sum)]        unless sum = first
//!     [value   min (against the previous min)]        unless flagged
//!     [value   max (against the previous max)]        unless flagged
//!     [value   reset correction, varint resets]       with flag 64
//!     varint   changes
//!     [varint  stale_after offset]                    with flag 1
//! u32 LE   CRC-32 (IEEE) of every byte before it
//! ```
//!
//! Offsets are timestamps less the bucket's start (`end - res`). A value is
//! its f64 bits XORed with a reference (bits, so NaN payloads survive),
//! written as one byte — leading zero bytes × 16 + trailing zero bytes
//! (0x80 for zero) — and the bytes between. Nothing here decodes without
//! checking the checksum first, and decoding never panics.

use super::chunk::{ChunkError, get_uvarint, put_uvarint, unzigzag, versioned_body, zigzag};
use super::compact::{WINDOW_MS, window_last, window_start};
use super::index::SeriesId;
use super::read::{self, CorruptChunk, Run};
use crate::query::rollup::{Bucket, fold};
use nines_shared::checksum::crc32;
use rusqlite::{Connection, OptionalExtension};

/// Minute buckets.
pub const RES_1M: i64 = 60_000;
/// Hour buckets.
pub const RES_1H: i64 = 3_600_000;
/// A day: the span of one `rollup_1h` row.
pub const DAY_MS: i64 = 24 * 3_600_000;
const VERSION: u8 = 1;

/// The two stored resolutions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// `rollup_1m`: a row per 2 h window.
    Minute,
    /// `rollup_1h`: a row per day.
    Hour,
}

impl Resolution {
    /// The stored resolution of `res` ms, if any.
    pub fn of(res: i64) -> Option<Resolution> {
        match res {
            RES_1M => Some(Resolution::Minute),
            RES_1H => Some(Resolution::Hour),
            _ => None,
        }
    }

    /// Bucket width (ms).
    pub fn res(self) -> i64 {
        match self {
            Resolution::Minute => RES_1M,
            Resolution::Hour => RES_1H,
        }
    }

    /// Time one row covers (ms).
    pub fn row_span(self) -> i64 {
        match self {
            Resolution::Minute => WINDOW_MS,
            Resolution::Hour => DAY_MS,
        }
    }

    /// The first timestamp of the row holding `ts`.
    pub fn row_start(self, ts: i64) -> i64 {
        ts.saturating_sub(ts.rem_euclid(self.row_span()))
    }

    /// The label value in metrics.
    pub fn label(self) -> &'static str {
        match self {
            Resolution::Minute => "1m",
            Resolution::Hour => "1h",
        }
    }

    fn select_sql(self) -> &'static str {
        match self {
            Resolution::Minute => {
                "SELECT window_start, data FROM rollup_1m
                 WHERE series_id = ?1 AND window_start BETWEEN ?2 AND ?3 ORDER BY window_start"
            }
            Resolution::Hour => {
                "SELECT day_start, data FROM rollup_1h
                 WHERE series_id = ?1 AND day_start BETWEEN ?2 AND ?3 ORDER BY day_start"
            }
        }
    }

    fn upsert_sql(self) -> &'static str {
        match self {
            Resolution::Minute => {
                "INSERT INTO rollup_1m (series_id, window_start, data) VALUES (?1, ?2, ?3)
                 ON CONFLICT (series_id, window_start) DO UPDATE SET data = excluded.data"
            }
            Resolution::Hour => {
                "INSERT INTO rollup_1h (series_id, day_start, data) VALUES (?1, ?2, ?3)
                 ON CONFLICT (series_id, day_start) DO UPDATE SET data = excluded.data"
            }
        }
    }
}

/// The pieces of one 2 h window: the buckets of exactly its samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// The window's first timestamp.
    pub window_start: i64,
    /// Ascending by end, ends in `[window_start, window_start + 2 h]`.
    pub buckets: Vec<Bucket>,
}

// ------------------------------------------------------------ encoding

fn put_value(out: &mut Vec<u8>, bits: u64, reference: u64) {
    let x = bits ^ reference;
    if x == 0 {
        out.push(0x80);
        return;
    }
    let lead = (x.leading_zeros() / 8) as usize;
    let trail = (x.trailing_zeros() / 8) as usize;
    out.push(((lead << 4) | trail) as u8);
    let bytes = x.to_be_bytes();
    out.extend_from_slice(&bytes[lead..8 - trail]);
}

fn get_value(data: &[u8], pos: &mut usize, reference: u64) -> Result<u64, ChunkError> {
    let c = *data.get(*pos).ok_or(ChunkError::Truncated)?;
    *pos += 1;
    if c == 0x80 {
        return Ok(reference);
    }
    let (lead, trail) = ((c >> 4) as usize, (c & 0x0f) as usize);
    if lead + trail >= 8 {
        return Err(ChunkError::Corrupt("bad value header"));
    }
    let n = 8 - lead - trail;
    let src = data.get(*pos..*pos + n).ok_or(ChunkError::Truncated)?;
    *pos += n;
    let mut bytes = [0u8; 8];
    bytes[lead..8 - trail].copy_from_slice(src);
    Ok(u64::from_be_bytes(bytes) ^ reference)
}

/// What the previous bucket leaves for the next one's references.
#[derive(Default, Clone, Copy)]
struct Context {
    last: u64,
    sum: u64,
    min: u64,
    max: u64,
    first_off: i64,
    last_off: i64,
}

/// Encodes a row's segments (`row_start` and `res` are the row's key and
/// table, not stored).
pub fn encode(row_start: i64, res: i64, segments: &[Segment]) -> Vec<u8> {
    let buckets: usize = segments.iter().map(|s| s.buckets.len()).sum();
    let mut out = Vec::with_capacity(8 + buckets * 40);
    out.push(VERSION);
    put_uvarint(&mut out, segments.len() as u64);
    let mut cx = Context::default();
    for seg in segments {
        put_uvarint(
            &mut out,
            (seg.window_start.wrapping_sub(row_start) / WINDOW_MS) as u64,
        );
        put_uvarint(&mut out, seg.buckets.len() as u64);
        let mut prev_end = seg.window_start.wrapping_sub(res);
        for b in &seg.buckets {
            put_uvarint(&mut out, (b.end.wrapping_sub(prev_end) / res) as u64);
            prev_end = b.end;
            let base = b.end.wrapping_sub(res);
            let (first, last) = (
                (b.first.0, b.first.1.to_bits()),
                (b.last.0, b.last.1.to_bits()),
            );
            let (sum, min, max) = (b.sum.to_bits(), b.min.to_bits(), b.max.to_bits());
            let rc = b.reset_correction.to_bits();
            let mut flags = 0u8;
            if b.stale_after.is_some() {
                flags |= 1;
            }
            let same = last == first;
            if same {
                flags |= 2;
            }
            if min == first.1 {
                flags |= 4;
            } else if min == last.1 {
                flags |= 8;
            }
            if max == first.1 {
                flags |= 16;
            } else if max == last.1 {
                flags |= 32;
            }
            if b.resets != 0 || rc != 0 {
                flags |= 64;
            }
            if sum == first.1 {
                flags |= 128;
            }
            out.push(flags);
            put_uvarint(&mut out, u64::from(b.count));
            let first_off = first.0.wrapping_sub(base);
            put_uvarint(&mut out, zigzag(first_off.wrapping_sub(cx.first_off)));
            put_value(&mut out, first.1, cx.last);
            let last_off = last.0.wrapping_sub(base);
            if !same {
                put_uvarint(&mut out, zigzag(last_off.wrapping_sub(cx.last_off)));
                put_value(&mut out, last.1, first.1);
            }
            if flags & 128 == 0 {
                put_value(&mut out, sum, cx.sum);
            }
            if flags & (4 | 8) == 0 {
                put_value(&mut out, min, cx.min);
            }
            if flags & (16 | 32) == 0 {
                put_value(&mut out, max, cx.max);
            }
            if flags & 64 != 0 {
                put_value(&mut out, rc, 0);
                put_uvarint(&mut out, u64::from(b.resets));
            }
            put_uvarint(&mut out, u64::from(b.changes));
            if let Some(s) = b.stale_after {
                put_uvarint(&mut out, s.wrapping_sub(base) as u64);
            }
            cx = Context {
                last: last.1,
                sum,
                min,
                max,
                first_off,
                last_off,
            };
        }
    }
    let crc = crc32(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn get_u32(data: &[u8], pos: &mut usize) -> Result<u32, ChunkError> {
    u32::try_from(get_uvarint(data, pos)?).map_err(|_| ChunkError::Corrupt("count too large"))
}

/// Decodes a row written by [`encode`] with the same `row_start` and `res`.
pub fn decode(data: &[u8], row_start: i64, res: i64) -> Result<Vec<Segment>, ChunkError> {
    let body = versioned_body(data, VERSION)?;
    let mut pos = 1;
    let n = get_uvarint(body, &mut pos)?;
    // A segment takes at least two bytes, a bucket at least six.
    if n > (body.len() / 2) as u64 {
        return Err(ChunkError::Corrupt("too many segments"));
    }
    let mut out = Vec::with_capacity(n as usize);
    let mut cx = Context::default();
    for _ in 0..n {
        let k = get_uvarint(body, &mut pos)?;
        if k >= (DAY_MS / WINDOW_MS) as u64 {
            return Err(ChunkError::Corrupt("segment outside its row"));
        }
        let window_start = row_start.wrapping_add(k as i64 * WINDOW_MS);
        let nb = get_uvarint(body, &mut pos)?;
        if nb > ((body.len() - pos) / 6) as u64 {
            return Err(ChunkError::Corrupt("too many buckets"));
        }
        let mut buckets = Vec::with_capacity(nb as usize);
        let mut prev_end = window_start.wrapping_sub(res);
        for _ in 0..nb {
            let step = get_uvarint(body, &mut pos)?;
            if step == 0 || step > (WINDOW_MS / res + 1) as u64 {
                return Err(ChunkError::Corrupt("bad bucket end"));
            }
            let end = prev_end.wrapping_add(step as i64 * res);
            prev_end = end;
            let base = end.wrapping_sub(res);
            let flags = *body.get(pos).ok_or(ChunkError::Truncated)?;
            pos += 1;
            let count = get_u32(body, &mut pos)?;
            let first_off = cx
                .first_off
                .wrapping_add(unzigzag(get_uvarint(body, &mut pos)?));
            let first = get_value(body, &mut pos, cx.last)?;
            let (last_off, last) = if flags & 2 != 0 {
                (first_off, first)
            } else {
                let off = cx
                    .last_off
                    .wrapping_add(unzigzag(get_uvarint(body, &mut pos)?));
                (off, get_value(body, &mut pos, first)?)
            };
            let sum = if flags & 128 != 0 {
                first
            } else {
                get_value(body, &mut pos, cx.sum)?
            };
            let min = match flags & (4 | 8) {
                4 => first,
                8 => last,
                0 => get_value(body, &mut pos, cx.min)?,
                _ => return Err(ChunkError::Corrupt("bad flags")),
            };
            let max = match flags & (16 | 32) {
                16 => first,
                32 => last,
                0 => get_value(body, &mut pos, cx.max)?,
                _ => return Err(ChunkError::Corrupt("bad flags")),
            };
            let (rc, resets) = if flags & 64 != 0 {
                (get_value(body, &mut pos, 0)?, get_u32(body, &mut pos)?)
            } else {
                (0, 0)
            };
            let changes = get_u32(body, &mut pos)?;
            let stale_after = if flags & 1 != 0 {
                Some(base.wrapping_add(get_uvarint(body, &mut pos)? as i64))
            } else {
                None
            };
            buckets.push(Bucket {
                end,
                count,
                first: (base.wrapping_add(first_off), f64::from_bits(first)),
                last: (base.wrapping_add(last_off), f64::from_bits(last)),
                sum: f64::from_bits(sum),
                min: f64::from_bits(min),
                max: f64::from_bits(max),
                reset_correction: f64::from_bits(rc),
                resets,
                changes,
                stale_after,
            });
            cx = Context {
                last,
                sum,
                min,
                max,
                first_off,
                last_off,
            };
        }
        out.push(Segment {
            window_start,
            buckets,
        });
    }
    if pos != body.len() {
        return Err(ChunkError::Corrupt("trailing bytes"));
    }
    Ok(out)
}

// ------------------------------------------------------------- writing

/// What one window's recomputation wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Rows written (minute, hour).
    pub rows: [usize; 2],
    /// Their encoded bytes (minute, hour).
    pub bytes: [usize; 2],
}

impl Written {
    /// Adds another window's.
    pub fn add(&mut self, o: Written) {
        for i in 0..2 {
            self.rows[i] += o.rows[i];
            self.bytes[i] += o.bytes[i];
        }
    }
}

/// Whether the series has a minute row for the window starting at `ws`
/// (an hour row's segment is written with it).
pub fn has_rows(conn: &Connection, id: SeriesId, ws: i64) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT 1 FROM rollup_1m WHERE series_id = ?1 AND window_start = ?2")?
        .query_row((id.0, ws), |_| Ok(()))
        .optional()
        .map(|r| r.is_some())
}

/// Recomputes the rows of the window starting at `ws` of a series from
/// every chunk of it (inside the caller's transaction): the window's minute
/// row, and its segment of the day's hour row. A window without a readable
/// sample keeps whatever rows it has.
pub fn update_window(
    conn: &Connection,
    id: SeriesId,
    ws: i64,
    corrupt: &mut dyn FnMut(CorruptChunk),
) -> rusqlite::Result<Written> {
    let mut out = Written::default();
    let samples: Run = read::read_series(conn, id, ws, window_last(ws), Vec::new(), corrupt)?;
    if samples.is_empty() {
        return Ok(out);
    }
    let minute = [Segment {
        window_start: ws,
        buckets: fold(&samples, RES_1M),
    }];
    let data = encode(ws, RES_1M, &minute);
    out.rows[0] = 1;
    out.bytes[0] = data.len();
    conn.prepare_cached(Resolution::Minute.upsert_sql())?
        .execute((id.0, ws, data))?;

    let day = Resolution::Hour.row_start(ws);
    let old: Option<Vec<u8>> = conn
        .prepare_cached("SELECT data FROM rollup_1h WHERE series_id = ?1 AND day_start = ?2")?
        .query_row((id.0, day), |r| r.get(0))
        .optional()?;
    let mut segments = match old.map(|d| decode(&d, day, RES_1H)) {
        None => Vec::new(),
        Some(Ok(s)) => s,
        Some(Err(error)) => {
            // Only this window can be rebuilt now; the others of the day
            // are gone from the hour row (their minute rows still hold them).
            tracing::error!(series_id = id.0, day, %error, "corrupt hour rollup row replaced");
            Vec::new()
        }
    };
    let hour = Segment {
        window_start: ws,
        buckets: fold(&samples, RES_1H),
    };
    match segments.binary_search_by_key(&ws, |s| s.window_start) {
        Ok(i) => segments[i] = hour,
        Err(i) => segments.insert(i, hour),
    }
    let data = encode(day, RES_1H, &segments);
    out.rows[1] = 1;
    out.bytes[1] = data.len();
    conn.prepare_cached(Resolution::Hour.upsert_sql())?
        .execute((id.0, day, data))?;
    Ok(out)
}

/// Series one backfill unit looks at.
pub const BACKFILL_SERIES_PER_UNIT: usize = 64;
/// Windows one backfill unit rolls up.
pub const BACKFILL_WINDOWS_PER_UNIT: usize = 16;

/// One unit of the backfill pass (inside the caller's transaction): for
/// the series after `after` (by id), rolls up windows starting at or after
/// `from_ws` that have chunks but no minute row (chunks written before
/// rollups existed), at most [`BACKFILL_WINDOWS_PER_UNIT`]. Returns the
/// cursor to go on from (`None` once every series was looked at) and what
/// it wrote.
pub fn backfill_unit(
    conn: &Connection,
    after: i64,
    from_ws: i64,
    corrupt: &mut dyn FnMut(SeriesId, CorruptChunk),
) -> rusqlite::Result<(Option<i64>, Written)> {
    let mut written = Written::default();
    let ids: Vec<i64> = conn
        .prepare_cached("SELECT id FROM series WHERE id > ?1 ORDER BY id LIMIT ?2")?
        .query_map((after, BACKFILL_SERIES_PER_UNIT as i64), |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut windows = 0usize;
    for (i, &sid) in ids.iter().enumerate() {
        let id = SeriesId(sid);
        let rows: Vec<i64> = conn
            .prepare_cached(
                "SELECT window_start FROM rollup_1m WHERE series_id = ?1 AND window_start >= ?2",
            )?
            .query_map((sid, from_ws), |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let missing: Vec<i64> = chunk_windows(conn, id, from_ws, i64::MAX - WINDOW_MS)?
            .into_iter()
            .filter(|ws| *ws >= from_ws && !rows.contains(ws))
            .collect();
        for ws in missing {
            if windows == BACKFILL_WINDOWS_PER_UNIT {
                // This series goes on in the next unit.
                let cursor = if i == 0 { after } else { ids[i - 1] };
                return Ok((Some(cursor), written));
            }
            written.add(update_window(conn, id, ws, &mut |c| corrupt(id, c))?);
            windows += 1;
        }
    }
    let next = match ids.last() {
        Some(&last) if ids.len() == BACKFILL_SERIES_PER_UNIT => Some(last),
        _ => None,
    };
    Ok((next, written))
}

/// A value the store keeps about itself in `storage_marks`.
fn mark(conn: &Connection, name: &str) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT value FROM storage_marks WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
        .optional()
}

/// Raises the mark `name` to `value` (sets it if absent).
fn raise_mark(conn: &Connection, name: &str, value: i64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO storage_marks (name, value) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET value = max(value, excluded.value)",
    )?
    .execute((name, value))?;
    Ok(())
}

/// The largest raw retention cutoff ever applied (`i64::MIN` if none).
pub fn raw_deleted_before(conn: &Connection) -> rusqlite::Result<i64> {
    Ok(mark(conn, "raw_deleted_before")?.unwrap_or(i64::MIN))
}

/// Records that raw samples before `cutoff` may have been deleted.
pub fn mark_raw_deleted_before(conn: &Connection, cutoff: i64) -> rusqlite::Result<()> {
    raise_mark(conn, "raw_deleted_before", cutoff)
}

/// Whether a backfill pass went through every series of this file once.
pub fn backfill_done(conn: &Connection) -> rusqlite::Result<bool> {
    Ok(mark(conn, "rollup_backfill_done")?.is_some())
}

/// Records that a backfill pass went through every series: chunks written
/// since are rolled up by compaction, so later opens need no pass.
pub fn mark_backfill_done(conn: &Connection) -> rusqlite::Result<()> {
    raise_mark(conn, "rollup_backfill_done", 1)
}

/// Deletes a series' minute rows wholly before `cutoff_1m` and hour rows
/// wholly before `cutoff_1h`; returns how many of each.
pub fn expire_series(
    conn: &Connection,
    id: SeriesId,
    cutoff_1m: i64,
    cutoff_1h: i64,
) -> rusqlite::Result<[usize; 2]> {
    // A row's last timestamp is its start + span - 1.
    let m = conn
        .prepare_cached("DELETE FROM rollup_1m WHERE series_id = ?1 AND window_start < ?2")?
        .execute((id.0, cutoff_1m.saturating_sub(WINDOW_MS - 1)))?;
    let h = conn
        .prepare_cached("DELETE FROM rollup_1h WHERE series_id = ?1 AND day_start < ?2")?
        .execute((id.0, cutoff_1h.saturating_sub(DAY_MS - 1)))?;
    Ok([m, h])
}

// ------------------------------------------------------------- reading

/// A row that does not decode.
#[derive(Debug)]
pub struct CorruptRow {
    /// The row's start (window or day).
    pub start: i64,
    /// Why.
    pub error: ChunkError,
}

/// The stored segments of a series at `resolution` for the windows starting
/// in `[from_ws, to_ws]`, ascending. Rows that do not decode are passed to
/// `corrupt` and left out (their windows are then read raw).
pub fn read_segments(
    conn: &Connection,
    id: SeriesId,
    resolution: Resolution,
    from_ws: i64,
    to_ws: i64,
    corrupt: &mut dyn FnMut(CorruptRow),
) -> rusqlite::Result<Vec<Segment>> {
    let mut stmt = conn.prepare_cached(resolution.select_sql())?;
    let first_row = resolution.row_start(from_ws);
    let mut rows = stmt.query((id.0, first_row, to_ws))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let start: i64 = r.get(0)?;
        match read::blob(r.get_ref(1)?).and_then(|d| decode(d, start, resolution.res())) {
            Ok(segments) => out.extend(
                segments
                    .into_iter()
                    .filter(|s| (from_ws..=to_ws).contains(&s.window_start)),
            ),
            Err(error) => corrupt(CorruptRow { start, error }),
        }
    }
    Ok(out)
}

/// The windows in `[from_ws, to_ws]` where a series has chunks (from the
/// index alone, no chunk is read).
pub fn chunk_windows(
    conn: &Connection,
    id: SeriesId,
    from_ws: i64,
    to_ws: i64,
) -> rusqlite::Result<Vec<i64>> {
    let mut stmt = conn.prepare_cached(
        "SELECT start_ts FROM chunks WHERE series_id = ?1 AND end_ts >= ?2 AND start_ts <= ?3",
    )?;
    let mut out: Vec<i64> = stmt
        .query_map((id.0, from_ws, to_ws.saturating_add(WINDOW_MS - 1)), |r| {
            r.get::<_, i64>(0)
        })?
        .map(|s| s.map(window_start))
        .collect::<Result<_, _>>()?;
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Appends `pieces` (ascending) to `out`, joining a piece with the last
/// bucket when they share an end (the two halves of a bucket split by a
/// window boundary).
pub fn append_pieces(out: &mut Vec<Bucket>, pieces: impl IntoIterator<Item = Bucket>) {
    for b in pieces {
        match out.last_mut() {
            Some(last) if last.end == b.end => last.merge(&b),
            _ => out.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::STALE_MARKER_BITS;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<u64>().prop_map(f64::from_bits),
            Just(f64::from_bits(STALE_MARKER_BITS)),
            Just(f64::NAN),
            (0u32..20).prop_map(f64::from),
            (0u32..1000).prop_map(|i| 1e9 + f64::from(i) * 0.25),
        ]
    }

    /// Samples of one window (ascending, unique), anywhere in it.
    fn window_samples() -> impl Strategy<Value = Vec<(i64, f64)>> {
        prop::collection::btree_map(0i64..WINDOW_MS, value(), 1..300)
            .prop_map(|m| m.into_iter().collect())
    }

    proptest! {
        #[test]
        fn rows_round_trip_bit_for_bit(
            windows in prop::collection::btree_map(0i64..12, window_samples(), 1..4),
            day in -3i64..30_000,
        ) {
            let day_start = day * DAY_MS;
            for res in [RES_1M, RES_1H] {
                let segments: Vec<Segment> = windows
                    .iter()
                    .map(|(k, s)| {
                        let ws = day_start + k * WINDOW_MS;
                        let shifted: Vec<(i64, f64)> = s.iter().map(|&(t, v)| (ws + t, v)).collect();
                        Segment { window_start: ws, buckets: fold(&shifted, res) }
                    })
                    .collect();
                let data = encode(day_start, res, &segments);
                let back = decode(&data, day_start, res).unwrap();
                prop_assert_eq!(back.len(), segments.len());
                for (a, b) in back.iter().zip(&segments) {
                    prop_assert_eq!(a.window_start, b.window_start);
                    let a: Vec<_> = a.buckets.iter().map(Bucket::bits).collect();
                    let b: Vec<_> = b.buckets.iter().map(Bucket::bits).collect();
                    prop_assert_eq!(a, b);
                }
            }
        }

        #[test]
        fn damaged_rows_are_refused_never_a_panic(
            s in window_samples(),
            at in any::<usize>(),
            flip in 1u8..=255,
            cut in any::<usize>(),
        ) {
            let seg = [Segment { window_start: 0, buckets: fold(&s, RES_1M) }];
            let mut data = encode(0, RES_1M, &seg);
            let i = at % data.len();
            data[i] ^= flip;
            prop_assert!(decode(&data, 0, RES_1M).is_err());
            let data = encode(0, RES_1M, &seg);
            let _ = decode(&data[..cut % data.len()], 0, RES_1M);
        }
    }

    #[test]
    fn split_buckets_join_exactly() {
        // Samples on both sides of a window boundary, one on it.
        let s: Vec<(i64, f64)> = (-90..=30)
            .map(|i| (WINDOW_MS + i * 1000, (i * i) as f64 * 0.1))
            .collect();
        let cut = s.partition_point(|x| x.0 < WINDOW_MS);
        let mut joined = Vec::new();
        append_pieces(&mut joined, fold(&s[..cut], RES_1M));
        append_pieces(&mut joined, fold(&s[cut..], RES_1M));
        let whole = fold(&s, RES_1M);
        let a: Vec<_> = joined.iter().map(Bucket::bits).collect();
        let b: Vec<_> = whole.iter().map(Bucket::bits).collect();
        assert_eq!(a, b);
    }
}
