//! `GET /`: a plain status page until the full web UI exists: which hosts
//! report, how many series are stored, and where the API is. Every value is
//! HTML-escaped; the page loads nothing from elsewhere.

use super::AppState;
use axum::extract::State;
use axum::response::Html;

pub(super) async fn handle(State(s): State<AppState>) -> Html<String> {
    let st = s.clone();
    let instances = tokio::task::spawn_blocking(move || {
        // Hosts are what agents report (job="node"), not the collector's
        // own series or other scraped jobs.
        let hosts = promql_parser::label::Matchers::new(vec![promql_parser::label::Matcher::new(
            promql_parser::label::MatchOp::Equal,
            "job",
            "node",
        )]);
        st.storage
            .label_values("instance", &[hosts], i64::MIN, i64::MAX)
            .unwrap_or_default()
    })
    .await
    .unwrap_or_default();
    let mut rows = String::new();
    for i in &instances {
        let e = escape(i);
        rows.push_str(&format!(
            "<li><a href=\"/api/v1/query?query=%7Binstance%3D%22{q}%22%2Cjob%3D%22node%22%7D\">{e}</a></li>",
            q = urlencode(i)
        ));
    }
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<title>nines collector</title>\
<style>body{{font:15px system-ui,sans-serif;max-width:48rem;margin:2rem auto;padding:0 1rem}}code{{background:#eee;padding:0 .3em}}</style>\
</head><body><h1>nines collector {version}</h1>\
<p>{series} series stored. Hosts reporting: {n}.</p><ul>{rows}</ul>\
<h2>API</h2><ul>\
<li><code>POST /api/v1/push</code> native agent push</li>\
<li><code>/api/v1/query</code>, <code>/api/v1/query_range</code>, <code>/api/v1/series</code>, \
<code>/api/v1/labels</code>, <code>/api/v1/label/&lt;name&gt;/values</code>, <code>/api/v1/metadata</code>, \
<code>/api/v1/status/buildinfo</code>: the Prometheus HTTP API</li>\
<li><a href=\"/metrics\"><code>/metrics</code></a> the collector's own health</li>\
</ul></body></html>",
        version = env!("CARGO_PKG_VERSION"),
        series = s.storage.series_count(),
        n = instances.len(),
    ))
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn markup_in_values_is_escaped() {
        assert_eq!(
            super::escape("<script>\"x\"&'"),
            "&lt;script&gt;&quot;x&quot;&amp;&#39;"
        );
    }
}
