//! Self-metrics: the counters, gauges and histograms each binary keeps about
//! its own health, rendered in the text format on `/metrics`. Lock-free on
//! the hot path (atomics); labelled families take a short lock to find their
//! cell. It never stores history: that is the collector's job.

use crate::exposition::{write_header, write_sample};
use crate::model::MetricKind;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A monotonically increasing count.
#[derive(Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The current count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Clone, Default)]
pub struct Gauge(Arc<AtomicU64>);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// A histogram with fixed upper bounds, in the base unit (seconds).
#[derive(Clone)]
pub struct Histogram(Arc<HistogramCells>);

struct HistogramCells {
    bounds: Vec<f64>,
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum: Mutex<f64>,
}

impl Histogram {
    fn new(bounds: &[f64]) -> Self {
        Histogram(Arc::new(HistogramCells {
            bounds: bounds.to_vec(),
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: Mutex::new(0.0),
        }))
    }

    /// Records one observation.
    pub fn observe(&self, v: f64) {
        let c = &self.0;
        if let Some(i) = c.bounds.iter().position(|b| v <= *b) {
            c.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        c.count.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut s) = c.sum.lock() {
            *s += v;
        }
    }

    /// Number of observations so far.
    pub fn count(&self) -> u64 {
        self.0.count.load(Ordering::Relaxed)
    }
}

/// A family of counters or gauges with one or more labels: one cell per
/// combination of label values, created on first use.
#[derive(Clone)]
pub struct Labelled<T> {
    labels: &'static [&'static str],
    cells: Arc<Mutex<BTreeMap<Vec<String>, T>>>,
}

/// Counters with labels.
pub type CounterVec = Labelled<Counter>;
/// Gauges with labels.
pub type GaugeVec = Labelled<Gauge>;

impl<T: Clone + Default> Labelled<T> {
    fn new(labels: &'static [&'static str]) -> Self {
        Labelled {
            labels,
            cells: Arc::default(),
        }
    }

    /// The cell for these label values (in the order the family declared).
    pub fn with(&self, values: &[&str]) -> T {
        debug_assert_eq!(values.len(), self.labels.len());
        let key: Vec<String> = values.iter().map(|s| s.to_string()).collect();
        let mut cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
        cells.entry(key).or_default().clone()
    }

    /// Hands every cell to `v` as a sample of `name`.
    fn visit(&self, v: &mut impl Visitor, name: &str, value: impl Fn(&T) -> f64) {
        let cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
        let mut pairs: Vec<(&str, &str)> = Vec::with_capacity(self.labels.len());
        for (values, cell) in cells.iter() {
            pairs.clear();
            pairs.extend(
                self.labels
                    .iter()
                    .copied()
                    .zip(values.iter().map(String::as_str)),
            );
            v.sample(name, &pairs, value(cell));
        }
    }
}

type GaugeFn = Box<dyn Fn() -> f64 + Send + Sync>;
type GroupFn = dyn Fn() -> Vec<f64> + Send + Sync;

/// The type of a family registered with [`Registry::fn_group`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FnKind {
    /// A count that only goes up (kept elsewhere, such as the kernel's).
    Counter,
    /// A value that goes up and down.
    Gauge,
}

enum Family {
    Counter(Counter),
    CounterVec(CounterVec),
    Gauge(Gauge),
    GaugeVec(GaugeVec),
    GaugeFn(GaugeFn),
    CounterFn(GaugeFn),
    Histogram(Histogram),
    /// Family `index` of values computed together.
    Group {
        kind: FnKind,
        index: usize,
        values: Arc<GroupFn>,
    },
}

struct Entry {
    name: String,
    help: String,
    family: Family,
}

