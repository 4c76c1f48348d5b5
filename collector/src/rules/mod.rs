//! Recording and alerting rules, as Prometheus runs them: rule files in
//! Prometheus's YAML format, one evaluation loop per group at its
//! interval, results and `ALERTS` / `ALERTS_FOR_STATE` written to storage,
//! alert state kept across restarts in `rules.db`, and the JSON of
//! `/api/v1/rules` and `/api/v1/alerts`.
//!
//! Groups come from rule files ([`load_files`]) or from code: build a
//! [`GroupSpec`] (with a `file` such as `"<builtin>"`) and pass it to
//! [`Rules::new`] with the others. Groups made from code can be added,
//! replaced or removed while running ([`Rules::set_group`]) without
//! touching the others' state. Nothing here sends notifications: after
//! each evaluation the group's alerts are offered to [`crate::notify`].
//!
//! Templates in labels and annotations support a documented subset of Go
//! templates; see [`template`].

mod alerting;
mod api;
pub mod builtin;
mod file;
mod gofmt;
mod group;
mod store;
pub mod template;

pub use alerting::{Alert, AlertState, RESOLVED_RETENTION_MS};
pub use file::{AlertingSpec, GroupSpec, RecordingSpec, RuleSpec, load_file, parse_rules};
pub use group::{Group, Health, Rule, RuleKind};
pub use store::{RULES_DB_FILE, RuleKey, StateStore};

use crate::query::Engine;
use crate::storage::Storage;
use nines_shared::UnixMillis;
use nines_shared::telemetry::{CounterVec, GaugeVec, Registry};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Reads and checks every rule file; the first bad one stops the load with
/// its file, group, rule and reason.
pub fn load_files(files: &[PathBuf], default_interval: Duration) -> Result<Vec<GroupSpec>, String> {
    let mut groups = Vec::new();
    for f in files {
        groups.extend(load_file(f, default_interval)?);
    }
    Ok(groups)
}

/// The evaluator's own metrics, per group (`<file>;<group>`, as
/// Prometheus labels its `prometheus_rule_*` metrics).
#[derive(Clone)]
pub struct RuleMetrics {
    /// Rule evaluations.
    pub evaluations: CounterVec,
    /// Rule evaluations that failed (query error, refused result, or
    /// results not stored).
    pub failures: CounterVec,
    /// How long the group's last evaluation took.
    pub last_duration: GaugeVec,
}

impl RuleMetrics {
    /// Registers the metrics.
    pub fn register(r: &Registry) -> Self {
        RuleMetrics {
            evaluations: r.counter_vec(
                "nines_rule_evaluations_total",
                "Rule evaluations, by rule group.",
                &["rule_group"],
            ),
            failures: r.counter_vec(
                "nines_rule_evaluation_failures_total",
                "Rule evaluations that failed, by rule group.",
                &["rule_group"],
            ),
            last_duration: r.gauge_vec(
                "nines_rule_group_last_duration_seconds",
                "Time the rule group's last evaluation took.",
                &["rule_group"],
            ),
        }
    }
}

/// The loaded rule groups, shared by the evaluation loops and the API.
#[derive(Clone, Default)]
pub struct Rules {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    groups: RwLock<Vec<Arc<Mutex<Group>>>>,
    store: Option<Arc<StateStore>>,
    /// Where evaluated alerts go, with the external URL for their links.
    notify: std::sync::OnceLock<(crate::notify::AlertSink, String)>,
    /// What new loops need; set by [`Rules::spawn`].
    runtime: Mutex<Option<Runtime>>,
}

#[derive(Clone)]
struct Runtime {
    engine: Arc<Engine>,
    storage: Storage,
    metrics: RuleMetrics,
    stop: watch::Receiver<bool>,
}

fn lock(g: &Mutex<Group>) -> std::sync::MutexGuard<'_, Group> {
    g.lock().unwrap_or_else(|p| p.into_inner())
}

impl Rules {
    /// The groups, with alert state restored from `store` when given.
    pub fn new(specs: Vec<GroupSpec>, store: Option<StateStore>) -> Result<Rules, String> {
        let saved = match &store {
            Some(s) => {
                let keys: Vec<(String, String)> = specs
                    .iter()
                    .map(|g| (g.file.clone(), g.name.clone()))
                    .collect();
                s.retain_groups(&keys)
                    .map_err(|e| format!("{RULES_DB_FILE}: {e}"))?;
                s.load().map_err(|e| format!("{RULES_DB_FILE}: {e}"))?
            }
            None => Default::default(),
        };
        let groups = specs
            .into_iter()
            .map(|spec| {
                let mut g = Group::new(spec);
                g.restore(&saved);
                Arc::new(Mutex::new(g))
            })
            .collect();
        Ok(Rules {
            inner: Arc::new(Inner {
                groups: RwLock::new(groups),
                store: store.map(Arc::new),
                runtime: Mutex::new(None),
                notify: Default::default(),
            }),
        })
    }

