//! Rule files in Prometheus's YAML format, checked as `promtool check
//! rules` checks them, into [`GroupSpec`]s. Built-in groups are made from
//! code with the same types, so both run through one evaluator.

use super::template::Template;
use nines_shared::duration::parse_duration;
use nines_shared::{METRIC_NAME_LABEL, is_valid_label_name, is_valid_metric_name};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

/// A group of rules evaluated together, in order, at one interval.
#[derive(Debug, Clone)]
pub struct GroupSpec {
    /// Where it came from: the rule file's path, or a name for built-ins.
    pub file: String,
    /// The group's name, unique within its file.
    pub name: String,
    /// Time between evaluations.
    pub interval: Duration,
    /// Most series or alerts one rule may produce (0: no limit).
    pub limit: usize,
    /// The rules, in evaluation order.
    pub rules: Vec<RuleSpec>,
}

/// One rule.
#[derive(Debug, Clone)]
pub enum RuleSpec {
    /// Writes its result as a new series.
    Recording(RecordingSpec),
    /// Raises alerts while its expression returns series.
    Alerting(AlertingSpec),
}

impl RuleSpec {
    /// The `record` or `alert` name.
    pub fn name(&self) -> &str {
        match self {
            RuleSpec::Recording(r) => &r.record,
            RuleSpec::Alerting(a) => &a.alert,
        }
    }
}

/// A recording rule.
#[derive(Debug, Clone)]
pub struct RecordingSpec {
    /// The metric name written.
    pub record: String,
    /// The PromQL expression.
    pub expr: String,
    /// Labels added (an empty value removes the label).
    pub labels: BTreeMap<String, String>,
}

/// An alerting rule.
#[derive(Debug, Clone)]
pub struct AlertingSpec {
    /// The `alertname`.
    pub alert: String,
    /// The PromQL expression.
    pub expr: String,
    /// How long a series must be returned before the alert fires.
    pub for_: Duration,
    /// How long a firing alert keeps firing once the series is gone.
    pub keep_firing_for: Duration,
    /// Labels added, as templates (an empty result removes the label).
    pub labels: Vec<(String, String, Template)>,
    /// Annotations, as templates.
    pub annotations: Vec<(String, String, Template)>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    groups: Vec<RawGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    #[serde(default)]
    name: String,
    interval: Option<String>,
    limit: Option<usize>,
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    record: Option<String>,
    alert: Option<String>,
    expr: Option<serde_yaml_ng::Value>,
    #[serde(rename = "for")]
    for_: Option<String>,
    keep_firing_for: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// Reads and checks a rule file; `default_interval` applies to groups
/// without `interval`. The error names the file, group, rule and reason.
pub fn load_file(path: &Path, default_interval: Duration) -> Result<Vec<GroupSpec>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("rule file {}: {e}", path.display()))?;
    parse_rules(&path.display().to_string(), &text, default_interval)
}

/// Parses and checks rule file text; `file` names it in errors and in the
/// API.
pub fn parse_rules(
    file: &str,
    text: &str,
    default_interval: Duration,
) -> Result<Vec<GroupSpec>, String> {
    let raw: RawFile = if text.trim().is_empty() {
        RawFile { groups: Vec::new() }
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| format!("rule file {file}: {e}"))?
    };
    let mut names = HashSet::new();
    let mut groups = Vec::new();
    for (gi, g) in raw.groups.into_iter().enumerate() {
        let gerr =
            |reason: String| format!("rule file {file}: group #{} {:?}: {reason}", gi + 1, g.name);
        if g.name.is_empty() {
            return Err(gerr("group name must not be empty".into()));
        }
        if !names.insert(g.name.clone()) {
            return Err(gerr("group name is repeated in the same file".into()));
        }
        let interval = match &g.interval {
            None => default_interval,
            Some(s) => parse_duration(s).map_err(|e| gerr(format!("interval: {e}")))?,
        };
        if interval.is_zero() {
            return Err(gerr("interval must be above zero".into()));
        }
        let mut rules = Vec::new();
        for (ri, r) in g.rules.iter().enumerate() {
            let rname = r.alert.as_deref().or(r.record.as_deref()).unwrap_or("");
            let kind = if r.alert.is_some() { "alert" } else { "record" };
            let rule = check_rule(r)
                .map_err(|reason| gerr(format!("rule #{} ({kind} {rname:?}): {reason}", ri + 1)))?;
            rules.push(rule);
        }
        groups.push(GroupSpec {
            file: file.to_string(),
            name: g.name.clone(),
            interval,
            limit: g.limit.unwrap_or(0),
            rules,
        });
    }
    Ok(groups)
}

