//! nines-agent: samples this host and pushes batches to nines collectors.
//! Pipeline: `samplers -> batch -> ship`.

#![warn(missing_docs)]

pub mod samplers;
