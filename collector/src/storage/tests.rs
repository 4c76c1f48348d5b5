//! Storage through its public API: what is written reads back exactly
//! through the Querier, from the head, from chunks and from both, whatever
//! the order of arrival, and again after a restart (the log replayed);
//! corrupt chunks and log rows are skipped and counted.

use super::*;
use nines_shared::telemetry::Registry;
use promql_parser::label::{MatchOp, Matcher};
use proptest::prelude::*;
use std::collections::BTreeMap;

const T: i64 = 1_700_000_000_000;
const STALE: u64 = 0x7ff0_0000_0000_0002;

struct Fixture {
    _dir: tempfile::TempDir,
    storage: Option<Storage>,
    registry: Registry,
    rt: tokio::runtime::Runtime,
}

fn open(path: &std::path::Path, registry: &Registry) -> Storage {
    Storage::open_with_options(
        path,
        QueryLimits::default(),
        StorageMetrics::register(registry),
        // Old fixed timestamps: no retention here.
        StorageOptions {
            retention: None,
            ..StorageOptions::default()
        },
    )
    .unwrap()
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::new();
    let storage = open(&dir.path().join("t.db"), &registry);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    Fixture {
        _dir: dir,
        storage: Some(storage),
        registry,
        rt,
    }
}

impl Fixture {
    fn s(&self) -> &Storage {
        self.storage.as_ref().expect("open")
    }

    fn write(&self, metric: &str, samples: &[(i64, u64)]) {
        let w = SeriesWrite {
            labels: Labels::new(metric, [("job", "t")]),
            samples: samples
                .iter()
                .map(|&(t, b)| (t, f64::from_bits(b)))
                .collect(),
        };
        self.rt
            .block_on(self.s().write_series(vec![w], vec![]))
            .unwrap();
    }

    fn compact(&self) -> MaintenanceReport {
        self.rt.block_on(self.s().compact_now()).unwrap()
    }

    fn read(&self, metric: &str, start: i64, end: i64) -> Vec<(i64, u64)> {
        let m = Matchers::new(vec![Matcher::new(MatchOp::Equal, "__name__", metric)]);
        let got = self.s().select(&m, start, end).unwrap();
        assert!(got.len() <= 1);
        got.into_iter()
            .flat_map(|s| s.samples)
            .map(|(t, v)| (t, v.to_bits()))
            .collect()
    }

    fn metric(&self, name: &str) -> String {
        self.registry
            .render()
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default()
            .to_string()
    }

    fn sql(&self) -> Connection {
        Connection::open(self.s().path()).unwrap()
    }

    /// Closes the store and opens it again: the head comes from the log.
    fn restart(&mut self) {
        let path = self.s().path().to_path_buf();
        // Dropping the store stops its writer before the next one opens.
        self.storage = None;
        self.registry = Registry::new();
        self.storage = Some(open(&path, &self.registry));
    }
}

/// What the store must answer: later writes win at a timestamp.
#[derive(Default)]
struct Model(BTreeMap<i64, u64>);

impl Model {
    fn write(&mut self, samples: &[(i64, u64)]) {
        for &(t, b) in samples {
            self.0.insert(t, b);
        }
    }
    fn range(&self, start: i64, end: i64) -> Vec<(i64, u64)> {
        self.0.range(start..=end).map(|(t, b)| (*t, *b)).collect()
    }
}

