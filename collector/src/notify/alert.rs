//! An alert as the notifier sees it (labels, annotations, start, end,
//! generator URL), its Alertmanager fingerprint, and the two payloads made
//! from alerts: the webhook JSON (Alertmanager's version 4) and the body of
//! Alertmanager's `POST /api/v2/alerts`.
//!
//! Pure: the caller gives the time; nothing here sends.

use serde_json::{Value as Json, json};
use std::collections::BTreeMap;

/// Labels or annotations by name.
pub type LabelMap = BTreeMap<String, String>;

/// One alert handed over by the rule evaluator.
#[derive(Debug, Clone, PartialEq)]
pub struct NotifyAlert {
    /// Labels (with `alertname`).
    pub labels: LabelMap,
    /// Annotations.
    pub annotations: LabelMap,
    /// When it started firing (ms).
    pub starts_at: i64,
    /// When it was resolved (ms); None while firing.
    pub ends_at: Option<i64>,
    /// Link back to the expression.
    pub generator_url: String,
}

impl NotifyAlert {
    /// Resolved, not firing.
    pub fn is_resolved(&self) -> bool {
        self.ends_at.is_some()
    }

    /// Alertmanager's fingerprint of the label set (FNV-1a 64 over sorted
    /// names and values, each followed by 0xff).
    pub fn fingerprint(&self) -> u64 {
        fingerprint(&self.labels)
    }
}

/// Alertmanager's fingerprint of a label set.
pub fn fingerprint(labels: &LabelMap) -> u64 {
    const OFFSET: u64 = 14695981039346656037;
    const PRIME: u64 = 1099511628211;
    let mut h = OFFSET;
    let mut add = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(PRIME);
        }
    };
    for (k, v) in labels {
        add(k.as_bytes());
        add(&[0xff]);
        add(v.as_bytes());
        add(&[0xff]);
    }
    h
}

/// Alerts handed over after one rule-group evaluation.
#[derive(Debug, Clone)]
pub struct AlertBatch {
    /// `<file>;<group>`.
    pub source: String,
    /// The group's firing alerts and recently resolved ones.
    pub alerts: Vec<NotifyAlert>,
    /// The group's evaluation interval (ms).
    pub interval_ms: i64,
}

/// RFC 3339 in UTC with milliseconds when there are any; Go's zero time
/// for `None`.
pub fn rfc3339(ms: Option<i64>) -> String {
    match ms.and_then(chrono::DateTime::from_timestamp_millis) {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        None => "0001-01-01T00:00:00Z".into(),
    }
}

/// A label set as Alertmanager prints it: `{a="1", b="2"}`.
pub fn labels_string(l: &LabelMap) -> String {
    let parts: Vec<String> = l.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", parts.join(", "))
}

