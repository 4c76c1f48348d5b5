//! nines-collector: `ingest -> storage -> query -> rules -> notify`, with `api` at the edge and
//! `serve` wiring them together.

#![warn(missing_docs)]

pub mod api;
pub mod config;
pub mod ingest;
pub mod notify;
pub mod presence;
pub mod query;
pub mod rules;
pub mod scrape;
pub mod serve;
pub mod slo;
pub mod storage;
