//! Differential test of the PromQL engine: the same generated samples are
//! remote-written into a real Prometheus 2.42 and into nines, then every
//! expression of `tests/promql/corpus.txt` is asked of both, as instant
//! queries at several times and as range queries over several grids, and
//! the answers must agree (result type, series, timestamps, values within
//! 1e-9 relative, error types).
//!
//! The data is made here, deterministically (fixed seed, own PRNG): node-
//! like series for three instances (cpu counters with a reboot, memory and
//! filesystem gauges, network counters with a reset, a scrape gap on one
//! instance), a classic histogram for two probe targets (one restarted), a
//! probe series that ends with a stale marker, and a temperature gauge with
//! zero, negative and NaN values. It ends at "now" aligned to a minute and
//! starts two hours earlier; Prometheus accepts that much history because
//! the samples arrive in ascending time order (each write is within the
//! head's appendable window of the newest sample so far).
//!
//! Corpus lines: one expression per line; `#` starts a comment line. A line
//! `# known difference: <why>` skips the next expression. `$T<n>` in an
//! expression is replaced by the unix time (seconds) `n` minutes before the
//! end of the data, for `@` modifiers.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use nines_collector::ingest::remote_write::{SeriesWrite, encode};
use nines_shared::Labels;
use nines_tests::loadgen::SplitMix;
use nines_tests::prometheus::Prometheus;
use nines_tests::*;
use serde_json::Value as Json;

const SEC: i64 = 1_000;
const MIN: i64 = 60 * SEC;
const SCRAPE: i64 = 15 * SEC;
/// The history written, ending at the data's end.
const HISTORY: i64 = 120 * MIN;
const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;
/// The most differences the failure report lists.
const REPORT_LIMIT: usize = 50;

/// The series written, with their samples in time order.
struct Dataset {
    series: Vec<SeriesWrite>,
}

impl Dataset {
    fn push(&mut self, labels: Labels, samples: Vec<(i64, f64)>) {
        self.series.push(SeriesWrite { labels, samples });
    }

    /// Samples a range selector returns (stale markers are not returned).
    fn visible_samples(&self) -> usize {
        self.series
            .iter()
            .flat_map(|s| &s.samples)
            .filter(|(_, v)| v.to_bits() != STALE_NAN)
            .count()
    }

    /// The write requests: ascending 10-minute chunks, all series per chunk.
    fn chunks(&self, start: i64, end: i64) -> Vec<Vec<SeriesWrite>> {
        let mut out = Vec::new();
        let mut from = start;
        while from <= end {
            let to = from + 10 * MIN;
            let chunk: Vec<SeriesWrite> = self
                .series
                .iter()
                .filter_map(|s| {
                    let samples: Vec<(i64, f64)> = s
                        .samples
                        .iter()
                        .copied()
                        .filter(|&(t, _)| t >= from && t < to)
                        .collect();
                    (!samples.is_empty()).then(|| SeriesWrite {
                        labels: s.labels.clone(),
                        samples,
                    })
                })
                .collect();
            if !chunk.is_empty() {
                out.push(chunk);
            }
            from = to;
        }
        out
    }
}

/// Scrape times of one target: every 15 s from `start` plus the target's
/// offset, jittered by up to ±250 ms, none inside a gap, none after `end`.
fn scrape_times(
    rng: &mut SplitMix,
    start: i64,
    end: i64,
    offset: i64,
    gaps: &[(i64, i64)],
) -> Vec<i64> {
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        let t = start + offset + i * SCRAPE + rng.int(-250, 250);
        i += 1;
        if t > end {
            return out;
        }
        if t < start || gaps.iter().any(|&(a, b)| t >= a && t < b) {
            continue;
        }
        out.push(t);
    }
}

/// A counter over `times`: grows by `step()` per scrape, restarts from a
/// small value at the first scrape at or after each reset time.
fn counter(
    times: &[i64],
    initial: f64,
    resets: &[i64],
    mut step: impl FnMut() -> f64,
) -> Vec<(i64, f64)> {
    let mut v = initial;
    let mut pending: Vec<i64> = resets.to_vec();
    times
        .iter()
        .map(|&t| {
            if let Some(i) = pending.iter().position(|&r| t >= r) {
                pending.remove(i);
                v = 0.0;
            }
            v += step();
            (t, v)
        })
        .collect()
}

