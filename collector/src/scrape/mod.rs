//! The scrape loop: pulls `/metrics` from configured targets (nines agents
//! or any Prometheus exporter) on an interval and stores what they expose,
//! as Prometheus does: `job` and `instance` labels (a target's own become
//! `exported_job`/`exported_instance`), the synthetic series `up`,
//! `scrape_duration_seconds`, `scrape_samples_scraped`,
//! `scrape_samples_post_metric_relabeling` and `scrape_series_added`, and
//! staleness markers for series that disappear or when the target goes down.
//!
//! It never serves HTTP and never writes SQLite itself: it hands series to
//! ingest like any other write.

use crate::ingest::Ingest;
use crate::storage::SeriesWrite;
use nines_shared::exposition::parse::{ParseError, parse};
use nines_shared::telemetry::{CounterVec, Registry};
use nines_shared::{LabelLimits, Labels, MetricMetadata, UnixMillis};
use std::collections::HashSet;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Prometheus's stale marker: a NaN with this bit pattern.
pub const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;
/// Largest response body read from a target.
const MAX_BODY_BYTES: usize = 32 << 20;

/// One target to pull.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// The `job` label.
    pub job: String,
    /// The `instance` label: `host:port`.
    pub instance: String,
    /// Full URL of the metrics page.
    pub url: String,
    /// Time between scrapes.
    pub interval: Duration,
    /// Longest one scrape may take.
    pub timeout: Duration,
    /// Most samples accepted per scrape; more fails the scrape.
    pub sample_limit: usize,
}

/// Scrape counters.
#[derive(Clone)]
pub struct ScrapeMetrics {
    scrapes: CounterVec,
}

impl ScrapeMetrics {
    /// Registers the metrics.
    pub fn register(r: &Registry) -> Self {
        ScrapeMetrics {
            scrapes: r.counter_vec(
                "nines_scrapes_total",
                "Scrapes of configured targets, by job and result (ok or the failure reason).",
                &["job", "result"],
            ),
        }
    }
}

/// Why one scrape failed.
#[derive(Debug, thiserror::Error)]
enum ScrapeError {
    #[error("request failed: {0}")]
    Http(String),
    #[error("target answered HTTP {0}")]
    Status(u16),
    #[error("response larger than {MAX_BODY_BYTES} bytes")]
    TooLarge,
    #[error("invalid exposition: {0}")]
    Parse(#[from] ParseError),
}

impl ScrapeError {
    fn reason(&self) -> &'static str {
        match self {
            ScrapeError::Http(_) => "http_error",
            ScrapeError::Status(_) => "http_status",
            ScrapeError::TooLarge => "too_large",
            ScrapeError::Parse(ParseError::TooManySamples(_)) => "sample_limit",
            ScrapeError::Parse(_) => "parse_error",
        }
    }
}

/// Starts one loop per target; they stop when `stop` turns true.
pub fn spawn(
    targets: Vec<Target>,
    ingest: Ingest,
    metrics: ScrapeMetrics,
    stop: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    targets
        .into_iter()
        .map(|t| {
            tracing::info!(job = %t.job, url = %t.url, interval_ms = t.interval.as_millis() as u64, "scraping");
            tokio::spawn(run_target(t, ingest.clone(), metrics.clone(), stop.clone()))
        })
        .collect()
}

async fn run_target(
    target: Target,
    ingest: Ingest,
    metrics: ScrapeMetrics,
    mut stop: watch::Receiver<bool>,
) {
    crate::notify::tls::install_default_provider();
    let client = match reqwest::Client::builder()
        .timeout(target.timeout)
        .user_agent(concat!("nines-collector/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(url = %target.url, error = %e, "cannot build scrape client");
            return;
        }
    };
    // Spread targets over the interval, as Prometheus does, so that many
    // targets do not all fire at once.
    let offset = spread(&target.url, target.interval);
    let mut ticker =
        tokio::time::interval_at(tokio::time::Instant::now() + offset, target.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut previous: HashSet<Labels> = HashSet::new();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => {
                if *stop.borrow() { return; }
                continue;
            }
        }
        let at = UnixMillis::now().0;
        let started = Instant::now();
        let result = scrape_once(&client, &target).await;
        let duration = started.elapsed().as_secs_f64();
        let (series, metadata, scraped, up) = match result {
            Ok((samples, metadata)) => {
                metrics.scrapes.with(&[&target.job, "ok"]).inc();
                let n = samples.len();
                (to_series(&target, samples, at), metadata, n, 1.0)
            }
            Err(e) => {
                metrics.scrapes.with(&[&target.job, e.reason()]).inc();
                tracing::warn!(job = %target.job, url = %target.url, error = %e, "scrape failed");
                (Vec::new(), Vec::new(), 0, 0.0)
            }
        };
        let current: HashSet<Labels> = series.iter().map(|s| s.labels.clone()).collect();
        let added = current.difference(&previous).count();
        let mut writes = series;
        // Series gone since the last scrape (all of them when the target is
        // down) get a staleness marker, so queries stop showing them at once.
        writes.extend(previous.difference(&current).map(|labels| SeriesWrite {
            labels: labels.clone(),
            samples: vec![(at, f64::from_bits(STALE_NAN))],
        }));
        for (name, value) in [
            ("up", up),
            ("scrape_duration_seconds", duration),
            ("scrape_samples_scraped", scraped as f64),
            ("scrape_samples_post_metric_relabeling", scraped as f64),
            ("scrape_series_added", added as f64),
        ] {
            writes.push(SeriesWrite {
                labels: Labels::new(
                    name,
                    [
                        ("job", target.job.as_str()),
                        ("instance", target.instance.as_str()),
                    ],
                ),
                samples: vec![(at, value)],
            });
        }
        previous = current;
        if let Err(e) = ingest.write_series(writes, metadata).await {
            tracing::error!(job = %target.job, error = %e, "scraped samples not stored");
        }
    }
}

