//! PromQL aggregation operators over one instant vector, as Prometheus
//! 2.42's `aggregation()`: `sum avg min max count group stddev stdvar topk
//! bottomk quantile count_values`, grouped `by` or `without` labels.
//!
//! Works on an already evaluated vector and parameter; nothing here reads
//! storage or knows about steps. Groups come out in the order their first
//! element appears in the input, topk/bottomk elements in Prometheus's
//! order within a group; callers must not rely on any other order.

use std::collections::HashMap;

use nines_shared::{Labels, is_valid_label_name};
use promql_parser::parser::token::{
    self, T_AVG, T_BOTTOMK, T_COUNT, T_COUNT_VALUES, T_GROUP, T_MAX, T_MIN, T_QUANTILE, T_STDDEV,
    T_STDVAR, T_SUM, T_TOPK,
};
use promql_parser::parser::{AggregateExpr, LabelModifier};

use super::error::QueryError;
use super::label_sets::{drop_names_and_metric, go_quote, keep_only, with_label};
use super::quantile::quantile;
use super::value::InstantSample;

/// An aggregation operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AggregateOp {
    Sum,
    Avg,
    Min,
    Max,
    Count,
    Group,
    Stddev,
    Stdvar,
    Topk,
    Bottomk,
    Quantile,
    CountValues,
}

impl AggregateOp {
    /// The operator a parser token stands for.
    pub(crate) fn from_token(op: token::TokenType) -> Result<Self, QueryError> {
        Ok(match op.id() {
            T_SUM => AggregateOp::Sum,
            T_AVG => AggregateOp::Avg,
            T_MIN => AggregateOp::Min,
            T_MAX => AggregateOp::Max,
            T_COUNT => AggregateOp::Count,
            T_GROUP => AggregateOp::Group,
            T_STDDEV => AggregateOp::Stddev,
            T_STDVAR => AggregateOp::Stdvar,
            T_TOPK => AggregateOp::Topk,
            T_BOTTOMK => AggregateOp::Bottomk,
            T_QUANTILE => AggregateOp::Quantile,
            T_COUNT_VALUES => AggregateOp::CountValues,
            _ => {
                return Err(QueryError::Unsupported(format!(
                    "aggregation {op} is not supported yet"
                )));
            }
        })
    }
}

/// The evaluated parameter of an aggregation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Param {
    /// No parameter.
    None,
    /// `k` of topk/bottomk or φ of quantile.
    Number(f64),
    /// The output label of count_values.
    Label(String),
}

/// `by (...)` or `without (...)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grouping {
    without: bool,
    labels: Vec<String>,
}

impl Grouping {
    /// The grouping an aggregation expression asks for (none: one group).
    pub(crate) fn of(a: &AggregateExpr) -> Self {
        match &a.modifier {
            Some(LabelModifier::Include(l)) => Grouping {
                without: false,
                labels: l.labels.clone(),
            },
            Some(LabelModifier::Exclude(l)) => Grouping {
                without: true,
                labels: l.labels.clone(),
            },
            None => Grouping {
                without: false,
                labels: Vec::new(),
            },
        }
    }

    /// The labels of the group `labels` falls in, which are also the
    /// group's output labels.
    pub(crate) fn key(&self, labels: &Labels) -> Labels {
        if self.without {
            drop_names_and_metric(labels, &self.labels)
        } else {
            keep_only(labels, &self.labels)
        }
    }
}

/// What a group's elements must offer: their value. Instant vectors
/// aggregate [`InstantSample`]s; a range query evaluated series by series
/// aggregates references to its series at one step.
pub(crate) trait Element: Clone {
    /// The element's value.
    fn value(&self) -> f64;
}

impl Element for InstantSample {
    fn value(&self) -> f64 {
        self.v
    }
}

/// One group's running state.
pub(crate) struct Group<E> {
    value: f64,
    mean: f64,
    count: u64,
    /// topk/bottomk: a binary heap as Go's `container/heap` keeps it;
    /// quantile: the values in input order.
    heap: Vec<E>,
}

/// What a group gives when its elements are all in.
pub(crate) enum GroupResult<E> {
    /// One value, under the group's labels.
    Value(f64),
    /// topk/bottomk: the kept elements, in Prometheus's output order.
    Elements(Vec<E>),
}

