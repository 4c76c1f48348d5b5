//! PromQL function calls: evaluates the arguments of a call at one
//! evaluation time and applies the function as Prometheus 2.42 does —
//! per-element math, clamping and rounding, label rewriting, sorting, date
//! parts, `absent`, `timestamp`, `histogram_quantile`, and the functions
//! over range vectors (whose arithmetic lives in [`super::over_time`]).
//!
//! Functions Prometheus 2.42 has that are not implemented here, and
//! functions from later versions, fail with [`QueryError::Unsupported`]
//! naming the function; nothing here returns a guessed answer. Range
//! arguments come from the evaluator's once-per-query selections, never
//! from a fresh storage read.

use nines_shared::{Labels, METRIC_NAME_LABEL, is_valid_label_name};
use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::token::T_EQL_REGEX;
use promql_parser::parser::{Call, Expr};

use super::error::QueryError;
use super::eval::{Evaluator, duration_ms, instant_vector, latest_sample_in_window};
use super::go_time;
use super::histogram::histogram_quantile;
use super::label_sets::with_label;
use super::over_time::{self, Window};
use super::value::{InstantSample, RangeSeries, Value, without_metric_name};

/// The functions that take a range vector.
pub(super) const RANGE_FUNCTIONS: &[&str] = &[
    "rate",
    "irate",
    "increase",
    "delta",
    "idelta",
    "deriv",
    "predict_linear",
    "resets",
    "changes",
    "avg_over_time",
    "min_over_time",
    "max_over_time",
    "sum_over_time",
    "count_over_time",
    "last_over_time",
    "quantile_over_time",
    "stddev_over_time",
    "stdvar_over_time",
    "present_over_time",
    "absent_over_time",
    "holt_winters",
];

/// Strips any parentheses around an expression.
pub(super) fn unwrap_parens(mut e: &Expr) -> &Expr {
    while let Expr::Paren(p) = e {
        e = &p.expr;
    }
    e
}

