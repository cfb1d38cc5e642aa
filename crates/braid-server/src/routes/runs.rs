//! Run routes: start, list, show, cancel and resume. The lifecycle of a
//! run (spawning, events, saving, shutdown) is the run registry's
//! ([`crate::runs`]); these handlers check requests and translate.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use braid_core::agent::process::{self, Owner};
use braid_core::event::EventLevel;
use braid_core::{CheckpointPolicy, ResumePoint, RunStatus};
use serde::Deserialize;
use serde_json::{Value, json};

use super::pipelines::registered;
use super::{json_error, query_error};
use crate::error::ApiError;
use crate::runs::{Launch, Refused, Slot};
use crate::{AppState, LiveRun};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StartRun {
    pipeline: String,
    #[serde(default)]
    input: Value,
    #[serde(default)]
    events: Option<String>,
    #[serde(default)]
    checkpoint: Option<String>,
    /// Run every agent: cached ones neither reuse nor store results (as
    /// `braid run --no-cache`).
    #[serde(default)]
    no_cache: bool,
}

#[derive(Debug, Deserialize)]
pub(super) struct WaitQuery {
    #[serde(default)]
    pub(super) wait: bool,
    #[serde(default)]
    pub(super) force: bool,
}

pub(super) fn level(mode: &str) -> Result<(Option<EventLevel>, &'static str), ApiError> {
    match mode {
        "off" => Ok((None, "off")),
        "summary" => Ok((Some(EventLevel::Summary), "summary")),
        "full" => Ok((Some(EventLevel::Full), "full")),
        other => Err(ApiError::invalid(
            "invalid_events",
            format!("`events` must be `off`, `summary` or `full`, not `{other}`"),
            Vec::new(),
        )),
    }
}

/// The registry's refusals as HTTP: 503 while shutting down, 429 when full.
impl From<Refused> for ApiError {
    fn from(refused: Refused) -> Self {
        let (status, code) = match refused {
            Refused::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            Refused::TooManyRuns { .. } => (StatusCode::TOO_MANY_REQUESTS, "too_many_runs"),
        };
        ApiError::new(status, code, refused.to_string())
    }
}

pub(crate) fn reserve(state: &AppState) -> Result<Slot, ApiError> {
    Ok(state.inner.runs.reserve()?)
}

/// `POST /v1/runs`: starts a run; with `?wait=true` answers with its report.
#[utoipa::path(
    post,
    path = "/v1/runs",
    tag = "runs",
    summary = "Starts a run of a registered pipeline.",
    params(
        ("wait" = Option<bool>, Query, description = "Answer with the run's report when it ends (or waits), instead of 202 at once."),
    ),
    request_body = crate::routes::openapi::StartRunBody,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "With `?wait=true`: the run's report when it ended or waits for an answer.", body = crate::routes::openapi::RunReport),
        (status = 202, description = "Started: follow it at /v1/runs/{id}.", body = crate::routes::openapi::RunAccepted),
        (status = 400, description = "The body or query string is malformed.", body = crate::routes::openapi::ErrorBody),
        (status = 415, description = "Not sent as application/json or application/yaml.", body = crate::routes::openapi::ErrorBody),
        (status = 413, description = "The body is larger than the server takes (--max-body-bytes).", body = crate::routes::openapi::ErrorBody),
        (status = 401, description = "No valid bearer token.", body = crate::routes::openapi::ErrorBody),
        (status = 403, description = "The request's Origin (or, without a token, its Host) is not allowed.", body = crate::routes::openapi::ErrorBody),
        (status = 404, description = "No pipeline of that name.", body = crate::routes::openapi::ErrorBody),
        (status = 422, description = "The input does not fit the pipeline's `inputs`, or `events`/`checkpoint` is not one of theirs.", body = crate::routes::openapi::ErrorBody),
        (status = 429, description = "As many runs are in flight as the server takes (--max-runs); try again later.", body = crate::routes::openapi::ErrorBody),
        (status = 503, description = "The server is shutting down.", body = crate::routes::openapi::ErrorBody),
    ),
)]
pub(super) async fn start_run(
    State(state): State<AppState>,
    query: Result<Query<WaitQuery>, QueryRejection>,
    body: Result<Json<StartRun>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    let Json(request) = body.map_err(json_error)?;
    let registered = registered(&state, &request.pipeline)?;
    let input = registered
        .pipeline
        .check_input(&request.input)
        .map_err(|err| {
            ApiError::invalid(
                "invalid_input",
                "the run's input is not valid",
                err.problems,
            )
        })?;
    let (level, mode) = level(request.events.as_deref().unwrap_or("off"))?;
    let checkpoint = request
        .checkpoint
        .as_deref()
        .map(str::parse::<CheckpointPolicy>)
        .transpose()
        .map_err(|e| ApiError::invalid("invalid_checkpoint", e, Vec::new()))?;
    let slot = reserve(&state)?;
    let how = Launch {
        registered,
        input,
        level,
        mode,
        checkpoint,
        run_id: None,
        resume: None,
        events_before: 0,
        parent_id: None,
        no_cache: request.no_cache,
    };
    let run = state.inner.runs.launch(how, slot)?;
    respond(run, query.wait).await
}

