//! The dispatcher: keeps the latest state of every alert the rule
//! evaluator handed over, routes each to its receivers, and decides when a
//! notification is due.
//!
//! Webhook receivers get Alertmanager's grouping: alerts of a route with
//! the same `group_by` labels form a group; its first notification goes
//! out `group_wait` after the group appears, then at most every
//! `group_interval` when the set of firing (or, with `send_resolved`,
//! resolved) alerts changed, and again after `repeat_interval` when nothing
//! changed. Silenced and inhibited alerts are left out. What was last sent
//! per group is also read back from the outbox at start, so a restart does
//! not notify twice.
//!
//! Alertmanager receivers get what Prometheus sends: every routed alert,
//! firing ones again every `resend_delay` with `endsAt` = now + 4 ×
//! max(evaluation interval, resend delay), resolved ones when they resolve
//! (and again every `resend_delay` while the evaluator still reports
//! them). Alertmanager groups, silences and inhibits those itself.
//!
//! Pure: the caller passes the time; output is notifications to queue.

use super::alert::{
    AlertBatch, LabelMap, NotifyAlert, WebhookGroup, alertmanager_payload, labels_string,
    webhook_payload,
};
use super::config::{InhibitRule, NotifyConfig, ReceiverKind};
use super::matcher::all_match;
use super::route::Route;
use super::silence::Silence;
use super::store::{LastSent, NewNotification};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// How long an alert the evaluator stopped reporting is kept (ms) after it
/// is treated as resolved.
const FORGET_AFTER_MS: i64 = 15 * 60 * 1000;

/// How long a group's "all resolved" notification is remembered (ms).
const LOG_KEEP_MS: i64 = 24 * 3600 * 1000;

#[derive(Debug, Clone)]
struct Tracked {
    alert: NotifyAlert,
    /// Until when it counts as firing without a new report (ms).
    valid_until: i64,
    /// Evaluation interval of its group (ms).
    interval_ms: i64,
    /// Last report (ms).
    seen: i64,
}

#[derive(Debug)]
struct AggGroup {
    route_id: usize,
    receiver: String,
    key: String,
    labels: LabelMap,
    alerts: BTreeSet<u64>,
    next_flush: i64,
}

/// Why an alert is muted, if it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Muted {
    /// By an active silence.
    Silenced,
    /// By an inhibit rule.
    Inhibited,
}

/// The dispatcher's state.
pub struct Dispatcher {
    cfg: NotifyConfig,
    external_url: String,
    alerts: HashMap<u64, Tracked>,
    groups: BTreeMap<(usize, String), AggGroup>,
    /// What each (receiver, group key) was last notified of.
    log: HashMap<(String, String), LastSent>,
    /// Alertmanager receivers: (receiver, alert) -> last sent (ms).
    am_sent: HashMap<(String, u64), Option<i64>>,
}

impl Dispatcher {
    /// A dispatcher, remembering `log` (from the outbox) as already sent.
    pub fn new(
        cfg: NotifyConfig,
        external_url: String,
        log: HashMap<(String, String), LastSent>,
    ) -> Self {
        Dispatcher {
            cfg,
            external_url,
            alerts: HashMap::new(),
            groups: BTreeMap::new(),
            log,
            am_sent: HashMap::new(),
        }
    }

    fn route_by_id(&self, id: usize) -> Option<&Route> {
        self.cfg
            .route
            .as_ref()
            .and_then(|r| r.all().into_iter().find(|x| x.id == id))
    }

    /// Takes the alerts of one group evaluation at `now` (ms).
    pub fn on_batch(&mut self, batch: &AlertBatch, now: i64) {
        for a in &batch.alerts {
            let fp = a.fingerprint();
            let interval_ms = batch.interval_ms.max(1);
            self.alerts.insert(
                fp,
                Tracked {
                    alert: a.clone(),
                    valid_until: now + 4 * interval_ms.max(60_000),
                    interval_ms,
                    seen: now,
                },
            );
            self.route_alert(fp, now);
        }
    }

