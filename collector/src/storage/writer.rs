//! The writer thread: the only code that writes to SQLite. It takes batches
//! from a channel, applies each inside its own savepoint (a batch is applied
//! whole or not at all), commits the round, updates the in-memory index and
//! stream maps only after the commit, and then answers each caller.
//!
//! It never answers before the commit: an acknowledged batch is on disk.

use super::index::{Index, SeriesId};
use super::{SeriesWrite, StorageMetrics};
use nines_shared::{
    Batch, Label, Labels, MetricKind, MetricMetadata, SeriesRef, StreamId, UnixMillis,
};
use rusqlite::{Connection, OptionalExtension};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock, mpsc};
use std::time::Instant;
use tokio::sync::oneshot;

/// Most batches committed in one transaction.
const MAX_BATCHES_PER_ROUND: usize = 64;
/// How long a batch's (stream, seq) is remembered for de-duplication.
const DEDUP_WINDOW_MS: i64 = 2 * 24 * 3600 * 1000;

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
    /// The writer has stopped.
    #[error("storage is shutting down")]
    Closed,
}

struct Request {
    work: Work,
    reply: oneshot::Sender<Result<Applied, WriteError>>,
}

/// What a request asks to write.
enum Work {
    /// A native batch: de-duplicated by (stream, seq), refs resolved.
    Batch(Batch),
    /// Series from a source without streams (remote_write).
    Series(Vec<SeriesWrite>, Vec<MetricMetadata>),
}

