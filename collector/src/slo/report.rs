//! Availability reports for any past period, computed from stored data:
//! availability (missing data counted as the SLO says), downtime minutes,
//! error budget spent, and incidents. Counter indicators are counted
//! exactly (raw counter increases between the last sample at or before
//! the start and the last at or before the end, resets handled), not
//! extrapolated as `increase()` does. Nothing here writes.

use super::eval::{budget, coverage_step};
use super::spec::{Indicator, MissingData, Slo, promql_range};
use crate::query::eval::selector_matchers;
use crate::query::querier::Querier;
use crate::query::{Engine, Value, is_stale_marker};

/// Shortest window an incident point is measured over.
pub const INCIDENT_MIN_WINDOW_MS: i64 = 60_000;

/// One period when the indicator was below the objective.
#[derive(Debug, Clone, PartialEq)]
pub struct Incident {
    /// Start (ms).
    pub start: i64,
    /// End (ms).
    pub end: i64,
}

/// A report for one SLO over `[start, end]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Period start (ms).
    pub start: i64,
    /// Period end (ms).
    pub end: i64,
    /// Good events (or up samples) counted.
    pub good: f64,
    /// All events (or samples) counted.
    pub total: f64,
    /// Share of the period without data.
    pub missing_ratio: f64,
    /// Good / total, missing data counted as configured (None without
    /// data and missing data excluded).
    pub availability: Option<f64>,
    /// (1 - availability) × the minutes counted.
    pub downtime_minutes: Option<f64>,
    /// Share of the period's error budget spent.
    pub budget_spent_ratio: Option<f64>,
    /// Steps of the incident scan (ms).
    pub step_ms: i64,
    /// Incidents, oldest first.
    pub incidents: Vec<Incident>,
}

/// Exact increase of the counters matching `selector` over `(start, end]`:
/// per series, from its last sample at or before `start` (within
/// `lookback_ms`; else its first sample in the period) to its last sample,
/// a drop counting as a reset.
pub fn counter_increase(
    q: &dyn Querier,
    selector: &str,
    start: i64,
    end: i64,
    lookback_ms: i64,
) -> Result<f64, String> {
    let expr = promql_parser::parser::parse(selector).map_err(|e| e.to_string())?;
    let promql_parser::parser::Expr::VectorSelector(vs) = expr else {
        return Err(format!("{selector} is not a selector"));
    };
    let series = q
        .select(&selector_matchers(&vs), start - lookback_ms, end)
        .map_err(|e| e.to_string())?;
    let mut sum = 0.0;
    for s in series {
        let mut prev: Option<f64> = None;
        let samples = s
            .samples
            .iter()
            .filter(|(_, v)| !is_stale_marker(*v) && !v.is_nan());
        for &(t, v) in samples {
            if t <= start {
                prev = Some(v);
                continue;
            }
            match prev {
                Some(p) if v >= p => sum += v - p,
                Some(_) => sum += v,
                None => {}
            }
            prev = Some(v);
        }
    }
    Ok(sum)
}

/// Sum and count of the samples of `selector` in `(start, end]`.
fn sample_sum_count(
    q: &dyn Querier,
    selector: &str,
    start: i64,
    end: i64,
) -> Result<(f64, f64), String> {
    let expr = promql_parser::parser::parse(selector).map_err(|e| e.to_string())?;
    let promql_parser::parser::Expr::VectorSelector(vs) = expr else {
        return Err(format!("{selector} is not a selector"));
    };
    let mut out = (0.0, 0.0);
    for s in q
        .select(&selector_matchers(&vs), start + 1, end)
        .map_err(|e| e.to_string())?
    {
        for &(_, v) in &s.samples {
            if !v.is_nan() {
                out.0 += v;
                out.1 += 1.0;
            }
        }
    }
    Ok(out)
}

fn scalar(engine: &Engine, q: &dyn Querier, expr: &str, t: i64) -> Result<Option<f64>, String> {
    match engine
        .instant(q, expr, t)
        .map_err(|e| format!("{expr}: {e}"))?
    {
        Value::Scalar(v) => Ok(Some(v).filter(|v| !v.is_nan())),
        Value::Vector(v) => Ok(v.first().map(|s| s.v).filter(|v| !v.is_nan())),
        _ => Err(format!("{expr}: result is not a number")),
    }
}

