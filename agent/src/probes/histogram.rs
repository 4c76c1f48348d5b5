//! A cumulative histogram for probe durations: counts per bucket, sum and
//! count since the agent started, written into [`Samples`] as the
//! `_bucket`/`_sum`/`_count` series Prometheus expects. Plain data: no
//! locking and no clocks here; the probe state owns and guards it.

use crate::samplers::Samples;
use nines_shared::exposition::format_value;

/// Upper bounds for probe durations, in seconds. 100 ms, 250 ms and 1 s
/// are bucket edges so latency SLOs at those thresholds are exact, not
/// interpolated.
pub const DURATION_BUCKETS: [f64; 19] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5,
    5.0, 10.0,
];

/// Observations per bucket since start.
#[derive(Debug, Clone)]
pub(crate) struct Histogram {
    bounds: &'static [f64],
    /// Per bucket, not cumulative; the last is above every bound (+Inf).
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    /// An empty histogram over ascending `bounds`.
    pub(crate) fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }

    /// Adds one value. A value equal to a bound lands in that bound's
    /// bucket (`le` is "less than or equal").
    pub(crate) fn observe(&mut self, v: f64) {
        if v.is_nan() {
            return;
        }
        let i = self.bounds.partition_point(|b| *b < v);
        self.counts[i] += 1;
        self.sum += v;
    }

    /// Observations so far.
    pub(crate) fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Writes `<name>_bucket{le=...}` (cumulative), `<name>_sum` and
    /// `<name>_count` with `labels` on each.
    pub(crate) fn write(&self, out: &mut Samples, name: &str, labels: &[(&str, &str)]) {
        let bucket = format!("{name}_bucket");
        let mut with_le: Vec<(&str, &str)> = Vec::with_capacity(labels.len() + 1);
        with_le.extend_from_slice(labels);
        with_le.push(("le", ""));
        let le_slot = labels.len();
        let le = le_labels(self.bounds);
        let mut cumulative = 0u64;
        for (i, le) in le.iter().enumerate() {
            cumulative += self.counts[i];
            with_le[le_slot].1 = le;
            out.push(&bucket, &with_le, cumulative as f64);
        }
        cumulative += self.counts[self.bounds.len()];
        with_le[le_slot].1 = "+Inf";
        out.push(&bucket, &with_le, cumulative as f64);
        out.push(&format!("{name}_sum"), labels, self.sum);
        out.push(&format!("{name}_count"), labels, cumulative as f64);
    }
}

/// The `le` label of each bound, as the text format writes it: made once
/// for [`DURATION_BUCKETS`], which every probe uses.
fn le_labels(bounds: &'static [f64]) -> std::borrow::Cow<'static, [String]> {
    static DURATION_LE: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let format = |bounds: &[f64]| bounds.iter().map(|b| format_value(*b)).collect::<Vec<_>>();
    if std::ptr::eq(bounds, &DURATION_BUCKETS[..]) {
        std::borrow::Cow::Borrowed(DURATION_LE.get_or_init(|| format(&DURATION_BUCKETS)))
    } else {
        std::borrow::Cow::Owned(format(bounds))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_on_an_edge_count_in_that_bucket() {
        let mut h = Histogram::new(&DURATION_BUCKETS);
        for v in [0.1, 0.25, 1.0, 0.1000001, 0.0, 11.0, f64::NAN] {
            h.observe(v);
        }
        let mut out = Samples::default();
        h.write(&mut out, "d_seconds", &[("probe", "a")]);
        let at = |le: &str| out.value_of("d_seconds_bucket", &[("probe", "a"), ("le", le)]);
        assert_eq!(at("0.005"), Some(1.0)); // 0.0
        assert_eq!(at("0.075"), Some(1.0));
        assert_eq!(at("0.1"), Some(2.0)); // + 0.1
        assert_eq!(at("0.15"), Some(3.0)); // + 0.1000001
        assert_eq!(at("0.25"), Some(4.0)); // + 0.25
        assert_eq!(at("0.75"), Some(4.0));
        assert_eq!(at("1"), Some(5.0)); // + 1.0
        assert_eq!(at("10"), Some(5.0));
        assert_eq!(at("+Inf"), Some(6.0)); // + 11.0; NaN ignored
        assert_eq!(
            out.value_of("d_seconds_count", &[("probe", "a")]),
            Some(6.0)
        );
        let sum = out.value_of("d_seconds_sum", &[("probe", "a")]).unwrap();
        assert!((sum - 12.4500001).abs() < 1e-9, "{sum}");
        assert_eq!(h.count(), 6);
        // One series per bound, plus +Inf, sum and count.
        assert_eq!(out.observations.len(), DURATION_BUCKETS.len() + 3);
    }
}
