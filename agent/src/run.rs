//! The agent's main loop: sample every interval, batch, hand batches to the
//! shipper; serve `/metrics` and `/healthz`. Also used by the collector to
//! run an agent for its own host in-process.

use crate::batch::Batcher;
use crate::config::AgentConfig;
use crate::pull::LatestRound;
use crate::samplers::{SamplerSet, Samples};
use crate::ship::{Destinations, ShipMetrics, Spooler};
use nines_shared::exposition::TEXT_CONTENT_TYPE;
use nines_shared::telemetry::{
    Counter, CounterVec, Gauge, GaugeVec, Histogram, LATENCY_BUCKETS, Registry,
};
use nines_shared::{Batch, UnixMillis};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

/// The sampling loop's own metrics.
#[derive(Clone)]
pub struct SamplingMetrics {
    rounds: Counter,
    errors: CounterVec,
    duration: Histogram,
    series: Gauge,
    connection_dumps: Gauge,
    connection_method: GaugeVec,
    walk_fallbacks: Counter,
    /// Beats after every round: the systemd watchdog's sign of life.
    liveness: crate::systemd::Liveness,
    /// The registry whose families every batch also carries, if any.
    health: Option<Registry>,
    /// Give freed heap pages back to the kernel after every round.
    release_memory: bool,
}

impl SamplingMetrics {
    /// Registers the metrics.
    pub fn register(r: &Registry) -> Self {
        SamplingMetrics {
            rounds: r.counter(
                "nines_agent_sampling_rounds_total",
                "Sampling rounds completed.",
            ),
            errors: r.counter_vec(
                "nines_agent_sampler_errors_total",
                "Sampler failures, by sampler.",
                &["sampler"],
            ),
            duration: r.histogram(
                "nines_agent_sampling_duration_seconds",
                "Time one sampling round took.",
                LATENCY_BUCKETS,
            ),
            series: r.gauge("nines_agent_series", "Series reported in the last round."),
            connection_dumps: r.gauge(
                "nines_agent_connection_dumps",
                "Netlink socket dumps the last connection sample ran side by side \
                 (1: one dump; 0: counted with BPF in the kernel, read /proc/net/tcp, \
                 or connections are off).",
            ),
            connection_method: r.gauge_vec(
                "nines_agent_connection_method",
                "How the last connection sample counted TCP sockets: 1 for the method \
                 used (bpf, netlink or proc), 0 for the others.",
                &["method"],
            ),
            walk_fallbacks: r.counter(
                "nines_agent_connection_walk_fallbacks_total",
                "BPF walks of the kernel's TCP tables that did not finish (a bucket kept \
                 changing under the walk or held too many sockets, a table could not be \
                 read) and were counted by the TCP iterator instead.",
            ),
            liveness: crate::systemd::Liveness::new(),
            health: None,
            release_memory: false,
        }
    }

    /// After every round (once its batch is spooled), the heap's free
    /// pages go back to the kernel when many are free (see
    /// [`crate::footprint::release_free_memory`]), so the agent's resident
    /// memory stays near what it holds.
    pub fn with_memory_released_after_rounds(mut self) -> Self {
        self.release_memory = true;
        self
    }

    /// Every batch also carries the families of `registry` (the agent's
    /// own health), labelled like the host series, so a collector stores
    /// and alerts on them. The pull page is unchanged: it serves the
    /// registry itself.
    pub fn with_health_in_batches(mut self, registry: &Registry) -> Self {
        self.health = Some(registry.clone());
        self
    }

    /// When the loop using these metrics last finished a round.
    pub fn liveness(&self) -> crate::systemd::Liveness {
        self.liveness.clone()
    }
}

/// Samples the host every `interval` and sends one batch per round to
/// `tx`, until `stop` turns true or `tx` closes.
pub async fn sample_forever(
    samplers: SamplerSet,
    batcher: Batcher,
    interval: Duration,
    tx: mpsc::Sender<Batch>,
    metrics: SamplingMetrics,
    latest: Option<LatestRound>,
    stop: watch::Receiver<bool>,
) {
    let round = Round::new(samplers, batcher, metrics, latest, None);
    round_forever(round, interval, Some(tx), stop).await;
}

