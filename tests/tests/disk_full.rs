//! End-to-end: the collector's data dir on a small file system that fills
//! up. Pushes are refused with 503, a reason naming the full disk and the
//! file, and a Retry-After; queries keep answering; nothing refused is
//! written and nothing acknowledged is lost; once space is freed pushes are
//! accepted again, and a restart finds exactly the acknowledged samples.
//!
//! The file system is a tmpfs the test mounts (root is needed). Where it
//! cannot mount, the test says so and skips, except under CI, where it
//! fails.

use nines_collector::ingest::remote_write::{SeriesWrite, encode};
use nines_shared::{Labels, UnixMillis};
use nines_tests::*;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Series per push and samples per series.
const SERIES: usize = 40;
const SAMPLES: usize = 10;

/// A tmpfs mounted for the test, unmounted when dropped (also when the
/// test fails).
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, megabytes: usize) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs {
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Something still holds a file: detach it now, freed when closed.
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// Fills the file system holding `path` with one file, to the last block.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).expect("ballast file");
    for size in [1 << 20, 4096, 512] {
        let block = vec![0xa5u8; size];
        while f.write_all(&block).and_then(|_| f.sync_data()).is_ok() {}
    }
}

/// Push `n`: its own series, so what a push wrote can be told apart.
fn push_body(n: usize, t0: i64) -> Vec<u8> {
    let pad = "p".repeat(120);
    let series: Vec<SeriesWrite> = (0..SERIES)
        .map(|j| SeriesWrite {
            labels: Labels::new(
                "disk_full_probe",
                [
                    ("push", n.to_string()),
                    ("n", j.to_string()),
                    ("pad", pad.clone()),
                ],
            ),
            samples: (0..SAMPLES)
                .map(|k| (t0 + k as i64 * 1000, (n * 1000 + j + k) as f64))
                .collect(),
        })
        .collect();
    encode(&series)
}

/// What one push got back.
struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: String,
}

fn push(c: &Collector, n: usize, t0: i64) -> Answer {
    let auth = format!("Bearer {}", c.token);
    let mut req = http()
        .post(format!("{}/api/v1/write", c.url))
        .body(push_body(n, t0));
    for (k, v) in remote_write_headers(&auth) {
        req = req.header(k, v);
    }
    let r = req.send().expect("remote write");
    Answer {
        status: r.status().as_u16(),
        retry_after: r
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body: r.text().unwrap_or_default(),
    }
}

/// Samples stored per push, from a query covering every push's samples.
fn samples_per_push(c: &Collector, t0: i64) -> BTreeMap<usize, usize> {
    let at = format!("{}", (t0 + SAMPLES as i64 * 1000) as f64 / 1000.0);
    let q = c.query(
        "sum by (push) (count_over_time(disk_full_probe[10m]))",
        Some(&at),
    );
    assert_eq!(q["status"], "success", "{q}");
    q["data"]["result"]
        .as_array()
        .expect("vector")
        .iter()
        .map(|r| {
            let push: usize = r["metric"]["push"].as_str().unwrap().parse().unwrap();
            let n: f64 = r["value"][1].as_str().unwrap().parse().unwrap();
            (push, n as usize)
        })
        .collect()
}

fn expected(accepted: &[usize]) -> BTreeMap<usize, usize> {
    accepted.iter().map(|&n| (n, SERIES * SAMPLES)).collect()
}

#[test]
fn a_full_disk_refuses_pushes_with_503_loses_nothing_acknowledged_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("fs");
    let _fs = match Tmpfs::mount(&data, 24) {
        Ok(m) => m,
        Err(e) => {
            let msg = format!("cannot mount a tmpfs (root is needed): {e}");
            assert!(!in_ci(), "{msg}");
            eprintln!("SKIPPED: {msg}");
            return;
        }
    };
    let mut c = Collector::start(&data, &["--no-local-agent"]);
    let t0 = UnixMillis::now().0 - 120_000;
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    let mut next = 0usize;
    for _ in 0..10 {
        let a = push(&c, next, t0);
        assert_eq!(a.status, 204, "{}", a.body);
        accepted.push(next);
        next += 1;
    }

    let ballast = data.join("ballast");
    fill(&ballast);
    // Push until the disk refuses, then a few more: each refused alike.
    while refused.len() < 6 {
        assert!(
            next < 5000,
            "5000 pushes onto a full disk were all accepted"
        );
        let a = push(&c, next, t0);
        match a.status {
            204 => accepted.push(next),
            503 => {
                let v: serde_json::Value = serde_json::from_str(&a.body).expect("JSON reason");
                assert_eq!(v["status"], "error", "{v}");
                let reason = v["error"].as_str().unwrap_or_default();
                assert!(reason.contains("disk full"), "{reason}");
                assert!(
                    reason.contains(&data.display().to_string()),
                    "the reason names the file: {reason}"
                );
                assert!(
                    a.retry_after
                        .as_deref()
                        .is_some_and(|s| s.parse::<u64>().is_ok_and(|n| n > 0)),
                    "Retry-After: {:?}",
                    a.retry_after
                );
                refused.push(next);
            }
            other => panic!("push {next}: {other} {}", a.body),
        }
        next += 1;
    }
    assert!(
        c.metric("nines_ingest_rejected_total", "reason=\"disk_full\"") >= refused.len() as f64,
        "refusals counted"
    );
    // Queries answer, and every acknowledged push is readable whole.
    assert_eq!(samples_per_push(&c, t0), expected(&accepted));
    let (status, _) = c.get_json("/api/v1/labels");
    assert_eq!(status, 200);
    // Logged once for the episode, not once per push.
    let logged = c.stderr().matches("disk full: writes are refused").count();
    assert!(
        logged >= 1 && logged < refused.len(),
        "{logged} log lines for {} refusals",
        refused.len()
    );

    // Space comes back: pushes are accepted again, at once.
    std::fs::remove_file(&ballast).unwrap();
    let a = push(&c, next, t0);
    assert_eq!(a.status, 204, "after space was freed: {}", a.body);
    accepted.push(next);
    next += 1;
    for _ in 0..5 {
        let a = push(&c, next, t0);
        assert_eq!(a.status, 204, "{}", a.body);
        accepted.push(next);
        next += 1;
    }
    assert!(
        c.stderr()
            .contains("disk space available again: writes are accepted")
    );
    assert_eq!(samples_per_push(&c, t0), expected(&accepted));

    // A crash now: every acknowledged sample comes back, no refused one.
    c.kill();
    let c = Collector::start(&data, &["--no-local-agent"]);
    assert_eq!(samples_per_push(&c, t0), expected(&accepted));
    for n in &refused {
        let (status, v) = c.get_json(&format!(
            "/api/v1/series?match[]=disk_full_probe%7Bpush%3D%22{n}%22%7D"
        ));
        assert_eq!(status, 200);
        assert_eq!(v["data"], serde_json::json!([]), "refused push {n}: {v}");
    }
}
