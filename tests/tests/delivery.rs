//! End-to-end delivery: the real agent keeps every sample through a
//! collector outage and through its own SIGKILL (the spool), replicates to
//! an HA pair, and fails over and back.

use nines_tests::*;
use std::path::Path;

/// Timestamps (ms) of `node_load1{instance=...}` stored in the last 10m.
fn load_timestamps(c: &Collector, instance: &str) -> Vec<i64> {
    let q = c.query(&format!("node_load1{{instance=\"{instance}\"}}[10m]"), None);
    q["data"]["result"]
        .as_array()
        .and_then(|r| r.first())
        .and_then(|s| s["values"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|p| (p[0].as_f64().unwrap_or(0.0) * 1000.0).round() as i64)
        .collect()
}

/// Every gap between consecutive samples is at most `max_gap_ms`.
fn assert_no_gap(ts: &[i64], max_gap_ms: i64, what: &str) {
    assert!(ts.len() >= 2, "{what}: only {} samples", ts.len());
    for w in ts.windows(2) {
        assert!(w[1] > w[0], "{what}: timestamps not increasing: {w:?}");
        assert!(
            w[1] - w[0] <= max_gap_ms,
            "{what}: gap of {} ms between {} and {} ({} samples)",
            w[1] - w[0],
            w[0],
            w[1],
            ts.len()
        );
    }
}

fn agent_args<'a>(
    collectors: &'a [String],
    state: &'a Path,
    instance: &'a str,
    listen: &'a str,
) -> Vec<&'a str> {
    let mut v = vec![
        "--interval",
        "1s",
        "--instance",
        instance,
        "--listen",
        listen,
        "--state-dir",
        state.to_str().unwrap(),
    ];
    for c in collectors {
        v.push("--collector");
        v.push(c);
    }
    v
}

const TOKEN: &str = "delivery-test-token";
/// Waits that span an outage or a grown retry backoff (at most 30 s).
const OUTAGE_WAIT: std::time::Duration = std::time::Duration::from_secs(90);

#[test]
fn a_collector_outage_loses_no_sample() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let data = dir.path().join("c");
    let extra = ["--no-local-agent", "--agent-token", TOKEN];
    let mut c = Collector::start_on(&data, port, &extra);
    let listen = format!("127.0.0.1:{}", free_port());
    let collectors = vec![c.url.clone()];
    let _agent = Agent::start_with(
        TOKEN,
        &agent_args(&collectors, &dir.path().join("a"), "outage", &listen),
    );
    wait_for("first samples", || {
        (load_timestamps(&c, "outage").len() >= 2).then_some(())
    });

    c.kill();
    // The outage lasts until the agent has spooled 30 batches it could not
    // deliver (30 s at 1 s).
    // The outage itself lasts 30 s.
    wait_for_within("30 spooled batches", OUTAGE_WAIT, || {
        (agent_metric(&listen, "nines_agent_spool_records", "") >= 30.0).then_some(())
    });
    let c = Collector::start_on(&data, port, &extra);
    let rounds = agent_metric(&listen, "nines_agent_sampling_rounds_total", "");
    // The agent's backoff has grown to up to 30 s during the outage.
    let ts = wait_for_within("the backlog delivered", OUTAGE_WAIT, || {
        let ts = load_timestamps(&c, "outage");
        (ts.len() as f64 >= rounds).then_some(ts)
    });
    assert_no_gap(&ts, 1500, "after a 30 s collector outage");
    assert!(c.metric("nines_ingest_batches_total", "result=\"stored\"") >= 30.0);
}

