//! End-to-end notifications: the real collector evaluates a rule file over
//! samples pushed by remote_write and notifies a real webhook receiver (a
//! small HTTP server in this test on 127.0.0.1) with Alertmanager's v4
//! payload signed with HMAC-SHA256, then the resolution; a receiver that is
//! down gets the notification once it is back, across a SIGKILL of the
//! collector, exactly once; a receiver that hangs, fails or answers garbage
//! is retried and given up visibly; silences and inhibition keep alerts
//! out; two real Alertmanagers each hold an HA pair's alerts once (checked
//! with amtool); bad settings and bad silences are refused.

use nines_collector::ingest::remote_write::{SeriesWrite, encode};
use nines_shared::{Labels, UnixMillis};
use nines_tests::hook::{Hook, Received};
use nines_tests::*;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio_rustls::rustls;

const RULES: &str = r#"groups:
  - name: notify
    interval: 1s
    rules:
      - alert: NotifyHot
        expr: notify_load > 10
        labels:
          severity: critical
        annotations:
          summary: "{{ $labels.instance }} is hot"
      - alert: NotifyWarm
        expr: notify_load > 1
        labels:
          severity: warning
        annotations:
          summary: "{{ $labels.instance }} is warm"
"#;

const SECRET: &str = "s3cret-key";

fn push(c: &Collector, series: &[(&str, f64)]) {
    let writes: Vec<SeriesWrite> = series
        .iter()
        .map(|(instance, v)| SeriesWrite {
            labels: Labels::new("notify_load", [("job", "web"), ("instance", *instance)]),
            samples: vec![(UnixMillis::now().0, *v)],
        })
        .collect();
    let r = http()
        .post(format!("{}/api/v1/write", c.url))
        .header("authorization", format!("Bearer {}", c.token))
        .header("content-encoding", "snappy")
        .header("content-type", "application/x-protobuf")
        .header("x-prometheus-remote-write-version", "0.1.0")
        .body(encode(&writes))
        .send()
        .expect("remote write");
    assert_eq!(r.status().as_u16(), 204);
}

fn write_config(dir: &Path, receivers: &str) -> PathBuf {
    std::fs::write(dir.join("rules.yml"), RULES).unwrap();
    let cfg = dir.join("collector.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"rule_files = ["rules.yml"]
evaluation_interval = "1s"
{receivers}
[notify]
backoff_min = "100ms"
backoff_max = "500ms"
"#
        ),
    )
    .unwrap();
    cfg
}

fn hook_receiver(port: u16) -> String {
    format!(
        r#"[[receiver]]
name = "hook"
webhook = {{ url = "http://127.0.0.1:{port}/hook", secret = "{SECRET}", headers = {{ "X-Test" = "yes" }}, timeout = "2s" }}
[route]
receiver = "hook"
group_by = ["instance"]
group_wait = "0s"
group_interval = "1s"
repeat_interval = "1h"
"#
    )
}

fn start(dir: &Path, cfg: &Path) -> Collector {
    Collector::start(
        &dir.join("data"),
        &["--no-local-agent", "--config", cfg.to_str().unwrap()],
    )
}

fn notifications(c: &Collector) -> Vec<Value> {
    let (status, body) = c.get_json("/api/v1/notifications?limit=1000");
    assert_eq!(status, 200, "{body}");
    body["data"].as_array().cloned().unwrap_or_default()
}

fn verify_sig(r: &Received) {
    r.verify_signature(SECRET);
}

