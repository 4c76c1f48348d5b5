//! Service level objectives: definitions from the config file (`[[slo]]`)
//! and the API (kept in `slo.db`), an evaluator that writes the
//! `nines_slo_*` series every evaluation interval, the burn-rate and
//! budget alerts as rule groups for the rules evaluator, and availability
//! reports. Nothing here sends notifications or serves HTTP.
//!
//! - `spec` — definitions, validation, indicator kinds → PromQL.
//! - `eval` — one evaluation: SLI, missing data, budget, burn rates.
//! - `alerts` — the rule group of an SLO.
//! - `report` — availability over any past period.
//! - `store` — `slo.db`.

pub mod alerts;
pub mod eval;
pub mod report;
pub mod spec;
pub mod store;

pub use spec::{Slo, SloDefinition, SloError, Source};
pub use store::{SLO_DB_FILE, SloStore};

use crate::query::Engine;
use crate::rules::{AlertState, GroupSpec, RuleKind, Rules};
use crate::storage::{SeriesWrite, Storage};
use eval::Status;
use nines_shared::telemetry::{Counter, Gauge, Registry};
use nines_shared::{Labels, UnixMillis};
use serde_json::{Value as Json, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::watch;

struct Entry {
    slo: Arc<Slo>,
    status: Option<Status>,
}

struct Inner {
    entries: RwLock<BTreeMap<String, Entry>>,
    store: Option<SloStore>,
    rules: Rules,
    interval: Duration,
    /// Series written by the last evaluation, per SLO (for stale markers).
    written: Mutex<BTreeMap<String, BTreeSet<Labels>>>,
    /// Serialises API changes so the store, the map and the rule groups
    /// change together.
    change: tokio::sync::Mutex<()>,
}

/// The SLOs, shared by the evaluator and the API.
#[derive(Clone)]
pub struct Slos {
    inner: Arc<Inner>,
}

/// The evaluator's own metrics.
#[derive(Clone)]
pub struct SloMetrics {
    /// Evaluations of one SLO.
    pub evaluations: Counter,
    /// Evaluations with a failed query or unstored series.
    pub failures: Counter,
    /// How long the last round over every SLO took.
    pub last_duration: Gauge,
}

impl SloMetrics {
    /// Registers the metrics.
    pub fn register(r: &Registry) -> Self {
        SloMetrics {
            evaluations: r.counter("nines_slo_evaluations_total", "SLO evaluations."),
            failures: r.counter(
                "nines_slo_evaluation_failures_total",
                "SLO evaluations with a failed query or series not stored.",
            ),
            last_duration: r.gauge(
                "nines_slo_last_evaluation_duration_seconds",
                "Time the last evaluation of every SLO took.",
            ),
        }
    }
}

/// Why an API change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The definition is invalid (400).
    #[error("{0}")]
    Invalid(#[from] SloError),
    /// No such SLO (404).
    #[error("no SLO named {0:?}")]
    NotFound(String),
    /// The SLO comes from the config file (409).
    #[error("SLO {0:?} is defined in the config file; change it there")]
    FromConfig(String),
    /// Storing or scheduling failed (500).
    #[error("{0}")]
    Internal(String),
}

/// Loads the API-defined SLOs from `store` next to the config ones. A
/// stored SLO that no longer validates, or whose name the config now
/// uses, is skipped with a warning (and kept in the store).
pub fn load_all(config: &[Slo], store: Option<&SloStore>) -> Result<Vec<Slo>, String> {
    let mut out: Vec<Slo> = config.to_vec();
    if let Some(store) = store {
        for def in store.load().map_err(|e| e.to_string())? {
            if out.iter().any(|s| s.def.name == def.name) {
                tracing::warn!(slo = %def.name, "SLO from {SLO_DB_FILE} skipped: the config file defines one with the same name");
                continue;
            }
            match spec::validate(&def, Source::Api) {
                Ok(s) => out.push(s),
                Err(e) => {
                    tracing::warn!(slo = %def.name, error = %e, "SLO from {SLO_DB_FILE} skipped")
                }
            }
        }
    }
    Ok(out)
}

/// The alert rule groups of `slos`.
pub fn rule_groups(slos: &[Slo], interval: Duration) -> Result<Vec<GroupSpec>, String> {
    let mut out = Vec::new();
    for s in slos {
        out.extend(alerts::group(s, interval)?);
    }
    Ok(out)
}

/// Checks config-file definitions: each valid, names unique. The error
/// names the entry (`[[slo]] #n`), the field and the reason.
pub fn validate_config(defs: &[SloDefinition]) -> Result<Vec<Slo>, (usize, SloError)> {
    let mut out: Vec<Slo> = Vec::new();
    for (i, d) in defs.iter().enumerate() {
        let s = spec::validate(d, Source::Config).map_err(|e| (i, e))?;
        if out.iter().any(|o| o.def.name == s.def.name) {
            return Err((
                i,
                SloError {
                    field: "name".into(),
                    reason: format!("{:?} is used by an earlier [[slo]]", s.def.name),
                },
            ));
        }
        out.push(s);
    }
    Ok(out)
}

impl Slos {
    /// The SLOs (already loaded with [`load_all`]); their rule groups must
    /// already be in `rules`.
    pub fn new(slos: Vec<Slo>, store: Option<SloStore>, rules: Rules, interval: Duration) -> Slos {
        let entries = slos
            .into_iter()
            .map(|s| {
                (
                    s.def.name.clone(),
                    Entry {
                        slo: Arc::new(s),
                        status: None,
                    },
                )
            })
            .collect();
        Slos {
            inner: Arc::new(Inner {
                entries: RwLock::new(entries),
                store,
                rules,
                interval,
                written: Mutex::new(BTreeMap::new()),
                change: tokio::sync::Mutex::new(()),
            }),
        }
    }

    fn entries(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Entry>> {
        self.inner.entries.read().unwrap_or_else(|p| p.into_inner())
    }

    fn entries_mut(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Entry>> {
        self.inner
            .entries
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The SLO named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Slo>> {
        self.entries().get(name).map(|e| e.slo.clone())
    }

    /// Every SLO, as the API shows them.
    pub fn list_json(&self) -> Json {
        let groups = self.inner.rules.snapshot();
        Json::Array(
            self.entries()
                .values()
                .map(|e| entry_json(e, &groups))
                .collect(),
        )
    }

    /// One SLO as the API shows it.
    pub fn get_json(&self, name: &str) -> Option<Json> {
        let groups = self.inner.rules.snapshot();
        self.entries().get(name).map(|e| entry_json(e, &groups))
    }

    /// Creates (`replace` false) or replaces an API-defined SLO.
    pub async fn put(&self, def: SloDefinition, replace: bool) -> Result<(), ChangeError> {
        let _guard = self.inner.change.lock().await;
        let slo = spec::validate(&def, Source::Api)?;
        let name = slo.def.name.clone();
        match (self.get(&name), replace) {
            (Some(s), _) if s.source == Source::Config => {
                return Err(if replace {
                    ChangeError::FromConfig(name)
                } else {
                    SloError {
                        field: "name".into(),
                        reason: format!(
                            "an SLO named {name:?} already exists (in the config file)"
                        ),
                    }
                    .into()
                });
            }
            (Some(_), false) => {
                return Err(SloError {
                    field: "name".into(),
                    reason: format!("an SLO named {name:?} already exists"),
                }
                .into());
            }
            (None, true) => return Err(ChangeError::NotFound(name)),
            _ => {}
        }
        let group = alerts::group(&slo, self.inner.interval).map_err(ChangeError::Internal)?;
        if let Some(store) = &self.inner.store {
            store
                .put(&slo.def, UnixMillis::now().0)
                .map_err(|e| ChangeError::Internal(e.to_string()))?;
        }
        self.inner
            .rules
            .set_group(alerts::SLO_RULES_FILE, &name, group)
            .map_err(ChangeError::Internal)?;
        self.entries_mut().insert(
            name,
            Entry {
                slo: Arc::new(slo),
                status: None,
            },
        );
        Ok(())
    }

    /// Deletes an API-defined SLO, its alerts and (by stale markers at
    /// the next evaluation) its series.
    pub async fn delete(&self, name: &str) -> Result<(), ChangeError> {
        let _guard = self.inner.change.lock().await;
        match self.get(name) {
            None => return Err(ChangeError::NotFound(name.into())),
            Some(s) if s.source == Source::Config => {
                return Err(ChangeError::FromConfig(name.into()));
            }
            Some(_) => {}
        }
        if let Some(store) = &self.inner.store {
            store
                .delete(name)
                .map_err(|e| ChangeError::Internal(e.to_string()))?;
        }
        self.entries_mut().remove(name);
        self.inner
            .rules
            .set_group(alerts::SLO_RULES_FILE, name, None)
            .map_err(ChangeError::Internal)?;
        Ok(())
    }

    /// Starts the evaluator; it ends when `stop` turns true.
    pub fn spawn(
        &self,
        engine: Arc<Engine>,
        storage: Storage,
        metrics: SloMetrics,
        mut stop: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let slos = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(slos.inner.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    changed = stop.changed() => if changed.is_err() { break },
                }
                if *stop.borrow() {
                    break;
                }
                slos.evaluate_all(UnixMillis::now().0, &engine, &storage, &metrics)
                    .await;
            }
        })
    }

    /// Evaluates every SLO at `t` and writes their series (and stale
    /// markers for series that went away, deleted SLOs' included).
    pub async fn evaluate_all(
        &self,
        t: i64,
        engine: &Arc<Engine>,
        storage: &Storage,
        metrics: &SloMetrics,
    ) {
        let started = std::time::Instant::now();
        let list: Vec<Arc<Slo>> = self.entries().values().map(|e| e.slo.clone()).collect();
        let step = self.inner.interval.as_millis() as i64;
        let mut writes = Vec::new();
        let mut now_written: BTreeMap<String, BTreeSet<Labels>> = BTreeMap::new();
        for slo in list {
            let (e, st, s) = (engine.clone(), storage.clone(), slo.clone());
            let status =
                match tokio::task::spawn_blocking(move || eval::evaluate(&s, t, step, &e, &st))
                    .await
                {
                    Ok(v) => v,
                    Err(e) => {
                        metrics.failures.inc();
                        tracing::warn!(slo = %slo.def.name, error = %e, "SLO evaluation failed");
                        continue;
                    }
                };
            metrics.evaluations.inc();
            if !status.errors.is_empty() {
                metrics.failures.inc();
                tracing::warn!(slo = %slo.def.name, errors = ?status.errors, "SLO queries failed");
            }
            let samples = eval::series(&slo.def.name, slo.objective, &status);
            now_written.insert(
                slo.def.name.clone(),
                samples.iter().map(|(l, _)| l.clone()).collect(),
            );
            writes.extend(samples.into_iter().map(|(labels, v)| SeriesWrite {
                labels,
                samples: vec![(t, v)],
            }));
            if let Some(e) = self.entries_mut().get_mut(&slo.def.name) {
                if Arc::ptr_eq(&e.slo, &slo) {
                    e.status = Some(status);
                }
            }
        }
        {
            let mut written = self.inner.written.lock().unwrap_or_else(|p| p.into_inner());
            for (name, before) in written.iter() {
                let now = now_written.get(name);
                for gone in before
                    .iter()
                    .filter(|l| now.is_none_or(|n| !n.contains(*l)))
                {
                    writes.push(SeriesWrite {
                        labels: gone.clone(),
                        samples: vec![(t, f64::from_bits(crate::query::STALE_MARKER_BITS))],
                    });
                }
            }
            *written = now_written;
        }
        metrics.last_duration.set(started.elapsed().as_secs_f64());
        if writes.is_empty() {
            return;
        }
        if let Err(e) = storage.write_series(writes, Vec::new()).await {
            metrics.failures.inc();
            tracing::warn!(error = %e, "SLO series not stored");
        }
    }
}

fn num(v: Option<f64>) -> Json {
    match v {
        Some(x) if x.is_finite() => json!(x),
        _ => Json::Null,
    }
}

fn entry_json(e: &Entry, groups: &[crate::rules::Group]) -> Json {
    let s = &e.slo;
    let d = &s.def;
    let mut alerts = Vec::new();
    for g in groups
        .iter()
        .filter(|g| g.spec.file == alerts::SLO_RULES_FILE && g.spec.name == d.name)
    {
        for r in &g.rules {
            if let RuleKind::Alerting(a) = &r.kind {
                let severity = a
                    .spec
                    .labels
                    .iter()
                    .find(|l| l.0 == "severity")
                    .map(|l| l.1.clone())
                    .unwrap_or_default();
                let state = if r.last_evaluation_ms == 0 {
                    AlertState::Inactive
                } else {
                    a.state()
                };
                let mut alert = json!({
                    "name": a.spec.alert,
                    "severity": severity,
                    "state": state.as_str(),
                });
                // Burn-rate alerts share a name; their windows tell them apart.
                for (k, v, _) in &a.spec.labels {
                    if k == "long_window" || k == "short_window" {
                        alert[k] = json!(v);
                    }
                }
                alerts.push(alert);
            }
        }
    }
    let status = match &e.status {
        None => json!({
            "sli": null, "budget_total_ratio": 1.0 - s.objective,
            "budget_spent_ratio": null, "budget_remaining_ratio": null,
            "burn_rates": {}, "exhaustion_seconds": null, "missing_ratio": null,
            "alerts": alerts, "evaluated_at": null,
        }),
        Some(st) => {
            let burn: serde_json::Map<String, Json> = st
                .burn_rates
                .iter()
                .map(|(k, v)| (k.clone(), num(*v)))
                .collect();
            json!({
                "sli": num(st.sli),
                "budget_total_ratio": 1.0 - s.objective,
                "budget_spent_ratio": num(st.budget.map(|b| b.spent)),
                "budget_remaining_ratio": num(st.budget.map(|b| b.remaining)),
                "burn_rates": burn,
                "exhaustion_seconds": num(st.exhaustion_seconds),
                "missing_ratio": num(Some(st.missing_ratio)),
                "alerts": alerts,
                "evaluated_at": st.evaluated_at as f64 / 1000.0,
                "errors": st.errors,
            })
        }
    };
    let mut indicator = serde_json::to_value(&d.indicator).unwrap_or(Json::Null);
    if let Json::Object(m) = &mut indicator {
        m.retain(|_, v| !v.is_null());
    }
    let burn_alerts: Vec<Json> = s
        .burn_alerts
        .iter()
        .map(|a| {
            json!({
                "severity": a.severity, "long_window": a.long.1, "short_window": a.short.1,
                "factor": a.factor, "for": spec::duration_label(a.for_),
            })
        })
        .collect();
    json!({
        "name": d.name,
        "description": d.description,
        "source": s.source.as_str(),
        "objective": d.objective,
        "window": d.window.clone().unwrap_or_else(|| spec::DEFAULT_WINDOW.into()),
        "missing_data": d.missing_data.clone().unwrap_or_else(|| "excluded".into()),
        "indicator": indicator,
        "burn_alerts": burn_alerts,
        "budget_alert": s.budget_alert,
        "status": status,
    })
}
