//! A rule group at run time: its rules with their health, last error,
//! timings and alerts; one evaluation of one rule over a [`Querier`] gives
//! the series to write (results, `ALERTS`, and stale markers for series
//! that went away, as Prometheus writes them).

use super::alerting::{Alert, AlertingRule};
use super::file::{GroupSpec, RecordingSpec, RuleSpec};
use super::store::RuleKey;
use crate::query::querier::Querier;
use crate::query::{Engine, InstantSample, STALE_MARKER_BITS, Value};
use crate::storage::SeriesWrite;
use nines_shared::{Label, Labels, METRIC_NAME_LABEL};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

/// A rule's health, as the API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Not evaluated yet.
    Unknown,
    /// Last evaluation succeeded.
    Ok,
    /// Last evaluation failed.
    Err,
}

impl Health {
    /// `unknown`, `ok` or `err`.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Ok => "ok",
            Health::Err => "err",
        }
    }
}

/// What a rule does, with its own state.
#[derive(Debug, Clone)]
pub enum RuleKind {
    /// A recording rule.
    Recording(RecordingSpec),
    /// An alerting rule and its alerts.
    Alerting(AlertingRule),
}

/// One rule and how its last evaluation went.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The rule.
    pub kind: RuleKind,
    /// Its key in the state store.
    pub key: RuleKey,
    /// The expression as Prometheus prints it.
    pub query: String,
    /// Health of the last evaluation.
    pub health: Health,
    /// The last error, empty when healthy.
    pub last_error: String,
    /// When it was last evaluated (ms; 0 never).
    pub last_evaluation_ms: i64,
    /// How long that took.
    pub evaluation_seconds: f64,
    /// Series written by the last evaluation (for stale markers).
    written: BTreeSet<Labels>,
}

/// A group at run time.
#[derive(Debug, Clone)]
pub struct Group {
    /// Name, file, interval and limit.
    pub spec: GroupSpec,
    /// The rules, in order.
    pub rules: Vec<Rule>,
    /// When the group was last evaluated (ms; 0 never).
    pub last_evaluation_ms: i64,
    /// How long that took.
    pub evaluation_seconds: f64,
    /// The alerts last saved to the state store (to skip unchanged saves).
    pub saved: Option<Vec<(RuleKey, Vec<Alert>)>>,
}

impl Group {
    /// A group not evaluated yet.
    pub fn new(spec: GroupSpec) -> Group {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        let rules = spec
            .rules
            .iter()
            .map(|r| {
                let n = seen.entry(r.name().to_string()).or_default();
                let key = RuleKey {
                    file: spec.file.clone(),
                    group: spec.name.clone(),
                    alert: r.name().to_string(),
                    occurrence: *n,
                };
                *n += 1;
                let expr = match r {
                    RuleSpec::Recording(r) => &r.expr,
                    RuleSpec::Alerting(a) => &a.expr,
                };
                let query = promql_parser::parser::parse(expr)
                    .map(|e| e.to_string())
                    .unwrap_or_else(|_| expr.clone());
                Rule {
                    kind: match r {
                        RuleSpec::Recording(r) => RuleKind::Recording(r.clone()),
                        RuleSpec::Alerting(a) => RuleKind::Alerting(AlertingRule::new(a.clone())),
                    },
                    key,
                    query,
                    health: Health::Unknown,
                    last_error: String::new(),
                    last_evaluation_ms: 0,
                    evaluation_seconds: 0.0,
                    written: BTreeSet::new(),
                }
            })
            .collect();
        Group {
            spec,
            rules,
            last_evaluation_ms: 0,
            evaluation_seconds: 0.0,
            saved: None,
        }
    }

    /// The series the rules' last evaluations wrote (results and
    /// `ALERTS`), to mark stale when the group goes away.
    pub fn written_series(&self) -> Vec<Labels> {
        self.rules
            .iter()
            .flat_map(|r| r.written.iter().cloned())
            .collect()
    }

    /// Puts back alerts saved before a restart.
    pub fn restore(&mut self, saved: &BTreeMap<RuleKey, Vec<Alert>>) {
        for r in &mut self.rules {
            if let (RuleKind::Alerting(a), Some(list)) = (&mut r.kind, saved.get(&r.key)) {
                for alert in list {
                    a.active.insert(alert.labels.clone(), alert.clone());
                }
            }
        }
    }