impl Evaluator<'_> {
    /// The value of the call `c` at `t`.
    pub(super) fn eval_call(&mut self, c: &Call, t: i64) -> Result<Value, QueryError> {
        let name = c.func.name;
        let args: Vec<&Expr> = c.args.args.iter().map(|a| a.as_ref()).collect();
        if RANGE_FUNCTIONS.contains(&name) {
            return self.eval_range_function(name, &args, t);
        }
        if let Some(f) = element_function(name) {
            let v = self.vector_arg(&args, 0, t)?;
            return instant_vector(
                v.into_iter()
                    .map(|s| InstantSample {
                        labels: without_metric_name(&s.labels),
                        t,
                        v: f(s.v),
                    })
                    .collect(),
            );
        }
        if let Some(part) = date_part(name) {
            return self.eval_date_function(part, &args, t);
        }
        match name {
            "time" => Ok(Value::Scalar(t as f64 / 1000.0)),
            "pi" => Ok(Value::Scalar(std::f64::consts::PI)),
            "vector" => {
                let v = self.scalar_arg(&args, 0, t)?;
                Ok(Value::Vector(vec![InstantSample {
                    labels: Labels::default(),
                    t,
                    v,
                }]))
            }
            "scalar" => {
                let v = self.vector_arg(&args, 0, t)?;
                Ok(Value::Scalar(match v.as_slice() {
                    [only] => only.v,
                    _ => f64::NAN,
                }))
            }
            "round" => {
                let v = self.vector_arg(&args, 0, t)?;
                let to_nearest = if args.len() > 1 {
                    self.scalar_arg(&args, 1, t)?
                } else {
                    1.0
                };
                // Prometheus divides by the inverse: fewer rounding errors.
                let inverse = 1.0 / to_nearest;
                map_values(v, t, |x| (x * inverse + 0.5).floor() / inverse)
            }
            "clamp" => {
                let v = self.vector_arg(&args, 0, t)?;
                let min = self.scalar_arg(&args, 1, t)?;
                let max = self.scalar_arg(&args, 2, t)?;
                if max < min {
                    return Ok(Value::Vector(Vec::new()));
                }
                map_values(v, t, |x| go_max(min, go_min(max, x)))
            }
            "clamp_min" => {
                let v = self.vector_arg(&args, 0, t)?;
                let min = self.scalar_arg(&args, 1, t)?;
                map_values(v, t, |x| go_max(min, x))
            }
            "clamp_max" => {
                let v = self.vector_arg(&args, 0, t)?;
                let max = self.scalar_arg(&args, 1, t)?;
                map_values(v, t, |x| go_min(max, x))
            }
            "timestamp" => self.eval_timestamp(&args, t),
            "absent" => {
                let v = self.vector_arg(&args, 0, t)?;
                if !v.is_empty() {
                    return Ok(Value::Vector(Vec::new()));
                }
                Ok(Value::Vector(vec![InstantSample {
                    labels: absent_labels(args.first().copied()),
                    t,
                    v: 1.0,
                }]))
            }
            "sort" | "sort_desc" => {
                let mut v = self.vector_arg(&args, 0, t)?;
                let descending = name == "sort_desc";
                // NaN last either way.
                v.sort_by(|a, b| match (a.v.is_nan(), b.v.is_nan()) {
                    (true, true) => std::cmp::Ordering::Equal,
                    (true, false) => std::cmp::Ordering::Greater,
                    (false, true) => std::cmp::Ordering::Less,
                    _ if descending => b.v.total_cmp(&a.v),
                    _ => a.v.total_cmp(&b.v),
                });
                Ok(Value::Vector(v))
            }
            "histogram_quantile" => {
                let q = self.scalar_arg(&args, 0, t)?;
                let v = self.vector_arg(&args, 1, t)?;
                instant_vector(histogram_quantile(q, &v, t))
            }
            "label_replace" => self.eval_label_replace(&args, t),
            "label_join" => self.eval_label_join(&args, t),
            // Native-histogram functions: they skip float samples, and
            // every sample stored here is a float (remote_write refuses
            // native histograms), so the answer is always empty. The
            // arguments are still evaluated, for their errors.
            "histogram_count" | "histogram_sum" => {
                self.vector_arg(&args, 0, t)?;
                Ok(Value::Vector(Vec::new()))
            }
            "histogram_fraction" => {
                self.scalar_arg(&args, 0, t)?;
                self.scalar_arg(&args, 1, t)?;
                self.vector_arg(&args, 2, t)?;
                Ok(Value::Vector(Vec::new()))
            }
            _ => Err(QueryError::Unsupported(format!(
                "function {name}() is not supported yet"
            ))),
        }
    }

    fn arg<'e>(args: &[&'e Expr], i: usize) -> Result<&'e Expr, QueryError> {
        args.get(i).copied().ok_or_else(|| {
            QueryError::Parse(format!("missing argument {} in function call", i + 1))
        })
    }

    fn scalar_arg(&mut self, args: &[&Expr], i: usize, t: i64) -> Result<f64, QueryError> {
        match self.eval(Self::arg(args, i)?, t)? {
            Value::Scalar(v) => Ok(v),
            other => Err(QueryError::Unsupported(format!(
                "expected a scalar argument, got {}",
                other.documented_type()
            ))),
        }
    }

    fn string_arg(&mut self, args: &[&Expr], i: usize, t: i64) -> Result<String, QueryError> {
        match self.eval(Self::arg(args, i)?, t)? {
            Value::String(s) => Ok(s),
            other => Err(QueryError::Unsupported(format!(
                "expected a string argument, got {}",
                other.documented_type()
            ))),
        }
    }

    fn vector_arg(
        &mut self,
        args: &[&Expr],
        i: usize,
        t: i64,
    ) -> Result<Vec<InstantSample>, QueryError> {
        let e = Self::arg(args, i)?;
        self.eval_instant_vector(e, t)
    }

    /// A range-vector argument (a range selector or a subquery, maybe in
    /// parentheses) at `t`, with the window it covers.
    fn range_arg(&mut self, e: &Expr, t: i64) -> Result<(Vec<RangeSeries>, Window), QueryError> {
        match unwrap_parens(e) {
            Expr::MatrixSelector(ms) => {
                let end = self.reference_time(&ms.vs, t)?;
                let range_ms = duration_ms(ms.range);
                let series = match self.eval_matrix_selector(ms, t)? {
                    Value::Matrix(m) => m,
                    _ => Vec::new(),
                };
                Ok((
                    series,
                    Window {
                        start: end.saturating_sub(range_ms),
                        end,
                        range_ms,
                    },
                ))
            }
            Expr::Subquery(sq) => self.eval_subquery(sq, t),
            other => Err(QueryError::Unsupported(format!(
                "range argument {other} is not supported"
            ))),
        }
    }

    /// A function over a range vector: one output element per series with
    /// samples in the window (and a result), without `__name__` except for
    /// `last_over_time`.
    fn eval_range_function(
        &mut self,
        name: &str,
        args: &[&Expr],
        t: i64,
    ) -> Result<Value, QueryError> {
        let (param, matrix_index) = match name {
            "quantile_over_time" => (self.scalar_arg(args, 0, t)?, 1),
            "predict_linear" => (self.scalar_arg(args, 1, t)?, 0),
            _ => (f64::NAN, 0),
        };
        let trend = if name == "holt_winters" {
            Some((self.scalar_arg(args, 1, t)?, self.scalar_arg(args, 2, t)?))
        } else {
            None
        };
        let matrix_expr = Self::arg(args, matrix_index)?;
        if let Expr::MatrixSelector(ms) = unwrap_parens(matrix_expr) {
            if let Some(plan) = self.bucket_plan(&ms.vs) {
                let at = self.reference_time(&ms.vs, t)?;
                let keep_name = name == "last_over_time";
                let out = self
                    .range_function_from_buckets(name, &ms.vs, plan, duration_ms(ms.range), at)?
                    .into_iter()
                    .map(|(labels, v)| InstantSample {
                        labels: if keep_name {
                            labels.clone()
                        } else {
                            without_metric_name(labels)
                        },
                        t,
                        v,
                    })
                    .collect();
                return instant_vector(out);
            }
        }
        let (series, window) = self.range_arg(matrix_expr, t)?;
        if name == "absent_over_time" {
            if series.iter().any(|s| !s.samples.is_empty()) {
                return Ok(Value::Vector(Vec::new()));
            }
            return Ok(Value::Vector(vec![InstantSample {
                labels: absent_labels(Some(matrix_expr)),
                t,
                v: 1.0,
            }]));
        }
        let mut out = Vec::with_capacity(series.len());
        for s in series {
            if s.samples.is_empty() {
                continue;
            }
            let result = match trend {
                Some((sf, tf)) => smoothed(&s.samples, sf, tf)?,
                None => over_window(name, &s.samples, window, t, param),
            };
            let Some(v) = result else {
                continue;
            };
            let labels = if name == "last_over_time" {
                s.labels
            } else {
                without_metric_name(&s.labels)
            };
            out.push(InstantSample { labels, t, v });
        }
        instant_vector(out)
    }

    /// `timestamp(v)`: for a vector selector the timestamp of each series'
    /// sample, otherwise the evaluation time; in seconds, without name.
    fn eval_timestamp(&mut self, args: &[&Expr], t: i64) -> Result<Value, QueryError> {
        let arg = unwrap_parens(Self::arg(args, 0)?);
        if let Expr::VectorSelector(vs) = arg {
            let at = self.reference_time(vs, t)?;
            if let Some(plan) = self.bucket_plan(vs) {
                let out = self
                    .latest_from_buckets(vs, plan, at)?
                    .into_iter()
                    .map(|(labels, (ts, _))| InstantSample {
                        labels: without_metric_name(labels),
                        t,
                        v: ts as f64 / 1000.0,
                    })
                    .collect();
                return instant_vector(out);
            }
            let lookback = self.lookback_ms;
            let series = self.selection(vs, lookback)?;
            let out: Vec<InstantSample> = series
                .iter()
                .filter_map(|s| {
                    latest_sample_in_window(&s.samples, at, lookback).map(|(ts, _)| InstantSample {
                        labels: without_metric_name(&s.labels),
                        t,
                        v: ts as f64 / 1000.0,
                    })
                })
                .collect();
            return instant_vector(out);
        }
        let v = self.eval_instant_vector(arg, t)?;
        map_values(v, t, |_| t as f64 / 1000.0)
    }

    /// A date function: of each element's value (seconds since the
    /// epoch), or of the evaluation time when called without argument.
    fn eval_date_function(
        &mut self,
        part: DatePart,
        args: &[&Expr],
        t: i64,
    ) -> Result<Value, QueryError> {
        if args.is_empty() {
            // Go: time.Unix(ts/1000, 0), truncating the milliseconds.
            return Ok(Value::Vector(vec![InstantSample {
                labels: Labels::default(),
                t,
                v: date_value(part, t / 1000),
            }]));
        }
        let v = self.vector_arg(args, 0, t)?;
        map_values(v, t, |x| date_value(part, go_time::go_int64(x)))
    }

    /// `label_replace(v, dst, replacement, src, regex)`.
    fn eval_label_replace(&mut self, args: &[&Expr], t: i64) -> Result<Value, QueryError> {
        let v = self.vector_arg(args, 0, t)?;
        let dst = self.string_arg(args, 1, t)?;
        let replacement = self.string_arg(args, 2, t)?;
        let src = self.string_arg(args, 3, t)?;
        let regex = self.string_arg(args, 4, t)?;
        let matcher =
            Matcher::new_matcher(T_EQL_REGEX, String::new(), regex.clone()).map_err(|_| {
                QueryError::InvalidArgument(format!(
                    "invalid regular expression in label_replace(): {regex}"
                ))
            })?;
        let MatchOp::Re(re) = &matcher.op else {
            return Err(QueryError::InvalidArgument(format!(
                "invalid regular expression in label_replace(): {regex}"
            )));
        };
        if !is_valid_label_name(&dst) {
            return Err(QueryError::InvalidArgument(format!(
                "invalid destination label name in label_replace(): {dst}"
            )));
        }
        let out = v
            .into_iter()
            .map(|s| {
                let value = s.labels.get(&src).unwrap_or("");
                let labels = match re.captures(value) {
                    None => s.labels.clone(),
                    Some(caps) => {
                        let mut expanded = String::new();
                        caps.expand(&replacement, &mut expanded);
                        with_label(&s.labels, &dst, &expanded)
                    }
                };
                InstantSample { labels, t, v: s.v }
            })
            .collect();
        instant_vector(out)
    }

    /// `label_join(v, dst, separator, src...)`.
    fn eval_label_join(&mut self, args: &[&Expr], t: i64) -> Result<Value, QueryError> {
        let v = self.vector_arg(args, 0, t)?;
        let dst = self.string_arg(args, 1, t)?;
        let sep = self.string_arg(args, 2, t)?;
        let mut sources = Vec::new();
        for i in 3..args.len() {
            let src = self.string_arg(args, i, t)?;
            if !is_valid_label_name(&src) {
                return Err(QueryError::InvalidArgument(format!(
                    "invalid source label name in label_join(): {src}"
                )));
            }
            sources.push(src);
        }
        if !is_valid_label_name(&dst) {
            return Err(QueryError::InvalidArgument(format!(
                "invalid destination label name in label_join(): {dst}"
            )));
        }
        let out = v
            .into_iter()
            .map(|s| {
                let joined = sources
                    .iter()
                    .map(|src| s.labels.get(src).unwrap_or(""))
                    .collect::<Vec<_>>()
                    .join(&sep);
                InstantSample {
                    labels: with_label(&s.labels, &dst, &joined),
                    t,
                    v: s.v,
                }
            })
            .collect();
        instant_vector(out)
    }
}

