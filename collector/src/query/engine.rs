//! The query engine's entry points: an instant query (one evaluation time)
//! and a range query (a grid of steps assembled into a matrix), with the
//! parameter and result-type checks Prometheus applies before evaluating.
//! A range query is evaluated series by series over all its steps
//! (`range_eval`) when every node of the expression allows it, and
//! otherwise as one instant evaluation per step, merged by label set; both
//! give the same answer.
//!
//! The engine holds only configuration; each query gets its own evaluator.
//! It must never read storage more than once per selector per query, nor
//! return results in storage order: vectors and matrices come sorted by
//! labels, except an instant query whose outermost operation is `sort`,
//! `sort_desc`, `topk` or `bottomk`, which keeps that operation's order as
//! Prometheus does.

use std::collections::BTreeMap;
use std::sync::Once;

use nines_shared::Labels;
use promql_parser::parser::function::{Function, register_extra_functions};
use promql_parser::parser::token::{T_BOTTOMK, T_TOPK};
use promql_parser::parser::{self, Expr, value::ValueType};

use super::dialect;
use super::error::QueryError;
use super::eval::Evaluator;
use super::querier::Querier;
use super::range_eval::{self, Steps};
use super::rollup_read::RollupUse;
use super::syntax;
use super::value::{RangeSeries, Value};

/// Prometheus's default lookback delta: an instant vector selector sees a
/// series' latest sample up to 5 minutes old, exactly 5 minutes included
/// (the window is closed on the left, as in Prometheus 2.x).
pub const DEFAULT_LOOKBACK_MS: i64 = 300_000;

/// Prometheus's default limit on samples one query may hold.
pub const DEFAULT_MAX_SAMPLES: usize = 50_000_000;

/// The most steps after the start a range query may have. Prometheus refuses
/// a range query when `(end - start) / step` exceeds 11,000, so a series
/// holds at most 11,001 points.
pub const MAX_RANGE_STEPS: i64 = 11_000;

/// Evaluates PromQL over a [`Querier`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Engine {
    /// How far back (ms) an instant vector selector looks for a series'
    /// latest sample.
    pub lookback_ms: i64,
    /// The most samples one query may load from storage and hold in its
    /// result before it fails.
    pub max_samples: usize,
    /// Whether selectors may read rollup buckets instead of raw samples
    /// (by default where `rollup_read`'s rule says so).
    pub rollups: RollupUse,
}

impl Default for Engine {
    fn default() -> Self {
        Engine {
            lookback_ms: DEFAULT_LOOKBACK_MS,
            max_samples: DEFAULT_MAX_SAMPLES,
            rollups: RollupUse::Auto,
        }
    }
}

impl Engine {
    /// Evaluates `expr` at `t_ms`, as `/api/v1/query`. Any type may result;
    /// vectors and matrices are sorted by labels, unless the outermost
    /// operation is `sort`, `sort_desc`, `topk` or `bottomk`, whose order
    /// is kept.
    pub fn instant(&self, q: &dyn Querier, expr: &str, t_ms: i64) -> Result<Value, QueryError> {
        let expr = parse(expr)?;
        let mut evaluator = Evaluator::new(q, self.lookback_ms, self.max_samples, t_ms, t_ms);
        evaluator.plan_rollups(&expr, 0, self.rollups);
        let value = match outermost(&expr) {
            Expr::Subquery(sq) => evaluator.eval_outermost_subquery(sq, t_ms)?,
            _ => evaluator.eval(&expr, t_ms)?,
        };
        if orders_its_result(&expr) {
            return Ok(value);
        }
        Ok(sorted(value))
    }