#[test]
fn an_agent_killed_with_sigkill_delivers_its_spool_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let data = dir.path().join("c");
    let extra = ["--no-local-agent", "--agent-token", TOKEN];
    let mut c = Collector::start_on(&data, port, &extra);
    let url = c.url.clone();
    let state = dir.path().join("a");
    let listen = format!("127.0.0.1:{}", free_port());
    let collectors = vec![url];
    let mut agent = Agent::start_with(TOKEN, &agent_args(&collectors, &state, "killed", &listen));
    wait_for("first samples", || {
        (load_timestamps(&c, "killed").len() >= 2).then_some(())
    });
    c.kill();
    wait_for("10 spooled batches", || {
        (agent_metric(&listen, "nines_agent_spool_records", "") >= 10.0).then_some(())
    });
    // Everything sampled so far is in the spool of a process about to die.
    let rounds = agent_metric(&listen, "nines_agent_sampling_rounds_total", "");
    agent.kill();
    let c = Collector::start_on(&data, port, &extra);
    let _agent = Agent::start_with(TOKEN, &agent_args(&collectors, &state, "killed", &listen));
    let ts = wait_for_within("the dead agent's spool delivered", OUTAGE_WAIT, || {
        let ts = load_timestamps(&c, "killed");
        (ts.len() as f64 > rounds).then_some(ts)
    });
    // No gap among the samples the first process took.
    assert_no_gap(&ts[..rounds as usize], 1500, "samples of the killed agent");
}

#[test]
fn replicate_mode_gives_both_collectors_identical_data() {
    let dir = tempfile::tempdir().unwrap();
    let extra = ["--no-local-agent", "--agent-token", TOKEN];
    let (pa, pb) = (free_port(), free_port());
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    let a = Collector::start_on(&da, pa, &extra);
    let mut b = Collector::start_on(&db, pb, &extra);
    let state = dir.path().join("agent");
    let listen = format!("127.0.0.1:{}", free_port());
    let collectors = vec![a.url.clone(), b.url.clone()];
    let mut args = agent_args(&collectors, &state, "rep", &listen);
    args.extend(["--mode", "replicate"]);
    let mut agent = Agent::start_with(TOKEN, &args);
    wait_for("samples on b", || {
        (load_timestamps(&b, "rep").len() >= 2).then_some(())
    });
    b.kill();
    // Records stay spooled while one lane cannot deliver them.
    wait_for("b's lane behind by 5", || {
        (agent_metric(&listen, "nines_agent_spool_records", "") >= 5.0).then_some(())
    });
    let b = Collector::start_on(&db, pb, &extra);
    wait_for_within("b caught up", OUTAGE_WAIT, || {
        let (ta, tb) = (load_timestamps(&a, "rep"), load_timestamps(&b, "rep"));
        (ta.len() >= 8 && tb.len() >= ta.len()).then_some(())
    });
    // Stop sampling; a restarted agent with a long interval takes one more
    // round and delivers whatever either lane still had.
    agent.kill();
    let mut args = agent_args(&collectors, &state, "rep", &listen);
    args.extend(["--mode", "replicate"]);
    let pos = args.iter().position(|a| *a == "1s").unwrap();
    args[pos] = "1h";
    let _agent = Agent::start_with(TOKEN, &args);
    let (ta, tb) = wait_for_within("identical series on a and b", OUTAGE_WAIT, || {
        let (ta, tb) = (load_timestamps(&a, "rep"), load_timestamps(&b, "rep"));
        let sa = a
            .get_json("/api/v1/series?match[]=%7Binstance%3D%22rep%22%7D")
            .1;
        let sb = b
            .get_json("/api/v1/series?match[]=%7Binstance%3D%22rep%22%7D")
            .1;
        (ta == tb
            && sa["data"] == sb["data"]
            && agent_metric(&listen, "nines_agent_spool_records", "") == 0.0)
            .then_some((ta, tb))
    });
    assert_eq!(ta, tb);
    assert!(ta.len() >= 8);
}

