//! Storage: time series in one SQLite file. One writer thread owns the only
//! write connection and commits each batch atomically (several batches per
//! transaction when they queue up: group commit, one savepoint each); readers
//! use their own connections (WAL), so reading never blocks ingestion.
//!
//! This module never decodes network input and never evaluates PromQL.
//!
//! # Layout
//!
//! - `ingest_log(id, data)`: one row per committed write (a native batch
//!   or a remote_write request) holding its samples encoded (`log.rs`).
//!   An acknowledged write is a committed log row (`synchronous = FULL`).
//!   Its samples are then in the head, in memory (`head.rs`): per series an
//!   open chunk encoder and a small sorted buffer for out-of-order samples.
//!   At open the log is replayed into the head.
//! - `chunks(id, series_id, start_ts, end_ts, count, data)`: compressed
//!   runs of one series (`chunk.rs`: delta-of-delta timestamps, XOR
//!   values, CRC-32). A chunk lies inside one aligned 2 h window, holds at
//!   most 8192 samples and is full at about 2000 bytes (two per page).
//! - `rollup_1m(series_id, window_start, data)`, `rollup_1h(series_id,
//!   day_start, data)`: a series' minute buckets per 2 h window and hour
//!   buckets per day (`rollup.rs`), folds of the raw samples.
//!
//! # Rules
//!
//! - Compaction (writer thread, between write rounds, in steps bounded by
//!   `StorageOptions::step_budget` and 64 units, each step one
//!   transaction) moves a series' head samples into chunks once they fill a
//!   chunk, or once their window is closed (the series wrote into a later
//!   window, or the wall clock is past it and the series has been quiet for
//!   a minute), so the head holds at most about a chunk or a window per
//!   series. Full chunks are written once; the samples of an open window's
//!   last, partial chunk stay in the head. They are merged with the chunks
//!   they overlap (and, closing a window, with its last partial chunk);
//!   merged chunks are deleted in the same transaction, which also logs
//!   again the samples left in the head and moves the series' `log_from`
//!   past the older log rows; the head drops the moved samples after the
//!   commit. Log rows older than every head's `log_from` are deleted in a
//!   later step. A crash leaves either the log rows or the chunk.
//! - Any timestamp is accepted at any time, late or out of order: it goes
//!   to the head and is visible at once. A sample at a timestamp already
//!   stored replaces it (the most recently written wins): in the head by
//!   replacing the value (replay applies log rows in order); on read, a head row wins over chunks and a later
//!   chunk (larger id) over an earlier one; compaction merges with the same
//!   precedence, so chunks normally never overlap.
//! - Reads copy the head samples in the range from memory, then take one
//!   snapshot (a read transaction), load the chunks that overlap the range
//!   and merge them: ascending,
//!   one value per timestamp. A chunk that does not decode is logged with
//!   its series, counted in `nines_storage_corrupt_chunks_total` and
//!   skipped; compaction leaves it in place.
//! - Retention (`StorageOptions::retention`, against the wall clock): a
//!   pass every 5 minutes, in the same bounded steps, deletes chunks that
//!   end before `now - retention` and head samples before it (a chunk
//!   straddling the cutoff stays until it is wholly older). Then
//!   `PRAGMA incremental_vacuum` returns free pages to the file system, a
//!   few hundred per step; some are kept for reuse by the head. Series
//!   themselves are kept. Rollup rows go the same way, each resolution by
//!   its own retention (never before a finer one's), a row once all of its
//!   span is older than the cutoff.
//! - Compaction recomputes a window's rollup rows from all of its chunks in
//!   the transaction that writes or merges chunks of it, once no head
//!   sample of the window is left or when it has rows already (see
//!   `compact.rs`), unless the window starts before the raw retention
//!   cutoff (its rows are then the complete record). `select_buckets` at 1m and 1h takes a window from its rows
//!   when it has them and no head samples (or is past raw retention), and
//!   folds its raw samples otherwise.
//! - Files of schema version 1 are migrated at open (see `schema.rs`).

