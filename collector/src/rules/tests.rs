//! Rule groups evaluated through the real PromQL engine over a small
//! in-memory store, with a fake clock: state transitions, written series,
//! stale markers, restore after restart, and the API shapes.

use super::*;
use crate::query::STALE_MARKER_BITS;
use crate::query::querier::{Querier, QuerierError, SeriesSamples};
use nines_shared::Labels;
use promql_parser::label::{Matcher, Matchers};
use std::sync::Mutex as StdMutex;

/// Series in memory; writes from rules are appended so later rules and
/// evaluations see them.
#[derive(Default)]
struct Mem {
    series: StdMutex<Vec<SeriesSamples>>,
}

impl Mem {
    fn push(&self, labels: Labels, t: i64, v: f64) {
        let mut s = self.series.lock().unwrap();
        match s.iter_mut().find(|x| x.labels == labels) {
            Some(x) => {
                x.samples.retain(|(ts, _)| *ts != t);
                x.samples.push((t, v));
                x.samples.sort_by_key(|(ts, _)| *ts);
            }
            None => s.push(SeriesSamples {
                labels,
                samples: vec![(t, v)],
            }),
        }
    }

    fn apply(&self, writes: Vec<crate::storage::SeriesWrite>) {
        for w in writes {
            for (t, v) in w.samples {
                self.push(w.labels.clone(), t, v);
            }
        }
    }
}

fn matches(group: &[Matcher], l: &Labels) -> bool {
    group
        .iter()
        .all(|m| m.is_match(l.get(&m.name).unwrap_or("")))
}

impl Querier for Mem {
    fn select(
        &self,
        m: &Matchers,
        start: i64,
        end: i64,
    ) -> Result<Vec<SeriesSamples>, QuerierError> {
        let s = self.series.lock().unwrap();
        Ok(s.iter()
            .filter(|x| {
                if m.or_matchers.is_empty() {
                    matches(&m.matchers, &x.labels)
                } else {
                    m.or_matchers.iter().any(|g| matches(g, &x.labels))
                }
            })
            .map(|x| SeriesSamples {
                labels: x.labels.clone(),
                samples: x
                    .samples
                    .iter()
                    .copied()
                    .filter(|(t, _)| *t >= start && *t <= end)
                    .collect(),
            })
            .filter(|x| !x.samples.is_empty())
            .collect())
    }
}

const RULES: &str = r#"
groups:
  - name: g
    interval: 1s
    rules:
      - record: job:load:max
        expr: max by (job) (load)
      - alert: HighLoad
        expr: job:load:max > 1
        for: 2s
        labels:
          severity: page
        annotations:
          summary: "{{ $labels.job }} load {{ $value | printf \"%.1f\" }}"
"#;

fn eval_all(g: &mut Group, mem: &Mem, ts: i64) {
    let engine = Engine::default();
    for i in 0..g.rules.len() {
        let w = g.eval_rule(i, ts, &engine, mem);
        mem.apply(w);
    }
}

fn alert(g: &Group) -> Option<&Alert> {
    match &g.rules[1].kind {
        RuleKind::Alerting(a) => a.active.values().next(),
        _ => None,
    }
}

fn load(job: &str) -> Labels {
    Labels::new("load", [("job", job), ("instance", "i1")])
}