/// The generated data, ending at `end` (ms).
fn generate(end: i64) -> Dataset {
    let start = end - HISTORY;
    let mut rng = SplitMix(0x6e69_6e65_7321);
    let mut data = Dataset { series: Vec::new() };
    let at = |minutes_before_end: i64| end - minutes_before_end * MIN;

    // Three node-exporter-like targets.
    let nodes = [
        ("node-a:9100", 1_137, 16e9, 2),
        ("node-b:9100", 6_421, 8e9, 2),
        ("node-c:9100", 11_903, 32e9, 2),
    ];
    for (n, &(instance, offset, mem_total, cpus)) in nodes.iter().enumerate() {
        // node-c misses scrapes for 8 minutes and then for 2.5 minutes, and
        // reboots 70 minutes before the end.
        let (gaps, reboot): (Vec<(i64, i64)>, Vec<i64>) = if n == 2 {
            (
                vec![(at(50), at(42)), (at(15) - 30 * SEC, at(13))],
                vec![at(70)],
            )
        } else {
            (vec![], vec![])
        };
        let times = scrape_times(&mut rng, start, end, offset, &gaps);
        let node = |name: &str, extra: &[(&str, &str)]| {
            let mut pairs = vec![("instance", instance), ("job", "node")];
            pairs.extend_from_slice(extra);
            Labels::new(name, pairs)
        };
        data.push(node("up", &[]), times.iter().map(|&t| (t, 1.0)).collect());
        data.push(
            node(
                "node_uname_info",
                &[
                    ("nodename", &instance[..6]),
                    (
                        "release",
                        if n == 1 {
                            "6.1.0-13-amd64"
                        } else {
                            "6.1.0-17-amd64"
                        },
                    ),
                    ("machine", "x86_64"),
                ],
            ),
            times.iter().map(|&t| (t, 1.0)).collect(),
        );
        for cpu in 0..cpus {
            let cpu_label = cpu.to_string();
            for (mode, share) in [
                ("idle", 0.82),
                ("user", 0.11),
                ("system", 0.05),
                ("iowait", 0.02),
            ] {
                // node-b never waits for I/O: a counter that stays at zero.
                let share = if n == 1 && mode == "iowait" {
                    0.0
                } else {
                    share
                };
                let initial = if share == 0.0 {
                    0.0
                } else {
                    86_400.0 * share * (1.0 + n as f64)
                };
                let mut r = SplitMix(rng.next_u64());
                let samples = counter(&times, initial, &reboot, || {
                    15.0 * share * r.range(0.6, 1.4)
                });
                data.push(
                    node(
                        "node_cpu_seconds_total",
                        &[("cpu", &cpu_label), ("mode", mode)],
                    ),
                    samples,
                );
            }
        }
        // Memory: total constant, available a bounded random walk.
        data.push(
            node("node_memory_MemTotal_bytes", &[]),
            times.iter().map(|&t| (t, mem_total)).collect(),
        );
        let mut avail = mem_total * 0.4;
        let samples = times
            .iter()
            .map(|&t| {
                avail = (avail + rng.range(-0.01, 0.01) * mem_total)
                    .clamp(0.05 * mem_total, 0.9 * mem_total);
                (t, avail.round())
            })
            .collect();
        data.push(node("node_memory_MemAvailable_bytes", &[]), samples);
        // Filesystems: size constant, available trending down (fast on
        // node-a's /var).
        for (mount, device, size, rate_per_s) in [
            ("/", "/dev/sda1", 250e9, 2_000.0),
            (
                "/var",
                "/dev/sdb1",
                12e12,
                if n == 0 { 900_000.0 } else { 40_000.0 },
            ),
        ] {
            let fs = [
                ("device", device),
                ("fstype", "ext4"),
                ("mountpoint", mount),
            ];
            data.push(
                node("node_filesystem_size_bytes", &fs),
                times.iter().map(|&t| (t, size)).collect(),
            );
            let base = size * (0.3 + 0.1 * n as f64);
            let samples = times
                .iter()
                .map(|&t| {
                    let v =
                        base - rate_per_s * ((t - start) as f64 / 1000.0) + rng.range(-1e6, 1e6);
                    (t, (v / 4096.0).round() * 4096.0)
                })
                .collect();
            data.push(node("node_filesystem_avail_bytes", &fs), samples);
        }
        // Network: eth0 busy (node-a's receive counter is huge), lo quiet;
        // node-b's eth0 counters reset 33 minutes before the end.
        for dir in ["receive", "transmit"] {
            for (device, per_scrape) in [("eth0", 3e6), ("lo", 2e3)] {
                let initial = if n == 0 && device == "eth0" && dir == "receive" {
                    9.87e14
                } else {
                    1e9 * (n as f64 + 1.0)
                };
                let mut resets = reboot.clone();
                if n == 1 && device == "eth0" {
                    resets.push(at(33));
                }
                let mut r = SplitMix(rng.next_u64());
                let samples = counter(&times, initial, &resets, || {
                    (per_scrape * r.range(0.2, 1.8)).round()
                });
                data.push(
                    node(
                        &format!("node_network_{dir}_bytes_total"),
                        &[("device", device)],
                    ),
                    samples,
                );
            }
        }
        // Load average.
        let mut load = 0.5 + n as f64;
        let samples = times
            .iter()
            .map(|&t| {
                load = (load + rng.range(-0.3, 0.3)).max(0.0);
                (t, (load * 100.0).round() / 100.0)
            })
            .collect();
        data.push(node("node_load1", &[]), samples);
        // Temperatures: node-a's outdoor sensor goes below zero, hits zero
        // exactly and has one NaN reading 25 minutes before the end.
        let outdoor = n == 0;
        let mut temp = if outdoor { 1.0 } else { 45.0 };
        let nan_at = times.iter().copied().find(|&t| t >= at(25));
        let samples = times
            .iter()
            .map(|&t| {
                temp += rng.range(-0.6, 0.6);
                if outdoor {
                    temp = temp.clamp(-6.0, 4.0);
                }
                let v = if outdoor && Some(t) == nan_at {
                    f64::NAN
                } else {
                    (temp * 2.0).round() / 2.0
                };
                (t, v)
            })
            .collect();
        data.push(
            node(
                "node_hwmon_temp_celsius",
                &[
                    (
                        "chip",
                        if outdoor {
                            "i2c_outdoor"
                        } else {
                            "platform_coretemp_0"
                        },
                    ),
                    ("sensor", "temp1"),
                ],
            ),
            samples,
        );
    }

    // Blackbox-like probes: a latency histogram for two targets (the api
    // target's prober restarts 28 minutes before the end), probe_success
    // for three (the old target is removed 20 minutes before the end and
    // ends with a stale marker).
    let buckets = [
        "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "+Inf",
    ];
    let bounds = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, f64::INFINITY];
    let targets = [
        ("https://example.org", 3_000, 0.03, None),
        ("https://api.example.org", 8_500, 0.12, Some(at(28))),
    ];
    for &(instance, offset, typical, restart) in &targets {
        let times = scrape_times(&mut rng, start, end, offset, &[]);
        let mut counts = [0.0f64; 9];
        let mut sum = 0.0;
        let mut count = 0.0;
        let mut restarted = false;
        let mut rows: Vec<([f64; 9], f64, f64)> = Vec::new();
        for &t in &times {
            if let Some(r) = restart
                && !restarted
                && t >= r
            {
                restarted = true;
                counts = [0.0; 9];
                sum = 0.0;
                count = 0.0;
            }
            for _ in 0..rng.int(1, 5) {
                let x = typical * (rng.range(-1.2, 1.8)).exp();
                sum += x;
                count += 1.0;
                for (c, &b) in counts.iter_mut().zip(&bounds) {
                    if x <= b {
                        *c += 1.0;
                    }
                }
            }
            rows.push((counts, sum, count));
        }
        let probe = |name: &str, extra: &[(&str, &str)]| {
            let mut pairs = vec![("instance", instance), ("job", "blackbox")];
            pairs.extend_from_slice(extra);
            Labels::new(name, pairs)
        };
        for (i, le) in buckets.iter().enumerate() {
            data.push(
                probe("http_probe_latency_seconds_bucket", &[("le", le)]),
                times.iter().zip(&rows).map(|(&t, r)| (t, r.0[i])).collect(),
            );
        }
        data.push(
            probe("http_probe_latency_seconds_sum", &[]),
            times.iter().zip(&rows).map(|(&t, r)| (t, r.1)).collect(),
        );
        data.push(
            probe("http_probe_latency_seconds_count", &[]),
            times.iter().zip(&rows).map(|(&t, r)| (t, r.2)).collect(),
        );
    }
    for (instance, offset, removed) in [
        ("https://example.org", 3_000, None),
        ("https://api.example.org", 8_500, None),
        ("https://old.example.org", 5_200, Some(at(20))),
    ] {
        let times = scrape_times(&mut rng, start, end, offset, &[]);
        let mut samples: Vec<(i64, f64)> = Vec::new();
        for t in times {
            if let Some(r) = removed
                && t >= r
            {
                samples.push((t, f64::from_bits(STALE_NAN)));
                break;
            }
            samples.push((t, if rng.unit() < 0.06 { 0.0 } else { 1.0 }));
        }
        data.push(
            Labels::new(
                "probe_success",
                [("instance", instance), ("job", "blackbox")],
            ),
            samples,
        );
    }
    data
}

