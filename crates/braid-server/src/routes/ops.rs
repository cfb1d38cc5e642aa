//! Operations routes: the web view (`/`) and the libraries it uses
//! (`/assets/…`, vendored, never fetched from a CDN), liveness (`/healthz`),
//! readiness (`/readyz`: the store answers) and Prometheus `/metrics`.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse};
use serde_json::{Value, json};

use braid_core::RunStatus;

use crate::AppState;
use crate::error::ApiError;

const INDEX_HTML: &str = include_str!("../../assets/index.html");

/// `GET /`: the live web view.
#[utoipa::path(
    get,
    path = "/",
    tag = "operations",
    summary = "The live web view.",
    responses(
        (status = 200, description = "The web view's page.", content_type = "text/html", body = String),
    ),
)]
pub(super) async fn index() -> Html<&'static str> {
    Html(INDEX_HTML)
}

/// dagre (MIT, `assets/vendor/dagre.LICENSE`): lays the graphs out.
const DAGRE_JS: &str = include_str!("../../assets/vendor/dagre.min.js");
/// markdown-it (MIT, `assets/vendor/markdown-it.LICENSE`): renders
/// Markdown outputs, with HTML disabled.
const MARKDOWN_IT_JS: &str = include_str!("../../assets/vendor/markdown-it.min.js");

/// A vendored script, cached for a year: the page asks for it with its
/// version in the query (`?v=3.1.3`), so an upgrade changes its address.
fn script(body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        body,
    )
}

/// `GET /assets/dagre.min.js`: the graph layout library.
pub(super) async fn dagre() -> impl IntoResponse {
    script(DAGRE_JS)
}

/// `GET /assets/markdown-it.min.js`: the Markdown renderer.
pub(super) async fn markdown_it() -> impl IntoResponse {
    script(MARKDOWN_IT_JS)
}

/// `GET /healthz`: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    summary = "Liveness: the process answers.",
    responses(
        (status = 200, description = "Always `{\"status\": \"ok\"}`.", body = crate::routes::openapi::Health),
    ),
)]
pub(super) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: 503 while the store does not answer.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    summary = "Readiness: the store answers.",
    responses(
        (status = 200, description = "Ready.", body = crate::routes::openapi::Health),
        (status = 503, description = "The store does not answer.", body = crate::routes::openapi::ErrorBody),
    ),
)]
pub(super) async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    if let Some(store) = &state.inner.store {
        store.ping().await.map_err(|err| {
            tracing::warn!(
                store = %store.describe(),
                %err,
                "readiness: the store does not answer"
            );
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unreachable",
                "the store does not answer",
            )
        })?;
    }
    Ok(Json(json!({"status": "ready"})))
}

/// `GET /metrics`: every metric, with the runs in memory by status.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus metrics (the token is needed unless --public-metrics).",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every metric, in the Prometheus text format.", content_type = "text/plain", body = String),
        (status = 401, description = "No valid bearer token.", body = crate::routes::openapi::ErrorBody),
        (status = 403, description = "The request's Origin (or, without a token, its Host) is not allowed.", body = crate::routes::openapi::ErrorBody),
    ),
)]
pub(super) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    if let Some(store) = &state.inner.store {
        store.record_gauges();
    }
    let counts = state.inner.runs.counts();
    let statuses = [
        RunStatus::Completed,
        RunStatus::Failed,
        RunStatus::Cancelled,
    ];
    for status in
        std::iter::once(braid_core::report::RUNNING).chain(statuses.map(RunStatus::as_str))
    {
        metrics::gauge!("braid_runs_in_memory", "status" => status)
            .set(counts.get(status).copied().unwrap_or(0) as f64);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.inner.metrics.render(),
    )
}
