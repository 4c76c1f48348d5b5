//! Built-in alert rules, on by default: host down, probe failing, disk
//! predicted full, certificate expiring, agent spool dropping data and
//! agent clock skew. They are one group (`"<builtin>"`, group `nines`)
//! run by the same evaluator as rule files; an alert of the same name in
//! a rule file replaces the built-in one. Nothing here evaluates anything.

use super::file::{GroupSpec, parse_rules};
use nines_shared::duration::parse_duration;
use serde::Deserialize;
use std::collections::HashSet;
use std::time::Duration;

/// The `file` of the built-in group.
pub const BUILTIN_FILE: &str = "<builtin>";
/// The built-in group's name.
pub const BUILTIN_GROUP: &str = "nines";

/// `[builtin_rules]` as the config file spells it.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBuiltinRules {
    /// All built-in rules on or off (default true).
    pub enabled: Option<bool>,
    /// How often the built-in group is evaluated (default 15s).
    pub interval: Option<String>,
    /// `HostDown`: an agent's `up` is 0 (default true).
    pub host_down: Option<bool>,
    /// How long `up` must stay 0 (default 1m).
    pub host_down_for: Option<String>,
    /// `ProbeFailing`: a probe's last attempts failed (default true).
    pub probe_failing: Option<bool>,
    /// How long a probe must keep failing (default 1m).
    pub probe_failing_for: Option<String>,
    /// `DiskPredictedFull` (default true).
    pub disk_full: Option<bool>,
    /// Horizon of the prediction, in hours (default 24).
    pub disk_full_hours: Option<u32>,
    /// `CertificateExpiring` (default true).
    pub cert_expiry: Option<bool>,
    /// Alert this many days before a probed certificate expires (default 14).
    pub cert_expiry_days: Option<u32>,
    /// `AgentSpoolDropping` (default true).
    pub spool_dropping: Option<bool>,
    /// `AgentClockSkew` (default true).
    pub clock_skew: Option<bool>,
    /// Largest tolerated clock offset, in seconds (default 30).
    pub clock_skew_seconds: Option<f64>,
}

/// The resolved `[builtin_rules]`.
#[derive(Debug, Clone, PartialEq)]
pub struct BuiltinRules {
    /// Whether any built-in rule runs.
    pub enabled: bool,
    /// HostDown on/off and its `for`.
    pub host_down: Option<Duration>,
    /// ProbeFailing on/off and its `for`.
    pub probe_failing: Option<Duration>,
    /// DiskPredictedFull's horizon in hours.
    pub disk_full_hours: Option<u32>,
    /// CertificateExpiring's days.
    pub cert_expiry_days: Option<u32>,
    /// AgentSpoolDropping on/off.
    pub spool_dropping: bool,
    /// AgentClockSkew's threshold in seconds.
    pub clock_skew_seconds: Option<f64>,
    /// How often the group is evaluated.
    pub interval: Duration,
}

impl FileBuiltinRules {
    /// Checks the values; the error is (key, reason).
    pub fn resolve(&self) -> Result<BuiltinRules, (&'static str, String)> {
        let dur = |key: &'static str, v: &Option<String>, default: u64| match v {
            None => Ok(Duration::from_secs(default)),
            Some(s) => parse_duration(s).map_err(|e| (key, format!("{s:?}: {e}"))),
        };
        let on = |v: Option<bool>| v.unwrap_or(true);
        let host_down_for = dur("builtin_rules.host_down_for", &self.host_down_for, 60)?;
        let probe_failing_for = dur(
            "builtin_rules.probe_failing_for",
            &self.probe_failing_for,
            60,
        )?;
        let interval = dur("builtin_rules.interval", &self.interval, 15)?;
        if interval < Duration::from_secs(1) {
            return Err(("builtin_rules.interval", "must be at least 1s".into()));
        }
        let hours = self.disk_full_hours.unwrap_or(24);
        if hours == 0 {
            return Err(("builtin_rules.disk_full_hours", "must be at least 1".into()));
        }
        let days = self.cert_expiry_days.unwrap_or(14);
        if days == 0 {
            return Err((
                "builtin_rules.cert_expiry_days",
                "must be at least 1".into(),
            ));
        }
        let skew = self.clock_skew_seconds.unwrap_or(30.0);
        if !(skew.is_finite() && skew > 0.0) {
            return Err((
                "builtin_rules.clock_skew_seconds",
                format!("{skew} must be a positive number"),
            ));
        }
        Ok(BuiltinRules {
            enabled: on(self.enabled),
            host_down: on(self.host_down).then_some(host_down_for),
            probe_failing: on(self.probe_failing).then_some(probe_failing_for),
            disk_full_hours: on(self.disk_full).then_some(hours),
            cert_expiry_days: on(self.cert_expiry).then_some(days),
            spool_dropping: on(self.spool_dropping),
            clock_skew_seconds: on(self.clock_skew).then_some(skew),
            interval,
        })
    }
}

