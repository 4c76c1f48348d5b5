//! `/api/v1/silences` (Alertmanager API v2's silence shape) and
//! `/api/v1/notifications` (the outbox). Decoding and status codes only;
//! the notifier checks and keeps the data.

use super::{AppState, api_error};
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value as Json, json};

fn success(data: Json) -> Response {
    axum::Json(json!({"status": "success", "data": data})).into_response()
}

/// `GET /api/v1/silences`.
pub async fn list_silences(State(s): State<AppState>) -> Response {
    success(s.notifier.silences_json())
}

/// `POST /api/v1/silences`: 400 with the field and reason for a bad body.
pub async fn create_silence(State(s): State<AppState>, body: Bytes) -> Response {
    let parsed: Json = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                "bad_data",
                &format!("body: not JSON ({e})"),
            );
        }
    };
    match s.notifier.create_silence(parsed).await {
        Ok(id) => success(json!({"silenceID": id})),
        Err((field, reason)) if field == "store" => api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            &format!("silence not saved: {reason}"),
        ),
        Err((field, reason)) => api_error(
            StatusCode::BAD_REQUEST,
            "bad_data",
            &format!("{field}: {reason}"),
        ),
    }
}

/// `DELETE /api/v1/silences/{id}`: expires it.
pub async fn expire_silence(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    match s.notifier.expire_silence(&id).await {
        Ok(true) => success(Json::Null),
        Ok(false) => api_error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no silence with id {id:?}"),
        ),
        Err(e) => api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            &format!("silence not expired: {e}"),
        ),
    }
}

/// `GET /api/v1/notifications?limit=N` (default 100, at most 10000).
pub async fn notifications(State(s): State<AppState>, RawQuery(q): RawQuery) -> Response {
    let limit = form_urlencoded::parse(q.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "limit")
        .map(|(_, v)| v.into_owned());
    let limit = match limit.map(|l| l.parse::<usize>()) {
        None => 100,
        Some(Ok(n)) if (1..=10_000).contains(&n) => n,
        Some(_) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                "bad_data",
                "limit: must be a whole number from 1 to 10000",
            );
        }
    };
    match s.notifier.notifications_json(limit).await {
        Ok(rows) => success(rows),
        Err(e) => api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            &format!("outbox not readable: {e}"),
        ),
    }
}
