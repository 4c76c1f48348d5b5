//! The PromQL evaluator: computes the value of one parsed expression at one
//! evaluation time, one function per expression kind. An instant query
//! calls it once; a range query once per step, unless `range_eval`
//! evaluates it series by series (which calls it only for scalar
//! arguments).
//!
//! Storage is read once per selector per query: the first evaluation of a
//! selector loads every sample any step of the query can need, later steps
//! slice that in memory; a selector `rollup_read::choose` picks loads
//! rollup buckets instead, once likewise. Constructs not implemented yet fail with
//! [`QueryError::Unsupported`] naming the construct; the evaluator must
//! never return a silently wrong answer for them, and must never panic on
//! any input.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nines_shared::METRIC_NAME_LABEL;
use promql_parser::label::{MatchOp, Matcher, Matchers};
use promql_parser::parser::value::ValueType;
use promql_parser::parser::{
    AggregateExpr, AtModifier, BinaryExpr, Expr, Extension, MatrixSelector, NumberLiteral, Offset,
    ParenExpr, StringLiteral, UnaryExpr, VectorSelector,
};

use super::aggregate::{AggregateOp, Grouping, Param, aggregate};
use super::binary::{self, BinaryOp, Matching, ScalarSide};
use super::error::QueryError;
use super::over_time::Window;
use super::querier::{Querier, SeriesSamples};
use super::rollup::SeriesBuckets;
use super::rollup_read::{self, BucketPlan, Reads, RollupUse};
use super::subquery::{DEFAULT_SUBQUERY_STEP_MS, inner_span};
use super::value::{InstantSample, RangeSeries, Value, is_stale_marker, without_metric_name};

/// Evaluates expressions for one query. Holds the samples loaded so far, so
/// it lives exactly as long as the query and the parsed expression.
pub(crate) struct Evaluator<'q> {
    querier: &'q dyn Querier,
    pub(super) lookback_ms: i64,
    /// First evaluation time of the query (`@ start()`).
    start: i64,
    /// Last evaluation time of the query (`@ end()`).
    end: i64,
    /// The first and last time the expression being evaluated can be
    /// evaluated at: the query's `[start, end]`, or inside a subquery the
    /// span of its steps.
    pub(super) span: (i64, i64),
    budget: SampleBudget,
    /// Samples loaded per selector node, series sorted by labels.
    selections: HashMap<SelectorKey, Vec<SeriesSamples>>,
    /// The selector nodes that read rollup buckets, and how.
    bucket_plans: HashMap<SelectorKey, BucketPlan>,
    /// Buckets loaded per selector node, series sorted by labels.
    bucket_selections: HashMap<SelectorKey, Vec<SeriesBuckets>>,
    /// A subquery's inner results per (subquery node address, step time),
    /// so overlapping windows of successive steps evaluate each inner step
    /// once.
    pub(super) subquery_steps: HashMap<(usize, i64), Vec<InstantSample>>,
}

/// One series' labels and the (timestamp, value) an instant selector sees.
pub(super) type LatestSample<'s> = (&'s nines_shared::Labels, (i64, f64));

/// Identifies one selector node of the parsed expression by its address.
/// The expression is parsed once per query and not moved while the query
/// is evaluated, so the address is stable and distinct per node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct SelectorKey(usize);

impl SelectorKey {
    fn of(vs: &VectorSelector) -> Self {
        SelectorKey(std::ptr::from_ref(vs) as usize)
    }
}

/// Counts the samples a query holds against the engine's limit.
struct SampleBudget {
    limit: usize,
    used: usize,
}

impl SampleBudget {
    fn charge(&mut self, n: usize) -> Result<(), QueryError> {
        self.used = self.used.saturating_add(n);
        if self.used > self.limit {
            return Err(QueryError::TooManySamples { limit: self.limit });
        }
        Ok(())
    }
}

impl<'q> Evaluator<'q> {
    /// An evaluator for a query whose evaluation times run from `start` to
    /// `end` (equal for an instant query).
    pub(crate) fn new(
        querier: &'q dyn Querier,
        lookback_ms: i64,
        max_samples: usize,
        start: i64,
        end: i64,
    ) -> Self {
        Evaluator {
            querier,
            lookback_ms,
            start,
            end,
            span: (start, end),
            budget: SampleBudget {
                limit: max_samples,
                used: 0,
            },
            selections: HashMap::new(),
            bucket_plans: HashMap::new(),
            bucket_selections: HashMap::new(),
            subquery_steps: HashMap::new(),
        }
    }

    /// Decides, before evaluating `expr` over the query's evaluation
    /// times (`step` apart), which of its selectors read rollup buckets
    /// ([`rollup_read::choose`]).
    pub(crate) fn plan_rollups(&mut self, expr: &Expr, step: i64, policy: RollupUse) {
        self.plan_rollups_over(expr, (self.start, self.end), step, policy);
    }

    /// [`Self::plan_rollups`] for `expr` evaluated at `times` (first, last)
    /// `step` apart; a subquery's selectors are planned over the steps
    /// [`Self::eval_subquery`] evaluates them at.
    fn plan_rollups_over(&mut self, expr: &Expr, times: (i64, i64), step: i64, policy: RollupUse) {
        let (first, last) = times;
        let mut found = Vec::new();
        let mut subqueries = Vec::new();
        rollup_read::candidates(expr, &mut found, &mut subqueries);
        for (vs, consumer, range) in found {
            let reads = Reads {
                first,
                last,
                step,
                offset: offset_ms(vs.offset.as_ref()),
                width: range.unwrap_or(self.lookback_ms),
            };
            if let Some(plan) = rollup_read::choose(consumer, &reads, policy, self.querier) {
                self.bucket_plans.insert(SelectorKey::of(vs), plan);
            }
        }
        for sq in subqueries {
            let inner_step = sq.step.map_or(DEFAULT_SUBQUERY_STEP_MS, duration_ms);
            if inner_step <= 0 {
                continue;
            }
            let (inner_first, inner_last) = inner_span(sq, inner_step, (first, last));
            // The last inner step: the last multiple of the step not after.
            let inner_last = inner_last.div_euclid(inner_step).saturating_mul(inner_step);
            if inner_first <= inner_last {
                self.plan_rollups_over(&sq.expr, (inner_first, inner_last), inner_step, policy);
            }
        }
    }

