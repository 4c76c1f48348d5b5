//! Notifications: the rule evaluator hands over each group's firing and
//! recently resolved alerts (a bounded channel; it never waits), the
//! [`dispatch`]er routes, groups, silences and inhibits them, every
//! notification is committed to the outbox in `notify.db` before it is
//! sent, and the outbox worker sends with retries (exponential backoff with
//! jitter) until delivered, refused, or older than `max_age` — then it is
//! marked failed and counted, never dropped silently.
//!
//! Nothing here evaluates rules or blocks the evaluator.

pub mod alert;
pub mod config;
pub mod dispatch;
pub mod matcher;
pub mod route;
pub mod send;
pub mod silence;
pub mod store;
pub mod tls;

use alert::{AlertBatch, NotifyAlert};
use config::{NotifyConfig, ReceiverKind};
use dispatch::Dispatcher;
use nines_shared::UnixMillis;
use nines_shared::telemetry::{Counter, CounterVec, Gauge, Histogram, Registry};
use serde_json::Value as Json;
use silence::Silence;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use store::{NotifyStore, Queued};
use tokio::sync::{mpsc, watch};

/// Batches waiting for the dispatcher; beyond this a batch is dropped and
/// counted (the next evaluation of the group hands over its full state).
const QUEUE: usize = 1024;
/// Most sends in flight at once.
const IN_FLIGHT: usize = 32;

/// The HTTP clients of the outbox: one per receiver with `https://`
/// targets (its own certificate checks), one plain client for the rest.
/// A receiver whose client could not be made keeps why: its sends fail
/// with that reason (retried and shown), the others go on.
struct Clients {
    plain: reqwest::Client,
    tls: BTreeMap<String, Result<reqwest::Client, String>>,
}

impl Clients {
    /// Builds them; reads the system's trust store if a receiver needs it
    /// (blocking file I/O).
    fn new(receivers: &BTreeMap<String, config::Receiver>) -> Result<Clients, String> {
        tls::install_default_provider();
        let builder = || {
            reqwest::Client::builder()
                .user_agent(concat!("nines-collector/", env!("CARGO_PKG_VERSION")))
        };
        let plain = builder().build().map_err(|e| e.to_string())?;
        let mut out = BTreeMap::new();
        for (name, r) in receivers {
            let https = match &r.kind {
                ReceiverKind::Webhook(w) => w.url.starts_with("https:"),
                ReceiverKind::Alertmanager(a) => a.urls.iter().any(|u| u.starts_with("https:")),
            };
            if !https {
                continue;
            }
            let client = tls::client_config(r.kind.tls(), tls::system_roots).and_then(|tls| {
                builder()
                    .tls_backend_preconfigured(tls)
                    .build()
                    .map_err(|e| e.to_string())
            });
            if let Err(e) = &client {
                tracing::error!(receiver = %name, error = %e, "cannot set up TLS for the receiver; its notifications will fail and be retried");
            }
            out.insert(name.clone(), client.map_err(|e| format!("TLS setup: {e}")));
        }
        Ok(Clients { plain, tls: out })
    }

    fn of(&self, receiver: &str) -> Result<&reqwest::Client, &str> {
        match self.tls.get(receiver) {
            Some(c) => c.as_ref().map_err(String::as_str),
            None => Ok(&self.plain),
        }
    }
}

/// Where the rule evaluator hands over alerts.
#[derive(Clone)]
pub struct AlertSink {
    tx: mpsc::Sender<AlertBatch>,
    dropped: Counter,
}

impl AlertSink {
    /// Hands over a batch without waiting; a full queue drops it and
    /// counts it in `nines_notify_batches_dropped_total`.
    pub fn offer(&self, batch: AlertBatch) {
        if self.tx.try_send(batch).is_err() {
            self.dropped.inc();
        }
    }
}

/// The firing and resolved (not pending) alerts of an evaluated group, as
/// Prometheus hands them to Alertmanager.
pub fn alerts_of(g: &crate::rules::Group, external_url: &str) -> AlertBatch {
    use crate::rules::{AlertState, RuleKind};
    let mut alerts = Vec::new();
    for r in &g.rules {
        let RuleKind::Alerting(a) = &r.kind else {
            continue;
        };
        let generator_url = format!(
            "{external_url}/graph?g0.expr={}&g0.tab=1",
            form_urlencoded::byte_serialize(r.query.as_bytes()).collect::<String>()
        );
        for al in a.active.values() {
            let Some(fired_at) = al.fired_at else {
                continue;
            };
            let ends_at = match al.state {
                AlertState::Firing => None,
                AlertState::Inactive => al.resolved_at,
                AlertState::Pending => continue,
            };
            alerts.push(NotifyAlert {
                labels: al
                    .labels
                    .iter()
                    .map(|l| (l.name.clone(), l.value.clone()))
                    .collect(),
                annotations: al.annotations.clone(),
                starts_at: fired_at,
                ends_at,
                generator_url: generator_url.clone(),
            });
        }
    }
    AlertBatch {
        source: format!("{};{}", g.spec.file, g.spec.name),
        alerts,
        interval_ms: g.spec.interval.as_millis() as i64,
    }
}