impl<E: Element> Group<E> {
    /// A group whose first element is `first`.
    pub(crate) fn new(op: AggregateOp, first: E) -> Self {
        let v = first.value();
        let value = match op {
            AggregateOp::Stddev | AggregateOp::Stdvar => 0.0,
            AggregateOp::Group => 1.0,
            _ => v,
        };
        let heap = match op {
            AggregateOp::Topk | AggregateOp::Bottomk | AggregateOp::Quantile => vec![first],
            _ => Vec::new(),
        };
        Group {
            value,
            mean: v,
            count: 1,
            heap,
        }
    }

    /// Folds one more element into the group (`k` for topk/bottomk).
    pub(crate) fn add(&mut self, op: AggregateOp, s: E, k: usize) {
        let g = self;
        let v = s.value();
        match op {
            AggregateOp::Sum => g.value += v,
            AggregateOp::Avg => {
                g.count += 1;
                if g.mean.is_infinite() {
                    if v.is_infinite() && (g.mean > 0.0) == (v > 0.0) {
                        // Same-signed infinities: the mean is already right.
                        return;
                    }
                    if !v.is_infinite() && !v.is_nan() {
                        // A finite value cannot move an infinite mean.
                        return;
                    }
                }
                let n = g.count as f64;
                g.mean += v / n - g.mean / n;
            }
            AggregateOp::Group => {}
            AggregateOp::Max => {
                if g.value < v || g.value.is_nan() {
                    g.value = v;
                }
            }
            AggregateOp::Min => {
                if g.value > v || g.value.is_nan() {
                    g.value = v;
                }
            }
            AggregateOp::Count | AggregateOp::CountValues => g.count += 1,
            AggregateOp::Stddev | AggregateOp::Stdvar => {
                g.count += 1;
                let delta = v - g.mean;
                g.mean += delta / g.count as f64;
                g.value += delta * (v - g.mean);
            }
            AggregateOp::Topk | AggregateOp::Bottomk => {
                let less = heap_less(op);
                if g.heap.len() < k {
                    g.heap.push(s);
                    let last = g.heap.len() - 1;
                    sift_up(&mut g.heap, last, less);
                } else if let Some(root) = g.heap.first() {
                    let rv = root.value();
                    let replaces = match op {
                        AggregateOp::Topk => rv < v,
                        _ => rv > v,
                    } || (rv.is_nan() && !v.is_nan());
                    if replaces {
                        g.heap[0] = s;
                        if k > 1 {
                            sift_down(&mut g.heap, 0, less);
                        }
                    }
                }
            }
            AggregateOp::Quantile => g.heap.push(s),
        }
    }

    /// The group's result (`param`: φ of quantile).
    pub(crate) fn finish(self, op: AggregateOp, param: &Param) -> GroupResult<E> {
        let g = self;
        GroupResult::Value(match op {
            AggregateOp::Avg => g.mean,
            AggregateOp::Count | AggregateOp::CountValues => g.count as f64,
            AggregateOp::Stdvar => g.value / g.count as f64,
            AggregateOp::Stddev => (g.value / g.count as f64).sqrt(),
            AggregateOp::Topk | AggregateOp::Bottomk => {
                let mut heap = g.heap;
                // sort.Reverse of the heap order: greatest first for topk,
                // smallest first for bottomk, NaN last in both.
                let less = heap_less(op);
                heap.sort_by(|a, b| {
                    if less(b.value(), a.value()) {
                        std::cmp::Ordering::Less
                    } else if less(a.value(), b.value()) {
                        std::cmp::Ordering::Greater
                    } else {
                        std::cmp::Ordering::Equal
                    }
                });
                return GroupResult::Elements(heap);
            }
            AggregateOp::Quantile => {
                let q = match param {
                    Param::Number(q) => *q,
                    _ => f64::NAN,
                };
                let mut values: Vec<f64> = g.heap.iter().map(Element::value).collect();
                quantile(q, &mut values)
            }
            _ => g.value,
        })
    }
}

