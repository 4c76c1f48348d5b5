//! Shipping: every batch goes into the durable spool first; lanes read it
//! back and deliver to collectors, and a record leaves the spool only when
//! every lane is past it.
//!
//! - `replicate`: one lane (and spool cursor) per collector; each collector
//!   gets every batch (an HA pair).
//! - `failover`: one lane that sends to the first healthy collector in the
//!   list, moves on when it fails, and tries the first again every
//!   [`PRIMARY_RETRY`] until it answers.
//!
//! Spooled batches carry every series definition they use, so they can be
//! delivered by a later agent process; each lane strips the definitions its
//! collector already acknowledged and sends them again when asked (409).
//! Failures are retried with exponential backoff and jitter, honouring
//! `Retry-After`; a batch the collector calls bad (400/413/415/422) is not
//! sent again but counted. A backlog drains oldest first at a bounded rate.
//!
//! It never samples and never decides what a batch contains.

use crate::batch::SeriesTable;
use crate::encode::Body;
use crate::spool::{Cursor, RecordId, Spool};
use nines_shared::telemetry::{CounterVec, GaugeVec, Histogram, LATENCY_BUCKETS, Registry};
use nines_shared::wire::{self, WireLimits};
use nines_shared::{Batch, SeriesDefinition, SeriesRef, StreamId, UnixMillis};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a failover lane tries its first collector again, by default.
pub const PRIMARY_RETRY: Duration = Duration::from_secs(30);
/// Records read from the spool at a time.
const READ_CHUNK: usize = 64;

/// How batches are spread over several collectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Send to the first healthy collector.
    Failover,
    /// Send every batch to every collector.
    Replicate,
}

/// Shipping metrics.
#[derive(Clone)]
pub struct ShipMetrics {
    acked: CounterVec,
    rejected: CounterVec,
    dropped: CounterVec,
    failures: CounterVec,
    duration: Histogram,
    up: GaugeVec,
    last_ack: GaugeVec,
    lag: GaugeVec,
}

impl ShipMetrics {
    /// Registers the metrics.
    pub fn register(r: &Registry) -> Self {
        ShipMetrics {
            acked: r.counter_vec(
                "nines_agent_batches_acked_total",
                "Batches a collector acknowledged, by collector.",
                &["collector"],
            ),
            rejected: r.counter_vec(
                "nines_agent_batches_rejected_total",
                "Batches a collector refused as bad; they are not sent again.",
                &["collector"],
            ),
            dropped: r.counter_vec(
                "nines_agent_batches_dropped_total",
                "Batches lost before delivery, by reason (spool_error: could not be spooled; undecodable: unreadable spool record).",
                &["reason"],
            ),
            failures: r.counter_vec(
                "nines_agent_send_failures_total",
                "Failed delivery attempts that will be retried, by collector and reason.",
                &["collector", "reason"],
            ),
            duration: r.histogram(
                "nines_agent_ship_duration_seconds",
                "Time from sending a batch to its acknowledgement.",
                LATENCY_BUCKETS,
            ),
            up: r.gauge_vec(
                "nines_agent_collector_up",
                "1 if the last delivery attempt to the collector succeeded.",
                &["collector"],
            ),
            last_ack: r.gauge_vec(
                "nines_agent_collector_last_ack_timestamp_seconds",
                "When the collector last acknowledged a batch.",
                &["collector"],
            ),
            lag: r.gauge_vec(
                "nines_agent_spool_lag_records",
                "Spooled batches a lane has not delivered yet.",
                &["lane"],
            ),
        }
    }
}

/// Where batches go and how.
#[derive(Debug, Clone)]
pub struct Destinations {
    /// Collector base URLs, in order of preference.
    pub collectors: Vec<String>,
    /// Bearer token.
    pub token: String,
    /// failover or replicate.
    pub mode: Mode,
    /// Most backlog batches sent per second per lane.
    pub drain_rate: u32,
    /// How often a failover lane tries its first collector again.
    pub primary_retry: Duration,
}

