//! One evaluation of one SLO at one instant: the indicator over the SLO
//! window and over each burn-rate window (PromQL through the [`Engine`]),
//! the share of time without data, the error budget and the time to its
//! exhaustion, and the `nines_slo_*` series that say so. Nothing here
//! writes to storage or keeps state between evaluations.

use super::spec::{Slo, promql_range};
use crate::query::querier::Querier;
use crate::query::{Engine, Value};
use nines_shared::Labels;
use std::collections::BTreeMap;

/// Most points the coverage subquery samples per window.
pub const COVERAGE_POINTS: i64 = 1440;

/// Budget figures from an SLI and an objective (both ratios).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    /// Share of events (or time) allowed to be bad: 1 - objective.
    pub total: f64,
    /// Share of the budget used: (1 - sli) / (1 - objective).
    pub spent: f64,
    /// 1 - spent (negative once overspent).
    pub remaining: f64,
}

/// Budget math for `sli` against `objective`.
pub fn budget(sli: f64, objective: f64) -> Budget {
    let total = 1.0 - objective;
    let spent = (1.0 - sli) / total;
    Budget {
        total,
        spent,
        remaining: 1.0 - spent,
    }
}

/// Burn rate: how many times faster than allowed the budget is spent.
pub fn burn_rate(sli: f64, objective: f64) -> f64 {
    (1.0 - sli) / (1.0 - objective)
}

/// Seconds until the budget is gone at `burn` (rate), for a window of
/// `window_seconds` whose whole budget is 1.0: 0 once spent, None when
/// nothing burns.
pub fn exhaustion_seconds(remaining: f64, burn: f64, window_seconds: f64) -> Option<f64> {
    if remaining <= 0.0 {
        Some(0.0)
    } else if burn > 0.0 {
        Some(remaining * window_seconds / burn)
    } else {
        None
    }
}

/// An SLO's state after an evaluation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Status {
    /// When (ms).
    pub evaluated_at: i64,
    /// The SLI over the window, missing data counted as configured.
    pub sli: Option<f64>,
    /// Budget figures (None without an SLI).
    pub budget: Option<Budget>,
    /// Burn rate per window label (None: no data and missing data
    /// excluded).
    pub burn_rates: BTreeMap<String, Option<f64>>,
    /// Seconds until the budget is gone at the current burn rate.
    pub exhaustion_seconds: Option<f64>,
    /// Share of the window without data.
    pub missing_ratio: f64,
    /// Query failures, if any.
    pub errors: Vec<String>,
}

/// The SLI over `range_ms` ending at `t`, before missing data is counted:
/// (good / total, or None when there were no events), and the share of
/// that range without data.
pub fn measure(
    slo: &Slo,
    t: i64,
    range_ms: i64,
    step_ms: i64,
    engine: &Engine,
    q: &dyn Querier,
    errors: &mut Vec<String>,
) -> (Option<f64>, f64) {
    let range = promql_range(range_ms);
    let mut scalar = |expr: String| -> Option<f64> {
        match engine.instant(q, &expr, t) {
            Ok(Value::Scalar(v)) => Some(v).filter(|v| !v.is_nan()),
            Ok(Value::Vector(v)) => v.first().map(|s| s.v).filter(|v| !v.is_nan()),
            Ok(_) => {
                errors.push(format!("{expr}: result is not a number"));
                None
            }
            Err(e) => {
                errors.push(format!("{expr}: {e}"));
                None
            }
        }
    };
    let good = scalar(slo.indicator.good_expr(&range));
    let total = scalar(slo.indicator.total_expr(&range));
    let sli = match (good, total) {
        (Some(g), Some(t)) if t > 0.0 => Some((g / t).clamp(0.0, 1.0)),
        _ => None,
    };
    let step = coverage_step(range_ms, step_ms);
    let points = (range_ms / step).max(1);
    let covered = scalar(
        slo.indicator
            .coverage_expr(&range, &promql_range(step), points),
    )
    .unwrap_or(0.0)
    .clamp(0.0, 1.0);
    (sli, 1.0 - covered)
}

/// The coverage subquery's step for a range: at least `step_ms` and 1 s,
/// at most [`COVERAGE_POINTS`] points, in whole seconds.
pub fn coverage_step(range_ms: i64, step_ms: i64) -> i64 {
    let s = step_ms.max(1000).max(range_ms / COVERAGE_POINTS);
    (s + 999) / 1000 * 1000
}

