//! The Prometheus HTTP query API (v1): `query`, `query_range`, `series`,
//! `labels`, `label/<name>/values`, `metadata`, `status/buildinfo`, with
//! GET and form POST, Prometheus's JSON envelope and error types, so that
//! promtool and Grafana work against the collector unchanged.

use super::params::{MAX_TIME_MS, MIN_TIME_MS, ParamError, Params};
use super::{ApiError, AppState};
use crate::query::querier::QuerierError;
use crate::query::{QueryError, Value};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use nines_shared::exposition::format_value;
use nines_shared::{Labels, UnixMillis, is_valid_label_name};
use promql_parser::label::{MatchOp, Matcher, Matchers};
use promql_parser::parser::Expr;
use serde_json::{Map, Value as Json, json};
use std::io::Write as _;
use std::time::Duration;

/// Prometheus's cap on points per series in a range query.
const MAX_POINTS: i64 = 11_000;

/// The request as every read endpoint sees it: the state and the merged
/// query-string and form parameters.
pub struct Request {
    state: AppState,
    params: Params,
}

impl axum::extract::FromRequest<AppState> for Request {
    type Rejection = Response;

    /// Parameters from the query string and a form body (bounded).
    async fn from_request(
        req: axum::extract::Request,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let body = axum::body::to_bytes(body, super::params::MAX_FORM_BYTES)
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "bad_data",
                    "form body too large",
                )
                .into_response()
            })?;
        let params = Params::from_request(&parts.method, &parts.headers, parts.uri.query(), &body)
            .map_err(|e| bad_data(&e.to_string()).into_response())?;
        Ok(Request {
            state: state.clone(),
            params,
        })
    }
}

fn bad_data(msg: &str) -> ApiError {
    ApiError::bad_data(msg)
}

fn success(data: Json) -> Response {
    (
        StatusCode::OK,
        axum::Json(json!({"status": "success", "data": data})),
    )
        .into_response()
}

fn count(state: &AppState, endpoint: &str, resp: Response) -> Response {
    state
        .api_requests
        .with(&[endpoint, resp.status().as_str()])
        .inc();
    resp
}

impl From<ParamError> for ApiError {
    fn from(e: ParamError) -> ApiError {
        bad_data(&e.0)
    }
}

/// The API error for a failed query; a parse error reads as Prometheus
/// words it, `invalid parameter "query": 1:5: parse error: ...`.
fn query_error(e: &QueryError) -> ApiError {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let message = match e {
        QueryError::Parse(m) => format!("invalid parameter \"query\": {m}"),
        other => other.to_string(),
    };
    ApiError::new(status, e.error_type(), &message)
}

fn querier_error(e: &QuerierError) -> ApiError {
    match e {
        QuerierError::Storage(_) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &e.to_string(),
        ),
        _ => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "execution",
            &e.to_string(),
        ),
    }
}

fn json_labels(labels: &Labels) -> Json {
    let mut m = Map::new();
    for l in labels.iter() {
        m.insert(l.name.clone(), Json::String(l.value.clone()));
    }
    Json::Object(m)
}

/// A query answer written straight into the response body, without an
/// intermediate JSON tree: a range query's answer has a string per point,
/// and building then serializing a tree of them cost more than the
/// evaluation. The bytes are what serde_json writes for the same tree
/// (strings escaped by serde_json, times as Prometheus writes them,
/// values as [`format_value`] spells them).
struct AnswerWriter {
    out: Vec<u8>,
}

impl AnswerWriter {
    /// A JSON string, escaped as serde_json escapes it.
    fn str(&mut self, s: &str) {
        self.out.push(b'"');
        let mut plain = 0;
        for (i, b) in s.bytes().enumerate() {
            let escape: &[u8] = match b {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                0x08 => b"\\b",
                0x0c => b"\\f",
                0..=0x1f => b"",
                _ => continue,
            };
            self.out.extend_from_slice(&s.as_bytes()[plain..i]);
            plain = i + 1;
            if escape.is_empty() {
                let _ = write!(self.out, "\\u{:04x}", b);
            } else {
                self.out.extend_from_slice(escape);
            }
        }
        self.out.extend_from_slice(&s.as_bytes()[plain..]);
        self.out.push(b'"');
    }

    fn raw(&mut self, s: &str) {
        self.out.extend_from_slice(s.as_bytes());
    }