    /// How the selector reads buckets, if it does.
    pub(super) fn bucket_plan(&self, vs: &VectorSelector) -> Option<BucketPlan> {
        self.bucket_plans.get(&SelectorKey::of(vs)).copied()
    }

    /// The selectors reading buckets: resolution and exactness, in no order.
    #[cfg(test)]
    pub(crate) fn bucket_plans(&self) -> Vec<(i64, bool)> {
        self.bucket_plans
            .values()
            .map(|p| (p.res, p.exact))
            .collect()
    }

    /// The series a selector read through `plan` matches, with every
    /// bucket any window (of `width` ms) of this query reads, loaded on
    /// first use and kept for the rest of the query.
    pub(super) fn bucket_selection(
        &mut self,
        vs: &VectorSelector,
        plan: BucketPlan,
        width: i64,
    ) -> Result<&[SeriesBuckets], QueryError> {
        let offset = offset_ms(vs.offset.as_ref());
        let (first, last) = self.span;
        let from = plan.window(first.saturating_sub(offset), width).0;
        let to = plan.window(last.saturating_sub(offset), width).1;
        match self.bucket_selections.entry(SelectorKey::of(vs)) {
            Entry::Occupied(e) => Ok(e.into_mut()),
            Entry::Vacant(e) => {
                let mut series =
                    self.querier
                        .select_buckets(&selector_matchers(vs), from, to, plan.res)?;
                self.budget
                    .charge(series.iter().map(|s| s.buckets.len()).sum())?;
                series.sort_by(|a, b| a.labels.cmp(&b.labels));
                Ok(e.insert(series))
            }
        }
    }

    /// Per series (in label order) with samples in the window, the value
    /// of the range function `name` (one of
    /// [`rollup_read::BUCKET_FUNCTIONS`]) over the window of `range` ms at
    /// reference time `at`, read through `plan`.
    pub(super) fn range_function_from_buckets(
        &mut self,
        name: &str,
        vs: &VectorSelector,
        plan: BucketPlan,
        range: i64,
        at: i64,
    ) -> Result<Vec<(&nines_shared::Labels, f64)>, QueryError> {
        let (start, end) = plan.window(at, range);
        let w = Window {
            start,
            end,
            range_ms: end - start,
        };
        let series = self.bucket_selection(vs, plan, range)?;
        Ok(series
            .iter()
            .filter_map(|s| {
                let summary = rollup_read::window_summary(&s.buckets, start, end)?;
                rollup_read::over_buckets(name, &summary, w).map(|v| (&s.labels, v))
            })
            .collect())
    }

