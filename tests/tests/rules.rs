//! End-to-end: the real collector loads a Prometheus rule file, evaluates
//! it every second over samples pushed by remote_write, raises an alert
//! (pending, then firing after `for`), writes `ALERTS` and the recorded
//! series, answers `/api/v1/rules` and `/api/v1/alerts` as Prometheus does,
//! and keeps a firing alert's `activeAt` across a SIGKILL. promtool accepts
//! the same rule file; a bad one stops the collector at start.

use nines_collector::ingest::remote_write::{SeriesWrite, encode};
use nines_shared::{Labels, UnixMillis};
use nines_tests::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const RULES: &str = r#"groups:
  - name: e2e
    interval: 1s
    rules:
      - record: job:e2e_load:max
        expr: max by (job) (e2e_load)
        labels:
          source: rules
      - alert: E2eHighLoad
        expr: job:e2e_load:max > 1
        for: 2s
        keep_firing_for: 0s
        labels:
          severity: page
        annotations:
          summary: "{{ $labels.job }} load is {{ $value | humanize }}"
          detail: 'value {{ printf "%.2f" $value }}'
"#;

fn push(c: &Collector, value: f64) {
    let body = encode(&[SeriesWrite {
        labels: Labels::new("e2e_load", [("job", "web"), ("instance", "w1")]),
        samples: vec![(UnixMillis::now().0, value)],
    }]);
    let auth = format!("Bearer {}", c.token);
    let r = http()
        .post(format!("{}/api/v1/write", c.url))
        .header("authorization", auth)
        .header("content-encoding", "snappy")
        .header("content-type", "application/x-protobuf")
        .header("x-prometheus-remote-write-version", "0.1.0")
        .body(body)
        .send()
        .expect("remote write");
    assert_eq!(r.status().as_u16(), 204);
}

fn alerts(c: &Collector) -> Vec<Value> {
    let (status, body) = c.get_json("/api/v1/alerts");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "success");
    body["data"]["alerts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn alert_in(c: &Collector, state: &str) -> Option<Value> {
    alerts(c).into_iter().find(|a| a["state"] == state)
}

fn write_config(dir: &Path) -> std::path::PathBuf {
    std::fs::write(dir.join("rules.yml"), RULES).unwrap();
    let cfg = dir.join("collector.toml");
    std::fs::write(
        &cfg,
        "rule_files = [\"rules.yml\"]\nevaluation_interval = \"1s\"\n",
    )
    .unwrap();
    cfg
}

#[test]
fn promtool_accepts_the_rule_file() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path());
    let Some(promtool) = peer("promtool", "prometheus") else {
        return;
    };
    let (code, out, err) = run(Command::new(promtool)
        .arg("check")
        .arg("rules")
        .arg(dir.path().join("rules.yml")));
    assert_eq!(code, 0, "promtool check rules: {out}{err}");
    assert!(out.contains("SUCCESS: 2 rules found"), "{out}");
}

