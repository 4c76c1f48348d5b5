//! End-to-end: a real agent's own health (spool, delivery, sampling,
//! `process_*`) reaches the collector with every round, labelled like its
//! host series, with counter and histogram types intact; and a collector
//! rule alerts on an agent whose spool dropped data while the collector
//! was down.

use nines_tests::*;
use serde_json::Value;

const TOKEN: &str = "agent-self-test-token";

/// The metadata the collector keeps for `metric`: (type, help).
fn metadata(c: &Collector, metric: &str) -> Option<(String, String)> {
    let (status, body) = c.get_json(&format!("/api/v1/metadata?metric={metric}"));
    assert_eq!(status, 200, "{body}");
    let m = body["data"][metric].get(0)?;
    Some((
        m["type"].as_str()?.to_string(),
        m["help"].as_str()?.to_string(),
    ))
}

#[test]
fn an_agents_health_reaches_the_collector_as_host_series() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(&dir.path().join("c"), &["--no-local-agent"]);
    let listen = format!("127.0.0.1:{}", free_port());
    let _agent = Agent::start(
        &c,
        &dir.path().join("agent"),
        &[
            "--interval",
            "1s",
            "--instance",
            "self",
            "--listen",
            &listen,
        ],
    );
    // Labelled like the host series.
    wait_for("the agent's spool gauge in the collector", || {
        value(
            &c,
            "nines_agent_spool_records{job=\"node\",instance=\"self\"}",
        )
    });
    assert!(
        value(&c, "node_load1{job=\"node\",instance=\"self\"}").is_some(),
        "host series beside the health series"
    );
    // Acks counted by the agent arrive with later rounds, per collector.
    let acked = format!(
        "nines_agent_batches_acked_total{{job=\"node\",instance=\"self\",collector=\"{}\"}}",
        c.url
    );
    wait_for("acks reported by the agent", || {
        value(&c, &acked).filter(|v| *v >= 2.0)
    });
    assert!(value(&c, "process_resident_memory_bytes{instance=\"self\"}").unwrap() > 0.0);
    assert!(value(&c, "nines_agent_collector_up{instance=\"self\"}") == Some(1.0));
    // The drop counters exist at zero before any drop, so a rule sees the
    // first drop as an increase.
    let increase = "increase(nines_agent_spool_dropped_records_total{instance=\"self\",reason=\"spool_full\"}[10m])";
    wait_for("two samples of the drop counter", || value(&c, increase));
    assert_eq!(value(&c, increase), Some(0.0));
    // A histogram arrives as _bucket/_sum/_count that PromQL can read.
    let p50 =
        "histogram_quantile(0.5, nines_agent_sampling_duration_seconds_bucket{instance=\"self\"})";
    let q = wait_for("a sampling duration quantile", || {
        value(&c, p50).filter(|v| v.is_finite())
    });
    assert!(q > 0.0, "p50 {q}");
    assert!(
        value(
            &c,
            "nines_agent_sampling_duration_seconds_count{instance=\"self\"}"
        )
        .unwrap()
            >= 1.0
    );

    // Types and help travel with the batch.
    let (kind, help) = metadata(&c, "nines_agent_spool_dropped_records_total").unwrap();
    assert_eq!(kind, "counter");
    assert!(help.starts_with("Records a cursor lost"), "{help}");
    assert_eq!(
        metadata(&c, "nines_agent_sampling_duration_seconds")
            .unwrap()
            .0,
        "histogram"
    );
    assert_eq!(
        metadata(&c, "nines_agent_spool_records").unwrap().0,
        "gauge"
    );
    assert_eq!(
        metadata(&c, "process_cpu_seconds_total").unwrap().0,
        "counter"
    );

    // The agent's own page still lists each family once.
    let text = http()
        .get(format!("http://{listen}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    for family in [
        "nines_agent_spool_records",
        "nines_agent_sampling_duration_seconds",
        "process_resident_memory_bytes",
    ] {
        let header = format!("# TYPE {family} ");
        assert_eq!(text.matches(&header).count(), 1, "{family} in:\n{text}");
    }
}

const RULES: &str = r#"groups:
  - name: agents
    interval: 1s
    rules:
      - alert: AgentSpoolDropping
        expr: increase(nines_agent_spool_dropped_records_total[10m]) > 0
        labels:
          severity: ticket
"#;

#[test]
fn a_collector_alerts_on_an_agent_whose_spool_dropped_data() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    // The collector is down while the agent samples fast into a small
    // spool, which must drop its oldest batches.
    let state = dir.path().join("agent");
    std::fs::create_dir_all(&state).unwrap();
    let agent_cfg = state.join("agent.toml");
    std::fs::write(
        &agent_cfg,
        "spool_max_bytes = 1048576\n[statsd]\nenabled = false\n",
    )
    .unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let _agent = Agent::start_with(
        TOKEN,
        &[
            "--collector",
            &url,
            "--interval",
            "100ms",
            "--instance",
            "dropper",
            "--listen",
            &listen,
            "--state-dir",
            state.to_str().unwrap(),
            "--config",
            agent_cfg.to_str().unwrap(),
        ],
    );
    wait_for_within(
        "the spool to drop batches",
        std::time::Duration::from_secs(90),
        || {
            (agent_metric(
                &listen,
                "nines_agent_spool_dropped_records_total",
                "spool_full",
            ) >= 1.0)
                .then_some(())
        },
    );

    // The collector comes up with a rule on the pushed health: the agent's
    // backlog tells it what was lost while it was down.
    let data = dir.path().join("c");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("rules.yml"), RULES).unwrap();
    let cfg = data.join("collector.toml");
    std::fs::write(
        &cfg,
        format!(
            "rule_files = [\"{}\"]\nevaluation_interval = \"1s\"\n",
            data.join("rules.yml").display()
        ),
    )
    .unwrap();
    let c = Collector::start_on(
        &data,
        port,
        &[
            "--no-local-agent",
            "--agent-token",
            TOKEN,
            "--config",
            cfg.to_str().unwrap(),
        ],
    );
    let alert: Value = wait_for("the AgentSpoolDropping alert", || {
        let (status, body) = c.get_json("/api/v1/alerts");
        assert_eq!(status, 200, "{body}");
        body["data"]["alerts"]
            .as_array()?
            .iter()
            .find(|a| a["labels"]["alertname"] == "AgentSpoolDropping" && a["state"] == "firing")
            .cloned()
    });
    assert_eq!(alert["labels"]["instance"], "dropper", "{alert}");
    assert_eq!(alert["labels"]["job"], "node", "{alert}");
    assert_eq!(alert["labels"]["reason"], "spool_full", "{alert}");
}
