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
    /// Who or what starts it, as operators should see it (default `api`;
    /// at most [`MAX_STARTED_BY`] characters).
    #[serde(default)]
    started_by: Option<String>,
}

/// The longest `started_by` a request may give.
pub(super) const MAX_STARTED_BY: usize = 128;

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
    let started_by = match request.started_by {
        Some(who) if who.chars().count() > MAX_STARTED_BY || who.chars().any(char::is_control) => {
            return Err(ApiError::invalid(
                "invalid_started_by",
                format!(
                    "`started_by` must be at most {MAX_STARTED_BY} characters with no control                      characters; found {} characters",
                    who.chars().count()
                ),
                Vec::new(),
            ));
        }
        Some(who) if !who.trim().is_empty() => who,
        _ => "api".to_owned(),
    };
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
        started_by: Some(started_by),
        resumed_after: None,
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
    value["created_at_ms"] = json!(run.created_at_ms);
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

/// A run in flight: where it has got to, taken from the run on request
/// (so runs started with `events: off` show their progress too), in the
/// shape of a finished run's report with `status: running`.
async fn running_json(state: &AppState, run: &LiveRun) -> Value {
    let mut value = json!({
        "run_id": run.id,
        "pipeline": run.pipeline,
        "status": braid_core::report::RUNNING,
        "created_at_ms": run.created_at_ms,
        "events": run.events_mode,
    });
    if let Some(who) = &run.started_by {
        value["started_by"] = json!(who);
    }
    if let Some(parent) = &run.parent_id {
        value["parent_id"] = json!(parent);
    }
    // A run busy ending (or stuck) answers late: the client polls again.
    let taken = tokio::time::timeout(SNAPSHOT_TIMEOUT, run.snapshots.take()).await;
    if let Ok(Some(snapshot)) = taken {
        let waiting = snapshot
            .agents
            .iter()
            .map(|(name, a)| (&**name, a.status, a.deadline_ms));
        let asked = questions(state, &run.pipeline, waiting, |field| {
            snapshot.state.get(field).map(|v| (**v).clone())
        });
        if !asked.is_empty() {
            value["questions"] = json!(asked);
        }
        value["makespan_ms"] = json!(snapshot.elapsed_ms);
        value["agents"] = json!(snapshot.agents);
        value["state"] = json!(snapshot.state);
    }
    value
}

/// The run's critical path as it happened (the same rule `braid runs show
/// --timeline` and `braid explain` use; see
/// [`braid_core::Pipeline::run_critical_path`]), when the server holds its
/// pipeline.
fn run_critical_path(
    state: &AppState,
    pipeline: &str,
    agents: &braid_core::report::ByName<braid_core::AgentReport>,
) -> Option<Vec<String>> {
    let registered = registered(state, pipeline).ok()?;
    Some(registered.pipeline.run_critical_path(agents))
}

/// A stored run's state: replayed with the pipeline's merge rules when the
/// server holds the same pipeline (same content hash), else as recorded
/// ([`braid_store::StoredRun::recorded_state`]).
fn stored_state(
    state: &AppState,
    stored: &braid_store::StoredRun,
) -> braid_core::report::ByName<Arc<Value>> {
    if let Ok(registered) = registered(state, &stored.summary.pipeline)
        && registered.pipeline.content_hash() == stored.pipeline_hash
        && let Ok(input) = registered
            .pipeline
            .check_input(&Value::Object(stored.input.clone()))
    {
        return registered.pipeline.replay(input, &stored.agents);
    }
    stored.recorded_state()
}

/// How long `GET /v1/runs/{id}` waits for a running run's snapshot.
const SNAPSHOT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The query of `GET /v1/runs`: filters, a page size and a cursor.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    status: Option<String>,
    pipeline: Option<String>,
    /// Created at or after, in ms since the Unix epoch.
    since: Option<i64>,
    /// Created before, in ms since the Unix epoch.
    until: Option<i64>,
    /// A run id prefix.
    prefix: Option<String>,
    limit: Option<i64>,
    /// The `x-next-cursor` of the page before.
    before: Option<String>,
}

/// The most runs one page of `GET /v1/runs` lists, and its default.
const MAX_LIST_LIMIT: i64 = 500;
const DEFAULT_LIST_LIMIT: i64 = 50;
/// The longest name or prefix the listing takes.
const MAX_LIST_TEXT: usize = 256;