/// Applies `f` to every value, dropping `__name__`.
fn map_values(v: Vec<InstantSample>, t: i64, f: impl Fn(f64) -> f64) -> Result<Value, QueryError> {
    instant_vector(
        v.into_iter()
            .map(|s| InstantSample {
                labels: without_metric_name(&s.labels),
                t,
                v: f(s.v),
            })
            .collect(),
    )
}

/// The one-value functions of one instant vector.
pub(super) fn element_function(name: &str) -> Option<fn(f64) -> f64> {
    Some(match name {
        "abs" => f64::abs,
        "ceil" => f64::ceil,
        "floor" => f64::floor,
        "exp" => f64::exp,
        "ln" => f64::ln,
        "log2" => f64::log2,
        "log10" => f64::log10,
        "sqrt" => f64::sqrt,
        "sgn" => |v| {
            if v < 0.0 {
                -1.0
            } else if v > 0.0 {
                1.0
            } else {
                v
            }
        },
        "acos" => f64::acos,
        "acosh" => f64::acosh,
        "asin" => f64::asin,
        "asinh" => f64::asinh,
        "atan" => f64::atan,
        "atanh" => f64::atanh,
        "cos" => f64::cos,
        "cosh" => f64::cosh,
        "sin" => f64::sin,
        "sinh" => f64::sinh,
        "tan" => f64::tan,
        "tanh" => f64::tanh,
        "deg" => |v| v * 180.0 / std::f64::consts::PI,
        "rad" => |v| v * std::f64::consts::PI / 180.0,
        _ => return None,
    })
}

