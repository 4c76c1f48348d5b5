//! nines-collector: ingest -> storage -> query, with the HTTP API at the edge.

#![warn(missing_docs)]

pub mod query;
pub mod storage;