/// Good and total over `(start, end]`.
fn counts(
    slo: &Slo,
    start: i64,
    end: i64,
    engine: &Engine,
    q: &dyn Querier,
) -> Result<(f64, f64), String> {
    let lb = engine.lookback_ms;
    match &slo.indicator {
        Indicator::Counters { good, bad, total } => {
            let inc = |s: &Option<String>| -> Result<Option<f64>, String> {
                s.as_deref()
                    .map(|s| counter_increase(q, s, start, end, lb))
                    .transpose()
            };
            let (g, b, t) = (inc(good)?, inc(bad)?, inc(total)?);
            let total = t.unwrap_or(g.unwrap_or(0.0) + b.unwrap_or(0.0));
            let good = g.unwrap_or(total - b.unwrap_or(0.0));
            Ok((good, total))
        }
        Indicator::Host { up } => sample_sum_count(q, up, start, end),
        Indicator::Ratio { .. } => {
            let range = promql_range(end - start);
            let g = scalar(engine, q, &slo.indicator.good_expr(&range), end)?;
            let t = scalar(engine, q, &slo.indicator.total_expr(&range), end)?;
            Ok((g.unwrap_or(0.0), t.unwrap_or(0.0)))
        }
    }
}

/// The report for `slo` over `[start, end]` (ms, start < end).
pub fn report(
    slo: &Slo,
    start: i64,
    end: i64,
    engine: &Engine,
    q: &dyn Querier,
) -> Result<Report, String> {
    let range_ms = end - start;
    let (good, total) = counts(slo, start, end, engine, q)?;
    let raw = (total > 0.0).then(|| (good / total).clamp(0.0, 1.0));
    let step = coverage_step(range_ms, 1000);
    let points = (range_ms / step).max(1);
    let covered = scalar(
        engine,
        q,
        &slo.indicator
            .coverage_expr(&promql_range(range_ms), &promql_range(step), points),
        end,
    )?
    .unwrap_or(0.0)
    .clamp(0.0, 1.0);
    let missing = 1.0 - covered;
    let availability = slo.missing.blend(raw, missing);
    let counted = if slo.missing == MissingData::Excluded {
        1.0 - missing
    } else {
        1.0
    };
    let minutes = range_ms as f64 / 60_000.0;
    let incidents = incidents(slo, start, end, step, engine, q)?;
    Ok(Report {
        start,
        end,
        good,
        total,
        missing_ratio: missing,
        availability,
        downtime_minutes: availability.map(|a| (1.0 - a) * minutes * counted),
        budget_spent_ratio: availability.map(|a| budget(a, slo.objective).spent),
        step_ms: step,
        incidents,
    })
}

/// Periods when the error ratio, measured every `step` over the last
/// max(step, 1m), was above the budget (1 - objective); a step without
/// data counts as bad only when missing data does.
fn incidents(
    slo: &Slo,
    start: i64,
    end: i64,
    step: i64,
    engine: &Engine,
    q: &dyn Querier,
) -> Result<Vec<Incident>, String> {
    let w = promql_range(step.max(INCIDENT_MIN_WINDOW_MS));
    let expr = format!(
        "1 - ({}) / ({})",
        slo.indicator.good_expr(&w),
        slo.indicator.total_expr(&w)
    );
    let first = start + step;
    if first > end {
        return Ok(Vec::new());
    }
    let value = engine
        .range(q, &expr, first, end, step)
        .map_err(|e| format!("{expr}: {e}"))?;
    let Value::Matrix(m) = value else {
        return Err(format!("{expr}: result is not a range"));
    };
    let samples: std::collections::BTreeMap<i64, f64> = m
        .first()
        .map(|s| s.samples.iter().copied().collect())
        .unwrap_or_default();
    Ok(bad_runs(slo, &samples, first, end, step))
}

