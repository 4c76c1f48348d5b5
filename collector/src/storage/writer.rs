//! The writer thread: the only code that writes to SQLite. It takes batches
//! from a channel, applies each inside its own savepoint (a batch is applied
//! whole or not at all), commits the round, updates the in-memory index and
//! stream maps only after the commit, and then answers each caller.
//!
//! A write is one `ingest_log` row (its samples encoded, `log.rs`) plus the
//! series, de-duplication and metadata rows it needs; the samples go into
//! the in-memory head (`head.rs`) once the round commits. It never answers
//! before the commit: an acknowledged batch is on disk.
//!
//! Between write rounds (and when idle) it runs background maintenance in
//! bounded steps, each its own transaction of at most
//! `StorageOptions::step_budget` (and [`STEP_MAX_UNITS`] units): compaction
//! of series whose head is due into chunks, retention passes over every
//! series (every [`RETENTION_EVERY`]), and incremental vacuum after
//! deletions. A write round waits for at most one step.
//!
//! Compaction reads a series' head from memory, writes chunks, and in the
//! same transaction re-logs the samples it leaves in the head (one log row)
//! and records in `series.log_from` the first log row still needed for the
//! series; after the commit the head keeps only those samples. Log rows
//! older than every head's `log_from` are deleted in a maintenance step. At
//! open the log is replayed into the head, skipping each series' samples in
//! rows before its `log_from`; a row that does not decode is logged,
//! counted in `nines_storage_corrupt_log_rows_total` and skipped.
//!
//! A series' head is due when it holds about a full chunk's worth of rows
//! (learned per series from its last compaction), when it has rows in two
//! windows (the older is closed), or when the wall clock is past the window
//! of its oldest row and nothing was written to it for [`QUIET`].

use super::compact;
use super::head::{Head, SeriesHead};
use super::index::{self, Index, SeriesId, SeriesMap};
use super::log;
use super::read::{CorruptChunk, Run};
use super::rollup;
use super::schema;
use super::{MaintenanceReport, SeriesWrite, StorageMetrics, StorageOptions};
use nines_shared::{
    Batch, Label, Labels, MetricKind, MetricMetadata, SeriesRef, StreamId, UnixMillis,
};
use rusqlite::{Connection, OptionalExtension};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock, mpsc};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Most batches committed in one transaction.
const MAX_BATCHES_PER_ROUND: usize = 64;
/// How long a batch's (stream, seq) is remembered for de-duplication.
const DEDUP_WINDOW_MS: i64 = 2 * 24 * 3600 * 1000;
/// Most units (a series' window compacted, or [`RETENTION_SERIES_PER_UNIT`]
/// series expired) in one maintenance step.
pub(super) const STEP_MAX_UNITS: usize = 64;
/// Series one retention unit goes through.
const RETENTION_SERIES_PER_UNIT: usize = 64;
/// How often a retention pass starts.
const RETENTION_EVERY: Duration = Duration::from_secs(300);
/// Pages one vacuum step returns to the file system.
const VACUUM_PAGES_PER_STEP: u32 = 512;
/// Free pages kept for reuse in the background (the head churns through
/// them); an explicit [`Control::CompactAll`] frees every page.
const VACUUM_KEEP_PAGES: i64 = 256;
/// How often the idle writer wakes to look for due work.
const IDLE_TICK: Duration = Duration::from_millis(500);
/// How long background work pauses after a failed step.
const FAILURE_PAUSE: Duration = Duration::from_secs(10);
/// A series written to less recently than this has gone quiet: once the
/// wall clock is past its window, the window is closed.
pub(super) const QUIET: Duration = Duration::from_secs(60);
/// How often log rows no head needs any more are looked for.
const LOG_TRIM_EVERY: Duration = Duration::from_secs(1);
/// Head rows that make a series due before its chunk size is known.
const DEFAULT_TARGET_ROWS: usize = 512;

/// What happened to a batch that was not refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// Committed now.
    Stored {
        /// Samples written.
        samples: usize,
        /// Series created.
        new_series: usize,
    },
    /// This (stream, seq) was applied before; nothing was written.
    Duplicate,
}

/// Why a batch was not written. Nothing of it was.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// Samples refer to series refs that neither this batch nor an earlier
    /// one of the stream defined; the agent must send the definitions.
    #[error("unknown series refs {0:?}: resend the batch with series definitions")]
    UnknownRefs(Vec<u32>),
    /// SQLite failed; the batch may be retried.
    #[error("storage failure: {0}")]
    Storage(String),
    /// The file system holding the database is full: nothing of the round
    /// was written; the batch may be retried once space is freed.
    #[error("disk full: cannot write to {path}; writes resume once space is freed there")]
    DiskFull {
        /// The database file.
        path: String,
    },
    /// The writer has stopped.
    #[error("storage is shutting down")]
    Closed,
}

struct Request {
    work: Work,
    reply: oneshot::Sender<Result<Applied, WriteError>>,
}

/// What the writer thread receives.
enum Msg {
    Write(Request),
    Control(
        Control,
        oneshot::Sender<Result<MaintenanceReport, WriteError>>,
    ),
    /// The store is closing: finish and stop.
    Stop,
}

/// Maintenance asked for explicitly.
#[derive(Debug, Clone, Copy)]
pub(super) enum Control {
    /// Compact every head row now, run a retention pass, free every free
    /// page and truncate the WAL. Holds writes back while it runs.
    CompactAll,
}

/// Which series a write is for.
#[derive(Debug, Clone, PartialEq)]
pub enum SeriesKey {
    /// A label set (valid, sorted): found or created.
    Labels(Labels),
    /// A series the index holds (committed).
    Known(SeriesId),
}

/// Samples for one series, named by [`SeriesKey`].
#[derive(Debug, Clone, PartialEq)]
pub struct KeyedWrite {
    /// The series.
    pub key: SeriesKey,
    /// (timestamp ms, value) pairs, in any order.
    pub samples: Vec<(i64, f64)>,
}

impl From<SeriesWrite> for KeyedWrite {
    /// A series known by its labels.
    fn from(s: SeriesWrite) -> Self {
        KeyedWrite {
            key: SeriesKey::Labels(s.labels),
            samples: s.samples,
        }
    }
}

/// What a request asks to write.
enum Work {
    /// A native batch: de-duplicated by (stream, seq), refs resolved.
    Batch(Batch),
    /// Series from a source without streams (remote_write, scrapes).
    Series {
        writes: Vec<KeyedWrite>,
        metadata: Vec<MetricMetadata>,
        /// The label sets were checked by remote_write decoding under this
        /// process's limits: the index remembers them by their pairs.
        checked: bool,
    },
}

/// Sends batches to the writer thread.
pub(super) struct Handle {
    tx: mpsc::SyncSender<Msg>,
    thread: Option<std::thread::JoinHandle<()>>,
    checkpointer: Option<Checkpointer>,
}

impl Drop for Handle {
    /// Stops the writer and waits for it: once a store is dropped nothing
    /// of it writes to the file any more.
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.checkpointer.take();
    }
}

