//! The notification settings in the collector's TOML file: `[[receiver]]`,
//! the `[route]` tree, `[[inhibit_rule]]` and `[notify]`, as the file spells
//! them and as checked values. Every check names the key and where it is
//! (receiver name, route path); nothing here sends or stores anything.

use super::matcher::Matcher;
use super::route::{GroupBy, Route};
use super::tls::{self, Tls};
use nines_shared::duration::parse_duration;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// One `[[receiver]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileReceiver {
    /// Name that routes refer to.
    pub name: String,
    /// Send resolved notifications too (default true).
    pub send_resolved: Option<bool>,
    /// A webhook.
    pub webhook: Option<FileWebhook>,
    /// One or more Alertmanagers (API v2).
    pub alertmanager: Option<FileAlertmanager>,
}

/// `webhook = {...}` of a receiver.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileWebhook {
    /// `http://` or `https://` URL the payload is POSTed to.
    pub url: String,
    /// HMAC-SHA256 key; when set, requests carry `X-Nines-Signature`.
    pub secret: Option<String>,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Longest one request may take (default 10s).
    pub timeout: Option<String>,
    /// Most alerts in one payload, 0 for all (default 0).
    pub max_alerts: Option<usize>,
    /// PEM file of CA certificates trusted for `https://` instead of the
    /// system's.
    pub ca_file: Option<String>,
    /// Accept any server certificate (default false; tests and labs only).
    pub insecure_skip_verify: Option<bool>,
}

/// `alertmanager = {...}` of a receiver.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAlertmanager {
    /// Base URLs, e.g. `http://127.0.0.1:9093`.
    pub urls: Vec<String>,
    /// Longest one request may take (default 10s).
    pub timeout: Option<String>,
    /// How often firing alerts are sent again (default 1m).
    pub resend_delay: Option<String>,
    /// PEM file of CA certificates trusted for `https://` instead of the
    /// system's.
    pub ca_file: Option<String>,
    /// Accept any server certificate (default false; tests and labs only).
    pub insecure_skip_verify: Option<bool>,
}

/// `[route]` and each of its `[[route.routes]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRoute {
    /// Receiver name (required at the root; inherited below).
    pub receiver: Option<String>,
    /// Matchers an alert must satisfy (the root matches everything).
    #[serde(default)]
    pub matchers: Vec<String>,
    /// Labels that split alerts into groups; `["..."]` for every label.
    pub group_by: Option<Vec<String>>,
    /// Wait before a new group's first notification (default 30s).
    pub group_wait: Option<String>,
    /// Wait between notifications of a changed group (default 5m).
    pub group_interval: Option<String>,
    /// Wait before repeating an unchanged notification (default 4h).
    pub repeat_interval: Option<String>,
    /// Keep looking at the next sibling routes after a match (default false).
    #[serde(rename = "continue")]
    pub continue_: Option<bool>,
    /// Child routes, tried in order.
    #[serde(default)]
    pub routes: Vec<FileRoute>,
}

/// One `[[inhibit_rule]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileInhibitRule {
    /// Matchers of the alert that mutes.
    pub source_matchers: Vec<String>,
    /// Matchers of the alerts that are muted.
    pub target_matchers: Vec<String>,
    /// Labels that must be equal in both.
    #[serde(default)]
    pub equal: Vec<String>,
}

/// `[notify]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileNotify {
    /// Give up on a notification this long after it was queued (default 24h).
    pub max_age: Option<String>,
    /// First retry delay (default 1s).
    pub backoff_min: Option<String>,
    /// Longest retry delay (default 5m).
    pub backoff_max: Option<String>,
    /// How long delivered and failed notifications stay listed (default 7d).
    pub keep: Option<String>,
    /// Base URL in payloads (`externalURL`, `generatorURL`); default the
    /// listen address.
    pub external_url: Option<String>,
}

/// A checked receiver.
#[derive(Debug, Clone)]
pub struct Receiver {
    /// Its name.
    pub name: String,
    /// Send resolved notifications.
    pub send_resolved: bool,
    /// Where and how.
    pub kind: ReceiverKind,
}

