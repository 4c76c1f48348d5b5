//! `nines-collector serve`: opens storage, wires ingest, query and the API,
//! runs the in-process agent for this host, and serves until SIGINT/SIGTERM.

use crate::api::{self, AppState};
use crate::config::CollectorConfig;
use crate::ingest::{Ingest, IngestError, IngestMetrics};
use crate::query::Engine;
use crate::storage::{QueryLimits, Storage, StorageMetrics, WriteError};
use anyhow::Context;
use nines_agent::batch::Batcher;
use nines_agent::run::{SamplingMetrics, sample_forever};
use nines_shared::Batch;
use nines_shared::telemetry::Registry;
use nines_shared::wire::WireLimits;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Name of the SQLite file in the data dir.
pub const DB_FILE: &str = "nines.db";
/// Name of the generated token file in the data dir.
pub const TOKEN_FILE: &str = "agent-token";

/// Runs the collector until `stop` turns true.
pub async fn serve(cfg: CollectorConfig, stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("data dir {}: cannot create", cfg.data_dir.display()))?;
    let (token, generated) = match &cfg.agent_token {
        Some(t) => (t.clone(), false),
        None => load_or_create_token(&cfg.data_dir)?,
    };

    // A bad rule file stops the collector before it serves anything.
    let (rules, slos) = open_rules(&cfg)?;

    let registry = Registry::new();
    nines_agent::process::register(&registry);
    let (notifier, notify_parts) =
        crate::notify::Notifier::open(cfg.notify.clone(), &cfg.data_dir, &registry)
            .map_err(anyhow::Error::msg)?;
    let storage = Storage::open_with_options(
        &cfg.data_dir.join(DB_FILE),
        QueryLimits {
            max_series: cfg.limits.max_query_series,
            max_samples: cfg.limits.max_query_samples,
        },
        StorageMetrics::register(&registry),
        crate::storage::StorageOptions {
            retention: cfg.retention,
            retention_1m: cfg.retention_1m,
            retention_1h: cfg.retention_1h,
            ..crate::storage::StorageOptions::default()
        },
    )
    .with_context(|| format!("cannot open storage in {}", cfg.data_dir.display()))?;
    {
        let st = storage.clone();
        registry.gauge_fn("nines_storage_series", "Series in the index.", move || {
            st.series_count() as f64
        });
    }
    let wire_limits = WireLimits {
        max_decompressed_bytes: cfg.limits.max_decompressed_bytes,
        max_samples: cfg.limits.max_samples_per_batch,
        ..WireLimits::default()
    };
    let presence = crate::presence::Presence::open(
        &cfg.data_dir.join(crate::presence::AGENTS_DB_FILE),
        cfg.presence.clone(),
    )
    .with_context(|| {
        format!(
            "cannot open {}",
            cfg.data_dir.join(crate::presence::AGENTS_DB_FILE).display()
        )
    })?;
    let ingest = Ingest::new(
        storage.clone(),
        wire_limits,
        cfg.limits.max_future,
        IngestMetrics::register(&registry),
    )
    .with_presence(presence.clone());
    let engine = Arc::new(Engine {
        max_samples: cfg.limits.max_query_samples,
        ..Engine::default()
    });
    let state = AppState {
        ingest: ingest.clone(),
        storage: storage.clone(),
        engine: engine.clone(),
        agent_token: token.clone().into(),
        registry: registry.clone(),
        limits: cfg.limits.clone(),
        api_requests: AppState::register_api_metrics(&registry),
        rules: rules.clone(),
        slos: slos.clone(),
        notifier: notifier.clone(),
    };

    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let shown = if addr.ip().is_unspecified() {
        format!("http://127.0.0.1:{}/", addr.port())
    } else {
        format!("http://{addr}/")
    };
    // Plain lines on stdout, for a person and for scripts that wait for them.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "nines collector: UI and API at {shown}");
    if generated {
        let _ = writeln!(
            out,
            "nines collector: agent token {token} (kept in {})",
            cfg.data_dir.join(TOKEN_FILE).display()
        );
    }
    let _ = out.flush();
    drop(out);
    tracing::info!(%addr, data_dir = %cfg.data_dir.display(), "collector listening");

    let presence_loop = presence.spawn(
        ingest.clone(),
        registry.clone(),
        addr.to_string(),
        stop.clone(),
    );

    let scrapers = crate::scrape::spawn(
        cfg.scrape.clone(),
        ingest.clone(),
        crate::scrape::ScrapeMetrics::register(&registry),
        stop.clone(),
    );

    let external_url = if cfg.notify.external_url.is_empty() {
        shown.trim_end_matches('/').to_string()
    } else {
        cfg.notify.external_url.clone()
    };
    rules.notify_to(notifier.sink(), external_url.clone());
    let notify_loops = notifier.spawn(notify_parts, external_url, stop.clone());
    let rule_loops = rules.spawn(
        engine.clone(),
        storage.clone(),
        crate::rules::RuleMetrics::register(&registry),
        stop.clone(),
    );
    let slo_loop = slos.spawn(
        engine,
        storage.clone(),
        crate::slo::SloMetrics::register(&registry),
        stop.clone(),
    );

    let local = if cfg.local_agent {
        Some(start_local_agent(&cfg, ingest, &registry, stop.clone())?)
    } else {
        None
    };

    // Ready once storage is open and the API listens. Healthy while
    // /healthz answers and the writer commits an empty write (a real round
    // trip through the writer thread and SQLite's write lock, adding no
    // data; it only counts one more nines_storage_commit_seconds sample).
    let probe = storage.clone();
    let systemd = nines_agent::systemd::ready_and_supervise(
        &nines_agent::systemd::Notifier::from_env(),
        format!("serving {shown}"),
        move || {
            let probe = probe.clone();
            async move {
                nines_agent::systemd::probe_healthz(addr).await?;
                let written = probe.write_series(Vec::new(), Vec::new()).await;
                written
                    .map(|_| ())
                    .map_err(|e| format!("storage writer: {e}"))
            }
        },
        stop.clone(),
    );

    let mut stop_srv = stop.clone();
    axum::serve(listener, api::router(state))
        .with_graceful_shutdown(async move {
            while !*stop_srv.borrow() {
                if stop_srv.changed().await.is_err() {
                    break;
                }
            }
        })
        .await
        .context("HTTP server failed")?;
    if let Some(h) = local {
        let _ = h.await;
    }
    for s in scrapers {
        let _ = s.await;
    }
    let _ = presence_loop.await;
    for r in rule_loops {
        let _ = r.await;
    }
    let _ = slo_loop.await;
    for n in notify_loops {
        let _ = n.await;
    }
    if let Some(s) = systemd {
        let _ = s.await;
    }
    tracing::info!("collector stopped");
    Ok(())
}

