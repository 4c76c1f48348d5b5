//! The agent's durable spool: a disk-backed FIFO of opaque records (one
//! encoded batch each) in a directory under the state dir. It survives
//! agent restarts and SIGKILL, and keeps one persisted read cursor per
//! consumer (one per collector), so a batch is on disk before it is sent
//! and stays there until every collector has acknowledged it.
//!
//! It must never: panic or loop on anything read from disk (a torn or
//! damaged tail is cut off, damage in an older segment is skipped, both
//! counted and logged); grow past `max_bytes`; let a cursor lose a record
//! it had not read without counting it; spawn threads (its file I/O
//! blocks, so async callers use `spawn_blocking`); look inside a record.
//!
//! # On disk
//!
//! - `NNNNNNNNNNNNNNNNNNNN.seg` (20 decimal digits): a segment, named by the
//!   id of its first record. Append-only; a new one is started when the
//!   next record would take it past `segment_bytes`. Records are laid out
//!   back to back in the format of the `format` submodule (24-byte header
//!   with length, id and two CRC-32s, then the payload). Ids go up by one
//!   per record across segments and restarts; a segment's records are
//!   `base, base+1, …`.
//! - `cursor-<name>`: the id of the next record that cursor wants, in
//!   decimal. Created atomically (write `tmp-cursor-<name>`, fsync,
//!   rename, fsync the dir); an acknowledgement then overwrites it in
//!   place, as 20 digits and a newline at offset 0 of the open file, and
//!   does not sync it (see Guarantees).
//! - `lock`: held with `flock` while a spool is open, so two agents cannot
//!   write one spool.
//!
//! Any other file is ignored.
//!
//! # Guarantees
//!
//! With [`SyncPolicy::EveryRecord`], a record whose `append` returned is on
//! disk (data fdatasync'd, a new segment's directory entry fsync'd). At open
//! the newest segment is cut back to its last good record; that can only
//! remove records whose `append` never returned, unless the disk itself
//! damaged older bytes of it. Delivery is at least once: a cursor reads the
//! same records again until they are acknowledged.
//!
//! An acknowledgement survives the agent's own crash or SIGKILL as soon as
//! [`Spool::ack`] or [`Spool::write_acks`] returns (it is in the page
//! cache, which outlives the process). One made with [`Spool::mark_acked`]
//! (memory only, no I/O, so an async caller need not leave its thread)
//! counts at once for reads, lag, gauges and the spool-full drop count, and
//! reaches the file at the next append, `write_acks` or drop of the spool:
//! the shipper's cursor files trail its deliveries by at most one sampling
//! interval, and a SIGKILL within it sends those batches again, which the
//! collector applies once (see below). It is not synced either: after a
//! power loss or a kernel crash a cursor can come back as it was up to the
//! kernel's writeback delay (about 30 s) before, and the batches since are sent again, which the
//! collector applies once (it de-duplicates by stream and sequence
//! number). It can never come back ahead of what was acknowledged, and a
//! segment deleted because every cursor was past it only held records
//! already acknowledged, so nothing is lost either way. A sync per
//! acknowledgement (fsync of the file and of the dir) cost more CPU than
//! the append it follows. The 21 bytes are written in one `pwrite` within
//! the file's first sector, so the file holds either the old or the new
//! id; one that does not parse restarts its cursor at the oldest record.

mod format;
mod metrics;
#[cfg(test)]
mod tests;

pub use metrics::SpoolMetrics;

use format::{Damage, HEADER_LEN, MAX_PAYLOAD};
use metrics::{CORRUPT, SPOOL_FULL};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const SEGMENT_SUFFIX: &str = ".seg";
const SEGMENT_DIGITS: usize = 20;
const CURSOR_PREFIX: &str = "cursor-";
const CURSOR_TMP_PREFIX: &str = "tmp-cursor-";
const LOCK_FILE: &str = "lock";
const MAX_CURSOR_NAME: usize = 100;
/// Smallest segment size accepted: room for a header and a small payload.
const MIN_SEGMENT_BYTES: u64 = 64;
/// Largest segment size accepted; keeps open-time scans and deletions in
/// reasonable steps.
const MAX_SEGMENT_BYTES: u64 = 1 << 30;

/// The id of one record: unique and increasing across segments and
/// restarts. The first record of a new spool is 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordId(pub u64);

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// When appended records are forced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// fdatasync after every record (and fsync the dir on new files and
    /// cursor updates): a record is on disk before `append` returns.
    #[default]
    EveryRecord,
    /// Never sync: the OS writes back when it likes. For tests and
    /// benchmarks; a power loss can lose records already handed out.
    None,
}

/// How big the spool may grow and how it writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolOptions {
    /// Most bytes all segment files may take together. When a record would
    /// take the spool past this, whole oldest segments are deleted first
    /// (counted as dropped). Must be at least twice `segment_bytes`.
    pub max_bytes: u64,
    /// A segment is closed and a new one started when the next record
    /// would take it past this size.
    pub segment_bytes: u64,
    /// When records are forced to disk.
    pub sync: SyncPolicy,
}

