//! Benchmark: the host page in headless Chromium with 24 hours of one
//! host's data. Prints the time from navigation start to the first chart
//! drawn and to all charts drawn, read from the performance marks the page
//! sets (`nines:first-chart`, `nines:all-charts`). Target: under one second
//! for both.
//!
//! Data: the series the host and service dashboards chart (CPU by mode for
//! two CPUs, load, memory, swap, two filesystems, a disk, two network
//! devices, TCP states, two listening ports, a probe with its latency
//! histogram, access-log requests and latency, a StatsD timer, `up`) for
//! one instance at a 15 s interval over the last 24 h (60 series, 345,600
//! samples), generated here deterministically and written through the
//! collector's remote_write endpoint.
//!
//! Then the hosts overview with 2,000 hosts (up, CPU, memory and disk
//! series for each, one hour at 60 s, also by remote_write): the time from
//! navigation start to the table drawn (`nines:hosts-drawn`) and to a
//! scroll through the whole list.
//!
//! Run: `cargo build --release --bins -p nines-collector -p nines-agent`
//! then `cargo bench -p nines-tests --bench ui` (same CARGO_TARGET_DIR).
//! Needs chromium and chromedriver (Debian packages chromium,
//! chromium-driver). `NINES_BENCH_RUNS=N` sets the timed page loads
//! (default 7) after one warm-up load.

use nines_collector::ingest::remote_write::{SeriesWrite, encode};
use nines_shared::{Labels, UnixMillis};
use nines_tests::webdriver::{Browser, find_peers};
use nines_tests::{Collector, bin_dir, http, in_ci, median, wait_for_within};
use serde_json::Value;
use std::time::Duration;

const STEP_MS: i64 = 15_000;
const POINTS: usize = 24 * 3600 / 15;
const CHUNK: usize = 480;
const INSTANCE: &str = "bench-1";

/// One generated series: labels and how its value moves.
struct Gen {
    labels: Labels,
    kind: Kind,
}

enum Kind {
    /// A counter growing by about this much per step.
    Counter(f64),
    /// A gauge wandering around this level by up to this fraction.
    Gauge(f64, f64),
}

