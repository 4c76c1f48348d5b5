//! Benchmark: query latency of a dashboard-like set of PromQL expressions,
//! nines next to a real Prometheus 2.42 holding the same data. Target: no
//! slower than Prometheus at the median.
//!
//! Data: 1,000 series (50 instances × 8 cpu-mode counters, 2 filesystem
//! gauges, and a probe latency histogram of 8 buckets, `_sum` and
//! `_count`) at a 60 s interval over the last 24 hours, generated here
//! deterministically. Prometheus gets it as TSDB blocks built by `promtool
//! tsdb create-blocks-from openmetrics` (and runs with compaction off, so
//! none starts while it is timed); nines gets it by remote write.
//!
//! Each expression is asked as a range query over the last 1 h at a 15 s
//! step and over the last 24 h at a 5 m step. Both answers are compared
//! first (same series, same timestamps, values within 1e-6 relative) so
//! both do the same work; then each is timed over HTTP (POST form, the
//! whole body read) several times, alternating between the servers.
//!
//! Run: `cargo build --release --bins -p nines-collector -p nines-agent`
//! then `cargo bench -p nines-tests --bench query` (same CARGO_TARGET_DIR:
//! the collector is found next to this bench's `deps` directory, or in
//! NINES_BIN_DIR). `NINES_BENCH_RUNS=N` changes the timed runs per case
//! (default 15: the development machine is shared, and more runs steady
//! the median); a case whose warm-up is slow gets fewer runs (at least 3)
//! so the whole bench stays within a few minutes. `NINES_BENCH_ONLY=text`
//! times only the cases whose name contains the text (e.g. to profile one
//! of them); the median then covers those cases alone.

