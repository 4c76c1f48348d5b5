//! Storage benchmarks, nines next to a real Prometheus 2.42 on the same
//! data in the same run. Each prints nines' figure, Prometheus's, and the
//! ratio.
//!
//! - size: 1,000 node-like series (10 hosts × 100, from
//!   `nines_tests::loadgen`) for one hour at 1 s. nines writes them through
//!   its storage engine (10 s of every series per call, as a remote_write
//!   sender would, background compaction running), compacts, reads every
//!   sample back bit for bit, and the SQLite file (plus WAL) is measured;
//!   Prometheus gets blocks made from the same samples by `promtool tsdb
//!   create-blocks-from openmetrics`, and the block directory is measured.
//!   Bytes per sample (nines' include its 1m and 1h rollups, whose encoded
//!   rows are also shown apart). Target: nines no more than Prometheus.
//! - ingest: the load generator simulates `NINES_BENCH_HOSTS` hosts (default
//!   200, so 20,000 series) sending 5 s of their 100 series per request
//!   (500 samples, Prometheus's default `max_samples_per_send`), from 4
//!   sender threads, to a fresh Prometheus (`--web.enable-remote-write-
//!   receiver`) and to a fresh nines collector, over remote_write, and to
//!   another nines over its native push. Request bodies are built before
//!   the clock starts; the figure is samples acknowledged per second of
//!   wall time, with the p50 and p99 request latency. Target: nines at
//!   least 1.5 times Prometheus.
//! - memory: each server's RSS after its ingest run, less its RSS before
//!   it, per active series. Target: nines no more than Prometheus.
//!
//! The 24-hour range query over 1,000 series at a 60 s step is timed by the
//! query benchmark (`cargo bench -p nines-tests --bench query`).
//!
//! Run: `cargo build --release --bins -p nines-collector -p nines-agent`
//! then `cargo bench -p nines-tests --bench storage` (same
//! CARGO_TARGET_DIR). `NINES_BENCH=size` or `ingest` runs one part;
//! `NINES_BENCH_MINUTES` shortens the hour of the size part;
//! `NINES_BENCH_ROUNDS` (default 60) sets the requests per simulated host.

use nines_collector::ingest::remote_write::{SeriesWrite, encode};
use nines_collector::query::querier::Querier;
use nines_collector::storage::{QueryLimits, Storage, StorageMetrics, StorageOptions};
use nines_shared::telemetry::Registry;
use nines_shared::{Batch, SampleGroup, Seq, SeriesDefinition, SeriesRef, StreamId, UnixMillis};
use nines_tests::loadgen::{Fleet, write_openmetrics};
use nines_tests::prometheus::Prometheus;
use nines_tests::{Collector, in_ci, peer};
use promql_parser::label::{MatchOp, Matcher, Matchers};
use std::io::{BufWriter, Write as _};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const WINDOW_MS: i64 = 2 * 3600 * 1000;
const SENDERS: usize = 4;
/// Seconds of one host's series per request.
const SECONDS_PER_REQUEST: usize = 5;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn missing(what: &str) -> ! {
    eprintln!("storage bench: {what} is needed (apt-get install prometheus)");
    std::process::exit(if in_ci() { 1 } else { 0 });
}

/// Total size of the files under `dir`.
fn du(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(m) = e.metadata() else { continue };
        total += if m.is_dir() { du(&e.path()) } else { m.len() };
    }
    total
}

fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

// ---------------------------------------------------------------- size

