//! PromQL evaluation over a [`querier::Querier`]: parse an expression, then
//! evaluate it at one instant or over a range of steps, as Prometheus's
//! `/api/v1/query` and `/api/v1/query_range` do.
//!
//! This module never writes to storage and never formats HTTP responses;
//! it returns [`Value`]s and [`QueryError`]s that carry their Prometheus
//! `errorType` and status.

mod aggregate;
mod binary;
mod dialect;
mod engine;
mod error;
pub(crate) mod eval;
#[cfg(test)]
mod fixtures;
mod functions;
mod go_time;
mod histogram;
#[cfg(test)]
pub(crate) mod in_memory;
mod label_sets;
mod over_time;
mod quantile;
pub mod querier;
mod range_eval;
mod subquery;
mod syntax;
mod value;

/// The message for `expr`, which the PromQL parser refused with
/// `parser_message`, as Prometheus 2.42 words it: `line:col: parse error:
/// ...` at the first token that cannot stand there.
pub fn locate_parse_error(expr: &str, parser_message: &str) -> String {
    syntax::locate(expr, parser_message)
}

pub use engine::{DEFAULT_LOOKBACK_MS, DEFAULT_MAX_SAMPLES, Engine, MAX_RANGE_STEPS};
pub use error::QueryError;
pub use value::{InstantSample, RangeSeries, STALE_MARKER_BITS, Value, is_stale_marker};