#[test]
fn a_webhook_gets_a_signed_firing_notification_then_the_resolution() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let hook = Hook::start(port);
    let cfg = write_config(dir.path(), &hook_receiver(port));
    let c = start(dir.path(), &cfg);

    push(&c, &[("w1", 5.0)]);
    let firing = wait_for("a firing notification", || {
        hook.all()
            .into_iter()
            .find(|r| r.json()["status"] == "firing")
    });
    verify_sig(&firing);
    assert_eq!(firing.header("X-Test"), Some("yes"));
    assert_eq!(firing.header("content-type"), Some("application/json"));
    let p = firing.json();
    assert_eq!(p["version"], "4");
    assert_eq!(p["receiver"], "hook");
    assert_eq!(p["groupKey"], r#"{}:{instance="w1"}"#);
    assert_eq!(p["groupLabels"], json!({"instance": "w1"}));
    assert_eq!(p["truncatedAlerts"], 0);
    assert_eq!(p["externalURL"], c.url.as_str());
    assert_eq!(p["commonLabels"]["alertname"], "NotifyWarm");
    assert_eq!(p["commonAnnotations"]["summary"], "w1 is warm");
    let a = &p["alerts"][0];
    assert_eq!(p["alerts"].as_array().unwrap().len(), 1);
    assert_eq!(a["status"], "firing");
    assert_eq!(
        a["labels"],
        json!({"alertname": "NotifyWarm", "instance": "w1", "job": "web", "severity": "warning"})
    );
    assert_eq!(a["endsAt"], "0001-01-01T00:00:00Z");
    assert!(
        a["generatorURL"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}/graph?g0.expr=notify_load", c.url)),
        "{a}"
    );
    assert_eq!(a["fingerprint"].as_str().unwrap().len(), 16);
    let starts_at = a["startsAt"].as_str().unwrap().to_string();

    push(&c, &[("w1", 0.0)]);
    let resolved = wait_for("a resolved notification", || {
        hook.all()
            .into_iter()
            .find(|r| r.json()["status"] == "resolved")
    });
    verify_sig(&resolved);
    let a = &resolved.json()["alerts"][0];
    assert_eq!(a["status"], "resolved");
    assert_eq!(a["startsAt"], starts_at.as_str());
    assert_ne!(a["endsAt"], "0001-01-01T00:00:00Z");

    let rows = wait_for("both notifications delivered in the outbox", || {
        let rows = notifications(&c);
        (rows.len() == 2 && rows.iter().all(|r| r["status"] == "delivered")).then_some(rows)
    });
    // Newest first.
    assert_eq!(
        (rows[0]["firing"].clone(), rows[0]["resolved"].clone()),
        (json!(0), json!(1))
    );
    assert_eq!(
        (rows[1]["firing"].clone(), rows[1]["resolved"].clone()),
        (json!(1), json!(0))
    );
    assert_eq!(rows[1]["receiver"], "hook");
    assert_eq!(rows[1]["attempts"], 1);
    assert!(rows[1]["delivered_at"].is_string());
    assert!(
        c.metric(
            "nines_notifications_total",
            r#"receiver="hook",result="delivered""#
        ) >= 2.0
    );
}

#[test]
fn a_receiver_that_is_down_gets_the_notification_once_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = write_config(dir.path(), &hook_receiver(port));
    let mut c = start(dir.path(), &cfg);
    push(&c, &[("w1", 5.0)]);
    let row = wait_for("a failed attempt in the outbox", || {
        notifications(&c)
            .into_iter()
            .find(|r| r["attempts"].as_i64() >= Some(2))
    });
    assert_eq!(row["status"], "pending");
    assert!(!row["last_error"].as_str().unwrap().is_empty(), "{row}");
    assert!(row["next_attempt_at"].is_string());
    assert!(
        c.metric(
            "nines_notifications_total",
            r#"receiver="hook",result="retry""#
        ) >= 2.0
    );

    // A silence (for another instance) is kept across the restart too.
    let r = http()
        .post(format!("{}/api/v1/silences", c.url))
        .header("content-type", "application/json")
        .body(
            json!({"matchers": [{"name": "instance", "value": "w9"}],
                "endsAt": "2099-01-01T00:00:00Z", "createdBy": "t", "comment": "kept"})
            .to_string(),
        )
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    c.kill();
    let hook = Hook::start(port);
    let c = start(dir.path(), &cfg);
    let (_, list) = c.get_json("/api/v1/silences");
    assert_eq!(list["data"][0]["comment"], "kept", "{list}");
    assert_eq!(list["data"][0]["status"]["state"], "active");
    wait_for("the notification after the restart", || {
        (!hook.all().is_empty()).then_some(())
    });
    let rows = wait_for("the row delivered", || {
        let rows = notifications(&c);
        rows.iter()
            .all(|r| r["status"] == "delivered")
            .then_some(rows)
    });
    assert_eq!(rows.len(), 1, "{rows:?}");
    // Later evaluations (the alert is still firing) add nothing.
    let key = ";notify\"";
    let before = c.metric("nines_rule_evaluations_total", key);
    wait_for("three more group evaluations", || {
        (c.metric("nines_rule_evaluations_total", key) >= before + 6.0).then_some(())
    });
    assert_eq!(hook.all().len(), 1, "delivered once");
    assert_eq!(notifications(&c).len(), 1);
    assert_eq!(hook.all()[0].json()["status"], "firing");
}

