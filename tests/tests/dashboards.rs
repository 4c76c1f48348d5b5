//! The dashboards in `dashboards/` against a live collector fed by a real
//! agent with every source busy: every PromQL expression in every file (the
//! built-in host and service dashboards and the Grafana ones, variables
//! substituted) runs without error and returns data. The Grafana files are
//! checked to be dashboards Grafana loads, with a Prometheus data source
//! variable and the same expressions as the built-in ones.

use nines_tests::sources::BusyHost;
use nines_tests::*;
use serde_json::Value;
use std::path::PathBuf;

fn dashboards_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .join("dashboards")
}

fn load(rel: &str) -> Value {
    let p = dashboards_dir().join(rel);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every (panel title, expr) of a built-in dashboard.
fn builtin_exprs(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for row in d["rows"].as_array().expect("rows") {
        for p in row["panels"].as_array().expect("panels") {
            assert!(p["unit"].is_string(), "panel without unit: {p}");
            for q in p["queries"].as_array().expect("queries") {
                out.push((
                    p["title"].as_str().expect("title").to_string(),
                    q["expr"].as_str().expect("expr").to_string(),
                ));
            }
        }
    }
    out
}

/// Every (panel title, expr) of a Grafana dashboard.
fn grafana_exprs(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{t}");
            out.push((
                p["title"].as_str().expect("title").to_string(),
                t["expr"].as_str().expect("expr").to_string(),
            ));
        }
    }
    out
}

fn substitute(expr: &str, instance: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "1s")
        .replace("$instance", instance)
        .replace("$rate", "1m")
        .replace("$step", "1s")
}

#[test]
fn every_dashboard_expression_runs_and_returns_data() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(&dir.path().join("c"), &["--no-local-agent"]);
    let _host = BusyHost::start(&c, dir.path(), "dash-1");

    let mut all = Vec::new();
    for name in ["host", "service"] {
        let builtin = builtin_exprs(&load(&format!("{name}.json")));
        let grafana = load(&format!("grafana/{name}.json"));
        assert!(grafana["schemaVersion"].as_u64().unwrap_or(0) >= 36);
        assert!(grafana["uid"].is_string() && grafana["title"].is_string());
        let vars = grafana["templating"]["list"].as_array().expect("variables");
        assert!(
            vars.iter()
                .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"),
            "grafana/{name}.json has no Prometheus data source variable"
        );
        let gexprs = grafana_exprs(&grafana);
        // The Grafana dashboard shows the same views as the built-in one.
        let translated: Vec<(String, String)> = builtin
            .iter()
            .map(|(t, e)| {
                (
                    t.clone(),
                    e.replace("$rate", "$__rate_interval")
                        .replace("$step", "$__interval"),
                )
            })
            .collect();
        assert_eq!(
            gexprs, translated,
            "grafana/{name}.json differs from {name}.json"
        );
        // The instance variable's query (Grafana's label_values) answers.
        for v in vars.iter().filter(|v| v["name"] == "instance") {
            let q = v["definition"].as_str().expect("definition");
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|r| r.strip_suffix(", instance)"))
                .expect("label_values(<selector>, instance)");
            let (_, body) = c.get_json(&format!(
                "/api/v1/label/instance/values?match[]={}",
                form_urlencoded::byte_serialize(inner.as_bytes()).collect::<String>()
            ));
            assert!(
                body["data"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x == "dash-1")),
                "{q}: {body}"
            );
        }
        all.extend(
            builtin
                .into_iter()
                .map(|(t, e)| (format!("{name}.json"), t, e)),
        );
        all.extend(
            gexprs
                .into_iter()
                .map(|(t, e)| (format!("grafana/{name}.json"), t, e)),
        );
    }
    assert!(all.len() >= 40, "{} expressions", all.len());
    for (file, title, expr) in &all {
        let e = substitute(expr, "dash-1");
        assert!(
            !e.contains('$') || e.contains("\"$1\""),
            "{file} {title}: unsubstituted {e}"
        );
        let q = c.query(&e, None);
        assert_eq!(q["status"], "success", "{file} {title}: {e}: {q}");
        let n = q["data"]["result"].as_array().map(Vec::len).unwrap_or(0);
        assert!(n > 0, "{file} {title}: no data from {e}");
        // A range query over the last minute answers too.
        let end = nines_shared::UnixMillis::now().0 as f64 / 1000.0;
        let (status, r) = c.get_json(&format!(
            "/api/v1/query_range?query={}&start={}&end={end}&step=5",
            form_urlencoded::byte_serialize(e.as_bytes()).collect::<String>(),
            end - 60.0
        ));
        assert_eq!(status, 200, "{file} {title}: {r}");
        assert!(
            r["data"]["result"]
                .as_array()
                .is_some_and(|a| !a.is_empty()),
            "{file} {title}: empty range result for {e}"
        );
    }
}