#[test]
fn head_chunks_and_both_read_back_exactly() {
    let f = fixture();
    let mut m = Model::default();
    let specials = [
        STALE,
        f64::NAN.to_bits(),
        0x7ff8_0000_dead_beef,
        (-0.0f64).to_bits(),
        f64::INFINITY.to_bits(),
        f64::NEG_INFINITY.to_bits(),
        1.5f64.to_bits(),
    ];
    let first: Vec<(i64, u64)> = (0..600)
        .map(|i| (T + i * 1000, specials[i as usize % specials.len()]))
        .collect();
    f.write("m", &first);
    m.write(&first);
    // Head only.
    assert_eq!(f.read("m", i64::MIN, i64::MAX), m.range(i64::MIN, i64::MAX));
    f.compact();
    let labels = Labels::new("m", [("job", "t")]);
    let (head, chunks, in_chunks) = f.s().layout_of(&labels).unwrap();
    assert_eq!((head, in_chunks), (0, 600));
    assert!(chunks >= 1);
    // Chunks only, whole and in parts.
    assert_eq!(f.read("m", i64::MIN, i64::MAX), m.range(i64::MIN, i64::MAX));
    assert_eq!(
        f.read("m", T + 10_500, T + 20_000),
        m.range(T + 10_500, T + 20_000)
    );
    // Late, out of order and duplicate arrivals: visible at once, the
    // latest write wins over what the chunks hold.
    let late = [
        (T + 5_000, 42f64.to_bits()),
        (T - 1, 7f64.to_bits()),
        (T + 700_000, STALE),
        (T + 300_500, (-0.0f64).to_bits()),
    ];
    f.write("m", &late);
    m.write(&late);
    f.write("m", &[(T + 5_000, 43f64.to_bits())]);
    m.write(&[(T + 5_000, 43f64.to_bits())]);
    assert_eq!(f.read("m", i64::MIN, i64::MAX), m.range(i64::MIN, i64::MAX));
    assert_eq!(f.read("m", T, T + 6_000), m.range(T, T + 6_000));
    assert_eq!(f.s().stored_samples(&labels).unwrap(), m.0.len());
    // Compacted again: merged into chunks, same answers, no head left.
    f.compact();
    assert_eq!(f.s().layout_of(&labels).unwrap().0, 0);
    assert_eq!(f.read("m", i64::MIN, i64::MAX), m.range(i64::MIN, i64::MAX));
    assert_eq!(f.s().stored_samples(&labels).unwrap(), m.0.len());
    // Chunks never overlap after compaction.
    let conn = f.sql();
    let spans: Vec<(i64, i64)> = conn
        .prepare("SELECT start_ts, end_ts FROM chunks ORDER BY start_ts")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(spans.windows(2).all(|w| w[0].1 < w[1].0), "{spans:?}");
}

#[test]
fn series_and_limits_see_chunks_and_head() {
    let f = fixture();
    f.write("a", &[(T, 1), (T + 10 * 60_000, 2)]);
    f.write("b", &[(T + 60_000, 3)]);
    f.compact();
    f.write("b", &[(T + 120_000, 4)]);
    let sel = |name: &str| Matchers::new(vec![Matcher::new(MatchOp::Equal, "__name__", name)]);
    let names = |v: Vec<Labels>| {
        v.iter()
            .map(|l| l.metric_name().unwrap_or("").to_string())
            .collect::<Vec<_>>()
    };
    // "a" has a chunk straddling [T+1 min, T+2 min] with no sample in it.
    let found = f
        .s()
        .series(&[sel("a"), sel("b")], T + 60_000, T + 120_000)
        .unwrap();
    assert_eq!(names(found), vec!["b"]);
    let found = f.s().series(&[sel("a")], T + 30_000, T + 600_000).unwrap();
    assert_eq!(names(found), vec!["a"]);
    // The sample limit counts merged samples.
    let dir = tempfile::tempdir().unwrap();
    let tight = Storage::open_with_options(
        &dir.path().join("l.db"),
        QueryLimits {
            max_series: 10,
            max_samples: 3,
        },
        StorageMetrics::register(&Registry::new()),
        StorageOptions {
            retention: None,
            ..StorageOptions::default()
        },
    )
    .unwrap();
    let w = SeriesWrite {
        labels: Labels::new("c", [("job", "t")]),
        samples: (0..4).map(|i| (T + i, 1.0)).collect(),
    };
    f.rt.block_on(tight.write_series(vec![w], vec![])).unwrap();
    f.rt.block_on(tight.compact_now()).unwrap();
    assert!(matches!(
        tight.select(&sel("c"), i64::MIN, i64::MAX),
        Err(QuerierError::TooManySamples(3))
    ));
    assert_eq!(
        tight.select(&sel("c"), T, T + 2).unwrap()[0].samples.len(),
        3
    );
}

