//! `POST /api/v1/push`: the native push. Checks the token, the wire version
//! and the body size before reading the body, then hands the body to ingest
//! and answers only once the batch is committed (or refused).

use super::{ApiError, AppState, api_error};
use crate::ingest::IngestError;
use crate::storage::{Applied, WriteError};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use nines_shared::wire::{self, DecodeError};

pub(super) async fn handle(State(s): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    if let Err(e) = check_headers(&s, &headers) {
        drain(body).await;
        return e.into_response();
    }
    let limit = s.limits.max_body_bytes;
    let declared = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let bytes = if declared.is_some_and(|n| n > limit as u64) {
        drain(body).await;
        Err(BodyError::TooLarge)
    } else {
        read_body(body, limit).await
    };
    let bytes = match bytes {
        Ok(b) => b,
        Err(BodyError::TooLarge) => return too_large(&s, limit),
        Err(BodyError::Broken(e)) => {
            s.ingest.metrics().reject("body_read");
            return api_error(
                StatusCode::BAD_REQUEST,
                "bad_data",
                &format!("cannot read request body: {e}"),
            );
        }
    };
    match s.ingest.push(bytes).await {
        Ok(Applied::Stored {
            samples,
            new_series,
        }) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({
                "status": "success",
                "data": {"applied": true, "samples": samples, "newSeries": new_series}
            })),
        )
            .into_response(),
        Ok(Applied::Duplicate) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({
                "status": "success",
                "data": {"applied": false, "duplicate": true}
            })),
        )
            .into_response(),
        Err(IngestError::Write(WriteError::UnknownRefs(refs))) => (
            StatusCode::CONFLICT,
            axum::Json(serde_json::json!({
                "status": "error",
                "errorType": "unknown_refs",
                "error": "batch uses series refs this collector does not know; resend with definitions",
                "unknownRefs": refs,
            })),
        )
            .into_response(),
        Err(e @ IngestError::Write(_)) => {
            tracing::error!(error = %e, "push not committed");
            let mut r = api_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", &e.to_string());
            r.headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
            r
        }
        Err(e @ IngestError::Decode(DecodeError::TooLarge { .. })) => {
            api_error(StatusCode::PAYLOAD_TOO_LARGE, "bad_data", &e.to_string())
        }
        Err(e) => api_error(StatusCode::BAD_REQUEST, "bad_data", &e.to_string()),
    }
}

fn too_large(s: &AppState, limit: usize) -> Response {
    s.ingest.metrics().reject("body_too_large");
    api_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "bad_data",
        &format!("request body is larger than {limit} bytes"),
    )
}

/// Token, content type, encoding and wire version, in that order.
fn check_headers(s: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let token = header("authorization").and_then(|v| v.strip_prefix("Bearer "));
    if !token.is_some_and(|t| constant_time_eq(t.as_bytes(), s.agent_token.as_bytes())) {
        s.ingest.metrics().reject("unauthorized");
        let msg = if token.is_none() {
            "missing bearer token (Authorization: Bearer <agent token>)"
        } else {
            "wrong agent token"
        };
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", msg));
    }
    let unsupported = |reason: &str, msg: String| {
        s.ingest.metrics().reject(reason);
        ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "bad_data", &msg)
    };
    match header(wire::VERSION_HEADER) {
        Some(v) if v.trim() == wire::VERSION.to_string() => {}
        Some(v) => {
            return Err(unsupported(
                "wire_version",
                format!(
                    "wire version {v:?} is not supported; this collector speaks version {}",
                    wire::VERSION
                ),
            ));
        }
        None => {
            return Err(unsupported(
                "wire_version",
                format!("missing {} header", wire::VERSION_HEADER),
            ));
        }
    }
    let ct = header("content-type").unwrap_or("");
    if ct != wire::CONTENT_TYPE {
        return Err(unsupported(
            "content_type",
            format!("content type {ct:?} is not {}", wire::CONTENT_TYPE),
        ));
    }
    let ce = header("content-encoding").unwrap_or("");
    if ce != wire::CONTENT_ENCODING {
        return Err(unsupported(
            "content_encoding",
            format!("content encoding {ce:?} is not {}", wire::CONTENT_ENCODING),
        ));
    }
    Ok(())
}

enum BodyError {
    TooLarge,
    Broken(String),
}

/// Reads at most `limit` bytes. Over the limit, the rest is read and thrown
/// away (bounded in bytes and time) so the client sees the 413 instead of a
/// connection reset in the middle of its upload.
async fn read_body(mut body: Body, limit: usize) -> Result<Bytes, BodyError> {
    let mut buf: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Broken(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                drain(body).await;
                return Err(BodyError::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(buf))
}

/// Reads and discards up to 64 MiB or 10 seconds of a body.
async fn drain(mut body: Body) {
    let mut left: usize = 64 << 20;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(d) = frame.into_data() {
                left = left.saturating_sub(d.len());
                if left == 0 {
                    break;
                }
            }
        }
    })
    .await;
}

/// Compares without an early exit, so timing does not leak the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
