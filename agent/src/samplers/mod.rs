//! Samplers: each reads one part of the host and reports metric families
//! into a [`Samples`] buffer. They never send, batch or store anything; the
//! batcher adds the `instance` and `job` labels and numbers the series.

pub mod access_log;
pub mod connections;
pub mod histogram;
pub mod host;
pub mod statsd;
pub mod system;

use nines_shared::{Labels, MetricKind, MetricMetadata};

/// One sampled value of one series, before `instance`/`job` are added.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// Metric name and the sampler's own labels.
    pub labels: Labels,
    /// The value.
    pub value: f64,
}

/// What a sampling round produced: values plus each family's metadata.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    /// Values, in the order the samplers reported them.
    pub observations: Vec<Observation>,
    /// One entry per metric family reported.
    pub metadata: Vec<MetricMetadata>,
}

impl Samples {
    /// Declares a metric family (type, help, unit) once per round.
    pub fn family(&mut self, name: &str, kind: MetricKind, help: &str, unit: &str) {
        if !self.metadata.iter().any(|m| m.name == name) {
            self.metadata.push(MetricMetadata {
                name: name.to_string(),
                kind,
                help: help.to_string(),
                unit: unit.to_string(),
            });
        }
    }

    /// Reports one value of `metric` with the given labels.
    pub fn push(&mut self, metric: &str, labels: &[(&str, &str)], value: f64) {
        self.observations.push(Observation {
            labels: Labels::new(metric, labels.iter().copied()),
            value,
        });
    }

    /// The value reported for a series, if any (for tests).
    pub fn value_of(&self, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want = Labels::new(metric, labels.iter().copied());
        self.observations
            .iter()
            .find(|o| o.labels == want)
            .map(|o| o.value)
    }
}

/// Why a sampler could not read what it needs.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// A file under /proc or /sys could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file had content this sampler does not understand.
    #[error("parsing {path}: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// What was wrong.
        reason: String,
    },
}

/// The samplers one agent runs each round, in order.
pub struct SamplerSet {
    host: host::HostSampler,
    system: system::SystemSampler,
    connections: connections::ConnectionSampler,
}

impl SamplerSet {
    /// Every sampler, reading the host at `root`.
    pub fn new(root: std::path::PathBuf) -> Self {
        SamplerSet {
            host: host::HostSampler::new(root.clone()),
            system: system::SystemSampler::new(root.clone()),
            connections: connections::ConnectionSampler::new(root),
        }
    }

    /// Runs every sampler into `out`; a failing one does not stop the
    /// others. Returns each failure with the sampler's name.
    pub fn sample(&mut self, out: &mut Samples) -> Vec<(&'static str, SampleError)> {
        let mut failed = Vec::new();
        if let Err(e) = self.host.sample(out) {
            failed.push(("host", e));
        }
        if let Err(e) = self.system.sample(out) {
            failed.push(("system", e));
        }
        if let Err(e) = self.connections.sample(out) {
            failed.push(("connections", e));
        }
        failed
    }
}
