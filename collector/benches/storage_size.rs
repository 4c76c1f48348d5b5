//! Bytes per sample on disk and ingest rate for node-like data.
//!
//! Writes 1,000 series (10 hosts × 100 node_exporter-like series: CPU
//! seconds, memory, network, disk, filesystem, load, process counts, a
//! clock) for one hour at 1 s through `Storage::write_series` (10 s of every
//! series per call, as a remote_write sender would), with background
//! compaction running as it does in production; then compacts the rest,
//! vacuums and truncates the WAL, checks every sample reads back bit for
//! bit, and prints the file size per sample.
//!
//! Two runs: timestamps as the agent takes them (round start + 0–2 ms of
//! timer jitter) and timestamps on the exact 1 s grid.
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-storage cargo bench -p nines-collector --bench storage_size
//! ```
//!
//! `NINES_BENCH_MINUTES` shortens the hour for a quick look.

use nines_collector::query::querier::Querier;
use nines_collector::storage::{QueryLimits, SeriesWrite, Storage, StorageMetrics, StorageOptions};
use nines_shared::Labels;
use nines_shared::telemetry::Registry;
use promql_parser::label::{MatchOp, Matcher, Matchers};
use std::time::Instant;

const HOSTS: usize = 10;
const WINDOW_MS: i64 = 2 * 3600 * 1000;

/// Start of the data: the start of the previous 2 h chunk window (so an
/// hour of data is one window, and well inside the retention).
fn t0() -> i64 {
    let now = nines_shared::UnixMillis::now().0;
    now - now.rem_euclid(WINDOW_MS) - WINDOW_MS
}

/// xorshift64*: deterministic, good enough for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// How one series moves each second.
enum Kind {
    /// A counter of CPU ticks (1/100 s) growing by `lo..hi` ticks per second.
    CpuTicks { ticks: u64, lo: u64, hi: u64 },
    /// An integer counter growing by `0..max` with probability `p`.
    Counter { v: u64, max: u64, p: f64 },
    /// A byte gauge in pages, random walk of up to `step` pages with
    /// probability `p`.
    Pages { pages: i64, step: i64, p: f64 },
    /// A gauge with two decimals that drifts smoothly (load averages).
    Smooth { centi: i64 },
    /// A small integer gauge (process counts, sockets).
    Small { v: i64, max: i64 },
    /// Never changes.
    Constant(f64),
    /// The host's clock in seconds, as node_time_seconds.
    Clock,
}

struct Series {
    labels: Labels,
    kind: Kind,
}

