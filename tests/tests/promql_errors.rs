//! Differential test of PromQL syntax errors: malformed queries asked of a
//! real Prometheus 2.42 and of nines must both be refused with HTTP 400 and
//! `bad_data`, and nines' message must start as Prometheus's does:
//! `invalid parameter "query": <line>:<col>: parse error:`. For most
//! queries the whole message is Prometheus's; the rest are listed with why
//! they differ.

use nines_tests::prometheus::Prometheus;
use nines_tests::*;
use serde_json::Value as Json;

/// How closely nines' message must follow Prometheus's.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// The same message, position and wording.
    Same,
    /// The same position; the wording differs (the reason is the comment
    /// on the case).
    Position,
}

use Expect::*;

/// Malformed queries, each with how close nines must come.
const CORPUS: &[(&str, Expect)] = &[
    // Brackets left open or closed twice.
    ("rate(", Same),
    ("sum(rate(x[5m])", Same),
    ("(1 + 2", Same),
    ("sum(\n  rate(x[5m]\n", Same),
    ("foo)", Same),
    ("(x))", Same),
    ("foo}", Same),
    ("foo]", Same),
    ("foo[5m", Same),
    ("x[5m:]]", Same),
    ("foo{a=\"b\"", Same),
    ("foo{a=\"b\",", Same),
    // Unexpected tokens and end of input.
    ("1 +", Same),
    ("x ==", Same),
    ("-", Same),
    ("foo bar", Same),
    ("1 +\n  bar baz", Same),
    ("x # comment (\n+ 1 +", Same),
    ("\"é\" bar", Same),
    ("* 1", Same),
    ("1 * * 2", Same),
    ("1 bool", Same),
    ("foo{a=\"b\"} {c=\"d\"}", Same),
    ("sum(x) (y)", Same),
    ("rate(x y)", Same),
    ("rate(,)", Same),
    ("abs(1,)", Same),
    ("foo$", Same),
    ("foo ! bar", Same),
    // Label matchers.
    ("foo{a=}", Same),
    ("foo{a=~}", Same),
    ("foo{a}", Same),
    ("foo{=\"b\"}", Same),
    ("foo{a=\"b\" c=\"d\"}", Same),
    ("foo{a=\"b\",,c=\"d\"}", Same),
    ("foo{a!\"b\"}", Same),
    ("foo{a=1}", Same),
    // Durations, offset, @.
    ("foo[5]", Same),
    ("foo[]", Same),
    ("foo[5x]", Same),
    ("x[1h30x]", Same),
    ("foo[5m:1]", Same),
    ("foo offset", Same),
    ("foo offset 5", Same),
    ("foo offset bar", Same),
    ("x @", Same),
    ("foo @ bar", Same),
    // Strings.
    ("\"a\\qb\"", Same),
    ("foo{a=\"\\x\"}", Same),
    ("\"unterminated", Same),
    ("`unterminated", Same),
    // Grouping and aggregations.
    ("x by (a)", Same),
    ("sum by foo (x)", Same),
    ("sum by (a b) (x)", Same),
    ("sum by (1) (x)", Same),
    ("sum(x) by", Same),
    ("sum by (a) ", Same),
    ("sum(x y)", Same),
    ("sum(,)", Same),
    // Functions: unknown, argument counts and types.
    ("nosuchfunc(x)", Same),
    ("rate()", Same),
    ("label_replace(x, \"a\")", Same),
    ("rate(x)", Same),
    ("time(1)", Same),
    ("topk(x)", Same),
    // Other mistakes of meaning, placed where Prometheus places them.
    ("{}", Same),
    ("1 and 2", Same),
    ("foo{a=\"b\"}[5m] offset 1h offset 2h", Same),
    ("rate(x[5m]) by (a)", Same),
    ("foo.", Same),
    ("(", Same),
    (")", Same),
    ("x @ start(", Same),
    // In brackets Prometheus's lexer reads a letter as the colon.
    ("x[5m bar]", Same),
    ("rate(x[5m+1m])", Same),
    ("max_over_time(x[5m:1m:1m])", Same),
    ("1e", Same),
    ("0x1g", Same),
    ("NaN Inf", Same),
    // Durations Prometheus 2.42 does not read.
    ("x[30m1h:]", Same),
    ("x[0s]", Same),
    ("x[5m:0s]", Same),
    ("x offset 30m1h", Same),
    ("x offset 0s", Same),
    ("x[1.5m]", Same),
    ("rate(x[300])", Same),
    // Modifiers where they are not allowed, placed where Prometheus
    // places them.
    ("foo[5m] [5m]", Same),
    ("rate(x[5m])[5m]", Same),
    ("x offset 5m[5m]", Same),
    ("x @ 1 [5m]", Same),
    ("rate(x[5m]) @ 1", Same),
    ("x + 1 offset 1m", Same),
    ("sum(rate(x[5m])) by (a) offset 5m", Same),
    ("x offset 5m offset 1m", Same),
    ("x @ 1 @ 2", Same),
    ("rate(x[5m]) offset 1h @", Same),
    // Binary operators and unary minus.
    ("x / bool y", Same),
    ("1 == 1", Same),
    ("\"a\" + 1", Same),
    ("-\"a\"", Same),
    ("1 + on(a) group_left x", Same),
    // Argument types: the argument of the wrong type.
    ("label_join(x, \"a\", \",\", \"b\", 1)", Same),
    ("round(x, \"a\")", Same),
    ("ceil(x[5m])", Same),
    ("clamp(x, y, 1)", Same),
    ("histogram_quantile(0.9, rate(x[5m])[5m:])", Same),
    ("label_replace(x, \"a\", \"b\", \"c\", sum(y))", Same),
    ("round(x, sum(y))", Same),
    ("sum(x,)", Same),
    // Names Prometheus 2.42 does not know.
    ("{\"x\"}", Same),
    ("sum by (\"a\") (x)", Same),
    ("mad_over_time(x[5m])", Same),
    // Go's regexp package words its errors differently from the one nines
    // uses; both point at the matcher.
    ("foo{a=\"b\", c=~\"(\"}", Position),
    // Prometheus names an internal token number here; nines names `@`.
    ("@ 1", Position),
    ("1 + on(a) 2", Same),
];

