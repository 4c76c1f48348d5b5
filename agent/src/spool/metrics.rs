//! The spool's self-metrics. Registered once per agent and handed to
//! [`Spool::open`](super::Spool::open); it only counts, it never decides.

use nines_shared::telemetry::{Counter, CounterVec, Gauge, Registry};

/// Why records left the spool before a cursor read them (the `reason`
/// label of the dropped counters).
pub(super) const SPOOL_FULL: &str = "spool_full";
/// Records lost to damage on disk.
pub(super) const CORRUPT: &str = "corrupt";

/// The spool's own metrics.
///
/// Drops are labelled with the cursor that lost the records as well as the
/// reason, because a record dropped before two collectors read it is a loss
/// for each of them: `nines_agent_spool_dropped_records_total{cursor,
/// reason}` grows by one per record per cursor that had not read it. When
/// no cursor exists at all the `cursor` label is empty.
///
/// Per-cursor lag is not a registry metric (the registry has no labelled
/// gauge); [`Spool::lag`](super::Spool::lag) gives it to whoever owns the
/// cursor.
#[derive(Clone)]
pub struct SpoolMetrics {
    pub(super) bytes: Gauge,
    pub(super) records: Gauge,
    pub(super) segments: Gauge,
    pub(super) appended: Counter,
    pub(super) dropped_records: CounterVec,
    pub(super) dropped_bytes: CounterVec,
    pub(super) truncated_bytes: Counter,
}

impl SpoolMetrics {
    /// Registers the metrics.
    pub fn register(r: &Registry) -> Self {
        SpoolMetrics {
            bytes: r.gauge(
                "nines_agent_spool_bytes",
                "Bytes the spool's segment files take on disk.",
            ),
            records: r.gauge(
                "nines_agent_spool_records",
                "Records in the spool that some cursor has not acknowledged.",
            ),
            segments: r.gauge("nines_agent_spool_segments", "Segment files in the spool."),
            appended: r.counter(
                "nines_agent_spool_appended_records_total",
                "Records written to the spool (on disk before append returned).",
            ),
            dropped_records: r.counter_vec(
                "nines_agent_spool_dropped_records_total",
                "Records a cursor lost before reading them, by cursor and reason.",
                &["cursor", "reason"],
            ),
            dropped_bytes: r.counter_vec(
                "nines_agent_spool_dropped_bytes_total",
                "Bytes of records a cursor lost before reading them, by cursor and reason.",
                &["cursor", "reason"],
            ),
            truncated_bytes: r.counter(
                "nines_agent_spool_truncated_bytes_total",
                "Bytes of torn or damaged tail cut from the newest segment at open.",
            ),
        }
    }

    /// Creates `cursor`'s spool-full drop counters at zero, so the first
    /// drop shows as an increase (a series born at its first drop does
    /// not, to `increase()`).
    pub(super) fn start_cursor(&self, cursor: &str) {
        self.dropped_records.with(&[cursor, SPOOL_FULL]);
        self.dropped_bytes.with(&[cursor, SPOOL_FULL]);
    }

    /// Counts `records` (`bytes` long) lost to `cursor` for `reason`.
    pub(super) fn drop(&self, cursor: &str, reason: &str, records: u64, bytes: u64) {
        if records == 0 {
            return;
        }
        self.dropped_records.with(&[cursor, reason]).add(records);
        self.dropped_bytes.with(&[cursor, reason]).add(bytes);
    }
}