    /// An integer's decimal digits, two at a time.
    fn int(&mut self, n: i64) {
        const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut u = n.unsigned_abs();
        while u >= 100 {
            let pair = (u % 100) as usize * 2;
            u /= 100;
            at -= 2;
            digits[at..at + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
        }
        if u >= 10 {
            let pair = u as usize * 2;
            at -= 2;
            digits[at..at + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
        } else {
            at -= 1;
            digits[at] = b'0' + u as u8;
        }
        if n < 0 {
            self.out.push(b'-');
        }
        self.out.extend_from_slice(&digits[at..]);
    }

    /// Unix seconds as a JSON number: an integer when whole, as Prometheus
    /// writes it.
    fn time(&mut self, ms: i64) {
        if ms % 1000 == 0 {
            self.int(ms / 1000);
        } else {
            // Writing into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut self.out, &(ms as f64 / 1000.0));
        }
    }

    /// A sample value as a JSON string, as [`format_value`] spells it.
    fn value(&mut self, v: f64) {
        /// Below 2^53 every integer is a float, and floats are at most 1
        /// apart, so the shortest digits that read back as an integral
        /// value are the integer's own: Display prints exactly those.
        const EXACT: f64 = 9_007_199_254_740_992.0;
        self.out.push(b'"');
        if v != 0.0 && v.fract() == 0.0 && v.abs() < EXACT {
            self.int(v as i64);
        } else if v.is_finite() {
            // The digits of a finite float never need escaping.
            let _ = write!(self.out, "{v}");
        } else {
            self.raw(&format_value(v));
        }
        self.out.push(b'"');
    }

    /// `[t,"v"]`
    fn point(&mut self, t: i64, v: f64) {
        self.raw("[");
        self.time(t);
        self.raw(",");
        self.value(v);
        self.raw("]");
    }

    fn labels(&mut self, labels: &Labels) {
        self.raw("{");
        for (i, l) in labels.iter().enumerate() {
            if i > 0 {
                self.raw(",");
            }
            self.str(&l.name);
            self.raw(":");
            self.str(&l.value);
        }
        self.raw("}");
    }

    /// The `data` object of a query answer.
    fn data(&mut self, v: &Value, t: i64) {
        match v {
            Value::Scalar(x) => {
                self.raw("{\"resultType\":\"scalar\",\"result\":");
                self.point(t, *x);
            }
            Value::String(s) => {
                self.raw("{\"resultType\":\"string\",\"result\":[");
                self.time(t);
                self.raw(",");
                self.str(s);
                self.raw("]");
            }
            Value::Vector(samples) => {
                self.raw("{\"resultType\":\"vector\",\"result\":[");
                for (i, s) in samples.iter().enumerate() {
                    if i > 0 {
                        self.raw(",");
                    }
                    self.raw("{\"metric\":");
                    self.labels(&s.labels);
                    self.raw(",\"value\":");
                    self.point(s.t, s.v);
                    self.raw("}");
                }
                self.raw("]");
            }
            Value::Matrix(series) => {
                self.raw("{\"resultType\":\"matrix\",\"result\":[");
                for (i, s) in series.iter().enumerate() {
                    if i > 0 {
                        self.raw(",");
                    }
                    self.raw("{\"metric\":");
                    self.labels(&s.labels);
                    self.raw(",\"values\":[");
                    for (j, &(pt, pv)) in s.samples.iter().enumerate() {
                        if j > 0 {
                            self.raw(",");
                        }
                        self.point(pt, pv);
                    }
                    self.raw("]}");
                }
                self.raw("]");
            }
        }
        self.raw("}");
    }
}

/// The success envelope around a query answer, written directly.
fn query_success(v: &Value, t: i64) -> Response {
    let points = match v {
        Value::Matrix(m) => m.iter().map(|s| s.samples.len() + 1).sum(),
        Value::Vector(v) => v.len(),
        _ => 1,
    };
    let mut w = AnswerWriter {
        out: Vec::with_capacity(64 + points * 32),
    };
    w.raw("{\"status\":\"success\",\"data\":");
    w.data(v, t);
    w.raw("}");
    (
        StatusCode::OK,
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        w.out,
    )
        .into_response()
}

/// The query's timeout: the `timeout` parameter, capped by the config.
fn timeout_of(r: &Request) -> Result<Duration, ApiError> {
    let cap = r.state.limits.query_timeout;
    Ok(match r.params.duration("timeout")? {
        Some(ms) if ms > 0 => Duration::from_millis(ms as u64).min(cap),
        Some(_) => return Err(bad_data("invalid parameter \"timeout\": must be positive")),
        None => cap,
    })
}

/// Runs evaluation off the async workers, bounded by `timeout`.
async fn evaluate(
    state: &AppState,
    timeout: Duration,
    f: impl FnOnce(&AppState) -> Result<Value, QueryError> + Send + 'static,
) -> Result<Value, ApiError> {
    let st = state.clone();
    let task = tokio::task::spawn_blocking(move || f(&st));
    match tokio::time::timeout(timeout, task).await {
        Err(_) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            &format!("query timed out in expression evaluation after {timeout:?}"),
        )),
        Ok(Err(e)) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &format!("evaluation failed: {e}"),
        )),
        Ok(Ok(Err(e))) => Err(query_error(&e)),
        Ok(Ok(Ok(v))) => Ok(v),
    }
}