/// Go's `math.Max`: NaN wins, +0 is above -0.
fn go_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a == 0.0 && b == 0.0 {
        if a.is_sign_negative() { b } else { a }
    } else if a > b {
        a
    } else {
        b
    }
}

/// Go's `math.Min`: NaN wins, -0 is below +0.
fn go_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a == 0.0 && b == 0.0 {
        if a.is_sign_negative() { a } else { b }
    } else if a < b {
        a
    } else {
        b
    }
}

/// The value of a range-vector function for one series' window.
pub(super) fn over_window(
    name: &str,
    s: &[(i64, f64)],
    w: Window,
    t: i64,
    param: f64,
) -> Option<f64> {
    use over_time as o;
    match name {
        "rate" => o::extrapolated_rate(s, w, true, true),
        "increase" => o::extrapolated_rate(s, w, true, false),
        "delta" => o::extrapolated_rate(s, w, false, false),
        "irate" => o::instant_value(s, true),
        "idelta" => o::instant_value(s, false),
        "deriv" => o::deriv(s),
        "predict_linear" => o::predict_linear(s, t, param),
        "resets" => Some(o::resets(s)),
        "changes" => Some(o::changes(s)),
        "avg_over_time" => Some(o::avg(s)),
        "min_over_time" => Some(o::min(s)),
        "max_over_time" => Some(o::max(s)),
        "sum_over_time" => Some(o::sum(s)),
        "count_over_time" => Some(s.len() as f64),
        "last_over_time" => s.last().map(|x| x.1),
        "quantile_over_time" => Some(o::quantile_of(param, s)),
        "stddev_over_time" => Some(o::stddev(s)),
        "stdvar_over_time" => Some(o::stdvar(s)),
        "present_over_time" => Some(1.0),
        _ => None,
    }
}

/// `holt_winters` for one series, refusing factors outside (0, 1) as
/// Prometheus does (only once there is a series to smooth).
fn smoothed(s: &[(i64, f64)], sf: f64, tf: f64) -> Result<Option<f64>, QueryError> {
    if sf <= 0.0 || sf >= 1.0 || sf.is_nan() {
        return Err(QueryError::InvalidArgument(format!(
            "invalid smoothing factor. Expected: 0 < sf < 1, got: {sf:.6}"
        )));
    }
    if tf <= 0.0 || tf >= 1.0 || tf.is_nan() {
        return Err(QueryError::InvalidArgument(format!(
            "invalid trend factor. Expected: 0 < tf < 1, got: {tf:.6}"
        )));
    }
    Ok(over_time::holt_winters(s, sf, tf))
}

