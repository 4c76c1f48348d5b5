//! The HTTP edge: routes, the shared state, the JSON error envelope, the
//! native push endpoint, and the collector's own `/metrics` and `/healthz`.
//! The Prometheus query API lives in [`prom`], the web UI in [`ui`]. Handlers
//! decode requests and map results to statuses; they hold no business logic
//! of their own.

mod notify;
pub mod params;
pub mod prom;
mod push;
mod slo;
pub mod ui;

use crate::config::Limits;
use crate::ingest::Ingest;
use crate::query::Engine;
use crate::storage::Storage;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use nines_shared::exposition::TEXT_CONTENT_TYPE;
use nines_shared::telemetry::{CounterVec, Registry};
use std::sync::Arc;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The push path.
    pub ingest: Ingest,
    /// The store, for reads.
    pub storage: Storage,
    /// PromQL evaluation.
    pub engine: Arc<Engine>,
    /// Token agents must present.
    pub agent_token: Arc<str>,
    /// The collector's own metrics.
    pub registry: Registry,
    /// Input and query limits.
    pub limits: Limits,
    /// Query API requests by endpoint and outcome.
    pub api_requests: CounterVec,
    /// Recording and alerting rules, for `/api/v1/rules` and `/api/v1/alerts`.
    pub rules: crate::rules::Rules,
    /// Service level objectives, for `/api/v1/slos`.
    pub slos: crate::slo::Slos,
    /// Silences and the notification outbox.
    pub notifier: crate::notify::Notifier,
}

impl AppState {
    /// Registers the API's own counters.
    pub fn register_api_metrics(r: &Registry) -> CounterVec {
        r.counter_vec(
            "nines_api_requests_total",
            "Query API requests, by endpoint and status code.",
            &["endpoint", "code"],
        )
    }
}

/// All routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            nines_shared::wire::PUSH_PATH,
            post(push::handle).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route(
            "/api/v1/write",
            post(push::remote_write).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/api/v1/query", get(prom::query).post(prom::query))
        .route(
            "/api/v1/query_range",
            get(prom::query_range).post(prom::query_range),
        )
        .route("/api/v1/series", get(prom::series).post(prom::series))
        .route("/api/v1/labels", get(prom::labels).post(prom::labels))
        .route(
            "/api/v1/label/{name}/values",
            get(prom::label_values).post(prom::label_values),
        )
        .route("/api/v1/metadata", get(prom::metadata).post(prom::metadata))
        .route("/api/v1/status/buildinfo", get(prom::buildinfo))
        .route("/api/v1/rules", get(prom::rules))
        .route("/api/v1/alerts", get(prom::alerts))
        .route("/api/v1/slos", get(slo::list).post(slo::create))
        .route(
            "/api/v1/slos/{name}",
            get(slo::get).put(slo::replace).delete(slo::delete),
        )
        .route("/api/v1/slos/{name}/report", get(slo::get_report))
        .route(
            "/api/v1/silences",
            get(notify::list_silences).post(notify::create_silence),
        )
        .route(
            "/api/v1/silences/{id}",
            axum::routing::delete(notify::expire_silence),
        )
        .route("/api/v1/notifications", get(notify::notifications))
        .route(
            "/api/v1/query_exemplars",
            get(prom::query_exemplars).post(prom::query_exemplars),
        )
        .route("/metrics", get(self_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/", get(ui::page))
        .route("/hosts/{*instance}", get(ui::page))
        .route("/probes", get(ui::page))
        .route("/slos", get(ui::page))
        .route("/slos/{name}", get(ui::page))
        .route("/alerts", get(ui::page))
        .route("/explore", get(ui::page))
        .route("/ui/{*file}", get(ui::asset))
        .fallback(not_found)
        .with_state(state)
}

async fn self_metrics(axum::extract::State(s): axum::extract::State<AppState>) -> Response {
    ([("content-type", TEXT_CONTENT_TYPE)], s.registry.render()).into_response()
}

async fn not_found(uri: axum::http::Uri) -> Response {
    api_error(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("no such endpoint: {}", uri.path()),
    )
}

/// An API failure: status, Prometheus `errorType` and message. Rendered as
/// the error envelope.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl ApiError {
    /// An error with this status and `errorType`.
    pub fn new(status: StatusCode, kind: &'static str, message: &str) -> Self {
        ApiError {
            status,
            kind,
            message: message.to_string(),
        }
    }

    /// A 400 `bad_data`.
    pub fn bad_data(message: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_data", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        api_error(self.status, self.kind, &self.message)
    }
}

/// The Prometheus error envelope: `{"status":"error","errorType":..,"error":..}`.
pub fn api_error(status: StatusCode, error_type: &str, message: &str) -> Response {
    let body = serde_json::json!({
        "status": "error",
        "errorType": error_type,
        "error": message,
    });
    (status, axum::Json(body)).into_response()
}
