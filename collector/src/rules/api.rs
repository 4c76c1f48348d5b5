//! The `data` of `/api/v1/rules` and `/api/v1/alerts`, shaped as
//! Prometheus 2.42 answers: times as RFC 3339 strings, durations and
//! evaluation times in seconds, alert values as Go's `%e` shortest.

use super::alerting::Alert;
use super::gofmt::fmt_e;
use super::group::{Group, RuleKind};
use serde_json::{Map, Value as Json, json};
use std::collections::BTreeMap;

/// Go's `time.Time` in RFC 3339 with nanoseconds trimmed (UTC); the zero
/// time for 0.
fn rfc3339(ms: i64) -> String {
    if ms == 0 {
        return "0001-01-01T00:00:00Z".into();
    }
    let Some(t) = chrono::DateTime::from_timestamp_millis(ms) else {
        return "0001-01-01T00:00:00Z".into();
    };
    let mut s = t.format("%Y-%m-%dT%H:%M:%S").to_string();
    let frac = ms.rem_euclid(1000);
    if frac != 0 {
        let f = format!("{frac:03}");
        s.push('.');
        s.push_str(f.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// Seconds as a JSON number, an integer when whole (as Go writes 2 for
/// a float64 of 2.0).
fn secs(d: std::time::Duration) -> Json {
    let s = d.as_secs_f64();
    if d.subsec_nanos() == 0 {
        json!(d.as_secs())
    } else {
        json!(s)
    }
}

fn map<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> Json {
    let mut m = Map::new();
    for (k, v) in pairs {
        m.insert(k.to_string(), Json::String(v.to_string()));
    }
    Json::Object(m)
}

fn alert_json(a: &Alert) -> Json {
    json!({
        "labels": map(a.labels.iter().map(|l| (l.name.as_str(), l.value.as_str()))),
        "annotations": map(a.annotations.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
        "state": a.state.as_str(),
        "activeAt": rfc3339(a.active_at),
        "value": fmt_e(a.value, None),
    })
}

fn raw_map(pairs: &[(String, String, super::template::Template)]) -> Json {
    let m: BTreeMap<&str, &str> = pairs
        .iter()
        .map(|(k, raw, _)| (k.as_str(), raw.as_str()))
        .collect();
    map(m.into_iter())
}

/// `{"groups": [...]}`.
pub fn rules_json(groups: &[Group]) -> Json {
    let groups: Vec<Json> = groups
        .iter()
        .map(|g| {
            let rules: Vec<Json> = g
                .rules
                .iter()
                .map(|r| match &r.kind {
                    RuleKind::Alerting(a) => {
                        let mut alerts: Vec<&Alert> = a.active_alerts().collect();
                        alerts.sort_by(|x, y| x.labels.cmp(&y.labels));
                        let mut j = json!({
                            "state": a.state().as_str(),
                            "name": a.spec.alert,
                            "query": r.query,
                            "duration": secs(a.spec.for_),
                            "keepFiringFor": secs(a.spec.keep_firing_for),
                            "labels": raw_map(&a.spec.labels),
                            "annotations": raw_map(&a.spec.annotations),
                            "alerts": alerts.into_iter().map(alert_json).collect::<Vec<_>>(),
                            "health": r.health.as_str(),
                            "evaluationTime": r.evaluation_seconds,
                            "lastEvaluation": rfc3339(r.last_evaluation_ms),
                            "type": "alerting",
                        });
                        if !r.last_error.is_empty() {
                            j["lastError"] = json!(r.last_error);
                        }
                        j
                    }
                    RuleKind::Recording(rec) => {
                        let mut j = json!({
                            "name": rec.record,
                            "query": r.query,
                            "health": r.health.as_str(),
                            "evaluationTime": r.evaluation_seconds,
                            "lastEvaluation": rfc3339(r.last_evaluation_ms),
                            "type": "recording",
                        });
                        if !rec.labels.is_empty() {
                            j["labels"] =
                                map(rec.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                        }
                        if !r.last_error.is_empty() {
                            j["lastError"] = json!(r.last_error);
                        }
                        j
                    }
                })
                .collect();
            json!({
                "name": g.spec.name,
                "file": g.spec.file,
                "rules": rules,
                "interval": secs(g.spec.interval),
                "limit": g.spec.limit,
                "evaluationTime": g.evaluation_seconds,
                "lastEvaluation": rfc3339(g.last_evaluation_ms),
            })
        })
        .collect();
    json!({ "groups": groups })
}

/// `{"alerts": [...]}`: pending and firing alerts of every rule.
pub fn alerts_json(groups: &[Group]) -> Json {
    let mut alerts = Vec::new();
    for g in groups {
        for r in &g.rules {
            if let RuleKind::Alerting(a) = &r.kind {
                alerts.extend(a.active_alerts().map(alert_json));
            }
        }
    }
    json!({ "alerts": alerts })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_as_go_writes_them() {
        assert_eq!(rfc3339(0), "0001-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(1_700_000_000_120), "2023-11-14T22:13:20.12Z");
    }
}