#[test]
fn a_corrupt_chunk_is_skipped_counted_and_left_alone() {
    let f = fixture();
    // Two windows: two chunks.
    let samples: Vec<(i64, u64)> = (0..4)
        .map(|i| (T + i * 3_600_000, (i as f64).to_bits()))
        .collect();
    f.write("c", &samples);
    f.compact();
    let conn = f.sql();
    let (id, start): (i64, i64) = conn
        .query_row(
            "SELECT id, start_ts FROM chunks ORDER BY start_ts LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let mut data: Vec<u8> = conn
        .query_row("SELECT data FROM chunks WHERE id = ?1", [id], |r| r.get(0))
        .unwrap();
    let n = data.len();
    data[n / 2] ^= 0x10;
    conn.execute("UPDATE chunks SET data = ?2 WHERE id = ?1", (id, &data))
        .unwrap();
    let got = f.read("c", i64::MIN, i64::MAX);
    let in_chunk = |s: &(i64, u64)| s.0 >= start && s.0 <= compact::window_last(start);
    let kept: Vec<(i64, u64)> = samples.iter().copied().filter(|s| !in_chunk(s)).collect();
    assert!(kept.len() < samples.len());
    assert_eq!(got, kept);
    assert!(
        f.metric("nines_storage_corrupt_chunks_total")
            .ends_with(" 1")
    );
    // A late sample in the corrupt chunk's window is stored, compacted
    // around it, and read; the corrupt chunk stays where it is.
    f.write("c", &[(start + 1, 9f64.to_bits())]);
    let r = f.compact();
    assert_eq!(r.corrupt_chunks, 1);
    let mut want = kept.clone();
    want.push((start + 1, 9f64.to_bits()));
    want.sort();
    assert_eq!(f.read("c", i64::MIN, i64::MAX), want);
    let still: i64 = conn
        .query_row("SELECT count(*) FROM chunks WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(still, 1);
    // Readers that only ask whether a series has data do not fail either.
    let sel = Matchers::new(vec![Matcher::new(MatchOp::Equal, "__name__", "c")]);
    assert_eq!(f.s().series(&[sel], start + 2, start + 3).unwrap().len(), 0);
}

#[test]
fn a_version_1_file_opens_and_its_rows_are_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.db");
    {
        let conn = Connection::open(&path).unwrap();
        schema::configure(&conn).unwrap();
        conn.execute_batch(
            "BEGIN;
             CREATE TABLE series (id INTEGER PRIMARY KEY, metric TEXT NOT NULL, labels TEXT NOT NULL UNIQUE);
             CREATE TABLE samples (series_id INTEGER NOT NULL, ts INTEGER NOT NULL, value INTEGER NOT NULL,
                 PRIMARY KEY (series_id, ts)) WITHOUT ROWID;
             CREATE TABLE applied_batches (stream TEXT NOT NULL, seq INTEGER NOT NULL, applied_at INTEGER NOT NULL,
                 PRIMARY KEY (stream, seq)) WITHOUT ROWID;
             CREATE INDEX applied_batches_by_time ON applied_batches (applied_at);
             CREATE TABLE metadata (metric TEXT PRIMARY KEY, kind TEXT NOT NULL, help TEXT NOT NULL, unit TEXT NOT NULL);
             PRAGMA user_version = 1;
             COMMIT;",
        )
        .unwrap();
        conn.execute(
            "INSERT INTO series (id, metric, labels) VALUES (1, 'old', ?1)",
            [writer::labels_to_json(&Labels::new("old", [("job", "t")]))],
        )
        .unwrap();
        for i in 0..100i64 {
            conn.execute(
                "INSERT INTO samples VALUES (1, ?1, ?2)",
                (T + i * 1000, (i as f64).to_bits() as i64),
            )
            .unwrap();
        }
    }
    let registry = Registry::new();
    let storage = Storage::open_with_options(
        &path,
        QueryLimits::default(),
        StorageMetrics::register(&registry),
        StorageOptions {
            retention: None,
            ..StorageOptions::default()
        },
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sel = Matchers::new(vec![Matcher::new(MatchOp::Equal, "__name__", "old")]);
    let want: Vec<(i64, f64)> = (0..100).map(|i| (T + i * 1000, i as f64)).collect();
    assert_eq!(
        storage.select(&sel, i64::MIN, i64::MAX).unwrap()[0].samples,
        want
    );
    rt.block_on(storage.compact_now()).unwrap();
    let labels = Labels::new("old", [("job", "t")]);
    assert_eq!(storage.layout_of(&labels).unwrap().0, 0);
    assert_eq!(
        storage.select(&sel, i64::MIN, i64::MAX).unwrap()[0].samples,
        want
    );
}

/// One step of a random history.
#[derive(Debug, Clone)]
enum Op {
    Write(Vec<(i64, u64)>),
    Compact,
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    let bits = prop_oneof![
        any::<u64>(),
        Just(STALE),
        Just(f64::NAN.to_bits()),
        (0u64..50).prop_map(|i| (i as f64).to_bits()),
    ];
    // Timestamps over three 2 h windows, in any order, with repeats.
    let ts = prop_oneof![
        (0i64..600).prop_map(|i| T + i * 1000),
        (0i64..20_000).prop_map(|i| T + i * 1000),
    ];
    prop_oneof![
        4 => prop::collection::vec((ts, bits), 1..80).prop_map(Op::Write),
        1 => Just(Op::Compact),
        1 => Just(Op::Restart),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn any_history_reads_back_as_the_last_write_at_each_timestamp(
        ops in prop::collection::vec(op(), 1..12),
        cut in 0i64..20_000,
    ) {
        let mut f = fixture();
        let mut m = Model::default();
        for op in ops {
            match op {
                Op::Write(s) => {
                    // One write with a timestamp twice keeps its last value.
                    f.write("p", &s);
                    m.write(&s);
                }
                Op::Compact => {
                    f.compact();
                }
                Op::Restart => f.restart(),
            }
            prop_assert_eq!(f.read("p", i64::MIN, i64::MAX), m.range(i64::MIN, i64::MAX));
        }
        let (a, b) = (T + cut * 1000, T + cut * 1000 + 3_600_000);
        prop_assert_eq!(f.read("p", a, b), m.range(a, b));
        f.compact();
        prop_assert_eq!(f.read("p", i64::MIN, i64::MAX), m.range(i64::MIN, i64::MAX));
    }
}

#[test]
fn the_head_survives_a_restart_and_a_corrupt_log_row_is_skipped() {
    let mut f = fixture();
    let mut m = Model::default();
    // Out of order, replaced, NaN payloads: all from the log after restart.
    let a: Vec<(i64, u64)> = (0..50)
        .rev()
        .map(|i| (T + i * 1000, STALE - (i as u64 % 2)))
        .collect();
    f.write("r", &a);
    m.write(&a);
    f.write("r", &[(T + 7_000, 1f64.to_bits())]);
    m.write(&[(T + 7_000, 1f64.to_bits())]);
    f.write("other", &[(T, 2f64.to_bits())]);
    f.restart();
    assert_eq!(f.read("r", i64::MIN, i64::MAX), m.range(i64::MIN, i64::MAX));
    // Compaction moves the head into chunks and the log empties.
    f.compact();
    let conn = f.sql();
    let rows = |c: &Connection| -> i64 {
        c.query_row("SELECT count(*) FROM ingest_log", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(rows(&conn), 0);
    f.restart();
    assert_eq!(f.read("r", i64::MIN, i64::MAX), m.range(i64::MIN, i64::MAX));
    // A later write, then its row damaged on disk: skipped and counted at
    // the next open, and nothing else is lost.
    f.write("other", &[(T + 1000, 3f64.to_bits())]);
    f.write("r", &[(T + 100_000, 4f64.to_bits())]);
    m.write(&[(T + 100_000, 4f64.to_bits())]);
    let (id, mut data): (i64, Vec<u8>) = conn
        .query_row(
            "SELECT id, data FROM ingest_log ORDER BY id LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    data[3] ^= 0x40;
    conn.execute("UPDATE ingest_log SET data = ?2 WHERE id = ?1", (id, &data))
        .unwrap();
    f.restart();
    assert!(
        f.metric("nines_storage_corrupt_log_rows_total")
            .ends_with(" 1")
    );
    assert_eq!(f.read("r", i64::MIN, i64::MAX), m.range(i64::MIN, i64::MAX));
    assert_eq!(
        f.read("other", i64::MIN, i64::MAX),
        vec![(T, 2f64.to_bits())]
    );
}

// ------------------------------------------------------------- rollups

const MINUTE: i64 = 60_000;
const HOUR: i64 = 3_600_000;

fn selector(metric: &str) -> Matchers {
    Matchers::new(vec![Matcher::new(MatchOp::Equal, "__name__", metric)])
}

type BucketBits = Vec<crate::query::rollup::BucketBits>;

/// What the store answers for `select_buckets`, as bits.
fn stored_buckets(s: &Storage, metric: &str, start: i64, end: i64, res: i64) -> BucketBits {
    let got = s
        .select_buckets(&selector(metric), start, end, res)
        .unwrap();
    assert!(got.len() <= 1);
    got.iter()
        .flat_map(|s| s.buckets.iter().map(Bucket::bits))
        .collect()
}

/// The reference: the raw samples the store holds, folded.
fn folded_raw(s: &Storage, metric: &str, start: i64, end: i64, res: i64) -> BucketBits {
    let from = crate::query::rollup::bucket_end(start, res) - res + 1;
    let to = end.div_euclid(res) * res;
    s.select(&selector(metric), from, to)
        .unwrap()
        .iter()
        .flat_map(|s| crate::query::rollup::fold(&s.samples, res))
        .map(|b| b.bits())
        .collect()
}

fn rollup_rows(f: &Fixture) -> (i64, i64) {
    let conn = f.sql();
    let n = |t: &str| -> i64 {
        conn.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))
            .unwrap()
    };
    (n("rollup_1m"), n("rollup_1h"))
}

fn rollup_op() -> impl Strategy<Value = Op> {
    // Counters with resets (small integers), NaN, stale markers, any bits.
    let bits = prop_oneof![
        3 => (0u64..50).prop_map(|i| (i as f64).to_bits()),
        1 => any::<u64>(),
        1 => Just(STALE),
        1 => Just(f64::NAN.to_bits()),
    ];
    // Over four 2 h windows and a day boundary (at T + 6400 s), on and off
    // minute and window boundaries, in any order.
    let ts = prop_oneof![
        (0i64..20_000).prop_map(|i| T + i * 1000),
        (6_000i64..6_800).prop_map(|i| T + i * 1000),
        (0i64..20_000_000).prop_map(|i| T + i),
    ];
    prop_oneof![
        4 => prop::collection::vec((ts, bits), 1..120).prop_map(Op::Write),
        1 => Just(Op::Compact),
        1 => Just(Op::Restart),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn rollup_buckets_equal_the_fold_of_the_raw_samples(
        ops in prop::collection::vec(rollup_op(), 1..12),
        a in 0i64..20_000,
        len in 0i64..20_000,
    ) {
        let mut f = fixture();
        let (a, b) = (T + a * 1000 + 17, T + (a + len) * 1000);
        let check = |f: &Fixture| -> Result<(), TestCaseError> {
            for res in [MINUTE, HOUR] {
                for (start, end) in [(i64::MIN / 2, i64::MAX / 2), (a, b)] {
                    prop_assert_eq!(
                        stored_buckets(f.s(), "p", start, end, res),
                        folded_raw(f.s(), "p", start, end, res)
                    );
                }
            }
            Ok(())
        };
        for op in ops {
            match op {
                Op::Write(s) => f.write("p", &s),
                Op::Compact => {
                    f.compact();
                }
                Op::Restart => f.restart(),
            }
            check(&f)?;
        }
        // Everything in chunks: every window answered from its rows.
        f.compact();
        let (m, _) = rollup_rows(&f);
        let windows: std::collections::BTreeSet<i64> = f
            .read("p", i64::MIN, i64::MAX)
            .iter()
            .map(|s| compact::window_start(s.0))
            .collect();
        prop_assert_eq!(m as usize, windows.len());
        check(&f)?;
        f.restart();
        check(&f)?;
    }
}

#[test]
fn late_samples_reach_the_rollups_and_limits_count_buckets() {
    let f = fixture();
    // A counter at 1 s over two windows, with a reset.
    let s: Vec<(i64, u64)> = (0..9000)
        .map(|i| {
            (
                T + i * 1000,
                (if i < 5000 { i } else { i - 5000 } as f64).to_bits(),
            )
        })
        .collect();
    f.write("c", &s);
    f.compact();
    assert_eq!(rollup_rows(&f), (2, 2), "two windows, two days");
    let written = f.metric("nines_storage_rollup_rows_written_total{resolution=\"1m\"}");
    assert!(!written.is_empty() && !written.ends_with(" 0"), "{written}");
    let (start, end) = (T - HOUR, T + 10_000_000);
    for res in [MINUTE, HOUR] {
        assert_eq!(
            stored_buckets(f.s(), "c", start, end, res),
            folded_raw(f.s(), "c", start, end, res)
        );
    }
    // A late sample in the first window: in the head, answered raw there.
    f.write("c", &[(T + 100_500, 1e6f64.to_bits())]);
    let with_late = stored_buckets(f.s(), "c", start, end, MINUTE);
    assert_eq!(with_late, folded_raw(f.s(), "c", start, end, MINUTE));
    assert!(with_late.iter().any(|b| b.2[6] == 1e6f64.to_bits()));
    // Merged into the window's chunks: its rows are recomputed.
    f.compact();
    assert_eq!(
        f.s()
            .layout_of(&Labels::new("c", [("job", "t")]))
            .unwrap()
            .0,
        0
    );
    assert_eq!(stored_buckets(f.s(), "c", start, end, MINUTE), with_late);
    assert_eq!(
        stored_buckets(f.s(), "c", start, end, HOUR),
        folded_raw(f.s(), "c", start, end, HOUR)
    );
    // Other resolutions fold raw samples.
    assert_eq!(
        stored_buckets(f.s(), "c", start, end, 300_000),
        folded_raw(f.s(), "c", start, end, 300_000)
    );
    // The sample limit counts buckets taken from rows.
    let dir = tempfile::tempdir().unwrap();
    let tight = Storage::open_with_options(
        &dir.path().join("l.db"),
        QueryLimits {
            max_series: 10,
            max_samples: 100,
        },
        StorageMetrics::register(&Registry::new()),
        StorageOptions::keep_everything(),
    )
    .unwrap();
    let w = SeriesWrite {
        labels: Labels::new("c", [("job", "t")]),
        samples: (0..6000).map(|i| (T + i * 1000, 1.0)).collect(),
    };
    f.rt.block_on(tight.write_series(vec![w], vec![])).unwrap();
    f.rt.block_on(tight.compact_now()).unwrap();
    assert!(matches!(
        tight.select_buckets(&selector("c"), start, end, MINUTE),
        Err(QuerierError::TooManySamples(100))
    ));
    assert_eq!(
        tight
            .select_buckets(&selector("c"), start, end, HOUR)
            .unwrap()[0]
            .buckets
            .len(),
        2
    );
}

/// Opens `path` with these retentions (raw, 1m, 1h) and runs a full
/// compaction and retention pass.
fn reopen_with_retention(
    f: &mut Fixture,
    path: &std::path::Path,
    days: [Option<u64>; 3],
) -> MaintenanceReport {
    f.storage = None;
    f.registry = Registry::new();
    let d = |n: Option<u64>| n.map(|n| Duration::from_secs(n * 24 * 3600));
    f.storage = Some(
        Storage::open_with_options(
            path,
            QueryLimits::default(),
            StorageMetrics::register(&f.registry),
            StorageOptions {
                retention: d(days[0]),
                retention_1m: d(days[1]),
                retention_1h: d(days[2]),
                ..StorageOptions::default()
            },
        )
        .unwrap(),
    );
    f.compact()
}

#[test]
fn raw_retention_keeps_the_rollups_until_their_own_retention() {
    let mut f = fixture();
    let path = f.s().path().to_path_buf();
    let now = UnixMillis::now().0;
    // Three days ago, an hour of a gauge at 10 s, within a 7 day retention.
    let t0 = now - 3 * 24 * HOUR;
    let s: Vec<(i64, u64)> = (0..360)
        .map(|i| (t0 + i * 10_000, ((i * 7919 % 101) as f64 * 0.5).to_bits()))
        .collect();
    reopen_with_retention(&mut f, &path, [Some(7), Some(30), Some(60)]);
    f.write("g", &s);
    f.compact();
    let (start, end) = (t0 - 2 * HOUR, t0 + 3 * HOUR);
    let minute = stored_buckets(f.s(), "g", start, end, MINUTE);
    let hour = stored_buckets(f.s(), "g", start, end, HOUR);
    assert_eq!(minute, folded_raw(f.s(), "g", start, end, MINUTE));
    assert_eq!(hour, folded_raw(f.s(), "g", start, end, HOUR));
    assert!(minute.len() >= 60);
    let rows = rollup_rows(&f);
    assert!(rows.0 >= 1 && rows.1 >= 1, "{rows:?}");

    // Raw retention of a day: the chunks go, the rows stay and answer.
    let r = reopen_with_retention(&mut f, &path, [Some(1), Some(30), Some(60)]);
    assert_eq!(r.samples_expired, 360);
    assert_eq!(r.rollup_rows_expired, 0);
    assert!(f.read("g", i64::MIN, i64::MAX).is_empty());
    assert_eq!(stored_buckets(f.s(), "g", start, end, MINUTE), minute);
    assert_eq!(stored_buckets(f.s(), "g", start, end, HOUR), hour);
    // A late sample older than raw retention does not change the rollups
    // (and is deleted with the next retention pass, as before).
    f.write("g", &[(t0 + 5_000, 1e9f64.to_bits())]);
    f.compact();
    assert!(f.read("g", i64::MIN, i64::MAX).is_empty());
    assert_eq!(stored_buckets(f.s(), "g", start, end, MINUTE), minute);
    assert_eq!(stored_buckets(f.s(), "g", start, end, HOUR), hour);
    assert_eq!(rollup_rows(&f), rows);
    // Raw retention made longer again: the window lost its chunks, so a
    // late sample in it is kept raw but leaves the rows as they are.
    reopen_with_retention(&mut f, &path, [Some(7), Some(30), Some(60)]);
    // Queries still know raw samples are gone up to the cutoff once applied
    // (a day ago), not only the new one (seven days ago).
    assert!(
        f.s().raw_retention_start().is_some_and(|t| t > t0),
        "{:?}",
        f.s().raw_retention_start()
    );
    f.write("g", &[(t0 + 5_000, 1e9f64.to_bits())]);
    f.compact();
    assert_eq!(f.read("g", i64::MIN, i64::MAX).len(), 1);
    assert_eq!(stored_buckets(f.s(), "g", start, end, MINUTE), minute);
    assert_eq!(stored_buckets(f.s(), "g", start, end, HOUR), hour);

    // Minute rollups past their own retention go; hour rollups stay.
    let r = reopen_with_retention(&mut f, &path, [Some(1), Some(1), Some(60)]);
    assert_eq!(r.rollup_rows_expired as i64, rows.0);
    assert_eq!(rollup_rows(&f), (0, rows.1));
    let gone = f.metric("nines_storage_retention_deleted_rollup_rows_total{resolution=\"1m\"}");
    assert!(gone.ends_with(&format!(" {}", rows.0)), "{gone}");
    assert!(stored_buckets(f.s(), "g", start, end, MINUTE).is_empty());
    assert_eq!(stored_buckets(f.s(), "g", start, end, HOUR), hour);
    // And then the hour rollups.
    reopen_with_retention(&mut f, &path, [Some(1), Some(1), Some(1)]);
    assert_eq!(rollup_rows(&f), (0, 0));
    assert!(stored_buckets(f.s(), "g", start, end, HOUR).is_empty());
}

#[test]
fn a_version_3_file_is_answered_from_its_chunks_and_rolled_up_in_the_background() {
    let mut f = fixture();
    let s: Vec<(i64, u64)> = (0..9000)
        .map(|i| (T + i * 1000, ((i % 61) as f64).to_bits()))
        .collect();
    f.write("v", &s);
    f.compact();
    // Make it a version 3 file: chunks, no rollup tables.
    let path = f.s().path().to_path_buf();
    f.storage = None;
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "DROP TABLE rollup_1m; DROP TABLE rollup_1h; DROP TABLE storage_marks;
             PRAGMA user_version = 3;",
        )
        .unwrap();
    }
    let (start, end) = (T - HOUR, T + 10_000_000);
    let answers = |f: &Fixture| {
        for res in [MINUTE, HOUR] {
            assert_eq!(
                stored_buckets(f.s(), "v", start, end, res),
                folded_raw(f.s(), "v", start, end, res)
            );
        }
    };
    {
        // Opened by hand so that the backfill has not run yet.
        let conn = Connection::open(&path).unwrap();
        schema::configure(&conn).unwrap();
        schema::migrate(&conn).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, schema::SCHEMA_VERSION);
    }
    f.registry = Registry::new();
    f.storage = Some(open(&path, &f.registry));
    // Until the backfill pass reaches them, the windows are answered from
    // their chunks; then from the rows it writes. Either way the same.
    answers(&f);
    // A late sample in the second window, and the backfill pass: every
    // window with chunks has its rows.
    f.write("v", &[(T + 8_000_500, 0.25f64.to_bits())]);
    f.compact();
    assert_eq!(rollup_rows(&f), (2, 2));
    answers(&f);
    // The rows answer alone: the chunks are gone.
    f.sql().execute("DELETE FROM chunks", []).unwrap();
    let want = {
        let mut f2 = fixture();
        f2.write("v", &s);
        f2.write("v", &[(T + 8_000_500, 0.25f64.to_bits())]);
        f2.compact();
        f2.restart();
        [MINUTE, HOUR].map(|res| folded_raw(f2.s(), "v", start, end, res))
    };
    for (i, res) in [MINUTE, HOUR].into_iter().enumerate() {
        assert_eq!(stored_buckets(f.s(), "v", start, end, res), want[i]);
    }
}
