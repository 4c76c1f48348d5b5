//! PromQL evaluation over a [`querier::Querier`].

pub mod querier;