#[test]
fn recording_then_alerting_over_the_engine_with_a_fake_clock() {
    let spec = parse_rules("r.yml", RULES, Duration::from_secs(60)).unwrap();
    let mut g = Group::new(spec[0].clone());
    let mem = Mem::default();
    let t0 = 1_700_000_000_000;

    mem.push(load("node"), t0, 0.5);
    eval_all(&mut g, &mem, t0);
    assert_eq!(g.rules[0].health, Health::Ok);
    assert_eq!(g.rules[1].health, Health::Ok);
    assert!(alert(&g).is_none());
    let rec = Labels::new("job:load:max", [("job", "node")]);
    assert!(mem.series.lock().unwrap().iter().any(|s| s.labels == rec));

    mem.push(load("node"), t0 + 1000, 3.0);
    eval_all(&mut g, &mem, t0 + 1000);
    let a = alert(&g).unwrap();
    assert_eq!(a.state, AlertState::Pending);
    assert_eq!(a.annotations["summary"], "node load 3.0");
    assert_eq!(a.labels.get("job"), Some("node"));
    assert_eq!(a.labels.get("alertname"), Some("HighLoad"));

    mem.push(load("node"), t0 + 2000, 3.0);
    eval_all(&mut g, &mem, t0 + 2000);
    assert_eq!(alert(&g).unwrap().state, AlertState::Pending);
    mem.push(load("node"), t0 + 3000, 3.0);
    eval_all(&mut g, &mem, t0 + 3000);
    assert_eq!(alert(&g).unwrap().state, AlertState::Firing);

    let alerts_q = Engine::default()
        .instant(&mem, "ALERTS", t0 + 3000)
        .unwrap();
    let crate::query::Value::Vector(v) = alerts_q else {
        panic!("vector")
    };
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].labels.get("alertstate"), Some("firing"));
    assert_eq!(v[0].labels.get("severity"), Some("page"));
    let for_state = Engine::default()
        .instant(&mem, "ALERTS_FOR_STATE", t0 + 3000)
        .unwrap();
    let crate::query::Value::Vector(v) = for_state else {
        panic!("vector")
    };
    assert_eq!(v[0].v, ((t0 + 1000) / 1000) as f64);

    // The API shapes.
    let rules = api::rules_json(std::slice::from_ref(&g));
    let r = &rules["groups"][0]["rules"];
    assert_eq!(rules["groups"][0]["file"], "r.yml");
    assert_eq!(rules["groups"][0]["interval"], 1.0);
    assert_eq!(r[0]["type"], "recording");
    assert_eq!(r[0]["query"], "max by (job) (load)");
    assert_eq!(r[1]["type"], "alerting");
    assert_eq!(r[1]["state"], "firing");
    assert_eq!(r[1]["duration"], 2.0);
    assert_eq!(r[1]["health"], "ok");
    assert_eq!(r[1]["alerts"][0]["value"], "3e+00");
    assert_eq!(r[1]["alerts"][0]["activeAt"], "2023-11-14T22:13:21Z");
    assert!(r[1].get("lastError").is_none());
    let alerts = api::alerts_json(std::slice::from_ref(&g));
    assert_eq!(alerts["alerts"][0]["state"], "firing");

    // The pending series got a stale marker when the alert fired.
    {
        let s = mem.series.lock().unwrap();
        let pending = s
            .iter()
            .find(|x| x.labels.get("alertstate") == Some("pending"))
            .unwrap();
        assert!(crate::query::is_stale_marker(
            pending.samples.last().unwrap().1
        ));
    }
    // The series goes away: resolved, and ALERTS gets a stale marker.
    mem.push(load("node"), t0 + 4000, 0.0);
    eval_all(&mut g, &mem, t0 + 4000);
    assert_eq!(alert(&g).unwrap().state, AlertState::Inactive);
    let s = mem.series.lock().unwrap();
    let firing = s
        .iter()
        .find(|x| {
            x.labels.metric_name() == Some("ALERTS") && x.labels.get("alertstate") == Some("firing")
        })
        .unwrap();
    let last = firing.samples.last().unwrap();
    assert_eq!((last.0, last.1.to_bits()), (t0 + 4000, STALE_MARKER_BITS));
}

#[test]
fn a_failing_expression_marks_the_rule_unhealthy() {
    let spec = parse_rules(
        "r.yml",
        "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: 'label_replace(up, \"a\", \"$1\", \"b\", \"(\")'\n",
        Duration::from_secs(60),
    )
    .unwrap();
    let mut g = Group::new(spec[0].clone());
    let mem = Mem::default();
    mem.push(Labels::new("up", [("job", "x")]), 1000, 1.0);
    eval_all(&mut g, &mem, 1000);
    assert_eq!(g.rules[0].health, Health::Err);
    assert!(!g.rules[0].last_error.is_empty());
    let j = api::rules_json(std::slice::from_ref(&g));
    assert_eq!(j["groups"][0]["rules"][0]["health"], "err");
    assert!(j["groups"][0]["rules"][0]["lastError"].is_string());
}