/// Where a receiver sends.
#[derive(Debug, Clone)]
pub enum ReceiverKind {
    /// A webhook.
    Webhook(Webhook),
    /// Alertmanagers.
    Alertmanager(Alertmanagers),
}

/// A checked webhook.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// URL.
    pub url: String,
    /// HMAC key.
    pub secret: Option<String>,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// Request timeout.
    pub timeout: Duration,
    /// Most alerts per payload (0: all).
    pub max_alerts: usize,
    /// Certificate checks for `https://`.
    pub tls: Tls,
}

/// Checked Alertmanager targets.
#[derive(Debug, Clone)]
pub struct Alertmanagers {
    /// Base URLs without a trailing slash.
    pub urls: Vec<String>,
    /// Request timeout.
    pub timeout: Duration,
    /// Re-send period of firing alerts.
    pub resend_delay: Duration,
    /// Certificate checks for `https://`.
    pub tls: Tls,
}

impl ReceiverKind {
    /// Certificate checks for `https://` targets.
    pub fn tls(&self) -> &Tls {
        match self {
            ReceiverKind::Webhook(w) => &w.tls,
            ReceiverKind::Alertmanager(a) => &a.tls,
        }
    }
}

/// A checked inhibit rule.
#[derive(Debug, Clone)]
pub struct InhibitRule {
    /// Matchers of the muting alert.
    pub source: Vec<Matcher>,
    /// Matchers of the muted alerts.
    pub target: Vec<Matcher>,
    /// Labels equal in both.
    pub equal: Vec<String>,
}

/// The checked notification settings.
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    /// Receivers by name.
    pub receivers: BTreeMap<String, Receiver>,
    /// The routing tree; None sends nothing.
    pub route: Option<Route>,
    /// Inhibit rules (the built-in default when the file has none).
    pub inhibit_rules: Vec<InhibitRule>,
    /// Give-up age of a notification.
    pub max_age: Duration,
    /// First retry delay.
    pub backoff_min: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// How long finished notifications stay listed.
    pub keep: Duration,
    /// Base URL in payloads; empty for the listen address.
    pub external_url: String,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            receivers: BTreeMap::new(),
            route: None,
            inhibit_rules: vec![default_inhibit_rule()],
            max_age: Duration::from_secs(24 * 3600),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            keep: Duration::from_secs(7 * 24 * 3600),
            external_url: String::new(),
        }
    }
}