fn host_series(host: usize, rng: &mut Rng) -> Vec<Series> {
    let inst = format!("host-{host:02}:9100");
    let mut out = Vec::new();
    let mut add = |metric: &str, extra: &[(&str, &str)], kind: Kind| {
        let mut pairs: Vec<(String, String)> = vec![
            ("instance".into(), inst.clone()),
            ("job".into(), "node".into()),
        ];
        pairs.extend(extra.iter().map(|(a, b)| (a.to_string(), b.to_string())));
        out.push(Series {
            labels: Labels::new(metric, pairs),
            kind,
        });
    };
    let modes = [
        ("idle", 60, 98),
        ("user", 1, 30),
        ("system", 0, 8),
        ("iowait", 0, 2),
        ("irq", 0, 1),
        ("softirq", 0, 2),
        ("steal", 0, 0),
        ("nice", 0, 0),
    ];
    for cpu in 0..4 {
        for (mode, lo, hi) in modes {
            let c = cpu.to_string();
            add(
                "node_cpu_seconds_total",
                &[("cpu", &c), ("mode", mode)],
                Kind::CpuTicks {
                    ticks: 10_000_000 + rng.below(5_000_000),
                    lo,
                    hi,
                },
            );
        }
    }
    let mem = [
        ("MemTotal", 0, 0.0),
        ("MemFree", 64, 0.8),
        ("MemAvailable", 64, 0.8),
        ("Buffers", 2, 0.1),
        ("Cached", 32, 0.5),
        ("Active", 32, 0.6),
        ("Inactive", 16, 0.4),
        ("Dirty", 8, 0.7),
        ("Writeback", 1, 0.05),
        ("AnonPages", 32, 0.6),
        ("Mapped", 4, 0.2),
        ("Shmem", 1, 0.05),
        ("SwapTotal", 0, 0.0),
        ("SwapFree", 0, 0.0),
    ];
    for (name, step, p) in mem {
        add(
            &format!("node_memory_{name}_bytes"),
            &[],
            Kind::Pages {
                pages: 1_000_000 + rng.below(2_000_000) as i64,
                step,
                p,
            },
        );
    }
    for (dev, busy) in [("eth0", 1.0), ("lo", 0.3)] {
        for dir in ["receive", "transmit"] {
            let max = (200_000.0 * busy) as u64;
            add(
                &format!("node_network_{dir}_bytes_total"),
                &[("device", dev)],
                Kind::Counter {
                    v: rng.below(1 << 40),
                    max,
                    p: 1.0,
                },
            );
            add(
                &format!("node_network_{dir}_packets_total"),
                &[("device", dev)],
                Kind::Counter {
                    v: rng.below(1 << 30),
                    max: max / 800 + 1,
                    p: 1.0,
                },
            );
            for what in ["errs", "drop", "fifo"] {
                add(
                    &format!("node_network_{dir}_{what}_total"),
                    &[("device", dev)],
                    Kind::Counter {
                        v: rng.below(100),
                        max: 2,
                        p: 0.001,
                    },
                );
            }
            add(
                &format!("node_network_{dir}_multicast_total"),
                &[("device", dev)],
                Kind::Counter {
                    v: rng.below(10_000),
                    max: 3,
                    p: 0.05,
                },
            );
        }
    }
    for dev in ["sda", "sdb"] {
        let d = [("device", dev)];
        add(
            "node_disk_reads_completed_total",
            &d,
            Kind::Counter {
                v: rng.below(1 << 24),
                max: 40,
                p: 0.3,
            },
        );
        add(
            "node_disk_writes_completed_total",
            &d,
            Kind::Counter {
                v: rng.below(1 << 24),
                max: 80,
                p: 0.6,
            },
        );
        add(
            "node_disk_read_bytes_total",
            &d,
            Kind::Counter {
                v: rng.below(1 << 36) * 512,
                max: 40 * 4096,
                p: 0.3,
            },
        );
        add(
            "node_disk_written_bytes_total",
            &d,
            Kind::Counter {
                v: rng.below(1 << 36) * 512,
                max: 80 * 4096,
                p: 0.6,
            },
        );
        add(
            "node_disk_io_time_seconds_total",
            &d,
            Kind::CpuTicks {
                ticks: rng.below(1 << 30),
                lo: 0,
                hi: 5,
            },
        );
        add("node_disk_io_now", &d, Kind::Small { v: 0, max: 4 });
    }
    for (mp, dev) in [("/", "/dev/sda1"), ("/data", "/dev/sdb1")] {
        let l = [("mountpoint", mp), ("device", dev), ("fstype", "ext4")];
        let size = (rng.below(1 << 28) + (1 << 28)) * 4096;
        add(
            "node_filesystem_size_bytes",
            &l,
            Kind::Constant(size as f64),
        );
        add(
            "node_filesystem_avail_bytes",
            &l,
            Kind::Pages {
                pages: (size / 8192) as i64,
                step: 16,
                p: 0.3,
            },
        );
        add(
            "node_filesystem_free_bytes",
            &l,
            Kind::Pages {
                pages: (size / 7000) as i64,
                step: 16,
                p: 0.3,
            },
        );
        add("node_filesystem_files", &l, Kind::Constant(16_777_216.0));
        add(
            "node_filesystem_files_free",
            &l,
            Kind::Counter {
                v: 16_000_000 - rng.below(1_000_000),
                max: 3,
                p: 0.1,
            },
        );
    }
    for (m, centi) in [("node_load1", 80), ("node_load5", 75), ("node_load15", 70)] {
        add(m, &[], Kind::Smooth { centi });
    }
    add(
        "node_context_switches_total",
        &[],
        Kind::Counter {
            v: rng.below(1 << 36),
            max: 20_000,
            p: 1.0,
        },
    );
    add(
        "node_intr_total",
        &[],
        Kind::Counter {
            v: rng.below(1 << 36),
            max: 15_000,
            p: 1.0,
        },
    );
    add(
        "node_forks_total",
        &[],
        Kind::Counter {
            v: rng.below(1 << 24),
            max: 10,
            p: 0.5,
        },
    );
    add("node_procs_running", &[], Kind::Small { v: 2, max: 8 });
    add("node_procs_blocked", &[], Kind::Small { v: 0, max: 2 });
    add(
        "node_boot_time_seconds",
        &[],
        Kind::Constant(1_766_000_000.0),
    );
    add("node_time_seconds", &[], Kind::Clock);
    for (m, v) in [
        ("node_sockstat_TCP_inuse", 40),
        ("node_sockstat_TCP_tw", 10),
        ("node_sockstat_UDP_inuse", 6),
        ("node_filefd_allocated", 2000),
    ] {
        add(m, &[], Kind::Small { v, max: v * 2 });
    }
    // The rest: info-like series and settings that never change.
    for i in 0..100 {
        add(
            "node_static_info",
            &[("index", &i.to_string())],
            Kind::Constant(1.0),
        );
    }
    out.truncate(100);
    out
}