    fn route_alert(&mut self, fp: u64, now: i64) {
        let Some(root) = self.cfg.route.as_ref() else {
            return;
        };
        let Some(t) = self.alerts.get(&fp) else {
            return;
        };
        let resolved = t.alert.is_resolved();
        for r in root.matching(&t.alert.labels) {
            let Some(receiver) = self.cfg.receivers.get(&r.receiver) else {
                continue;
            };
            if matches!(receiver.kind, ReceiverKind::Alertmanager(_)) {
                self.am_sent.entry((r.receiver.clone(), fp)).or_insert(None);
                continue;
            }
            let labels = r.group_labels(&t.alert.labels);
            let key = format!("{}:{}", r.key, labels_string(&labels));
            let gk = (r.id, key.clone());
            match self.groups.get_mut(&gk) {
                Some(g) => {
                    g.alerts.insert(fp);
                }
                None => {
                    // A resolved alert opens a group only when its firing
                    // was notified (e.g. before a restart).
                    let notified = self
                        .log
                        .get(&(r.receiver.clone(), key.clone()))
                        .is_some_and(|l| l.firing.contains(&fp));
                    if resolved && !notified {
                        continue;
                    }
                    self.groups.insert(
                        gk,
                        AggGroup {
                            route_id: r.id,
                            receiver: r.receiver.clone(),
                            key,
                            labels,
                            alerts: [fp].into(),
                            next_flush: now + r.group_wait.as_millis() as i64,
                        },
                    );
                }
            }
        }
    }

    /// Whether `a` is muted at `now` by `silences` or the inhibit rules.
    pub fn muted(&self, a: &NotifyAlert, silences: &[Silence], now: i64) -> Option<Muted> {
        if silences.iter().any(|s| s.mutes(&a.labels, now)) {
            return Some(Muted::Silenced);
        }
        let inhibited = self
            .cfg
            .inhibit_rules
            .iter()
            .any(|rule| self.inhibits(rule, a));
        inhibited.then_some(Muted::Inhibited)
    }

    fn inhibits(&self, rule: &InhibitRule, target: &NotifyAlert) -> bool {
        if !all_match(&rule.target, &target.labels) {
            return false;
        }
        self.alerts.values().any(|s| {
            let src = &s.alert;
            !src.is_resolved()
                && src.labels != target.labels
                && all_match(&rule.source, &src.labels)
                && rule
                    .equal
                    .iter()
                    .all(|l| src.labels.get(l) == target.labels.get(l))
        })
    }

