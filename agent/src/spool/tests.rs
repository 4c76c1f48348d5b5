//! Spool tests: round trips across rolls and restarts, cursors holding
//! data, torn tails at every byte, damage in older segments, the byte
//! bound, a real SIGKILL, and arbitrary bytes on disk.

use super::*;
use nines_shared::telemetry::Registry;
use proptest::prelude::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn opts(segment_bytes: u64, max_bytes: u64) -> SpoolOptions {
    SpoolOptions {
        max_bytes,
        segment_bytes,
        sync: SyncPolicy::None,
    }
}

/// Opens the spool, waiting out `Locked` for a moment: while another test
/// spawns a process, the forked child shares every open file description
/// (and so the `flock` of a spool just closed here) until it execs.
fn open(dir: impl AsRef<Path>, o: SpoolOptions, m: SpoolMetrics) -> Spool {
    for _ in 0..500 {
        match Spool::open(dir.as_ref(), o.clone(), m.clone()) {
            Err(SpoolError::Locked { .. }) => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            other => return other.unwrap(),
        }
    }
    panic!("spool {} stayed locked", dir.as_ref().display());
}

fn metrics() -> SpoolMetrics {
    SpoolMetrics::register(&Registry::new())
}

/// A payload that can be recognised from its id, 10 to 99 bytes long.
fn payload(id: u64) -> Vec<u8> {
    let len = 10 + (id.wrapping_mul(37) % 90) as usize;
    let mut p = id.to_le_bytes().to_vec();
    p.extend((0..len - 8).map(|i| (id.wrapping_mul(31) as usize ^ i) as u8));
    p
}

fn record_size(id: u64) -> u64 {
    (HEADER_LEN + payload(id).len()) as u64
}

fn read_all(s: &Spool, c: &Cursor) -> Vec<(u64, Vec<u8>)> {
    s.read(c, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(id, p)| (id.0, p))
        .collect()
}

fn expected(ids: impl IntoIterator<Item = u64>) -> Vec<(u64, Vec<u8>)> {
    ids.into_iter().map(|id| (id, payload(id))).collect()
}

fn append_n(s: &mut Spool, n: u64) {
    for _ in 0..n {
        let id = s.stats().next.0;
        assert_eq!(s.append(&payload(id)).unwrap(), RecordId(id));
    }
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

fn dropped(m: &SpoolMetrics, cursor: &str, reason: &str) -> (u64, u64) {
    (
        m.dropped_records.with(&[cursor, reason]).get(),
        m.dropped_bytes.with(&[cursor, reason]).get(),
    )
}

#[test]
fn the_spool_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Spool>();
    check::<std::sync::Mutex<Spool>>();
}

#[test]
fn records_round_trip_across_rolls_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(300, 1 << 20);
    let mut s = open(dir.path(), o.clone(), metrics());
    let c = s.cursor("a").unwrap();
    append_n(&mut s, 50);
    assert!(s.stats().segments > 5, "{:?}", s.stats());

    let first = s.read(&c, 10).unwrap();
    assert_eq!(first.len(), 10);
    assert_eq!(first[0], (RecordId(1), payload(1)));
    assert_eq!(
        s.read(&c, 10).unwrap(),
        first,
        "read does not move the cursor"
    );
    s.ack(&c, RecordId(10)).unwrap();
    s.ack(&c, RecordId(4)).unwrap(); // behind the cursor: no effect
    assert_eq!(read_all(&s, &c), expected(11..=50));
    assert_eq!(s.lag(&c).unwrap(), 40);
    let segments = s.stats().segments;
    drop(s);

    let mut s = open(dir.path(), o.clone(), metrics());
    assert_eq!(s.recovery(), &Recovery::default());
    assert_eq!(s.cursors(), vec!["a".to_string()]);
    assert_eq!(s.stats().segments, segments);
    let c = s.cursor("a").unwrap();
    assert_eq!(read_all(&s, &c), expected(11..=50));
    assert_eq!(s.append(&payload(51)).unwrap(), RecordId(51));
    s.ack(&c, RecordId(30)).unwrap();

    // A cursor created now starts at the oldest record still present,
    // which is at or before the slowest cursor.
    let b = s.cursor("b").unwrap();
    let oldest = s.stats().oldest.unwrap().0;
    assert!(oldest <= 31);
    assert_eq!(read_all(&s, &b), expected(oldest..=51));
    drop(s);

    let s = open(dir.path(), o, metrics());
    let a = Cursor { name: "a".into() };
    assert_eq!(read_all(&s, &a), expected(31..=51));
    assert_eq!(s.stats().next, RecordId(52));
}