fn check_rule(r: &RawRule) -> Result<RuleSpec, String> {
    let expr = match &r.expr {
        None | Some(serde_yaml_ng::Value::Null) => String::new(),
        Some(serde_yaml_ng::Value::String(s)) => s.clone(),
        Some(serde_yaml_ng::Value::Number(n)) => n.to_string(),
        Some(serde_yaml_ng::Value::Bool(b)) => b.to_string(),
        Some(_) => return Err("field 'expr' must be a string".into()),
    };
    match (&r.record, &r.alert) {
        (Some(_), Some(_)) => return Err("only one of 'record' and 'alert' must be set".into()),
        (None, None) => return Err("one of 'record' or 'alert' must be set".into()),
        _ => {}
    }
    if expr.trim().is_empty() {
        return Err("field 'expr' must be set in rule".into());
    }
    crate::query::parse_checked(&expr).map_err(|e| format!("could not parse expression: {e}"))?;
    for name in r.labels.keys() {
        if !is_valid_label_name(name) || name == METRIC_NAME_LABEL {
            return Err(format!("invalid label name: {name}"));
        }
    }
    if let Some(record) = &r.record {
        if record.is_empty() {
            return Err("field 'record' must be set in rule".into());
        }
        if !is_valid_metric_name(record) {
            return Err(format!("invalid recording rule name: {record}"));
        }
        if !r.annotations.is_empty() {
            return Err("invalid field 'annotations' in recording rule".into());
        }
        if r.for_.is_some() {
            return Err("invalid field 'for' in recording rule".into());
        }
        if r.keep_firing_for.is_some() {
            return Err("invalid field 'keep_firing_for' in recording rule".into());
        }
        return Ok(RuleSpec::Recording(RecordingSpec {
            record: record.clone(),
            expr,
            labels: r.labels.clone(),
        }));
    }
    let alert = r.alert.clone().unwrap_or_default();
    if alert.is_empty() {
        return Err("field 'alert' must be set in rule".into());
    }
    for name in r.annotations.keys() {
        if !is_valid_label_name(name) {
            return Err(format!("invalid annotation name: {name}"));
        }
    }
    let dur = |key: &str, v: &Option<String>| match v {
        None => Ok(Duration::ZERO),
        Some(s) => parse_duration(s).map_err(|e| format!("{key}: {e}")),
    };
    let templates = |kind: &str, m: &BTreeMap<String, String>| {
        m.iter()
            .map(|(k, v)| {
                Template::parse(v)
                    .map(|t| (k.clone(), v.clone(), t))
                    .map_err(|e| format!("{kind} {k:?}: template: {e}"))
            })
            .collect::<Result<Vec<_>, String>>()
    };
    Ok(RuleSpec::Alerting(AlertingSpec {
        alert,
        expr,
        for_: dur("for", &r.for_)?,
        keep_firing_for: dur("keep_firing_for", &r.keep_firing_for)?,
        labels: templates("label", &r.labels)?,
        annotations: templates("annotation", &r.annotations)?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn a_prometheus_rule_file_loads() {
        let text = r#"
groups:
  - name: example
    interval: 1s
    rules:
      - record: job:up:sum
        expr: sum by (job) (up)
        labels: {source: rules}
      - alert: InstanceDown
        expr: up == 0
        for: 2s
        keep_firing_for: 1m
        labels: {severity: page}
        annotations:
          summary: "{{ $labels.instance }} down ({{ $value }})"
  - name: other
    rules: []
"#;
        let g = parse_rules("r.yml", text, MIN).unwrap();
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].interval, Duration::from_secs(1));
        assert_eq!(g[1].interval, MIN);
        let RuleSpec::Alerting(a) = &g[0].rules[1] else {
            panic!("not alerting")
        };
        assert_eq!(a.for_, Duration::from_secs(2));
        assert_eq!(a.keep_firing_for, MIN);
        assert_eq!(a.labels[0].0, "severity");
        assert_eq!(g[0].rules[0].name(), "job:up:sum");
    }

    #[test]
    fn invalid_files_name_file_group_rule_and_reason() {
        let rule = |body: &str| format!("groups:\n  - name: g1\n    rules:\n      - {body}\n");
        for (text, want) in [
            (
                rule("alert: A\n        expr: 'up =='"),
                "could not parse expression: 1:6: parse error: unexpected end of input",
            ),
            (rule("alert: A"), "field 'expr' must be set"),
            (
                rule("record: 'bad name'\n        expr: up"),
                "invalid recording rule name",
            ),
            (
                rule("record: r\n        alert: A\n        expr: up"),
                "only one of",
            ),
            (rule("expr: up"), "one of 'record' or 'alert' must be set"),
            (
                rule("alert: A\n        expr: up\n        for: 5x"),
                "for: invalid duration",
            ),
            (
                rule("alert: A\n        expr: up\n        labels: {'a-b': x}"),
                "invalid label name: a-b",
            ),
            (
                rule("record: r\n        expr: up\n        for: 1m"),
                "invalid field 'for' in recording rule",
            ),
            (
                rule("record: r\n        expr: up\n        annotations: {a: b}"),
                "invalid field 'annotations'",
            ),
            (
                rule("alert: A\n        expr: up\n        annotations: {s: '{{ if 1 }}'}"),
                "annotation \"s\": template",
            ),
            (
                rule("alert: A\n        expr: up\n        bogus: 1"),
                "unknown field `bogus`",
            ),
            (
                "groups:\n  - name: ''\n".to_string(),
                "group name must not be empty",
            ),
            (
                "groups:\n  - name: a\n  - name: a\n".to_string(),
                "repeated",
            ),
            ("groups: [\n".to_string(), "r.yml"),
        ] {
            let e = parse_rules("r.yml", &text, MIN).unwrap_err();
            assert!(e.contains(want), "want {want:?} in {e:?}");
            assert!(e.starts_with("rule file r.yml"), "{e}");
        }
        let e = parse_rules(
            "r.yml",
            &rule("alert: HighLoad\n        expr: 'up =='"),
            MIN,
        )
        .unwrap_err();
        assert!(
            e.contains("group #1 \"g1\"") && e.contains("rule #1 (alert \"HighLoad\")"),
            "{e}"
        );
    }
}