/// The labels `absent`/`absent_over_time` give their 1: the selector's
/// equality matchers (a name matched twice is left out), `__name__`
/// excluded; none for any argument that is not a selector.
fn absent_labels(arg: Option<&Expr>) -> Labels {
    let vs = match arg.map(unwrap_parens) {
        Some(Expr::VectorSelector(vs)) => vs,
        Some(Expr::MatrixSelector(ms)) => &ms.vs,
        _ => return Labels::default(),
    };
    let mut labels = Labels::default();
    let mut seen: Vec<&str> = Vec::new();
    for m in &vs.matchers.matchers {
        if m.name == METRIC_NAME_LABEL {
            continue;
        }
        if matches!(m.op, MatchOp::Equal) && !seen.contains(&m.name.as_str()) {
            labels = with_label(&labels, &m.name, &m.value);
            seen.push(&m.name);
        } else {
            labels = with_label(&labels, &m.name, "");
        }
    }
    labels
}

/// A part of a date, as the date functions return it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DatePart {
    DayOfMonth,
    DayOfWeek,
    DayOfYear,
    DaysInMonth,
    Hour,
    Minute,
    Month,
    Year,
}

fn date_part(name: &str) -> Option<DatePart> {
    Some(match name {
        "day_of_month" => DatePart::DayOfMonth,
        "day_of_week" => DatePart::DayOfWeek,
        "day_of_year" => DatePart::DayOfYear,
        "days_in_month" => DatePart::DaysInMonth,
        "hour" => DatePart::Hour,
        "minute" => DatePart::Minute,
        "month" => DatePart::Month,
        "year" => DatePart::Year,
        _ => return None,
    })
}

