//! Active probes, as blackbox_exporter does them but inside the agent: each
//! configured probe checks an HTTP(S) URL or a TCP port on its own interval
//! and its cumulative results are reported with the samplers' round. The
//! probes only ever contact their configured targets (and the resolver);
//! they never send, batch or store samples: [`ProbeSet::sample`] hands the
//! current totals to whoever builds the round.
//!
//! Series, each labelled `probe=<name>`:
//! - `nines_probe_success_total`, `nines_probe_failure_total{reason}`:
//!   attempts by outcome. The reasons a probe can produce are reported at
//!   0 from the start, so `rate()` sees the first failure.
//! - `nines_probe_duration_seconds{phase}`: histogram of `total` for every
//!   attempt, successful or not (as blackbox_exporter records it; a latency
//!   SLO that should count only successes divides by the success counter or
//!   uses `nines_probe_up`), and of `connect`, `tls` and `ttfb` for every
//!   attempt that completed that phase.
//! - `nines_probe_up`: 1 if the last attempt succeeded, else 0.
//! - `nines_probe_http_status_code`: the last response's status, 0 if none.
//! - `nines_probe_tls_cert_expiry_timestamp_seconds`: the last presented
//!   leaf certificate's notAfter; kept through failures that happen before
//!   a handshake, since the certificate did not change because DNS failed.
//! - `nines_probe_last_run_timestamp_seconds`: when the last attempt ended.
//! - `nines_probe_info{kind, target}`: 1, to show what a probe checks.
//!
//! The gauges appear after the first attempt, so a restart does not report
//! a probe as down before it has run.

mod cert;
pub mod config;
mod exec;
mod tls;
pub use tls::system_roots_blocking;

#[cfg(test)]
mod tests;

/// Upper bounds of probe durations, in seconds: the latency buckets every
/// request-latency source shares.
pub use crate::samplers::histogram::LATENCY_BUCKETS_SECONDS as DURATION_BUCKETS;
pub use config::{
    DEFAULT_EXPECT_STATUS, DEFAULT_PROBE_INTERVAL, DEFAULT_PROBE_TIMEOUT, MAX_PROBE_INTERVAL,
    MIN_PROBE_INTERVAL, ProbeConfig, ProbeConfigError, ProbeKind, StatusSpec, ValidProbe,
    validate_all,
};
pub use exec::{BODY_LIMIT, FailureReason, MAX_REDIRECTS, ProbeFailure, ProbeOutcome, run_once};

use crate::samplers::Samples;
use crate::samplers::histogram::Histogram;
use nines_shared::MetricKind;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

const SUCCESS: &str = "nines_probe_success_total";
const FAILURE: &str = "nines_probe_failure_total";
const DURATION: &str = "nines_probe_duration_seconds";
const UP: &str = "nines_probe_up";
const STATUS: &str = "nines_probe_http_status_code";
const CERT_EXPIRY: &str = "nines_probe_tls_cert_expiry_timestamp_seconds";
const LAST_RUN: &str = "nines_probe_last_run_timestamp_seconds";
const INFO: &str = "nines_probe_info";

/// The `phase` label values, in the order of [`Stats::durations`].
const PHASES: [&str; 4] = ["total", "connect", "tls", "ttfb"];

/// Totals since start for one probe.
struct Stats {
    success: u64,
    /// Indexed by [`FailureReason::index`].
    failures: [u64; FailureReason::ALL.len()],
    /// Indexed like [`PHASES`].
    durations: [Histogram; 4],
    /// Whether the last attempt succeeded; None before the first.
    up: Option<bool>,
    status: Option<u16>,
    cert_not_after: Option<i64>,
    last_run: Option<f64>,
}

/// One probe's fixed facts and its totals.
struct ProbeState {
    name: String,
    kind: &'static str,
    target: String,
    /// Reasons this probe can fail with, reported even at 0.
    reasons: Vec<FailureReason>,
    /// Phases this probe can time, reported even when empty.
    phases: Vec<usize>,
    http: bool,
    stats: Mutex<Stats>,
}