    /// The latest sample (timestamp, value) per series an instant selector
    /// reading `plan` sees at reference time `at`, series in label order.
    pub(super) fn latest_from_buckets(
        &mut self,
        vs: &VectorSelector,
        plan: BucketPlan,
        at: i64,
    ) -> Result<Vec<LatestSample<'_>>, QueryError> {
        let lookback = self.lookback_ms;
        let (start, end) = plan.window(at, lookback);
        let series = self.bucket_selection(vs, plan, lookback)?;
        Ok(series
            .iter()
            .filter_map(|s| {
                rollup_read::latest_in_window(&s.buckets, start, end).map(|x| (&s.labels, x))
            })
            .collect())
    }

    /// Counts `n` more samples held by the query (e.g. result points of a
    /// range query) against the limit.
    pub(crate) fn charge(&mut self, n: usize) -> Result<(), QueryError> {
        self.budget.charge(n)
    }

    /// The value of `expr` at evaluation time `t` (ms).
    pub(crate) fn eval(&mut self, expr: &Expr, t: i64) -> Result<Value, QueryError> {
        match expr {
            Expr::NumberLiteral(n) => Ok(eval_number_literal(n)),
            Expr::StringLiteral(s) => Ok(eval_string_literal(s)),
            Expr::Paren(p) => self.eval_paren(p, t),
            Expr::Unary(u) => self.eval_unary(u, t),
            Expr::Binary(b) => self.eval_binary(b, t),
            Expr::VectorSelector(vs) => self.eval_vector_selector(vs, t),
            Expr::MatrixSelector(ms) => self.eval_matrix_selector(ms, t),
            Expr::Aggregate(a) => self.eval_aggregate(a, t),
            Expr::Call(c) => self.eval_call(c, t),
            Expr::Subquery(s) => Ok(Value::Matrix(self.eval_subquery(s, t)?.0)),
            Expr::Extension(e) => eval_extension(e),
        }
    }

    fn eval_paren(&mut self, p: &ParenExpr, t: i64) -> Result<Value, QueryError> {
        self.eval(&p.expr, t)
    }

    /// `-expr`: negates a scalar, or every element of an instant vector
    /// (which then is no longer the named metric, so `__name__` goes).
    fn eval_unary(&mut self, u: &UnaryExpr, t: i64) -> Result<Value, QueryError> {
        match self.eval(&u.expr, t)? {
            Value::Scalar(v) => Ok(Value::Scalar(-v)),
            Value::Vector(samples) => {
                let negated = samples
                    .into_iter()
                    .map(|s| InstantSample {
                        labels: without_metric_name(&s.labels),
                        t: s.t,
                        v: -s.v,
                    })
                    .collect();
                instant_vector(negated)
            }
            other => Err(QueryError::Unsupported(format!(
                "unary minus on a {} is not supported",
                other.documented_type()
            ))),
        }
    }

    /// `lhs op rhs` between scalars and instant vectors.
    fn eval_binary(&mut self, b: &BinaryExpr, t: i64) -> Result<Value, QueryError> {
        let op = BinaryOp::from_token(b.op)?;
        let return_bool = b.return_bool();
        let both_vectors =
            b.lhs.value_type() == ValueType::Vector && b.rhs.value_type() == ValueType::Vector;
        // Checked before loading anything.
        let matching = if both_vectors {
            Some(Matching::of(b, op)?)
        } else {
            None
        };
        let lhs = self.eval(&b.lhs, t)?;
        let rhs = self.eval(&b.rhs, t)?;
        match (lhs, rhs) {
            (Value::Scalar(l), Value::Scalar(r)) => Ok(Value::Scalar(op.on_scalars(l, r))),
            (Value::Vector(v), Value::Scalar(s)) => instant_vector(binary::vector_scalar(
                op,
                v,
                s,
                ScalarSide::Right,
                return_bool,
            )),
            (Value::Scalar(s), Value::Vector(v)) => instant_vector(binary::vector_scalar(
                op,
                v,
                s,
                ScalarSide::Left,
                return_bool,
            )),
            (Value::Vector(l), Value::Vector(r)) => match &matching {
                Some(m) => instant_vector(binary::vector_vector(op, m, return_bool, l, r)?),
                None => Err(QueryError::Unsupported(format!(
                    "binary operator {} between these operands is not supported",
                    b.op
                ))),
            },
            (l, r) => Err(QueryError::Unsupported(format!(
                "binary operator {} between {} and {} is not supported",
                b.op,
                l.documented_type(),
                r.documented_type()
            ))),
        }
    }

    /// An aggregation: the parameter and the vector, then the groups.
    fn eval_aggregate(&mut self, a: &AggregateExpr, t: i64) -> Result<Value, QueryError> {
        let op = AggregateOp::from_token(a.op)?;
        let grouping = Grouping::of(a);
        let param = match &a.param {
            None => Param::None,
            Some(p) => match self.eval(p, t)? {
                Value::Scalar(v) => Param::Number(v),
                Value::String(s) => Param::Label(s),
                other => {
                    return Err(QueryError::Unsupported(format!(
                        "aggregation parameter of type {} is not supported",
                        other.documented_type()
                    )));
                }
            },
        };
        let input = self.eval_instant_vector(&a.expr, t)?;
        Ok(Value::Vector(aggregate(op, &grouping, &param, input, t)?))
    }

    /// Evaluates an expression the parser has checked is an instant vector.
    pub(super) fn eval_instant_vector(
        &mut self,
        expr: &Expr,
        t: i64,
    ) -> Result<Vec<InstantSample>, QueryError> {
        match self.eval(expr, t)? {
            Value::Vector(v) => Ok(v),
            other => Err(QueryError::Unsupported(format!(
                "expected an instant vector, got {}",
                other.documented_type()
            ))),
        }
    }

    /// An instant vector selector: per matching series, the latest sample
    /// in the lookback window before the reference time, reported at `t`.
    fn eval_vector_selector(&mut self, vs: &VectorSelector, t: i64) -> Result<Value, QueryError> {
        let at = self.reference_time(vs, t)?;
        if let Some(plan) = self.bucket_plan(vs) {
            let samples = self
                .latest_from_buckets(vs, plan, at)?
                .into_iter()
                .map(|(labels, (_, v))| InstantSample {
                    labels: labels.clone(),
                    t,
                    v,
                })
                .collect();
            return Ok(Value::Vector(samples));
        }
        let lookback = self.lookback_ms;
        let series = self.selection(vs, lookback)?;
        let samples = series
            .iter()
            .filter_map(|s| {
                latest_in_window(&s.samples, at, lookback).map(|v| InstantSample {
                    labels: s.labels.clone(),
                    t,
                    v,
                })
            })
            .collect();
        // Already sorted by labels: the selection is.
        Ok(Value::Vector(samples))
    }

    /// A range vector selector: per matching series, the samples in the
    /// window of the selector's range before the reference time.
    pub(super) fn eval_matrix_selector(
        &mut self,
        ms: &MatrixSelector,
        t: i64,
    ) -> Result<Value, QueryError> {
        let at = self.reference_time(&ms.vs, t)?;
        let range = duration_ms(ms.range);
        let series = self.selection(&ms.vs, range)?;
        let matrix = series
            .iter()
            .filter_map(|s| {
                let samples = samples_in_window(&s.samples, at, range);
                (!samples.is_empty()).then(|| RangeSeries {
                    labels: s.labels.clone(),
                    samples,
                })
            })
            .collect();
        Ok(Value::Matrix(matrix))
    }

    /// The time a selector reads at when the query evaluates at `t`: `t`,
    /// or the `@` time, moved back by the offset.
    pub(super) fn reference_time(&self, vs: &VectorSelector, t: i64) -> Result<i64, QueryError> {
        let base = self.pinned_time(vs.at.as_ref())?.unwrap_or(t);
        Ok(base.saturating_sub(offset_ms(vs.offset.as_ref())))
    }

    /// The time an `@` modifier pins evaluation to, if there is one.
    pub(super) fn pinned_time(&self, at: Option<&AtModifier>) -> Result<Option<i64>, QueryError> {
        match at {
            None => Ok(None),
            Some(AtModifier::Start) => Ok(Some(self.start)),
            Some(AtModifier::End) => Ok(Some(self.end)),
            Some(AtModifier::At(time)) => system_time_ms(*time).map(Some),
        }
    }

    /// The series a selector matches with every sample any evaluation of
    /// this query can read through it (windows of `width` ms), loaded from
    /// storage on first use and kept for the rest of the query. The span is
    /// the evaluator's current one: the query's `[start, end]`, or the
    /// steps of the enclosing subquery.
    /// Windows are closed on the left (see [`window_floor`]), so what is
    /// loaded is `[first - width, last]` after the offset: the sample exactly
    /// `width` before the first reference time is read too.
    pub(super) fn selection(
        &mut self,
        vs: &VectorSelector,
        width: i64,
    ) -> Result<&[SeriesSamples], QueryError> {
        let (first, last) = match self.pinned_time(vs.at.as_ref())? {
            Some(p) => (p, p),
            None => self.span,
        };
        let offset = offset_ms(vs.offset.as_ref());
        let from = window_floor(first.saturating_sub(offset), width);
        let to = last.saturating_sub(offset);
        match self.selections.entry(SelectorKey::of(vs)) {
            Entry::Occupied(e) => Ok(e.into_mut()),
            Entry::Vacant(e) => {
                let mut series = self.querier.select(&selector_matchers(vs), from, to)?;
                self.budget
                    .charge(series.iter().map(|s| s.samples.len()).sum())?;
                series.sort_by(|a, b| a.labels.cmp(&b.labels));
                Ok(e.insert(series))
            }
        }
    }
}

