//! When a query reads rollup buckets instead of raw samples, and what the
//! functions read from them compute. The rule is [`choose`], and nowhere
//! else; the engine asks it once per selector per query.
//!
//! Exact reads. A selector reads buckets of resolution `res` (only 1 h
//! while raw samples are kept, see [`EXACT_MIN_RES`]) when
//! - what consumes it can be computed from buckets ([`Consumer::reads_buckets`]):
//!   `rate`, `increase`, `delta`, `sum`/`count`/`min`/`max`/`avg`/`last`/
//!   `present_over_time`, `resets`, `changes` of a range selector, a plain
//!   instant selector and `timestamp()` of one; no `@` (on the selector or
//!   an enclosing subquery);
//! - every evaluation time (inside a subquery: each of its steps), the
//!   range (or the lookback delta), and the offset are multiples of `res`
//!   — then each window `[t - r, t]` is the
//!   buckets ending in `(t - r, t]` plus the sample exactly at `t - r` (the
//!   last of the bucket ending there, if it lies on the edge), and the
//!   answer equals the raw one up to float rounding (sums added in another
//!   order; `avg_over_time` is `sum / count` instead of an incremental
//!   mean, which differs also when the sum overflows to infinity);
//! - the selection spans at least [`MIN_SPAN_BUCKETS`] buckets (a query
//!   over a few minutes reads raw samples, which are at hand anyway);
//! - the store keeps rollups of `res` ([`Querier::rollup_resolutions`]:
//!   buckets folded from raw samples on the fly cost more than the
//!   samples: the query benchmark's 24 h cases at a 5 m step over 60 s
//!   data took two to five times as long) and keeps them over the whole
//!   selection.
//!
//! Reads past raw retention. When the selection reaches before the oldest
//! raw sample kept ([`Querier::raw_retention_start`]) and the consumer can
//! be computed from buckets, it reads the finest resolution kept over the
//! selection (else the coarsest the store keeps) whatever the alignment. Unaligned windows are
//! snapped: the reference time `t` becomes the end of the bucket holding
//! it and the window's start likewise, but at least one bucket before the
//! new end ([`BucketPlan::window`]), so each edge of the window moves by
//! less than one resolution (up to 1 m or 1 h), and the answer is the raw
//! answer over the moved window (a rate is per second of the moved
//! window).
//!
//! Pure decisions and arithmetic over [`Bucket`]s: nothing here reads
//! storage (but for asking the querier what it keeps), and nothing here
//! may answer where the raw samples would give no element.

use promql_parser::parser::{Expr, SubqueryExpr, VectorSelector};

use super::eval::duration_ms;
use super::functions::unwrap_parens;
use super::over_time::{self, RateInput, Window};
use super::querier::Querier;
use super::rollup::{Bucket, bucket_end};

/// One minute, the finer rollup resolution (ms).
pub const MINUTE: i64 = 60_000;
/// One hour, the coarser rollup resolution (ms).
pub const HOUR: i64 = 3_600_000;
/// The rollup resolutions storage keeps, coarsest first.
pub const RESOLUTIONS: [i64; 2] = [HOUR, MINUTE];
/// The fewest buckets a selection must span (from the first window's start
/// to the last evaluation time) for an aligned query to read rollups of
/// that resolution: 24 minutes of 1 m buckets, 24 hours of 1 h buckets.
pub const MIN_SPAN_BUCKETS: i64 = 24;

/// The finest resolution an aligned query reads on its own while raw
/// samples are still kept. Minute buckets of minute-scraped series hold one
/// sample each and cost more to read than the samples (the query bench's
/// 24 h@5 m cases took 1.4 to 2.1 times Prometheus's time through them,
/// 0.35 to 0.85 through raw samples), so they are read only past raw
/// retention or when forced.
pub const EXACT_MIN_RES: i64 = HOUR;

/// The range-vector functions computed from buckets.
pub(crate) const BUCKET_FUNCTIONS: &[&str] = &[
    "rate",
    "increase",
    "delta",
    "sum_over_time",
    "count_over_time",
    "min_over_time",
    "max_over_time",
    "avg_over_time",
    "last_over_time",
    "present_over_time",
    "resets",
    "changes",
];

/// Which rollups a query may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RollupUse {
    /// Where [`choose`] says so.
    #[default]
    Auto,
    /// Raw samples only.
    Never,
    /// Buckets of this resolution wherever the times align with it and the
    /// consumer allows, however short the query (to compare both paths).
    Always(i64),
}

/// What consumes a selector's samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Consumer<'e> {
    /// A plain instant vector selector.
    Instant,
    /// `timestamp(selector)`.
    Timestamp,
    /// A range-vector function over a range selector.
    Range(&'e str),
}

impl Consumer<'_> {
    /// Whether the consumer's answer can be computed from buckets.
    pub(crate) fn reads_buckets(&self) -> bool {
        match self {
            Consumer::Instant | Consumer::Timestamp => true,
            Consumer::Range(name) => BUCKET_FUNCTIONS.contains(name),
        }
    }
}

