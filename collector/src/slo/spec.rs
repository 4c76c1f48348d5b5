//! SLO definitions: the shape a config file (`[[slo]]`) or an API body
//! gives, its validation into a [`Slo`], and the PromQL each indicator
//! kind stands for. Nothing here queries, stores or evaluates; an invalid
//! definition is refused with the field and the reason.

use chrono::{DateTime, Datelike, TimeZone, Utc};
use nines_shared::duration::parse_duration;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Default SLO window.
pub const DEFAULT_WINDOW: &str = "30d";

/// Burn-rate windows always computed and reported, as in the SRE
/// workbook's table (alert windows configured elsewhere are added).
pub const STANDARD_BURN_WINDOWS: [&str; 7] = ["5m", "30m", "1h", "2h", "6h", "1d", "3d"];

/// Bucket bounds (seconds) the agent's latency histograms share: the
/// access-log, StatsD and probe histograms all use them.
pub const LATENCY_BOUNDS: [f64; 19] = nines_agent::samplers::histogram::LATENCY_BUCKETS_SECONDS;

/// An SLO as a config file or an API body spells it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SloDefinition {
    /// Unique name: letters, digits, `_`, `-`, `.`, `:`.
    #[serde(default)]
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Target, in percent, strictly between 0 and 100.
    pub objective: f64,
    /// `30d` (any duration), `calendar_month` or `calendar_quarter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// How time without data counts: `excluded` (default), `good`, `bad`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_data: Option<String>,
    /// What is measured.
    pub indicator: IndicatorDefinition,
    /// Burn-rate alerts; the SRE workbook's four when absent, none when
    /// empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burn_alerts: Option<Vec<BurnAlertDefinition>>,
    /// Raise `SloErrorBudgetExhausted` when the budget is spent (default
    /// true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_alert: Option<bool>,
}

/// The indicator's fields; which ones apply depends on `kind`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndicatorDefinition {
    /// `probe`, `requests`, `latency`, `host` or `ratio`.
    pub kind: String,
    /// probe: the probe's name (`probe` label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<String>,
    /// host (required), probe/requests/latency (optional): the `instance`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// requests: the counter (default `nines_http_requests_total`);
    /// latency: the histogram's base name (default
    /// `nines_http_request_duration_seconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// requests/latency: extra label matchers, e.g. `vhost="shop"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matchers: Option<String>,
    /// requests: the matchers of failed requests (default
    /// `status_class="5xx"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<String>,
    /// latency: requests at or under this many seconds are good; must be a
    /// bucket bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold_seconds: Option<f64>,
    /// ratio: PromQL of good events over `$window`, e.g.
    /// `sum(increase(jobs_ok_total[$window]))`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub good: Option<String>,
    /// ratio: PromQL of all events over `$window`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<String>,
}

/// One multi-window burn-rate alert as configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BurnAlertDefinition {
    /// `severity` label, e.g. `page` or `ticket`.
    pub severity: String,
    /// The long window, e.g. `1h`.
    pub long_window: String,
    /// The short window, e.g. `5m`.
    pub short_window: String,
    /// Both windows must burn faster than this.
    pub factor: f64,
    /// How long both must hold before firing (default 0s).
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_: Option<String>,
}

/// Where an SLO came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The collector's config file; read-only through the API.
    Config,
    /// The management API; kept in `slo.db`.
    Api,
}

impl Source {
    /// `config` or `api`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Config => "config",
            Source::Api => "api",
        }
    }
}

/// The period an SLO is judged over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SloWindow {
    /// The last `d`, moving.
    Rolling(Duration),
    /// Since the start of the current calendar month (UTC).
    CalendarMonth,
    /// Since the start of the current calendar quarter (UTC).
    CalendarQuarter,
}

impl SloWindow {
    /// Parses `30d`, `calendar_month` or `calendar_quarter`.
    pub fn parse(s: &str) -> Result<SloWindow, String> {
        match s {
            "calendar_month" => Ok(SloWindow::CalendarMonth),
            "calendar_quarter" => Ok(SloWindow::CalendarQuarter),
            _ => match parse_duration(s) {
                Ok(d) if d >= Duration::from_secs(1) => Ok(SloWindow::Rolling(d)),
                Ok(_) => Err(format!("{s:?} is shorter than 1s")),
                Err(e) => Err(format!(
                    "{s:?} is not a duration (like 30d), calendar_month or calendar_quarter: {e}"
                )),
            },
        }
    }