/// The set of a binary's own metrics.
#[derive(Clone, Default)]
pub struct Registry {
    entries: Arc<Mutex<Vec<Entry>>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&self, name: &str, help: &str, family: Family) {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        e.push(Entry {
            name: name.to_string(),
            help: help.to_string(),
            family,
        });
    }

    /// Registers a counter. `name` should end in `_total`.
    pub fn counter(&self, name: &str, help: &str) -> Counter {
        let c = Counter::default();
        self.push(name, help, Family::Counter(c.clone()));
        c
    }

    /// Registers a labelled counter family.
    pub fn counter_vec(
        &self,
        name: &str,
        help: &str,
        labels: &'static [&'static str],
    ) -> CounterVec {
        let v = CounterVec::new(labels);
        self.push(name, help, Family::CounterVec(v.clone()));
        v
    }

    /// Registers a gauge.
    pub fn gauge(&self, name: &str, help: &str) -> Gauge {
        let g = Gauge::default();
        self.push(name, help, Family::Gauge(g.clone()));
        g
    }

    /// Registers a labelled gauge family.
    pub fn gauge_vec(&self, name: &str, help: &str, labels: &'static [&'static str]) -> GaugeVec {
        let v = GaugeVec::new(labels);
        self.push(name, help, Family::GaugeVec(v.clone()));
        v
    }

    /// Registers a gauge whose value is computed at each scrape.
    pub fn gauge_fn(&self, name: &str, help: &str, f: impl Fn() -> f64 + Send + Sync + 'static) {
        self.push(name, help, Family::GaugeFn(Box::new(f)));
    }

    /// Registers a counter whose value is computed at each scrape (for
    /// counts kept elsewhere, such as the kernel's CPU time).
    pub fn counter_fn(&self, name: &str, help: &str, f: impl Fn() -> f64 + Send + Sync + 'static) {
        self.push(name, help, Family::CounterFn(Box::new(f)));
    }

    /// Registers a histogram with the given upper bounds (ascending).
    pub fn histogram(&self, name: &str, help: &str, bounds: &[f64]) -> Histogram {
        let h = Histogram::new(bounds);
        self.push(name, help, Family::Histogram(h.clone()));
        h
    }

    /// Registers families whose values one call of `f` computes at each
    /// scrape, in the order given (for figures read together, such as
    /// several fields of one /proc file): `f` runs once per render or
    /// visit, not once per family. Each family is `(name, help, kind)`;
    /// only counters and gauges can be computed this way, and `f` returns
    /// one value per family (a missing one is NaN).
    pub fn fn_group(
        &self,
        families: &[(&str, &str, FnKind)],
        f: impl Fn() -> Vec<f64> + Send + Sync + 'static,
    ) {
        let group: Arc<GroupFn> = Arc::new(f);
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        for (index, (name, help, kind)) in families.iter().enumerate() {
            e.push(Entry {
                name: name.to_string(),
                help: help.to_string(),
                family: Family::Group {
                    kind: *kind,
                    index,
                    values: group.clone(),
                },
            });
        }
    }

    /// Hands every family and its samples to `v`, in registration order:
    /// each family's header once, then its samples (a histogram's as
    /// `_bucket` with `le`, `_sum` and `_count`, as the text format lays
    /// them out). [`render`](Self::render) is this visit written as text,
    /// so both always agree.
    pub fn visit(&self, v: &mut impl Visitor) {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        // The values of the group being visited (its families are
        // registered next to each other).
        let mut group: Option<(*const (), Vec<f64>)> = None;
        let mut suffixed = String::new();
        for e in entries.iter() {
            match &e.family {
                Family::Counter(c) => {
                    v.family(&e.name, MetricKind::Counter, &e.help);
                    v.sample(&e.name, &[], c.get() as f64);
                }
                Family::CounterVec(c) => {
                    v.family(&e.name, MetricKind::Counter, &e.help);
                    c.visit(v, &e.name, |c| c.get() as f64);
                }
                Family::GaugeVec(g) => {
                    v.family(&e.name, MetricKind::Gauge, &e.help);
                    g.visit(v, &e.name, Gauge::get);
                }
                Family::Gauge(g) => {
                    v.family(&e.name, MetricKind::Gauge, &e.help);
                    v.sample(&e.name, &[], g.get());
                }
                Family::GaugeFn(f) => {
                    v.family(&e.name, MetricKind::Gauge, &e.help);
                    v.sample(&e.name, &[], f());
                }
                Family::CounterFn(f) => {
                    v.family(&e.name, MetricKind::Counter, &e.help);
                    v.sample(&e.name, &[], f());
                }
                Family::Group {
                    kind,
                    index,
                    values,
                } => {
                    let id = Arc::as_ptr(values) as *const ();
                    let fresh = group.as_ref().is_some_and(|(g, _)| *g == id);
                    if !fresh || *index == 0 {
                        group = Some((id, values()));
                    }
                    let value = group
                        .as_ref()
                        .and_then(|(_, vals)| vals.get(*index).copied())
                        .unwrap_or(f64::NAN);
                    let kind = match kind {
                        FnKind::Counter => MetricKind::Counter,
                        FnKind::Gauge => MetricKind::Gauge,
                    };
                    v.family(&e.name, kind, &e.help);
                    v.sample(&e.name, &[], value);
                }
                Family::Histogram(h) => {
                    v.family(&e.name, MetricKind::Histogram, &e.help);
                    let c = &h.0;
                    suffixed.clear();
                    suffixed.push_str(&e.name);
                    suffixed.push_str("_bucket");
                    let mut cumulative = 0u64;
                    for (b, n) in c.bounds.iter().zip(&c.buckets) {
                        cumulative += n.load(Ordering::Relaxed);
                        let le = crate::exposition::format_value(*b);
                        v.sample(&suffixed, &[("le", &le)], cumulative as f64);
                    }
                    let count = c.count.load(Ordering::Relaxed);
                    v.sample(&suffixed, &[("le", "+Inf")], count as f64);
                    let sum = c.sum.lock().map(|s| *s).unwrap_or(0.0);
                    suffixed.truncate(e.name.len());
                    suffixed.push_str("_sum");
                    v.sample(&suffixed, &[], sum);
                    suffixed.truncate(e.name.len());
                    suffixed.push_str("_count");
                    v.sample(&suffixed, &[], count as f64);
                }
            }
        }
    }

    /// The whole registry in the text exposition format.
    pub fn render(&self) -> String {
        let mut text = Text(String::with_capacity(4096));
        self.visit(&mut text);
        text.0
    }
}