fn eval_number_literal(n: &NumberLiteral) -> Value {
    Value::Scalar(n.val)
}

fn eval_string_literal(s: &StringLiteral) -> Value {
    Value::String(s.val.clone())
}

fn eval_extension(e: &Extension) -> Result<Value, QueryError> {
    Err(QueryError::Unsupported(format!(
        "extension expression {} is not supported yet",
        e.expr.name()
    )))
}

/// An instant vector from samples whose labels an operator may have
/// changed: sorted by labels, and refused if two share a label set.
pub(super) fn instant_vector(mut samples: Vec<InstantSample>) -> Result<Value, QueryError> {
    samples.sort_by(|a, b| a.labels.cmp(&b.labels));
    if samples.windows(2).any(|w| w[0].labels == w[1].labels) {
        return Err(QueryError::DuplicateLabelSet);
    }
    Ok(Value::Vector(samples))
}

/// The first timestamp inside a window of `width` ms ending at `at`. The
/// window is closed, `[at - width, at]`, as in Prometheus 2.x (3.x made it
/// left-open): a sample exactly `width` before `at` is inside, for both the
/// lookback and range selectors.
pub(super) fn window_floor(at: i64, width: i64) -> i64 {
    at.saturating_sub(width)
}

/// The value of the latest sample in the window of `width` ms ending at
/// `at`, unless there is none or it is a stale marker.
fn latest_in_window(samples: &[(i64, f64)], at: i64, width: i64) -> Option<f64> {
    latest_sample_in_window(samples, at, width).map(|(_, v)| v)
}

/// The latest sample (timestamp and value) in the window of `width` ms
/// ending at `at`, unless there is none or it is a stale marker.
pub(super) fn latest_sample_in_window(
    samples: &[(i64, f64)],
    at: i64,
    width: i64,
) -> Option<(i64, f64)> {
    let after = samples.partition_point(|&(ts, _)| ts <= at);
    let &(ts, v) = samples.get(after.checked_sub(1)?)?;
    (ts >= window_floor(at, width) && !is_stale_marker(v)).then_some((ts, v))
}

/// The samples in the window of `width` ms ending at `at`, stale markers
/// left out.
pub(super) fn samples_in_window(samples: &[(i64, f64)], at: i64, width: i64) -> Vec<(i64, f64)> {
    let floor = window_floor(at, width);
    let first = samples.partition_point(|&(ts, _)| ts < floor);
    let after = samples.partition_point(|&(ts, _)| ts <= at);
    samples
        .get(first..after)
        .unwrap_or_default()
        .iter()
        .copied()
        .filter(|&(_, v)| !is_stale_marker(v))
        .collect()
}

/// The selector's matchers with its metric name (which the parser keeps
/// apart) added as a `__name__` matcher, to every `or` group if any.
pub(crate) fn selector_matchers(vs: &VectorSelector) -> Matchers {
    let mut matchers = vs.matchers.clone();
    if let Some(name) = &vs.name {
        let by_name = Matcher::new(MatchOp::Equal, METRIC_NAME_LABEL, name);
        if matchers.or_matchers.is_empty() {
            matchers.matchers.push(by_name);
        } else {
            for group in &mut matchers.or_matchers {
                group.push(by_name.clone());
            }
        }
    }
    matchers
}

/// A duration in ms, saturating at `i64::MAX` for absurd durations.
pub(crate) fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// How far an offset moves the reference time back (negative: forward).
pub(super) fn offset_ms(offset: Option<&Offset>) -> i64 {
    match offset {
        None => 0,
        Some(Offset::Pos(d)) => duration_ms(*d),
        Some(Offset::Neg(d)) => duration_ms(*d).saturating_neg(),
    }
}

/// An `@` time in ms since the epoch (negative before it).
fn system_time_ms(time: SystemTime) -> Result<i64, QueryError> {
    let ms = match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()),
        Err(before) => i64::try_from(before.duration().as_millis()).map(|ms| -ms),
    };
    ms.map_err(|_| QueryError::Parse("timestamp out of bounds for @ modifier".to_string()))
}

#[cfg(test)]
mod tests {
    use super::super::Engine;
    use super::super::in_memory::InMemoryQuerier;
    use super::*;
    use nines_shared::Labels;

    const T: i64 = 1_700_000_000_000;
    const MIN: i64 = 60_000;

    fn stale() -> f64 {
        f64::from_bits(super::super::value::STALE_MARKER_BITS)
    }

    fn series(labels: Labels, samples: &[(i64, f64)]) -> SeriesSamples {
        SeriesSamples {
            labels,
            samples: samples.to_vec(),
        }
    }