fn size(promtool: &Path) {
    let seconds = env_usize("NINES_BENCH_MINUTES", 60) * 60;
    let now = UnixMillis::now().0;
    // The start of the previous 2 h window: one block for Prometheus, one
    // chunk window for nines, well inside both retentions.
    let t0 = now - now.rem_euclid(WINDOW_MS) - WINDOW_MS;
    let mut fleet = Fleet::new(10, 0x9e37_79b9_7f4a_7c15);
    let series = fleet.series();
    // Agent-like timestamps: each second plus 0–2 ms of timer jitter.
    let all = fleet.take(t0, seconds, 2);
    let samples = series * seconds;
    let dir = tempfile::tempdir().expect("tempdir");

    // nines: its storage engine, as the collector runs it.
    let path = dir.path().join("nines.db");
    let storage = Storage::open_with_options(
        &path,
        QueryLimits::default(),
        StorageMetrics::register(&Registry::new()),
        StorageOptions::default(),
    )
    .expect("open storage");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let started = Instant::now();
    for from in (0..seconds).step_by(10) {
        let to = (from + 10).min(seconds);
        let writes: Vec<SeriesWrite> = all
            .iter()
            .map(|s| SeriesWrite {
                labels: s.labels.clone(),
                samples: s.samples[from..to].to_vec(),
            })
            .collect();
        rt.block_on(storage.write_series(writes, vec![]))
            .expect("write");
    }
    rt.block_on(storage.compact_now()).expect("compact");
    let took = started.elapsed();
    // Every sample back, bit for bit.
    let any = Matchers::new(vec![Matcher::new(MatchOp::Equal, "job", "node")]);
    let mut got = storage.select(&any, i64::MIN, i64::MAX).expect("select");
    got.sort_by(|a, b| a.labels.cmp(&b.labels));
    let mut want: Vec<&SeriesWrite> = all.iter().collect();
    want.sort_by(|a, b| a.labels.cmp(&b.labels));
    assert_eq!(got.len(), want.len(), "series read back");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.labels, w.labels);
        let bits = |v: &[(i64, f64)]| -> Vec<(i64, u64)> {
            v.iter().map(|&(t, x)| (t, x.to_bits())).collect()
        };
        assert!(
            bits(&g.samples) == bits(&w.samples),
            "{}: samples differ",
            w.labels
        );
    }
    let [m_rows, m_bytes, h_rows, h_bytes] = storage.rollup_usage().expect("rollup usage");
    drop(storage);
    let nines_bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0)
        + std::fs::metadata(path.with_extension("db-wal"))
            .map(|m| m.len())
            .unwrap_or(0);

    // Prometheus: blocks from the same samples.
    let om = dir.path().join("data.om");
    {
        let mut out = BufWriter::new(std::fs::File::create(&om).expect("openmetrics file"));
        write_openmetrics(&all, &mut out).expect("write openmetrics");
        out.flush().expect("flush");
    }
    let blocks = dir.path().join("blocks");
    let out = Command::new(promtool)
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&om)
        .arg(&blocks)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool create-blocks-from failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let prom_bytes = du(&blocks);

    let n = nines_bytes as f64 / samples as f64;
    let p = prom_bytes as f64 / samples as f64;
    println!("== size: {series} series x {seconds} s at 1 s = {samples} samples");
    println!(
        "  nines:      {nines_bytes} bytes (SQLite file + WAL) = {n:.3} bytes/sample (written and compacted in {:.1} s, read back bit for bit)",
        took.as_secs_f64()
    );
    println!(
        "  of which rollups (encoded rows, in the file): 1m {m_rows} rows {m_bytes} bytes = {:.3} bytes/sample, 1h {h_rows} rows {h_bytes} bytes = {:.3} bytes/sample",
        m_bytes as f64 / samples as f64,
        h_bytes as f64 / samples as f64
    );
    println!("  Prometheus: {prom_bytes} bytes (promtool blocks) = {p:.3} bytes/sample");
    println!("  ratio nines/Prometheus: {:.2} (target <= 1)", n / p);
}

// -------------------------------------------------------------- ingest

/// A server under load.
struct Server {
    pid: u32,
    url: String,
    token: String,
    /// The process (a Prometheus or a Collector), killed when dropped.
    _process: Box<dyn std::any::Any + Send + Sync>,
}

fn start_prometheus(binary: &Path, dir: &Path) -> Server {
    let p = Prometheus::start(
        binary,
        dir,
        "scrape_interval: 1m",
        None,
        &["--web.enable-remote-write-receiver"],
    );
    Server {
        pid: p.pid(),
        url: p.url.clone(),
        token: String::new(),
        _process: Box::new(p),
    }
}

fn start_nines(dir: &Path) -> Server {
    let c = Collector::start(dir, &["--no-local-agent"]);
    Server {
        pid: c.pid(),
        url: c.url.clone(),
        token: c.token.clone(),
        _process: Box::new(c),
    }
}

/// One prepared request: which sender sends it, and its body.
struct Request {
    sender: usize,
    body: Vec<u8>,
    samples: usize,
}