#[test]
fn an_alert_goes_pending_then_firing_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path());
    let cfg_s = cfg.to_str().unwrap();
    let data = dir.path().join("data");
    let mut c = Collector::start(&data, &["--no-local-agent", "--config", cfg_s]);

    // Before any data: the rules are listed, with no alert.
    let (status, body) = c.get_json("/api/v1/rules");
    assert_eq!(status, 200);
    let group = &body["data"]["groups"][0];
    assert_eq!(group["name"], "e2e");
    assert_eq!(group["interval"], 1.0);
    assert!(
        group["file"].as_str().unwrap().ends_with("rules.yml"),
        "{group}"
    );
    assert!(alerts(&c).is_empty());

    push(&c, 5.0);
    let pushed = Instant::now();
    let pending = wait_for("a pending alert", || alert_in(&c, "pending"));
    assert_eq!(pending["labels"]["alertname"], "E2eHighLoad");
    assert_eq!(pending["labels"]["job"], "web");
    assert_eq!(pending["labels"]["severity"], "page");
    assert_eq!(pending["labels"]["source"], "rules");
    assert_eq!(pending["annotations"]["summary"], "web load is 5");
    assert_eq!(pending["annotations"]["detail"], "value 5.00");
    assert_eq!(pending["value"], "5e+00");
    let active_at = pending["activeAt"].as_str().unwrap().to_string();

    let firing = wait_for("the alert to fire", || alert_in(&c, "firing"));
    assert!(
        pushed.elapsed() >= Duration::from_secs(2),
        "fired before `for`"
    );
    assert_eq!(firing["activeAt"], active_at.as_str());

    let (_, body) = c.get_json("/api/v1/rules");
    let rules = &body["data"]["groups"][0]["rules"];
    assert_eq!(rules[0]["type"], "recording");
    assert_eq!(rules[0]["name"], "job:e2e_load:max");
    assert_eq!(rules[0]["health"], "ok");
    assert_eq!(rules[1]["type"], "alerting");
    assert_eq!(rules[1]["state"], "firing");
    assert_eq!(rules[1]["duration"], 2.0);
    assert_eq!(rules[1]["query"], "job:e2e_load:max > 1");
    assert_eq!(rules[1]["labels"]["severity"], "page");
    assert_eq!(
        rules[1]["annotations"]["summary"],
        "{{ $labels.job }} load is {{ $value | humanize }}"
    );
    assert_eq!(rules[1]["alerts"][0]["state"], "firing");
    assert!(
        rules[1]["lastEvaluation"]
            .as_str()
            .unwrap()
            .starts_with("20")
    );
    assert!(rules[1]["evaluationTime"].as_f64().is_some());

    // ALERTS, ALERTS_FOR_STATE and the recorded series, through PromQL.
    let q = c.query("ALERTS{alertname=\"E2eHighLoad\"}", None);
    let result = q["data"]["result"].as_array().unwrap();
    assert_eq!(result.len(), 1, "{q}");
    assert_eq!(result[0]["metric"]["alertstate"], "firing");
    assert_eq!(result[0]["metric"]["severity"], "page");
    assert_eq!(result[0]["value"][1], "1");
    let q = c.query("ALERTS_FOR_STATE", None);
    let since = q["data"]["result"][0]["value"][1]
        .as_str()
        .unwrap()
        .to_string();
    assert!(since.parse::<f64>().unwrap() > 1.6e9, "{q}");
    let q = c.query("job:e2e_load:max", None);
    assert_eq!(q["data"]["result"][0]["value"][1], "5", "{q}");
    assert_eq!(q["data"]["result"][0]["metric"]["source"], "rules");

    assert!(c.metric("nines_rule_evaluations_total", "e2e") >= 6.0);
    assert_eq!(c.metric("nines_rule_evaluation_failures_total", "e2e"), 0.0);

    // A crash: the firing alert keeps firing with its activeAt.
    c.kill();
    let c = Collector::start(&data, &["--no-local-agent", "--config", cfg_s]);
    let restored = alert_in(&c, "firing").expect("restored at start");
    assert_eq!(restored["activeAt"], active_at.as_str());
    // And after evaluations following the restart.
    let t = Instant::now();
    wait_for("two evaluations after the restart", || {
        (t.elapsed() > Duration::from_millis(2500)).then_some(())
    });
    let firing = alert_in(&c, "firing").expect("still firing");
    assert_eq!(firing["activeAt"], active_at.as_str());
    assert!(alert_in(&c, "pending").is_none());

    // The load drops: resolved, gone from the API and from ALERTS.
    push(&c, 0.5);
    wait_for("the alert to resolve", || {
        alerts(&c).is_empty().then_some(())
    });
    let q = c.query("ALERTS", None);
    assert_eq!(q["data"]["result"].as_array().unwrap().len(), 0, "{q}");
    let (_, body) = c.get_json("/api/v1/rules");
    assert_eq!(body["data"]["groups"][0]["rules"][1]["state"], "inactive");
}

#[test]
fn a_bad_rule_file_stops_the_collector_naming_file_group_rule_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yml"),
        "groups:\n  - name: broken\n    rules:\n      - alert: Oops\n        expr: 'rate(up[5m]'\n",
    )
    .unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "rule_files = [\"bad.yml\"]\n").unwrap();
    let (code, _out, err) = run(Command::new(bin("nines-collector"))
        .arg("serve")
        .arg("--no-local-agent")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&cfg));
    assert_ne!(code, 0);
    for want in [
        "bad.yml",
        "\"broken\"",
        "alert \"Oops\"",
        // promtool's wording: the position in the expression.
        "could not parse expression: 1:12: parse error: unclosed left parenthesis",
    ] {
        assert!(err.contains(want), "{want:?} missing from: {err}");
    }
    if let Some(promtool) = peer("promtool", "prometheus") {
        let (code, _, _) = run(Command::new(promtool)
            .arg("check")
            .arg("rules")
            .arg(dir.path().join("bad.yml")));
        assert_ne!(code, 0, "promtool refuses it too");
    }
}
