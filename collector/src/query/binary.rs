//! PromQL binary operators on evaluated operands: arithmetic, comparisons
//! (filtering or `bool`) and the set operators `and`/`or`/`unless`, between
//! scalars, a vector and a scalar, or two instant vectors with Prometheus
//! 2.42's vector matching (`on`/`ignoring`, `group_left`/`group_right`).
//!
//! Operands arrive already evaluated; nothing here reads storage or knows
//! about evaluation steps. Results keep Prometheus's labels and values
//! exactly, including its quirks (see the notes on each function), and
//! every refusal is Prometheus's error, never a silent partial answer.

use std::collections::{HashMap, HashSet};

use nines_shared::Labels;
use promql_parser::parser::token::{
    self, T_ADD, T_ATAN2, T_DIV, T_EQLC, T_GTE, T_GTR, T_LAND, T_LOR, T_LSS, T_LTE, T_LUNLESS,
    T_MOD, T_MUL, T_NEQ, T_POW, T_SUB,
};
use promql_parser::parser::{BinaryExpr, LabelModifier, VectorMatchCardinality};

use super::error::QueryError;
use super::label_sets::{drop_names, drop_names_and_metric, keep_only, prometheus_text};
use super::value::{InstantSample, without_metric_name};

/// The operators this engine evaluates between values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinaryOp {
    /// `+ - * / % ^ atan2`.
    Arithmetic(Arithmetic),
    /// `== != > < >= <=`.
    Comparison(Comparison),
    /// `and or unless` (instant vectors only).
    Set(SetOp),
}

/// An arithmetic operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arithmetic {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    Atan2,
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Comparison {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
}

/// A set operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SetOp {
    And,
    Or,
    Unless,
}

impl BinaryOp {
    /// The operator a parser token stands for.
    pub(crate) fn from_token(op: token::TokenType) -> Result<Self, QueryError> {
        use Arithmetic as A;
        use Comparison as C;
        Ok(match op.id() {
            T_ADD => BinaryOp::Arithmetic(A::Add),
            T_SUB => BinaryOp::Arithmetic(A::Sub),
            T_MUL => BinaryOp::Arithmetic(A::Mul),
            T_DIV => BinaryOp::Arithmetic(A::Div),
            T_MOD => BinaryOp::Arithmetic(A::Mod),
            T_POW => BinaryOp::Arithmetic(A::Pow),
            T_ATAN2 => BinaryOp::Arithmetic(A::Atan2),
            T_EQLC => BinaryOp::Comparison(C::Eq),
            T_NEQ => BinaryOp::Comparison(C::Ne),
            T_GTR => BinaryOp::Comparison(C::Gt),
            T_LSS => BinaryOp::Comparison(C::Lt),
            T_GTE => BinaryOp::Comparison(C::Ge),
            T_LTE => BinaryOp::Comparison(C::Le),
            T_LAND => BinaryOp::Set(SetOp::And),
            T_LOR => BinaryOp::Set(SetOp::Or),
            T_LUNLESS => BinaryOp::Set(SetOp::Unless),
            _ => {
                return Err(QueryError::Unsupported(format!(
                    "binary operator {op} is not supported yet"
                )));
            }
        })
    }

    /// Between two scalars a comparison (always with `bool`, the parser
    /// insists) gives 1 or 0. Set operators never reach here (the parser
    /// refuses them on scalars); they give NaN defensively.
    pub(crate) fn on_scalars(self, l: f64, r: f64) -> f64 {
        match self {
            BinaryOp::Arithmetic(a) => a.apply(l, r),
            BinaryOp::Comparison(c) => truth(c.holds(l, r)),
            BinaryOp::Set(_) => f64::NAN,
        }
    }

    /// Prometheus 2.42's `shouldDropMetricName`: `+ - * / % ^` drop
    /// `__name__`; `atan2`, comparisons and set operators keep it.
    fn drops_metric_name(self) -> bool {
        matches!(self, BinaryOp::Arithmetic(a) if a != Arithmetic::Atan2)
    }

    /// Go's `vectorElemBinop`: the value and whether to keep the element.
    /// A comparison's value is its left operand.
    fn element(self, l: f64, r: f64) -> (f64, bool) {
        match self {
            BinaryOp::Arithmetic(a) => (a.apply(l, r), true),
            BinaryOp::Comparison(c) => (l, c.holds(l, r)),
            BinaryOp::Set(_) => (l, true),
        }
    }
}

