//! End-to-end SLOs with the real binaries: an agent probes a loopback HTTP
//! server that fails every other request; the collector's SLO over that
//! probe shows the burn in `nines_slo_*` and `/api/v1/slos`, its
//! burn-rate alert (short windows from the config) goes pending or firing
//! in `/api/v1/alerts` and reaches a webhook through the notifier (signed,
//! Alertmanager's payload; resolved once the server recovers), and the
//! report's availability equals the ratio of the raw probe counters read
//! through `/api/v1/query`. SLOs made through
//! the API are checked, kept across a restart and refused with the field
//! when invalid; a bad `[[slo]]` stops the collector at start. The
//! built-in HostDown alert fires for a killed agent, not for a live one.

use nines_shared::UnixMillis;
use nines_tests::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Answers (200 and 500) the flaky server gave.
#[derive(Default)]
struct Answers {
    ok: AtomicU64,
    failed: AtomicU64,
    /// Once set, every request is answered 200.
    healthy: AtomicBool,
}

/// A loopback HTTP server that answers 500 to every other request.
fn flaky_server() -> (u16, Arc<Answers>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let answers = Arc::new(Answers::default());
    let a = answers.clone();
    std::thread::spawn(move || {
        let mut n = 0u64;
        for stream in l.incoming().map_while(Result::ok) {
            let mut reader = BufReader::new(stream);
            let mut h = String::new();
            while reader.read_line(&mut h).is_ok_and(|n| n > 2) {
                h.clear();
            }
            n += 1;
            let status = if n % 2 == 0 && !a.healthy.load(Ordering::SeqCst) {
                a.failed.fetch_add(1, Ordering::SeqCst);
                "500 Internal Server Error"
            } else {
                a.ok.fetch_add(1, Ordering::SeqCst);
                "200 OK"
            };
            let mut s = reader.into_inner();
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
            );
        }
    });
    (port, answers)
}

const SLO_CONFIG: &str = r#"evaluation_interval = "1s"

[[slo]]
name = "web"
description = "the flaky server answers"
objective = 90.0
window = "10m"
[slo.indicator]
kind = "probe"
probe = "web"
[[slo.burn_alerts]]
severity = "page"
long_window = "20s"
short_window = "5s"
factor = 2.0
for = "2s"
"#;

fn post_json(c: &Collector, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let req = match method {
        "PUT" => http().put(format!("{}{path}", c.url)),
        _ => http().post(format!("{}{path}", c.url)),
    };
    let r = req
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .expect("request");
    let status = r.status().as_u16();
    (
        status,
        serde_json::from_str(&r.text().unwrap_or_default()).unwrap_or(Value::Null),
    )
}

fn delete(c: &Collector, path: &str) -> (u16, Value) {
    let r = http()
        .delete(format!("{}{path}", c.url))
        .send()
        .expect("DELETE");
    let status = r.status().as_u16();
    (
        status,
        serde_json::from_str(&r.text().unwrap_or_default()).unwrap_or(Value::Null),
    )
}

fn slo(c: &Collector, name: &str) -> Value {
    let (status, body) = c.get_json(&format!("/api/v1/slos/{name}"));
    assert_eq!(status, 200, "{body}");
    body["data"].clone()
}

fn alerts(c: &Collector) -> Vec<Value> {
    let (status, body) = c.get_json("/api/v1/alerts");
    assert_eq!(status, 200, "{body}");
    body["data"]["alerts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Sum of a counter's series at `t` (ms) through the query API.
fn counter_at(c: &Collector, expr: &str, t: i64) -> f64 {
    let q = c.query(
        &format!("sum({expr})"),
        Some(&format!("{}.{:03}", t / 1000, t % 1000)),
    );
    q["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no value for {expr} at {t}: {q}"))
}

fn start_probing(c: &Collector, dir: &Path, port: u16) -> Agent {
    let cfg = dir.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "[statsd]\nenabled = false\n\
             [[probe]]\nname = \"web\"\nkind = \"http\"\ntarget = \"http://127.0.0.1:{port}/\"\ninterval = \"1s\"\n"
        ),
    )
    .unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    Agent::start(
        c,
        &dir.join("agent"),
        &[
            "--interval",
            "1s",
            "--instance",
            "prober",
            "--listen",
            &listen,
            "--config",
            cfg.to_str().unwrap(),
        ],
    )
}

