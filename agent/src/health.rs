//! The agent's own health (its self-metrics registry: spool, delivery,
//! sampling, `process_*`) as samples, so that every batch carries it next
//! to the host series and a collector can alert on an agent that drops
//! data. The registry is read through its text rendering, the same bytes
//! `/metrics` serves, so both always agree on names, types and values.
//!
//! It never changes the registry and never adds `instance`/`job`: the
//! batcher labels these series like every other.

use crate::samplers::Samples;
use nines_shared::exposition::parse::parse;
use nines_shared::telemetry::Registry;
use nines_shared::{LabelLimits, MetricKind};

/// Most samples taken from the registry in one round: far above what the
/// agent registers (a few hundred with many collectors), a bound in case a
/// labelled family runs away.
const MAX_SAMPLES: usize = 10_000;

/// Appends every family of `registry` to `out`, with its type and help, as
/// the text format lays it out (histograms as `_bucket`/`_sum`/`_count`).
/// Returns why the registry could not be read, if it could not (then `out`
/// is left as it was).
pub fn append_registry(registry: &Registry, out: &mut Samples) -> Result<(), String> {
    let text = registry.render();
    let parsed = parse(&text, MAX_SAMPLES, &LabelLimits::default()).map_err(|e| e.to_string())?;
    for m in parsed.metadata {
        let unit = unit_of(&m.name, m.kind);
        out.family(&m.name, m.kind, &m.help, unit);
    }
    for s in parsed.samples {
        out.push_labels(s.labels, s.value);
    }
    Ok(())
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
        .find(|u| base.ends_with(&format!("_{u}")))
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
