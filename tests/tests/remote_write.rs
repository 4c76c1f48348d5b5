//! End-to-end: Prometheus remote_write into the collector. A real
//! Prometheus 2.42 scrapes itself and remote-writes to nines; hand-made
//! bodies check every refusal.

use nines_collector::ingest::remote_write::{SeriesWrite, encode};
use nines_shared::{Label, Labels, UnixMillis};
use nines_tests::*;
use std::process::{Command, Stdio};

fn write(c: &Collector, body: Vec<u8>, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = http().post(format!("{}/api/v1/write", c.url)).body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().expect("remote write");
    (r.status().as_u16(), r.text().unwrap_or_default())
}

#[test]
fn remote_write_stores_samples_including_nan_and_refuses_bad_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(&dir.path().join("c"), &["--no-local-agent"]);
    let auth = format!("Bearer {}", c.token);
    let h = remote_write_headers(&auth);
    let t = UnixMillis::now().0 - 10_000;
    let good = vec![SeriesWrite {
        labels: Labels::new("rw_gauge", [("job", "rw")]),
        samples: vec![
            (t, 1.5),
            (t + 1000, f64::NAN),
            (t + 2000, f64::NEG_INFINITY),
        ],
    }];
    let (status, body) = write(&c, encode(&good), &h);
    assert_eq!(status, 204, "{body}");
    let q = c.query(
        "rw_gauge[1m]",
        Some(&format!("{}", (t + 3000) as f64 / 1000.0)),
    );
    let values: Vec<&str> = q["data"]["result"][0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_str().unwrap())
        .collect();
    assert_eq!(values, vec!["1.5", "NaN", "-Inf"]);

    let unsorted = vec![SeriesWrite {
        labels: Labels::from_wire(vec![
            Label {
                name: "__name__".into(),
                value: "rw_bad".into(),
            },
            Label {
                name: "z".into(),
                value: "1".into(),
            },
            Label {
                name: "a".into(),
                value: "2".into(),
            },
        ]),
        samples: vec![(t, 1.0)],
    }];
    let future = vec![SeriesWrite {
        labels: Labels::new("rw_bad", [("job", "rw")]),
        samples: vec![(t + 86_400_000 * 30, 1.0)],
    }];
    let bad_protobuf = snap::raw::Encoder::new()
        .compress_vec(b"\x0a\x05\x0a")
        .unwrap();
    let gzip: Vec<_> = h
        .iter()
        .map(|(k, v)| {
            if *k == "content-encoding" {
                (*k, "gzip")
            } else {
                (*k, *v)
            }
        })
        .collect();
    let no_auth: Vec<_> = h
        .iter()
        .filter(|(k, _)| *k != "authorization")
        .cloned()
        .collect();
    // (case, body, headers, expected status)
    type Case<'a> = (&'a str, Vec<u8>, Vec<(&'a str, &'a str)>, u16);
    let cases: Vec<Case> = vec![
        ("bad snappy", b"\x05garbage".to_vec(), h.clone(), 400),
        ("bad protobuf", bad_protobuf, h.clone(), 400),
        ("unsorted labels", encode(&unsorted), h.clone(), 400),
        ("future timestamp", encode(&future), h.clone(), 400),
        ("gzip encoding", encode(&good), gzip, 415),
        ("no token", encode(&good), no_auth, 401),
    ];
    for (name, body, headers, want) in cases {
        let (status, text) = write(&c, body, &headers);
        assert_eq!(status, want, "{name}: {text}");
        assert!(text.contains("\"error\""), "{name}: {text}");
    }
    let (_, series) = c.get_json("/api/v1/series?match[]=rw_bad");
    assert_eq!(series["data"], serde_json::json!([]), "{series}");
}

/// A real Prometheus remote-writes its own scraped metrics to nines.
#[test]
fn a_real_prometheus_remote_writes_into_nines() {
    let Some(prometheus) = peer("prometheus", "prometheus") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(&dir.path().join("c"), &["--no-local-agent"]);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
scrape_configs:\n  - job_name: prom\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n\
remote_write:\n  - url: {url}/api/v1/write\n    authorization:\n      credentials: {token}\n    \
queue_config:\n      batch_send_deadline: 1s\n    metadata_config:\n      send_interval: 1s\n",
            url = c.url,
            token = c.token
        ),
    )
    .unwrap();
    let mut child = Command::new(prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
        .spawn()
        .expect("start prometheus");
    let got = std::panic::catch_unwind(|| {
        let up = wait_for("up{job=\"prom\"} written by Prometheus", || {
            let q = c.query("up{job=\"prom\"}", None);
            let r = q["data"]["result"].as_array()?.first()?.clone();
            (r["value"][1] == "1").then_some(r)
        });
        // Prometheus also sends metric metadata.
        wait_for("metadata sent by Prometheus", || {
            let (_, m) = c.get_json("/api/v1/metadata?metric=prometheus_build_info");
            (m["data"]["prometheus_build_info"][0]["type"] == "gauge").then_some(())
        });
        up
    });
    let _ = child.kill();
    let _ = child.wait();
    let got = got.unwrap_or_else(|_| {
        panic!(
            "prometheus log:\n{}",
            std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
        )
    });
    assert_eq!(got["metric"]["instance"], format!("127.0.0.1:{port}"));
    assert!(c.metric("nines_ingest_samples_total", "") > 0.0);
}
