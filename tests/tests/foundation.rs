//! End-to-end: the real agent pushes this host's metrics into the real
//! collector's SQLite; the Prometheus API and promtool read them back;
//! duplicates, crashes and bad input behave as promised.

use nines_shared::{
    Batch, Labels, MetricKind, MetricMetadata, SampleGroup, Seq, SeriesDefinition, SeriesRef,
    StreamId, UnixMillis, wire,
};
use nines_tests::*;
use serde_json::Value;
use std::process::Command;

fn batch(agent: &str, seq: u64, metric: &str, points: &[(i64, f64)]) -> Batch {
    Batch {
        stream: StreamId {
            agent: agent.into(),
            epoch: UnixMillis(1_700_000_000_000),
        },
        seq: Seq(seq),
        sent_at: UnixMillis::now(),
        definitions: vec![SeriesDefinition {
            series: SeriesRef(0),
            labels: Labels::new(metric, [("instance", "test"), ("job", "e2e")]),
        }],
        metadata: vec![MetricMetadata {
            name: metric.into(),
            kind: MetricKind::Gauge,
            help: "A test gauge.".into(),
            unit: String::new(),
        }],
        groups: points
            .iter()
            .map(|(t, v)| SampleGroup {
                at: UnixMillis(*t),
                values: vec![(SeriesRef(0), *v)],
            })
            .collect(),
    }
}

fn result(v: &Value) -> &Vec<Value> {
    v["data"]["result"].as_array().expect("result array")
}

/// Values of `metric[window]` at `at_ms`, as (t ms, value).
fn stored_points(c: &Collector, metric: &str, at_ms: i64) -> Vec<(i64, f64)> {
    let q = c.query(
        &format!("{metric}[1d]"),
        Some(&format!("{}", at_ms as f64 / 1000.0)),
    );
    assert_eq!(q["status"], "success", "{q}");
    result(&q)
        .iter()
        .flat_map(|s| s["values"].as_array().cloned().unwrap_or_default())
        .map(|p| {
            (
                (p[0].as_f64().unwrap() * 1000.0).round() as i64,
                p[1].as_str().unwrap().parse::<f64>().unwrap(),
            )
        })
        .collect()
}

#[test]
fn agent_host_series_arrive_and_memtotal_matches_proc_meminfo() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(&dir.path().join("collector"), &["--no-local-agent"]);
    let _agent = Agent::start(
        &c,
        &dir.path().join("agent"),
        &[
            "--interval",
            "1s",
            "--instance",
            "e2e-host",
            "--listen",
            "127.0.0.1:0",
        ],
    );
    let mem = wait_for("node_memory_MemTotal_bytes from the agent", || {
        let q = c.query("node_memory_MemTotal_bytes{instance=\"e2e-host\"}", None);
        let r = result(&q);
        (!r.is_empty()).then(|| r[0].clone())
    });
    assert_eq!(mem["metric"]["job"], "node");
    let v: f64 = mem["value"][1].as_str().unwrap().parse().unwrap();
    assert_eq!(v, proc_memtotal_bytes());

    for expr in [
        "node_cpu_seconds_total{instance=\"e2e-host\",mode=\"idle\"}",
        "node_memory_MemAvailable_bytes{instance=\"e2e-host\"}",
        "node_load1{instance=\"e2e-host\"}",
        "node_filesystem_size_bytes{instance=\"e2e-host\"}",
        "node_network_receive_bytes_total{instance=\"e2e-host\",device=\"lo\"}",
        "node_boot_time_seconds{instance=\"e2e-host\"}",
    ] {
        let q = c.query(expr, None);
        assert!(!result(&q).is_empty(), "no series for {expr}: {q}");
    }
    // Several intervals arrive, not just one.
    wait_for("three samples of node_load1", || {
        let q = c.query("node_load1{instance=\"e2e-host\"}[1m]", None);
        let n = result(&q)
            .first()
            .and_then(|s| s["values"].as_array().map(Vec::len))
            .unwrap_or(0);
        (n >= 3).then_some(())
    });
    let (_, meta) = c.get_json("/api/v1/metadata?metric=node_load1");
    assert_eq!(meta["data"]["node_load1"][0]["type"], "gauge", "{meta}");
}

