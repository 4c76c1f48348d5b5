//! Rollup buckets: what a run of one series' raw samples reduces to at a
//! coarser resolution, keeping exactly what the PromQL range functions
//! need to give the raw answer over a window made of whole buckets.
//!
//! A bucket of resolution `res` is named by its end `e` (a multiple of
//! `res` ms) and covers the samples with timestamps in `(e - res, e]`:
//! left-open like PromQL's range windows, so a window `(t - r, t]` with
//! `t` and `r` multiples of `res` is exactly the union of the buckets
//! ending in `(t - r, t]`.
//!
//! Pure arithmetic: [`fold`] builds buckets from samples, [`Bucket::merge`]
//! joins two adjacent runs (so coarser buckets are made from finer ones and
//! a bucket made of two halves equals the bucket of the whole). Nothing here
//! knows storage, labels or the engine.

use nines_shared::Labels;

use super::value::is_stale_marker;

/// One series' samples in `(end - res, end]`, reduced.
///
/// Stale markers are left out of every aggregate (range functions never see
/// them); the newest one after the last real sample is kept in
/// `stale_after` so an instant selector can still stop at it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    /// The bucket's end (ms, inclusive, a multiple of the resolution).
    pub end: i64,
    /// Samples that are not stale markers.
    pub count: u32,
    /// The first sample that is not a stale marker (timestamp ms, value).
    pub first: (i64, f64),
    /// The last sample that is not a stale marker.
    pub last: (i64, f64),
    /// Sum of the values, in time order.
    pub sum: f64,
    /// Smallest value; a NaN gives way to any number (as `min_over_time`).
    pub min: f64,
    /// Largest value; a NaN gives way to any number (as `max_over_time`).
    pub max: f64,
    /// Sum of the value before every drop (`v[i] < v[i-1]`): what the
    /// counter functions add to `last - first` for resets.
    pub reset_correction: f64,
    /// Drops (`v[i] < v[i-1]`) between consecutive samples, as `resets`.
    pub resets: u32,
    /// Consecutive pairs whose values differ (NaN equals NaN), as `changes`.
    pub changes: u32,
    /// Timestamp of the newest stale marker later than `last` (or, when
    /// `count` is 0, of the newest stale marker in the bucket).
    pub stale_after: Option<i64>,
}

/// A bucket's fields with its floats as bits, so that NaN payloads
/// compare: end, count, [first, last (time, value), sum, min, max, reset
/// correction], resets, changes, stale_after.
#[cfg(test)]
pub(crate) type BucketBits = (i64, u32, [u64; 8], u32, u32, Option<i64>);

impl Bucket {
    /// The bucket as [`BucketBits`].
    #[cfg(test)]
    pub(crate) fn bits(&self) -> BucketBits {
        (
            self.end,
            self.count,
            [
                self.first.0 as u64,
                self.first.1.to_bits(),
                self.last.0 as u64,
                self.last.1.to_bits(),
                self.sum.to_bits(),
                self.min.to_bits(),
                self.max.to_bits(),
                self.reset_correction.to_bits(),
            ],
            self.resets,
            self.changes,
            self.stale_after,
        )
    }
}

/// One series' buckets, ascending by end.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesBuckets {
    /// Full label set, `__name__` included.
    pub labels: Labels,
    /// Buckets with at least one sample or stale marker, ascending by `end`.
    pub buckets: Vec<Bucket>,
}

/// The end of the bucket of resolution `res` (ms, > 0) holding timestamp `ts`.
pub fn bucket_end(ts: i64, res: i64) -> i64 {
    // (e - res, e]: a timestamp on a boundary belongs to the bucket it ends.
    ts.div_euclid(res) * res + if ts.rem_euclid(res) == 0 { 0 } else { res }
}

fn keep_min(acc: f64, v: f64) -> f64 {
    if v < acc || acc.is_nan() { v } else { acc }
}

fn keep_max(acc: f64, v: f64) -> f64 {
    if v > acc || acc.is_nan() { v } else { acc }
}

fn differ(a: f64, b: f64) -> bool {
    !(a == b || (a.is_nan() && b.is_nan()))
}

impl Bucket {
    /// A bucket ending at `end` holding one sample (which may be a stale
    /// marker).
    pub fn of(end: i64, ts: i64, v: f64) -> Bucket {
        if is_stale_marker(v) {
            return Bucket {
                end,
                count: 0,
                first: (ts, v),
                last: (ts, v),
                sum: 0.0,
                min: f64::NAN,
                max: f64::NAN,
                reset_correction: 0.0,
                resets: 0,
                changes: 0,
                stale_after: Some(ts),
            };
        }
        Bucket {
            end,
            count: 1,
            first: (ts, v),
            last: (ts, v),
            sum: v,
            min: v,
            max: v,
            reset_correction: 0.0,
            resets: 0,
            changes: 0,
            stale_after: None,
        }
    }