/// The batch last spooled by this process, kept so a lane that is caught
/// up sends it without reading it back from disk.
type Latest = Option<(RecordId, Arc<Batch>)>;

/// Acknowledgements a lane made while the spool was busy (another lane's
/// read, a round's append), by cursor: the next blocking call on the spool
/// marks them before it does anything else.
#[derive(Clone, Default)]
struct PendingAcks(Arc<Mutex<HashMap<String, (Cursor, RecordId)>>>);

impl PendingAcks {
    fn add(&self, cursor: &Cursor, upto: RecordId) {
        let mut p = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let entry = p
            .entry(cursor.name().to_string())
            .or_insert_with(|| (cursor.clone(), upto));
        entry.1 = entry.1.max(upto);
    }

    /// Marks every pending acknowledgement in `spool` and sets the lanes'
    /// lag gauges.
    fn mark(&self, spool: &mut Spool, metrics: &ShipMetrics) {
        let pending = std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()));
        for (cursor, upto) in pending.into_values() {
            mark_acked(spool, &cursor, upto, metrics);
        }
    }
}

/// Marks `upto` acknowledged for `cursor` (in memory: the file follows at
/// the spool's next append) and sets the lane's lag gauge.
fn mark_acked(spool: &mut Spool, cursor: &Cursor, upto: RecordId, metrics: &ShipMetrics) {
    let res = spool
        .mark_acked(cursor, upto)
        .and_then(|()| spool.lag(cursor));
    match res {
        Ok(lag) => metrics.lag.with(&[cursor.name()]).set(lag as f64),
        Err(e) => {
            tracing::error!(lane = %cursor.name(), error = %e, "cannot record delivery in the spool; batches may be sent again")
        }
    }
}

/// Puts batches into the spool and wakes the lanes.
pub struct Spooler {
    spool: Arc<Mutex<Spool>>,
    table: Arc<Mutex<SeriesTable>>,
    appended: watch::Sender<Latest>,
    pending: PendingAcks,
    metrics: ShipMetrics,
}

impl Spooler {
    /// Spools a batch with every definition it uses, so any later agent
    /// process can deliver it, then wakes the lanes. Blocks on disk I/O
    /// (the record is fdatasync'd, and acknowledgements made since the
    /// last append are written to the cursor files): call it from a
    /// blocking thread.
    pub fn append_blocking(&self, batch: Batch) {
        let record = self
            .table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .spool_record(&batch);
        // Lanes send a batch kept in memory with the definitions and
        // metadata of their table (the record above carries them too): the
        // kept copy needs only its values, and a first round's label sets
        // are freed now rather than a round later.
        let batch = Batch {
            definitions: Vec::new(),
            metadata: Vec::new(),
            ..batch
        };
        let res = {
            let mut spool = self.spool.lock().unwrap_or_else(|p| p.into_inner());
            self.pending.mark(&mut spool, &self.metrics);
            spool.append(&record)
        };
        match res {
            Ok(id) => {
                self.appended.send_replace(Some((id, Arc::new(batch))));
            }
            Err(e) => {
                self.metrics.dropped.with(&["spool_error"]).inc();
                tracing::error!(error = %e, seq = batch.seq.0, "batch could not be spooled; dropped");
            }
        }
    }
}

/// Writes every acknowledgement made so far to the cursor files. Blocks
/// on disk I/O.
fn write_acks(spool: &Mutex<Spool>, pending: &PendingAcks, metrics: &ShipMetrics) {
    let mut spool = spool.lock().unwrap_or_else(|p| p.into_inner());
    pending.mark(&mut spool, metrics);
    if let Err(e) = spool.write_acks() {
        tracing::error!(error = %e, "cannot record deliveries in the spool; those batches will be sent again");
    }
}

