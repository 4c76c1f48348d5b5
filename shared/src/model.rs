//! The data model: series identified by a metric name and labels, samples of
//! (milliseconds, f64), and the batch an agent sends. Prometheus's model, so
//! that PromQL and the Prometheus protocols apply without translation.
//!
//! Validation lives here so that the agent, the collector and every ingest
//! path agree on what a valid series is. Nothing here does I/O.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The label that carries the metric name, as in Prometheus.
pub const METRIC_NAME_LABEL: &str = "__name__";

/// A point in time in milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UnixMillis(pub i64);

impl UnixMillis {
    /// The current wall-clock time.
    pub fn now() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        UnixMillis(d.as_millis() as i64)
    }
}

/// A batch sequence number, increasing by one per batch within a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Seq(pub u64);

/// A stream-local reference to a series definition. The agent numbers its
/// series; the collector maps `(stream, ref)` to its own series id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SeriesRef(pub u32);

/// One agent process's sequence of batches: the agent's id plus the epoch it
/// started at. A restarted agent starts a new stream at sequence 0.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StreamId {
    /// Stable id of the agent (persisted in its state dir).
    pub agent: String,
    /// When this agent process started, in ms since the epoch.
    pub epoch: UnixMillis,
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.agent, self.epoch.0)
    }
}

/// One label pair.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Label {
    /// Label name, `[a-zA-Z_][a-zA-Z0-9_]*`.
    pub name: String,
    /// Label value, any non-empty UTF-8.
    pub value: String,
}

/// A full label set, `__name__` included, sorted by name, names unique.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Labels(Vec<Label>);

impl Labels {
    /// Builds a label set from a metric name and other pairs; sorts them.
    /// Pairs with an empty value are left out, as Prometheus treats an empty
    /// value as an absent label.
    pub fn new<N, V>(metric: &str, pairs: impl IntoIterator<Item = (N, V)>) -> Self
    where
        N: Into<String>,
        V: Into<String>,
    {
        let mut v: Vec<Label> = pairs
            .into_iter()
            .map(|(n, v)| Label {
                name: n.into(),
                value: v.into(),
            })
            .filter(|l| !l.value.is_empty())
            .collect();
        v.push(Label {
            name: METRIC_NAME_LABEL.to_string(),
            value: metric.to_string(),
        });
        Self::from_unsorted(v)
    }

    /// Sorts the given pairs by name; a later duplicate name replaces nothing
    /// (validation reports duplicates).
    pub fn from_unsorted(mut v: Vec<Label>) -> Self {
        v.sort();
        Labels(v)
    }

    /// The pairs exactly as received, in their order: for decoders, which
    /// then call [`Labels::validate`] to refuse unsorted or repeated names.
    pub fn from_wire(v: Vec<Label>) -> Self {
        Labels(v)
    }

