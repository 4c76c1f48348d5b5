//! Alert latency with nines' defaults: the time from a probe target
//! starting to fail to the probe-failing webhook arriving, and from a
//! host's agent stopping to the host-down webhook arriving.
//!
//! Real binaries on loopback: a collector whose only settings are one
//! webhook receiver and a route to it (everything else default: built-in
//! rules, evaluation interval, presence, grouping), an agent with its
//! default interval and one HTTP probe with its default interval against a
//! small HTTP service in this process, and a webhook receiver in this
//! process that notes when each notification arrives.
//!
//! Run: `cargo build --release --bins -p nines-collector -p nines-agent`
//! then `cargo bench -p nines-tests --bench alert_latency` (same
//! CARGO_TARGET_DIR). It takes a few minutes: the defaults are what is
//! measured.

use nines_tests::hook::{Hook, Received};
use nines_tests::{Agent, Collector, value, wait_for_within};
use std::time::{Duration, Instant};

const INSTANCE: &str = "latency-host";
const PROBE: &str = "latency-target";
/// Longest either alert may take before the bench gives up.
const GIVE_UP: Duration = Duration::from_secs(900);

/// The first firing notification after `since` with an alert `pick` accepts.
fn firing_after(
    hook: &Hook,
    since: Instant,
    pick: &dyn Fn(&serde_json::Value) -> bool,
) -> Option<Received> {
    hook.all().into_iter().find(|r| {
        r.at >= since && {
            let j = r.json();
            j["status"] == "firing"
                && j["alerts"].as_array().is_some_and(|a| {
                    a.iter()
                        .any(|x| x["status"] == "firing" && pick(&x["labels"]))
                })
        }
    })
}

fn alert_names(r: &Received) -> String {
    let j = r.json();
    j["alerts"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x["labels"]["alertname"].as_str().map(str::to_string))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hook = Hook::start(0);
    let target = Hook::start(0);

    let cfg = dir.path().join("collector.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[receiver]]\nname = \"bench\"\nwebhook = {{ url = \"{}/alerts\" }}\n\n[route]\nreceiver = \"bench\"\n",
            hook.url()
        ),
    )
    .expect("collector config");
    let c = Collector::start(
        &dir.path().join("collector"),
        &["--no-local-agent", "--config", cfg.to_str().expect("path")],
    );
    let agent_cfg = dir.path().join("agent.toml");
    std::fs::write(
        &agent_cfg,
        format!(
            "[[probe]]\nname = \"{PROBE}\"\nkind = \"http\"\ntarget = \"{}/health\"\n",
            target.url()
        ),
    )
    .expect("agent config");
    let mut agent = Agent::start(
        &c,
        &dir.path().join("agent"),
        &[
            "--config",
            agent_cfg.to_str().expect("path"),
            "--instance",
            INSTANCE,
        ],
    );

    wait_for_within("the host up and the probe succeeding", GIVE_UP, || {
        let up = value(&c, &format!("up{{job=\"node\",instance=\"{INSTANCE}\"}}"))?;
        let probe = value(&c, &format!("nines_probe_up{{probe=\"{PROBE}\"}}"))?;
        (up == 1.0 && probe == 1.0).then_some(())
    });
    // Let every rule group see the healthy state once: wait until each has
    // evaluated again since the state was seen.
    let evaluations = |c: &Collector| -> Vec<String> {
        let (_, rules) = c.get_json("/api/v1/rules");
        rules["data"]["groups"]
            .as_array()
            .map(|g| g.iter().map(|g| g["lastEvaluation"].to_string()).collect())
            .unwrap_or_default()
    };
    let seen = evaluations(&c);
    assert!(
        !seen.is_empty(),
        "no rule groups: the built-in rules are missing"
    );
    wait_for_within(
        "every rule group to evaluate the healthy state",
        GIVE_UP,
        || {
            let now = evaluations(&c);
            (now.len() == seen.len() && now.iter().zip(&seen).all(|(a, b)| a != b)).then_some(())
        },
    );

    // 1. The probe target starts failing.
    let t0 = Instant::now();
    target.set_status(500);
    let probe_alert = wait_for_within("the probe-failing webhook", GIVE_UP, || {
        firing_after(&hook, t0, &|l| l["probe"] == PROBE)
    });
    let probe_took = probe_alert.at - t0;

    // 2. The host's agent stops.
    let t1 = Instant::now();
    agent.kill();
    let host_alert = wait_for_within("the host-down webhook", GIVE_UP, || {
        firing_after(&hook, t1, &|l| {
            l["instance"] == INSTANCE && l.get("probe").is_none()
        })
    });
    let host_took = host_alert.at - t1;

    println!("== alert latency with nines' defaults");
    println!(
        "  probe target failing -> webhook: {:.1} s ({})",
        probe_took.as_secs_f64(),
        alert_names(&probe_alert)
    );
    println!(
        "  agent stopped -> host-down webhook: {:.1} s ({})",
        host_took.as_secs_f64(),
        alert_names(&host_alert)
    );
}