/// Samples the host every `interval` and spools one batch per round
/// (which wakes the shipper's lanes), until `stop` turns true.
pub async fn sample_and_spool_forever(
    samplers: SamplerSet,
    batcher: Batcher,
    interval: Duration,
    spooler: Spooler,
    metrics: SamplingMetrics,
    latest: Option<LatestRound>,
    stop: watch::Receiver<bool>,
) {
    let round = Round::new(samplers, batcher, metrics, latest, Some(spooler));
    round_forever(round, interval, None, stop).await;
}

/// Runs a round every `interval` on a thread of its own, which sleeps
/// between rounds: /proc reads and statvfs can block (a hung network
/// mount), and so can the spool's fdatasync, so neither runs on the async
/// thread, and the async thread is not woken to start a round (only, once
/// per round, by the lanes' batch). A batch the round did not spool goes
/// to `tx`. Returns once the thread has stopped (after `stop`, it finishes
/// the round under way).
async fn round_forever(
    round: Round,
    interval: Duration,
    tx: Option<mpsc::Sender<Batch>>,
    mut stop: watch::Receiver<bool>,
) {
    let stopped = Arc::new(AtomicBool::new(false));
    let (done_tx, mut done) = oneshot::channel::<()>();
    let thread = {
        let stopped = stopped.clone();
        std::thread::Builder::new()
            .name("sampling".into())
            .spawn(move || {
                rounds_until_stopped(round, interval, tx.as_ref(), &stopped);
                let _ = done_tx.send(());
            })
    };
    let thread = match thread {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the sampling thread; not sampling");
            return;
        }
    };
    let stopping = async {
        while !*stop.borrow_and_update() {
            if stop.changed().await.is_err() {
                // Nobody can stop us any more: sample for good.
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        ended = &mut done => {
            if ended.is_err() {
                tracing::error!("a sampler panicked; stopping sampling");
            }
            return;
        }
        () = stopping => {}
    }
    stopped.store(true, Ordering::Release);
    thread.thread().unpark();
    if done.await.is_err() {
        tracing::error!("a sampler panicked; stopping sampling");
    }
}

/// Runs `round` every `interval` (the first at once; one that overran
/// delays the next by a whole interval) until `stopped`, or `tx` closes.
fn rounds_until_stopped(
    mut round: Round,
    interval: Duration,
    tx: Option<&mpsc::Sender<Batch>>,
    stopped: &AtomicBool,
) {
    let mut next = Instant::now();
    loop {
        loop {
            if stopped.load(Ordering::Acquire) {
                return;
            }
            let now = Instant::now();
            if now >= next {
                break;
            }
            std::thread::park_timeout(next - now);
        }
        let batch = round.run();
        if let (Some(tx), Some(batch)) = (tx, batch) {
            if tx.blocking_send(batch).is_err() {
                return;
            }
        }
        next += interval;
        let now = Instant::now();
        if next < now {
            next = now + interval;
        }
    }
}

/// What one sampling round needs, owned by the thread that runs rounds.
struct Round {
    samplers: SamplerSet,
    batcher: Batcher,
    metrics: SamplingMetrics,
    latest: Option<LatestRound>,
    /// Where batches go, if the round spools them itself.
    spooler: Option<Spooler>,
    /// The round before last, whose label sets the next round reuses.
    spare: Samples,
    /// Whether the start-up pages were given back (after the first round).
    started_up: bool,
}

impl Round {
    fn new(
        samplers: SamplerSet,
        batcher: Batcher,
        metrics: SamplingMetrics,
        latest: Option<LatestRound>,
        spooler: Option<Spooler>,
    ) -> Self {
        Round {
            samplers,
            batcher,
            metrics,
            latest,
            spooler,
            spare: Samples::default(),
            started_up: false,
        }
    }

    /// Samples, batches and (with a spooler) spools one round; returns the
    /// batch when there is no spooler to take it. Blocks.
    fn run(&mut self) -> Option<Batch> {
        let at = UnixMillis::now();
        let started = Instant::now();
        let metrics = &self.metrics;
        let mut out = std::mem::take(&mut self.spare).recycle();
        let failed = self.samplers.sample(&mut out);
        let s = &self.samplers;
        metrics
            .connection_dumps
            .set(s.connection_dumps().unwrap_or(0) as f64);
        let fallbacks = s.connection_walk_fallbacks();
        let counted = &metrics.walk_fallbacks;
        counted.add(fallbacks.saturating_sub(counted.get()));
        let used = s.connection_method();
        for method in crate::samplers::connections::METHOD_NAMES {
            metrics
                .connection_method
                .with(&[method])
                .set(if used == Some(method) { 1.0 } else { 0.0 });
        }
        for (name, e) in failed {
            metrics.errors.with(&[name]).inc();
            tracing::warn!(sampler = name, error = %e, "sampler failed");
        }
        metrics.duration.observe(started.elapsed().as_secs_f64());
        metrics.rounds.inc();
        metrics.liveness.beat();
        metrics.series.set(out.observations.len() as f64);
        // The pull page serves the registry itself: it gets the samplers'
        // series only, not the agent's own families appended here.
        let mut round = out;
        let (sampled, families) = (round.observations.len(), round.metadata.len());
        if let Some(r) = &metrics.health {
            if let Err(e) = crate::health::append_registry(r, &mut round) {
                metrics.errors.with(&["health"]).inc();
                tracing::warn!(error = %e, "cannot read all of the agent's own metrics");
            }
        }
        let batch = (!round.observations.is_empty()).then(|| self.batcher.batch(&round, at));
        self.spare = match &self.latest {
            Some(l) => l.replace(round, sampled, families),
            None => round,
        };
        let batch = match (batch, &self.spooler) {
            (Some(b), Some(spooler)) => {
                spooler.append_blocking(b);
                None
            }
            (batch, _) => batch,
        };
        if self.metrics.release_memory {
            crate::footprint::release_free_memory();
            if !self.started_up {
                // Start-up (config, spool, client, samplers' first round)
                // is done: its code need not stay resident.
                crate::footprint::release_start_up_pages();
                self.started_up = true;
            }
        }
        batch
    }
}

/// Serves `/metrics` (the agent's own health, then the latest sampling
/// round) and `/healthz` until `stop`.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    registry: Registry,
    latest: LatestRound,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let (r, l) = (registry.clone(), latest.clone());
                async move {
                    let mut text = r.render();
                    text.push_str(&l.render());
                    ([("content-type", TEXT_CONTENT_TYPE)], text)
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            while !*stop.borrow() {
                if stop.changed().await.is_err() {
                    break;
                }
            }
        })
        .await
}