#[test]
fn a_segment_goes_only_when_every_cursor_is_past_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path(), opts(200, 1 << 20), metrics());
    let fast = s.cursor("fast").unwrap();
    let slow = s.cursor("slow").unwrap();
    append_n(&mut s, 40);
    let all = s.stats().segments;
    assert!(all >= 10);

    s.ack(&fast, RecordId(40)).unwrap();
    assert_eq!(
        s.stats().segments,
        all,
        "the slow cursor holds every segment"
    );
    assert_eq!(s.stats().unacked_records, 40);
    assert_eq!(s.lag(&fast).unwrap(), 0);

    s.ack(&slow, RecordId(20)).unwrap();
    let st = s.stats();
    assert!(st.segments < all);
    let oldest = st.oldest.unwrap().0;
    assert!(oldest <= 21, "nothing the slow cursor still wants is gone");
    assert!(segment_files(dir.path()).len() == st.segments);
    assert_eq!(read_all(&s, &slow), expected(21..=40));
    assert_eq!(st.unacked_records, 20);

    s.ack(&slow, RecordId(40)).unwrap();
    assert_eq!(
        s.stats().segments,
        1,
        "only the segment being written stays"
    );
    assert_eq!(s.stats().unacked_records, 0);

    // Removing a cursor releases what it held.
    append_n(&mut s, 20);
    let before = s.stats().segments;
    s.ack(&fast, RecordId(60)).unwrap();
    assert_eq!(s.stats().segments, before, "slow still holds them");
    assert!(s.remove_cursor("slow").unwrap());
    assert!(!s.remove_cursor("slow").unwrap());
    assert_eq!(s.stats().segments, 1);
    assert!(matches!(
        s.read(&slow, 1),
        Err(SpoolError::UnknownCursor(_))
    ));
    assert!(!dir.path().join("cursor-slow").exists());
}

#[test]
fn a_torn_last_record_is_cut_at_every_byte() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let mut s = open(&src, opts(400, 1 << 20), metrics());
    append_n(&mut s, 12);
    drop(s);
    let segs = segment_files(&src);
    assert!(segs.len() >= 3);
    let last_path = segs.last().unwrap();
    let last = fs::read(last_path).unwrap();
    let last_base = segment_base(last_path.file_name().unwrap().to_str().unwrap()).unwrap();
    assert!(last_base < 12, "the last segment holds several records");
    let torn_start = last.len() as u64 - record_size(12);

    let garbage: Vec<u8> = (0..37u8).map(|i| i.wrapping_mul(97) ^ 0x5a).collect();
    let mut case = 0;
    for cut in torn_start..last.len() as u64 {
        for junk in [&[][..], &garbage[..]] {
            case += 1;
            let d = dir.path().join(format!("case{case}"));
            fs::create_dir(&d).unwrap();
            for p in &segs {
                fs::copy(p, d.join(p.file_name().unwrap())).unwrap();
            }
            let mut bytes = last[..cut as usize].to_vec();
            bytes.extend_from_slice(junk);
            let on_disk = d.join(last_path.file_name().unwrap());
            fs::write(&on_disk, &bytes).unwrap();

            let m = metrics();
            let mut s = open(&d, opts(400, 1 << 20), m.clone());
            let cut_bytes = bytes.len() as u64 - torn_start;
            assert_eq!(s.recovery().truncated_bytes, cut_bytes, "cut at {cut}");
            assert_eq!(m.truncated_bytes.get(), cut_bytes);
            assert_eq!(fs::metadata(&on_disk).unwrap().len(), torn_start);
            let c = s.cursor("c").unwrap();
            assert_eq!(read_all(&s, &c), expected(1..=11), "cut at {cut}");
            // The torn record's append never returned, so its id is reused.
            assert_eq!(s.append(&payload(12)).unwrap(), RecordId(12));
            drop(s);
            let s = open(&d, opts(400, 1 << 20), metrics());
            assert_eq!(s.recovery(), &Recovery::default());
            assert_eq!(read_all(&s, &c), expected(1..=12));
            drop(s);
            fs::remove_dir_all(&d).unwrap();
        }
    }
}