#[test]
fn a_half_failing_probe_burns_the_budget_fires_the_alert_and_reports_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("collector.toml");
    let hook = nines_tests::hook::Hook::start(0);
    std::fs::write(
        &cfg,
        format!(
            "{SLO_CONFIG}[[receiver]]\nname = \"hook\"\nwebhook = {{ url = \"{}/\", secret = \"{SECRET}\" }}\n\
             [route]\nreceiver = \"hook\"\ngroup_by = [\"alertname\", \"slo\"]\ngroup_wait = \"0s\"\ngroup_interval = \"1s\"\n",
            hook.url()
        ),
    )
    .unwrap();
    let cfg_arg = cfg.to_str().unwrap().to_string();
    let args = ["--no-local-agent", "--config", &cfg_arg];
    let c = Collector::start(&dir.path().join("c"), &args);
    let (port, answers) = flaky_server();
    let _agent = start_probing(&c, dir.path(), port);

    // The SLO shows the burn: half the probes fail against a 10% budget,
    // a burn rate of about 5.
    let s = wait_for("the SLO's burn rate", || {
        let s = slo(&c, "web");
        let burn = s["status"]["burn_rates"]["20s"].as_f64()?;
        let sli = s["status"]["sli"].as_f64()?;
        // The first one or two attempts can show any ratio.
        (burn > 2.0 && (0.2..0.8).contains(&sli)).then_some(s)
    });
    assert_eq!(s["source"], "config");
    assert_eq!(s["objective"], 90.0);
    assert_eq!(s["window"], "10m");
    assert_eq!(s["missing_data"], "excluded");
    assert_eq!(s["indicator"], json!({"kind": "probe", "probe": "web"}));
    assert!(
        s["status"]["budget_spent_ratio"].as_f64().unwrap() > 1.0,
        "{s}"
    );
    assert!(
        s["status"]["budget_remaining_ratio"].as_f64().unwrap() < 0.0,
        "{s}"
    );
    assert!((s["status"]["budget_total_ratio"].as_f64().unwrap() - 0.1).abs() < 1e-9);
    for w in ["5m", "30m", "1h", "2h", "6h", "1d", "3d", "5s", "20s"] {
        assert!(s["status"]["burn_rates"].get(w).is_some(), "{w}: {s}");
    }
    assert_eq!(s["status"]["exhaustion_seconds"], 0.0, "{s}");

    // The same through the series.
    let burn = wait_for("nines_slo_burn_rate", || {
        value(&c, "nines_slo_burn_rate{slo=\"web\",window=\"20s\"}").filter(|v| *v > 2.0)
    });
    assert!(burn < 10.0, "{burn}");
    for m in [
        "nines_slo_objective_ratio",
        "nines_slo_sli_ratio",
        "nines_slo_error_budget_remaining_ratio",
        "nines_slo_error_budget_spent_ratio",
        "nines_slo_missing_ratio",
        "nines_slo_exhaustion_seconds",
    ] {
        assert!(value(&c, &format!("{m}{{slo=\"web\"}}")).is_some(), "{m}");
    }
    assert_eq!(
        value(&c, "nines_slo_objective_ratio{slo=\"web\"}"),
        Some(0.9)
    );

    // The burn-rate alert goes pending (for: 2s), then fires.
    let a = wait_for("SloBurnRate pending or firing", || {
        alerts(&c)
            .into_iter()
            .find(|a| a["labels"]["alertname"] == "SloBurnRate")
    });
    assert_eq!(a["labels"]["slo"], "web");
    assert_eq!(a["labels"]["severity"], "page");
    assert_eq!(a["labels"]["long_window"], "20s");
    let firing = wait_for("SloBurnRate firing", || {
        alerts(&c)
            .into_iter()
            .find(|a| a["labels"]["alertname"] == "SloBurnRate" && a["state"] == "firing")
    });
    // The firing alert reaches the notifier and a webhook, signed, in
    // Alertmanager's payload.
    let request = wait_for("the burn-rate alert at the webhook", || {
        burn_alert_at(&hook, "firing")
    });
    request.verify_signature(SECRET);
    let payload = request.json();
    assert_eq!(payload["receiver"], "hook");
    assert_eq!(payload["version"], "4");
    assert_eq!(payload["status"], "firing");
    assert_eq!(payload["groupLabels"]["slo"], "web");
    let s = slo(&c, "web");
    let states: Vec<&Value> = s["status"]["alerts"].as_array().unwrap().iter().collect();
    assert!(
        states.iter().any(|a| a["name"] == "SloBurnRate"
            && a["state"] == "firing"
            && a["severity"] == "page"),
        "{s}"
    );
    let (_, rules) = c.get_json("/api/v1/rules");
    assert!(
        rules["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["file"] == "<slo>" && g["name"] == "web"),
        "{rules}"
    );

    // The report over a past period equals the raw counters' ratio.
    let start = UnixMillis::now().0 - 4000;
    wait_for("more probes after the report's start", || {
        let end = UnixMillis::now().0 - 1500;
        (end - start > 5000).then_some(())
    });
    let end = UnixMillis::now().0 - 1500;
    let ok = "nines_probe_success_total{probe=\"web\"}";
    let bad = "nines_probe_failure_total{probe=\"web\"}";
    let good = counter_at(&c, ok, end) - counter_at(&c, ok, start);
    let total = good + counter_at(&c, bad, end) - counter_at(&c, bad, start);
    assert!(total >= 4.0, "{total} probes in the period");
    let path = format!(
        "/api/v1/slos/web/report?start={}.{:03}&end={}.{:03}",
        start / 1000,
        start % 1000,
        end / 1000,
        end % 1000
    );
    let (status, r) = c.get_json(&path);
    assert_eq!(status, 200, "{r}");
    let r = &r["data"];
    let availability = r["availability"].as_f64().unwrap();
    assert!(
        (availability - good / total).abs() < 1e-12,
        "report {availability} vs counters {good}/{total}: {r}"
    );
    assert_eq!(r["good_events"], good);
    assert_eq!(r["total_events"], total);
    // The server failed every other request: about half.
    let (s_ok, s_failed) = (
        answers.ok.load(Ordering::SeqCst) as f64,
        answers.failed.load(Ordering::SeqCst) as f64,
    );
    assert!((s_ok / (s_ok + s_failed) - 0.5).abs() < 0.1);
    assert!((availability - 0.5).abs() < 0.26, "{availability}");
    let minutes = (end - start) as f64 / 60_000.0;
    let downtime = r["downtime_minutes"].as_f64().unwrap();
    assert!(downtime > 0.0 && downtime <= minutes, "{r}");
    assert!(
        (r["budget_spent_ratio"].as_f64().unwrap() - (1.0 - availability) / 0.1).abs() < 1e-9,
        "{r}"
    );
    let incidents = r["incidents"].as_array().unwrap();
    assert!(!incidents.is_empty(), "{r}");
    assert!(
        incidents[0]["duration_seconds"].as_f64().unwrap() > 0.0,
        "{r}"
    );
    let (status, csv) = c.get_text(&format!("{path}&format=csv"));
    assert_eq!(status, 200);
    let mut lines = csv.lines();
    assert!(lines.next().unwrap().starts_with("row,slo,start,end"));
    let period: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(period[0], "period");
    assert_eq!(period[5].parse::<f64>().unwrap(), availability);
    assert_eq!(
        csv.lines().filter(|l| l.starts_with("incident,")).count(),
        incidents.len()
    );
    let (status, e) = c.get_json("/api/v1/slos/web/report?start=soon");
    assert_eq!(status, 400, "{e}");
    assert!(e["error"].as_str().unwrap().contains("start"), "{e}");
    let (status, _) = c.get_json("/api/v1/slos/nope/report?start=0");
    assert_eq!(status, 404);

    // Alert state survives a restart.
    let active_at = firing["activeAt"].clone();
    let mut c = c;
    c.kill();
    let c = Collector::start(&dir.path().join("c"), &args);
    let again = wait_for("SloBurnRate after the restart", || {
        alerts(&c)
            .into_iter()
            .find(|a| a["labels"]["alertname"] == "SloBurnRate" && a["state"] == "firing")
    });
    assert_eq!(again["activeAt"], active_at);

    // The service recovers: the alert resolves and the webhook is told.
    answers.healthy.store(true, Ordering::SeqCst);
    let request = wait_for_within(
        "the burn-rate alert resolved at the webhook",
        std::time::Duration::from_secs(90),
        || burn_alert_at(&hook, "resolved"),
    );
    request.verify_signature(SECRET);
    assert_eq!(request.json()["status"], "resolved");
}