impl ProbeState {
    fn new(p: &ValidProbe) -> Self {
        use FailureReason as R;
        let http = p.kind == ProbeKind::Http;
        let mut reasons = vec![R::Dns, R::Connect, R::Timeout];
        let mut phases = vec![0, 1];
        if http {
            reasons.extend([R::HttpStatus, R::Io]);
            phases.push(3);
            if p.may_use_tls() {
                reasons.extend([R::Tls, R::TlsVerify]);
                phases.push(2);
            }
            if p.matches_body() {
                reasons.push(R::BodyMismatch);
            }
        }
        reasons.sort();
        phases.sort();
        ProbeState {
            name: p.name.clone(),
            kind: p.kind.as_str(),
            target: p.target.clone(),
            reasons,
            phases,
            http,
            stats: Mutex::new(Stats {
                success: 0,
                failures: [0; FailureReason::ALL.len()],
                durations: std::array::from_fn(|_| Histogram::new(&DURATION_BUCKETS)),
                up: None,
                status: None,
                cert_not_after: None,
                last_run: None,
            }),
        }
    }

    fn stats(&self) -> std::sync::MutexGuard<'_, Stats> {
        // Stats are plain counters, consistent after any single update; a
        // panic elsewhere while holding the lock leaves nothing half-done
        // that matters more than losing the probe's metrics.
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds one attempt's outcome, finished at `at` (Unix seconds).
    fn record(&self, o: &ProbeOutcome, at: f64) {
        let was_up = {
            let mut s = self.stats();
            let was = s.up;
            match &o.failure {
                None => s.success += 1,
                Some(f) => s.failures[f.reason.index()] += 1,
            }
            s.durations[0].observe(o.total.as_secs_f64());
            for (i, phase) in [(1, o.connect), (2, o.tls), (3, o.ttfb)] {
                if let Some(d) = phase {
                    s.durations[i].observe(d.as_secs_f64());
                }
            }
            s.up = Some(o.success());
            s.status = o.status;
            if o.cert_not_after.is_some() {
                s.cert_not_after = o.cert_not_after;
            }
            s.last_run = Some(at);
            was
        };
        // Log changes, not every attempt: a probe down for a day would
        // otherwise log every interval.
        match (&o.failure, was_up) {
            (Some(f), Some(true) | None) => tracing::warn!(
                probe = %self.name,
                reason = f.reason.as_str(),
                error = %f.detail,
                "probe failing"
            ),
            (Some(f), Some(false)) => tracing::debug!(
                probe = %self.name,
                reason = f.reason.as_str(),
                error = %f.detail,
                "probe still failing"
            ),
            (None, Some(false)) => tracing::info!(probe = %self.name, "probe recovered"),
            (None, _) => {}
        }
    }

    fn sample(&self, out: &mut Samples) {
        let s = self.stats();
        let probe = [("probe", self.name.as_str())];
        out.push(
            INFO,
            &[
                ("probe", &self.name),
                ("kind", self.kind),
                ("target", &self.target),
            ],
            1.0,
        );
        out.push(SUCCESS, &probe, s.success as f64);
        for r in FailureReason::ALL {
            let n = s.failures[r.index()];
            if n > 0 || self.reasons.contains(&r) {
                out.push(
                    FAILURE,
                    &[("probe", &self.name), ("reason", r.as_str())],
                    n as f64,
                );
            }
        }
        for (i, phase) in PHASES.iter().enumerate() {
            let h = &s.durations[i];
            if h.count() > 0 || self.phases.contains(&i) {
                h.report(out, DURATION, &[("probe", &self.name), ("phase", phase)]);
            }
        }
        if let Some(up) = s.up {
            out.push(UP, &probe, if up { 1.0 } else { 0.0 });
            if self.http {
                out.push(STATUS, &probe, s.status.map_or(0.0, f64::from));
            }
        }
        if let Some(t) = s.cert_not_after {
            out.push(CERT_EXPIRY, &probe, t as f64);
        }
        if let Some(t) = s.last_run {
            out.push(LAST_RUN, &probe, t);
        }
    }
}