    fn store(s: Vec<SeriesSamples>) -> InMemoryQuerier {
        InMemoryQuerier::new(s)
    }

    fn instant(q: &InMemoryQuerier, expr: &str, t: i64) -> Result<Value, QueryError> {
        Engine::default().instant(q, expr, t)
    }

    fn scalar(expr: &str) -> f64 {
        match instant(&store(vec![]), expr, T) {
            Ok(Value::Scalar(v)) => v,
            other => panic!("{expr}: expected a scalar, got {other:?}"),
        }
    }

    fn vector(q: &InMemoryQuerier, expr: &str, t: i64) -> Vec<InstantSample> {
        match instant(q, expr, t) {
            Ok(Value::Vector(v)) => v,
            other => panic!("{expr}: expected a vector, got {other:?}"),
        }
    }

    fn matrix(q: &InMemoryQuerier, expr: &str, t: i64) -> Vec<RangeSeries> {
        match instant(q, expr, t) {
            Ok(Value::Matrix(m)) => m,
            other => panic!("{expr}: expected a matrix, got {other:?}"),
        }
    }

    fn up(instance: &str) -> Labels {
        Labels::new("up", [("instance", instance)])
    }

    #[test]
    fn number_literals_are_scalars() {
        assert_eq!(scalar("42"), 42.0);
        assert_eq!(scalar("-1.5"), -1.5);
        assert_eq!(scalar("0x10"), 16.0);
        assert!(scalar("Inf").is_infinite());
        assert!(scalar("NaN").is_nan());
    }

    #[test]
    fn string_literal_is_a_string_in_an_instant_query() {
        assert_eq!(
            instant(&store(vec![]), "\"hello\"", T).ok(),
            Some(Value::String("hello".into()))
        );
    }

    #[test]
    fn scalar_arithmetic_follows_prometheus() {
        assert_eq!(scalar("1+1"), 2.0);
        assert_eq!(scalar("2^3^2"), 512.0);
        assert_eq!(scalar("(2^3)^2"), 64.0);
        assert_eq!(scalar("2 * 3 + 4"), 10.0);
        assert_eq!(scalar("2 * (3 + 4)"), 14.0);
        assert_eq!(scalar("5 % 3"), 2.0);
        assert_eq!(scalar("-5 % 3"), -2.0);
        assert_eq!(scalar("5.5 % 2"), 1.5);
        assert_eq!(scalar("1 / 0"), f64::INFINITY);
        assert_eq!(scalar("-1 / 0"), f64::NEG_INFINITY);
        assert!(scalar("0 / 0").is_nan());
        assert!(scalar("5 % 0").is_nan());
        assert_eq!(scalar("10 - 4 - 3"), 3.0);
        assert_eq!(scalar("-(2)"), -2.0);
        assert_eq!(scalar("-(-(3))"), 3.0);
        assert_eq!(scalar("((7))"), 7.0);
        assert_eq!(scalar("1 atan2 1"), std::f64::consts::FRAC_PI_4);
        assert_eq!(scalar("0 atan2 -1"), std::f64::consts::PI);
    }

    #[test]
    fn scalar_comparisons_with_bool_give_one_or_zero() {
        assert_eq!(scalar("1 == bool 1"), 1.0);
        assert_eq!(scalar("1 != bool 1"), 0.0);
        assert_eq!(scalar("2 > bool 1"), 1.0);
        assert_eq!(scalar("2 < bool 1"), 0.0);
        assert_eq!(scalar("1 >= bool 1"), 1.0);
        assert_eq!(scalar("2 <= bool 1"), 0.0);
        assert_eq!(scalar("NaN == bool NaN"), 0.0);
        assert_eq!(scalar("(1 < bool 2) + 1"), 2.0);
    }

    #[test]
    fn scalar_comparison_without_bool_is_a_parse_error() {
        let e = instant(&store(vec![]), "1 > 2", T).err();
        assert!(
            matches!(&e, Some(QueryError::Parse(m)) if m.contains("comparisons between scalars must use BOOL modifier")),
            "{e:?}"
        );
    }

    #[test]
    fn parse_errors_are_bad_data() {
        for bad in [
            "",
            "sum(",
            "x{",
            "1 +",
            "x[5m",
            "foo bar",
            "-\"s\"",
            "x{a=~\"(\"}",
        ] {
            match instant(&store(vec![]), bad, T) {
                Err(e @ QueryError::Parse(_)) => {
                    assert_eq!(e.error_type(), "bad_data", "{bad}");
                    assert_eq!(e.http_status(), 400, "{bad}");
                    assert!(!e.to_string().is_empty());
                }
                other => panic!("{bad:?}: expected a parse error, got {other:?}"),
            }
        }
    }

    #[test]
    fn vector_selector_takes_latest_sample_reported_at_t() {
        let q = store(vec![series(
            up("a"),
            &[(T - 2 * MIN, 1.0), (T - MIN, 2.0), (T + MIN, 3.0)],
        )]);
        let v = vector(&q, "up", T);
        assert_eq!(
            v,
            vec![InstantSample {
                labels: up("a"),
                t: T,
                v: 2.0
            }]
        );
        // A sample exactly at t is seen; one after t is not.
        assert_eq!(vector(&q, "up", T + MIN)[0].v, 3.0);
        assert_eq!(vector(&q, "up", T + MIN - 1)[0].v, 2.0);
    }

    #[test]
    fn lookback_window_includes_its_left_edge_as_prometheus_2_does() {
        let lookback = 5 * MIN;
        let q = store(vec![series(up("a"), &[(T - lookback, 1.0)])]);
        assert_eq!(vector(&q, "up", T).len(), 1, "sample at t-5m is in");
        let q = store(vec![series(up("a"), &[(T - lookback - 1, 1.0)])]);
        assert!(vector(&q, "up", T).is_empty(), "sample at t-5m-1ms is out");
    }