/// How one selector is read over one query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reads {
    /// The first evaluation time.
    pub(crate) first: i64,
    /// The last evaluation time.
    pub(crate) last: i64,
    /// Between evaluation times (unused when `first == last`).
    pub(crate) step: i64,
    /// The selector's offset.
    pub(crate) offset: i64,
    /// The range, or the lookback delta for an instant selector.
    pub(crate) width: i64,
}

impl Reads {
    /// Whether every window of the query is made of whole buckets of `res`.
    fn aligned(&self, res: i64) -> bool {
        if res <= 0 {
            return false;
        }
        let on = |x: i64| x.rem_euclid(res) == 0;
        on(self.first)
            && (self.first == self.last || on(self.step))
            && on(self.offset)
            && on(self.width)
            && self.width > 0
    }

    /// The first timestamp any raw window reads.
    fn from(&self) -> i64 {
        self.first
            .saturating_sub(self.offset)
            .saturating_sub(self.width)
    }

    /// From the first window's start to the last reference time.
    fn span(&self) -> i64 {
        self.last
            .saturating_sub(self.offset)
            .saturating_sub(self.from())
    }
}

/// A selector reads buckets of `res`; exactly aligned windows, or snapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BucketPlan {
    /// The resolution (ms).
    pub(crate) res: i64,
    /// Whether windows are whole buckets as asked (else they are snapped).
    pub(crate) exact: bool,
}

impl BucketPlan {
    /// The window `[start, end]` read for the window of `width` ms ending
    /// at the reference time `at`: itself when exact, else both edges moved
    /// to the end of the bucket holding them, the start at least one bucket
    /// before the end. Both are multiples of `res`.
    pub(crate) fn window(&self, at: i64, width: i64) -> (i64, i64) {
        let start = at.saturating_sub(width);
        if self.exact {
            return (start, at);
        }
        let end = bucket_end(at, self.res);
        (bucket_end(start, self.res).min(end - self.res), end)
    }
}

/// Whether `src` (raw when `None`, else a rollup resolution) is kept back
/// to `from`.
fn kept_from(q: &dyn Querier, src: Option<i64>, from: i64) -> bool {
    let start = match src {
        None => q.raw_retention_start(),
        Some(res) => q.rollup_retention_start(res),
    };
    start.is_none_or(|s| s <= from)
}

/// The rule: whether (and how) a selector consumed by `consumer` and read
/// as `reads` reads buckets instead of raw samples (see the module
/// documentation).
pub(crate) fn choose(
    consumer: Consumer<'_>,
    reads: &Reads,
    policy: RollupUse,
    q: &dyn Querier,
) -> Option<BucketPlan> {
    // Bucket arithmetic rounds times outward: keep far from overflow
    // (2^60 ms is some 36 million years).
    let sane = [reads.first, reads.last, reads.offset, reads.width]
        .iter()
        .all(|x| x.unsigned_abs() < 1 << 60);
    if !consumer.reads_buckets() || !sane {
        return None;
    }
    let exact = |res: i64| BucketPlan { res, exact: true };
    match policy {
        RollupUse::Never => return None,
        RollupUse::Always(res) => return reads.aligned(res).then(|| exact(res)),
        RollupUse::Auto => {}
    }
    let from = reads.from();
    let kept = q.rollup_resolutions();
    let resolutions: Vec<i64> = RESOLUTIONS
        .into_iter()
        .filter(|r| kept.contains(r))
        .collect();
    for &res in resolutions.iter().filter(|&&r| r >= EXACT_MIN_RES) {
        if reads.aligned(res)
            && reads.span() >= MIN_SPAN_BUCKETS.saturating_mul(res)
            && kept_from(q, Some(res), from)
        {
            return Some(exact(res));
        }
    }
    if kept_from(q, None, from) {
        return None;
    }
    // Raw samples are gone for part of the selection: the finest rollup
    // kept over all of it, else the coarsest kept.
    let res = resolutions
        .iter()
        .rev()
        .copied()
        .find(|&res| {
            let plan = BucketPlan { res, exact: false };
            let start = plan
                .window(reads.first.saturating_sub(reads.offset), reads.width)
                .0;
            kept_from(q, Some(res), start)
        })
        .or_else(|| resolutions.first().copied())?;
    Some(BucketPlan {
        res,
        exact: reads.aligned(res),
    })
}

/// The buckets of one series (ascending by end, of one resolution) that
/// make the window `[start, end]` (multiples of the resolution), merged:
/// the buckets ending in `(start, end]`, after the sample exactly at
/// `start` if there is one. `None` when the window holds no sample (stale
/// markers aside).
pub(crate) fn window_summary(buckets: &[Bucket], start: i64, end: i64) -> Option<Bucket> {
    let lo = buckets.partition_point(|b| b.end <= start);
    let hi = buckets.partition_point(|b| b.end <= end);
    let mut acc: Option<Bucket> = lo
        .checked_sub(1)
        .and_then(|i| buckets.get(i))
        .filter(|b| b.end == start && b.count > 0 && b.last.0 == start)
        .map(|b| Bucket::of(start, b.last.0, b.last.1));
    for b in buckets.get(lo..hi).unwrap_or_default() {
        match &mut acc {
            Some(a) => a.merge(b),
            None => acc = Some(*b),
        }
    }
    acc.filter(|a| a.count > 0)
}