pub(super) async fn respond(run: Arc<LiveRun>, wait: bool) -> Result<Response, ApiError> {
    if !wait {
        return Ok((StatusCode::ACCEPTED, Json(json!({"run_id": run.id}))).into_response());
    }
    let mut report = run.report.clone();
    let report = report
        .wait_for(Option::is_some)
        .await
        .map_err(ApiError::internal)?
        .clone()
        .expect("waited for it");
    Ok(Json(report_json(&run, &report)).into_response())
}

fn report_json(run: &LiveRun, report: &braid_core::RunReport) -> Value {
    let mut value = serde_json::to_value(report).unwrap_or_default();
    value["events"] = json!(run.events_mode);
    if let Some(parent) = &run.parent_id {
        value["parent_id"] = json!(parent);
    }
    if run.interrupted.load(Ordering::SeqCst) {
        value["status"] = json!(RunStatus::Interrupted);
    }
    if let Some(why) = run.not_saved.get() {
        value["saved"] = json!(false);
        value["save_error"] = json!(why);
    }
    value
}

/// `GET /v1/runs`: the runs in memory (newest first), then the store's.
#[utoipa::path(
    get,
    path = "/v1/runs",
    tag = "runs",
    summary = "The runs in memory (newest first), then the store's.",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The runs.", body = [crate::routes::openapi::RunListItem]),
        (status = 401, description = "No valid bearer token.", body = crate::routes::openapi::ErrorBody),
        (status = 403, description = "The request's Origin (or, without a token, its Host) is not allowed.", body = crate::routes::openapi::ErrorBody),
    ),
)]
pub(super) async fn list_runs(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let mut listed: Vec<Value> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for run in state.inner.runs.newest_first() {
        seen.insert(run.id.clone());
        let report = run.report.borrow().clone();
        listed.push(json!({
            "run_id": run.id,
            "pipeline": run.pipeline,
            "status": match &report {
                None => braid_core::report::RUNNING.to_owned(),
                Some(_) if run.interrupted.load(Ordering::SeqCst) => {
                    RunStatus::Interrupted.to_string()
                }
                Some(r) => r.status.to_string(),
            },
            "makespan_ms": report.as_ref().map(|r| r.makespan_ms),
            "events": run.events_mode,
        }));
    }
    if let Some(store) = &state.inner.store {
        for run in store.list_runs().await? {
            if seen.insert(run.run_id.clone()) {
                listed.push(serde_json::to_value(&run).unwrap_or_default());
            }
        }
    }
    Ok(Json(json!(listed)))
}

/// `GET /v1/runs/{id}`: a run in memory, or as the store has it.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}",
    tag = "runs",
    summary = "One run: in memory, or as the store has it.",
    params(
        ("id" = String, Path, description = "The run's id."),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The run.", body = crate::routes::openapi::RunReport),
        (status = 404, description = "No such run.", body = crate::routes::openapi::ErrorBody),
        (status = 401, description = "No valid bearer token.", body = crate::routes::openapi::ErrorBody),
        (status = 403, description = "The request's Origin (or, without a token, its Host) is not allowed.", body = crate::routes::openapi::ErrorBody),
    ),
)]
pub(super) async fn get_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if let Some(run) = state.inner.runs.get(&id) {
        let report = run.report.borrow().clone();
        return Ok(Json(match report {
            Some(report) => {
                let mut value = report_json(&run, &report);
                let waiting = report
                    .agents
                    .iter()
                    .map(|(name, a)| (name.as_str(), a.status, a.deadline_ms));
                let asked = questions(&state, &report.pipeline, waiting, |field| {
                    report.state.get(field).map(|v| (**v).clone())
                });
                if !asked.is_empty() {
                    value["questions"] = json!(asked);
                }
                value
            }
            None => json!({
                "run_id": run.id,
                "pipeline": run.pipeline,
                "status": "running",
                "events": run.events_mode,
            }),
        }));
    }
    if let Some(store) = &state.inner.store
        && let Some(stored) = store.get_run(&id).await?
    {
        // The store keeps one record a member: a `foreach` agent's
        // instances, and a group's members and rounds, are nested under
        // their top-level agent, as in a live run's report.
        let agents = braid_core::report::nest_instances(
            stored
                .agents
                .iter()
                .map(|a| (a.agent.to_string(), a.report.clone())),
        );
        let mut value = serde_json::to_value(&stored).unwrap_or_default();
        value["agents"] = json!(agents);
        let waiting = stored
            .agents
            .iter()
            .map(|a| (&*a.agent, a.report.status, a.report.deadline_ms));
        let asked = questions(&state, &stored.summary.pipeline, waiting, |field| {
            stored
                .agents
                .iter()
                .flat_map(|a| a.writes.iter())
                .find(|(name, _)| &**name == field)
                .map(|(_, v)| (**v).clone())
                .or_else(|| stored.input.get(field).cloned())
        });
        if !asked.is_empty() {
            value["questions"] = json!(asked);
        }
        return Ok(Json(value));
    }
    Err(ApiError::not_found(format!("no run {id}")))
}

