//! The φ-quantile of a set of values as Prometheus computes it for
//! `quantile` and `quantile_over_time`: sort (NaN first), then interpolate
//! linearly between the two closest ranks.
//!
//! Pure arithmetic on values; nothing here knows about labels, series or
//! time.

/// Prometheus's `quantile(q, values)`: NaN for no values or a NaN φ,
/// -Inf for φ < 0, +Inf for φ > 1, otherwise the value at rank
/// `φ·(n−1)`, interpolated between its neighbours. Sorts `values`.
pub(crate) fn quantile(q: f64, values: &mut [f64]) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    values.sort_by(|a, b| nan_first_order(*a, *b));
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    let at = |i: f64| values.get(i as usize).copied().unwrap_or(f64::NAN);
    at(lower) * (1.0 - weight) + at(upper) * weight
}

/// Ascending, NaN before every number (Prometheus's `vectorByValueHeap`).
fn nan_first_order(a: f64, b: f64) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        _ => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolates_between_ranks() {
        assert_eq!(quantile(0.5, &mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(quantile(0.0, &mut [4.0, 1.0, 3.0, 2.0]), 1.0);
        assert_eq!(quantile(1.0, &mut [4.0, 1.0, 3.0, 2.0]), 4.0);
        assert!((quantile(0.9, &mut [1.0, 2.0, 3.0, 4.0, 5.0]) - 4.6).abs() < 1e-12);
        assert_eq!(quantile(0.3, &mut [7.0]), 7.0);
    }

    #[test]
    fn out_of_range_phi_and_empty() {
        assert_eq!(quantile(-0.1, &mut [1.0]), f64::NEG_INFINITY);
        assert_eq!(quantile(1.1, &mut [1.0]), f64::INFINITY);
        assert!(quantile(f64::NAN, &mut [1.0]).is_nan());
        assert!(quantile(0.5, &mut []).is_nan());
    }

    #[test]
    fn nan_sorts_first() {
        // [NaN, 1, 2]: the minimum is NaN, the maximum 2.
        assert!(quantile(0.0, &mut [2.0, f64::NAN, 1.0]).is_nan());
        assert_eq!(quantile(1.0, &mut [2.0, f64::NAN, 1.0]), 2.0);
        assert_eq!(quantile(0.75, &mut [2.0, f64::NAN, 1.0]), 1.5);
    }
}
