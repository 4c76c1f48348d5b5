//! Host sampler: CPU, memory, swap, load, filesystems, network, boot time,
//! read from /proc with node_exporter's names and meaning.

use super::{SampleError, Samples};
use std::path::PathBuf;

/// Placeholder until the host sampler lands.
pub struct HostSampler {
    _root: PathBuf,
}

impl HostSampler {
    /// A sampler reading from `root`.
    pub fn new(root: PathBuf) -> Self {
        HostSampler { _root: root }
    }
    /// Samples.
    pub fn sample(&mut self, _out: &mut Samples) -> Result<(), SampleError> {
        Ok(())
    }
}