/// POSTs a remote_write body; returns (status, body).
fn remote_write(url: &str, token: Option<&str>, series: &[SeriesWrite]) -> (u16, String) {
    let mut req = http()
        .post(format!("{url}/api/v1/write"))
        .header("content-encoding", "snappy")
        .header("content-type", "application/x-protobuf")
        .header("x-prometheus-remote-write-version", "0.1.0")
        .body(encode(series));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let r = req.send().expect("remote write");
    (r.status().as_u16(), r.text().unwrap_or_default())
}

/// POSTs a form to a query endpoint; returns the JSON body (Null if none).
fn api(url: &str, endpoint: &str, form: &[(&str, String)]) -> Json {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form.iter().map(|(k, v)| (*k, v.as_str())))
        .finish();
    let r = http()
        .post(format!("{url}/api/v1/{endpoint}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .expect("query request");
    let text = r.text().unwrap_or_default();
    serde_json::from_str(&text).unwrap_or(Json::Null)
}

/// GETs `path` (with its query string); returns (status, JSON body).
fn get(url: &str, path: &str) -> (u16, Json) {
    let r = http()
        .get(format!("{url}{path}"))
        .send()
        .expect("GET request");
    let status = r.status().as_u16();
    let text = r.text().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Json::Null))
}

/// Grafana's data source requests, in the order it makes them, answered
/// alike: the health check, buildinfo, the query editor's lookups, a
/// dashboard's range query, and the older rules call. Returns what
/// differed.
fn grafana_sequence_differences(prom: &str, nines: &str, end: i64) -> Vec<String> {
    let mut out = Vec::new();
    let (start_s, end_s) = (secs(end - 60 * MIN), secs(end));
    // Health check: an instant query of 1+1 by POST form, then buildinfo.
    let form = [("query", "1+1".to_string()), ("time", end_s.clone())];
    let (want, got) = (api(prom, "query", &form), api(nines, "query", &form));
    if let Some(d) = compare(&want, &got, false) {
        out.push(format!("query 1+1: {d}"));
    }
    let (_, info) = get(nines, "/api/v1/status/buildinfo");
    if info["status"] != "success" || !info["data"]["version"].is_string() {
        out.push(format!("buildinfo: {info}"));
    }
    if info["data"]["features"]
        .as_object()
        .is_some_and(|f| !f.is_empty())
    {
        out.push("buildinfo has features (Grafana would take nines for Mimir)".into());
    }
    // The editor's lookups: the same data, sorted alike.
    for path in [
        "/api/v1/label/__name__/values".to_string(),
        format!("/api/v1/labels?start={start_s}&end={end_s}"),
        format!("/api/v1/label/instance/values?start={start_s}&end={end_s}"),
        format!("/api/v1/series?match[]=node_load1&start={start_s}&end={end_s}"),
        "/api/v1/metadata".to_string(),
        "/api/v1/rules".to_string(),
        "/api/v1/alerts".to_string(),
    ] {
        let (ws, want) = get(prom, &path);
        let (gs, got) = get(nines, &path);
        let sorted = |j: &Json| {
            let mut v = j["data"].as_array().cloned().unwrap_or_default();
            v.sort_by_key(|x| x.to_string());
            v
        };
        let same = ws == gs
            && want["status"] == got["status"]
            && match want["data"] {
                Json::Array(_) => sorted(&want) == sorted(&got),
                Json::Object(_) if path.contains("rules") || path.contains("alerts") => {
                    // Prometheus with no rule files: empty groups/alerts.
                    want["data"] == got["data"]
                }
                _ => want["data"] == got["data"],
            };
        if !same {
            out.push(format!(
                "GET {path}: Prometheus {ws} {want} / nines {gs} {got}"
            ));
        }
    }
    // A dashboard panel: query_range by POST form.
    let form = [
        (
            "query",
            "sum by (instance) (rate(node_cpu_seconds_total[5m]))".to_string(),
        ),
        ("start", start_s),
        ("end", end_s),
        ("step", "60".to_string()),
    ];
    let (want, got) = (
        api(prom, "query_range", &form),
        api(nines, "query_range", &form),
    );
    if let Some(d) = compare(&want, &got, false) {
        out.push(format!("query_range: {d}"));
    }
    out
}