impl Arithmetic {
    /// IEEE semantics, as Go's: `x/0` is ±Inf, `%` is Go's `math.Mod`
    /// (sign of the dividend; Rust's `%` on f64 is the same), `^` is `pow`.
    pub(crate) fn apply(self, l: f64, r: f64) -> f64 {
        match self {
            Arithmetic::Add => l + r,
            Arithmetic::Sub => l - r,
            Arithmetic::Mul => l * r,
            Arithmetic::Div => l / r,
            Arithmetic::Mod => l % r,
            Arithmetic::Pow => l.powf(r),
            Arithmetic::Atan2 => l.atan2(r),
        }
    }
}

impl Comparison {
    /// Whether `l op r` holds (never for NaN, except `!=`).
    pub(crate) fn holds(self, l: f64, r: f64) -> bool {
        match self {
            Comparison::Eq => l == r,
            Comparison::Ne => l != r,
            Comparison::Gt => l > r,
            Comparison::Lt => l < r,
            Comparison::Ge => l >= r,
            Comparison::Le => l <= r,
        }
    }
}

fn truth(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

/// Which operand of a vector/scalar operation is the scalar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScalarSide {
    Left,
    Right,
}

/// Applies `op` between each element of `samples` and `scalar`, keeping the
/// operand order. Arithmetic gives the result without `__name__` (except
/// `atan2`). A comparison filters, keeping the element (name and value,
/// even when the scalar is on the left); with `bool` it gives 1/0 for every
/// element and drops `__name__`.
pub(crate) fn vector_scalar(
    op: BinaryOp,
    samples: Vec<InstantSample>,
    scalar: f64,
    side: ScalarSide,
    return_bool: bool,
) -> Vec<InstantSample> {
    let drops_name = vector_scalar_drops_name(op, return_bool);
    let mut out = Vec::with_capacity(samples.len());
    for s in samples {
        if let Some(value) = vector_scalar_value(op, s.v, scalar, side, return_bool) {
            let labels = if drops_name {
                without_metric_name(&s.labels)
            } else {
                s.labels
            };
            out.push(InstantSample {
                labels,
                t: s.t,
                v: value,
            });
        }
    }
    out
}

/// Whether a vector/scalar operation's elements lose `__name__`.
pub(crate) fn vector_scalar_drops_name(op: BinaryOp, return_bool: bool) -> bool {
    op.drops_metric_name() || return_bool
}

/// The value one vector element `v` gives in a vector/scalar operation, or
/// `None` when a comparison filters it out.
pub(crate) fn vector_scalar_value(
    op: BinaryOp,
    v: f64,
    scalar: f64,
    side: ScalarSide,
    return_bool: bool,
) -> Option<f64> {
    let (l, r) = match side {
        ScalarSide::Right => (v, scalar),
        ScalarSide::Left => (scalar, v),
    };
    let (mut value, mut keep) = op.element(l, r);
    if matches!(op, BinaryOp::Comparison(_)) {
        // The vector element's value, whichever side it is on.
        value = v;
    }
    if return_bool {
        value = truth(keep);
        keep = true;
    }
    keep.then_some(value)
}

/// How the elements of two instant vectors are paired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Matching {
    card: Card,
    /// `on(...)` (true) or `ignoring(...)` (false, also the default).
    on: bool,
    /// The `on`/`ignoring` label names.
    labels: Vec<String>,
    /// The `group_left`/`group_right` label names, copied from the "one"
    /// side.
    include: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Card {
    OneToOne,
    ManyToOne,
    OneToMany,
    ManyToMany,
}