const SECRET: &str = "slo-webhook-secret";

/// The first request to `hook` with web's SloBurnRate in `status`.
fn burn_alert_at(
    hook: &nines_tests::hook::Hook,
    status: &str,
) -> Option<nines_tests::hook::Received> {
    hook.all().into_iter().find(|r| {
        r.json()["alerts"].as_array().is_some_and(|a| {
            a.iter().any(|a| {
                a["labels"]["alertname"] == "SloBurnRate"
                    && a["labels"]["slo"] == "web"
                    && a["status"] == status
            })
        })
    })
}

fn host_slo(name: &str) -> Value {
    json!({
        "name": name,
        "objective": 99.5,
        "window": "calendar_month",
        "missing_data": "bad",
        "indicator": {"kind": "host", "instance": "h1"},
        "burn_alerts": [{"severity": "ticket", "long_window": "1h", "short_window": "5m", "factor": 3}],
    })
}

#[test]
fn slos_are_managed_through_the_api_and_bad_ones_are_refused_with_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("collector.toml");
    std::fs::write(&cfg, SLO_CONFIG).unwrap();
    let cfg_arg = cfg.to_str().unwrap().to_string();
    let args = ["--no-local-agent", "--config", &cfg_arg];
    let c = Collector::start(&dir.path().join("c"), &args);

    let (status, body) = post_json(&c, "POST", "/api/v1/slos", &host_slo("hosts"));
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["data"]["source"], "api");
    assert_eq!(body["data"]["window"], "calendar_month");

    // Missing data counts as bad: with no `up` at all the SLI is 0.
    let s = wait_for("the API SLO evaluated", || {
        let s = slo(&c, "hosts");
        s["status"]["sli"].as_f64().map(|_| s)
    });
    assert_eq!(s["status"]["sli"], 0.0, "{s}");
    assert_eq!(s["status"]["missing_ratio"], 1.0, "{s}");

    let bad_cases = [
        (json!({"objective": 100.0}), "objective"),
        (json!({"objective": 0}), "objective"),
        (json!({"window": "fortnight"}), "window"),
        (json!({"missing_data": "maybe"}), "missing_data"),
        (json!({"name": "hosts"}), "name"),
        (json!({"name": "web"}), "name"),
        (json!({"name": "bad name"}), "name"),
        (
            json!({"indicator": {"kind": "ratio", "good": "sum(rate(x[$window])", "total": "sum(rate(y[$window]))"}}),
            "indicator.good",
        ),
        (
            json!({"indicator": {"kind": "latency", "threshold_seconds": 0.3333}}),
            "indicator.threshold_seconds",
        ),
        (json!({"indicator": {"kind": "vibes"}}), "indicator.kind"),
        (
            json!({"burn_alerts": [{"severity": "page", "long_window": "1h", "short_window": "2h", "factor": 1}]}),
            "burn_alerts[0].short_window",
        ),
    ];
    for (patch, field) in bad_cases {
        let mut body = host_slo("other");
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, e) = post_json(&c, "POST", "/api/v1/slos", &body);
        assert_eq!(status, 400, "{patch}: {e}");
        assert_eq!(e["status"], "error");
        assert_eq!(e["field"], field, "{patch}: {e}");
    }
    let (status, e) = post_json(&c, "POST", "/api/v1/slos", &json!({"name": "x"}));
    assert_eq!(status, 400);
    assert!(e["error"].as_str().unwrap().contains("objective"), "{e}");
    // Nothing changed.
    let (_, list) = c.get_json("/api/v1/slos");
    let names: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["hosts", "web"]);

    // Replace, then the config one cannot be changed or deleted.
    let mut changed = host_slo("hosts");
    changed["objective"] = json!(99.0);
    let (status, body) = post_json(&c, "PUT", "/api/v1/slos/hosts", &changed);
    assert_eq!(status, 200, "{body}");
    assert_eq!(slo(&c, "hosts")["objective"], 99.0);
    let (status, _) = post_json(&c, "PUT", "/api/v1/slos/web", &host_slo("web"));
    assert_eq!(status, 409);
    let (status, _) = delete(&c, "/api/v1/slos/web");
    assert_eq!(status, 409);
    let (status, e) = c.get_json("/api/v1/slos/nope");
    assert_eq!((status, e["errorType"].clone()), (404, json!("not_found")));

    // The API SLO's alerts are rules; they and the SLO survive a restart.
    let (_, rules) = c.get_json("/api/v1/rules");
    assert!(
        rules["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["file"] == "<slo>" && g["name"] == "hosts")
    );
    let mut c = c;
    c.kill();
    let c = Collector::start(&dir.path().join("c"), &args);
    let s = slo(&c, "hosts");
    assert_eq!(
        (s["source"].clone(), s["objective"].clone()),
        (json!("api"), json!(99.0))
    );

    // What a GET answers can be sent back.
    let (status, body) = post_json(&c, "PUT", "/api/v1/slos/hosts", &s);
    assert_eq!(status, 200, "{body}");

    wait_for("the API SLO's series", || {
        value(&c, "nines_slo_objective_ratio{slo=\"hosts\"}")
    });
    let (status, _) = delete(&c, "/api/v1/slos/hosts");
    assert_eq!(status, 200);
    assert_eq!(c.get_json("/api/v1/slos/hosts").0, 404);
    // Its series end (stale markers), not linger for the lookback.
    wait_for("the deleted SLO's series to end", || {
        value(&c, "nines_slo_objective_ratio{slo=\"hosts\"}")
            .is_none()
            .then_some(())
    });
    let (_, rules) = c.get_json("/api/v1/rules");
    assert!(
        !rules["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["name"] == "hosts")
    );
}

#[test]
fn an_invalid_slo_in_the_config_stops_the_collector_naming_file_field_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[[slo]]\nname = \"web\"\nobjective = 99.9\nwindow = \"fortnight\"\n[slo.indicator]\nkind = \"probe\"\nprobe = \"web\"\n",
    )
    .unwrap();
    let (code, _out, err) = run(Command::new(bin("nines-collector"))
        .arg("serve")
        .arg("--no-local-agent")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&cfg));
    assert_eq!(code, 2, "{err}");
    for want in ["c.toml", "[[slo]] #1", "window", "fortnight"] {
        assert!(err.contains(want), "{want:?} missing from: {err}");
    }
}

