//! A range query evaluated series by series: each node yields, for every
//! series it produces, that series' value at every step, from one pass
//! over the series' samples (windows slide forward step by step instead of
//! being searched and copied per step), with one label set per series
//! shared by all its steps instead of one per step.
//!
//! Only the node kinds whose per-step results can be computed this way
//! are handled ([`supported`]): selectors without `@`, the range functions
//! over a range selector, element-wise functions, vector–scalar operators,
//! the aggregations but `count_values`, and `histogram_quantile`. The
//! answer must be exactly what evaluating step by step gives: the same
//! series, the same values bit for bit (elements are combined in the order
//! the step-by-step evaluation lists them at each step, kept in [`Order`]),
//! the same errors. Where that cannot be decided here (two series would
//! share a label set), evaluation declines with `None` and the engine
//! evaluates step by step. Nothing here reads storage other than through
//! the evaluator's once-per-query selections.

use std::collections::HashMap;
use std::sync::Arc;

use nines_shared::Labels;
use promql_parser::parser::value::ValueType;
use promql_parser::parser::{AggregateExpr, BinaryExpr, Call, Expr, VectorSelector};

use super::aggregate::{AggregateOp, Element, Group, GroupResult, Grouping, Param, ranking_k};
use super::binary::{self, BinaryOp, ScalarSide};
use super::error::QueryError;
use super::eval::{Evaluator, duration_ms, offset_ms, window_floor};
use super::functions::{RANGE_FUNCTIONS, element_function, over_window, unwrap_parens};
use super::histogram::{BUCKET_LABEL, Bucket, bucket_quantile, parse_bound};
use super::label_sets::drop_names_and_metric;
use super::over_time::Window;
use super::rollup_read::{BucketPlan, latest_in_window, over_buckets, window_summary};
use super::value::{RangeSeries, is_stale_marker, without_metric_name};

/// The evaluation times of a range query: `start`, `start + step`, ... up
/// to `end`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Steps {
    start: i64,
    step: i64,
    len: usize,
}

impl Steps {
    /// The steps of `[start, end]` (checked by the engine: `start <= end`,
    /// `step > 0`, at most `MAX_RANGE_STEPS` steps after the start).
    pub(super) fn new(start: i64, end: i64, step: i64) -> Self {
        let after = (i128::from(end) - i128::from(start)) / i128::from(step);
        Steps {
            start,
            step,
            len: usize::try_from(after).unwrap_or(0) + 1,
        }
    }

    /// The `i`th evaluation time (never past `end`, so no overflow).
    fn time(&self, i: usize) -> i64 {
        self.start + self.step * i as i64
    }

    fn times(&self) -> impl Iterator<Item = i64> + '_ {
        (0..self.len).map(|i| self.time(i))
    }
}

/// One series of a node's result: its labels and its value at each step
/// (`None`: not in the vector at that step).
struct StepSeries {
    labels: Arc<Labels>,
    values: Vec<Option<f64>>,
}

/// The order in which step-by-step evaluation lists a node's elements at
/// each step; it decides the order an aggregation adds values in.
enum Order {
    /// By labels: the series are sorted by labels, and at each step the
    /// elements come in that order.
    Labels,
    /// Per step, the indices of the present series in their order.
    PerStep(Vec<Vec<u32>>),
}

/// A node's result over all steps. Its series' label sets are distinct.
pub(super) struct Stepped {
    series: Vec<StepSeries>,
    order: Order,
}

impl Stepped {
    /// Indices of the series present at step `i`, in evaluation order.
    fn at_step(&self, i: usize) -> Vec<usize> {
        match &self.order {
            Order::Labels => (0..self.series.len())
                .filter(|&s| self.series[s].values[i].is_some())
                .collect(),
            Order::PerStep(per) => per[i].iter().map(|&s| s as usize).collect(),
        }
    }

    /// The series sorted by labels, those with no value at any step left
    /// out; `None` when two
    /// would share a label set (step-by-step evaluation then decides
    /// whether that is an error).
    fn sorted(mut series: Vec<StepSeries>) -> Option<Stepped> {
        series.retain(|s| s.values.iter().any(Option::is_some));
        series.sort_by(|a, b| a.labels.cmp(&b.labels));
        if series.windows(2).any(|w| w[0].labels == w[1].labels) {
            return None;
        }
        Some(Stepped {
            series,
            order: Order::Labels,
        })
    }