#[test]
fn silences_and_inhibition_keep_alerts_out_and_bad_silences_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let hook = Hook::start(port);
    let cfg = write_config(dir.path(), &hook_receiver(port));
    let c = start(dir.path(), &cfg);

    let post = |body: Value| {
        let r = http()
            .post(format!("{}/api/v1/silences", c.url))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .expect("POST silence");
        let status = r.status().as_u16();
        (
            status,
            serde_json::from_str::<Value>(&r.text().unwrap()).expect("JSON"),
        )
    };
    let ends = "2099-01-01T00:00:00Z";
    for (body, field) in [
        (
            json!({"matchers": [], "endsAt": ends, "createdBy": "t", "comment": "c"}),
            "matchers",
        ),
        (
            json!({"matchers": [{"name": "instance", "value": "(", "isRegex": true}], "endsAt": ends, "createdBy": "t", "comment": "c"}),
            "matchers[0]",
        ),
        (
            json!({"matchers": [{"name": "instance", "value": "w3"}], "endsAt": "soon", "createdBy": "t", "comment": "c"}),
            "endsAt",
        ),
        (
            json!({"matchers": [{"name": "instance", "value": "w3"}], "endsAt": ends, "comment": "c"}),
            "createdBy",
        ),
    ] {
        let (status, resp) = post(body);
        assert_eq!(status, 400, "{resp}");
        assert_eq!(resp["errorType"], "bad_data");
        assert!(resp["error"].as_str().unwrap().starts_with(field), "{resp}");
    }
    let (_, list) = c.get_json("/api/v1/silences");
    assert_eq!(list["data"], json!([]), "refused silences change nothing");

    let (status, resp) = post(json!({
        "matchers": [{"name": "instance", "value": "w3", "isRegex": false, "isEqual": true}],
        "endsAt": ends, "createdBy": "test", "comment": "maintenance"
    }));
    assert_eq!(status, 200, "{resp}");
    let id = resp["data"]["silenceID"].as_str().unwrap().to_string();
    let (_, list) = c.get_json("/api/v1/silences");
    let s = &list["data"][0];
    assert_eq!(s["id"], id.as_str());
    assert_eq!(s["status"]["state"], "active");
    assert_eq!(s["createdBy"], "test");
    assert_eq!(s["matchers"][0]["name"], "instance");

    // w1: critical and warning (the warning is inhibited); w2: warning;
    // w3: warning, silenced. All three are evaluated together, so their
    // notifications are queued together.
    push(&c, &[("w1", 20.0), ("w2", 5.0), ("w3", 5.0)]);
    let got = wait_for("notifications for w1 and w2", || {
        let all = hook.all();
        (all.len() >= 2).then_some(all)
    });
    let mut by_instance: Vec<(String, Vec<String>)> = got
        .iter()
        .map(|r| {
            let p = r.json();
            let names = p["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["labels"]["alertname"].as_str().unwrap().to_string())
                .collect();
            (
                p["groupLabels"]["instance"].as_str().unwrap().to_string(),
                names,
            )
        })
        .collect();
    by_instance.sort();
    assert_eq!(
        by_instance,
        [
            ("w1".to_string(), vec!["NotifyHot".to_string()]),
            ("w2".to_string(), vec!["NotifyWarm".to_string()])
        ]
    );
    let rows = notifications(&c);
    assert_eq!(
        rows.len(),
        2,
        "nothing queued for the silenced w3: {rows:?}"
    );
    assert!(
        rows.iter()
            .all(|r| !r["group_key"].as_str().unwrap().contains("w3"))
    );

    // Expiring the silence lets w3 through.
    let r = http()
        .delete(format!("{}/api/v1/silences/{id}", c.url))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (_, list) = c.get_json("/api/v1/silences");
    assert_eq!(list["data"][0]["status"]["state"], "expired");
    push(&c, &[("w1", 20.0), ("w2", 5.0), ("w3", 5.0)]);
    wait_for("w3 notified once its silence expired", || {
        hook.all()
            .iter()
            .any(|r| r.json()["groupLabels"]["instance"] == "w3")
            .then_some(())
    });
    let r = http()
        .delete(format!("{}/api/v1/silences/nope", c.url))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
}

