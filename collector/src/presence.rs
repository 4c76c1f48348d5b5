//! Which agents are reporting. Every agent that pushes is remembered (by its
//! agent id, with the `instance` and `job` of its series) in a small SQLite
//! file (`agents.db` in the data dir), and every few seconds the collector
//! writes `up{job, instance}` for it at its own clock: 1 while its batches
//! arrive, 0 once it has been silent for longer than
//! `max(down_after_intervals × its sampling interval, down_after_min)`.
//! This is the pushed counterpart of the `up` a scrape writes, and what the
//! host-down rule, host availability SLOs and the UI read.
//!
//! The sampling interval is learned from the timestamps of successive
//! batches (the smallest recent step, so a backlog drained after an outage
//! cannot stretch it). After a collector restart an agent it has not heard
//! from yet gets no `up` sample until `down_after` has passed since the
//! start, so a restart of the collector is never reported as hosts going
//! down; an agent silent longer than `forget_after` is forgotten.
//!
//! The same loop stores the collector's own `/metrics` families as series
//! (`job="nines-collector"`), so rules can watch the collector itself, for
//! example the agents' clock offsets.
//!
//! This module never refuses or delays a push: observing a batch only
//! updates memory; the file is written by the periodic loop.

use crate::ingest::Ingest;
use crate::storage::SeriesWrite;
use nines_shared::exposition::parse;
use nines_shared::telemetry::{Counter, Registry};
use nines_shared::{Batch, LabelLimits, Labels, MetricKind, MetricMetadata, UnixMillis};
use rusqlite::{Connection, params};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Name of the file in the data dir.
pub const AGENTS_DB_FILE: &str = "agents.db";

/// Settings of `[presence]`.
#[derive(Debug, Clone)]
pub struct PresenceConfig {
    /// An agent is down after this many of its sampling intervals of silence.
    pub down_after_intervals: u32,
    /// ...but never sooner than this.
    pub down_after_min: Duration,
    /// An agent silent this long is forgotten (no more `up` samples).
    pub forget_after: Duration,
    /// How often `up` is written.
    pub write_interval: Duration,
    /// How often the collector's own metrics are stored; None: never.
    pub self_metrics_interval: Option<Duration>,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            down_after_intervals: 3,
            down_after_min: Duration::from_secs(30),
            forget_after: Duration::from_secs(7 * 24 * 3600),
            write_interval: Duration::from_secs(10),
            self_metrics_interval: Some(Duration::from_secs(15)),
        }
    }
}

/// How many recent timestamp steps an agent's interval is learned from.
const STEPS_KEPT: usize = 8;
/// Steps longer than this are gaps, not intervals.
const MAX_STEP_MS: i64 = 3_600_000;

#[derive(Debug, Clone, PartialEq)]
struct AgentEntry {
    instance: String,
    job: String,
    /// Collector clock, ms, when its last batch arrived.
    last_seen: i64,
    /// Newest sample timestamp seen from it.
    last_at: i64,
    /// Recent positive steps between batch timestamps.
    steps: Vec<i64>,
    /// Changed since last saved.
    dirty: bool,
}

impl AgentEntry {
    /// Its sampling interval in ms, if learned.
    fn interval_ms(&self) -> Option<i64> {
        self.steps.iter().copied().min()
    }
}

struct State {
    agents: HashMap<String, AgentEntry>,
    /// Collector start, ms.
    started: i64,
}

/// What presence needs of a batch, taken before the batch is handed to
/// storage.
#[derive(Debug, Clone)]
pub struct Seen {
    agent: String,
    named: Option<(String, String)>,
    newest: Option<i64>,
}

impl Seen {
    /// The agent id, the `instance` and `job` its definitions carry (if
    /// any), and its newest sample timestamp.
    pub fn of(batch: &Batch) -> Seen {
        Seen {
            agent: batch.stream.agent.clone(),
            named: batch.definitions.iter().find_map(|d| {
                d.labels
                    .get("instance")
                    .map(|i| (i.to_string(), d.labels.get("job").unwrap_or("").to_string()))
            }),
            newest: batch.groups.iter().map(|g| g.at.0).max(),
        }
    }
}

