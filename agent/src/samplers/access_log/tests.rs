//! Tests of the access-log tailer against real files in a temporary
//! directory: partial lines, both kinds of rotation, restarts, formats and
//! the bounds on labels.

use super::*;
use nines_shared::LabelLimits;
use proptest::prelude::*;
use std::fs::OpenOptions;

/// A temporary directory holding `access.log` and a state directory.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Fixture {
            dir: tempfile::tempdir().expect("create temp dir"),
        }
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A tailer on `access.log` in nginx_combined_rt that reads a file
    /// existing at start from its beginning, adjusted by `f`.
    fn tailer(&self, f: impl FnOnce(&mut AccessLogConfig)) -> AccessLogTailer {
        let mut cfg = AccessLogConfig::new(self.log(), LogFormat::NginxCombinedRt);
        cfg.read_existing = true;
        f(&mut cfg);
        AccessLogTailer::new(cfg, &self.state_dir()).expect("create tailer")
    }

    /// Appends to `access.log`, creating it if needed.
    fn append(&self, text: &str) {
        append(&self.log(), text);
    }
}

fn append(path: &Path, text: &str) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open log for append");
    f.write_all(text.as_bytes()).expect("append to log");
}

fn writer(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open log for append")
}

/// One nginx_combined_rt line.
fn nginx(method: &str, status: u16, seconds: &str) -> String {
    format!(
        "10.0.0.1 - - [10/Oct/2024:13:55:36 +0000] \"{method} /p?q=1 HTTP/1.1\" {status} 512 \"-\" \"curl/8.0 (x; \\\"y\\\")\" {seconds}\n"
    )
}

fn snap(t: &AccessLogTailer) -> Samples {
    let mut out = Samples::default();
    t.sample(&mut out);
    for o in &out.observations {
        assert!(
            o.labels.validate(&LabelLimits::default()).is_ok(),
            "invalid series {}",
            o.labels
        );
    }
    out
}

fn own(t: &AccessLogTailer, metric: &str) -> f64 {
    snap(t)
        .value_of(metric, &[("path", t.path_label.as_str())])
        .expect("tailer metrics are always reported")
}

fn lines(t: &AccessLogTailer) -> f64 {
    own(t, LINES)
}

fn requests(out: &Samples, vhost: &str, method: &str, class: &str) -> Option<f64> {
    out.value_of(
        REQUESTS,
        &[
            ("vhost", vhost),
            ("method", method),
            ("status_class", class),
        ],
    )
}

fn bucket(out: &Samples, vhost: &str, le: &str) -> Option<f64> {
    out.value_of(
        &format!("{DURATION}_bucket"),
        &[("vhost", vhost), ("le", le)],
    )
}

