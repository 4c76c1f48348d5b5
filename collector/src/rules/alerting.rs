//! The alert state machine of one alerting rule, as Prometheus 2.42 runs
//! it: a series the expression returns becomes a pending alert, fires once
//! it has been active for `for`, keeps firing for `keep_firing_for` after
//! the series goes, then is resolved and kept 15 minutes for notification.
//!
//! Pure: it is given the query result and the evaluation time, so tests
//! drive it with a fake clock. It returns the `ALERTS` and
//! `ALERTS_FOR_STATE` samples to write.

use super::file::AlertingSpec;
use super::template::TemplateData;
use crate::query::InstantSample;
use nines_shared::{Label, Labels, METRIC_NAME_LABEL};
use std::collections::BTreeMap;

/// How long a resolved alert is kept (for notification), in ms.
pub const RESOLVED_RETENTION_MS: i64 = 15 * 60 * 1000;

/// An alert's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertState {
    /// Resolved (kept for a while after it stopped).
    Inactive,
    /// Active, waiting for `for` to pass.
    Pending,
    /// Active for at least `for`.
    Firing,
}

impl AlertState {
    /// As the API and the `alertstate` label spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Inactive => "inactive",
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
        }
    }

    /// The inverse of [`AlertState::as_str`].
    pub fn parse(s: &str) -> Option<AlertState> {
        Some(match s {
            "inactive" => AlertState::Inactive,
            "pending" => AlertState::Pending,
            "firing" => AlertState::Firing,
            _ => return None,
        })
    }
}

/// One alert: a label set the rule's expression returned.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// Series labels without `__name__`, plus rule labels and `alertname`.
    pub labels: Labels,
    /// Rendered annotations.
    pub annotations: BTreeMap<String, String>,
    /// Its state.
    pub state: AlertState,
    /// When it became pending (ms).
    pub active_at: i64,
    /// When it started firing (ms).
    pub fired_at: Option<i64>,
    /// When it was resolved (ms).
    pub resolved_at: Option<i64>,
    /// Since when it is kept firing without its series (ms).
    pub keep_firing_since: Option<i64>,
    /// The last value the expression gave.
    pub value: f64,
}

/// An alerting rule and its alerts, by label set.
#[derive(Debug, Clone)]
pub struct AlertingRule {
    /// The rule as loaded.
    pub spec: AlertingSpec,
    /// Alerts, pending, firing or recently resolved.
    pub active: BTreeMap<Labels, Alert>,
}

/// Labels as a map for templates.
fn label_map(labels: &Labels) -> BTreeMap<String, String> {
    labels
        .iter()
        .map(|l| (l.name.clone(), l.value.clone()))
        .collect()
}

fn to_labels(m: BTreeMap<String, String>) -> Labels {
    Labels::from_unsorted(
        m.into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(name, value)| Label { name, value })
            .collect(),
    )
}

impl AlertingRule {
    /// A rule with no alerts yet.
    pub fn new(spec: AlertingSpec) -> Self {
        AlertingRule {
            spec,
            active: BTreeMap::new(),
        }
    }

    /// The rule's state: firing if any alert fires, else pending if any is
    /// pending, else inactive.
    pub fn state(&self) -> AlertState {
        let mut s = AlertState::Inactive;
        for a in self.active.values() {
            match a.state {
                AlertState::Firing => return AlertState::Firing,
                AlertState::Pending => s = AlertState::Pending,
                AlertState::Inactive => {}
            }
        }
        s
    }

    /// Pending and firing alerts (not resolved ones).
    pub fn active_alerts(&self) -> impl Iterator<Item = &Alert> {
        self.active
            .values()
            .filter(|a| a.state != AlertState::Inactive)
    }

