//! nines-agent: samples this host and pushes batches to nines collectors.
//! Pipeline: `samplers -> batch -> ship`, driven by `run`.

#![warn(missing_docs)]

pub mod batch;
pub mod config;
mod encode;
pub mod footprint;
pub mod health;
pub mod identity;
pub mod logging;
pub mod probes;
pub mod process;
pub mod pull;
pub mod run;
pub mod samplers;
pub mod ship;
pub mod spool;
pub mod systemd;
#[cfg(test)]
pub(crate) mod test_support;