use std::fmt::Write as _;
use std::io::{BufWriter, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nines_collector::ingest::remote_write::{SeriesWrite, encode};
use nines_shared::Labels;
use nines_tests::loadgen::SplitMix;
use nines_tests::prometheus::Prometheus;
use nines_tests::{Collector, bin_dir, in_ci, peer, wait_for};
use serde_json::Value as Json;

const MIN: i64 = 60_000;
/// Samples per series: one a minute for 24 hours.
const POINTS: usize = 1_440;
const INSTANCES: usize = 50;
/// Samples per series in one remote-write request (3 hours).
const WRITE_CHUNK: usize = 180;
/// Time a case's timed runs may take, roughly.
const CASE_BUDGET: Duration = Duration::from_secs(15);
const MIN_RUNS: usize = 3;
/// Relative tolerance when comparing the two answers.
const TOLERANCE: f64 = 1e-6;

/// One series: metric name, labels (besides the name), one value per
/// timestamp of the data.
struct Series {
    metric: String,
    labels: Vec<(&'static str, String)>,
    values: Vec<f64>,
}

/// A metric family as OpenMetrics groups it: its name, type, and its
/// metrics, each a group of series written timestamp by timestamp (one
/// series for a counter or gauge; buckets, sum and count for a histogram).
struct Family {
    name: &'static str,
    kind: &'static str,
    metrics: Vec<Vec<Series>>,
}

/// The generated data: timestamps (ms) shared by all series, and families.
struct Dataset {
    times: Vec<i64>,
    families: Vec<Family>,
}

impl Dataset {
    fn all_series(&self) -> impl Iterator<Item = &Series> {
        self.families
            .iter()
            .flat_map(|f| f.metrics.iter().flatten())
    }
}

/// 1,000 series ending at `end` (ms, on a minute).
fn generate(end: i64) -> Dataset {
    let times: Vec<i64> = (0..POINTS as i64)
        .map(|k| end - (POINTS as i64 - 1 - k) * MIN)
        .collect();
    let mut rng = SplitMix(0x6e69_6e65_7362);
    let node = |i: usize| format!("host-{i:02}:9100");
    let mut cpu = Vec::new();
    let mut fs = Vec::new();
    let mut probe = Vec::new();
    for i in 0..INSTANCES {
        // CPU: busier instances spend less time idle; every tenth instance
        // reboots once (its counters restart from zero).
        let busy = rng.range(0.3, 2.5);
        let reboot = (i % 10 == 3).then(|| 100 + (rng.next_u64() % 1_200) as usize);
        for c in ["0", "1"] {
            for (mode, share) in [
                ("idle", 1.0 - 0.2 * busy),
                ("user", 0.12 * busy),
                ("system", 0.05 * busy),
                ("iowait", 0.03 * busy),
            ] {
                // Whole centiseconds, so the text form is short and exact.
                let mut cs = (rng.next_u64() % 100_000_000) as i64;
                let values = (0..POINTS)
                    .map(|k| {
                        if Some(k) == reboot {
                            cs = 0;
                        }
                        cs += (6_000.0 * share * rng.range(0.7, 1.3)).round() as i64;
                        cs as f64 / 100.0
                    })
                    .collect();
                cpu.push(vec![Series {
                    metric: "node_cpu_seconds_total".into(),
                    labels: vec![
                        ("instance", node(i)),
                        ("job", "node".into()),
                        ("cpu", c.into()),
                        ("mode", mode.into()),
                    ],
                    values,
                }]);
            }
        }
        // Filesystems: free space trending down with noise, in 4 KiB blocks.
        for (mount, size) in [("/", 100e9), ("/var", 2e12)] {
            let mut free = size * rng.range(0.2, 0.8);
            let slope = size * rng.range(0.0, 2e-5);
            let values = (0..POINTS)
                .map(|_| {
                    free = (free - slope + rng.range(-5e6, 5e6)).max(0.0);
                    (free / 4096.0).round() * 4096.0
                })
                .collect();
            fs.push(vec![Series {
                metric: "node_filesystem_avail_bytes".into(),
                labels: vec![
                    ("instance", node(i)),
                    ("job", "node".into()),
                    ("mountpoint", mount.into()),
                ],
                values,
            }]);
        }
        // Probe latency: four probes a minute, log-normal-ish around a
        // typical latency of the target.
        let les = [
            "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "+Inf",
        ];
        let bounds = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, f64::INFINITY];
        let typical = rng.range(0.004, 0.08);
        let mut counts = [0u64; 8];
        let mut sum_us = 0u64;
        let mut count = 0u64;
        let mut rows: Vec<([u64; 8], u64, u64)> = Vec::with_capacity(POINTS);
        for _ in 0..POINTS {
            for _ in 0..4 {
                let x = typical * rng.range(-1.0, 2.0).exp();
                sum_us += (x * 1e6).round() as u64;
                count += 1;
                for (c, &b) in counts.iter_mut().zip(&bounds) {
                    if x <= b {
                        *c += 1;
                    }
                }
            }
            rows.push((counts, sum_us, count));
        }
        let target = format!("https://svc-{i:02}.example.org");
        let labels = |extra: Option<&str>| {
            let mut l = vec![("instance", target.clone()), ("job", "blackbox".into())];
            if let Some(le) = extra {
                l.push(("le", le.to_string()));
            }
            l
        };
        let mut group: Vec<Series> = les
            .iter()
            .enumerate()
            .map(|(b, le)| Series {
                metric: "probe_duration_seconds_bucket".into(),
                labels: labels(Some(le)),
                values: rows.iter().map(|r| r.0[b] as f64).collect(),
            })
            .collect();
        group.push(Series {
            metric: "probe_duration_seconds_sum".into(),
            labels: labels(None),
            values: rows.iter().map(|r| r.1 as f64 / 1e6).collect(),
        });
        group.push(Series {
            metric: "probe_duration_seconds_count".into(),
            labels: labels(None),
            values: rows.iter().map(|r| r.2 as f64).collect(),
        });
        probe.push(group);
    }
    Dataset {
        times,
        families: vec![
            Family {
                name: "node_cpu_seconds",
                kind: "counter",
                metrics: cpu,
            },
            Family {
                name: "node_filesystem_avail_bytes",
                kind: "gauge",
                metrics: fs,
            },
            Family {
                name: "probe_duration_seconds",
                kind: "histogram",
                metrics: probe,
            },
        ],
    }
}

/// Writes the data as OpenMetrics text, timestamps in seconds.
fn write_openmetrics(data: &Dataset, path: &Path) {
    let mut out = BufWriter::new(std::fs::File::create(path).expect("openmetrics file"));
    for f in &data.families {
        writeln!(out, "# TYPE {} {}", f.name, f.kind).expect("write");
        for group in &f.metrics {
            let heads: Vec<String> = group
                .iter()
                .map(|s| {
                    let labels: Vec<String> = s
                        .labels
                        .iter()
                        .map(|(k, v)| format!("{k}=\"{v}\""))
                        .collect();
                    format!("{}{{{}}}", s.metric, labels.join(","))
                })
                .collect();
            for (k, t) in data.times.iter().enumerate() {
                for (s, head) in group.iter().zip(&heads) {
                    writeln!(out, "{head} {} {}", s.values[k], t / 1000).expect("write");
                }
            }
        }
    }
    writeln!(out, "# EOF").expect("write");
    out.flush().expect("flush");
}

/// Remote-writes the data to nines in ascending time chunks.
fn write_to_nines(data: &Dataset, nines: &Collector, client: &reqwest::blocking::Client) {
    let labels: Vec<Labels> = data
        .all_series()
        .map(|s| Labels::new(&s.metric, s.labels.iter().map(|(k, v)| (*k, v.as_str()))))
        .collect();
    let mut from = 0;
    while from < POINTS {
        let to = (from + WRITE_CHUNK).min(POINTS);
        let chunk: Vec<SeriesWrite> = data
            .all_series()
            .zip(&labels)
            .map(|(s, l)| SeriesWrite {
                labels: l.clone(),
                samples: (from..to).map(|k| (data.times[k], s.values[k])).collect(),
            })
            .collect();
        let r = client
            .post(format!("{}/api/v1/write", nines.url))
            .header("content-encoding", "snappy")
            .header("content-type", "application/x-protobuf")
            .header("x-prometheus-remote-write-version", "0.1.0")
            .header("authorization", format!("Bearer {}", nines.token))
            .body(encode(&chunk))
            .send()
            .expect("remote write to nines");
        let status = r.status().as_u16();
        assert_eq!(
            status,
            204,
            "nines refused a write: {}",
            r.text().unwrap_or_default()
        );
        from = to;
    }
}

/// Starts Prometheus on the blocks in `tsdb`. Compaction is off (min and
/// max block duration equal), as it would otherwise start a minute in and
/// run while queries are timed.
fn start_prometheus(binary: &Path, dir: &Path, tsdb: &Path) -> Prometheus {
    Prometheus::start(
        binary,
        dir,
        "scrape_interval: 1m",
        Some(tsdb),
        &[
            "--storage.tsdb.retention.time=30d",
            "--storage.tsdb.min-block-duration=2h",
            "--storage.tsdb.max-block-duration=2h",
        ],
    )
}

/// POSTs a form to `/api/v1/<endpoint>`; returns the time until the whole
/// body was read, and the body.
fn post(
    client: &reqwest::blocking::Client,
    url: &str,
    endpoint: &str,
    form: &[(&str, String)],
) -> (Duration, String) {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form.iter().map(|(k, v)| (*k, v.as_str())))
        .finish();
    let started = Instant::now();
    let r = client
        .post(format!("{url}/api/v1/{endpoint}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .expect("query request");
    let text = r.text().expect("query response body");
    (started.elapsed(), text)
}

/// An instant query's single value, or the answer when it is not one
/// sample.
fn scalar_answer(
    client: &reqwest::blocking::Client,
    url: &str,
    expr: &str,
    at: i64,
) -> Result<f64, String> {
    let form = [
        ("query", expr.to_string()),
        ("time", (at / 1000).to_string()),
    ];
    let (_, body) = post(client, url, "query", &form);
    serde_json::from_str::<Json>(&body)
        .ok()
        .and_then(|j| j["data"]["result"][0]["value"][1].as_str()?.parse().ok())
        .ok_or(body)
}

fn value_of(j: &Json) -> f64 {
    match j.as_str() {
        Some("NaN") => f64::NAN,
        Some("+Inf") | Some("Inf") => f64::INFINITY,
        Some("-Inf") => f64::NEG_INFINITY,
        Some(s) => s.parse().unwrap_or(f64::NAN),
        None => f64::NAN,
    }
}

fn close(a: f64, b: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if a.is_infinite() || b.is_infinite() {
        return a == b;
    }
    let diff = (a - b).abs();
    diff <= 1e-9 || diff <= TOLERANCE * a.abs().max(b.abs())
}

/// A matrix answer as sorted (labels, points).
type Matrix = Vec<(String, Vec<(i64, f64)>)>;

fn matrix(body: &str) -> Result<Matrix, String> {
    let j: Json = serde_json::from_str(body).map_err(|e| format!("not JSON ({e}): {body:.200}"))?;
    if j["status"] != "success" || j["data"]["resultType"] != "matrix" {
        return Err(format!("not a matrix answer: {body:.300}"));
    }
    let mut out: Matrix = j["data"]["result"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|s| {
                    let key = s["metric"].to_string();
                    let points = s["values"]
                        .as_array()
                        .map(|ps| {
                            ps.iter()
                                .map(|p| {
                                    let t = (p[0].as_f64().unwrap_or(f64::NAN) * 1000.0).round();
                                    (t as i64, value_of(&p[1]))
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    (key, points)
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Compares the two answers; returns (series, points) when they agree.
fn agree(prom: &str, nines: &str) -> Result<(usize, usize), String> {
    let w = matrix(prom).map_err(|e| format!("Prometheus: {e}"))?;
    let g = matrix(nines).map_err(|e| format!("nines: {e}"))?;
    if w.len() != g.len() {
        return Err(format!(
            "Prometheus returned {} series, nines {}",
            w.len(),
            g.len()
        ));
    }
    let mut points = 0;
    for ((wk, wp), (gk, gp)) in w.iter().zip(&g) {
        if wk != gk {
            return Err(format!("series differ: Prometheus {wk}, nines {gk}"));
        }
        if wp.len() != gp.len() {
            return Err(format!(
                "{wk}: Prometheus {} points, nines {}",
                wp.len(),
                gp.len()
            ));
        }
        if let Some((a, b)) = wp
            .iter()
            .zip(gp)
            .find(|(a, b)| a.0 != b.0 || !close(a.1, b.1))
        {
            return Err(format!("{wk}: Prometheus {a:?}, nines {b:?} (ms, value)"));
        }
        points += wp.len();
    }
    Ok((w.len(), points))
}

/// Nearest-rank percentile of sorted durations.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Prints why the bench cannot run; fails under CI, skips elsewhere.
fn missing(what: &str) -> ! {
    if in_ci() {
        eprintln!("query bench: {what}");
        std::process::exit(1);
    }
    eprintln!("SKIPPED query bench: {what}");
    std::process::exit(0);
}

fn main() {
    let began = Instant::now();
    let collector = bin_dir().join("nines-collector");
    if !collector.is_file() {
        missing(&format!(
            "{} not found: build the release binaries first with the same CARGO_TARGET_DIR \
(cargo build --release --bins -p nines-collector -p nines-agent), or set NINES_BIN_DIR",
            collector.display()
        ));
    }
    // peer() panics under CI and says what to install.
    let (Some(prometheus_bin), Some(promtool)) = (
        peer("prometheus", "prometheus"),
        peer("promtool", "prometheus"),
    ) else {
        missing("Prometheus 2.42 (prometheus and promtool) is needed as the reference");
    };
    let runs: usize = std::env::var("NINES_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n >= 1)
        .unwrap_or(15);
    nines_collector::notify::tls::install_default_provider();
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .expect("http client");
    let dir = tempfile::tempdir().expect("temp dir");

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let end = now - now % MIN;
    let t = Instant::now();
    let data = generate(end);
    let series = data.all_series().count();
    let samples = series * POINTS;
    println!(
        "data: {INSTANCES} instances × (8 cpu counters + 2 filesystem gauges + 8 buckets, sum and count) \
= {series} series × {POINTS} samples = {samples} samples, 24 h at 60 s ending at {} (generated in {:.1?})",
        end / 1000,
        t.elapsed()
    );

    // Prometheus: OpenMetrics text -> blocks (promtool runs while nines
    // ingests).
    let t = Instant::now();
    let om = dir.path().join("data.om");
    write_openmetrics(&data, &om);
    let om_bytes = std::fs::metadata(&om).map(|m| m.len()).unwrap_or(0);
    let tsdb = dir.path().join("tsdb");
    let promtool_run = Command::new(&promtool)
        .args(["tsdb", "create-blocks-from", "openmetrics", "--quiet"])
        // Blocks as a long-running Prometheus would have compacted them.
        .arg("--max-block-duration=24h")
        .arg(&om)
        .arg(&tsdb)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");

    let nines = Collector::start(&dir.path().join("nines"), &["--no-local-agent"]);
    let tn = Instant::now();
    write_to_nines(&data, &nines, &client);
    println!(
        "nines: {samples} samples remote-written in {:.1?}",
        tn.elapsed()
    );
    let out = promtool_run.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool create-blocks-from openmetrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_file(&om);
    println!(
        "Prometheus: {:.0} MB of OpenMetrics made into blocks by promtool ({:.1?} since the text was started)",
        om_bytes as f64 / 1e6,
        t.elapsed()
    );
    let prom = start_prometheus(&prometheus_bin, dir.path(), &tsdb);

    // Both hold every series and every sample.
    let count = r#"count({job=~"node|blackbox"})"#;
    // Per metric name: count_over_time drops the name, and the histogram's
    // `_sum` and `_count` have the same labels otherwise.
    let total = [
        "node_cpu_seconds_total",
        "node_filesystem_avail_bytes",
        "probe_duration_seconds_bucket",
        "probe_duration_seconds_sum",
        "probe_duration_seconds_count",
    ]
    .map(|m| format!("sum(count_over_time({m}[1d]))"))
    .join(" + ");
    let total = total.as_str();
    for (name, url) in [("Prometheus", &prom.url), ("nines", &nines.url)] {
        wait_for(&format!("{name} to answer {series} series"), || {
            (scalar_answer(&client, url, count, end).ok()? == series as f64).then_some(())
        });
        let got = scalar_answer(&client, url, total, end);
        assert_eq!(
            got,
            Ok(samples as f64),
            "{name} does not hold all {samples} samples"
        );
    }
    println!(
        "both answer {count} = {series} and count {samples} samples with count_over_time[1d] (setup {:.1?})\n",
        began.elapsed()
    );

    let exprs: [(&str, &str); 5] = [
        (
            "cpu rate by instance",
            r#"sum by (instance) (rate(node_cpu_seconds_total{mode!="idle"}[5m]))"#,
        ),
        (
            "p99 probe latency",
            "histogram_quantile(0.99, sum by (le, instance) (rate(probe_duration_seconds_bucket[5m])))",
        ),
        (
            "topk cpu",
            "topk(5, sum by (instance) (rate(node_cpu_seconds_total[5m])))",
        ),
        (
            "fs predict_linear",
            "predict_linear(node_filesystem_avail_bytes[1h], 4*3600)",
        ),
        ("fs selector", "node_filesystem_avail_bytes"),
    ];
    for (name, expr) in &exprs {
        println!("  {name:<22} {expr}");
    }
    let only = std::env::var("NINES_BENCH_ONLY").unwrap_or_default();
    let ranges: [(&str, i64, i64); 2] = [("1h@15s", 60 * MIN, 15), ("24h@5m", 24 * 60 * MIN, 300)];

    let mut table = String::new();
    let _ = writeln!(
        table,
        "\n{:<7} {:<22} {:>13} {:>4} {:>21} {:>21} {:>7}",
        "range",
        "expression",
        "series/points",
        "runs",
        "Prometheus med/p90 ms",
        "nines med/p90 ms",
        "ratio"
    );
    let mut ratios: Vec<f64> = Vec::new();
    let mut differ = 0;
    for &(range_name, span, step) in &ranges {
        for &(name, expr) in &exprs {
            if !format!("{range_name} {name}").contains(&only) {
                continue;
            }
            let form = [
                ("query", expr.to_string()),
                ("start", ((end - span) / 1000).to_string()),
                ("end", (end / 1000).to_string()),
                ("step", step.to_string()),
            ];
            // Warm-up, whose answers are compared.
            let (wp, prom_body) = post(&client, &prom.url, "query_range", &form);
            let (wn, nines_body) = post(&client, &nines.url, "query_range", &form);
            let (n_series, n_points) = match agree(&prom_body, &nines_body) {
                Ok(v) => v,
                Err(e) => {
                    differ += 1;
                    let _ = writeln!(
                        table,
                        "{range_name:<7} {name:<22} ANSWERS DIFFER, not timed: {e:.400}"
                    );
                    continue;
                }
            };
            let n = (CASE_BUDGET.as_secs_f64() / (wp + wn).as_secs_f64().max(1e-6)) as usize;
            let n = n.clamp(MIN_RUNS.min(runs), runs);
            let mut tp = Vec::with_capacity(n);
            let mut tn = Vec::with_capacity(n);
            for round in 0..n {
                // Alternate which server goes first.
                let order: [bool; 2] = if round % 2 == 0 {
                    [true, false]
                } else {
                    [false, true]
                };
                for is_prom in order {
                    let url = if is_prom { &prom.url } else { &nines.url };
                    let (d, _) = post(&client, url, "query_range", &form);
                    if is_prom { tp.push(d) } else { tn.push(d) }
                }
            }
            tp.sort();
            tn.sort();
            let (pm, p9) = (percentile(&tp, 0.5), percentile(&tp, 0.9));
            let (nm, n9) = (percentile(&tn, 0.5), percentile(&tn, 0.9));
            let ratio = nm.as_secs_f64() / pm.as_secs_f64();
            ratios.push(ratio);
            let _ = writeln!(
                table,
                "{range_name:<7} {name:<22} {:>13} {n:>4} {:>10.1} /{:>9.1} {:>10.1} /{:>9.1} {ratio:>7.2}",
                format!("{n_series}/{n_points}"),
                ms(pm),
                ms(p9),
                ms(nm),
                ms(n9),
            );
        }
    }
    print!("{table}");
    drop(prom);
    drop(nines);
    ratios.sort_by(f64::total_cmp);
    let median_ratio = match ratios.len() {
        0 => f64::NAN,
        l if l % 2 == 1 => ratios[l / 2],
        l => (ratios[l / 2 - 1] + ratios[l / 2]) / 2.0,
    };
    println!(
        "\nmedian of ratios nines/Prometheus over {} cases: {median_ratio:.2} (target <= 1.00); total {:.1?}",
        ratios.len(),
        began.elapsed()
    );
    if differ > 0 {
        eprintln!("{differ} cases answered differently and were not timed");
        std::process::exit(1);
    }
}