/// How often the checkpointer copies committed WAL frames into the
/// database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// A thread that checkpoints the WAL from its own connection (`PASSIVE`:
/// it never waits for, nor blocks, the writer or readers), so the copying
/// of pages into the database file happens beside the write rounds. The
/// writer's own automatic checkpoint (every 1000 WAL pages) then finds
/// almost every frame copied already: it only syncs the file, and the WAL
/// starts over. A failure is logged once per episode; nothing depends on
/// this thread for correctness.
struct Checkpointer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn start(path: &str) -> Result<Checkpointer, String> {
        let conn = Connection::open(path).map_err(|e| e.to_string())?;
        // synchronous=FULL: the file is synced before the WAL may restart.
        schema::configure(&conn).map_err(|e| e.to_string())?;
        let (stop, stopped) = mpsc::channel::<()>();
        let path = path.to_string();
        let thread = std::thread::Builder::new()
            .name("nines-sqlite-checkpoint".into())
            .spawn(move || {
                let mut failing = false;
                let timeout = Err(mpsc::RecvTimeoutError::Timeout);
                while stopped.recv_timeout(CHECKPOINT_EVERY) == timeout {
                    let res = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                        r.get::<_, i64>(0)
                    });
                    match res {
                        Ok(_) => failing = false,
                        Err(e) => {
                            if !std::mem::replace(&mut failing, true) {
                                tracing::warn!(%path, error = %e, "WAL checkpoint failed; the writer checkpoints instead");
                            }
                            // A full disk or a broken file: try again later.
                            if stopped.recv_timeout(FAILURE_PAUSE) != timeout {
                                break;
                            }
                        }
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(Checkpointer {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Handle {
    pub(super) async fn write(&self, batch: Batch) -> Result<Applied, WriteError> {
        self.send(Work::Batch(batch)).await
    }

    pub(super) async fn write_series(
        &self,
        series: Vec<SeriesWrite>,
        metadata: Vec<MetricMetadata>,
    ) -> Result<Applied, WriteError> {
        let writes = series.into_iter().map(KeyedWrite::from).collect();
        self.send(Work::Series {
            writes,
            metadata,
            checked: false,
        })
        .await
    }

    pub(super) async fn write_keyed(
        &self,
        writes: Vec<KeyedWrite>,
        metadata: Vec<MetricMetadata>,
    ) -> Result<Applied, WriteError> {
        self.send(Work::Series {
            writes,
            metadata,
            checked: true,
        })
        .await
    }

    pub(super) async fn control(&self, c: Control) -> Result<MaintenanceReport, WriteError> {
        let (reply, rx) = oneshot::channel();
        let tx = self.tx.clone();
        tokio::task::spawn_blocking(move || tx.send(Msg::Control(c, reply)).map_err(|_| ()))
            .await
            .map_err(|_| WriteError::Closed)?
            .map_err(|_| WriteError::Closed)?;
        rx.await.map_err(|_| WriteError::Closed)?
    }

    async fn send(&self, work: Work) -> Result<Applied, WriteError> {
        let (reply, rx) = oneshot::channel();
        match self.tx.try_send(Msg::Write(Request { work, reply })) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Disconnected(_)) => return Err(WriteError::Closed),
            Err(mpsc::TrySendError::Full(req)) => {
                // A full queue holds this push back (on the blocking pool):
                // back-pressure on pushers rather than unbounded memory.
                let tx = self.tx.clone();
                tokio::task::spawn_blocking(move || tx.send(req).map_err(|_| ()))
                    .await
                    .map_err(|_| WriteError::Closed)?
                    .map_err(|_| WriteError::Closed)?;
            }
        }
        rx.await.map_err(|_| WriteError::Closed)?
    }
}

pub(super) fn spawn(
    conn: Connection,
    index: Arc<RwLock<Index>>,
    mem: Arc<Head>,
    metrics: StorageMetrics,
    options: StorageOptions,
    raw_deleted_before: Arc<AtomicI64>,
) -> Result<Handle, super::StorageError> {
    let (tx, rx) = mpsc::sync_channel::<Msg>(256);
    let path = conn.path().unwrap_or_default().to_string();
    let mut w = Writer::new(conn, index, mem, metrics, options, raw_deleted_before);
    w.replay()?;
    // An in-memory or temporary database has no WAL to checkpoint.
    let checkpointer = if path.is_empty() {
        None
    } else {
        Checkpointer::start(&path)
            .map_err(|e| tracing::warn!(%path, error = %e, "no background WAL checkpoints"))
            .ok()
    };
    let thread = std::thread::Builder::new()
        .name("nines-sqlite-writer".into())
        .spawn(move || w.run(rx))
        .map_err(|e| super::StorageError::Schema {
            path: String::new(),
            reason: format!("cannot start writer thread: {e}"),
        })?;
    Ok(Handle {
        tx,
        thread: Some(thread),
        checkpointer,
    })
}

struct Writer {
    conn: Connection,
    index: Arc<RwLock<Index>>,
    /// The samples not in chunks yet (shared with readers).
    mem: Arc<Head>,
    /// Log rows no head needs are to be deleted.
    trim_log: bool,
    last_trim: Instant,
    /// Per stream, what its refs name. Lost on restart, by design: the
    /// collector then answers "unknown refs" and the agent re-sends.
    streams: HashMap<StreamId, StreamRefs>,
    metrics: StorageMetrics,
    last_prune: Instant,
    options: StorageOptions,
    /// Per series with head rows: about how many, their time span, when.
    head: SeriesMap<HeadStat>,
    /// An explicit compaction runs: every window is closed.
    forcing: bool,
    /// Series whose head is due for compaction, oldest first.
    due: VecDeque<SeriesId>,
    /// A retention pass under way: the last series id done.
    retention_cursor: Option<i64>,
    /// The rollup backfill pass under way (at open, until one pass has
    /// gone through every series; see `rollup::backfill_done`): the last
    /// series id done. Windows with chunks but no rollup rows (written before
    /// rollups existed) get them.
    backfill_cursor: Option<i64>,
    /// The largest raw retention cutoff ever applied (kept in the file):
    /// windows starting before it may have lost chunks, so their rollup
    /// rows are never recomputed from what is left. Shared with readers,
    /// whose queries must not look for raw samples before it.
    raw_deleted_before: Arc<AtomicI64>,
    /// Samples the pass under way deleted.
    retention_deleted: usize,
    next_retention: Instant,
    /// Free pages are to be returned to the file system.
    vacuum: bool,
    last_scan: Instant,
    paused_until: Option<Instant>,
    /// Wall clock in Unix ms (retention's "now"; replaced in tests).
    clock: fn() -> i64,
    /// The database file, named in errors.
    path: String,
    /// Since when writes fail for a full disk (logged once per episode).
    disk_full_since: Option<Instant>,
    /// Maintenance failed for a full disk (logged once per episode).
    maintenance_disk_full: bool,
}

/// What the writer knows about one series' head.
#[derive(Debug, Clone, Copy)]
struct HeadStat {
    /// Head rows (replacements counted too until the next compaction).
    rows: usize,
    /// Smallest and largest timestamp among them.
    min_ts: i64,
    max_ts: i64,
    /// When the series was last written (or the writer started).
    last_write: Instant,
    /// Rows at which a full chunk can be cut.
    target_rows: usize,
    /// In the due queue.
    queued: bool,
}

impl HeadStat {
    fn new() -> Self {
        HeadStat {
            rows: 0,
            min_ts: i64::MAX,
            max_ts: i64::MIN,
            last_write: Instant::now(),
            target_rows: DEFAULT_TARGET_ROWS,
            queued: false,
        }
    }

    fn due_by_size(&self) -> bool {
        self.rows > 0
            && (self.rows >= self.target_rows
                || compact::window_start(self.max_ts) != compact::window_start(self.min_ts))
    }

    fn due_by_clock(&self, now_ms: i64) -> bool {
        self.rows > 0
            && self.last_write.elapsed() >= QUIET
            && now_ms > compact::window_last(self.min_ts)
    }
}

/// A series' head after compaction, applied once the step commits.
struct Refresh {
    id: SeriesId,
    /// What stays in the head and its first log row; `None` when nothing
    /// moved (the head stays as it is).
    rest: Option<(Run, i64)>,
    bytes_per_sample: Option<f64>,
}

/// One stream's refs and when it last pushed; streams silent for longer
/// than [`STREAM_IDLE`] are forgotten (they re-send definitions if they
/// come back).
#[derive(Default)]
struct StreamRefs {
    refs: RefMap,
    last_seen: Option<Instant>,
}

/// A stream's refs to series ids.
type RefMap = HashMap<SeriesRef, SeriesId, index::BuildSeriesIdHasher>;

/// How long an idle stream's refs are kept in memory.
const STREAM_IDLE: std::time::Duration = std::time::Duration::from_secs(3600);

/// What one applied batch changes in memory once the round commits.
#[derive(Default)]
struct Effects {
    new_series: Vec<(SeriesId, Labels)>,
    refs: Vec<(SeriesRef, SeriesId)>,
    /// Samples written per series, in write order, and their log row.
    groups: Vec<log::Group>,
    log_id: i64,
    /// Checked label sets to remember by their pairs' hash.
    remember: Vec<(u64, SeriesId)>,
}

impl Writer {
    fn new(
        conn: Connection,
        index: Arc<RwLock<Index>>,
        mem: Arc<Head>,
        metrics: StorageMetrics,
        options: StorageOptions,
        raw_deleted_before: Arc<AtomicI64>,
    ) -> Writer {
        let now = Instant::now();
        let mark = rollup::raw_deleted_before(&conn).unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read the raw retention mark");
            i64::MIN
        });
        raw_deleted_before.store(mark, Ordering::Relaxed);
        // Files that had chunks before there were rollups (version 3) are
        // rolled up by one background pass; once done, never again.
        let backfill_done = rollup::backfill_done(&conn).unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read the rollup backfill mark");
            false
        });
        Writer {
            index,
            mem,
            trim_log: false,
            last_trim: now,
            streams: HashMap::new(),
            metrics,
            last_prune: now,
            options,
            head: SeriesMap::default(),
            forcing: false,
            due: VecDeque::new(),
            retention_cursor: None,
            backfill_cursor: (!backfill_done).then_some(i64::MIN),
            raw_deleted_before,
            retention_deleted: 0,
            // The first pass soon after start, not at once: opening stays quick.
            next_retention: now + Duration::from_secs(10),
            vacuum: false,
            last_scan: now,
            paused_until: None,
            clock: || UnixMillis::now().0,
            path: conn.path().unwrap_or_default().to_string(),
            disk_full_since: None,
            maintenance_disk_full: false,
            conn,
        }
    }

    /// Rebuilds the head from the ingest log (left by the previous run).
    fn replay(&mut self) -> Result<(), super::StorageError> {
        let started = Instant::now();
        let log_from: HashMap<i64, i64> = self
            .conn
            .prepare("SELECT id, log_from FROM series")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let mem = self.mem.clone();
        let mut heads = mem.write();
        let mut stmt = self
            .conn
            .prepare("SELECT id, data FROM ingest_log ORDER BY id")?;
        let mut rows = stmt.query([])?;
        let (mut replayed, mut log_rows) = (0usize, 0usize);
        let mut stats: SeriesMap<(usize, i64, i64)> = SeriesMap::default();
        while let Some(row) = rows.next()? {
            let row_id: i64 = row.get(0)?;
            log_rows += 1;
            let groups = match super::read::blob(row.get_ref(1)?).and_then(log::decode) {
                Ok(g) => g,
                Err(error) => {
                    self.metrics.corrupt_log_rows.inc();
                    tracing::error!(row = row_id, %error, "corrupt ingest log row skipped");
                    continue;
                }
            };
            for (id, samples) in groups {
                match log_from.get(&id.0) {
                    None => {
                        self.metrics.corrupt_log_rows.inc();
                        tracing::error!(
                            row = row_id,
                            series_id = id.0,
                            "ingest log row names an unknown series; its samples skipped"
                        );
                        continue;
                    }
                    Some(&from) if row_id < from => continue,
                    Some(_) => {}
                }
                let h = heads.entry(id).or_default();
                if h.is_empty() {
                    h.log_from = row_id;
                }
                let st = stats.entry(id).or_insert((0, i64::MAX, i64::MIN));
                for &(t, b) in &samples {
                    h.push(t, b);
                    *st = (st.0 + 1, st.1.min(t), st.2.max(t));
                }
                replayed += samples.len();
            }
        }
        drop(rows);
        drop(stmt);
        drop(heads);
        let now = Instant::now();
        for (id, n) in stats {
            self.note_head_rows(id, n, now);
        }
        if log_rows > 0 {
            tracing::info!(
                log_rows,
                samples = replayed,
                seconds = started.elapsed().as_secs_f64(),
                "ingest log replayed into the head"
            );
        }
        Ok(())
    }

    /// Appends one log row; returns its id.
    fn append_log(&self, groups: &[log::Group]) -> rusqlite::Result<i64> {
        self.conn
            .prepare_cached("INSERT INTO ingest_log (data) VALUES (?1)")?
            .execute([log::encode(groups)])?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Logs again what a compaction leaves in a series' head and records
    /// the row as the series' first needed one (inside the step's
    /// transaction); returns the row's id. Older rows no longer hold
    /// anything of the series that is not in chunks.
    fn relog(&self, id: SeriesId, rest: &Run) -> rusqlite::Result<i64> {
        let from = if rest.is_empty() {
            self.next_log_id()?
        } else {
            let bits = rest.iter().map(|&(t, v)| (t, v.to_bits())).collect();
            self.append_log(&[(id, bits)])?
        };
        self.conn
            .prepare_cached("UPDATE series SET log_from = ?2 WHERE id = ?1")?
            .execute((id.0, from))?;
        Ok(from)
    }

    /// The id the next log row will get (inside the current transaction).
    fn next_log_id(&self) -> rusqlite::Result<i64> {
        self.conn.query_row(
            "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'ingest_log'), 0) + 1",
            [],
            |r| r.get(0),
        )
    }

    /// Where raw samples are complete from at `now_ms`: the raw retention
    /// cutoff, or the largest one ever applied if later.
    fn raw_complete_from(&self, now_ms: i64) -> i64 {
        self.options.cutoffs(now_ms)[0].max(self.raw_deleted_before.load(Ordering::Relaxed))
    }

    fn note_head_rows(&mut self, id: SeriesId, (n, min, max): (usize, i64, i64), now: Instant) {
        let st = self.head.entry(id).or_insert_with(HeadStat::new);
        st.rows += n;
        st.min_ts = st.min_ts.min(min);
        st.max_ts = st.max_ts.max(max);
        st.last_write = now;
        if !st.queued && st.due_by_size() {
            st.queued = true;
            self.due.push_back(id);
        }
    }

    fn run(&mut self, rx: mpsc::Receiver<Msg>) {
        let mut carry: Option<Msg> = None;
        loop {
            let msg = match carry.take() {
                Some(m) => m,
                None => {
                    self.tick();
                    if self.maintenance_pending() {
                        match rx.try_recv() {
                            Ok(m) => m,
                            Err(mpsc::TryRecvError::Empty) => {
                                self.maintenance_step(Some(self.options.step_budget));
                                continue;
                            }
                            Err(mpsc::TryRecvError::Disconnected) => break,
                        }
                    } else {
                        match rx.recv_timeout(IDLE_TICK) {
                            Ok(m) => m,
                            Err(mpsc::RecvTimeoutError::Timeout) => continue,
                            Err(mpsc::RecvTimeoutError::Disconnected) => break,
                        }
                    }
                }
            };
            match msg {
                Msg::Stop => break,
                Msg::Control(c, reply) => {
                    let _ = reply.send(self.control(c));
                }
                Msg::Write(first) => {
                    let mut round = vec![first];
                    while round.len() < MAX_BATCHES_PER_ROUND {
                        match rx.try_recv() {
                            Ok(Msg::Write(r)) => round.push(r),
                            Ok(other) => {
                                carry = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.commit_round(round);
                    // One bounded step between rounds keeps maintenance up
                    // with ingestion without holding it back for long.
                    self.tick();
                    if self.maintenance_pending() {
                        self.maintenance_step(Some(self.options.step_budget));
                    }
                }
            }
        }
        tracing::info!("storage writer stopped");
    }

    /// Starts what is due by the clock: age-triggered compactions, a
    /// retention pass, de-duplication pruning.
    fn tick(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.last_trim) >= LOG_TRIM_EVERY {
            self.last_trim = now;
            self.trim_log = true;
        }
        if now.duration_since(self.last_scan) >= Duration::from_secs(1) {
            self.last_scan = now;
            let now_ms = (self.clock)();
            for (id, st) in self.head.iter_mut() {
                if !st.queued && st.due_by_clock(now_ms) {
                    st.queued = true;
                    self.due.push_back(*id);
                }
            }
        }
        if self.retention_cursor.is_none() && self.options.expires() && now >= self.next_retention {
            self.retention_cursor = Some(i64::MIN);
            self.retention_deleted = 0;
        }
        if self.last_prune.elapsed().as_secs() > 600 {
            self.prune_dedup();
            // Deletions elsewhere leave pages free too: look now and then.
            match self.free_pages() {
                Ok((free, total)) if free > (total / 4).max(4 * VACUUM_KEEP_PAGES) => {
                    self.vacuum = true
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read the free page count"),
            }
        }
    }

    fn free_pages(&self) -> rusqlite::Result<(i64, i64)> {
        let free = self
            .conn
            .query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
        let total = self.conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        Ok((free, total))
    }

    fn maintenance_pending(&self) -> bool {
        if self.paused_until.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        !self.due.is_empty()
            || self.retention_cursor.is_some()
            || self.backfill_cursor.is_some()
            || self.vacuum
            || self.trim_log
    }

    /// One maintenance step in its own transaction: compaction units first,
    /// then retention units, within `budget` (none: until nothing is left)
    /// and [`STEP_MAX_UNITS`]; then, if time is left, one vacuum step.
    /// Returns what it did.
    fn maintenance_step(&mut self, budget: Option<Duration>) -> MaintenanceReport {
        let started = Instant::now();
        // At least one unit per step, whatever the budget: progress.
        let within = |units: usize| {
            units == 0 || budget.is_none_or(|b| units < STEP_MAX_UNITS && started.elapsed() < b)
        };
        let mut report = MaintenanceReport::default();
        let mut units = 0usize;
        // Changes to memory, applied only once the step commits.
        let mut finished: Vec<Refresh> = Vec::new();
        let mut cursor = self.retention_cursor;
        let mut expired = 0usize;
        let now_ms = (self.clock)();
        let mut bps: Option<f64> = None;
        // The series a unit is working on: its head as the step left it,
        // and whether anything of it moved yet.
        let mut work: Option<(SeriesId, Run, bool)> = None;
        // Series retention went through, and the cutoff.
        let mut expire: Vec<SeriesId> = Vec::new();
        let mut expire_cutoff = i64::MIN;
        let mut partial: Option<(SeriesId, Run, i64)> = None;
        let mut rollups = rollup::Written::default();
        let mut rollups_expired = [0usize; 2];
        let mut backfill = self.backfill_cursor;
        let trim = std::mem::take(&mut self.trim_log);
        let result = (|| -> rusqlite::Result<()> {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            if trim {
                // Rows before every head's first needed row hold nothing
                // that is not in chunks (or re-logged) now.
                let oldest = self.mem.read().values().map(|h| h.log_from).min();
                let next = self.next_log_id()?;
                let keep_from = oldest.map_or(next, |o| o.min(next));
                self.conn
                    .prepare_cached("DELETE FROM ingest_log WHERE id < ?1")?
                    .execute([keep_from])?;
            }
            while within(units) {
                if let Some(&id) = self.due.get(finished.len()) {
                    let quiet = self
                        .head
                        .get(&id)
                        .is_none_or(|st| st.last_write.elapsed() >= QUIET);
                    let close = compact::Close {
                        force: self.forcing,
                        quiet_before: quiet.then_some(now_ms),
                        rollups_from: self.raw_complete_from(now_ms),
                    };
                    let (run, mut moved) = match work.take() {
                        Some((w, run, moved)) if w == id => (run, moved),
                        _ => (self.mem.run(id, i64::MIN, i64::MAX), false),
                    };
                    let o = compact::compact_unit(&self.conn, id, &run, close, &mut |c| {
                        report_corrupt(&self.index, &self.metrics, id, &c, "compaction")
                    })?;
                    report.samples_compacted += o.rows;
                    report.chunks_written += o.written;
                    report.corrupt_chunks += o.corrupt;
                    rollups.add(o.rollups);
                    bps = o.bytes_per_sample.or(bps);
                    moved |= o.rows > 0;
                    let rest: Run = run[o.rows..].to_vec();
                    if o.more {
                        work = Some((id, rest, moved));
                    } else {
                        let rest = if moved {
                            let from = self.relog(id, &rest)?;
                            Some((rest, from))
                        } else {
                            None
                        };
                        finished.push(Refresh {
                            id,
                            rest,
                            bytes_per_sample: bps.take(),
                        });
                    }
                } else if let Some(after) = cursor {
                    let [cutoff, cut_1m, cut_1h] = self.options.cutoffs((self.clock)());
                    let ids: Vec<i64> = self
                        .conn
                        .prepare_cached("SELECT id FROM series WHERE id > ?1 ORDER BY id LIMIT ?2")?
                        .query_map((after, RETENTION_SERIES_PER_UNIT as i64), |r| r.get(0))?
                        .collect::<Result<_, _>>()?;
                    for id in &ids {
                        expired +=
                            compact::expire_series(&self.conn, SeriesId(*id), cutoff)?.samples;
                        let gone =
                            rollup::expire_series(&self.conn, SeriesId(*id), cut_1m, cut_1h)?;
                        rollups_expired =
                            [rollups_expired[0] + gone[0], rollups_expired[1] + gone[1]];
                        expire.push(SeriesId(*id));
                    }
                    expire_cutoff = cutoff;
                    if cutoff > self.raw_deleted_before.load(Ordering::Relaxed) {
                        rollup::mark_raw_deleted_before(&self.conn, cutoff)?;
                    }
                    cursor = match ids.last() {
                        Some(last) if ids.len() == RETENTION_SERIES_PER_UNIT => Some(*last),
                        _ => None,
                    };
                } else if let Some(after) = backfill {
                    let from = self.raw_complete_from(now_ms);
                    let (next, w) =
                        rollup::backfill_unit(&self.conn, after, from, &mut |id, c| {
                            report_corrupt(&self.index, &self.metrics, id, &c, "rollup backfill")
                        })?;
                    rollups.add(w);
                    if next.is_none() {
                        rollup::mark_backfill_done(&self.conn)?;
                    }
                    backfill = next;
                } else {
                    break;
                }
                units += 1;
            }
            // A series cut short by the budget: what moved so far leaves
            // its head too; it stays first in the queue.
            if let Some((id, rest, true)) = work.take() {
                let from = self.relog(id, &rest)?;
                partial = Some((id, rest, from));
            }
            self.conn.execute_batch("COMMIT")
        })();
        if let Err(e) = result {
            let _ = self.conn.execute_batch("ROLLBACK");
            if !is_disk_full(&e) {
                tracing::error!(error = %e, "storage maintenance step failed; pausing it");
            } else if !std::mem::replace(&mut self.maintenance_disk_full, true) {
                tracing::warn!(path = %self.path, "disk full: storage maintenance rolled back; it retries every {FAILURE_PAUSE:?}");
            }
            self.paused_until = Some(Instant::now() + FAILURE_PAUSE);
            return MaintenanceReport::default();
        }
        self.maintenance_disk_full = false;
        // Committed: the head follows.
        let mem = self.mem.clone();
        let mut heads = mem.write();
        if let Some((id, rest, from)) = partial {
            if rest.is_empty() {
                heads.remove(&id);
            } else {
                let h = SeriesHead::from_run(&rest, from);
                if let (Some(st), Some((a, b))) = (self.head.get_mut(&id), h.span()) {
                    st.rows = h.len();
                    st.min_ts = a;
                    st.max_ts = b;
                }
                heads.insert(id, h);
            }
        }
        for f in finished {
            self.due.pop_front();
            if let Some((rest, from)) = f.rest {
                if rest.is_empty() {
                    heads.remove(&f.id);
                } else {
                    heads.insert(f.id, SeriesHead::from_run(&rest, from));
                }
            }
            let Some((rows, (min_ts, max_ts))) =
                heads.get(&f.id).and_then(|h| Some((h.len(), h.span()?)))
            else {
                self.head.remove(&f.id);
                continue;
            };
            let st = self.head.entry(f.id).or_insert_with(HeadStat::new);
            st.rows = rows;
            st.min_ts = min_ts;
            st.max_ts = max_ts;
            st.queued = false;
            if let Some(b) = f.bytes_per_sample.filter(|b| *b > 0.0) {
                let fit = (compact::CHUNK_FULL_BYTES as f64 / b) as usize;
                st.target_rows = fit.clamp(32, compact::CHUNK_MAX_SAMPLES);
            }
        }
        for id in expire {
            if let Some(h) = heads.get_mut(&id) {
                expired += h.expire(expire_cutoff);
                if h.is_empty() {
                    heads.remove(&id);
                    self.head.remove(&id);
                } else if let (Some(st), Some((a, b))) = (self.head.get_mut(&id), h.span()) {
                    st.rows = h.len();
                    st.min_ts = a;
                    st.max_ts = b;
                }
            }
        }
        drop(heads);
        report.samples_expired = expired;
        self.metrics
            .compacted_samples
            .add(report.samples_compacted as u64);
        self.metrics
            .chunks_written
            .add(report.chunks_written as u64);
        self.metrics.expired_samples.add(expired as u64);
        for (i, res) in ["1m", "1h"].into_iter().enumerate() {
            let m = &self.metrics;
            m.rollup_rows_written
                .with(&[res])
                .add(rollups.rows[i] as u64);
            m.rollup_bytes_written
                .with(&[res])
                .add(rollups.bytes[i] as u64);
            m.rollup_rows_expired
                .with(&[res])
                .add(rollups_expired[i] as u64);
        }
        report.rollup_rows_written = rollups.rows.iter().sum();
        report.rollup_rows_expired = rollups_expired.iter().sum();
        self.retention_deleted += expired + report.rollup_rows_expired;
        if self.retention_cursor.is_some() && cursor.is_none() {
            // Pass complete.
            if self.retention_deleted > 0 {
                self.vacuum = true;
                tracing::info!(
                    samples_and_rollup_rows = self.retention_deleted,
                    "retention pass deleted data"
                );
            }
            self.next_retention = Instant::now() + RETENTION_EVERY;
        }
        self.retention_cursor = cursor;
        self.raw_deleted_before
            .fetch_max(expire_cutoff, Ordering::Relaxed);
        if self.backfill_cursor.is_some() && backfill.is_none() {
            tracing::info!("rollup backfill pass done");
        }
        self.backfill_cursor = backfill;
        if self.vacuum && within(units) {
            let keep = if budget.is_some() {
                VACUUM_KEEP_PAGES
            } else {
                0
            };
            match schema::incremental_vacuum(&self.conn, VACUUM_PAGES_PER_STEP) {
                Ok(free) => self.vacuum = free > keep,
                Err(e) => {
                    tracing::warn!(error = %e, "incremental vacuum failed");
                    self.vacuum = false;
                }
            }
        }
        self.metrics
            .maintenance_seconds
            .observe(started.elapsed().as_secs_f64());
        report
    }

    fn control(&mut self, c: Control) -> Result<MaintenanceReport, WriteError> {
        match c {
            Control::CompactAll => {
                let ids: Vec<SeriesId> = self.mem.read().keys().copied().collect();
                for id in ids {
                    let st = self.head.entry(id).or_insert_with(HeadStat::new);
                    if !st.queued {
                        st.queued = true;
                        self.due.push_back(id);
                    }
                }
                if self.options.expires() && self.retention_cursor.is_none() {
                    self.retention_cursor = Some(i64::MIN);
                    self.retention_deleted = 0;
                }
                self.vacuum = true;
                self.trim_log = true;
                self.paused_until = None;
                let mut total = MaintenanceReport::default();
                loop {
                    self.forcing = true;
                    let last = self.due.is_empty()
                        && self.retention_cursor.is_none()
                        && self.backfill_cursor.is_none();
                    if last {
                        // Everything is compacted: the log rows left are
                        // those that hold what the heads keep.
                        self.trim_log = true;
                    }
                    let r = self.maintenance_step(None);
                    self.forcing = false;
                    if self.paused_until.is_some() {
                        return Err(WriteError::Storage("maintenance step failed".into()));
                    }
                    total.samples_compacted += r.samples_compacted;
                    total.chunks_written += r.chunks_written;
                    total.samples_expired += r.samples_expired;
                    total.corrupt_chunks += r.corrupt_chunks;
                    total.rollup_rows_written += r.rollup_rows_written;
                    total.rollup_rows_expired += r.rollup_rows_expired;
                    if last && !self.vacuum {
                        break;
                    }
                }
                self.conn
                    .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                    .map_err(|e| WriteError::Storage(e.to_string()))?;
                Ok(total)
            }
        }
    }

    fn commit_round(&mut self, round: Vec<Request>) {
        let started = Instant::now();
        let mut outcomes: Vec<Result<(Applied, Effects), WriteError>> =
            Vec::with_capacity(round.len());
        if let Err(e) = self.conn.execute_batch("BEGIN IMMEDIATE") {
            let e = sql_error(&self.path, e);
            self.refuse_round(round, e);
            return;
        }
        // Series and refs created earlier in this round, not yet in memory.
        let mut pending = Effects::default();
        let mut pending_refs: HashMap<StreamId, RefMap> = HashMap::new();
        let mut pending_keys: HashSet<(StreamId, u64)> = HashSet::new();
        for r in &round {
            let batch = match &r.work {
                Work::Batch(b) => Some(b),
                Work::Series { .. } => None,
            };
            let key = batch.map(|b| (b.stream.clone(), b.seq.0));
            if key.as_ref().is_some_and(|k| pending_keys.contains(k)) {
                outcomes.push(Ok((Applied::Duplicate, Effects::default())));
                continue;
            }
            let res = self
                .conn
                .execute_batch("SAVEPOINT batch")
                .map_err(|e| sql_error(&self.path, e))
                .and_then(|_| match &r.work {
                    Work::Batch(b) => self.apply(b, &pending, pending_refs.get(&b.stream)),
                    Work::Series {
                        writes,
                        metadata,
                        checked,
                    } => self.apply_series(writes, metadata, *checked, &pending),
                });
            let res = match res {
                Ok(ok) => self
                    .conn
                    .execute_batch("RELEASE batch")
                    .map(|_| ok)
                    .map_err(|e| sql_error(&self.path, e)),
                Err(e @ WriteError::UnknownRefs(_)) => {
                    // Refused for what it is: the round goes on without it.
                    match self.conn.execute_batch("ROLLBACK TO batch; RELEASE batch") {
                        Ok(()) => Err(e),
                        Err(e) => Err(sql_error(&self.path, e)),
                    }
                }
                Err(e) => Err(e),
            };
            match res {
                // SQLite failed (a full disk, an I/O error): it may have
                // rolled the transaction back already, so nothing after
                // this point could be trusted to be in it. The whole round
                // is refused and rolled back: every caller may retry.
                Err(
                    e @ (WriteError::Storage(_) | WriteError::DiskFull { .. } | WriteError::Closed),
                ) => {
                    let _ = self.conn.execute_batch("ROLLBACK");
                    self.refuse_round(round, e);
                    return;
                }
                Ok((Applied::Stored { .. }, ref eff)) => {
                    pending.new_series.extend(eff.new_series.iter().cloned());
                    if let (Some(key), Some(b)) = (key, batch) {
                        pending_keys.insert(key);
                        pending_refs
                            .entry(b.stream.clone())
                            .or_default()
                            .extend(eff.refs.iter().copied());
                    }
                }
                _ => {}
            }
            outcomes.push(res);
        }
        if let Err(e) = self.conn.execute_batch("COMMIT") {
            let _ = self.conn.execute_batch("ROLLBACK");
            let e = sql_error(&self.path, e);
            self.refuse_round(round, e);
            return;
        }
        if let Some(since) = self.disk_full_since.take() {
            tracing::info!(
                path = %self.path,
                refused_for_seconds = since.elapsed().as_secs_f64(),
                "disk space available again: writes are accepted"
            );
        }
        self.metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        // Durable now: make it visible, then answer.
        let remembered = outcomes
            .iter()
            .flatten()
            .any(|(_, e)| !e.remember.is_empty());
        if !pending.new_series.is_empty() || remembered {
            let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
            for (id, labels) in &pending.new_series {
                index.insert(*id, labels.clone());
            }
            for (_, eff) in outcomes.iter().flatten() {
                for &(hash, id) in &eff.remember {
                    index.remember(hash, id);
                }
            }
        }
        let mem = self.mem.clone();
        let mut heads = mem.write();
        // One clock reading for the round: every series in it was written now.
        let now = Instant::now();
        for (r, outcome) in round.into_iter().zip(outcomes) {
            let reply = outcome.map(|(applied, eff)| {
                if let Applied::Stored {
                    samples,
                    new_series,
                } = &applied
                {
                    self.metrics.samples_appended.add(*samples as u64);
                    self.metrics.series_created.add(*new_series as u64);
                    if let Work::Batch(b) = &r.work {
                        let stream = self.streams.entry(b.stream.clone()).or_default();
                        stream.refs.extend(eff.refs);
                        stream.last_seen = Some(now);
                    }
                    for (id, samples) in &eff.groups {
                        let h = heads.entry(*id).or_default();
                        if h.is_empty() {
                            h.log_from = eff.log_id;
                        }
                        let (mut min, mut max) = (i64::MAX, i64::MIN);
                        for &(t, b) in samples {
                            h.push(t, b);
                            min = min.min(t);
                            max = max.max(t);
                        }
                        self.note_head_rows(*id, (samples.len(), min, max), now);
                    }
                }
                applied
            });
            let _ = r.reply.send(reply);
        }
    }

    /// Answers every write of a round that was rolled back with `e`.
    /// A full disk is logged once per episode (until a round commits);
    /// other failures each time.
    fn refuse_round(&mut self, round: Vec<Request>, e: WriteError) {
        match &e {
            WriteError::DiskFull { path } => {
                if self.disk_full_since.is_none() {
                    self.disk_full_since = Some(Instant::now());
                    tracing::error!(
                        %path,
                        "disk full: writes are refused (503, nothing of them written) until space is freed"
                    );
                }
            }
            _ => {
                tracing::error!(error = %e, "write round rolled back; its batches refused for retry")
            }
        }
        for r in round {
            let _ = r.reply.send(Err(e.clone()));
        }
    }

    /// Applies one batch inside the current savepoint.
    fn apply(
        &mut self,
        batch: &Batch,
        pending: &Effects,
        pending_refs: Option<&RefMap>,
    ) -> Result<(Applied, Effects), WriteError> {
        let sql = |e: rusqlite::Error| sql_error(&self.path, e);
        let stream_key = batch.stream.to_string();
        let seen: Option<i64> = self
            .conn
            .prepare_cached("SELECT 1 FROM applied_batches WHERE stream = ?1 AND seq = ?2")
            .and_then(|mut s| {
                s.query_row((&stream_key, batch.seq.0 as i64), |r| r.get(0))
                    .optional()
            })
            .map_err(sql)?;
        if seen.is_some() {
            return Ok((Applied::Duplicate, Effects::default()));
        }

        // Every ref used must be defined here or earlier in the stream
        // (committed before, or earlier in this round).
        let committed = self.streams.get(&batch.stream).map(|s| &s.refs);
        let lookup = |r: &SeriesRef| {
            committed
                .and_then(|k| k.get(r))
                .or_else(|| pending_refs.and_then(|k| k.get(r)))
                .copied()
        };
        let defined: HashSet<SeriesRef> = batch.definitions.iter().map(|d| d.series).collect();
        let mut unknown: Vec<u32> = batch
            .groups
            .iter()
            .flat_map(|g| g.values.iter().map(|(r, _)| *r))
            .filter(|r| !defined.contains(r) && lookup(r).is_none())
            .map(|r| r.0)
            .collect();
        if !unknown.is_empty() {
            unknown.sort_unstable();
            unknown.dedup();
            unknown.truncate(100);
            return Err(WriteError::UnknownRefs(unknown));
        }

        let mut eff = Effects::default();
        let mut refs: RefMap =
            RefMap::with_capacity_and_hasher(batch.definitions.len(), Default::default());
        for d in &batch.definitions {
            let id = self.series_id(&d.labels, pending, &mut eff)?;
            refs.insert(d.series, id);
            eff.refs.push((d.series, id));
        }

        let mut samples = 0usize;
        let mut at: SeriesMap<usize> = SeriesMap::default();
        for g in &batch.groups {
            for (r, v) in &g.values {
                let id = refs
                    .get(r)
                    .copied()
                    .or_else(|| lookup(r))
                    .ok_or_else(|| WriteError::UnknownRefs(vec![r.0]))?;
                let i = *at.entry(id).or_insert_with(|| {
                    eff.groups.push((id, Vec::new()));
                    eff.groups.len() - 1
                });
                eff.groups[i].1.push((g.at.0, v.to_bits()));
                samples += 1;
            }
        }
        if samples > 0 {
            eff.log_id = self.append_log(&eff.groups).map_err(sql)?;
        }

        self.put_metadata(&batch.metadata)?;
        self.conn
            .prepare_cached(
                "INSERT INTO applied_batches (stream, seq, applied_at) VALUES (?1, ?2, ?3)",
            )
            .and_then(|mut s| s.execute((&stream_key, batch.seq.0 as i64, UnixMillis::now().0)))
            .map_err(sql)?;
        let new_series = eff.new_series.len();
        Ok((
            Applied::Stored {
                samples,
                new_series,
            },
            eff,
        ))
    }

    /// Applies remote_write series inside the current savepoint.
    fn apply_series(
        &mut self,
        series: &[KeyedWrite],
        metadata: &[MetricMetadata],
        checked: bool,
        pending: &Effects,
    ) -> Result<(Applied, Effects), WriteError> {
        let sql = |e: rusqlite::Error| sql_error(&self.path, e);
        let mut eff = Effects::default();
        let mut samples = 0usize;
        let mut at: SeriesMap<usize> =
            SeriesMap::with_capacity_and_hasher(series.len(), Default::default());
        eff.groups.reserve(series.len());
        for s in series {
            let id = match &s.key {
                SeriesKey::Known(id) => *id,
                SeriesKey::Labels(labels) => {
                    let id = self.series_id(labels, pending, &mut eff)?;
                    if checked {
                        eff.remember
                            .push((index::pairs_hash(index::label_pairs(labels)), id));
                    }
                    id
                }
            };
            if s.samples.is_empty() {
                continue;
            }
            let i = *at.entry(id).or_insert_with(|| {
                eff.groups.push((id, Vec::new()));
                eff.groups.len() - 1
            });
            eff.groups[i]
                .1
                .extend(s.samples.iter().map(|&(t, v)| (t, v.to_bits())));
            samples += s.samples.len();
        }
        if samples > 0 {
            eff.log_id = self.append_log(&eff.groups).map_err(sql)?;
        }
        self.put_metadata(metadata)?;
        let new_series = eff.new_series.len();
        Ok((
            Applied::Stored {
                samples,
                new_series,
            },
            eff,
        ))
    }

    /// The id of a label set: known, created earlier in this round or in
    /// this batch, or inserted now (recorded in `eff`).
    fn series_id(
        &self,
        labels: &Labels,
        pending: &Effects,
        eff: &mut Effects,
    ) -> Result<SeriesId, WriteError> {
        let known = self
            .index
            .read()
            .map_err(|_| WriteError::Storage("index lock poisoned".into()))?
            .id_of(labels);
        if let Some(id) = known.or_else(|| {
            pending
                .new_series
                .iter()
                .chain(eff.new_series.iter())
                .find(|(_, l)| l == labels)
                .map(|(id, _)| *id)
        }) {
            return Ok(id);
        }
        self.conn
            .prepare_cached("INSERT INTO series (metric, labels) VALUES (?1, ?2)")
            .and_then(|mut s| {
                s.execute((labels.metric_name().unwrap_or(""), labels_to_json(labels)))
            })
            .map_err(|e| sql_error(&self.path, e))?;
        let id = SeriesId(self.conn.last_insert_rowid());
        eff.new_series.push((id, labels.clone()));
        Ok(id)
    }

    fn put_metadata(&self, metadata: &[MetricMetadata]) -> Result<(), WriteError> {
        for m in metadata {
            self.conn
                .prepare_cached(
                    "INSERT INTO metadata (metric, kind, help, unit) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT(metric) DO UPDATE SET kind = ?2, help = ?3, unit = ?4",
                )
                .and_then(|mut s| s.execute((&m.name, m.kind.as_str(), &m.help, &m.unit)))
                .map_err(|e| sql_error(&self.path, e))?;
        }
        Ok(())
    }

    fn prune_dedup(&mut self) {
        self.last_prune = Instant::now();
        self.streams
            .retain(|_, s| s.last_seen.is_some_and(|t| t.elapsed() < STREAM_IDLE));
        let cutoff = UnixMillis::now().0 - DEDUP_WINDOW_MS;
        match self.conn.execute(
            "DELETE FROM applied_batches WHERE applied_at < ?1",
            [cutoff],
        ) {
            Ok(n) if n > 0 => tracing::debug!(rows = n, "pruned de-duplication records"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "pruning de-duplication records failed"),
        }
    }
}

/// A SQLite failure as a write error. A full file system is told apart
/// (and names the file), so pushers wait for space rather than for a fix.
fn sql_error(path: &str, e: rusqlite::Error) -> WriteError {
    if is_disk_full(&e) {
        WriteError::DiskFull {
            path: path.to_string(),
        }
    } else {
        WriteError::Storage(e.to_string())
    }
}

/// True when SQLite failed because the file system is full (ENOSPC on a
/// write: `SQLITE_FULL`).
pub(super) fn is_disk_full(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull)
}

/// Logs and counts a chunk that does not decode.
pub(super) fn report_corrupt(
    index: &RwLock<Index>,
    metrics: &StorageMetrics,
    id: SeriesId,
    c: &CorruptChunk,
    during: &str,
) {
    metrics.corrupt_chunks.inc();
    let labels = index
        .read()
        .ok()
        .and_then(|i| i.labels_of(id).map(|l| l.to_string()))
        .unwrap_or_default();
    tracing::error!(
        series = %labels,
        series_id = id.0,
        chunk = c.id,
        error = %c.error,
        during,
        "corrupt chunk skipped"
    );
}

/// Labels as stored: a JSON array of `[name, value]` pairs, sorted.
pub(super) fn labels_to_json(labels: &Labels) -> String {
    let pairs: Vec<[&str; 2]> = labels
        .iter()
        .map(|l| [l.name.as_str(), l.value.as_str()])
        .collect();
    serde_json::to_string(&pairs).unwrap_or_else(|_| "[]".to_string())
}

/// Reads labels stored by [`labels_to_json`].
pub(super) fn labels_from_json(text: &str) -> Result<Labels, String> {
    let pairs: Vec<(String, String)> = serde_json::from_str(text).map_err(|e| e.to_string())?;
    Ok(Labels::from_unsorted(
        pairs
            .into_iter()
            .map(|(name, value)| Label { name, value })
            .collect(),
    ))
}

/// Parses a stored metric kind.
pub(super) fn kind_from_str(s: &str) -> MetricKind {
    match s {
        "counter" => MetricKind::Counter,
        "gauge" => MetricKind::Gauge,
        "histogram" => MetricKind::Histogram,
        "summary" => MetricKind::Summary,
        _ => MetricKind::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nines_shared::telemetry::Registry;
    use nines_shared::{SampleGroup, Seq, SeriesDefinition};

    fn writer(dir: &std::path::Path) -> Writer {
        let conn = Connection::open(dir.join("w.db")).unwrap();
        super::super::schema::configure(&conn).unwrap();
        super::super::schema::migrate(&conn).unwrap();
        Writer::new(
            conn,
            Arc::default(),
            Arc::default(),
            StorageMetrics::register(&Registry::new()),
            StorageOptions::default(),
            Arc::default(),
        )
    }

    fn batch(seq: u64, define: bool, metric: &str, r: u32) -> Batch {
        Batch {
            stream: StreamId {
                agent: "a".into(),
                epoch: UnixMillis(1),
            },
            seq: Seq(seq),
            sent_at: UnixMillis(1_700_000_000_000),
            definitions: if define {
                vec![SeriesDefinition {
                    series: SeriesRef(r),
                    labels: Labels::new(metric, [("job", "t")]),
                }]
            } else {
                vec![]
            },
            metadata: vec![],
            groups: vec![SampleGroup {
                at: UnixMillis(1_700_000_000_000 + seq as i64),
                values: vec![(SeriesRef(r), seq as f64)],
            }],
        }
    }

    fn round(w: &mut Writer, batches: Vec<Batch>) -> Vec<Result<Applied, WriteError>> {
        let mut rxs = Vec::new();
        let reqs = batches
            .into_iter()
            .map(|batch| {
                let (reply, rx) = oneshot::channel();
                rxs.push(rx);
                Request {
                    work: Work::Batch(batch),
                    reply,
                }
            })
            .collect();
        w.commit_round(reqs);
        rxs.into_iter()
            .map(|mut rx| rx.try_recv().expect("answered after the round"))
            .collect()
    }

    fn series_round(w: &mut Writer, writes: Vec<SeriesWrite>) {
        let (reply, mut rx) = oneshot::channel();
        w.commit_round(vec![Request {
            work: Work::Series {
                writes: writes.into_iter().map(KeyedWrite::from).collect(),
                metadata: vec![],
                checked: false,
            },
            reply,
        }]);
        assert!(matches!(rx.try_recv(), Ok(Ok(Applied::Stored { .. }))));
    }

    fn series(metric: &str, samples: impl IntoIterator<Item = (i64, f64)>) -> SeriesWrite {
        SeriesWrite {
            labels: Labels::new(metric, [("job", "t")]),
            samples: samples.into_iter().collect(),
        }
    }

    /// Samples in the in-memory head, all series.
    fn head_samples(w: &Writer) -> usize {
        w.mem
            .read()
            .values()
            .map(|h| h.run(i64::MIN, i64::MAX).len())
            .sum()
    }

    fn query_i64(w: &Writer, sql: &str) -> i64 {
        w.conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    fn compact_everything(w: &mut Writer) {
        let ids: Vec<SeriesId> = w.head.keys().copied().collect();
        for id in ids {
            if let Some(st) = w.head.get_mut(&id).filter(|s| !s.queued) {
                st.queued = true;
                w.due.push_back(id);
            }
        }
        w.forcing = true;
        while !w.due.is_empty() {
            w.maintenance_step(None);
        }
        w.forcing = false;
    }

    const DAY: i64 = 24 * 3600 * 1000;
    /// "Now" for retention tests: one hour into a 2 h window.
    const NOW: i64 = 1_700_000_000_000 - 1_700_000_000_000 % compact::WINDOW_MS + 3_600_000;

    #[test]
    fn retention_deletes_what_is_older_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path());
        w.options.retention = Some(Duration::from_millis(DAY as u64));
        w.clock = || NOW;
        let cutoff = NOW - DAY; // 1 h into its window
        let minute = 60_000;
        // Chunks: wholly old, straddling the cutoff, recent.
        series_round(
            &mut w,
            vec![
                series(
                    "old_and_new",
                    (0..30).map(|i| (NOW - 3 * DAY + i * minute, 1.0)),
                ),
                series(
                    "old_and_new",
                    (0..30).map(|i| (cutoff - 15 * minute + i * minute, 2.0)),
                ),
                series(
                    "old_and_new",
                    (0..30).map(|i| (NOW - 40 * minute + i * minute, 3.0)),
                ),
                series(
                    "recent",
                    (0..30).map(|i| (NOW - 40 * minute + i * minute, 4.0)),
                ),
            ],
        );
        compact_everything(&mut w);
        assert_eq!(query_i64(&w, "SELECT count(*) FROM chunks"), 4);
        assert_eq!(head_samples(&w), 0);
        // Head rows: one too old, one recent.
        series_round(
            &mut w,
            vec![series(
                "old_and_new",
                [(NOW - 2 * DAY, 5.0), (NOW - minute, 6.0)],
            )],
        );
        // A pass, step by step.
        w.retention_cursor = Some(i64::MIN);
        let mut expired = 0;
        while w.retention_cursor.is_some() {
            expired += w
                .maintenance_step(Some(Duration::from_secs(1)))
                .samples_expired;
        }
        assert_eq!(expired, 30 + 1);
        let spans: Vec<(i64, i64)> = w
            .conn
            .prepare("SELECT start_ts, end_ts FROM chunks ORDER BY start_ts")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            spans,
            vec![
                (cutoff - 15 * minute, cutoff + 14 * minute),
                (NOW - 40 * minute, NOW - 11 * minute),
                (NOW - 40 * minute, NOW - 11 * minute),
            ]
        );
        let head: Vec<i64> = w
            .mem
            .read()
            .values()
            .flat_map(|h| h.run(i64::MIN, i64::MAX))
            .map(|s| s.0)
            .collect();
        assert_eq!(head, vec![NOW - minute]);
        // Without retention nothing is deleted.
        w.options.retention = None;
        w.clock = || NOW + 100 * DAY;
        w.retention_cursor = Some(i64::MIN);
        while w.retention_cursor.is_some() {
            w.maintenance_step(None);
        }
        assert_eq!(query_i64(&w, "SELECT count(*) FROM chunks"), 3);
    }

    #[test]
    fn deleted_data_gives_its_pages_back_to_the_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path());
        w.options.retention = Some(Duration::from_millis(DAY as u64));
        w.clock = || NOW;
        let writes: Vec<SeriesWrite> = (0..100)
            .map(|s| {
                series(
                    &format!("m{s}"),
                    (0..2000).map(|i| (NOW - 2 * DAY + i * 1000, ((i * 7919) % 1013) as f64 + 0.5)),
                )
            })
            .collect();
        series_round(&mut w, writes);
        compact_everything(&mut w);
        let pages = query_i64(&w, "PRAGMA page_count");
        assert!(pages > 300, "{pages}");
        w.retention_cursor = Some(i64::MIN);
        w.trim_log = true;
        while w.retention_cursor.is_some() || w.vacuum {
            w.maintenance_step(Some(Duration::from_secs(1)));
        }
        assert_eq!(query_i64(&w, "SELECT count(*) FROM chunks"), 0);
        let after = query_i64(&w, "PRAGMA page_count");
        assert!(after < pages / 2, "{pages} -> {after} pages");
        assert!(query_i64(&w, "PRAGMA freelist_count") <= VACUUM_KEEP_PAGES);
    }

    #[test]
    fn maintenance_steps_are_bounded_and_drain_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path());
        w.clock = || NOW;
        let n = 3 * STEP_MAX_UNITS;
        let writes: Vec<SeriesWrite> = (0..n)
            .map(|s| {
                series(
                    &format!("m{s}"),
                    // Noisy values: a full chunk every ~250 samples.
                    (0..600).map(|i| (NOW - 700_000 + i * 1000, (i as f64 * 1.37).sin())),
                )
            })
            .collect();
        series_round(&mut w, writes);
        assert_eq!(w.due.len(), n, "600 rows > the default 512: due");
        // A generous budget still stops at STEP_MAX_UNITS units.
        let r = w.maintenance_step(Some(Duration::from_secs(3600)));
        assert_eq!(w.due.len(), n - STEP_MAX_UNITS);
        assert!(r.chunks_written >= STEP_MAX_UNITS, "{r:?}");
        // A budget already spent still does one unit: progress.
        w.maintenance_step(Some(Duration::ZERO));
        assert_eq!(w.due.len(), n - STEP_MAX_UNITS - 1);
        let mut steps = 0;
        while !w.due.is_empty() {
            w.maintenance_step(Some(Duration::from_millis(25)));
            steps += 1;
        }
        assert!(steps >= 2);
        // Full chunks were written; the open window's tails stay in the head
        // (the series are neither quiet nor past their window).
        let head = head_samples(&w);
        assert!(head > 0 && head < n * 600);
        let in_chunks = query_i64(&w, "SELECT sum(count) FROM chunks") as usize;
        assert_eq!(head + in_chunks, n * 600);
        // What the heads keep was logged again: the batch's own row goes at
        // the next trim, and the rows left hold exactly the heads.
        w.trim_log = true;
        w.maintenance_step(None);
        assert!(query_i64(&w, "SELECT min(id) FROM ingest_log") > 1);
        let mut logged = 0;
        let mut stmt = w.conn.prepare("SELECT data FROM ingest_log").unwrap();
        let mut rows = stmt.query([]).unwrap();
        while let Some(r) = rows.next().unwrap() {
            let data: Vec<u8> = r.get(0).unwrap();
            logged += log::decode(&data)
                .unwrap()
                .iter()
                .map(|g| g.1.len())
                .sum::<usize>();
        }
        drop(rows);
        drop(stmt);
        assert_eq!(logged, head);
        // Every series now knows its chunk size and is not due again yet.
        assert!(
            w.head
                .values()
                .all(|st| !st.queued && st.target_rows > st.rows)
        );
    }

    #[test]
    fn the_rollup_backfill_goes_in_bounded_units() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path());
        w.clock = || NOW;
        // One sample in each of 40 windows, compacted; then the rollups
        // removed, as in a file written before there were any.
        let first = compact::window_start(NOW) - 40 * compact::WINDOW_MS;
        series_round(
            &mut w,
            vec![series(
                "b",
                (0..40).map(|i| (first + i * compact::WINDOW_MS + 1000, i as f64)),
            )],
        );
        compact_everything(&mut w);
        assert_eq!(query_i64(&w, "SELECT count(*) FROM rollup_1m"), 40);
        w.conn
            .execute_batch("DELETE FROM rollup_1m; DELETE FROM rollup_1h")
            .unwrap();
        w.backfill_cursor = Some(i64::MIN);
        let r = w.maintenance_step(Some(Duration::ZERO));
        let unit = rollup::BACKFILL_WINDOWS_PER_UNIT as i64;
        assert_eq!(query_i64(&w, "SELECT count(*) FROM rollup_1m"), unit);
        assert_eq!(r.rollup_rows_written as i64, 2 * unit);
        while w.backfill_cursor.is_some() {
            w.maintenance_step(None);
        }
        assert_eq!(query_i64(&w, "SELECT count(*) FROM rollup_1m"), 40);
        assert_eq!(
            query_i64(&w, "SELECT count(*) FROM rollup_1h"),
            query_i64(&w, "SELECT count(DISTINCT start_ts / 86400000) FROM chunks")
        );
    }

    #[test]
    fn a_window_written_in_order_is_rolled_up_once_when_it_closes() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path());
        w.clock = || NOW;
        w.backfill_cursor = None;
        let ws = compact::window_start(NOW) - compact::WINDOW_MS;
        let mut rows_written = 0;
        // A counter at 1 s through one window, ten minutes a round,
        // compacted into chunks as they fill.
        for round in 0..12 {
            let from = ws + round * 600_000;
            series_round(
                &mut w,
                vec![series(
                    "c",
                    (0..600).map(|i| (from + i * 1000, (round * 600 + i) as f64)),
                )],
            );
            while !w.due.is_empty() {
                rows_written += w.maintenance_step(None).rollup_rows_written;
            }
        }
        assert!(query_i64(&w, "SELECT count(*) FROM chunks") > 1);
        assert_eq!(query_i64(&w, "SELECT count(*) FROM rollup_1m"), 0);
        assert_eq!(rows_written, 0, "no rows for a window still in the head");
        // The next window's first sample closes it: its rows, once.
        series_round(
            &mut w,
            vec![series("c", [(ws + compact::WINDOW_MS + 1000, 0.0)])],
        );
        while !w.due.is_empty() {
            rows_written += w.maintenance_step(None).rollup_rows_written;
        }
        assert_eq!(query_i64(&w, "SELECT count(*) FROM rollup_1m"), 1);
        assert_eq!(rows_written, 2, "one minute row and one hour row");
        // A late sample merged into the closed window rewrites its row.
        let row = |w: &Writer| -> Vec<u8> {
            w.conn
                .query_row(
                    "SELECT data FROM rollup_1m WHERE window_start = ?1",
                    [ws],
                    |r| r.get(0),
                )
                .unwrap()
        };
        let before = row(&w);
        series_round(&mut w, vec![series("c", [(ws + 500, 0.5)])]);
        compact_everything(&mut w);
        assert_ne!(row(&w), before, "the late sample is in the row");
    }

    #[test]
    fn a_quiet_series_past_its_window_is_compacted_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path());
        w.clock = || NOW + compact::WINDOW_MS;
        series_round(
            &mut w,
            vec![series("q", (0..10).map(|i| (NOW + i * 1000, 1.0)))],
        );
        assert!(w.due.is_empty(), "10 rows are not a chunk");
        w.last_scan = Instant::now() - Duration::from_secs(2);
        for st in w.head.values_mut() {
            st.last_write = Instant::now() - QUIET * 2;
        }
        w.tick();
        assert_eq!(w.due.len(), 1);
        w.maintenance_step(Some(Duration::from_secs(1)));
        assert_eq!(head_samples(&w), 0);
        assert_eq!(query_i64(&w, "SELECT sum(count) FROM chunks"), 10);
        assert!(w.head.is_empty());
    }

    fn count(w: &Writer, table: &str) -> i64 {
        w.conn
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_failing_batch_in_a_round_leaves_the_others_committed() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path());
        let out = round(
            &mut w,
            vec![
                batch(0, true, "m_one", 0),
                // Ref 9 was never defined: refused, nothing of it written.
                batch(1, false, "m_two", 9),
                // Uses ref 0 defined by the first batch of the same round.
                batch(2, false, "m_one", 0),
                // The same (stream, seq) twice in one round: applied once.
                batch(2, false, "m_one", 0),
            ],
        );
        assert!(matches!(
            out[0],
            Ok(Applied::Stored {
                samples: 1,
                new_series: 1
            })
        ));
        assert!(matches!(&out[1], Err(WriteError::UnknownRefs(r)) if r == &vec![9]));
        assert!(matches!(
            out[2],
            Ok(Applied::Stored {
                samples: 1,
                new_series: 0
            })
        ));
        assert!(matches!(out[3], Ok(Applied::Duplicate)));
        assert_eq!(head_samples(&w), 2);
        assert_eq!(count(&w, "ingest_log"), 2);
        assert_eq!(count(&w, "series"), 1);
        assert_eq!(count(&w, "applied_batches"), 2);
        assert_eq!(w.index.read().unwrap().len(), 1);
        // A later round sees the stream's refs and the applied seqs.
        let out = round(
            &mut w,
            vec![batch(3, false, "m_one", 0), batch(0, true, "m_one", 0)],
        );
        assert!(matches!(out[0], Ok(Applied::Stored { .. })));
        assert!(matches!(out[1], Ok(Applied::Duplicate)));
    }

    #[test]
    fn a_full_disk_refuses_the_whole_round_and_writes_resume_when_space_returns() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path());
        assert!(round(&mut w, vec![batch(0, true, "m_before", 0)])[0].is_ok());
        let (log_rows, series_rows) = (count(&w, "ingest_log"), count(&w, "series"));
        // No page may be added: SQLite answers SQLITE_FULL, as on ENOSPC.
        let pages = query_i64(&w, "PRAGMA page_count");
        w.conn.pragma_update(None, "max_page_count", pages).unwrap();
        let big: Vec<SeriesWrite> = (0..200)
            .map(|i| {
                series(
                    &format!("m_full_{i}"),
                    (0..50).map(|t| (t * 1000, t as f64)),
                )
            })
            .collect();
        let (reply, mut rx) = oneshot::channel();
        let mut rxs = Vec::new();
        let mut reqs = vec![Request {
            work: Work::Series {
                writes: big.into_iter().map(KeyedWrite::from).collect(),
                metadata: vec![],
                checked: true,
            },
            reply,
        }];
        for seq in 1..3 {
            let (reply, rx) = oneshot::channel();
            rxs.push(rx);
            reqs.push(Request {
                work: Work::Batch(batch(seq, false, "m_before", 0)),
                reply,
            });
        }
        w.commit_round(reqs);
        let path = dir.path().join("w.db").display().to_string();
        for r in std::iter::once(rx.try_recv()).chain(rxs.iter_mut().map(|r| r.try_recv())) {
            match r {
                Ok(Err(WriteError::DiskFull { path: p })) => assert_eq!(p, path),
                other => panic!("expected a disk-full refusal, got {other:?}"),
            }
        }
        assert!(w.disk_full_since.is_some());
        assert!(w.conn.is_autocommit(), "no transaction left open");
        assert_eq!(count(&w, "ingest_log"), log_rows);
        assert_eq!(count(&w, "series"), series_rows);
        assert_eq!(w.index.read().unwrap().len(), 1);
        assert_eq!(head_samples(&w), 1);
        // Space again: the same batches are accepted, once.
        w.conn
            .pragma_update(None, "max_page_count", 1 << 30)
            .unwrap();
        let out = round(
            &mut w,
            vec![
                batch(1, false, "m_before", 0),
                batch(2, false, "m_before", 0),
            ],
        );
        assert!(out.iter().all(|r| matches!(r, Ok(Applied::Stored { .. }))));
        assert!(w.disk_full_since.is_none());
        assert_eq!(head_samples(&w), 3);
    }

    #[test]
    fn nan_values_and_their_payload_survive_storage() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path());
        let stale = f64::from_bits(0x7ff0_0000_0000_0002);
        let mut b = batch(0, true, "m_nan", 0);
        b.groups[0].values[0].1 = stale;
        assert!(matches!(
            round(&mut w, vec![b])[0],
            Ok(Applied::Stored { .. })
        ));
        let bits: Vec<u64> = w
            .mem
            .read()
            .values()
            .flat_map(|h| h.run(i64::MIN, i64::MAX))
            .map(|s| s.1.to_bits())
            .collect();
        assert_eq!(bits, vec![0x7ff0_0000_0000_0002]);
    }

    #[test]
    fn idle_streams_are_forgotten_and_must_redefine() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path());
        assert!(round(&mut w, vec![batch(0, true, "m", 0)])[0].is_ok());
        if let Some(s) = w.streams.values_mut().next() {
            s.last_seen = Instant::now().checked_sub(STREAM_IDLE * 2);
        }
        w.prune_dedup();
        assert!(matches!(
            round(&mut w, vec![batch(1, false, "m", 0)])[0],
            Err(WriteError::UnknownRefs(_))
        ));
    }
}