    /// The points held, as a range query counts them.
    pub(super) fn points(&self) -> usize {
        self.series
            .iter()
            .map(|s| s.values.iter().filter(|v| v.is_some()).count())
            .sum()
    }

    /// The range query's matrix: per series its points at the step times,
    /// sorted by labels.
    pub(super) fn into_matrix(self, steps: &Steps) -> Vec<RangeSeries> {
        let mut out: Vec<RangeSeries> = self
            .series
            .into_iter()
            .map(|s| RangeSeries {
                labels: Arc::unwrap_or_clone(s.labels),
                samples: s
                    .values
                    .iter()
                    .enumerate()
                    .filter_map(|(i, v)| v.map(|v| (steps.time(i), v)))
                    .collect(),
            })
            .filter(|s| !s.samples.is_empty())
            .collect();
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        out
    }
}

/// Whether `expr` can be evaluated series by series, every node of it.
pub(super) fn supported(expr: &Expr) -> bool {
    match expr {
        Expr::Paren(p) => supported(&p.expr),
        Expr::VectorSelector(vs) => vs.at.is_none(),
        Expr::Call(c) => call_supported(c),
        Expr::Aggregate(a) => {
            let op_ok = matches!(
                AggregateOp::from_token(a.op),
                Ok(op) if op != AggregateOp::CountValues
            );
            let param_ok = a
                .param
                .as_ref()
                .is_none_or(|p| p.value_type() == ValueType::Scalar);
            op_ok && param_ok && supported(&a.expr)
        }
        Expr::Binary(b) => match (b.lhs.value_type(), b.rhs.value_type()) {
            (ValueType::Vector, ValueType::Scalar) => {
                BinaryOp::from_token(b.op).is_ok() && supported(&b.lhs)
            }
            (ValueType::Scalar, ValueType::Vector) => {
                BinaryOp::from_token(b.op).is_ok() && supported(&b.rhs)
            }
            _ => false,
        },
        _ => false,
    }
}

fn call_supported(c: &Call) -> bool {
    let name = c.func.name;
    let args: Vec<&Expr> = c.args.args.iter().map(|a| a.as_ref()).collect();
    let scalar = |i: usize| {
        args.get(i)
            .is_some_and(|e| e.value_type() == ValueType::Scalar)
    };
    match name {
        "histogram_quantile" => args.len() == 2 && scalar(0) && supported(args[1]),
        // Their own edge cases (no series, factors checked per series)
        // stay with step-by-step evaluation.
        "absent_over_time" | "holt_winters" => false,
        _ if RANGE_FUNCTIONS.contains(&name) => {
            let (params, matrix): (&[usize], usize) = match name {
                "quantile_over_time" => (&[0], 1),
                "predict_linear" => (&[1], 0),
                _ => (&[], 0),
            };
            args.len() == params.len() + 1
                && params.iter().all(|&i| scalar(i))
                && matches!(
                    args.get(matrix).map(|e| unwrap_parens(e)),
                    Some(Expr::MatrixSelector(ms)) if ms.vs.at.is_none()
                )
        }
        _ => element_function(name).is_some() && args.len() == 1 && supported(args[0]),
    }
}

/// One element of an aggregation's input at one step: which input series,
/// and its value.
#[derive(Debug, Clone, Copy)]
struct SeriesValue {
    series: usize,
    v: f64,
}

impl Element for SeriesValue {
    fn value(&self) -> f64 {
        self.v
    }
}