impl Matching {
    /// The matching a binary expression between two vectors asks for.
    pub(crate) fn of(b: &BinaryExpr, op: BinaryOp) -> Result<Self, QueryError> {
        let Some(m) = &b.modifier else {
            let card = if matches!(op, BinaryOp::Set(_)) {
                Card::ManyToMany
            } else {
                Card::OneToOne
            };
            return Ok(Matching {
                card,
                on: false,
                labels: Vec::new(),
                include: Vec::new(),
            });
        };
        if m.fill_values.lhs.is_some() || m.fill_values.rhs.is_some() {
            return Err(QueryError::Unsupported(format!(
                "fill modifiers in {b} are not supported"
            )));
        }
        let (card, include) = match &m.card {
            VectorMatchCardinality::OneToOne => (Card::OneToOne, Vec::new()),
            VectorMatchCardinality::ManyToOne(l) => (Card::ManyToOne, l.labels.clone()),
            VectorMatchCardinality::OneToMany(l) => (Card::OneToMany, l.labels.clone()),
            VectorMatchCardinality::ManyToMany => (Card::ManyToMany, Vec::new()),
        };
        let card = if matches!(op, BinaryOp::Set(_)) {
            Card::ManyToMany
        } else {
            card
        };
        let (on, labels) = match &m.matching {
            Some(LabelModifier::Include(l)) => (true, l.labels.clone()),
            Some(LabelModifier::Exclude(l)) => (false, l.labels.clone()),
            None => (false, Vec::new()),
        };
        Ok(Matching {
            card,
            on,
            labels,
            include,
        })
    }

    /// The labels two elements must share to match: the `on` labels, or
    /// all but the `ignoring` labels and `__name__`.
    fn signature(&self, labels: &Labels) -> Labels {
        if self.on {
            keep_only(labels, &self.labels)
        } else {
            drop_names_and_metric(labels, &self.labels)
        }
    }
}

/// `lhs op rhs` between two instant vectors, as Prometheus 2.42's
/// `VectorBinop`, `VectorAnd`, `VectorOr` and `VectorUnless`.
pub(crate) fn vector_vector(
    op: BinaryOp,
    matching: &Matching,
    return_bool: bool,
    lhs: Vec<InstantSample>,
    rhs: Vec<InstantSample>,
) -> Result<Vec<InstantSample>, QueryError> {
    match op {
        BinaryOp::Set(set) => Ok(set_operation(set, matching, lhs, rhs)),
        _ => matched_operation(op, matching, return_bool, lhs, rhs),
    }
}

/// `and`, `or`, `unless`: elements pass through whole (names included);
/// only their match signatures decide.
fn set_operation(
    op: SetOp,
    matching: &Matching,
    lhs: Vec<InstantSample>,
    rhs: Vec<InstantSample>,
) -> Vec<InstantSample> {
    match op {
        SetOp::And => {
            if lhs.is_empty() || rhs.is_empty() {
                return Vec::new();
            }
            let right: HashSet<Labels> =
                rhs.iter().map(|s| matching.signature(&s.labels)).collect();
            lhs.into_iter()
                .filter(|s| right.contains(&matching.signature(&s.labels)))
                .collect()
        }
        SetOp::Or => {
            if lhs.is_empty() || rhs.is_empty() {
                let mut out = lhs;
                out.extend(rhs);
                return out;
            }
            let left: HashSet<Labels> = lhs.iter().map(|s| matching.signature(&s.labels)).collect();
            let mut out = lhs;
            out.extend(
                rhs.into_iter()
                    .filter(|s| !left.contains(&matching.signature(&s.labels))),
            );
            out
        }
        SetOp::Unless => {
            if lhs.is_empty() || rhs.is_empty() {
                return lhs;
            }
            let right: HashSet<Labels> =
                rhs.iter().map(|s| matching.signature(&s.labels)).collect();
            lhs.into_iter()
                .filter(|s| !right.contains(&matching.signature(&s.labels)))
                .collect()
        }
    }
}