#[test]
fn collector_runs_an_agent_for_its_own_host_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(
        &dir.path().join("collector"),
        &["--local-agent-interval", "200ms"],
    );
    wait_for("node_load1 from the in-process agent", || {
        let q = c.query("node_load1{job=\"node\"}", None);
        (!result(&q).is_empty()).then_some(())
    });
    let (status, page) = c.get_text("/");
    assert_eq!(status, 200);
    assert!(page.contains("/ui/app.js"), "{page}");
    let hosts = c.get_json("/api/v1/label/instance/values?match[]=%7Bjob%3D%22node%22%7D");
    assert_eq!(
        hosts.1["data"].as_array().map(Vec::len),
        Some(1),
        "{hosts:?}"
    );
}

#[test]
fn a_batch_sent_twice_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(&dir.path().join("c"), &["--no-local-agent"]);
    let t = UnixMillis::now().0 - 60_000;
    let first = batch("dup", 0, "e2e_dup", &[(t, 1.0), (t + 1000, 2.0)]);
    let (s1, r1) = c.push(&first);
    assert_eq!(s1, 200, "{r1}");
    assert_eq!(r1["data"]["applied"], true);
    // The same (stream, seq) again, even with other content, is not applied.
    let replay = batch("dup", 0, "e2e_dup", &[(t + 2000, 99.0)]);
    let (s2, r2) = c.push(&replay);
    assert_eq!(s2, 200, "{r2}");
    assert_eq!(r2["data"]["duplicate"], true);
    assert_eq!(
        stored_points(&c, "e2e_dup", t + 5000),
        vec![(t, 1.0), (t + 1000, 2.0)]
    );
    assert_eq!(c.metric("nines_ingest_batches_total", "duplicate"), 1.0);
}

#[test]
fn refs_without_definitions_are_asked_for_again() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(&dir.path().join("c"), &["--no-local-agent"]);
    let t = UnixMillis::now().0 - 60_000;
    let mut b = batch("refs", 5, "e2e_refs", &[(t, 1.0)]);
    b.definitions.clear();
    let (s, r) = c.push(&b);
    assert_eq!(s, 409, "{r}");
    assert_eq!(r["unknownRefs"], serde_json::json!([0]));
    assert!(stored_points(&c, "e2e_refs", t + 1000).is_empty());
}

#[test]
fn sigkill_right_after_acks_loses_nothing_acked() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("c");
    let mut c = Collector::start(&data, &["--no-local-agent"]);
    let t0 = UnixMillis::now().0 - 600_000;
    let mut expected = Vec::new();
    for seq in 0..40u64 {
        let t = t0 + seq as i64 * 1000;
        let v = seq as f64 * 1.5;
        let mut b = batch("crash", seq, "e2e_crash", &[(t, v)]);
        if seq > 0 {
            // Later batches refer to the series by ref only, as agents do.
            b.definitions.clear();
            b.metadata.clear();
        }
        let (s, r) = c.push(&b);
        assert_eq!(s, 200, "{r}");
        expected.push((t, v));
    }
    c.kill();
    let c = Collector::start(&data, &["--no-local-agent"]);
    assert_eq!(stored_points(&c, "e2e_crash", t0 + 60_000), expected);
}

