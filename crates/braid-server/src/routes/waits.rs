//! Answers to waiting runs and forks, over HTTP:
//!
//! - `POST /v1/runs/{id}/agents/{agent}/answer` `{"value": …}`: checked
//!   against the agent's schema (422 with the schema's messages), then
//!   handed to the run if it is in flight here, or recorded in the store
//!   (which claims the run) and the run continued here. A second answer,
//!   or an answer to an agent that is not waiting, is refused (409).
//! - `POST /v1/runs/{id}/fork` `{"from": …, "set": {field: value}}`: a new
//!   run that keeps the earlier one's results for everything not
//!   downstream of `from` or of the set fields.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use braid_core::AnswerError;
use braid_core::answer::Delivery;
use braid_store::{AnswerRefused, ForkRecord};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::pipelines::registered;
use super::runs::{WaitQuery, continuable, continue_claimed, level, reserve, respond};
use super::{json_error, query_error};
use crate::error::ApiError;
use crate::runs::Launch;
use crate::{AppState, LiveRun};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AnswerBody {
    value: Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ForkBody {
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    set: Map<String, Value>,
    #[serde(default)]
    events: Option<String>,
}

/// The most fields one fork may set.
const MAX_SET_FIELDS: usize = 256;

fn answer_error(err: AnswerError) -> ApiError {
    match err {
        AnswerError::UnknownAgent { .. } => ApiError::not_found(err.to_string()),
        AnswerError::NotAnInput { .. } => {
            ApiError::new(StatusCode::CONFLICT, "not_an_input", err.to_string())
        }
        AnswerError::Invalid { problems, .. } => ApiError::invalid(
            "invalid_answer",
            "the answer does not fit the agent's schema",
            problems,
        ),
    }
}

fn refused(refused: AnswerRefused) -> ApiError {
    match refused {
        AnswerRefused::NoRun(_) => ApiError::not_found(refused.to_string()),
        _ => ApiError::new(StatusCode::CONFLICT, "not_waiting", refused.to_string()),
    }
}

/// `POST /v1/runs/{id}/agents/{agent}/answer`.
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/agents/{agent}/answer",
    tag = "runs",
    summary = "Answers a waiting `input` agent.",
    params(
        ("id" = String, Path, description = "The run's id."),
        ("agent" = String, Path, description = "The waiting `input` agent."),
        ("wait" = Option<bool>, Query, description = "Answer with the run's report when it ends (or waits), instead of 202 at once."),
        ("force" = Option<bool>, Query, description = "Continue although the pipeline changed since the run started, or the run is recorded as running elsewhere."),
    ),
    request_body = crate::routes::openapi::AnswerBody,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "With `?wait=true`: the run's report when it ended or waits for an answer.", body = crate::routes::openapi::RunReport),
        (status = 202, description = "The answer was taken.", body = crate::routes::openapi::Answered),
        (status = 400, description = "The body or query string is malformed.", body = crate::routes::openapi::ErrorBody),
        (status = 415, description = "Not sent as application/json or application/yaml.", body = crate::routes::openapi::ErrorBody),
        (status = 413, description = "The body is larger than the server takes (--max-body-bytes).", body = crate::routes::openapi::ErrorBody),
        (status = 401, description = "No valid bearer token.", body = crate::routes::openapi::ErrorBody),
        (status = 403, description = "The request's Origin (or, without a token, its Host) is not allowed.", body = crate::routes::openapi::ErrorBody),
        (status = 404, description = "No such run or agent.", body = crate::routes::openapi::ErrorBody),
        (status = 409, description = "The agent is not an `input` agent, or it is not waiting (answered already).", body = crate::routes::openapi::ErrorBody),
        (status = 422, description = "The answer does not fit the agent's schema.", body = crate::routes::openapi::ErrorBody),
        (status = 429, description = "As many runs are in flight as the server takes (--max-runs); try again later.", body = crate::routes::openapi::ErrorBody),
        (status = 503, description = "The server is shutting down.", body = crate::routes::openapi::ErrorBody),
    ),
)]
pub(super) async fn answer(
    State(state): State<AppState>,
    Path((id, agent)): Path<(String, String)>,
    query: Result<Query<WaitQuery>, QueryRejection>,
    body: Result<Json<AnswerBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    let Json(body) = body.map_err(json_error)?;
    // In flight here: hand it over.
    if let Some(live) = state.inner.runs.get(&id) {
        if live.report.borrow().is_none() {
            let registered = registered(&state, &live.pipeline)?;
            let checked = registered
                .pipeline
                .check_answer(&agent, &body.value)
                .map_err(answer_error)?;
            match live.answers.deliver(checked).await {
                Delivery::Applied => return answered(&live, &agent, query.wait).await,
                Delivery::NotWaiting(status) => {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "not_waiting",
                        format!(
                            "agent `{agent}` of run {id} is not waiting for an answer: it is {status}"
                        ),
                    ));
                }
                Delivery::NotListening => {}
            }
        }
        // It ended (or is ending): once its records are written, the
        // answer goes through the store.
        let mut saved = live.saved.clone();
        let _ = saved.wait_for(|saved| *saved).await;
    }
    let store = state.inner.store.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "not_waiting",
            format!("run {id} is not in flight here, and this server has no store to find it in"),
        )
    })?;
    let stored = store
        .get_run(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no run {id}")))?;
    if stored.summary.status != "waiting" {
        return Err(refused(AnswerRefused::RunNotWaiting {
            run_id: id,
            status: stored.summary.status,
        }));
    }
    let registered = continuable(&state, &stored, query.force)?;
    let checked = registered
        .pipeline
        .check_answer(&agent, &body.value)
        .map_err(answer_error)?;
    let field = registered
        .pipeline
        .agents()
        .iter()
        .find(|a| a.name() == agent)
        .and_then(|a| a.input())
        .map(|i| i.field().to_owned())
        .unwrap_or_default();
    let slot = reserve(&state)?;
    store
        .answer(&id, &agent, &field, checked.value())
        .await?
        .map_err(refused)?;
    // Its records, the answer included, as it continues from them.
    let stored = store
        .get_run(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no run {id}")))?;
    let live = continue_claimed(&state, registered, stored, slot).await?;
    answered(&live, &agent, query.wait).await
}

async fn answered(live: &Arc<LiveRun>, agent: &str, wait: bool) -> Result<Response, ApiError> {
    if wait {
        return respond(live.clone(), true).await;
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"run_id": live.id, "agent": agent, "answered": true})),
    )
        .into_response())
}