/// Turns the error ratio per step into incidents.
fn bad_runs(
    slo: &Slo,
    samples: &std::collections::BTreeMap<i64, f64>,
    first: i64,
    end: i64,
    step: i64,
) -> Vec<Incident> {
    let allowed = 1.0 - slo.objective;
    let mut out = Vec::new();
    let mut open: Option<i64> = None;
    let mut t = first;
    while t <= end {
        let bad = match samples.get(&t) {
            Some(e) if e.is_finite() => *e > allowed + 1e-12,
            _ => slo.missing == MissingData::Bad,
        };
        match (bad, open) {
            (true, None) => open = Some((t - step).max(first - step)),
            (false, Some(s)) => {
                out.push(Incident { start: s, end: t });
                open = None;
            }
            _ => {}
        }
        t += step;
    }
    if let Some(s) = open {
        out.push(Incident { start: s, end });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::in_memory::InMemoryQuerier;
    use crate::query::querier::SeriesSamples;
    use crate::slo::spec::{IndicatorDefinition, SloDefinition, Source, validate};
    use nines_shared::Labels;

    fn slo() -> Slo {
        let def = SloDefinition {
            name: "home".into(),
            description: String::new(),
            objective: 90.0,
            window: None,
            missing_data: None,
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

    #[test]
    fn counter_increase_is_exact_and_survives_resets() {
        let q = InMemoryQuerier::new(vec![SeriesSamples {
            labels: Labels::new("c_total", [("a", "1")]),
            samples: vec![(1000, 5.0), (2000, 7.0), (3000, 2.0), (4000, 4.0)],
        }]);
        // From 5 at t=1000: +2, reset to 2 (+2), +2.
        assert_eq!(
            counter_increase(&q, "c_total", 1000, 4000, 300_000).unwrap(),
            6.0
        );
        // Starting inside: the first sample in the period is the base.
        assert_eq!(
            counter_increase(&q, "c_total", 500, 2000, 300).unwrap(),
            2.0
        );
        assert_eq!(
            counter_increase(&q, "c_total{a=\"2\"}", 0, 4000, 300_000).unwrap(),
            0.0
        );
    }

    #[test]
    fn an_outage_in_the_middle_is_one_incident_and_counts_exactly() {
        // One attempt per second for 30 minutes; minutes 10-19 all fail.
        let t0 = 1_700_000_000_000i64;
        let (mut ok, mut bad) = (Vec::new(), Vec::new());
        let (mut g, mut b) = (0.0, 0.0);
        for i in 0..=1800i64 {
            if (600..1200).contains(&i) {
                b += 1.0;
            } else if i > 0 {
                g += 1.0;
            }
            ok.push((t0 + i * 1000, g));
            bad.push((t0 + i * 1000, b));
        }
        let q = InMemoryQuerier::new(vec![
            SeriesSamples {
                labels: Labels::new("nines_probe_success_total", [("probe", "home")]),
                samples: ok,
            },
            SeriesSamples {
                labels: Labels::new(
                    "nines_probe_failure_total",
                    [("probe", "home"), ("reason", "x")],
                ),
                samples: bad,
            },
        ]);
        let r = report(&slo(), t0, t0 + 1_800_000, &Engine::default(), &q).unwrap();
        assert_eq!((r.good, r.total), (1200.0, 1800.0));
        assert!((r.availability.unwrap() - 1200.0 / 1800.0).abs() < 1e-12);
        assert!(r.missing_ratio < 0.01, "{}", r.missing_ratio);
        assert_eq!(r.incidents.len(), 1, "{:?}", r.incidents);
        let i = &r.incidents[0];
        // The one-minute measuring window crosses the 10% budget 6 s into
        // the outage and leaves it 54 s after; within a step of that.
        assert!((i.start - (t0 + 606_000)).abs() <= r.step_ms, "{i:?}");
        assert!(
            i.end >= t0 + 1_200_000 && i.end <= t0 + 1_200_000 + 60_000 + r.step_ms,
            "{i:?}"
        );
        let downtime = r.downtime_minutes.unwrap();
        assert!((downtime - 10.0).abs() < 0.2, "{downtime}");
        assert!((r.budget_spent_ratio.unwrap() - (1.0 / 3.0) / 0.1).abs() < 0.05);
    }
}