async fn scrape_once(
    client: &reqwest::Client,
    target: &Target,
) -> Result<
    (
        Vec<nines_shared::exposition::parse::ParsedSample>,
        Vec<MetricMetadata>,
    ),
    ScrapeError,
> {
    let mut resp = client
        .get(&target.url)
        .header("accept", "text/plain;version=0.0.4;q=1,*/*;q=0.1")
        .send()
        .await
        .map_err(|e| ScrapeError::Http(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(ScrapeError::Status(resp.status().as_u16()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| ScrapeError::Http(e.to_string()))?
    {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(ScrapeError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    let text = String::from_utf8_lossy(&body);
    let limit = target.sample_limit;
    let exposition = parse(&text, limit, &LabelLimits::default())?;
    Ok((exposition.samples, exposition.metadata))
}

/// Adds the target's labels and groups samples by series.
fn to_series(
    target: &Target,
    samples: Vec<nines_shared::exposition::parse::ParsedSample>,
    at: i64,
) -> Vec<SeriesWrite> {
    let mut out: Vec<SeriesWrite> = Vec::with_capacity(samples.len());
    let mut seen: HashSet<Labels> = HashSet::with_capacity(samples.len());
    for s in samples {
        let mut labels = s.labels;
        for (name, value) in [("job", &target.job), ("instance", &target.instance)] {
            if let Some(own) = labels.get(name).map(str::to_string) {
                labels.set(&format!("exported_{name}"), &own);
            }
            labels.set(name, value);
        }
        // A series exposed twice in one page keeps its first value.
        if seen.insert(labels.clone()) {
            out.push(SeriesWrite {
                labels,
                samples: vec![(s.timestamp.unwrap_or(at), s.value)],
            });
        }
    }
    out
}

/// A stable offset in `[0, interval)` from the URL.
fn spread(url: &str, interval: Duration) -> Duration {
    // FNV-1a: stable across runs, unlike the std hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in url.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    let ms = interval.as_millis().max(1) as u64;
    Duration::from_millis(h % ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nines_shared::exposition::parse::ParsedSample;

    fn target() -> Target {
        Target {
            job: "node".into(),
            instance: "h:9100".into(),
            url: "http://h:9100/metrics".into(),
            interval: Duration::from_secs(15),
            timeout: Duration::from_secs(10),
            sample_limit: 1000,
        }
    }

    #[test]
    fn target_labels_win_and_exposed_ones_are_kept_as_exported() {
        let samples = vec![
            ParsedSample {
                labels: Labels::new("m", [("job", "app"), ("x", "1")]),
                value: 1.0,
                timestamp: None,
            },
            ParsedSample {
                labels: Labels::new("m", [("job", "app"), ("x", "1")]),
                value: 2.0,
                timestamp: None,
            },
            ParsedSample {
                labels: Labels::new("n", [("y", "2")]),
                value: 3.0,
                timestamp: Some(5),
            },
        ];
        let s = to_series(&target(), samples, 1000);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].labels.get("job"), Some("node"));
        assert_eq!(s[0].labels.get("exported_job"), Some("app"));
        assert_eq!(s[0].labels.get("instance"), Some("h:9100"));
        assert_eq!(s[0].samples, vec![(1000, 1.0)]);
        assert_eq!(s[1].samples, vec![(5, 3.0)]);
    }

    #[test]
    fn spread_is_stable_and_inside_the_interval() {
        let i = Duration::from_secs(15);
        assert_eq!(spread("http://a/metrics", i), spread("http://a/metrics", i));
        assert!(spread("http://b/metrics", i) < i);
    }
}
