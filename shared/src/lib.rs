//! nines-shared: the data model and the native wire protocol that the agent
//! and the collector both speak, plus the small self-metrics registry both
//! binaries expose on `/metrics`. No HTTP server, no SQL, no threads.

#![warn(missing_docs)]

pub mod checksum;
pub mod duration;
pub mod exposition;
pub mod model;
pub mod telemetry;
pub mod wire;

pub use model::*;
