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

/// A metric family with fixed metadata, declared once per round by the
/// samplers that report it.
pub(crate) struct Family {
    pub(crate) name: &'static str,
    pub(crate) kind: MetricKind,
    pub(crate) unit: &'static str,
    pub(crate) help: &'static str,
}

impl Family {
    /// Declares the family in this round.
    pub(crate) fn declare(&self, out: &mut Samples) {
        out.family(self.name, self.kind, self.help, self.unit);
    }
}

/// A counter family.
pub(crate) const fn counter(name: &'static str, unit: &'static str, help: &'static str) -> Family {
    Family {
        name,
        kind: MetricKind::Counter,
        unit,
        help,
    }
}

/// A gauge family.
pub(crate) const fn gauge(name: &'static str, unit: &'static str, help: &'static str) -> Family {
    Family {
        name,
        kind: MetricKind::Gauge,
        unit,
        help,
    }
}

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

/// Which built-in samplers run (each can be turned off in the config).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerToggles {
    /// CPU, memory, load, filesystems, network, boot time.
    pub host: bool,
    /// Disks, pressure, file descriptors, TCP/UDP counters, clock.
    pub system: bool,
    /// TCP connections by state and per listening port.
    pub connections: bool,
    /// Most listening ports with a series of their own.
    pub connections_max_ports: usize,
}

impl Default for SamplerToggles {
    fn default() -> Self {
        SamplerToggles {
            host: true,
            system: true,
            connections: true,
            connections_max_ports: connections::DEFAULT_MAX_PORTS,
        }
    }
}

/// The samplers one agent runs each round, in order.
pub struct SamplerSet {
    host: Option<host::HostSampler>,
    system: Option<system::SystemSampler>,
    connections: Option<connections::ConnectionSampler>,
    statsd: Option<statsd::StatsdState>,
    access_logs: Vec<access_log::AccessLogTailer>,
    probes: Option<crate::probes::ProbeSet>,
}

impl SamplerSet {
    /// Every built-in sampler, reading the host at `root`.
    pub fn new(root: std::path::PathBuf) -> Self {
        Self::with(root, &SamplerToggles::default(), None, Vec::new())
    }

    /// The samplers `toggles` turns on, plus a StatsD listener's state and
    /// access-log tailers.
    pub fn with(
        root: std::path::PathBuf,
        toggles: &SamplerToggles,
        statsd: Option<statsd::StatsdState>,
        access_logs: Vec<access_log::AccessLogTailer>,
    ) -> Self {
        SamplerSet {
            host: toggles.host.then(|| host::HostSampler::new(root.clone())),
            system: toggles
                .system
                .then(|| system::SystemSampler::new(root.clone())),
            connections: toggles.connections.then(|| {
                connections::ConnectionSampler::with_max_ports(root, toggles.connections_max_ports)
            }),
            statsd,
            access_logs,
            probes: None,
        }
    }

    /// Adds the results of running probes to every round.
    pub fn with_probes(mut self, probes: crate::probes::ProbeSet) -> Self {
        self.probes = Some(probes);
        self
    }

    /// Runs every sampler into `out`; a failing one does not stop the
    /// others. Returns each failure with the sampler's name.
    pub fn sample(&mut self, out: &mut Samples) -> Vec<(&'static str, SampleError)> {
        let mut failed = Vec::new();
        if let Some(Err(e)) = self.host.as_mut().map(|s| s.sample(out)) {
            failed.push(("host", e));
        }
        if let Some(Err(e)) = self.system.as_mut().map(|s| s.sample(out)) {
            failed.push(("system", e));
        }
        if let Some(Err(e)) = self.connections.as_mut().map(|s| s.sample(out)) {
            failed.push(("connections", e));
        }
        if let Some(s) = &self.statsd {
            s.sample(out);
        }
        for t in &mut self.access_logs {
            t.poll();
            t.sample(out);
        }
        if let Some(p) = &self.probes {
            p.sample(out);
        }
        failed
    }
}