/// Evaluates `slo` at `t`; `step_ms` is the evaluation interval (the
/// finest coverage sampling).
pub fn evaluate(slo: &Slo, t: i64, step_ms: i64, engine: &Engine, q: &dyn Querier) -> Status {
    let mut errors = Vec::new();
    let (raw, missing) = measure(
        slo,
        t,
        slo.window.elapsed_ms(t),
        step_ms,
        engine,
        q,
        &mut errors,
    );
    let sli = slo.missing.blend(raw, missing);
    let mut burn_rates = BTreeMap::new();
    for (d, label) in slo.burn_windows() {
        let (raw, m) = measure(
            slo,
            t,
            d.as_millis() as i64,
            step_ms,
            engine,
            q,
            &mut errors,
        );
        let s = slo.missing.blend(raw, m);
        burn_rates.insert(label, s.map(|s| burn_rate(s, slo.objective)));
    }
    let b = sli.map(|s| budget(s, slo.objective));
    // The burn rate the budget is projected at: the fastest alert's long
    // window (1h by default).
    let reference = slo
        .burn_alerts
        .first()
        .map(|a| a.long.1.clone())
        .unwrap_or_else(|| "1h".into());
    let exhaustion = match (b, burn_rates.get(&reference).copied().flatten()) {
        (Some(b), Some(burn)) => {
            exhaustion_seconds(b.remaining, burn, slo.window.length_ms(t) as f64 / 1000.0)
        }
        (Some(b), None) if b.remaining <= 0.0 => Some(0.0),
        _ => None,
    };
    Status {
        evaluated_at: t,
        sli,
        budget: b,
        burn_rates,
        exhaustion_seconds: exhaustion,
        missing_ratio: missing,
        errors,
    }
}