impl Default for BuiltinRules {
    fn default() -> Self {
        FileBuiltinRules::default()
            .resolve()
            .unwrap_or(BuiltinRules {
                enabled: false,
                host_down: None,
                probe_failing: None,
                disk_full_hours: None,
                cert_expiry_days: None,
                spool_dropping: false,
                clock_skew_seconds: None,
                interval: Duration::from_secs(15),
            })
    }
}

struct Builtin {
    alert: &'static str,
    expr: String,
    for_: Duration,
    severity: &'static str,
    summary: &'static str,
    description: String,
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

/// The built-in group at `interval`, without the alerts named in
/// `overridden` (defined in rule files); None when nothing is left.
pub fn builtin_group(
    cfg: &BuiltinRules,
    interval: Duration,
    overridden: &HashSet<String>,
) -> Result<Option<GroupSpec>, String> {
    if !cfg.enabled {
        return Ok(None);
    }
    let mut rules = Vec::new();
    if let Some(f) = cfg.host_down {
        rules.push(Builtin {
            alert: "HostDown",
            expr: "up{job=\"node\"} == 0".into(),
            for_: f,
            severity: "page",
            summary: "Host {{ $labels.instance }} is down",
            description: "The agent on {{ $labels.instance }} has not delivered data for several of its intervals (up == 0).".into(),
        });
    }
    if let Some(f) = cfg.probe_failing {
        rules.push(Builtin {
            alert: "ProbeFailing",
            expr: "nines_probe_up == 0".into(),
            for_: f,
            severity: "page",
            summary: "Probe {{ $labels.probe }} is failing",
            description: "Probe {{ $labels.probe }} from {{ $labels.instance }} has been failing."
                .into(),
        });
    }
    if let Some(h) = cfg.disk_full_hours {
        rules.push(Builtin {
            alert: "DiskPredictedFull",
            // The trend alone over a few minutes of data says nothing, so
            // it needs an hour of history (the `offset 1h` sample), a
            // filesystem under 40% free and writable, and an hour of
            // holding.
            expr: format!(
                "node_filesystem_avail_bytes{{{fs}}} / node_filesystem_size_bytes{{{fs}}} < 0.4 \
                 and predict_linear(node_filesystem_avail_bytes{{{fs}}}[6h], {}) < 0 \
                 and node_filesystem_readonly{{{fs}}} == 0 \
                 and node_filesystem_avail_bytes{{{fs}}} offset 1h",
                u64::from(h) * 3600,
                fs = "fstype!~\"tmpfs|ramfs|squashfs|overlay|devtmpfs\""
            ),
            for_: Duration::from_secs(3600),
            severity: "ticket",
            summary: "Filesystem {{ $labels.mountpoint }} on {{ $labels.instance }} is predicted to fill up",
            description: format!(
                "{{{{ $labels.mountpoint }}}} on {{{{ $labels.instance }}}} has {{{{ $value | humanizePercentage }}}} free and, at the last 6 hours' rate, runs out of space within {h} hours."
            ),
        });
    }
    if let Some(d) = cfg.cert_expiry_days {
        rules.push(Builtin {
            alert: "CertificateExpiring",
            expr: format!(
                "nines_probe_tls_cert_expiry_timestamp_seconds - time() < {}",
                u64::from(d) * 86400
            ),
            for_: Duration::ZERO,
            severity: "ticket",
            summary: "Certificate of probe {{ $labels.probe }} expires soon",
            description: "The certificate presented to probe {{ $labels.probe }} expires in {{ $value | humanizeDuration }}.".into(),
        });
    }
    if cfg.spool_dropping {
        rules.push(Builtin {
            alert: "AgentSpoolDropping",
            expr: "increase(nines_agent_spool_dropped_records_total[15m]) > 0".into(),
            for_: Duration::ZERO,
            severity: "ticket",
            summary: "Agent {{ $labels.instance }} is dropping spooled data",
            description: "The spool of the agent on {{ $labels.instance }} is full and drops its oldest batches ({{ $value }} in 15 minutes): data is being lost.".into(),
        });
    }
    if let Some(s) = cfg.clock_skew_seconds {
        rules.push(Builtin {
            alert: "AgentClockSkew",
            expr: format!("abs(nines_ingest_agent_clock_offset_seconds) > {s}"),
            for_: Duration::from_secs(300),
            severity: "ticket",
            summary: "Clock of agent {{ $labels.agent }} is off",
            description: "The clock of agent {{ $labels.agent }} differs from the collector's by {{ $value | humanizeDuration }}.".into(),
        });
    }
    rules.retain(|r| !overridden.contains(r.alert));
    if rules.is_empty() {
        return Ok(None);
    }
    let rules: Vec<serde_json::Value> = rules
        .into_iter()
        .map(|r| {
            serde_json::json!({
                "alert": r.alert,
                "expr": r.expr,
                "for": secs(r.for_),
                "labels": {"severity": r.severity},
                "annotations": {"summary": r.summary, "description": r.description},
            })
        })
        .collect();
    let doc = serde_json::json!({"groups": [{"name": BUILTIN_GROUP, "rules": rules}]});
    let text = serde_yaml_ng::to_string(&doc).map_err(|e| format!("built-in rules: {e}"))?;
    Ok(parse_rules(BUILTIN_FILE, &text, interval)?
        .into_iter()
        .next())
}

/// Alert names defined by `groups`.
pub fn alert_names(groups: &[GroupSpec]) -> HashSet<String> {
    groups
        .iter()
        .flat_map(|g| g.rules.iter())
        .filter_map(|r| match r {
            super::file::RuleSpec::Alerting(a) => Some(a.alert.clone()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_rule_parses_with_severity_and_annotations() {
        let cfg = BuiltinRules::default();
        let g = builtin_group(&cfg, Duration::from_secs(30), &HashSet::new())
            .unwrap()
            .unwrap();
        let names: Vec<&str> = g.rules.iter().map(|r| r.name()).collect();
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
        for r in &g.rules {
            let super::super::file::RuleSpec::Alerting(a) = r else {
                panic!("not an alert")
            };
            assert!(a.labels.iter().any(|l| l.0 == "severity"));
            let ann: Vec<&str> = a.annotations.iter().map(|a| a.0.as_str()).collect();
            assert!(ann.contains(&"summary") && ann.contains(&"description"));
        }
        let host_down = &g.rules[0];
        assert!(
            matches!(host_down, super::super::file::RuleSpec::Alerting(a) if a.for_ == Duration::from_secs(60))
        );
    }

    #[test]
    fn a_rule_file_alert_replaces_the_builtin_and_switches_work() {
        let over: HashSet<String> = ["HostDown".to_string()].into();
        let g = builtin_group(&BuiltinRules::default(), Duration::from_secs(30), &over)
            .unwrap()
            .unwrap();
        assert!(g.rules.iter().all(|r| r.name() != "HostDown"));
        let f = FileBuiltinRules {
            enabled: Some(false),
            ..Default::default()
        };
        assert!(
            builtin_group(&f.resolve().unwrap(), Duration::from_secs(30), &over)
                .unwrap()
                .is_none()
        );
        let f = FileBuiltinRules {
            disk_full_hours: Some(0),
            ..Default::default()
        };
        assert_eq!(f.resolve().unwrap_err().0, "builtin_rules.disk_full_hours");
    }

    fn disk_expr() -> String {
        let g = builtin_group(
            &BuiltinRules::default(),
            Duration::from_secs(30),
            &HashSet::new(),
        )
        .unwrap()
        .unwrap();
        g.rules
            .iter()
            .find_map(|r| match r {
                super::super::file::RuleSpec::Alerting(a) if a.alert == "DiskPredictedFull" => {
                    Some(a.expr.clone())
                }
                _ => None,
            })
            .unwrap()
    }

    /// A filesystem of 100 GB losing 1 GB per 10 minutes from 30 GB free,
    /// sampled every 10 s for `minutes`.
    fn filling_disk(t_end: i64, minutes: i64) -> crate::query::in_memory::InMemoryQuerier {
        use crate::query::querier::SeriesSamples;
        use nines_shared::Labels;
        let labels = |m: &str| {
            Labels::new(
                m,
                [
                    ("instance", "h"),
                    ("mountpoint", "/"),
                    ("fstype", "ext4"),
                    ("device", "sda"),
                ],
            )
        };
        let n = minutes * 6;
        let series = |m: &str, f: &dyn Fn(i64) -> f64| SeriesSamples {
            labels: labels(m),
            samples: (0..=n).map(|i| (t_end - (n - i) * 10_000, f(i))).collect(),
        };
        crate::query::in_memory::InMemoryQuerier::new(vec![
            series("node_filesystem_avail_bytes", &|i| {
                30e9 - i as f64 * 1e9 / 60.0
            }),
            series("node_filesystem_size_bytes", &|_| 100e9),
            series("node_filesystem_readonly", &|_| 0.0),
        ])
    }

    #[test]
    fn disk_predicted_full_needs_an_hour_of_history() {
        let engine = crate::query::Engine::default();
        let t = 1_700_000_000_000;
        let n = |q| match engine.instant(&q, &disk_expr(), t).unwrap() {
            crate::query::Value::Vector(v) => v.len(),
            _ => panic!("not a vector"),
        };
        // 2 h of steady loss: about 18 GB left after, gone within 24 h.
        assert_eq!(n(filling_disk(t, 120)), 1);
        // The same trend over 2 minutes is not enough to say so.
        assert_eq!(n(filling_disk(t, 2)), 0);
    }
}