    /// Expires alerts the evaluator stopped reporting, then returns the
    /// notifications due at `now`.
    pub fn flush(&mut self, now: i64, silences: &[Silence]) -> Vec<NewNotification> {
        self.expire(now);
        let mut out = Vec::new();
        let due: Vec<(usize, String)> = self
            .groups
            .iter()
            .filter(|(_, g)| g.next_flush <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for gk in due {
            if let Some(n) = self.flush_group(&gk, now, silences) {
                out.push(n);
            }
        }
        out.extend(self.flush_alertmanagers(now));
        out
    }

    fn expire(&mut self, now: i64) {
        let mut gone = Vec::new();
        for (fp, t) in self.alerts.iter_mut() {
            if t.alert.is_resolved() {
                if now - t.seen > FORGET_AFTER_MS {
                    gone.push(*fp);
                }
            } else if now > t.valid_until {
                // Its rule stopped reporting it: resolved when it ran out.
                t.alert.ends_at = Some(t.valid_until);
                t.seen = now;
            }
        }
        for fp in gone {
            self.alerts.remove(&fp);
            self.am_sent.retain(|(_, f), _| *f != fp);
        }
        // Groups whose last word was "all resolved" a day ago need no
        // memory of it; without this, churning label sets would pile up.
        let open: BTreeSet<(&str, &str)> = self
            .groups
            .values()
            .map(|g| (g.receiver.as_str(), g.key.as_str()))
            .collect();
        let stale: Vec<(String, String)> = self
            .log
            .iter()
            .filter(|((r, k), l)| {
                l.firing.is_empty()
                    && now - l.at > LOG_KEEP_MS
                    && !open.contains(&(r.as_str(), k.as_str()))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            self.log.remove(&k);
        }
    }

    fn flush_group(
        &mut self,
        gk: &(usize, String),
        now: i64,
        silences: &[Silence],
    ) -> Option<NewNotification> {
        let g = self.groups.get(gk)?;
        let route = self.route_by_id(g.route_id)?.clone();
        let receiver = self.cfg.receivers.get(&g.receiver)?.clone();
        let ReceiverKind::Webhook(hook) = &receiver.kind else {
            return None;
        };
        let (mut firing, mut resolved) = (Vec::new(), Vec::new());
        let mut done = Vec::new();
        for fp in &g.alerts {
            let Some(t) = self.alerts.get(fp) else {
                done.push(*fp);
                continue;
            };
            if t.alert.is_resolved() {
                done.push(*fp);
            }
            if self.muted(&t.alert, silences, now).is_some() {
                continue;
            }
            if t.alert.is_resolved() {
                resolved.push((*fp, &t.alert));
            } else {
                firing.push((*fp, &t.alert));
            }
        }
        firing.sort_by(|x, y| x.1.labels.cmp(&y.1.labels));
        resolved.sort_by(|x, y| x.1.labels.cmp(&y.1.labels));
        let firing_set: BTreeSet<u64> = firing.iter().map(|(f, _)| *f).collect();
        let resolved_set: BTreeSet<u64> = resolved.iter().map(|(f, _)| *f).collect();
        let log_key = (g.receiver.clone(), g.key.clone());
        let prev = self.log.get(&log_key);
        let needed = match prev {
            None => !firing_set.is_empty(),
            Some(p) => {
                if !firing_set.is_subset(&p.firing) {
                    true
                } else if firing_set.is_empty() {
                    // Everything resolved (or muted): tell the receiver
                    // once, if it was told of firing alerts.
                    !p.firing.is_empty()
                } else if receiver.send_resolved && !resolved_set.is_subset(&p.resolved) {
                    true
                } else {
                    now - p.at >= route.repeat_interval.as_millis() as i64
                }
            }
        };
        let mut note = None;
        if needed {
            // Resolved alerts the receiver never heard of as firing are
            // not news.
            let told: BTreeSet<u64> = prev.map(|p| p.firing.clone()).unwrap_or_default();
            let resolved: Vec<(u64, &NotifyAlert)> = resolved
                .into_iter()
                .filter(|(f, _)| told.contains(f))
                .collect();
            let send_resolved: Vec<&NotifyAlert> = if receiver.send_resolved {
                resolved.iter().map(|(_, a)| *a).collect()
            } else {
                Vec::new()
            };
            let fs: Vec<&NotifyAlert> = firing.iter().map(|(_, a)| *a).collect();
            if !fs.is_empty() || !send_resolved.is_empty() {
                let body = webhook_payload(
                    &WebhookGroup {
                        receiver: &g.receiver,
                        group_key: &g.key,
                        group_labels: &g.labels,
                        external_url: &self.external_url,
                        max_alerts: hook.max_alerts,
                    },
                    &fs,
                    &send_resolved,
                );
                note = Some(NewNotification {
                    receiver: g.receiver.clone(),
                    group_key: g.key.clone(),
                    kind: "webhook",
                    target: hook.url.clone(),
                    body: body.to_string().into_bytes(),
                    firing: firing_set.clone(),
                    resolved: resolved.iter().map(|(f, _)| *f).collect(),
                });
            }
            self.log.insert(
                log_key,
                LastSent {
                    firing: firing_set,
                    resolved: resolved_set,
                    at: now,
                },
            );
        }
        let g = self.groups.get_mut(gk)?;
        for fp in done {
            g.alerts.remove(&fp);
        }
        if g.alerts.is_empty() {
            self.groups.remove(gk);
        } else {
            g.next_flush = now + route.group_interval.as_millis() as i64;
        }
        note
    }

    fn flush_alertmanagers(&mut self, now: i64) -> Vec<NewNotification> {
        let mut by_receiver: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for ((receiver, fp), last) in &self.am_sent {
            let Some(t) = self.alerts.get(fp) else {
                continue;
            };
            let Some(ReceiverKind::Alertmanager(am)) =
                self.cfg.receivers.get(receiver).map(|r| &r.kind)
            else {
                continue;
            };
            let resend = am.resend_delay.as_millis() as i64;
            let due = match t.alert.ends_at {
                Some(resolved_at) => last.is_none_or(|l| resolved_at > l || l + resend <= now),
                None => last.is_none_or(|l| l + resend <= now),
            };
            if due {
                by_receiver.entry(receiver.clone()).or_default().push(*fp);
            }
        }
        let mut out = Vec::new();
        for (receiver, mut fps) in by_receiver {
            let Some(r) = self.cfg.receivers.get(&receiver) else {
                continue;
            };
            let ReceiverKind::Alertmanager(am) = &r.kind else {
                continue;
            };
            fps.sort_unstable();
            let alerts: Vec<&NotifyAlert> = fps
                .iter()
                .filter_map(|fp| self.alerts.get(fp))
                .filter(|t| r.send_resolved || !t.alert.is_resolved())
                .map(|t| &t.alert)
                .collect();
            let interval = fps
                .iter()
                .filter_map(|fp| self.alerts.get(fp))
                .map(|t| t.interval_ms)
                .max()
                .unwrap_or(0);
            let valid_until = now + 4 * interval.max(am.resend_delay.as_millis() as i64);
            if !alerts.is_empty() {
                let body = alertmanager_payload(&alerts, valid_until).to_string();
                let (mut firing, mut resolved) = (BTreeSet::new(), BTreeSet::new());
                for fp in &fps {
                    match self.alerts.get(fp) {
                        Some(t) if t.alert.is_resolved() => resolved.insert(*fp),
                        _ => firing.insert(*fp),
                    };
                }
                for url in &am.urls {
                    out.push(NewNotification {
                        receiver: receiver.clone(),
                        group_key: "alertmanager".into(),
                        kind: "alertmanager",
                        target: format!("{url}/api/v2/alerts"),
                        body: body.clone().into_bytes(),
                        firing: firing.clone(),
                        resolved: resolved.clone(),
                    });
                }
            }
            for fp in fps {
                self.am_sent.insert((receiver.clone(), fp), Some(now));
            }
        }
        out
    }

    /// Alerts known now (firing and recently resolved).
    pub fn alert_count(&self) -> usize {
        self.alerts.len()
    }

    /// Aggregation groups open now.
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::config::{FileNotify, FileReceiver, FileRoute, resolve};
    use serde_json::Value as Json;

    fn cfg(extra_route: &str) -> NotifyConfig {
        #[derive(serde::Deserialize)]
        struct F {
            receiver: Vec<FileReceiver>,
            route: FileRoute,
        }
        let text = format!(
            r#"
[[receiver]]
name = "hook"
webhook = {{ url = "http://127.0.0.1:1/" }}
[[receiver]]
name = "am"
alertmanager = {{ urls = ["http://a:9093", "http://b:9093"], resend_delay = "1m" }}
[route]
receiver = "hook"
group_by = ["alertname"]
group_wait = "10s"
group_interval = "1m"
repeat_interval = "1h"
{extra_route}
"#
        );
        let f: F = toml::from_str(&text).unwrap();
        resolve(
            &f.receiver,
            Some(&f.route),
            None,
            &FileNotify::default(),
            None,
        )
        .unwrap()
    }

    fn alert(name: &str, instance: &str, severity: &str, ends_at: Option<i64>) -> NotifyAlert {
        NotifyAlert {
            labels: [
                ("alertname", name),
                ("instance", instance),
                ("severity", severity),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            annotations: LabelMap::new(),
            starts_at: 0,
            ends_at,
            generator_url: String::new(),
        }
    }

    fn batch(alerts: Vec<NotifyAlert>) -> AlertBatch {
        AlertBatch {
            source: "f;g".into(),
            alerts,
            interval_ms: 1000,
        }
    }

    fn body(n: &NewNotification) -> Json {
        serde_json::from_slice(&n.body).unwrap()
    }

    fn instances(n: &NewNotification) -> Vec<String> {
        body(n)["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                format!(
                    "{}:{}",
                    a["labels"]["instance"].as_str().unwrap(),
                    a["status"].as_str().unwrap()
                )
            })
            .collect()
    }

    #[test]
    fn group_wait_then_group_interval_then_repeat_then_resolved() {
        let mut d = Dispatcher::new(cfg(""), "http://c".into(), HashMap::new());
        d.on_batch(&batch(vec![alert("Down", "a", "page", None)]), 0);
        assert!(d.flush(9_999, &[]).is_empty(), "group_wait not over");
        let n = d.flush(10_000, &[]);
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].group_key, r#"{}:{alertname="Down"}"#);
        assert_eq!(instances(&n[0]), ["a:firing"]);
        // A second alert joins: sent at the next group_interval tick only.
        d.on_batch(
            &batch(vec![
                alert("Down", "a", "page", None),
                alert("Down", "b", "page", None),
            ]),
            20_000,
        );
        assert!(d.flush(69_999, &[]).is_empty());
        let n = d.flush(70_000, &[]);
        assert_eq!(instances(&n[0]), ["a:firing", "b:firing"]);
        // Nothing changed: quiet until repeat_interval.
        for t in [130_000, 190_000] {
            d.on_batch(
                &batch(vec![
                    alert("Down", "a", "page", None),
                    alert("Down", "b", "page", None),
                ]),
                t,
            );
            assert!(d.flush(t, &[]).is_empty(), "at {t}");
        }
        let t = 70_000 + 3_600_000;
        d.on_batch(
            &batch(vec![
                alert("Down", "a", "page", None),
                alert("Down", "b", "page", None),
            ]),
            t,
        );
        assert_eq!(d.flush(t, &[]).len(), 1, "repeat");
        // b resolves: a resolved notification at the next tick.
        let t2 = t + 60_000;
        d.on_batch(
            &batch(vec![
                alert("Down", "a", "page", None),
                alert("Down", "b", "page", Some(t2)),
            ]),
            t2,
        );
        let n = d.flush(t2, &[]);
        assert_eq!(instances(&n[0]), ["a:firing", "b:resolved"]);
        assert_eq!(body(&n[0])["status"], "firing");
        let t3 = t2 + 60_000;
        d.on_batch(&batch(vec![alert("Down", "a", "page", Some(t3))]), t3);
        let n = d.flush(t3, &[]);
        assert_eq!(instances(&n[0]), ["a:resolved"]);
        assert_eq!(body(&n[0])["status"], "resolved");
        assert_eq!(d.group_count(), 0);
        assert_eq!(d.log.len(), 1);
        d.flush(t3 + LOG_KEEP_MS + 1, &[]);
        assert!(d.log.is_empty(), "forgotten a day after all resolved");
    }