fn series() -> Vec<Gen> {
    let mut out = Vec::new();
    let mut add = |name: &str, extra: &[(&str, &str)], kind: Kind| {
        let mut l: Vec<(&str, &str)> = vec![("job", "node"), ("instance", INSTANCE)];
        l.extend_from_slice(extra);
        out.push(Gen {
            labels: Labels::new(name, l),
            kind,
        });
    };
    for cpu in ["0", "1"] {
        for (mode, rate) in [
            ("idle", 10.0),
            ("user", 3.0),
            ("system", 1.2),
            ("iowait", 0.3),
            ("irq", 0.05),
            ("softirq", 0.1),
            ("steal", 0.02),
            ("nice", 0.01),
        ] {
            add(
                "node_cpu_seconds_total",
                &[("cpu", cpu), ("mode", mode)],
                Kind::Counter(rate),
            );
        }
    }
    for (n, v) in [
        ("node_load1", 1.2),
        ("node_load5", 1.0),
        ("node_load15", 0.8),
    ] {
        add(n, &[], Kind::Gauge(v, 0.5));
    }
    add("node_memory_MemTotal_bytes", &[], Kind::Gauge(8e9, 0.0));
    add("node_memory_MemAvailable_bytes", &[], Kind::Gauge(5e9, 0.2));
    add("node_memory_SwapTotal_bytes", &[], Kind::Gauge(2e9, 0.0));
    add("node_memory_SwapFree_bytes", &[], Kind::Gauge(1.8e9, 0.05));
    for (mp, dev) in [("/", "/dev/vda1"), ("/var", "/dev/vda2")] {
        let l = [("mountpoint", mp), ("device", dev), ("fstype", "ext4")];
        add("node_filesystem_size_bytes", &l, Kind::Gauge(100e9, 0.0));
        add("node_filesystem_avail_bytes", &l, Kind::Gauge(40e9, 0.1));
    }
    add(
        "node_disk_read_bytes_total",
        &[("device", "vda")],
        Kind::Counter(2e6),
    );
    add(
        "node_disk_written_bytes_total",
        &[("device", "vda")],
        Kind::Counter(5e6),
    );
    add(
        "node_disk_io_time_seconds_total",
        &[("device", "vda")],
        Kind::Counter(1.5),
    );
    for dev in ["eth0", "lo"] {
        add(
            "node_network_receive_bytes_total",
            &[("device", dev)],
            Kind::Counter(3e6),
        );
        add(
            "node_network_transmit_bytes_total",
            &[("device", dev)],
            Kind::Counter(1e6),
        );
    }
    for (st, v) in [
        ("established", 40.0),
        ("time_wait", 12.0),
        ("listen", 6.0),
        ("close_wait", 1.0),
    ] {
        add(
            "node_tcp_connection_states",
            &[("state", st)],
            Kind::Gauge(v, 0.5),
        );
    }
    for port in ["443", "22"] {
        add(
            "nines_tcp_listen_port_connections",
            &[("port", port)],
            Kind::Gauge(20.0, 0.5),
        );
    }
    add(
        "nines_probe_success_total",
        &[("probe", "api")],
        Kind::Counter(1.0),
    );
    add(
        "nines_probe_failure_total",
        &[("probe", "api"), ("reason", "timeout")],
        Kind::Counter(0.01),
    );
    add("nines_probe_up", &[("probe", "api")], Kind::Gauge(1.0, 0.0));
    for (le, f) in [("0.1", 0.6), ("0.25", 0.9), ("1", 0.99), ("+Inf", 1.0)] {
        add(
            "nines_probe_duration_seconds_bucket",
            &[("probe", "api"), ("phase", "total"), ("le", le)],
            Kind::Counter(f),
        );
        add(
            "nines_http_request_duration_seconds_bucket",
            &[("vhost", "shop"), ("le", le)],
            Kind::Counter(50.0 * f),
        );
        add(
            "checkout_latency_seconds_bucket",
            &[("route", "pay"), ("le", le)],
            Kind::Counter(5.0 * f),
        );
    }
    add(
        "checkout_latency_seconds_count",
        &[("route", "pay")],
        Kind::Counter(5.0),
    );
    for (class, v) in [("2xx", 45.0), ("4xx", 4.0), ("5xx", 1.0)] {
        add(
            "nines_http_requests_total",
            &[
                ("vhost", "shop"),
                ("method", "GET"),
                ("status_class", class),
            ],
            Kind::Counter(v),
        );
    }
    add("up", &[], Kind::Gauge(1.0, 0.0));
    out
}

/// Deterministic noise in [0, 1).
fn noise(i: usize, k: usize) -> f64 {
    let mut z = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ (k as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 31)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z >> 11) as f64 / (1u64 << 53) as f64
}

fn backfill(c: &Collector) -> usize {
    let gens = series();
    let now = UnixMillis::now().0 / STEP_MS * STEP_MS;
    let t0 = now - (POINTS as i64 - 1) * STEP_MS;
    let values: Vec<Vec<f64>> = gens
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let mut acc = 0.0;
            (0..POINTS)
                .map(|k| match g.kind {
                    Kind::Counter(r) => {
                        acc += r * (0.5 + noise(i, k));
                        acc
                    }
                    Kind::Gauge(v, f) => {
                        let day = (k as f64 / POINTS as f64 * std::f64::consts::TAU).sin();
                        v * (1.0 + f * (0.6 * day + 0.4 * (noise(i, k) - 0.5)))
                    }
                })
                .collect()
        })
        .collect();
    let client = http();
    let mut from = 0;
    while from < POINTS {
        let to = (from + CHUNK).min(POINTS);
        let chunk: Vec<SeriesWrite> = gens
            .iter()
            .zip(&values)
            .map(|(g, v)| SeriesWrite {
                labels: g.labels.clone(),
                samples: (from..to)
                    .map(|k| (t0 + k as i64 * STEP_MS, v[k]))
                    .collect(),
            })
            .collect();
        let r = client
            .post(format!("{}/api/v1/write", c.url))
            .header("content-encoding", "snappy")
            .header("content-type", "application/x-protobuf")
            .header("x-prometheus-remote-write-version", "0.1.0")
            .header("authorization", format!("Bearer {}", c.token))
            .body(encode(&chunk))
            .send()
            .expect("remote write");
        assert_eq!(r.status().as_u16(), 204, "{:?}", r.text());
        from = to;
    }
    gens.len() * POINTS
}