#[test]
fn counts_requests_status_classes_and_latency_exactly() {
    let fx = Fixture::new();
    let text = [
        nginx("GET", 200, "0.050"),
        nginx("POST", 201, "0.120"),
        nginx("GET", 304, "0.900"),
        nginx("GET", 404, "0.004"),
        nginx("PUT", 503, "2.000"),
        nginx("PROPFIND", 207, "0.300"),
        nginx("GET", 101, "0.001"),
        // nginx logs a request it could not read as "-".
        "10.0.0.9 - - [10/Oct/2024:13:55:37 +0000] \"-\" 400 0 \"-\" \"-\" 0.000\n".to_string(),
        "this is not an access log line\n".to_string(),
        // Plain combined, without the request time.
        "10.0.0.1 - - [10/Oct/2024:13:55:36 +0000] \"GET / HTTP/1.1\" 200 5 \"-\" \"-\"\n"
            .to_string(),
        "\n".to_string(),
    ]
    .concat();
    fx.append(&text);
    let mut t = fx.tailer(|c| c.vhost = Some("shop".into()));
    t.poll();
    let out = snap(&t);
    let path = [("path", t.path_label.as_str())];
    assert_eq!(out.value_of(LINES, &path), Some(10.0));
    assert_eq!(out.value_of(UNPARSED, &path), Some(2.0));
    assert_eq!(out.value_of(PRESENT, &path), Some(1.0));
    assert_eq!(out.value_of(ROTATIONS, &path), Some(0.0));
    for (method, class) in [
        ("GET", "2xx"),
        ("POST", "2xx"),
        ("GET", "3xx"),
        ("GET", "4xx"),
        ("PUT", "5xx"),
        ("other", "2xx"),
        ("GET", "other"),
        ("other", "4xx"),
    ] {
        assert_eq!(
            requests(&out, "shop", method, class),
            Some(1.0),
            "{method} {class}"
        );
    }
    let reported = out
        .observations
        .iter()
        .filter(|o| o.labels.metric_name() == Some(REQUESTS))
        .count();
    assert_eq!(reported, 8);
    for (le, n) in [
        ("0.005", 3.0),
        ("0.05", 4.0),
        ("0.1", 4.0),
        ("0.25", 5.0),
        ("0.3", 6.0),
        ("1", 7.0),
        ("2", 8.0),
        ("+Inf", 8.0),
    ] {
        assert_eq!(bucket(&out, "shop", le), Some(n), "le={le}");
    }
    let sum = out.value_of(&format!("{DURATION}_sum"), &[("vhost", "shop")]);
    assert!(sum.is_some_and(|s| (s - 3.375).abs() < 1e-9), "{sum:?}");
    assert_eq!(
        out.value_of(&format!("{DURATION}_count"), &[("vhost", "shop")]),
        Some(8.0)
    );
    let kind = |name: &str| out.metadata.iter().find(|m| m.name == name).map(|m| m.kind);
    assert_eq!(kind(DURATION), Some(MetricKind::Histogram));
    assert_eq!(kind(REQUESTS), Some(MetricKind::Counter));

    // Cumulative: a second poll with nothing new changes nothing, and new
    // lines add to the counts.
    t.poll();
    assert_eq!(lines(&t), 10.0);
    fx.append(&nginx("GET", 200, "0.2"));
    t.poll();
    let out = snap(&t);
    assert_eq!(requests(&out, "shop", "GET", "2xx"), Some(2.0));
    assert_eq!(bucket(&out, "shop", "0.2"), Some(6.0));
}

#[test]
fn a_partial_line_waits_for_its_newline() {
    let fx = Fixture::new();
    let mut t = fx.tailer(|_| {});
    let line = nginx("GET", 200, "0.010");
    let (a, rest) = line.split_at(30);
    let (b, c) = rest.split_at(rest.len() - 1);
    fx.append(a);
    t.poll();
    assert_eq!(lines(&t), 0.0);
    fx.append(b);
    t.poll();
    assert_eq!(lines(&t), 0.0);
    fx.append(c);
    fx.append(&line[..10]);
    t.poll();
    assert_eq!(lines(&t), 1.0);
    assert_eq!(own(&t, UNPARSED), 0.0);
    fx.append(&line[10..]);
    t.poll();
    let out = snap(&t);
    assert_eq!(requests(&out, "", "GET", "2xx"), Some(2.0));
    assert_eq!(own(&t, UNPARSED), 0.0);
}