/// The date part of the time `seconds` since the epoch, in UTC, as Go
/// computes it (see [`go_time`]): every input has an answer, NaN included.
fn date_value(part: DatePart, seconds: i64) -> f64 {
    let d = go_time::unix_date(seconds);
    match part {
        DatePart::DayOfMonth => d.day as f64,
        DatePart::DayOfWeek => d.weekday as f64,
        DatePart::DayOfYear => d.year_day as f64,
        DatePart::DaysInMonth => d.days_in_month as f64,
        DatePart::Hour => d.hour as f64,
        DatePart::Minute => d.minute as f64,
        DatePart::Month => d.month as f64,
        DatePart::Year => d.year as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

    fn counter_store() -> super::super::in_memory::InMemoryQuerier {
        // x: a counter +10 every 15s from T-10m (0 at T-10m, 400 at T).
        store(vec![(
            labels("x", &[("job", "a")]),
            every(T - 10 * MIN, 15 * SEC, 41, |i| 10.0 * i as f64),
        )])
    }

    fn one(q: &super::super::in_memory::InMemoryQuerier, e: &str, t: i64) -> f64 {
        let v = vector(q, e, t);
        assert_eq!(v.len(), 1, "{e}: {v:?}");
        v[0].v
    }

    #[test]
    fn rate_family_on_a_steady_counter() {
        let q = counter_store();
        // [T-1m, T] holds 360..400 at both edges: no extrapolation.
        assert_close(one(&q, "rate(x[1m])", T), 40.0 / 60.0, "rate");
        assert_close(one(&q, "increase(x[1m])", T), 40.0, "increase");
        assert_close(one(&q, "delta(x[1m])", T), 40.0, "delta");
        assert_close(one(&q, "irate(x[1m])", T), 10.0 / 15.0, "irate");
        assert_close(one(&q, "idelta(x[1m])", T), 10.0, "idelta");
        assert_close(one(&q, "deriv(x[1m])", T), 10.0 / 15.0, "deriv");
        assert_close(one(&q, "predict_linear(x[1m], 60)", T), 440.0, "predict");
        assert_eq!(one(&q, "resets(x[1m])", T), 0.0);
        assert_eq!(one(&q, "changes(x[1m])", T), 4.0);
        // The name goes; the other labels stay.
        let v = vector(&q, "rate(x[5m])", T);
        assert_eq!(v[0].labels, unnamed(&[("job", "a")]));
        // 5s later the window [T-55s, T+5s] holds T-45s..T: 10s to the start
        // and 5s to the end are both under 1.1 × 15s: extrapolated to 60s.
        assert_close(one(&q, "increase(x[1m])", T + 5 * SEC), 40.0, "shifted");
        // One sample in the window: no rate.
        assert!(vector(&q, "rate(x[10s])", T).is_empty());
    }

    #[test]
    fn rate_extrapolation_is_capped_and_stops_at_zero() {
        let q = store(vec![
            // Starts 30s before T: 30s to the window start is more than
            // 1.1 × 15s, so only 7.5s is added there: 20 × 37.5 / 30.
            (
                labels("late", &[]),
                vec![(T - 30 * SEC, 100.0), (T - 15 * SEC, 110.0), (T, 120.0)],
            ),
            // Same, but at that slope it was 0 just 3s before the first
            // sample: 20 × 33 / 30.
            (
                labels("young", &[]),
                vec![(T - 30 * SEC, 2.0), (T - 15 * SEC, 12.0), (T, 22.0)],
            ),
        ]);
        assert_close(one(&q, "increase(late[1m])", T), 25.0, "late");
        assert_close(one(&q, "rate(late[1m])", T), 25.0 / 60.0, "late rate");
        assert_close(one(&q, "increase(young[1m])", T), 22.0, "young");
        // delta is no counter: no zero clamp, 7.5s both.
        assert_close(one(&q, "delta(young[1m])", T), 25.0, "young delta");
    }

    #[test]
    fn counter_reset_is_corrected() {
        let q = store(vec![(
            labels("c", &[]),
            vec![
                (T - 60 * SEC, 10.0),
                (T - 40 * SEC, 20.0),
                (T - 20 * SEC, 5.0),
                (T, 15.0),
            ],
        )]);
        assert_close(one(&q, "increase(c[1m])", T), 25.0, "increase");
        assert_close(one(&q, "rate(c[1m])", T), 25.0 / 60.0, "rate");
        assert_eq!(one(&q, "resets(c[1m])", T), 1.0);
        // irate: the last two samples, no reset between them.
        assert_close(one(&q, "irate(c[1m])", T), 0.5, "irate");
        assert_close(one(&q, "irate(c[1m])", T - 20 * SEC), 0.25, "irate reset");
    }

    #[test]
    fn over_time_aggregations() {
        let q = store(vec![(
            labels("g", &[("i", "1")]),
            vec![
                (T - 30 * SEC, 1.0),
                (T - 20 * SEC, 4.0),
                (T - 10 * SEC, 2.0),
                (T, 3.0),
            ],
        )]);
        assert_eq!(one(&q, "avg_over_time(g[1m])", T), 2.5);
        assert_eq!(one(&q, "min_over_time(g[1m])", T), 1.0);
        assert_eq!(one(&q, "max_over_time(g[1m])", T), 4.0);
        assert_eq!(one(&q, "sum_over_time(g[1m])", T), 10.0);
        assert_eq!(one(&q, "count_over_time(g[1m])", T), 4.0);
        assert_eq!(one(&q, "last_over_time(g[1m])", T - SEC), 2.0);
        assert_eq!(one(&q, "quantile_over_time(0.5, g[1m])", T), 2.5);
        assert_eq!(one(&q, "stdvar_over_time(g[1m])", T), 1.25);
        assert_eq!(one(&q, "stddev_over_time(g[1m])", T), 1.25f64.sqrt());
        assert_eq!(one(&q, "present_over_time(g[1m])", T), 1.0);
        // The window is closed on the left: T-30s is in [T-30s, T].
        assert_eq!(one(&q, "count_over_time(g[30s])", T), 4.0);
        // last_over_time keeps the name, as in 2.42; the others drop it.
        let v = vector(&q, "last_over_time(g[1m])", T);
        assert_eq!(v[0].labels, labels("g", &[("i", "1")]));
        let v = vector(&q, "max_over_time(g[1m])", T);
        assert_eq!(v[0].labels, unnamed(&[("i", "1")]));
        // Nothing in the window: no element.
        assert!(vector(&q, "max_over_time(g[1m])", T + 2 * MIN).is_empty());
        assert!(vector(&q, "absent_over_time(g[1m])", T).is_empty());
        let v = vector(&q, "absent_over_time(g{i=\"1\"}[1m])", T + 2 * MIN);
        assert_eq!((v[0].labels.clone(), v[0].v), (unnamed(&[("i", "1")]), 1.0));
    }

    #[test]
    fn holt_winters_is_parsed_and_checks_its_factors() {
        let q = counter_store();
        // A straight line: the last value.
        assert_close(one(&q, "holt_winters(x[1m], 0.3, 0.6)", T), 400.0, "hw");
        let e = failure(&q, "holt_winters(x[1m], 1, 0.5)", T);
        assert_eq!(
            e.to_string(),
            "invalid smoothing factor. Expected: 0 < sf < 1, got: 1.000000"
        );
        let e = failure(&q, "holt_winters(x[1m], 0.5, 0)", T);
        assert_eq!(
            e.to_string(),
            "invalid trend factor. Expected: 0 < tf < 1, got: 0.000000"
        );
    }

    #[test]
    fn absent_takes_labels_from_equality_matchers() {
        let q = counter_store();
        let v = vector(&q, "absent(nonexistent{job=\"x\"})", T);
        assert_eq!(v.len(), 1);
        assert_eq!(
            (v[0].labels.clone(), v[0].v),
            (unnamed(&[("job", "x")]), 1.0)
        );
        let v = vector(&q, "absent(nonexistent{job=~\"x\", a=\"1\", b!=\"2\"})", T);
        assert_eq!(v[0].labels, unnamed(&[("a", "1")]));
        // A label matched twice is left out.
        let v = vector(&q, "absent(nonexistent{a=\"1\", a=\"2\"})", T);
        assert_eq!(v[0].labels, Labels::default());
        assert_eq!(
            vector(&q, "absent(sum(nonexistent))", T)[0].labels,
            Labels::default()
        );
        assert!(vector(&q, "absent(x)", T).is_empty());
    }

    #[test]
    fn histogram_quantile_over_bucket_series() {
        let bucket = |le: &str, v: f64| {
            (
                labels("lat_bucket", &[("job", "a"), ("le", le)]),
                vec![(T, v)],
            )
        };
        let q = store(vec![
            bucket("0.1", 2.0),
            bucket("0.5", 6.0),
            bucket("1", 9.0),
            bucket("+Inf", 10.0),
            // Not a bucket: ignored.
            (labels("lat_bucket", &[("job", "a")]), vec![(T, 100.0)]),
        ]);
        let v = vector(&q, "histogram_quantile(0.5, lat_bucket)", T);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].labels, unnamed(&[("job", "a")]));
        assert_close(v[0].v, 0.4, "median");
        assert_close(
            one(&q, "histogram_quantile(0.9, lat_bucket)", T),
            1.0,
            "p90",
        );
        assert_close(
            one(&q, "histogram_quantile(0.1, lat_bucket)", T),
            0.05,
            "p10",
        );
    }

    #[test]
    fn label_replace_and_label_join() {
        let q = store(vec![(
            labels("up", &[("instance", "host1:9100"), ("job", "node")]),
            vec![(T, 1.0)],
        )]);
        let v = vector(
            &q,
            "label_replace(up, \"host\", \"$1\", \"instance\", \"(.*):.*\")",
            T,
        );
        assert_eq!(v[0].labels.get("host"), Some("host1"));
        assert_eq!(v[0].labels.metric_name(), Some("up"), "the name stays");
        // ${1}, named groups, and the anchoring: "host" alone does not match.
        let v = vector(
            &q,
            "label_replace(up, \"p\", \"${1}-$port\", \"instance\", \"(\\\\w+):(?P<port>\\\\d+)\")",
            T,
        );
        assert_eq!(v[0].labels.get("p"), Some("host1-9100"));
        let v = vector(
            &q,
            "label_replace(up, \"h\", \"$1\", \"instance\", \"host\")",
            T,
        );
        assert_eq!(v[0].labels.get("h"), None);
        // An empty replacement removes the label.
        let v = vector(&q, "label_replace(up, \"job\", \"\", \"job\", \".*\")", T);
        assert_eq!(v[0].labels.get("job"), None);
        let e = failure(&q, "label_replace(up, \"1x\", \"\", \"job\", \".*\")", T);
        assert_eq!(
            e.to_string(),
            "invalid destination label name in label_replace(): 1x"
        );
        let e = failure(&q, "label_replace(up, \"a\", \"\", \"job\", \"(\")", T);
        assert_eq!(
            e.to_string(),
            "invalid regular expression in label_replace(): ("
        );
        let v = vector(
            &q,
            "label_join(up, \"both\", \"/\", \"job\", \"instance\", \"none\")",
            T,
        );
        assert_eq!(v[0].labels.get("both"), Some("node/host1:9100/"));
    }

    #[test]
    fn timestamp_is_the_samples_own_time() {
        let q = store(vec![(
            labels("x", &[("a", "1")]),
            vec![(T - 42 * SEC, 5.0)],
        )]);
        let v = vector(&q, "timestamp(x)", T);
        assert_eq!(v[0].v, (T - 42 * SEC) as f64 / 1000.0);
        assert_eq!(v[0].labels, unnamed(&[("a", "1")]));
        assert_eq!(one(&q, "timestamp((x))", T), (T - 42 * SEC) as f64 / 1000.0);
        // Of any other expression: the evaluation time.
        assert_eq!(one(&q, "timestamp(-x)", T), T as f64 / 1000.0);
    }

    #[test]
    fn element_functions() {
        let q = store(vec![
            (labels("v", &[("i", "a")]), vec![(T, -2.5)]),
            (labels("v", &[("i", "b")]), vec![(T, 0.5)]),
            (labels("v", &[("i", "c")]), vec![(T, 7.0)]),
        ]);
        let vals = |e: &str| values(&vector(&q, e, T));
        assert_eq!(vals("abs(v)"), vec![2.5, 0.5, 7.0]);
        assert_eq!(vals("ceil(v)"), vec![-2.0, 1.0, 7.0]);
        assert_eq!(vals("floor(v)"), vec![-3.0, 0.0, 7.0]);
        assert_eq!(vals("sgn(v)"), vec![-1.0, 1.0, 1.0]);
        // Ties round up.
        assert_eq!(vals("round(v)"), vec![-2.0, 1.0, 7.0]);
        assert_eq!(vals("round(v, 5)"), vec![0.0, 0.0, 5.0]);
        assert_eq!(vals("round(v, 0.2)"), vec![-2.4, 0.6, 7.0]);
        assert_eq!(vals("clamp(v, 0, 5)"), vec![0.0, 0.5, 5.0]);
        assert!(vals("clamp(v, 5, 0)").is_empty());
        assert_eq!(vals("clamp_min(v, 1)"), vec![1.0, 1.0, 7.0]);
        assert_eq!(vals("clamp_max(v, 1)"), vec![-2.5, 0.5, 1.0]);
        assert!(vals("sqrt(v)")[0].is_nan());
        assert_eq!(vals("exp(v)")[2], 7f64.exp());
        assert_eq!(vals("ln(v)")[2], 7f64.ln());
        assert_eq!(vals("log2(v)")[1], -1.0);
        assert_eq!(vals("log10(v)")[2], 7f64.log10());
        assert!(
            vector(&q, "abs(v)", T)
                .iter()
                .all(|s| s.labels.metric_name().is_none())
        );
        assert_eq!(scalar(&q, "time()", T), T as f64 / 1000.0);
        assert_eq!(scalar(&q, "scalar(v{i=\"c\"})", T), 7.0);
        assert!(scalar(&q, "scalar(v)", T).is_nan());
        let v = vector(&q, "vector(3)", T);
        assert_eq!((v[0].labels.clone(), v[0].v), (Labels::default(), 3.0));
    }

    #[test]
    fn sort_orders_instant_results() {
        let q = store(vec![
            (labels("v", &[("i", "a")]), vec![(T, 3.0)]),
            (labels("v", &[("i", "b")]), vec![(T, f64::NAN)]),
            (labels("v", &[("i", "c")]), vec![(T, 1.0)]),
            (labels("v", &[("i", "d")]), vec![(T, 2.0)]),
        ]);
        let order = |e: &str| -> Vec<String> {
            vector(&q, e, T)
                .iter()
                .map(|s| s.labels.get("i").unwrap_or("").to_string())
                .collect()
        };
        assert_eq!(order("sort(v)"), vec!["c", "d", "a", "b"]);
        assert_eq!(order("sort_desc(v)"), vec!["a", "d", "c", "b"]);
        assert_eq!(order("(sort_desc(v))"), vec!["a", "d", "c", "b"]);
        // Anything else is sorted by labels.
        assert_eq!(order("sort(v) * 1"), vec!["a", "b", "c", "d"]);
        // The name stays.
        assert_eq!(vector(&q, "sort(v)", T)[0].labels.metric_name(), Some("v"));
    }

    #[test]
    fn date_functions_default_to_the_evaluation_time() {
        // 2024-02-29T13:45:30.999Z: milliseconds are truncated.
        let t = 1_709_214_330_999;
        let q = store(vec![(labels("ts", &[]), vec![(t, 1_709_214_330.0)])]);
        assert_eq!(one(&q, "year()", t), 2024.0);
        assert_eq!(one(&q, "minute()", t), 45.0);
        assert_eq!(one(&q, "days_in_month()", t), 29.0);
        assert_eq!(one(&q, "day_of_week(ts)", t), 4.0);
        assert_eq!(vector(&q, "hour(ts)", t)[0].labels, Labels::default());
    }

    #[test]
    fn range_query_of_rate_steps_over_one_load() {
        let q = counter_store();
        let m = range(&q, "rate(x[1m])", T - 2 * MIN, T, MIN);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].samples.len(), 3);
        for (_, v) in &m[0].samples {
            assert_close(*v, 10.0 / 15.0, "rate");
        }
        assert_eq!(q.windows(), vec![(T - 3 * MIN, T)]);
    }

    #[test]
    fn go_min_max_propagate_nan() {
        assert!(go_max(f64::NAN, 1.0).is_nan());
        assert!(go_min(1.0, f64::NAN).is_nan());
        assert!(!go_max(-0.0, 0.0).is_sign_negative());
        assert!(go_min(0.0, -0.0).is_sign_negative());
    }

    #[test]
    fn dates() {
        // 2024-02-29T13:45:30Z, a Thursday.
        let s = 1_709_214_330;
        assert_eq!(date_value(DatePart::Year, s), 2024.0);
        assert_eq!(date_value(DatePart::Month, s), 2.0);
        assert_eq!(date_value(DatePart::DayOfMonth, s), 29.0);
        assert_eq!(date_value(DatePart::DayOfWeek, s), 4.0);
        assert_eq!(date_value(DatePart::DaysInMonth, s), 29.0);
        assert_eq!(date_value(DatePart::Hour, s), 13.0);
        assert_eq!(date_value(DatePart::Minute, s), 45.0);
    }

    #[test]
    fn dates_of_values_no_date_has_are_go_s() {
        // Prometheus 2.42 converts with Go's int64(v): NaN, ±Inf and values
        // out of range become math.MinInt64, whose date Go still computes
        // (it was NaN here before).
        let q = store(vec![(labels("x", &[]), vec![(T, f64::NAN)])]);
        assert_eq!(one(&q, "month(x)", T), 12.0);
        assert_eq!(one(&q, "year(x)", T), 292_277_026_596.0);
        assert_eq!(one(&q, "day_of_month(vector(-Inf))", T), 4.0);
        assert_eq!(one(&q, "hour(vector(1e18))", T), 1.0);
        assert_eq!(one(&q, "minute(vector(-1.5))", T), 59.0);
    }
}