/// What a run's waiting `input` agents ask: for each, its prompt, schema,
/// the values it reads and its deadline, so a client (the web view) can
/// render a form without the event that asked.
fn questions<'a>(
    state: &AppState,
    pipeline: &str,
    agents: impl Iterator<Item = (&'a str, braid_core::AgentStatus, Option<i64>)>,
    value_of: impl Fn(&str) -> Option<Value>,
) -> Vec<Value> {
    let Ok(registered) = registered(state, pipeline) else {
        return Vec::new();
    };
    let pipeline = &registered.pipeline;
    agents
        .filter(|(_, status, _)| *status == braid_core::AgentStatus::Waiting)
        .filter_map(|(name, _, deadline)| {
            let (id, def) = pipeline
                .agents()
                .iter()
                .enumerate()
                .find(|(_, a)| a.name() == name)?;
            let input = def.input()?;
            let reads: serde_json::Map<String, Value> = pipeline
                .reads_of(id)
                .into_iter()
                .map(|r| r.trim_end_matches('?').to_owned())
                .filter_map(|r| value_of(&r).map(|v| (r, v)))
                .collect();
            Some(json!({
                "agent": name,
                "prompt": input.prompt(),
                "schema": input.schema(),
                "default": input.default(),
                "reads": reads,
                "deadline_ms": deadline,
            }))
        })
        .collect()
}

/// `POST /v1/runs/{id}/cancel`: cancels a run in flight.
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/cancel",
    tag = "runs",
    summary = "Cancels a run in flight.",
    params(
        ("id" = String, Path, description = "The run's id."),
    ),
    request_body(content = crate::routes::openapi::EmptyBody, description = "Nothing is read, but the request must be sent as application/json (or application/yaml), like every request that changes something.", content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Cancelling.", body = crate::routes::openapi::Cancelling),
        (status = 404, description = "No such run in flight.", body = crate::routes::openapi::ErrorBody),
        (status = 409, description = "The run has already finished.", body = crate::routes::openapi::ErrorBody),
        (status = 415, description = "Not sent as application/json or application/yaml.", body = crate::routes::openapi::ErrorBody),
        (status = 401, description = "No valid bearer token.", body = crate::routes::openapi::ErrorBody),
        (status = 403, description = "The request's Origin (or, without a token, its Host) is not allowed.", body = crate::routes::openapi::ErrorBody),
    ),
)]
pub(super) async fn cancel_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let run = state
        .inner
        .runs
        .get(&id)
        .ok_or_else(|| ApiError::not_found(format!("no run {id} in flight")))?;
    if run.report.borrow().is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_finished",
            format!("run {id} has already finished"),
        ));
    }
    run.cancel.cancel();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"run_id": id, "status": "cancelling"})),
    ))
}