impl Evaluator<'_> {
    /// `expr` (for which [`supported`] holds) at every step, or `None`
    /// when it must be evaluated step by step.
    pub(super) fn eval_steps(
        &mut self,
        expr: &Expr,
        steps: &Steps,
    ) -> Result<Option<Stepped>, QueryError> {
        match expr {
            Expr::Paren(p) => self.eval_steps(&p.expr, steps),
            Expr::VectorSelector(vs) => self.selector_steps(vs, steps).map(Some),
            Expr::Call(c) => self.call_steps(c, steps),
            Expr::Aggregate(a) => self.aggregate_steps(a, steps),
            Expr::Binary(b) => self.binary_steps(b, steps),
            _ => Ok(None),
        }
    }

    /// A scalar expression's value at every step, evaluated step by step.
    fn scalar_steps(&mut self, e: &Expr, steps: &Steps) -> Result<Vec<f64>, QueryError> {
        steps
            .times()
            .map(|t| match self.eval(e, t)? {
                super::Value::Scalar(v) => Ok(v),
                other => Err(QueryError::Unsupported(format!(
                    "expected a scalar argument, got {}",
                    other.documented_type()
                ))),
            })
            .collect()
    }

    /// An instant vector selector: per series, the latest sample in the
    /// lookback window of each step, found by one forward walk.
    fn selector_steps(
        &mut self,
        vs: &VectorSelector,
        steps: &Steps,
    ) -> Result<Stepped, QueryError> {
        let lookback = self.lookback_ms;
        let offset = offset_ms(vs.offset.as_ref());
        if let Some(plan) = self.bucket_plan(vs) {
            return self.selector_steps_from_buckets(vs, plan, steps);
        }
        let selection = self.selection(vs, lookback)?;
        let mut series = Vec::with_capacity(selection.len());
        for s in selection {
            let samples = &s.samples;
            let mut next = 0;
            let values: Vec<Option<f64>> = steps
                .times()
                .map(|t| {
                    let at = t.saturating_sub(offset);
                    while next < samples.len() && samples[next].0 <= at {
                        next += 1;
                    }
                    let &(ts, v) = samples.get(next.checked_sub(1)?)?;
                    (ts >= window_floor(at, lookback) && !is_stale_marker(v)).then_some(v)
                })
                .collect();
            if values.iter().any(Option::is_some) {
                series.push(StepSeries {
                    labels: Arc::new(s.labels.clone()),
                    values,
                });
            }
        }
        // The selection is sorted by labels, and label sets are distinct.
        Ok(Stepped {
            series,
            order: Order::Labels,
        })
    }

    fn call_steps(&mut self, c: &Call, steps: &Steps) -> Result<Option<Stepped>, QueryError> {
        let name = c.func.name;
        let args: Vec<&Expr> = c.args.args.iter().map(|a| a.as_ref()).collect();
        if name == "histogram_quantile" {
            return self.histogram_quantile_steps(&args, steps);
        }
        if RANGE_FUNCTIONS.contains(&name) {
            return self.range_function_steps(name, &args, steps);
        }
        let (Some(f), Some(arg)) = (element_function(name), args.first()) else {
            return Ok(None);
        };
        let Some(input) = self.eval_steps(arg, steps)? else {
            return Ok(None);
        };
        let series = input
            .series
            .into_iter()
            .map(|s| StepSeries {
                labels: Arc::new(without_metric_name(&s.labels)),
                values: s.values.into_iter().map(|v| v.map(f)).collect(),
            })
            .collect();
        Ok(Stepped::sorted(series))
    }

    /// A function over a range selector: per series, the window of each
    /// step slides forward over the series' samples (stale markers left
    /// out once), and the function is computed on the window's slice.
    fn range_function_steps(
        &mut self,
        name: &str,
        args: &[&Expr],
        steps: &Steps,
    ) -> Result<Option<Stepped>, QueryError> {
        let (param_index, matrix_index) = match name {
            "quantile_over_time" => (Some(0), 1),
            "predict_linear" => (Some(1), 0),
            _ => (None, 0),
        };
        // Step by step the parameter is evaluated before the range.
        let params = match param_index.and_then(|i| args.get(i)) {
            Some(p) => Some(self.scalar_steps(p, steps)?),
            None => None,
        };
        let Some(Expr::MatrixSelector(ms)) = args.get(matrix_index).map(|e| unwrap_parens(e))
        else {
            return Ok(None);
        };
        let range = duration_ms(ms.range);
        let offset = offset_ms(ms.vs.offset.as_ref());
        let keep_name = name == "last_over_time";
        if let Some(plan) = self.bucket_plan(&ms.vs) {
            return self.range_function_steps_from_buckets(name, &ms.vs, plan, range, steps);
        }
        let selection = self.selection(&ms.vs, range)?;
        let mut series = Vec::with_capacity(selection.len());
        let mut without_stale: Vec<(i64, f64)> = Vec::new();
        for s in selection {
            let samples: &[(i64, f64)] = if s.samples.iter().any(|&(_, v)| is_stale_marker(v)) {
                without_stale.clear();
                without_stale.extend(s.samples.iter().filter(|&&(_, v)| !is_stale_marker(v)));
                &without_stale
            } else {
                &s.samples
            };
            let (mut first, mut after) = (0, 0);
            let values: Vec<Option<f64>> = steps
                .times()
                .enumerate()
                .map(|(i, t)| {
                    let end = t.saturating_sub(offset);
                    let floor = window_floor(end, range);
                    while after < samples.len() && samples[after].0 <= end {
                        after += 1;
                    }
                    while first < after && samples[first].0 < floor {
                        first += 1;
                    }
                    let window = &samples[first..after];
                    if window.is_empty() {
                        return None;
                    }
                    let w = Window {
                        start: floor,
                        end,
                        range_ms: range,
                    };
                    let param = params.as_ref().map_or(f64::NAN, |p| p[i]);
                    over_window(name, window, w, t, param)
                })
                .collect();
            let labels = if keep_name {
                s.labels.clone()
            } else {
                without_metric_name(&s.labels)
            };
            series.push(StepSeries {
                labels: Arc::new(labels),
                values,
            });
        }
        Ok(Stepped::sorted(series))
    }

    /// An instant vector selector read from rollup buckets: per series,
    /// the latest sample in each step's (bucket-aligned) lookback window.
    fn selector_steps_from_buckets(
        &mut self,
        vs: &VectorSelector,
        plan: BucketPlan,
        steps: &Steps,
    ) -> Result<Stepped, QueryError> {
        let lookback = self.lookback_ms;
        let offset = offset_ms(vs.offset.as_ref());
        let selection = self.bucket_selection(vs, plan, lookback)?;
        let series = selection
            .iter()
            .filter_map(|s| {
                let values: Vec<Option<f64>> = steps
                    .times()
                    .map(|t| {
                        let (start, end) = plan.window(t.saturating_sub(offset), lookback);
                        latest_in_window(&s.buckets, start, end).map(|(_, v)| v)
                    })
                    .collect();
                values.iter().any(Option::is_some).then(|| StepSeries {
                    labels: Arc::new(s.labels.clone()),
                    values,
                })
            })
            .collect();
        // The selection is sorted by labels, and label sets are distinct.
        Ok(Stepped {
            series,
            order: Order::Labels,
        })
    }

    /// A range function over a range selector read from rollup buckets:
    /// per series and step, the buckets of the window merged and the
    /// function computed from them.
    fn range_function_steps_from_buckets(
        &mut self,
        name: &str,
        vs: &VectorSelector,
        plan: BucketPlan,
        range: i64,
        steps: &Steps,
    ) -> Result<Option<Stepped>, QueryError> {
        let offset = offset_ms(vs.offset.as_ref());
        let keep_name = name == "last_over_time";
        let selection = self.bucket_selection(vs, plan, range)?;
        let series = selection
            .iter()
            .map(|s| {
                let values = steps
                    .times()
                    .map(|t| {
                        let (start, end) = plan.window(t.saturating_sub(offset), range);
                        let summary = window_summary(&s.buckets, start, end)?;
                        let w = Window {
                            start,
                            end,
                            range_ms: end - start,
                        };
                        over_buckets(name, &summary, w)
                    })
                    .collect();
                let labels = if keep_name {
                    s.labels.clone()
                } else {
                    without_metric_name(&s.labels)
                };
                StepSeries {
                    labels: Arc::new(labels),
                    values,
                }
            })
            .collect();
        Ok(Stepped::sorted(series))
    }

    /// `vector op scalar` or `scalar op vector`.
    fn binary_steps(
        &mut self,
        b: &BinaryExpr,
        steps: &Steps,
    ) -> Result<Option<Stepped>, QueryError> {
        let Ok(op) = BinaryOp::from_token(b.op) else {
            return Ok(None);
        };
        let return_bool = b.return_bool();
        // Operands in the order step-by-step evaluation takes them.
        let (input, scalars, side) = if b.lhs.value_type() == ValueType::Vector {
            let Some(input) = self.eval_steps(&b.lhs, steps)? else {
                return Ok(None);
            };
            (input, self.scalar_steps(&b.rhs, steps)?, ScalarSide::Right)
        } else {
            let scalars = self.scalar_steps(&b.lhs, steps)?;
            let Some(input) = self.eval_steps(&b.rhs, steps)? else {
                return Ok(None);
            };
            (input, scalars, ScalarSide::Left)
        };
        let drops_name = binary::vector_scalar_drops_name(op, return_bool);
        let series = input
            .series
            .into_iter()
            .map(|s| StepSeries {
                labels: if drops_name {
                    Arc::new(without_metric_name(&s.labels))
                } else {
                    s.labels
                },
                values: s
                    .values
                    .iter()
                    .zip(&scalars)
                    .map(|(v, &scalar)| {
                        binary::vector_scalar_value(op, (*v)?, scalar, side, return_bool)
                    })
                    .collect(),
            })
            .collect();
        Ok(Stepped::sorted(series))
    }

    /// An aggregation: each input series' group is found once; at each
    /// step the present elements are folded into their groups in the
    /// order step-by-step evaluation lists them.
    fn aggregate_steps(
        &mut self,
        a: &AggregateExpr,
        steps: &Steps,
    ) -> Result<Option<Stepped>, QueryError> {
        let Ok(op) = AggregateOp::from_token(a.op) else {
            return Ok(None);
        };
        let grouping = Grouping::of(a);
        // Step by step the parameter is evaluated before the vector.
        let params: Vec<Param> = match &a.param {
            None => vec![Param::None; steps.len],
            Some(p) => self
                .scalar_steps(p, steps)?
                .into_iter()
                .map(Param::Number)
                .collect(),
        };
        let Some(input) = self.eval_steps(&a.expr, steps)? else {
            return Ok(None);
        };
        let mut index: HashMap<Labels, usize> = HashMap::new();
        let mut group_labels: Vec<Arc<Labels>> = Vec::new();
        let group_of: Vec<usize> = input
            .series
            .iter()
            .map(|s| {
                let key = grouping.key(&s.labels);
                *index.entry(key).or_insert_with_key(|key| {
                    group_labels.push(Arc::new(key.clone()));
                    group_labels.len() - 1
                })
            })
            .collect();
        let ranking = matches!(op, AggregateOp::Topk | AggregateOp::Bottomk);
        // topk/bottomk give input series; the others one series per group.
        let mut series: Vec<StepSeries> = if ranking {
            input
                .series
                .iter()
                .map(|s| StepSeries {
                    labels: s.labels.clone(),
                    values: vec![None; steps.len],
                })
                .collect()
        } else {
            group_labels
                .into_iter()
                .map(|labels| StepSeries {
                    labels,
                    values: vec![None; steps.len],
                })
                .collect()
        };
        let mut groups: Vec<Option<Group<SeriesValue>>> = (0..index.len()).map(|_| None).collect();
        let mut order: Vec<Vec<u32>> = Vec::with_capacity(steps.len);
        for (i, param) in params.iter().enumerate() {
            let present = input.at_step(i);
            let mut listed: Vec<u32> = Vec::new();
            let Some(k) = ranking_k(op, param, present.len())? else {
                order.push(listed);
                continue;
            };
            let mut seen: Vec<usize> = Vec::new();
            for s in present {
                let Some(v) = input.series[s].values[i] else {
                    continue;
                };
                let e = SeriesValue { series: s, v };
                let g = group_of[s];
                match &mut groups[g] {
                    Some(group) => group.add(op, e, k),
                    slot @ None => {
                        *slot = Some(Group::new(op, e));
                        seen.push(g);
                    }
                }
            }
            for g in seen {
                let Some(group) = groups[g].take() else {
                    continue;
                };
                match group.finish(op, param) {
                    GroupResult::Value(v) => {
                        series[g].values[i] = Some(v);
                        listed.push(g as u32);
                    }
                    GroupResult::Elements(kept) => {
                        for e in kept {
                            series[e.series].values[i] = Some(e.v);
                            listed.push(e.series as u32);
                        }
                    }
                }
            }
            order.push(listed);
        }
        // Leave out series never present, renumbering the order.
        let mut renumber: Vec<Option<u32>> = vec![None; series.len()];
        let mut kept = Vec::with_capacity(series.len());
        for (n, s) in series.into_iter().enumerate() {
            if s.values.iter().any(Option::is_some) {
                renumber[n] = Some(kept.len() as u32);
                kept.push(s);
            }
        }
        let order = order
            .into_iter()
            .map(|listed| {
                listed
                    .into_iter()
                    .filter_map(|n| renumber[n as usize])
                    .collect()
            })
            .collect();
        Ok(Some(Stepped {
            series: kept,
            order: Order::PerStep(order),
        }))
    }

    /// `histogram_quantile(φ, buckets)`: each bucket series' histogram and
    /// bound are found once; at each step the present buckets are gathered
    /// per histogram in evaluation order.
    fn histogram_quantile_steps(
        &mut self,
        args: &[&Expr],
        steps: &Steps,
    ) -> Result<Option<Stepped>, QueryError> {
        let (Some(q_expr), Some(v_expr)) = (args.first(), args.get(1)) else {
            return Ok(None);
        };
        let qs = self.scalar_steps(q_expr, steps)?;
        let Some(input) = self.eval_steps(v_expr, steps)? else {
            return Ok(None);
        };
        let mut index: HashMap<Labels, usize> = HashMap::new();
        let mut series: Vec<StepSeries> = Vec::new();
        let le = [BUCKET_LABEL.to_string()];
        let bucket_of: Vec<Option<(usize, f64)>> = input
            .series
            .iter()
            .map(|s| {
                let upper = s.labels.get(BUCKET_LABEL).and_then(parse_bound)?;
                let key = drop_names_and_metric(&s.labels, &le);
                let h = *index.entry(key).or_insert_with_key(|key| {
                    series.push(StepSeries {
                        labels: Arc::new(key.clone()),
                        values: vec![None; steps.len],
                    });
                    series.len() - 1
                });
                Some((h, upper))
            })
            .collect();
        let mut buckets: Vec<Vec<Bucket>> = vec![Vec::new(); series.len()];
        for (i, &q) in qs.iter().enumerate() {
            let mut seen: Vec<usize> = Vec::new();
            for s in input.at_step(i) {
                let (Some((h, upper)), Some(count)) = (bucket_of[s], input.series[s].values[i])
                else {
                    continue;
                };
                if buckets[h].is_empty() {
                    seen.push(h);
                }
                buckets[h].push(Bucket { upper, count });
            }
            for h in seen {
                series[h].values[i] = Some(bucket_quantile(q, &mut buckets[h]));
                buckets[h].clear();
            }
        }
        Ok(Stepped::sorted(series))
    }
}

