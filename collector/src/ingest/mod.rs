//! Ingest: turns a push body into a committed batch. Decodes (bounded),
//! checks timestamps against the collector's clock, and hands the whole batch
//! to storage as one atomic write. Every refusal has a reason word that is
//! counted; nothing refused is written.
//!
//! It never speaks HTTP: the api module maps [`IngestError`] to statuses.

pub mod remote_write;

use crate::storage::{Applied, SeriesWrite, Storage, WriteError};
use nines_shared::telemetry::{Counter, CounterVec, GaugeVec, Registry};
use nines_shared::wire::{self, DecodeError, WireLimits};
use nines_shared::{Batch, MetricMetadata, UnixMillis};
use remote_write::{RemoteWriteError, RemoteWriteLimits};
use std::time::Duration;

/// Earliest timestamp accepted: 2000-01-01. Anything before is a clock that
/// was never set.
pub const MIN_TIMESTAMP_MS: i64 = 946_684_800_000;

/// Compressed bodies (native or remote_write) up to this size are decoded
/// on the async worker that read them, sparing a thread hand-off; bigger
/// ones on the blocking pool.
const INLINE_DECODE_BYTES: usize = 64 * 1024;

/// Ingest counters.
#[derive(Clone)]
pub struct IngestMetrics {
    clock_offset: GaugeVec,
    batches: CounterVec,
    samples: Counter,
    rejected: CounterVec,
}

impl IngestMetrics {
    /// Registers the metrics.
    pub fn register(r: &Registry) -> Self {
        IngestMetrics {
            clock_offset: r.gauge_vec(
                "nines_ingest_agent_clock_offset_seconds",
                "Each agent's clock minus the collector's, from the send time of its last batch (network delay included).",
                &["agent"],
            ),
            batches: r.counter_vec(
                "nines_ingest_batches_total",
                "Batches accepted, by result (stored, duplicate).",
                &["result"],
            ),
            samples: r.counter(
                "nines_ingest_samples_total",
                "Samples accepted and committed.",
            ),
            rejected: r.counter_vec(
                "nines_ingest_rejected_total",
                "Pushes refused, by reason; nothing of a refused push is written.",
                &["reason"],
            ),
        }
    }

    /// Counts one refused push.
    pub fn reject(&self, reason: &str) {
        self.rejected.with(&[reason]).inc();
    }
}

/// Why a push was refused.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The body could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A sample's timestamp is before 2000 or too far ahead.
    #[error("sample timestamp {at} ms is {what} (accepted: {min} to {max} ms)")]
    Timestamp {
        /// The offending timestamp.
        at: i64,
        /// "before 2000-01-01" or "too far in the future".
        what: &'static str,
        /// Earliest accepted.
        min: i64,
        /// Latest accepted.
        max: i64,
    },
    /// A remote_write body could not be decoded.
    #[error(transparent)]
    RemoteWrite(#[from] RemoteWriteError),
    /// Storage refused or failed.
    #[error(transparent)]
    Write(#[from] WriteError),
}

impl IngestError {
    /// The reason word counted on /metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            IngestError::Decode(d) => d.reason(),
            IngestError::RemoteWrite(e) => e.reason(),
            IngestError::Timestamp { what, .. } if what.starts_with("before") => "too_old",
            IngestError::Timestamp { .. } => "too_far_in_future",
            IngestError::Write(WriteError::UnknownRefs(_)) => "unknown_refs",
            IngestError::Write(WriteError::DiskFull { .. }) => "disk_full",
            IngestError::Write(_) => "storage",
        }
    }
}

/// Checks and commits pushes.
#[derive(Clone)]
pub struct Ingest {
    storage: Storage,
    limits: WireLimits,
    max_future: Duration,
    metrics: IngestMetrics,
    presence: Option<crate::presence::Presence>,
}

impl Ingest {
    /// An ingest path into `storage`.
    pub fn new(
        storage: Storage,
        limits: WireLimits,
        max_future: Duration,
        metrics: IngestMetrics,
    ) -> Self {
        Ingest {
            storage,
            limits,
            max_future,
            metrics,
            presence: None,
        }
    }

    /// Tells `presence` about every native batch accepted (stored or a
    /// duplicate), so it can report which agents are pushing.
    pub fn with_presence(mut self, presence: crate::presence::Presence) -> Self {
        self.presence = Some(presence);
        self
    }

    /// The counters, for refusals decided before the body is read.
    pub fn metrics(&self) -> &IngestMetrics {
        &self.metrics
    }

