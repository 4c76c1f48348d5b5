//! What the range-vector functions compute from one series' samples in one
//! window: the `rate` family with Prometheus 2.42's extrapolation,
//! `irate`/`idelta`, least-squares `deriv`/`predict_linear`, `resets`,
//! `changes` and the `*_over_time` aggregations.
//!
//! Pure arithmetic on `(timestamp ms, value)` slices that are ascending and
//! non-empty (stale markers already removed); `None` means "no output
//! element", as Prometheus drops it. Nothing here knows labels or storage.

use super::quantile::quantile;

/// The window a range-vector function sees: `[start, end]` in ms and the
/// range it was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    /// `end - range`.
    pub(crate) start: i64,
    /// The reference time (evaluation time, `@` time, minus offset).
    pub(crate) end: i64,
    /// The range in ms.
    pub(crate) range_ms: i64,
}

/// Go's `extrapolatedRate` for float samples: `delta` (not a counter, not
/// per second), `increase` (counter) and `rate` (counter, per second).
///
/// Counter resets add the value before the reset. The result is
/// extrapolated to the window edges when the first/last sample lies within
/// 1.1 average sample intervals of them (else by half an interval), and a
/// counter is never extrapolated below zero.
pub(crate) fn extrapolated_rate(
    samples: &[(i64, f64)],
    w: Window,
    is_counter: bool,
    is_rate: bool,
) -> Option<f64> {
    if samples.len() < 2 {
        return None;
    }
    let (first_t, first_v) = *samples.first()?;
    let (last_t, last_v) = *samples.last()?;
    let mut result = last_v - first_v;
    if is_counter {
        let mut prev = first_v;
        for &(_, v) in &samples[1..] {
            if v < prev {
                result += prev;
            }
            prev = v;
        }
    }
    Some(extrapolate(
        RateInput {
            first: (first_t, first_v),
            last: (last_t, last_v),
            count: samples.len(),
            result,
        },
        w,
        is_counter,
        is_rate,
    ))
}

/// What `extrapolatedRate` needs of a window's samples: the first and last
/// (timestamp ms, value), how many there are (at least 2), and `last -
/// first` plus, for a counter, the value before every reset.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RateInput {
    pub(crate) first: (i64, f64),
    pub(crate) last: (i64, f64),
    pub(crate) count: usize,
    pub(crate) result: f64,
}

/// The extrapolation step of Go's `extrapolatedRate`, from the window's
/// summary (so rollup buckets give the same answer as the samples).
pub(crate) fn extrapolate(input: RateInput, w: Window, is_counter: bool, is_rate: bool) -> f64 {
    let RateInput {
        first: (first_t, first_v),
        last: (last_t, _),
        count,
        result,
    } = input;
    let mut duration_to_start = (first_t - w.start) as f64 / 1000.0;
    let duration_to_end = (w.end - last_t) as f64 / 1000.0;
    let sampled_interval = (last_t - first_t) as f64 / 1000.0;
    let average_between = sampled_interval / (count - 1) as f64;

    if is_counter && result > 0.0 && first_v >= 0.0 {
        let duration_to_zero = sampled_interval * (first_v / result);
        if duration_to_zero < duration_to_start {
            duration_to_start = duration_to_zero;
        }
    }

    let threshold = average_between * 1.1;
    let mut extrapolate_to = sampled_interval;
    extrapolate_to += if duration_to_start < threshold {
        duration_to_start
    } else {
        average_between / 2.0
    };
    extrapolate_to += if duration_to_end < threshold {
        duration_to_end
    } else {
        average_between / 2.0
    };
    let mut factor = extrapolate_to / sampled_interval;
    if is_rate {
        factor /= w.range_ms as f64 / 1000.0;
    }
    result * factor
}

/// Go's `instantValue`: `irate` (per second, a drop counts as a reset to
/// the last value) and `idelta`, from the last two samples.
pub(crate) fn instant_value(samples: &[(i64, f64)], is_rate: bool) -> Option<f64> {
    let n = samples.len();
    if n < 2 {
        return None;
    }
    let (last_t, last_v) = samples[n - 1];
    let (prev_t, prev_v) = samples[n - 2];
    let mut result = if is_rate && last_v < prev_v {
        last_v
    } else {
        last_v - prev_v
    };
    let interval = last_t - prev_t;
    if interval == 0 {
        return None;
    }
    if is_rate {
        result /= interval as f64 / 1000.0;
    }
    Some(result)
}