/// A series' value at step `k`.
type ValueAt = Box<dyn Fn(usize) -> f64>;

const HOSTS: usize = 2_000;
const HOST_POINTS: usize = 60;

/// 2,000 hosts with the series the overview reads, for the last hour.
fn backfill_hosts(c: &Collector) -> usize {
    let now = UnixMillis::now().0 / 60_000 * 60_000;
    let client = http();
    let mut samples = 0;
    for batch in (0..HOSTS).collect::<Vec<_>>().chunks(250) {
        let mut series = Vec::new();
        for &h in batch {
            let inst = format!("host-{h:04}");
            let rack = format!("rack-{}", h % 20);
            let base = [
                ("job", "node"),
                ("instance", inst.as_str()),
                ("rack", rack.as_str()),
            ];
            let l = |name: &str, extra: &[(&str, &str)]| {
                let mut v: Vec<(&str, &str)> = base.to_vec();
                v.extend_from_slice(extra);
                Labels::new(name, v)
            };
            let fs = [
                ("mountpoint", "/"),
                ("fstype", "ext4"),
                ("device", "/dev/vda1"),
            ];
            let gens: Vec<(Labels, ValueAt)> = vec![
                (
                    l("up", &[]),
                    Box::new(move |_| if h % 97 == 0 { 0.0 } else { 1.0 }),
                ),
                (
                    l("node_cpu_seconds_total", &[("cpu", "0"), ("mode", "idle")]),
                    Box::new(move |k| k as f64 * 60.0 * (0.3 + 0.6 * noise(h, 0))),
                ),
                (l("node_memory_MemTotal_bytes", &[]), Box::new(|_| 8e9)),
                (
                    l("node_memory_MemAvailable_bytes", &[]),
                    Box::new(move |k| 8e9 * (0.2 + 0.6 * noise(h, k))),
                ),
                (l("node_filesystem_size_bytes", &fs), Box::new(|_| 1e11)),
                (
                    l("node_filesystem_avail_bytes", &fs),
                    Box::new(move |_| 1e11 * noise(h, 1)),
                ),
                (
                    l("node_tcp_connection_states", &[("state", "established")]),
                    Box::new(move |k| (noise(h, k) * 100.0).floor()),
                ),
            ];
            for (labels, f) in gens {
                let s: Vec<(i64, f64)> = (0..HOST_POINTS)
                    .map(|k| (now - (HOST_POINTS - 1 - k) as i64 * 60_000, f(k)))
                    .collect();
                samples += s.len();
                series.push(SeriesWrite { labels, samples: s });
            }
        }
        let r = client
            .post(format!("{}/api/v1/write", c.url))
            .header("content-encoding", "snappy")
            .header("content-type", "application/x-protobuf")
            .header("x-prometheus-remote-write-version", "0.1.0")
            .header("authorization", format!("Bearer {}", c.token))
            .body(encode(&series))
            .send()
            .expect("remote write");
        assert_eq!(r.status().as_u16(), 204, "{:?}", r.text());
    }
    samples
}