impl Default for SpoolOptions {
    /// 256 MiB in 4 MiB segments, synced per record: at a few tens of KB
    /// per batch every 10 s that holds more than a day of outage.
    fn default() -> Self {
        SpoolOptions {
            max_bytes: 256 << 20,
            segment_bytes: 4 << 20,
            sync: SyncPolicy::EveryRecord,
        }
    }
}

/// Why the spool could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file operation failed; `what` says which and on which path.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, naming the file.
        what: String,
        /// The OS error.
        source: io::Error,
    },
    /// The disk holding the spool is full (or the user's quota is used up).
    #[error(
        "no space left on the disk holding {path}: a record of {bytes} bytes was not \
         spooled; free space there or lower the spool's max_bytes"
    )]
    DiskFull {
        /// The file that could not grow.
        path: PathBuf,
        /// Size of the record that was refused.
        bytes: u64,
    },
    /// Another process has this spool open.
    #[error(
        "spool dir {dir} is in use by another process (it holds {dir}/lock); \
         run one agent per state dir"
    )]
    Locked {
        /// The spool dir.
        dir: PathBuf,
    },
    /// The options cannot work.
    #[error("invalid spool options: {0}")]
    InvalidOptions(String),
    /// The record can never fit.
    #[error(
        "a record of {len} bytes is larger than the spool can hold ({max} bytes); \
         raise the spool's max_bytes or send smaller batches"
    )]
    RecordTooLarge {
        /// Payload size.
        len: u64,
        /// Largest payload this spool accepts.
        max: u64,
    },
    /// The cursor name cannot be used as a file name.
    #[error(
        "cursor name {0:?} is not usable: use 1 to 100 characters from A-Z a-z 0-9 . _ - \
         not starting with a dot"
    )]
    InvalidCursorName(String),
    /// The cursor was removed (or never created).
    #[error("no cursor named {0:?} in this spool (it was removed or never created)")]
    UnknownCursor(String),
    /// An acknowledgement for a record that was never written.
    #[error(
        "cursor {cursor:?} cannot acknowledge record {upto}: the newest record \
         written is {newest}"
    )]
    AckBeyondEnd {
        /// The cursor.
        cursor: String,
        /// The id acknowledged.
        upto: RecordId,
        /// The newest id written (0 if none).
        newest: u64,
    },
    /// Every record id has been used (2^64 of them).
    #[error("spool dir {0}: record ids are exhausted; move the spool dir away to start over")]
    IdsExhausted(PathBuf),
}

/// A named read position, from [`Spool::cursor`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    name: String,
}

impl Cursor {
    /// The cursor's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// What the spool found wrong on disk when it opened. Damage in an older
/// segment is left in place (segments are never rewritten), so it is found
/// and counted again at each open until every cursor is past that segment
/// and it is deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Bytes cut from the end of the newest segment (a torn last write, or
    /// damage in that segment).
    pub truncated_bytes: u64,
    /// Records lost to damage in older segments (the ids the damaged part
    /// held).
    pub corrupt_records: u64,
    /// Bytes of older segments skipped as damaged.
    pub corrupt_bytes: u64,
}

/// Sizes, for metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolStats {
    /// Bytes of all segment files.
    pub bytes: u64,
    /// Segment files.
    pub segments: usize,
    /// Records present that some cursor has not acknowledged (all records
    /// present if there is no cursor).
    pub unacked_records: u64,
    /// Oldest record present, if any.
    pub oldest: Option<RecordId>,
    /// The id the next append will get.
    pub next: RecordId,
}

/// One segment file and the index of its good records.
#[derive(Debug)]
struct Segment {
    /// Id of its first record (also its file name).
    base: u64,
    path: PathBuf,
    /// Offset of each good record; record `k` has id `base + k`.
    offsets: Vec<u64>,
    /// End of the last good record.
    end: u64,
    /// Size of the file, including any damaged remainder.
    file_len: u64,
}

impl Segment {
    fn count(&self) -> u64 {
        self.offsets.len() as u64
    }

    /// One past the last good id.
    fn next(&self) -> u64 {
        self.base.saturating_add(self.count())
    }

    /// Index of the first record with id >= `pos`.
    fn index_of(&self, pos: u64) -> usize {
        pos.saturating_sub(self.base).min(self.count()) as usize
    }

    /// Records with id >= `pos`.
    fn records_from(&self, pos: u64) -> u64 {
        self.count() - self.index_of(pos) as u64
    }

    /// Bytes of the records with id >= `pos`.
    fn bytes_from(&self, pos: u64) -> u64 {
        match self.offsets.get(self.index_of(pos)) {
            Some(&off) => self.end - off,
            None => 0,
        }
    }

    /// Offset just past record `k`.
    fn record_end(&self, k: usize) -> u64 {
        self.offsets.get(k + 1).copied().unwrap_or(self.end)
    }
}