/// Neumaier-compensated addition, as Prometheus's `kahanSumInc`.
fn kahan_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

/// Least-squares slope and intercept of the samples, times in seconds
/// relative to `intercept_ms`. A constant series has slope 0 (NaN
/// for a constant infinity).
fn linear_regression(samples: &[(i64, f64)], intercept_ms: i64) -> (f64, f64) {
    let (mut n, mut sum_x, mut c_x, mut sum_y, mut c_y) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let (mut sum_xy, mut c_xy, mut sum_x2, mut c_x2) = (0.0, 0.0, 0.0, 0.0);
    let init_y = samples.first().map_or(f64::NAN, |s| s.1);
    let mut const_y = true;
    for (i, &(t, v)) in samples.iter().enumerate() {
        if const_y && i > 0 && v != init_y {
            const_y = false;
        }
        n += 1.0;
        let x = (t - intercept_ms) as f64 / 1e3;
        (sum_x, c_x) = kahan_inc(x, sum_x, c_x);
        (sum_y, c_y) = kahan_inc(v, sum_y, c_y);
        (sum_xy, c_xy) = kahan_inc(x * v, sum_xy, c_xy);
        (sum_x2, c_x2) = kahan_inc(x * x, sum_x2, c_x2);
    }
    if const_y {
        if init_y.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, init_y);
    }
    let (sum_x, sum_y, sum_xy, sum_x2) = (sum_x + c_x, sum_y + c_y, sum_xy + c_xy, sum_x2 + c_x2);
    let cov_xy = sum_xy - sum_x * sum_y / n;
    let var_x = sum_x2 - sum_x * sum_x / n;
    let slope = cov_xy / var_x;
    let intercept = sum_y / n - slope * sum_x / n;
    (slope, intercept)
}

/// `deriv`: the least-squares slope per second.
pub(crate) fn deriv(samples: &[(i64, f64)]) -> Option<f64> {
    if samples.len() < 2 {
        return None;
    }
    Some(linear_regression(samples, samples[0].0).0)
}

/// `predict_linear`: the least-squares line, relative to the evaluation
/// time `t_ms`, evaluated `seconds` after it.
pub(crate) fn predict_linear(samples: &[(i64, f64)], t_ms: i64, seconds: f64) -> Option<f64> {
    if samples.len() < 2 {
        return None;
    }
    let (slope, intercept) = linear_regression(samples, t_ms);
    Some(slope * seconds + intercept)
}

/// `resets`: how often the value dropped.
pub(crate) fn resets(samples: &[(i64, f64)]) -> f64 {
    samples.windows(2).filter(|w| w[1].1 < w[0].1).count() as f64
}

/// `changes`: how often the value changed (NaN to NaN is no change).
pub(crate) fn changes(samples: &[(i64, f64)]) -> f64 {
    samples
        .windows(2)
        .filter(|w| w[1].1 != w[0].1 && !(w[1].1.is_nan() && w[0].1.is_nan()))
        .count() as f64
}

/// `avg_over_time`: the incremental mean, keeping an infinite mean
/// against finite values as Prometheus 2.42 does.
pub(crate) fn avg(samples: &[(i64, f64)]) -> f64 {
    let (mut mean, mut count) = (0.0f64, 0.0f64);
    for &(_, v) in samples {
        count += 1.0;
        if mean.is_infinite() {
            if v.is_infinite() && (mean > 0.0) == (v > 0.0) {
                continue;
            }
            if !v.is_infinite() && !v.is_nan() {
                continue;
            }
        }
        mean += v / count - mean / count;
    }
    mean
}

/// `sum_over_time`.
pub(crate) fn sum(samples: &[(i64, f64)]) -> f64 {
    samples.iter().map(|s| s.1).sum()
}

/// `max_over_time`: NaN only if every value is NaN.
pub(crate) fn max(samples: &[(i64, f64)]) -> f64 {
    let mut m = samples.first().map_or(f64::NAN, |s| s.1);
    for &(_, v) in samples {
        if v > m || m.is_nan() {
            m = v;
        }
    }
    m
}

/// `min_over_time`: NaN only if every value is NaN.
pub(crate) fn min(samples: &[(i64, f64)]) -> f64 {
    let mut m = samples.first().map_or(f64::NAN, |s| s.1);
    for &(_, v) in samples {
        if v < m || m.is_nan() {
            m = v;
        }
    }
    m
}