/// Unix seconds with millisecond precision, as a query parameter.
fn secs(ms: i64) -> String {
    format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000))
}

/// One expression of the corpus and where it is in the file.
struct Case {
    line: usize,
    expr: String,
}

/// Reads the corpus: expressions, and those marked as known differences.
fn read_corpus(path: &Path, end: i64) -> (Vec<Case>, Vec<(Case, String)>) {
    let text = std::fs::read_to_string(path).expect("corpus");
    let mut cases = Vec::new();
    let mut known = Vec::new();
    let mut why: Option<String> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            if let Some(reason) = comment.trim().strip_prefix("known difference:") {
                why = Some(reason.trim().to_string());
            }
            continue;
        }
        let case = Case {
            line: i + 1,
            expr: substitute_times(line, end),
        };
        match why.take() {
            Some(reason) => known.push((case, reason)),
            None => cases.push(case),
        }
    }
    (cases, known)
}

/// Replaces `$T<n>` by the unix time `n` minutes before `end`.
fn substitute_times(expr: &str, end: i64) -> String {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(i) = rest.find("$T") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let digits = after.chars().take_while(char::is_ascii_digit).count();
        let minutes: i64 = after[..digits].parse().expect("$T<minutes>");
        out.push_str(&secs(end - minutes * MIN));
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}

