//! Subqueries `expr[range:step]`: evaluate an instant-vector expression at
//! steps aligned to absolute multiples of the step, over the window ending
//! at the evaluation (or `@`) time minus the offset, giving a range vector.
//!
//! As Prometheus 2.42: the first inner step is the first multiple of the
//! step at or after `t - offset - range` (the window is closed on the left
//! like a range selector's), the last the last multiple at or before
//! `t - offset`, and the step defaults to the engine's default evaluation
//! interval of one minute. Each inner step is evaluated once per query,
//! however many outer steps' windows contain it; inner selectors load
//! their data once for the whole span of inner steps. Nothing here reads
//! storage directly.

use std::collections::BTreeMap;

use nines_shared::Labels;
use promql_parser::parser::{Expr, SubqueryExpr};

use super::error::QueryError;
use super::eval::{Evaluator, duration_ms, offset_ms};
use super::over_time::Window;
use super::value::{InstantSample, RangeSeries, Value, is_stale_marker};

/// The step of a subquery written without one (`x[5m:]`): Prometheus's
/// default global evaluation interval, 1 minute.
pub(crate) const DEFAULT_SUBQUERY_STEP_MS: i64 = 60_000;

/// The first multiple of `step` at or after `t`.
pub(crate) fn align_up(t: i64, step: i64) -> i64 {
    let down = t.div_euclid(step).saturating_mul(step);
    if down < t {
        down.saturating_add(step)
    } else {
        down
    }
}

/// The first and last time the inner expression of `sq` (whose step is
/// `step` ms) can be evaluated at when the outer evaluation times run from
/// `outer.0` to `outer.1`: from the first multiple of the step at or after
/// `first - offset - range` to `last - offset`.
pub(crate) fn inner_span(sq: &SubqueryExpr, step: i64, (first, last): (i64, i64)) -> (i64, i64) {
    let offset = offset_ms(sq.offset.as_ref());
    let range = duration_ms(sq.range);
    (
        align_up(first.saturating_sub(offset).saturating_sub(range), step),
        last.saturating_sub(offset),
    )
}

impl Evaluator<'_> {
    /// The subquery's range vector at evaluation time `t`, and the window
    /// it covers (for the functions that extrapolate to its edges).
    pub(super) fn eval_subquery(
        &mut self,
        sq: &SubqueryExpr,
        t: i64,
    ) -> Result<(Vec<RangeSeries>, Window), QueryError> {
        let range = duration_ms(sq.range);
        let step = sq.step.map_or(DEFAULT_SUBQUERY_STEP_MS, duration_ms);
        if step <= 0 {
            return Err(QueryError::Unsupported(format!(
                "subquery {sq} with a zero step is not supported"
            )));
        }
        let offset = offset_ms(sq.offset.as_ref());
        let pinned = self.pinned_time(sq.at.as_ref())?;
        let end = pinned.unwrap_or(t).saturating_sub(offset);
        let window = Window {
            start: end.saturating_sub(range),
            end,
            range_ms: range,
        };

        // Every step any outer evaluation can ask for, so inner selectors
        // load once for all of them.
        let outer = match pinned {
            Some(p) => (p, p),
            None => self.span,
        };
        let inner_span = inner_span(sq, step, outer);
        let outer_span = std::mem::replace(&mut self.span, inner_span);
        let result = self.subquery_steps_in(sq, window, step);
        self.span = outer_span;
        Ok((result?, window))
    }

    /// A subquery that is the whole expression of an instant query (its
    /// answer is the range vector itself). As [`Self::eval_subquery`],
    /// but with a quirk of Prometheus 2.42 kept: when the inner expression
    /// is step invariant (see [`is_step_invariant`]) Prometheus evaluates it
    /// once at the first aligned step and copies it to the others; its
    /// step count, `(end - first) / step + 1` in Go's truncating division,
    /// is 1 even when the first aligned step lies after the window's end
    /// (a range shorter than the distance to the next multiple of the
    /// step). So `vector(1)[1ms:]` at 10:00:30 has one point, at 10:01:00.
    /// Inside a function the point is never in a window, so only the
    /// outermost subquery shows it.
    pub(super) fn eval_outermost_subquery(
        &mut self,
        sq: &SubqueryExpr,
        t: i64,
    ) -> Result<Value, QueryError> {
        let (series, window) = self.eval_subquery(sq, t)?;
        let step = sq.step.map_or(DEFAULT_SUBQUERY_STEP_MS, duration_ms);
        let first = align_up(window.start, step);
        if first <= window.end || !is_step_invariant(&sq.expr) {
            return Ok(Value::Matrix(series));
        }
        let outer_span = std::mem::replace(&mut self.span, (first, first));
        let samples = self.inner_step(sq, first);
        self.span = outer_span;
        Ok(Value::Matrix(
            samples?
                .into_iter()
                .filter(|s| !is_stale_marker(s.v))
                .map(|s| RangeSeries {
                    labels: s.labels,
                    samples: vec![(first, s.v)],
                })
                .collect(),
        ))
    }

    /// The inner expression's samples at one step.
    fn inner_step(&mut self, sq: &SubqueryExpr, ti: i64) -> Result<Vec<InstantSample>, QueryError> {
        Ok(match self.eval(&sq.expr, ti)? {
            Value::Vector(v) => v,
            Value::Scalar(v) => vec![InstantSample {
                labels: Labels::default(),
                t: ti,
                v,
            }],
            other => {
                return Err(QueryError::Unsupported(format!(
                    "subquery over a {} is not supported",
                    other.documented_type()
                )));
            }
        })
    }

    /// The inner expression at each step in the window, grouped by series.
    fn subquery_steps_in(
        &mut self,
        sq: &SubqueryExpr,
        window: Window,
        step: i64,
    ) -> Result<Vec<RangeSeries>, QueryError> {
        let node = std::ptr::from_ref(sq) as usize;
        let mut series: BTreeMap<Labels, Vec<(i64, f64)>> = BTreeMap::new();
        let mut ti = align_up(window.start, step);
        while ti <= window.end {
            let key = (node, ti);
            if !self.subquery_steps.contains_key(&key) {
                let samples = self.inner_step(sq, ti)?;
                // Every step costs at least one sample, so a huge range
                // over a tiny step hits the limit instead of running on.
                self.charge(samples.len().max(1))?;
                self.subquery_steps.insert(key, samples);
            }
            if let Some(samples) = self.subquery_steps.get(&key) {
                for s in samples.iter().filter(|s| !is_stale_marker(s.v)) {
                    series.entry(s.labels.clone()).or_default().push((ti, s.v));
                }
            }
            match ti.checked_add(step) {
                Some(next) => ti = next,
                None => break,
            }
        }
        Ok(series
            .into_iter()
            .map(|(labels, samples)| RangeSeries { labels, samples })
            .collect())
    }
}