/// `stdvar_over_time`: population variance (Welford).
pub(crate) fn stdvar(samples: &[(i64, f64)]) -> f64 {
    let (mut count, mut mean, mut aux) = (0.0f64, 0.0f64, 0.0f64);
    for &(_, v) in samples {
        count += 1.0;
        let delta = v - mean;
        mean += delta / count;
        aux += delta * (v - mean);
    }
    aux / count
}

/// `stddev_over_time`: population standard deviation.
pub(crate) fn stddev(samples: &[(i64, f64)]) -> f64 {
    stdvar(samples).sqrt()
}

/// `holt_winters(v, sf, tf)`: double exponential smoothing with
/// smoothing factor `sf` and trend factor `tf` (both checked by the
/// caller to lie in (0, 1)); the last smoothed value.
pub(crate) fn holt_winters(samples: &[(i64, f64)], sf: f64, tf: f64) -> Option<f64> {
    if samples.len() < 2 {
        return None;
    }
    let mut s0 = 0.0;
    let mut s1 = samples[0].1;
    let mut b = samples[1].1 - samples[0].1;
    for (i, &(_, v)) in samples.iter().enumerate().skip(1) {
        let x = sf * v;
        // The trend, from the second step on.
        if i > 1 {
            b = tf * (s1 - s0) + (1.0 - tf) * b;
        }
        let y = (1.0 - sf) * (s1 + b);
        s0 = s1;
        s1 = x + y;
    }
    Some(s1)
}