/// Whether an instant query's answer keeps the expression's order: the
/// outermost operation is sort, sort_desc, topk or bottomk.
fn keeps_order(expr: &str) -> bool {
    // Top-level tokens: identifiers and parenthesised groups.
    let mut tokens: Vec<String> = Vec::new();
    let mut depth = 0;
    let mut word = String::new();
    for c in expr.chars() {
        match c {
            '(' => {
                if depth == 0 {
                    if !word.is_empty() {
                        tokens.push(std::mem::take(&mut word));
                    }
                    tokens.push("()".into());
                }
                depth += 1;
            }
            ')' => depth -= 1,
            _ if depth > 0 => {}
            c if c.is_alphanumeric() || c == '_' => word.push(c),
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    tokens.push(std::mem::take(&mut word));
                }
            }
            // Any operator at the top level.
            _ => return false,
        }
    }
    if !word.is_empty() {
        tokens.push(word);
    }
    let t: Vec<&str> = tokens.iter().map(String::as_str).collect();
    match t.as_slice() {
        ["()"] => {
            let inner = expr.trim();
            keeps_order(&inner[1..inner.len() - 1])
        }
        ["sort" | "sort_desc", "()"] => true,
        ["topk" | "bottomk", "()"]
        | ["topk" | "bottomk", "()", "by" | "without", "()"]
        | ["topk" | "bottomk", "by" | "without", "()", "()"] => true,
        _ => false,
    }
}

/// A sample value from the API: a JSON string, "NaN" and "±Inf" included.
fn value_of(j: &Json) -> Option<f64> {
    match j.as_str()? {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        s => s.parse().ok(),
    }
}

fn time_of(j: &Json) -> Option<i64> {
    Some((j.as_f64()? * 1000.0).round() as i64)
}

fn close(a: f64, b: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if a.is_infinite() || b.is_infinite() {
        return a == b;
    }
    let diff = (a - b).abs();
    diff <= 1e-12 || diff <= 1e-9 * a.abs().max(b.abs())
}

fn point_str(t: i64, v: f64) -> String {
    format!("({}, {v})", secs(t))
}

/// A result's series: label set (as Prometheus prints it) to points.
fn series_of(result: &Json, matrix: bool) -> Vec<(String, Vec<(i64, f64)>)> {
    let Some(items) = result.as_array() else {
        return Vec::new();
    };
    items
        .iter()
        .map(|s| {
            let labels: BTreeMap<&str, &str> = s["metric"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or("?")))
                        .collect()
                })
                .unwrap_or_default();
            let name = labels.get("__name__").copied().unwrap_or("");
            let rest: Vec<String> = labels
                .iter()
                .filter(|(k, _)| **k != "__name__")
                .map(|(k, v)| format!("{k}={v:?}"))
                .collect();
            let key = format!("{name}{{{}}}", rest.join(", "));
            let points = if matrix {
                s["values"]
                    .as_array()
                    .map(|ps| ps.iter().map(point).collect())
                    .unwrap_or_default()
            } else {
                vec![point(&s["value"])]
            };
            (key, points)
        })
        .collect()
}

fn point(p: &Json) -> (i64, f64) {
    (
        time_of(&p[0]).unwrap_or(i64::MIN),
        value_of(&p[1]).unwrap_or(f64::NAN),
    )
}