#[test]
fn state_is_restored_from_the_store_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let spec = parse_rules("r.yml", RULES, Duration::from_secs(60)).unwrap();
    let mem = Mem::default();
    let t0 = 1_700_000_000_000;
    let path = dir.path().join(RULES_DB_FILE);
    {
        let rules = Rules::new(spec.clone(), Some(StateStore::open(&path).unwrap())).unwrap();
        let groups = rules.groups();
        let g = &groups[0];
        for k in 0..4 {
            mem.push(load("node"), t0 + k * 1000, 5.0);
            eval_all(&mut lock(g), &mem, t0 + k * 1000);
        }
        let g = lock(g);
        assert_eq!(alert(&g).unwrap().state, AlertState::Firing);
        let store = rules.inner.store.as_ref().unwrap();
        store.save_group("r.yml", "g", &g.alerts_to_save()).unwrap();
    }
    let rules = Rules::new(spec, Some(StateStore::open(&path).unwrap())).unwrap();
    let groups = rules.groups();
    let mut g = lock(&groups[0]);
    let a = alert(&g).unwrap().clone();
    assert_eq!((a.state, a.active_at), (AlertState::Firing, t0));
    // Still firing on the next evaluation: no new wait for `for`.
    mem.push(load("node"), t0 + 60_000, 5.0);
    eval_all(&mut g, &mem, t0 + 60_000);
    let a = alert(&g).unwrap();
    assert_eq!((a.state, a.active_at), (AlertState::Firing, t0));
}

#[test]
fn a_builtin_group_can_be_made_from_code() {
    let spec = GroupSpec {
        file: "<builtin>".into(),
        name: "nines".into(),
        interval: Duration::from_secs(30),
        limit: 0,
        rules: vec![RuleSpec::Alerting(AlertingSpec {
            alert: "Always".into(),
            expr: "vector(1)".into(),
            for_: Duration::ZERO,
            keep_firing_for: Duration::ZERO,
            labels: vec![],
            annotations: vec![],
        })],
    };
    let rules = Rules::new(vec![spec], None).unwrap();
    let groups = rules.groups();
    let mut g = lock(&groups[0]);
    eval_all(&mut g, &Mem::default(), 1000);
    drop(g);
    let j = rules.alerts_json();
    assert_eq!(j["alerts"][0]["labels"]["alertname"], "Always");
    assert_eq!(j["alerts"][0]["state"], "firing");
}

#[test]
fn one_group_is_replaced_or_removed_while_the_others_keep_their_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(RULES_DB_FILE);
    let always = |file: &str, name: &str, alert: &str| GroupSpec {
        file: file.into(),
        name: name.into(),
        interval: Duration::from_secs(30),
        limit: 0,
        rules: vec![RuleSpec::Alerting(AlertingSpec {
            alert: alert.into(),
            expr: "vector(1)".into(),
            for_: Duration::from_secs(600),
            keep_firing_for: Duration::ZERO,
            labels: vec![],
            annotations: vec![],
        })],
    };
    let store = StateStore::open(&path).unwrap();
    let rules = Rules::new(
        vec![always("r.yml", "kept", "Kept"), always("<slo>", "a", "A")],
        Some(store),
    )
    .unwrap();
    let mem = Mem::default();
    for g in rules.groups() {
        let mut g = lock(&g);
        eval_all(&mut g, &mem, 1000);
        let (file, name, alerts) = (g.spec.file.clone(), g.spec.name.clone(), g.alerts_to_save());
        rules
            .inner
            .store
            .as_ref()
            .unwrap()
            .save_group(&file, &name, &alerts)
            .unwrap();
    }
    // Replaced: the new group keeps the saved pending alert of the same
    // rule; another group is added; the untouched one is the same object.
    let kept = rules.groups()[0].clone();
    rules
        .set_group("<slo>", "a", Some(always("<slo>", "a", "A")))
        .unwrap();
    rules
        .set_group("<slo>", "b", Some(always("<slo>", "b", "B")))
        .unwrap();
    let groups = rules.groups();
    assert_eq!(groups.len(), 3);
    assert!(Arc::ptr_eq(&groups[0], &kept));
    let a = rules
        .snapshot()
        .into_iter()
        .find(|g| g.spec.name == "a")
        .unwrap();
    let RuleKind::Alerting(rule) = &a.rules[0].kind else {
        panic!("not an alert")
    };
    let alert = rule.active.values().next().unwrap();
    assert_eq!((alert.state, alert.active_at), (AlertState::Pending, 1000));
    // Removed: gone from the API and from the store; the others stay.
    rules.set_group("<slo>", "a", None).unwrap();
    let names: Vec<String> = rules
        .snapshot()
        .iter()
        .map(|g| g.spec.name.clone())
        .collect();
    assert_eq!(names, ["kept", "b"]);
    let saved = StateStore::open(&path).unwrap().load().unwrap();
    assert!(saved.keys().all(|k| k.group != "a"));
    assert!(saved.keys().any(|k| k.group == "kept"));
}
