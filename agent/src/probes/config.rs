//! `[[probe]]` tables: what one active probe checks and how often, and the
//! checks that turn a table into a [`ValidProbe`]. Parsing and validation
//! only: nothing here resolves a name or opens a socket, so a bad probe
//! stops the agent at start with the probe, the key and the reason.

use nines_shared::duration::parse_duration;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls::RootCertStore;

/// How often a probe runs when `interval` is not set.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(15);
/// How long one attempt may take when `timeout` is not set (or the
/// interval, when that is shorter).
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// The shortest `interval`: probing more often than this is load on the
/// target, not monitoring.
pub const MIN_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// The longest `interval`, as for the agent's own sampling interval.
pub const MAX_PROBE_INTERVAL: Duration = Duration::from_secs(3600);
/// Statuses that count as success when `expect_status` is not set: any
/// 2xx, and 3xx since redirects are not followed by default.
pub const DEFAULT_EXPECT_STATUS: RangeInclusive<u16> = 200..=399;

/// Headers the prober writes itself; setting them would corrupt framing or
/// keep connections open across attempts.
const MANAGED_HEADERS: [&str; 5] = [
    "connection",
    "content-length",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
];

/// What a probe checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeKind {
    /// An HTTP/1.1 request to an `http://` or `https://` URL.
    Http,
    /// A TCP connect to `host:port`.
    Tcp,
}

impl ProbeKind {
    /// The word the config uses.
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Http => "http",
            ProbeKind::Tcp => "tcp",
        }
    }
}

/// One entry of `expect_status`: a code (`204`) or a text range
/// (`"200-299"`, or `"2xx"` for a whole class).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum StatusSpec {
    /// A single status code.
    Code(i64),
    /// `"lo-hi"` (inclusive) or `"Nxx"`.
    Range(String),
}

/// One `[[probe]]` table as the TOML file spells it. Optional keys are
/// `Option` so validation can tell "not set" from "set to the default" and
/// reject HTTP-only keys on a TCP probe.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    /// Unique name; the `probe` label of every series.
    pub name: String,
    /// `http` or `tcp`.
    pub kind: ProbeKind,
    /// A URL (`http://`, `https://`) for `http`; `host:port` for `tcp`.
    pub target: String,
    /// How often to probe, e.g. `15s` (default 15s, 1s..1h).
    pub interval: Option<String>,
    /// Bound on one whole attempt, e.g. `5s` (default 5s or the interval,
    /// whichever is shorter; at most the interval).
    pub timeout: Option<String>,
    /// HTTP method (default `GET`); case-sensitive.
    pub method: Option<String>,
    /// Extra request headers; `Host` and `User-Agent` replace the prober's.
    pub headers: Option<BTreeMap<String, String>>,
    /// Request body, sent with a Content-Length.
    pub body: Option<String>,
    /// Statuses that count as success (default `["200-399"]`).
    pub expect_status: Option<Vec<StatusSpec>>,
    /// A regex the first 1 MiB of the response body must match.
    pub body_regex: Option<String>,
    /// Verify the server's certificate chain and name (default true).
    pub tls_verify: Option<bool>,
    /// Follow 3xx responses with a Location, up to 10 (default false).
    pub follow_redirects: Option<bool>,
}

/// Why a probe's settings are not usable: which probe, which key, why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("probe {probe:?}: setting `{key}`: {reason}")]
pub struct ProbeConfigError {
    /// The probe's `name` as given.
    pub probe: String,
    /// The key that is wrong.
    pub key: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

/// Where a probe connects: a name to resolve or an address as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Host {
    /// A DNS name, resolved on every attempt (so DNS is probed too).
    Name(String),
    /// An IP literal: no lookup.
    Ip(IpAddr),
}