    #[test]
    fn lookback_follows_the_engine_setting() {
        let q = store(vec![series(up("a"), &[(T - MIN, 1.0)])]);
        let engine = Engine {
            lookback_ms: MIN,
            ..Engine::default()
        };
        // With a 1m lookback the sample is seen up to exactly 1m later...
        assert!(matches!(engine.instant(&q, "up", T), Ok(Value::Vector(v)) if v.len() == 1));
        assert!(matches!(engine.instant(&q, "up", T + 1), Ok(Value::Vector(v)) if v.is_empty()));
        // ...where the default 5m lookback still sees it.
        assert!(
            matches!(Engine::default().instant(&q, "up", T + 1), Ok(Value::Vector(v)) if v.len() == 1)
        );
    }

    #[test]
    fn stale_marker_ends_a_series() {
        let q = store(vec![
            series(up("a"), &[(T - 2 * MIN, 1.0), (T - MIN, stale())]),
            series(up("b"), &[(T - 2 * MIN, stale()), (T - MIN, 5.0)]),
            series(up("c"), &[(T - MIN, f64::NAN)]),
        ]);
        let v = vector(&q, "up", T);
        let got: Vec<_> = v.iter().map(|s| s.labels.get("instance")).collect();
        // a is stale; b came back after its marker; a plain NaN is a value.
        assert_eq!(got, vec![Some("b"), Some("c")]);
        assert!(v[1].v.is_nan());
        // Before the marker, a is visible.
        assert_eq!(vector(&q, "up", T - MIN - 1).len(), 1);
    }

    #[test]
    fn offset_moves_the_reference_time() {
        let q = store(vec![series(
            up("a"),
            &[(T - 10 * MIN, 1.0), (T, 2.0), (T + 10 * MIN, 3.0)],
        )]);
        let v = vector(&q, "up offset 10m", T);
        assert_eq!((v[0].t, v[0].v), (T, 1.0));
        let v = vector(&q, "up offset -10m", T);
        assert_eq!((v[0].t, v[0].v), (T, 3.0));
        assert!(vector(&q, "up offset 16m", T).is_empty());
    }

    #[test]
    fn at_modifier_pins_the_reference_time() {
        let q = store(vec![series(
            up("a"),
            &[(T - 10 * MIN, 1.0), (T, 2.0), (T + 10 * MIN, 3.0)],
        )]);
        let at = (T - 10 * MIN) / 1000;
        let v = vector(&q, &format!("up @ {at}"), T + 60 * MIN);
        assert_eq!((v[0].t, v[0].v), (T + 60 * MIN, 1.0));
        // @ then offset: offset applies relative to the pinned time.
        let at = (T + 10 * MIN) / 1000;
        let v = vector(&q, &format!("up @ {at} offset 10m"), T - 60 * MIN);
        assert_eq!(v[0].v, 2.0);
        // In an instant query start() and end() are the evaluation time.
        assert_eq!(vector(&q, "up @ start()", T)[0].v, 2.0);
        assert_eq!(vector(&q, "up @ end()", T + 10 * MIN)[0].v, 3.0);
    }

    #[test]
    fn matchers_select_series() {
        let q = store(vec![
            series(
                Labels::new("up", [("job", "node"), ("instance", "a")]),
                &[(T, 1.0)],
            ),
            series(
                Labels::new("up", [("job", "api"), ("instance", "b")]),
                &[(T, 2.0)],
            ),
            series(Labels::new("down", [("job", "node")]), &[(T, 3.0)]),
        ]);
        assert_eq!(vector(&q, "up{job=\"node\"}", T).len(), 1);
        assert_eq!(vector(&q, "up{job=~\"no\"}", T).len(), 0, "anchored");
        assert_eq!(vector(&q, "up{job=~\"no.*\"}", T).len(), 1);
        assert_eq!(vector(&q, "{job=\"node\"}", T).len(), 2);
        assert_eq!(vector(&q, "{__name__=~\"up|down\"}", T).len(), 3);
        assert_eq!(vector(&q, "up{job!=\"node\"}", T)[0].v, 2.0);
        assert_eq!(vector(&q, "up{missing=\"\"}", T).len(), 2);
        assert_eq!(
            vector(&q, "up{job=\"node\" or instance=\"b\"}", T).len(),
            2,
            "the metric name applies to every or-group"
        );
    }

    #[test]
    fn instant_vector_keeps_full_labels_and_is_sorted() {
        let q = store(vec![
            series(up("c"), &[(T, 3.0)]),
            series(up("a"), &[(T, 1.0)]),
            series(up("b"), &[(T, 2.0)]),
        ]);
        let v = vector(&q, "up", T);
        assert_eq!(
            v.iter().map(|s| s.labels.clone()).collect::<Vec<_>>(),
            vec![up("a"), up("b"), up("c")]
        );
        assert_eq!(v[0].labels.metric_name(), Some("up"));
    }

    #[test]
    fn matrix_selector_window_includes_its_left_edge() {
        let q = store(vec![series(
            up("a"),
            &[
                (T - 5 * MIN - 1, 0.5),
                (T - 5 * MIN, 1.0),
                (T - 4 * MIN, 2.0),
                (T - 2 * MIN, stale()),
                (T, 3.0),
                (T + 1, 4.0),
            ],
        )]);
        // [t-5m, t], as in Prometheus 2.x: the sample exactly at t-5m is in,
        // the one a millisecond earlier and the one after t are out, and the
        // stale marker is dropped.
        let m = matrix(&q, "up[5m]", T);
        assert_eq!(
            m,
            vec![RangeSeries {
                labels: up("a"),
                samples: vec![(T - 5 * MIN, 1.0), (T - 4 * MIN, 2.0), (T, 3.0)],
            }]
        );
        let m = matrix(&q, "up[5m]", T - 1);
        assert_eq!(
            m[0].samples,
            vec![
                (T - 5 * MIN - 1, 0.5),
                (T - 5 * MIN, 1.0),
                (T - 4 * MIN, 2.0)
            ]
        );
        let m = matrix(&q, "up[5m]", T + 1);
        assert_eq!(
            m[0].samples,
            vec![(T - 4 * MIN, 2.0), (T, 3.0), (T + 1, 4.0)]
        );
    }

