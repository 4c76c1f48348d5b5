//! End-to-end: the web UI in headless Chromium (through chromedriver),
//! against a real collector fed by real agents (one pushing with probes,
//! an access log and StatsD; one also scraped, then stopped), an alert rule
//! that fires, and a host whose labels carry markup. One browser session
//! walks every page: no console errors, real data drawn, the stopped host
//! turns "down", markup shows as text, silences made in the page reach the
//! API. Screenshots of every page go to target/ui-screenshots (or
//! $NINES_SCREENSHOT_DIR).

use nines_collector::ingest::remote_write::{SeriesWrite, encode};
use nines_shared::{Labels, UnixMillis};
use nines_tests::sources::BusyHost;
use nines_tests::webdriver::{Browser, find_peers, screenshot_dir};
use nines_tests::*;
use serde_json::{Value, json};
use std::time::Duration;

const HOSTILE_INSTANCE: &str = "<script>window.__pwned=1</script>";
const HOSTILE_LABEL: &str = "<img src=x onerror=\"window.__pwned=2\">";

/// Writes `series` through the collector's remote_write endpoint.
fn remote_write(c: &Collector, series: &[SeriesWrite]) {
    let r = http()
        .post(format!("{}/api/v1/write", c.url))
        .header("authorization", format!("Bearer {}", c.token))
        .header("content-encoding", "snappy")
        .header("content-type", "application/x-protobuf")
        .header("x-prometheus-remote-write-version", "0.1.0")
        .body(encode(series))
        .send()
        .expect("remote write");
    assert_eq!(r.status().as_u16(), 204, "{:?}", r.text());
}

/// The test's world: a collector, a pushing agent with every source, an
/// agent the collector also scrapes, and traffic for the sources.
struct World {
    c: Collector,
    pushing: BusyHost,
    scraped: Agent,
    scraped_instance: String,
    hook: nines_tests::hook::Hook,
    _dir: tempfile::TempDir,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let scraped_port = free_port();
    let hook = nines_tests::hook::Hook::start(0);
    std::fs::write(
        dir.path().join("rules.yml"),
        "groups:\n  - name: ui\n    interval: 1s\n    rules:\n      - alert: AlwaysFiring\n        expr: vector(1)\n        labels:\n          severity: ticket\n        annotations:\n          summary: fires so the alerts page has one\n",
    )
    .unwrap();
    let config = dir.path().join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "rule_files = [\"rules.yml\"]\nevaluation_interval = \"1s\"\n\
             [presence]\ndown_after_intervals = 3\ndown_after_min = \"2s\"\nwrite_interval = \"1s\"\n\
             [[receiver]]\nname = \"hook\"\nwebhook = {{ url = \"{}/alerts\" }}\n\
             [route]\nreceiver = \"hook\"\ngroup_wait = \"1s\"\n\
             [[scrape]]\njob = \"node\"\ntargets = [\"127.0.0.1:{scraped_port}\"]\ninterval = \"1s\"\ntimeout = \"900ms\"\n",
            hook.url()
        ),
    )
    .unwrap();
    let c = Collector::start(
        &dir.path().join("c"),
        &["--no-local-agent", "--config", config.to_str().unwrap()],
    );
    let pushing = BusyHost::start(&c, dir.path(), "web-1");
    let scraped_listen = format!("127.0.0.1:{scraped_port}");
    let scraped = Agent::start(
        &c,
        &dir.path().join("a2"),
        &[
            "--interval",
            "1s",
            "--instance",
            "db-1",
            "--listen",
            &scraped_listen,
        ],
    );
    // A host whose name and label carry markup.
    let now = UnixMillis::now().0;
    let hostile = |name: &str, v: f64| SeriesWrite {
        labels: Labels::new(
            name,
            [
                ("job", "node"),
                ("instance", HOSTILE_INSTANCE),
                ("env", HOSTILE_LABEL),
            ],
        ),
        samples: vec![(now - 2000, v), (now - 1000, v)],
    };
    remote_write(&c, &[hostile("up", 1.0), hostile("node_load1", 0.5)]);
    let scraped_instance = scraped_listen.clone();
    wait_for("both agents up, pushed and scraped", || {
        (value(&c, &format!("up{{instance=\"{scraped_instance}\"}}")) == Some(1.0)
            && value(&c, "up{job=\"node\",instance=\"db-1\"}") == Some(1.0)
            && value(&c, "up{job=\"node\",instance=\"web-1\"}") == Some(1.0))
        .then_some(())
    });
    World {
        c,
        pushing,
        scraped,
        scraped_instance,
        hook,
        _dir: dir,
    }
}