/// Arithmetic and comparisons between two vectors, one-to-one or
/// many-to-one/one-to-many.
///
/// As in Prometheus 2.42: with `group_right` the sides are swapped for the
/// matching, so a filtering comparison keeps the right ("many") side's
/// labels but the *left* operand's value; a one-to-one result keeps only
/// the `on` labels (or drops the `ignoring` labels) even for filtering
/// comparisons.
fn matched_operation(
    op: BinaryOp,
    matching: &Matching,
    return_bool: bool,
    lhs: Vec<InstantSample>,
    rhs: Vec<InstantSample>,
) -> Result<Vec<InstantSample>, QueryError> {
    let swapped = matching.card == Card::OneToMany;
    let (many, one) = if swapped { (rhs, lhs) } else { (lhs, rhs) };

    // The "one" side, by signature; a repeated signature is many-to-many.
    let mut one_by_sig: HashMap<Labels, &InstantSample> = HashMap::with_capacity(one.len());
    for s in &one {
        let sig = matching.signature(&s.labels);
        if let Some(earlier) = one_by_sig.get(&sig) {
            return Err(QueryError::ManyToManyMatching {
                group: prometheus_text(&sig),
                side: if swapped { "left" } else { "right" },
                first: prometheus_text(&s.labels),
                second: prometheus_text(&earlier.labels),
            });
        }
        one_by_sig.insert(sig, s);
    }

    // Result label sets already produced per signature (many-to-one), or
    // just the signatures seen (one-to-one).
    let mut produced: HashMap<Labels, HashSet<Labels>> = HashMap::new();
    let mut out = Vec::new();
    for s in &many {
        let sig = matching.signature(&s.labels);
        let Some(other) = one_by_sig.get(&sig) else {
            continue;
        };
        let (l, r) = if swapped {
            (other.v, s.v)
        } else {
            (s.v, other.v)
        };
        let (mut value, keep) = op.element(l, r);
        if return_bool {
            value = truth(keep);
        } else if !keep {
            continue;
        }
        let mut labels = result_labels(op, matching, &s.labels, &other.labels);
        if return_bool {
            labels = without_metric_name(&labels);
        }
        match produced.get_mut(&sig) {
            Some(seen) => {
                if matching.card == Card::OneToOne {
                    return Err(QueryError::AmbiguousOneToOne);
                }
                if !seen.insert(labels.clone()) {
                    return Err(QueryError::AmbiguousGrouping);
                }
            }
            None => {
                let mut seen = HashSet::new();
                if matching.card != Card::OneToOne {
                    seen.insert(labels.clone());
                }
                produced.insert(sig, seen);
            }
        }
        out.push(InstantSample {
            labels,
            t: s.t,
            v: value,
        });
    }
    Ok(out)
}