/// Asks `/api/v1/query` by POST form; returns (status, body).
fn query(url: &str, expr: &str) -> (u16, Json) {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("query", expr)
        .finish();
    let r = http()
        .post(format!("{url}/api/v1/query"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .expect("query request");
    let status = r.status().as_u16();
    let text = r.text().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Json::Null))
}

/// Asks `endpoint` with one form parameter; returns the error message.
fn error_of(url: &str, endpoint: &str, param: &str, value: &str) -> String {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .append_pair(param, value)
        .finish();
    let r = http()
        .post(format!("{url}/api/v1/{endpoint}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .expect("request");
    let status = r.status().as_u16();
    let j: Json = serde_json::from_str(&r.text().unwrap_or_default()).unwrap_or(Json::Null);
    format!("{status} {} {}", j["errorType"], j["error"])
}

/// `line:col: parse error:` at the start of `message`, if there.
fn position(message: &str) -> Option<&str> {
    let end = message.find(": parse error:")?;
    let (line, col) = message[..end].split_once(':')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(line) && digits(col)).then_some(&message[..end])
}

#[test]
fn position_reads_only_a_leading_line_and_column() {
    assert_eq!(position("1:6: parse error: x"), Some("1:6"));
    assert_eq!(position("12:30: parse error: x"), Some("12:30"));
    assert_eq!(position("parse error: x"), None);
    assert_eq!(position("a:1: parse error: x"), None);
    assert_eq!(position("1:6: unexpected"), None);
}

#[test]
fn syntax_errors_say_where_as_prometheus_2_42_does() {
    let Some(prometheus_bin) = peer("prometheus", "prometheus") else {
        return;
    };
    assert!(
        CORPUS.len() >= 40,
        "corpus has only {} queries",
        CORPUS.len()
    );
    let dir = tempfile::tempdir().unwrap();
    let prom = Prometheus::start(
        &prometheus_bin,
        dir.path(),
        "evaluation_interval: 1m",
        None,
        &[],
    );
    let nines = Collector::start(&dir.path().join("nines"), &["--no-local-agent"]);

    let mut differences = Vec::new();
    let mut same = 0;
    for &(expr, expect) in CORPUS {
        let (p_status, p) = query(&prom.url, expr);
        let (n_status, n) = query(&nines.url, expr);
        let want = p["error"].as_str().unwrap_or_default();
        let want = want
            .strip_prefix("invalid parameter \"query\": ")
            .unwrap_or(want);
        let got = n["error"].as_str().unwrap_or_default();
        // Both say which parameter, as Prometheus does.
        if p["error"]
            .as_str()
            .unwrap_or_default()
            .starts_with("invalid parameter \"query\": ")
        {
            assert!(
                got.starts_with("invalid parameter \"query\": "),
                "nines on {expr:?}: {n}"
            );
        }
        let got = got
            .strip_prefix("invalid parameter \"query\": ")
            .unwrap_or(got);
        assert_eq!(
            (p_status, p["errorType"].as_str()),
            (400, Some("bad_data")),
            "Prometheus on {expr:?}: {p}"
        );
        if (n_status, n["errorType"].as_str()) != (400, Some("bad_data")) {
            differences.push(format!("{expr:?}: nines answered {n_status} {n}"));
            continue;
        }
        let want_pos = position(want).unwrap_or_else(|| panic!("Prometheus on {expr:?}: {want}"));
        match (expect, position(got)) {
            (_, None) => differences.push(format!("{expr:?}: no position in {got:?}")),
            (Same, Some(_)) if got != want => {
                differences.push(format!(
                    "{expr:?}:\n  Prometheus {want}\n  nines      {got}"
                ));
            }
            (Position, Some(pos)) if pos != want_pos => {
                differences.push(format!(
                    "{expr:?}: position {pos}, Prometheus {want_pos} ({want}; nines: {got})"
                ));
            }
            (Same, _) => same += 1,
            (Position, _) => {}
        }
    }
    // The other endpoints that parse PromQL word it the same way.
    for (endpoint, param, value) in [
        ("series", "match[]", "up{a=}"),
        ("series", "match[]", "up{a=\"b\"} x"),
        ("query_exemplars", "query", "rate("),
        ("query_exemplars", "query", "foo{a=\"b\" c=\"d\"}"),
    ] {
        let want = error_of(&prom.url, endpoint, param, value);
        let got = error_of(&nines.url, endpoint, param, value);
        if want != got {
            differences.push(format!(
                "{endpoint} {param}={value:?}:\n  Prometheus {want}\n  nines      {got}"
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "{} of {} malformed queries answered differently ({same} identical):\n{}",
        differences.len(),
        CORPUS.len(),
        differences.join("\n")
    );
}