#[test]
fn damage_in_an_older_segment_is_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(400, 1 << 20);
    let mut s = open(dir.path(), o.clone(), metrics());
    let ahead = s.cursor("ahead").unwrap();
    let behind = s.cursor("behind").unwrap();
    append_n(&mut s, 30);
    drop(s);

    let segs = segment_files(dir.path());
    assert!(segs.len() >= 4);
    let second = &segs[1];
    let base = segment_base(second.file_name().unwrap().to_str().unwrap()).unwrap();
    let next_base = segment_base(segs[2].file_name().unwrap().to_str().unwrap()).unwrap();
    assert!(
        next_base - base >= 3,
        "the segment holds at least three records"
    );
    // Flip a payload byte of its third record.
    let mut bytes = fs::read(second).unwrap();
    let third = record_size(base) + record_size(base + 1);
    let at = (third + HEADER_LEN as u64 + 3) as usize;
    bytes[at] ^= 0x40;
    fs::write(second, &bytes).unwrap();
    let lost: Vec<u64> = (base + 2..next_base).collect();
    let lost_bytes = bytes.len() as u64 - third;

    // "ahead" had read past the damage; "behind" had not.
    let m = metrics();
    let mut s = open(dir.path(), o.clone(), m.clone());
    s.ack(&ahead, RecordId(next_base)).unwrap();
    drop(s);
    let m = metrics();
    let s = open(dir.path(), o, m.clone());
    assert_eq!(
        s.recovery(),
        &Recovery {
            truncated_bytes: 0,
            corrupt_records: lost.len() as u64,
            corrupt_bytes: lost_bytes,
        }
    );
    assert_eq!(
        dropped(&m, "behind", "corrupt"),
        (lost.len() as u64, lost_bytes)
    );
    assert_eq!(dropped(&m, "ahead", "corrupt"), (0, 0));
    assert_eq!(
        fs::read(second).unwrap(),
        bytes,
        "older segments are never rewritten"
    );
    let want = expected((1..=30).filter(|id| !lost.contains(id)));
    assert_eq!(read_all(&s, &behind), want);
    assert_eq!(read_all(&s, &ahead), expected(next_base + 1..=30));
}

#[test]
fn damage_found_at_read_time_is_skipped_and_counted_once() {
    let dir = tempfile::tempdir().unwrap();
    let m = metrics();
    let mut s = open(dir.path(), opts(1 << 20, 4 << 20), m.clone());
    let c = s.cursor("c").unwrap();
    append_n(&mut s, 5);
    // Bit rot after open: flip a payload byte of record 3.
    let seg = &segment_files(dir.path())[0];
    let mut bytes = fs::read(seg).unwrap();
    let at = record_size(1) + record_size(2) + HEADER_LEN as u64;
    bytes[at as usize] ^= 1;
    fs::write(seg, &bytes).unwrap();

    assert_eq!(read_all(&s, &c), expected([1, 2, 4, 5]));
    assert_eq!(s.read(&c, 3).unwrap().len(), 3);
    assert_eq!(dropped(&m, "c", "corrupt"), (1, record_size(3)));
}

#[test]
fn the_byte_bound_drops_oldest_segments_and_counts_per_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let (segment_bytes, max_bytes) = (512, 2048);
    let m = metrics();
    let mut s = open(dir.path(), opts(segment_bytes, max_bytes), m.clone());
    let idle = s.cursor("idle").unwrap();
    let busy = s.cursor("busy").unwrap();
    let half = s.cursor("half").unwrap();
    for id in 1..=300u64 {
        assert_eq!(s.append(&payload(id)).unwrap(), RecordId(id));
        assert!(s.stats().bytes <= max_bytes, "{:?}", s.stats());
        let on_disk: u64 = segment_files(dir.path())
            .iter()
            .map(|p| fs::metadata(p).unwrap().len())
            .sum();
        assert_eq!(on_disk, s.stats().bytes);
        let got = s.read(&busy, 10).unwrap();
        assert_eq!(got, vec![(RecordId(id), payload(id))]);
        s.ack(&busy, RecordId(id)).unwrap();
        if id == 10 {
            s.ack(&half, RecordId(10)).unwrap();
        }
    }
    let oldest = s.stats().oldest.unwrap().0;
    assert!(oldest > 11, "old segments were deleted");
    // The oldest went first: what is left is the newest, contiguous.
    assert_eq!(read_all(&s, &idle), expected(oldest..=300));
    assert_eq!(read_all(&s, &half), expected(oldest..=300));
    let gone_bytes = |from: u64| (from..oldest).map(record_size).sum::<u64>();
    assert_eq!(
        dropped(&m, "idle", "spool_full"),
        (oldest - 1, gone_bytes(1))
    );
    assert_eq!(
        dropped(&m, "half", "spool_full"),
        (oldest - 11, gone_bytes(11))
    );
    assert_eq!(dropped(&m, "busy", "spool_full"), (0, 0));
    assert_eq!(s.lag(&idle).unwrap(), 301 - oldest);
    assert_eq!(s.stats().unacked_records, 301 - oldest);
    assert_eq!(m.appended.get(), 300);
    assert_eq!(m.segments.get(), s.stats().segments as f64);
    assert_eq!(m.bytes.get(), s.stats().bytes as f64);
}