mod chunk;
mod compact;
mod head;
pub mod index;
mod log;
mod read;
mod rollup;
mod schema;
#[cfg(test)]
mod tests;
mod writer;

pub use chunk::{ChunkEncoder, ChunkError, ChunkHeader};
pub use index::SeriesId;
pub use writer::{Applied, KeyedWrite, SeriesKey, WriteError};

/// The chunk codec, for tools and benchmarks.
pub mod codec {
    pub use super::chunk::{decode, decode_range, encode, header};
}

use crate::query::querier::{Querier, QuerierError, SeriesSamples, bucket_span, fold_selected};
use crate::query::rollup::{Bucket, SeriesBuckets, fold};
use index::Index;
use nines_shared::telemetry::{Counter, CounterVec, Histogram, Registry};
use nines_shared::{Batch, Labels, MetricMetadata, UnixMillis};
use promql_parser::label::Matchers;
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Why storage could not open or answer.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// SQLite reported an error.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The file's schema cannot be used.
    #[error("{path}: {reason}")]
    Schema {
        /// The database file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A stored label set could not be read back.
    #[error("corrupt series labels for id {0}: {1}")]
    CorruptLabels(i64, String),
}

/// One series and samples to store, from a source without streams
/// (remote_write): labels checked, samples in any order.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesWrite {
    /// The labels (sorted, unique, valid).
    pub labels: Labels,
    /// (timestamp ms, value) pairs.
    pub samples: Vec<(i64, f64)>,
}

/// Bounds on what one query may load.
#[derive(Debug, Clone)]
pub struct QueryLimits {
    /// Most series one selector may match.
    pub max_series: usize,
    /// Most samples one query may load.
    pub max_samples: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            max_series: 500_000,
            max_samples: 50_000_000,
        }
    }
}

/// How storage keeps and compacts data.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    /// How long samples are kept, by their timestamp against the wall
    /// clock; `None` keeps everything. Default 15 days.
    pub retention: Option<Duration>,
    /// How long minute rollups are kept (never less than `retention`).
    /// Default 90 days.
    pub retention_1m: Option<Duration>,
    /// How long hour rollups are kept (never less than `retention_1m`).
    /// Default 730 days.
    pub retention_1h: Option<Duration>,
    /// Longest one background maintenance step (compaction, retention,
    /// vacuum) runs between write rounds.
    pub step_budget: Duration,
}

impl Default for StorageOptions {
    fn default() -> Self {
        StorageOptions {
            retention: Some(Duration::from_secs(15 * 24 * 3600)),
            retention_1m: Some(Duration::from_secs(90 * 24 * 3600)),
            retention_1h: Some(Duration::from_secs(730 * 24 * 3600)),
            step_budget: Duration::from_millis(25),
        }
    }
}

impl StorageOptions {
    /// Keeps everything at every resolution.
    pub fn keep_everything() -> Self {
        StorageOptions {
            retention: None,
            retention_1m: None,
            retention_1h: None,
            ..StorageOptions::default()
        }
    }

    /// The timestamps before which raw samples, minute rollups and hour
    /// rollups go when the wall clock reads `now` (ms); `i64::MIN` keeps
    /// everything. A coarser resolution never goes before a finer one.
    pub(crate) fn cutoffs(&self, now: i64) -> [i64; 3] {
        let cut = |d: Option<Duration>| {
            d.map_or(i64::MIN, |d| {
                now.saturating_sub(d.as_millis().min(i64::MAX as u128) as i64)
            })
        };
        let raw = cut(self.retention);
        let minute = cut(self.retention_1m).min(raw);
        [raw, minute, cut(self.retention_1h).min(minute)]
    }

    /// True when some resolution has a retention.
    pub(crate) fn expires(&self) -> bool {
        self.retention.is_some() || self.retention_1m.is_some() || self.retention_1h.is_some()
    }
}