/// `/api/v1/query`
pub async fn query(r: Request) -> Response {
    let st = r.state.clone();
    let resp = async move {
        let expr = r.params.required("query")?.to_string();
        let t = r.params.time_or("time", UnixMillis::now().0)?;
        let timeout = timeout_of(&r)?;
        let v = evaluate(&r.state, timeout, move |st| {
            st.engine.instant(&st.storage, &expr, t)
        })
        .await?;
        Ok::<_, ApiError>(query_success(&v, t))
    }
    .await
    .unwrap_or_else(IntoResponse::into_response);
    count(&st, "query", resp)
}

/// `/api/v1/query_range`
pub async fn query_range(r: Request) -> Response {
    let st = r.state.clone();
    let resp = async move {
        let expr = r.params.required("query")?.to_string();
        let start = r.params.time_or("start", i64::MIN)?;
        let end = r.params.time_or("end", i64::MIN)?;
        if start == i64::MIN {
            return Err(bad_data("invalid parameter \"start\": missing"));
        }
        if end == i64::MIN {
            return Err(bad_data("invalid parameter \"end\": missing"));
        }
        if end < start {
            return Err(bad_data("invalid parameter \"end\": end timestamp must not be before start time"));
        }
        let step = r
            .params
            .duration("step")?
            .ok_or_else(|| bad_data("invalid parameter \"step\": missing"))?;
        if step <= 0 {
            return Err(bad_data("invalid parameter \"step\": zero or negative query resolution step widths are not accepted. Try a positive integer"));
        }
        if (end - start) / step > MAX_POINTS {
            return Err(bad_data("exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)"));
        }
        let timeout = timeout_of(&r)?;
        let v = evaluate(&r.state, timeout, move |st| {
            st.engine.range(&st.storage, &expr, start, end, step)
        })
        .await?;
        Ok(query_success(&v, end))
    }
    .await
    .unwrap_or_else(IntoResponse::into_response);
    count(&st, "query_range", resp)
}

/// Parses a series selector (`match[]`) into matchers, the metric name
/// included.
pub fn parse_selector(s: &str) -> Result<Matchers, String> {
    match crate::query::parse_checked(s) {
        Ok(Expr::VectorSelector(vs)) => {
            let mut m = vs.matchers;
            if let Some(name) = vs.name {
                let by_name = Matcher::new(MatchOp::Equal, "__name__", &name);
                m.matchers.push(by_name.clone());
                for group in &mut m.or_matchers {
                    group.push(by_name.clone());
                }
            }
            Ok(m)
        }
        Ok(_) => Err(format!(
            "invalid parameter \"match[]\": {s:?} is not a series selector"
        )),
        Err(e) => Err(format!("invalid parameter \"match[]\": {e}")),
    }
}

fn selectors(p: &Params) -> Result<Vec<Matchers>, ApiError> {
    p.all("match[]")
        .into_iter()
        .map(|s| parse_selector(s).map_err(|e| bad_data(&e)))
        .collect()
}

fn bounds(p: &Params) -> Result<(i64, i64), ApiError> {
    let start = p.time_or("start", MIN_TIME_MS)?;
    let end = p.time_or("end", MAX_TIME_MS)?;
    if end < start {
        return Err(bad_data(
            "invalid parameter \"end\": end timestamp must not be before start time",
        ));
    }
    Ok((start, end))
}

fn limit_of(p: &Params) -> Result<Option<usize>, ApiError> {
    match p.get("limit").filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => match s.parse::<usize>() {
            Ok(0) => Ok(None),
            Ok(n) => Ok(Some(n)),
            Err(_) => Err(bad_data(&format!(
                "invalid parameter \"limit\": {s:?} is not a number"
            ))),
        },
    }
}

/// Runs a blocking store read off the async workers.
async fn read_store<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&AppState) -> Result<T, QuerierError> + Send + 'static,
) -> Result<T, ApiError> {
    let st = state.clone();
    match tokio::task::spawn_blocking(move || f(&st)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(querier_error(&e)),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &e.to_string(),
        )),
    }
}