#[test]
fn rename_rotation_reads_the_old_file_to_its_end_first() {
    let fx = Fixture::new();
    let mut t = fx.tailer(|_| {});
    // The server's file descriptor, which stays on the old file until it
    // reopens its log.
    let mut server = writer(&fx.log());
    server
        .write_all(nginx("GET", 200, "0.1").as_bytes())
        .expect("write");
    t.poll();
    assert_eq!(lines(&t), 1.0);

    let rotated = fx.dir.path().join("access.log.1");
    fs::rename(fx.log(), &rotated).expect("rotate");
    // Written after the rename but before the tailer noticed.
    server
        .write_all(nginx("POST", 200, "0.1").as_bytes())
        .expect("write");
    t.poll();
    assert_eq!(lines(&t), 2.0, "the renamed file is still followed");
    server
        .write_all(nginx("PUT", 200, "0.1").as_bytes())
        .expect("write");
    // The server reopens: a new file at the path.
    let mut reopened = writer(&fx.log());
    reopened
        .write_all(nginx("DELETE", 200, "0.1").as_bytes())
        .expect("write");
    t.poll();
    let out = snap(&t);
    for m in ["GET", "POST", "PUT", "DELETE"] {
        assert_eq!(requests(&out, "", m, "2xx"), Some(1.0), "{m}");
    }
    assert_eq!(own(&t, ROTATIONS), 1.0);

    // A straggler written to the old file after the switch is still read,
    // as is the new file.
    server
        .write_all(nginx("PATCH", 200, "0.1").as_bytes())
        .expect("write");
    reopened
        .write_all(nginx("HEAD", 200, "0.1").as_bytes())
        .expect("write");
    t.poll();
    let out = snap(&t);
    assert_eq!(requests(&out, "", "PATCH", "2xx"), Some(1.0));
    assert_eq!(requests(&out, "", "HEAD", "2xx"), Some(1.0));
    // Nothing more in the old file: it is closed; a line left without a
    // newline in it is counted then.
    server.write_all(b"unterminated").expect("write");
    t.poll();
    t.poll();
    assert!(t.draining.is_none(), "old file closed once quiet");
    assert_eq!(lines(&t), 7.0);
    assert_eq!(own(&t, UNPARSED), 1.0);
}

#[test]
fn copy_truncate_rotation_starts_over() {
    let fx = Fixture::new();
    let mut t = fx.tailer(|_| {});
    let mut server = writer(&fx.log());
    for _ in 0..3 {
        server
            .write_all(nginx("GET", 200, "0.1").as_bytes())
            .expect("write");
    }
    t.poll();
    assert_eq!(lines(&t), 3.0);
    fs::copy(fx.log(), fx.dir.path().join("access.log.1")).expect("copy");
    server.set_len(0).expect("truncate");
    // O_APPEND: the server's next line goes to the new start.
    server
        .write_all(nginx("POST", 500, "0.1").as_bytes())
        .expect("write");
    t.poll();
    let out = snap(&t);
    assert_eq!(requests(&out, "", "GET", "2xx"), Some(3.0));
    assert_eq!(requests(&out, "", "POST", "5xx"), Some(1.0));
    assert_eq!(lines(&t), 4.0);
    assert_eq!(own(&t, ROTATIONS), 1.0);
}

#[test]
fn copy_truncate_outgrowing_the_position_before_a_poll_starts_over() {
    let fx = Fixture::new();
    let mut t = fx.tailer(|_| {});
    let mut server = writer(&fx.log());
    for _ in 0..2 {
        server
            .write_all(nginx("GET", 200, "0.1").as_bytes())
            .expect("write");
    }
    t.poll();
    assert_eq!(lines(&t), 2.0);
    server.set_len(0).expect("truncate");
    // Between two polls the truncated file grows past the old position
    // (same inode, size >= offset): 3 new lines of other requests.
    for status in [404, 503, 201] {
        server
            .write_all(nginx("PUT", status, "0.3").as_bytes())
            .expect("write");
    }
    t.poll();
    let out = snap(&t);
    assert_eq!(requests(&out, "", "GET", "2xx"), Some(2.0));
    assert_eq!(requests(&out, "", "PUT", "4xx"), Some(1.0));
    assert_eq!(requests(&out, "", "PUT", "5xx"), Some(1.0));
    assert_eq!(requests(&out, "", "PUT", "2xx"), Some(1.0));
    assert_eq!(lines(&t), 5.0);
    assert_eq!(own(&t, ROTATIONS), 1.0);
    // Appends after that are plain appends, not rotations.
    server
        .write_all(nginx("GET", 200, "0.1").as_bytes())
        .expect("write");
    t.poll();
    t.poll();
    assert_eq!(lines(&t), 6.0);
    assert_eq!(own(&t, ROTATIONS), 1.0);
}