fn main() {
    if !bin_dir().join("nines-collector").is_file() {
        let msg = "build the release binaries first (cargo build --release --bins -p nines-collector -p nines-agent) with the same CARGO_TARGET_DIR";
        assert!(!in_ci(), "{msg}");
        eprintln!("SKIPPED: {msg}");
        return;
    }
    let Some((driver, chromium)) = find_peers() else {
        eprintln!("SKIPPED: chromium and chromedriver are needed");
        return;
    };
    let runs: usize = std::env::var("NINES_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n >= 1)
        .unwrap_or(7);
    let dir = tempfile::tempdir().expect("temp dir");
    let c = Collector::start(&dir.path().join("c"), &["--no-local-agent"]);
    let started = std::time::Instant::now();
    let samples = backfill(&c);
    println!(
        "backfilled {samples} samples ({} series x 24 h at 15 s) in {:.1} s",
        series().len(),
        started.elapsed().as_secs_f64()
    );
    let b = Browser::start(&driver, &chromium);
    let url = format!("{}/hosts/{INSTANCE}?range=24h", c.url);
    let mut first = Vec::new();
    let mut all = Vec::new();
    for run in 0..=runs {
        b.goto(&url);
        let marks = wait_for_within("all charts drawn", Duration::from_secs(120), || {
            let v = b.js(
                "const f = performance.getEntriesByName('nines:first-chart')[0]; const a = performance.getEntriesByName('nines:all-charts')[0]; return a ? [f.startTime, a.startTime, document.querySelectorAll('figure.chart path.line').length, document.querySelectorAll('figure.chart.failed').length] : null",
                vec![],
            );
            (!v.is_null()).then_some(v)
        });
        let f = marks[0].as_f64().unwrap_or(f64::NAN);
        let a = marks[1].as_f64().unwrap_or(f64::NAN);
        assert_eq!(marks[3], Value::from(0), "a chart failed to load");
        assert!(
            marks[2].as_u64().unwrap_or(0) >= 20,
            "too few lines drawn: {marks}"
        );
        if run == 0 {
            println!(
                "warm-up load: first chart {f:.0} ms, all charts {a:.0} ms, {} lines",
                marks[2]
            );
            continue;
        }
        first.push(f);
        all.push(a);
    }
    let (mf, ma) = (median(first.clone()), median(all.clone()));
    println!("host page, 24 h of data, {runs} loads (ms from navigation start):");
    println!("  first chart drawn: median {mf:.0} (runs {first:.0?})");
    println!("  all charts drawn:  median {ma:.0} (runs {all:.0?})");
    println!(
        "  target under 1000 ms for both: {}",
        if mf < 1000.0 && ma < 1000.0 {
            "met"
        } else {
            "NOT met"
        }
    );

    let samples = backfill_hosts(&c);
    println!("backfilled {HOSTS} hosts ({samples} samples)");
    let mut drawn = Vec::new();
    let mut scrolled = Vec::new();
    for run in 0..=runs {
        b.goto(&format!("{}/", c.url));
        let v = wait_for_within("the hosts table", Duration::from_secs(120), || {
            let v = b.js(
                "const m = performance.getEntriesByName('nines:hosts-drawn')[0]; return m ? [m.startTime, document.querySelectorAll('.rows .row').length, document.querySelector('.summary').textContent] : null",
                vec![],
            );
            (!v.is_null()).then_some(v)
        });
        assert!(
            v[2].as_str()
                .unwrap_or("")
                .starts_with(&format!("{} hosts", HOSTS + 1)),
            "{v}"
        );
        assert!(
            v[1].as_u64().unwrap_or(0) < 100,
            "rows outside the view are in the DOM: {v}"
        );
        // Scroll to the end a screen at a time, one frame per step.
        let s = b.js_async(
            "const done = arguments[arguments.length - 1]; const sc = document.querySelector('.scroller'); const t0 = performance.now(); let frames = 0; function step() { if (sc.scrollTop + sc.clientHeight >= sc.scrollHeight - 1) { done([performance.now() - t0, frames]); return; } sc.scrollTop += sc.clientHeight; frames++; requestAnimationFrame(step); } requestAnimationFrame(step);",
            vec![],
        );
        if run == 0 {
            continue;
        }
        drawn.push(v[0].as_f64().unwrap_or(f64::NAN));
        scrolled.push(s[0].as_f64().unwrap_or(f64::NAN) / s[1].as_f64().unwrap_or(1.0).max(1.0));
    }
    println!("hosts overview, {} hosts, {runs} loads:", HOSTS + 1);
    println!(
        "  table drawn: median {:.0} ms from navigation start (runs {drawn:.0?})",
        median(drawn.clone())
    );
    println!(
        "  scrolling through the list a screen per frame: median {:.1} ms per screen (runs {scrolled:.1?})",
        median(scrolled.clone())
    );
}