    /// Append one later sample (`ts` greater than every timestamp already in).
    pub fn push(&mut self, ts: i64, v: f64) {
        if is_stale_marker(v) {
            self.stale_after = Some(ts);
            return;
        }
        if self.count == 0 {
            let end = self.end;
            *self = Bucket::of(end, ts, v);
            return;
        }
        let prev = self.last.1;
        if v < prev {
            self.reset_correction += prev;
            self.resets += 1;
        }
        if differ(v, prev) {
            self.changes += 1;
        }
        self.count += 1;
        self.last = (ts, v);
        self.sum += v;
        self.min = keep_min(self.min, v);
        self.max = keep_max(self.max, v);
        self.stale_after = None;
    }

    /// Join `later`, whose samples all come after this bucket's, into this
    /// one; the result keeps the larger `end`. Joining the buckets of two
    /// halves gives the bucket of the whole (sums up to float rounding).
    pub fn merge(&mut self, later: &Bucket) {
        let end = self.end.max(later.end);
        if later.count == 0 {
            if later.stale_after.is_some() {
                self.stale_after = later.stale_after;
            }
            self.end = end;
            return;
        }
        if self.count == 0 {
            *self = *later;
            self.end = end;
            return;
        }
        let (prev, next) = (self.last.1, later.first.1);
        let mut reset_correction = self.reset_correction;
        let mut resets = self.resets + later.resets;
        if next < prev {
            reset_correction += prev;
            resets += 1;
        }
        let changes = self.changes + later.changes + u32::from(differ(next, prev));
        *self = Bucket {
            end,
            count: self.count + later.count,
            first: self.first,
            last: later.last,
            sum: self.sum + later.sum,
            min: keep_min(self.min, later.min),
            max: keep_max(self.max, later.max),
            reset_correction: reset_correction + later.reset_correction,
            resets,
            changes,
            stale_after: later.stale_after,
        };
    }
}

/// The buckets of resolution `res` (ms, > 0) of `samples` (ascending,
/// one per timestamp), ascending by end; empty buckets are left out.
pub fn fold(samples: &[(i64, f64)], res: i64) -> Vec<Bucket> {
    let mut out: Vec<Bucket> = Vec::new();
    for &(ts, v) in samples {
        let end = bucket_end(ts, res);
        match out.last_mut() {
            Some(b) if b.end == end => b.push(ts, v),
            _ => out.push(Bucket::of(end, ts, v)),
        }
    }
    out
}