/// `/api/v1/series`
pub async fn series(r: Request) -> Response {
    let st = r.state.clone();
    let resp = async move {
        let sel = selectors(&r.params)?;
        if sel.is_empty() {
            return Err(bad_data("no match[] parameter provided"));
        }
        let (start, end) = bounds(&r.params)?;
        let limit = limit_of(&r.params)?;
        let mut found = read_store(&r.state, move |st| st.storage.series(&sel, start, end)).await?;
        if let Some(n) = limit {
            found.truncate(n);
        }
        Ok(success(Json::Array(
            found.iter().map(json_labels).collect(),
        )))
    }
    .await
    .unwrap_or_else(IntoResponse::into_response);
    count(&st, "series", resp)
}

/// `/api/v1/labels`
pub async fn labels(r: Request) -> Response {
    let st = r.state.clone();
    let resp = async move {
        let sel = selectors(&r.params)?;
        let (start, end) = bounds(&r.params)?;
        let limit = limit_of(&r.params)?;
        let mut names =
            read_store(&r.state, move |st| st.storage.label_names(&sel, start, end)).await?;
        if let Some(n) = limit {
            names.truncate(n);
        }
        Ok::<_, ApiError>(success(json!(names)))
    }
    .await
    .unwrap_or_else(IntoResponse::into_response);
    count(&st, "labels", resp)
}

/// `/api/v1/label/<name>/values`
pub async fn label_values(Path(name): Path<String>, r: Request) -> Response {
    let st = r.state.clone();
    let resp = async move {
        if !is_valid_label_name(&name) {
            return Err(bad_data(&format!("invalid label name: {name:?}")));
        }
        let sel = selectors(&r.params)?;
        let (start, end) = bounds(&r.params)?;
        let limit = limit_of(&r.params)?;
        let mut values = read_store(&r.state, move |st| {
            st.storage.label_values(&name, &sel, start, end)
        })
        .await?;
        if let Some(n) = limit {
            values.truncate(n);
        }
        Ok(success(json!(values)))
    }
    .await
    .unwrap_or_else(IntoResponse::into_response);
    count(&st, "label_values", resp)
}

/// `/api/v1/metadata`
pub async fn metadata(r: Request) -> Response {
    let st = r.state.clone();
    let resp = async move {
        let metric = r
            .params
            .get("metric")
            .filter(|m| !m.is_empty())
            .map(str::to_string);
        let limit = limit_of(&r.params)?;
        let rows = read_store(&r.state, move |st| {
            st.storage
                .metadata(metric.as_deref())
                .map_err(|e| QuerierError::Storage(e.to_string()))
        })
        .await?;
        let mut out = Map::new();
        for m in rows.into_iter().take(limit.unwrap_or(usize::MAX)) {
            out.insert(
                m.name.clone(),
                json!([{"type": m.kind.as_str(), "help": m.help, "unit": m.unit}]),
            );
        }
        Ok::<_, ApiError>(success(Json::Object(out)))
    }
    .await
    .unwrap_or_else(IntoResponse::into_response);
    count(&st, "metadata", resp)
}

/// `/api/v1/status/buildinfo`
pub async fn buildinfo() -> Response {
    success(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "revision": option_env!("NINES_GIT_REVISION").unwrap_or(""),
        "branch": "",
        "buildUser": "",
        "buildDate": "",
        "goVersion": "",
    }))
}

/// `/api/v1/rules`: the rule groups, their rules, health and alerts.
pub async fn rules(State(s): State<AppState>) -> Response {
    let resp = success(s.rules.rules_json());
    count(&s, "rules", resp)
}

/// `/api/v1/alerts`: pending and firing alerts.
pub async fn alerts(State(s): State<AppState>) -> Response {
    let resp = success(s.rules.alerts_json());
    count(&s, "alerts", resp)
}