    #[test]
    fn matrix_selector_applies_offset_and_at_and_omits_empty_series() {
        let q = store(vec![
            series(
                up("a"),
                &[(T - 10 * MIN, 1.0), (T - 9 * MIN, 2.0), (T, 3.0)],
            ),
            series(up("b"), &[(T, 5.0)]),
        ]);
        let m = matrix(&q, "up[2m] offset 9m", T);
        assert_eq!(m.len(), 1, "b has nothing in the window");
        assert_eq!(m[0].samples, vec![(T - 10 * MIN, 1.0), (T - 9 * MIN, 2.0)]);
        // [@ - 1m, @]: the sample exactly 1m before the @ time is in.
        let at = (T - 9 * MIN) / 1000;
        let m = matrix(&q, &format!("up[1m] @ {at}"), T + 100 * MIN);
        assert_eq!(m[0].samples, vec![(T - 10 * MIN, 1.0), (T - 9 * MIN, 2.0)]);
        let m = matrix(&q, &format!("up[1m] @ {at}"), T - 100 * MIN);
        assert_eq!(m[0].samples, vec![(T - 10 * MIN, 1.0), (T - 9 * MIN, 2.0)]);
        let m = matrix(&q, &format!("up[1m] @ {at} offset 1ms"), T);
        assert_eq!(m[0].samples, vec![(T - 10 * MIN, 1.0)]);
        assert!(matrix(&q, "up[1m]", T - 30 * MIN).is_empty());
    }

    #[test]
    fn unary_minus_on_a_vector_drops_the_name() {
        let q = store(vec![series(up("a"), &[(T, 2.0)])]);
        let v = vector(&q, "-up", T);
        assert_eq!(v[0].v, -2.0);
        let mut want = Labels::default();
        want.set("instance", "a");
        assert_eq!(v[0].labels, want);
        assert_eq!(v[0].labels.metric_name(), None);
    }

    #[test]
    fn unary_minus_refuses_duplicate_label_sets() {
        let q = store(vec![
            series(Labels::new("x", [("a", "1")]), &[(T, 1.0)]),
            series(Labels::new("y", [("a", "1")]), &[(T, 2.0)]),
        ]);
        match instant(&q, "-{a=\"1\"}", T) {
            Err(e @ QueryError::DuplicateLabelSet) => {
                assert_eq!(
                    e.to_string(),
                    "vector cannot contain metrics with the same labelset"
                );
                assert_eq!(e.http_status(), 422);
            }
            other => panic!("expected duplicate labelset error, got {other:?}"),
        }
        // The same through arithmetic.
        assert!(matches!(
            instant(&q, "{a=\"1\"} * 2", T),
            Err(QueryError::DuplicateLabelSet)
        ));
        // A filter keeps names, so no duplicates.
        assert_eq!(vector(&q, "{a=\"1\"} > 0", T).len(), 2);
    }

    #[test]
    fn vector_scalar_arithmetic_drops_the_name_and_keeps_operand_order() {
        let q = store(vec![
            series(up("a"), &[(T, 2.0)]),
            series(up("b"), &[(T, 8.0)]),
        ]);
        let vals = |e: &str| -> Vec<f64> { vector(&q, e, T).iter().map(|s| s.v).collect() };
        assert_eq!(vals("up + 1"), vec![3.0, 9.0]);
        assert_eq!(vals("10 - up"), vec![8.0, 2.0]);
        assert_eq!(vals("up - 10"), vec![-8.0, -2.0]);
        assert_eq!(vals("up / 0"), vec![f64::INFINITY, f64::INFINITY]);
        assert_eq!(vals("16 / up"), vec![8.0, 2.0]);
        assert_eq!(vals("up % 3"), vec![2.0, 2.0]);
        assert_eq!(vals("2 ^ up"), vec![4.0, 256.0]);
        assert_eq!(vals("up ^ 2"), vec![4.0, 64.0]);
        assert_eq!(vals("(up * 2) + (1 + 1)"), vec![6.0, 18.0]);
        let v = vector(&q, "up * 1", T);
        assert!(v.iter().all(|s| s.labels.metric_name().is_none()));
        assert_eq!(v[0].labels.get("instance"), Some("a"));
        assert!(v.iter().all(|s| s.t == T));
    }

    #[test]
    fn vector_atan2_scalar_keeps_the_name_as_in_prometheus_2_42() {
        let q = store(vec![series(up("a"), &[(T, 1.0)])]);
        let v = vector(&q, "up atan2 1", T);
        assert_eq!(v[0].v, std::f64::consts::FRAC_PI_4);
        assert_eq!(v[0].labels.metric_name(), Some("up"));
    }

    #[test]
    fn vector_scalar_comparison_filters_and_keeps_the_vector_value() {
        let q = store(vec![
            series(up("a"), &[(T, 1.0)]),
            series(up("b"), &[(T, 5.0)]),
        ]);
        let v = vector(&q, "up > 2", T);
        assert_eq!(
            v,
            vec![InstantSample {
                labels: up("b"),
                t: T,
                v: 5.0
            }]
        );
        // Scalar on the left: `2 > up` keeps up < 2, with up's value.
        let v = vector(&q, "2 > up", T);
        assert_eq!((v[0].labels.clone(), v[0].v), (up("a"), 1.0));
        assert_eq!(v.len(), 1);
        assert_eq!(vector(&q, "up == 5", T)[0].v, 5.0);
        assert_eq!(vector(&q, "up != 5", T)[0].v, 1.0);
        assert_eq!(vector(&q, "up >= 5", T).len(), 1);
        assert_eq!(vector(&q, "up <= 5", T).len(), 2);
        assert_eq!(vector(&q, "5 <= up", T)[0].v, 5.0);
    }