/// Starts the lanes for `dest` over `spool`; returns the spooler to feed
/// and the lane tasks.
pub fn start(
    spool: Spool,
    dest: Destinations,
    table: Arc<Mutex<SeriesTable>>,
    metrics: ShipMetrics,
    stop: watch::Receiver<bool>,
) -> Result<(Spooler, Vec<tokio::task::JoinHandle<()>>), ShipError> {
    let mut spool = spool;
    // Where reqwest is built with rustls (beside the collector's https
    // receivers) it needs a process-wide provider: use ring, as the probes do.
    {
        use tokio_rustls::rustls::crypto::{CryptoProvider, ring};
        if CryptoProvider::get_default().is_none() {
            let _ = ring::default_provider().install_default();
        }
    }
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        .user_agent(concat!("nines-agent/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ShipError::Client(e.to_string()))?;
    let link = |url: &String| Link {
        base: url.clone(),
        push_url: format!("{url}{}", wire::PUSH_PATH),
        known: HashMap::new(),
    };
    let lanes: Vec<(String, Vec<Link>)> = match dest.mode {
        Mode::Failover => vec![(
            "failover".to_string(),
            dest.collectors.iter().map(link).collect(),
        )],
        Mode::Replicate => dest
            .collectors
            .iter()
            .map(|u| (cursor_name(u), vec![link(u)]))
            .collect(),
    };
    // Cursors of collectors no longer configured would hold data forever.
    let wanted: HashSet<&str> = lanes.iter().map(|(n, _)| n.as_str()).collect();
    for old in spool.cursors() {
        if !wanted.contains(old.as_str()) {
            tracing::info!(cursor = %old, "removing the spool cursor of a collector no longer configured");
            spool
                .remove_cursor(&old)
                .map_err(|e| ShipError::Spool(e.to_string()))?;
        }
    }
    let mut cursors = Vec::new();
    for (name, links) in lanes {
        let c = spool
            .cursor(&name)
            .map_err(|e| ShipError::Spool(e.to_string()))?;
        cursors.push((c, links));
    }
    let spool = Arc::new(Mutex::new(spool));
    let (appended, appended_rx) = watch::channel(None);
    let pending = PendingAcks::default();
    let tasks = cursors
        .into_iter()
        .map(|(cursor, links)| {
            // Counters exist from zero, so the first rejection shows as an
            // increase (a series born at 1 does not, to `increase()`).
            for l in &links {
                metrics.acked.with(&[&l.base]);
                metrics.rejected.with(&[&l.base]);
            }
            let lane = Lane {
                spool: spool.clone(),
                pending: pending.clone(),
                cursor,
                links,
                preferred: 0,
                primary_tried: Instant::now(),
                client: client.clone(),
                token: dest.token.clone(),
                table: table.clone(),
                raw: Vec::new(),
                metrics: metrics.clone(),
                drain_gap: Duration::from_secs(1) / dest.drain_rate.max(1),
                primary_retry: dest.primary_retry,
            };
            tokio::spawn(lane.run(appended_rx.clone(), stop.clone()))
        })
        .collect();
    Ok((
        Spooler {
            spool,
            table,
            appended,
            pending,
            metrics,
        },
        tasks,
    ))
}

/// Why shipping could not start.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    /// The spool refused a cursor operation.
    #[error("spool: {0}")]
    Spool(String),
}

/// A spool cursor name for a collector URL: `c-` plus the URL with every
/// character outside `[A-Za-z0-9._-]` replaced, at most 100 characters.
fn cursor_name(url: &str) -> String {
    let cleaned: String = url
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut name = format!("c-{cleaned}");
    name.truncate(100);
    name
}

/// One collector as a lane sees it.
struct Link {
    base: String,
    push_url: String,
    /// Refs whose definitions this collector acknowledged, per stream.
    known: HashMap<StreamId, HashSet<SeriesRef>>,
}

/// What a delivery attempt came to.
#[derive(Debug, PartialEq)]
enum Outcome {
    Acked,
    ResendDefinitions,
    Rejected(String),
    Retry {
        reason: &'static str,
        after: Option<Duration>,
    },
}

/// What delivering one batch came to.
enum Delivered {
    Yes,
    Rejected,
    Stopped,
}

/// One spool cursor and the collectors it delivers to.
struct Lane {
    spool: Arc<Mutex<Spool>>,
    /// Acknowledgements made while the spool was busy.
    pending: PendingAcks,
    cursor: Cursor,
    links: Vec<Link>,
    /// The link that last worked (failover).
    preferred: usize,
    /// When the first link was last tried while another was preferred.
    primary_tried: Instant,
    client: reqwest::Client,
    token: String,
    /// This process's series, for batches sent from memory.
    table: Arc<Mutex<SeriesTable>>,
    /// The last body before compression, for its allocation.
    raw: Vec<u8>,
    metrics: ShipMetrics,
    drain_gap: Duration,
    primary_retry: Duration,
}

/// A batch a lane delivers.
enum Item {
    /// Read back from the spool: it carries every definition it uses.
    Spooled(Batch),
    /// Spooled by this process and sent from memory: it carries no
    /// definitions or metadata; they are in the lane's table.
    Live(Arc<Batch>),
}

impl Item {
    fn batch(&self) -> &Batch {
        match self {
            Item::Spooled(b) => b,
            Item::Live(b) => b,
        }
    }
}

impl Lane {
    /// Delivers until the agent stops, then writes this lane's
    /// acknowledgements to its cursor file.
    async fn run(self, appended: watch::Receiver<Latest>, stop: watch::Receiver<bool>) {
        let (spool, pending, metrics) = (
            self.spool.clone(),
            self.pending.clone(),
            self.metrics.clone(),
        );
        self.deliver_forever(appended, stop).await;
        let written =
            tokio::task::spawn_blocking(move || write_acks(&spool, &pending, &metrics)).await;
        if let Err(e) = written {
            tracing::error!(error = %e, "spool task failed; batches may be sent again");
        }
    }

    async fn deliver_forever(
        mut self,
        mut appended: watch::Receiver<Latest>,
        mut stop: watch::Receiver<bool>,
    ) {
        let limits = WireLimits::default();
        // The id this lane's cursor reads next, once known.
        let mut next: Option<u64> = None;
        loop {
            if *stop.borrow() {
                return;
            }
            if let Some(n) = next {
                let latest = appended.borrow_and_update().clone();
                match latest {
                    // Caught up: the newest record is the next one, and it
                    // is in memory.
                    Some((id, batch)) if id.0 == n => {
                        if let Delivered::Stopped =
                            self.deliver(&Item::Live(batch), &mut stop).await
                        {
                            return;
                        }
                        self.ack(Some(id));
                        next = Some(n + 1);
                        continue;
                    }
                    // Nothing new since the last record this lane handled.
                    Some((id, _)) if id.0 < n => {
                        if wait_for_append(&mut appended, &mut stop).await {
                            return;
                        }
                        continue;
                    }
                    None => {
                        if wait_for_append(&mut appended, &mut stop).await {
                            return;
                        }
                        continue;
                    }
                    // Behind: read the spool.
                    Some(_) => {}
                }
            }
            let (chunk, position) = match self.read().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(lane = %self.cursor.name(), error = %e, "cannot read the spool");
                    next = None;
                    if sleep_or_stop(BACKOFF_MAX, &mut stop).await {
                        return;
                    }
                    continue;
                }
            };
            if chunk.is_empty() {
                next = Some(position.0);
                if wait_for_append(&mut appended, &mut stop).await {
                    return;
                }
                continue;
            }
            let backlog = chunk.len() > 1;
            let mut done: Option<RecordId> = None;
            for (id, payload) in chunk {
                let batch = match wire::decode(&payload, &limits) {
                    Ok(b) => b,
                    Err(e) => {
                        self.metrics.dropped.with(&["undecodable"]).inc();
                        tracing::error!(record = %id, error = %e, "spool record is not a batch; skipped");
                        done = Some(id);
                        continue;
                    }
                };
                let started = Instant::now();
                match self.deliver(&Item::Spooled(batch), &mut stop).await {
                    Delivered::Yes | Delivered::Rejected => done = Some(id),
                    Delivered::Stopped => {
                        self.ack(done);
                        return;
                    }
                }
                if backlog {
                    // Drain at a bounded rate: a collector coming back from
                    // an outage is not flooded by every agent at once.
                    let spent = started.elapsed();
                    if spent < self.drain_gap
                        && sleep_or_stop(self.drain_gap - spent, &mut stop).await
                    {
                        self.ack(done);
                        return;
                    }
                }
            }
            self.ack(done);
            next = done.map(|d| d.0 + 1);
        }
    }

    /// Up to [`READ_CHUNK`] records from this lane's cursor, and the id the
    /// cursor reads next.
    async fn read(&self) -> Result<(Vec<(RecordId, Vec<u8>)>, RecordId), String> {
        let spool = self.spool.clone();
        let cursor = self.cursor.clone();
        let (pending, metrics) = (self.pending.clone(), self.metrics.clone());
        tokio::task::spawn_blocking(move || {
            let mut s = spool.lock().unwrap_or_else(|p| p.into_inner());
            // This lane's own acknowledgement may be among them: the read
            // starts past everything it delivered.
            pending.mark(&mut s, &metrics);
            let chunk = s.read(&cursor, READ_CHUNK).map_err(|e| e.to_string())?;
            let position = s.next_unread(&cursor).map_err(|e| e.to_string())?;
            Ok((chunk, position))
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Acknowledges every record up to `upto` without leaving the async
    /// thread: marked in the spool's memory at once when no blocking call
    /// holds it (the usual case: a round's append is done before its batch
    /// is sent), else left pending for the next one, which marks it before
    /// anything else. Either way the cursor file is written by the next
    /// append (or read, or shutdown).
    fn ack(&self, upto: Option<RecordId>) {
        let Some(upto) = upto else { return };
        match self.spool.try_lock() {
            Ok(mut s) => mark_acked(&mut s, &self.cursor, upto, &self.metrics),
            Err(std::sync::TryLockError::Poisoned(p)) => {
                mark_acked(&mut p.into_inner(), &self.cursor, upto, &self.metrics)
            }
            Err(std::sync::TryLockError::WouldBlock) => self.pending.add(&self.cursor, upto),
        }
    }

    /// Sends one batch until a collector takes it, refuses it as bad, or
    /// the agent stops.
    async fn deliver(&mut self, item: &Item, stop: &mut watch::Receiver<bool>) -> Delivered {
        let batch = item.batch();
        let mut backoff = BACKOFF_START;
        loop {
            // Failover: the preferred link first; the first link again once
            // it has had time to recover.
            let n = self.links.len();
            let start = if self.preferred != 0 && self.primary_tried.elapsed() >= self.primary_retry
            {
                self.primary_tried = Instant::now();
                0
            } else {
                self.preferred
            };
            let mut retry_after = None;
            for k in 0..n {
                let i = (start + k) % n;
                match self.send(i, item).await {
                    Outcome::Acked => {
                        if i != self.preferred {
                            tracing::info!(collector = %self.links[i].base, "delivering to this collector now");
                            self.preferred = i;
                            self.primary_tried = Instant::now();
                        }
                        return Delivered::Yes;
                    }
                    Outcome::Rejected(reason) => {
                        self.metrics.rejected.with(&[&self.links[i].base]).inc();
                        tracing::error!(collector = %self.links[i].base, seq = batch.seq.0, %reason, "collector rejected batch; not sending it again");
                        return Delivered::Rejected;
                    }
                    Outcome::Retry { reason, after } => {
                        self.metrics
                            .failures
                            .with(&[&self.links[i].base, reason])
                            .inc();
                        retry_after = after.or(retry_after);
                        tracing::warn!(collector = %self.links[i].base, reason, "delivery failed");
                    }
                    // `send` never returns it: it re-sends with every
                    // definition first.
                    Outcome::ResendDefinitions => {}
                }
            }
            let wait = retry_after.unwrap_or_else(|| jittered(backoff));
            backoff = (backoff * 2).min(BACKOFF_MAX);
            if sleep_or_stop(wait, stop).await {
                return Delivered::Stopped;
            }
        }
    }

    /// One attempt at one link, re-sending definitions once if asked.
    async fn send(&mut self, i: usize, item: &Item) -> Outcome {
        let batch = item.batch();
        let known = self.links[i].known.get(&batch.stream);
        let body = make_body(&mut self.raw, &self.table, item, known);
        let mut outcome = self.post(i, body).await;
        if outcome == Outcome::ResendDefinitions {
            self.links[i].known.remove(&batch.stream);
            let body = make_body(&mut self.raw, &self.table, item, None);
            outcome = match self.post(i, body).await {
                Outcome::ResendDefinitions => {
                    Outcome::Rejected("unknown refs after re-sending every definition".into())
                }
                other => other,
            };
        }
        let link = &mut self.links[i];
        let up = matches!(outcome, Outcome::Acked | Outcome::Rejected(_));
        self.metrics
            .up
            .with(&[&link.base])
            .set(if up { 1.0 } else { 0.0 });
        if outcome == Outcome::Acked {
            let known = link.known.entry(batch.stream.clone()).or_default();
            match item {
                Item::Spooled(b) => known.extend(b.definitions.iter().map(|d| d.series)),
                // Every ref it uses was known or went with it.
                Item::Live(b) => known.extend(
                    b.groups
                        .iter()
                        .flat_map(|g| g.values.iter().map(|(r, _)| *r)),
                ),
            }
            self.metrics.acked.with(&[&link.base]).inc();
            self.metrics
                .last_ack
                .with(&[&link.base])
                .set(UnixMillis::now().0 as f64 / 1000.0);
        }
        outcome
    }

    async fn post(&self, i: usize, body: Vec<u8>) -> Outcome {
        let started = Instant::now();
        let mut req = self
            .client
            .post(&self.links[i].push_url)
            .header("content-type", wire::CONTENT_TYPE)
            .header("content-encoding", wire::CONTENT_ENCODING)
            .header(wire::VERSION_HEADER, wire::VERSION.to_string())
            .body(body);
        if !self.token.is_empty() {
            req = req.bearer_auth(&self.token);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                let reason = if e.is_timeout() { "timeout" } else { "connect" };
                tracing::debug!(error = %e, "push failed");
                return Outcome::Retry {
                    reason,
                    after: None,
                };
            }
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s.min(300)));
        let text = match resp.text().await {
            Ok(t) => t,
            // A collector that dies mid-answer did not acknowledge.
            Err(_) => {
                return Outcome::Retry {
                    reason: "broken_response",
                    after: None,
                };
            }
        };
        let outcome = classify(status, retry_after, &text);
        if outcome == Outcome::Acked {
            self.metrics
                .duration
                .observe(started.elapsed().as_secs_f64());
        }
        outcome
    }
}

