//! Test fixtures shared by the query modules' tests: an in-memory store
//! built from literal series, and one-line ways to run an instant or range
//! query and get the expected kind of result (panicking with the query
//! text otherwise).
//!
//! Test-only; never used by the engine itself.

use nines_shared::Labels;

use super::Engine;
use super::error::QueryError;
use super::in_memory::InMemoryQuerier;
use super::querier::SeriesSamples;
use super::value::{InstantSample, RangeSeries, Value};

/// An aligned evaluation time: a multiple of one hour, in ms.
pub(crate) const T: i64 = 1_699_999_200_000;
/// One second in ms.
pub(crate) const SEC: i64 = 1_000;
/// One minute in ms.
pub(crate) const MIN: i64 = 60 * SEC;

/// A store holding `series`, each a label set and its samples.
pub(crate) fn store(series: Vec<(Labels, Vec<(i64, f64)>)>) -> InMemoryQuerier {
    InMemoryQuerier::new(
        series
            .into_iter()
            .map(|(labels, samples)| SeriesSamples { labels, samples })
            .collect(),
    )
}

/// A label set `metric{pairs}`.
pub(crate) fn labels(metric: &str, pairs: &[(&str, &str)]) -> Labels {
    Labels::new(metric, pairs.iter().copied())
}

/// A label set without a metric name.
pub(crate) fn unnamed(pairs: &[(&str, &str)]) -> Labels {
    let mut l = Labels::default();
    for (n, v) in pairs {
        l.set(n, v);
    }
    l
}

/// `n` samples `start, start + step, ...` with values `f(i)`.
pub(crate) fn every(start: i64, step: i64, n: i64, f: impl Fn(i64) -> f64) -> Vec<(i64, f64)> {
    (0..n).map(|i| (start + i * step, f(i))).collect()
}

/// An instant query's result.
pub(crate) fn instant(q: &InMemoryQuerier, expr: &str, t: i64) -> Result<Value, QueryError> {
    Engine::default().instant(q, expr, t)
}

/// An instant query that must give a vector.
pub(crate) fn vector(q: &InMemoryQuerier, expr: &str, t: i64) -> Vec<InstantSample> {
    match instant(q, expr, t) {
        Ok(Value::Vector(v)) => v,
        other => panic!("{expr}: expected a vector, got {other:?}"),
    }
}

/// An instant query that must give a scalar.
pub(crate) fn scalar(q: &InMemoryQuerier, expr: &str, t: i64) -> f64 {
    match instant(q, expr, t) {
        Ok(Value::Scalar(v)) => v,
        other => panic!("{expr}: expected a scalar, got {other:?}"),
    }
}

/// An instant query that must give a matrix.
pub(crate) fn matrix(q: &InMemoryQuerier, expr: &str, t: i64) -> Vec<RangeSeries> {
    match instant(q, expr, t) {
        Ok(Value::Matrix(m)) => m,
        other => panic!("{expr}: expected a matrix, got {other:?}"),
    }
}

/// A range query that must succeed.
pub(crate) fn range(
    q: &InMemoryQuerier,
    expr: &str,
    start: i64,
    end: i64,
    step: i64,
) -> Vec<RangeSeries> {
    match Engine::default().range(q, expr, start, end, step) {
        Ok(Value::Matrix(m)) => m,
        other => panic!("{expr}: expected a matrix, got {other:?}"),
    }
}

/// An instant query that must fail; its error.
pub(crate) fn failure(q: &InMemoryQuerier, expr: &str, t: i64) -> QueryError {
    match instant(q, expr, t) {
        Err(e) => e,
        Ok(v) => panic!("{expr}: expected an error, got {v:?}"),
    }
}

/// The values of a vector, in its order.
pub(crate) fn values(v: &[InstantSample]) -> Vec<f64> {
    v.iter().map(|s| s.v).collect()
}

/// Asserts `got` is within 1e-12 relative of `want` (NaN equals NaN).
pub(crate) fn assert_close(got: f64, want: f64, what: &str) {
    if want.is_nan() {
        assert!(got.is_nan(), "{what}: got {got}, want NaN");
        return;
    }
    if want.is_infinite() || want == 0.0 {
        assert_eq!(got, want, "{what}");
        return;
    }
    assert!(
        ((got - want) / want).abs() < 1e-12,
        "{what}: got {got}, want {want}"
    );
}

/// SplitMix64: deterministic random test data.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    /// The next 64 random bits.
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