fn common(maps: &[&LabelMap]) -> LabelMap {
    let Some(first) = maps.first() else {
        return LabelMap::new();
    };
    first
        .iter()
        .filter(|(k, v)| maps.iter().all(|m| m.get(*k) == Some(v)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// What a webhook payload describes.
pub struct WebhookGroup<'a> {
    /// Receiver name.
    pub receiver: &'a str,
    /// Group key (`{route}:{group labels}`).
    pub group_key: &'a str,
    /// The group labels.
    pub group_labels: &'a LabelMap,
    /// `externalURL`.
    pub external_url: &'a str,
    /// Most alerts in the payload; 0 for all.
    pub max_alerts: usize,
}

/// The webhook body, Alertmanager's version 4: firing alerts first, then
/// resolved ones, truncated to `max_alerts` (the rest counted in
/// `truncatedAlerts`).
pub fn webhook_payload(
    g: &WebhookGroup<'_>,
    firing: &[&NotifyAlert],
    resolved: &[&NotifyAlert],
) -> Json {
    let all: Vec<&NotifyAlert> = firing.iter().chain(resolved).copied().collect();
    let labels: Vec<&LabelMap> = all.iter().map(|a| &a.labels).collect();
    let annotations: Vec<&LabelMap> = all.iter().map(|a| &a.annotations).collect();
    let keep = if g.max_alerts == 0 {
        all.len()
    } else {
        g.max_alerts.min(all.len())
    };
    let alerts: Vec<Json> = all[..keep]
        .iter()
        .map(|a| {
            json!({
                "status": if a.is_resolved() { "resolved" } else { "firing" },
                "labels": a.labels,
                "annotations": a.annotations,
                "startsAt": rfc3339(Some(a.starts_at)),
                "endsAt": rfc3339(a.ends_at),
                "generatorURL": a.generator_url,
                "fingerprint": format!("{:016x}", a.fingerprint()),
            })
        })
        .collect();
    json!({
        "version": "4",
        "groupKey": g.group_key,
        "truncatedAlerts": all.len() - keep,
        "status": if firing.is_empty() { "resolved" } else { "firing" },
        "receiver": g.receiver,
        "groupLabels": g.group_labels,
        "commonLabels": common(&labels),
        "commonAnnotations": common(&annotations),
        "externalURL": g.external_url,
        "alerts": alerts,
    })
}

/// The body of Alertmanager's `POST /api/v2/alerts`: firing alerts end at
/// `valid_until` (ms) unless re-sent, resolved ones at their resolution.
pub fn alertmanager_payload(alerts: &[&NotifyAlert], valid_until: i64) -> Json {
    Json::Array(
        alerts
            .iter()
            .map(|a| {
                json!({
                    "labels": a.labels,
                    "annotations": a.annotations,
                    "startsAt": rfc3339(Some(a.starts_at)),
                    "endsAt": rfc3339(Some(a.ends_at.unwrap_or(valid_until))),
                    "generatorURL": a.generator_url,
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(name: &str, instance: &str, ends_at: Option<i64>) -> NotifyAlert {
        NotifyAlert {
            labels: [
                ("alertname", name),
                ("instance", instance),
                ("severity", "page"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            annotations: [("summary".to_string(), format!("{instance} is down"))].into(),
            starts_at: 1_700_000_000_000,
            ends_at,
            generator_url: "http://c/graph".into(),
        }
    }

    #[test]
    fn fingerprints_are_alertmanagers() {
        // Alertmanager's model.LabelSet{}.Fingerprint() and that of
        // {foo="bar"}: FNV-1a over "foo\xffbar\xff".
        assert_eq!(fingerprint(&LabelMap::new()), 0xcbf29ce484222325);
        let l: LabelMap = [("foo".to_string(), "bar".to_string())].into();
        let mut h: u64 = 0xcbf29ce484222325;
        for b in b"foo\xffbar\xff" {
            h = (h ^ u64::from(*b)).wrapping_mul(0x100000001b3);
        }
        assert_eq!(fingerprint(&l), h);
    }

    #[test]
    fn webhook_payload_has_version_4_fields() {
        let (a, b) = (
            alert("Down", "a", None),
            alert("Down", "b", Some(1_700_000_060_500)),
        );
        let gl: LabelMap = [("alertname".to_string(), "Down".to_string())].into();
        let g = WebhookGroup {
            receiver: "hook",
            group_key: "{}:{alertname=\"Down\"}",
            group_labels: &gl,
            external_url: "http://c",
            max_alerts: 0,
        };
        let p = webhook_payload(&g, &[&a], &[&b]);
        assert_eq!(p["version"], "4");
        assert_eq!(p["status"], "firing");
        assert_eq!(p["receiver"], "hook");
        assert_eq!(p["groupKey"], "{}:{alertname=\"Down\"}");
        assert_eq!(p["truncatedAlerts"], 0);
        assert_eq!(p["groupLabels"]["alertname"], "Down");
        assert_eq!(p["commonLabels"]["severity"], "page");
        assert!(p["commonLabels"].get("instance").is_none());
        assert_eq!(p["commonAnnotations"], json!({}));
        assert_eq!(p["externalURL"], "http://c");
        let al = p["alerts"].as_array().unwrap();
        assert_eq!(al.len(), 2);
        assert_eq!(al[0]["status"], "firing");
        assert_eq!(al[0]["startsAt"], "2023-11-14T22:13:20Z");
        assert_eq!(al[0]["endsAt"], "0001-01-01T00:00:00Z");
        assert_eq!(al[0]["fingerprint"].as_str().unwrap().len(), 16);
        assert_eq!(al[1]["status"], "resolved");
        assert_eq!(al[1]["endsAt"], "2023-11-14T22:14:20.500Z");
        let g = WebhookGroup { max_alerts: 1, ..g };
        let p = webhook_payload(&g, &[], &[&a, &b]);
        assert_eq!(p["status"], "resolved");
        assert_eq!(p["truncatedAlerts"], 1);
        assert_eq!(p["alerts"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn alertmanager_payload_ends_firing_alerts_at_valid_until() {
        let (a, b) = (
            alert("Down", "a", None),
            alert("Down", "b", Some(1_700_000_060_000)),
        );
        let p = alertmanager_payload(&[&a, &b], 1_700_000_240_000);
        assert_eq!(p[0]["endsAt"], "2023-11-14T22:17:20Z");
        assert_eq!(p[1]["endsAt"], "2023-11-14T22:14:20Z");
        assert_eq!(p[0]["labels"]["instance"], "a");
        assert_eq!(p[0]["generatorURL"], "http://c/graph");
        assert!(p[0].get("status").is_none());
    }
}