#[cfg(test)]
mod tests {
    use super::super::Engine;
    use super::super::in_memory::InMemoryQuerier;
    use super::super::querier::SeriesSamples;
    use super::super::value::{STALE_MARKER_BITS, Value};
    use super::*;
    use crate::query::fixtures::Rng;

    const T: i64 = 1_700_000_000_000;
    const SEC: i64 = 1_000;
    const MIN: i64 = 60 * SEC;

    /// Irregular samples from T - 30m to T + 90m: gaps, stale markers,
    /// NaNs, and counter resets when `counter`.
    fn samples(rng: &mut Rng, counter: bool) -> Vec<(i64, f64)> {
        let mut out = Vec::new();
        let mut t = T - 30 * MIN + rng.below(60) as i64 * SEC;
        let mut v = rng.below(1000) as f64;
        while t < T + 90 * MIN {
            let roll = rng.below(100);
            let value = match roll {
                0..=2 => f64::from_bits(STALE_MARKER_BITS),
                3 => f64::NAN,
                4 if counter => {
                    v = rng.below(10) as f64;
                    v
                }
                _ => {
                    if counter {
                        v += rng.below(500) as f64 / 8.0;
                    } else {
                        v = (v + rng.below(200) as f64 - 100.0) / 1.5;
                    }
                    v
                }
            };
            out.push((t, value));
            t += match rng.below(20) {
                0 => (6 + rng.below(10)) as i64 * MIN,
                _ => (5 + rng.below(70)) as i64 * SEC,
            };
        }
        out
    }

