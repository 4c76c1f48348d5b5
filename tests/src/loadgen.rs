//! A load generator: a fleet of simulated hosts whose series move as
//! node_exporter's do (CPU tick counters, memory in pages, network and disk
//! counters, filesystem gauges, load averages, small integer gauges,
//! constants and a clock), deterministic for a seed. The storage benchmarks
//! send the same stream to nines (remote_write or native push) and to
//! Prometheus (remote_write, or blocks built by promtool from the
//! OpenMetrics text [`Fleet::openmetrics`] writes).

use nines_collector::ingest::remote_write::SeriesWrite;
use nines_shared::Labels;
use std::io::Write;

/// xorshift64*: deterministic, good enough for test data.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in 0..n.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// True with probability p.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// SplitMix64: small, deterministic test data (queries, differential
/// tests), apart from the fleet's own generator.
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform integer in [lo, hi].
    pub fn int(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as i64
    }
}

/// How one series moves each second.
pub enum Kind {
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

/// One node-like series and its state.
pub struct NodeSeries {
    /// Its labels.
    pub labels: Labels,
    /// How it moves.
    pub kind: Kind,
}

/// The 100 node_exporter-like series of host number `host`
/// (`instance="host-NN:9100"`, `job="node"`).
pub fn host_series(host: usize, rng: &mut Rng) -> Vec<NodeSeries> {
    let inst = format!("host-{host:02}:9100");
    let mut out = Vec::new();
    let mut add = |metric: &str, extra: &[(&str, &str)], kind: Kind| {
        let mut pairs: Vec<(String, String)> = vec![
            ("instance".into(), inst.clone()),
            ("job".into(), "node".into()),
        ];
        pairs.extend(extra.iter().map(|(a, b)| (a.to_string(), b.to_string())));
        out.push(NodeSeries {
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

/// The series' next value, at `ts` ms (one second after the last).
pub fn step(kind: &mut Kind, rng: &mut Rng, ts: i64) -> f64 {
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

/// Simulated hosts, each with its series.
pub struct Fleet {
    /// Per host, its series.
    pub hosts: Vec<Vec<NodeSeries>>,
    rng: Rng,
}

impl Fleet {
    /// `hosts` hosts of 100 series each, from `seed`.
    pub fn new(hosts: usize, seed: u64) -> Fleet {
        let mut rng = Rng(seed | 1);
        let hosts = (0..hosts).map(|h| host_series(h, &mut rng)).collect();
        Fleet { hosts, rng }
    }

    /// Series in the fleet.
    pub fn series(&self) -> usize {
        self.hosts.iter().map(Vec::len).sum()
    }

    /// Host `h`'s next `times.len()` samples per series (one per
    /// timestamp, each one second on from the last), as remote_write
    /// series.
    pub fn host_round(&mut self, h: usize, times: &[i64]) -> Vec<SeriesWrite> {
        let rng = &mut self.rng;
        self.hosts[h]
            .iter_mut()
            .map(|s| SeriesWrite {
                labels: s.labels.clone(),
                samples: times
                    .iter()
                    .map(|&t| (t, step(&mut s.kind, rng, t)))
                    .collect(),
            })
            .collect()
    }

    /// `seconds` seconds of every series from `t0` (ms): host by host, one
    /// timestamp per second shared by the host's series, each `0..=jitter_ms`
    /// ms after the second (an agent's timer), in fleet order.
    pub fn take(&mut self, t0: i64, seconds: usize, jitter_ms: u64) -> Vec<SeriesWrite> {
        let mut all = Vec::with_capacity(self.series());
        for h in 0..self.hosts.len() {
            let times: Vec<i64> = (0..seconds)
                .map(|s| {
                    let j = if jitter_ms > 0 {
                        self.rng.below(jitter_ms + 1) as i64
                    } else {
                        0
                    };
                    t0 + s as i64 * 1000 + j
                })
                .collect();
            all.extend(self.host_round(h, &times));
        }
        all
    }
}

/// Writes `series` as OpenMetrics text (one untyped family per metric
/// name), what `promtool tsdb create-blocks-from openmetrics` reads.
pub fn write_openmetrics(series: &[SeriesWrite], out: &mut impl Write) -> std::io::Result<()> {
    let mut by_name: std::collections::BTreeMap<&str, Vec<&SeriesWrite>> = Default::default();
    for s in series {
        by_name
            .entry(s.labels.get("__name__").unwrap_or(""))
            .or_default()
            .push(s);
    }
    for (name, series) in by_name {
        writeln!(out, "# TYPE {name} unknown")?;
        for s in series {
            let labels: Vec<String> = s
                .labels
                .iter()
                .filter(|l| l.name != "__name__")
                .map(|l| format!("{}=\"{}\"", l.name, l.value))
                .collect();
            let labels = labels.join(",");
            for (t, v) in &s.samples {
                writeln!(out, "{name}{{{labels}}} {v} {}.{:03}", t / 1000, t % 1000)?;
            }
        }
    }
    writeln!(out, "# EOF")
}
