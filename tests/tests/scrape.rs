//! End-to-end: the collector pulls a real node_exporter (Debian's
//! prometheus-node-exporter) and a nines agent's /metrics, records `up`
//! and the scrape series as Prometheus does, marks vanished series stale,
//! and the agent's host metrics agree with node_exporter's on this host.

use nines_tests::*;
use std::process::{Command, Stdio};

#[test]
fn collector_scrapes_node_exporter_and_agent_and_both_agree() {
    let Some(node_exporter) = peer("prometheus-node-exporter", "prometheus-node-exporter") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ne_port = free_port();
    let mut ne = Command::new(node_exporter)
        .arg(format!("--web.listen-address=127.0.0.1:{ne_port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start node_exporter");
    let agent_port = free_port();
    let config = dir.path().join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "[[scrape]]\njob = \"node\"\ntargets = [\"127.0.0.1:{ne_port}\"]\ninterval = \"500ms\"\n\
             [[scrape]]\njob = \"nines-agent\"\ntargets = [\"127.0.0.1:{agent_port}\"]\ninterval = \"500ms\"\n"
        ),
    )
    .unwrap();
    let c = Collector::start(
        &dir.path().join("c"),
        &["--no-local-agent", "--config", config.to_str().unwrap()],
    );
    let listen = format!("127.0.0.1:{agent_port}");
    let _agent = Agent::start(
        &c,
        &dir.path().join("agent"),
        &[
            "--interval",
            "1s",
            "--instance",
            "nines-host",
            "--listen",
            &listen,
        ],
    );

    let ne_instance = format!("127.0.0.1:{ne_port}");
    wait_for("node_exporter up", || {
        (value(
            &c,
            &format!("up{{job=\"node\",instance=\"{ne_instance}\"}}"),
        ) == Some(1.0))
        .then_some(())
    });
    wait_for("nines agent scraped", || {
        (value(&c, "up{job=\"nines-agent\"}") == Some(1.0)).then_some(())
    });
    let ne_sel = format!("{{instance=\"{ne_instance}\"}}");
    assert!(value(&c, &format!("scrape_samples_scraped{ne_sel}")).unwrap() > 100.0);
    assert!(value(&c, &format!("scrape_duration_seconds{ne_sel}")).unwrap() > 0.0);
    wait_for("agent's own metrics stored", || {
        value(&c, "nines_agent_sampling_rounds_total{job=\"nines-agent\"}").filter(|v| *v > 0.0)
    });

    // The agent pushes the same host under node_exporter's names: values
    // that do not move must agree exactly.
    wait_for("agent host series", || {
        value(&c, "node_boot_time_seconds{instance=\"nines-host\"}")
    });
    for metric in [
        "node_memory_MemTotal_bytes",
        "node_boot_time_seconds",
        "node_memory_SwapTotal_bytes",
    ] {
        let ne_v = value(&c, &format!("{metric}{{instance=\"{ne_instance}\"}}"));
        let agent_v = value(&c, &format!("{metric}{{instance=\"nines-host\"}}"));
        assert!(ne_v.is_some(), "{metric} missing from node_exporter");
        assert_eq!(ne_v, agent_v, "{metric}: node_exporter vs nines agent");
    }
    let root = "{mountpoint=\"/\"}";
    let ne_size = value(
        &c,
        &format!("node_filesystem_size_bytes{{instance=\"{ne_instance}\",mountpoint=\"/\"}}"),
    );
    let agent_size = value(
        &c,
        "node_filesystem_size_bytes{instance=\"nines-host\",mountpoint=\"/\"}",
    );
    assert_eq!(ne_size, agent_size, "node_filesystem_size_bytes{root}");

    // node_exporter goes away: up turns 0 and its series go stale at once.
    let _ = ne.kill();
    let _ = ne.wait();
    wait_for("up == 0 after node_exporter stopped", || {
        (value(&c, &format!("up{{instance=\"{ne_instance}\"}}")) == Some(0.0)).then_some(())
    });
    let q = c.query(&format!("node_load1{{instance=\"{ne_instance}\"}}"), None);
    assert_eq!(q["data"]["result"], serde_json::json!([]), "{q}");
    assert!(c.metric("nines_scrapes_total", "result=\"http_error\"") >= 1.0);
}