    /// `(start, end)` in ms of the whole period containing `t` (a rolling
    /// window ends at `t`).
    pub fn period(self, t: i64) -> (i64, i64) {
        match self {
            SloWindow::Rolling(d) => (t - d.as_millis() as i64, t),
            SloWindow::CalendarMonth | SloWindow::CalendarQuarter => {
                let now = Utc.timestamp_millis_opt(t).single().unwrap_or_default();
                let months = if self == SloWindow::CalendarMonth {
                    1
                } else {
                    3
                };
                let first = if months == 1 {
                    now.month0()
                } else {
                    now.month0() / 3 * 3
                };
                let start = month_start(now.year(), first);
                let end = month_start(now.year(), first + months);
                (start, end)
            }
        }
    }

    /// Length of the whole period containing `t`, in ms.
    pub fn length_ms(self, t: i64) -> i64 {
        let (s, e) = self.period(t);
        e - s
    }

    /// How much of the window lies before `t` (ms): the range the SLI is
    /// computed over at `t`.
    pub fn elapsed_ms(self, t: i64) -> i64 {
        match self {
            SloWindow::Rolling(d) => d.as_millis() as i64,
            _ => (t - self.period(t).0).max(1000),
        }
    }
}

/// Midnight UTC on the first of month `month0` (0-based, may overflow
/// into the next years) of `year`, in ms.
fn month_start(year: i32, month0: u32) -> i64 {
    let y = year + (month0 / 12) as i32;
    let m = month0 % 12 + 1;
    Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0)
        .single()
        .map(|d: DateTime<Utc>| d.timestamp_millis())
        .unwrap_or(0)
}

/// How time without data counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingData {
    /// Left out: the SLI is over the time with data.
    Excluded,
    /// Counted as good.
    Good,
    /// Counted as bad.
    Bad,
}

impl MissingData {
    /// Parses `excluded`, `good` or `bad`.
    pub fn parse(s: &str) -> Result<MissingData, String> {
        match s {
            "excluded" => Ok(MissingData::Excluded),
            "good" => Ok(MissingData::Good),
            "bad" => Ok(MissingData::Bad),
            _ => Err(format!("{s:?} is not excluded, good or bad")),
        }
    }

    /// The SLI once `missing` (share of time without data) is counted as
    /// this says; `sli` is the SLI over the time with data.
    pub fn blend(self, sli: Option<f64>, missing: f64) -> Option<f64> {
        let m = missing.clamp(0.0, 1.0);
        match (self, sli) {
            (MissingData::Excluded, s) => s,
            (MissingData::Good, Some(s)) => Some((1.0 - m) * s + m),
            (MissingData::Bad, Some(s)) => Some((1.0 - m) * s),
            (MissingData::Good, None) => Some(1.0),
            (MissingData::Bad, None) => Some(0.0),
        }
    }
}

/// A checked indicator.
#[derive(Debug, Clone, PartialEq)]
pub enum Indicator {
    /// Counters of events: good and/or bad and/or total, as selectors.
    Counters {
        /// Selector of good events' counters.
        good: Option<String>,
        /// Selector of bad events' counters.
        bad: Option<String>,
        /// Selector of all events' counters.
        total: Option<String>,
    },
    /// Share of `up` samples that are 1.
    Host {
        /// The `up` selector.
        up: String,
    },
    /// User PromQL with `$window`.
    Ratio {
        /// Good events over `$window`.
        good: String,
        /// All events over `$window`.
        total: String,
    },
}

/// A multi-window burn-rate alert, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct BurnAlert {
    /// `severity` label.
    pub severity: String,
    /// Long window and its label.
    pub long: (Duration, String),
    /// Short window and its label.
    pub short: (Duration, String),
    /// Burn-rate threshold.
    pub factor: f64,
    /// Pending time.
    pub for_: Duration,
}

/// A checked SLO.
#[derive(Debug, Clone, PartialEq)]
pub struct Slo {
    /// The definition as given (for the API and `slo.db`).
    pub def: SloDefinition,
    /// Where it came from.
    pub source: Source,
    /// Objective as a ratio (0.999).
    pub objective: f64,
    /// The period.
    pub window: SloWindow,
    /// Missing-data policy.
    pub missing: MissingData,
    /// What is measured.
    pub indicator: Indicator,
    /// Burn-rate alerts.
    pub burn_alerts: Vec<BurnAlert>,
    /// Whether the budget-exhausted alert is raised.
    pub budget_alert: bool,
}