/// The notifier's own metrics.
#[derive(Clone)]
struct Metrics {
    sent: CounterVec,
    queued: CounterVec,
    latency: Histogram,
    pending: Gauge,
    known: Gauge,
    store_errors: Counter,
}

impl Metrics {
    fn register(r: &Registry) -> Self {
        Metrics {
            sent: r.counter_vec(
                "nines_notifications_total",
                "Notification send attempts, by receiver and result (delivered, retry, failed).",
                &["receiver", "result"],
            ),
            queued: r.counter_vec(
                "nines_notifications_queued_total",
                "Notifications committed to the outbox, by receiver.",
                &["receiver"],
            ),
            latency: r.histogram(
                "nines_notification_delivery_seconds",
                "Time from queueing a notification to its delivery.",
                &[
                    0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0, 86400.0,
                ],
            ),
            pending: r.gauge(
                "nines_notify_outbox_pending",
                "Notifications in the outbox not yet delivered or given up.",
            ),
            known: r.gauge(
                "nines_notify_alerts_known",
                "Alerts the notifier holds (firing and recently resolved).",
            ),
            store_errors: r.counter(
                "nines_notify_store_errors_total",
                "Failed reads or writes of notify.db.",
            ),
        }
    }
}

/// The notifier: its store, the silences, and the handle for alerts.
#[derive(Clone)]
pub struct Notifier {
    store: Arc<NotifyStore>,
    silences: Arc<RwLock<Vec<Silence>>>,
    sink: AlertSink,
}

/// The parts [`Notifier::open`] leaves for [`Notifier::spawn`].
pub struct Parts {
    rx: mpsc::Receiver<AlertBatch>,
    cfg: NotifyConfig,
    metrics: Metrics,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> rusqlite::Result<T> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

impl Notifier {
    /// Opens `notify.db` in `data_dir`.
    pub fn open(
        cfg: NotifyConfig,
        data_dir: &Path,
        registry: &Registry,
    ) -> Result<(Notifier, Parts), String> {
        let path = data_dir.join(store::NOTIFY_DB_FILE);
        let store = NotifyStore::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let silences = store
            .silences()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let metrics = Metrics::register(registry);
        let dropped = registry.counter(
            "nines_notify_batches_dropped_total",
            "Alert batches from the evaluator dropped because the notifier's queue was full (the group's next evaluation hands over its alerts again).",
        );
        Ok((
            Notifier {
                store: Arc::new(store),
                silences: Arc::new(RwLock::new(silences)),
                sink: AlertSink { tx, dropped },
            },
            Parts { rx, cfg, metrics },
        ))
    }

    /// Where the evaluator hands over alerts.
    pub fn sink(&self) -> AlertSink {
        self.sink.clone()
    }

    fn silences_now(&self) -> Vec<Silence> {
        self.silences
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Starts the dispatcher and the outbox worker, with `external_url` in
    /// payloads; both end when `stop` turns true.
    pub fn spawn(
        &self,
        parts: Parts,
        external_url: String,
        stop: watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let Parts { rx, cfg, metrics } = parts;
        let wake = Arc::new(tokio::sync::Notify::new());
        let dispatcher = tokio::spawn(self.clone().dispatch_loop(
            rx,
            cfg.clone(),
            external_url,
            metrics.clone(),
            wake.clone(),
            stop.clone(),
        ));
        let worker = tokio::spawn(self.clone().outbox_loop(cfg, metrics, wake, stop));
        vec![dispatcher, worker]
    }

    async fn dispatch_loop(
        self,
        mut rx: mpsc::Receiver<AlertBatch>,
        cfg: NotifyConfig,
        external_url: String,
        metrics: Metrics,
        wake: Arc<tokio::sync::Notify>,
        mut stop: watch::Receiver<bool>,
    ) {
        let st = self.store.clone();
        let log = match blocking(move || st.last_sent()).await {
            Ok(l) => l,
            Err(e) => {
                metrics.store_errors.inc();
                tracing::error!(error = %e, "cannot read what was last notified from {}", store::NOTIFY_DB_FILE);
                Default::default()
            }
        };
        let mut d = Dispatcher::new(cfg, external_url, log);
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                b = rx.recv() => match b {
                    Some(b) => d.on_batch(&b, UnixMillis::now().0),
                    None => break,
                },
                _ = tick.tick() => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                break;
            }
            let now = UnixMillis::now().0;
            let due = d.flush(now, &self.silences_now());
            metrics.known.set(d.alert_count() as f64);
            if due.is_empty() {
                continue;
            }
            // Committed before any send. A failed write loses these
            // notifications: counted and logged, never silent.
            let st = self.store.clone();
            let rows = due.clone();
            match blocking(move || st.enqueue(&rows, now)).await {
                Ok(_) => {
                    for n in &due {
                        metrics.queued.with(&[&n.receiver]).inc();
                    }
                    wake.notify_one();
                }
                Err(e) => {
                    metrics.store_errors.inc();
                    tracing::error!(error = %e, count = due.len(), "notifications not queued in {}", store::NOTIFY_DB_FILE);
                }
            }
        }
    }