    #[test]
    fn vector_scalar_comparison_with_bool_gives_one_or_zero_without_name() {
        let q = store(vec![
            series(up("a"), &[(T, 1.0)]),
            series(up("b"), &[(T, 5.0)]),
        ]);
        let v = vector(&q, "up > bool 2", T);
        assert_eq!(v.iter().map(|s| s.v).collect::<Vec<_>>(), vec![0.0, 1.0]);
        assert!(v.iter().all(|s| s.labels.metric_name().is_none()));
        let v = vector(&q, "2 > bool up", T);
        assert_eq!(v.iter().map(|s| s.v).collect::<Vec<_>>(), vec![1.0, 0.0]);
    }

    #[test]
    fn aggregations_newer_than_2_42_are_unknown_functions() {
        // 2.42 reads limitk/limit_ratio as calls of unknown functions.
        for (expr, name) in [
            ("limitk(1, x)", "limitk"),
            ("limit_ratio(0.5, x)", "limit_ratio"),
            ("-limitk(1, x)", "limitk"),
        ] {
            match instant(&store(vec![]), expr, T) {
                Err(e @ QueryError::Parse(_)) => {
                    assert_eq!(e.error_type(), "bad_data", "{expr}");
                    assert!(
                        e.to_string()
                            .contains(&format!("unknown function with name {name:?}")),
                        "{expr}: {e}"
                    );
                }
                other => panic!("{expr}: expected a parse error, got {other:?}"),
            }
        }
    }

    #[test]
    fn functions_prometheus_2_42_does_not_know_are_parse_errors() {
        // 2.42 answers bad_data "unknown function with name ..."; these
        // were execution errors ("not supported yet") before.
        for expr in [
            "sort_by_label(x, \"a\") * 2",
            "max_over_time(mad_over_time(x[5m])[5m:1m])",
            "info(x)",
        ] {
            match instant(&store(vec![]), expr, T) {
                Err(e @ QueryError::Parse(_)) => {
                    assert_eq!(e.error_type(), "bad_data", "{expr}");
                    assert!(e.to_string().contains("unknown function"), "{expr}: {e}");
                }
                other => panic!("{expr}: expected a parse error, got {other:?}"),
            }
        }
    }

    #[test]
    fn native_histogram_functions_are_empty_on_float_samples() {
        let q = store(vec![series(up("a"), &[(T, 1.0)])]);
        for expr in [
            "histogram_count(up)",
            "histogram_sum(up)",
            "histogram_fraction(0, 1, up)",
        ] {
            assert_eq!(vector(&q, expr, T), vec![], "{expr}");
        }
    }

    #[test]
    fn storage_errors_map_to_prometheus_error_types() {
        use super::super::querier::QuerierError;
        let q = InMemoryQuerier::failing(QuerierError::Storage("disk gone".into()));
        let e = instant(&q, "up", T).err();
        assert!(
            matches!(&e, Some(e) if e.error_type() == "internal" && e.http_status() == 500),
            "{e:?}"
        );
        let q = InMemoryQuerier::failing(QuerierError::TooManySeries(5));
        let e = instant(&q, "up", T).err();
        assert!(
            matches!(&e, Some(e) if e.error_type() == "execution" && e.http_status() == 422),
            "{e:?}"
        );
        // Literals never touch storage.
        assert_eq!(instant(&q, "1", T).ok(), Some(Value::Scalar(1.0)));
    }

    #[test]
    fn loading_more_than_max_samples_fails() {
        let samples: Vec<(i64, f64)> = (0..10).map(|i| (T - i * 1000, 1.0)).rev().collect();
        let q = store(vec![series(up("a"), &samples), series(up("b"), &samples)]);
        let engine = Engine {
            max_samples: 15,
            ..Engine::default()
        };
        match engine.instant(&q, "up", T) {
            Err(e @ QueryError::TooManySamples { limit: 15 }) => {
                assert_eq!(e.error_type(), "execution");
                assert_eq!(e.http_status(), 422);
            }
            other => panic!("expected too many samples, got {other:?}"),
        }
        let engine = Engine {
            max_samples: 20,
            ..Engine::default()
        };
        assert!(engine.instant(&q, "up", T).is_ok());
    }

    #[test]
    fn window_edges() {
        // Windows are [at - width, at], closed at both ends.
        let s = [(10, 1.0), (20, 2.0), (30, 3.0)];
        assert_eq!(latest_in_window(&s, 30, 10), Some(3.0));
        assert_eq!(latest_in_window(&s, 29, 10), Some(2.0));
        assert_eq!(latest_in_window(&s, 30, 0), Some(3.0));
        assert_eq!(latest_in_window(&s, 31, 0), None);
        assert_eq!(latest_in_window(&s, 9, 100), None);
        assert_eq!(latest_in_window(&s, 40, 10), Some(3.0));
        assert_eq!(latest_in_window(&s, 41, 10), None);
        assert_eq!(samples_in_window(&s, 30, 19), vec![(20, 2.0), (30, 3.0)]);
        assert_eq!(samples_in_window(&s, 30, 20), s.to_vec());
        assert_eq!(samples_in_window(&s, 29, 19), vec![(10, 1.0), (20, 2.0)]);
        assert!(samples_in_window(&s, 5, 100).is_empty());
        assert!(samples_in_window(&[], 5, 100).is_empty());
        assert_eq!(window_floor(30, 10), 20);
        assert_eq!(window_floor(i64::MIN, 10), i64::MIN);
    }
}