    /// Loads `files` and opens the state store in `data_dir`.
    pub fn open(
        files: &[PathBuf],
        default_interval: Duration,
        data_dir: &Path,
    ) -> Result<Rules, String> {
        let specs = load_files(files, default_interval)?;
        let path = data_dir.join(RULES_DB_FILE);
        let store = StateStore::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Rules::new(specs, Some(store))
    }

    fn groups(&self) -> Vec<Arc<Mutex<Group>>> {
        self.inner
            .groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Hands each group's firing and resolved alerts to `sink` after every
    /// evaluation (set once, before [`Rules::spawn`]).
    pub fn notify_to(&self, sink: crate::notify::AlertSink, external_url: String) {
        let _ = self.inner.notify.set((sink, external_url));
    }

    /// A copy of every group as it is now.
    pub fn snapshot(&self) -> Vec<Group> {
        self.groups().iter().map(|g| lock(g).clone()).collect()
    }

    /// Adds, replaces (`spec` given) or removes (`None`) the group `name`
    /// of `file` while running. A replaced group keeps the saved state of
    /// the alerts it still has; a removed group's state is forgotten.
    /// Other groups are not touched.
    pub fn set_group(&self, file: &str, name: &str, spec: Option<GroupSpec>) -> Result<(), String> {
        let saved = match (&self.inner.store, &spec) {
            (Some(s), Some(_)) => s.load().map_err(|e| format!("{RULES_DB_FILE}: {e}"))?,
            _ => Default::default(),
        };
        let added = spec.map(|spec| {
            let mut g = Group::new(spec);
            g.restore(&saved);
            Arc::new(Mutex::new(g))
        });
        let mut gone = Vec::new();
        let keys = {
            let mut groups = self.inner.groups.write().unwrap_or_else(|p| p.into_inner());
            groups.retain(|g| {
                let g = lock(g);
                let hit = g.spec.file == file && g.spec.name == name;
                if hit {
                    gone.extend(g.written_series());
                }
                !hit
            });
            if let Some(g) = &added {
                groups.push(g.clone());
            }
            groups
                .iter()
                .map(|g| {
                    let g = lock(g);
                    (g.spec.file.clone(), g.spec.name.clone())
                })
                .collect::<Vec<_>>()
        };
        if let Some(s) = &self.inner.store {
            s.retain_groups(&keys)
                .map_err(|e| format!("{RULES_DB_FILE}: {e}"))?;
        }
        let runtime = self
            .inner
            .runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(rt) = &runtime {
            // What the old group wrote ends now, not after the lookback
            // (a replacement writes its own again at its first evaluation).
            let ts = UnixMillis::now().0;
            let stale: Vec<crate::storage::SeriesWrite> = gone
                .into_iter()
                .map(|labels| crate::storage::SeriesWrite {
                    labels,
                    samples: vec![(ts, f64::from_bits(crate::query::STALE_MARKER_BITS))],
                })
                .collect();
            if !stale.is_empty() {
                let storage = rt.storage.clone();
                tokio::spawn(async move {
                    if let Err(e) = storage.write_series(stale, Vec::new()).await {
                        tracing::warn!(error = %e, "stale markers of a removed rule group not stored");
                    }
                });
            }
        }
        if let (Some(g), Some(rt)) = (added, runtime) {
            // The handle is not kept: the loop ends with `stop` or when the
            // group is replaced.
            drop(self.spawn_loop(g, rt));
        }
        Ok(())
    }

    /// `/api/v1/rules` data.
    pub fn rules_json(&self) -> serde_json::Value {
        api::rules_json(&self.snapshot())
    }

    /// `/api/v1/alerts` data.
    pub fn alerts_json(&self) -> serde_json::Value {
        api::alerts_json(&self.snapshot())
    }

    /// Starts one evaluation loop per group; each ends when `stop` turns
    /// true (or when its group is replaced or removed). Groups added later
    /// with [`Rules::set_group`] get their own loop.
    pub fn spawn(
        &self,
        engine: Arc<Engine>,
        storage: Storage,
        metrics: RuleMetrics,
        stop: watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let rt = Runtime {
            engine,
            storage,
            metrics,
            stop,
        };
        *self.inner.runtime.lock().unwrap_or_else(|p| p.into_inner()) = Some(rt.clone());
        self.groups()
            .into_iter()
            .map(|g| self.spawn_loop(g, rt.clone()))
            .collect()
    }

    fn spawn_loop(&self, group: Arc<Mutex<Group>>, rt: Runtime) -> tokio::task::JoinHandle<()> {
        let rules = self.clone();
        let mut stop = rt.stop.clone();
        tokio::spawn(async move {
            let interval = lock(&group).spec.interval;
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    changed = stop.changed() => if changed.is_err() { break },
                }
                let current = rules.groups().iter().any(|g| Arc::ptr_eq(g, &group));
                if *stop.borrow() || !current {
                    break;
                }
                rules
                    .eval(
                        group.clone(),
                        UnixMillis::now().0,
                        &rt.engine,
                        &rt.storage,
                        &rt.metrics,
                    )
                    .await;
            }
        })
    }

    /// Evaluates group `i` once at `ts` (ms): each rule in order, its
    /// series written before the next rule runs (so later rules see them),
    /// then the alert state saved.
    pub async fn eval_group(
        &self,
        i: usize,
        ts: i64,
        engine: &Arc<Engine>,
        storage: &Storage,
        metrics: &RuleMetrics,
    ) {
        let Some(group) = self.groups().get(i).cloned() else {
            return;
        };
        self.eval(group, ts, engine, storage, metrics).await
    }

    async fn eval(
        &self,
        group: Arc<Mutex<Group>>,
        ts: i64,
        engine: &Arc<Engine>,
        storage: &Storage,
        metrics: &RuleMetrics,
    ) {
        let started = Instant::now();
        let (n, key) = {
            let g = lock(&group);
            (g.rules.len(), format!("{};{}", g.spec.file, g.spec.name))
        };
        let (evaluations, failures) = (
            metrics.evaluations.with(&[&key]),
            metrics.failures.with(&[&key]),
        );
        for r in 0..n {
            // The query runs without the group's lock, so the API never
            // waits behind a slow expression.
            let Some(expr) = lock(&group).expr(r) else {
                continue;
            };
            let (e, st) = (engine.clone(), storage.clone());
            let queried = tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                let result = group::query_rule(&expr, ts, &e, &st);
                (result, started.elapsed().as_secs_f64())
            })
            .await;
            let (result, seconds) = match queried {
                Ok(v) => v,
                Err(e) => (Err(format!("evaluation failed: {e}")), 0.0),
            };
            evaluations.inc();
            let (writes, healthy) = {
                let mut g = lock(&group);
                let w = g.apply(r, ts, result, seconds);
                (w, g.rules[r].health == Health::Ok)
            };
            if !healthy {
                failures.inc();
            }
            if writes.is_empty() {
                continue;
            }
            if let Err(e) = storage.write_series(writes, Vec::new()).await {
                failures.inc();
                let g = lock(&group);
                tracing::warn!(group = %g.spec.name, rule = %g.rules[r].kind_name(), error = %e,
                    "rule results not stored");
            }
        }
        if let Some((sink, url)) = self.inner.notify.get() {
            sink.offer(crate::notify::alerts_of(&lock(&group), url));
        }
        let (file, name, alerts) = {
            let mut g = lock(&group);
            g.last_evaluation_ms = ts;
            g.evaluation_seconds = started.elapsed().as_secs_f64();
            metrics
                .last_duration
                .with(&[&key])
                .set(g.evaluation_seconds);
            let alerts = g.alerts_to_save();
            if g.saved.as_ref() == Some(&alerts) {
                return;
            }
            g.saved = Some(alerts.clone());
            (g.spec.file.clone(), g.spec.name.clone(), alerts)
        };
        if let Some(store) = self.inner.store.clone() {
            let saved =
                tokio::task::spawn_blocking(move || store.save_group(&file, &name, &alerts)).await;
            if !matches!(saved, Ok(Ok(()))) {
                // Try again after the next evaluation.
                lock(&group).saved = None;
                tracing::warn!(error = ?saved, "alert state not saved to {RULES_DB_FILE}");
            }
        }
    }
}

impl Rule {
    /// The rule's `alert` or `record` name.
    pub fn kind_name(&self) -> &str {
        match &self.kind {
            RuleKind::Recording(r) => &r.record,
            RuleKind::Alerting(a) => &a.spec.alert,
        }
    }
}

#[cfg(test)]
mod tests;
