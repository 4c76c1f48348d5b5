//! Presence: the collector writes `up{job="node", instance}` for every agent
//! that pushes (1 while it pushes, 0 once it is silent), remembers agents
//! across its own restarts, and stores its own metrics as series.

use nines_tests::*;

fn config(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("collector.toml");
    std::fs::write(
        &path,
        "[presence]\ndown_after_intervals = 3\ndown_after_min = \"2s\"\nwrite_interval = \"1s\"\nself_metrics_interval = \"1s\"\n",
    )
    .unwrap();
    path
}

fn up(c: &Collector, instance: &str) -> Option<f64> {
    value(c, &format!("up{{job=\"node\",instance=\"{instance}\"}}"))
}

#[test]
fn a_pushing_agent_is_up_and_a_killed_one_goes_down_also_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let data = dir.path().join("data");
    let args = ["--no-local-agent", "--config", cfg.to_str().unwrap()];
    let mut c = Collector::start(&data, &args);
    let state = dir.path().join("agent");
    let mut agent = Agent::start(
        &c,
        &state,
        &["--interval", "1s", "--instance", "presence-host"],
    );
    wait_for("up = 1 for the pushing agent", || {
        (up(&c, "presence-host") == Some(1.0)).then_some(())
    });

    // The collector's own metrics are stored as series too.
    wait_for("the collector's own metrics as series", || {
        value(&c, "nines_ingest_samples_total{job=\"nines-collector\"}").filter(|v| *v > 0.0)
    });

    agent.kill();
    wait_for("up = 0 once the agent is silent", || {
        (up(&c, "presence-host") == Some(0.0)).then_some(())
    });

    // A restarted collector still knows the agent and, after its grace
    // period, reports it down without hearing from it.
    let port: u16 = c.url.rsplit(':').next().unwrap().parse().unwrap();
    c.kill();
    let restarted = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let c = Collector::start_on(&data, port, &args);
    wait_for("up = 0 written by the restarted collector", || {
        let at = value(
            &c,
            "timestamp(up{job=\"node\",instance=\"presence-host\"} == 0)",
        )?;
        (at > restarted).then_some(())
    });
}

#[test]
fn a_bad_presence_setting_stops_the_collector_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[presence]\ndown_after_intervals = 0\n").unwrap();
    let (code, _out, err) = run(std::process::Command::new(bin("nines-collector"))
        .arg("serve")
        .arg("--config")
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.path().join("data")));
    assert_eq!(code, 2, "stderr: {err}");
    assert!(
        err.contains("presence.down_after_intervals") && err.contains("at least 1"),
        "stderr: {err}"
    );
}