/// Every kind of bad push is refused with its status and a JSON reason,
/// counted, and writes nothing.
#[test]
fn bad_pushes_are_rejected_counted_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(&dir.path().join("c"), &["--no-local-agent"]);
    let auth = format!("Bearer {}", c.token);
    let good = push_headers(&auth);
    let now = UnixMillis::now().0;
    let valid = wire::encode(&batch("bad", 0, "e2e_bad", &[(now - 1000, 1.0)]));

    let with = |name: &str, value: &'static str| {
        good.iter()
            .map(|(k, v)| if *k == name { (*k, value) } else { (*k, *v) })
            .collect::<Vec<_>>()
    };
    let no_token: Vec<_> = good
        .iter()
        .filter(|(k, _)| *k != "authorization")
        .cloned()
        .collect();
    let wrong_token = with("authorization", "Bearer not-the-token");
    let no_version: Vec<_> = good
        .iter()
        .filter(|(k, _)| *k != wire::VERSION_HEADER)
        .cloned()
        .collect();
    let wrong_version = with(wire::VERSION_HEADER, "99");
    let wrong_encoding = with("content-encoding", "gzip");

    let bomb = zstd::bulk::compress(&vec![0u8; 64 << 20], 19).unwrap();
    let huge = vec![7u8; 5 << 20];
    let truncated = valid[..valid.len() / 2].to_vec();
    let mut bad_metric = batch("bad", 1, "e2e_bad", &[(now, 1.0)]);
    bad_metric.definitions[0].labels = Labels::new("9-not-a-metric", [("a", "b")]);
    let mut bad_label = batch("bad", 2, "e2e_bad", &[(now, 1.0)]);
    bad_label.definitions[0].labels = Labels::new("e2e_bad", [("bad-label", "x")]);
    let min_ts = batch("bad", 3, "e2e_bad", &[(i64::MIN, 1.0)]);
    let zero_ts = batch("bad", 4, "e2e_bad", &[(0, 1.0)]);
    let future = batch("bad", 5, "e2e_bad", &[(now + 365 * 86_400_000, 1.0)]);
    // One good series and one bad in the same batch: all or nothing.
    let mut mixed = batch("bad", 6, "e2e_bad", &[(now, 1.0)]);
    mixed.definitions.push(SeriesDefinition {
        series: SeriesRef(1),
        labels: Labels::new("e2e_bad", [("__reserved", "x")]),
    });
    mixed.groups[0].values.push((SeriesRef(1), 2.0));

    // (case, body, headers, expected status, reason counted)
    type Case<'a> = (&'a str, Vec<u8>, Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "missing token",
            valid.clone(),
            no_token,
            401,
            "unauthorized",
        ),
        (
            "wrong token",
            valid.clone(),
            wrong_token,
            401,
            "unauthorized",
        ),
        (
            "missing version",
            valid.clone(),
            no_version,
            415,
            "wire_version",
        ),
        (
            "wrong version",
            valid.clone(),
            wrong_version,
            415,
            "wire_version",
        ),
        (
            "wrong encoding",
            valid.clone(),
            wrong_encoding,
            415,
            "content_encoding",
        ),
        (
            "garbage",
            b"\x00\x01garbage\xff".to_vec(),
            good.clone(),
            400,
            "compression",
        ),
        ("truncated", truncated, good.clone(), 400, "compression"),
        ("oversized body", huge, good.clone(), 413, "body_too_large"),
        ("zstd bomb", bomb, good.clone(), 413, "too_large"),
        (
            "invalid metric name",
            wire::encode(&bad_metric),
            good.clone(),
            400,
            "invalid_series",
        ),
        (
            "invalid label name",
            wire::encode(&bad_label),
            good.clone(),
            400,
            "invalid_series",
        ),
        (
            "i64::MIN timestamp",
            wire::encode(&min_ts),
            good.clone(),
            400,
            "too_old",
        ),
        (
            "zero timestamp",
            wire::encode(&zero_ts),
            good.clone(),
            400,
            "too_old",
        ),
        (
            "future timestamp",
            wire::encode(&future),
            good.clone(),
            400,
            "too_far_in_future",
        ),
        (
            "one bad series in a batch",
            wire::encode(&mixed),
            good.clone(),
            400,
            "invalid_series",
        ),
    ];
    for (name, body, headers, want, reason) in cases {
        let before = c.metric(
            "nines_ingest_rejected_total",
            &format!("reason=\"{reason}\""),
        );
        let (status, json) = c.push_raw(body, &headers);
        assert_eq!(status, want, "{name}: {json}");
        assert_eq!(json["status"], "error", "{name}: {json}");
        assert!(
            json["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{name}: no reason in {json}"
        );
        let after = c.metric(
            "nines_ingest_rejected_total",
            &format!("reason=\"{reason}\""),
        );
        assert_eq!(
            after,
            before + 1.0,
            "{name}: reject not counted as {reason}"
        );
    }
    // Nothing at all was written (but the collector's own metrics, which
    // it stores as series).
    let (_, series) = c.get_json(
        "/api/v1/series?match[]=%7B__name__%3D~%22.%2B%22%2Cjob%21%3D%22nines-collector%22%7D",
    );
    assert_eq!(series["data"], serde_json::json!([]), "{series}");
    // And the collector still takes a good batch afterwards.
    let (status, _) = c.push_raw(valid, &good);
    assert_eq!(status, 200);
}