    /// The pairs, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &Label> {
        self.0.iter()
    }

    /// Number of pairs, `__name__` included.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no pairs at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value of a label, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .binary_search_by(|l| l.name.as_str().cmp(name))
            .ok()
            .map(|i| self.0[i].value.as_str())
    }

    /// The metric name, if present.
    pub fn metric_name(&self) -> Option<&str> {
        self.get(METRIC_NAME_LABEL)
    }

    /// Adds or replaces a label, keeping the order.
    pub fn set(&mut self, name: &str, value: &str) {
        match self.0.binary_search_by(|l| l.name.as_str().cmp(name)) {
            Ok(i) => self.0[i].value = value.to_string(),
            Err(i) => self.0.insert(
                i,
                Label {
                    name: name.to_string(),
                    value: value.to_string(),
                },
            ),
        }
    }

    /// Checks the set against Prometheus's rules and the given limits.
    pub fn validate(&self, limits: &LabelLimits) -> Result<(), InvalidSeries> {
        let name = self.metric_name().ok_or(InvalidSeries::MissingName)?;
        if !is_valid_metric_name(name) {
            return Err(InvalidSeries::MetricName(name.to_string()));
        }
        if self.0.len() > limits.max_labels {
            return Err(InvalidSeries::TooManyLabels {
                metric: name.to_string(),
                count: self.0.len(),
                max: limits.max_labels,
            });
        }
        let mut prev: Option<&str> = None;
        for l in &self.0 {
            if prev.is_some_and(|p| p >= l.name.as_str()) {
                return Err(InvalidSeries::Unsorted {
                    metric: name.to_string(),
                    label: l.name.clone(),
                });
            }
            prev = Some(&l.name);
            if l.name.len() > limits.max_name_len || l.value.len() > limits.max_value_len {
                return Err(InvalidSeries::TooLong {
                    metric: name.to_string(),
                    label: truncated(&l.name),
                });
            }
            if l.name != METRIC_NAME_LABEL {
                if !is_valid_label_name(&l.name) {
                    return Err(InvalidSeries::LabelName {
                        metric: name.to_string(),
                        label: truncated(&l.name),
                    });
                }
                if l.name.starts_with("__") {
                    return Err(InvalidSeries::ReservedLabel {
                        metric: name.to_string(),
                        label: l.name.clone(),
                    });
                }
            }
            if l.value.is_empty() {
                return Err(InvalidSeries::EmptyValue {
                    metric: name.to_string(),
                    label: l.name.clone(),
                });
            }
        }
        Ok(())
    }
}

impl fmt::Display for Labels {
    /// `name{a="b",c="d"}` as PromQL writes a series.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.metric_name().unwrap_or(""))?;
        let mut first = true;
        for l in self.0.iter().filter(|l| l.name != METRIC_NAME_LABEL) {
            f.write_str(if first { "{" } else { "," })?;
            first = false;
            write!(f, "{}=\"{}\"", l.name, escape_label_value(&l.value))?;
        }
        if !first {
            f.write_str("}")?;
        }
        Ok(())
    }
}