/// The sample an instant selector sees in the window `[start, end]`
/// (multiples of the resolution): the latest one, unless there is none or
/// a stale marker came after it.
pub(crate) fn latest_in_window(buckets: &[Bucket], start: i64, end: i64) -> Option<(i64, f64)> {
    let hi = buckets.partition_point(|b| b.end <= end);
    let lo = buckets.partition_point(|b| b.end < start);
    let newest = buckets
        .get(lo..hi)?
        .iter()
        .rev()
        .find(|b| b.count > 0 || b.stale_after.is_some())?;
    if newest.end == start {
        // Only the sample (or marker) exactly at `start` is in the window.
        return (newest.stale_after.is_none() && newest.count > 0 && newest.last.0 == start)
            .then_some(newest.last);
    }
    (newest.stale_after.is_none() && newest.count > 0).then_some(newest.last)
}

/// The value of a range-vector function (one of [`BUCKET_FUNCTIONS`]) over
/// a window summarised as `b` (with at least one sample), read as `w`.
pub(crate) fn over_buckets(name: &str, b: &Bucket, w: Window) -> Option<f64> {
    let n = b.count as usize;
    let rate = |is_counter: bool, is_rate: bool| {
        if n < 2 {
            return None;
        }
        let mut result = b.last.1 - b.first.1;
        if is_counter {
            result += b.reset_correction;
        }
        let input = RateInput {
            first: b.first,
            last: b.last,
            count: n,
            result,
        };
        Some(over_time::extrapolate(input, w, is_counter, is_rate))
    };
    match name {
        "rate" => rate(true, true),
        "increase" => rate(true, false),
        "delta" => rate(false, false),
        "resets" => Some(f64::from(b.resets)),
        "changes" => Some(f64::from(b.changes)),
        "avg_over_time" => Some(b.sum / n as f64),
        "min_over_time" => Some(b.min),
        "max_over_time" => Some(b.max),
        "sum_over_time" => Some(b.sum),
        "count_over_time" => Some(n as f64),
        "last_over_time" => Some(b.last.1),
        "present_over_time" => Some(1.0),
        _ => None,
    }
}

/// One selector [`candidates`] found: the node, what consumes it, and the
/// range of a range selector (ms; `None` for an instant selector, which
/// reads the lookback delta).
pub(crate) type Candidate<'e> = (&'e VectorSelector, Consumer<'e>, Option<i64>);