/// `/api/v1/query_exemplars`: the query is checked; nines stores no
/// exemplars, so the answer is empty.
pub async fn query_exemplars(r: Request) -> Response {
    let st = r.state.clone();
    let resp = async move {
        let expr = r.params.required("query")?;
        // Prometheus answers here with the parse error alone.
        crate::query::parse_checked(expr).map_err(|e| bad_data(&e))?;
        bounds(&r.params)?;
        Ok::<_, ApiError>(success(json!([])))
    }
    .await
    .unwrap_or_else(IntoResponse::into_response);
    count(&st, "query_exemplars", resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::{InstantSample, RangeSeries};

    /// The answer as a JSON tree, the way it was built before it was
    /// written directly: the reference for the writer's bytes.
    fn tree(v: &Value, t: i64) -> Json {
        fn time(ms: i64) -> Json {
            if ms % 1000 == 0 {
                json!(ms / 1000)
            } else {
                json!(ms as f64 / 1000.0)
            }
        }
        let data = match v {
            Value::Scalar(x) => {
                json!({"resultType": "scalar", "result": [time(t), format_value(*x)]})
            }
            Value::String(s) => json!({"resultType": "string", "result": [time(t), s]}),
            Value::Vector(samples) => json!({
                "resultType": "vector",
                "result": samples.iter().map(|s| json!({
                    "metric": json_labels(&s.labels),
                    "value": [time(s.t), format_value(s.v)],
                })).collect::<Vec<_>>(),
            }),
            Value::Matrix(series) => json!({
                "resultType": "matrix",
                "result": series.iter().map(|s| json!({
                    "metric": json_labels(&s.labels),
                    "values": s.samples.iter().map(|(t, v)| json!([time(*t), format_value(*v)])).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            }),
        };
        json!({"status": "success", "data": data})
    }

    fn written(v: &Value, t: i64) -> String {
        let mut w = AnswerWriter { out: Vec::new() };
        w.raw("{\"status\":\"success\",\"data\":");
        w.data(v, t);
        w.raw("}");
        String::from_utf8(w.out).expect("utf-8")
    }

    #[test]
    fn written_values_are_spelled_as_format_value_spells_them() {
        let mut values = vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            4096.0 * 24_414_062.0,
            9_007_199_254_740_991.0,
            -9_007_199_254_740_991.0,
            9_007_199_254_740_992.0,
            9_007_199_254_740_994.0,
            1e21,
            1e22,
            0.5,
            -2.5e-9,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::from_bits(0x7ff0_0000_0000_0002),
        ];
        // Arbitrary bit patterns, and integers of every size.
        let mut rng = crate::query::fixtures::Rng(0x6e69_6e65_7300_0001);
        for i in 0..20_000 {
            let z = rng.next();
            values.push(f64::from_bits(z));
            values.push((z >> (i % 64)) as f64);
            values.push(-((z >> (i % 60)) as f64) / 4.0);
        }
        for v in values {
            let mut w = AnswerWriter { out: Vec::new() };
            w.value(v);
            assert_eq!(
                String::from_utf8(w.out).expect("utf-8"),
                format!("\"{}\"", format_value(v)),
                "{:x}",
                v.to_bits()
            );
        }
    }

    #[test]
    fn written_answers_equal_the_json_tree() {
        let odd = Labels::new(
            "m",
            [
                (
                    "a",
                    "quote \" back \\ nl \n tab \t ctl \u{1} \u{8} \u{c} \u{1f} \u{7f} é ☃",
                ),
                ("b", ""),
            ],
        );
        let values = [
            0.0,
            -0.0,
            1.0,
            -2.5,
            0.1 + 0.2,
            1e21,
            1.5e-7,
            f64::MAX,
            f64::MIN_POSITIVE,
            123_456_789_012.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ];
        let times = [
            0,
            1_700_000_000_000,
            1_700_000_000_001,
            -1_500,
            999,
            -3_000,
            i64::MIN,
            -9_223_372_036_854_775_000,
            i64::MAX - 807,
        ];
        let mut cases = vec![
            Value::String("s \"x\"\n".into()),
            Value::Vector(vec![]),
            Value::Matrix(vec![]),
        ];
        for &v in &values {
            cases.push(Value::Scalar(v));
        }
        cases.push(Value::Vector(
            values
                .iter()
                .zip(times.iter().cycle())
                .map(|(&v, &t)| InstantSample {
                    labels: odd.clone(),
                    t,
                    v,
                })
                .collect(),
        ));
        cases.push(Value::Matrix(vec![
            RangeSeries {
                labels: Labels::default(),
                samples: vec![],
            },
            RangeSeries {
                labels: odd.clone(),
                samples: times.iter().copied().zip(values.iter().copied()).collect(),
            },
            RangeSeries {
                labels: Labels::new("up", [("job", "node")]),
                samples: vec![(1_000, 1.0), (2_500, 2.0)],
            },
        ]));
        for v in &cases {
            for &t in &times {
                let text = written(v, t);
                let parsed: Json = serde_json::from_str(&text).expect("valid JSON");
                assert_eq!(parsed, tree(v, t), "{text}");
                // Byte for byte what serde_json writes for the tree, up to
                // the order of object keys (the tree sorts them).
                let mut a: Vec<u8> = text.into_bytes();
                let mut b: Vec<u8> = serde_json::to_vec(&tree(v, t)).expect("json");
                a.sort_unstable();
                b.sort_unstable();
                assert_eq!(a, b);
            }
        }
    }
}