fn truncated(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Escapes a label value as the text format and PromQL write it.
pub fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Limits on one series' labels.
#[derive(Debug, Clone)]
pub struct LabelLimits {
    /// Most label pairs per series, `__name__` included.
    pub max_labels: usize,
    /// Longest label name (and metric name), in bytes.
    pub max_name_len: usize,
    /// Longest label value, in bytes.
    pub max_value_len: usize,
}

impl Default for LabelLimits {
    fn default() -> Self {
        LabelLimits {
            max_labels: 64,
            max_name_len: 256,
            max_value_len: 4096,
        }
    }
}

/// Why a series definition is not acceptable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidSeries {
    /// No `__name__` label.
    #[error("series has no metric name (__name__ label)")]
    MissingName,
    /// Metric name outside `[a-zA-Z_:][a-zA-Z0-9_:]*`.
    #[error("invalid metric name {0:?}: must match [a-zA-Z_:][a-zA-Z0-9_:]*")]
    MetricName(String),
    /// Label name outside `[a-zA-Z_][a-zA-Z0-9_]*`.
    #[error("metric {metric}: invalid label name {label:?}: must match [a-zA-Z_][a-zA-Z0-9_]*")]
    LabelName {
        /// The metric the label belongs to.
        metric: String,
        /// The offending name.
        label: String,
    },
    /// Label names starting with `__` are reserved.
    #[error("metric {metric}: label name {label:?} is reserved (names starting with __)")]
    ReservedLabel {
        /// The metric the label belongs to.
        metric: String,
        /// The offending name.
        label: String,
    },
    /// Labels not sorted by name, or a name twice.
    #[error("metric {metric}: labels not sorted or label {label:?} given twice")]
    Unsorted {
        /// The metric the label belongs to.
        metric: String,
        /// The label out of place.
        label: String,
    },
    /// An empty label value (Prometheus's "absent").
    #[error("metric {metric}: label {label:?} has an empty value")]
    EmptyValue {
        /// The metric the label belongs to.
        metric: String,
        /// The label with no value.
        label: String,
    },
    /// Too many labels.
    #[error("metric {metric}: {count} labels, more than the limit of {max}")]
    TooManyLabels {
        /// The metric.
        metric: String,
        /// How many it has.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A label name or value over the length limit.
    #[error("metric {metric}: label {label:?} name or value is longer than the limit")]
    TooLong {
        /// The metric.
        metric: String,
        /// The label (truncated).
        label: String,
    },
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
pub fn is_valid_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`
pub fn is_valid_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// What kind of metric a family is, as in the text exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MetricKind {
    /// Monotonic count; resets only on restart.
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// Buckets, sum and count.
    Histogram,
    /// Quantiles, sum and count.
    Summary,
    /// Type not known.
    Unknown,
}

impl MetricKind {
    /// The word the text format and the metadata API use.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
            MetricKind::Summary => "summary",
            MetricKind::Unknown => "unknown",
        }
    }
}

/// Type, help and unit of a metric family (by base name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricMetadata {
    /// The family's name (for histograms, without `_bucket`/`_sum`/`_count`).
    pub name: String,
    /// Its type.
    pub kind: MetricKind,
    /// One line of help text.
    pub help: String,
    /// Base unit, if any (`seconds`, `bytes`), or empty.
    pub unit: String,
}

/// The definition of a series within a stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesDefinition {
    /// The stream-local reference that samples use.
    pub series: SeriesRef,
    /// The series' labels, `__name__` included.
    pub labels: Labels,
}

/// Samples taken at one instant: a timestamp and a value per series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleGroup {
    /// When the values were sampled.
    pub at: UnixMillis,
    /// One value per series.
    pub values: Vec<(SeriesRef, f64)>,
}

/// What an agent sends in one push.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// Which agent process sent it.
    pub stream: StreamId,
    /// Position in the stream; a retried batch keeps its number.
    pub seq: Seq,
    /// The agent's clock when it sent the batch.
    pub sent_at: UnixMillis,
    /// Definitions of series this batch uses that the collector may not know.
    pub definitions: Vec<SeriesDefinition>,
    /// Type and help for metric families this batch defines.
    pub metadata: Vec<MetricMetadata>,
    /// The samples.
    pub groups: Vec<SampleGroup>,
}

impl Batch {
    /// Total number of samples across all groups.
    pub fn sample_count(&self) -> usize {
        self.groups.iter().map(|g| g.values.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_sorted_and_validated() {
        let l = Labels::new("node_load1", [("job", "node"), ("instance", "h1")]);
        assert_eq!(l.metric_name(), Some("node_load1"));
        assert_eq!(l.get("job"), Some("node"));
        assert!(l.validate(&LabelLimits::default()).is_ok());
        assert_eq!(l.to_string(), "node_load1{instance=\"h1\",job=\"node\"}");
    }

    #[test]
    fn invalid_names_are_rejected_with_the_reason() {
        let lim = LabelLimits::default();
        let bad = Labels::new("1abc", [("a", "b")]);
        assert_eq!(
            bad.validate(&lim),
            Err(InvalidSeries::MetricName("1abc".into()))
        );
        let bad = Labels::new("ok", [("bad-name", "b")]);
        assert!(matches!(
            bad.validate(&lim),
            Err(InvalidSeries::LabelName { .. })
        ));
        let bad = Labels::new("ok", [("__secret", "b")]);
        assert!(matches!(
            bad.validate(&lim),
            Err(InvalidSeries::ReservedLabel { .. })
        ));
        let dup = Labels::from_unsorted(vec![
            Label {
                name: "__name__".into(),
                value: "m".into(),
            },
            Label {
                name: "a".into(),
                value: "1".into(),
            },
            Label {
                name: "a".into(),
                value: "2".into(),
            },
        ]);
        assert!(matches!(
            dup.validate(&lim),
            Err(InvalidSeries::Unsorted { .. })
        ));
        assert_eq!(
            Labels::default().validate(&lim),
            Err(InvalidSeries::MissingName)
        );
    }

    #[test]
    fn metric_names_allow_colons_but_label_names_do_not() {
        assert!(is_valid_metric_name("job:rate5m:sum"));
        assert!(!is_valid_label_name("a:b"));
        assert!(!is_valid_metric_name(""));
        assert!(is_valid_label_name("_x9"));
    }
}