    /// Evaluates `expr` at `start_ms`, `start_ms + step_ms`, ... up to
    /// `end_ms`, as `/api/v1/query_range`. The result is always a
    /// [`Value::Matrix`] with one series per label set seen at any step
    /// (points at the step times), sorted by labels; a scalar expression
    /// gives one series with no labels.
    pub fn range(
        &self,
        q: &dyn Querier,
        expr: &str,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
    ) -> Result<Value, QueryError> {
        check_range(start_ms, end_ms, step_ms)?;
        let expr = parse(expr)?;
        match expr.value_type() {
            ValueType::Scalar | ValueType::Vector => {}
            ValueType::Matrix => {
                return Err(QueryError::RangeQueryType {
                    found: "range vector",
                });
            }
            ValueType::String => return Err(QueryError::RangeQueryType { found: "string" }),
        }
        let mut evaluator = Evaluator::new(q, self.lookback_ms, self.max_samples, start_ms, end_ms);
        evaluator.plan_rollups(&expr, step_ms, self.rollups);
        if range_eval::supported(&expr) {
            let steps = Steps::new(start_ms, end_ms, step_ms);
            if let Some(result) = evaluator.eval_steps(&expr, &steps)? {
                evaluator.charge(result.points())?;
                return Ok(Value::Matrix(result.into_matrix(&steps)));
            }
        }
        range_step_by_step(&mut evaluator, &expr, start_ms, end_ms, step_ms)
    }
}

/// A range query evaluated as a series of instant queries, one per step,
/// the steps' vectors merged by label set: for the expressions
/// [`range_eval`] does not evaluate series by series.
fn range_step_by_step(
    evaluator: &mut Evaluator<'_>,
    expr: &Expr,
    start_ms: i64,
    end_ms: i64,
    step_ms: i64,
) -> Result<Value, QueryError> {
    let mut series: BTreeMap<Labels, Vec<(i64, f64)>> = BTreeMap::new();
    let mut t = start_ms;
    loop {
        match evaluator.eval(expr, t)? {
            Value::Scalar(v) => {
                evaluator.charge(1)?;
                series.entry(Labels::default()).or_default().push((t, v));
            }
            Value::Vector(samples) => {
                evaluator.charge(samples.len())?;
                for s in samples {
                    series.entry(s.labels).or_default().push((t, s.v));
                }
            }
            other => {
                return Err(QueryError::RangeQueryType {
                    found: other.documented_type(),
                });
            }
        }
        match t.checked_add(step_ms) {
            Some(next) if next <= end_ms => t = next,
            _ => break,
        }
    }
    Ok(Value::Matrix(
        series
            .into_iter()
            .map(|(labels, samples)| RangeSeries { labels, samples })
            .collect(),
    ))
}

#[cfg(test)]
impl Engine {
    /// [`Engine::range`] always step by step: the reference the series by
    /// series evaluation is tested against.
    pub(crate) fn range_step_by_step(
        &self,
        q: &dyn Querier,
        expr: &str,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
    ) -> Result<Value, QueryError> {
        check_range(start_ms, end_ms, step_ms)?;
        let expr = parse(expr)?;
        let mut evaluator = Evaluator::new(q, self.lookback_ms, self.max_samples, start_ms, end_ms);
        evaluator.plan_rollups(&expr, step_ms, self.rollups);
        range_step_by_step(&mut evaluator, &expr, start_ms, end_ms, step_ms)
    }
}

/// Makes the parser accept Prometheus 2.42 functions it no longer knows
/// (it follows Prometheus 3, which renamed `holt_winters`). Once per
/// process; the parser's registry of extra functions is global.
fn register_2_42_functions() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Refused only if the parser already knows the name: fine either way.
        let _ = register_extra_functions(vec![Function::new(
            "holt_winters",
            vec![ValueType::Matrix, ValueType::Scalar, ValueType::Scalar],
            0,
            ValueType::Vector,
            false,
        )]);
    });
}

pub(super) fn parse(expr: &str) -> Result<Expr, QueryError> {
    register_2_42_functions();
    // A refused query's message says where, as Prometheus's does.
    super::check_size(expr).map_err(QueryError::Parse)?;
    let located = |message: String| QueryError::Parse(syntax::locate(expr, &message));
    let parsed = parser::parse(&dialect::raw_strings_quoted(expr)).map_err(located)?;
    dialect::check(expr, &parsed).map_err(located)?;
    Ok(parsed)
}

/// Prometheus's checks on a range query's parameters, in its order.
fn check_range(start_ms: i64, end_ms: i64, step_ms: i64) -> Result<(), QueryError> {
    if end_ms < start_ms {
        return Err(QueryError::EndBeforeStart);
    }
    if step_ms <= 0 {
        return Err(QueryError::NonPositiveStep);
    }
    let steps = (i128::from(end_ms) - i128::from(start_ms)) / i128::from(step_ms);
    if steps > i128::from(MAX_RANGE_STEPS) {
        return Err(QueryError::TooManyPoints);
    }
    Ok(())
}