/// Remote-write bodies: per round, per host, 5 s of its series.
fn remote_write_requests(fleet: &mut Fleet, t0: i64, rounds: usize) -> Vec<Request> {
    let hosts = fleet.hosts.len();
    let mut out = Vec::with_capacity(hosts * rounds);
    for r in 0..rounds {
        let times: Vec<i64> = (0..SECONDS_PER_REQUEST)
            .map(|s| t0 + ((r * SECONDS_PER_REQUEST + s) as i64) * 1000)
            .collect();
        for h in 0..hosts {
            let series = fleet.host_round(h, &times);
            let samples = series.iter().map(|s| s.samples.len()).sum();
            out.push(Request {
                sender: h % SENDERS,
                body: encode(&series),
                samples,
            });
        }
    }
    out
}

/// Native push bodies for the same stream: one stream per host, its
/// series defined in its first batch and referred to by number after.
fn native_requests(fleet: &mut Fleet, t0: i64, rounds: usize) -> Vec<Request> {
    let hosts = fleet.hosts.len();
    let mut out = Vec::with_capacity(hosts * rounds);
    let epoch = UnixMillis::now();
    for r in 0..rounds {
        let times: Vec<i64> = (0..SECONDS_PER_REQUEST)
            .map(|s| t0 + ((r * SECONDS_PER_REQUEST + s) as i64) * 1000)
            .collect();
        for h in 0..hosts {
            let series = fleet.host_round(h, &times);
            let definitions = if r == 0 {
                series
                    .iter()
                    .enumerate()
                    .map(|(i, s)| SeriesDefinition {
                        series: SeriesRef(i as u32),
                        labels: s.labels.clone(),
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let groups: Vec<SampleGroup> = times
                .iter()
                .enumerate()
                .map(|(k, &at)| SampleGroup {
                    at: UnixMillis(at),
                    values: series
                        .iter()
                        .enumerate()
                        .map(|(i, s)| (SeriesRef(i as u32), s.samples[k].1))
                        .collect(),
                })
                .collect();
            let batch = Batch {
                stream: StreamId {
                    agent: format!("bench-host-{h}"),
                    epoch,
                },
                seq: Seq(r as u64 + 1),
                sent_at: UnixMillis::now(),
                definitions,
                metadata: Vec::new(),
                groups,
            };
            out.push(Request {
                sender: h % SENDERS,
                samples: batch.sample_count(),
                body: nines_shared::wire::encode(&batch),
            });
        }
    }
    out
}

#[derive(Clone, Copy)]
enum Protocol {
    RemoteWrite,
    Native,
}

struct IngestFigures {
    samples_per_s: f64,
    p50: Duration,
    p99: Duration,
    rss_delta: u64,
    rss_after: u64,
}

/// Sends every request (each sender its own, in order) and measures.
fn run_ingest(server: &Server, requests: &[Request], protocol: Protocol) -> IngestFigures {
    let rss_before = rss_bytes(server.pid);
    let started = Instant::now();
    let mut latencies: Vec<Duration> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..SENDERS)
            .map(|sender| {
                scope.spawn(move || {
                    nines_collector::notify::tls::install_default_provider();
                    let client = reqwest::blocking::Client::builder()
                        .timeout(Duration::from_secs(60))
                        .build()
                        .expect("client");
                    let mut lat = Vec::new();
                    for r in requests.iter().filter(|r| r.sender == sender) {
                        let req = match protocol {
                            Protocol::RemoteWrite => client
                                .post(format!("{}/api/v1/write", server.url))
                                .header("content-encoding", "snappy")
                                .header("content-type", "application/x-protobuf")
                                .header("x-prometheus-remote-write-version", "0.1.0"),
                            Protocol::Native => client
                                .post(format!("{}{}", server.url, nines_shared::wire::PUSH_PATH))
                                .header("content-type", nines_shared::wire::CONTENT_TYPE)
                                .header("content-encoding", "zstd")
                                .header(
                                    nines_shared::wire::VERSION_HEADER,
                                    nines_shared::wire::VERSION.to_string(),
                                ),
                        };
                        let req = if server.token.is_empty() {
                            req
                        } else {
                            req.header("authorization", format!("Bearer {}", server.token))
                        };
                        let t = Instant::now();
                        let resp = req.body(r.body.clone()).send().expect("send");
                        let status = resp.status();
                        let text = resp.text().unwrap_or_default();
                        lat.push(t.elapsed());
                        assert!(status.is_success(), "refused: {status} {text}");
                    }
                    lat
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("sender"))
            .collect()
    });
    let wall = started.elapsed();
    // Let a garbage collector or a compaction settle before reading RSS.
    std::thread::sleep(Duration::from_secs(2));
    let rss_after = rss_bytes(server.pid);
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    let samples: usize = requests.iter().map(|r| r.samples).sum();
    IngestFigures {
        samples_per_s: samples as f64 / wall.as_secs_f64(),
        p50: pct(0.5),
        p99: pct(0.99),
        rss_delta: rss_after.saturating_sub(rss_before),
        rss_after,
    }
}

fn ingest(prometheus: &Path) {
    let hosts = env_usize("NINES_BENCH_HOSTS", 200);
    let rounds = env_usize("NINES_BENCH_ROUNDS", 60);
    // The stream ends a minute ago, so nothing is in the future.
    let t0 = UnixMillis::now().0 - (rounds * SECONDS_PER_REQUEST) as i64 * 1000 - 60_000;
    let seed = 0x2545_f491_4f6c_dd1d;
    let rw = remote_write_requests(&mut Fleet::new(hosts, seed), t0, rounds);
    let native = native_requests(&mut Fleet::new(hosts, seed), t0, rounds);
    let series = Fleet::new(hosts, seed).series();
    let samples: usize = rw.iter().map(|r| r.samples).sum();
    let dir = tempfile::tempdir().expect("tempdir");

    let prom = start_prometheus(prometheus, &dir.path().join("prometheus"));
    let p = run_ingest(&prom, &rw, Protocol::RemoteWrite);
    drop(prom);
    let nines = start_nines(&dir.path().join("nines-rw"));
    let n = run_ingest(&nines, &rw, Protocol::RemoteWrite);
    drop(nines);
    let nines = start_nines(&dir.path().join("nines-native"));
    let nn = run_ingest(&nines, &native, Protocol::Native);
    drop(nines);

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "== ingest: {hosts} hosts x {rounds} requests of {SECONDS_PER_REQUEST} s x 100 series = {samples} samples, {SENDERS} senders"
    );
    for (name, f) in [
        ("Prometheus remote_write", &p),
        ("nines remote_write     ", &n),
        ("nines native push      ", &nn),
    ] {
        println!(
            "  {name}: {:>9.0} samples/s, p50 {:.2} ms, p99 {:.2} ms",
            f.samples_per_s,
            ms(f.p50),
            ms(f.p99)
        );
    }
    println!(
        "  ratio nines/Prometheus: remote_write {:.2}, native {:.2} (target >= 1.5)",
        n.samples_per_s / p.samples_per_s,
        nn.samples_per_s / p.samples_per_s
    );
    println!("== memory: RSS after ingest, growth per active series ({series} series)");
    for (name, f) in [
        ("Prometheus             ", &p),
        ("nines remote_write     ", &n),
        ("nines native push      ", &nn),
    ] {
        println!(
            "  {name}: RSS {:.1} MiB, +{:.1} MiB = {:.0} bytes/series",
            f.rss_after as f64 / 1048576.0,
            f.rss_delta as f64 / 1048576.0,
            f.rss_delta as f64 / series as f64
        );
    }
    println!(
        "  ratio nines/Prometheus: remote_write {:.2}, native {:.2} (target <= 1)",
        n.rss_delta as f64 / p.rss_delta.max(1) as f64,
        nn.rss_delta as f64 / p.rss_delta.max(1) as f64
    );
}

fn main() {
    // `cargo bench` passes --bench; nothing else is taken.
    let which = std::env::var("NINES_BENCH").unwrap_or_default();
    let promtool = peer("promtool", "prometheus").unwrap_or_else(|| missing("promtool"));
    let prometheus = peer("prometheus", "prometheus").unwrap_or_else(|| missing("prometheus"));
    if which.is_empty() || which == "size" {
        size(&promtool);
    }
    if which.is_empty() || which == "ingest" {
        ingest(&prometheus);
    }
}