#[test]
fn bad_queries_get_the_prometheus_error_envelope() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(&dir.path().join("c"), &["--no-local-agent"]);
    let cases = [
        ("/api/v1/query?query=up%7B", 400, "bad_data"),
        ("/api/v1/query", 400, "bad_data"),
        ("/api/v1/query?query=up&time=NaN", 400, "bad_data"),
        ("/api/v1/query?query=limitk(1%2Cup)", 400, "bad_data"),
        (
            "/api/v1/query_range?query=up&start=10&end=5&step=1",
            400,
            "bad_data",
        ),
        (
            "/api/v1/query_range?query=up&start=0&end=100000&step=1",
            400,
            "bad_data",
        ),
        (
            "/api/v1/query_range?query=up&start=0&end=10&step=0",
            400,
            "bad_data",
        ),
        (
            "/api/v1/query_range?query=up%5B5m%5D&start=0&end=10&step=1",
            400,
            "bad_data",
        ),
        ("/api/v1/series", 400, "bad_data"),
        ("/api/v1/series?match[]=sum(up)", 400, "bad_data"),
        ("/api/v1/label/bad-name/values", 400, "bad_data"),
        ("/api/v1/nothing", 404, "not_found"),
    ];
    for (path, want, kind) in cases {
        let (status, json) = c.get_json(path);
        assert_eq!(status, want, "{path}: {json}");
        assert_eq!(json["status"], "error", "{path}: {json}");
        assert_eq!(json["errorType"], kind, "{path}: {json}");
        assert!(
            json["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{path}"
        );
    }
    let (_, j) = c.get_json("/api/v1/query?query=limitk(1%2Cup)");
    assert!(j["error"].as_str().unwrap().contains("limitk"), "{j}");
    // A query over the configured sample limit: 422 before the work.
    let dir2 = tempfile::tempdir().unwrap();
    let cfg = dir2.path().join("c.toml");
    std::fs::write(&cfg, "[limits]\nmax_query_samples = 5\n").unwrap();
    let small = Collector::start(
        &dir2.path().join("d"),
        &["--no-local-agent", "--config", cfg.to_str().unwrap()],
    );
    let t = UnixMillis::now().0 - 20_000;
    let points: Vec<(i64, f64)> = (0..10).map(|i| (t + i * 1000, i as f64)).collect();
    assert_eq!(small.push(&batch("lim", 0, "e2e_limit", &points)).0, 200);
    let (status, j) = small.get_json("/api/v1/query?query=e2e_limit%5B1m%5D");
    assert_eq!(status, 422, "{j}");
    assert_eq!(j["errorType"], "execution", "{j}");
    // Grafana's health check.
    let (status, j) = c.get_json("/api/v1/query?query=1%2B1");
    assert_eq!(status, 200);
    assert_eq!(j["data"]["resultType"], "scalar");
    assert_eq!(j["data"]["result"][1], "2");
}

