//! The write endpoints: `POST /api/v1/push` (native batches) and
//! `POST /api/v1/write` (Prometheus remote_write 1.0). Both check the token,
//! the content headers and the body size before reading the body, hand the
//! body to ingest, and answer only once it is committed (or refused).

use super::{ApiError, AppState, api_error};
use crate::ingest::IngestError;
use crate::ingest::remote_write::RemoteWriteError;
use crate::storage::{Applied, WriteError};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use nines_shared::wire::{self, DecodeError};

pub(super) async fn handle(State(s): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let bytes = match checked_body(&s, &headers, body, check_native_headers).await {
        Ok(b) => b,
        Err(resp) => return resp,
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
        Err(e @ IngestError::Write(_)) => unavailable(&e),
        Err(e @ IngestError::Decode(DecodeError::TooLarge { .. })) => {
            api_error(StatusCode::PAYLOAD_TOO_LARGE, "bad_data", &e.to_string())
        }
        Err(e) => api_error(StatusCode::BAD_REQUEST, "bad_data", &e.to_string()),
    }
}

/// `POST /api/v1/write`: Prometheus remote_write 1.0. 204 when committed,
/// 400 for bad data (senders do not retry it), 5xx for transient failures.
pub(super) async fn remote_write(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let bytes = match checked_body(&s, &headers, body, check_remote_write_headers).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    match s.ingest.remote_write(bytes).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e @ IngestError::RemoteWrite(RemoteWriteError::TooLarge { .. })) => {
            api_error(StatusCode::PAYLOAD_TOO_LARGE, "bad_data", &e.to_string())
        }
        Err(e @ IngestError::Write(_)) => unavailable(&e),
        Err(e) => api_error(StatusCode::BAD_REQUEST, "bad_data", &e.to_string()),
    }
}

/// 503 with the reason and when to try again. A full disk is logged by
/// the storage writer once per episode, not here per push.
fn unavailable(e: &IngestError) -> Response {
    let retry_after = match e {
        IngestError::Write(WriteError::DiskFull { .. }) => DISK_FULL_RETRY_AFTER,
        _ => {
            tracing::error!(error = %e, "write not committed");
            "1"
        }
    };
    let mut r = api_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        &e.to_string(),
    );
    r.headers_mut().insert(
        "retry-after",
        axum::http::HeaderValue::from_static(retry_after),
    );
    r
}

/// Seconds a pusher is asked to wait when the disk is full: freeing space
/// takes a person or a retention pass, not a moment.
const DISK_FULL_RETRY_AFTER: &str = "10";

/// Checks the token and the content headers, then reads the body within
/// the size limit. A refused request's body is drained so the client reads
/// the answer.
async fn checked_body(
    s: &AppState,
    headers: &HeaderMap,
    body: Body,
    content: fn(&AppState, &HeaderMap) -> Result<(), ApiError>,
) -> Result<Bytes, Response> {
    if let Err(e) = check_token(s, headers).and_then(|_| content(s, headers)) {
        drain(body).await;
        return Err(e.into_response());
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
        read_body(body, limit, declared.unwrap_or(0) as usize).await
    };
    match bytes {
        Ok(b) => Ok(b),
        Err(BodyError::TooLarge) => Err(too_large(s, limit)),
        Err(BodyError::Broken(e)) => {
            s.ingest.metrics().reject("body_read");
            Err(api_error(
                StatusCode::BAD_REQUEST,
                "bad_data",
                &format!("cannot read request body: {e}"),
            ))
        }
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
/// The agent token as a bearer token.
fn check_token(s: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !token.is_some_and(|t| constant_time_eq(t.as_bytes(), s.agent_token.as_bytes())) {
        s.ingest.metrics().reject("unauthorized");
        let msg = if token.is_none() {
            "missing bearer token (Authorization: Bearer <agent token>)"
        } else {
            "wrong agent token"
        };
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", msg));
    }
    Ok(())
}

fn unsupported(s: &AppState, reason: &str, msg: String) -> ApiError {
    s.ingest.metrics().reject(reason);
    ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "bad_data", &msg)
}

/// remote_write's headers: snappy-compressed protobuf.
fn check_remote_write_headers(s: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let ce = header("content-encoding").unwrap_or("");
    if ce != "snappy" {
        return Err(unsupported(
            s,
            "content_encoding",
            format!("content encoding {ce:?} is not snappy"),
        ));
    }
    let ct = header("content-type").unwrap_or("");
    if !ct.starts_with("application/x-protobuf") {
        return Err(unsupported(
            s,
            "content_type",
            format!("content type {ct:?} is not application/x-protobuf"),
        ));
    }
    if let Some(v) = header("x-prometheus-remote-write-version") {
        if !v.starts_with("0.1.") {
            return Err(unsupported(
                s,
                "wire_version",
                format!("remote write version {v:?} is not supported; this collector speaks 0.1.0"),
            ));
        }
    }
    Ok(())
}

/// Wire version, content type and encoding of a native push.
fn check_native_headers(s: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let unsupported = |reason: &str, msg: String| unsupported(s, reason, msg);
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
async fn read_body(mut body: Body, limit: usize, declared: usize) -> Result<Bytes, BodyError> {
    // Sized for the declared length (already checked against the limit),
    // so a body arriving in many frames is copied once.
    let mut buf: Vec<u8> = Vec::with_capacity(declared.min(limit));
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