/// What explicit maintenance did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaintenanceReport {
    /// Head rows moved into chunks.
    pub samples_compacted: usize,
    /// Chunks written.
    pub chunks_written: usize,
    /// Samples deleted by retention.
    pub samples_expired: usize,
    /// Chunks found corrupt (left in place).
    pub corrupt_chunks: usize,
    /// Rollup rows written (minute and hour).
    pub rollup_rows_written: usize,
    /// Rollup rows deleted by retention (minute and hour).
    pub rollup_rows_expired: usize,
}

/// Storage's own health metrics.
#[derive(Clone)]
pub struct StorageMetrics {
    /// Time from BEGIN to COMMIT of a write round.
    pub commit_seconds: Histogram,
    /// Samples written.
    pub samples_appended: Counter,
    /// Series created.
    pub series_created: Counter,
    /// Chunks that did not decode (each time one is met).
    pub corrupt_chunks: Counter,
    /// Head rows moved into chunks.
    pub compacted_samples: Counter,
    /// Chunks written by compaction.
    pub chunks_written: Counter,
    /// Samples deleted by retention.
    pub expired_samples: Counter,
    /// Duration of background maintenance steps.
    pub maintenance_seconds: Histogram,
    /// Ingest log rows (or their series groups) skipped at replay.
    pub corrupt_log_rows: Counter,
    /// Rollup rows written, by resolution.
    pub rollup_rows_written: CounterVec,
    /// Encoded bytes of the rollup rows written, by resolution.
    pub rollup_bytes_written: CounterVec,
    /// Rollup rows deleted by retention, by resolution.
    pub rollup_rows_expired: CounterVec,
    /// Rollup rows that did not decode (each time one is met).
    pub corrupt_rollup_rows: Counter,
}

impl StorageMetrics {
    /// Registers the metrics.
    pub fn register(r: &Registry) -> Self {
        let m = StorageMetrics {
            commit_seconds: r.histogram(
                "nines_storage_commit_duration_seconds",
                "Time to commit one write round (one or more batches) to SQLite.",
                nines_shared::telemetry::LATENCY_BUCKETS,
            ),
            samples_appended: r.counter(
                "nines_storage_samples_appended_total",
                "Samples committed to storage.",
            ),
            series_created: r.counter(
                "nines_storage_series_created_total",
                "Series created in the index.",
            ),
            corrupt_chunks: r.counter(
                "nines_storage_corrupt_chunks_total",
                "Chunks found corrupt and skipped (counted each time one is met).",
            ),
            compacted_samples: r.counter(
                "nines_storage_compacted_samples_total",
                "Samples moved from the head into compressed chunks.",
            ),
            chunks_written: r.counter(
                "nines_storage_chunks_written_total",
                "Compressed chunks written by compaction.",
            ),
            expired_samples: r.counter(
                "nines_storage_retention_deleted_samples_total",
                "Samples deleted because they are older than the retention.",
            ),
            maintenance_seconds: r.histogram(
                "nines_storage_maintenance_step_duration_seconds",
                "Time of one background maintenance step (compaction, retention, vacuum).",
                nines_shared::telemetry::LATENCY_BUCKETS,
            ),
            corrupt_log_rows: r.counter(
                "nines_storage_corrupt_log_rows_total",
                "Ingest log rows (or series groups in them) found corrupt at replay and skipped.",
            ),
            rollup_rows_written: r.counter_vec(
                "nines_storage_rollup_rows_written_total",
                "Rollup rows written by compaction (a row per series and 2 h window at 1m, per day at 1h).",
                &["resolution"],
            ),
            rollup_bytes_written: r.counter_vec(
                "nines_storage_rollup_bytes_written_total",
                "Encoded bytes of the rollup rows written by compaction.",
                &["resolution"],
            ),
            rollup_rows_expired: r.counter_vec(
                "nines_storage_retention_deleted_rollup_rows_total",
                "Rollup rows deleted because they are older than their resolution's retention.",
                &["resolution"],
            ),
            corrupt_rollup_rows: r.counter(
                "nines_storage_corrupt_rollup_rows_total",
                "Rollup rows found corrupt and skipped (their windows are read raw while raw samples last).",
            ),
        };
        // Every resolution shows from the start, at zero.
        for res in ["1m", "1h"] {
            m.rollup_rows_written.with(&[res]);
            m.rollup_bytes_written.with(&[res]);
            m.rollup_rows_expired.with(&[res]);
        }
        m
    }
}