/// Why a definition was refused: the field (dotted path) and the reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SloError {
    /// `name`, `objective`, `indicator.good`, `burn_alerts[1].factor`, ...
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> SloError {
    SloError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The label value of a duration: its largest exact unit (`5m`, `1d`).
pub fn duration_label(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    if ms == 0 {
        return "0s".into();
    }
    for (unit, size) in [
        ("w", 7 * 86_400_000u64),
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms > 0 && ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// A PromQL range for `ms` milliseconds.
pub fn promql_range(ms: i64) -> String {
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// The SRE workbook's four alerts.
pub fn default_burn_alerts() -> Vec<BurnAlertDefinition> {
    [
        ("page", "1h", "5m", 14.4),
        ("page", "6h", "30m", 6.0),
        ("ticket", "1d", "2h", 3.0),
        ("ticket", "3d", "6h", 1.0),
    ]
    .into_iter()
    .map(|(s, l, sh, f)| BurnAlertDefinition {
        severity: s.into(),
        long_window: l.into(),
        short_window: sh.into(),
        factor: f,
        for_: None,
    })
    .collect()
}

fn quote(v: &str) -> String {
    let mut s = String::from("\"");
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

/// Checks that `m` is a comma-separated list of label matchers.
fn check_matchers(field: &str, m: &str) -> Result<(), SloError> {
    let text = format!("x{{{m}}}");
    match promql_parser::parser::parse(&text) {
        Ok(promql_parser::parser::Expr::VectorSelector(_)) => Ok(()),
        Ok(_) => Err(err(field, format!("{m:?} is not a list of label matchers"))),
        Err(e) => Err(err(
            field,
            format!("{m:?} is not a list of label matchers: {e}"),
        )),
    }
}

fn selector(metric: &str, parts: &[String]) -> String {
    let parts: Vec<&str> = parts
        .iter()
        .map(String::as_str)
        .filter(|p| !p.is_empty())
        .collect();
    format!("{metric}{{{}}}", parts.join(","))
}

fn is_valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.:".contains(c))
}

fn required<'a>(v: &'a Option<String>, field: &str, kind: &str) -> Result<&'a str, SloError> {
    match v.as_deref() {
        Some(s) if !s.trim().is_empty() => Ok(s),
        _ => Err(err(field, format!("is required for kind {kind:?}"))),
    }
}

fn refuse_other_fields(i: &IndicatorDefinition, allowed: &[&str]) -> Result<(), SloError> {
    let given = [
        ("probe", i.probe.is_some()),
        ("instance", i.instance.is_some()),
        ("metric", i.metric.is_some()),
        ("matchers", i.matchers.is_some()),
        ("errors", i.errors.is_some()),
        ("threshold_seconds", i.threshold_seconds.is_some()),
        ("good", i.good.is_some()),
        ("total", i.total.is_some()),
    ];
    for (name, set) in given {
        if set && !allowed.contains(&name) {
            return Err(err(
                format!("indicator.{name}"),
                format!("does not apply to kind {:?}", i.kind),
            ));
        }
    }
    Ok(())
}

fn check_promql(field: &str, expr: &str) -> Result<(), SloError> {
    if !expr.contains("$window") {
        return Err(err(
            field,
            "must use $window as the range of its counters, e.g. sum(increase(jobs_total[$window]))",
        ));
    }
    let probe = expr.replace("$window", "5m");
    promql_parser::parser::parse(&probe)
        .map(|_| ())
        .map_err(|e| err(field, format!("bad PromQL: {e}")))
}

/// The indicator's selectors or expressions, checked.
pub fn indicator(i: &IndicatorDefinition) -> Result<Indicator, SloError> {
    let instance = i
        .instance
        .as_deref()
        .map(|v| format!("instance={}", quote(v)))
        .unwrap_or_default();
    match i.kind.as_str() {
        "probe" => {
            refuse_other_fields(i, &["probe", "instance"])?;
            let probe = required(&i.probe, "indicator.probe", "probe")?;
            let parts = [format!("probe={}", quote(probe)), instance];
            Ok(Indicator::Counters {
                good: Some(selector("nines_probe_success_total", &parts)),
                bad: Some(selector("nines_probe_failure_total", &parts)),
                total: None,
            })
        }
        "requests" => {
            refuse_other_fields(i, &["instance", "metric", "matchers", "errors"])?;
            let metric = i.metric.as_deref().unwrap_or("nines_http_requests_total");
            if !nines_shared::is_valid_metric_name(metric) {
                return Err(err(
                    "indicator.metric",
                    format!("{metric:?} is not a metric name"),
                ));
            }
            let m = i.matchers.clone().unwrap_or_default();
            if !m.is_empty() {
                check_matchers("indicator.matchers", &m)?;
            }
            let errors = i
                .errors
                .clone()
                .unwrap_or_else(|| "status_class=\"5xx\"".into());
            check_matchers("indicator.errors", &errors)?;
            Ok(Indicator::Counters {
                good: None,
                bad: Some(selector(metric, &[m.clone(), instance.clone(), errors])),
                total: Some(selector(metric, &[m, instance])),
            })
        }
        "latency" => {
            refuse_other_fields(i, &["instance", "metric", "matchers", "threshold_seconds"])?;
            let metric = i
                .metric
                .as_deref()
                .unwrap_or("nines_http_request_duration_seconds");
            if !nines_shared::is_valid_metric_name(metric) {
                return Err(err(
                    "indicator.metric",
                    format!("{metric:?} is not a metric name"),
                ));
            }
            let m = i.matchers.clone().unwrap_or_default();
            if !m.is_empty() {
                check_matchers("indicator.matchers", &m)?;
            }
            let Some(t) = i.threshold_seconds else {
                return Err(err(
                    "indicator.threshold_seconds",
                    "is required for kind \"latency\"",
                ));
            };
            if !LATENCY_BOUNDS.contains(&t) {
                let list: Vec<String> = LATENCY_BOUNDS.iter().map(|b| b.to_string()).collect();
                return Err(err(
                    "indicator.threshold_seconds",
                    format!("{t} is not a bucket bound; valid: {}", list.join(", ")),
                ));
            }
            let le = format!("le={}", quote(&t.to_string()));
            Ok(Indicator::Counters {
                good: Some(selector(
                    &format!("{metric}_bucket"),
                    &[m.clone(), instance.clone(), le],
                )),
                bad: None,
                total: Some(selector(&format!("{metric}_count"), &[m, instance])),
            })
        }
        "host" => {
            refuse_other_fields(i, &["instance"])?;
            let inst = required(&i.instance, "indicator.instance", "host")?;
            Ok(Indicator::Host {
                up: format!("up{{job=\"node\",instance={}}}", quote(inst)),
            })
        }
        "ratio" => {
            refuse_other_fields(i, &["good", "total"])?;
            let good = required(&i.good, "indicator.good", "ratio")?;
            let total = required(&i.total, "indicator.total", "ratio")?;
            check_promql("indicator.good", good)?;
            check_promql("indicator.total", total)?;
            Ok(Indicator::Ratio {
                good: good.to_string(),
                total: total.to_string(),
            })
        }
        k => Err(err(
            "indicator.kind",
            format!("{k:?} is not probe, requests, latency, host or ratio"),
        )),
    }
}

fn increase(sel: &str, range: &str) -> String {
    format!("sum(increase({sel}[{range}]))")
}

impl Indicator {
    /// PromQL of the good events over `range` (a PromQL duration): one
    /// sample without labels, or nothing without data.
    pub fn good_expr(&self, range: &str) -> String {
        match self {
            Indicator::Counters { good: Some(g), .. } => increase(g, range),
            Indicator::Counters {
                good: None,
                bad: Some(b),
                total: Some(t),
            } => format!(
                "{} - ({} or vector(0))",
                increase(t, range),
                increase(b, range)
            ),
            Indicator::Counters { .. } => "vector(0)".into(),
            Indicator::Host { up } => format!("sum(sum_over_time({up}[{range}]))"),
            Indicator::Ratio { good, .. } => good.replace("$window", range),
        }
    }

    /// PromQL of all events over `range`.
    pub fn total_expr(&self, range: &str) -> String {
        match self {
            Indicator::Counters { total: Some(t), .. } => increase(t, range),
            Indicator::Counters {
                good: Some(g),
                bad: Some(b),
                total: None,
            } => format!(
                "({} or vector(0)) + ({} or vector(0))",
                increase(g, range),
                increase(b, range)
            ),
            Indicator::Counters { .. } => "vector(0)".into(),
            Indicator::Host { up } => format!("sum(count_over_time({up}[{range}]))"),
            Indicator::Ratio { total, .. } => total.replace("$window", range),
        }
    }

    /// PromQL that returns something at an instant exactly when the
    /// indicator has data then (within the lookback).
    pub fn presence_expr(&self) -> String {
        match self {
            Indicator::Counters { total: Some(t), .. } => format!("count({t})"),
            Indicator::Counters {
                good: Some(g),
                bad: Some(b),
                ..
            } => format!("count({g} or {b})"),
            Indicator::Counters { good, bad, .. } => format!(
                "count({})",
                good.as_deref().or(bad.as_deref()).unwrap_or("vector(0)")
            ),
            Indicator::Host { up } => format!("count({up})"),
            Indicator::Ratio { total, .. } => format!("count({})", total.replace("$window", "5m")),
        }
    }

    /// PromQL of the share of time with data over `range`, sampled every
    /// `step` (both PromQL durations; `points` is range / step).
    pub fn coverage_expr(&self, range: &str, step: &str, points: i64) -> String {
        format!(
            "sum(count_over_time(({})[{range}:{step}])) / {points}",
            self.presence_expr()
        )
    }
}

/// Checks `def` and builds the SLO.
pub fn validate(def: &SloDefinition, source: Source) -> Result<Slo, SloError> {
    if !is_valid_name(&def.name) {
        return Err(err(
            "name",
            format!(
                "{:?} must be 1 to 128 letters, digits, '_', '-', '.' or ':'",
                def.name
            ),
        ));
    }
    if !(def.objective > 0.0 && def.objective < 100.0) {
        return Err(err(
            "objective",
            format!(
                "{} must be a percentage strictly between 0 and 100",
                def.objective
            ),
        ));
    }
    let window = SloWindow::parse(def.window.as_deref().unwrap_or(DEFAULT_WINDOW))
        .map_err(|r| err("window", r))?;
    let missing = MissingData::parse(def.missing_data.as_deref().unwrap_or("excluded"))
        .map_err(|r| err("missing_data", r))?;
    let indicator = indicator(&def.indicator)?;
    let defs = def.burn_alerts.clone().unwrap_or_else(default_burn_alerts);
    let mut burn_alerts = Vec::new();
    for (n, a) in defs.iter().enumerate() {
        let f = |k: &str| format!("burn_alerts[{n}].{k}");
        if a.severity.is_empty()
            || !a
                .severity
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(err(
                f("severity"),
                format!("{:?} must be letters, digits or '_'", a.severity),
            ));
        }
        let win = |k: &str, s: &str| -> Result<(Duration, String), SloError> {
            match parse_duration(s) {
                Ok(d) if d >= Duration::from_secs(1) => Ok((d, duration_label(d))),
                Ok(_) => Err(err(f(k), format!("{s:?} is shorter than 1s"))),
                Err(e) => Err(err(f(k), format!("{s:?} is not a duration: {e}"))),
            }
        };
        let long = win("long_window", &a.long_window)?;
        let short = win("short_window", &a.short_window)?;
        if short.0 > long.0 {
            return Err(err(
                f("short_window"),
                "must not be longer than long_window",
            ));
        }
        if !(a.factor.is_finite() && a.factor > 0.0) {
            return Err(err(
                f("factor"),
                format!("{} must be a positive number", a.factor),
            ));
        }
        let for_ = match &a.for_ {
            None => Duration::ZERO,
            Some(s) => parse_duration(s).map_err(|e| err(f("for"), format!("{s:?}: {e}")))?,
        };
        burn_alerts.push(BurnAlert {
            severity: a.severity.clone(),
            long,
            short,
            factor: a.factor,
            for_,
        });
    }
    Ok(Slo {
        def: def.clone(),
        source,
        objective: def.objective / 100.0,
        window,
        missing,
        indicator,
        burn_alerts,
        budget_alert: def.budget_alert.unwrap_or(true),
    })
}

impl Slo {
    /// The burn-rate windows reported: the standard seven and every alert
    /// window, shortest first, with their labels.
    pub fn burn_windows(&self) -> Vec<(Duration, String)> {
        let mut w: Vec<(Duration, String)> = STANDARD_BURN_WINDOWS
            .iter()
            .filter_map(|s| parse_duration(s).ok().map(|d| (d, s.to_string())))
            .collect();
        for a in &self.burn_alerts {
            w.push(a.long.clone());
            w.push(a.short.clone());
        }
        w.sort();
        w.dedup_by(|a, b| a.0 == b.0);
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(kind: &str) -> SloDefinition {
        SloDefinition {
            name: "web".into(),
            description: String::new(),
            objective: 99.9,
            window: None,
            missing_data: None,
            indicator: IndicatorDefinition {
                kind: kind.into(),
                ..Default::default()
            },
            burn_alerts: None,
            budget_alert: None,
        }
    }

    #[test]
    fn probe_indicator_counts_successes_over_attempts() {
        let mut d = def("probe");
        d.indicator.probe = Some("home".into());
        let s = validate(&d, Source::Config).unwrap();
        assert_eq!(
            s.indicator.good_expr("1h"),
            "sum(increase(nines_probe_success_total{probe=\"home\"}[1h]))"
        );
        assert_eq!(
            s.indicator.total_expr("1h"),
            "(sum(increase(nines_probe_success_total{probe=\"home\"}[1h])) or vector(0)) + \
             (sum(increase(nines_probe_failure_total{probe=\"home\"}[1h])) or vector(0))"
        );
        assert_eq!(
            s.window,
            SloWindow::Rolling(Duration::from_secs(30 * 86400))
        );
        assert_eq!(s.missing, MissingData::Excluded);
        assert_eq!(s.burn_alerts.len(), 4);
        assert_eq!(s.burn_alerts[0].long.1, "1h");
    }

    #[test]
    fn requests_indicator_subtracts_server_errors() {
        let mut d = def("requests");
        d.indicator.matchers = Some("vhost=\"shop\"".into());
        let s = validate(&d, Source::Api).unwrap();
        assert_eq!(
            s.indicator.good_expr("5m"),
            "sum(increase(nines_http_requests_total{vhost=\"shop\"}[5m])) - \
             (sum(increase(nines_http_requests_total{vhost=\"shop\",status_class=\"5xx\"}[5m])) or vector(0))"
        );
        d.indicator.matchers = Some("vhost=".into());
        assert_eq!(
            validate(&d, Source::Api).unwrap_err().field,
            "indicator.matchers"
        );
    }

    #[test]
    fn latency_threshold_must_be_a_bucket_bound() {
        let mut d = def("latency");
        d.indicator.threshold_seconds = Some(0.25);
        let s = validate(&d, Source::Api).unwrap();
        assert!(s.indicator.good_expr("1h").contains("le=\"0.25\""));
        assert!(
            s.indicator
                .total_expr("1h")
                .contains("nines_http_request_duration_seconds_count")
        );
        d.indicator.threshold_seconds = Some(1.0);
        assert!(
            validate(&d, Source::Api)
                .unwrap()
                .indicator
                .good_expr("1h")
                .contains("le=\"1\"")
        );
        d.indicator.threshold_seconds = Some(0.3333);
        let e = validate(&d, Source::Api).unwrap_err();
        assert_eq!(e.field, "indicator.threshold_seconds");
        assert!(e.reason.contains("0.25, 0.3"), "{e}");
    }

    #[test]
    fn host_and_ratio_indicators() {
        let mut d = def("host");
        d.indicator.instance = Some("web-1".into());
        let s = validate(&d, Source::Api).unwrap();
        assert_eq!(
            s.indicator.good_expr("1d"),
            "sum(sum_over_time(up{job=\"node\",instance=\"web-1\"}[1d]))"
        );
        let mut d = def("ratio");
        d.indicator.good = Some("sum(increase(ok_total[$window]))".into());
        d.indicator.total = Some("sum(increase(all_total[$window]))".into());
        let s = validate(&d, Source::Api).unwrap();
        assert_eq!(
            s.indicator.total_expr("300s"),
            "sum(increase(all_total[300s]))"
        );
        d.indicator.total = Some("sum(increase(all_total[$window])".into());
        let e = validate(&d, Source::Api).unwrap_err();
        assert_eq!(e.field, "indicator.total");
        assert!(e.reason.contains("bad PromQL"), "{e}");
        d.indicator.total = Some("sum(all_total)".into());
        assert!(
            validate(&d, Source::Api)
                .unwrap_err()
                .reason
                .contains("$window")
        );
    }

    #[test]
    fn bad_fields_are_named() {
        let mut d = def("probe");
        d.indicator.probe = Some("p".into());
        for (objective, ok) in [
            (0.0, false),
            (100.0, false),
            (-1.0, false),
            (f64::NAN, false),
            (99.0, true),
        ] {
            d.objective = objective;
            assert_eq!(validate(&d, Source::Api).is_ok(), ok, "{objective}");
        }
        d.window = Some("fortnight".into());
        assert_eq!(validate(&d, Source::Api).unwrap_err().field, "window");
        d.window = Some("calendar_quarter".into());
        d.missing_data = Some("maybe".into());
        assert_eq!(validate(&d, Source::Api).unwrap_err().field, "missing_data");
        d.missing_data = None;
        d.indicator.threshold_seconds = Some(1.0);
        assert_eq!(
            validate(&d, Source::Api).unwrap_err().field,
            "indicator.threshold_seconds"
        );
        d.indicator.threshold_seconds = None;
        d.indicator.kind = "vibes".into();
        assert_eq!(
            validate(&d, Source::Api).unwrap_err().field,
            "indicator.kind"
        );
        d.indicator.kind = "probe".into();
        d.name = "a b".into();
        assert_eq!(validate(&d, Source::Api).unwrap_err().field, "name");
        d.name = "ok".into();
        let mut a = default_burn_alerts();
        a[1].short_window = "7h".into();
        d.burn_alerts = Some(a);
        assert_eq!(
            validate(&d, Source::Api).unwrap_err().field,
            "burn_alerts[1].short_window"
        );
    }

    #[test]
    fn windows_parse_and_calendar_periods_align_to_utc_months() {
        assert_eq!(
            SloWindow::parse("7d").unwrap(),
            SloWindow::Rolling(Duration::from_secs(7 * 86400))
        );
        assert!(SloWindow::parse("0s").is_err());
        assert!(SloWindow::parse("month").is_err());
        // 2024-02-10T12:00:00Z: February 2024 has 29 days.
        let t = Utc
            .with_ymd_and_hms(2024, 2, 10, 12, 0, 0)
            .unwrap()
            .timestamp_millis();
        let (s, e) = SloWindow::CalendarMonth.period(t);
        assert_eq!(
            s,
            Utc.with_ymd_and_hms(2024, 2, 1, 0, 0, 0)
                .unwrap()
                .timestamp_millis()
        );
        assert_eq!(e - s, 29 * 86_400_000);
        assert_eq!(SloWindow::CalendarMonth.elapsed_ms(t), t - s);
        let t = Utc
            .with_ymd_and_hms(2024, 11, 30, 0, 0, 0)
            .unwrap()
            .timestamp_millis();
        let (s, e) = SloWindow::CalendarQuarter.period(t);
        assert_eq!(
            s,
            Utc.with_ymd_and_hms(2024, 10, 1, 0, 0, 0)
                .unwrap()
                .timestamp_millis()
        );
        assert_eq!(
            e,
            Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0)
                .unwrap()
                .timestamp_millis()
        );
    }

    #[test]
    fn missing_data_blends_into_the_sli() {
        assert_eq!(MissingData::Excluded.blend(Some(0.5), 0.5), Some(0.5));
        assert_eq!(MissingData::Good.blend(Some(0.5), 0.5), Some(0.75));
        assert_eq!(MissingData::Bad.blend(Some(0.5), 0.5), Some(0.25));
        assert_eq!(MissingData::Excluded.blend(None, 1.0), None);
        assert_eq!(MissingData::Bad.blend(None, 1.0), Some(0.0));
        assert_eq!(duration_label(Duration::from_secs(3600)), "1h");
        assert_eq!(duration_label(Duration::from_secs(90)), "90s");
        assert_eq!(duration_label(Duration::from_millis(1500)), "1500ms");
        assert_eq!(duration_label(Duration::ZERO), "0s");
        assert_eq!(promql_range(2500), "2500ms");
    }
}