/// `quantile_over_time`.
pub(crate) fn quantile_of(q: f64, samples: &[(i64, f64)]) -> f64 {
    let mut values: Vec<f64> = samples.iter().map(|s| s.1).collect();
    quantile(q, &mut values)
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::assert_close;
    use super::*;

    const S: i64 = 1000;

    fn w(end: i64, range_s: i64) -> Window {
        Window {
            start: end - range_s * S,
            end,
            range_ms: range_s * S,
        }
    }

    #[test]
    fn rate_of_a_steady_counter_over_an_aligned_window() {
        // 0,10,...,40 every 15s in [0s, 60s]: samples touch both edges.
        let s: Vec<(i64, f64)> = (0..5).map(|i| (i * 15 * S, i as f64 * 10.0)).collect();
        let rate = extrapolated_rate(&s, w(60 * S, 60), true, true);
        assert_close(rate.unwrap_or(f64::NAN), 40.0 / 60.0, "rate");
        assert_eq!(
            extrapolated_rate(&s, w(60 * S, 60), true, false),
            Some(40.0)
        );
        assert_eq!(
            extrapolated_rate(&s, w(60 * S, 60), false, false),
            Some(40.0)
        );
    }

    #[test]
    fn extrapolation_to_the_edges_is_capped() {
        // Samples at 10,25,40,55 in [0,60]: 10s to the start (< 16.5s),
        // 5s to the end: extrapolate fully: 45s sampled → 60s.
        let s = [
            (10 * S, 100.0),
            (25 * S, 110.0),
            (40 * S, 120.0),
            (55 * S, 130.0),
        ];
        let got = extrapolated_rate(&s, w(60 * S, 60), false, false);
        assert_eq!(got, Some(30.0 * 60.0 / 45.0));
        // Window [0, 120]: 65s to the end is more than 1.1 × 15s, so only
        // half an interval (7.5s) is added there: 45 + 10 + 7.5.
        let got = extrapolated_rate(&s, w(120 * S, 120), false, false);
        assert_eq!(got, Some(30.0 * 62.5 / 45.0));
    }

    #[test]
    fn counter_extrapolation_stops_at_zero() {
        // Counter 0.5 → 4.5 over 10s..50s in [0,60]: at that slope it was
        // zero 5s before the first sample, nearer than the start (10s).
        let s = [
            (10 * S, 0.5),
            (20 * S, 1.5),
            (30 * S, 2.5),
            (40 * S, 3.5),
            (50 * S, 4.5),
        ];
        let got = extrapolated_rate(&s, w(60 * S, 60), true, false);
        // 40s sampled + 5s to zero + 10s to end = 55s.
        assert_eq!(got, Some(4.0 * 55.0 / 40.0));
        // Not a counter: no clamp, 10s to the start.
        let got = extrapolated_rate(&s, w(60 * S, 60), false, false);
        assert_eq!(got, Some(4.0 * 60.0 / 40.0));
    }

    #[test]
    fn counter_resets_add_the_value_before_the_reset() {
        // 10, 20, 5, 15 at 0,20,40,60 in [0,60]: increase is 10 + 5 + 10 = 25
        // (last - first = 5, plus 20 lost at the reset).
        let s = [(0, 10.0), (20 * S, 20.0), (40 * S, 5.0), (60 * S, 15.0)];
        assert_eq!(
            extrapolated_rate(&s, w(60 * S, 60), true, false),
            Some(25.0)
        );
        let rate = extrapolated_rate(&s, w(60 * S, 60), true, true);
        assert_close(rate.unwrap_or(f64::NAN), 25.0 / 60.0, "rate");
        assert_eq!(
            extrapolated_rate(&s, w(60 * S, 60), false, false),
            Some(5.0)
        );
        assert_eq!(resets(&s), 1.0);
        assert_eq!(changes(&s), 3.0);
    }

    #[test]
    fn one_sample_gives_nothing() {
        assert_eq!(
            extrapolated_rate(&[(0, 1.0)], w(60 * S, 60), true, true),
            None
        );
        assert_eq!(instant_value(&[(0, 1.0)], true), None);
        assert_eq!(deriv(&[(0, 1.0)]), None);
    }

    #[test]
    fn irate_and_idelta_use_the_last_two_samples() {
        let s = [(0, 1.0), (10 * S, 50.0), (15 * S, 60.0)];
        assert_eq!(instant_value(&s, true), Some(2.0));
        assert_eq!(instant_value(&s, false), Some(10.0));
        let reset = [(0, 1.0), (10 * S, 50.0), (15 * S, 5.0)];
        assert_eq!(instant_value(&reset, true), Some(1.0));
        assert_eq!(instant_value(&reset, false), Some(-45.0));
    }

    #[test]
    fn deriv_and_predict_linear_fit_a_line() {
        // v = 3 + 2·t(s) at t = 0, 10, 20, 30 s.
        let s: Vec<(i64, f64)> = (0..4)
            .map(|i| (i * 10 * S, 3.0 + 20.0 * i as f64))
            .collect();
        assert_eq!(deriv(&s), Some(2.0));
        // At t = 30s, 60s ahead: 3 + 2·90.
        assert_eq!(predict_linear(&s, 30 * S, 60.0), Some(183.0));
        let flat = [(0, 7.0), (S, 7.0)];
        assert_eq!(deriv(&flat), Some(0.0));
        assert_eq!(predict_linear(&flat, 5 * S, 100.0), Some(7.0));
        let inf = [(0, f64::INFINITY), (S, f64::INFINITY)];
        assert!(deriv(&inf).is_some_and(f64::is_nan));
    }

    #[test]
    fn holt_winters_smooths_a_line_exactly() {
        // On a straight line the smoothed value is the last value.
        let s: Vec<(i64, f64)> = (0..5).map(|i| (i * S, 2.0 * i as f64)).collect();
        assert_eq!(holt_winters(&s, 0.5, 0.5), Some(8.0));
        // 0, 10, 0 with sf = tf = 0.5: s1 = 0, b = 10; step 1: 5 + 0.5 × 10
        // = 10; step 2: b = 0.5 × 10 + 0.5 × 10 = 10, 0 + 0.5 × 20 = 10.
        assert_eq!(
            holt_winters(&[(0, 0.0), (S, 10.0), (2 * S, 0.0)], 0.5, 0.5),
            Some(10.0)
        );
        assert_eq!(holt_winters(&[(0, 1.0)], 0.5, 0.5), None);
    }

    #[test]
    fn over_time_aggregations() {
        let s = [(0, 1.0), (S, 2.0), (2 * S, 3.0), (3 * S, 4.0)];
        assert_eq!(avg(&s), 2.5);
        assert_eq!(sum(&s), 10.0);
        assert_eq!(max(&s), 4.0);
        assert_eq!(min(&s), 1.0);
        assert_eq!(stdvar(&s), 1.25);
        assert_eq!(stddev(&s), 1.25f64.sqrt());
        assert_eq!(quantile_of(0.5, &s), 2.5);
        let nan_first = [(0, f64::NAN), (S, 2.0)];
        assert_eq!(max(&nan_first), 2.0);
        assert_eq!(min(&nan_first), 2.0);
        assert_eq!(avg(&[(0, f64::INFINITY), (S, 1.0)]), f64::INFINITY);
        assert_eq!(avg(&[(0, 1e308), (S, 1e308)]), 1e308);
    }
}
