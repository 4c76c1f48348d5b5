//! Pull mode: the agent's `/metrics` page serves the latest sampling round
//! in the text format (as node_exporter would), after the agent's own
//! health metrics, so a collector or a Prometheus server can scrape the
//! agent instead of being pushed to. `instance` and `job` are left to the
//! scraper, as exporters do. It never samples; it renders what it is given.

use crate::samplers::{Observation, Samples};
use nines_shared::exposition::{write_header, write_sample};
use nines_shared::{METRIC_NAME_LABEL, MetricKind, MetricMetadata};
use std::sync::{Arc, RwLock};

/// The latest round, shared between the sampling loop and the page.
#[derive(Clone, Default)]
pub struct LatestRound(Arc<RwLock<Shown>>);

/// A round and how much of it the page serves: its first observations
/// and families (what the samplers reported, without what was appended
/// for batches only).
#[derive(Default)]
struct Shown {
    round: Samples,
    observations: usize,
    families: usize,
}

impl LatestRound {
    /// Replaces the round.
    pub fn set(&self, round: Samples) {
        let (n, f) = (round.observations.len(), round.metadata.len());
        self.replace(round, n, f);
    }

    /// Replaces the round, of which the page serves the first
    /// `observations` and `families`; returns the round it replaced, whose
    /// allocations the next round can reuse.
    pub fn replace(&self, round: Samples, observations: usize, families: usize) -> Samples {
        let shown = Shown {
            round,
            observations,
            families,
        };
        match self.0.write() {
            Ok(mut g) => std::mem::replace(&mut *g, shown).round,
            Err(_) => Samples::default(),
        }
    }

    /// The round in the text format, each family once, in one group.
    pub fn render(&self) -> String {
        let Ok(shown) = self.0.read() else {
            return String::new();
        };
        let r = &shown.round;
        let observations = &r.observations[..shown.observations.min(r.observations.len())];
        let metadata = &r.metadata[..shown.families.min(r.metadata.len())];
        render(observations, metadata)
    }
}

/// Which family a series name belongs to, given the declared families.
fn family_of<'a>(metric: &'a str, metadata: &'a [MetricMetadata]) -> &'a str {
    if metadata.iter().any(|m| m.name == metric) {
        return metric;
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = metric.strip_suffix(suffix) {
            if metadata.iter().any(|m| {
                m.name == base && matches!(m.kind, MetricKind::Histogram | MetricKind::Summary)
            }) {
                return base;
            }
        }
    }
    metric
}

fn render(observations: &[Observation], metadata: &[MetricMetadata]) -> String {
    let mut out = String::with_capacity(observations.len() * 64);
    // Group observations by family, keeping the order families appeared.
    let mut order: Vec<&str> = Vec::new();
    let mut groups: std::collections::HashMap<&str, Vec<usize>> = std::collections::HashMap::new();
    for (i, o) in observations.iter().enumerate() {
        let metric = o.labels.metric_name().unwrap_or("");
        let family = family_of(metric, metadata);
        groups
            .entry(family)
            .or_insert_with(|| {
                order.push(family);
                Vec::new()
            })
            .push(i);
    }
    for family in order {
        match metadata.iter().find(|m| m.name == family) {
            Some(m) => write_header(&mut out, family, m.kind, &m.help),
            None => write_header(&mut out, family, MetricKind::Unknown, ""),
        }
        for &i in &groups[family] {
            let o = &observations[i];
            let pairs: Vec<(&str, &str)> = o
                .labels
                .iter()
                .filter(|l| l.name != METRIC_NAME_LABEL)
                .map(|l| (l.name.as_str(), l.value.as_str()))
                .collect();
            write_sample(
                &mut out,
                o.labels.metric_name().unwrap_or(""),
                &pairs,
                o.value,
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_grouped_with_one_header_each() {
        let mut s = Samples::default();
        s.family(
            "node_cpu_seconds_total",
            MetricKind::Counter,
            "CPU.",
            "seconds",
        );
        s.push(
            "node_cpu_seconds_total",
            &[("cpu", "0"), ("mode", "idle")],
            1.0,
        );
        s.family("node_load1", MetricKind::Gauge, "Load.", "");
        s.push("node_load1", &[], 0.5);
        s.push(
            "node_cpu_seconds_total",
            &[("cpu", "1"), ("mode", "idle")],
            2.0,
        );
        s.family("lat_seconds", MetricKind::Histogram, "Latency.", "seconds");
        s.push("lat_seconds_bucket", &[("le", "+Inf")], 3.0);
        s.push("lat_seconds_count", &[], 3.0);
        let latest = LatestRound::default();
        latest.set(s);
        let text = latest.render();
        assert_eq!(
            text,
            "# HELP node_cpu_seconds_total CPU.\n# TYPE node_cpu_seconds_total counter\n\
node_cpu_seconds_total{cpu=\"0\",mode=\"idle\"} 1\n\
node_cpu_seconds_total{cpu=\"1\",mode=\"idle\"} 2\n\
# HELP node_load1 Load.\n# TYPE node_load1 gauge\nnode_load1 0.5\n\
# HELP lat_seconds Latency.\n# TYPE lat_seconds histogram\n\
lat_seconds_bucket{le=\"+Inf\"} 3\nlat_seconds_count 3\n"
        );
    }
}