/// The expression without the parentheses around it.
fn outermost(mut e: &Expr) -> &Expr {
    while let Expr::Paren(p) = e {
        e = &p.expr;
    }
    e
}

/// Whether the expression's own order is its answer's, as Prometheus
/// returns it for an instant query: `sort`, `sort_desc`, `topk` and
/// `bottomk` at the top. Everything else is sorted by labels.
fn orders_its_result(expr: &Expr) -> bool {
    match expr {
        Expr::Paren(p) => orders_its_result(&p.expr),
        Expr::Call(c) => matches!(c.func.name, "sort" | "sort_desc"),
        Expr::Aggregate(a) => matches!(a.op.id(), T_TOPK | T_BOTTOMK),
        _ => false,
    }
}

/// The value with vector elements and matrix series in label order.
fn sorted(value: Value) -> Value {
    match value {
        Value::Vector(mut v) => {
            v.sort_by(|a, b| a.labels.cmp(&b.labels));
            Value::Vector(v)
        }
        Value::Matrix(mut m) => {
            m.sort_by(|a, b| a.labels.cmp(&b.labels));
            Value::Matrix(m)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::super::in_memory::InMemoryQuerier;
    use super::super::querier::SeriesSamples;
    use super::super::value::STALE_MARKER_BITS;
    use super::*;

    const T: i64 = 1_700_000_000_000;
    const SEC: i64 = 1_000;
    const MIN: i64 = 60 * SEC;

    fn up(instance: &str) -> Labels {
        Labels::new("up", [("instance", instance)])
    }

    fn store(series: Vec<(Labels, Vec<(i64, f64)>)>) -> InMemoryQuerier {
        InMemoryQuerier::new(
            series
                .into_iter()
                .map(|(labels, samples)| SeriesSamples { labels, samples })
                .collect(),
        )
    }

    fn range(
        q: &InMemoryQuerier,
        expr: &str,
        start: i64,
        end: i64,
        step: i64,
    ) -> Result<Vec<RangeSeries>, QueryError> {
        match Engine::default().range(q, expr, start, end, step)? {
            Value::Matrix(m) => Ok(m),
            other => panic!("{expr}: range query gave {other:?}"),
        }
    }

    fn points(
        q: &InMemoryQuerier,
        expr: &str,
        start: i64,
        end: i64,
        step: i64,
    ) -> Vec<RangeSeries> {
        match range(q, expr, start, end, step) {
            Ok(m) => m,
            Err(e) => panic!("{expr}: {e}"),
        }
    }

    #[test]
    fn range_query_evaluates_on_the_step_grid() {
        let q = store(vec![(
            up("a"),
            vec![(T, 1.0), (T + 30 * SEC, 2.0), (T + 90 * SEC, 3.0)],
        )]);
        // end is not on the grid: the last step is the last one <= end.
        let m = points(&q, "up", T, T + 150 * SEC, MIN);
        assert_eq!(
            m,
            vec![RangeSeries {
                labels: up("a"),
                samples: vec![(T, 1.0), (T + MIN, 2.0), (T + 2 * MIN, 3.0)],
            }]
        );
        // end on the grid is included.
        let m = points(&q, "up", T, T + 2 * MIN, MIN);
        assert_eq!(m[0].samples.len(), 3);
        // start == end is a single step.
        let m = points(&q, "up", T + 30 * SEC, T + 30 * SEC, MIN);
        assert_eq!(m[0].samples, vec![(T + 30 * SEC, 2.0)]);
    }

    #[test]
    fn range_query_points_exist_only_where_the_series_does() {
        let stale = f64::from_bits(STALE_MARKER_BITS);
        let q = store(vec![
            (up("a"), vec![(T, 1.0), (T + MIN, stale)]),
            (up("b"), vec![(T + 2 * MIN, 7.0)]),
            (up("c"), vec![(T, 1.0)]),
            // Loaded although before the range: exactly 5m before the start.
            (up("d"), vec![(T - 5 * MIN, 4.0)]),
            // A millisecond earlier: never seen.
            (up("e"), vec![(T - 5 * MIN - 1, 4.0)]),
        ]);
        let m = points(&q, "up", T, T + 8 * MIN, MIN);
        let by_instance: Vec<(Option<&str>, Vec<i64>)> = m
            .iter()
            .map(|s| {
                (
                    s.labels.get("instance"),
                    s.samples.iter().map(|&(t, _)| (t - T) / MIN).collect(),
                )
            })
            .collect();
        assert_eq!(
            by_instance,
            vec![
                // a: until its stale marker.
                (Some("a"), vec![0]),
                // b: from its first sample through 5 minutes of lookback;
                // the window is closed on the left as in Prometheus 2.x, so
                // still at +5m after the sample, not at +6m.
                (Some("b"), vec![2, 3, 4, 5, 6, 7]),
                // c: likewise, up to and including +5m.
                (Some("c"), vec![0, 1, 2, 3, 4, 5]),
                // d: only at the start, its sample being exactly 5m old.
                (Some("d"), vec![0]),
            ]
        );
    }

    #[test]
    fn range_query_of_a_scalar_is_one_series_without_labels() {
        let q = store(vec![]);
        let m = points(&q, "1 + 1", T, T + 2 * MIN, MIN);
        assert_eq!(
            m,
            vec![RangeSeries {
                labels: Labels::default(),
                samples: vec![(T, 2.0), (T + MIN, 2.0), (T + 2 * MIN, 2.0)],
            }]
        );
        assert_eq!(q.selects(), 0);
    }

    #[test]
    fn range_query_merges_steps_by_label_set_and_sorts() {
        let q = store(vec![
            (up("b"), vec![(T, 5.0), (T + MIN, 1.0)]),
            (up("a"), vec![(T, 1.0), (T + MIN, 5.0)]),
        ]);
        let m = points(&q, "up > 2", T, T + MIN, MIN);
        assert_eq!(
            m,
            vec![
                RangeSeries {
                    labels: up("a"),
                    samples: vec![(T + MIN, 5.0)],
                },
                RangeSeries {
                    labels: up("b"),
                    samples: vec![(T, 5.0)],
                },
            ]
        );
        let m = points(&q, "up * 2", T, T + MIN, MIN);
        assert_eq!(m.len(), 2);
        assert!(m.iter().all(|s| s.labels.metric_name().is_none()));
        assert_eq!(m[0].samples, vec![(T, 2.0), (T + MIN, 10.0)]);
    }

    #[test]
    fn range_query_reads_each_selector_once_for_the_whole_range() {
        let samples: Vec<(i64, f64)> = (0..200).map(|i| (T + i * 15 * SEC, i as f64)).collect();
        let q = store(vec![(up("a"), samples)]);
        let m = points(&q, "-up offset 10m", T, T + 60 * MIN, 15 * SEC);
        assert_eq!(m[0].samples.len(), 241 - 40);
        // [start - offset - lookback, end - offset]: the closed left edge
        // of the first step's lookback is loaded.
        assert_eq!(
            q.windows(),
            vec![(T - 10 * MIN - 5 * MIN, T + 60 * MIN - 10 * MIN)]
        );
    }

    #[test]
    fn at_start_and_end_pin_to_the_range_query_bounds() {
        let q = store(vec![(
            up("a"),
            vec![(T, 1.0), (T + MIN, 2.0), (T + 2 * MIN, 3.0)],
        )]);
        let m = points(&q, "up @ start()", T, T + 2 * MIN, MIN);
        assert_eq!(
            m[0].samples,
            vec![(T, 1.0), (T + MIN, 1.0), (T + 2 * MIN, 1.0)]
        );
        let m = points(&q, "up @ end()", T, T + 2 * MIN, MIN);
        assert_eq!(
            m[0].samples,
            vec![(T, 3.0), (T + MIN, 3.0), (T + 2 * MIN, 3.0)]
        );
        assert_eq!(q.windows()[1], (T + 2 * MIN - 5 * MIN, T + 2 * MIN));
    }

    #[test]
    fn range_query_refuses_range_vectors_and_strings() {
        let q = store(vec![(up("a"), vec![(T, 1.0)])]);
        for (expr, found) in [
            ("up[5m]", "range vector"),
            ("(up[5m])", "range vector"),
            ("up[5m:1m]", "range vector"),
            ("\"text\"", "string"),
        ] {
            match range(&q, expr, T, T + MIN, MIN) {
                Err(e @ QueryError::RangeQueryType { .. }) => {
                    assert_eq!(
                        e.to_string(),
                        format!(
                            "invalid expression type \"{found}\" for range query, must be Scalar or instant Vector"
                        )
                    );
                    assert_eq!(e.error_type(), "bad_data");
                    assert_eq!(e.http_status(), 400);
                }
                other => panic!("{expr}: expected a type error, got {other:?}"),
            }
        }
        assert_eq!(q.selects(), 0);
    }

    #[test]
    fn range_query_parameters_are_checked() {
        let q = store(vec![]);
        let bad = |start, end, step| match range(&q, "up", start, end, step) {
            Err(e) => {
                assert_eq!(e.error_type(), "bad_data");
                assert_eq!(e.http_status(), 400);
                e
            }
            Ok(m) => panic!("expected an error, got {m:?}"),
        };
        assert!(matches!(bad(T, T - 1, SEC), QueryError::EndBeforeStart));
        assert!(matches!(bad(T, T, 0), QueryError::NonPositiveStep));
        assert!(matches!(bad(T, T, -SEC), QueryError::NonPositiveStep));
        // Parameter errors come before parse errors, as in Prometheus.
        assert!(matches!(
            Engine::default().range(&q, "sum(", T, T - 1, SEC),
            Err(QueryError::EndBeforeStart)
        ));
        assert!(matches!(
            Engine::default().range(&q, "sum(", T, T, SEC),
            Err(QueryError::Parse(_))
        ));
    }

    #[test]
    fn range_query_allows_at_most_11000_steps() {
        let q = store(vec![]);
        // 11,000 steps after the start (11,001 points) pass, as in Prometheus.
        let m = points(&q, "1", 0, 11_000 * SEC, SEC);
        assert_eq!(m[0].samples.len(), 11_001);
        match range(&q, "1", 0, 11_001 * SEC, SEC) {
            Err(e @ QueryError::TooManyPoints) => {
                assert_eq!(
                    e.to_string(),
                    "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)"
                );
                assert_eq!(e.error_type(), "bad_data");
            }
            other => panic!("expected too many points, got {other:?}"),
        }
        // Extreme bounds do not overflow.
        assert!(matches!(
            range(&q, "1", i64::MIN, i64::MAX, 1),
            Err(QueryError::TooManyPoints)
        ));
        let m = points(&q, "1", i64::MAX - 10, i64::MAX, 5);
        assert_eq!(m[0].samples.len(), 3);
    }

    #[test]
    fn range_query_counts_result_points_against_max_samples() {
        let q = store(vec![(up("a"), vec![(T, 1.0)])]);
        let engine = Engine {
            max_samples: 3,
            ..Engine::default()
        };
        assert!(engine.range(&q, "1", T, T + 2 * MIN, MIN).is_ok());
        assert!(matches!(
            engine.range(&q, "1", T, T + 3 * MIN, MIN),
            Err(QueryError::TooManySamples { limit: 3 })
        ));
    }

    #[test]
    fn range_query_reports_unknown_functions_as_bad_data() {
        let q = store(vec![(up("a"), vec![(T, 1.0)])]);
        match range(&q, "limitk(1, up)", T, T + MIN, MIN) {
            Err(e @ QueryError::Parse(_)) => assert_eq!(e.error_type(), "bad_data"),
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn instant_query_of_a_matrix_is_sorted_by_labels() {
        let q = store(vec![(up("b"), vec![(T, 2.0)]), (up("a"), vec![(T, 1.0)])]);
        match Engine::default().instant(&q, "up[1m]", T) {
            Ok(Value::Matrix(m)) => {
                assert_eq!(m[0].labels, up("a"));
                assert_eq!(m[1].labels, up("b"));
            }
            other => panic!("expected a matrix, got {other:?}"),
        }
    }
}
