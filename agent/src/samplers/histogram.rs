//! A cumulative Prometheus-style histogram (bucket counts, sum, count) that
//! samplers fill as events arrive and report once per round, plus the one
//! set of latency bucket bounds every request-latency source shares.
//!
//! Sharing the bounds is the point: SLO rules compare `le="0.25"` buckets
//! across sources, so every latency histogram must have the same edges.
//!
//! This file must never do I/O, allocate per observation, or let a bad
//! value (NaN, infinity) poison the sum: such observations are ignored.

use super::Samples;
use std::borrow::Cow;
use std::sync::OnceLock;

/// Bucket upper bounds, in seconds, of every request-latency histogram the
/// agent produces. Fine enough that the usual SLO thresholds (100 ms,
/// 250 ms, 1 s) are exact bucket edges, so `le` selectors need no
/// interpolation.
pub const LATENCY_BUCKETS_SECONDS: [f64; 19] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5,
    5.0, 10.0,
];

/// A cumulative histogram: how many observations fell at or below each
/// bound since it was created, their sum and their count. Never reset, so
/// reporting it each round yields Prometheus counters.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    /// `le` label of each bound, formatted once rather than every round:
    /// once per process for [`LATENCY_BUCKETS_SECONDS`].
    le: Cow<'static, [String]>,
    /// Observations per bucket, *not* cumulative: `counts[i]` counts values
    /// in `(bounds[i-1], bounds[i]]`; values above the last bound are only
    /// in `count`. Kept per bucket so `observe` touches one slot.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// An empty histogram with the given upper bounds, which must be finite
    /// and strictly ascending (`+Inf` is implicit). Bounds out of order are
    /// a programming error, caught by a debug assertion.
    pub fn new(bounds: &'static [f64]) -> Self {
        debug_assert!(
            bounds.windows(2).all(|w| w[0] < w[1]) && bounds.iter().all(|b| b.is_finite()),
            "histogram bounds must be finite and strictly ascending"
        );
        static LATENCY_LE: OnceLock<Vec<String>> = OnceLock::new();
        // Rust's shortest round-trip formatting gives "0.005", "1", "10":
        // the same strings Prometheus clients write for `le`.
        let format = |bounds: &[f64]| bounds.iter().map(|b| format!("{b}")).collect::<Vec<_>>();
        let le = if bounds == LATENCY_BUCKETS_SECONDS {
            Cow::Borrowed(
                LATENCY_LE
                    .get_or_init(|| format(&LATENCY_BUCKETS_SECONDS))
                    .as_slice(),
            )
        } else {
            Cow::Owned(format(bounds))
        };
        Histogram {
            bounds,
            le,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    /// An empty histogram with [`LATENCY_BUCKETS_SECONDS`].
    pub fn latency() -> Self {
        Histogram::new(&LATENCY_BUCKETS_SECONDS)
    }

    /// Records one observation of `v`. NaN and infinite values are ignored:
    /// they would make the sum meaningless forever.
    pub fn observe(&mut self, v: f64) {
        self.observe_n(v, 1);
    }

    /// Records `n` observations of `v` at once (a sampled StatsD timer
    /// stands for `1/rate` events). NaN and infinite values are ignored.
    pub fn observe_n(&mut self, v: f64, n: u64) {
        if !v.is_finite() || n == 0 {
            return;
        }
        // First bound >= v: `le` is inclusive.
        let i = self.bounds.partition_point(|&b| b < v);
        if let Some(c) = self.counts.get_mut(i) {
            *c = c.saturating_add(n);
        }
        self.sum += v * n as f64;
        self.count = self.count.saturating_add(n);
    }

    /// Number of observations so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Sum of the observations so far.
    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// `(bound, observations <= bound)` for each finite bound, ascending.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut acc = 0u64;
        self.bounds
            .iter()
            .zip(&self.counts)
            .map(|(&b, &c)| {
                acc = acc.saturating_add(c);
                (b, acc)
            })
            .collect()
    }

    /// Pushes the histogram into `out` as the text format orders it:
    /// `<name>_bucket{le=...}` ascending ending with `le="+Inf"` (equal to
    /// the count), then `<name>_sum` and `<name>_count`, each with
    /// `labels`. The caller declares the family (kind Histogram) and must
    /// not pass an `le` label itself.
    pub fn report(&self, out: &mut Samples, name: &str, labels: &[(&str, &str)]) {
        let mut metric = String::with_capacity(name.len() + "_bucket".len());
        metric.push_str(name);
        metric.push_str("_bucket");
        let mut acc = 0u64;
        let finite = self.le.iter().zip(&self.counts).map(|(le, &c)| {
            acc = acc.saturating_add(c);
            (le.as_str(), acc as f64)
        });
        let inf = std::iter::once(("+Inf", self.count as f64));
        out.push_buckets(&metric, labels, finite.chain(inf));
        metric.truncate(name.len());
        metric.push_str("_sum");
        out.push(&metric, labels, self.sum);
        metric.truncate(name.len());
        metric.push_str("_count");
        out.push(&metric, labels, self.count as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_at_or_above_them() {
        let mut h = Histogram::latency();
        h.observe(0.05); // exactly on an edge: counted in le=0.05
        h.observe(0.12);
        h.observe(0.9);
        h.observe(30.0); // above every bound: only in +Inf
        let cum = h.cumulative();
        let at = |b: f64| cum.iter().find(|(x, _)| *x == b).map(|(_, n)| *n);
        assert_eq!(at(0.025), Some(0));
        assert_eq!(at(0.05), Some(1));
        assert_eq!(at(0.1), Some(1));
        assert_eq!(at(0.15), Some(2));
        assert_eq!(at(1.0), Some(3));
        assert_eq!(at(10.0), Some(3));
        assert_eq!(h.count(), 4);
        assert!((h.sum() - 31.07).abs() < 1e-9);
    }

    #[test]
    fn bad_values_are_ignored_and_n_multiplies() {
        let mut h = Histogram::latency();
        h.observe(f64::NAN);
        h.observe(f64::INFINITY);
        h.observe_n(0.2, 0);
        assert_eq!(h.count(), 0);
        h.observe_n(0.2, 10);
        assert_eq!(h.count(), 10);
        assert!((h.sum() - 2.0).abs() < 1e-9);
    }

    #[test]
    fn report_writes_buckets_ascending_then_inf_sum_count() {
        let mut h = Histogram::latency();
        h.observe(0.3);
        h.observe(20.0);
        let mut out = Samples::default();
        h.report(&mut out, "x_seconds", &[("vhost", "a")]);
        let names: Vec<String> = out
            .observations
            .iter()
            .map(|o| o.labels.to_string())
            .collect();
        assert_eq!(names.len(), LATENCY_BUCKETS_SECONDS.len() + 3);
        assert_eq!(names[0], r#"x_seconds_bucket{le="0.005",vhost="a"}"#);
        assert_eq!(names[13], r#"x_seconds_bucket{le="1",vhost="a"}"#);
        assert_eq!(names[19], r#"x_seconds_bucket{le="+Inf",vhost="a"}"#);
        assert_eq!(names[20], r#"x_seconds_sum{vhost="a"}"#);
        assert_eq!(names[21], r#"x_seconds_count{vhost="a"}"#);
        let v = |le: &str| out.value_of("x_seconds_bucket", &[("vhost", "a"), ("le", le)]);
        assert_eq!(v("0.25"), Some(0.0));
        assert_eq!(v("0.3"), Some(1.0));
        assert_eq!(v("10"), Some(1.0));
        assert_eq!(v("+Inf"), Some(2.0));
        let sum = out.value_of("x_seconds_sum", &[("vhost", "a")]);
        assert!(sum.is_some_and(|s| (s - 20.3).abs() < 1e-9), "{sum:?}");
        assert_eq!(
            out.value_of("x_seconds_count", &[("vhost", "a")]),
            Some(2.0)
        );
    }

    #[test]
    fn probe_durations_report_every_bucket_with_the_probes_labels() {
        let mut h = Histogram::latency();
        for v in [0.1, 0.25, 1.0, 0.1000001, 0.0, 11.0, f64::NAN] {
            h.observe(v);
        }
        let mut out = Samples::default();
        let labels = [("probe", "a"), ("phase", "total")];
        h.report(&mut out, "d_seconds", &labels);
        let at = |le: &str| {
            out.value_of(
                "d_seconds_bucket",
                &[("probe", "a"), ("phase", "total"), ("le", le)],
            )
        };
        assert_eq!(at("0.005"), Some(1.0)); // 0.0
        assert_eq!(at("0.075"), Some(1.0));
        assert_eq!(at("0.1"), Some(2.0)); // + 0.1
        assert_eq!(at("0.15"), Some(3.0)); // + 0.1000001
        assert_eq!(at("0.25"), Some(4.0)); // + 0.25
        assert_eq!(at("0.75"), Some(4.0));
        assert_eq!(at("1"), Some(5.0)); // + 1.0
        assert_eq!(at("10"), Some(5.0));
        assert_eq!(at("+Inf"), Some(6.0)); // + 11.0; NaN ignored
        assert_eq!(out.value_of("d_seconds_count", &labels), Some(6.0));
        let sum = out.value_of("d_seconds_sum", &labels).unwrap();
        assert!((sum - 12.4500001).abs() < 1e-9, "{sum}");
        // One series per bound, plus +Inf, sum and count; the bucket
        // labels made once for the shared bounds are the ones formatted
        // for any other histogram.
        assert_eq!(out.observations.len(), LATENCY_BUCKETS_SECONDS.len() + 3);
        // (A copy of the bounds elsewhere in memory is the same layout.)
        static COPY: [f64; 19] = LATENCY_BUCKETS_SECONDS;
        assert!(matches!(Histogram::new(&COPY).le, Cow::Borrowed(_)));
        let other = Histogram::new(&[0.5, 2.0, 10.0]);
        assert!(matches!(other.le, Cow::Owned(_)));
        assert_eq!(other.le.as_ref(), ["0.5", "2", "10"]);
        let shared = Histogram::latency();
        let formatted: Vec<String> = LATENCY_BUCKETS_SECONDS
            .iter()
            .map(|b| nines_shared::exposition::format_value(*b))
            .collect();
        assert_eq!(shared.le.as_ref(), formatted.as_slice());
    }
}