#[test]
fn appends_in_small_pieces_are_never_taken_for_a_truncation() {
    let fx = Fixture::new();
    let mut t = fx.tailer(|_| {});
    let mut server = writer(&fx.log());
    let line = nginx("GET", 200, "0.1");
    // Pieces shorter and longer than the bytes remembered, split mid-line.
    for piece in line.as_bytes().chunks(7).chain(line.as_bytes().chunks(90)) {
        server.write_all(piece).expect("write");
        t.poll();
    }
    assert_eq!(lines(&t), 2.0);
    assert_eq!(own(&t, ROTATIONS), 0.0);
}

#[test]
fn a_restart_counts_every_line_exactly_once() {
    let fx = Fixture::new();
    let line = nginx("GET", 200, "0.1");
    fx.append(&line.repeat(2));
    fx.append(&line[..20]);
    let mut first = fx.tailer(|_| {});
    first.poll();
    let counted_first = lines(&first);
    assert_eq!(counted_first, 2.0);
    drop(first);

    // Lines written while the agent was down, the first completing the
    // partial line the old tailer saw.
    fx.append(&line[20..]);
    fx.append(&line.repeat(2));
    let mut second = fx.tailer(|_| {});
    second.poll();
    assert_eq!(lines(&second), 3.0);
    assert_eq!(own(&second, UNPARSED), 0.0);
    assert_eq!(counted_first + lines(&second), 5.0);
    drop(second);

    // Restarted with nothing new: nothing counted.
    let mut third = fx.tailer(|_| {});
    third.poll();
    assert_eq!(lines(&third), 0.0);
    drop(third);

    // Truncated while down: the saved offset is past the end, so the file
    // is read from its start.
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(fx.log())
        .expect("truncate");
    fx.append(&line);
    let mut fourth = fx.tailer(|_| {});
    fourth.poll();
    assert_eq!(lines(&fourth), 1.0);
    drop(fourth);

    // Rotated while down: the saved position is another file's, so the new
    // file is read from its start.
    fs::rename(fx.log(), fx.dir.path().join("access.log.1")).expect("rotate");
    fx.append(&line.repeat(3));
    let mut fifth = fx.tailer(|_| {});
    fifth.poll();
    assert_eq!(lines(&fifth), 3.0);

    let names: Vec<String> = fs::read_dir(fx.state_dir())
        .expect("state dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].starts_with("access-log-") && names[0].ends_with(".pos"));
}

/// Truncates the log in place (as copytruncate does, keeping the inode)
/// and writes `text` as its new content.
fn copy_truncate(fx: &Fixture, text: &str) {
    fs::copy(fx.log(), fx.dir.path().join("access.log.1")).expect("copy");
    let mut server = writer(&fx.log());
    server.set_len(0).expect("truncate");
    server.write_all(text.as_bytes()).expect("write");
}

#[test]
fn a_copy_truncate_while_stopped_is_read_from_the_start_however_long_the_new_content() {
    let fx = Fixture::new();
    fx.append(&nginx("GET", 200, "0.1").repeat(2));
    let mut t = fx.tailer(|_| {});
    t.poll();
    assert_eq!(lines(&t), 2.0);
    let inode = fs::metadata(fx.log()).expect("log").ino();
    drop(t);

    // Longer than the saved offset: the bytes before it are others now.
    copy_truncate(&fx, &nginx("PUT", 404, "0.2").repeat(3));
    let mut t = fx.tailer(|_| {});
    t.poll();
    let out = snap(&t);
    assert_eq!(lines(&t), 3.0);
    assert_eq!(requests(&out, "", "PUT", "4xx"), Some(3.0));
    assert_eq!(requests(&out, "", "GET", "2xx"), None);
    assert_eq!(own(&t, ROTATIONS), 1.0);
    drop(t);

    // Exactly as long as the saved offset.
    copy_truncate(&fx, &nginx("PUT", 503, "0.2").repeat(3));
    let mut t = fx.tailer(|_| {});
    t.poll();
    let out = snap(&t);
    assert_eq!(lines(&t), 3.0);
    assert_eq!(requests(&out, "", "PUT", "5xx"), Some(3.0));
    assert_eq!(own(&t, ROTATIONS), 1.0);
    drop(t);

    // Shorter than the saved offset, but not empty.
    copy_truncate(&fx, &nginx("POST", 201, "0.2"));
    let mut t = fx.tailer(|_| {});
    t.poll();
    let out = snap(&t);
    assert_eq!(lines(&t), 1.0);
    assert_eq!(requests(&out, "", "POST", "2xx"), Some(1.0));
    assert_eq!(own(&t, ROTATIONS), 1.0);
    // Appends after the restart are appends.
    fx.append(&nginx("GET", 200, "0.1"));
    t.poll();
    assert_eq!(lines(&t), 2.0);
    assert_eq!(own(&t, ROTATIONS), 1.0);
    drop(t);

    // Nothing new: nothing counted, no rotation.
    let mut t = fx.tailer(|_| {});
    t.poll();
    assert_eq!(lines(&t), 0.0);
    assert_eq!(own(&t, ROTATIONS), 0.0);
    assert_eq!(fs::metadata(fx.log()).expect("log").ino(), inode);
}

#[test]
fn a_copy_truncate_while_stopped_before_the_first_poll_is_noticed() {
    let fx = Fixture::new();
    fx.append(&nginx("GET", 200, "0.1").repeat(2));
    // Starts at the end of the existing log, saving that position.
    drop(fx.tailer(|c| c.read_existing = false));
    copy_truncate(&fx, &nginx("DELETE", 404, "0.1").repeat(4));
    let mut t = fx.tailer(|c| c.read_existing = false);
    t.poll();
    let out = snap(&t);
    assert_eq!(lines(&t), 4.0);
    assert_eq!(requests(&out, "", "DELETE", "4xx"), Some(4.0));
}

#[test]
fn the_saved_bytes_are_those_before_a_partial_line() {
    let fx = Fixture::new();
    let line = nginx("GET", 200, "0.1");
    fx.append(&line.repeat(2));
    fx.append(&line[..30]);
    let mut t = fx.tailer(|_| {});
    t.poll();
    assert_eq!(lines(&t), 2.0);
    let saved = t.saved.expect("a saved position");
    assert_eq!(saved.offset, 2 * line.len() as u64);
    let text = fs::read(fx.log()).expect("log");
    assert_eq!(
        saved.before.as_slice(),
        &text[2 * line.len() - FINGERPRINT_BYTES..2 * line.len()]
    );
    drop(t);
    // Completed while stopped: an append, not a truncation.
    fx.append(&line[30..]);
    let mut t = fx.tailer(|_| {});
    t.poll();
    assert_eq!(lines(&t), 1.0);
    assert_eq!(own(&t, UNPARSED), 0.0);
    assert_eq!(own(&t, ROTATIONS), 0.0);
}

#[test]
fn state_files_of_the_first_version_still_resume() {
    let fx = Fixture::new();
    let line = nginx("GET", 200, "0.1");
    fx.append(&line.repeat(3));
    let m = fs::metadata(fx.log()).expect("log");
    let path = fx.log().display().to_string();
    fs::create_dir_all(fx.state_dir()).expect("state dir");
    let state = fx
        .state_dir()
        .join(format!("access-log-{:016x}.pos", fnv1a(path.as_bytes())));
    fs::write(
        &state,
        format!(
            "nines access-log position 1\npath {path}\ndev {}\nino {}\noffset {}\n",
            m.dev(),
            m.ino(),
            2 * line.len()
        ),
    )
    .expect("write state");
    let mut t = fx.tailer(|_| {});
    t.poll();
    assert_eq!(lines(&t), 1.0);
    // Saved again in the current version, with the bytes before the end.
    let text = fs::read_to_string(&state).expect("state");
    assert!(text.starts_with("nines access-log position 2\n"), "{text}");
    let saved = load_position(&state, &path).expect("loads");
    assert_eq!(saved.offset, 3 * line.len() as u64);
    assert_eq!(saved.before.as_slice().len(), FINGERPRINT_BYTES);
}

#[test]
fn bad_state_files_are_ignored() {
    let fx = Fixture::new();
    let path = fx.log().display().to_string();
    fs::create_dir_all(fx.state_dir()).expect("state dir");
    let state = fx.state_dir().join("x.pos");
    let head = format!("nines access-log position 2\npath {path}\ndev 1\nino 2\noffset 3\n");
    for before in [
        "before 0",
        "before zz",
        "before +f",
        "before 00112233",
        &format!("before {}", "00".repeat(FINGERPRINT_BYTES + 1)),
        "",
    ] {
        fs::write(&state, format!("{head}{before}\n")).expect("write state");
        assert_eq!(load_position(&state, &path), None, "{before:?}");
    }
    fs::write(&state, format!("{head}before 001122\n")).expect("write state");
    let p = load_position(&state, &path).expect("loads");
    assert_eq!(p.before.as_slice(), [0x00, 0x11, 0x22]);
    assert_eq!(load_position(&state, "/other"), None);
}

#[test]
fn without_a_saved_position_an_existing_log_is_read_from_its_end() {
    let fx = Fixture::new();
    fx.append(&nginx("GET", 200, "0.1").repeat(3));
    let t = fx.tailer(|c| c.read_existing = false);
    // Restarted before its first poll: the start position was saved.
    drop(t);
    fx.append(&nginx("POST", 200, "0.1"));
    let mut t = fx.tailer(|c| c.read_existing = false);
    t.poll();
    let out = snap(&t);
    assert_eq!(lines(&t), 1.0);
    assert_eq!(requests(&out, "", "POST", "2xx"), Some(1.0));
    assert_eq!(requests(&out, "", "GET", "2xx"), None);
}

#[test]
fn a_missing_log_is_picked_up_when_it_appears() {
    let fx = Fixture::new();
    let mut t = fx.tailer(|c| c.read_existing = false);
    t.poll();
    t.poll();
    assert_eq!(own(&t, PRESENT), 0.0);
    assert_eq!(lines(&t), 0.0);
    // Created after start: read from its beginning.
    fx.append(&nginx("GET", 200, "0.1").repeat(2));
    t.poll();
    assert_eq!(own(&t, PRESENT), 1.0);
    assert_eq!(lines(&t), 2.0);
}

#[test]
fn a_deleted_log_is_closed() {
    let fx = Fixture::new();
    let mut t = fx.tailer(|_| {});
    fx.append(&nginx("GET", 200, "0.1"));
    t.poll();
    fs::remove_file(fx.log()).expect("delete");
    t.poll();
    assert!(t.current.is_none(), "deleted file not held open");
    assert_eq!(own(&t, PRESENT), 0.0);
    fx.append(&nginx("GET", 200, "0.1"));
    t.poll();
    assert_eq!(lines(&t), 2.0);
}

#[test]
fn apache_microseconds_vhost_presets_and_custom_formats() {
    let fx = Fixture::new();
    fx.append(
        "127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] \"GET /apache_pb.gif HTTP/1.0\" 200 2326 \"http://www.example.com/start.html\" \"Mozilla/4.08 [en] (Win98; I ;Nav)\" 120000\n",
    );
    let mut t = fx.tailer(|c| c.format = LogFormat::ApacheCombinedD);
    t.poll();
    let out = snap(&t);
    assert_eq!(bucket(&out, "", "0.1"), Some(0.0));
    assert_eq!(bucket(&out, "", "0.15"), Some(1.0));

    let fx = Fixture::new();
    fx.append(&format!("shop.example.com {}", nginx("GET", 200, "0.3")));
    fx.append(&format!("api.example.com {}", nginx("POST", 502, "1.5")));
    let mut t = fx.tailer(|c| {
        c.format = LogFormat::preset("vhost_combined_rt").expect("preset");
        c.vhost = Some("unused".into());
    });
    t.poll();
    let out = snap(&t);
    assert_eq!(requests(&out, "shop.example.com", "GET", "2xx"), Some(1.0));
    assert_eq!(requests(&out, "api.example.com", "POST", "5xx"), Some(1.0));
    assert_eq!(bucket(&out, "api.example.com", "1.5"), Some(1.0));
    assert_eq!(bucket(&out, "api.example.com", "1"), Some(0.0));

    let fx = Fixture::new();
    fx.append("GET 200 250 site-a\nPOST 404 1000 site-b\nnope\n");
    let mut t = fx.tailer(|c| {
        c.format = LogFormat::Custom(
            r"^(?P<method>\S+) (?P<status>\d{3}) (?P<request_time>\d+) (?P<vhost>\S+)$".into(),
        );
        c.time_unit = Some(TimeUnit::Milliseconds);
    });
    t.poll();
    let out = snap(&t);
    assert_eq!(bucket(&out, "site-a", "0.25"), Some(1.0));
    assert_eq!(bucket(&out, "site-a", "0.2"), Some(0.0));
    assert_eq!(bucket(&out, "site-b", "1"), Some(1.0));
    assert_eq!(requests(&out, "site-b", "POST", "4xx"), Some(1.0));
    assert_eq!(own(&t, UNPARSED), 1.0);
}

#[test]
fn unusable_formats_are_refused() {
    let fx = Fixture::new();
    for re in [
        "(",
        r"(?P<request_time>\d+)",
        r"(?P<status>\d+)",
        r"(?P<status>\d+) (?P<request_time>\d+) (?P<request_time_us>\d+)",
    ] {
        let mut cfg = AccessLogConfig::new(fx.log(), LogFormat::Custom(re.into()));
        cfg.read_existing = true;
        let err = AccessLogTailer::new(cfg, &fx.state_dir());
        assert!(matches!(err, Err(SampleError::Parse { .. })), "{re}");
    }
    assert_eq!(LogFormat::preset("combined"), None);
}

#[test]
fn vhosts_and_lines_are_bounded() {
    let fx = Fixture::new();
    for host in ["a", "b", "c", "a"] {
        fx.append(&format!("{host} {}", nginx("GET", 200, "0.1")));
    }
    fx.append(&format!("{} {}", "x".repeat(300), nginx("GET", 200, "0.1")));
    let mut raw = b"\xff\xfe ".to_vec();
    raw.extend_from_slice(nginx("GET", 200, "0.1").as_bytes());
    let mut long = "y".repeat(CHUNK_BYTES + MAX_LINE_BYTES);
    long.push('\n');
    fx.append(&long);
    let mut t = fx.tailer(|c| {
        c.format = LogFormat::VhostCombinedRt;
        c.max_vhosts = 2;
    });
    writer(&fx.log()).write_all(&raw).expect("write");
    fx.append(&format!("b {}", nginx("GET", 200, "0.1")));
    t.poll();
    let out = snap(&t);
    assert_eq!(requests(&out, "a", "GET", "2xx"), Some(2.0));
    assert_eq!(requests(&out, "b", "GET", "2xx"), Some(2.0));
    // The third host, an overlong one and one that is not UTF-8.
    assert_eq!(requests(&out, "other", "GET", "2xx"), Some(3.0));
    assert_eq!(lines(&t), 8.0);
    assert_eq!(own(&t, UNPARSED), 1.0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The fingerprint is the last bytes of everything it was fed.
    #[test]
    fn fingerprint_keeps_the_last_bytes(
        pieces in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..150), 0..8),
    ) {
        let mut f = Fingerprint::EMPTY;
        let mut all = Vec::new();
        for piece in &pieces {
            f.extend(piece);
            all.extend_from_slice(piece);
        }
        let want = &all[all.len().saturating_sub(FINGERPRINT_BYTES)..];
        prop_assert_eq!(f.as_slice(), want);
        prop_assert_eq!(Fingerprint::from_hex(&f.to_hex()), Some(f));
        prop_assert_eq!(Fingerprint::of(&all), f);
    }

    /// However the writes are split, with the agent restarted (a new
    /// tailer from the saved position) at any of the cuts, every line is
    /// counted once, and no append is taken for a truncation.
    #[test]
    fn restarts_anywhere_count_every_line_once(
        cuts in proptest::collection::vec((0usize..2000, any::<bool>()), 0..12),
    ) {
        let mut text = Vec::new();
        for i in 0..6 {
            text.extend_from_slice(nginx("GET", 200 + i, "0.050").as_bytes());
        }
        let mut cuts: Vec<(usize, bool)> =
            cuts.into_iter().map(|(c, r)| (c % (text.len() + 1), r)).collect();
        cuts.push((text.len(), false));
        cuts.sort_unstable();

        let fx = Fixture::new();
        let mut t = fx.tailer(|_| {});
        let mut w = writer(&fx.log());
        let mut at = 0;
        let mut counted = 0.0;
        for (cut, restart) in cuts {
            w.write_all(&text[at..cut]).expect("write");
            at = cut;
            if restart {
                counted += lines(&t);
                prop_assert_eq!(own(&t, ROTATIONS), 0.0);
                drop(t);
                t = fx.tailer(|_| {});
            }
            t.poll();
        }
        counted += lines(&t);
        prop_assert_eq!(own(&t, ROTATIONS), 0.0);
        prop_assert_eq!(counted, 6.0);
    }

    /// However the writes are split, and wherever polls fall, every line
    /// is counted once.
    #[test]
    fn chunking_does_not_change_the_counts(
        cuts in proptest::collection::vec(0usize..2000, 0..12),
        garbage in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut text = Vec::new();
        text.extend_from_slice(nginx("GET", 200, "0.050").as_bytes());
        text.extend_from_slice(&garbage);
        text.push(b'\n');
        text.extend_from_slice(nginx("POST", 503, "1.2").as_bytes());
        text.extend_from_slice(nginx("GET", 200, "0.3").as_bytes());
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (text.len() + 1)).collect();
        cuts.push(text.len());
        cuts.sort_unstable();

        let whole = Fixture::new();
        writer(&whole.log()).write_all(&text).expect("write");
        let mut expected = whole.tailer(|_| {});
        expected.poll();

        let fx = Fixture::new();
        let mut t = fx.tailer(|_| {});
        let mut w = writer(&fx.log());
        let mut at = 0;
        for cut in cuts {
            w.write_all(&text[at..cut]).expect("write");
            at = cut;
            t.poll();
        }
        let (a, b) = (snap(&expected), snap(&t));
        let values = |s: &Samples| {
            s.observations
                .iter()
                .filter(|o| o.labels.get("path").is_none())
                .map(|o| (o.labels.to_string(), o.value))
                .collect::<Vec<_>>()
        };
        prop_assert_eq!(values(&a), values(&b));
        prop_assert_eq!(lines(&expected), lines(&t));
        prop_assert_eq!(own(&expected, UNPARSED), own(&t, UNPARSED));
    }
}