/// The running probes' results: a cheap, cloneable handle.
#[derive(Clone, Default)]
pub struct ProbeSet {
    probes: Arc<Vec<ProbeState>>,
    /// Probe tasks still running.
    running: Arc<AtomicUsize>,
}

impl ProbeSet {
    /// State for `probes`, with nothing run yet.
    fn new(probes: &[ValidProbe]) -> Self {
        ProbeSet {
            probes: Arc::new(probes.iter().map(ProbeState::new).collect()),
            running: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Reports every probe's totals so far into `out`.
    pub fn sample(&self, out: &mut Samples) {
        if self.probes.is_empty() {
            return;
        }
        declare(out);
        for p in self.probes.iter() {
            p.sample(out);
        }
    }

    /// How many probes there are.
    pub fn len(&self) -> usize {
        self.probes.len()
    }

    /// Whether there are no probes.
    pub fn is_empty(&self) -> bool {
        self.probes.is_empty()
    }

    /// How many probe tasks have not stopped yet.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    /// Records an outcome for the probe at `index`.
    fn record(&self, index: usize, o: &ProbeOutcome) {
        if let Some(p) = self.probes.get(index) {
            p.record(o, unix_now());
        }
    }
}

/// Declares every probe family once per round.
fn declare(out: &mut Samples) {
    out.family(
        SUCCESS,
        MetricKind::Counter,
        "Probe attempts that succeeded.",
        "",
    );
    out.family(
        FAILURE,
        MetricKind::Counter,
        "Probe attempts that failed, by reason.",
        "",
    );
    out.family(
        DURATION,
        MetricKind::Histogram,
        "Probe attempt duration by phase; total counts every attempt, other phases only when reached.",
        "seconds",
    );
    out.family(
        UP,
        MetricKind::Gauge,
        "1 if the last probe attempt succeeded, else 0.",
        "",
    );
    out.family(
        STATUS,
        MetricKind::Gauge,
        "HTTP status of the last probe response, 0 if there was none.",
        "",
    );
    out.family(
        CERT_EXPIRY,
        MetricKind::Gauge,
        "notAfter of the last TLS leaf certificate the target presented.",
        "seconds",
    );
    out.family(
        LAST_RUN,
        MetricKind::Gauge,
        "When the last probe attempt ended.",
        "seconds",
    );
    out.family(
        INFO,
        MetricKind::Gauge,
        "What each probe checks; always 1.",
        "",
    );
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

/// Starts one task per probe, each attempting on its own interval (the
/// first attempt at once) until `stop` turns true or its sender is dropped.
/// An attempt in progress when stopping is abandoned. Must be called from
/// within a Tokio runtime.
pub fn spawn(probes: Vec<ValidProbe>, stop: watch::Receiver<bool>) -> ProbeSet {
    let set = ProbeSet::new(&probes);
    for (index, probe) in probes.into_iter().enumerate() {
        set.running.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(probe_loop(probe, index, set.clone(), stop.clone()));
    }
    set
}

/// Decrements the running count however the task ends.
struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn probe_loop(
    probe: ValidProbe,
    index: usize,
    set: ProbeSet,
    mut stop: watch::Receiver<bool>,
) {
    let _running = Running(set.running.clone());
    let mut ticker = tokio::time::interval(probe.interval);
    // A late attempt (a stalled runtime) is not made up for: probing twice
    // in a row says nothing more about the target.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        if *stop.borrow() {
            return;
        }
        tokio::select! {
            _ = ticker.tick() => {}
            changed = stop.changed() => {
                if changed.is_err() { return; }
                continue;
            }
        }
        let outcome = tokio::select! {
            o = run_once(&probe) => o,
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() { return; }
                // A spurious change (false again): attempt on the next tick.
                continue;
            }
        };
        set.record(index, &outcome);
    }
}