#[test]
fn bad_notification_settings_stop_the_collector_naming_file_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    for (receivers, key, reason) in [
        (
            hook_receiver(1).replace(
                "receiver = \"hook\"\ngroup_by",
                "receiver = \"nobody\"\ngroup_by",
            ),
            "route.receiver",
            "unknown receiver \"nobody\"",
        ),
        (
            format!(
                "{}[[route.routes]]\nmatchers = ['severity=~\"(\"']\n",
                hook_receiver(1)
            ),
            "route.matchers",
            "bad regex",
        ),
        (
            hook_receiver(1).replace("http://127.0.0.1:1/hook", "127.0.0.1 hook"),
            "receiver.webhook.url",
            "not a URL",
        ),
        (
            hook_receiver(1).replace("group_interval = \"1s\"", "group_interval = \"often\""),
            "route.group_interval",
            "often",
        ),
        (
            hook_receiver(1)
                .replace("http://127.0.0.1:1/hook", "https://127.0.0.1:1/hook")
                .replace(
                    "timeout = \"2s\"",
                    "timeout = \"2s\", ca_file = \"missing-ca.pem\"",
                ),
            "receiver.webhook.ca_file",
            "missing-ca.pem",
        ),
        (
            hook_receiver(1)
                .replace("http://127.0.0.1:1/hook", "https://127.0.0.1:1/hook")
                .replace(
                    "timeout = \"2s\"",
                    "timeout = \"2s\", ca_file = \"rules.yml\"",
                ),
            "receiver.webhook.ca_file",
            "holds no PEM CERTIFICATE block",
        ),
    ] {
        let cfg = write_config(dir.path(), &receivers);
        let out = Command::new(bin("nines-collector"))
            .args([
                "serve",
                "--no-local-agent",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(dir.path().join("data"))
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{receivers}\n{err}");
        assert!(err.contains(&cfg.display().to_string()), "{err}");
        assert!(err.contains(key), "{err}");
        assert!(err.contains(reason), "{err}");
        if key.starts_with("receiver.") {
            assert!(err.contains(r#"[[receiver]] "hook""#), "{err}");
        }
    }
}

/// A certificate for 127.0.0.1 signed by a new CA: (CA as PEM, leaf, key).
fn test_ca_and_leaf() -> (
    String,
    rustls::pki_types::CertificateDer<'static>,
    rustls::pki_types::PrivateKeyDer<'static>,
) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf.signed_by(&key, &issuer).unwrap();
    (
        ca.pem(),
        leaf.der().clone(),
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
}

/// A TLS front for a plain HTTP server on 127.0.0.1:`backend`: each
/// connection's one request is decrypted and passed on, and the answer
/// passed back. Returns its port and how many handshakes completed.
fn tls_front(
    backend: u16,
    leaf: rustls::pki_types::CertificateDer<'static>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> (u16, Arc<AtomicUsize>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf], key)
            .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let done = handshakes.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let (config, done) = (config.clone(), done.clone());
            std::thread::spawn(move || {
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, stream);
                let mut req = Vec::new();
                let mut chunk = [0u8; 8192];
                let mut need = None;
                while need.is_none_or(|n| req.len() < n) {
                    match tls.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&chunk[..n]),
                    }
                    if need.is_none()
                        && let Some(i) = req.windows(4).position(|w| w == b"\r\n\r\n")
                    {
                        let head = String::from_utf8_lossy(&req[..i]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        need = Some(i + 4 + len);
                    }
                }
                done.fetch_add(1, Ordering::SeqCst);
                let mut back = std::net::TcpStream::connect(("127.0.0.1", backend)).unwrap();
                back.write_all(&req).unwrap();
                let mut answer = Vec::new();
                let _ = back.read_to_end(&mut answer);
                let _ = tls.write_all(&answer);
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
        }
    });
    (port, handshakes)
}