/// Compares Prometheus's answer with nines's; returns what differs.
fn compare(want: &Json, got: &Json, ordered: bool) -> Option<String> {
    if want["status"] != "success" {
        if want["status"] != "error" {
            return Some(format!("Prometheus gave no answer: {want}"));
        }
        if got["status"] != "error" {
            return Some(format!(
                "Prometheus: error {} ({}); nines: success",
                want["errorType"], want["error"]
            ));
        }
        if want["errorType"] != got["errorType"] {
            return Some(format!(
                "error types differ: Prometheus {} ({}); nines {} ({})",
                want["errorType"], want["error"], got["errorType"], got["error"]
            ));
        }
        return None;
    }
    if got["status"] != "success" {
        return Some(format!(
            "Prometheus succeeded; nines: {} ({})",
            got["errorType"], got["error"]
        ));
    }
    let (wd, gd) = (&want["data"], &got["data"]);
    let rtype = wd["resultType"].as_str().unwrap_or("");
    if wd["resultType"] != gd["resultType"] {
        return Some(format!(
            "result types differ: Prometheus {}, nines {}",
            wd["resultType"], gd["resultType"]
        ));
    }
    match rtype {
        "scalar" | "string" => {
            let (w, g) = (&wd["result"], &gd["result"]);
            let same_time = time_of(&w[0]) == time_of(&g[0]);
            let same_value = if rtype == "scalar" {
                match (value_of(&w[1]), value_of(&g[1])) {
                    (Some(a), Some(b)) => close(a, b),
                    _ => false,
                }
            } else {
                w[1] == g[1]
            };
            (!(same_time && same_value))
                .then(|| format!("{rtype}s differ: Prometheus {w}, nines {g}"))
        }
        "vector" | "matrix" => {
            let matrix = rtype == "matrix";
            let mut w = series_of(&wd["result"], matrix);
            let mut g = series_of(&gd["result"], matrix);
            let mut out = String::new();
            if ordered && !matrix {
                let wo: Vec<&str> = w.iter().map(|s| s.0.as_str()).collect();
                let go: Vec<&str> = g.iter().map(|s| s.0.as_str()).collect();
                if wo != go {
                    let _ = write!(out, "order differs: Prometheus {wo:?}, nines {go:?}; ");
                }
            }
            w.sort_by(|a, b| a.0.cmp(&b.0));
            g.sort_by(|a, b| a.0.cmp(&b.0));
            let wm: BTreeMap<&str, &[(i64, f64)]> =
                w.iter().map(|(k, p)| (k.as_str(), p.as_slice())).collect();
            let gm: BTreeMap<&str, &[(i64, f64)]> =
                g.iter().map(|(k, p)| (k.as_str(), p.as_slice())).collect();
            if wm.len() != w.len() || gm.len() != g.len() {
                let _ = write!(
                    out,
                    "repeated label sets: Prometheus {} of {}, nines {} of {}; ",
                    wm.len(),
                    w.len(),
                    gm.len(),
                    g.len()
                );
            }
            let missing: Vec<&str> = wm
                .keys()
                .filter(|k| !gm.contains_key(*k))
                .copied()
                .collect();
            let extra: Vec<&str> = gm
                .keys()
                .filter(|k| !wm.contains_key(*k))
                .copied()
                .collect();
            if !missing.is_empty() {
                let _ = write!(out, "missing in nines: {}; ", list(&missing));
            }
            if !extra.is_empty() {
                let _ = write!(out, "only in nines: {}; ", list(&extra));
            }
            let mut shown = 0;
            for (k, wp) in &wm {
                let Some(gp) = gm.get(k) else { continue };
                let first_diff =
                    (0..wp.len().max(gp.len())).find(|&i| match (wp.get(i), gp.get(i)) {
                        (Some(a), Some(b)) => a.0 != b.0 || !close(a.1, b.1),
                        _ => true,
                    });
                if let Some(i) = first_diff {
                    shown += 1;
                    if shown <= 3 {
                        let show = |p: &[(i64, f64)]| {
                            p.get(i)
                                .map_or("none".to_string(), |&(t, v)| point_str(t, v))
                        };
                        let _ = write!(
                            out,
                            "{k}: {} vs {} points, first difference at #{i}: Prometheus {}, nines {}; ",
                            wp.len(),
                            gp.len(),
                            show(wp),
                            show(gp)
                        );
                    }
                }
            }
            if shown > 3 {
                let _ = write!(out, "({} series differ in all); ", shown);
            }
            (!out.is_empty()).then(|| out.trim_end_matches("; ").to_string())
        }
        other => Some(format!("unexpected result type {other}")),
    }
}

fn list(keys: &[&str]) -> String {
    let mut s = keys.iter().take(4).copied().collect::<Vec<_>>().join(" ");
    if keys.len() > 4 {
        let _ = write!(s, " (+{} more)", keys.len() - 4);
    }
    s
}

/// Everything a range selector over the whole history returns, counted.
fn stored_samples(url: &str, end: i64) -> Option<usize> {
    let q = api(
        url,
        "query",
        &[
            ("query", "{job=~\"node|blackbox\"}[3h]".to_string()),
            ("time", secs(end)),
        ],
    );
    Some(
        q["data"]["result"]
            .as_array()?
            .iter()
            .map(|s| s["values"].as_array().map_or(0, Vec::len))
            .sum(),
    )
}

/// How Prometheus answered, to tell a real comparison from an empty one.
#[derive(Default)]
struct Tally {
    data: usize,
    empty: usize,
    errors: usize,
}