/// topk/bottomk's `k` for an input of `len` elements, as Prometheus 2.42
/// reads the parameter; `None` when the answer is empty (k < 1). Other
/// operators get 0.
pub(crate) fn ranking_k(
    op: AggregateOp,
    param: &Param,
    len: usize,
) -> Result<Option<usize>, QueryError> {
    if !matches!(op, AggregateOp::Topk | AggregateOp::Bottomk) {
        return Ok(Some(0));
    }
    let f = match param {
        Param::Number(f) => *f,
        _ => f64::NAN,
    };
    // Go's convertibleToInt64, then int64(f): truncation.
    if !(-9.223_372_036_854_776e18..=9.223_372_036_854_776e18).contains(&f) {
        return Err(QueryError::InvalidArgument(format!(
            "Scalar value {} overflows int64",
            go_value_text(f)
        )));
    }
    let k_signed = f.trunc();
    if k_signed < 1.0 {
        return Ok(None);
    }
    // A k beyond the input size keeps everything.
    Ok(Some(if k_signed >= len as f64 {
        len.max(1)
    } else {
        k_signed as usize
    }))
}

/// Aggregates `input` (evaluated at `t`) as Prometheus 2.42 does.
pub(crate) fn aggregate(
    op: AggregateOp,
    grouping: &Grouping,
    param: &Param,
    input: Vec<InstantSample>,
    t: i64,
) -> Result<Vec<InstantSample>, QueryError> {
    let Some(k) = ranking_k(op, param, input.len())? else {
        return Ok(Vec::new());
    };
    let mut grouping = grouping.clone();
    let value_label = match (op, param) {
        (AggregateOp::CountValues, Param::Label(l)) => {
            if !is_valid_label_name(l) {
                return Err(QueryError::InvalidArgument(format!(
                    "invalid label name {}",
                    go_quote(l)
                )));
            }
            if !grouping.without {
                grouping.labels.push(l.clone());
            }
            Some(l.clone())
        }
        _ => None,
    };

    let mut groups: Vec<(Labels, Group<InstantSample>)> = Vec::new();
    let mut index: HashMap<Labels, usize> = HashMap::new();
    for s in input {
        let s = match &value_label {
            Some(l) => InstantSample {
                labels: with_label(&s.labels, l, &count_value_text(s.v)),
                ..s
            },
            None => s,
        };
        let key = grouping.key(&s.labels);
        let Some(&gi) = index.get(&key) else {
            index.insert(key.clone(), groups.len());
            groups.push((key, Group::new(op, s)));
            continue;
        };
        let Some((_, g)) = groups.get_mut(gi) else {
            continue;
        };
        g.add(op, s, k);
    }

    let mut out = Vec::with_capacity(groups.len());
    for (labels, g) in groups {
        match g.finish(op, param) {
            GroupResult::Value(v) => out.push(InstantSample { labels, t, v }),
            GroupResult::Elements(kept) => {
                out.extend(kept.into_iter().map(|s| InstantSample { t, ..s }));
            }
        }
    }
    Ok(out)
}

/// The heap order: topk keeps its smallest element on top, bottomk its
/// largest; NaN counts as smaller than any number in both (so it is the
/// first to go).
fn heap_less(op: AggregateOp) -> fn(f64, f64) -> bool {
    match op {
        AggregateOp::Bottomk => |a, b| (a.is_nan() && !b.is_nan()) || a > b,
        _ => |a, b| (a.is_nan() && !b.is_nan()) || a < b,
    }
}

/// Go's `heap.up`.
fn sift_up<E: Element>(h: &mut [E], mut j: usize, less: fn(f64, f64) -> bool) {
    while j > 0 {
        let i = (j - 1) / 2;
        if !less(h[j].value(), h[i].value()) {
            break;
        }
        h.swap(i, j);
        j = i;
    }
}

/// Go's `heap.down`.
fn sift_down<E: Element>(h: &mut [E], mut i: usize, less: fn(f64, f64) -> bool) {
    let n = h.len();
    loop {
        let j1 = 2 * i + 1;
        if j1 >= n {
            break;
        }
        let mut j = j1;
        let j2 = j1 + 1;
        if j2 < n && less(h[j2].value(), h[j1].value()) {
            j = j2;
        }
        if !less(h[j].value(), h[i].value()) {
            break;
        }
        h.swap(i, j);
        i = j;
    }
}

/// A value as count_values writes it: Go's `FormatFloat(v, 'f', -1, 64)`,
/// shortest round-trip digits without an exponent.
pub(crate) fn count_value_text(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v == f64::INFINITY {
        "+Inf".to_string()
    } else if v == f64::NEG_INFINITY {
        "-Inf".to_string()
    } else {
        format!("{v}")
    }
}

