//! The shipper: sends batches to a collector over HTTP, oldest first, and
//! keeps them until the collector acknowledges them. A collector that does
//! not answer is retried with exponential backoff and jitter; one that asks
//! for series definitions again gets them; one that says a batch is bad does
//! not get it again (counted). Until the durable spool exists, unsent
//! batches wait in a bounded in-memory queue whose overflow drops the oldest
//! batch, counted and logged.
//!
//! It never samples and never decides what a batch contains.

use crate::batch::SeriesTable;
use nines_shared::telemetry::{Counter, CounterVec, Gauge, Histogram, LATENCY_BUCKETS, Registry};
use nines_shared::{Batch, UnixMillis, wire};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The shipper's own metrics.
#[derive(Clone)]
pub struct ShipMetrics {
    sent: Counter,
    rejected: CounterVec,
    dropped: CounterVec,
    failures: CounterVec,
    duration: Histogram,
    queued: Gauge,
    last_success: Gauge,
}

impl ShipMetrics {
    /// Registers the metrics.
    pub fn register(r: &Registry) -> Self {
        ShipMetrics {
            sent: r.counter(
                "nines_agent_batches_acked_total",
                "Batches the collector acknowledged.",
            ),
            rejected: r.counter_vec(
                "nines_agent_batches_rejected_total",
                "Batches the collector refused as bad; they are not sent again.",
                &["reason"],
            ),
            dropped: r.counter_vec(
                "nines_agent_batches_dropped_total",
                "Batches dropped before delivery, by reason.",
                &["reason"],
            ),
            failures: r.counter_vec(
                "nines_agent_send_failures_total",
                "Failed delivery attempts that will be retried, by reason.",
                &["reason"],
            ),
            duration: r.histogram(
                "nines_agent_ship_duration_seconds",
                "Time from sending a batch to its acknowledgement.",
                LATENCY_BUCKETS,
            ),
            queued: r.gauge(
                "nines_agent_queued_batches",
                "Batches waiting to be delivered.",
            ),
            last_success: r.gauge(
                "nines_agent_last_ack_timestamp_seconds",
                "When the collector last acknowledged a batch.",
            ),
        }
    }
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

/// Sends batches to one collector.
pub struct Shipper {
    client: reqwest::Client,
    url: String,
    token: String,
    table: Arc<Mutex<SeriesTable>>,
    metrics: ShipMetrics,
    max_queued: usize,
}

impl Shipper {
    /// A shipper to `collector` (base URL) with a bearer token.
    pub fn new(
        collector: &str,
        token: &str,
        table: Arc<Mutex<SeriesTable>>,
        metrics: ShipMetrics,
        max_queued: usize,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("nines-agent/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Shipper {
            client,
            url: format!("{collector}{}", wire::PUSH_PATH),
            token: token.to_string(),
            table,
            metrics,
            max_queued,
        })
    }

    /// Delivers batches from `rx` until it closes (or `stop` turns true) and
    /// the queue is empty or cannot be delivered.
    pub async fn run(self, mut rx: mpsc::Receiver<Batch>, mut stop: watch::Receiver<bool>) {
        let mut queue: VecDeque<Batch> = VecDeque::new();
        let mut backoff = BACKOFF_START;
        let mut open = true;
        loop {
            while let Ok(b) = rx.try_recv() {
                self.enqueue(&mut queue, b);
            }
            self.metrics.queued.set(queue.len() as f64);
            let Some(front) = queue.front() else {
                if !open || *stop.borrow() {
                    return;
                }
                tokio::select! {
                    b = rx.recv() => match b {
                        Some(b) => self.enqueue(&mut queue, b),
                        None => open = false,
                    },
                    _ = stop.changed() => {}
                }
                continue;
            };
            let mut outcome = self.send(front).await;
            if outcome == Outcome::ResendDefinitions {
                let full = self
                    .table
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .with_all_definitions(front);
                tracing::info!(
                    seq = full.seq.0,
                    "collector asked for series definitions; re-sending"
                );
                outcome = match self.send(&full).await {
                    Outcome::ResendDefinitions => {
                        Outcome::Rejected("unknown refs after re-sending definitions".into())
                    }
                    other => other,
                };
                if let Some(f) = queue.front_mut() {
                    *f = full;
                }
            }
            match outcome {
                Outcome::Acked | Outcome::ResendDefinitions => {
                    queue.pop_front();
                    backoff = BACKOFF_START;
                }
                Outcome::Rejected(reason) => {
                    if let Some(b) = queue.pop_front() {
                        tracing::error!(seq = b.seq.0, %reason, "collector rejected batch; dropping it");
                    }
                    self.metrics.rejected.with(&["bad_batch"]).inc();
                }
                Outcome::Retry { reason, after } => {
                    self.metrics.failures.with(&[reason]).inc();
                    let wait = after.unwrap_or_else(|| jittered(backoff));
                    tracing::warn!(
                        reason,
                        wait_ms = wait.as_millis() as u64,
                        queued = queue.len(),
                        "delivery failed; will retry"
                    );
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    let deadline = tokio::time::Instant::now() + wait;
                    // Keep taking new batches while waiting.
                    loop {
                        tokio::select! {
                            _ = tokio::time::sleep_until(deadline) => break,
                            b = rx.recv(), if open => match b {
                                Some(b) => self.enqueue(&mut queue, b),
                                None => open = false,
                            },
                            _ = stop.changed() => {
                                if *stop.borrow() {
                                    self.report_unsent(&queue);
                                    return;
                                }
                            }
                        }
                        self.metrics.queued.set(queue.len() as f64);
                    }
                }
            }
        }
    }

    fn enqueue(&self, queue: &mut VecDeque<Batch>, b: Batch) {
        queue.push_back(b);
        if queue.len() > self.max_queued {
            if let Some(old) = queue.pop_front() {
                self.metrics.dropped.with(&["queue_full"]).inc();
                tracing::warn!(
                    seq = old.seq.0,
                    samples = old.sample_count(),
                    max = self.max_queued,
                    "queue full: dropped the oldest batch"
                );
            }
        }
    }

    fn report_unsent(&self, queue: &VecDeque<Batch>) {
        if !queue.is_empty() {
            self.metrics
                .dropped
                .with(&["shutdown"])
                .add(queue.len() as u64);
            tracing::warn!(batches = queue.len(), "stopping with undelivered batches");
        }
    }

    async fn send(&self, batch: &Batch) -> Outcome {
        // sent_at is the clock at this attempt, so the collector can tell
        // the agent's clock offset even for a batch retried much later.
        let body = wire::encode(&Batch {
            sent_at: UnixMillis::now(),
            ..batch.clone()
        });
        let started = Instant::now();
        let mut req = self
            .client
            .post(&self.url)
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
        let text = resp.text().await.unwrap_or_default();
        let outcome = classify(status, retry_after, &text);
        if outcome == Outcome::Acked {
            self.metrics.sent.inc();
            self.metrics
                .duration
                .observe(started.elapsed().as_secs_f64());
            self.metrics
                .last_success
                .set(UnixMillis::now().0 as f64 / 1000.0);
        }
        outcome
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
}