fn step(kind: &mut Kind, rng: &mut Rng, ts: i64) -> f64 {
    match kind {
        Kind::CpuTicks { ticks, lo, hi } => {
            *ticks += *lo + rng.below(*hi - *lo + 1);
            *ticks as f64 / 100.0
        }
        Kind::Counter { v, max, p } => {
            if rng.chance(*p) {
                *v += rng.below(*max + 1);
            }
            *v as f64
        }
        Kind::Pages { pages, step, p } => {
            if *step > 0 && rng.chance(*p) {
                *pages += rng.below(2 * *step as u64 + 1) as i64 - *step;
            }
            (*pages * 4096) as f64
        }
        Kind::Smooth { centi } => {
            *centi = (*centi + rng.below(5) as i64 - 2).max(0);
            *centi as f64 / 100.0
        }
        Kind::Small { v, max } => {
            if rng.chance(0.2) {
                *v = (*v + rng.below(3) as i64 - 1).clamp(0, *max);
            }
            *v as f64
        }
        Kind::Constant(v) => *v,
        Kind::Clock => ts as f64 / 1000.0,
    }
}

fn run(name: &str, jitter_ms: u64, seconds: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bench.db");
    let storage = Storage::open_with_options(
        &path,
        QueryLimits::default(),
        StorageMetrics::register(&Registry::new()),
        StorageOptions::default(),
    )
    .expect("open");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut hosts: Vec<Vec<Series>> = (0..HOSTS).map(|h| host_series(h, &mut rng)).collect();
    let series: usize = hosts.iter().map(Vec::len).sum();
    // Everything written, to check the read-back.
    let mut expected: Vec<Vec<(i64, f64)>> = vec![Vec::with_capacity(seconds); series];

    let t0 = t0();
    let per_call = 10;
    let started = Instant::now();
    for block in (0..seconds).step_by(per_call) {
        let mut writes: Vec<SeriesWrite> = Vec::with_capacity(series);
        let mut k = 0;
        for host in hosts.iter_mut() {
            // One timestamp per host per round, shared by its series.
            let times: Vec<i64> = (block..(block + per_call).min(seconds))
                .map(|s| {
                    t0 + s as i64 * 1000
                        + if jitter_ms > 0 {
                            rng.below(jitter_ms + 1) as i64
                        } else {
                            0
                        }
                })
                .collect();
            for s in host.iter_mut() {
                let samples: Vec<(i64, f64)> = times
                    .iter()
                    .map(|&t| (t, step(&mut s.kind, &mut rng, t)))
                    .collect();
                expected[k].extend_from_slice(&samples);
                k += 1;
                writes.push(SeriesWrite {
                    labels: s.labels.clone(),
                    samples,
                });
            }
        }
        rt.block_on(storage.write_series(writes, vec![]))
            .expect("write");
    }
    let ingest = started.elapsed();
    let samples = series * seconds;

    let started = Instant::now();
    let report = rt.block_on(storage.compact_now()).expect("compact");
    let compact = started.elapsed();

    // Every sample back, bit for bit.
    let mut k = 0;
    for (h, host) in hosts.iter().enumerate() {
        let m = Matchers::new(vec![Matcher::new(
            MatchOp::Equal,
            "instance",
            &format!("host-{h:02}:9100"),
        )]);
        let mut got = storage.select(&m, i64::MIN, i64::MAX).expect("select");
        got.sort_by(|a, b| a.labels.cmp(&b.labels));
        let mut want: Vec<(&Labels, &Vec<(i64, f64)>)> = host
            .iter()
            .enumerate()
            .map(|(i, s)| (&s.labels, &expected[k + i]))
            .collect();
        want.sort_by(|a, b| a.0.cmp(b.0));
        assert_eq!(got.len(), want.len());
        for (g, (l, w)) in got.iter().zip(want) {
            assert_eq!(&g.labels, l);
            let gb: Vec<(i64, u64)> = g.samples.iter().map(|&(t, v)| (t, v.to_bits())).collect();
            let wb: Vec<(i64, u64)> = w.iter().map(|&(t, v)| (t, v.to_bits())).collect();
            assert!(gb == wb, "{l}: samples differ");
        }
        k += host.len();
    }

    let file = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let wal = std::fs::metadata(path.with_extension("db-wal"))
        .map(|m| m.len())
        .unwrap_or(0);
    let conn =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open read-only");
    let q = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).expect(sql) };
    let chunks = q("SELECT count(*) FROM chunks");
    let blob = q("SELECT coalesce(sum(length(data)), 0) FROM chunks");
    let head = q("SELECT count(*) FROM samples");
    let pages = q("PRAGMA page_count");
    let free = q("PRAGMA freelist_count");
    let series_bytes = q("SELECT coalesce(sum(length(labels) + length(metric)), 0) FROM series");

    println!("== {name}");
    println!(
        "  {series} series x {seconds} s = {samples} samples, {chunks} chunks ({:.0} samples/chunk), {head} head rows left",
        samples as f64 / chunks.max(1) as f64
    );
    println!(
        "  ingest: {:.2} s, {:.0} samples/s (background compaction moved {} samples meanwhile)",
        ingest.as_secs_f64(),
        samples as f64 / ingest.as_secs_f64(),
        samples - report.samples_compacted,
    );
    println!(
        "  final compaction: {:.2} s for {} samples",
        compact.as_secs_f64(),
        report.samples_compacted
    );
    println!(
        "  file: {file} bytes (+{wal} WAL), {pages} pages, {free} free => {:.3} bytes/sample",
        (file + wal) as f64 / samples as f64
    );
    println!(
        "  chunk blobs: {blob} bytes => {:.3} bytes/sample; series labels: {series_bytes} bytes",
        blob as f64 / samples as f64
    );
}

fn main() {
    let minutes: usize = std::env::var("NINES_BENCH_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(60);
    let seconds = minutes * 60;
    run("agent-like timestamps (0-2 ms jitter)", 2, seconds);
    run("timestamps on the 1 s grid", 0, seconds);
}
