//! Rollups end to end: three days of node-like series written into a real
//! SQLite file, compacted (which writes the 1 m and 1 h rollups), and
//! queried through the engine. Long aligned range queries read buckets and
//! answer as raw samples do; after raw retention has deleted the older
//! samples, the same queries still answer from the rollups alone.

use nines_collector::query::Engine;
use nines_collector::query::RollupUse;
use nines_collector::query::Value;
use nines_collector::query::querier::Querier;
use nines_collector::storage::{QueryLimits, SeriesWrite, Storage, StorageMetrics, StorageOptions};
use nines_shared::Labels;
use nines_shared::telemetry::Registry;
use promql_parser::label::{MatchOp, Matcher, Matchers};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
const INTERVAL: i64 = 15_000;
const HOSTS: usize = 4;

fn open(path: &Path, retention: Option<Duration>) -> Storage {
    Storage::open_with_options(
        path,
        QueryLimits::default(),
        StorageMetrics::register(&Registry::new()),
        StorageOptions {
            retention,
            ..StorageOptions::keep_everything()
        },
    )
    .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A counter that resets once a day and a gauge with NaNs, per host,
/// scraped every 15 s with a little jitter, from `start` to `end`.
fn write_history(storage: &Storage, rt: &tokio::runtime::Runtime, start: i64, end: i64) {
    let mut t = start;
    while t < end {
        let chunk_end = (t + 2 * HOUR).min(end);
        let mut writes = Vec::new();
        for h in 0..HOSTS {
            let instance = format!("host-{h}");
            let mut counter = Vec::new();
            let mut gauge = Vec::new();
            let mut ts = t;
            while ts < chunk_end {
                let at = ts + ((ts / INTERVAL + h as i64) % 7) * 13;
                let i = (at - start) / INTERVAL;
                // Resets at each day boundary of the history, grows unevenly.
                let since_reset = (at - start) % DAY / INTERVAL;
                counter.push((at, (since_reset * (3 + h as i64) + since_reset % 11) as f64));
                let g = if i % 997 == 0 {
                    f64::NAN
                } else {
                    ((i as f64) / 50.0).sin() * 100.0 + h as f64
                };
                gauge.push((at, g));
                ts += INTERVAL;
            }
            writes.push(SeriesWrite {
                labels: Labels::new(
                    "node_network_receive_bytes_total",
                    [("instance", instance.as_str()), ("job", "node")],
                ),
                samples: counter,
            });
            writes.push(SeriesWrite {
                labels: Labels::new(
                    "node_load1",
                    [("instance", instance.as_str()), ("job", "node")],
                ),
                samples: gauge,
            });
        }
        rt.block_on(storage.write_series(writes, vec![])).unwrap();
        t = chunk_end;
    }
    rt.block_on(storage.compact_now()).unwrap();
}

const QUERIES: &[&str] = &[
    "rate(node_network_receive_bytes_total[1h])",
    "increase(node_network_receive_bytes_total[2h])",
    "sum by (job) (rate(node_network_receive_bytes_total[1h]))",
    "resets(node_network_receive_bytes_total[3h])",
    "max_over_time(node_load1[1h])",
    "min_over_time(node_load1[1h])",
    "avg_over_time(node_load1[2h])",
    "count_over_time(node_load1[1h])",
    "last_over_time(node_load1[1h])",
    "node_load1",
    // Subqueries: their selectors read by the same rule at their own steps.
    "max_over_time(rate(node_network_receive_bytes_total[1h])[6h:1h])",
    "count_over_time((count(node_load1))[12h:30m])",
];

fn matrix(v: Value) -> Vec<(String, Vec<(i64, f64)>)> {
    match v {
        Value::Matrix(m) => m
            .into_iter()
            .map(|s| (format!("{:?}", s.labels), s.samples))
            .collect(),
        other => panic!("not a matrix: {other:?}"),
    }
}

fn close(a: f64, b: f64) -> bool {
    a.to_bits() == b.to_bits()
        || (a.is_nan() && b.is_nan())
        || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

fn assert_same(q: &str, got: &[(String, Vec<(i64, f64)>)], want: &[(String, Vec<(i64, f64)>)]) {
    assert_eq!(got.len(), want.len(), "{q}: series");
    for ((gl, gs), (wl, ws)) in got.iter().zip(want) {
        assert_eq!(gl, wl, "{q}");
        assert_eq!(gs.len(), ws.len(), "{q} {gl}: points");
        for (g, w) in gs.iter().zip(ws) {
            assert_eq!(g.0, w.0, "{q} {gl}");
            assert!(close(g.1, w.1), "{q} {gl} at {}: {} != {}", g.0, g.1, w.1);
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn long_queries_read_rollups_and_still_answer_after_raw_retention() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nines.db");
    let rt = runtime();
    // Three days ending two hours ago, on hour boundaries.
    let end = now_ms().div_euclid(HOUR) * HOUR - 2 * HOUR;
    let start = end - 3 * DAY;
    let storage = open(&path, None);
    write_history(&storage, &rt, start, end);
    let [minute_rows, _, hour_rows, _] = storage.rollup_usage().unwrap();
    assert!(
        minute_rows > 0 && hour_rows > 0,
        "{minute_rows} {hour_rows}"
    );

    let raw = Engine {
        rollups: RollupUse::Never,
        ..Engine::default()
    };
    let auto = Engine::default();
    let (q_start, q_end) = (start + 3 * HOUR, end);
    let mut want = Vec::new();
    for q in QUERIES {
        for step in [HOUR, 10 * 60_000] {
            let r = matrix(raw.range(&storage, q, q_start, q_end, step).unwrap());
            assert!(!r.is_empty(), "{q}: no data");
            let a = matrix(auto.range(&storage, q, q_start, q_end, step).unwrap());
            assert_same(q, &a, &r);
            want.push((q, step, r));
        }
    }
    drop(storage);

    // Reopened with one day of raw retention: the first two days' raw
    // samples go, their rollups stay, and the aligned queries over them
    // give the answers the raw samples gave.
    let storage = open(&path, Some(Duration::from_secs(24 * 3600)));
    rt.block_on(storage.compact_now()).unwrap();
    let cutoff = storage.raw_retention_start().expect("raw retention is set");
    let old = Matchers::new(vec![Matcher::new(MatchOp::Equal, "__name__", "node_load1")]);
    // A chunk straddling the cutoff is kept whole until it ends before it,
    // and chunks never cross a 2 h window: everything before the window
    // holding the cutoff is gone, whatever the time of day.
    let gone_before = cutoff.div_euclid(2 * HOUR) * 2 * HOUR;
    let left = storage.select(&old, start, gone_before - 1).unwrap();
    assert!(
        left.is_empty(),
        "raw samples before {gone_before} (cutoff {cutoff}) remain"
    );
    let [minute_rows, _, hour_rows, _] = storage.rollup_usage().unwrap();
    assert!(minute_rows > 0 && hour_rows > 0);
    for (q, step, r) in &want {
        let a = matrix(auto.range(&storage, q, q_start, q_end, *step).unwrap());
        assert_same(q, &a, r);
        // The raw path alone has lost the older part.
        let now_raw = matrix(raw.range(&storage, q, q_start, q_end, *step).unwrap());
        let points = |m: &[(String, Vec<(i64, f64)>)]| m.iter().map(|s| s.1.len()).sum::<usize>();
        assert!(
            points(&now_raw) < points(r),
            "{q}: raw still answers everything"
        );
    }
}