/// Saves a screenshot of the viewport as `<name>.png`.
fn shot(b: &Browser, name: &str) {
    let dir = screenshot_dir();
    let png = b.screenshot();
    assert!(png.starts_with(b"\x89PNG"), "screenshot is not a PNG");
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

/// Fails on any SEVERE browser log entry (script errors, console.error,
/// CSP violations, failed requests) except network entries whose message
/// contains one of `expected`.
fn assert_no_console_errors(b: &Browser, page: &str, expected: &[&str]) {
    let bad: Vec<_> = b
        .log()
        .into_iter()
        .filter(|(level, _, _)| level == "SEVERE")
        .filter(|(_, source, msg)| {
            !(source == "network" && expected.iter().any(|e| msg.contains(e)))
        })
        .collect();
    assert!(bad.is_empty(), "{page}: console errors: {bad:?}");
}

/// True when the collector answers this API path (it is merged in).
fn api_exists(c: &Collector, path: &str) -> bool {
    let (status, body) = c.get_json(path);
    !(status == 404
        && body["error"]
            .as_str()
            .unwrap_or("")
            .contains("no such endpoint"))
}

fn js_str(b: &Browser, script: &str, args: Vec<Value>) -> String {
    b.js(script, args).as_str().unwrap_or_default().to_string()
}

const ROW_STATUS: &str = "const r = [...document.querySelectorAll('.rows .row')].find((r) => r.dataset.instance === arguments[0]); return r ? r.dataset.status : null;";

#[test]
fn ui_serves_one_page_for_every_route_with_a_strict_policy() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(&dir.path().join("c"), &["--no-local-agent"]);
    let get = |p: &str, etag: Option<&str>| {
        let mut r = http().get(format!("{}{p}", c.url));
        if let Some(e) = etag {
            r = r.header("if-none-match", e);
        }
        r.send().unwrap()
    };
    let index = get("/", None);
    assert_eq!(index.status().as_u16(), 200);
    let h = index.headers().clone();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    let body = index.text().unwrap();
    assert!(
        body.contains("/ui/app.js") && !body.contains("<script>"),
        "{body}"
    );
    for p in [
        "/hosts/web-1",
        "/hosts/a%2Fb",
        "/probes",
        "/slos",
        "/slos/x",
        "/alerts",
        "/explore",
    ] {
        let r = get(p, None);
        assert_eq!(r.status().as_u16(), 200, "{p}");
        assert_eq!(r.text().unwrap(), body, "{p}");
    }
    let js = get("/ui/app.js", None);
    assert_eq!(
        js.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    let etag = js.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(get("/ui/app.js", Some(&etag)).status().as_u16(), 304);
    assert_eq!(
        get("/ui/app.css", None).headers()["content-type"],
        "text/css; charset=utf-8"
    );
    assert_eq!(get("/ui/dashboards/host.json", None).status().as_u16(), 200);
    assert_eq!(get("/ui/../Cargo.toml", None).status().as_u16(), 404);
    assert_eq!(get("/ui/nothing.js", None).status().as_u16(), 404);
}

#[test]
fn every_page_in_a_real_browser() {
    let Some((driver, chromium)) = find_peers() else {
        return;
    };
    let mut w = world();
    let c = &w.c;
    let b = Browser::start(&driver, &chromium);
    let url = |p: &str| format!("{}{p}", c.url);
    let slo_api = api_exists(c, "/api/v1/slos");
    let silence_api = api_exists(c, "/api/v1/silences");
    let notify_api = api_exists(c, "/api/v1/notifications");
    let mut absent: Vec<&str> = Vec::new();
    if !slo_api {
        absent.push("/api/v1/slos");
    }
    if !silence_api {
        absent.push("/api/v1/silences");
    }
    if !notify_api {
        absent.push("/api/v1/notifications");
    }

    // Overview: every host, with status and numbers.
    b.goto(&url("/"));
    b.wait_js(
        "the overview lists the hosts",
        "return document.querySelectorAll('.rows .row').length >= 4",
    );
    let scraped = w.scraped_instance.clone();
    for host in [scraped.as_str(), "db-1", "web-1"] {
        assert_eq!(b.js(ROW_STATUS, vec![json!(host)]), json!("up"), "{host}");
    }
    let web = js_str(
        &b,
        "const r = [...document.querySelectorAll('.rows .row')].find((r) => r.dataset.instance === 'web-1'); return r ? r.innerText : '';",
        vec![],
    );
    assert!(web.contains('%'), "web-1 row shows CPU/memory: {web}");
    // Markup in labels is text, and nothing ran.
    let hostile = js_str(
        &b,
        "const r = [...document.querySelectorAll('.rows .row')].find((r) => r.dataset.instance === arguments[0]); return r ? r.textContent : '';",
        vec![json!(HOSTILE_INSTANCE)],
    );
    assert!(hostile.contains(HOSTILE_INSTANCE), "{hostile}");
    assert!(hostile.contains(HOSTILE_LABEL), "{hostile}");
    assert_eq!(
        b.js("return [window.__pwned === undefined, document.querySelectorAll('script').length, document.querySelectorAll('main img').length]", vec![]),
        json!([true, 1, 0])
    );
    // The text filter narrows the list.
    let filter = b.find(".filters input[type=search]");
    b.type_into(&filter, "web-");
    b.wait_js(
        "the filter applied",
        "return document.querySelectorAll('.rows .row').length === 1",
    );
    b.clear(&filter);
    b.type_into(&filter, " ");
    // The label filter offers the label (as text) and narrows to its host.
    let picked = b.js(
        "const s = document.querySelector('.filters select'); const o = [...s.options].find((o) => o.textContent === 'env=' + arguments[0]); if (!o) return null; s.value = o.value; s.dispatchEvent(new Event('change')); return [...document.querySelectorAll('.rows .row')].map((r) => r.dataset.instance);",
        vec![json!(HOSTILE_LABEL)],
    );
    assert_eq!(picked, json!([HOSTILE_INSTANCE]));
    b.js(
        "const s = document.querySelector('.filters select'); s.value = ''; s.dispatchEvent(new Event('change'));",
        vec![],
    );
    assert_no_console_errors(&b, "overview", &[]);
    shot(&b, "overview");

    // Host page: every panel drawn, with data where the sources report.
    b.goto(&url("/hosts/web-1?range=5m"));
    b.wait_js(
        "all host charts drawn",
        "return performance.getEntriesByName('nines:all-charts').length > 0",
    );
    let panels = b.js(
        "return [...document.querySelectorAll('figure.chart')].map((f) => [f.querySelector('figcaption').textContent, f.querySelectorAll('path.line, circle').length, f.classList.contains('failed') ? f.innerText : ''])",
        vec![],
    );
    let panels = panels.as_array().unwrap();
    assert!(panels.len() >= 15, "{panels:?}");
    for p in panels {
        assert_eq!(p[2], "", "panel failed: {p:?}");
    }
    for title in [
        "CPU by mode",
        "Memory",
        "Filesystem space used",
        "Network traffic",
        "Load average",
        "TCP connections by state",
        "Established connections per listening port",
        "Probe success rate",
        "Probe latency p90",
        "Request rate",
        "Success rate (not 5xx)",
        "Request latency",
        "Timer latency",
    ] {
        let p = panels
            .iter()
            .find(|p| p[0] == title)
            .unwrap_or_else(|| panic!("no panel {title}"));
        assert!(p[1].as_u64().unwrap() > 0, "panel {title} drew nothing");
    }
    // Keyboard: a focused chart shows the values under the crosshair.
    let plot = b.find("figure.chart .plot");
    b.type_into(&plot, "\u{E012}"); // ArrowLeft
    let tip = b.wait_js(
        "the hover values",
        "const t = document.querySelector('figure.chart .tip'); return t && !t.hidden ? t.innerText : ''",
    );
    assert!(tip.as_str().unwrap().contains('%'), "{tip}");
    assert_no_console_errors(&b, "host", &[]);
    shot(&b, "host");
    // The time-range picker: another preset goes into the URL and redraws.
    b.js(
        "performance.clearMarks(); const s = document.getElementById('range'); s.value = '15m'; s.dispatchEvent(new Event('change'));",
        vec![],
    );
    b.wait_js(
        "the charts redrawn for 15 minutes",
        "return location.search.includes('range=15m') && performance.getEntriesByName('nines:all-charts').length > 0",
    );
    let ticks = b.js(
        "return document.querySelectorAll('figure.chart .axis').length",
        vec![],
    );
    assert!(ticks.as_u64().unwrap() > 0);
    // A custom range: the last 10 minutes typed as from/to.
    b.js(
        "performance.clearMarks(); const s = document.getElementById('range'); s.value = 'custom'; s.dispatchEvent(new Event('change'));",
        vec![],
    );
    b.js(
        "const p = (t) => { const d = new Date(t - new Date(t).getTimezoneOffset() * 60000); return d.toISOString().slice(0, 16); }; document.getElementById('from').value = p(Date.now() - 600000); document.getElementById('to').value = p(Date.now() + 60000);",
        vec![],
    );
    b.click(&b.find("#apply"));
    b.wait_js(
        "the charts redrawn for the custom range",
        "return location.search.includes('from=') && location.search.includes('to=') && performance.getEntriesByName('nines:all-charts').length > 0",
    );
    b.resize(390, 844);
    b.wait_js("the phone-sized window", "return window.innerWidth <= 400");
    let overflow = b.js(
        "return document.documentElement.scrollWidth - window.innerWidth",
        vec![],
    );
    assert!(
        overflow.as_f64().unwrap() <= 1.0,
        "page wider than a phone: {overflow}"
    );
    shot(&b, "host-phone");
    b.resize(1280, 900);

    // The host with markup in its name has its page, with the name as text.
    b.goto(&url(&format!(
        "/hosts/{}",
        form_urlencoded::byte_serialize(HOSTILE_INSTANCE.as_bytes()).collect::<String>()
    )));
    let h1 = b.wait_js(
        "the hostile host's page",
        "const h = document.querySelector('main h1'); return h ? h.textContent : ''",
    );
    assert_eq!(h1, json!(HOSTILE_INSTANCE));
    b.wait_js(
        "its charts",
        "return performance.getEntriesByName('nines:all-charts').length > 0",
    );
    assert_eq!(
        b.js("return window.__pwned === undefined", vec![]),
        json!(true)
    );
    assert_no_console_errors(&b, "hostile host", &[]);

    // Unknown host.
    b.goto(&url("/hosts/no-such-host"));
    let nf = b.wait_js(
        "the not-found view",
        "const n = document.querySelector('.notfound'); return n ? n.textContent : ''",
    );
    assert!(nf.as_str().unwrap().contains("no-such-host"), "{nf}");
    assert_no_console_errors(&b, "unknown host", &[]);
    shot(&b, "host-not-found");

    // Probes.
    b.goto(&url("/probes?range=5m"));
    b.wait_js(
        "probe rows",
        "return document.querySelectorAll('tr[data-probe]').length >= 2",
    );
    let rows = b.js(
        "return Object.fromEntries([...document.querySelectorAll('tr[data-probe]')].map((r) => [r.dataset.probe, [...r.cells].map((c) => c.innerText)]))",
        vec![],
    );
    assert_eq!(rows["ok"][2], "100%", "{rows}");
    assert_eq!(rows["fail"][2], "0%", "{rows}");
    assert!(
        rows["fail"][7].as_str().unwrap().contains("http_status"),
        "{rows}"
    );
    assert!(rows["ok"][4] != "–", "{rows}");
    assert!(
        b.js(
            "return document.querySelectorAll('tr[data-probe=\"ok\"] .uptime .ok').length",
            vec![]
        )
        .as_u64()
        .unwrap()
            > 0
    );
    assert_no_console_errors(&b, "probes", &[]);
    shot(&b, "probes");

    // Explore: a good query, then a bad one with the parser's message.
    b.goto(&url("/explore"));
    let input = b.find("form.explore textarea");
    b.type_into(
        &input,
        "sum by (mode) (rate(node_cpu_seconds_total{instance=\"web-1\"}[1m]))",
    );
    b.click(&b.find("form.explore button[type=submit]"));
    b.wait_js(
        "result table and graph",
        "return document.querySelectorAll('table.result tbody tr').length > 0 && document.querySelectorAll('figure.chart path.line').length > 0",
    );
    assert_no_console_errors(&b, "explore", &[]);
    shot(&b, "explore");
    b.clear(&input);
    // The message starts with Prometheus's `line:col:` (a byte column);
    // the caret stands under the offending token, here after a two-byte
    // character.
    let bad = "sum(rate(node_cpu_seconds_total{mode=\"é\"}[1m])) by (mode) x";
    b.type_into(&input, bad);
    b.click(&b.find("form.explore button[type=submit]"));
    let msg = b.wait_js(
        "the parser's message",
        "const m = document.querySelector('.query-error .msg'); return m ? m.textContent : ''",
    );
    let msg = msg.as_str().unwrap().to_string();
    let byte_col = bad.rfind(" x").unwrap() + 2;
    assert!(
        msg.starts_with(&format!(
            "invalid parameter \"query\": 1:{byte_col}: parse error: unexpected identifier \"x\""
        )),
        "{msg}"
    );
    let caret = js_str(
        &b,
        "const c = document.querySelector('.query-error .caret'); return c ? c.textContent : ''",
        vec![],
    );
    let want = format!("{bad}\n{}^", " ".repeat(bad.chars().count() - 1));
    assert_eq!(caret, want, "caret for {msg}");
    assert_no_console_errors(&b, "explore error", &["/api/v1/query"]);
    shot(&b, "explore-error");

    // Alerts: the firing rule, deliveries, silences.
    if notify_api {
        wait_for("the alert delivered to the webhook", || {
            let (_, n) = c.get_json("/api/v1/notifications?limit=10");
            n["data"]
                .as_array()?
                .iter()
                .any(|d| d["status"] == "delivered")
                .then_some(())
        });
    }
    b.goto(&url("/alerts"));
    b.wait_js(
        "the firing alert",
        "return [...document.querySelectorAll('main td')].some((t) => t.textContent === 'AlwaysFiring')",
    );
    if silence_api {
        b.type_into(
            &b.find("input[name=matchers]"),
            "alertname=\"AlwaysFiring\"",
        );
        b.type_into(&b.find("input[name=createdBy]"), "ui-test");
        b.type_into(&b.find("input[name=comment]"), "made in the browser");
        b.click(&b.find(".silence-form button[type=submit]"));
        b.wait_js(
            "the silence listed",
            "return document.querySelectorAll('tr[data-silence]').length > 0",
        );
        let (_, list) = c.get_json("/api/v1/silences");
        let made = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["comment"] == "made in the browser")
            .unwrap_or_else(|| panic!("silence not in the API: {list}"));
        assert_eq!(made["createdBy"], "ui-test");
        assert_eq!(made["matchers"][0]["name"], "alertname");
        assert_eq!(made["matchers"][0]["value"], "AlwaysFiring");
        assert_eq!(made["status"]["state"], "active");
        let id = made["id"].as_str().unwrap().to_string();
        shot(&b, "alerts");
        // Expire it from the page.
        b.click(&b.find(&format!("tr[data-silence=\"{id}\"] button")));
        wait_for("the silence expired in the API", || {
            let (_, list) = c.get_json("/api/v1/silences");
            list["data"]
                .as_array()?
                .iter()
                .any(|s| s["id"] == id.as_str() && s["status"]["state"] == "expired")
                .then_some(())
        });
    } else {
        eprintln!(
            "SKIPPED: creating a silence from the page needs /api/v1/silences (notifications work)"
        );
    }
    if notify_api {
        assert!(
            w.hook
                .all()
                .iter()
                .any(|r| r.request_line.starts_with("POST /alerts")),
            "the webhook got nothing"
        );
        let sent = b.js(
            "return [...document.querySelectorAll('main .state')].some((s) => s.textContent === 'sent')",
            vec![],
        );
        assert_eq!(sent, json!(true), "no sent delivery listed");
    }
    assert_no_console_errors(&b, "alerts", &absent);
    if !silence_api {
        shot(&b, "alerts");
    }

    // SLOs.
    b.goto(&url("/slos"));
    b.wait_js(
        "the SLO list or its message",
        "return document.querySelector('main table, main .note:not(.info)') !== null",
    );
    if slo_api {
        // An SLO on the passing probe, made through the API; its list row,
        // page, charts and report show.
        let r = http()
            .post(url("/api/v1/slos"))
            .header("content-type", "application/json")
            .body(
                json!({
                    "name": "shop-probe",
                    "description": "the shop answers",
                    "objective": 99.0,
                    "window": "30d",
                    "indicator": {"kind": "probe", "probe": "ok"}
                })
                .to_string(),
            )
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "{:?}", r.text());
        wait_for("the SLO evaluated", || {
            let (_, s) = c.get_json("/api/v1/slos/shop-probe");
            s["data"]["status"]["sli"].as_f64()
        });
        b.goto(&url("/slos"));
        b.wait_js(
            "the SLO row",
            "return document.querySelector('tr[data-slo=\"shop-probe\"]') !== null",
        );
        assert_no_console_errors(&b, "slos", &absent);
        shot(&b, "slos");
        b.goto(&url("/slos/shop-probe"));
        b.wait_js(
            "the SLO charts and report",
            "return document.querySelectorAll('figure.chart').length === 3 && document.querySelector('.report-form + div dl, .report-form + div .note') !== null",
        );
        let facts = js_str(
            &b,
            "return document.querySelector('dl.facts').innerText",
            vec![],
        );
        assert!(facts.contains("100%"), "the SLI shows: {facts}");
        b.wait_js(
            "the burn-down drawn",
            "return document.querySelectorAll('figure.chart path.line, figure.chart circle').length > 0",
        );
        let csv = js_str(
            &b,
            "return document.querySelector('.report-form a').getAttribute('href')",
            vec![],
        );
        assert!(csv.contains("format=csv"), "{csv}");
        let r = http().get(url(&csv)).send().unwrap();
        assert_eq!(r.status().as_u16(), 200, "{csv}");
        assert_no_console_errors(&b, "slo page", &absent);
        shot(&b, "slo");
        b.goto(&url("/slos/no-such-slo"));
        b.wait_js(
            "the not-found view",
            "return document.querySelector('.notfound') !== null",
        );
        assert_no_console_errors(&b, "unknown SLO", &["/api/v1/slos/no-such-slo"]);
        shot(&b, "slo-not-found");
    } else {
        eprintln!("SKIPPED: SLO pages with data need /api/v1/slos (SLO work)");
        assert_no_console_errors(&b, "slos", &absent);
        shot(&b, "slos");
    }

    // Dark theme.
    b.goto(&url("/"));
    b.wait_js(
        "rows",
        "return document.querySelectorAll('.rows .row').length >= 4",
    );
    b.click(&b.find("#theme"));
    assert_eq!(
        b.js("return document.documentElement.dataset.theme", vec![]),
        json!("dark")
    );
    shot(&b, "overview-dark");
    b.click(&b.find("#theme"));

    // A host that stops turns "down" on the overview, by auto-refresh: as
    // the collector sees its pushes stop and as its scrapes fail.
    b.js(
        "const s = document.getElementById('refresh'); s.value = '10'; s.dispatchEvent(new Event('change'));",
        vec![],
    );
    w.scraped.kill();
    wait_for_within(
        "the stopped host shown down",
        Duration::from_secs(60),
        || (b.js(ROW_STATUS, vec![json!(scraped)]) == json!("down")).then_some(()),
    );
    assert_eq!(b.js(ROW_STATUS, vec![json!("web-1")]), json!("up"));
    assert_no_console_errors(&b, "overview after a host stopped", &[]);
    shot(&b, "overview-host-down");
    w.pushing.agent.kill();
}