#[test]
fn bad_config_stops_both_binaries_at_start_with_file_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    // The collector started on `cfg` as it is now.
    let serve = || {
        run(Command::new(bin("nines-collector"))
            .arg("serve")
            .arg("--config")
            .arg(&cfg)
            .arg("--data-dir")
            .arg(dir.path().join("d")))
    };
    std::fs::write(&cfg, "listen = \"127.0.0.1:0\"\nretention = \"15d\"\n").unwrap();
    let (code, _, err) = serve();
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("bad.toml") && err.contains("retention"),
        "{err}"
    );
    // Rollups kept for less time than the raw samples they are made of.
    std::fs::write(&cfg, "[storage]\nretention_1m = \"7d\"\n").unwrap();
    let (code, _, err) = serve();
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("bad.toml")
            && err.contains("storage.retention_1m")
            && err.contains("shorter than storage.retention"),
        "{err}"
    );

    std::fs::write(
        &cfg,
        "collector = \"http://127.0.0.1:1\"\ninterval = \"often\"\n",
    )
    .unwrap();
    let (code, _, err) = run(Command::new(bin("nines-agent"))
        .arg("run")
        .arg("--config")
        .arg(&cfg));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("bad.toml") && err.contains("interval") && err.contains("often"),
        "{err}"
    );

    let (code, _, err) = run(Command::new(bin("nines-agent")).args([
        "run",
        "--collector",
        "http://127.0.0.1:1",
        "--listen",
        "nope",
    ]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("listen"), "{err}");
}