#[test]
fn failover_moves_to_the_second_collector_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let extra = ["--no-local-agent", "--agent-token", TOKEN];
    let (pa, pb) = (free_port(), free_port());
    let da = dir.path().join("a");
    let mut a = Collector::start_on(&da, pa, &extra);
    let b = Collector::start_on(&dir.path().join("b"), pb, &extra);
    let state = dir.path().join("agent");
    std::fs::create_dir_all(&state).unwrap();
    let cfg = state.join("agent.toml");
    std::fs::write(&cfg, "primary_retry = \"2s\"\n").unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let collectors = vec![a.url.clone(), b.url.clone()];
    let mut args = agent_args(&collectors, &state, "fo", &listen);
    args.extend(["--config", cfg.to_str().unwrap()]);
    let _agent = Agent::start_with(TOKEN, &args);
    wait_for("samples on a", || {
        (load_timestamps(&a, "fo").len() >= 2).then_some(())
    });
    assert!(
        load_timestamps(&b, "fo").is_empty(),
        "failover sends to the first only"
    );
    a.kill();
    wait_for("samples on b", || {
        (load_timestamps(&b, "fo").len() >= 2).then_some(())
    });
    let a = Collector::start_on(&da, pa, &extra);
    let before = load_timestamps(&a, "fo").len();
    wait_for("back on a", || {
        (load_timestamps(&a, "fo").len() > before + 2).then_some(())
    });
    // Nothing is lost across the two: together they hold every round.
    let mut all: Vec<i64> = load_timestamps(&a, "fo");
    all.extend(load_timestamps(&b, "fo"));
    all.sort_unstable();
    all.dedup();
    assert_no_gap(&all, 1500, "a and b together");
}

#[test]
fn a_full_spool_drops_the_oldest_batches_and_counts_exactly_those() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let data = dir.path().join("c");
    let extra = ["--no-local-agent", "--agent-token", TOKEN];
    // The collector is down from the start: everything goes to the spool.
    let state = dir.path().join("a");
    std::fs::create_dir_all(&state).unwrap();
    let cfg = state.join("agent.toml");
    std::fs::write(
        &cfg,
        "spool_max_bytes = 1048576\n[statsd]\nenabled = false\n",
    )
    .unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let url = format!("http://127.0.0.1:{port}");
    let mut agent = Agent::start_with(
        TOKEN,
        &[
            "--collector",
            &url,
            "--interval",
            "100ms",
            "--instance",
            "full",
            "--listen",
            &listen,
            "--state-dir",
            state.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
        ],
    );
    // One scrape of the agent, so the three figures belong together: what
    // the spool holds is exactly what was appended minus what was dropped.
    let (appended, dropped, held) =
        wait_for_within("the spool to drop batches", OUTAGE_WAIT, || {
            let text = http()
                .get(format!("http://{listen}/metrics"))
                .send()
                .ok()?
                .text()
                .ok()?;
            let d = metric_value(
                &text,
                "nines_agent_spool_dropped_records_total",
                "spool_full",
            );
            let a = metric_value(&text, "nines_agent_spool_appended_records_total", "");
            let h = metric_value(&text, "nines_agent_spool_records", "");
            (d >= 10.0).then_some((a, d, h))
        });
    assert_eq!(
        held,
        appended - dropped,
        "appended {appended}, dropped {dropped}"
    );
    agent.kill();
    let c = Collector::start_on(&data, port, &extra);
    let _agent = Agent::start_with(
        TOKEN,
        &[
            "--collector",
            &url,
            "--interval",
            "1h",
            "--instance",
            "full",
            "--listen",
            &listen,
            "--state-dir",
            state.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
        ],
    );
    let stored = wait_for_within("the spool delivered", OUTAGE_WAIT, || {
        let n = load_timestamps(&c, "full").len();
        (agent_metric(&listen, "nines_agent_spool_records", "") == 0.0 && n > 0).then_some(n)
    });
    // What the spool held is what arrives (plus the restarted agent's one
    // round, and at most a few rounds taken between the scrape and the kill).
    let from_spool = stored as f64 - 1.0;
    assert!(
        from_spool >= held && from_spool <= held + 3.0,
        "held {held}, delivered {from_spool}"
    );
    // The oldest went: what is stored is one unbroken run of the newest.
    let ts = load_timestamps(&c, "full");
    assert_no_gap(&ts[..ts.len() - 1], 400, "the newest batches");
}