/// The compressed body for `item`, leaving out the definitions (and
/// then the metadata) in `known`. `sent_at` is the clock now, so the
/// collector can tell the agent's clock offset even for a batch sent
/// long after it was sampled.
fn make_body(
    buf: &mut Vec<u8>,
    table: &Mutex<SeriesTable>,
    item: &Item,
    known: Option<&HashSet<SeriesRef>>,
) -> Vec<u8> {
    let sent_at = UnixMillis::now();
    let raw = std::mem::take(buf);
    let raw = match item {
        Item::Spooled(b) => stripped_body(raw, b, known, sent_at),
        Item::Live(b) => {
            let all_known = known.is_some_and(|k| {
                b.groups
                    .iter()
                    .all(|g| g.values.iter().all(|(r, _)| k.contains(r)))
            });
            if all_known {
                // The usual case: values only.
                let mut body = Body::start(raw, b, sent_at);
                body.count(0);
                body.count(0);
                body.finish(&b.groups)
            } else {
                // New series (or a collector that forgot them): their
                // definitions from the table, still encoded.
                table
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .body_without(raw, b, known, sent_at)
            }
        }
    };
    let body = crate::encode::compress(&raw);
    let mut raw = raw;
    // Kept for the next body, but not at the size a body with every
    // definition needed (the first push, a re-send): the usual body holds
    // values only, a tenth of that.
    raw.shrink_to(2 * raw.len());
    *buf = raw;
    body
}