#[test]
fn both_binaries_report_their_health_on_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(&dir.path().join("c"), &["--no-local-agent"]);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let listen = format!("127.0.0.1:{port}");
    let _agent = Agent::start(
        &c,
        &dir.path().join("agent"),
        &["--interval", "1s", "--listen", &listen],
    );
    let agent_metrics = wait_for("agent /metrics with an acked batch", || {
        let text = http()
            .get(format!("http://{listen}/metrics"))
            .send()
            .ok()?
            .text()
            .ok()?;
        (metric_value(&text, "nines_agent_batches_acked_total", "") >= 1.0).then_some(text)
    });
    assert!(agent_metrics.contains("process_resident_memory_bytes"));
    let health = http()
        .get(format!("http://{listen}/healthz"))
        .send()
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);

    let (status, text) = c.get_text("/metrics");
    assert_eq!(status, 200);
    assert!(c.metric("nines_ingest_samples_total", "") > 0.0, "{text}");
    assert!(text.contains("nines_storage_commit_duration_seconds_bucket"));
    // The agent's clock offset is recorded; same host, so it is tiny.
    let offset = text
        .lines()
        .find(|l| l.starts_with("nines_ingest_agent_clock_offset_seconds{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .expect("clock offset of the agent");
    assert!(offset.abs() < 5.0, "offset {offset}");
    assert_eq!(c.get_text("/healthz").0, 200);

    if let Some(promtool) = peer("promtool", "prometheus") {
        // The collector's page, and the agent's own health part, lint clean.
        let (code, problems) = promtool_check(&promtool, &text);
        assert_eq!(code, 0, "collector /metrics: {problems}");
        let split = agent_metrics
            .find("# HELP node_")
            .expect("agent serves host metrics after its own");
        let (own, host) = agent_metrics.split_at(split);
        let (code, problems) = promtool_check(&promtool, own);
        assert_eq!(code, 0, "agent's own metrics: {problems}");
        // The host part parses; its only lint complaints are the camelCase
        // names node_exporter itself uses (node_memory_MemTotal_bytes,
        // node_netstat_Tcp_InSegs, ...) and that dashboards depend on.
        let (code, problems) = promtool_check(&promtool, host);
        assert!(
            code == 0 || code == 3,
            "agent host metrics do not parse: {problems}"
        );
        for line in problems.lines().filter(|l| !l.trim().is_empty()) {
            assert!(
                (line.starts_with("node_memory_") || line.starts_with("node_netstat_"))
                    && line.ends_with(
                        "metric names should be written in 'snake_case' not 'camelCase'"
                    ),
                "unexpected lint problem: {line}"
            );
        }
    }
}

/// Runs `promtool check metrics` on `text`: (exit code, its output).
fn promtool_check(promtool: &std::path::Path, text: &str) -> (i32, String) {
    use std::io::Write;
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// promtool's answers equal the API's, for instant and range queries,
/// series and labels.
#[test]
fn promtool_queries_return_what_the_api_returns() {
    let Some(promtool) = peer("promtool", "prometheus") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(&dir.path().join("c"), &["--no-local-agent"]);
    let end = (UnixMillis::now().0 / 1000) * 1000;
    let points: Vec<(i64, f64)> = (0..30)
        .map(|i| (end - 29_000 + i * 1000, i as f64 * 0.5))
        .collect();
    assert_eq!(c.push(&batch("pt", 0, "e2e_promtool", &points)).0, 200);
    let end_s = (end / 1000).to_string();

    // Instant: promtool prints `metric => value @[t]`.
    let (code, out, err) = run(Command::new(&promtool).args([
        "query",
        "instant",
        "--time",
        &end_s,
        &c.url,
        "e2e_promtool",
    ]));
    assert_eq!(code, 0, "{err}");
    let api = c.query("e2e_promtool", Some(&end_s));
    let api_value = result(&api)[0]["value"][1].as_str().unwrap().to_string();
    assert_eq!(api_value, "14.5");
    assert!(
        out.contains("e2e_promtool{instance=\"test\", job=\"e2e\"} => 14.5 @["),
        "promtool printed: {out}"
    );

    // Range: one line per point, `value @[t]`.
    let start_s = ((end - 20_000) / 1000).to_string();
    let (code, out, err) = run(Command::new(&promtool).args([
        "query",
        "range",
        "--start",
        &start_s,
        "--end",
        &end_s,
        "--step",
        "5s",
        &c.url,
        "e2e_promtool",
    ]));
    assert_eq!(code, 0, "{err}");
    let promtool_values: Vec<String> = out
        .lines()
        .filter(|l| l.contains(" @["))
        .map(|l| l.trim().split(" @[").next().unwrap().to_string())
        .collect();
    let (_, api) = c.get_json(&format!(
        "/api/v1/query_range?query=e2e_promtool&start={start_s}&end={end_s}&step=5"
    ));
    let api_values: Vec<String> = result(&api)[0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_str().unwrap().to_string())
        .collect();
    assert_eq!(api_values, vec!["4.5", "7", "9.5", "12", "14.5"]);
    assert_eq!(promtool_values, api_values, "promtool printed: {out}");

    let (code, out, err) =
        run(Command::new(&promtool).args(["query", "series", "--match", "e2e_promtool", &c.url]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("__name__=\"e2e_promtool\""), "{out}");
    let (code, out, err) = run(Command::new(&promtool).args([
        "query",
        "labels",
        "--match",
        "{job=~\".+\",job!=\"nines-collector\"}",
        &c.url,
        "job",
    ]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "e2e");
}

/// Compaction writes the minute and hour rollups of what it compacts, and
/// the collector counts them on /metrics.
#[test]
fn compacted_samples_are_rolled_up_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(&dir.path().join("c"), &["--no-local-agent"]);
    for res in ["1m", "1h"] {
        let label = format!("resolution=\"{res}\"");
        assert_eq!(
            c.metric("nines_storage_rollup_rows_written_total", &label),
            0.0
        );
        assert_eq!(
            c.metric("nines_storage_retention_deleted_rollup_rows_total", &label),
            0.0
        );
    }
    // Noisy values across the end of a 2 h window (the one before the
    // current, so nothing lies ahead of now): the first window is closed
    // by the samples after it, and closing a window writes its rows.
    const WINDOW: i64 = 2 * 3600 * 1000;
    let boundary = UnixMillis::now().0.div_euclid(WINDOW) * WINDOW - WINDOW;
    let points: Vec<(i64, f64)> = (0..900)
        .map(|i| (boundary - 450_000 + i * 1000, (i as f64 * 1.37).sin()))
        .collect();
    let end = boundary + 450_000;
    assert_eq!(c.push(&batch("ru", 0, "e2e_rolled", &points)).0, 200);
    wait_for("rollup rows written at both resolutions", || {
        let text = c.get_text("/metrics").1;
        let rows = |res: &str| {
            metric_value(
                &text,
                "nines_storage_rollup_rows_written_total",
                &format!("resolution=\"{res}\""),
            )
        };
        (rows("1m") >= 1.0 && rows("1h") >= 1.0).then_some(())
    });
    assert!(
        c.metric(
            "nines_storage_rollup_bytes_written_total",
            "resolution=\"1m\""
        ) > 0.0
    );
    // Reads are unchanged: every sample is still there.
    assert_eq!(stored_points(&c, "e2e_rolled", end).len(), 900);
}
