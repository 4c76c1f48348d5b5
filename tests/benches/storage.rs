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
//!   (500 samples, Prometheus's default `max_samples_per_send`), to a
//!   fresh Prometheus (`--web.enable-remote-write-receiver`) and to a fresh
//!   nines collector, over remote_write, and to another nines over its
//!   native push. The hosts are shared among concurrent senders, each
//!   waiting for one answer before its next request, as that many agents
//!   pushing at once would; this runs at each sender count of
//!   `NINES_BENCH_SENDERS` (comma-separated, default 4,16,64). Request
//!   bodies are built before the clock starts; the figure is samples
//!   acknowledged per second of wall time, with the p50 and p99 request
//!   latency.
//!   At each sender count the comparison runs `NINES_BENCH_RUNS` times
//!   (default 5), the contenders taking turns going first, each on a fresh
//!   server; every run is printed with its ratios, then the medians and
//!   the spread. Last, each server's capacity: its best median over the
//!   sender counts. Target: nines' capacity at least 1.5 times
//!   Prometheus's. With few senders the figure is a latency figure (each
//!   sender waits for its answer, and nines answers only after its fsync,
//!   while Prometheus does not sync its WAL per request); with enough
//!   senders each server is as busy as it can be.
//! - memory: each server's RSS after its ingest run, less its RSS before
//!   it, per active series (median of the runs). Target: nines no more
//!   than Prometheus.
//! - replay: after the remote_write stream each server is killed (SIGKILL)
//!   and started again on its data: nines replays its ingest log into the
//!   head, Prometheus its WAL. Time until each serves, and the replay time
//!   each logs.
//!
//! The 24-hour range query over 1,000 series at a 60 s step is timed by the
//! query benchmark (`cargo bench -p nines-tests --bench query`).
//!
//! Run: `cargo build --release --bins -p nines-collector -p nines-agent`
//! then `cargo bench -p nines-tests --bench storage` (same
//! CARGO_TARGET_DIR). `NINES_BENCH=size`, `ingest` or `replay` runs one part;
//! `NINES_BENCH_MINUTES` shortens the hour of the size part;
//! `NINES_BENCH_ROUNDS` (default 60) sets the requests per simulated host.

use nines_collector::ingest::remote_write::{SeriesWrite, encode};
use nines_collector::query::querier::Querier;
use nines_collector::storage::{QueryLimits, Storage, StorageMetrics, StorageOptions};
use nines_shared::telemetry::Registry;
use nines_shared::{Batch, SampleGroup, Seq, SeriesDefinition, SeriesRef, StreamId, UnixMillis};
use nines_tests::loadgen::{Fleet, write_openmetrics};
use nines_tests::prometheus::Prometheus;
use nines_tests::{Collector, in_ci, median, peer, wait_for_within};
use promql_parser::label::{MatchOp, Matcher, Matchers};
use std::io::{BufWriter, Write as _};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const WINDOW_MS: i64 = 2 * 3600 * 1000;
/// The fewest concurrent senders the ingest part runs with, and the count
/// the replay part fills the servers with.
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

/// CPU time (user + system) the process used so far, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (in parentheses): utime and stime are the
    // 12th and 13th, in clock ticks.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    f.iter().sum::<f64>() / hz
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

/// One prepared request: which host it comes from, and its body.
struct Request {
    host: usize,
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
                host: h,
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
                host: h,
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
    /// Server CPU time per sample, in microseconds.
    cpu_us_per_sample: f64,
}