/// The statuses a run can have, as `?status=` takes them (`abandoned`:
/// `running` in the store past its lease, with nobody renewing it).
fn run_statuses() -> Vec<&'static str> {
    [braid_core::report::RUNNING, braid_store::ABANDONED]
        .into_iter()
        .chain(RunStatus::ALL.map(RunStatus::as_str))
        .collect()
}

impl ListQuery {
    /// The query checked into a store filter (with `limit` set).
    fn filter(self) -> Result<braid_store::RunFilter, ApiError> {
        let bad = |code: &'static str, message: String| {
            ApiError::new(StatusCode::BAD_REQUEST, code, message)
        };
        if let Some(status) = &self.status {
            let valid = run_statuses();
            if !valid.contains(&status.as_str()) {
                return Err(bad(
                    "invalid_status",
                    format!(
                        "`status` must be one of {}, not `{}`",
                        valid.join(", "),
                        status.chars().take(MAX_LIST_TEXT).collect::<String>()
                    ),
                ));
            }
        }
        let limit = self.limit.unwrap_or(DEFAULT_LIST_LIMIT);
        if !(1..=MAX_LIST_LIMIT).contains(&limit) {
            return Err(bad(
                "invalid_limit",
                format!("`limit` must be from 1 to {MAX_LIST_LIMIT}, not {limit}"),
            ));
        }
        for (name, text) in [("pipeline", &self.pipeline), ("prefix", &self.prefix)] {
            if text.as_ref().is_some_and(|t| t.len() > MAX_LIST_TEXT) {
                return Err(bad(
                    "invalid_query",
                    format!("`{name}` is longer than {MAX_LIST_TEXT} bytes, the most taken"),
                ));
            }
        }
        let before = self
            .before
            .map(|cursor| {
                cursor
                    .split_once(':')
                    .and_then(|(at, id)| Some((at.parse::<i64>().ok()?, id.to_owned())))
                    .filter(|(_, id)| !id.is_empty() && id.len() <= MAX_LIST_TEXT)
                    .ok_or_else(|| {
                        bad(
                            "invalid_cursor",
                            "`before` must be the `x-next-cursor` header of a previous page"
                                .to_owned(),
                        )
                    })
            })
            .transpose()?;
        Ok(braid_store::RunFilter {
            status: self.status,
            pipeline: self.pipeline,
            limit: Some(limit),
            id_prefix: self.prefix.filter(|p| !p.is_empty()),
            since_ms: self.since,
            until_ms: self.until,
            before,
        })
    }
}

/// A run in memory as listed: its summary (status as its report says).
fn live_summary(run: &LiveRun) -> (braid_store::RunSummary, Value) {
    let report = run.report.borrow().clone();
    let status = match &report {
        None => braid_core::report::RUNNING.to_owned(),
        Some(_) if run.interrupted.load(Ordering::SeqCst) => RunStatus::Interrupted.to_string(),
        Some(r) => r.status.to_string(),
    };
    let summary = braid_store::RunSummary {
        run_id: run.id.clone(),
        pipeline: run.pipeline.clone(),
        status: status.clone(),
        checkpoint: String::new(),
        created_at_ms: run.created_at_ms,
        makespan_ms: report.as_ref().map(|r| r.makespan_ms),
        error: report.as_ref().and_then(|r| r.error.clone()),
        started_by: run.started_by.clone(),
    };
    let value = json!({
        "run_id": run.id,
        "pipeline": run.pipeline,
        "status": status,
        "created_at_ms": run.created_at_ms,
        "makespan_ms": report.as_ref().map(|r| r.makespan_ms),
        "error": report.as_ref().and_then(|r| r.error.clone()),
        "events": run.events_mode,
        "started_by": run.started_by,
    });
    (summary, value)
}

