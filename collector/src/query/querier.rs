//! The read interface the query engine evaluates over: find the series that
//! match a selector and return their samples in a time range. Storage
//! implements it; tests implement it in memory. Nothing here evaluates.

use nines_shared::Labels;
use promql_parser::label::Matchers;

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
}