/// Sends batches to the writer thread.
pub(super) struct Handle {
    tx: mpsc::SyncSender<Request>,
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
        self.send(Work::Series(series, metadata)).await
    }

    async fn send(&self, work: Work) -> Result<Applied, WriteError> {
        let (reply, rx) = oneshot::channel();
        match self.tx.try_send(Request { work, reply }) {
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
    metrics: StorageMetrics,
) -> Result<Handle, super::StorageError> {
    let (tx, rx) = mpsc::sync_channel::<Request>(256);
    std::thread::Builder::new()
        .name("nines-sqlite-writer".into())
        .spawn(move || {
            let mut w = Writer {
                conn,
                index,
                streams: HashMap::new(),
                metrics,
                last_prune: Instant::now(),
            };
            w.run(rx)
        })
        .map_err(|e| super::StorageError::Schema {
            path: String::new(),
            reason: format!("cannot start writer thread: {e}"),
        })?;
    Ok(Handle { tx })
}

struct Writer {
    conn: Connection,
    index: Arc<RwLock<Index>>,
    /// Per stream, what its refs name. Lost on restart, by design: the
    /// collector then answers "unknown refs" and the agent re-sends.
    streams: HashMap<StreamId, StreamRefs>,
    metrics: StorageMetrics,
    last_prune: Instant,
}

/// One stream's refs and when it last pushed; streams silent for longer
/// than [`STREAM_IDLE`] are forgotten (they re-send definitions if they
/// come back).
#[derive(Default)]
struct StreamRefs {
    refs: HashMap<SeriesRef, SeriesId>,
    last_seen: Option<Instant>,
}

/// How long an idle stream's refs are kept in memory.
const STREAM_IDLE: std::time::Duration = std::time::Duration::from_secs(3600);

/// What one applied batch changes in memory once the round commits.
#[derive(Default)]
struct Effects {
    new_series: Vec<(SeriesId, Labels)>,
    refs: Vec<(SeriesRef, SeriesId)>,
}

impl Writer {
    fn run(&mut self, rx: mpsc::Receiver<Request>) {
        while let Ok(first) = rx.recv() {
            let mut round = vec![first];
            while round.len() < MAX_BATCHES_PER_ROUND {
                match rx.try_recv() {
                    Ok(r) => round.push(r),
                    Err(_) => break,
                }
            }
            self.commit_round(round);
            if self.last_prune.elapsed().as_secs() > 600 {
                self.prune_dedup();
            }
        }
        tracing::info!("storage writer stopped");
    }

    fn commit_round(&mut self, round: Vec<Request>) {
        let started = Instant::now();
        let mut outcomes: Vec<Result<(Applied, Effects), WriteError>> =
            Vec::with_capacity(round.len());
        if let Err(e) = self.conn.execute_batch("BEGIN IMMEDIATE") {
            for r in round {
                let _ = r.reply.send(Err(WriteError::Storage(e.to_string())));
            }
            return;
        }
        // Series and refs created earlier in this round, not yet in memory.
        let mut pending = Effects::default();
        let mut pending_refs: HashMap<StreamId, HashMap<SeriesRef, SeriesId>> = HashMap::new();
        let mut pending_keys: HashSet<(StreamId, u64)> = HashSet::new();
        for r in &round {
            let batch = match &r.work {
                Work::Batch(b) => Some(b),
                Work::Series(..) => None,
            };
            let key = batch.map(|b| (b.stream.clone(), b.seq.0));
            if key.as_ref().is_some_and(|k| pending_keys.contains(k)) {
                outcomes.push(Ok((Applied::Duplicate, Effects::default())));
                continue;
            }
            let res = self
                .conn
                .execute_batch("SAVEPOINT batch")
                .map_err(|e| WriteError::Storage(e.to_string()))
                .and_then(|_| match &r.work {
                    Work::Batch(b) => self.apply(b, &pending, pending_refs.get(&b.stream)),
                    Work::Series(series, metadata) => self.apply_series(series, metadata, &pending),
                });
            let res = match res {
                Ok(ok) => self
                    .conn
                    .execute_batch("RELEASE batch")
                    .map(|_| ok)
                    .map_err(|e| WriteError::Storage(e.to_string())),
                Err(e) => {
                    let _ = self.conn.execute_batch("ROLLBACK TO batch; RELEASE batch");
                    Err(e)
                }
            };
            if let Ok((Applied::Stored { .. }, eff)) = &res {
                pending.new_series.extend(eff.new_series.iter().cloned());
                if let (Some(key), Some(b)) = (key, batch) {
                    pending_keys.insert(key);
                    pending_refs
                        .entry(b.stream.clone())
                        .or_default()
                        .extend(eff.refs.iter().copied());
                }
            }
            outcomes.push(res);
        }
        if let Err(e) = self.conn.execute_batch("COMMIT") {
            let _ = self.conn.execute_batch("ROLLBACK");
            tracing::error!(error = %e, "commit failed; batches refused for retry");
            for r in round {
                let _ = r.reply.send(Err(WriteError::Storage(e.to_string())));
            }
            return;
        }
        self.metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        // Durable now: make it visible, then answer.
        if let Ok(mut index) = self.index.write() {
            for (id, labels) in &pending.new_series {
                index.insert(*id, labels.clone());
            }
        }
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
                        stream.last_seen = Some(Instant::now());
                    }
                }
                applied
            });
            let _ = r.reply.send(reply);
        }
    }

    /// Applies one batch inside the current savepoint.
    fn apply(
        &mut self,
        batch: &Batch,
        pending: &Effects,
        pending_refs: Option<&HashMap<SeriesRef, SeriesId>>,
    ) -> Result<(Applied, Effects), WriteError> {
        let sql = |e: rusqlite::Error| WriteError::Storage(e.to_string());
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
        let mut refs: HashMap<SeriesRef, SeriesId> =
            HashMap::with_capacity(batch.definitions.len());
        for d in &batch.definitions {
            let id = self.series_id(&d.labels, pending, &mut eff)?;
            refs.insert(d.series, id);
            eff.refs.push((d.series, id));
        }

        let mut put = self
            .conn
            .prepare_cached(
                "INSERT OR REPLACE INTO samples (series_id, ts, value) VALUES (?1, ?2, ?3)",
            )
            .map_err(sql)?;
        let mut samples = 0usize;
        for g in &batch.groups {
            for (r, v) in &g.values {
                let id = refs
                    .get(r)
                    .copied()
                    .or_else(|| lookup(r))
                    .ok_or_else(|| WriteError::UnknownRefs(vec![r.0]))?;
                put.execute((id.0, g.at.0, v.to_bits() as i64))
                    .map_err(sql)?;
                samples += 1;
            }
        }
        drop(put);

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
        series: &[SeriesWrite],
        metadata: &[MetricMetadata],
        pending: &Effects,
    ) -> Result<(Applied, Effects), WriteError> {
        let sql = |e: rusqlite::Error| WriteError::Storage(e.to_string());
        let mut eff = Effects::default();
        let mut samples = 0usize;
        for s in series {
            let id = self.series_id(&s.labels, pending, &mut eff)?;
            let mut put = self
                .conn
                .prepare_cached(
                    "INSERT OR REPLACE INTO samples (series_id, ts, value) VALUES (?1, ?2, ?3)",
                )
                .map_err(sql)?;
            for (t, v) in &s.samples {
                put.execute((id.0, *t, v.to_bits() as i64)).map_err(sql)?;
                samples += 1;
            }
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
            .map_err(|e| WriteError::Storage(e.to_string()))?;
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
                .map_err(|e| WriteError::Storage(e.to_string()))?;
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
        Writer {
            conn,
            index: Arc::default(),
            streams: HashMap::new(),
            metrics: StorageMetrics::register(&Registry::new()),
            last_prune: Instant::now(),
        }
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
        assert_eq!(count(&w, "samples"), 2);
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
        let bits: i64 = w
            .conn
            .query_row("SELECT value FROM samples", [], |r| r.get(0))
            .unwrap();
        assert_eq!(bits as u64, 0x7ff0_0000_0000_0002);
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
