//! What a PromQL expression evaluates to: one Rust type per PromQL type
//! (scalar, string, instant vector, range vector), plus the stale-marker
//! convention the evaluator needs to read stored samples.
//!
//! These are plain data. Nothing here evaluates, reads storage or formats
//! for the wire; the HTTP layer turns a [`Value`] into Prometheus JSON.

use nines_shared::{Label, Labels, METRIC_NAME_LABEL};

/// The bit pattern Prometheus writes as a sample value to mark a series as
/// stale (ended). It is a NaN, so it must be recognised by its bits: an
/// ordinary NaN sample is a value, a stale marker is an absence.
pub const STALE_MARKER_BITS: u64 = 0x7ff0_0000_0000_0002;

/// True when `v` is Prometheus's stale marker, not just any NaN.
pub fn is_stale_marker(v: f64) -> bool {
    v.to_bits() == STALE_MARKER_BITS
}

/// The result of evaluating a PromQL expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A single number; the API reports it at the evaluation time.
    Scalar(f64),
    /// A string literal (instant queries only).
    String(String),
    /// An instant vector: at most one sample per label set, all at the
    /// evaluation time.
    Vector(Vec<InstantSample>),
    /// A range vector (or a range query's result): samples over time per
    /// label set.
    Matrix(Vec<RangeSeries>),
}

impl Value {
    /// The type's name as the Prometheus API spells `resultType`:
    /// `scalar`, `string`, `vector` or `matrix`.
    pub fn result_type(&self) -> &'static str {
        match self {
            Value::Scalar(_) => "scalar",
            Value::String(_) => "string",
            Value::Vector(_) => "vector",
            Value::Matrix(_) => "matrix",
        }
    }

    /// The type's name as PromQL's documentation and error messages spell
    /// it: `scalar`, `string`, `instant vector` or `range vector`.
    pub fn documented_type(&self) -> &'static str {
        match self {
            Value::Scalar(_) => "scalar",
            Value::String(_) => "string",
            Value::Vector(_) => "instant vector",
            Value::Matrix(_) => "range vector",
        }
    }
}

/// One element of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct InstantSample {
    /// The series' labels (without `__name__` once an operator dropped it).
    pub labels: Labels,
    /// The evaluation time, in ms (not the stored sample's timestamp).
    pub t: i64,
    /// The value.
    pub v: f64,
}

/// One element of a range vector: a label set and its samples.
#[derive(Debug, Clone, PartialEq)]
pub struct RangeSeries {
    /// The series' labels.
    pub labels: Labels,
    /// (timestamp ms, value), ascending by timestamp.
    pub samples: Vec<(i64, f64)>,
}

/// `labels` without `__name__`, as arithmetic results carry them: the
/// result of `x * 2` is no longer an `x`.
pub(crate) fn without_metric_name(labels: &Labels) -> Labels {
    let kept: Vec<Label> = labels
        .iter()
        .filter(|l| l.name != METRIC_NAME_LABEL)
        .cloned()
        .collect();
    Labels::from_unsorted(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_stale_bit_pattern_is_a_stale_marker() {
        assert!(is_stale_marker(f64::from_bits(STALE_MARKER_BITS)));
        assert!(!is_stale_marker(f64::NAN));
        assert!(!is_stale_marker(0.0));
    }

    #[test]
    fn dropping_the_metric_name_keeps_the_other_labels() {
        let l = Labels::new("up", [("job", "node")]);
        let d = without_metric_name(&l);
        assert_eq!(d.metric_name(), None);
        assert_eq!(d.get("job"), Some("node"));
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn type_names_follow_prometheus() {
        assert_eq!(Value::Matrix(vec![]).documented_type(), "range vector");
        assert_eq!(Value::Vector(vec![]).result_type(), "vector");
        assert_eq!(Value::Scalar(1.0).result_type(), "scalar");
        assert_eq!(Value::String(String::new()).documented_type(), "string");
    }
}