    fn store(seed: u64) -> InMemoryQuerier {
        let mut rng = Rng(seed);
        let mut series = Vec::new();
        for instance in ["a", "b", "c", "d"] {
            for job in ["x", "y"] {
                let l = [("instance", instance), ("job", job)];
                series.push(SeriesSamples {
                    labels: Labels::new("a_total", l),
                    samples: samples(&mut rng, true),
                });
                series.push(SeriesSamples {
                    labels: Labels::new("b", l),
                    samples: samples(&mut rng, false),
                });
            }
            for le in ["0.1", "0.5", "1", "+Inf", "1.0", "bad"] {
                series.push(SeriesSamples {
                    labels: Labels::new("h_bucket", [("instance", instance), ("le", le)]),
                    samples: samples(&mut rng, true),
                });
            }
        }
        InMemoryQuerier::new(series)
    }

    const EXPRESSIONS: &[&str] = &[
        "a_total",
        "b",
        "b offset 3m",
        "b offset -2m",
        "{job=\"x\"}",
        "rate(a_total[5m])",
        "rate(a_total[5m] offset 1m)",
        "increase(a_total[2m])",
        "delta(b[5m])",
        "irate(a_total[5m])",
        "idelta(b[3m])",
        "deriv(b[10m])",
        "predict_linear(b[10m], 600)",
        "predict_linear((b[10m]), 4*3600)",
        "resets(a_total[10m])",
        "changes(b[10m])",
        "avg_over_time(b[5m])",
        "min_over_time(b[5m])",
        "max_over_time(b[5m])",
        "sum_over_time(b[5m])",
        "count_over_time(b[1m])",
        "last_over_time(b[5m])",
        "quantile_over_time(0.3, b[5m])",
        "quantile_over_time(scalar(count(b)) / 10, b[5m])",
        "stddev_over_time(b[5m])",
        "stdvar_over_time(b[5m])",
        "present_over_time(b[5m])",
        "rate({__name__=~\".+\"}[5m])",
        "last_over_time({__name__=~\".+\"}[5m])",
        "sum(rate(a_total[5m]))",
        "sum by (instance) (rate(a_total[5m]))",
        "sum by (instance) (rate(a_total{job!=\"x\"}[5m]))",
        "avg without (job) (b)",
        "min by (job) (b)",
        "max(b)",
        "count(b)",
        "group by (job) (b)",
        "stddev(b)",
        "stdvar by (instance) (b)",
        "quantile(0.9, b)",
        "quantile by (job) (0.2, rate(a_total[5m]))",
        "sum(sum by (instance) (b))",
        "avg(max by (job, instance) (b))",
        "topk(2, b)",
        "topk by (job) (1, b)",
        "bottomk(3, rate(a_total[5m]))",
        "topk(5, sum by (instance) (rate(a_total[5m])))",
        "topk(scalar(count(b)) - 6, b)",
        "topk(0, b)",
        "topk(1e300, b)",
        "histogram_quantile(0.9, sum by (le, instance) (rate(h_bucket[5m])))",
        "histogram_quantile(0.5, h_bucket)",
        "histogram_quantile(1.5, rate(h_bucket[5m]))",
        "histogram_quantile(0.5, sum by (le) (h_bucket))",
        "b * 2",
        "2 - b",
        "b > 10",
        "b > bool 10",
        "10 < b",
        "b atan2 1",
        "(b + 1) / scalar(count(b))",
        "ceil(b)",
        "sqrt(abs(b))",
        "abs({__name__=~\"a_total|b\"})",
        "{__name__=~\"a_total|b\"} * 2",
        "{__name__=~\"a_total|b\"} > 0",
        "rate(b[5m]) > 0",
        "-b",
        "b @ 1700000000",
        "sum(b) + 1",
        "count_values(\"v\", b)",
    ];