/// Re-bucket `buckets` (ascending, of a resolution dividing `res`) at the
/// coarser resolution `res`.
pub fn coarsen(buckets: &[Bucket], res: i64) -> Vec<Bucket> {
    let mut out: Vec<Bucket> = Vec::new();
    for b in buckets {
        let end = bucket_end(b.end, res);
        match out.last_mut() {
            Some(acc) if acc.end == end => acc.merge(b),
            _ => {
                let mut first = *b;
                first.end = end;
                out.push(first);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::STALE_MARKER_BITS;

    const MIN: i64 = 60_000;

    fn stale() -> f64 {
        f64::from_bits(STALE_MARKER_BITS)
    }

    /// The same fields a bucket has, computed the plain way over the
    /// non-stale samples.
    fn direct(end: i64, samples: &[(i64, f64)]) -> Bucket {
        let real: Vec<(i64, f64)> = samples
            .iter()
            .copied()
            .filter(|&(_, v)| !is_stale_marker(v))
            .collect();
        let newest_stale = samples
            .iter()
            .filter(|&&(_, v)| is_stale_marker(v))
            .map(|&(t, _)| t)
            .max();
        let last_real = real.last().map(|&(t, _)| t);
        let stale_after = match (newest_stale, last_real) {
            (Some(s), Some(l)) if s > l => Some(s),
            (Some(s), None) => Some(s),
            _ => None,
        };
        if real.is_empty() {
            let mut b = Bucket::of(end, samples[0].0, stale());
            b.stale_after = stale_after;
            return b;
        }
        let (mut min, mut max, mut sum) = (real[0].1, real[0].1, 0.0);
        let (mut corr, mut resets, mut changes) = (0.0, 0, 0);
        for (i, &(_, v)) in real.iter().enumerate() {
            sum += v;
            min = keep_min(min, v);
            max = keep_max(max, v);
            if i > 0 {
                let p = real[i - 1].1;
                if v < p {
                    corr += p;
                    resets += 1;
                }
                if differ(v, p) {
                    changes += 1;
                }
            }
        }
        Bucket {
            end,
            count: real.len() as u32,
            first: real[0],
            last: *real.last().unwrap(),
            sum,
            min,
            max,
            reset_correction: corr,
            resets,
            changes,
            stale_after,
        }
    }

    fn same(a: &Bucket, b: &Bucket) -> bool {
        let f = |x: f64, y: f64| x.to_bits() == y.to_bits() || (x - y).abs() <= 1e-9 * y.abs();
        a.end == b.end
            && a.count == b.count
            && a.resets == b.resets
            && a.changes == b.changes
            && a.stale_after == b.stale_after
            && (a.count == 0
                || (a.first.0 == b.first.0
                    && a.last.0 == b.last.0
                    && f(a.first.1, b.first.1)
                    && f(a.last.1, b.last.1)
                    && f(a.sum, b.sum)
                    && f(a.min, b.min)
                    && f(a.max, b.max)
                    && f(a.reset_correction, b.reset_correction)))
    }

    #[test]
    fn boundaries_belong_to_the_bucket_they_end() {
        assert_eq!(bucket_end(0, MIN), 0);
        assert_eq!(bucket_end(1, MIN), MIN);
        assert_eq!(bucket_end(MIN, MIN), MIN);
        assert_eq!(bucket_end(MIN + 1, MIN), 2 * MIN);
        assert_eq!(bucket_end(-1, MIN), 0);
        assert_eq!(bucket_end(-MIN, MIN), -MIN);
    }

    #[test]
    fn fold_matches_the_plain_computation() {
        // A counter with two resets, NaNs, a stale marker and a restart.
        let samples: Vec<(i64, f64)> = (1..=400)
            .map(|i| {
                let t = i * 1_000;
                let v = match i {
                    50 => f64::NAN,
                    51 => f64::NAN,
                    130..=135 => stale(),
                    _ if i < 100 => i as f64,
                    _ if i < 250 => (i - 100) as f64 * 0.5,
                    _ => (i % 7) as f64,
                };
                (t, v)
            })
            .collect();
        let buckets = fold(&samples, MIN);
        let mut want = Vec::new();
        let mut i = 0;
        while i < samples.len() {
            let end = bucket_end(samples[i].0, MIN);
            let j = samples[i..]
                .iter()
                .position(|&(t, _)| bucket_end(t, MIN) != end)
                .map_or(samples.len(), |k| i + k);
            want.push(direct(end, &samples[i..j]));
            i = j;
        }
        assert_eq!(buckets.len(), want.len());
        for (got, want) in buckets.iter().zip(&want) {
            assert!(same(got, want), "{got:?} != {want:?}");
        }
        // Coarsening the minute buckets equals folding at the hour, and
        // merging everything equals one bucket of all samples.
        let hour = 3_600_000;
        let coarse = coarsen(&buckets, hour);
        let direct_hour = fold(&samples, hour);
        assert_eq!(coarse.len(), direct_hour.len());
        for (a, b) in coarse.iter().zip(&direct_hour) {
            assert!(same(a, b), "{a:?} != {b:?}");
        }
        assert!(same(&coarse[0], &direct(hour, &samples)));
    }

    #[test]
    fn stale_markers_are_kept_apart() {
        let b = fold(&[(1_000, 5.0), (2_000, stale())], MIN);
        assert_eq!(b[0].count, 1);
        assert_eq!(b[0].last, (1_000, 5.0));
        assert_eq!(b[0].stale_after, Some(2_000));
        // A sample after the marker clears it.
        let b = fold(&[(1_000, 5.0), (2_000, stale()), (3_000, 6.0)], MIN);
        assert_eq!((b[0].count, b[0].stale_after), (2, None));
        // A bucket of markers only.
        let b = fold(&[(61_000, stale())], MIN);
        assert_eq!(
            (b[0].end, b[0].count, b[0].stale_after),
            (2 * MIN, 0, Some(61_000))
        );
        // Merging a marker-only bucket after a real one keeps the marker.
        let mut a = fold(&[(1_000, 5.0)], MIN)[0];
        a.merge(&b[0]);
        assert_eq!(
            (a.end, a.count, a.last, a.stale_after),
            (2 * MIN, 1, (1_000, 5.0), Some(61_000))
        );
    }
}