/// A float as Go's `%v` prints it (exponent form from 1e21 and below
/// 1e-4), for error messages.
fn go_value_text(v: f64) -> String {
    if v.is_nan() {
        return "NaN".to_string();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.to_string();
    }
    let a = v.abs();
    if a != 0.0 && !(1e-4..1e21).contains(&a) {
        let s = format!("{v:e}");
        match s.split_once('e') {
            Some((m, e)) => {
                let (sign, digits) = match e.strip_prefix('-') {
                    Some(d) => ('-', d),
                    None => ('+', e),
                };
                format!("{m}e{sign}{digits:0>2}")
            }
            None => s,
        }
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

    fn http_store() -> super::super::in_memory::InMemoryQuerier {
        store(vec![
            (
                labels("http", &[("job", "api"), ("code", "200")]),
                vec![(T, 1.0)],
            ),
            (
                labels("http", &[("job", "api"), ("code", "500")]),
                vec![(T, 2.0)],
            ),
            (
                labels("http", &[("job", "web"), ("code", "200")]),
                vec![(T, 3.0)],
            ),
            (
                labels("http", &[("job", "web"), ("code", "500")]),
                vec![(T, 4.0)],
            ),
        ])
    }

    fn by_labels(v: &[InstantSample]) -> Vec<(Labels, f64)> {
        v.iter().map(|s| (s.labels.clone(), s.v)).collect()
    }

    #[test]
    fn sum_by_and_without() {
        let q = http_store();
        assert_eq!(
            by_labels(&vector(&q, "sum by (job) (http)", T)),
            vec![
                (unnamed(&[("job", "api")]), 3.0),
                (unnamed(&[("job", "web")]), 7.0)
            ]
        );
        // without drops the listed labels and the name.
        assert_eq!(
            by_labels(&vector(&q, "sum without (job) (http)", T)),
            vec![
                (unnamed(&[("code", "200")]), 4.0),
                (unnamed(&[("code", "500")]), 6.0)
            ]
        );
        assert_eq!(
            by_labels(&vector(&q, "sum(http)", T)),
            vec![(Labels::default(), 10.0)]
        );
        // by (__name__) keeps the name.
        assert_eq!(
            by_labels(&vector(&q, "count by (__name__) (http)", T)),
            vec![(labels("http", &[]), 4.0)]
        );
        assert!(vector(&q, "sum(nothing)", T).is_empty());
    }

    #[test]
    fn simple_aggregations() {
        let q = http_store();
        let one = |e: &str| values(&vector(&q, e, T));
        assert_eq!(one("avg(http)"), vec![2.5]);
        assert_eq!(one("min(http)"), vec![1.0]);
        assert_eq!(one("max(http)"), vec![4.0]);
        assert_eq!(one("count(http)"), vec![4.0]);
        assert_eq!(one("group by (job) (http)"), vec![1.0, 1.0]);
        // Population variance of 1..4: mean 2.5, squares 2.25+.25+.25+2.25.
        assert_eq!(one("stdvar(http)"), vec![1.25]);
        assert_eq!(one("stddev(http)"), vec![1.25f64.sqrt()]);
        assert_eq!(one("quantile(0.5, http)"), vec![2.5]);
        assert_eq!(one("quantile(0.25, http)"), vec![1.75]);
        assert_eq!(one("quantile(-1, http)"), vec![f64::NEG_INFINITY]);
        assert_eq!(one("quantile(2, http)"), vec![f64::INFINITY]);
        assert!(one("quantile(NaN, http)")[0].is_nan());
        assert_eq!(one("stddev by (job) (http)"), vec![0.5, 0.5]);
    }

    #[test]
    fn nan_and_inf_follow_prometheus() {
        let q = store(vec![
            (labels("x", &[("i", "1")]), vec![(T, f64::NAN)]),
            (labels("x", &[("i", "2")]), vec![(T, 1.0)]),
            (labels("x", &[("i", "3")]), vec![(T, 5.0)]),
            (labels("y", &[("i", "1")]), vec![(T, f64::INFINITY)]),
            (labels("y", &[("i", "2")]), vec![(T, 1.0)]),
            (labels("z", &[("i", "1")]), vec![(T, f64::INFINITY)]),
            (labels("z", &[("i", "2")]), vec![(T, f64::NEG_INFINITY)]),
        ]);
        let one = |e: &str| values(&vector(&q, e, T))[0];
        // max/min skip a NaN that came first.
        assert_eq!(one("max(x)"), 5.0);
        assert_eq!(one("min(x)"), 1.0);
        assert!(one("sum(x)").is_nan());
        assert!(one("avg(x)").is_nan());
        // avg keeps an infinite mean against finite values...
        assert_eq!(one("avg(y)"), f64::INFINITY);
        // ...but +Inf and -Inf give NaN.
        assert!(one("avg(z)").is_nan());
        assert!(one("stddev(y)").is_nan());
    }

    #[test]
    fn avg_is_the_incremental_mean() {
        let q = store(vec![
            (labels("x", &[("i", "1")]), vec![(T, 1e308)]),
            (labels("x", &[("i", "2")]), vec![(T, 1e308)]),
        ]);
        // A plain sum would overflow to +Inf.
        assert_eq!(values(&vector(&q, "avg(x)", T)), vec![1e308]);
    }

    #[test]
    fn topk_and_bottomk_keep_labels_and_order() {
        let q = http_store();
        let v = vector(&q, "topk(3, http)", T);
        assert_eq!(values(&v), vec![4.0, 3.0, 2.0]);
        assert_eq!(
            v[0].labels,
            labels("http", &[("job", "web"), ("code", "500")])
        );
        assert!(v.iter().all(|s| s.t == T));
        assert_eq!(values(&vector(&q, "bottomk(2, http)", T)), vec![1.0, 2.0]);
        // Per group, groups in order of their first element.
        assert_eq!(
            values(&vector(&q, "topk by (job) (1, http)", T)),
            vec![2.0, 4.0]
        );
        assert!(vector(&q, "topk(0, http)", T).is_empty());
        assert_eq!(vector(&q, "topk(100, http)", T).len(), 4);
        // k is truncated.
        assert_eq!(vector(&q, "topk(1.9, http)", T).len(), 1);
        let e = failure(&q, "topk(NaN, http)", T);
        assert_eq!(e.to_string(), "Scalar value NaN overflows int64");
        assert_eq!(e.http_status(), 422);
    }

    #[test]
    fn topk_ties_keep_the_first_seen() {
        let q = store(vec![
            (labels("x", &[("i", "a")]), vec![(T, 1.0)]),
            (labels("x", &[("i", "b")]), vec![(T, 1.0)]),
            (labels("x", &[("i", "c")]), vec![(T, 1.0)]),
            (labels("x", &[("i", "d")]), vec![(T, f64::NAN)]),
        ]);
        let v = vector(&q, "topk(2, x)", T);
        assert_eq!(
            v.iter().map(|s| s.labels.get("i")).collect::<Vec<_>>(),
            vec![Some("a"), Some("b")]
        );
        // NaN goes last.
        let v = vector(&q, "bottomk(4, x)", T);
        assert!(v[3].v.is_nan());
    }

    #[test]
    fn count_values_labels_by_value() {
        let q = store(vec![
            (labels("v", &[("i", "1"), ("j", "a")]), vec![(T, 2.0)]),
            (labels("v", &[("i", "2"), ("j", "a")]), vec![(T, 2.0)]),
            (labels("v", &[("i", "3"), ("j", "b")]), vec![(T, 0.5)]),
            (labels("v", &[("i", "4"), ("j", "b")]), vec![(T, 1e21)]),
        ]);
        let got = by_labels(&vector(&q, "count_values(\"value\", v)", T));
        assert_eq!(
            got,
            vec![
                (unnamed(&[("value", "0.5")]), 1.0),
                (unnamed(&[("value", "1000000000000000000000")]), 1.0),
                (unnamed(&[("value", "2")]), 2.0),
            ]
        );
        let got = by_labels(&vector(&q, "count_values by (j) (\"value\", v)", T));
        assert_eq!(got[0], (unnamed(&[("j", "a"), ("value", "2")]), 2.0));
        let got = by_labels(&vector(&q, "count_values without (i) (\"j\", v)", T));
        assert_eq!(got.len(), 3, "the value replaces j: {got:?}");
        let e = failure(&q, "count_values(\"1x\", v)", T);
        assert_eq!(e.to_string(), "invalid label name \"1x\"");
    }

    #[test]
    fn value_texts_follow_go() {
        assert_eq!(count_value_text(f64::INFINITY), "+Inf");
        assert_eq!(count_value_text(-0.25), "-0.25");
        assert_eq!(count_value_text(1e-7), "0.0000001");
        assert_eq!(go_value_text(1e21), "1e+21");
        assert_eq!(go_value_text(1e20), "100000000000000000000");
        assert_eq!(go_value_text(-1e-5), "-1e-05");
    }
}