/// Runs the agent until `stop` turns true: sampling, shipping and the
/// `/metrics` listener.
pub async fn run(cfg: AgentConfig, stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    use anyhow::Context;
    let agent_id = crate::identity::load_or_create(&cfg.state_dir).with_context(|| {
        format!(
            "state dir {}: cannot read or create the agent id",
            cfg.state_dir.display()
        )
    })?;
    let registry = Registry::new();
    crate::process::register(&registry);
    let sampling = SamplingMetrics::register(&registry)
        .with_health_in_batches(&registry)
        .with_memory_released_after_rounds();
    let alive = sampling.liveness();

    let listener = match cfg.listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };

    let batcher = Batcher::new(&agent_id, &cfg.instance, "node");
    let spool_dir = cfg.state_dir.join("spool");
    let spool_metrics = crate::spool::SpoolMetrics::register(&registry);
    let spool = {
        let opts = crate::spool::SpoolOptions {
            max_bytes: cfg.spool_max_bytes,
            // At least four segments fit, so dropping one when full frees
            // at most a quarter of the spool.
            segment_bytes: (cfg.spool_max_bytes / 4).min(4 << 20),
            ..crate::spool::SpoolOptions::default()
        };
        let dir = spool_dir.clone();
        tokio::task::spawn_blocking(move || crate::spool::Spool::open(&dir, opts, spool_metrics))
            .await?
            .with_context(|| format!("spool {}", spool_dir.display()))?
    };
    let (spooler, lanes) = crate::ship::start(
        spool,
        Destinations {
            collectors: cfg.collectors.clone(),
            token: cfg.token.clone(),
            mode: cfg.mode,
            drain_rate: cfg.drain_rate,
            primary_retry: cfg.primary_retry,
        },
        batcher.table(),
        ShipMetrics::register(&registry),
        stop.clone(),
    )?;
    tracing::info!(
        agent = %agent_id,
        stream = %batcher.stream(),
        collectors = ?cfg.collectors,
        mode = ?cfg.mode,
        instance = %cfg.instance,
        interval_ms = cfg.interval.as_millis() as u64,
        "agent started"
    );

    let latest = listener.as_ref().map(|_| LatestRound::default());
    let samplers = build_samplers(&cfg, stop.clone())?;
    // Every batch goes to disk before any lane sends it: the round spools
    // it before it wakes them.
    let sampling_task = tokio::spawn(sample_and_spool_forever(
        samplers,
        batcher,
        cfg.interval,
        spooler,
        sampling,
        latest.clone(),
        stop.clone(),
    ));
    let server = listener.map(|l| {
        tokio::spawn(serve_metrics(
            l,
            registry,
            latest.unwrap_or_default(),
            stop.clone(),
        ))
    });

    // Ready with the spool open even while no collector answers. Healthy
    // while a round finished within three intervals, counted from now.
    alive.beat();
    let systemd = crate::systemd::ready_and_supervise(
        &crate::systemd::Notifier::from_env(),
        format!(
            "sampling every {:?}, sending to {}",
            cfg.interval,
            cfg.collectors.join(", ")
        ),
        alive.check(cfg.interval * 3),
        stop.clone(),
    );

    let _ = sampling_task.await;
    for lane in lanes {
        let _ = lane.await;
    }
    if let Some(s) = server {
        s.await??;
    }
    if let Some(s) = systemd {
        let _ = s.await;
    }
    tracing::info!("agent stopped");
    Ok(())
}