/// The durable spool. One per spool dir; `Send` and `Sync`, so it can
/// live behind a `std::sync::Mutex` shared by async tasks, whose calls go
/// through `spawn_blocking`.
pub struct Spool {
    dir: PathBuf,
    opts: SpoolOptions,
    metrics: SpoolMetrics,
    /// Holds the flock for as long as the spool is open.
    _lock: File,
    /// Oldest first; never empty after open; the last one is written to.
    segments: Vec<Segment>,
    /// The last segment, open for writing.
    active: File,
    /// A failed append could not be cut back; retried before the next one.
    tail_dirty: bool,
    /// Id of the next record appended.
    next_id: u64,
    /// Cursor name -> id of the next record it wants (as persisted).
    cursors: BTreeMap<String, u64>,
    /// Cursor files kept open once acknowledged through, for writing
    /// acknowledgements in place.
    cursor_files: BTreeMap<String, File>,
    /// Cursors acknowledged with [`Spool::mark_acked`] whose files do not
    /// hold their position yet.
    unwritten: BTreeSet<String>,
    /// (cursor, id) of records found damaged at read time, so each is
    /// counted and logged once per cursor.
    bad_reads: Mutex<BTreeSet<(String, u64)>>,
    recovery: Recovery,
    write_buf: Vec<u8>,
}