    async fn outbox_loop(
        self,
        cfg: NotifyConfig,
        metrics: Metrics,
        wake: Arc<tokio::sync::Notify>,
        mut stop: watch::Receiver<bool>,
    ) {
        let receivers = cfg.receivers.clone();
        let client = match tokio::task::spawn_blocking(move || Clients::new(&receivers)).await {
            Ok(Ok(c)) => Arc::new(c),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot build the notification HTTP clients; nothing will be sent");
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "building the notification HTTP clients panicked");
                return;
            }
        };
        let cfg = Arc::new(cfg);
        let in_flight: Arc<std::sync::Mutex<BTreeSet<i64>>> = Default::default();
        let mut last_prune = 0i64;
        loop {
            let now = UnixMillis::now().0;
            if now - last_prune > 3_600_000 {
                last_prune = now;
                let st = self.store.clone();
                let keep = cfg.keep.as_millis() as i64;
                if let Err(e) = blocking(move || {
                    st.prune(now - keep)?;
                    st.prune_silences(now - keep)
                })
                .await
                {
                    metrics.store_errors.inc();
                    tracing::warn!(error = %e, "old notifications not pruned");
                }
            }
            let skip = in_flight.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let room = IN_FLIGHT.saturating_sub(skip.len());
            let st = self.store.clone();
            let due = if room == 0 {
                Ok(Vec::new())
            } else {
                blocking(move || st.due(now, &skip, room)).await
            };
            match due {
                Ok(rows) => {
                    for q in rows {
                        in_flight
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(q.id);
                        let (me, client, cfg, metrics, in_flight, wake) = (
                            self.clone(),
                            client.clone(),
                            cfg.clone(),
                            metrics.clone(),
                            in_flight.clone(),
                            wake.clone(),
                        );
                        tokio::spawn(async move {
                            let id = q.id;
                            me.attempt(q, &client, &cfg, &metrics).await;
                            in_flight
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .remove(&id);
                            wake.notify_one();
                        });
                    }
                }
                Err(e) => {
                    metrics.store_errors.inc();
                    tracing::warn!(error = %e, "cannot read the outbox");
                }
            }
            let st = self.store.clone();
            if let Ok(n) = blocking(move || st.pending_count()).await {
                metrics.pending.set(n as f64);
            }
            let st = self.store.clone();
            let next = blocking(move || st.next_due()).await.ok().flatten();
            let wait = next
                .map(|t| (t - UnixMillis::now().0).clamp(10, 1000))
                .unwrap_or(1000);
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                break;
            }
        }
    }

    async fn attempt(&self, q: Queued, client: &Clients, cfg: &NotifyConfig, metrics: &Metrics) {
        let outcome = match cfg.receivers.get(&q.receiver) {
            Some(r) => {
                let kind = match (&r.kind, q.kind.as_str()) {
                    (ReceiverKind::Webhook(_), "webhook")
                    | (ReceiverKind::Alertmanager(_), "alertmanager") => Some(&r.kind),
                    _ => None,
                };
                match kind {
                    Some(k) => match client.of(&q.receiver) {
                        Ok(c) => send::send(c, k, &q.target, &q.body).await,
                        Err(e) => send::Outcome::Retry(e.to_string()),
                    },
                    None => send::Outcome::Refused(format!(
                        "receiver {:?} is no longer a {} receiver",
                        q.receiver, q.kind
                    )),
                }
            }
            None => {
                send::Outcome::Refused(format!("receiver {:?} is no longer configured", q.receiver))
            }
        };
        let now = UnixMillis::now().0;
        let (id, st) = (q.id, self.store.clone());
        let sent = metrics.sent.clone();
        let result = match outcome {
            send::Outcome::Delivered => {
                sent.with(&[&q.receiver, "delivered"]).inc();
                metrics
                    .latency
                    .observe((now - q.created_at).max(0) as f64 / 1000.0);
                tracing::info!(id, receiver = %q.receiver, target = %q.target, attempts = q.attempts + 1, "notification delivered");
                blocking(move || st.delivered(id, now)).await
            }
            send::Outcome::Retry(e) if now - q.created_at < cfg.max_age.as_millis() as i64 => {
                sent.with(&[&q.receiver, "retry"]).inc();
                let next = now + backoff(cfg, q.attempts);
                tracing::warn!(id, receiver = %q.receiver, target = %q.target, error = %e, attempts = q.attempts + 1, "notification not delivered; will retry");
                blocking(move || st.attempt_failed(id, now, Some(next), &e)).await
            }
            send::Outcome::Retry(e) | send::Outcome::Refused(e) => {
                sent.with(&[&q.receiver, "failed"]).inc();
                let e = if now - q.created_at >= cfg.max_age.as_millis() as i64 {
                    format!("gave up after {:?}: {e}", cfg.max_age)
                } else {
                    e
                };
                tracing::error!(id, receiver = %q.receiver, target = %q.target, error = %e, "notification failed");
                blocking(move || st.attempt_failed(id, now, None, &e)).await
            }
        };
        if let Err(e) = result {
            metrics.store_errors.inc();
            tracing::error!(id, error = %e, "outbox not updated after a send attempt");
        }
    }

    /// `GET /api/v1/silences` data.
    pub fn silences_json(&self) -> Json {
        let now = UnixMillis::now().0;
        Json::Array(self.silences_now().iter().map(|s| s.to_json(now)).collect())
    }

    /// Creates a silence from an API body; refused with (field, reason).
    pub async fn create_silence(&self, body: Json) -> Result<String, (String, String)> {
        let now = UnixMillis::now().0;
        let s = silence::silence_from_json(&body, silence::new_id(), now)?;
        let id = s.id.clone();
        let st = self.store.clone();
        let saved = s.clone();
        blocking(move || st.save_silence(&saved))
            .await
            .map_err(|e| ("store".to_string(), e))?;
        self.silences
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(s);
        Ok(id)
    }

    /// Expires a silence now; false when there is none with `id`.
    pub async fn expire_silence(&self, id: &str) -> Result<bool, String> {
        let now = UnixMillis::now().0;
        let Some(mut s) = self.silences_now().into_iter().find(|s| s.id == id) else {
            return Ok(false);
        };
        if s.ends_at > now {
            s.ends_at = now.max(s.starts_at);
        }
        s.updated_at = now;
        let st = self.store.clone();
        let saved = s.clone();
        blocking(move || st.save_silence(&saved)).await?;
        let mut all = self.silences.write().unwrap_or_else(|p| p.into_inner());
        if let Some(x) = all.iter_mut().find(|x| x.id == id) {
            *x = s;
        }
        Ok(true)
    }

    /// `GET /api/v1/notifications` data, newest first.
    pub async fn notifications_json(&self, limit: usize) -> Result<Json, String> {
        let st = self.store.clone();
        blocking(move || st.list(limit)).await.map(Json::Array)
    }
}

/// Delay before the next try after `attempts` failed ones: doubling from
/// `backoff_min` up to `backoff_max`, with up to ±20% jitter so that many
/// notifications to one receiver do not retry in lockstep.
pub fn backoff(cfg: &NotifyConfig, attempts: i64) -> i64 {
    let min = cfg.backoff_min.as_millis() as f64;
    let max = cfg.backoff_max.as_millis() as f64;
    let base = (min * 2f64.powi(attempts.clamp(0, 40) as i32)).min(max);
    let jitter = 0.8 + 0.4 * fastrand::f64();
    (base * jitter).max(1.0) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let cfg = NotifyConfig {
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            ..NotifyConfig::default()
        };
        for _ in 0..100 {
            let b0 = backoff(&cfg, 0);
            assert!((800..=1200).contains(&b0), "{b0}");
            let b3 = backoff(&cfg, 3);
            assert!((6400..=9600).contains(&b3), "{b3}");
            let b30 = backoff(&cfg, 30);
            assert!((48_000..=72_000).contains(&b30), "{b30}");
        }
    }
}