/// Tracks pushing agents; cheap to clone.
#[derive(Clone)]
pub struct Presence {
    state: Arc<Mutex<State>>,
    db: Arc<Mutex<Connection>>,
    cfg: PresenceConfig,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Presence {
    /// Opens (creating) `agents.db` at `path` and loads the known agents.
    pub fn open(path: &Path, cfg: PresenceConfig) -> Result<Presence, rusqlite::Error> {
        let conn = crate::sidecar::open(
            path,
            crate::sidecar::Durability::Normal,
            "CREATE TABLE IF NOT EXISTS agents (
                agent TEXT PRIMARY KEY,
                instance TEXT NOT NULL,
                job TEXT NOT NULL,
                last_seen INTEGER NOT NULL,
                interval_ms INTEGER
            );",
        )?;
        let mut agents = HashMap::new();
        {
            let mut stmt =
                conn.prepare("SELECT agent, instance, job, last_seen, interval_ms FROM agents")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                ))
            })?;
            for row in rows {
                let (agent, instance, job, last_seen, interval) = row?;
                agents.insert(
                    agent,
                    AgentEntry {
                        instance,
                        job,
                        last_seen,
                        last_at: 0,
                        steps: interval.into_iter().collect(),
                        dirty: false,
                    },
                );
            }
        }
        Ok(Presence {
            state: Arc::new(Mutex::new(State {
                agents,
                started: UnixMillis::now().0,
            })),
            db: Arc::new(Mutex::new(conn)),
            cfg,
        })
    }

    /// Notes that a batch described by `seen` was accepted (stored or a
    /// duplicate) now.
    pub fn observe(&self, seen: Seen) {
        self.observe_at(seen, UnixMillis::now().0);
    }

    fn observe_at(&self, seen: Seen, now: i64) {
        let Seen {
            agent,
            named,
            newest,
        } = seen;
        let mut st = lock(&self.state);
        let entry = match (st.agents.get_mut(&agent), named) {
            (Some(e), named) => {
                if let Some((instance, job)) = named {
                    if e.instance != instance || e.job != job {
                        e.instance = instance;
                        e.job = job;
                    }
                }
                e
            }
            // Not known yet and nothing names it: it will send definitions
            // once the collector asks (409), and be named then.
            (None, None) => return,
            (None, Some((instance, job))) => st.agents.entry(agent).or_insert(AgentEntry {
                instance,
                job,
                last_seen: now,
                last_at: 0,
                steps: Vec::new(),
                dirty: true,
            }),
        };
        entry.last_seen = now;
        entry.dirty = true;
        if let Some(at) = newest {
            let step = at - entry.last_at;
            if entry.last_at > 0 && step > 0 && step <= MAX_STEP_MS {
                if entry.steps.len() == STEPS_KEPT {
                    entry.steps.remove(0);
                }
                entry.steps.push(step);
            }
            entry.last_at = entry.last_at.max(at);
        }
    }

    /// How long `entry` may stay silent before it is down, in ms.
    fn down_after_ms(&self, entry: &AgentEntry) -> i64 {
        let min = self.cfg.down_after_min.as_millis() as i64;
        match entry.interval_ms() {
            Some(i) => (i * i64::from(self.cfg.down_after_intervals)).max(min),
            None => min,
        }
    }

    /// The `up` samples due at `now`, forgetting long-silent agents and
    /// saving what changed.
    fn tick(&self, now: i64) -> Vec<SeriesWrite> {
        let forget_ms = self.cfg.forget_after.as_millis() as i64;
        let mut out = Vec::new();
        let mut forgotten = Vec::new();
        let mut changed = Vec::new();
        {
            let mut st = lock(&self.state);
            let started = st.started;
            st.agents.retain(|agent, e| {
                if now - e.last_seen > forget_ms {
                    forgotten.push(agent.clone());
                    return false;
                }
                true
            });
            for (agent, e) in st.agents.iter_mut() {
                let down_after = self.down_after_ms(e);
                let silent = now - e.last_seen > down_after;
                // Not heard from since before this process started: wait
                // one full down_after from the start before calling it down.
                if silent && e.last_seen < started && now - started <= down_after {
                    continue;
                }
                let labels = Labels::new("up", [("instance", &e.instance), ("job", &e.job)]);
                out.push(SeriesWrite {
                    labels,
                    samples: vec![(now, if silent { 0.0 } else { 1.0 })],
                });
                if e.dirty {
                    e.dirty = false;
                    changed.push((agent.clone(), e.clone()));
                }
            }
        }
        if !forgotten.is_empty() || !changed.is_empty() {
            if let Err(e) = self.save(&forgotten, &changed) {
                tracing::warn!(error = %e, file = AGENTS_DB_FILE, "cannot save known agents");
                // Keep them dirty so the next tick tries again.
                let mut st = lock(&self.state);
                for (agent, _) in &changed {
                    if let Some(e) = st.agents.get_mut(agent) {
                        e.dirty = true;
                    }
                }
            }
        }
        for agent in &forgotten {
            tracing::info!(%agent, "agent silent past forget_after; no longer reported");
        }
        out
    }

    fn save(
        &self,
        forgotten: &[String],
        changed: &[(String, AgentEntry)],
    ) -> Result<(), rusqlite::Error> {
        let mut conn = lock(&self.db);
        let tx = conn.transaction()?;
        for agent in forgotten {
            tx.execute("DELETE FROM agents WHERE agent = ?1", params![agent])?;
        }
        for (agent, e) in changed {
            tx.execute(
                "INSERT INTO agents (agent, instance, job, last_seen, interval_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(agent) DO UPDATE SET instance = ?2, job = ?3,
                   last_seen = ?4, interval_ms = ?5",
                params![agent, e.instance, e.job, e.last_seen, e.interval_ms()],
            )?;
        }
        tx.commit()
    }

    /// Agents currently known.
    pub fn known(&self) -> usize {
        lock(&self.state).agents.len()
    }

    /// Writes `up` every `write_interval` and the collector's own metrics
    /// every `self_metrics_interval` until `stop`.
    pub fn spawn(
        &self,
        ingest: Ingest,
        registry: Registry,
        instance: String,
        stop: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let failures = registry.counter(
            "nines_presence_write_failures_total",
            "Writes of `up` or of the collector's own metrics that were not stored.",
        );
        {
            let p = self.clone();
            registry.gauge_fn(
                "nines_presence_agents",
                "Agents the collector knows and reports `up` for.",
                move || p.known() as f64,
            );
        }
        let me = self.clone();
        tokio::spawn(async move {
            let mut up_tick = tokio::time::interval(me.cfg.write_interval);
            up_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut self_tick = me.cfg.self_metrics_interval.map(|d| {
                let mut t = tokio::time::interval(d);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            let mut stop = stop;
            loop {
                tokio::select! {
                    _ = up_tick.tick() => {
                        let series = me.tick(UnixMillis::now().0);
                        if !series.is_empty() {
                            store(&ingest, series, vec![up_metadata()], &failures).await;
                        }
                    }
                    _ = async {
                        match self_tick.as_mut() {
                            Some(t) => { t.tick().await; }
                            None => std::future::pending::<()>().await,
                        }
                    } => {
                        match own_metrics(&registry, &instance, UnixMillis::now().0) {
                            Ok((series, metadata)) => store(&ingest, series, metadata, &failures).await,
                            Err(e) => {
                                failures.inc();
                                tracing::warn!(error = %e, "cannot read the collector's own metrics");
                            }
                        }
                    }
                    _ = stop.changed() => {
                        if *stop.borrow() {
                            return;
                        }
                    }
                }
            }
        })
    }
}

async fn store(
    ingest: &Ingest,
    series: Vec<SeriesWrite>,
    metadata: Vec<MetricMetadata>,
    failures: &Counter,
) {
    if let Err(e) = ingest.write_series(series, metadata).await {
        failures.inc();
        tracing::warn!(error = %e, "presence samples not stored");
    }
}

fn up_metadata() -> MetricMetadata {
    MetricMetadata {
        name: "up".into(),
        kind: MetricKind::Gauge,
        help: "1 if the target answered its last scrape, or the agent pushed within its down_after; else 0.".into(),
        unit: String::new(),
    }
}

/// The collector's own metrics as series at `now`, labelled
/// `job="nines-collector"` and `instance`.
fn own_metrics(
    registry: &Registry,
    instance: &str,
    now: i64,
) -> Result<(Vec<SeriesWrite>, Vec<MetricMetadata>), parse::ParseError> {
    let text = registry.render();
    let exp = parse::parse(&text, 1_000_000, &LabelLimits::default())?;
    let series = exp
        .samples
        .into_iter()
        .map(|s| {
            let mut labels = s.labels;
            labels.set("job", "nines-collector");
            labels.set("instance", instance);
            SeriesWrite {
                labels,
                samples: vec![(now, s.value)],
            }
        })
        .collect();
    Ok((series, exp.metadata))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nines_shared::{SampleGroup, Seq, SeriesDefinition, SeriesRef, StreamId};

    fn batch(agent: &str, at: i64, named: bool) -> Batch {
        Batch {
            stream: StreamId {
                agent: agent.into(),
                epoch: UnixMillis(1),
            },
            seq: Seq(1),
            sent_at: UnixMillis(at),
            definitions: if named {
                vec![SeriesDefinition {
                    series: SeriesRef(0),
                    labels: Labels::new("node_load1", [("instance", "web-1"), ("job", "node")]),
                }]
            } else {
                Vec::new()
            },
            metadata: Vec::new(),
            groups: vec![SampleGroup {
                at: UnixMillis(at),
                values: vec![(SeriesRef(0), 1.0)],
            }],
        }
    }

    fn seen(agent: &str, at: i64, named: bool) -> Seen {
        Seen::of(&batch(agent, at, named))
    }

    fn open(dir: &Path) -> Presence {
        Presence::open(&dir.join(AGENTS_DB_FILE), PresenceConfig::default()).unwrap()
    }

    fn up_of(series: &[SeriesWrite], instance: &str) -> Option<f64> {
        series
            .iter()
            .find(|s| s.labels.get("instance") == Some(instance))
            .map(|s| s.samples[0].1)
    }

    #[test]
    fn up_while_pushing_then_down_after_three_intervals() {
        let dir = tempfile::tempdir().unwrap();
        let p = open(dir.path());
        let t0 = lock(&p.state).started;
        // An unnamed first batch cannot be reported.
        p.observe_at(seen("a", t0, false), t0);
        assert!(p.tick(t0).is_empty());
        // 20 s steps: down after 60 s of silence.
        for i in 0..4 {
            p.observe_at(seen("a", t0 + i * 20_000, i == 0), t0 + i * 20_000);
        }
        let last = t0 + 60_000;
        let s = p.tick(last + 60_000);
        assert_eq!(up_of(&s, "web-1"), Some(1.0));
        assert_eq!(s[0].labels.get("job"), Some("node"));
        assert_eq!(s[0].labels.get("__name__"), Some("up"));
        assert_eq!(up_of(&p.tick(last + 60_001), "web-1"), Some(0.0));
    }

    #[test]
    fn drained_backlog_does_not_stretch_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let p = open(dir.path());
        let t0 = lock(&p.state).started;
        p.observe_at(seen("a", t0, true), t0);
        p.observe_at(seen("a", t0 + 10_000, false), t0 + 10_000);
        // A new batch 40 minutes after an old one: a gap, not the interval.
        p.observe_at(seen("a", t0 + 2_410_000, false), t0 + 2_410_000);
        let e = lock(&p.state).agents["a"].clone();
        assert_eq!(e.interval_ms(), Some(10_000));
        // Minimum 30 s applies to a 10 s agent.
        assert_eq!(p.down_after_ms(&e), 30_000);
    }

    #[test]
    fn remembered_across_restart_with_a_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = {
            let p = open(dir.path());
            let t0 = lock(&p.state).started - 3_600_000;
            p.observe_at(seen("a", t0, true), t0);
            p.observe_at(seen("a", t0 + 10_000, false), t0 + 10_000);
            p.tick(t0 + 10_000);
            t0
        };
        let p = open(dir.path());
        let started = lock(&p.state).started;
        assert!(started > t0);
        let e = lock(&p.state).agents["a"].clone();
        assert_eq!(e.instance, "web-1");
        assert_eq!(e.interval_ms(), Some(10_000));
        // Silent since before the restart: nothing during the grace period...
        assert!(p.tick(started + 1_000).is_empty());
        // ...then down.
        assert_eq!(up_of(&p.tick(started + 30_001), "web-1"), Some(0.0));
        // Pushing again: up.
        p.observe_at(seen("a", started + 40_000, false), started + 40_000);
        assert_eq!(up_of(&p.tick(started + 41_000), "web-1"), Some(1.0));
    }

    #[test]
    fn forgotten_after_forget_after() {
        let dir = tempfile::tempdir().unwrap();
        let p = open(dir.path());
        let t0 = lock(&p.state).started;
        p.observe_at(seen("a", t0, true), t0);
        assert_eq!(p.known(), 1);
        let week = 7 * 24 * 3_600_000;
        assert!(p.tick(t0 + week + 1).is_empty());
        assert_eq!(p.known(), 0);
        drop(p);
        assert_eq!(open(dir.path()).known(), 0);
    }

    #[test]
    fn own_metrics_are_labelled_as_the_collector() {
        let r = Registry::new();
        r.counter("nines_test_total", "A test counter.").inc();
        let (series, metadata) = own_metrics(&r, "127.0.0.1:9797", 5).unwrap();
        let s = series
            .iter()
            .find(|s| s.labels.get("__name__") == Some("nines_test_total"))
            .unwrap();
        assert_eq!(s.labels.get("job"), Some("nines-collector"));
        assert_eq!(s.labels.get("instance"), Some("127.0.0.1:9797"));
        assert_eq!(s.samples, vec![(5, 1.0)]);
        assert!(metadata.iter().any(|m| m.name == "nines_test_total"));
    }
}
