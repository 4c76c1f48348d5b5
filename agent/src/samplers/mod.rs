//! Samplers: each reads one part of the host and reports metric families
//! into a [`Samples`] buffer. They never send, batch or store anything; the
//! batcher adds the `instance` and `job` labels and numbers the series.

pub mod access_log;
pub mod connections;
pub mod connections_bpf;
pub mod histogram;
pub mod host;
mod proc_file;
pub mod statsd;
pub mod system;

use nines_shared::{Label, Labels, METRIC_NAME_LABEL, MetricKind, MetricMetadata, SeriesRef};
use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

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
/// Two are equal when their labels and values are.
#[derive(Debug, Clone)]
pub struct Observation {
    /// Metric name and the sampler's own labels.
    pub labels: Labels,
    /// The value.
    pub value: f64,
    /// The series' ref in a batcher's stream, once that batcher has seen
    /// these labels: kept with the labels when a later round reuses them.
    pub(crate) series: SeriesCache,
    /// Its labels are those of the observation pushed just before it in
    /// the same round but for the value of `le` (a histogram's next
    /// bucket, pushed by [`Samples::push_buckets`]); the next round
    /// recognises it by that value alone.
    pub(crate) next_bucket: bool,
}

impl PartialEq for Observation {
    fn eq(&self, other: &Self) -> bool {
        self.labels == other.labels && self.value == other.value
    }
}

impl Observation {
    /// An observation of the series `labels`.
    pub fn new(labels: Labels, value: f64) -> Self {
        Observation {
            labels,
            value,
            series: SeriesCache::default(),
            next_bucket: false,
        }
    }
}

/// Which ref a batcher gave a series: the batcher's id in the high 32
/// bits, the ref in the low ones; 0 for none (batcher ids start at 1).
/// Not part of an observation's identity: equal whatever it holds.
#[derive(Debug, Default)]
pub(crate) struct SeriesCache(AtomicU64);

impl SeriesCache {
    pub(crate) fn get(&self, batcher: u32) -> Option<SeriesRef> {
        let v = self.0.load(Ordering::Relaxed);
        (v >> 32 == u64::from(batcher) && batcher != 0).then_some(SeriesRef(v as u32))
    }

    pub(crate) fn set(&self, batcher: u32, r: SeriesRef) {
        self.0
            .store(u64::from(batcher) << 32 | u64::from(r.0), Ordering::Relaxed);
    }
}

impl Clone for SeriesCache {
    fn clone(&self) -> Self {
        SeriesCache(AtomicU64::new(self.0.load(Ordering::Relaxed)))
    }
}

impl PartialEq for SeriesCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// What a sampling round produced: values plus each family's metadata.
///
/// A round made with [`Samples::recycle`] takes over the label sets of an
/// earlier one wherever the samplers report the same series at the same
/// place (they report in a stable order), so a steady host costs no
/// label allocations per round.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    /// Values, in the order the samplers reported them.
    pub observations: Vec<Observation>,
    /// One entry per metric family reported.
    pub metadata: Vec<MetricMetadata>,
    /// An earlier round's observations, by position; taken as reused.
    previous: Vec<Observation>,
    previous_metadata: Vec<MetricMetadata>,
    /// Where in `previous` the next observation is looked for.
    previous_at: usize,
    /// Hashes of the family names declared this round.
    declared: HashSet<u64, BuildHasherDefault<NameHashHasher>>,
}

/// A family entry whose strings have been moved out.
fn empty_metadata(kind: MetricKind) -> MetricMetadata {
    MetricMetadata {
        name: String::new(),
        kind,
        help: String::new(),
        unit: String::new(),
    }
}

/// FNV-1a of a family name: cheap, and a collision only costs a search.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Hashes the [`name_hash`] of a name, which is a hash already, to
/// itself: a set of them needs no second hash.
#[derive(Debug, Default, Clone)]
struct NameHashHasher(u64);

impl Hasher for NameHashHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64s are hashed with it; anything else still hashes.
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// How far past the expected place a reused series is looked for, so a
/// sampler that reports a few series more or fewer than last time (a
/// connection state that came or went) does not leave every later one
/// without its earlier label set.
const LOOK_AHEAD: usize = 32;