    /// Decodes a native push body and commits it.
    pub async fn push(&self, body: axum::body::Bytes) -> Result<Applied, IngestError> {
        // As for remote_write: a usual batch decodes on the worker, a big
        // one on the blocking pool.
        let decoded = if body.len() <= INLINE_DECODE_BYTES {
            wire::decode(&body, &self.limits)
        } else {
            let limits = self.limits.clone();
            tokio::task::spawn_blocking(move || wire::decode(&body, &limits))
                .await
                .map_err(|_| IngestError::Write(WriteError::Closed))?
        };
        match decoded {
            Ok(batch) => self.apply(batch).await,
            Err(e) => {
                self.metrics.reject(e.reason());
                Err(e.into())
            }
        }
    }

    /// Checks timestamps and commits an already decoded batch (the
    /// in-process agent's path).
    pub async fn apply(&self, batch: Batch) -> Result<Applied, IngestError> {
        let res = self.apply_inner(batch).await;
        self.count(&res);
        res
    }

    async fn apply_inner(&self, batch: Batch) -> Result<Applied, IngestError> {
        // The agent stamps sent_at at each attempt: the difference to our
        // clock is its offset (plus transit time, which is small).
        let offset_ms = batch.sent_at.0 - UnixMillis::now().0;
        self.metrics
            .clock_offset
            .with(&[&batch.stream.agent])
            .set(offset_ms as f64 / 1000.0);
        self.check_timestamps(batch.groups.iter().map(|g| g.at.0))?;
        let seen = self
            .presence
            .as_ref()
            .map(|_| crate::presence::Seen::of(&batch));
        let applied = self.storage.write(batch).await?;
        if let (Some(p), Some(seen)) = (&self.presence, seen) {
            p.observe(seen);
        }
        Ok(applied)
    }

    /// Decodes a remote_write body and commits it, with the same checks
    /// as a native push.
    pub async fn remote_write(&self, body: axum::body::Bytes) -> Result<Applied, IngestError> {
        let body_len = body.len();
        let limits = RemoteWriteLimits {
            max_decompressed_bytes: self.limits.max_decompressed_bytes,
            max_samples: self.limits.max_samples,
            max_series: self.limits.max_definitions,
            labels: self.limits.labels.clone(),
        };
        let res = async {
            let storage = self.storage.clone();
            // Decompressed before the index is read-locked: the writer
            // needs it to make new series visible.
            let decode = move || {
                let raw = remote_write::decompress(&body, &limits)?;
                storage
                    .with_known_pairs(|known| remote_write::decode_keyed_raw(&raw, &limits, known))
            };
            // A usual request (a few hundred samples) decodes in well under
            // a millisecond: on the worker, sparing a thread hand-off. A
            // big one goes to the blocking pool.
            let req = if body_len <= INLINE_DECODE_BYTES {
                decode()?
            } else {
                tokio::task::spawn_blocking(decode)
                    .await
                    .map_err(|_| IngestError::Write(WriteError::Closed))??
            };
            self.check_timestamps(
                req.series
                    .iter()
                    .flat_map(|s| s.samples.iter().map(|(t, _)| *t)),
            )?;
            Ok::<_, IngestError>(self.storage.write_keyed(req.series, req.metadata).await?)
        }
        .await;
        self.count(&res);
        res
    }

    /// Commits series from a source inside the collector (the scrape loop),
    /// with the same timestamp checks as pushes.
    pub async fn write_series(
        &self,
        series: Vec<SeriesWrite>,
        metadata: Vec<MetricMetadata>,
    ) -> Result<Applied, IngestError> {
        let res = async {
            self.check_timestamps(
                series
                    .iter()
                    .flat_map(|s| s.samples.iter().map(|(t, _)| *t)),
            )?;
            Ok::<_, IngestError>(self.storage.write_series(series, metadata).await?)
        }
        .await;
        self.count(&res);
        res
    }

    fn count(&self, res: &Result<Applied, IngestError>) {
        match res {
            Ok(Applied::Stored { samples, .. }) => {
                self.metrics.batches.with(&["stored"]).inc();
                self.metrics.samples.add(*samples as u64);
            }
            Ok(Applied::Duplicate) => self.metrics.batches.with(&["duplicate"]).inc(),
            Err(e) => self.metrics.reject(e.reason()),
        }
    }

    /// Every timestamp after 2000-01-01 and at most `max_future` ahead.
    fn check_timestamps(&self, ts: impl Iterator<Item = i64>) -> Result<(), IngestError> {
        let max = UnixMillis::now().0 + self.max_future.as_millis() as i64;
        for at in ts {
            let what = if at < MIN_TIMESTAMP_MS {
                "before 2000-01-01"
            } else if at > max {
                "too far in the future"
            } else {
                continue;
            };
            return Err(IngestError::Timestamp {
                at,
                what,
                min: MIN_TIMESTAMP_MS,
                max,
            });
        }
        Ok(())
    }
}