/// The samplers the config turns on; starts the StatsD listener.
fn build_samplers(cfg: &AgentConfig, stop: watch::Receiver<bool>) -> anyhow::Result<SamplerSet> {
    use anyhow::Context;
    let statsd = match &cfg.statsd {
        None => None,
        Some(sc) => match crate::samplers::statsd::StatsdListener::bind(sc.clone()) {
            Ok(l) => {
                let state = l.state();
                tracing::info!(addr = %sc.listen, "StatsD listener started");
                tokio::spawn(l.run(stop.clone()));
                Some(state)
            }
            // Another StatsD server may own the port: keep sampling the
            // host, and say so.
            Err(e) => {
                tracing::error!(addr = %sc.listen, error = %e, "StatsD listener not started");
                None
            }
        },
    };
    let mut tailers = Vec::new();
    for a in &cfg.access_logs {
        let t = crate::samplers::access_log::AccessLogTailer::new(a.clone(), &cfg.state_dir)
            .with_context(|| format!("access log {}", a.path.display()))?;
        tailers.push(t);
    }
    let set = SamplerSet::with(PathBuf::from("/"), &cfg.samplers, statsd, tailers).context(
        "samplers.connections_method is \"bpf\", but BPF cannot count sockets here \
         (it needs root, or CAP_BPF and CAP_PERFMON, on Linux 5.9 or later with BTF)",
    )?;
    Ok(if cfg.probes.is_empty() {
        set
    } else {
        tracing::info!(probes = cfg.probes.len(), "probes started");
        set.with_probes(crate::probes::spawn(cfg.probes.clone(), stop))
    })
}

async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    tracing::info!(addr = %l.local_addr()?, "serving /metrics and /healthz");
    Ok(l)
}

/// A watch channel that turns true on SIGINT or SIGTERM.
pub fn stop_on_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot watch SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("stopping");
        let _ = tx.send(true);
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn rounds_run_on_their_thread_until_stopped() {
        let registry = Registry::new();
        let metrics = SamplingMetrics::register(&registry).with_health_in_batches(&registry);
        let rounds = metrics.rounds.clone();
        let (tx, mut rx) = mpsc::channel(4);
        let (stop_tx, stop) = watch::channel(false);
        let sampling = tokio::spawn(sample_forever(
            SamplerSet::new(PathBuf::from("/")),
            Batcher::new("test-agent", "test", "node"),
            Duration::from_millis(20),
            tx,
            metrics,
            None,
            stop,
        ));
        let deadline = Duration::from_secs(30);
        let first = tokio::time::timeout(deadline, rx.recv())
            .await
            .unwrap()
            .unwrap();
        let second = tokio::time::timeout(deadline, rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(second.seq.0, first.seq.0 + 1);
        assert!(!second.groups.is_empty());
        stop_tx.send(true).unwrap();
        tokio::time::timeout(deadline, sampling)
            .await
            .expect("sampling stops")
            .unwrap();
        // Stopped: no round starts any more.
        let done = rounds.get();
        assert!(done >= 2);
        while rx.try_recv().is_ok() {}
        assert!(rx.recv().await.is_none(), "the thread dropped its sender");
        assert_eq!(rounds.get(), done);
    }
}
