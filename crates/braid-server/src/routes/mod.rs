//! The router: [`app`] puts the resources' routes together behind the
//! [`guard`] checks. Each resource has its module: [`pipelines`],
//! [`runs`], [`streams`] (SSE and WebSocket) and [`ops`] (health,
//! readiness, metrics and the web view); [`openapi`] is the API's OpenAPI
//! document, from the handlers' `#[utoipa::path]` attributes. Handlers translate HTTP to calls
//! on the run registry ([`crate::runs`]) and the store, and back.

mod openapi;
mod ops;
mod pipelines;
mod runs;
mod streams;
mod waits;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::middleware;
use axum::routing::{get, post};

use crate::AppState;
use crate::error::ApiError;
use crate::guard;

/// The whole API: `/v1/…` behind the bearer token, plus `/`, `/healthz`,
/// `/readyz`, `/metrics` and `/openapi.json`; every request passes the [`guard`] checks first.
pub fn app(state: AppState) -> Router {
    let v1 = Router::new()
        .route(
            "/pipelines",
            get(pipelines::list_pipelines).post(pipelines::register_pipeline),
        )
        .route(
            "/pipelines/{name}",
            get(pipelines::get_pipeline).delete(pipelines::delete_pipeline),
        )
        .route("/runs", get(runs::list_runs).post(runs::start_run))
        .route("/runs/{id}", get(runs::get_run))
        .route("/runs/{id}/cancel", post(runs::cancel_run))
        .route("/runs/{id}/resume", post(runs::resume_run))
        .route("/runs/{id}/fork", post(waits::fork))
        .route("/runs/{id}/agents/{agent}/answer", post(waits::answer))
        .route("/runs/{id}/events", get(streams::sse_events))
        .route("/runs/{id}/ws", get(streams::ws_events));
    let max_body = state.inner.config.max_body_bytes;
    let mut router = Router::new();
    if state.inner.config.mcp {
        // Behind the same guard (token, Host, Origin) as the rest.
        router = router.route_service("/mcp", crate::mcp::service(state.clone()));
    }
    router
        .route("/", get(ops::index))
        .route("/assets/dagre.min.js", get(ops::dagre))
        .route("/assets/markdown-it.min.js", get(ops::markdown_it))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(openapi::openapi_json))
        .nest("/v1", v1)
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(state.clone(), guard::guard))
        .with_state(state)
}

fn body_error(rejection: BytesRejection) -> ApiError {
    ApiError::new(rejection.status(), "bad_request", rejection.body_text())
}

fn json_error(rejection: JsonRejection) -> ApiError {
    ApiError::new(rejection.status(), "bad_request", rejection.body_text())
}

fn query_error(rejection: QueryRejection) -> ApiError {
    ApiError::new(rejection.status(), "bad_request", rejection.body_text())
}

/// Claims the waiting run `run_id` and continues it here (its timed-out
/// waits then apply their timeouts). For the waiter.
pub(crate) async fn continue_waiting(state: &AppState, run_id: &str) -> Result<(), ApiError> {
    let store = state
        .inner
        .store
        .clone()
        .ok_or_else(|| ApiError::internal("no store"))?;
    let Some(stored) = store.get_run(run_id).await? else {
        return Ok(());
    };
    if stored.summary.status != "waiting" {
        return Ok(());
    }
    let registered = runs::continuable(state, &stored, false)?;
    let slot = runs::reserve(state)?;
    if !store.claim(&stored).await? {
        // Another process (an answer, another server) took it.
        return Ok(());
    }
    runs::continue_claimed(state, registered, stored, slot).await?;
    Ok(())
}

/// Continues a run this server took over when its lease expired (see
/// `takeover.rs`): already claimed at its next epoch. The pipeline
/// registered under its name continues it even if it changed since the run
/// started (each completed agent is reused only if its definition and its
/// upstream's are unchanged), since nobody is there to pass `force`.
pub(crate) async fn continue_taken_over(
    state: &AppState,
    run_id: &str,
    slot: crate::runs::Slot,
) -> Result<(), ApiError> {
    let store = state
        .inner
        .store
        .clone()
        .ok_or_else(|| ApiError::internal("no store"))?;
    let stored = store
        .get_run(run_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no run {run_id}")))?;
    let registered = runs::continuable(state, &stored, true)?;
    if registered.pipeline.content_hash() != stored.pipeline_hash {
        tracing::warn!(
            run = %run_id,
            pipeline = %stored.summary.pipeline,
            "the pipeline changed since the run started; changed agents and those downstream run again"
        );
    }
    runs::continue_claimed(state, registered, stored, slot).await?;
    Ok(())
}

pub use openapi::document as openapi_document;