impl Tally {
    fn count(&mut self, answer: &Json) {
        if answer["status"] != "success" {
            self.errors += 1;
        } else if answer["data"]["result"]
            .as_array()
            .is_some_and(Vec::is_empty)
        {
            self.empty += 1;
        } else {
            self.data += 1;
        }
    }
}

#[test]
fn promql_answers_match_prometheus_2_42() {
    let Some(prometheus_bin) = peer("prometheus", "prometheus") else {
        return;
    };
    let began = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let end = now - now % MIN;
    let start = end - HISTORY;
    let data = generate(end);
    let expected = data.visible_samples();

    let prom = Prometheus::start(
        &prometheus_bin,
        dir.path(),
        "evaluation_interval: 1m",
        None,
        &["--web.enable-remote-write-receiver"],
    );
    // Like the Prometheus here, which does not scrape itself and has no
    // rule files, nines holds only the loaded data: its own metrics are not
    // stored and its built-in alert rules are off.
    let cfg = dir.path().join("nines.toml");
    std::fs::write(
        &cfg,
        "[presence]\nself_metrics_interval = \"0\"\n[builtin_rules]\nenabled = false\n",
    )
    .unwrap();
    let nines = Collector::start(
        &dir.path().join("nines"),
        &["--no-local-agent", "--config", cfg.to_str().unwrap()],
    );
    for chunk in data.chunks(start, end) {
        let (status, body) = remote_write(&prom.url, None, &chunk);
        assert_eq!(
            status,
            204,
            "Prometheus refused a write: {body}\nlog:\n{}",
            std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
        );
        let (status, body) = remote_write(&nines.url, Some(&nines.token), &chunk);
        assert_eq!(status, 204, "nines refused a write: {body}");
    }
    for (name, url) in [("Prometheus", &prom.url), ("nines", &nines.url)] {
        wait_for(&format!("{name} to hold all {expected} samples"), || {
            (stored_samples(url, end)? == expected).then_some(())
        });
    }

    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("promql/corpus.txt");
    let (cases, known) = read_corpus(&corpus, end);
    assert!(
        cases.len() >= 150,
        "corpus has only {} expressions",
        cases.len()
    );

    // Instant evaluation times: the end, unaligned, while the NaN reading
    // is the latest, mid-history, inside node-c's 8-minute scrape gap, and
    // near the start of the data.
    let instants: Vec<(&str, i64)> = vec![
        ("end", end),
        ("end-7m13s", end - 7 * MIN - 13 * SEC),
        (
            "end-24m50s (NaN reading visible)",
            end - 24 * MIN - 50 * SEC,
        ),
        ("end-37m", end - 37 * MIN),
        ("end-44m30s (node-c gap)", end - 44 * MIN - 30 * SEC),
        ("start+2m", start + 2 * MIN),
    ];
    // Range grids: (name, start, end, step).
    let ranges: Vec<(&str, i64, i64, i64)> = vec![
        ("1h at 60s", end - 60 * MIN, end, 60 * SEC),
        ("20m at 15s", end - 20 * MIN, end, 15 * SEC),
        (
            "10m at 7s unaligned",
            end - 10 * MIN - 1_234,
            end - 567,
            7 * SEC,
        ),
        (
            "gap 55m..35m at 30s",
            end - 55 * MIN,
            end - 35 * MIN,
            30 * SEC,
        ),
        ("2h at 17m", start, end, 17 * MIN),
    ];

    // Per differing expression: its report entry; and all differences.
    let mut reports: Vec<String> = Vec::new();
    let mut differences = 0;
    let mut queries = 0;
    let mut tally = Tally::default();
    for case in &cases {
        let ordered = keeps_order(&case.expr);
        // (where, what differed) for this expression.
        let mut found: Vec<(String, String)> = Vec::new();
        for &(name, t) in &instants {
            let form = [("query", case.expr.clone()), ("time", secs(t))];
            let want = api(&prom.url, "query", &form);
            let got = api(&nines.url, "query", &form);
            queries += 1;
            tally.count(&want);
            if let Some(d) = compare(&want, &got, ordered) {
                found.push((format!("instant at {name}"), d));
            }
        }
        for &(name, s, e, step) in &ranges {
            let form = [
                ("query", case.expr.clone()),
                ("start", secs(s)),
                ("end", secs(e)),
                ("step", secs(step)),
            ];
            let want = api(&prom.url, "query_range", &form);
            let got = api(&nines.url, "query_range", &form);
            queries += 1;
            tally.count(&want);
            if let Some(d) = compare(&want, &got, false) {
                found.push((format!("range {name}"), d));
            }
        }
        if !found.is_empty() {
            differences += found.len();
            reports.push(report_entry(case, &found, instants.len() + ranges.len()));
        }
    }
    eprintln!(
        "promql differential: {} expressions ({} known differences skipped), {queries} queries each; \
Prometheus answered {} with data, {} empty, {} errors; {differences} differences in {} expressions; {:?}",
        cases.len(),
        known.len(),
        tally.data,
        tally.empty,
        tally.errors,
        reports.len(),
        began.elapsed()
    );
    let grafana = grafana_sequence_differences(&prom.url, &nines.url, end);
    assert!(
        grafana.is_empty(),
        "Grafana's request sequence answered differently:\n{}",
        grafana.join("\n")
    );
    // A broken setup (no data, every query failing) must not pass quietly.
    assert!(
        tally.data > queries * 3 / 4,
        "Prometheus answered only {} of {queries} queries with data",
        tally.data
    );
    for (case, why) in &known {
        eprintln!("  skipped line {} `{}`: {why}", case.line, case.expr);
    }
    if !reports.is_empty() {
        let mut report = format!(
            "{differences} differences between Prometheus and nines in {} expressions (first {} shown):\n",
            reports.len(),
            REPORT_LIMIT.min(reports.len())
        );
        for r in reports.iter().take(REPORT_LIMIT) {
            let _ = writeln!(report, "- {r}");
        }
        panic!("{report}");
    }
}