    fn bits(v: &Result<Value, QueryError>) -> String {
        match v {
            Ok(Value::Matrix(m)) => m
                .iter()
                .map(|s| {
                    let points: Vec<String> = s
                        .samples
                        .iter()
                        .map(|(t, v)| format!("{t}:{:x}", v.to_bits()))
                        .collect();
                    format!("{:?} {}", s.labels, points.join(" "))
                })
                .collect::<Vec<_>>()
                .join("\n"),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn series_by_series_equals_step_by_step_bit_for_bit() {
        let ranges = [
            (T, T + 60 * MIN, 15 * SEC),
            (T - 10 * MIN, T + 80 * MIN, 5 * MIN),
            (T + 7 * SEC, T + 20 * MIN + 3, 61 * SEC),
            (T - 60 * MIN, T - 40 * MIN, MIN),
            (T, T, MIN),
        ];
        let engine = Engine::default();
        let mut fast_paths = 0;
        for seed in 1..=6 {
            let q = store(seed);
            for expr in EXPRESSIONS {
                for &(start, end, step) in &ranges {
                    let by_series = engine.range(&q, expr, start, end, step);
                    let by_step = engine.range_step_by_step(&q, expr, start, end, step);
                    assert_eq!(
                        bits(&by_series),
                        bits(&by_step),
                        "{expr} over [{start}, {end}] step {step}, seed {seed}"
                    );
                    if by_series
                        .as_ref()
                        .is_ok_and(|v| matches!(v, Value::Matrix(m) if !m.is_empty()))
                    {
                        fast_paths += 1;
                    }
                }
            }
        }
        assert!(fast_paths > 100, "most cases have an answer to compare");
    }

    #[test]
    fn supported_expressions_are_evaluated_series_by_series() {
        let q = store(7);
        let steps = Steps::new(T, T + 60 * MIN, 15 * SEC);
        let mut by_series = Vec::new();
        for expr in EXPRESSIONS {
            let parsed = promql_parser::parser::parse(expr).expect("parses");
            if !supported(&parsed) {
                continue;
            }
            let mut ev = Evaluator::new(&q, 300_000, usize::MAX, T, T + 60 * MIN);
            // An error counts: it came from the series by series path.
            if !matches!(ev.eval_steps(&parsed, &steps), Ok(None)) {
                by_series.push(*expr);
            }
        }
        // All but those whose series would share a label set.
        let missing: Vec<&&str> = EXPRESSIONS
            .iter()
            .filter(|e| !by_series.contains(e))
            .collect();
        assert_eq!(missing.len(), 6, "{missing:?}");
        for declined in [
            "rate({__name__=~\".+\"}[5m])",
            "abs({__name__=~\"a_total|b\"})",
            "{__name__=~\"a_total|b\"} * 2",
        ] {
            assert!(!by_series.contains(&declined), "{declined}");
        }
    }

    #[test]
    fn supported_covers_the_dashboard_shapes_and_declines_others() {
        let parse = |e: &str| promql_parser::parser::parse(e).expect("parses");
        for e in [
            "sum by (instance) (rate(node_cpu_seconds_total{mode!=\"idle\"}[5m]))",
            "histogram_quantile(0.99, sum by (le, instance) (rate(x_bucket[5m])))",
            "topk(5, sum by (instance) (rate(x[5m])))",
            "predict_linear(x[1h], 4*3600)",
            "x",
            "x * 2 > 1",
        ] {
            assert!(supported(&parse(e)), "{e}");
        }
        for e in [
            "1",
            "x @ 100",
            "rate(x[5m] @ 100)",
            "x + y",
            "-x",
            "absent_over_time(x[5m])",
            "count_values(\"v\", x)",
            "max_over_time(x[5m:1m])",
            "label_replace(x, \"a\", \"b\", \"c\", \"d\")",
        ] {
            assert!(!supported(&parse(e)), "{e}");
        }
    }
}