impl Samples {
    /// An empty round that reuses this one's label sets and families
    /// where the samplers report them again in the same order.
    pub fn recycle(mut self) -> Samples {
        let mut observations = std::mem::take(&mut self.previous);
        observations.clear();
        let mut metadata = std::mem::take(&mut self.previous_metadata);
        metadata.clear();
        Samples {
            observations,
            metadata,
            previous: self.observations,
            previous_metadata: self.metadata,
            previous_at: 0,
            declared: {
                let mut d = self.declared;
                d.clear();
                d
            },
        }
    }

    /// Declares a metric family (type, help, unit) once per round.
    pub fn family(&mut self, name: &str, kind: MetricKind, help: &str, unit: &str) {
        self.declare(name, kind, unit, Some(help), || help.to_string());
    }

    /// [`Samples::family`] for a family whose help text follows from its
    /// name: `help` is called only when the round before did not declare
    /// the same name, kind and unit at this place.
    pub fn family_with_help(
        &mut self,
        name: &str,
        kind: MetricKind,
        unit: &str,
        help: impl FnOnce() -> String,
    ) {
        self.declare(name, kind, unit, None, help);
    }

    /// Declares a family once per round, taking over the round before's
    /// metadata at this place when it is the same (name, kind, unit, and
    /// the help text when `same_help` gives one to compare).
    fn declare(
        &mut self,
        name: &str,
        kind: MetricKind,
        unit: &str,
        same_help: Option<&str>,
        help: impl FnOnce() -> String,
    ) {
        if self.declared(name) {
            return;
        }
        if let Some(old) = self.previous_metadata.get_mut(self.metadata.len()) {
            if old.name == name
                && old.kind == kind
                && old.unit == unit
                && same_help.is_none_or(|h| old.help == h)
            {
                let m = std::mem::replace(old, empty_metadata(kind));
                self.metadata.push(m);
                return;
            }
        }
        self.metadata.push(MetricMetadata {
            name: name.to_string(),
            kind,
            help: help(),
            unit: unit.to_string(),
        });
    }

    /// Whether this round declared the family `name` already; a name not
    /// seen is noted as declared. Names are remembered by a hash, so only a
    /// name whose hash was seen is compared with the families declared.
    fn declared(&mut self, name: &str) -> bool {
        let hash = name_hash(name);
        if self.declared.insert(hash) {
            return false;
        }
        self.metadata.iter().any(|m| m.name == name)
    }

    /// Reports one value of `metric` with the given labels.
    pub fn push(&mut self, metric: &str, labels: &[(&str, &str)], value: f64) {
        self.push_sorted(&SortedPairs::new(metric, labels, None), value);
    }

    /// Reports the buckets of the histogram series `bucket` with `labels`:
    /// for each `(le, value)` the same as `push(bucket, labels + [("le",
    /// le)], value)`, but with the labels sorted once for all of them.
    /// Every `le` must be non-empty.
    pub(crate) fn push_buckets<'a>(
        &mut self,
        bucket: &str,
        labels: &[(&str, &str)],
        buckets: impl IntoIterator<Item = (&'a str, f64)>,
    ) {
        // The `le` slot's place in the sort depends on its value only when
        // another pair is also named `le` (the caller's mistake): those
        // buckets take the general path.
        if labels.iter().any(|(n, v)| *n == LE && !v.is_empty()) {
            let mut with_le = Vec::with_capacity(labels.len() + 1);
            with_le.extend_from_slice(labels);
            with_le.push((LE, ""));
            for (le, value) in buckets {
                with_le[labels.len()].1 = le;
                self.push(bucket, &with_le, value);
            }
            return;
        }
        let mut want = SortedPairs::new(bucket, labels, Some((LE, "+Inf")));
        let slot = want
            .pairs()
            .iter()
            .position(|(n, _)| *n == LE)
            .expect("the le pair was put in");
        // Whether the bucket just pushed is the earlier round's observation
        // before `previous_at`: then the earlier round's next bucket, if it
        // is one, differs from `want` in `le` alone, which is all there is
        // left to compare.
        let mut reused = false;
        for (k, (le, value)) in buckets.into_iter().enumerate() {
            debug_assert!(!le.is_empty(), "an empty le would drop the label");
            want.pairs_mut()[slot].1 = le;
            let at = self.previous_at;
            let next = self.previous.get(at).is_some_and(|o| {
                o.next_bucket && o.labels.iter().nth(slot).is_some_and(|l| l.value == le)
            });
            if reused && next {
                self.take_previous(at, value);
            } else {
                reused = self.push_sorted(&want, value);
            }
            if let Some(o) = self.observations.last_mut() {
                o.next_bucket = k > 0;
            }
        }
    }