/// `POST /v1/runs/{id}/resume`: resumes a stored run that did not
/// complete, after claiming it in the store.
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/resume",
    tag = "runs",
    summary = "Resumes a stored run that did not complete.",
    params(
        ("id" = String, Path, description = "The run's id."),
        ("wait" = Option<bool>, Query, description = "Answer with the run's report when it ends (or waits), instead of 202 at once."),
        ("force" = Option<bool>, Query, description = "Continue although the pipeline changed since the run started, or the run is recorded as running elsewhere."),
    ),
    request_body(content = crate::routes::openapi::EmptyBody, description = "Nothing is read, but the request must be sent as application/json (or application/yaml), like every request that changes something.", content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "With `?wait=true`: the run's report when it ended or waits for an answer.", body = crate::routes::openapi::RunReport),
        (status = 202, description = "Started: follow it at /v1/runs/{id}.", body = crate::routes::openapi::RunAccepted),
        (status = 400, description = "The query string is malformed.", body = crate::routes::openapi::ErrorBody),
        (status = 404, description = "No such run, or its pipeline is not registered.", body = crate::routes::openapi::ErrorBody),
        (status = 409, description = "It completed, still runs, its pipeline changed (see `force`), or there is no store.", body = crate::routes::openapi::ErrorBody),
        (status = 415, description = "Not sent as application/json or application/yaml.", body = crate::routes::openapi::ErrorBody),
        (status = 401, description = "No valid bearer token.", body = crate::routes::openapi::ErrorBody),
        (status = 403, description = "The request's Origin (or, without a token, its Host) is not allowed.", body = crate::routes::openapi::ErrorBody),
        (status = 429, description = "As many runs are in flight as the server takes (--max-runs); try again later.", body = crate::routes::openapi::ErrorBody),
        (status = 503, description = "The server is shutting down.", body = crate::routes::openapi::ErrorBody),
    ),
)]
pub(super) async fn resume_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<WaitQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    let conflict = |message: String| ApiError::new(StatusCode::CONFLICT, "cannot_resume", message);
    let store = state
        .inner
        .store
        .clone()
        .ok_or_else(|| conflict("this server has no store, so no run can be resumed".into()))?;
    if state
        .inner
        .runs
        .get(&id)
        .is_some_and(|r| r.report.borrow().is_none())
    {
        return Err(conflict(format!("run {id} is still running here")));
    }
    let stored = store
        .get_run(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no run {id}")))?;
    let owner = stored.owner.as_deref().map(process::owner_state);
    match stored.summary.status.as_str() {
        "completed" => return Err(conflict(format!("run {id} already completed"))),
        // A live process on this host still runs it: resuming beside it
        // would run its agents twice, whatever `force` says.
        "running" if owner == Some(Owner::Alive) => {
            tracing::info!(run = %id, owner = ?stored.owner, "resume refused: its owner is alive");
            return Err(conflict(format!(
                "run {id} is still running in a live process on this host; \
                 cancel or stop that process first"
            )));
        }
        // Its process may still be alive elsewhere; this server cannot tell.
        "running" if !query.force => {
            // The owner (`host:pid`) stays in the log: clients learn only
            // that another process has it.
            tracing::info!(run = %id, owner = ?stored.owner, "resume refused: recorded as running");
            return Err(conflict(format!(
                "run {id} is recorded as running in another process; if that process is gone, \
                 resume with ?force=true"
            )));
        }
        _ => {}
    }
    let registered = continuable(&state, &stored, query.force)?;
    let slot = reserve(&state)?;
    if !store.claim(&stored).await? {
        return Err(conflict(format!(
            "another process took run {id} over just now"
        )));
    }
    let run = continue_claimed(&state, registered, stored, slot).await?;
    respond(run, query.wait).await
}

/// The registered pipeline a stored run continues with: refused when it
/// changed since the run started (unless `force`).
pub(super) fn continuable(
    state: &AppState,
    stored: &braid_store::StoredRun,
    force: bool,
) -> Result<Arc<crate::Registered>, ApiError> {
    let registered = registered(state, &stored.summary.pipeline)?;
    if registered.pipeline.content_hash() != stored.pipeline_hash && !force {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "pipeline_changed",
            format!(
                "pipeline `{}` changed since run {} started; continue it with ?force=true to use \
                 the current one",
                stored.summary.pipeline, stored.summary.run_id
            ),
        ));
    }
    Ok(registered)
}

/// Continues a stored run this server has claimed, from its records.
pub(crate) async fn continue_claimed(
    state: &AppState,
    registered: Arc<crate::Registered>,
    stored: braid_store::StoredRun,
    slot: Slot,
) -> Result<Arc<LiveRun>, ApiError> {
    let store = state
        .inner
        .store
        .clone()
        .ok_or_else(|| ApiError::internal("no store"))?;
    let id = stored.summary.run_id.clone();
    let conflict = |message: String| ApiError::new(StatusCode::CONFLICT, "cannot_resume", message);
    let input = registered
        .pipeline
        .check_input(&Value::Object(stored.input.clone()))
        .map_err(|e| conflict(format!("its input no longer fits the pipeline: {e}")))?;
    let events_before = store.load_events(&id).await?.len() as u64;
    // Processes its dead owner's agents left running on this host go
    // before anything runs again (the run is not in flight here); the
    // engine logs each group it kills.
    store.kill_leftover_processes(&id).await?;
    let checkpoint = braid_store::parse_policy(&stored.summary.checkpoint);
    let how = Launch {
        registered,
        input,
        level: Some(EventLevel::Summary),
        mode: "summary",
        checkpoint,
        run_id: Some(id),
        resume: Some(ResumePoint {
            agents: stored.agents,
        }),
        events_before,
        parent_id: None,
        no_cache: false,
    };
    Ok(state.inner.runs.launch(how, slot)?)
}