#[test]
fn without_cursors_drops_are_counted_with_an_empty_cursor_label() {
    let dir = tempfile::tempdir().unwrap();
    let m = metrics();
    let mut s = open(dir.path(), opts(256, 512), m.clone());
    append_n(&mut s, 40);
    let oldest = s.stats().oldest.unwrap().0;
    assert_eq!(dropped(&m, "", "spool_full").0, oldest - 1);
    let late = s.cursor("late").unwrap();
    assert_eq!(read_all(&s, &late), expected(oldest..=40));
}

#[test]
fn bad_options_names_and_acks_are_refused_in_words() {
    let dir = tempfile::tempdir().unwrap();
    let e = Spool::open(dir.path(), opts(1024, 1500), metrics()).unwrap_err();
    assert!(e.to_string().contains("at least twice"), "{e}");
    let e = Spool::open(dir.path(), opts(10, 1500), metrics()).unwrap_err();
    assert!(matches!(e, SpoolError::InvalidOptions(_)));

    let mut s = open(dir.path(), opts(256, 512), metrics());
    for bad in ["", "../x", ".hidden", "a/b", &"x".repeat(101)] {
        assert!(matches!(
            s.cursor(bad),
            Err(SpoolError::InvalidCursorName(_))
        ));
    }
    let c = s.cursor("collector-1.example_com").unwrap();
    assert!(matches!(
        s.ack(&c, RecordId(1)),
        Err(SpoolError::AckBeyondEnd { newest: 0, .. })
    ));
    let e = s.append(&[0u8; 500]).unwrap_err();
    assert!(
        matches!(e, SpoolError::RecordTooLarge { max: 488, .. }),
        "{e}"
    );
    assert_eq!(s.append(&[7u8; 488]).unwrap(), RecordId(1));

    let e = Spool::open(dir.path(), opts(256, 512), metrics()).unwrap_err();
    assert!(matches!(e, SpoolError::Locked { .. }), "{e}");
    assert!(e.to_string().contains("one agent per state dir"));
    drop(s);
    open(dir.path(), opts(256, 512), metrics());
}

#[test]
fn a_full_disk_is_reported_and_leaves_the_spool_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let o = SpoolOptions {
        sync: SyncPolicy::EveryRecord,
        ..opts(4096, 1 << 20)
    };
    let mut s = open(dir.path(), o.clone(), metrics());
    let c = s.cursor("c").unwrap();
    append_n(&mut s, 3);
    s.ack(&c, RecordId(1)).unwrap();
    // Every write to /dev/full fails with ENOSPC, and it cannot be
    // truncated either, so the failed write is left to the next append.
    let real = std::mem::replace(
        &mut s.active,
        OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/full")
            .unwrap(),
    );
    let e = s.append(&payload(4)).unwrap_err();
    assert!(matches!(e, SpoolError::DiskFull { .. }), "{e}");
    assert!(e.to_string().contains("no space left"), "{e}");
    assert!(s.tail_dirty);
    assert_eq!(s.stats().next, RecordId(4));
    // Space is back: the next append cuts the stray bytes first.
    s.active = real;
    s.active
        .write_all_at(b"half a record", s.stats().bytes)
        .unwrap();
    assert_eq!(s.append(&payload(4)).unwrap(), RecordId(4));
    assert_eq!(read_all(&s, &c), expected(2..=4));
    drop(s);
    let s = open(dir.path(), o, metrics());
    assert_eq!(s.recovery(), &Recovery::default());
    assert_eq!(read_all(&s, &c), expected(2..=4));
}