/// The rule groups (rule files, the built-in group unless a rule file
/// overrides its alerts, and every SLO's alerts) with their state from
/// `rules.db`, and the SLOs (config and `slo.db`).
fn open_rules(cfg: &CollectorConfig) -> anyhow::Result<(crate::rules::Rules, crate::slo::Slos)> {
    use crate::rules::builtin::{alert_names, builtin_group};
    let interval = cfg.evaluation_interval;
    let mut specs =
        crate::rules::load_files(&cfg.rule_files, interval).map_err(anyhow::Error::msg)?;
    let builtin_interval = cfg.builtin_rules.interval;
    if let Some(g) = builtin_group(&cfg.builtin_rules, builtin_interval, &alert_names(&specs))
        .map_err(anyhow::Error::msg)?
    {
        specs.push(g);
    }
    let slo_path = cfg.data_dir.join(crate::slo::SLO_DB_FILE);
    let slo_store = crate::slo::SloStore::open(&slo_path)
        .with_context(|| format!("cannot open {}", slo_path.display()))?;
    let slos = crate::slo::load_all(&cfg.slos, Some(&slo_store)).map_err(anyhow::Error::msg)?;
    for s in &slos {
        let now = nines_shared::UnixMillis::now().0;
        let window = Duration::from_millis(s.window.length_ms(now).max(0) as u64);
        if cfg.retention.is_some_and(|r| window > r) {
            tracing::warn!(slo = %s.def.name, ?window, retention = ?cfg.retention,
                "SLO window is longer than storage retention: the time before retention counts as missing data");
        }
    }
    specs.extend(crate::slo::rule_groups(&slos, interval).map_err(anyhow::Error::msg)?);
    let path = cfg.data_dir.join(crate::rules::RULES_DB_FILE);
    let store = crate::rules::StateStore::open(&path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let rules = crate::rules::Rules::new(specs, Some(store)).map_err(anyhow::Error::msg)?;
    let slos = crate::slo::Slos::new(slos, Some(slo_store), rules.clone(), interval);
    Ok((rules, slos))
}

/// The in-process agent: samples this host and commits straight into
/// ingest, without HTTP or a token.
fn start_local_agent(
    cfg: &CollectorConfig,
    ingest: Ingest,
    registry: &Registry,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let state_dir = cfg.data_dir.join("local-agent");
    let agent_id = nines_agent::identity::load_or_create(&state_dir)
        .with_context(|| format!("local agent state dir {}", state_dir.display()))?;
    let instance = nines_agent::config::host_name();
    let batcher = Batcher::new(&agent_id, &instance, "node");
    let table = batcher.table();
    let (tx, mut rx) = mpsc::channel::<Batch>(64);
    tokio::spawn(sample_forever(
        nines_agent::samplers::SamplerSet::new(PathBuf::from("/")),
        batcher,
        cfg.local_agent_interval,
        tx,
        SamplingMetrics::register(registry),
        None,
        stop,
    ));
    tracing::info!(%instance, interval_ms = cfg.local_agent_interval.as_millis() as u64, "local agent started");
    Ok(tokio::spawn(async move {
        while let Some(batch) = rx.recv().await {
            let mut batch = batch;
            let mut wait = Duration::from_millis(200);
            loop {
                match ingest.apply(batch.clone()).await {
                    Ok(_) => break,
                    Err(IngestError::Write(WriteError::UnknownRefs(_))) => {
                        batch = table
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .with_all_definitions(&batch);
                    }
                    Err(IngestError::Write(WriteError::Closed)) => return,
                    Err(IngestError::Write(e)) => {
                        tracing::warn!(error = %e, "local agent batch not stored; retrying");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(10));
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "local agent batch refused");
                        break;
                    }
                }
            }
        }
    }))
}

/// Reads the agent token from the data dir, or makes one.
fn load_or_create_token(data_dir: &Path) -> anyhow::Result<(String, bool)> {
    let path = data_dir.join(TOKEN_FILE);
    if let Ok(t) = std::fs::read_to_string(&path) {
        let t = t.trim().to_string();
        if !t.is_empty() {
            return Ok((t, true));
        }
    }
    // 128 random bits from the kernel, as hex.
    let mut buf = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
        .context("cannot read /dev/urandom for a token")?;
    let token: String = buf.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = data_dir.join(format!("{TOKEN_FILE}.tmp"));
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(token.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    Ok((token, true))
}