/// One expression's report: where it differed, and the first (and a second,
/// different) description of what differed.
fn report_entry(case: &Case, found: &[(String, String)], evaluations: usize) -> String {
    let wheres: Vec<&str> = found.iter().map(|(w, _)| w.as_str()).collect();
    let wheres = if found.len() == evaluations {
        "all".to_string()
    } else {
        wheres.join(", ")
    };
    let mut entry = format!(
        "line {} `{}`: differs in {} of {evaluations} evaluations ({wheres})",
        case.line,
        case.expr,
        found.len(),
    );
    let (first_where, first) = &found[0];
    let _ = write!(entry, "\n    {first_where}: {first}");
    if let Some((w, d)) = found.iter().find(|(_, d)| d != first) {
        let _ = write!(entry, "\n    {w}: {d}");
    }
    entry
}

#[test]
fn keeps_order_sees_only_the_outermost_operation() {
    assert!(keeps_order("sort(up)"));
    assert!(keeps_order(" sort_desc(rate(x[5m])) "));
    assert!(keeps_order("topk(3, up)"));
    assert!(keeps_order("topk by (job) (3, up)"));
    assert!(keeps_order("bottomk(3, up) without (cpu)"));
    assert!(keeps_order("(sort(up))"));
    assert!(!keeps_order("sort(up) + 1"));
    assert!(!keeps_order("sum(topk(3, up))"));
    assert!(!keeps_order("up"));
}

#[test]
fn compare_reports_every_kind_of_difference() {
    let vector = |items: Json| serde_json::json!({"status": "success", "data": {"resultType": "vector", "result": items}});
    let sample = |instance: &str, v: &str| serde_json::json!({"metric": {"__name__": "up", "instance": instance}, "value": [1700000000.5, v]});
    let a = vector(serde_json::json!([sample("a", "1"), sample("b", "NaN")]));
    let b_reordered = vector(serde_json::json!([
        sample("b", "NaN"),
        sample("a", "1.0000000000001")
    ]));
    assert_eq!(compare(&a, &b_reordered, false), None);
    assert!(
        compare(&a, &b_reordered, true)
            .unwrap()
            .contains("order differs")
    );
    let other_value = vector(serde_json::json!([
        sample("a", "1.001"),
        sample("b", "NaN")
    ]));
    assert!(
        compare(&a, &other_value, false)
            .unwrap()
            .contains("first difference at #0")
    );
    let missing = vector(serde_json::json!([sample("a", "1")]));
    assert!(
        compare(&a, &missing, false)
            .unwrap()
            .contains("missing in nines")
    );
    assert!(
        compare(&missing, &a, false)
            .unwrap()
            .contains("only in nines")
    );
    let scalar = serde_json::json!({"status": "success", "data": {"resultType": "scalar", "result": [1, "1"]}});
    assert!(
        compare(&a, &scalar, false)
            .unwrap()
            .contains("result types differ")
    );
    let error = |t: &str| serde_json::json!({"status": "error", "errorType": t, "error": "x"});
    assert_eq!(compare(&error("bad_data"), &error("bad_data"), false), None);
    assert!(compare(&error("bad_data"), &error("execution"), false).is_some());
    assert!(compare(&error("execution"), &a, false).is_some());
    assert!(compare(&a, &error("execution"), false).is_some());
    assert!(close(0.0, 1e-13) && !close(1.0, 1.0 + 1e-8) && close(f64::INFINITY, f64::INFINITY));
    assert!(!close(f64::NAN, 0.0) && !close(f64::INFINITY, f64::NEG_INFINITY));
}