#[test]
fn unknown_files_and_bad_cursor_files_do_not_stop_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(256, 4096);
    let mut s = open(dir.path(), o.clone(), metrics());
    let c = s.cursor("c").unwrap();
    append_n(&mut s, 20);
    s.ack(&c, RecordId(15)).unwrap();
    drop(s);
    for name in [
        "README",
        "1.seg",
        "0000000000000000000x.seg",
        "tmp-cursor-c",
        "cursor-",
    ] {
        fs::write(dir.path().join(name), b"junk").unwrap();
    }
    fs::write(dir.path().join("cursor-c"), b"not a number").unwrap();
    let s = open(dir.path(), o, metrics());
    assert_eq!(s.cursors(), vec!["c".to_string()]);
    // The cursor restarts at the oldest record rather than losing any.
    let oldest = s.stats().oldest.unwrap().0;
    assert!(oldest <= 16);
    assert_eq!(read_all(&s, &c), expected(oldest..=20));
}

#[test]
fn acknowledgements_overwrite_the_cursor_file_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let o = SpoolOptions {
        sync: SyncPolicy::EveryRecord,
        ..opts(256, 4096)
    };
    let mut s = open(dir.path(), o.clone(), metrics());
    let c = s.cursor("c").unwrap();
    let file = dir.path().join("cursor-c");
    // A new cursor's file, in the format written before acknowledgements
    // were written in place.
    assert_eq!(fs::read_to_string(&file).unwrap(), "1\n");
    append_n(&mut s, 12);
    s.ack(&c, RecordId(3)).unwrap();
    assert_eq!(fs::read_to_string(&file).unwrap(), "00000000000000000004\n");
    s.ack(&c, RecordId(11)).unwrap();
    assert_eq!(fs::read_to_string(&file).unwrap(), "00000000000000000012\n");
    drop(s);
    let s = open(dir.path(), o.clone(), metrics());
    assert_eq!(s.next_unread(&c).unwrap(), RecordId(12));
    drop(s);
    // A short file from before, overwritten whole by the next
    // acknowledgement.
    fs::write(&file, "12\n").unwrap();
    let mut s = open(dir.path(), o, metrics());
    assert_eq!(s.next_unread(&c).unwrap(), RecordId(12));
    append_n(&mut s, 1);
    s.ack(&c, RecordId(12)).unwrap();
    assert_eq!(fs::read_to_string(&file).unwrap(), "00000000000000000013\n");
    // A removed cursor's file goes, and a cursor made again under its
    // name starts a new file.
    assert!(s.remove_cursor("c").unwrap());
    assert!(!file.exists());
    let c = s.cursor("c").unwrap();
    let at = s.next_unread(&c).unwrap();
    s.ack(&c, RecordId(at.0)).unwrap();
    assert_eq!(
        fs::read_to_string(&file).unwrap(),
        format!("{:020}\n", at.0 + 1)
    );
}