#[test]
fn an_https_webhook_is_verified_against_its_ca_file_and_retried_without_it() {
    let (ca_pem, leaf, key) = test_ca_and_leaf();

    // With the CA in ca_file (relative to the config file): delivered,
    // signed, through TLS.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &ca_pem).unwrap();
    let hook = Hook::start(0);
    let (tls_port, handshakes) = tls_front(hook.port, leaf.clone(), key.clone_key());
    let receivers = hook_receiver(1)
        .replace(
            "http://127.0.0.1:1/hook",
            &format!("https://127.0.0.1:{tls_port}/hook"),
        )
        .replace("timeout = \"2s\"", "timeout = \"2s\", ca_file = \"ca.pem\"");
    let cfg = write_config(dir.path(), &receivers);
    let c = start(dir.path(), &cfg);
    push(&c, &[("w1", 5.0)]);
    let firing = wait_for("a firing notification over https", || {
        hook.all()
            .into_iter()
            .find(|r| r.json()["status"] == "firing")
    });
    verify_sig(&firing);
    assert_eq!(firing.header("X-Test"), Some("yes"));
    assert!(handshakes.load(Ordering::SeqCst) >= 1);
    let row = wait_for("the notification marked delivered", || {
        notifications(&c)
            .into_iter()
            .find(|r| r["status"] == "delivered")
    });
    assert_eq!(row["receiver"], "hook");
    drop(c);

    // Without it the system's roots do not know the CA: the certificate is
    // refused, the error is shown, and the notification stays queued.
    let dir = tempfile::tempdir().unwrap();
    let hook = Hook::start(0);
    let (tls_port, handshakes) = tls_front(hook.port, leaf, key);
    let receivers = hook_receiver(1).replace(
        "http://127.0.0.1:1/hook",
        &format!("https://127.0.0.1:{tls_port}/hook"),
    );
    let cfg = write_config(dir.path(), &receivers);
    let c = start(dir.path(), &cfg);
    push(&c, &[("w1", 5.0)]);
    let row = wait_for("failed attempts over https in the outbox", || {
        notifications(&c)
            .into_iter()
            .find(|r| r["attempts"].as_i64() >= Some(2))
    });
    assert_eq!(row["status"], "pending", "{row}");
    assert!(row["next_attempt_at"].is_string(), "{row}");
    let err = row["last_error"].as_str().unwrap();
    assert!(err.contains("certificate"), "{err}");
    assert!(
        c.metric(
            "nines_notifications_total",
            r#"receiver="hook",result="retry""#
        ) >= 2.0
    );
    assert_eq!(handshakes.load(Ordering::SeqCst), 0);
    assert!(hook.all().is_empty());
}

/// A real Alertmanager, killed when dropped.
struct Alertmanager(Child);

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn two_real_alertmanagers_receive_the_alerts_of_an_ha_pair_once() {
    let Some(am) = peer("prometheus-alertmanager", "prometheus-alertmanager") else {
        return;
    };
    let Some(amtool) = peer("amtool", "prometheus-alertmanager") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let am_cfg = dir.path().join("alertmanager.yml");
    std::fs::write(
        &am_cfg,
        "route:\n  receiver: blackhole\nreceivers:\n  - name: blackhole\n",
    )
    .unwrap();
    let mut ams = Vec::new();
    let mut urls = Vec::new();
    for i in 0..2 {
        let port = free_port();
        ams.push(Alertmanager(
            Command::new(&am)
                .arg(format!("--config.file={}", am_cfg.display()))
                .arg(format!(
                    "--storage.path={}",
                    dir.path().join(format!("am-data-{i}")).display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--cluster.listen-address=")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start alertmanager"),
        ));
        let url = format!("http://127.0.0.1:{port}");
        wait_for("Alertmanager to answer", || {
            http()
                .get(format!("{url}/api/v2/status"))
                .send()
                .ok()
                .filter(|r| r.status().is_success())
        });
        urls.push(url);
    }
    let receivers = format!(
        r#"[[receiver]]
name = "am"
alertmanager = {{ urls = ["{}", "{}"], resend_delay = "1s" }}
[route]
receiver = "am"
"#,
        urls[0], urls[1]
    );
    // An HA pair: two collectors with the same rules and the same data.
    let pair: Vec<Collector> = ["a", "b"]
        .iter()
        .map(|n| {
            let d = dir.path().join(n);
            std::fs::create_dir_all(&d).unwrap();
            let cfg = write_config(&d, &receivers);
            start(&d, &cfg)
        })
        .collect();
    for c in &pair {
        push(c, &[("w1", 20.0)]);
    }
    for url in &urls {
        let out = wait_for("amtool to list both alerts", || {
            let (code, out, _) = run(Command::new(&amtool)
                .arg("alert")
                .arg("query")
                .arg(format!("--alertmanager.url={url}")));
            (code == 0 && out.contains("NotifyHot") && out.contains("NotifyWarm")).then_some(out)
        });
        assert!(out.contains("w1 is hot"), "{out}");
        // Both collectors sent it; the Alertmanager holds it once.
        wait_for("both collectors to have delivered to it", || {
            pair.iter()
                .all(|c| {
                    notifications(c).iter().any(|r| {
                        r["status"] == "delivered"
                            && r["target"].as_str().unwrap().starts_with(url.as_str())
                    })
                })
                .then_some(())
        });
        let (code, out, err) = run(Command::new(&amtool)
            .args(["alert", "query", "-o", "json", "alertname=NotifyHot"])
            .arg(format!("--alertmanager.url={url}")));
        assert_eq!(code, 0, "{err}");
        let alerts: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(alerts.as_array().unwrap().len(), 1, "{alerts}");
        let a = &alerts[0];
        assert_eq!(a["labels"]["instance"], "w1");
        assert_eq!(a["labels"]["severity"], "critical");
        assert_eq!(a["status"]["state"], "active");
        assert!(
            a["generatorURL"]
                .as_str()
                .unwrap()
                .contains("/graph?g0.expr=")
        );
    }
    // Re-sent while firing: more than one delivery per Alertmanager.
    wait_for("a re-send", || {
        let rows = notifications(&pair[0]);
        (rows.iter().filter(|r| r["status"] == "delivered").count() >= 4).then_some(())
    });
}

/// A receiver that never answers well: it hangs past the timeout, then
/// answers 500, then garbage, in turn.
fn start_bad_receiver() -> (u16, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    let count: Arc<Mutex<usize>> = Arc::default();
    let n = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let turn = {
                let mut n = n.lock().unwrap();
                *n += 1;
                *n % 3
            };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                match turn {
                    // Hang: answer nothing until the collector gives up
                    // and closes the connection.
                    1 => {
                        let _ = std::io::copy(&mut stream, &mut std::io::sink());
                    }
                    2 => {
                        let _ = stream.write_all(
                            b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\nconnection: close\r\n\r\noops",
                        );
                    }
                    _ => {
                        let _ = stream.write_all(b"\x00\x01 this is not HTTP\r\n\r\n");
                    }
                }
            });
        }
    });
    (port, count)
}