    /// Pushes the series `want` names: the earlier round's label set when
    /// it is the same, else one built from `want`. True if it was the
    /// earlier round's.
    fn push_sorted(&mut self, want: &SortedPairs<'_>, value: f64) -> bool {
        let reused = self.reuse(|old| want.is(old), value);
        if !reused {
            self.observations
                .push(Observation::new(want.to_labels(), value));
        }
        reused
    }

    /// Reports one value of a series whose labels are already built.
    pub fn push_labels(&mut self, labels: Labels, value: f64) {
        if !self.reuse(|old| *old == labels, value) {
            self.observations.push(Observation::new(labels, value));
        }
    }

    /// Pushes the earlier round's observation of the series `is_it`
    /// recognises, found at or a little past where the earlier round
    /// stood, with `value`; false if there is none.
    fn reuse(&mut self, is_it: impl Fn(&Labels) -> bool, value: f64) -> bool {
        let from = self.previous_at.min(self.previous.len());
        let to = from.saturating_add(LOOK_AHEAD).min(self.previous.len());
        let Some(i) = (from..to).find(|&i| is_it(&self.previous[i].labels)) else {
            return false;
        };
        self.take_previous(i, value);
        true
    }

    /// Pushes the earlier round's observation `i` with `value`; the
    /// earlier round then stands past it.
    fn take_previous(&mut self, i: usize, value: f64) {
        let old = &mut self.previous[i];
        let reused = Observation {
            labels: std::mem::take(&mut old.labels),
            value,
            series: std::mem::take(&mut old.series),
            next_bucket: false,
        };
        self.observations.push(reused);
        self.previous_at = i + 1;
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

/// The `le` label of histogram buckets.
const LE: &str = "le";

/// Most pairs (`__name__` included) a push sorts on the stack; one with
/// more sorts them in a vector.
const INLINE_PAIRS: usize = 8;

/// A push's metric name and non-empty pairs, sorted as [`Labels::new`]
/// sorts them (by name, then value), so that a label set is the one the
/// push would build exactly when it equals these pair by pair: one pass
/// of compares, no searches, and no allocation for a push of up to
/// [`INLINE_PAIRS`] pairs.
struct SortedPairs<'a> {
    inline: [(&'a str, &'a str); INLINE_PAIRS],
    /// How many of `inline` are used; unused once `spilled` holds them.
    len: usize,
    /// All the pairs, when there are more than fit `inline`.
    spilled: Vec<(&'a str, &'a str)>,
}

impl<'a> SortedPairs<'a> {
    /// `(__name__, metric)`, the non-empty `pairs` and `extra`, sorted.
    fn new(
        metric: &'a str,
        pairs: &[(&'a str, &'a str)],
        extra: Option<(&'a str, &'a str)>,
    ) -> Self {
        let mut sorted = SortedPairs {
            inline: [("", ""); INLINE_PAIRS],
            len: 0,
            spilled: Vec::new(),
        };
        let given = pairs.iter().copied().filter(|(_, v)| !v.is_empty());
        for pair in std::iter::once((METRIC_NAME_LABEL, metric))
            .chain(given)
            .chain(extra)
        {
            if sorted.spilled.is_empty() && sorted.len < INLINE_PAIRS {
                sorted.inline[sorted.len] = pair;
                sorted.len += 1;
            } else {
                if sorted.spilled.is_empty() {
                    sorted.spilled.reserve(pairs.len() + 2);
                    sorted
                        .spilled
                        .extend_from_slice(&sorted.inline[..sorted.len]);
                }
                sorted.spilled.push(pair);
            }
            // Insertion sort: samplers give few pairs, often in order.
            let sorting = sorted.pairs_mut();
            let mut i = sorting.len() - 1;
            while i > 0 && pair_before(sorting[i], sorting[i - 1]) {
                sorting.swap(i, i - 1);
                i -= 1;
            }
        }
        sorted
    }

