//! `histogram_quantile` over classic histograms: the φ-quantile from one
//! histogram's cumulative `le` buckets, as Prometheus 2.42's
//! `bucketQuantile`, and the grouping of bucket series into histograms.
//!
//! Pure computation on evaluated samples; native histograms do not exist
//! here. Nothing here reads storage or knows about steps.

use std::collections::HashMap;

use nines_shared::Labels;

use super::label_sets::drop_names_and_metric;
use super::value::InstantSample;

/// The label holding a bucket's upper bound.
pub(crate) const BUCKET_LABEL: &str = "le";

/// One cumulative bucket: upper bound and count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Bucket {
    /// The `le` bound.
    pub(crate) upper: f64,
    /// Observations ≤ the bound.
    pub(crate) count: f64,
}

/// `histogram_quantile(q, input)` at `t`: one output element per label set
/// (without `le` and `__name__`) that has at least one bucket whose `le`
/// parses as a number; elements without a valid `le` are ignored.
pub(crate) fn histogram_quantile(q: f64, input: &[InstantSample], t: i64) -> Vec<InstantSample> {
    let mut order: Vec<Labels> = Vec::new();
    let mut histograms: HashMap<Labels, Vec<Bucket>> = HashMap::new();
    for s in input {
        let Some(upper) = s.labels.get(BUCKET_LABEL).and_then(parse_bound) else {
            continue;
        };
        let key = drop_names_and_metric(&s.labels, &[BUCKET_LABEL.to_string()]);
        let buckets = histograms.entry(key.clone()).or_insert_with(|| {
            order.push(key);
            Vec::new()
        });
        buckets.push(Bucket { upper, count: s.v });
    }
    order
        .into_iter()
        .filter_map(|labels| {
            let mut buckets = histograms.remove(&labels)?;
            Some(InstantSample {
                v: bucket_quantile(q, &mut buckets),
                labels,
                t,
            })
        })
        .collect()
}

/// An `le` value as Go's `strconv.ParseFloat` reads the usual forms
/// (`0.5`, `1e3`, `+Inf`, `Inf`, `NaN`).
pub(crate) fn parse_bound(s: &str) -> Option<f64> {
    s.parse::<f64>().ok()
}

/// The φ-quantile of one histogram: NaN for NaN φ, ±Inf outside [0, 1];
/// NaN without a +Inf bucket, with fewer than two buckets or no
/// observations. Buckets are sorted, equal bounds merged and counts made
/// monotonic first. Within the bucket holding the rank the value is
/// interpolated linearly, the lowest bucket starting at 0 when its bound
/// is positive; a rank in the +Inf bucket gives the highest finite bound.
pub(crate) fn bucket_quantile(q: f64, buckets: &mut Vec<Bucket>) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    buckets.sort_by(|a, b| {
        a.upper
            .partial_cmp(&b.upper)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    match buckets.last() {
        Some(b) if b.upper == f64::INFINITY => {}
        _ => return f64::NAN,
    }
    coalesce(buckets);
    ensure_monotonic(buckets);
    let n = buckets.len();
    if n < 2 {
        return f64::NAN;
    }
    let observations = buckets[n - 1].count;
    if observations == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    // The first bucket (excluding +Inf) whose count reaches the rank.
    let b = buckets[..n - 1]
        .iter()
        .position(|bk| bk.count >= rank)
        .unwrap_or(n - 1);
    if b == n - 1 {
        return buckets[n - 2].upper;
    }
    if b == 0 && buckets[0].upper <= 0.0 {
        return buckets[0].upper;
    }
    let mut start = 0.0;
    let end = buckets[b].upper;
    let mut count = buckets[b].count;
    if b > 0 {
        start = buckets[b - 1].upper;
        count -= buckets[b - 1].count;
        rank -= buckets[b - 1].count;
    }
    start + (end - start) * (rank / count)
}

/// Merges buckets with the same bound (sorted input), summing counts.
fn coalesce(buckets: &mut Vec<Bucket>) {
    let mut out: Vec<Bucket> = Vec::with_capacity(buckets.len());
    for b in buckets.iter() {
        match out.last_mut() {
            Some(last) if last.upper == b.upper => last.count += b.count,
            _ => out.push(*b),
        }
    }
    *buckets = out;
}

/// Raises any count below an earlier one to it (counts are cumulative;
/// scrapes of buckets at slightly different times can break that).
fn ensure_monotonic(buckets: &mut [Bucket]) {
    let mut max = f64::NEG_INFINITY;
    for b in buckets.iter_mut() {
        if b.count > max {
            max = b.count;
        } else if b.count < max {
            b.count = max;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::assert_close;
    use super::*;

    fn bk(pairs: &[(f64, f64)]) -> Vec<Bucket> {
        pairs
            .iter()
            .map(|&(upper, count)| Bucket { upper, count })
            .collect()
    }

    const INF: f64 = f64::INFINITY;

    #[test]
    fn interpolates_within_the_bucket() {
        // 10 observations: 2 ≤ 0.1, 6 ≤ 0.5, 9 ≤ 1, 10 in all.
        let h = [(0.1, 2.0), (0.5, 6.0), (1.0, 9.0), (INF, 10.0)];
        // Median: rank 5 lies in (0.1, 0.5]: 0.1 + 0.4 × (3/4).
        assert_close(bucket_quantile(0.5, &mut bk(&h)), 0.4, "median");
        // Rank 1 lies in the first bucket, from 0: 0.1 × 1/2.
        assert_eq!(bucket_quantile(0.1, &mut bk(&h)), 0.05);
        // Rank 9.5 lies in the +Inf bucket: the highest finite bound.
        assert_eq!(bucket_quantile(0.95, &mut bk(&h)), 1.0);
        // Order of the input does not matter.
        let mut shuffled = bk(&[(INF, 10.0), (1.0, 9.0), (0.1, 2.0), (0.5, 6.0)]);
        assert_close(bucket_quantile(0.5, &mut shuffled), 0.4, "shuffled");
    }

    #[test]
    fn edge_cases() {
        let h = [(0.1, 2.0), (INF, 10.0)];
        assert_eq!(bucket_quantile(-0.5, &mut bk(&h)), f64::NEG_INFINITY);
        assert_eq!(bucket_quantile(1.5, &mut bk(&h)), INF);
        assert!(bucket_quantile(f64::NAN, &mut bk(&h)).is_nan());
        // No +Inf bucket, a single bucket, no observations: NaN.
        assert!(bucket_quantile(0.5, &mut bk(&[(0.1, 2.0), (1.0, 3.0)])).is_nan());
        assert!(bucket_quantile(0.5, &mut bk(&[(INF, 3.0)])).is_nan());
        assert!(bucket_quantile(0.5, &mut bk(&[(1.0, 0.0), (INF, 0.0)])).is_nan());
        // A non-positive lowest bound is returned as is.
        assert_eq!(
            bucket_quantile(0.1, &mut bk(&[(-1.0, 5.0), (INF, 10.0)])),
            -1.0
        );
        // Duplicate bounds are merged, non-monotonic counts raised:
        // buckets (1: 4), (2: 4 → raised from 3), (+Inf: 8); rank 4 hits 1.
        let mut b = bk(&[(1.0, 2.0), (1.0, 2.0), (2.0, 3.0), (INF, 8.0)]);
        assert_eq!(bucket_quantile(0.5, &mut b), 1.0);
    }
}