    #[test]
    fn a_restart_does_not_notify_again_what_the_outbox_holds() {
        let mut first = Dispatcher::new(cfg(""), String::new(), HashMap::new());
        first.on_batch(&batch(vec![alert("Down", "a", "page", None)]), 0);
        let n = first.flush(10_000, &[]);
        let log: HashMap<_, _> = [(
            (n[0].receiver.clone(), n[0].group_key.clone()),
            LastSent {
                firing: n[0].firing.clone(),
                resolved: BTreeSet::new(),
                at: 10_000,
            },
        )]
        .into();
        let mut again = Dispatcher::new(cfg(""), String::new(), log);
        again.on_batch(&batch(vec![alert("Down", "a", "page", None)]), 20_000);
        assert!(again.flush(30_000, &[]).is_empty());
        // Resolution after the restart still reaches the receiver.
        let mut again2 = Dispatcher::new(cfg(""), String::new(), again.log.clone());
        again2.on_batch(
            &batch(vec![alert("Down", "a", "page", Some(40_000))]),
            40_000,
        );
        let n = again2.flush(50_000, &[]);
        assert_eq!(instances(&n[0]), ["a:resolved"]);
    }

    #[test]
    fn silences_and_inhibition_leave_alerts_out() {
        let mut d = Dispatcher::new(cfg(""), String::new(), HashMap::new());
        d.cfg.route.as_mut().unwrap().group_by =
            super::super::route::GroupBy::Labels(vec!["instance".into()]);
        d.on_batch(
            &batch(vec![
                alert("Hot", "a", "critical", None),
                alert("Warm", "a", "warning", None),
                alert("Warm", "b", "warning", None),
                alert("Noisy", "c", "page", None),
            ]),
            0,
        );
        let silence = super::super::silence::silence_from_json(
            &serde_json::json!({"matchers": [{"name": "instance", "value": "c"}],
                "startsAt": 0, "endsAt": 100_000, "createdBy": "me", "comment": "x"}),
            "s".into(),
            0,
        )
        .unwrap();
        let mut n = d.flush(10_000, &[silence]);
        n.sort_by(|x, y| x.group_key.cmp(&y.group_key));
        let got: Vec<Vec<String>> = n.iter().map(instances).collect();
        // a: only the critical one (its warning is inhibited); b: the
        // warning; c: silenced, nothing.
        assert_eq!(got, [vec!["a:firing"], vec!["b:firing"]]);
        assert_eq!(body(&n[0])["alerts"][0]["labels"]["severity"], "critical");
        let warm_a = alert("Warm", "a", "warning", None);
        assert_eq!(d.muted(&warm_a, &[], 10_000), Some(Muted::Inhibited));
    }

