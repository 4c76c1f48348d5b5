//! The read interface the query engine evaluates over: find the series that
//! match a selector and return their samples in a time range. Storage
//! implements it; tests implement it in memory. Nothing here evaluates.

use nines_shared::Labels;
use promql_parser::label::Matchers;

use super::rollup::{SeriesBuckets, bucket_end, fold};

/// A series and its samples, ascending by timestamp.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesSamples {
    /// Full label set, `__name__` included.
    pub labels: Labels,
    /// (timestamp ms, value), ascending, one per timestamp.
    pub samples: Vec<(i64, f64)>,
}

/// Why the store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum QuerierError {
    /// The store failed (I/O, SQLite).
    #[error("storage: {0}")]
    Storage(String),
    /// The selection is larger than the configured limit.
    #[error("query selects more than {0} series")]
    TooManySeries(usize),
    /// The selection holds more samples than the configured limit.
    #[error("query loads more than {0} samples")]
    TooManySamples(usize),
}

/// What the query engine reads through.
pub trait Querier: Send + Sync {
    /// Series matching every matcher in `matchers.matchers` (or, when
    /// `matchers.or_matchers` is non-empty, every matcher of at least one of
    /// those groups), with their samples whose timestamps lie in
    /// `[start, end]` (ms, inclusive). Series with no sample in the range
    /// are left out.
    fn select(
        &self,
        matchers: &Matchers,
        start: i64,
        end: i64,
    ) -> Result<Vec<SeriesSamples>, QuerierError>;

    /// Series matching `matchers` as for [`Querier::select`], reduced to
    /// buckets of `res` ms (see [`super::rollup`]): every bucket whose end
    /// lies in `[start, end]`, i.e. the samples in `(bucket_end(start) - res,
    /// end']` where `end'` is the last multiple of `res` not after `end`.
    /// Series with no bucket
    /// are left out.
    ///
    /// The default folds the raw samples; a store that keeps rollups
    /// answers from them, which must give the same buckets.
    fn select_buckets(
        &self,
        matchers: &Matchers,
        start: i64,
        end: i64,
        res: i64,
    ) -> Result<Vec<SeriesBuckets>, QuerierError> {
        fold_selected(start, end, res, |from, to| self.select(matchers, from, to))
    }

    /// The rollup resolutions (ms) the store keeps, so that
    /// [`Querier::select_buckets`] answers from them. The default, none:
    /// buckets folded from raw samples cost more than the samples, so the
    /// engine then reads them only when forced to.
    fn rollup_resolutions(&self) -> Vec<i64> {
        Vec::new()
    }

    /// The oldest timestamp (ms) raw samples are still kept from: a
    /// selection reaching before it reads rollups where the query allows
    /// (see `rollup_read`). `None` (the default): raw samples are kept
    /// for all time.
    fn raw_retention_start(&self) -> Option<i64> {
        None
    }

    /// The oldest timestamp (ms) rollups of `res` ms are kept from; a
    /// resolution not kept from before a selection is not read for it.
    /// `None` (the default): kept for all time.
    fn rollup_retention_start(&self, res: i64) -> Option<i64> {
        let _ = res;
        None
    }
}

/// The raw samples `[from, to]` that make the buckets of `res` whose end
/// lies in `[start, end]`.
pub fn bucket_span(start: i64, end: i64, res: i64) -> (i64, i64) {
    (bucket_end(start, res) - res + 1, end.div_euclid(res) * res)
}

/// The buckets of `res` whose end lies in `[start, end]`, folded (see
/// [`super::rollup::fold`]) from the raw samples `select` returns for the
/// span [`bucket_span`] gives; series without a bucket left out.
pub fn fold_selected(
    start: i64,
    end: i64,
    res: i64,
    select: impl FnOnce(i64, i64) -> Result<Vec<SeriesSamples>, QuerierError>,
) -> Result<Vec<SeriesBuckets>, QuerierError> {
    let (from, to) = bucket_span(start, end, res);
    Ok(select(from, to)?
        .into_iter()
        .map(|s| SeriesBuckets {
            buckets: fold(&s.samples, res),
            labels: s.labels,
        })
        .filter(|s| !s.buckets.is_empty())
        .collect())
}