#[test]
fn an_acknowledgement_marked_in_memory_counts_at_once_and_reaches_the_file_at_the_next_append() {
    let dir = tempfile::tempdir().unwrap();
    let o = SpoolOptions {
        sync: SyncPolicy::EveryRecord,
        ..opts(256, 4096)
    };
    let m = metrics();
    let mut s = open(dir.path(), o.clone(), m.clone());
    let c = s.cursor("c").unwrap();
    let file = dir.path().join("cursor-c");
    append_n(&mut s, 12);
    let segments = segment_files(dir.path());
    assert!(segments.len() > 2, "{segments:?}");
    s.mark_acked(&c, RecordId(5)).unwrap();
    // Reads, lag and the gauge see it at once...
    assert_eq!(read_all(&s, &c), expected(6..=12));
    assert_eq!(s.next_unread(&c).unwrap(), RecordId(6));
    assert_eq!(s.lag(&c).unwrap(), 7);
    assert_eq!(m.records.get(), 7.0);
    // ...without any file I/O: the cursor file and the segments stay.
    assert_eq!(fs::read_to_string(&file).unwrap(), "1\n");
    assert_eq!(segment_files(dir.path()), segments);
    // The next append writes it and deletes what every cursor is past.
    append_n(&mut s, 1);
    assert_eq!(fs::read_to_string(&file).unwrap(), "00000000000000000006\n");
    let oldest = s.stats().oldest.unwrap().0;
    assert!(oldest > 1 && oldest <= 6, "oldest {oldest}");
    assert_eq!(m.segments.get(), segment_files(dir.path()).len() as f64);
    // An ack at or behind the cursor changes nothing; beyond the end is
    // refused.
    s.mark_acked(&c, RecordId(3)).unwrap();
    assert_eq!(s.next_unread(&c).unwrap(), RecordId(6));
    assert!(matches!(
        s.mark_acked(&c, RecordId(14)),
        Err(SpoolError::AckBeyondEnd { .. })
    ));
    // Closing the spool writes what was marked since.
    s.mark_acked(&c, RecordId(9)).unwrap();
    assert_eq!(fs::read_to_string(&file).unwrap(), "00000000000000000006\n");
    drop(s);
    assert_eq!(fs::read_to_string(&file).unwrap(), "00000000000000000010\n");
    let mut s = open(dir.path(), o, m);
    assert_eq!(s.next_unread(&c).unwrap(), RecordId(10));
    s.mark_acked(&c, RecordId(13)).unwrap();
    s.write_acks().unwrap();
    assert_eq!(fs::read_to_string(&file).unwrap(), "00000000000000000014\n");
    assert_eq!(s.stats().unacked_records, 0);
}

#[test]
fn a_full_spool_drops_nothing_a_cursor_marked_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let m = metrics();
    let mut s = open(dir.path(), opts(512, 2048), m.clone());
    let idle = s.cursor("idle").unwrap();
    let busy = s.cursor("busy").unwrap();
    for id in 1..=300u64 {
        assert_eq!(s.append(&payload(id)).unwrap(), RecordId(id));
        assert_eq!(read_all(&s, &busy), expected([id]));
        s.mark_acked(&busy, RecordId(id)).unwrap();
    }
    let oldest = s.stats().oldest.unwrap().0;
    assert!(oldest > 1, "old segments were deleted");
    assert_eq!(dropped(&m, "busy", "spool_full"), (0, 0));
    assert_eq!(dropped(&m, "idle", "spool_full").0, oldest - 1);
    assert_eq!(s.lag(&busy).unwrap(), 0);
    assert_eq!(s.lag(&idle).unwrap(), 301 - oldest);
}

#[test]
fn ids_never_go_back_when_every_segment_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(256, 4096);
    let mut s = open(dir.path(), o.clone(), metrics());
    let c = s.cursor("c").unwrap();
    append_n(&mut s, 10);
    s.ack(&c, RecordId(10)).unwrap();
    drop(s);
    for p in segment_files(dir.path()) {
        fs::remove_file(p).unwrap();
    }
    let mut s = open(dir.path(), o, metrics());
    assert_eq!(s.append(b"x").unwrap(), RecordId(11));
    assert_eq!(s.read(&c, 5).unwrap(), vec![(RecordId(11), b"x".to_vec())]);
}

const WRITER_ENV: &str = "NINES_SPOOL_TEST_WRITER_DIR";