    /// Applies one evaluation's result at `ts` (ms). Returns the samples to
    /// write (`ALERTS`, `ALERTS_FOR_STATE`) or why the result is refused
    /// (the alerts are then left as they were, or cleared over `limit`).
    pub fn eval(
        &mut self,
        result: &[InstantSample],
        ts: i64,
        limit: usize,
    ) -> Result<Vec<(Labels, f64)>, String> {
        let empty = BTreeMap::new();
        let mut current: BTreeMap<Labels, (BTreeMap<String, String>, f64)> = BTreeMap::new();
        for s in result {
            let series = label_map(&s.labels);
            let data = TemplateData {
                labels: &series,
                value: s.v,
                external_labels: &empty,
                external_url: "",
            };
            let mut lb = series.clone();
            lb.remove(METRIC_NAME_LABEL);
            for (name, _, t) in &self.spec.labels {
                lb.insert(name.clone(), t.render(&data));
            }
            lb.insert("alertname".into(), self.spec.alert.clone());
            let labels = to_labels(lb);
            let annotations: BTreeMap<String, String> = self
                .spec
                .annotations
                .iter()
                .map(|(name, _, t)| (name.clone(), t.render(&data)))
                .collect();
            if current.insert(labels, (annotations, s.v)).is_some() {
                return Err(
                    "vector contains metrics with the same labelset after applying alert labels"
                        .into(),
                );
            }
        }

        for (labels, (annotations, value)) in &current {
            if let Some(a) = self.active.get_mut(labels) {
                if a.state != AlertState::Inactive {
                    a.value = *value;
                    a.annotations = annotations.clone();
                    continue;
                }
            }
            self.active.insert(
                labels.clone(),
                Alert {
                    labels: labels.clone(),
                    annotations: annotations.clone(),
                    state: AlertState::Pending,
                    active_at: ts,
                    fired_at: None,
                    resolved_at: None,
                    keep_firing_since: None,
                    value: *value,
                },
            );
        }

        let for_ms = self.spec.for_.as_millis() as i64;
        let keep_ms = self.spec.keep_firing_for.as_millis() as i64;
        let mut out = Vec::new();
        let mut active_count = 0usize;
        let keys: Vec<Labels> = self.active.keys().cloned().collect();
        for key in keys {
            let Some(a) = self.active.get_mut(&key) else {
                continue;
            };
            if !current.contains_key(&key) {
                let mut keep_firing = false;
                if a.state == AlertState::Firing && keep_ms > 0 {
                    let since = *a.keep_firing_since.get_or_insert(ts);
                    keep_firing = ts - since < keep_ms;
                }
                let expired = a
                    .resolved_at
                    .is_some_and(|r| ts - r > RESOLVED_RETENTION_MS);
                if a.state == AlertState::Pending || expired {
                    self.active.remove(&key);
                    continue;
                }
                if a.state != AlertState::Inactive && !keep_firing {
                    a.state = AlertState::Inactive;
                    a.resolved_at = Some(ts);
                }
                if !keep_firing {
                    continue;
                }
            } else {
                a.keep_firing_since = None;
            }
            active_count += 1;
            if a.state == AlertState::Pending && ts - a.active_at >= for_ms {
                a.state = AlertState::Firing;
                a.fired_at = Some(ts);
            }
            out.push((alerts_series(&a.labels, Some(a.state)), 1.0));
            out.push((alerts_series(&a.labels, None), (a.active_at / 1000) as f64));
        }
        if limit > 0 && active_count > limit {
            self.active.clear();
            return Err(format!(
                "exceeded limit of {limit} with {active_count} alerts"
            ));
        }
        Ok(out)
    }
}