/// The built-in inhibit rule: a `severity="critical"` alert mutes
/// `severity="warning"` alerts with the same `instance` (and alertname
/// need not match).
pub fn default_inhibit_rule() -> InhibitRule {
    InhibitRule {
        source: vec![Matcher::parse(r#"severity="critical""#).expect("valid")],
        target: vec![Matcher::parse(r#"severity="warning""#).expect("valid")],
        equal: vec!["instance".into()],
    }
}

/// A bad notification setting: the key, where it is, and why.
#[derive(Debug)]
pub struct Invalid {
    /// The key, e.g. `route.group_wait`.
    pub key: &'static str,
    /// Where, e.g. `[[receiver]] "ops"` or `route.routes[1]`.
    pub place: String,
    /// What is wrong.
    pub reason: String,
}

fn invalid(key: &'static str, place: &str, reason: impl Into<String>) -> Invalid {
    Invalid {
        key,
        place: place.to_string(),
        reason: reason.into(),
    }
}

fn duration(
    key: &'static str,
    place: &str,
    v: &Option<String>,
    default: Duration,
) -> Result<Duration, Invalid> {
    match v {
        None => Ok(default),
        Some(s) => parse_duration(s).map_err(|e| invalid(key, place, e.to_string())),
    }
}

/// An `http://` or `https://` URL with a host, or why not.
fn check_url(u: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(u).map_err(|e| format!("{u:?} is not a URL ({e})"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("{u:?}: only http:// and https:// are supported"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("{u:?} has no host"));
    }
    Ok(())
}

/// The TLS keys of a receiver checked, and its `ca_file` read (relative to
/// `base`, the config file's directory). `keys` are the `ca_file` and
/// `insecure_skip_verify` keys as errors name them.
fn check_tls(
    keys: (&'static str, &'static str),
    place: &str,
    urls: &[&str],
    ca_file: &Option<String>,
    insecure_skip_verify: Option<bool>,
    base: Option<&Path>,
) -> Result<Tls, Invalid> {
    let insecure = insecure_skip_verify.unwrap_or(false);
    let https = urls.iter().any(|u| u.starts_with("https:"));
    if !https && (ca_file.is_some() || insecure) {
        let key = if ca_file.is_some() { keys.0 } else { keys.1 };
        return Err(invalid(key, place, "applies to https:// URLs only"));
    }
    let ca = match ca_file {
        None => None,
        Some(_) if insecure => {
            return Err(invalid(
                keys.0,
                place,
                "is not used with insecure_skip_verify = true (set only one)",
            ));
        }
        Some(f) if f.is_empty() => return Err(invalid(keys.0, place, "is empty")),
        Some(f) => {
            let p = Path::new(f);
            let p = match base {
                Some(b) if p.is_relative() => b.join(p),
                _ => p.to_path_buf(),
            };
            Some(tls::read_ca_file(&p).map_err(|e| invalid(keys.0, place, e))?)
        }
    };
    Ok(Tls {
        ca,
        insecure_skip_verify: insecure,
    })
}

/// Checks the notification tables of the file; relative `ca_file` paths are
/// relative to `base`.
pub fn resolve(
    receivers: &[FileReceiver],
    route: Option<&FileRoute>,
    inhibit: Option<&[FileInhibitRule]>,
    n: &FileNotify,
    base: Option<&Path>,
) -> Result<NotifyConfig, Invalid> {
    let mut out = BTreeMap::new();
    for r in receivers {
        let place = format!("[[receiver]] {:?}", r.name);
        if r.name.is_empty() {
            return Err(invalid("receiver.name", &place, "must not be empty"));
        }
        let kind = match (&r.webhook, &r.alertmanager) {
            (Some(w), None) => {
                check_url(&w.url).map_err(|e| invalid("receiver.webhook.url", &place, e))?;
                let timeout = duration(
                    "receiver.webhook.timeout",
                    &place,
                    &w.timeout,
                    Duration::from_secs(10),
                )?;
                if timeout.is_zero() {
                    return Err(invalid(
                        "receiver.webhook.timeout",
                        &place,
                        "must be above zero",
                    ));
                }
                for (k, v) in &w.headers {
                    let lower = k.to_ascii_lowercase();
                    if [
                        "content-type",
                        "content-length",
                        "host",
                        "x-nines-signature",
                    ]
                    .contains(&lower.as_str())
                    {
                        return Err(invalid(
                            "receiver.webhook.headers",
                            &place,
                            format!("{k:?} is set by the collector itself"),
                        ));
                    }
                    if reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_err()
                        || reqwest::header::HeaderValue::from_str(v).is_err()
                    {
                        return Err(invalid(
                            "receiver.webhook.headers",
                            &place,
                            format!("{k:?}: {v:?} is not a valid HTTP header"),
                        ));
                    }
                }
                if matches!(&w.secret, Some(s) if s.is_empty()) {
                    return Err(invalid(
                        "receiver.webhook.secret",
                        &place,
                        "is empty (leave it out to send unsigned)",
                    ));
                }
                let tls = check_tls(
                    (
                        "receiver.webhook.ca_file",
                        "receiver.webhook.insecure_skip_verify",
                    ),
                    &place,
                    &[&w.url],
                    &w.ca_file,
                    w.insecure_skip_verify,
                    base,
                )?;
                ReceiverKind::Webhook(Webhook {
                    url: w.url.clone(),
                    secret: w.secret.clone(),
                    headers: w
                        .headers
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    timeout,
                    max_alerts: w.max_alerts.unwrap_or(0),
                    tls,
                })
            }
            (None, Some(a)) => {
                if a.urls.is_empty() {
                    return Err(invalid(
                        "receiver.alertmanager.urls",
                        &place,
                        "lists no URL",
                    ));
                }
                for u in &a.urls {
                    check_url(u).map_err(|e| invalid("receiver.alertmanager.urls", &place, e))?;
                }
                let timeout = duration(
                    "receiver.alertmanager.timeout",
                    &place,
                    &a.timeout,
                    Duration::from_secs(10),
                )?;
                let resend_delay = duration(
                    "receiver.alertmanager.resend_delay",
                    &place,
                    &a.resend_delay,
                    Duration::from_secs(60),
                )?;
                if timeout.is_zero() || resend_delay < Duration::from_millis(100) {
                    return Err(invalid(
                        "receiver.alertmanager.timeout",
                        &place,
                        "timeout must be above zero and resend_delay at least 100ms",
                    ));
                }
                let urls: Vec<&str> = a.urls.iter().map(String::as_str).collect();
                let tls = check_tls(
                    (
                        "receiver.alertmanager.ca_file",
                        "receiver.alertmanager.insecure_skip_verify",
                    ),
                    &place,
                    &urls,
                    &a.ca_file,
                    a.insecure_skip_verify,
                    base,
                )?;
                ReceiverKind::Alertmanager(Alertmanagers {
                    urls: a
                        .urls
                        .iter()
                        .map(|u| u.trim_end_matches('/').to_string())
                        .collect(),
                    timeout,
                    resend_delay,
                    tls,
                })
            }
            _ => {
                return Err(invalid(
                    "receiver",
                    &place,
                    "needs exactly one of `webhook` or `alertmanager`",
                ));
            }
        };
        let receiver = Receiver {
            name: r.name.clone(),
            send_resolved: r.send_resolved.unwrap_or(true),
            kind,
        };
        if out.insert(r.name.clone(), receiver).is_some() {
            return Err(invalid("receiver.name", &place, "is defined twice"));
        }
    }

    let route = match route {
        None if !out.is_empty() => {
            return Err(invalid(
                "route",
                "",
                "receivers are defined but there is no [route] to send to them",
            ));
        }
        None => None,
        Some(r) => {
            let root = Route::root_defaults();
            let mut next_id = 0;
            Some(resolve_route(r, "route", &root, &out, true, &mut next_id)?)
        }
    };

    let inhibit_rules = match inhibit {
        None => vec![default_inhibit_rule()],
        Some(rules) => {
            let mut v = Vec::new();
            for (i, r) in rules.iter().enumerate() {
                let place = format!("[[inhibit_rule]] #{}", i + 1);
                let parse = |key, ms: &[String]| {
                    ms.iter()
                        .map(|m| Matcher::parse(m).map_err(|e| invalid(key, &place, e)))
                        .collect::<Result<Vec<_>, _>>()
                };
                let source = parse("inhibit_rule.source_matchers", &r.source_matchers)?;
                let target = parse("inhibit_rule.target_matchers", &r.target_matchers)?;
                if source.is_empty() || target.is_empty() {
                    return Err(invalid(
                        "inhibit_rule",
                        &place,
                        "source_matchers and target_matchers must each list a matcher",
                    ));
                }
                v.push(InhibitRule {
                    source,
                    target,
                    equal: r.equal.clone(),
                });
            }
            v
        }
    };

    let place = "[notify]";
    let d = NotifyConfig::default();
    let max_age = duration("notify.max_age", place, &n.max_age, d.max_age)?;
    let backoff_min = duration("notify.backoff_min", place, &n.backoff_min, d.backoff_min)?;
    let backoff_max = duration("notify.backoff_max", place, &n.backoff_max, d.backoff_max)?;
    let keep = duration("notify.keep", place, &n.keep, d.keep)?;
    if backoff_min < Duration::from_millis(10) || backoff_max < backoff_min {
        return Err(invalid(
            "notify.backoff_min",
            place,
            format!(
                "backoff_min {backoff_min:?} must be at least 10ms and at most backoff_max {backoff_max:?}"
            ),
        ));
    }
    if max_age < Duration::from_secs(1) {
        return Err(invalid("notify.max_age", place, "must be at least 1s"));
    }
    let external_url = n.external_url.clone().unwrap_or_default();
    if !external_url.is_empty() {
        reqwest::Url::parse(&external_url).map_err(|e| {
            invalid(
                "notify.external_url",
                place,
                format!("{external_url:?}: {e}"),
            )
        })?;
    }
    Ok(NotifyConfig {
        receivers: out,
        route,
        inhibit_rules,
        max_age,
        backoff_min,
        backoff_max,
        keep,
        external_url: external_url.trim_end_matches('/').to_string(),
    })
}

fn resolve_route(
    r: &FileRoute,
    place: &str,
    parent: &Route,
    receivers: &BTreeMap<String, Receiver>,
    root: bool,
    next_id: &mut usize,
) -> Result<Route, Invalid> {
    let receiver = match (&r.receiver, root) {
        (Some(name), _) => {
            if !receivers.contains_key(name) {
                return Err(invalid(
                    "route.receiver",
                    place,
                    format!("unknown receiver {name:?}"),
                ));
            }
            name.clone()
        }
        (None, true) => {
            return Err(invalid(
                "route.receiver",
                place,
                "the root route needs a receiver",
            ));
        }
        (None, false) => parent.receiver.clone(),
    };
    if root && !r.matchers.is_empty() {
        return Err(invalid(
            "route.matchers",
            place,
            "the root route matches every alert and takes no matchers",
        ));
    }
    let matchers = r
        .matchers
        .iter()
        .map(|m| Matcher::parse(m).map_err(|e| invalid("route.matchers", place, e)))
        .collect::<Result<Vec<_>, _>>()?;
    let group_by = match &r.group_by {
        None => parent.group_by.clone(),
        Some(v) if v.iter().any(|l| l == "...") => {
            if v.len() != 1 {
                return Err(invalid(
                    "route.group_by",
                    place,
                    "\"...\" (every label) must stand alone",
                ));
            }
            GroupBy::All
        }
        Some(v) => {
            for l in v {
                if Matcher::new(l, super::matcher::MatchOp::Equal, "").is_err() {
                    return Err(invalid(
                        "route.group_by",
                        place,
                        format!("{l:?} is not a label name"),
                    ));
                }
            }
            let mut v = v.clone();
            v.sort();
            v.dedup();
            GroupBy::Labels(v)
        }
    };
    let group_wait = duration("route.group_wait", place, &r.group_wait, parent.group_wait)?;
    let group_interval = duration(
        "route.group_interval",
        place,
        &r.group_interval,
        parent.group_interval,
    )?;
    let repeat_interval = duration(
        "route.repeat_interval",
        place,
        &r.repeat_interval,
        parent.repeat_interval,
    )?;
    if group_interval < Duration::from_millis(100) {
        return Err(invalid(
            "route.group_interval",
            place,
            "must be at least 100ms",
        ));
    }
    if repeat_interval < Duration::from_millis(100) {
        return Err(invalid(
            "route.repeat_interval",
            place,
            "must be at least 100ms",
        ));
    }
    let key = if root {
        "{}".to_string()
    } else {
        let ms: Vec<String> = matchers.iter().map(|m| m.to_string()).collect();
        format!("{}/{{{}}}", parent.key, ms.join(","))
    };
    let id = *next_id;
    *next_id += 1;
    let mut route = Route {
        id,
        key,
        receiver,
        matchers,
        group_by,
        group_wait,
        group_interval,
        repeat_interval,
        continue_: r.continue_.unwrap_or(false),
        routes: Vec::new(),
    };
    for (i, child) in r.routes.iter().enumerate() {
        let child_place = format!("{place}.routes[{i}]");
        let c = resolve_route(child, &child_place, &route, receivers, false, next_id)?;
        route.routes.push(c);
    }
    // Siblings with the same matchers would share a group key; tell them
    // apart by position.
    let mut seen = std::collections::BTreeSet::new();
    for (i, c) in route.routes.iter_mut().enumerate() {
        if !seen.insert(c.key.clone()) {
            c.key = format!("{}/{i}", c.key);
        }
    }
    Ok(route)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct F {
        #[serde(default)]
        receiver: Vec<FileReceiver>,
        route: Option<FileRoute>,
        inhibit_rule: Option<Vec<FileInhibitRule>>,
        #[serde(default)]
        notify: FileNotify,
    }

    fn load(text: &str) -> Result<NotifyConfig, Invalid> {
        let f: F = toml::from_str(text).unwrap();
        resolve(
            &f.receiver,
            f.route.as_ref(),
            f.inhibit_rule.as_deref(),
            &f.notify,
            None,
        )
    }

    const GOOD: &str = r#"
[[receiver]]
name = "hook"
webhook = { url = "http://127.0.0.1:1/x", secret = "s", headers = { "X-Team" = "ops" } }
[[receiver]]
name = "am"
alertmanager = { urls = ["http://127.0.0.1:9093/"] }
[route]
receiver = "hook"
group_by = ["alertname"]
[[route.routes]]
matchers = ['severity="critical"']
receiver = "am"
group_wait = "1s"
continue = true
"#;

    #[test]
    fn a_good_config_resolves_with_inherited_values() {
        let c = load(GOOD).unwrap();
        assert_eq!(c.receivers.len(), 2);
        let root = c.route.unwrap();
        assert_eq!(root.group_wait, Duration::from_secs(30));
        let child = &root.routes[0];
        assert_eq!(child.receiver, "am");
        assert_eq!(child.group_by, GroupBy::Labels(vec!["alertname".into()]));
        assert_eq!(child.group_wait, Duration::from_secs(1));
        assert_eq!(child.group_interval, Duration::from_secs(300));
        assert_eq!(child.repeat_interval, Duration::from_secs(4 * 3600));
        assert!(child.continue_);
        assert_eq!(child.key, r#"{}/{severity="critical"}"#);
        match &c.receivers["am"].kind {
            ReceiverKind::Alertmanager(a) => assert_eq!(a.urls, ["http://127.0.0.1:9093"]),
            k => panic!("{k:?}"),
        }
        assert_eq!(c.inhibit_rules.len(), 1, "the built-in rule");
    }

    #[test]
    fn an_empty_inhibit_list_removes_the_built_in_rule() {
        let c = load(&format!("inhibit_rule = []\n{GOOD}")).unwrap();
        assert!(c.inhibit_rules.is_empty());
    }

    #[test]
    fn bad_settings_name_key_place_and_reason() {
        for (text, key, want) in [
            (
                GOOD.replace("receiver = \"am\"", "receiver = \"nope\""),
                "route.receiver",
                "unknown receiver \"nope\"",
            ),
            (
                GOOD.replace(r#"'severity="critical"'"#, r#"'severity=~"("'"#),
                "route.matchers",
                "bad regex",
            ),
            (
                GOOD.replace("http://127.0.0.1:1/x", "ftp://x"),
                "receiver.webhook.url",
                "only http:// and https://",
            ),
            (
                GOOD.replace("\"X-Team\"", "\"Content-Type\""),
                "receiver.webhook.headers",
                "set by the collector",
            ),
            (
                GOOD.replace("http://127.0.0.1:1/x", "not a url"),
                "receiver.webhook.url",
                "not a URL",
            ),
            (
                GOOD.replace("group_wait = \"1s\"", "group_wait = \"soon\""),
                "route.group_wait",
                "soon",
            ),
            (
                format!(
                    "{GOOD}\n[[inhibit_rule]]\nsource_matchers = ['a=']\ntarget_matchers = ['b=~\"[\"']\n"
                ),
                "inhibit_rule.target_matchers",
                "bad regex",
            ),
            (
                GOOD.replace("[route]\nreceiver = \"hook\"\n", "[route]\n"),
                "route.receiver",
                "needs a receiver",
            ),
        ] {
            let e = match load(&text) {
                Err(e) => e,
                Ok(_) => panic!("accepted: {text}"),
            };
            assert_eq!(e.key, key, "{text}: {}", e.reason);
            assert!(e.reason.contains(want), "{}", e.reason);
        }
        let e = load(&GOOD.replace(r#"'severity="critical"'"#, r#"'severity>"x"'"#)).unwrap_err();
        assert_eq!(e.place, "route.routes[0]");
    }

    fn write(dir: &Path, name: &str, text: &str) -> String {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    }

    #[test]
    fn https_receivers_take_a_ca_file_or_skip_verification() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let good = write(dir.path(), "ca.pem", &ca.pem());
        let https = GOOD.replace("http://127.0.0.1:1/x", "https://hooks.example/x");
        let with =
            |extra: &str| https.replace("secret = \"s\"", &format!("secret = \"s\", {extra}"));
        // No TLS keys: the system's roots.
        let c = load(&https).unwrap();
        let t = c.receivers["hook"].kind.tls();
        assert!(t.ca.is_none() && !t.insecure_skip_verify);
        let c = load(&with(&format!("ca_file = {good:?}"))).unwrap();
        assert_eq!(c.receivers["hook"].kind.tls().ca.as_ref().unwrap().len(), 1);
        let c = load(&with("insecure_skip_verify = true")).unwrap();
        assert!(c.receivers["hook"].kind.tls().insecure_skip_verify);
        // Relative paths are relative to the config file's directory.
        let f: F = toml::from_str(&with("ca_file = \"ca.pem\"")).unwrap();
        let c = resolve(
            &f.receiver,
            f.route.as_ref(),
            None,
            &f.notify,
            Some(dir.path()),
        )
        .unwrap();
        assert!(c.receivers["hook"].kind.tls().ca.is_some());
        // Alertmanagers too.
        let am = https.replace(
            "urls = [\"http://127.0.0.1:9093/\"]",
            &format!("urls = [\"https://127.0.0.1:9093/\"], ca_file = {good:?}"),
        );
        match &load(&am).unwrap().receivers["am"].kind {
            ReceiverKind::Alertmanager(a) => assert!(a.tls.ca.is_some()),
            k => panic!("{k:?}"),
        }

        let missing = dir.path().join("nope.pem");
        let garbled = write(dir.path(), "garbled.pem", "not a certificate\n");
        let bad_b64 = write(
            dir.path(),
            "bad.pem",
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        );
        let not_a_cert = write(
            dir.path(),
            "junk.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        for (text, key, want) in [
            (
                with(&format!("ca_file = {:?}", missing.to_str().unwrap())),
                "receiver.webhook.ca_file",
                format!("cannot read {}", missing.display()),
            ),
            (
                with(&format!("ca_file = {garbled:?}")),
                "receiver.webhook.ca_file",
                format!("{garbled} holds no PEM CERTIFICATE block"),
            ),
            (
                with(&format!("ca_file = {bad_b64:?}")),
                "receiver.webhook.ca_file",
                format!("{bad_b64}: bad PEM"),
            ),
            (
                with(&format!("ca_file = {not_a_cert:?}")),
                "receiver.webhook.ca_file",
                format!("{not_a_cert}: certificate #1 is not usable"),
            ),
            (
                with(&format!("ca_file = {good:?}, insecure_skip_verify = true")),
                "receiver.webhook.ca_file",
                "set only one".to_string(),
            ),
            (
                GOOD.replace(
                    "secret = \"s\"",
                    &format!("secret = \"s\", ca_file = {good:?}"),
                ),
                "receiver.webhook.ca_file",
                "https:// URLs only".to_string(),
            ),
            (
                GOOD.replace(
                    "urls = [\"http://127.0.0.1:9093/\"]",
                    "urls = [\"http://127.0.0.1:9093/\"], insecure_skip_verify = true",
                ),
                "receiver.alertmanager.insecure_skip_verify",
                "https:// URLs only".to_string(),
            ),
        ] {
            let e = match load(&text) {
                Err(e) => e,
                Ok(_) => panic!("accepted: {text}"),
            };
            assert_eq!(e.key, key, "{text}: {}", e.reason);
            assert!(e.reason.contains(&want), "{} lacks {want}", e.reason);
            assert!(!e.place.is_empty(), "{text}");
        }
    }
}