    #[test]
    fn alertmanager_receivers_get_every_alert_again_each_resend_delay() {
        let mut d = Dispatcher::new(
            cfg("[[route.routes]]\nmatchers = ['severity=\"critical\"']\nreceiver = \"am\"\n"),
            String::new(),
            HashMap::new(),
        );
        d.on_batch(&batch(vec![alert("Hot", "a", "critical", None)]), 0);
        let n = d.flush(0, &[]);
        assert_eq!(n.len(), 2, "one per Alertmanager");
        assert_eq!(n[0].target, "http://a:9093/api/v2/alerts");
        let b = body(&n[0]);
        assert_eq!(b[0]["labels"]["alertname"], "Hot");
        // endsAt = now + 4 x max(1s interval, 1m resend delay).
        assert_eq!(b[0]["endsAt"], "1970-01-01T00:04:00Z");
        assert!(d.flush(59_999, &[]).is_empty());
        assert_eq!(d.flush(60_000, &[]).len(), 2);
        d.on_batch(
            &batch(vec![alert("Hot", "a", "critical", Some(61_000))]),
            61_000,
        );
        let n = d.flush(61_000, &[]);
        assert_eq!(body(&n[0])[0]["endsAt"], "1970-01-01T00:01:01Z");
    }

    #[test]
    fn an_alert_no_longer_reported_resolves_when_it_runs_out() {
        let mut d = Dispatcher::new(cfg(""), String::new(), HashMap::new());
        d.on_batch(&batch(vec![alert("Down", "a", "page", None)]), 0);
        assert_eq!(d.flush(10_000, &[]).len(), 1);
        let n = d.flush(250_000, &[]);
        assert_eq!(instances(&n[0]), ["a:resolved"]);
        assert_eq!(body(&n[0])["alerts"][0]["endsAt"], "1970-01-01T00:04:00Z");
    }
}