/// The `ALERTS{alertstate=...}` series of an alert, or its
/// `ALERTS_FOR_STATE` series when `state` is `None`.
fn alerts_series(labels: &Labels, state: Option<AlertState>) -> Labels {
    let mut l = labels.clone();
    match state {
        Some(s) => {
            l.set(METRIC_NAME_LABEL, "ALERTS");
            l.set("alertstate", s.as_str());
        }
        None => l.set(METRIC_NAME_LABEL, "ALERTS_FOR_STATE"),
    }
    l
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::template::Template;
    use std::time::Duration;

    fn rule(for_s: u64, keep_s: u64) -> AlertingRule {
        let t = |s: &str| Template::parse(s).unwrap();
        AlertingRule::new(AlertingSpec {
            alert: "HighLoad".into(),
            expr: "load > 1".into(),
            for_: Duration::from_secs(for_s),
            keep_firing_for: Duration::from_secs(keep_s),
            labels: vec![("severity".into(), "page".into(), t("page"))],
            annotations: vec![(
                "summary".into(),
                String::new(),
                t("{{ $labels.instance }} at {{ $value }}"),
            )],
        })
    }

    fn sample(instance: &str, v: f64) -> InstantSample {
        InstantSample {
            labels: Labels::new("load", [("instance", instance)]),
            t: 0,
            v,
        }
    }

    fn only(r: &AlertingRule) -> &Alert {
        assert_eq!(r.active.len(), 1, "{:?}", r.active);
        r.active.values().next().unwrap()
    }

    #[test]
    fn pending_then_firing_after_for_then_resolved_and_forgotten() {
        let mut r = rule(2, 0);
        let t0 = 1_000_000;
        let out = r.eval(&[sample("a", 2.0)], t0, 0).unwrap();
        let a = only(&r);
        assert_eq!(a.state, AlertState::Pending);
        assert_eq!(a.active_at, t0);
        assert_eq!(a.labels.get("alertname"), Some("HighLoad"));
        assert_eq!(a.labels.get("severity"), Some("page"));
        assert_eq!(a.labels.metric_name(), None);
        assert_eq!(a.annotations["summary"], "a at 2");
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].0.metric_name(), Some("ALERTS"));
        assert_eq!(out[0].0.get("alertstate"), Some("pending"));
        assert_eq!(out[1].0.metric_name(), Some("ALERTS_FOR_STATE"));
        assert_eq!(out[1].1, 1000.0);
        assert_eq!(r.state(), AlertState::Pending);

        r.eval(&[sample("a", 3.0)], t0 + 1000, 0).unwrap();
        assert_eq!(only(&r).state, AlertState::Pending);
        assert_eq!(only(&r).annotations["summary"], "a at 3");
        let out = r.eval(&[sample("a", 3.0)], t0 + 2000, 0).unwrap();
        assert_eq!(only(&r).state, AlertState::Firing);
        assert_eq!(only(&r).fired_at, Some(t0 + 2000));
        assert_eq!(out[0].0.get("alertstate"), Some("firing"));
        assert_eq!(r.state(), AlertState::Firing);

        let out = r.eval(&[], t0 + 3000, 0).unwrap();
        assert!(out.is_empty());
        assert_eq!(only(&r).state, AlertState::Inactive);
        assert_eq!(only(&r).resolved_at, Some(t0 + 3000));
        assert_eq!(r.active_alerts().count(), 0);
        r.eval(&[], t0 + 3000 + RESOLVED_RETENTION_MS, 0).unwrap();
        assert_eq!(r.active.len(), 1, "kept 15m");
        r.eval(&[], t0 + 3001 + RESOLVED_RETENTION_MS, 0).unwrap();
        assert!(r.active.is_empty());
    }

    #[test]
    fn a_pending_alert_that_goes_away_is_dropped_and_restarts_later() {
        let mut r = rule(2, 0);
        r.eval(&[sample("a", 2.0)], 1000, 0).unwrap();
        r.eval(&[], 2000, 0).unwrap();
        assert!(r.active.is_empty());
        r.eval(&[sample("a", 2.0)], 3000, 0).unwrap();
        assert_eq!(only(&r).active_at, 3000);
    }

    #[test]
    fn zero_for_fires_at_once_and_a_resolved_alert_comes_back_pending() {
        let mut r = rule(0, 0);
        r.eval(&[sample("a", 2.0)], 1000, 0).unwrap();
        assert_eq!(only(&r).state, AlertState::Firing);
        r.eval(&[], 2000, 0).unwrap();
        assert_eq!(only(&r).state, AlertState::Inactive);
        r.eval(&[sample("a", 2.0)], 3000, 0).unwrap();
        let a = only(&r);
        assert_eq!(
            (a.state, a.active_at, a.resolved_at),
            (AlertState::Firing, 3000, None)
        );
    }

    #[test]
    fn keep_firing_for_holds_a_firing_alert() {
        let mut r = rule(0, 3);
        r.eval(&[sample("a", 2.0)], 1000, 0).unwrap();
        for t in [2000, 3000, 4000] {
            let out = r.eval(&[], t, 0).unwrap();
            assert_eq!(only(&r).state, AlertState::Firing, "at {t}");
            assert_eq!(only(&r).keep_firing_since, Some(2000));
            assert_eq!(out.len(), 2);
        }
        r.eval(&[], 5000, 0).unwrap();
        assert_eq!(only(&r).state, AlertState::Inactive);
        assert_eq!(only(&r).resolved_at, Some(5000));
        // Back before resolution: keep_firing_since is cleared.
        let mut r = rule(0, 3);
        r.eval(&[sample("a", 2.0)], 1000, 0).unwrap();
        r.eval(&[], 2000, 0).unwrap();
        r.eval(&[sample("a", 2.0)], 3000, 0).unwrap();
        assert_eq!(only(&r).keep_firing_since, None);
        assert_eq!(only(&r).active_at, 1000);
    }

    #[test]
    fn duplicate_label_sets_and_limits_are_errors() {
        let mut r = rule(0, 0);
        let dup = [
            InstantSample {
                labels: Labels::new("x", [("instance", "a")]),
                t: 0,
                v: 1.0,
            },
            InstantSample {
                labels: Labels::new("y", [("instance", "a")]),
                t: 0,
                v: 1.0,
            },
        ];
        let e = r.eval(&dup, 1000, 0).unwrap_err();
        assert!(e.contains("same labelset"), "{e}");
        assert!(r.active.is_empty());
        let e = r
            .eval(&[sample("a", 1.0), sample("b", 1.0)], 1000, 1)
            .unwrap_err();
        assert!(e.contains("exceeded limit of 1 with 2 alerts"), "{e}");
        assert!(r.active.is_empty());
    }
}