/// Go's `resultMetric`: the labels of a matched pair's result, from the
/// "many" side's labels (`many`) and the "one" side's (`one`).
fn result_labels(op: BinaryOp, matching: &Matching, many: &Labels, one: &Labels) -> Labels {
    let mut labels = if op.drops_metric_name() {
        without_metric_name(many)
    } else {
        many.clone()
    };
    if matching.card == Card::OneToOne {
        labels = if matching.on {
            keep_only(&labels, &matching.labels)
        } else {
            drop_names(&labels, &matching.labels)
        };
    }
    for name in &matching.include {
        labels = match one.get(name) {
            Some(v) if !v.is_empty() => {
                let mut l = labels;
                l.set(name, v);
                l
            }
            _ => drop_names(&labels, std::slice::from_ref(name)),
        };
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

    fn pair_store() -> super::super::in_memory::InMemoryQuerier {
        store(vec![
            (labels("a", &[("i", "1"), ("j", "x")]), vec![(T, 10.0)]),
            (labels("a", &[("i", "2"), ("j", "x")]), vec![(T, 20.0)]),
            (labels("b", &[("i", "1"), ("j", "x")]), vec![(T, 3.0)]),
            (labels("b", &[("i", "2"), ("j", "y")]), vec![(T, 30.0)]),
        ])
    }

    #[test]
    fn comparison_value_is_the_left_operand() {
        let op = BinaryOp::Comparison(Comparison::Gt);
        assert_eq!(op.element(3.0, 1.0), (3.0, true));
        assert_eq!(op.element(1.0, 3.0), (1.0, false));
        assert!(!op.element(f64::NAN, 1.0).1);
    }

    #[test]
    fn only_plain_arithmetic_drops_the_name() {
        assert!(BinaryOp::Arithmetic(Arithmetic::Pow).drops_metric_name());
        assert!(!BinaryOp::Arithmetic(Arithmetic::Atan2).drops_metric_name());
        assert!(!BinaryOp::Comparison(Comparison::Eq).drops_metric_name());
        assert!(!BinaryOp::Set(SetOp::Or).drops_metric_name());
    }

    #[test]
    fn one_to_one_matches_on_all_labels_but_the_name() {
        let q = pair_store();
        let v = vector(&q, "a + b", T);
        // Only i=1 has the same labels on both sides (j differs for i=2).
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].labels, unnamed(&[("i", "1"), ("j", "x")]));
        assert_eq!(v[0].v, 13.0);
        assert_eq!(values(&vector(&q, "a - b", T)), vec![7.0]);
        assert_eq!(values(&vector(&q, "a / b", T)), vec![10.0 / 3.0]);
        assert_eq!(values(&vector(&q, "a % b", T)), vec![1.0]);
        assert_eq!(values(&vector(&q, "b ^ a", T)), vec![59049.0]);
        // atan2 keeps the name in 2.42.
        let v = vector(&q, "a atan2 b", T);
        assert_eq!(v[0].labels.metric_name(), Some("a"));
        assert_eq!(v[0].v, 10f64.atan2(3.0));
    }

    #[test]
    fn on_and_ignoring_choose_the_match_labels_and_shape_the_result() {
        let q = pair_store();
        // on(i): both pairs match; the result keeps only i.
        let v = vector(&q, "a + on(i) b", T);
        assert_eq!(
            v.iter()
                .map(|s| (s.labels.clone(), s.v))
                .collect::<Vec<_>>(),
            vec![
                (unnamed(&[("i", "1")]), 13.0),
                (unnamed(&[("i", "2")]), 50.0)
            ]
        );
        // ignoring(j): the result drops j.
        let v = vector(&q, "a * ignoring(j) b", T);
        assert_eq!(values(&v), vec![30.0, 600.0]);
        assert_eq!(v[1].labels, unnamed(&[("i", "2")]));
        // Even a filtering comparison keeps only the on labels, as 2.42.
        let v = vector(&q, "a > on(i) b", T);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].labels, unnamed(&[("i", "1")]));
        assert_eq!(v[0].v, 10.0);
    }

    #[test]
    fn comparisons_filter_or_give_bool() {
        let q = pair_store();
        let v = vector(&q, "a > ignoring(j) b", T);
        // i=1: 10 > 3 kept with a's value; i=2: 20 > 30 dropped.
        assert_eq!(values(&v), vec![10.0]);
        assert_eq!(v[0].labels, labels("a", &[("i", "1")]));
        let v = vector(&q, "a > bool ignoring(j) b", T);
        assert_eq!(values(&v), vec![1.0, 0.0]);
        assert!(v.iter().all(|s| s.labels.metric_name().is_none()));
        assert_eq!(values(&vector(&q, "a == bool on(i) b", T)), vec![0.0, 0.0]);
        assert_eq!(values(&vector(&q, "a < on(i) b", T)), vec![20.0]);
    }

    #[test]
    fn group_left_copies_labels_from_the_one_side() {
        let q = store(vec![
            (
                labels("req", &[("instance", "a"), ("path", "/x")]),
                vec![(T, 4.0)],
            ),
            (
                labels("req", &[("instance", "a"), ("path", "/y")]),
                vec![(T, 6.0)],
            ),
            (
                labels("req", &[("instance", "b"), ("path", "/x")]),
                vec![(T, 1.0)],
            ),
            (
                labels("info", &[("instance", "a"), ("team", "red")]),
                vec![(T, 2.0)],
            ),
            (
                labels("info", &[("instance", "b"), ("team", "blue")]),
                vec![(T, 1.0)],
            ),
        ]);
        let v = vector(&q, "req * on(instance) group_left(team) info", T);
        assert_eq!(
            v.iter()
                .map(|s| (s.labels.clone(), s.v))
                .collect::<Vec<_>>(),
            vec![
                (
                    unnamed(&[("instance", "a"), ("path", "/x"), ("team", "red")]),
                    8.0
                ),
                (
                    unnamed(&[("instance", "a"), ("path", "/y"), ("team", "red")]),
                    12.0
                ),
                (
                    unnamed(&[("instance", "b"), ("path", "/x"), ("team", "blue")]),
                    1.0
                ),
            ]
        );
        // group_right: same result from the other side, operand order kept.
        let v = vector(&q, "info - on(instance) group_right(team) req", T);
        assert_eq!(values(&v), vec![-2.0, -4.0, 0.0]);
        assert_eq!(v[0].labels.get("team"), Some("red"));
        // A filtering group_right comparison keeps the right side's labels
        // but the left operand's value, as 2.42 does.
        let v = vector(&q, "info < on(instance) group_right req", T);
        assert_eq!(values(&v), vec![2.0, 2.0]);
        assert_eq!(
            v[0].labels,
            labels("req", &[("instance", "a"), ("path", "/x")])
        );
    }

    #[test]
    fn many_to_many_is_refused_with_prometheus_message() {
        let q = store(vec![
            (labels("a", &[("i", "1"), ("j", "x")]), vec![(T, 1.0)]),
            (labels("b", &[("i", "1"), ("j", "x")]), vec![(T, 1.0)]),
            (labels("b", &[("i", "1"), ("j", "y")]), vec![(T, 1.0)]),
        ]);
        let e = failure(&q, "a + on(i) b", T);
        assert_eq!(
            e.to_string(),
            "found duplicate series for the match group {i=\"1\"} on the right hand-side of the operation: [{__name__=\"b\", i=\"1\", j=\"y\"}, {__name__=\"b\", i=\"1\", j=\"x\"}];many-to-many matching not allowed: matching labels must be unique on one side"
        );
        assert_eq!(e.http_status(), 422);
        let e = failure(&q, "b / on(i) group_right a", T);
        assert!(e.to_string().contains("on the left hand-side"), "{e}");
    }

    #[test]
    fn ambiguous_matches_are_refused() {
        let q = store(vec![
            (labels("a", &[("i", "1"), ("j", "x")]), vec![(T, 1.0)]),
            (labels("a", &[("i", "1"), ("j", "y")]), vec![(T, 1.0)]),
            (labels("b", &[("i", "1"), ("k", "z")]), vec![(T, 1.0)]),
        ]);
        assert!(matches!(
            failure(&q, "a + on(i) b", T),
            QueryError::AmbiguousOneToOne
        ));
        assert_eq!(
            failure(&q, "a + on(i) b", T).to_string(),
            "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)"
        );
        // group_left works, and keeps the many side's labels.
        assert_eq!(vector(&q, "a + on(i) group_left b", T).len(), 2);
        // Two "many" elements whose results differ only by the dropped
        // name collide.
        let q = store(vec![
            (labels("a", &[("i", "1")]), vec![(T, 1.0)]),
            (labels("c", &[("i", "1")]), vec![(T, 1.0)]),
            (labels("b", &[("i", "1")]), vec![(T, 1.0)]),
        ]);
        assert!(matches!(
            failure(&q, "{__name__=~\"a|c\"} + on(i) group_left b", T),
            QueryError::AmbiguousGrouping
        ));
    }

    #[test]
    fn set_operators_match_by_signature_and_keep_whole_elements() {
        let q = pair_store();
        let v = vector(&q, "a and b", T);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].labels, labels("a", &[("i", "1"), ("j", "x")]));
        assert_eq!(v[0].v, 10.0);
        assert_eq!(values(&vector(&q, "a and on(i) b", T)), vec![10.0, 20.0]);
        assert_eq!(
            values(&vector(&q, "a and ignoring(j) b", T)),
            vec![10.0, 20.0]
        );
        assert_eq!(values(&vector(&q, "a unless b", T)), vec![20.0]);
        assert!(vector(&q, "a unless on(i) b", T).is_empty());
        assert_eq!(
            values(&vector(&q, "a unless on(j) b", T)),
            Vec::<f64>::new()
        );
        assert_eq!(values(&vector(&q, "b unless on(j) a", T)), vec![30.0]);
        // or: all of a, plus b where no a has the signature.
        let v = vector(&q, "a or b", T);
        assert_eq!(v.len(), 3);
        assert_eq!(
            v.iter()
                .map(|s| s.labels.metric_name().unwrap_or(""))
                .collect::<Vec<_>>(),
            vec!["a", "a", "b"]
        );
        assert_eq!(vector(&q, "a or on(i) b", T).len(), 2);
        assert_eq!(vector(&q, "a or ignoring(i) b", T).len(), 3);
        // on() with no labels: everything matches everything.
        assert_eq!(vector(&q, "a and on() b", T).len(), 2);
        assert_eq!(vector(&q, "a unless on() nothing", T).len(), 2);
        assert_eq!(vector(&q, "nothing or b", T).len(), 2);
    }
}