/// The store: a handle to the writer thread, the index and the readers.
#[derive(Clone)]
pub struct Storage {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    index: Arc<RwLock<Index>>,
    head: Arc<head::Head>,
    writer: writer::Handle,
    readers: Mutex<Vec<Connection>>,
    limits: QueryLimits,
    metrics: StorageMetrics,
    /// Retention, for the read path's choice between rows and raw.
    options: StorageOptions,
    /// The largest raw retention cutoff ever applied (the writer's): raw
    /// samples before it may be gone even if retention is longer now.
    raw_deleted_before: Arc<AtomicI64>,
}

impl Storage {
    /// Opens (creating if needed) the database at `path`, loads the index and
    /// starts the writer thread, with the default [`StorageOptions`].
    pub fn open(
        path: &Path,
        limits: QueryLimits,
        metrics: StorageMetrics,
    ) -> Result<Storage, StorageError> {
        Storage::open_with_options(path, limits, metrics, StorageOptions::default())
    }

    /// [`open`](Self::open) with explicit options.
    pub fn open_with_options(
        path: &Path,
        limits: QueryLimits,
        metrics: StorageMetrics,
        options: StorageOptions,
    ) -> Result<Storage, StorageError> {
        let conn = Connection::open(path)?;
        schema::configure(&conn)?;
        schema::migrate(&conn).map_err(|reason| StorageError::Schema {
            path: path.display().to_string(),
            reason,
        })?;
        schema::configure_writer(&conn)?;
        let index = Arc::new(RwLock::new(load_index(&conn)?));
        let series_count = index.read().map(|i| i.len()).unwrap_or(0);
        tracing::info!(path = %path.display(), series = series_count, "storage opened");
        let head = Arc::new(head::Head::default());
        let raw_deleted_before = Arc::new(AtomicI64::new(i64::MIN));
        let writer = writer::spawn(
            conn,
            index.clone(),
            head.clone(),
            metrics.clone(),
            options.clone(),
            raw_deleted_before.clone(),
        )?;
        Ok(Storage {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                index,
                head,
                writer,
                readers: Mutex::new(Vec::new()),
                limits,
                metrics,
                options,
                raw_deleted_before,
            }),
        })
    }

    /// Compacts every head row into chunks, runs a retention pass, returns
    /// every free page to the file system and truncates the WAL. Writes wait
    /// while it runs (the background does the same in small steps); for
    /// tools, tests and benchmarks.
    pub async fn compact_now(&self) -> Result<MaintenanceReport, WriteError> {
        self.inner.writer.control(writer::Control::CompactAll).await
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Logs and counts a corrupt chunk met while reading.
    fn corrupt(&self, id: SeriesId, c: read::CorruptChunk) {
        writer::report_corrupt(&self.inner.index, &self.inner.metrics, id, &c, "read");
    }

    /// Commits a batch; resolves once it is durable (or refused).
    pub async fn write(&self, batch: Batch) -> Result<Applied, WriteError> {
        self.inner.writer.write(batch).await
    }

    /// Commits series samples (and metadata) atomically; resolves once
    /// durable. Samples at a timestamp already stored replace it, so a
    /// retried request is harmless.
    pub async fn write_series(
        &self,
        series: Vec<SeriesWrite>,
        metadata: Vec<MetricMetadata>,
    ) -> Result<Applied, WriteError> {
        self.inner.writer.write_series(series, metadata).await
    }

    /// Commits series named by key (remote_write: label sets checked under
    /// this process's limits, or series resolved by
    /// [`Storage::with_known_pairs`]); as [`Storage::write_series`]
    /// otherwise. The checked label sets are remembered by their pairs.
    pub async fn write_keyed(
        &self,
        writes: Vec<KeyedWrite>,
        metadata: Vec<MetricMetadata>,
    ) -> Result<Applied, WriteError> {
        self.inner.writer.write_keyed(writes, metadata).await
    }

    /// Runs `f` with a lookup from label pairs on the wire (names and
    /// values in order, and their [`index::pairs_hash`]) to a remembered
    /// series, under one read lock of the index.
    pub fn with_known_pairs<R>(&self, f: impl FnOnce(&index::PairsLookup<'_>) -> R) -> R {
        let index = self.inner.index.read().unwrap_or_else(|p| p.into_inner());
        f(&|hash, pairs| index.id_of_pairs(hash, pairs))
    }

    /// Number of series in the index.
    pub fn series_count(&self) -> usize {
        self.inner.index.read().map(|i| i.len()).unwrap_or(0)
    }

    /// Runs `f` with a read connection from the pool.
    fn with_reader<R>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, StorageError>,
    ) -> Result<R, StorageError> {
        let conn = {
            let mut pool = self.inner.readers.lock().unwrap_or_else(|p| p.into_inner());
            pool.pop()
        };
        let conn = match conn {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.inner.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                c.busy_timeout(std::time::Duration::from_secs(5))?;
                c
            }
        };
        let out = f(&conn);
        let mut pool = self.inner.readers.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < 8 {
            pool.push(conn);
        }
        out
    }

    /// Ids and labels of the series a selector matches (bounded).
    fn matching(&self, matchers: &Matchers) -> Result<Vec<(SeriesId, Labels)>, QuerierError> {
        let index = self
            .inner
            .index
            .read()
            .map_err(|_| QuerierError::Storage("index lock poisoned".into()))?;
        let ids = index.select(matchers);
        if ids.len() > self.inner.limits.max_series {
            return Err(QuerierError::TooManySeries(self.inner.limits.max_series));
        }
        Ok(ids
            .into_iter()
            .filter_map(|id| index.labels_of(id).map(|l| (id, l.clone())))
            .collect())
    }

    /// Label sets of series matching any of the selectors that have a sample
    /// in `[start, end]`, sorted.
    pub fn series(
        &self,
        selectors: &[Matchers],
        start: i64,
        end: i64,
    ) -> Result<Vec<Labels>, QuerierError> {
        let mut found: Vec<(SeriesId, Labels)> = Vec::new();
        for m in selectors {
            found.extend(self.matching(m)?);
        }
        found.sort_by_key(|(id, _)| *id);
        found.dedup_by_key(|(id, _)| *id);
        // The head first (see read.rs): a compaction committing later
        // leaves its samples in the chunks the snapshot sees.
        let (in_head, rest): (Vec<_>, Vec<_>) = found
            .into_iter()
            .partition(|(id, _)| self.inner.head.has_data(*id, start, end));
        let mut out: Vec<Labels> = in_head.into_iter().map(|(_, l)| l).collect();
        let more = self
            .with_reader(|conn| {
                read::in_snapshot(conn, |conn| {
                    let mut out = Vec::new();
                    for (id, labels) in rest {
                        if read::has_data(conn, id, start, end, &mut |c| self.corrupt(id, c))? {
                            out.push(labels);
                        }
                    }
                    Ok::<_, StorageError>(out)
                })
            })
            .map_err(|e| QuerierError::Storage(e.to_string()))?;
        out.extend(more);
        out.sort();
        Ok(out)
    }

    /// Label names in use by the series that match (all series when no
    /// selector is given and the range is unbounded).
    pub fn label_names(
        &self,
        selectors: &[Matchers],
        start: i64,
        end: i64,
    ) -> Result<Vec<String>, QuerierError> {
        let mut names: Vec<String> = self
            .series_or_all(selectors, start, end)?
            .iter()
            .flat_map(|l| l.iter().map(|p| p.name.clone()))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Values of one label across the series that match.
    pub fn label_values(
        &self,
        name: &str,
        selectors: &[Matchers],
        start: i64,
        end: i64,
    ) -> Result<Vec<String>, QuerierError> {
        let mut values: Vec<String> = self
            .series_or_all(selectors, start, end)?
            .iter()
            .filter_map(|l| l.get(name).map(str::to_string))
            .collect();
        values.sort();
        values.dedup();
        Ok(values)
    }

    /// With no selector, every series counts; with selectors, those that
    /// match and have data in the range.
    fn series_or_all(
        &self,
        selectors: &[Matchers],
        start: i64,
        end: i64,
    ) -> Result<Vec<Labels>, QuerierError> {
        if selectors.is_empty() {
            let index = self
                .inner
                .index
                .read()
                .map_err(|_| QuerierError::Storage("index lock poisoned".into()))?;
            let all = Matchers::new(vec![]);
            Ok(index
                .select(&all)
                .into_iter()
                .filter_map(|id| index.labels_of(id).cloned())
                .collect())
        } else {
            self.series(selectors, start, end)
        }
    }

    /// Type, help and unit per metric family, optionally for one metric.
    pub fn metadata(&self, metric: Option<&str>) -> Result<Vec<MetricMetadata>, StorageError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT metric, kind, help, unit FROM metadata
                 WHERE ?1 IS NULL OR metric = ?1 ORDER BY metric",
            )?;
            let rows = stmt.query_map([metric], |r| {
                let kind: String = r.get(1)?;
                Ok(MetricMetadata {
                    name: r.get(0)?,
                    kind: writer::kind_from_str(&kind),
                    help: r.get(2)?,
                    unit: r.get(3)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Number of samples stored for a series' label set, one per timestamp
    /// (head and chunks merged; for tests and diagnostics).
    pub fn stored_samples(&self, labels: &Labels) -> Result<usize, StorageError> {
        let Some(id) = self.inner.index.read().ok().and_then(|i| i.id_of(labels)) else {
            return Ok(0);
        };
        let head = self.inner.head.run(id, i64::MIN, i64::MAX);
        self.with_reader(|conn| {
            read::in_snapshot(conn, |conn| {
                Ok::<_, StorageError>(
                    read::read_series(conn, id, i64::MIN, i64::MAX, head, &mut |c| {
                        self.corrupt(id, c)
                    })?
                    .len(),
                )
            })
        })
    }

    /// Where a series' samples are: (head samples, chunks, samples in
    /// chunks). For tests and diagnostics.
    pub fn layout_of(&self, labels: &Labels) -> Result<(usize, usize, usize), StorageError> {
        let Some(id) = self.inner.index.read().ok().and_then(|i| i.id_of(labels)) else {
            return Ok((0, 0, 0));
        };
        let head = self.inner.head.count(id);
        self.with_reader(|conn| {
            read::in_snapshot(conn, |conn| {
                let (chunks, in_chunks): (i64, i64) = conn.query_row(
                    "SELECT count(*), coalesce(sum(count), 0) FROM chunks WHERE series_id = ?1",
                    [id.0],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                Ok::<_, StorageError>((head, chunks as usize, in_chunks as usize))
            })
        })
    }
}

impl Querier for Storage {
    fn rollup_resolutions(&self) -> Vec<i64> {
        vec![rollup::RES_1M, rollup::RES_1H]
    }

    fn raw_retention_start(&self) -> Option<i64> {
        let raw = self.inner.options.cutoffs(UnixMillis::now().0)[0]
            .max(self.inner.raw_deleted_before.load(Ordering::Relaxed));
        (raw != i64::MIN).then_some(raw)
    }

    fn rollup_retention_start(&self, res: i64) -> Option<i64> {
        let [_, minute, hour] = self.inner.options.cutoffs(UnixMillis::now().0);
        let cut = match res {
            rollup::RES_1M => minute,
            rollup::RES_1H => hour,
            _ => return None,
        };
        (cut != i64::MIN).then_some(cut)
    }

    fn select(
        &self,
        matchers: &Matchers,
        start: i64,
        end: i64,
    ) -> Result<Vec<SeriesSamples>, QuerierError> {
        let series = self.matching(matchers)?;
        let max_samples = self.inner.limits.max_samples;
        // The head first (see read.rs), within the sample limit.
        let mut heads = Vec::with_capacity(series.len());
        let mut in_head = 0usize;
        for (id, _) in &series {
            let run = self.inner.head.run(*id, start, end);
            in_head += run.len();
            if in_head > max_samples {
                return Err(QuerierError::TooManySamples(max_samples));
            }
            heads.push(run);
        }
        let result = self.with_reader(|conn| {
            read::in_snapshot(conn, |conn| {
                let mut out = Vec::with_capacity(series.len());
                let mut loaded = 0usize;
                for ((id, labels), head) in series.into_iter().zip(heads) {
                    let samples = read::read_series(conn, id, start, end, head, &mut |c| {
                        self.corrupt(id, c)
                    })?;
                    loaded += samples.len();
                    if loaded > max_samples {
                        return Ok(Err(QuerierError::TooManySamples(max_samples)));
                    }
                    if !samples.is_empty() {
                        out.push(SeriesSamples { labels, samples });
                    }
                }
                Ok::<_, StorageError>(Ok(out))
            })
        });
        result.map_err(|e| QuerierError::Storage(e.to_string()))?
    }

    /// At 1m and 1h, from the rollup rows where they hold a window, and
    /// folded from raw samples (head and chunks) where they do not; see
    /// [`Storage::buckets_of`]. Other resolutions fold raw samples.
    fn select_buckets(
        &self,
        matchers: &Matchers,
        start: i64,
        end: i64,
        res: i64,
    ) -> Result<Vec<SeriesBuckets>, QuerierError> {
        let Some(resolution) = rollup::Resolution::of(res) else {
            return fold_selected(start, end, res, |from, to| self.select(matchers, from, to));
        };
        let (from, to) = bucket_span(start, end, res);
        if to < from {
            return Ok(Vec::new());
        }
        let series = self.matching(matchers)?;
        let max_samples = self.inner.limits.max_samples;
        // The head first, as select does.
        let mut heads = Vec::with_capacity(series.len());
        let mut loaded = 0usize;
        for (id, _) in &series {
            let run = self.inner.head.run(*id, from, to);
            loaded += run.len();
            if loaded > max_samples {
                return Err(QuerierError::TooManySamples(max_samples));
            }
            heads.push(run);
        }
        let cutoff = self.inner.options.cutoffs(UnixMillis::now().0)[0];
        let result = self.with_reader(|conn| {
            read::in_snapshot(conn, |conn| {
                let raw_complete_from = rollup::raw_deleted_before(conn)?.max(cutoff);
                let mut out = Vec::with_capacity(series.len());
                for ((id, labels), head) in series.into_iter().zip(heads) {
                    let buckets = self.buckets_of(
                        conn,
                        id,
                        resolution,
                        (from, to),
                        head,
                        raw_complete_from,
                        &mut loaded,
                    )?;
                    if loaded > max_samples {
                        return Ok(Err(QuerierError::TooManySamples(max_samples)));
                    }
                    if !buckets.is_empty() {
                        out.push(SeriesBuckets { labels, buckets });
                    }
                }
                Ok::<_, StorageError>(Ok(out))
            })
        });
        result.map_err(|e| QuerierError::Storage(e.to_string()))?
    }
}

/// Where the buckets of one 2 h window come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The window's stored segment (index into the segments read).
    Row(usize),
    /// Its raw samples: chunks and head, folded.
    Raw,
}

impl Storage {
    /// One series' buckets of `resolution` for the samples in `[from, to]`
    /// (bucket boundaries), window by window: a window's stored segment
    /// when it has one and no head samples (or is older than raw retention,
    /// `raw_complete_from`, where raw samples may be gone: rows are then
    /// the complete record); otherwise its chunks and head samples folded.
    /// Runs of raw windows are read and folded together; the pieces of a
    /// bucket split by a window boundary are joined. `loaded` counts raw
    /// samples read and stored buckets used, like samples.
    #[allow(clippy::too_many_arguments)]
    fn buckets_of(
        &self,
        conn: &Connection,
        id: SeriesId,
        resolution: rollup::Resolution,
        (from, to): (i64, i64),
        head: read::Run,
        raw_complete_from: i64,
        loaded: &mut usize,
    ) -> Result<Vec<Bucket>, StorageError> {
        let res = resolution.res();
        let (w_lo, w_hi) = (compact::window_start(from), compact::window_start(to));
        let segments = rollup::read_segments(conn, id, resolution, w_lo, w_hi, &mut |c| {
            self.inner.metrics.corrupt_rollup_rows.inc();
            tracing::error!(series_id = id.0, row = c.start, resolution = resolution.label(),
                error = %c.error, "corrupt rollup row skipped");
        })?;
        let mut head_windows: Vec<i64> = head.iter().map(|s| compact::window_start(s.0)).collect();
        head_windows.dedup();
        let mut plan: std::collections::BTreeMap<i64, Source> = std::collections::BTreeMap::new();
        for (i, seg) in segments.iter().enumerate() {
            let in_head = head_windows.binary_search(&seg.window_start).is_ok();
            if !in_head || seg.window_start < raw_complete_from {
                plan.insert(seg.window_start, Source::Row(i));
            }
        }
        let raw_windows = rollup::chunk_windows(conn, id, w_lo, w_hi)?;
        for ws in raw_windows.into_iter().chain(head_windows) {
            plan.entry(ws).or_insert(Source::Raw);
        }
        let plan: Vec<(i64, Source)> = plan.into_iter().collect();
        let first_end = from + res - 1;
        let mut out: Vec<Bucket> = Vec::new();
        let mut i = 0;
        while i < plan.len() {
            match plan[i].1 {
                Source::Row(k) => {
                    let pieces: Vec<Bucket> = segments[k]
                        .buckets
                        .iter()
                        .filter(|b| b.end >= first_end && b.end <= to)
                        .copied()
                        .collect();
                    *loaded += pieces.len();
                    rollup::append_pieces(&mut out, pieces);
                    i += 1;
                }
                Source::Raw => {
                    // A run of raw windows, read at once.
                    let mut j = i;
                    while j + 1 < plan.len() && plan[j + 1].1 == Source::Raw {
                        j += 1;
                    }
                    let a = plan[i].0.max(from);
                    let b = compact::window_last(plan[j].0).min(to);
                    let lo = head.partition_point(|s| s.0 < a);
                    let hi = head.partition_point(|s| s.0 <= b);
                    let samples =
                        read::read_series(conn, id, a, b, head[lo..hi].to_vec(), &mut |c| {
                            self.corrupt(id, c)
                        })?;
                    *loaded += samples.len();
                    rollup::append_pieces(&mut out, fold(&samples, res));
                    i = j + 1;
                }
            }
        }
        Ok(out)
    }

    /// Rollup rows stored and their bytes: (minute rows, minute bytes,
    /// hour rows, hour bytes). For tests, diagnostics and benchmarks.
    pub fn rollup_usage(&self) -> Result<[u64; 4], StorageError> {
        self.with_reader(|conn| {
            let usage = |table: &str| -> rusqlite::Result<(i64, i64)> {
                conn.query_row(
                    &format!("SELECT count(*), coalesce(sum(length(data)), 0) FROM {table}"),
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
            };
            let (m, mb) = usage("rollup_1m")?;
            let (h, hb) = usage("rollup_1h")?;
            Ok([m as u64, mb as u64, h as u64, hb as u64])
        })
    }
}

fn load_index(conn: &Connection) -> Result<Index, StorageError> {
    let mut index = Index::default();
    let mut stmt = conn.prepare("SELECT id, labels FROM series ORDER BY id")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let id: i64 = row.get(0)?;
        let text: String = row.get(1)?;
        let labels =
            writer::labels_from_json(&text).map_err(|e| StorageError::CorruptLabels(id, e))?;
        index.insert(SeriesId(id), labels);
    }
    Ok(index)
}