/// Waits until a batch is spooled or the agent stops; true if it stops
/// (or the spooler is gone, which only happens when stopping).
async fn wait_for_append(
    appended: &mut watch::Receiver<Latest>,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    tokio::select! {
        r = appended.changed() => r.is_err(),
        _ = stop.changed() => false,
    }
}

/// The definitions of `batch` the collector does not have yet.
fn unknown_definitions<'a>(
    batch: &'a Batch,
    known: Option<&'a HashSet<SeriesRef>>,
) -> impl Iterator<Item = &'a SeriesDefinition> + 'a {
    batch
        .definitions
        .iter()
        .filter(move |d| known.is_none_or(|k| !k.contains(&d.series)))
}

/// The uncompressed body of `batch` without the definitions in `known`,
/// and without metadata when no definition is left.
fn stripped_body(
    raw: Vec<u8>,
    batch: &Batch,
    known: Option<&HashSet<SeriesRef>>,
    sent_at: UnixMillis,
) -> Vec<u8> {
    let mut body = Body::start(raw, batch, sent_at);
    let n = unknown_definitions(batch, known).count();
    body.count(n);
    for d in unknown_definitions(batch, known) {
        body.item(d);
    }
    if n == 0 {
        body.count(0);
    } else {
        body.count(batch.metadata.len());
        for m in &batch.metadata {
            body.item(m);
        }
    }
    body.finish(&batch.groups)
}

