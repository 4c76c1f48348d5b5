//! `/api/v1/slos`: list, read, create, replace and delete SLOs, and their
//! availability reports as JSON or CSV. Handlers decode, call
//! [`crate::slo`] and map results to statuses.

use super::params::parse_time;
use super::{ApiError, AppState};
use crate::slo::report::{Report, report};
use crate::slo::{ChangeError, SloDefinition};
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use nines_shared::UnixMillis;
use serde_json::{Value as Json, json};
use std::collections::HashMap;

fn success(status: StatusCode, data: Json) -> Response {
    (
        status,
        axum::Json(json!({"status": "success", "data": data})),
    )
        .into_response()
}

fn not_found(name: &str) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("no SLO named {name:?}"),
    )
    .into_response()
}

/// A 400 naming the field.
fn invalid(field: &str, reason: &str) -> Response {
    let body = json!({
        "status": "error",
        "errorType": "bad_data",
        "error": format!("{field}: {reason}"),
        "field": field,
    });
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

fn change_error(e: ChangeError) -> Response {
    match e {
        ChangeError::Invalid(e) => invalid(&e.field, &e.reason),
        ChangeError::NotFound(n) => not_found(&n),
        ChangeError::FromConfig(_) => {
            ApiError::new(StatusCode::CONFLICT, "bad_data", &e.to_string()).into_response()
        }
        ChangeError::Internal(m) => {
            tracing::error!(error = %m, "SLO change failed");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", &m).into_response()
        }
    }
}

/// The body as a definition; serde's error names the field ("missing
/// field `objective`", "unknown field `x`"). The read-only fields of a GET
/// answer (`source`, `status`) are ignored, so what was read can be sent
/// back.
fn definition(body: &[u8]) -> Result<SloDefinition, String> {
    let mut v: Json = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    if let Json::Object(m) = &mut v {
        m.remove("source");
        m.remove("status");
    }
    serde_json::from_value(v).map_err(|e| format!("not an SLO definition: {e}"))
}

/// `GET /api/v1/slos`
pub async fn list(State(s): State<AppState>) -> Response {
    success(StatusCode::OK, s.slos.list_json())
}

/// `GET /api/v1/slos/{name}`
pub async fn get(State(s): State<AppState>, Path(name): Path<String>) -> Response {
    match s.slos.get_json(&name) {
        Some(v) => success(StatusCode::OK, v),
        None => not_found(&name),
    }
}

/// `POST /api/v1/slos`
pub async fn create(State(s): State<AppState>, body: Bytes) -> Response {
    let def = match definition(&body) {
        Ok(d) => d,
        Err(e) => return invalid("body", &e),
    };
    let name = def.name.clone();
    match s.slos.put(def, false).await {
        Ok(()) => success(
            StatusCode::CREATED,
            s.slos.get_json(&name).unwrap_or(Json::Null),
        ),
        Err(e) => change_error(e),
    }
}

/// `PUT /api/v1/slos/{name}`
pub async fn replace(State(s): State<AppState>, Path(name): Path<String>, body: Bytes) -> Response {
    let mut def = match definition(&body) {
        Ok(d) => d,
        Err(e) => return invalid("body", &e),
    };
    if def.name.is_empty() {
        def.name = name.clone();
    } else if def.name != name {
        return invalid(
            "name",
            &format!("{:?} differs from the SLO in the path {name:?}", def.name),
        );
    }
    match s.slos.put(def, true).await {
        Ok(()) => success(StatusCode::OK, s.slos.get_json(&name).unwrap_or(Json::Null)),
        Err(e) => change_error(e),
    }
}

/// `DELETE /api/v1/slos/{name}`
pub async fn delete(State(s): State<AppState>, Path(name): Path<String>) -> Response {
    match s.slos.delete(&name).await {
        Ok(()) => success(StatusCode::OK, json!({"deleted": name})),
        Err(e) => change_error(e),
    }
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

fn num(v: Option<f64>) -> Json {
    v.filter(|x| x.is_finite()).map_or(Json::Null, |x| json!(x))
}

fn report_json(name: &str, objective: f64, r: &Report) -> Json {
    json!({
        "slo": name,
        "objective": objective,
        "start": rfc3339(r.start),
        "end": rfc3339(r.end),
        "availability": num(r.availability),
        "downtime_minutes": num(r.downtime_minutes),
        "budget_spent_ratio": num(r.budget_spent_ratio),
        "missing_ratio": r.missing_ratio,
        "good_events": r.good,
        "total_events": r.total,
        "incidents": r.incidents.iter().map(|i| json!({
            "start": rfc3339(i.start),
            "end": rfc3339(i.end),
            "duration_seconds": (i.end - i.start) as f64 / 1000.0,
        })).collect::<Vec<_>>(),
    })
}

fn opt(v: Option<f64>) -> String {
    v.filter(|x| x.is_finite())
        .map_or(String::new(), |x| x.to_string())
}

/// The report as CSV: one `period` row, then one `incident` row each.
fn report_csv(name: &str, r: &Report) -> String {
    let mut out = String::from(
        "row,slo,start,end,duration_seconds,availability,downtime_minutes,budget_spent_ratio,missing_ratio,good_events,total_events\n",
    );
    out.push_str(&format!(
        "period,{name},{},{},{},{},{},{},{},{},{}\n",
        rfc3339(r.start),
        rfc3339(r.end),
        (r.end - r.start) as f64 / 1000.0,
        opt(r.availability),
        opt(r.downtime_minutes),
        opt(r.budget_spent_ratio),
        r.missing_ratio,
        r.good,
        r.total
    ));
    for i in &r.incidents {
        out.push_str(&format!(
            "incident,{name},{},{},{},,,,,,\n",
            rfc3339(i.start),
            rfc3339(i.end),
            (i.end - i.start) as f64 / 1000.0
        ));
    }
    out
}

/// `GET /api/v1/slos/{name}/report?start=&end=&format=json|csv`
pub async fn get_report(
    State(s): State<AppState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let q: HashMap<String, String> = form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .into_owned()
        .collect();
    let Some(slo) = s.slos.get(&name) else {
        return not_found(&name);
    };
    let end = match q.get("end").map(|v| parse_time(v.as_str())) {
        None => UnixMillis::now().0,
        Some(Ok(t)) => t,
        Some(Err(e)) => return invalid("end", &e),
    };
    let start = match q.get("start").map(|v| parse_time(v.as_str())) {
        None => return invalid("start", "is required (RFC 3339 or unix seconds)"),
        Some(Ok(t)) => t,
        Some(Err(e)) => return invalid("start", &e),
    };
    if start >= end {
        return invalid("start", "must be before end");
    }
    let format = q.get("format").map(String::as_str).unwrap_or("json");
    if format != "json" && format != "csv" {
        return invalid("format", &format!("{format:?} is not json or csv"));
    }
    let (engine, storage, slo2) = (s.engine.clone(), s.storage.clone(), slo.clone());
    let task = tokio::task::spawn_blocking(move || report(&slo2, start, end, &engine, &storage));
    let r = match tokio::time::timeout(s.limits.query_timeout, task).await {
        Err(_) => {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                "report timed out",
            )
            .into_response();
        }
        Ok(Err(e)) => {
            return ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                &e.to_string(),
            )
            .into_response();
        }
        Ok(Ok(Err(e))) => {
            return ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "execution", &e)
                .into_response();
        }
        Ok(Ok(Ok(r))) => r,
    };
    if format == "csv" {
        (
            [("content-type", "text/csv; charset=utf-8")],
            report_csv(&name, &r),
        )
            .into_response()
    } else {
        success(StatusCode::OK, report_json(&name, slo.def.objective, &r))
    }
}