/// Functions whose value depends on the evaluation time even when their
/// arguments do not (Prometheus's `AtModifierUnsafeFunctions`).
const TIME_DEPENDENT_FUNCTIONS: &[&str] = &[
    "days_in_month",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "hour",
    "minute",
    "month",
    "year",
    "predict_linear",
    "time",
    "timestamp",
];

/// Whether Prometheus 2.42 treats `e` as step invariant (its
/// `preprocessExpr`): literals, selectors and subqueries pinned with `@`,
/// and calls, operators and aggregations of only such, except the
/// time-dependent functions.
pub(crate) fn is_step_invariant(e: &Expr) -> bool {
    match e {
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => true,
        Expr::VectorSelector(vs) => vs.at.is_some(),
        Expr::MatrixSelector(ms) => ms.vs.at.is_some(),
        Expr::Subquery(sq) => sq.at.is_some(),
        Expr::Paren(p) => is_step_invariant(&p.expr),
        Expr::Unary(u) => is_step_invariant(&u.expr),
        Expr::Binary(b) => is_step_invariant(&b.lhs) && is_step_invariant(&b.rhs),
        Expr::Aggregate(a) => is_step_invariant(&a.expr),
        Expr::Call(c) => {
            !TIME_DEPENDENT_FUNCTIONS.contains(&c.func.name)
                && c.args.args.iter().all(|a| is_step_invariant(a))
        }
        Expr::Extension(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

    #[test]
    fn alignment_rounds_up_to_a_multiple() {
        assert_eq!(align_up(0, 60), 0);
        assert_eq!(align_up(1, 60), 60);
        assert_eq!(align_up(60, 60), 60);
        assert_eq!(align_up(-90, 60), -60);
        assert_eq!(align_up(-120, 60), -120);
    }

    fn counter() -> super::super::in_memory::InMemoryQuerier {
        // A counter growing by 10 every 15s, from T - 20m on.
        store(vec![(
            labels("x", &[("job", "a")]),
            every(T - 20 * MIN, 15 * SEC, 160, |i| 10.0 * i as f64),
        )])
    }

    #[test]
    fn steps_are_aligned_to_multiples_of_the_step_and_the_window_is_closed() {
        let q = counter();
        // At an aligned time: 6 steps, both edges included.
        let m = matrix(&q, "x[5m:1m]", T);
        let times: Vec<i64> = m[0].samples.iter().map(|s| (s.0 - T) / MIN).collect();
        assert_eq!(times, vec![-5, -4, -3, -2, -1, 0]);
        // The inner result keeps the series' labels, name included.
        assert_eq!(m[0].labels, labels("x", &[("job", "a")]));
        // 30s later the window (T-4m30s, T+30s] starts after T-5m.
        let m = matrix(&q, "x[5m:1m]", T + 30 * SEC);
        let times: Vec<i64> = m[0].samples.iter().map(|s| (s.0 - T) / MIN).collect();
        assert_eq!(times, vec![-4, -3, -2, -1, 0]);
        // Values are the inner expression at each step: x at T-1m is
        // sample 76 (T-20m + 76 × 15s), so 760.
        assert_eq!(m[0].samples[3].1, 760.0);
    }

    #[test]
    fn offset_and_at_move_the_window() {
        let q = counter();
        let m = matrix(&q, "x[2m:1m] offset 3m", T);
        let times: Vec<i64> = m[0].samples.iter().map(|s| (s.0 - T) / MIN).collect();
        assert_eq!(times, vec![-5, -4, -3]);
        let at = (T - 10 * MIN) / 1000;
        let m = matrix(&q, &format!("x[1m:30s] @ {at}"), T + 7 * MIN);
        assert_eq!(
            m[0].samples,
            vec![
                (T - 11 * MIN, 360.0),
                (T - 10 * MIN - 30 * SEC, 380.0),
                (T - 10 * MIN, 400.0)
            ]
        );
    }

    #[test]
    fn endless_subqueries_hit_the_sample_limit() {
        let q = counter();
        let engine = super::super::Engine {
            max_samples: 10_000,
            ..super::super::Engine::default()
        };
        assert!(matches!(
            engine.instant(&q, "nothing[10y:1s]", T),
            Err(QueryError::TooManySamples { limit: 10_000 })
        ));
    }

    #[test]
    fn outermost_step_invariant_subquery_keeps_prometheus_s_lone_point() {
        let q = counter();
        // At T + 30s the window [T + 30s - 1ms, T + 30s] holds no multiple
        // of 1m; Prometheus 2.42 still answers one point at T + 1m for a
        // step-invariant inner expression.
        let m = matrix(&q, "vector(1)[1ms:]", T + 30 * SEC);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].samples, vec![(T + MIN, 1.0)]);
        let at = T / 1000;
        let m = matrix(&q, &format!("(x @ {at})[1ms:]"), T + 30 * SEC);
        assert_eq!(m[0].samples, vec![(T + MIN, 800.0)]);
        // Not for an expression that varies per step, nor inside a function.
        assert!(matrix(&q, "x[1ms:]", T + 30 * SEC).is_empty());
        assert!(matrix(&q, "vector(time())[1ms:]", T + 30 * SEC).is_empty());
        assert!(vector(&q, "count_over_time(vector(1)[1ms:])", T + 30 * SEC).is_empty());
        // At an aligned time the point is at T, as for any subquery.
        assert_eq!(matrix(&q, "vector(1)[1ms:]", T)[0].samples, vec![(T, 1.0)]);
    }

    #[test]
    fn step_invariance_follows_prometheus() {
        let inv = |e: &str| is_step_invariant(&promql_parser::parser::parse(e).unwrap());
        assert!(inv("vector(1)"));
        assert!(inv("sum(x @ 100) + 1"));
        assert!(inv("rate(x[5m] @ end())"));
        assert!(inv("max_over_time(x[5m:1m] @ 100)"));
        assert!(!inv("x"));
        assert!(!inv("vector(time())"));
        assert!(!inv("timestamp(x @ 100)"));
        assert!(!inv("x[5m:1m]"));
        assert!(!inv("sum(x @ 100) + x"));
    }

    #[test]
    fn default_step_is_one_minute() {
        let q = counter();
        assert_eq!(matrix(&q, "x[3m:]", T)[0].samples.len(), 4);
    }

    #[test]
    fn max_over_time_of_a_rate_subquery() {
        // The counter's rate is 10/15s; a reset at T - 3m changes it for
        // the windows that contain it.
        let mut samples = every(T - 20 * MIN, 15 * SEC, 160, |i| 10.0 * i as f64);
        for s in samples.iter_mut().filter(|s| s.0 >= T - 3 * MIN) {
            // After the reset, the counter grows twice as fast from 0.
            s.1 = 20.0 * ((s.0 - (T - 3 * MIN)) / (15 * SEC)) as f64;
        }
        let q = store(vec![(labels("x", &[("job", "a")]), samples)]);
        let v = vector(&q, "max_over_time(rate(x[1m])[5m:1m])", T);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].labels, unnamed(&[("job", "a")]));
        // Windows ending T-2m..T lie wholly after the reset: rate 20/15s.
        assert_close(v[0].v, 20.0 / 15.0, "max rate");
        let v = vector(&q, "min_over_time(rate(x[1m])[5m:1m])", T);
        // The window ending T-3m holds 640, 650, 660, 670, 0: an increase
        // of 30 (0 - 640, plus 670 lost at the reset) over 60s.
        assert_close(v[0].v, 0.5, "min rate");
        // Before the reset the rate was 10/15s.
        let v = vector(&q, "rate(x[1m])", T - 4 * MIN);
        assert_close(v[0].v, 10.0 / 15.0, "rate before");
    }

    #[test]
    fn range_query_over_a_subquery_reads_storage_once() {
        let q = counter();
        let m = range(&q, "max_over_time(x[2m:1m])", T - 4 * MIN, T, MIN);
        assert_eq!(
            m[0].samples.iter().map(|s| s.1).collect::<Vec<_>>(),
            vec![640.0, 680.0, 720.0, 760.0, 800.0]
        );
        assert_eq!(q.selects(), 1);
        // The one load covers the first inner step's lookback to the end.
        assert_eq!(q.windows(), vec![(T - 6 * MIN - 5 * MIN, T)]);
    }
}
