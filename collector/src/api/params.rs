//! Request parameters of the Prometheus HTTP API: merged from the query
//! string and a form-encoded POST body (as Prometheus merges them), and the
//! time and duration syntaxes it accepts. Parsing only.

use axum::http::{HeaderMap, Method};
use nines_shared::duration::parse_duration;

/// Largest form body read, in bytes.
pub const MAX_FORM_BYTES: usize = 1 << 20;

/// The earliest and latest times Prometheus uses for "no bound".
pub const MIN_TIME_MS: i64 = -9_223_372_036_854_775 + 1_000;
/// See [`MIN_TIME_MS`].
pub const MAX_TIME_MS: i64 = 9_223_372_036_854_775 - 1_000;

/// A parameter problem, reported as `bad_data`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ParamError(pub String);

/// All parameters of one request, in order, repeated keys kept.
#[derive(Debug, Default)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// Reads the query string and, for a form POST, the body.
    pub fn from_request(
        method: &Method,
        headers: &HeaderMap,
        query: Option<&str>,
        body: &[u8],
    ) -> Result<Params, ParamError> {
        let mut v: Vec<(String, String)> = Vec::new();
        if let Some(q) = query {
            v.extend(form_urlencoded::parse(q.as_bytes()).into_owned());
        }
        if method == Method::POST && !body.is_empty() {
            let ct = headers
                .get("content-type")
                .and_then(|h| h.to_str().ok())
                .unwrap_or("");
            if !ct.starts_with("application/x-www-form-urlencoded") {
                return Err(ParamError(format!(
                    "unsupported content type {ct:?}: POST parameters must be application/x-www-form-urlencoded"
                )));
            }
            // Body parameters first, as Go's ParseForm orders them.
            let mut body_params: Vec<(String, String)> =
                form_urlencoded::parse(body).into_owned().collect();
            body_params.append(&mut v);
            v = body_params;
        }
        Ok(Params(v))
    }

    /// The first value of a parameter.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a repeated parameter (`match[]`).
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// A required parameter.
    pub fn required(&self, name: &str) -> Result<&str, ParamError> {
        self.get(name)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ParamError(format!("invalid parameter \"{name}\": missing")))
    }

    /// A time parameter, or `default` when absent.
    pub fn time_or(&self, name: &str, default: i64) -> Result<i64, ParamError> {
        match self.get(name).filter(|s| !s.is_empty()) {
            None => Ok(default),
            Some(s) => {
                parse_time(s).map_err(|e| ParamError(format!("invalid parameter \"{name}\": {e}")))
            }
        }
    }

    /// A duration parameter in ms, if present.
    pub fn duration(&self, name: &str) -> Result<Option<i64>, ParamError> {
        match self.get(name).filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(s) => parse_duration_param(s)
                .map(Some)
                .map_err(|e| ParamError(format!("invalid parameter \"{name}\": {e}"))),
        }
    }
}

/// Unix seconds (float) or RFC 3339, to ms.
pub fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(f) = s.parse::<f64>() {
        if !f.is_finite() {
            return Err(format!("cannot parse {s:?} to a valid timestamp"));
        }
        let ms = (f * 1000.0).round();
        if ms < MIN_TIME_MS as f64 || ms > MAX_TIME_MS as f64 {
            return Err(format!(
                "cannot parse {s:?} to a valid timestamp: out of range"
            ));
        }
        return Ok(ms as i64);
    }
    // Prometheus's own spellings of "no bound".
    match s {
        "0001-01-01T00:00:00Z" | "-292273086-05-16T16:47:06Z" => return Ok(MIN_TIME_MS),
        "9999-12-31T23:59:59Z" | "292277025-08-18T07:12:54.999999999Z" => {
            return Ok(MAX_TIME_MS);
        }
        _ => {}
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|_| format!("cannot parse {s:?} to a valid timestamp"))
}

/// Float seconds or a Prometheus duration, to ms.
pub fn parse_duration_param(s: &str) -> Result<i64, String> {
    if let Ok(f) = s.parse::<f64>() {
        if !f.is_finite() || f * 1000.0 > i64::MAX as f64 || f * 1000.0 < i64::MIN as f64 {
            return Err(format!("cannot parse {s:?} to a valid duration"));
        }
        return Ok((f * 1000.0).round() as i64);
    }
    parse_duration(s)
        .map(|d| d.as_millis().min(i64::MAX as u128) as i64)
        .map_err(|_| format!("cannot parse {s:?} to a valid duration"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_prometheus_accepts_them() {
        assert_eq!(parse_time("1700000000"), Ok(1_700_000_000_000));
        assert_eq!(parse_time("1700000000.123"), Ok(1_700_000_000_123));
        assert_eq!(parse_time("2023-11-14T22:13:20Z"), Ok(1_700_000_000_000));
        assert_eq!(
            parse_time("2023-11-14T23:13:20.5+01:00"),
            Ok(1_700_000_000_500)
        );
        for bad in ["NaN", "Inf", "-Inf", "yesterday", "1e300", ""] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_take_seconds_or_units() {
        assert_eq!(parse_duration_param("15"), Ok(15_000));
        assert_eq!(parse_duration_param("0.5"), Ok(500));
        assert_eq!(parse_duration_param("1m"), Ok(60_000));
        assert!(parse_duration_param("NaN").is_err());
        assert!(parse_duration_param("fast").is_err());
    }

    #[test]
    fn form_bodies_and_query_strings_merge() {
        let mut h = HeaderMap::new();
        h.insert(
            "content-type",
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        let p = Params::from_request(
            &Method::POST,
            &h,
            Some("match[]=b&time=2"),
            b"match[]=a&query=up%7Bjob%3D%22x%22%7D",
        )
        .unwrap();
        assert_eq!(p.all("match[]"), vec!["a", "b"]);
        assert_eq!(p.get("query"), Some("up{job=\"x\"}"));
        assert_eq!(p.get("time"), Some("2"));
    }
}
