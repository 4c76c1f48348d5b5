//! Storage: time series in one SQLite file. One writer thread owns the only
//! write connection and commits each batch atomically (several batches per
//! transaction when they queue up: group commit, one savepoint each); readers
//! use their own connections (WAL), so reading never blocks ingestion.
//!
//! This module never decodes network input and never evaluates PromQL.

pub mod index;
mod schema;
mod writer;

pub use index::SeriesId;
pub use writer::{Applied, WriteError};

use crate::query::querier::{Querier, QuerierError, SeriesSamples};
use index::Index;
use nines_shared::telemetry::{Counter, Histogram, Registry};
use nines_shared::{Batch, Labels, MetricMetadata};
use promql_parser::label::Matchers;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

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

/// Storage's own health metrics.
#[derive(Clone)]
pub struct StorageMetrics {
    /// Time from BEGIN to COMMIT of a write round.
    pub commit_seconds: Histogram,
    /// Samples written.
    pub samples_appended: Counter,
    /// Series created.
    pub series_created: Counter,
}

impl StorageMetrics {
    /// Registers the metrics.
    pub fn register(r: &Registry) -> Self {
        StorageMetrics {
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
        }
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
    writer: writer::Handle,
    readers: Mutex<Vec<Connection>>,
    limits: QueryLimits,
}

impl Storage {
    /// Opens (creating if needed) the database at `path`, loads the index and
    /// starts the writer thread.
    pub fn open(
        path: &Path,
        limits: QueryLimits,
        metrics: StorageMetrics,
    ) -> Result<Storage, StorageError> {
        let conn = Connection::open(path)?;
        schema::configure(&conn)?;
        schema::migrate(&conn).map_err(|reason| StorageError::Schema {
            path: path.display().to_string(),
            reason,
        })?;
        let index = Arc::new(RwLock::new(load_index(&conn)?));
        let series_count = index.read().map(|i| i.len()).unwrap_or(0);
        tracing::info!(path = %path.display(), series = series_count, "storage opened");
        let writer = writer::spawn(conn, index.clone(), metrics)?;
        Ok(Storage {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                index,
                writer,
                readers: Mutex::new(Vec::new()),
                limits,
            }),
        })
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
        let mut out = self
            .with_reader(|conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT 1 FROM samples WHERE series_id = ?1 AND ts BETWEEN ?2 AND ?3 LIMIT 1",
                )?;
                let mut out = Vec::new();
                for (id, labels) in found {
                    let has: Option<i64> = stmt
                        .query_row((id.0, start, end), |r| r.get(0))
                        .optional()?;
                    if has.is_some() {
                        out.push(labels);
                    }
                }
                Ok(out)
            })
            .map_err(|e| QuerierError::Storage(e.to_string()))?;
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

    /// Number of sample rows stored for a series' label set (for tests and
    /// diagnostics).
    pub fn stored_samples(&self, labels: &Labels) -> Result<usize, StorageError> {
        let Some(id) = self.inner.index.read().ok().and_then(|i| i.id_of(labels)) else {
            return Ok(0);
        };
        self.with_reader(|conn| {
            let n: i64 = conn.query_row(
                "SELECT count(*) FROM samples WHERE series_id = ?1",
                [id.0],
                |r| r.get(0),
            )?;
            Ok(n as usize)
        })
    }
}

impl Querier for Storage {
    fn select(
        &self,
        matchers: &Matchers,
        start: i64,
        end: i64,
    ) -> Result<Vec<SeriesSamples>, QuerierError> {
        let series = self.matching(matchers)?;
        let max_samples = self.inner.limits.max_samples;
        let result = self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT ts, value FROM samples
                 WHERE series_id = ?1 AND ts BETWEEN ?2 AND ?3 ORDER BY ts",
            )?;
            let mut out = Vec::with_capacity(series.len());
            let mut loaded = 0usize;
            for (id, labels) in series {
                let samples = stmt
                    .query_map((id.0, start, end), |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            f64::from_bits(r.get::<_, i64>(1)? as u64),
                        ))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                loaded += samples.len();
                if loaded > max_samples {
                    return Ok(Err(QuerierError::TooManySamples(max_samples)));
                }
                if !samples.is_empty() {
                    out.push(SeriesSamples { labels, samples });
                }
            }
            Ok(Ok(out))
        });
        result.map_err(|e| QuerierError::Storage(e.to_string()))?
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