/// `GET /v1/runs`: runs newest first (by creation time, then id), those in
/// memory and the store's, as the query filters them (`status`,
/// `pipeline`, `since`, `until`, `prefix`), `limit` of them (default 50,
/// at most 500). When more follow, the `x-next-cursor` header holds the
/// cursor to pass as `before` for the next page.
#[utoipa::path(
    get,
    path = "/v1/runs",
    tag = "runs",
    summary = "Runs newest first, those in memory and the store's, filtered and paged.",
    params(
        ("status" = Option<String>, Query, description = "Only runs with this status: running, abandoned (running, but its owner's lease expired with nobody renewing it), waiting, completed, failed, cancelled, interrupted."),
        ("pipeline" = Option<String>, Query, description = "Only runs of this pipeline."),
        ("since" = Option<i64>, Query, description = "Only runs created at or after this time (ms since the Unix epoch)."),
        ("until" = Option<i64>, Query, description = "Only runs created before this time (ms since the Unix epoch)."),
        ("prefix" = Option<String>, Query, description = "Only runs whose id starts with this."),
        ("limit" = Option<i64>, Query, description = "At most this many (1 to 500, default 50)."),
        ("before" = Option<String>, Query, description = "The `x-next-cursor` header of the page before: the next page."),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The runs; when more follow, the `x-next-cursor` header holds the cursor for `before`.", body = [crate::routes::openapi::RunListItem],
            headers(("x-next-cursor" = String, description = "The cursor of the next page, when there is one."))),
        (status = 400, description = "A filter, the limit or the cursor is not valid (the message lists what is).", body = crate::routes::openapi::ErrorBody),
        (status = 401, description = "No valid bearer token.", body = crate::routes::openapi::ErrorBody),
        (status = 403, description = "The request's Origin (or, without a token, its Host) is not allowed.", body = crate::routes::openapi::ErrorBody),
    ),
)]
pub(super) async fn list_runs(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    let filter = query.filter()?;
    let limit = usize::try_from(filter.limit.unwrap_or(DEFAULT_LIST_LIMIT)).unwrap_or(0);
    // (created_at_ms, id, row): a run in memory hides the store's record
    // of it, which may lag behind.
    let mut rows: Vec<(i64, String, Value)> = Vec::new();
    let mut live = std::collections::HashSet::new();
    for run in state.inner.runs.newest_first() {
        live.insert(run.id.clone());
        let (summary, value) = live_summary(&run);
        if filter.matches(&summary) {
            rows.push((summary.created_at_ms, summary.run_id, value));
        }
    }
    if let Some(store) = &state.inner.store {
        // Enough rows for a full page and one more, after those in memory.
        let asked = braid_store::RunFilter {
            limit: Some(i64::try_from(limit + 1 + live.len()).unwrap_or(i64::MAX)),
            ..filter.clone()
        };
        for run in store.list_runs(&asked).await? {
            if !live.contains(&run.run_id) {
                let value = serde_json::to_value(&run).unwrap_or_default();
                rows.push((run.created_at_ms, run.run_id, value));
            }
        }
    }
    rows.sort_by(|a, b| (b.0, &b.1).cmp(&(a.0, &a.1)));
    let next = (rows.len() > limit).then(|| {
        let (at, id, _) = &rows[limit - 1];
        format!("{at}:{id}")
    });
    rows.truncate(limit);
    let listed: Vec<Value> = rows.into_iter().map(|(_, _, v)| v).collect();
    let mut response = Json(json!(listed)).into_response();
    if let Some(next) = next
        && let Ok(value) = axum::http::HeaderValue::from_str(&next)
    {
        response.headers_mut().insert("x-next-cursor", value);
    }
    Ok(response)
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
                if let Some(path) = run_critical_path(&state, &report.pipeline, &report.agents) {
                    value["critical_path"] = json!(path);
                }
                let waiting = report
                    .agents
                    .iter()
                    .map(|(name, a)| (&**name, a.status, a.deadline_ms));
                let asked = questions(&state, &report.pipeline, waiting, |field| {
                    report.state.get(field).map(|v| (**v).clone())
                });
                if !asked.is_empty() {
                    value["questions"] = json!(asked);
                }
                value
            }
            None => running_json(&state, &run).await,
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
        if let Some(path) = run_critical_path(&state, &stored.summary.pipeline, &agents) {
            value["critical_path"] = json!(path);
        }
        value["agents"] = json!(agents);
        value["state"] = json!(stored_state(&state, &stored));
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
        started_by: None,
        resumed_after: Some(stored.summary.age()),
    };
    Ok(state.inner.runs.launch(how, slot)?)
}
