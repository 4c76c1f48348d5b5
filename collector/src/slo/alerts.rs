//! The alert rules an SLO stands for, as a rule group (file `"<slo>"`,
//! group named after the SLO) for the rules evaluator: one
//! `SloBurnRate` per multi-window burn-rate alert, reading the
//! `nines_slo_burn_rate` series the SLO evaluator writes, and
//! `SloErrorBudgetExhausted`. Nothing here evaluates anything.

use super::spec::Slo;
use crate::rules::{GroupSpec, parse_rules};
use std::time::Duration;

/// The `file` of SLO rule groups.
pub const SLO_RULES_FILE: &str = "<slo>";
/// Name of the burn-rate alerts.
pub const BURN_ALERT: &str = "SloBurnRate";
/// Name of the budget-exhausted alert.
pub const BUDGET_ALERT: &str = "SloErrorBudgetExhausted";

/// The SLO's rule group, evaluated every `interval`; None when it has no
/// alerts.
pub fn group(slo: &Slo, interval: Duration) -> Result<Option<GroupSpec>, String> {
    let name = &slo.def.name;
    let mut rules = Vec::new();
    for a in &slo.burn_alerts {
        let burn = |w: &str| format!("nines_slo_burn_rate{{slo=\"{name}\",window=\"{w}\"}}");
        rules.push(serde_json::json!({
            "alert": BURN_ALERT,
            "expr": format!(
                "{} > {f} and on(slo) {} > {f}",
                burn(&a.long.1),
                burn(&a.short.1),
                f = a.factor
            ),
            "for": format!("{}ms", a.for_.as_millis()),
            "labels": {
                "severity": a.severity,
                "slo": name,
                "long_window": a.long.1,
                "short_window": a.short.1,
            },
            "annotations": {
                "summary": format!("SLO {name} is burning its error budget too fast"),
                "description": format!(
                    "SLO {name} burns its error budget {{{{ $value | humanize }}}} times faster than allowed over {} (and over {}); the threshold is {}.",
                    a.long.1, a.short.1, a.factor
                ),
            },
        }));
    }
    if slo.budget_alert {
        rules.push(serde_json::json!({
            "alert": BUDGET_ALERT,
            "expr": format!("nines_slo_error_budget_remaining_ratio{{slo=\"{name}\"}} <= 0"),
            "labels": {"severity": "ticket", "slo": name},
            "annotations": {
                "summary": format!("SLO {name} has spent its error budget"),
                "description": format!(
                    "SLO {name} is below its objective of {}% over its window; {{{{ $value | humanizePercentage }}}} of the budget remains.",
                    slo.def.objective
                ),
            },
        }));
    }
    if rules.is_empty() {
        return Ok(None);
    }
    let doc = serde_json::json!({"groups": [{"name": name, "rules": rules}]});
    let text = serde_yaml_ng::to_string(&doc).map_err(|e| format!("SLO {name}: {e}"))?;
    Ok(parse_rules(SLO_RULES_FILE, &text, interval)?
        .into_iter()
        .next())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slo::spec::{IndicatorDefinition, SloDefinition, Source, validate};

    #[test]
    fn every_burn_alert_becomes_a_two_window_rule() {
        let def = SloDefinition {
            name: "api".into(),
            description: String::new(),
            objective: 99.5,
            window: None,
            missing_data: None,
            indicator: IndicatorDefinition {
                kind: "host".into(),
                instance: Some("h".into()),
                ..Default::default()
            },
            burn_alerts: None,
            budget_alert: None,
        };
        let slo = validate(&def, Source::Api).unwrap();
        let g = group(&slo, Duration::from_secs(30)).unwrap().unwrap();
        assert_eq!((g.file.as_str(), g.name.as_str()), (SLO_RULES_FILE, "api"));
        assert_eq!(g.rules.len(), 5);
        let crate::rules::RuleSpec::Alerting(a) = &g.rules[0] else {
            panic!()
        };
        assert_eq!(
            a.expr,
            "nines_slo_burn_rate{slo=\"api\",window=\"1h\"} > 14.4 and on(slo) nines_slo_burn_rate{slo=\"api\",window=\"5m\"} > 14.4"
        );
        assert!(a.labels.iter().any(|l| l.0 == "severity" && l.1 == "page"));
        let mut def = def;
        def.burn_alerts = Some(Vec::new());
        def.budget_alert = Some(false);
        let slo = validate(&def, Source::Api).unwrap();
        assert!(group(&slo, Duration::from_secs(30)).unwrap().is_none());
    }
}