/// The HTTP part of a validated probe.
#[derive(Debug, Clone)]
pub(crate) struct HttpCheck {
    pub(crate) url: url::Url,
    pub(crate) method: hyper::Method,
    pub(crate) headers: Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)>,
    pub(crate) body: Option<hyper::body::Bytes>,
    pub(crate) expect_status: Vec<RangeInclusive<u16>>,
    pub(crate) body_regex: Option<regex::bytes::Regex>,
    pub(crate) tls_verify: bool,
    pub(crate) follow_redirects: bool,
    /// Trust anchors for `tls_verify`; None means the system's store. Only
    /// tests set it, to trust their own CA.
    pub(crate) roots: Option<Arc<RootCertStore>>,
}

/// What one attempt does.
#[derive(Debug, Clone)]
pub(crate) enum Check {
    /// Resolve and connect.
    Tcp {
        /// Where.
        host: Host,
        /// Port.
        port: u16,
    },
    /// Resolve, connect, TLS if https, one request.
    Http(Box<HttpCheck>),
}

/// A probe whose every setting has been checked; made by
/// [`ProbeConfig::validate`], run by [`crate::probes::spawn`].
#[derive(Debug, Clone)]
pub struct ValidProbe {
    pub(crate) name: String,
    pub(crate) kind: ProbeKind,
    pub(crate) target: String,
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
    pub(crate) check: Check,
}

impl ValidProbe {
    /// The probe's name (its `probe` label).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `http` or `tcp`.
    pub fn kind(&self) -> ProbeKind {
        self.kind
    }

    /// The target as configured.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Time between attempts.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Bound on one attempt.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether an attempt may do a TLS handshake (https, or a redirect
    /// that could lead to https).
    pub(crate) fn may_use_tls(&self) -> bool {
        match &self.check {
            Check::Tcp { .. } => false,
            Check::Http(h) => h.url.scheme() == "https" || h.follow_redirects,
        }
    }

    /// Whether the body is matched against a regex.
    pub(crate) fn matches_body(&self) -> bool {
        matches!(&self.check, Check::Http(h) if h.body_regex.is_some())
    }

    /// The same probe, verifying certificates against `roots` instead of
    /// the system's store.
    #[cfg(test)]
    pub(crate) fn trusting(mut self, roots: Arc<RootCertStore>) -> Self {
        if let Check::Http(h) = &mut self.check {
            h.roots = Some(roots);
        }
        self
    }
}

impl ProbeConfig {
    /// Checks every setting and applies defaults.
    pub fn validate(&self) -> Result<ValidProbe, ProbeConfigError> {
        let err = |key: &'static str, reason: String| ProbeConfigError {
            probe: self.name.clone(),
            key,
            reason,
        };
        if self.name.trim().is_empty() {
            return Err(err("name", "must not be empty".into()));
        }
        if self.name.len() > 128 {
            return Err(err("name", "is longer than 128 bytes".into()));
        }
        if self.name.chars().any(char::is_control) {
            return Err(err("name", "must not contain control characters".into()));
        }

        let interval = match &self.interval {
            Some(s) => parse_duration(s).map_err(|e| err("interval", e.to_string()))?,
            None => DEFAULT_PROBE_INTERVAL,
        };
        if !(MIN_PROBE_INTERVAL..=MAX_PROBE_INTERVAL).contains(&interval) {
            return Err(err("interval", format!("{interval:?} is outside 1s..1h")));
        }
        let timeout = match &self.timeout {
            Some(s) => parse_duration(s).map_err(|e| err("timeout", e.to_string()))?,
            // A short interval shortens the default timeout rather than
            // failing a config that never mentioned a timeout.
            None => DEFAULT_PROBE_TIMEOUT.min(interval),
        };
        if timeout.is_zero() {
            return Err(err("timeout", "must be more than 0".into()));
        }
        if timeout > interval {
            return Err(err(
                "timeout",
                format!(
                    "{timeout:?} is longer than the interval ({interval:?}); attempts would overlap"
                ),
            ));
        }