#[test]
fn a_broken_receiver_is_retried_then_given_up_visibly_without_holding_up_others() {
    let dir = tempfile::tempdir().unwrap();
    let (bad_port, bad_hits) = start_bad_receiver();
    let good_port = free_port();
    let good = Hook::start(good_port);
    std::fs::write(dir.path().join("rules.yml"), RULES).unwrap();
    let cfg = dir.path().join("collector.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"rule_files = ["rules.yml"]
evaluation_interval = "1s"
[[receiver]]
name = "bad"
webhook = {{ url = "http://127.0.0.1:{bad_port}/", timeout = "300ms" }}
[[receiver]]
name = "good"
webhook = {{ url = "http://127.0.0.1:{good_port}/" }}
[route]
receiver = "good"
group_wait = "0s"
group_interval = "1s"
[[route.routes]]
matchers = ['alertname=~"Notify.*"']
receiver = "bad"
continue = true
[[route.routes]]
matchers = ['alertname=~"Notify.*"']
receiver = "good"
[notify]
max_age = "3s"
backoff_min = "100ms"
backoff_max = "400ms"
"#
        ),
    )
    .unwrap();
    let c = start(dir.path(), &cfg);
    push(&c, &[("w1", 5.0)]);
    // The healthy receiver is not held up by the broken one.
    wait_for("the good receiver's notification", || {
        (!good.all().is_empty()).then_some(())
    });
    let row = wait_for("the bad receiver's notification given up", || {
        notifications(&c)
            .into_iter()
            .find(|r| r["receiver"] == "bad" && r["status"] == "failed")
    });
    assert!(row["attempts"].as_i64().unwrap() >= 3, "{row}");
    assert!(
        row["last_error"]
            .as_str()
            .unwrap()
            .starts_with("gave up after"),
        "{row}"
    );
    assert!(row["delivered_at"].is_null());
    assert!(*bad_hits.lock().unwrap() >= 3);
    assert_eq!(
        c.metric(
            "nines_notifications_total",
            r#"receiver="bad",result="failed""#
        ),
        1.0
    );
    assert!(
        c.metric(
            "nines_notifications_total",
            r#"receiver="bad",result="retry""#
        ) >= 2.0
    );
    // Rule evaluation went on meanwhile.
    let before = c.metric("nines_rule_evaluations_total", ";notify\"");
    wait_for("more evaluations", || {
        (c.metric("nines_rule_evaluations_total", ";notify\"") > before).then_some(())
    });
    assert_eq!(c.metric("nines_notify_outbox_pending", ""), 0.0);
}