#[test]
fn the_builtin_host_down_alert_fires_when_an_agent_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "evaluation_interval = \"1s\"\n[builtin_rules]\nhost_down_for = \"1s\"\n\
         [presence]\ndown_after_intervals = 3\ndown_after_min = \"2s\"\nwrite_interval = \"1s\"\n",
    )
    .unwrap();
    let c = Collector::start(
        &dir.path().join("c"),
        &["--no-local-agent", "--config", cfg.to_str().unwrap()],
    );
    let (_, rules) = c.get_json("/api/v1/rules");
    let builtin = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["file"] == "<builtin>")
        .cloned()
        .expect("built-in group");
    let names: Vec<&str> = builtin["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "HostDown",
            "ProbeFailing",
            "DiskPredictedFull",
            "CertificateExpiring",
            "AgentSpoolDropping",
            "AgentClockSkew"
        ]
    );
    // Two agents on one machine: no StatsD listener, own /metrics ports.
    let agent_cfg = dir.path().join("agent.toml");
    std::fs::write(&agent_cfg, "[statsd]\nenabled = false\n").unwrap();
    let agent = |instance: &str| {
        let listen = format!("127.0.0.1:{}", free_port());
        Agent::start(
            &c,
            &dir.path().join(instance),
            &[
                "--interval",
                "1s",
                "--instance",
                instance,
                "--listen",
                &listen,
                "--config",
                agent_cfg.to_str().unwrap(),
            ],
        )
    };
    let mut doomed = agent("h1");
    let _alive = agent("h2");
    let up = |i: &str| value(&c, &format!("up{{job=\"node\",instance=\"{i}\"}}"));
    wait_for("both agents up", || {
        (up("h1") == Some(1.0) && up("h2") == Some(1.0)).then_some(())
    });
    assert!(
        !alerts(&c)
            .iter()
            .any(|a| a["labels"]["alertname"] == "HostDown"),
        "no host is down yet"
    );
    doomed.kill();
    wait_for_within("h1 reported down", 2 * DEADLINE, || {
        alerts(&c).into_iter().find(|a| {
            a["labels"]["alertname"] == "HostDown"
                && a["labels"]["instance"] == "h1"
                && a["state"] == "firing"
        })
    });
    let a: Vec<Value> = alerts(&c)
        .into_iter()
        .filter(|a| a["labels"]["alertname"] == "HostDown")
        .collect();
    assert!(!a.iter().any(|a| a["labels"]["instance"] == "h2"), "{a:?}");
    let h1 = a.iter().find(|a| a["labels"]["instance"] == "h1").unwrap();
    assert_eq!(h1["labels"]["severity"], "page");
    assert_eq!(h1["annotations"]["summary"], "Host h1 is down");
}