/// `POST /v1/runs/{id}/fork`.
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/fork",
    tag = "runs",
    summary = "Starts a new run that keeps an earlier run's results for what does not depend on `from` or the fields set.",
    params(
        ("id" = String, Path, description = "The run's id."),
        ("wait" = Option<bool>, Query, description = "Answer with the run's report when it ends (or waits), instead of 202 at once."),
        ("force" = Option<bool>, Query, description = "Continue although the pipeline changed since the run started, or the run is recorded as running elsewhere."),
    ),
    request_body = crate::routes::openapi::ForkBody,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "With `?wait=true`: the run's report when it ended or waits for an answer.", body = crate::routes::openapi::RunReport),
        (status = 202, description = "The fork started.", body = crate::routes::openapi::Forked),
        (status = 400, description = "The body or query string is malformed.", body = crate::routes::openapi::ErrorBody),
        (status = 415, description = "Not sent as application/json or application/yaml.", body = crate::routes::openapi::ErrorBody),
        (status = 413, description = "The body is larger than the server takes (--max-body-bytes).", body = crate::routes::openapi::ErrorBody),
        (status = 401, description = "No valid bearer token.", body = crate::routes::openapi::ErrorBody),
        (status = 403, description = "The request's Origin (or, without a token, its Host) is not allowed.", body = crate::routes::openapi::ErrorBody),
        (status = 404, description = "No such run, agent or pipeline.", body = crate::routes::openapi::ErrorBody),
        (status = 409, description = "The run cannot be forked (no store, still running, or its pipeline changed).", body = crate::routes::openapi::ErrorBody),
        (status = 422, description = "`from`, `set` or `events` is not valid.", body = crate::routes::openapi::ErrorBody),
        (status = 429, description = "As many runs are in flight as the server takes (--max-runs); try again later.", body = crate::routes::openapi::ErrorBody),
        (status = 503, description = "The server is shutting down.", body = crate::routes::openapi::ErrorBody),
    ),
)]
pub(super) async fn fork(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<WaitQuery>, QueryRejection>,
    body: Result<Json<ForkBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    let Json(body) = body.map_err(json_error)?;
    let conflict = |message: String| ApiError::new(StatusCode::CONFLICT, "cannot_fork", message);
    if body.set.len() > MAX_SET_FIELDS {
        return Err(ApiError::invalid(
            "invalid_fork",
            format!("a fork sets at most {MAX_SET_FIELDS} fields"),
            Vec::new(),
        ));
    }
    let store = state
        .inner
        .store
        .clone()
        .ok_or_else(|| conflict("this server has no store, so no run can be forked".into()))?;
    if state
        .inner
        .runs
        .get(&id)
        .is_some_and(|r| r.report.borrow().is_none())
    {
        return Err(conflict(format!(
            "run {id} is still running here; fork it once it has ended"
        )));
    }
    let parent = store
        .get_run(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no run {id}")))?;
    let registered = registered(&state, &parent.summary.pipeline)?;
    let set: Vec<(String, Value)> = body.set.into_iter().collect();
    let fork = registered
        .pipeline
        .fork(
            &id,
            &parent.agents,
            &parent.input,
            body.from.as_deref(),
            &set,
        )
        .map_err(|e| ApiError::invalid("invalid_fork", e.to_string(), Vec::new()))?;
    let input = registered
        .pipeline
        .check_input(&Value::Object(fork.input.clone()))
        .map_err(|err| {
            ApiError::invalid(
                "invalid_input",
                "the fork's input is not valid",
                err.problems,
            )
        })?;
    let (level, mode) = level(body.events.as_deref().unwrap_or("off"))?;
    let checkpoint = match braid_store::parse_policy(&parent.summary.checkpoint) {
        Some(braid_core::CheckpointPolicy::Agent) => braid_core::CheckpointPolicy::Agent,
        _ => braid_core::CheckpointPolicy::End,
    };
    let slot = reserve(&state)?;
    let run_id = braid_core::run::new_run_id();
    let mut point: Vec<String> = body.from.clone().into_iter().collect();
    point.extend(set.iter().map(|(field, _)| format!("{field}=…")));
    store
        .record_fork(&ForkRecord {
            run_id: run_id.clone(),
            parent_id: id.clone(),
            forked_from: point.join(", "),
            pipeline: registered.pipeline.name().to_owned(),
            pipeline_hash: registered.pipeline.content_hash().to_owned(),
            pipeline_path: registered
                .pipeline
                .source()
                .map(|p| p.display().to_string()),
            checkpoint,
            input: fork.input.clone(),
            set_writes: fork.set_writes.clone(),
        })
        .await?;
    let how = Launch {
        registered,
        input,
        level,
        mode,
        checkpoint: Some(checkpoint),
        run_id: Some(run_id),
        resume: Some(fork.resume),
        events_before: 0,
        parent_id: Some(id.clone()),
        no_cache: false,
        started_by: Some("api (fork)".to_owned()),
        resumed_after: None,
    };
    let run = state.inner.runs.launch(how, slot)?;
    if query.wait {
        return respond(run, true).await;
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"run_id": run.id, "parent_id": id, "rerun": fork.rerun})),
    )
        .into_response())
}