/// The `nines_slo_*` samples for a status (values that are unknown are
/// left out).
pub fn series(name: &str, objective: f64, s: &Status) -> Vec<(Labels, f64)> {
    let l = |metric: &str| Labels::new(metric, [("slo", name)]);
    let mut out = vec![
        (l("nines_slo_objective_ratio"), objective),
        (l("nines_slo_missing_ratio"), s.missing_ratio),
    ];
    if let Some(v) = s.sli {
        out.push((l("nines_slo_sli_ratio"), v));
    }
    if let Some(b) = s.budget {
        out.push((l("nines_slo_error_budget_remaining_ratio"), b.remaining));
        out.push((l("nines_slo_error_budget_spent_ratio"), b.spent));
    }
    for (w, v) in &s.burn_rates {
        if let Some(v) = v {
            out.push((
                Labels::new(
                    "nines_slo_burn_rate",
                    [("slo", name), ("window", w.as_str())],
                ),
                *v,
            ));
        }
    }
    if let Some(v) = s.exhaustion_seconds {
        out.push((l("nines_slo_exhaustion_seconds"), v));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::in_memory::InMemoryQuerier;
    use crate::query::querier::SeriesSamples;
    use crate::slo::spec::{IndicatorDefinition, SloDefinition, Source, validate};

    #[test]
    fn budget_math() {
        let b = budget(0.998, 0.999);
        assert!((b.total - 0.001).abs() < 1e-12);
        assert!((b.spent - 2.0).abs() < 1e-9);
        assert!((b.remaining + 1.0).abs() < 1e-9);
        assert!((burn_rate(0.5, 0.9) - 5.0).abs() < 1e-12);
        assert_eq!(exhaustion_seconds(0.5, 2.0, 100.0), Some(25.0));
        assert_eq!(exhaustion_seconds(-0.1, 2.0, 100.0), Some(0.0));
        assert_eq!(exhaustion_seconds(0.5, 0.0, 100.0), None);
        assert_eq!(coverage_step(300_000, 10_000), 10_000);
        assert_eq!(coverage_step(30 * 86_400_000, 10_000), 1_800_000);
        assert_eq!(coverage_step(10_000, 100), 1000);
    }

    fn probe_slo(missing: &str) -> Slo {
        let def = SloDefinition {
            name: "home".into(),
            description: String::new(),
            objective: 90.0,
            window: Some("10m".into()),
            missing_data: Some(missing.into()),
            indicator: IndicatorDefinition {
                kind: "probe".into(),
                probe: Some("home".into()),
                ..Default::default()
            },
            burn_alerts: None,
            budget_alert: None,
        };
        validate(&def, Source::Config).unwrap()
    }

    /// A probe that runs every second from t0 - 5 min to t0, alternating
    /// success and failure.
    fn half_failing(t0: i64) -> InMemoryQuerier {
        let mut ok = Vec::new();
        let mut bad = Vec::new();
        for i in 0..=300i64 {
            let t = t0 - 300_000 + i * 1000;
            ok.push((t, (i / 2) as f64));
            bad.push((t, ((i + 1) / 2) as f64));
        }
        InMemoryQuerier::new(vec![
            SeriesSamples {
                labels: Labels::new("nines_probe_success_total", [("probe", "home")]),
                samples: ok,
            },
            SeriesSamples {
                labels: Labels::new(
                    "nines_probe_failure_total",
                    [("probe", "home"), ("reason", "http_status")],
                ),
                samples: bad,
            },
        ])
    }

    #[test]
    fn a_half_failing_probe_burns_five_times_a_90_percent_budget() {
        let t0 = 1_700_000_000_000;
        let q = half_failing(t0);
        let s = evaluate(&probe_slo("excluded"), t0, 10_000, &Engine::default(), &q);
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        let sli = s.sli.unwrap();
        assert!((sli - 0.5).abs() < 0.01, "{sli}");
        let burn = s.burn_rates["5m"].unwrap();
        assert!((burn - 5.0).abs() < 0.1, "{burn}");
        // Data covers the last 5 of the 10 minutes.
        assert!((s.missing_ratio - 0.5).abs() < 0.02, "{}", s.missing_ratio);
        assert!(s.budget.unwrap().remaining < 0.0);
        assert_eq!(s.exhaustion_seconds, Some(0.0));
        // Windows with no data at all have no burn rate when excluded...
        let late = t0 + 3 * 3_600_000;
        let s = evaluate(&probe_slo("excluded"), late, 10_000, &Engine::default(), &q);
        assert_eq!(s.burn_rates["1h"], None);
        assert_eq!(s.sli, None);
        assert_eq!(s.missing_ratio, 1.0);
        // ...and burn at the full rate when missing data counts as bad.
        let s = evaluate(&probe_slo("bad"), late, 10_000, &Engine::default(), &q);
        assert!((s.burn_rates["1h"].unwrap() - 10.0).abs() < 1e-9);
        assert_eq!(s.sli, Some(0.0));
        let names: Vec<String> = series("home", 0.9, &s)
            .iter()
            .map(|(l, _)| l.to_string())
            .collect();
        assert!(
            names
                .iter()
                .any(|n| n.contains("nines_slo_burn_rate") && n.contains("window=\"1h\"")),
            "{names:?}"
        );
    }

    #[test]
    fn missing_data_counted_as_good_raises_the_sli() {
        let t0 = 1_700_000_000_000;
        let q = half_failing(t0);
        let s = evaluate(&probe_slo("good"), t0, 10_000, &Engine::default(), &q);
        let sli = s.sli.unwrap();
        assert!((sli - 0.75).abs() < 0.02, "{sli}");
    }

    fn counter(name: &str, labels: &[(&str, &str)], t0: i64, per_second: f64) -> SeriesSamples {
        SeriesSamples {
            labels: Labels::new(name, labels.iter().copied()),
            samples: (0..=600i64)
                .map(|i| (t0 - 600_000 + i * 1000, i as f64 * per_second))
                .collect(),
        }
    }

    fn slo_of(indicator: IndicatorDefinition) -> Slo {
        let def = SloDefinition {
            name: "x".into(),
            description: String::new(),
            objective: 99.0,
            window: Some("5m".into()),
            missing_data: None,
            indicator,
            burn_alerts: None,
            budget_alert: None,
        };
        validate(&def, Source::Api).unwrap()
    }

    #[test]
    fn requests_and_latency_indicators_read_access_log_series() {
        let t0 = 1_700_000_000_000;
        let r = "nines_http_requests_total";
        let h = "nines_http_request_duration_seconds";
        // shop: 8 2xx and 2 5xx per second; other: only 5xx (left out).
        let q = InMemoryQuerier::new(vec![
            counter(r, &[("vhost", "shop"), ("status_class", "2xx")], t0, 8.0),
            counter(r, &[("vhost", "shop"), ("status_class", "5xx")], t0, 2.0),
            counter(r, &[("vhost", "other"), ("status_class", "5xx")], t0, 50.0),
            counter(
                &format!("{h}_bucket"),
                &[("vhost", "shop"), ("le", "0.25")],
                t0,
                9.0,
            ),
            counter(
                &format!("{h}_bucket"),
                &[("vhost", "shop"), ("le", "+Inf")],
                t0,
                10.0,
            ),
            counter(&format!("{h}_count"), &[("vhost", "shop")], t0, 10.0),
        ]);
        let requests = slo_of(IndicatorDefinition {
            kind: "requests".into(),
            matchers: Some("vhost=\"shop\"".into()),
            ..Default::default()
        });
        let s = evaluate(&requests, t0, 10_000, &Engine::default(), &q);
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        assert!((s.sli.unwrap() - 0.8).abs() < 1e-9, "{s:?}");
        assert!((s.burn_rates["5m"].unwrap() - 20.0).abs() < 1e-6);
        assert!(s.missing_ratio < 1e-9);
        let latency = slo_of(IndicatorDefinition {
            kind: "latency".into(),
            matchers: Some("vhost=\"shop\"".into()),
            threshold_seconds: Some(0.25),
            ..Default::default()
        });
        let s = evaluate(&latency, t0, 10_000, &Engine::default(), &q);
        assert!((s.sli.unwrap() - 0.9).abs() < 1e-9, "{s:?}");
    }
}