/// The selectors of `expr` that [`choose`] may let read buckets, each with
/// its consumer: instant selectors, `timestamp()` of one, and range
/// selectors that are the argument of a range function; none with `@`.
/// Subqueries (but those with `@`) go to `subqueries` instead, not looked
/// into: their selectors are evaluated at the subquery's own steps.
pub(crate) fn candidates<'e>(
    expr: &'e Expr,
    out: &mut Vec<Candidate<'e>>,
    subqueries: &mut Vec<&'e SubqueryExpr>,
) {
    match expr {
        Expr::Paren(p) => candidates(&p.expr, out, subqueries),
        Expr::Unary(u) => candidates(&u.expr, out, subqueries),
        Expr::Binary(b) => {
            candidates(&b.lhs, out, subqueries);
            candidates(&b.rhs, out, subqueries);
        }
        Expr::Aggregate(a) => {
            if let Some(p) = &a.param {
                candidates(p, out, subqueries);
            }
            candidates(&a.expr, out, subqueries);
        }
        Expr::VectorSelector(vs) if vs.at.is_none() => out.push((vs, Consumer::Instant, None)),
        Expr::Subquery(sq) if sq.at.is_none() => subqueries.push(sq),
        Expr::Call(c) => {
            let name = c.func.name;
            for arg in &c.args.args {
                match unwrap_parens(arg) {
                    Expr::MatrixSelector(ms) if ms.vs.at.is_none() => {
                        out.push((&ms.vs, Consumer::Range(name), Some(duration_ms(ms.range))));
                    }
                    Expr::VectorSelector(vs) if name == "timestamp" && vs.at.is_none() => {
                        out.push((vs, Consumer::Timestamp, None));
                    }
                    other => candidates(other, out, subqueries),
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use nines_shared::Labels;

    use super::super::Engine;
    use super::super::eval::{Evaluator, latest_sample_in_window, samples_in_window};
    use super::super::in_memory::InMemoryQuerier;
    use super::super::querier::SeriesSamples;
    use super::super::rollup::fold;
    use super::super::value::{RangeSeries, STALE_MARKER_BITS, Value};
    use super::*;
    use crate::query::fixtures::Rng;

    /// A multiple of one hour (and of one day), in ms.
    const T: i64 = 1_699_920_000_000;
    const SEC: i64 = 1_000;

    fn stale() -> f64 {
        f64::from_bits(STALE_MARKER_BITS)
    }

    /// A scraped series from `from` to `to`: every `interval` ms from a
    /// fixed phase, each scrape up to `jitter` ms late; now and then a
    /// NaN, a gap of a few minutes ended by a stale marker (the target
    /// was down), and for a counter a restart from near zero.
    fn scraped(
        rng: &mut Rng,
        from: i64,
        to: i64,
        interval: i64,
        jitter: u64,
        counter: bool,
    ) -> Vec<(i64, f64)> {
        let mut out = Vec::new();
        let phase = rng.below(interval as u64) as i64;
        // A phase of 0 puts scrapes on bucket edges: keep some series so.
        let phase = if rng.below(3) == 0 { 0 } else { phase };
        let mut v = rng.below(1_000_000) as f64;
        let mut t = from + phase;
        while t < to {
            let ts = t + if jitter > 0 {
                rng.below(jitter) as i64
            } else {
                0
            };
            let roll = rng.below(10_000);
            if roll < 3 {
                // Down for a while: a stale marker, then nothing.
                out.push((ts, stale()));
                t += (2 + rng.below(20) as i64) * 60 * SEC;
                continue;
            }
            let value = if roll < 10 {
                f64::NAN
            } else if counter && roll < 20 {
                v = rng.below(50) as f64;
                v
            } else if counter {
                v += rng.below(400) as f64 / 4.0;
                v
            } else {
                v = v * 0.9 + rng.below(100_000) as f64 / 3.0 - 5_000.0;
                v
            };
            out.push((ts, value));
            t += interval;
        }
        out
    }

    /// Counters `c_total` and gauges `g` of two jobs, scraped every second
    /// and every 15 s, from `T - 3h` to `T + 9h`.
    fn corpus(seed: u64) -> Vec<SeriesSamples> {
        let mut rng = Rng(seed);
        let mut series = Vec::new();
        for (job, interval, jitter) in [("fast", SEC, 40), ("slow", 15 * SEC, 900)] {
            for instance in ["a", "b", "c"] {
                let l = [("instance", instance), ("job", job)];
                let (from, to) = (T - 3 * HOUR, T + 9 * HOUR);
                series.push(SeriesSamples {
                    labels: Labels::new("c_total", l),
                    samples: scraped(&mut rng, from, to, interval, jitter, true),
                });
                series.push(SeriesSamples {
                    labels: Labels::new("g", l),
                    samples: scraped(&mut rng, from, to, interval, jitter, false),
                });
            }
        }
        series
    }

    /// Read at 1 m: ranges, lookback and offsets are minutes.
    const BY_MINUTE: &[&str] = &[
        "c_total",
        "g",
        "g offset 10m",
        "timestamp(g)",
        "rate(c_total[5m])",
        "rate(c_total[1m])",
        "increase(c_total[10m])",
        "delta(g[5m])",
        "rate(c_total[5m] offset 1h)",
        "sum_over_time(g[5m])",
        "count_over_time(c_total[3m])",
        "min_over_time(g[10m])",
        "max_over_time(g[10m])",
        "avg_over_time(g[5m])",
        "last_over_time(g[2m])",
        "present_over_time(g[1m])",
        "resets(c_total[30m])",
        "changes(g[15m])",
        "sum by (job) (rate(c_total[5m]))",
        "sum(increase(c_total[1h])) / sum(count_over_time(g[1h]))",
        "max_over_time(g[30m]) - min_over_time(g[30m])",
        "topk(2, avg_over_time(g[5m]))",
        "g > 1000",
    ];

    /// Read at 1 h (with a 1 h lookback).
    const BY_HOUR: &[&str] = &[
        "c_total",
        "g offset 1h",
        "rate(c_total[1h])",
        "increase(c_total[3h])",
        "delta(g[2h])",
        "sum_over_time(g[1h])",
        "count_over_time(c_total[2h])",
        "min_over_time(g[1h])",
        "max_over_time(g[1h])",
        "avg_over_time(g[1h])",
        "last_over_time(g[1h])",
        "present_over_time(g[1h])",
        "resets(c_total[2h])",
        "changes(g[1h])",
        "sum by (instance) (rate(c_total[1h] offset 1h))",
    ];

    /// Equal within a relative 1e-9 of the larger magnitude (NaN equals
    /// NaN, infinities must be equal).
    fn close(a: f64, b: f64) -> bool {
        a.to_bits() == b.to_bits()
            || (a.is_nan() && b.is_nan())
            || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
    }

    fn matrix(v: Result<Value, super::super::QueryError>, what: &str) -> Vec<RangeSeries> {
        match v {
            Ok(Value::Matrix(m)) => m,
            Ok(Value::Vector(v)) => v
                .into_iter()
                .map(|s| RangeSeries {
                    labels: s.labels,
                    samples: vec![(s.t, s.v)],
                })
                .collect(),
            other => panic!("{what}: {other:?}"),
        }
    }

    fn assert_close(got: &[RangeSeries], want: &[RangeSeries], what: &str) {
        let labels = |m: &[RangeSeries]| m.iter().map(|s| s.labels.clone()).collect::<Vec<_>>();
        assert_eq!(labels(got), labels(want), "{what}");
        for (g, w) in got.iter().zip(want) {
            let times = |s: &RangeSeries| s.samples.iter().map(|p| p.0).collect::<Vec<_>>();
            assert_eq!(times(g), times(w), "{what}: {:?}", g.labels);
            for (&(t, a), &(_, b)) in g.samples.iter().zip(&w.samples) {
                assert!(close(a, b), "{what}: {:?} at {t}: {a} != {b}", g.labels);
            }
        }
    }

    fn engine(rollups: RollupUse, lookback_ms: i64) -> Engine {
        Engine {
            lookback_ms,
            rollups,
            ..Engine::default()
        }
    }

    #[test]
    fn bucketed_answers_equal_raw_answers() {
        let mut compared = 0;
        for seed in 1..=3 {
            let q = InMemoryQuerier::new(corpus(seed));
            // Expressions, resolution, lookback, and (start, end, step)s.
            type Case<'a> = (&'a [&'a str], i64, i64, &'a [(i64, i64, i64)]);
            let cases: [Case<'_>; 2] = [
                (
                    BY_MINUTE,
                    MINUTE,
                    5 * MINUTE,
                    &[
                        (T, T + 6 * HOUR, MINUTE),
                        (T - HOUR, T + 8 * HOUR, 5 * MINUTE),
                        (T + 7 * MINUTE, T + 7 * MINUTE, MINUTE),
                    ],
                ),
                (
                    BY_HOUR,
                    HOUR,
                    HOUR,
                    &[(T, T + 8 * HOUR, HOUR), (T + 2 * HOUR, T + 2 * HOUR, HOUR)],
                ),
            ];
            for (exprs, res, lookback, ranges) in cases {
                let raw = engine(RollupUse::Never, lookback);
                let bucketed = engine(RollupUse::Always(res), lookback);
                for expr in exprs {
                    for &(start, end, step) in ranges {
                        let what = format!("{expr} [{start}, {end}] step {step} seed {seed}");
                        let q_raw = InMemoryQuerier::new(corpus(seed));
                        let want = matrix(raw.range(&q_raw, expr, start, end, step), &what);
                        let before = q.bucket_windows().len();
                        let got = matrix(bucketed.range(&q, expr, start, end, step), &what);
                        assert!(q.bucket_windows().len() > before, "{what}: read buckets");
                        assert!(q_raw.bucket_windows().is_empty(), "{what}: read raw");
                        assert_close(&got, &want, &what);
                        compared += want.iter().map(|s| s.samples.len()).sum::<usize>();
                        // An instant query at the end likewise.
                        let got = matrix(bucketed.instant(&q, expr, end), &what);
                        let want = matrix(raw.instant(&q_raw, expr, end), &what);
                        assert_close(&got, &want, &format!("instant {what}"));
                    }
                }
            }
        }
        assert!(compared > 100_000, "{compared} points compared");
    }

    #[test]
    fn window_from_buckets_is_the_window_from_samples() {
        let mut rng = Rng(11);
        let samples = scraped(&mut rng, T, T + 2 * HOUR, SEC, 0, true);
        let buckets = fold(&samples, MINUTE);
        for k in 0..100 {
            let end = T + (k + 5) * MINUTE;
            for width in [MINUTE, 5 * MINUTE] {
                let window = samples_in_window(&samples, end, width);
                let summary = window_summary(&buckets, end - width, end);
                assert_eq!(summary.map(|b| b.count as usize).unwrap_or(0), window.len());
                if let (Some(b), Some(first), Some(last)) = (summary, window.first(), window.last())
                {
                    let bits = |(t, v): (i64, f64)| (t, v.to_bits());
                    assert_eq!((bits(b.first), bits(b.last)), (bits(*first), bits(*last)));
                }
                let bits = |x: Option<(i64, f64)>| x.map(|(t, v)| (t, v.to_bits()));
                assert_eq!(
                    bits(latest_in_window(&buckets, end - width, end)),
                    bits(latest_sample_in_window(&samples, end, width))
                );
            }
        }
    }

    #[test]
    fn instant_selector_stops_at_a_stale_marker_in_buckets() {
        let buckets = fold(
            &[
                (T - MINUTE, 1.0),
                (T - 30 * SEC, stale()),
                (T + MINUTE, 2.0),
                (T + 3 * MINUTE, stale()),
                (T + 4 * MINUTE, 3.0),
            ],
            MINUTE,
        );
        // The marker after 1.0 hides it.
        assert_eq!(latest_in_window(&buckets, T - 5 * MINUTE, T), None);
        assert_eq!(
            latest_in_window(&buckets, T - 4 * MINUTE, T + MINUTE),
            Some((T + MINUTE, 2.0))
        );
        assert_eq!(latest_in_window(&buckets, T, T + 3 * MINUTE), None);
        // The sample exactly on the window's start is in; a marker there
        // hides nothing older.
        assert_eq!(
            latest_in_window(&buckets, T + MINUTE, T + 2 * MINUTE),
            Some((T + MINUTE, 2.0))
        );
        // 1.0 is on the start of [T - 1m, T], but the marker after it is
        // the window's latest.
        assert_eq!(latest_in_window(&buckets, T - MINUTE, T), None);
        assert_eq!(
            latest_in_window(&buckets, T + 4 * MINUTE, T + 5 * MINUTE),
            Some((T + 4 * MINUTE, 3.0))
        );
    }

    fn reads(first: i64, last: i64, step: i64, offset: i64, width: i64) -> Reads {
        Reads {
            first,
            last,
            step,
            offset,
            width,
        }
    }

    #[test]
    fn the_rule_reads_buckets_only_where_documented() {
        let q = InMemoryQuerier::new(Vec::new()).keeping_rollups();
        let auto = |c: Consumer<'_>, r: Reads| choose(c, &r, RollupUse::Auto, &q);
        let exact = |res| Some(BucketPlan { res, exact: true });
        let rate = Consumer::Range("rate");
        // A day at a minute step: raw samples (1 m buckets are read on
        // their own only past raw retention, see EXACT_MIN_RES).
        assert_eq!(
            auto(rate, reads(T, T + 24 * HOUR, MINUTE, 0, 5 * MINUTE)),
            None
        );
        // A day at an hour step over 1 h windows: 1 h.
        assert_eq!(
            auto(rate, reads(T, T + 24 * HOUR, HOUR, 0, HOUR)),
            exact(HOUR)
        );
        assert_eq!(
            auto(rate, reads(T, T + 24 * HOUR, HOUR, 0, 5 * MINUTE)),
            None
        );
        // 1 h is too coarse for a span under 24 h.
        assert_eq!(auto(rate, reads(T, T + 20 * HOUR, HOUR, 0, HOUR)), None);
        // Forced, minute buckets serve the same aligned reads.
        assert_eq!(
            choose(
                rate,
                &reads(T, T + 24 * HOUR, MINUTE, 0, 5 * MINUTE),
                RollupUse::Always(MINUTE),
                &q
            ),
            exact(MINUTE)
        );
        // Too short: raw.
        assert_eq!(
            auto(rate, reads(T, T + 15 * MINUTE, MINUTE, 0, 5 * MINUTE)),
            None
        );
        // Not aligned: the step, the start, the range, the offset.
        assert_eq!(
            auto(rate, reads(T, T + 24 * HOUR, 30 * SEC, 0, 5 * MINUTE)),
            None
        );
        assert_eq!(
            auto(rate, reads(T + SEC, T + 24 * HOUR, MINUTE, 0, 5 * MINUTE)),
            None
        );
        assert_eq!(
            auto(rate, reads(T, T + 24 * HOUR, MINUTE, 0, 90 * SEC)),
            None
        );
        assert_eq!(
            auto(rate, reads(T, T + 24 * HOUR, MINUTE, SEC, 5 * MINUTE)),
            None
        );
        // An instant query of a long window.
        assert_eq!(auto(rate, reads(T, T, 0, 0, 7 * 24 * HOUR)), exact(HOUR));
        assert_eq!(
            auto(rate, reads(T + MINUTE, T + MINUTE, 0, 0, 6 * HOUR)),
            None
        );
        // Plain selectors, timestamp() and the summable functions read
        // buckets; the others never do.
        let long = reads(T, T + 48 * HOUR, HOUR, 0, HOUR);
        for c in [Consumer::Instant, Consumer::Timestamp] {
            assert_eq!(auto(c, long), exact(HOUR));
        }
        for f in BUCKET_FUNCTIONS {
            assert_eq!(auto(Consumer::Range(f), long), exact(HOUR), "{f}");
        }
        for f in [
            "irate",
            "idelta",
            "deriv",
            "predict_linear",
            "quantile_over_time",
            "stddev_over_time",
            "stdvar_over_time",
            "holt_winters",
            "absent_over_time",
        ] {
            assert_eq!(auto(Consumer::Range(f), long), None, "{f}");
        }
        // The policy.
        assert_eq!(choose(rate, &long, RollupUse::Never, &q), None);
        let short = reads(T, T, 0, 0, MINUTE);
        assert_eq!(
            choose(rate, &short, RollupUse::Always(MINUTE), &q),
            exact(MINUTE)
        );
        assert_eq!(choose(rate, &short, RollupUse::Always(HOUR), &q), None);
    }

    #[test]
    fn the_rule_reads_buckets_where_raw_samples_are_gone() {
        let q = InMemoryQuerier::new(Vec::new())
            .keeping_rollups()
            .raw_kept_from(T);
        let rate = Consumer::Range("rate");
        let auto = |c: Consumer<'_>, r: Reads| choose(c, &r, RollupUse::Auto, &q);
        // After raw retention's start: the usual rule.
        assert_eq!(
            auto(rate, reads(T + HOUR, T + HOUR, 0, 0, 5 * MINUTE)),
            None
        );
        assert_eq!(
            auto(
                rate,
                reads(T + 5 * MINUTE, T + 5 * MINUTE, 0, 0, 5 * MINUTE)
            ),
            None
        );
        // Before it: buckets, exact where aligned, snapped where not.
        assert_eq!(
            auto(
                rate,
                reads(T + 4 * MINUTE, T + 4 * MINUTE, 0, 0, 5 * MINUTE)
            ),
            Some(BucketPlan {
                res: MINUTE,
                exact: true
            })
        );
        assert_eq!(
            auto(rate, reads(T + 7 * SEC, T + HOUR, 15 * SEC, 0, 5 * MINUTE)),
            Some(BucketPlan {
                res: MINUTE,
                exact: false
            })
        );
        // Not from buckets: raw, however little is left.
        assert_eq!(
            auto(Consumer::Range("irate"), reads(T, T, 0, 0, 5 * MINUTE)),
            None
        );
    }

    #[test]
    fn extreme_times_read_raw_samples() {
        let q = InMemoryQuerier::new(corpus(1))
            .keeping_rollups()
            .raw_kept_from(T);
        for t in [i64::MIN + 1, i64::MIN / 2, i64::MAX - 1] {
            for expr in ["rate(c_total[5m])", "g", "g offset -1h", "timestamp(g)"] {
                assert!(
                    Engine::default().instant(&q, expr, t).is_ok(),
                    "{expr} at {t}"
                );
            }
        }
        assert!(q.bucket_windows().is_empty());
        let always = engine(RollupUse::Always(0), 5 * MINUTE);
        assert!(always.instant(&q, "g", T).is_ok());
        assert!(q.bucket_windows().is_empty());
    }

    #[test]
    fn snapped_windows_move_each_edge_by_less_than_one_resolution() {
        let plan = BucketPlan {
            res: MINUTE,
            exact: false,
        };
        assert_eq!(
            plan.window(T + SEC, 5 * MINUTE),
            (T - 4 * MINUTE, T + MINUTE)
        );
        assert_eq!(plan.window(T, 5 * MINUTE), (T - 5 * MINUTE, T));
        // A window shorter than a bucket reads one bucket.
        assert_eq!(plan.window(T + 10 * SEC, 20 * SEC), (T, T + MINUTE));
        let hour = BucketPlan {
            res: HOUR,
            exact: false,
        };
        assert_eq!(hour.window(T + 1, 5 * MINUTE), (T, T + HOUR));
        let mut rng = Rng(5);
        for _ in 0..1000 {
            let at = T + rng.below(10 * HOUR as u64) as i64;
            let width = 1 + rng.below(3 * HOUR as u64) as i64;
            for p in [plan, hour] {
                let (s, e) = p.window(at, width);
                assert!((e - at).abs() < p.res && (s - (at - width)).abs() < p.res);
                assert!(e - s >= p.res && s % p.res == 0 && e % p.res == 0);
            }
        }
        let exact = BucketPlan {
            res: MINUTE,
            exact: true,
        };
        assert_eq!(exact.window(T, 5 * MINUTE), (T - 5 * MINUTE, T));
    }

    #[test]
    fn past_raw_retention_the_answer_is_the_raw_one_over_the_snapped_window() {
        let series = corpus(21);
        let full = InMemoryQuerier::new(series.clone()).keeping_rollups();
        let raw = engine(RollupUse::Never, 5 * MINUTE);
        let mut rng = Rng(3);
        let mut answered = 0;
        for _ in 0..40 {
            let q = InMemoryQuerier::new(series.clone())
                .keeping_rollups()
                .raw_kept_from(T + 8 * HOUR);
            let t = T + rng.below(6 * HOUR as u64) as i64;
            for (expr, width) in [
                ("rate(c_total[5m])", 5 * MINUTE),
                ("sum_over_time(g[7m30s])", 450 * SEC),
                ("max_over_time(g[20s])", 20 * SEC),
            ] {
                let got = matrix(Engine::default().instant(&q, expr, t), expr);
                assert!(!q.bucket_windows().is_empty(), "{expr} read buckets");
                // The raw answer at the snapped end over the snapped window.
                let plan = BucketPlan {
                    res: MINUTE,
                    exact: false,
                };
                let (s, e) = plan.window(t, width);
                let moved = expr.replace(
                    &expr[expr.find('[').unwrap_or(0)..=expr.find(']').unwrap_or(0)],
                    &format!("[{}s]", (e - s) / SEC),
                );
                let want = matrix(raw.instant(&full, &moved, e), &moved);
                let want: Vec<RangeSeries> = want
                    .into_iter()
                    .map(|mut s| {
                        s.samples.iter_mut().for_each(|p| p.0 = t);
                        s
                    })
                    .collect();
                assert_close(&got, &want, &format!("{expr} at {t}"));
                answered += want.len();
            }
            // An instant selector: the latest sample up to the snapped end.
            let got = matrix(Engine::default().instant(&q, "g", t), "g");
            let plan = BucketPlan {
                res: MINUTE,
                exact: false,
            };
            let (s, e) = plan.window(t, 5 * MINUTE);
            let want = matrix(engine(RollupUse::Never, e - s).instant(&full, "g", e), "g");
            assert_eq!(
                got.iter()
                    .map(|s| s.samples[0].1.to_bits())
                    .collect::<Vec<_>>(),
                want.iter()
                    .map(|s| s.samples[0].1.to_bits())
                    .collect::<Vec<_>>()
            );
        }
        assert!(answered > 100);
    }

    #[test]
    fn subqueries_read_buckets_over_their_own_steps() {
        // Hourly steps of hourly windows over a day: exact 1 h buckets, the
        // raw answer.
        let q = InMemoryQuerier::new(corpus(5)).keeping_rollups();
        let raw = engine(RollupUse::Never, 5 * MINUTE);
        for expr in [
            "max_over_time(increase(c_total[1h])[24h:1h])",
            "avg_over_time(sum by (job) (rate(c_total[1h]))[1d:1h])",
        ] {
            let before = q.bucket_windows().len();
            let got = matrix(
                Engine::default().range(&q, expr, T, T + 9 * HOUR, HOUR),
                expr,
            );
            assert!(q.bucket_windows().len() > before, "{expr}: read buckets");
            let full = InMemoryQuerier::new(corpus(5));
            let want = matrix(raw.range(&full, expr, T, T + 9 * HOUR, HOUR), expr);
            assert!(!want.is_empty(), "{expr}: has an answer");
            assert_close(&got, &want, expr);
        }
        // The share of steps with data, as an SLO's coverage asks, reaching
        // before raw retention: the rollups fill the time raw samples no
        // longer cover.
        let expr = "sum(count_over_time((count(g))[9h:30m]))";
        let cut = || {
            InMemoryQuerier::new(corpus(5))
                .keeping_rollups()
                .raw_kept_from(T + 3 * HOUR)
        };
        let q = cut();
        let got = matrix(Engine::default().instant(&q, expr, T + 9 * HOUR), expr);
        assert!(!q.bucket_windows().is_empty(), "coverage read buckets");
        let steps = |m: &[RangeSeries]| m.first().map_or(0.0, |s| s.samples[0].1);
        let full = InMemoryQuerier::new(corpus(5));
        let want = matrix(raw.instant(&full, expr, T + 9 * HOUR), expr);
        let raw_only = matrix(raw.instant(&cut(), expr, T + 9 * HOUR), expr);
        assert_eq!(steps(&want), 19.0, "every step of the 9 h has data");
        assert_eq!(steps(&got), steps(&want));
        assert!(steps(&raw_only) < 15.0, "raw samples alone miss 3 h");
    }

    #[test]
    fn long_aligned_queries_read_buckets_and_short_ones_raw_samples() {
        // A store that keeps no rollups is read raw however long the query.
        let q = InMemoryQuerier::new(corpus(4));
        let e = Engine::default();
        let _ = e.range(&q, "rate(c_total[5m])", T - 3 * HOUR, T + 9 * HOUR, MINUTE);
        let long = reads(T, T + 24 * HOUR, MINUTE, 0, 5 * MINUTE);
        assert_eq!(choose(Consumer::Instant, &long, RollupUse::Auto, &q), None);
        assert_eq!((q.selects(), q.bucket_windows().len()), (1, 0));
        let q = InMemoryQuerier::new(corpus(4)).keeping_rollups();
        // A day at a minute step: raw samples still (minute buckets are
        // read on their own only past raw retention).
        let m = matrix(
            e.range(&q, "rate(c_total[5m])", T - 3 * HOUR, T + 9 * HOUR, MINUTE),
            "",
        );
        assert!(!m.is_empty());
        assert_eq!((q.selects(), q.bucket_windows().len()), (1, 0));
        // 1 h windows at a 1 h step over 24 h: 1 h buckets, no raw samples.
        let m = matrix(
            e.range(
                &q,
                "increase(c_total[1h])",
                T - 15 * HOUR,
                T + 9 * HOUR,
                HOUR,
            ),
            "",
        );
        assert!(!m.is_empty());
        assert_eq!(q.selects(), 1);
        assert_eq!(
            q.bucket_windows(),
            vec![(T - 16 * HOUR, T + 9 * HOUR, HOUR)]
        );
        // Fifteen minutes at a 15 s step, and irate: raw samples.
        let _ = e.range(&q, "rate(c_total[5m])", T, T + 15 * MINUTE, 15 * SEC);
        let _ = e.range(&q, "irate(c_total[1h])", T - 15 * HOUR, T + 9 * HOUR, HOUR);
        let _ = e.range(
            &q,
            "max_over_time(g[1h:1h])",
            T - 15 * HOUR,
            T + 9 * HOUR,
            HOUR,
        );
        let _ = e.range(
            &q,
            "rate(c_total[1h] @ end())",
            T - 15 * HOUR,
            T + 9 * HOUR,
            HOUR,
        );
        assert_eq!(q.bucket_windows().len(), 1);
        assert_eq!(q.selects(), 5);
        // Both paths for the planner's view of one expression: the 1 h
        // rate reads buckets, irate and the 5 m lookback of `c` raw samples.
        let parsed =
            promql_parser::parser::parse("rate(a[1h]) / irate(b[1h]) + c").expect("parses");
        let mut ev = Evaluator::new(&q, 5 * MINUTE, usize::MAX, T, T + 48 * HOUR);
        ev.plan_rollups(&parsed, HOUR, RollupUse::Auto);
        let mut plans = ev.bucket_plans();
        plans.sort();
        assert_eq!(plans, vec![(HOUR, true)]);
    }
}