/// Not a test on its own: with `WRITER_ENV` set, it is the child process of
/// `acknowledged_records_survive_sigkill`, appending until it is killed.
#[test]
fn sigkill_writer_child() {
    let Some(dir) = std::env::var_os(WRITER_ENV) else {
        return;
    };
    let o = SpoolOptions {
        max_bytes: 1 << 30,
        segment_bytes: 4096,
        sync: SyncPolicy::EveryRecord,
    };
    let mut s = open(PathBuf::from(dir), o, metrics());
    let mut out = std::io::stdout().lock();
    for _ in 0..200_000 {
        let id = s.stats().next.0;
        assert_eq!(s.append(&payload(id)).unwrap(), RecordId(id));
        // Printed only once append returned: these are the promises.
        writeln!(out, "spooled {id}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn acknowledged_records_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "spool::tests::sigkill_writer_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(WRITER_ENV, &spool_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut promised = Vec::new();
    // libtest may print "test … ... " on the same line as the first id.
    let parse = |line: &str| {
        let at = line.find("spooled ")?;
        Some(line[at + 8..].trim().parse::<u64>().unwrap())
    };
    while promised.len() < 400 {
        match lines.next() {
            Some(Ok(line)) => promised.extend(parse(&line)),
            _ => break,
        }
    }
    child.kill().unwrap(); // SIGKILL on Unix
    // Lines already in the pipe were printed before the kill: promises too.
    promised.extend(lines.map_while(Result::ok).filter_map(|l| parse(&l)));
    let status = child.wait().unwrap();
    assert!(!status.success(), "the writer was killed, not finished");
    assert!(promised.len() >= 400, "only {} records", promised.len());

    let mut s = open(&spool_dir, opts(4096, 1 << 30), metrics());
    let c = s.cursor("check").unwrap();
    let got: BTreeMap<u64, Vec<u8>> = read_all(&s, &c).into_iter().collect();
    for id in &promised {
        assert_eq!(got.get(id), Some(&payload(*id)), "record {id}");
    }
    // Nothing beyond what was promised except, at most, the record whose
    // append was cut short after it reached the disk.
    let last = *promised.last().unwrap();
    assert!(got.keys().all(|&id| id <= last + 1));
    assert_eq!(s.append(b"after").unwrap().0, got.len() as u64 + 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn scanning_arbitrary_bytes_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..2000),
        base in any::<u64>(),
    ) {
        let s = format::scan(&bytes[..], bytes.len() as u64, base).unwrap();
        prop_assert!(s.end <= bytes.len() as u64);
        prop_assert!(s.offsets.windows(2).all(|w| w[0] < w[1]));
        prop_assert_eq!(s.damage.is_none(), s.end == bytes.len() as u64);
    }

    #[test]
    fn arbitrary_bytes_in_segments_never_panic(
        good in 0u64..6,
        junk in prop::collection::vec(any::<u8>(), 0..600),
        junk_in_older in any::<bool>(),
        flip in any::<prop::sample::Index>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut first = Vec::new();
        for id in 1..=good {
            format::encode(id, &payload(id), &mut first);
        }
        let intact = first.len();
        first.extend_from_slice(&junk);
        // Sometimes damage a byte anywhere, good records included.
        let flipped = if junk.len() % 3 == 0 && !first.is_empty() {
            let at = flip.index(first.len());
            first[at] ^= 0x10;
            Some(at)
        } else {
            None
        };
        fs::write(segment_path(dir.path(), 1), &first).unwrap();
        if junk_in_older {
            let mut second = Vec::new();
            for id in 100..102 {
                format::encode(id, &payload(id), &mut second);
            }
            fs::write(segment_path(dir.path(), 100), &second).unwrap();
        }
        let o = opts(256, 4096);
        let mut s = open(dir.path(), o.clone(), metrics());
        let c = s.cursor("c").unwrap();
        let got = read_all(&s, &c);
        // Every record before the first damaged byte is there, in order.
        let damaged_from = flipped.unwrap_or(intact).min(intact);
        let whole = (1..=good).take_while(|&id| {
            (1..=id).map(record_size).sum::<u64>() as usize <= damaged_from
        });
        for (i, id) in whole.enumerate() {
            prop_assert_eq!(&got[i], &(id, payload(id)));
        }
        prop_assert!(got.windows(2).all(|w| w[0].0 < w[1].0));
        if junk_in_older {
            prop_assert_eq!(&got[got.len() - 2..], &expected(100..102)[..]);
        }
        let id = s.append(b"after").unwrap();
        drop(s);
        let s = open(dir.path(), o, metrics());
        prop_assert_eq!(s.recovery().truncated_bytes, 0);
        let again = read_all(&s, &c);
        prop_assert_eq!(again.last(), Some(&(id.0, b"after".to_vec())));
    }
}

#[test]
fn a_cursor_drop_counter_exists_at_zero_before_the_first_drop() {
    let dir = tempfile::tempdir().unwrap();
    let r = Registry::new();
    let mut s = open(dir.path(), opts(300, 1 << 20), SpoolMetrics::register(&r));
    s.cursor("c-a").unwrap();
    let text = r.render();
    assert!(
        text.contains(
            "nines_agent_spool_dropped_records_total{cursor=\"c-a\",reason=\"spool_full\"} 0\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "nines_agent_spool_dropped_bytes_total{cursor=\"c-a\",reason=\"spool_full\"} 0\n"
        ),
        "{text}"
    );
}