impl fmt::Debug for Spool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.dir)
            .field("segments", &self.segments.len())
            .field("next_id", &self.next_id)
            .field("cursors", &self.cursors)
            .finish_non_exhaustive()
    }
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir`: locks it, scans every
    /// segment, cuts a torn or damaged tail off the newest one, skips
    /// damage in older ones (both counted and logged) and loads the
    /// cursors.
    pub fn open(
        dir: impl AsRef<Path>,
        opts: SpoolOptions,
        metrics: SpoolMetrics,
    ) -> Result<Spool, SpoolError> {
        let dir = dir.as_ref().to_path_buf();
        check_options(&opts)?;
        fs::create_dir_all(&dir)
            .map_err(io_err(format!("cannot create spool dir {}", dir.display())))?;
        let lock = lock_dir(&dir)?;

        let mut seg_files = Vec::new();
        let mut cursor_files = Vec::new();
        let entries = fs::read_dir(&dir)
            .map_err(io_err(format!("cannot list spool dir {}", dir.display())))?;
        for entry in entries {
            let entry =
                entry.map_err(io_err(format!("cannot list spool dir {}", dir.display())))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(base) = segment_base(name) {
                seg_files.push((base, entry.path()));
            } else if let Some(c) = name.strip_prefix(CURSOR_PREFIX) {
                if valid_cursor_name(c) {
                    cursor_files.push((c.to_string(), entry.path()));
                }
            }
        }
        seg_files.sort();

        let mut cursors = BTreeMap::new();
        for (name, path) in cursor_files {
            cursors.insert(name, load_cursor(&path)?);
        }

        let mut spool_recovery = Recovery::default();
        let mut scanned: Vec<(Segment, Option<Damage>)> = Vec::with_capacity(seg_files.len());
        for (base, path) in seg_files {
            if let Some((prev, _)) = scanned.last().filter(|(p, _)| base < p.next()) {
                // Two segments claiming the same ids can only come from
                // files copied in by hand; reading both would repeat ids.
                tracing::warn!(
                    segment = %path.display(),
                    previous = %prev.path.display(),
                    "spool: segment overlaps the ids of the one before it; ignoring it"
                );
                continue;
            }
            let file = File::open(&path)
                .map_err(io_err(format!("cannot open segment {}", path.display())))?;
            let file_len = file
                .metadata()
                .map_err(io_err(format!("cannot stat segment {}", path.display())))?
                .len();
            let scan = format::scan(&file, file_len, base)
                .map_err(io_err(format!("cannot read segment {}", path.display())))?;
            let seg = Segment {
                base,
                path,
                offsets: scan.offsets,
                end: scan.end,
                file_len,
            };
            scanned.push((seg, scan.damage));
        }

        // The newest segment is the one that was being written: damage at
        // its end is a write the crash interrupted (whose append never
        // returned). Cut it so appends continue from the last good record.
        if let Some((seg, damage)) = scanned.last_mut() {
            if let Some(damage) = damage.take() {
                let cut = seg.file_len - seg.end;
                truncate(&seg.path, seg.end)?;
                tracing::warn!(
                    segment = %seg.path.display(),
                    bytes_cut = cut,
                    kept_records = seg.count(),
                    %damage,
                    "spool: cut a torn or damaged tail off the newest segment"
                );
                seg.file_len = seg.end;
                spool_recovery.truncated_bytes += cut;
                metrics.truncated_bytes.add(cut);
            }
        }

        // Older segments are never written again: skip their damaged part.
        // The ids it held run up to the next segment's base, because ids
        // are contiguous across a roll.
        for (i, (seg, damage)) in scanned.iter().enumerate() {
            let Some(damage) = damage else { continue };
            let lost_from = seg.next();
            let lost_to = scanned.get(i + 1).map_or(lost_from, |(s, _)| s.base);
            let records = lost_to.saturating_sub(lost_from);
            let bytes = seg.file_len - seg.end;
            spool_recovery.corrupt_records += records;
            spool_recovery.corrupt_bytes += bytes;
            if cursors.is_empty() {
                metrics.drop("", CORRUPT, records, bytes);
            }
            for (name, &pos) in &cursors {
                // A cursor that had read past the damage lost nothing.
                let unread = lost_to.saturating_sub(pos.max(lost_from));
                metrics.drop(name, CORRUPT, unread, if unread > 0 { bytes } else { 0 });
            }
            tracing::error!(
                segment = %seg.path.display(),
                offset = seg.end,
                records_lost = records,
                bytes_skipped = bytes,
                %damage,
                "spool: damaged segment; skipping the rest of it"
            );
        }
        let mut segments: Vec<Segment> = scanned.into_iter().map(|(s, _)| s).collect();

        // The next id follows the newest record, and never goes back below
        // a segment name or a cursor (records those imply may have existed).
        let mut next_id = 1u64;
        if let Some(last) = segments.last() {
            next_id = next_id.max(last.next());
        }
        for &pos in cursors.values() {
            next_id = next_id.max(pos);
        }

        // Append to the newest segment only if the next id continues it;
        // otherwise start a new one named by the next id.
        let last = match segments.pop() {
            Some(s) if s.next() == next_id => s,
            other => {
                segments.extend(other);
                create_segment(&dir, next_id, opts.sync)?
            }
        };
        let active = open_for_append(&last.path)?;
        segments.push(last);

        let mut spool = Spool {
            dir,
            opts,
            metrics,
            _lock: lock,
            segments,
            active,
            tail_dirty: false,
            next_id,
            cursors,
            cursor_files: BTreeMap::new(),
            unwritten: BTreeSet::new(),
            bad_reads: Mutex::default(),
            recovery: spool_recovery,
            write_buf: Vec::new(),
        };
        spool.collect_garbage();
        // A lowered max_bytes takes effect now rather than at the next append.
        spool.make_room(0)?;
        spool.refresh_gauges();
        let stats = spool.stats();
        tracing::info!(
            dir = %spool.dir.display(),
            segments = stats.segments,
            bytes = stats.bytes,
            unacked_records = stats.unacked_records,
            next_id = stats.next.0,
            cursors = spool.cursors.len(),
            "spool opened"
        );
        Ok(spool)
    }

    /// The spool dir.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What open found damaged and cut or skipped.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// Writes one record and returns its id. With
    /// [`SyncPolicy::EveryRecord`] the record is on disk when this returns.
    /// If the spool would exceed `max_bytes`, the oldest segments are
    /// deleted first (records a cursor had not read are counted as
    /// dropped). On failure nothing is appended and the spool stays usable.
    pub fn append(&mut self, payload: &[u8]) -> Result<RecordId, SpoolError> {
        let max = self.max_payload();
        if payload.len() as u64 > max {
            return Err(SpoolError::RecordTooLarge {
                len: payload.len() as u64,
                max,
            });
        }
        if self.next_id == u64::MAX {
            return Err(SpoolError::IdsExhausted(self.dir.clone()));
        }
        // Acknowledgements marked since the last write go to their files
        // (and consumed segments go) before the spool grows: a full spool
        // then drops only what no cursor acknowledged.
        if let Err(e) = self.write_acks() {
            tracing::error!(error = %e, "spool: cannot record deliveries in a cursor file; will retry");
        }
        let size = (HEADER_LEN + payload.len()) as u64;
        if self.tail_dirty {
            let (path, end) = (&self.active_segment().path, self.active_segment().end);
            self.active.set_len(end).map_err(io_err(format!(
                "cannot cut a failed write off segment {}",
                path.display()
            )))?;
            self.tail_dirty = false;
        }
        let active_len = self.active_segment().file_len;
        if active_len > 0 && active_len + size > self.opts.segment_bytes {
            self.roll()?;
        }
        self.make_room(size)?;

        let id = self.next_id;
        self.write_buf.clear();
        format::encode(id, payload, &mut self.write_buf);
        let offset = self.active_segment().file_len;
        let written = self
            .active
            .write_all_at(&self.write_buf, offset)
            .and_then(|()| {
                if self.opts.sync == SyncPolicy::EveryRecord {
                    self.active.sync_data()
                } else {
                    Ok(())
                }
            });
        if let Err(e) = written {
            // Cut back whatever part of the record reached the file so the
            // segment still ends at a good record. If even that fails, the
            // next append retries it; a reopen would cut it as a torn tail.
            if self.active.set_len(offset).is_err() {
                self.tail_dirty = true;
            }
            let path = self.active_segment().path.clone();
            return Err(if is_disk_full(&e) {
                SpoolError::DiskFull { path, bytes: size }
            } else {
                SpoolError::Io {
                    what: format!(
                        "cannot write a record to segment {} (it was not spooled)",
                        path.display()
                    ),
                    source: e,
                }
            });
        }

        let seg = self.active_segment_mut();
        seg.offsets.push(offset);
        seg.end = offset + size;
        seg.file_len = seg.end;
        self.next_id += 1;
        self.metrics.appended.inc();
        self.refresh_gauges();
        Ok(RecordId(id))
    }

    /// The cursor `name`, created at the oldest record present if it does
    /// not exist yet (so a newly configured collector gets the backlog).
    /// Persisted: it holds data from now on, across restarts, until it is
    /// acknowledged past or removed.
    pub fn cursor(&mut self, name: &str) -> Result<Cursor, SpoolError> {
        if !valid_cursor_name(name) {
            return Err(SpoolError::InvalidCursorName(name.to_string()));
        }
        if !self.cursors.contains_key(name) {
            let pos = self.oldest();
            self.persist_cursor(name, pos)?;
            self.cursors.insert(name.to_string(), pos);
            tracing::info!(cursor = name, at = pos, "spool: new cursor");
            self.refresh_gauges();
        }
        self.metrics.start_cursor(name);
        Ok(Cursor {
            name: name.to_string(),
        })
    }

    /// Names of all cursors, including ones loaded from disk that nobody
    /// asked for yet (collectors no longer configured: remove them).
    pub fn cursors(&self) -> Vec<String> {
        self.cursors.keys().cloned().collect()
    }

    /// Deletes cursor `name` and the data only it was holding. Returns
    /// whether it existed.
    pub fn remove_cursor(&mut self, name: &str) -> Result<bool, SpoolError> {
        if !self.cursors.contains_key(name) {
            return Ok(false);
        }
        // File first: if it cannot be deleted the cursor stays, here as it
        // would after a restart.
        let path = self.dir.join(format!("{CURSOR_PREFIX}{name}"));
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(SpoolError::Io {
                    what: format!("cannot delete cursor file {}", path.display()),
                    source: e,
                });
            }
        }
        self.cursors.remove(name);
        self.cursor_files.remove(name);
        self.unwritten.remove(name);
        self.sync_dir()?;
        self.bad_reads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(c, _)| c != name);
        tracing::info!(cursor = name, "spool: cursor removed");
        self.collect_garbage();
        self.refresh_gauges();
        Ok(true)
    }

    /// Up to `max_records` records at or after the cursor, oldest first,
    /// with their ids. Does not move the cursor: the same records come back
    /// until [`ack`](Self::ack)ed. Records deleted before the cursor got to
    /// them (counted as dropped) are passed over; a record found damaged is
    /// skipped, counted and logged.
    pub fn read(
        &self,
        cursor: &Cursor,
        max_records: usize,
    ) -> Result<Vec<(RecordId, Vec<u8>)>, SpoolError> {
        let pos = self.effective(self.position(cursor)?);
        let mut out = Vec::new();
        for seg in &self.segments {
            let mut k = seg.index_of(pos);
            let count = seg.offsets.len();
            while k < count && out.len() < max_records {
                let last = count.min(k.saturating_add(max_records - out.len()));
                self.read_range(seg, k, last, &cursor.name, &mut out)?;
                k = last;
            }
            if out.len() >= max_records {
                break;
            }
        }
        Ok(out)
    }

    /// Marks every record up to and including `upto` as done for this
    /// cursor (written to its file before returning, not synced: see the
    /// module's Guarantees), and deletes segments that every cursor is
    /// past. Acknowledging an id at or behind the cursor
    /// changes nothing.
    pub fn ack(&mut self, cursor: &Cursor, upto: RecordId) -> Result<(), SpoolError> {
        self.mark_acked(cursor, upto)?;
        self.write_acks()
    }

    /// Marks every record up to and including `upto` as done for this
    /// cursor in memory only, without any file I/O: reads, [`lag`](Self::lag),
    /// the gauges and the counting of records dropped when full see it at
    /// once, and the cursor file gets it at the next [`append`](Self::append),
    /// [`write_acks`](Self::write_acks) or when the spool is dropped
    /// (see the module's Guarantees). Acknowledging an id at or behind the
    /// cursor changes nothing.
    pub fn mark_acked(&mut self, cursor: &Cursor, upto: RecordId) -> Result<(), SpoolError> {
        let pos = self.position(cursor)?;
        if upto.0 >= self.next_id {
            return Err(SpoolError::AckBeyondEnd {
                cursor: cursor.name.clone(),
                upto,
                newest: self.next_id - 1,
            });
        }
        let new = upto.0 + 1;
        if new <= pos {
            return Ok(());
        }
        self.cursors.insert(cursor.name.clone(), new);
        self.unwritten.insert(cursor.name.clone());
        self.refresh_gauges();
        Ok(())
    }

    /// Writes the position of every cursor acknowledged since its file was
    /// last written (in place, not synced), then deletes segments that
    /// every cursor is past. A cursor whose file cannot be written stays
    /// to be written next time; the first error is returned.
    pub fn write_acks(&mut self) -> Result<(), SpoolError> {
        if self.unwritten.is_empty() {
            return Ok(());
        }
        let mut first_error = None;
        for name in std::mem::take(&mut self.unwritten) {
            let Some(&pos) = self.cursors.get(&name) else {
                continue;
            };
            if let Err(e) = self.write_cursor(&name, pos) {
                self.unwritten.insert(name);
                first_error.get_or_insert(e);
            }
        }
        // Segments every cursor is past go even if a cursor file could not
        // be written: they hold only acknowledged records, and a cursor
        // file left behind restarts at the oldest record present.
        self.collect_garbage();
        self.refresh_gauges();
        first_error.map_or(Ok(()), Err)
    }

    /// Records present that this cursor has not acknowledged. The shipper
    /// can export it as a per-collector lag gauge.
    pub fn lag(&self, cursor: &Cursor) -> Result<u64, SpoolError> {
        let pos = self.effective(self.position(cursor)?);
        Ok(self.segments.iter().map(|s| s.records_from(pos)).sum())
    }

    /// The id of the next record `read` would give this cursor (the next
    /// id to be appended when it has read everything).
    pub fn next_unread(&self, cursor: &Cursor) -> Result<RecordId, SpoolError> {
        Ok(RecordId(self.effective(self.position(cursor)?)))
    }

    /// Current sizes.
    pub fn stats(&self) -> SpoolStats {
        let oldest = self
            .segments
            .iter()
            .find(|s| s.count() > 0)
            .map(|s| RecordId(s.base));
        SpoolStats {
            bytes: self.total_bytes(),
            segments: self.segments.len(),
            unacked_records: self.unacked(),
            oldest,
            next: RecordId(self.next_id),
        }
    }

    fn active_segment(&self) -> &Segment {
        // open() always leaves at least one segment and nothing removes
        // the last one.
        &self.segments[self.segments.len() - 1]
    }

    fn active_segment_mut(&mut self) -> &mut Segment {
        let last = self.segments.len() - 1;
        &mut self.segments[last]
    }

    /// Largest payload this spool can hold within `max_bytes`.
    fn max_payload(&self) -> u64 {
        (self.opts.max_bytes - HEADER_LEN as u64).min(MAX_PAYLOAD as u64)
    }

    fn total_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.file_len).sum()
    }

    /// Id of the oldest record present, or the next id if there is none.
    fn oldest(&self) -> u64 {
        self.segments
            .iter()
            .find(|s| s.count() > 0)
            .map_or(self.next_id, |s| s.base)
    }

    /// Where a cursor at `pos` really reads from: records before the oldest
    /// one present are gone (and were counted when they went).
    fn effective(&self, pos: u64) -> u64 {
        pos.max(self.oldest())
    }

    fn position(&self, cursor: &Cursor) -> Result<u64, SpoolError> {
        self.cursors
            .get(&cursor.name)
            .copied()
            .ok_or_else(|| SpoolError::UnknownCursor(cursor.name.clone()))
    }

    /// The position of the cursor furthest behind, or `None` without
    /// cursors.
    fn slowest(&self) -> Option<u64> {
        let oldest = self.oldest();
        self.cursors.values().map(|&p| p.max(oldest)).min()
    }

    fn unacked(&self) -> u64 {
        let from = self.slowest().unwrap_or(0);
        self.segments.iter().map(|s| s.records_from(from)).sum()
    }

    fn refresh_gauges(&self) {
        self.metrics.bytes.set(self.total_bytes() as f64);
        self.metrics.records.set(self.unacked() as f64);
        self.metrics.segments.set(self.segments.len() as f64);
    }

    /// Reads records `first..last` of `seg` into `out`, skipping (and
    /// counting once per cursor) any that no longer check out.
    fn read_range(
        &self,
        seg: &Segment,
        first: usize,
        last: usize,
        cursor: &str,
        out: &mut Vec<(RecordId, Vec<u8>)>,
    ) -> Result<(), SpoolError> {
        let start = seg.offsets[first];
        let stop = seg.record_end(last - 1);
        let mut buf = vec![0u8; (stop - start) as usize];
        let read = File::open(&seg.path).and_then(|f| f.read_exact_at(&mut buf, start));
        match read {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                // Shorter than when it was scanned: something outside the
                // spool cut it. Those records are gone.
                for k in first..last {
                    let id = seg.base + k as u64;
                    let bytes = seg.record_end(k) - seg.offsets[k];
                    self.note_bad_read(cursor, seg, id, bytes, &Damage::ShortHeader { left: 0 });
                }
                return Ok(());
            }
            Err(e) => {
                return Err(SpoolError::Io {
                    what: format!("cannot read segment {}", seg.path.display()),
                    source: e,
                });
            }
        }
        for k in first..last {
            let id = seg.base + k as u64;
            let from = (seg.offsets[k] - start) as usize;
            let to = (seg.record_end(k) - start) as usize;
            match format::check_record(&buf[from..to], id) {
                Ok(payload) => out.push((RecordId(id), payload.to_vec())),
                Err(damage) => self.note_bad_read(cursor, seg, id, (to - from) as u64, &damage),
            }
        }
        Ok(())
    }

    fn note_bad_read(&self, cursor: &str, seg: &Segment, id: u64, bytes: u64, damage: &Damage) {
        let mut seen = self.bad_reads.lock().unwrap_or_else(|p| p.into_inner());
        if seen.insert((cursor.to_string(), id)) {
            self.metrics.drop(cursor, CORRUPT, 1, bytes);
            tracing::error!(
                segment = %seg.path.display(),
                record = id,
                cursor,
                %damage,
                "spool: record damaged on disk since it was written; skipping it"
            );
        }
    }

    /// Closes the active segment and starts a new one at the next id.
    fn roll(&mut self) -> Result<(), SpoolError> {
        let seg = create_segment(&self.dir, self.next_id, self.opts.sync)?;
        let file = open_for_append(&seg.path)?;
        self.segments.push(seg);
        self.active = file;
        Ok(())
    }

    /// Deletes oldest segments (never the active one) until `incoming`
    /// more bytes fit under `max_bytes`, counting what each cursor had not
    /// read.
    fn make_room(&mut self, incoming: u64) -> Result<(), SpoolError> {
        while self.total_bytes() + incoming > self.opts.max_bytes && self.segments.len() > 1 {
            let seg = &self.segments[0];
            let mut unread_most = 0;
            if self.cursors.is_empty() {
                unread_most = seg.count();
                self.metrics.drop("", SPOOL_FULL, seg.count(), seg.end);
            }
            for (name, &pos) in &self.cursors {
                let pos = self.effective(pos);
                let records = seg.records_from(pos);
                unread_most = unread_most.max(records);
                self.metrics
                    .drop(name, SPOOL_FULL, records, seg.bytes_from(pos));
            }
            remove_segment_file(&seg.path)?;
            tracing::warn!(
                segment = %seg.path.display(),
                records = seg.count(),
                bytes = seg.file_len,
                unread_records = unread_most,
                max_bytes = self.opts.max_bytes,
                "spool full: deleted the oldest segment"
            );
            self.segments.remove(0);
        }
        self.forget_bad_reads_before(self.oldest());
        Ok(())
    }

    /// Deletes segments that every cursor is past, and empty ones; never
    /// the active one. Without cursors only empty segments go: the data
    /// waits for the first cursor. A failure is logged and retried next
    /// time (the data is already acknowledged).
    fn collect_garbage(&mut self) {
        let slowest = self.slowest();
        let mut i = 0;
        while i + 1 < self.segments.len() {
            let seg = &self.segments[i];
            let done = seg.count() == 0 || slowest.is_some_and(|p| seg.next() <= p);
            if !done {
                i += 1;
                continue;
            }
            if let Err(e) = remove_segment_file(&seg.path) {
                tracing::warn!(error = %e, "spool: cannot delete a consumed segment; will retry");
                return;
            }
            self.segments.remove(i);
        }
        self.forget_bad_reads_before(self.oldest());
    }

    fn forget_bad_reads_before(&self, oldest: u64) {
        self.bad_reads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(_, id)| *id >= oldest);
    }

    /// Writes an acknowledged position over the cursor file in place
    /// (opened once, kept open), without syncing it.
    fn write_cursor(&mut self, name: &str, pos: u64) -> Result<(), SpoolError> {
        let path = || self.dir.join(format!("{CURSOR_PREFIX}{name}"));
        if !self.cursor_files.contains_key(name) {
            let file = OpenOptions::new()
                .write(true)
                .open(path())
                .map_err(io_err(format!(
                    "cannot open cursor file {}",
                    path().display()
                )))?;
            self.cursor_files.insert(name.to_string(), file);
        }
        let Some(file) = self.cursor_files.get(name) else {
            return Err(SpoolError::UnknownCursor(name.to_string()));
        };
        // Fixed width: ids only grow, but a shorter text would leave the
        // end of a longer one behind.
        let text = format!("{pos:020}\n");
        file.write_all_at(text.as_bytes(), 0).map_err(|e| {
            // The cursor stays where it was; the file may hold either
            // position, and both are safe to restart from.
            self.cursor_files.remove(name);
            if is_disk_full(&e) {
                SpoolError::DiskFull {
                    path: path(),
                    bytes: text.len() as u64,
                }
            } else {
                SpoolError::Io {
                    what: format!("cannot write cursor file {}", path().display()),
                    source: e,
                }
            }
        })
    }

    /// Replaces the cursor file atomically and syncs it (a new cursor).
    fn persist_cursor(&self, name: &str, pos: u64) -> Result<(), SpoolError> {
        let path = self.dir.join(format!("{CURSOR_PREFIX}{name}"));
        let tmp = self.dir.join(format!("{CURSOR_TMP_PREFIX}{name}"));
        let sync = self.opts.sync == SyncPolicy::EveryRecord;
        let text = format!("{pos}\n");
        let written = File::create(&tmp).and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            if sync { f.sync_all() } else { Ok(()) }
        });
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(if is_disk_full(&e) {
                SpoolError::DiskFull {
                    path: tmp,
                    bytes: text.len() as u64,
                }
            } else {
                SpoolError::Io {
                    what: format!("cannot write cursor file {}", tmp.display()),
                    source: e,
                }
            });
        }
        fs::rename(&tmp, &path).map_err(io_err(format!(
            "cannot rename {} to {}",
            tmp.display(),
            path.display()
        )))?;
        self.sync_dir()
    }

    fn sync_dir(&self) -> Result<(), SpoolError> {
        if self.opts.sync == SyncPolicy::EveryRecord {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

impl Drop for Spool {
    /// Acknowledgements marked but not written yet go to their files.
    fn drop(&mut self) {
        if let Err(e) = self.write_acks() {
            tracing::error!(error = %e, "spool: cannot record deliveries in a cursor file at close; those batches will be sent again");
        }
    }
}

fn check_options(o: &SpoolOptions) -> Result<(), SpoolError> {
    if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&o.segment_bytes) {
        return Err(SpoolError::InvalidOptions(format!(
            "segment_bytes is {}; it must be between {MIN_SEGMENT_BYTES} and {MAX_SEGMENT_BYTES}",
            o.segment_bytes
        )));
    }
    // Room for one full segment besides the one being written, so deleting
    // old segments can always make space for a record.
    if o.max_bytes < 2 * o.segment_bytes {
        return Err(SpoolError::InvalidOptions(format!(
            "max_bytes is {} but must be at least twice segment_bytes ({})",
            o.max_bytes, o.segment_bytes
        )));
    }
    Ok(())
}

/// The base id of a segment file name, or `None` for any other file.
fn segment_base(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEGMENT_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!(
        "{base:0width$}{SEGMENT_SUFFIX}",
        width = SEGMENT_DIGITS
    ))
}

fn valid_cursor_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CURSOR_NAME
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Reads a cursor file. One that does not parse restarts that cursor at
/// the oldest record: sending some batches twice beats losing them.
fn load_cursor(path: &Path) -> Result<u64, SpoolError> {
    let text = match fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            return Err(SpoolError::Io {
                what: format!("cannot read cursor file {}", path.display()),
                source: e,
            });
        }
    };
    match std::str::from_utf8(&text)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
    {
        Some(pos) => Ok(pos),
        None => {
            tracing::warn!(
                file = %path.display(),
                "spool: cursor file does not hold a record id; that cursor restarts at the \
                 oldest record (some batches may be sent twice)"
            );
            Ok(0)
        }
    }
}

fn create_segment(dir: &Path, base: u64, sync: SyncPolicy) -> Result<Segment, SpoolError> {
    let path = segment_path(dir, base);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| {
            if is_disk_full(&e) {
                SpoolError::DiskFull {
                    path: path.clone(),
                    bytes: 0,
                }
            } else {
                SpoolError::Io {
                    what: format!("cannot create segment {}", path.display()),
                    source: e,
                }
            }
        })?;
    // The new name must survive a crash along with the records synced
    // into it.
    if sync == SyncPolicy::EveryRecord {
        sync_dir(dir)?;
    }
    Ok(Segment {
        base,
        path,
        offsets: Vec::new(),
        end: 0,
        file_len: 0,
    })
}

fn open_for_append(path: &Path) -> Result<File, SpoolError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err(format!(
            "cannot open segment {} for writing",
            path.display()
        )))
}

fn remove_segment_file(path: &Path) -> Result<(), SpoolError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        // Already gone: the goal is reached.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SpoolError::Io {
            what: format!(
                "cannot delete old segment {} (check the spool dir's permissions)",
                path.display()
            ),
            source: e,
        }),
    }
}

fn truncate(path: &Path, len: u64) -> Result<(), SpoolError> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| {
            f.set_len(len)?;
            f.sync_all()
        })
        .map_err(io_err(format!(
            "cannot cut the damaged tail off segment {}",
            path.display()
        )))
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(format!("cannot fsync spool dir {}", dir.display())))
}

/// Takes an exclusive `flock` on `dir/lock`; released when the file is
/// closed, including when the process dies.
fn lock_dir(dir: &Path) -> Result<File, SpoolError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err(format!("cannot open lock file {}", path.display())))?;
    // SAFETY: flock only takes a file descriptor, which `file` keeps open
    // for the duration of the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(SpoolError::Locked {
                dir: dir.to_path_buf(),
            });
        }
        return Err(SpoolError::Io {
            what: format!("cannot lock {}", path.display()),
            source: e,
        });
    }
    Ok(file)
}

fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

fn io_err(what: String) -> impl FnOnce(io::Error) -> SpoolError {
    move |source| SpoolError::Io { what, source }
}