    fn pairs(&self) -> &[(&'a str, &'a str)] {
        if self.spilled.is_empty() {
            &self.inline[..self.len]
        } else {
            &self.spilled
        }
    }

    fn pairs_mut(&mut self) -> &mut [(&'a str, &'a str)] {
        if self.spilled.is_empty() {
            &mut self.inline[..self.len]
        } else {
            &mut self.spilled
        }
    }

    /// Whether `l` is the label set these pairs make.
    fn is(&self, l: &Labels) -> bool {
        l.len() == self.pairs().len()
            && l.iter()
                .zip(self.pairs())
                .all(|(l, (n, v))| l.name == *n && l.value == *v)
    }

    /// The label set these pairs make.
    fn to_labels(&self) -> Labels {
        Labels::from_unsorted(
            self.pairs()
                .iter()
                .map(|(n, v)| Label {
                    name: (*n).to_string(),
                    value: (*v).to_string(),
                })
                .collect(),
        )
    }
}

/// Whether `a` sorts before `b` as [`Label`]s do: by name, then value.
/// Names mostly differ in their first byte, which is looked at first.
fn pair_before(a: (&str, &str), b: (&str, &str)) -> bool {
    match (a.0.as_bytes().first(), b.0.as_bytes().first()) {
        (Some(x), Some(y)) if x != y => x < y,
        _ => a < b,
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
    /// Most netlink dumps one connection sample is split into.
    pub connections_parallelism: usize,
    /// How connections are counted: BPF (the table walk or the TCP iterator), netlink or /proc.
    pub connections_method: connections::ConnectionMethod,
}

impl Default for SamplerToggles {
    fn default() -> Self {
        SamplerToggles {
            host: true,
            system: true,
            connections: true,
            connections_max_ports: connections::DEFAULT_MAX_PORTS,
            connections_parallelism: connections::DEFAULT_PARALLELISM,
            connections_method: connections::ConnectionMethod::Auto,
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
    /// Every built-in sampler, reading the host at `root` (connections
    /// counted the `auto` way).
    pub fn new(root: std::path::PathBuf) -> Self {
        Self::with(root, &SamplerToggles::default(), None, Vec::new())
            .expect("auto loads nothing when the samplers are made")
    }

    /// The samplers `toggles` turns on, plus a StatsD listener's state and
    /// access-log tailers. Fails only when `connections_method` is `bpf`
    /// and neither BPF way (table walk, TCP iterator) can be loaded here.
    pub fn with(
        root: std::path::PathBuf,
        toggles: &SamplerToggles,
        statsd: Option<statsd::StatsdState>,
        access_logs: Vec<access_log::AccessLogTailer>,
    ) -> Result<Self, connections_bpf::BpfError> {
        let connections = toggles
            .connections
            .then(|| {
                connections::ConnectionSampler::with_max_ports(
                    root.clone(),
                    toggles.connections_max_ports,
                )
                .with_parallelism(toggles.connections_parallelism)
                .with_method(toggles.connections_method)
            })
            .transpose()?;
        Ok(SamplerSet {
            host: toggles.host.then(|| host::HostSampler::new(root.clone())),
            system: toggles.system.then(|| system::SystemSampler::new(root)),
            connections,
            statsd,
            access_logs,
            probes: None,
        })
    }

    /// Adds the results of running probes to every round.
    pub fn with_probes(mut self, probes: crate::probes::ProbeSet) -> Self {
        self.probes = Some(probes);
        self
    }

    /// How many netlink dumps the connection sampler's last round ran side
    /// by side (0: it read /proc), or None when it is off.
    pub fn connection_dumps(&self) -> Option<usize> {
        self.connections
            .as_ref()
            .map(connections::ConnectionSampler::last_dumps)
    }

    /// BPF table-walk passes the TCP iterator had to count instead, so
    /// far (0 when connections are off or BPF is not loaded).
    pub fn connection_walk_fallbacks(&self) -> u64 {
        self.connections
            .as_ref()
            .map_or(0, connections::ConnectionSampler::walk_fallbacks)
    }

    /// How the connection sampler's last round counted ("bpf", "netlink"
    /// or "proc"), or None when it is off or has not counted.
    pub fn connection_method(&self) -> Option<&'static str> {
        self.connections
            .as_ref()
            .and_then(connections::ConnectionSampler::last_method)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn round(out: &mut Samples, cpus: &[&str], v: f64) {
        out.family(
            "node_cpu_seconds_total",
            MetricKind::Counter,
            "CPU.",
            "seconds",
        );
        for cpu in cpus {
            out.push(
                "node_cpu_seconds_total",
                &[("mode", "idle"), ("cpu", cpu)],
                v,
            );
        }
        out.push("node_load1", &[("empty", "")], v);
    }

    #[test]
    fn the_connection_method_asked_for_is_the_one_a_round_uses() {
        let only_connections = |method| SamplerToggles {
            host: false,
            system: false,
            connections_method: method,
            ..SamplerToggles::default()
        };
        let root = std::path::PathBuf::from("/");
        for (method, expected) in [
            (connections::ConnectionMethod::Proc, ["proc"].as_slice()),
            // A sandbox that refuses netlink reads /proc.
            (connections::ConnectionMethod::Netlink, &["netlink", "proc"]),
        ] {
            let mut set =
                SamplerSet::with(root.clone(), &only_connections(method), None, Vec::new())
                    .expect("netlink and proc need nothing loaded");
            assert_eq!(set.connection_method(), None, "no round yet");
            let failed = set.sample(&mut Samples::default());
            assert!(failed.is_empty(), "{method:?}: {failed:?}");
            let used = set.connection_method();
            assert!(
                used.is_some_and(|m| expected.contains(&m)),
                "{method:?}: {used:?}"
            );
        }
        // auto: netlink while the host has few sockets (BPF is
        // loaded only once a round counted thousands).
        let mut set = SamplerSet::with(
            root,
            &only_connections(connections::ConnectionMethod::Auto),
            None,
            Vec::new(),
        )
        .expect("auto never fails");
        assert!(set.sample(&mut Samples::default()).is_empty());
        assert!(
            matches!(set.connection_method(), Some("netlink" | "bpf")),
            "{:?}",
            set.connection_method()
        );
        let off = SamplerToggles {
            connections: false,
            ..only_connections(connections::ConnectionMethod::Bpf)
        };
        let set = SamplerSet::with(std::path::PathBuf::from("/"), &off, None, Vec::new())
            .expect("bpf is not loaded when connections are off");
        assert_eq!(set.connection_method(), None);
    }

    #[test]
    fn a_recycled_round_reuses_label_sets_and_reports_the_same() {
        let mut first = Samples::default();
        round(&mut first, &["0", "1"], 1.0);
        let fresh = first.clone();
        let mut second = first.recycle();
        round(&mut second, &["0", "1"], 2.0);
        assert_eq!(second.observations.len(), fresh.observations.len());
        for (a, b) in second.observations.iter().zip(&fresh.observations) {
            assert_eq!(a.labels, b.labels);
            assert_eq!(a.value, 2.0);
        }
        assert_eq!(second.metadata, fresh.metadata);
        // A series that appears in the middle shifts the rest: they are
        // built again, and still right.
        let mut third = second.recycle();
        round(&mut third, &["0", "2", "1"], 3.0);
        assert_eq!(third.observations.len(), 4);
        assert_eq!(
            third.value_of("node_cpu_seconds_total", &[("cpu", "2"), ("mode", "idle")]),
            Some(3.0)
        );
        assert_eq!(third.value_of("node_load1", &[]), Some(3.0));
        assert_eq!(third.metadata.len(), 1);
        // Series after one that came or went keep their earlier labels.
        let mut fourth = third.recycle();
        round(&mut fourth, &["0", "1"], 4.0);
        let mut fifth = fourth.recycle();
        round(&mut fifth, &["0", "2", "1"], 5.0);
        let shifted = fifth
            .previous
            .iter()
            .filter(|o| o.labels.is_empty())
            .count();
        assert_eq!(shifted, 3, "cpu 0, cpu 1 and node_load1 reused");
        assert_eq!(fifth.value_of("node_load1", &[]), Some(5.0));
    }

    #[test]
    fn a_family_is_declared_once_per_round_and_its_help_made_only_when_new() {
        let mut first = Samples::default();
        let mut made = 0;
        for name in ["a", "b", "a", "c", "b"] {
            first.family_with_help(name, MetricKind::Gauge, "", || {
                made += 1;
                format!("{name} help.")
            });
        }
        first.family("c", MetricKind::Gauge, "C again.", "");
        let names: Vec<&str> = first.metadata.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(made, 3);
        let mut second = first.clone().recycle();
        for name in ["a", "b", "d"] {
            second.family_with_help(name, MetricKind::Gauge, "", || {
                made += 1;
                format!("{name} help.")
            });
        }
        // "d" stands where "c" stood: made anew.
        assert_eq!(made, 4);
        assert_eq!(second.metadata[0], first.metadata[0]);
        assert_eq!(second.metadata[2].help, "d help.");
        // A different unit is a different declaration.
        let mut third = second.recycle();
        third.family_with_help("a", MetricKind::Gauge, "bytes", || "A.".into());
        assert_eq!(
            (
                third.metadata[0].unit.as_str(),
                third.metadata[0].help.as_str()
            ),
            ("bytes", "A.")
        );
    }

    /// Whether a push of `metric` with `pairs` may take over `l`.
    fn same_series(l: &Labels, metric: &str, pairs: &[(&str, &str)]) -> bool {
        SortedPairs::new(metric, pairs, None).is(l)
    }

    #[test]
    fn only_the_same_label_set_counts_as_the_same_series() {
        let l = Labels::new("m", [("a", "1"), ("b", "2")]);
        assert!(same_series(&l, "m", &[("b", "2"), ("a", "1")]));
        assert!(same_series(&l, "m", &[("b", "2"), ("c", ""), ("a", "1")]));
        assert!(!same_series(&l, "n", &[("a", "1"), ("b", "2")]));
        assert!(!same_series(&l, "m", &[("a", "1"), ("b", "3")]));
        assert!(!same_series(&l, "m", &[("a", "2"), ("b", "1")]));
        assert!(!same_series(&l, "m", &[("b", "1"), ("a", "2")]));
        assert!(!same_series(&l, "m", &[("a", "1")]));
        assert!(!same_series(&l, "m", &[("a", "1"), ("a", "1")]));
        assert!(!same_series(&l, "m", &[("a", "1"), ("b", "2"), ("c", "3")]));
        assert!(!same_series(&l, "m", &[("a", "1"), ("c", "2")]));
        let named = Labels::new("m", [("a", "1")]);
        assert!(!same_series(&named, "m", &[("__name__", "m")]));
        assert!(!same_series(&named, "m", &[("a", "1"), ("__name__", "m")]));
        // Names that sort before `__name__` (upper case) and repeated names
        // compare as the label set they would build.
        let upper = Labels::new("m", [("B", "1"), ("a", "2")]);
        assert!(same_series(&upper, "m", &[("a", "2"), ("B", "1")]));
        assert!(!same_series(&upper, "m", &[("a", "1"), ("B", "2")]));
        let twice = Labels::new("m", [("a", "2"), ("a", "1")]);
        assert!(same_series(&twice, "m", &[("a", "1"), ("a", "2")]));
        assert!(!same_series(&twice, "m", &[("a", "1"), ("a", "1")]));
        // More pairs than are sorted on the stack, given in reverse, with
        // empty values among them; or any count around that.
        let many: Vec<(String, String)> = (0..3 * INLINE_PAIRS)
            .rev()
            .map(|i| {
                (
                    format!("l{i:02}"),
                    if i % 5 == 0 { "" } else { "v" }.to_string(),
                )
            })
            .collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(n, v)| (&**n, &**v)).collect();
        for n in 0..many.len() {
            let l = Labels::new("m", many[..n].iter().copied());
            assert_eq!(SortedPairs::new("m", &many[..n], None).to_labels(), l);
            assert!(same_series(&l, "m", &many[..n]), "{n} pairs");
            let mut changed = many[..n].to_vec();
            if let Some(last) = changed.last_mut() {
                last.1 = "w";
                assert!(!same_series(&l, "m", &changed), "{n} pairs");
                let dropped_empty = many[n - 1].1.is_empty();
                assert_eq!(same_series(&l, "m", &many[..n - 1]), dropped_empty);
            }
            assert!(!same_series(&l, "m", &many[..=n]) || many[n].1.is_empty());
        }
    }

    #[test]
    fn a_push_takes_over_a_label_set_exactly_when_it_would_build_the_same() {
        // Every list of up to three pairs over a few names (one sorting
        // before `__name__`, `__name__` itself) and values (empty
        // included), against every label set any of them builds.
        let names = ["a", "b", "A", "__name__"];
        let values = ["", "1", "2"];
        let pairs: Vec<(&str, &str)> = names
            .iter()
            .flat_map(|n| values.iter().map(move |v| (*n, *v)))
            .collect();
        let mut inputs: Vec<(&str, Vec<(&str, &str)>)> = Vec::new();
        let mut lists: Vec<Vec<(&str, &str)>> = vec![Vec::new()];
        for _ in 0..3 {
            let longer: Vec<_> = lists
                .iter()
                .filter(|l| l.len() == lists.last().map_or(0, Vec::len))
                .flat_map(|l| {
                    pairs.iter().map(move |p| {
                        let mut l = l.clone();
                        l.push(*p);
                        l
                    })
                })
                .collect();
            lists.extend(longer);
        }
        for metric in ["m", "n"] {
            for l in &lists {
                inputs.push((metric, l.clone()));
            }
        }
        let mut built: Vec<Labels> = inputs
            .iter()
            .map(|(m, p)| Labels::new(m, p.iter().copied()))
            .collect();
        built.sort();
        built.dedup();
        assert!(built.len() > 300, "{}", built.len());
        for (metric, p) in &inputs {
            let want = SortedPairs::new(metric, p, None);
            let made = Labels::new(metric, p.iter().copied());
            assert_eq!(want.to_labels(), made, "{metric} {p:?}");
            for l in &built {
                assert_eq!(want.is(l), *l == made, "{metric} {p:?} against {l}");
            }
        }
    }

    #[test]
    fn a_recycled_round_never_reports_a_value_under_another_series_labels() {
        let round = |out: &mut Samples, swap: bool, v: f64| {
            let (x, y) = if swap { ("2", "1") } else { ("1", "2") };
            out.push("m", &[("a", x), ("b", y)], v);
            out.push("m", &[("b", y), ("a", x), ("c", "")], v + 1.0);
            out.push("m", &[("c", "3")], v + 2.0);
            out.push("n", &[("c", "3")], v + 3.0);
        };
        let mut first = Samples::default();
        round(&mut first, false, 1.0);
        let mut second = first.recycle();
        round(&mut second, true, 10.0);
        let mut fresh = Samples::default();
        round(&mut fresh, true, 10.0);
        assert_eq!(second.observations, fresh.observations);
        // Only the two series that are the same as before were taken over.
        let taken = second.previous.iter().filter(|o| o.labels.is_empty());
        assert_eq!(taken.count(), 2);
        // A series reported with fewer labels, or under another name, at
        // the same place is built anew too.
        let mut third = second.recycle();
        third.push("m", &[("a", "2")], 0.0);
        third.push("n", &[("b", "1"), ("a", "2")], 0.0);
        assert_eq!(third.observations[0].labels, Labels::new("m", [("a", "2")]));
        assert_eq!(
            third.observations[1].labels,
            Labels::new("n", [("a", "2"), ("b", "1")])
        );
    }

    #[test]
    fn buckets_pushed_together_are_the_pushes_one_by_one() {
        let les = ["0.1", "1", "+Inf"];
        let cases: [&[(&str, &str)]; 6] = [
            &[],
            // More than sorted on the stack.
            &[
                ("t9", "9"),
                ("t8", "8"),
                ("t7", "7"),
                ("t6", "6"),
                ("t5", ""),
                ("t4", "4"),
                ("t3", "3"),
                ("t2", "2"),
                ("t1", "1"),
            ],
            &[("vhost", "a"), ("code", "")],
            &[("A", "x"), ("z", "y")],
            // The caller's mistake, still reported as a push would.
            &[("le", "5")],
            &[("__name__", "x_bucket")],
        ];
        for labels in cases {
            let one_by_one = |out: &mut Samples, v: f64| {
                for (i, le) in les.iter().enumerate() {
                    let mut with_le = labels.to_vec();
                    with_le.push(("le", le));
                    out.push("x_bucket", &with_le, v + i as f64);
                }
            };
            let together = |out: &mut Samples, v: f64| {
                let values = les.iter().enumerate().map(|(i, le)| (*le, v + i as f64));
                out.push_buckets("x_bucket", labels, values);
            };
            let mut a = Samples::default();
            one_by_one(&mut a, 1.0);
            let mut b = Samples::default();
            together(&mut b, 1.0);
            assert_eq!(a.observations, b.observations, "{labels:?}");
            // Recycled rounds, each way after the other.
            let mut a = a.recycle();
            together(&mut a, 2.0);
            let mut b = b.recycle();
            one_by_one(&mut b, 2.0);
            assert_eq!(a.observations, b.observations, "{labels:?}");
            let mut c = Samples::default();
            one_by_one(&mut c, 2.0);
            assert_eq!(a.observations, c.observations, "{labels:?}");
        }
    }

    #[test]
    fn buckets_taken_over_by_le_alone_are_the_right_ones() {
        // Rounds of histograms whose labels, bucket layouts and order
        // change from round to round: each round must equal the same
        // pushes into a fresh round, whatever the round before held.
        type Round<'a> = &'a [(&'a str, &'a [&'a str])];
        let rounds: [Round<'_>; 7] = [
            &[("a", &["1", "2", "+Inf"]), ("b", &["1", "2", "+Inf"])],
            &[("a", &["1", "2", "+Inf"]), ("b", &["1", "2", "+Inf"])],
            // Another route first: its first bucket is compared whole.
            &[("b", &["1", "2", "+Inf"]), ("a", &["1", "2", "+Inf"])],
            // A bucket gone, one added, one moved.
            &[("b", &["1", "+Inf"]), ("a", &["1", "2", "3", "+Inf"])],
            &[("b", &["2", "1", "+Inf"]), ("a", &["1", "2", "3", "+Inf"])],
            // Two histograms of one route in a row.
            &[("a", &["1", "2", "+Inf"]), ("a", &["1", "2", "+Inf"])],
            &[("a", &["1", "2", "+Inf"]), ("a", &["1", "+Inf"])],
        ];
        let push = |out: &mut Samples, round: Round<'_>, v: f64| {
            for (route, les) in round {
                let values = les.iter().enumerate().map(|(i, le)| (*le, v + i as f64));
                out.push_buckets("x_bucket", &[("route", route), ("job", "")], values);
                out.push("x_count", &[("route", route)], v);
            }
        };
        let mut carried = Samples::default();
        for (n, round) in rounds.iter().enumerate() {
            carried = carried.recycle();
            push(&mut carried, round, n as f64);
            let mut fresh = Samples::default();
            push(&mut fresh, round, n as f64);
            assert_eq!(carried.observations, fresh.observations, "round {n}");
        }
        // After an unchanged round every series was taken over.
        let mut again = carried.recycle();
        push(&mut again, rounds[6], 7.0);
        assert!(again.previous.iter().all(|o| o.labels.is_empty()));
    }
}