/// What [`Registry::visit`] hands its families and samples to.
pub trait Visitor {
    /// A family starts: its name, type and help.
    fn family(&mut self, name: &str, kind: MetricKind, help: &str);
    /// One sample of the family last started: the series name (a
    /// histogram's carries its `_bucket`/`_sum`/`_count` suffix), its
    /// labels in the family's declared order, and its value.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64);
}

/// The registry as text: the visitor behind [`Registry::render`].
struct Text(String);

impl Visitor for Text {
    fn family(&mut self, name: &str, kind: MetricKind, help: &str) {
        write_header(&mut self.0, name, kind, help);
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        write_sample(&mut self.0, name, labels, value);
    }
}

/// Upper bounds for latencies of local work (commits, requests), seconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_kind_in_the_text_format() {
        let r = Registry::new();
        r.counter("a_total", "A count.").add(3);
        r.counter_vec("b_total", "By reason.", &["reason"])
            .with(&["bad"])
            .inc();
        r.gauge("c", "A gauge.").set(1.5);
        r.gauge_vec("e", "Per target.", &["target"])
            .with(&["x"])
            .set(2.0);
        let h = r.histogram("d_seconds", "Latency.", &[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(5.0);
        let text = r.render();
        assert!(text.contains("# TYPE a_total counter\na_total 3\n"));
        assert!(text.contains("b_total{reason=\"bad\"} 1\n"));
        assert!(text.contains("c 1.5\n"));
        assert!(text.contains("# TYPE e gauge\ne{target=\"x\"} 2\n"));
        assert!(text.contains("d_seconds_bucket{le=\"0.1\"} 1\n"));
        assert!(text.contains("d_seconds_bucket{le=\"1\"} 2\n"));
        assert!(text.contains("d_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("d_seconds_count 3\n"));
    }

    #[test]
    fn a_group_of_computed_families_is_computed_once_per_render() {
        use std::sync::atomic::AtomicUsize;
        let r = Registry::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        r.fn_group(
            &[
                ("rss_bytes", "Resident.", FnKind::Gauge),
                ("cpu_seconds_total", "CPU.", FnKind::Counter),
            ],
            move || {
                c.fetch_add(1, Ordering::Relaxed);
                vec![4096.0, 1.5]
            },
        );
        let text = r.render();
        assert!(text.contains("# TYPE rss_bytes gauge\nrss_bytes 4096\n"));
        assert!(text.contains("# TYPE cpu_seconds_total counter\ncpu_seconds_total 1.5\n"));
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        r.render();
        assert_eq!(calls.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_visit_sees_what_render_writes() {
        /// Writes what it is handed back as text, by other means than
        /// `render` does.
        #[derive(Default)]
        struct Lines(Vec<String>);
        impl Visitor for Lines {
            fn family(&mut self, name: &str, kind: MetricKind, _help: &str) {
                self.0.push(format!("{name} {}", kind.as_str()));
            }
            fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
                let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                self.0
                    .push(format!("{name}{{{}}} {value}", labels.join(",")));
            }
        }
        let r = Registry::new();
        r.counter_vec("b_total", "By reason.", &["reason", "where"])
            .with(&["bad", "x"])
            .add(2);
        r.histogram("d_seconds", "Latency.", &[0.1]).observe(0.5);
        r.gauge_fn("f", "Computed.", || 3.0);
        let mut seen = Lines::default();
        r.visit(&mut seen);
        assert_eq!(
            seen.0,
            [
                "b_total counter",
                "b_total{reason=bad,where=x} 2",
                "d_seconds histogram",
                "d_seconds_bucket{le=0.1} 0",
                "d_seconds_bucket{le=+Inf} 1",
                "d_seconds_sum{} 0.5",
                "d_seconds_count{} 1",
                "f gauge",
                "f{} 3",
            ]
        );
        let text = r.render();
        assert!(text.contains("b_total{reason=\"bad\",where=\"x\"} 2\n"));
        assert!(text.contains("d_seconds_bucket{le=\"+Inf\"} 1\nd_seconds_sum 0.5\n"));
    }
}