/// Sends every request (each sender its own, in order) and measures.
fn run_ingest(
    server: &Server,
    requests: &[Request],
    protocol: Protocol,
    senders: usize,
) -> IngestFigures {
    let rss_before = rss_bytes(server.pid);
    let cpu_before = cpu_seconds(server.pid);
    let started = Instant::now();
    let mut latencies: Vec<Duration> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..senders)
            .map(|sender| {
                scope.spawn(move || {
                    nines_collector::notify::tls::install_default_provider();
                    let client = reqwest::blocking::Client::builder()
                        .timeout(Duration::from_secs(60))
                        .build()
                        .expect("client");
                    let mut lat = Vec::new();
                    for r in requests.iter().filter(|r| r.host % senders == sender) {
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
    let cpu = cpu_seconds(server.pid) - cpu_before;
    // Let a garbage collector or a compaction settle before reading RSS:
    // until two readings a poll apart agree.
    let mut last = rss_bytes(server.pid);
    let rss_after = wait_for_within(
        "the server's RSS to settle",
        Duration::from_secs(10),
        || {
            let now = rss_bytes(server.pid);
            let settled = now == last;
            last = now;
            settled.then_some(now)
        },
    );
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    let samples: usize = requests.iter().map(|r| r.samples).sum();
    IngestFigures {
        samples_per_s: samples as f64 / wall.as_secs_f64(),
        p50: pct(0.5),
        p99: pct(0.99),
        rss_delta: rss_after.saturating_sub(rss_before),
        rss_after,
        cpu_us_per_sample: cpu * 1e6 / samples as f64,
    }
}

/// The same stream of requests for every server.
struct Load {
    hosts: usize,
    rounds: usize,
    series: usize,
    samples: usize,
    rw: Vec<Request>,
    native: Vec<Request>,
}

fn load() -> Load {
    let hosts = env_usize("NINES_BENCH_HOSTS", 200);
    let rounds = env_usize("NINES_BENCH_ROUNDS", 60);
    // The stream ends a minute ago, so nothing is in the future.
    let t0 = UnixMillis::now().0 - (rounds * SECONDS_PER_REQUEST) as i64 * 1000 - 60_000;
    let seed = 0x2545_f491_4f6c_dd1d;
    let rw = remote_write_requests(&mut Fleet::new(hosts, seed), t0, rounds);
    let native = native_requests(&mut Fleet::new(hosts, seed), t0, rounds);
    Load {
        hosts,
        rounds,
        series: Fleet::new(hosts, seed).series(),
        samples: rw.iter().map(|r| r.samples).sum(),
        rw,
        native,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The three contenders, in the order of [`IngestRun`]'s fields.
const CONTENDERS: [&str; 3] = [
    "Prometheus remote_write",
    "nines remote_write     ",
    "nines native push      ",
];

/// One round of the ingest benchmark: each contender on a fresh server.
struct IngestRun {
    figures: [IngestFigures; 3],
}

impl IngestRun {
    fn ratios(&self) -> (f64, f64) {
        let p = self.figures[0].samples_per_s;
        (
            self.figures[1].samples_per_s / p,
            self.figures[2].samples_per_s / p,
        )
    }
}

fn ingest(prometheus: &Path) {
    let runs = env_usize("NINES_BENCH_RUNS", 5).max(1);
    let levels = sender_levels();
    let l = load();
    let dir = tempfile::tempdir().expect("tempdir");
    println!(
        "== ingest: {} hosts x {} requests of {SECONDS_PER_REQUEST} s x 100 series = {} samples, senders {levels:?}, {runs} runs each",
        l.hosts, l.rounds, l.samples
    );
    // Per level, the median samples/s of each contender.
    let mut best: Vec<(usize, [f64; 3])> = Vec::new();
    for &senders in &levels {
        let all = ingest_level(prometheus, &l, dir.path(), senders, runs);
        print_level(&l, senders, runs, &all);
        let med = |i: usize| median(all.iter().map(|r| r.figures[i].samples_per_s).collect());
        best.push((senders, [med(0), med(1), med(2)]));
    }
    if best.len() > 1 {
        // Capacity: each server at the sender count where it did best.
        let top = |i: usize| {
            best.iter()
                .map(|(n, v)| (*n, v[i]))
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .expect("a level ran")
        };
        let [p, rw, nat] = [top(0), top(1), top(2)];
        println!("== ingest capacity: each server's best median over the sender counts");
        for (name, (n, v)) in CONTENDERS.iter().zip([p, rw, nat]) {
            println!("  {name}: {v:>9.0} samples/s (at {n} senders)");
        }
        println!(
            "  ratio nines/Prometheus: remote_write {:.2}, native {:.2} (target >= 1.5)",
            rw.1 / p.1,
            nat.1 / p.1
        );
    }
}

/// The sender counts to run (`NINES_BENCH_SENDERS`, comma-separated;
/// default 4, 16 and 64): from a few agents pushing at once to many.
fn sender_levels() -> Vec<usize> {
    let raw = std::env::var("NINES_BENCH_SENDERS").unwrap_or_default();
    if raw.trim().is_empty() {
        return vec![SENDERS, 16, 64];
    }
    raw.split(',')
        .map(|v| match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => panic!("NINES_BENCH_SENDERS: {v:?} is not a positive number of senders"),
        })
        .collect()
}

/// `runs` rounds of the three contenders at one sender count, each on a
/// fresh server, every run printed.
fn ingest_level(
    prometheus: &Path,
    l: &Load,
    dir: &Path,
    senders: usize,
    runs: usize,
) -> Vec<IngestRun> {
    println!("-- {senders} senders");
    let mut all: Vec<IngestRun> = Vec::new();
    for run in 0..runs {
        // The contenders take turns going first, so a noisy neighbour or a
        // warm page cache does not always favour the same one.
        let mut figures: [Option<IngestFigures>; 3] = [None, None, None];
        for k in 0..3 {
            let which = (run + k) % 3;
            let d = dir.join(format!("s{senders}-run{run}-{which}"));
            figures[which] = Some(match which {
                0 => run_ingest(
                    &start_prometheus(prometheus, &d),
                    &l.rw,
                    Protocol::RemoteWrite,
                    senders,
                ),
                1 => run_ingest(&start_nines(&d), &l.rw, Protocol::RemoteWrite, senders),
                _ => run_ingest(&start_nines(&d), &l.native, Protocol::Native, senders),
            });
            let _ = std::fs::remove_dir_all(&d);
        }
        let r = IngestRun {
            figures: figures.map(|f| f.expect("every contender ran")),
        };
        let (rw, native) = r.ratios();
        println!(
            "  run {}: Prometheus {:>9.0}/s (p99 {:.1} ms), nines remote_write {:>9.0}/s (p99 {:.1} ms), native {:>9.0}/s (p99 {:.1} ms); ratio remote_write {rw:.2}, native {native:.2}",
            run + 1,
            r.figures[0].samples_per_s,
            ms(r.figures[0].p99),
            r.figures[1].samples_per_s,
            ms(r.figures[1].p99),
            r.figures[2].samples_per_s,
            ms(r.figures[2].p99),
        );
        all.push(r);
    }
    all
}

/// Medians, spread of the ratios, CPU and memory of one sender count.
fn print_level(l: &Load, senders: usize, runs: usize, all: &[IngestRun]) {
    println!("  median of {runs} runs at {senders} senders:");
    let med = |i: usize, f: &dyn Fn(&IngestFigures) -> f64| {
        median(all.iter().map(|r| f(&r.figures[i])).collect())
    };
    for (i, name) in CONTENDERS.iter().enumerate() {
        println!(
            "  {name}: {:>9.0} samples/s, p50 {:.2} ms, p99 {:.2} ms, server CPU {:.3} µs/sample",
            med(i, &|f| f.samples_per_s),
            med(i, &|f| ms(f.p50)),
            med(i, &|f| ms(f.p99)),
            med(i, &|f| f.cpu_us_per_sample),
        );
    }
    let spread = |v: Vec<f64>| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (median(v), lo, hi)
    };
    let (rw, rw_lo, rw_hi) = spread(all.iter().map(|r| r.ratios().0).collect());
    let (nat, nat_lo, nat_hi) = spread(all.iter().map(|r| r.ratios().1).collect());
    println!(
        "  ratio nines/Prometheus (median of per-run ratios, min-max): remote_write {rw:.2} ({rw_lo:.2}-{rw_hi:.2}), native {nat:.2} ({nat_lo:.2}-{nat_hi:.2}) (target >= 1.5)"
    );
    let pc = med(0, &|f| f.cpu_us_per_sample);
    println!(
        "  server CPU per sample, Prometheus/nines: remote_write {:.2}, native {:.2} (how many times the CPU nines spends)",
        pc / med(1, &|f| f.cpu_us_per_sample),
        pc / med(2, &|f| f.cpu_us_per_sample)
    );
    println!(
        "== memory at {senders} senders: RSS after ingest, growth per active series ({} series), median of {runs} runs",
        l.series
    );
    for (i, name) in CONTENDERS.iter().enumerate() {
        println!(
            "  {name}: RSS {:.1} MiB, +{:.1} MiB = {:.0} bytes/series",
            med(i, &|f| f.rss_after as f64) / 1048576.0,
            med(i, &|f| f.rss_delta as f64) / 1048576.0,
            med(i, &|f| f.rss_delta as f64) / l.series as f64
        );
    }
    let p = med(0, &|f| f.rss_delta as f64).max(1.0);
    println!(
        "  ratio nines/Prometheus: remote_write {:.2}, native {:.2} (target <= 1)",
        med(1, &|f| f.rss_delta as f64) / p,
        med(2, &|f| f.rss_delta as f64) / p
    );
}

// -------------------------------------------------------------- replay

/// The first `key=<seconds>` (or Go duration) on a log line containing
/// `marker`, in seconds.
fn logged_seconds(log: &str, marker: &str, key: &str) -> Option<f64> {
    let line = strip_ansi(log.lines().find(|l| l.contains(marker))?);
    let line = line.as_str();
    let at = line.find(&format!("{key}="))? + key.len() + 1;
    let v: String = line[at..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    let v = v.trim_matches('"');
    if let Ok(s) = v.parse::<f64>() {
        return Some(s);
    }
    // Go durations: 1.2s, 350ms, 80µs, 1m2.5s.
    let (num, unit): (String, String) = (
        v.chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect(),
        v.chars()
            .skip_while(|c| c.is_ascii_digit() || *c == '.')
            .collect(),
    );
    let n: f64 = num.parse().ok()?;
    match unit.as_str() {
        "s" => Some(n),
        "ms" => Some(n / 1e3),
        "µs" | "us" => Some(n / 1e6),
        "ns" => Some(n / 1e9),
        _ => None,
    }
}

/// A log line without its terminal colour codes.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // ESC [ ... letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A `key=value` field of the first log line containing `marker`.
fn logged_field(log: &str, marker: &str, key: &str) -> String {
    log.lines()
        .find(|l| l.contains(marker))
        .map(strip_ansi)
        .and_then(|l| {
            let v = l.split(&format!("{key}=")).nth(1)?;
            v.split_whitespace().next().map(str::to_string)
        })
        .unwrap_or_else(|| "?".to_string())
}

/// Start-up after a crash with the ingest benchmark's data in the log:
/// each server takes the remote_write stream, is killed (SIGKILL, so
/// nothing is compacted or checkpointed on the way out), and is started
/// again on the same directory. Time to serving, and the replay time each
/// logs.
fn replay(prometheus: &Path) {
    let l = load();
    let dir = tempfile::tempdir().expect("tempdir");
    let pdir = dir.path().join("prometheus");
    let ndir = dir.path().join("nines");
    let prom = start_prometheus(prometheus, &pdir);
    run_ingest(&prom, &l.rw, Protocol::RemoteWrite, SENDERS);
    drop(prom);
    let nines = start_nines(&ndir);
    run_ingest(&nines, &l.rw, Protocol::RemoteWrite, SENDERS);
    drop(nines);
    let db = ndir.join("nines.db");
    let db_bytes = std::fs::metadata(&db).map_or(0, |m| m.len());
    let wal_bytes = std::fs::metadata(db.with_extension("db-wal")).map_or(0, |m| m.len());

    let started = Instant::now();
    let prom = Prometheus::start(
        prometheus,
        &pdir,
        "scrape_interval: 1m",
        None,
        &["--web.enable-remote-write-receiver"],
    );
    let p_ready = started.elapsed();
    drop(prom);
    let p_log = std::fs::read_to_string(pdir.join("prometheus.log")).unwrap_or_default();
    let p_replay = logged_seconds(&p_log, "WAL replay completed", "total_replay_duration");

    let started = Instant::now();
    let nines = Collector::start(&ndir, &["--no-local-agent"]);
    let n_ready = started.elapsed();
    let n_log = nines.stderr();
    drop(nines);
    let n_replay = logged_seconds(&n_log, "ingest log replayed", "seconds");
    let log_rows = logged_field(&n_log, "ingest log replayed", "log_rows");
    let n_samples = logged_field(&n_log, "ingest log replayed", "samples");
    let show = |s: Option<f64>| s.map_or("?".to_string(), |s| format!("{:.2} s", s));
    println!(
        "== replay: start after SIGKILL with {} samples of {} series written ({} hosts x {} requests)",
        l.samples, l.series, l.hosts, l.rounds
    );
    println!(
        "  nines:      serving after {:.2} s; ingest log replayed in {} ({log_rows} rows, {n_samples} samples; nines.db {:.1} MiB, WAL {:.1} MiB)",
        n_ready.as_secs_f64(),
        show(n_replay),
        db_bytes as f64 / 1048576.0,
        wal_bytes as f64 / 1048576.0,
    );
    println!(
        "  Prometheus: ready after {:.2} s (polled); WAL replayed in {}",
        p_ready.as_secs_f64(),
        show(p_replay)
    );
    println!(
        "  ratio nines/Prometheus time to serve: {:.2}",
        n_ready.as_secs_f64() / p_ready.as_secs_f64()
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
    if which.is_empty() || which == "replay" {
        replay(&prometheus);
    }
}