    /// The alerts to persist, by rule.
    pub fn alerts_to_save(&self) -> Vec<(RuleKey, Vec<Alert>)> {
        self.rules
            .iter()
            .filter_map(|r| match &r.kind {
                RuleKind::Alerting(a) if !a.active.is_empty() => {
                    Some((r.key.clone(), a.active.values().cloned().collect()))
                }
                _ => None,
            })
            .collect()
    }

    /// Evaluates rule `i` at `ts` (ms) and returns the series to write: the
    /// query ([`query_rule`]) then its result applied ([`Group::apply`]).
    pub fn eval_rule(
        &mut self,
        i: usize,
        ts: i64,
        engine: &Engine,
        q: &dyn Querier,
    ) -> Vec<SeriesWrite> {
        let Some(expr) = self.expr(i) else {
            return Vec::new();
        };
        let started = Instant::now();
        let result = query_rule(&expr, ts, engine, q);
        self.apply(i, ts, result, started.elapsed().as_secs_f64())
    }

    /// Rule `i`'s expression.
    pub fn expr(&self, i: usize) -> Option<String> {
        self.rules.get(i).map(|r| match &r.kind {
            RuleKind::Recording(r) => r.expr.clone(),
            RuleKind::Alerting(a) => a.spec.expr.clone(),
        })
    }

    /// Applies rule `i`'s query result at `ts` and returns the series to
    /// write. A failure is recorded as the rule's health and error; stale
    /// markers are written only after a successful evaluation.
    pub fn apply(
        &mut self,
        i: usize,
        ts: i64,
        result: Result<Vec<InstantSample>, String>,
        seconds: f64,
    ) -> Vec<SeriesWrite> {
        let limit = self.spec.limit;
        let Some(rule) = self.rules.get_mut(i) else {
            return Vec::new();
        };
        let outcome = result.and_then(|vector| match &mut rule.kind {
            RuleKind::Recording(r) => record(r, &vector, limit),
            RuleKind::Alerting(a) => a.eval(&vector, ts, limit),
        });
        rule.evaluation_seconds = seconds;
        rule.last_evaluation_ms = ts;
        match outcome {
            Err(e) => {
                rule.health = Health::Err;
                rule.last_error = e;
                Vec::new()
            }
            Ok(samples) => {
                rule.health = Health::Ok;
                rule.last_error.clear();
                let now: BTreeSet<Labels> = samples.iter().map(|(l, _)| l.clone()).collect();
                let mut writes: Vec<SeriesWrite> = samples
                    .into_iter()
                    .map(|(labels, v)| SeriesWrite {
                        labels,
                        samples: vec![(ts, v)],
                    })
                    .collect();
                for gone in rule.written.difference(&now) {
                    writes.push(SeriesWrite {
                        labels: gone.clone(),
                        samples: vec![(ts, f64::from_bits(STALE_MARKER_BITS))],
                    });
                }
                rule.written = now;
                writes
            }
        }
    }
}

/// Runs a rule's expression at `ts`: an instant vector, or a scalar as a
/// one-element vector without labels, as Prometheus's rule query does.
pub fn query_rule(
    expr: &str,
    ts: i64,
    engine: &Engine,
    q: &dyn Querier,
) -> Result<Vec<InstantSample>, String> {
    match engine.instant(q, expr, ts).map_err(|e| e.to_string())? {
        Value::Vector(v) => Ok(v),
        Value::Scalar(v) => Ok(vec![InstantSample {
            labels: Labels::default(),
            t: ts,
            v,
        }]),
        _ => Err("rule result is not a vector or scalar".into()),
    }
}

/// A recording rule's output: each sample renamed to `record`, with the
/// rule's labels (an empty value removes a label).
fn record(
    spec: &RecordingSpec,
    vector: &[InstantSample],
    limit: usize,
) -> Result<Vec<(Labels, f64)>, String> {
    let mut out: BTreeMap<Labels, f64> = BTreeMap::new();
    for s in vector {
        let mut m: BTreeMap<String, String> = s
            .labels
            .iter()
            .map(|l| (l.name.clone(), l.value.clone()))
            .collect();
        m.insert(METRIC_NAME_LABEL.into(), spec.record.clone());
        for (k, v) in &spec.labels {
            m.insert(k.clone(), v.clone());
        }
        let labels = Labels::from_unsorted(
            m.into_iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(name, value)| Label { name, value })
                .collect(),
        );
        if out.insert(labels, s.v).is_some() {
            return Err(
                "vector contains metrics with the same labelset after applying rule labels".into(),
            );
        }
    }
    if limit > 0 && out.len() > limit {
        return Err(format!(
            "exceeded limit of {limit} with {} series",
            out.len()
        ));
    }
    Ok(out.into_iter().collect())
}