/// Sleeps `d`; true if the agent is stopping.
async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    let deadline = tokio::time::Instant::now() + d;
    loop {
        if *stop.borrow() {
            return true;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return false,
            r = stop.changed() => if r.is_err() { return false },
        }
    }
}

fn classify(status: u16, retry_after: Option<Duration>, body: &str) -> Outcome {
    match status {
        200..=299 => Outcome::Acked,
        409 => Outcome::ResendDefinitions,
        400 | 413 | 415 | 422 => Outcome::Rejected(format!("HTTP {status}: {}", body.trim())),
        401 | 403 => {
            tracing::error!(status, "collector refused the token; check --token");
            Outcome::Retry {
                reason: "unauthorized",
                after: None,
            }
        }
        429 | 503 => Outcome::Retry {
            reason: "busy",
            after: retry_after,
        },
        _ => Outcome::Retry {
            reason: "http_error",
            after: retry_after,
        },
    }
}

/// `d` scaled by a factor in [0.8, 1.2), so agents that failed together do
/// not retry together.
fn jittered(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    // xorshift of the clock's nanoseconds: enough spread, no RNG crate.
    let mut x = nanos as u64 | 1;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    let factor = 0.8 + (x % 4000) as f64 / 10_000.0;
    d.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nines_shared::{Labels, Seq, SeriesDefinition};

    #[test]
    fn responses_are_classified_as_the_protocol_says() {
        assert_eq!(classify(200, None, ""), Outcome::Acked);
        assert_eq!(classify(409, None, ""), Outcome::ResendDefinitions);
        assert!(matches!(classify(400, None, "bad"), Outcome::Rejected(_)));
        assert!(matches!(classify(413, None, ""), Outcome::Rejected(_)));
        assert_eq!(
            classify(503, Some(Duration::from_secs(7)), ""),
            Outcome::Retry {
                reason: "busy",
                after: Some(Duration::from_secs(7))
            }
        );
        assert!(matches!(
            classify(401, None, ""),
            Outcome::Retry {
                reason: "unauthorized",
                ..
            }
        ));
        assert!(matches!(classify(500, None, ""), Outcome::Retry { .. }));
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        for _ in 0..100 {
            let d = jittered(Duration::from_secs(10));
            assert!(d >= Duration::from_secs(8) && d < Duration::from_secs(12));
        }
    }

    #[test]
    fn known_definitions_are_stripped() {
        let def = |r| SeriesDefinition {
            series: SeriesRef(r),
            labels: Labels::new("m", [("i", r.to_string())]),
        };
        let b = Batch {
            stream: StreamId {
                agent: "a".into(),
                epoch: UnixMillis(1),
            },
            seq: Seq(1),
            sent_at: UnixMillis(1),
            definitions: vec![def(0), def(1)],
            metadata: vec![nines_shared::MetricMetadata {
                name: "m".into(),
                kind: nines_shared::MetricKind::Gauge,
                help: "M.".into(),
                unit: String::new(),
            }],
            groups: vec![],
        };
        let decode = |raw: Vec<u8>| {
            let body = crate::encode::compress(&raw);
            wire::decode(&body, &WireLimits::default()).unwrap()
        };
        let known: HashSet<SeriesRef> = [SeriesRef(0)].into();
        let s = decode(stripped_body(Vec::new(), &b, Some(&known), UnixMillis(5)));
        assert_eq!(s.definitions, vec![def(1)]);
        assert_eq!(s.sent_at, UnixMillis(5));
        let all: HashSet<SeriesRef> = [SeriesRef(0), SeriesRef(1)].into();
        let s = decode(stripped_body(Vec::new(), &b, Some(&all), UnixMillis(5)));
        assert!(s.definitions.is_empty() && s.metadata.is_empty());
        let s = decode(stripped_body(Vec::new(), &b, None, UnixMillis(5)));
        assert_eq!(s.definitions.len(), 2);
        assert_eq!(s.metadata, b.metadata);
    }

    #[test]
    fn pending_acknowledgements_are_marked_by_the_next_blocking_call() {
        use crate::spool::{SpoolMetrics, SpoolOptions, SyncPolicy};
        let dir = tempfile::tempdir().unwrap();
        let registry = nines_shared::telemetry::Registry::new();
        let metrics = ShipMetrics::register(&registry);
        let opts = SpoolOptions {
            sync: SyncPolicy::None,
            ..SpoolOptions::default()
        };
        let mut spool = Spool::open(dir.path(), opts, SpoolMetrics::register(&registry)).unwrap();
        let c = spool.cursor("c-x").unwrap();
        for _ in 0..5 {
            spool.append(b"record").unwrap();
        }
        let spool = Mutex::new(spool);
        let pending = PendingAcks::default();
        // Acks made while the spool was busy, out of order: the furthest
        // counts.
        pending.add(&c, RecordId(3));
        pending.add(&c, RecordId(2));
        assert_eq!(spool.lock().unwrap().next_unread(&c).unwrap(), RecordId(1));
        write_acks(&spool, &pending, &metrics);
        let s = spool.lock().unwrap();
        assert_eq!(s.next_unread(&c).unwrap(), RecordId(4));
        assert_eq!(metrics.lag.with(&["c-x"]).get(), 2.0);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("cursor-c-x")).unwrap(),
            "00000000000000000004\n"
        );
    }

    #[test]
    fn cursor_names_are_usable_and_distinct() {
        assert_eq!(cursor_name("http://10.0.0.5:9797"), "c-10.0.0.5_9797");
        assert_ne!(cursor_name("http://a:1"), cursor_name("http://a:2"));
        assert!(cursor_name(&"x".repeat(500)).len() <= 100);
    }
}
