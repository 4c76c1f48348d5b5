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
