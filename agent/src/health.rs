//! The agent's own health (its self-metrics registry: spool, delivery,
//! sampling, `process_*`) as samples, so that every batch carries it next
//! to the host series and a collector can alert on an agent that drops
//! data. The registry is read with [`Registry::visit`], the walk its text
//! rendering (what `/metrics` serves) is written from, so both always
//! agree on names, types and values.
//!
//! It never changes the registry and never adds `instance`/`job`: the
//! batcher labels these series like every other.

use crate::samplers::Samples;
use nines_shared::MetricKind;
use nines_shared::telemetry::{Registry, Visitor};

/// Most samples taken from the registry in one round: far above what the
/// agent registers (a few hundred with many collectors), a bound in case a
/// labelled family runs away.
const MAX_SAMPLES: usize = 10_000;

/// Appends every family of `registry` to `out`, with its type and help, as
/// the text format lays it out (histograms as `_bucket`/`_sum`/`_count`).
/// Past [`MAX_SAMPLES`] samples the rest are left out, and the error says
/// how many were.
pub fn append_registry(registry: &Registry, out: &mut Samples) -> Result<(), String> {
    let mut into = Into {
        out,
        taken: 0,
        left_out: 0,
    };
    registry.visit(&mut into);
    match into.left_out {
        0 => Ok(()),
        n => Err(format!(
            "the registry holds more than {MAX_SAMPLES} samples; {n} were left out"
        )),
    }
}

/// Appends what the registry hands it to a round.
struct Into<'a> {
    out: &'a mut Samples,
    taken: usize,
    left_out: usize,
}

impl Visitor for Into<'_> {
    fn family(&mut self, name: &str, kind: MetricKind, help: &str) {
        self.out.family(name, kind, help, unit_of(name, kind));
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        if self.taken == MAX_SAMPLES {
            self.left_out += 1;
            return;
        }
        self.taken += 1;
        self.out.push(name, labels, value);
    }
}

/// The base unit a family's name declares, as Prometheus's naming
/// conventions put it at the end (before `_total` on counters).
fn unit_of(name: &str, kind: MetricKind) -> &'static str {
    let base = match kind {
        MetricKind::Counter => name.strip_suffix("_total").unwrap_or(name),
        _ => name,
    };
    ["seconds", "bytes", "ratio"]
        .into_iter()
        .find(|u| base.strip_suffix(u).is_some_and(|b| b.ends_with('_')))
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_families_keep_their_types_help_and_labels() {
        let r = Registry::new();
        r.counter_vec(
            "nines_agent_spool_dropped_records_total",
            "Records lost.",
            &["cursor", "reason"],
        )
        .with(&["c-a", "spool_full"])
        .add(3);
        r.gauge("nines_agent_spool_records", "Records held.")
            .set(7.0);
        let h = r.histogram(
            "nines_agent_sampling_duration_seconds",
            "Round time.",
            &[0.1, 1.0],
        );
        h.observe(0.05);
        h.observe(2.0);
        let mut out = Samples::default();
        out.family("node_load1", MetricKind::Gauge, "Load.", "");
        out.push("node_load1", &[], 0.5);
        append_registry(&r, &mut out).unwrap();

        assert_eq!(out.value_of("node_load1", &[]), Some(0.5));
        assert_eq!(
            out.value_of(
                "nines_agent_spool_dropped_records_total",
                &[("cursor", "c-a"), ("reason", "spool_full")]
            ),
            Some(3.0)
        );
        assert_eq!(out.value_of("nines_agent_spool_records", &[]), Some(7.0));
        let bucket = "nines_agent_sampling_duration_seconds_bucket";
        assert_eq!(out.value_of(bucket, &[("le", "0.1")]), Some(1.0));
        assert_eq!(out.value_of(bucket, &[("le", "1")]), Some(1.0));
        assert_eq!(out.value_of(bucket, &[("le", "+Inf")]), Some(2.0));
        assert_eq!(
            out.value_of("nines_agent_sampling_duration_seconds_sum", &[]),
            Some(2.05)
        );
        assert_eq!(
            out.value_of("nines_agent_sampling_duration_seconds_count", &[]),
            Some(2.0)
        );

        let meta = |n: &str| out.metadata.iter().find(|m| m.name == n).unwrap();
        let dropped = meta("nines_agent_spool_dropped_records_total");
        assert_eq!(dropped.kind, MetricKind::Counter);
        assert_eq!(dropped.help, "Records lost.");
        assert_eq!(meta("nines_agent_spool_records").kind, MetricKind::Gauge);
        let hist = meta("nines_agent_sampling_duration_seconds");
        assert_eq!(hist.kind, MetricKind::Histogram);
        assert_eq!(hist.unit, "seconds");
        assert_eq!(meta("node_load1").help, "Load.");
    }

    #[test]
    fn the_samples_are_what_the_metrics_page_serves() {
        use nines_shared::LabelLimits;
        use nines_shared::exposition::parse::parse;
        let r = Registry::new();
        crate::process::register(&r);
        r.counter_vec("x_total", "By where.", &["where", "why"])
            .with(&["a \"quoted\" place", "w"])
            .add(5);
        r.histogram("y_seconds", "Latency.", &[0.001, 2.5])
            .observe(0.01);
        r.gauge_vec("z", "Empty label values are left out.", &["l"])
            .with(&[""])
            .set(1.0);
        let mut out = Samples::default();
        append_registry(&r, &mut out).unwrap();
        // The process's CPU time and memory move between the two reads.
        let page = parse(&r.render(), MAX_SAMPLES, &LabelLimits::default()).unwrap();
        let ours: Vec<_> = out.observations.iter().map(|o| &o.labels).collect();
        let theirs: Vec<_> = page.samples.iter().map(|s| &s.labels).collect();
        assert_eq!(ours, theirs);
        for (o, s) in out.observations.iter().zip(&page.samples) {
            if !s
                .labels
                .metric_name()
                .is_some_and(|n| n.starts_with("process_"))
            {
                assert!(
                    o.value == s.value || (o.value.is_nan() && s.value.is_nan()),
                    "{:?}: {} against {}",
                    s.labels,
                    o.value,
                    s.value
                );
            }
        }
        let kinds: Vec<_> = out
            .metadata
            .iter()
            .map(|m| (&m.name, m.kind, &m.help))
            .collect();
        let page_kinds: Vec<_> = page
            .metadata
            .iter()
            .map(|m| (&m.name, m.kind, &m.help))
            .collect();
        assert_eq!(kinds, page_kinds);
    }

    #[test]
    fn units_come_from_the_name() {
        assert_eq!(
            unit_of("process_cpu_seconds_total", MetricKind::Counter),
            "seconds"
        );
        assert_eq!(
            unit_of("nines_agent_spool_bytes", MetricKind::Gauge),
            "bytes"
        );
        assert_eq!(
            unit_of(
                "nines_agent_spool_dropped_records_total",
                MetricKind::Counter
            ),
            ""
        );
        assert_eq!(
            unit_of(
                "nines_agent_collector_last_ack_timestamp_seconds",
                MetricKind::Gauge
            ),
            "seconds"
        );
    }
}