        let check = match self.kind {
            ProbeKind::Tcp => self.tcp_check(&err)?,
            ProbeKind::Http => Check::Http(Box::new(self.http_check(&err)?)),
        };
        Ok(ValidProbe {
            name: self.name.clone(),
            kind: self.kind,
            target: self.target.trim().to_string(),
            interval,
            timeout,
            check,
        })
    }

    fn tcp_check(
        &self,
        err: &dyn Fn(&'static str, String) -> ProbeConfigError,
    ) -> Result<Check, ProbeConfigError> {
        // Keys that only mean something for HTTP are mistakes on a TCP
        // probe, most likely a wrong `kind`.
        let http_only: [(&'static str, bool); 7] = [
            ("method", self.method.is_some()),
            ("headers", self.headers.is_some()),
            ("body", self.body.is_some()),
            ("expect_status", self.expect_status.is_some()),
            ("body_regex", self.body_regex.is_some()),
            ("tls_verify", self.tls_verify.is_some()),
            ("follow_redirects", self.follow_redirects.is_some()),
        ];
        if let Some((key, _)) = http_only.iter().find(|(_, set)| *set) {
            return Err(err(key, "only applies to kind = \"http\"".into()));
        }
        let t = self.target.trim();
        if t.contains("://") {
            return Err(err(
                "target",
                format!("{t:?} is a URL; a tcp probe takes host:port (or use kind = \"http\")"),
            ));
        }
        let bad = |why: &str| err("target", format!("{t:?} is not host:port ({why})"));
        let (host, port) = if let Some(rest) = t.strip_prefix('[') {
            // [v6]:port
            let (h, p) = rest
                .split_once("]:")
                .ok_or_else(|| bad("expected [ipv6]:port"))?;
            let ip: std::net::Ipv6Addr = h.parse().map_err(|_| bad("bad IPv6 address"))?;
            (Host::Ip(IpAddr::V6(ip)), p)
        } else {
            let (h, p) = t.rsplit_once(':').ok_or_else(|| bad("no port"))?;
            if h.is_empty() {
                return Err(bad("no host"));
            }
            if h.contains(':') {
                return Err(bad("write an IPv6 address as [addr]:port"));
            }
            let host = match h.parse::<IpAddr>() {
                Ok(ip) => Host::Ip(ip),
                Err(_) => {
                    if !h
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
                    {
                        return Err(bad("host has characters a DNS name cannot have"));
                    }
                    Host::Name(h.to_string())
                }
            };
            (host, p)
        };
        let port: u16 = port.parse().map_err(|_| bad("port is not 1..65535"))?;
        if port == 0 {
            return Err(bad("port is not 1..65535"));
        }
        Ok(Check::Tcp { host, port })
    }

    fn http_check(
        &self,
        err: &dyn Fn(&'static str, String) -> ProbeConfigError,
    ) -> Result<HttpCheck, ProbeConfigError> {
        let t = self.target.trim();
        let url =
            url::Url::parse(t).map_err(|e| err("target", format!("{t:?} is not a URL ({e})")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(err(
                "target",
                format!("scheme {:?} is not http or https", url.scheme()),
            ));
        }
        if url.host().is_none() {
            return Err(err("target", format!("{t:?} has no host")));
        }
        if !url.username().is_empty() || url.password().is_some() {
            // They would end up in labels and logs; an Authorization header
            // says the same without that.
            return Err(err(
                "target",
                "credentials in the URL are not supported; set an Authorization header".into(),
            ));
        }

        let method = match self.method.as_deref() {
            None => hyper::Method::GET,
            Some(m) => {
                if m.bytes().any(|b| b.is_ascii_lowercase()) {
                    return Err(err(
                        "method",
                        format!(
                            "{m:?}: methods are case-sensitive; did you mean {:?}?",
                            m.to_ascii_uppercase()
                        ),
                    ));
                }
                hyper::Method::from_bytes(m.as_bytes())
                    .map_err(|_| err("method", format!("{m:?} is not an HTTP method token")))?
            }
        };

        let mut headers = Vec::new();
        for (name, value) in self.headers.iter().flatten() {
            let n = hyper::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| err("headers", format!("{name:?} is not a valid header name")))?;
            if MANAGED_HEADERS.contains(&n.as_str()) {
                return Err(err(
                    "headers",
                    format!("{name:?} is set by the prober and cannot be configured"),
                ));
            }
            if headers.iter().any(|(seen, _)| *seen == n) {
                return Err(err(
                    "headers",
                    format!("{name:?} is set twice (header names ignore case)"),
                ));
            }
            let v = hyper::header::HeaderValue::from_str(value).map_err(|_| {
                err(
                    "headers",
                    format!("the value of {name:?} has characters a header cannot carry"),
                )
            })?;
            headers.push((n, v));
        }

        let expect_status = match &self.expect_status {
            None => vec![DEFAULT_EXPECT_STATUS],
            Some(list) => {
                if list.is_empty() {
                    return Err(err(
                        "expect_status",
                        "must list at least one status or range".into(),
                    ));
                }
                list.iter()
                    .map(parse_status_spec)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|r| err("expect_status", r))?
            }
        };

        let body_regex = match &self.body_regex {
            None => None,
            Some(r) => Some(
                regex::bytes::Regex::new(r)
                    .map_err(|e| err("body_regex", format!("not a valid regex: {e}")))?,
            ),
        };

        Ok(HttpCheck {
            url,
            method,
            headers,
            body: self
                .body
                .as_ref()
                .map(|b| hyper::body::Bytes::from(b.clone().into_bytes())),
            expect_status,
            body_regex,
            tls_verify: self.tls_verify.unwrap_or(true),
            follow_redirects: self.follow_redirects.unwrap_or(false),
            roots: None,
        })
    }
}

/// Reads one `expect_status` entry.
fn parse_status_spec(s: &StatusSpec) -> Result<RangeInclusive<u16>, String> {
    let code = |n: i64| -> Result<u16, String> {
        match u16::try_from(n) {
            Ok(c) if (100..=599).contains(&c) => Ok(c),
            _ => Err(format!("{n} is not an HTTP status (100..599)")),
        }
    };
    let text_code = |t: &str| -> Result<u16, String> {
        let n: i64 = t
            .trim()
            .parse()
            .map_err(|_| format!("{t:?} is not a status code"))?;
        code(n)
    };
    match s {
        StatusSpec::Code(n) => code(*n).map(|c| c..=c),
        StatusSpec::Range(r) => {
            let r = r.trim();
            if let Some(class) = r.strip_suffix("xx").or_else(|| r.strip_suffix("XX")) {
                let c = text_code(&format!("{class}00"))?;
                return Ok(c..=c + 99);
            }
            match r.split_once('-') {
                Some((lo, hi)) => {
                    let (lo, hi) = (text_code(lo)?, text_code(hi)?);
                    if lo > hi {
                        return Err(format!("range {r:?} ends before it starts"));
                    }
                    Ok(lo..=hi)
                }
                None => text_code(r).map(|c| c..=c),
            }
        }
    }
}

/// Validates every probe and checks that names are unique (they are the
/// `probe` label, so two probes with one name would mix their series).
pub fn validate_all(probes: &[ProbeConfig]) -> Result<Vec<ValidProbe>, ProbeConfigError> {
    let mut out: Vec<ValidProbe> = Vec::with_capacity(probes.len());
    for p in probes {
        let v = p.validate()?;
        if out.iter().any(|o| o.name == v.name) {
            return Err(ProbeConfigError {
                probe: p.name.clone(),
                key: "name",
                reason: "another probe has this name".into(),
            });
        }
        out.push(v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> ProbeConfig {
        toml::from_str(text).unwrap()
    }

    fn error_of(text: &str) -> ProbeConfigError {
        parse(text).validate().unwrap_err()
    }

    #[test]
    fn defaults_apply() {
        let p = parse("name = \"web\"\nkind = \"http\"\ntarget = \"https://example.com/x?y=1\"\n")
            .validate()
            .unwrap();
        assert_eq!(p.interval(), DEFAULT_PROBE_INTERVAL);
        assert_eq!(p.timeout(), DEFAULT_PROBE_TIMEOUT);
        assert_eq!(p.kind(), ProbeKind::Http);
        let Check::Http(h) = &p.check else {
            panic!("not http")
        };
        assert_eq!(h.method, hyper::Method::GET);
        assert_eq!(h.expect_status, vec![200..=399]);
        assert!(h.tls_verify);
        assert!(!h.follow_redirects);
        assert!(h.body_regex.is_none());
        assert!(p.may_use_tls());
    }

    #[test]
    fn a_short_interval_shortens_the_default_timeout() {
        let p = parse("name = \"a\"\nkind = \"tcp\"\ntarget = \"db:5432\"\ninterval = \"2s\"\n")
            .validate()
            .unwrap();
        assert_eq!(p.timeout(), Duration::from_secs(2));
        assert!(matches!(&p.check, Check::Tcp { host: Host::Name(h), port: 5432 } if h == "db"));
    }

    #[test]
    fn every_key_parses() {
        let p = parse(
            r#"
            name = "api"
            kind = "http"
            target = "http://127.0.0.1:8080/health"
            interval = "30s"
            timeout = "10s"
            method = "POST"
            headers = { Authorization = "Bearer x", Host = "api.example" }
            body = "{}"
            expect_status = [200, "204", "300-302", "4xx"]
            body_regex = "ok|healthy"
            tls_verify = false
            follow_redirects = true
            "#,
        )
        .validate()
        .unwrap();
        assert_eq!(p.interval(), Duration::from_secs(30));
        assert_eq!(p.timeout(), Duration::from_secs(10));
        let Check::Http(h) = &p.check else {
            panic!("not http")
        };
        assert_eq!(h.method, hyper::Method::POST);
        assert_eq!(h.headers.len(), 2);
        assert_eq!(
            h.expect_status,
            vec![200..=200, 204..=204, 300..=302, 400..=499]
        );
        assert!(!h.tls_verify && h.follow_redirects);
        assert_eq!(h.body.as_deref(), Some(&b"{}"[..]));
    }

    #[test]
    fn tcp_targets() {
        for (t, host, port) in [
            ("127.0.0.1:22", Host::Ip("127.0.0.1".parse().unwrap()), 22),
            ("[::1]:443", Host::Ip("::1".parse().unwrap()), 443),
            ("db.internal:5432", Host::Name("db.internal".into()), 5432),
        ] {
            let p = parse(&format!("name = \"a\"\nkind = \"tcp\"\ntarget = \"{t}\"\n"))
                .validate()
                .unwrap();
            assert!(
                matches!(&p.check, Check::Tcp { host: h, port: p } if *h == host && *p == port),
                "{t}"
            );
        }
    }

    /// Each bad setting is reported with its key and a reason that names
    /// the problem.
    #[test]
    fn errors_name_the_key_and_the_reason() {
        let http = "name = \"p\"\nkind = \"http\"\n";
        let tcp = "name = \"p\"\nkind = \"tcp\"\n";
        let cases: Vec<(String, &str, &str)> = vec![
            (
                format!("{http}target = \"not a url\""),
                "target",
                "not a URL",
            ),
            (
                format!("{http}target = \"ftp://x/\""),
                "target",
                "not http or https",
            ),
            (
                format!("{http}target = \"http://u:pw@x/\""),
                "target",
                "credentials",
            ),
            (
                format!("{http}target = \"http://x/\"\ninterval = \"5s\"\ntimeout = \"6s\""),
                "timeout",
                "longer than the interval",
            ),
            (
                format!("{http}target = \"http://x/\"\ntimeout = \"0\""),
                "timeout",
                "more than 0",
            ),
            (
                format!("{http}target = \"http://x/\"\ninterval = \"500ms\""),
                "interval",
                "outside 1s..1h",
            ),
            (
                format!("{http}target = \"http://x/\"\ninterval = \"soon\""),
                "interval",
                "invalid duration",
            ),
            (
                format!("{http}target = \"http://x/\"\nbody_regex = \"(unclosed\""),
                "body_regex",
                "not a valid regex",
            ),
            (
                format!("{http}target = \"http://x/\"\nexpect_status = [\"299-200\"]"),
                "expect_status",
                "ends before it starts",
            ),
            (
                format!("{http}target = \"http://x/\"\nexpect_status = [700]"),
                "expect_status",
                "not an HTTP status",
            ),
            (
                format!("{http}target = \"http://x/\"\nexpect_status = [\"abc\"]"),
                "expect_status",
                "not a status code",
            ),
            (
                format!("{http}target = \"http://x/\"\nexpect_status = []"),
                "expect_status",
                "at least one",
            ),
            (
                format!("{http}target = \"http://x/\"\nmethod = \"get\""),
                "method",
                "case-sensitive",
            ),
            (
                format!("{http}target = \"http://x/\"\nmethod = \"GE T\""),
                "method",
                "not an HTTP method",
            ),
            (
                format!("{http}target = \"http://x/\"\nheaders = {{ \"Content-Length\" = \"3\" }}"),
                "headers",
                "set by the prober",
            ),
            (
                format!("{http}target = \"http://x/\"\nheaders = {{ \"bad name\" = \"3\" }}"),
                "headers",
                "not a valid header name",
            ),
            (
                format!("{http}target = \"http://x/\"\nheaders = {{ X = \"a\\nb\" }}"),
                "headers",
                "cannot carry",
            ),
            (
                format!("{http}target = \"http://x/\"\nheaders = {{ X-A = \"1\", x-a = \"2\" }}"),
                "headers",
                "set twice",
            ),
            (
                format!("{tcp}target = \"http://x:80/\""),
                "target",
                "is a URL",
            ),
            (format!("{tcp}target = \"x\""), "target", "no port"),
            (format!("{tcp}target = \"x:0\""), "target", "1..65535"),
            (format!("{tcp}target = \"x:99999\""), "target", "1..65535"),
            (format!("{tcp}target = \":80\""), "target", "no host"),
            (format!("{tcp}target = \"::1:80\""), "target", "[addr]:port"),
            (
                format!("{tcp}target = \"x:80\"\nmethod = \"GET\""),
                "method",
                "only applies",
            ),
            (
                format!("{tcp}target = \"x:80\"\ntls_verify = false"),
                "tls_verify",
                "only applies",
            ),
            (
                "name = \"\"\nkind = \"tcp\"\ntarget = \"x:1\"".to_string(),
                "name",
                "empty",
            ),
        ];
        for (text, key, reason) in cases {
            let e = error_of(&text);
            assert_eq!(e.key, key, "{text}: {e}");
            assert!(e.reason.contains(reason), "{text}: {e}");
            let shown = e.to_string();
            assert!(shown.contains(&format!("`{key}`")), "{shown}");
        }
    }

    #[test]
    fn unknown_keys_and_kinds_are_rejected_by_the_parser() {
        let e = toml::from_str::<ProbeConfig>(
            "name = \"a\"\nkind = \"tcp\"\ntarget = \"x:1\"\ntimout = \"1s\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("timout"), "{e}");
        let e = toml::from_str::<ProbeConfig>("name = \"a\"\nkind = \"icmp\"\ntarget = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("icmp"), "{e}");
    }

    #[test]
    fn names_must_be_unique() {
        let a = parse("name = \"a\"\nkind = \"tcp\"\ntarget = \"x:1\"\n");
        let e = validate_all(&[a.clone(), a]).unwrap_err();
        assert_eq!(e.key, "name");
        assert!(e.reason.contains("another probe"), "{e}");
    }
}
