//! The router and its handlers.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use braid_core::event::{EventKind, EventLevel, EventSink, RunEvent};
use braid_core::{CheckpointPolicy, Pipeline, ResumePoint, RunOptions, RunStatus, ValidInput};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::events::{self, Delivery, EventLog};
use crate::guard;
use crate::{AppState, LiveRun, Origin, Registered, prune, run_counts};

const INDEX_HTML: &str = include_str!("../assets/index.html");

/// The whole API: `/v1/…` behind the bearer token, plus `/`, `/healthz`,
/// `/readyz` and `/metrics`; every request passes the [`guard`] checks first.
pub fn app(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/pipelines", get(list_pipelines).post(register_pipeline))
        .route(
            "/pipelines/{name}",
            get(get_pipeline).delete(delete_pipeline),
        )
        .route("/runs", get(list_runs).post(start_run))
        .route("/runs/{id}", get(get_run))
        .route("/runs/{id}/cancel", post(cancel_run))
        .route("/runs/{id}/resume", post(resume_run))
        .route("/runs/{id}/events", get(sse_events))
        .route("/runs/{id}/ws", get(ws_events));
    let max_body = state.inner.config.max_body_bytes;
    Router::new()
        .route("/", get(|| async { Html(INDEX_HTML) }))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
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

async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    if let Some(store) = &state.inner.store {
        sqlx_ping(store).await.map_err(|e| {
            eprintln!(
                "braid-server: readiness: the store at {} does not answer: {e}",
                store.url()
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

async fn sqlx_ping(store: &braid_store::Store) -> Result<(), String> {
    store.ping().await.map_err(|e| e.to_string())
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    if let Some(store) = &state.inner.store {
        store.record_pool_gauges();
    }
    let counts = run_counts(&state.inner.runs.read().unwrap_or_else(|e| e.into_inner()));
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

// ---- pipelines ----

async fn list_pipelines(State(state): State<AppState>) -> Json<Value> {
    let pipelines = state
        .inner
        .pipelines
        .read()
        .unwrap_or_else(|e| e.into_inner());
    Json(json!(
        pipelines
            .values()
            .map(|r| json!({
                "name": r.pipeline.name(),
                "description": r.pipeline.description(),
                "agents": r.pipeline.agents().len(),
                "content_hash": r.pipeline.content_hash(),
                "origin": r.origin.as_str(),
            }))
            .collect::<Vec<_>>()
    ))
}

fn describe(registered: &Registered) -> Value {
    json!({
        "name": registered.pipeline.name(),
        "content_hash": registered.pipeline.content_hash(),
        "explain": registered.explain,
        "source": registered.source,
        "origin": registered.origin.as_str(),
    })
}

/// The longest pipeline name the API takes.
const MAX_NAME_CHARS: usize = 128;

/// The longest problem listed in a 422, in bytes; longer ones are cut.
const MAX_PROBLEM_BYTES: usize = 2048;

async fn register_pipeline(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = body.map_err(body_error)?;
    let text = String::from_utf8(body.into()).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the pipeline must be UTF-8 text",
        )
    })?;
    let registered = Arc::new(compile(&state, text).await?);
    let pipeline = &registered.pipeline;
    let config = &state.inner.config;
    let name = pipeline.name().to_owned();
    check_name(&name)?;
    if !config.allow_command_agents {
        let commands: Vec<&str> = pipeline
            .agents()
            .iter()
            .filter(|a| a.kind().name() == "command")
            .map(|a| a.name())
            .collect();
        if !commands.is_empty() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "command_agents_not_allowed",
                format!(
                    "agents {} are `command` agents, which run programs on this host; \
                     this server was not started with --allow-command-agents",
                    commands.join(", ")
                ),
            ));
        }
    }
    let mut pipelines = state
        .inner
        .pipelines
        .write()
        .unwrap_or_else(|e| e.into_inner());
    let status = match pipelines.get(&name).map(|r| r.origin) {
        Some(Origin::Operator) => return Err(protected(&name, "replaced")),
        Some(Origin::Api) => StatusCode::OK,
        None => {
            let registered_over_http = pipelines
                .values()
                .filter(|r| r.origin == Origin::Api)
                .count();
            if registered_over_http >= config.max_pipelines {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "too_many_pipelines",
                    format!(
                        "{registered_over_http} pipelines are registered over HTTP, the most this \
                         server takes (--max-pipelines); delete one with DELETE /v1/pipelines/NAME first"
                    ),
                ));
            }
            StatusCode::CREATED
        }
    };
    pipelines.insert(name, registered.clone());
    drop(pipelines);
    Ok((status, Json(describe(&registered))))
}

/// Parses and compiles a pipeline a client sent, under the server's load
/// limits, on a blocking thread (never an async worker) holding one of the
/// compile slots, and gives up waiting after the compile budget.
async fn compile(state: &AppState, text: String) -> Result<Registered, ApiError> {
    let budget = state.inner.config.compile_budget;
    let slot = tokio::time::timeout(budget, state.inner.compiles.clone().acquire_owned())
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_compiles",
                format!(
                    "{} pipelines are being compiled, the most this server compiles at once; \
                     try again later",
                    state.inner.config.max_concurrent_compiles
                ),
            )
        })?
        .map_err(ApiError::internal)?;
    let shared = state.clone();
    let compiling = tokio::task::spawn_blocking(move || {
        // The slot is freed only when the work really ends, even if the
        // client stopped waiting for it.
        let _slot = slot;
        let config = &shared.inner.config;
        Pipeline::from_yaml_str_limited(&text, &config.kinds, &config.load_limits())
            .map(|pipeline| Registered::new(pipeline, text, Origin::Api))
    });
    match tokio::time::timeout(budget, compiling).await {
        Err(_) => Err(ApiError::invalid(
            "invalid_pipeline",
            "the pipeline is not valid",
            vec![format!(
                "compiling the pipeline took longer than {budget:?} (compile_budget), the most \
                 this server allows"
            )],
        )),
        Ok(Err(failure)) => Err(ApiError::internal(format!(
            "compiling a pipeline failed: {failure}"
        ))),
        Ok(Ok(loaded)) => {
            loaded.map_err(|err| load_error(&err, state.inner.config.max_diagnostics))
        }
    }
}

/// A 422 listing at most `max` of a pipeline's problems (each cut to
/// [`MAX_PROBLEM_BYTES`]), then "and K more".
fn load_error(err: &braid_core::LoadError, max: usize) -> ApiError {
    let owned;
    let diagnostics: &[braid_core::Diagnostic] = match err {
        braid_core::LoadError::Invalid { diagnostics } => diagnostics,
        other => {
            owned = other.diagnostics();
            &owned
        }
    };
    let code = if diagnostics
        .iter()
        .any(|d| d.message.ends_with("(max_agents)"))
    {
        "too_many_agents"
    } else {
        "invalid_pipeline"
    };
    ApiError::invalid(
        code,
        "the pipeline is not valid",
        capped(
            diagnostics.iter().map(ToString::to_string),
            diagnostics.len(),
            max,
        ),
    )
}

/// At most `max` problems (all of them if there is just one more), each
/// cut to [`MAX_PROBLEM_BYTES`], then "and K more".
fn capped(problems: impl Iterator<Item = String>, total: usize, max: usize) -> Vec<String> {
    let max = max.max(1);
    let shown = if total > max + 1 { max } else { total };
    let mut listed: Vec<String> = problems
        .take(shown)
        .map(|mut p| {
            if p.len() > MAX_PROBLEM_BYTES {
                let mut cut = MAX_PROBLEM_BYTES;
                while !p.is_char_boundary(cut) {
                    cut -= 1;
                }
                p.truncate(cut);
                p.push_str(" …");
            }
            p
        })
        .collect();
    if total > shown {
        listed.push(format!("and {} more", total - shown));
    }
    listed
}

/// Names that could not be addressed in a URL, or are absurdly long, are
/// refused (the core already limits them to letters, digits, `-`, `_`, `.`).
fn check_name(name: &str) -> Result<(), ApiError> {
    let problem = if name == "." || name == ".." {
        Some(format!("a pipeline may not be named `{name}`"))
    } else if name.chars().count() > MAX_NAME_CHARS {
        Some(format!(
            "the pipeline's name has {} characters; the most is {MAX_NAME_CHARS}",
            name.chars().count()
        ))
    } else {
        None
    };
    match problem {
        Some(problem) => Err(ApiError::invalid(
            "invalid_name",
            "the pipeline's name is not allowed",
            vec![problem],
        )),
        None => Ok(()),
    }
}

fn protected(name: &str, what: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "pipeline_protected",
        format!(
            "pipeline `{name}` was loaded by the server's operator (--pipelines); \
             it cannot be {what} over HTTP"
        ),
    )
}

/// Deletes a pipeline a client registered: 204; 404 for an unknown name,
/// 409 for one the operator loaded. Runs already started go on.
async fn delete_pipeline(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let mut pipelines = state
        .inner
        .pipelines
        .write()
        .unwrap_or_else(|e| e.into_inner());
    match pipelines.get(&name).map(|r| r.origin) {
        None => Err(ApiError::not_found(format!("no pipeline named `{name}`"))),
        Some(Origin::Operator) => Err(protected(&name, "deleted")),
        Some(Origin::Api) => {
            pipelines.shift_remove(&name);
            Ok(StatusCode::NO_CONTENT)
        }
    }
}

async fn get_pipeline(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let pipelines = state
        .inner
        .pipelines
        .read()
        .unwrap_or_else(|e| e.into_inner());
    let registered = pipelines
        .get(&name)
        .ok_or_else(|| ApiError::not_found(format!("no pipeline named `{name}`")))?;
    Ok(Json(describe(registered)))
}

fn registered(state: &AppState, name: &str) -> Result<Arc<Registered>, ApiError> {
    state
        .inner
        .pipelines
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(name)
        .cloned()
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no pipeline named `{name}`; register it with POST /v1/pipelines"
            ))
        })
}

// ---- runs ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartRun {
    pipeline: String,
    #[serde(default)]
    input: Value,
    #[serde(default)]
    events: Option<String>,
    #[serde(default)]
    checkpoint: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WaitQuery {
    #[serde(default)]
    wait: bool,
    #[serde(default)]
    force: bool,
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

fn level(mode: &str) -> Result<(Option<EventLevel>, &'static str), ApiError> {
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

fn permit(state: &AppState) -> Result<OwnedSemaphorePermit, ApiError> {
    if state.inner.tracker.is_closed() {
        return Err(shutting_down());
    }
    state.inner.slots.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_runs",
            format!(
                "{} runs are in flight, the most this server takes; try again later",
                state.inner.config.max_concurrent_runs
            ),
        )
    })
}

async fn start_run(
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
    let slot = permit(&state)?;
    let how = Launch {
        registered,
        input,
        level,
        mode,
        checkpoint,
        run_id: None,
        resume: None,
        events_before: 0,
    };
    let run = launch(&state, how, slot)?;
    respond(run, query.wait).await
}

async fn respond(run: Arc<LiveRun>, wait: bool) -> Result<Response, ApiError> {
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
    if run.interrupted.load(Ordering::SeqCst) {
        value["status"] = json!(RunStatus::Interrupted);
    }
    value
}

/// How a run is to be started.
struct Launch {
    registered: Arc<Registered>,
    input: ValidInput,
    level: Option<EventLevel>,
    mode: &'static str,
    checkpoint: Option<CheckpointPolicy>,
    run_id: Option<String>,
    resume: Option<ResumePoint>,
    /// Events of an earlier attempt at this run: numbering goes on after them.
    events_before: u64,
}

/// Starts a run in the server's task tracker and registers it; refuses
/// once shutdown has begun.
fn launch(
    state: &AppState,
    how: Launch,
    slot: OwnedSemaphorePermit,
) -> Result<Arc<LiveRun>, ApiError> {
    let shared = &state.inner;
    let _admitted = shared.admission.read().unwrap_or_else(|e| e.into_inner());
    if shared.tracker.is_closed() {
        return Err(shutting_down());
    }
    let Launch {
        registered,
        input,
        level,
        mode,
        checkpoint,
        run_id,
        resume,
        events_before,
    } = how;
    let id = run_id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let log = EventLog::continuing(shared.config.max_events_per_run, events_before);
    let (sink, from_engine) = match level {
        Some(level) => {
            let (sink, rx) = EventSink::channel(level);
            (Some(sink), Some(rx))
        }
        None => (None, None),
    };
    let (report_tx, report_rx) = watch::channel(None);
    let cancel = CancellationToken::new();
    let run = Arc::new(LiveRun {
        id: id.clone(),
        pipeline: registered.pipeline.name().to_owned(),
        events_mode: mode,
        events: log.clone(),
        cancel: cancel.clone(),
        report: report_rx,
        interrupted: Default::default(),
    });
    {
        let mut runs = shared.runs.write().unwrap_or_else(|e| e.into_inner());
        runs.insert(id.clone(), run.clone());
        prune(&mut runs, shared.config.max_finished_runs);
    }
    metrics::counter!("braid_runs_started_total").increment(1);
    let store = shared.store.clone();
    let live = run.clone();
    shared.tracker.spawn(async move {
        let pump = from_engine.map(|rx| tokio::spawn(events::pump(rx, log.clone())));
        let options = RunOptions {
            run_id: Some(id.clone()),
            cancel,
            events: sink,
            checkpoint,
            checkpointer: store.as_ref().map(|s| s.checkpointer()),
            resume,
            ..RunOptions::default()
        };
        // In a task of its own, so that a panic in the engine still ends
        // the run's record and its event streams.
        let pipeline = registered.pipeline.clone();
        let report = match tokio::spawn(async move { pipeline.run(input, options).await }).await {
            Ok(report) => report,
            Err(failure) => braid_core::RunReport {
                run_id: id.clone(),
                pipeline: registered.pipeline.name().to_owned(),
                status: RunStatus::Failed,
                error: Some(format!("the run failed inside the engine: {failure}")),
                makespan_ms: 0.0,
                state: Default::default(),
                agents: Default::default(),
                tokens: None,
            },
        };
        match pump {
            Some(pump) => {
                if pump.await.is_err() || !log.is_finished() {
                    log.finish();
                }
            }
            None => {
                // `off`: no events were built; the stream still ends with
                // the run's final event.
                log.push(RunEvent {
                    seq: 1,
                    at_ms: report.makespan_ms,
                    kind: EventKind::RunFinished {
                        status: report.status,
                        makespan_ms: report.makespan_ms,
                    },
                });
                log.finish();
            }
        }
        // Only a run the shutdown actually stopped is interrupted; one that
        // finished meanwhile keeps its status.
        let interrupted =
            live.interrupted.load(Ordering::SeqCst) && report.status == RunStatus::Cancelled;
        live.interrupted.store(interrupted, Ordering::SeqCst);
        if let Some(store) = &store {
            let policy = checkpoint
                .or(registered.pipeline.checkpoint())
                .unwrap_or_default();
            if mode != "off" && policy != CheckpointPolicy::None {
                // The stream is kept with the run, so it can be replayed later.
                let events: Vec<(u64, String)> =
                    log.all().iter().map(|e| (e.seq, e.to_json())).collect();
                if let Err(err) = store.save_events(&id, &events).await {
                    eprintln!("braid-server: events of run {id} were not saved: {err}");
                }
            }
            let saved = store.flush_run(&id).await;
            if let Err(err) = &saved {
                eprintln!("braid-server: run {id} was not saved: {err}");
            }
            if interrupted
                && saved.is_ok()
                && let Err(err) = store.set_status(&id, RunStatus::Interrupted).await
            {
                eprintln!("braid-server: cannot mark run {id} interrupted: {err}");
            }
        }
        let status = if interrupted {
            RunStatus::Interrupted
        } else {
            report.status
        }
        .as_str();
        metrics::counter!("braid_runs_finished_total", "status" => status).increment(1);
        // Free the slot before telling waiters, so a client that resubmits
        // at once is not refused for its own finished run.
        drop(slot);
        let _ = report_tx.send(Some(Arc::new(report)));
    });
    Ok(run)
}

fn shutting_down() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "shutting_down",
        "the server is shutting down and takes no new runs",
    )
}

fn live(state: &AppState, id: &str) -> Option<Arc<LiveRun>> {
    state
        .inner
        .runs
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(id)
        .cloned()
}

async fn list_runs(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let mut listed: Vec<Value> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    {
        let runs = state.inner.runs.read().unwrap_or_else(|e| e.into_inner());
        for run in runs.values().rev() {
            seen.insert(run.id.clone());
            let report = run.report.borrow().clone();
            listed.push(json!({
                "run_id": run.id,
                "pipeline": run.pipeline,
                "status": match &report {
                    None => braid_core::report::RUNNING.to_owned(),
                    Some(_) if run.interrupted.load(Ordering::SeqCst) => RunStatus::Interrupted.to_string(),
                    Some(r) => r.status.to_string(),
                },
                "makespan_ms": report.as_ref().map(|r| r.makespan_ms),
                "events": run.events_mode,
            }));
        }
    }
    if let Some(store) = &state.inner.store {
        for run in store.list_runs(&Default::default()).await? {
            if seen.insert(run.run_id.clone()) {
                listed.push(serde_json::to_value(&run).unwrap_or_default());
            }
        }
    }
    Ok(Json(json!(listed)))
}

async fn get_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if let Some(run) = live(&state, &id) {
        let report = run.report.borrow().clone();
        return Ok(Json(match report {
            Some(report) => report_json(&run, &report),
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
        let agents: indexmap::IndexMap<&str, &braid_core::AgentReport> = stored
            .agents
            .iter()
            .map(|a| (&*a.agent, &a.report))
            .collect();
        let mut value = serde_json::to_value(&stored).unwrap_or_default();
        value["agents"] = json!(agents);
        return Ok(Json(value));
    }
    Err(ApiError::not_found(format!("no run {id}")))
}

async fn cancel_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let run =
        live(&state, &id).ok_or_else(|| ApiError::not_found(format!("no run {id} in flight")))?;
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

async fn resume_run(
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
    if live(&state, &id).is_some_and(|r| r.report.borrow().is_none()) {
        return Err(conflict(format!("run {id} is still running here")));
    }
    let stored = store
        .get_run(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no run {id}")))?;
    match stored.summary.status.as_str() {
        "completed" => return Err(conflict(format!("run {id} already completed"))),
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
    let registered = registered(&state, &stored.summary.pipeline)?;
    if registered.pipeline.content_hash() != stored.pipeline_hash && !query.force {
        return Err(conflict(format!(
            "pipeline `{}` changed since run {id} started; resume with ?force=true to use the current one",
            stored.summary.pipeline
        )));
    }
    let input = registered
        .pipeline
        .check_input(&Value::Object(stored.input.clone()))
        .map_err(|e| conflict(format!("its input no longer fits the pipeline: {e}")))?;
    let events_before = store.load_events(&id).await?.len() as u64;
    let slot = permit(&state)?;
    if !store.claim(&stored).await? {
        return Err(conflict(format!(
            "another process took run {id} over just now"
        )));
    }
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
    };
    let run = launch(&state, how, slot)?;
    respond(run, query.wait).await
}

// ---- streams ----

#[derive(Debug, Deserialize)]
struct AfterQuery {
    #[serde(default)]
    after: Option<u64>,
}

/// The run's event log: live, or replayed from the store for a run that
/// finished earlier (when its events were kept).
async fn stream_of(state: &AppState, id: &str) -> Result<Arc<EventLog>, ApiError> {
    if let Some(run) = live(state, id) {
        return Ok(run.events.clone());
    }
    if let Some(store) = &state.inner.store {
        let stored = store.load_events(id).await?;
        if !stored.is_empty() {
            return EventLog::replay(stored).map_err(ApiError::internal);
        }
    }
    Err(ApiError::not_found(format!(
        "no events of run {id}: unknown, run with events off, or not checkpointed"
    )))
}

/// Server-Sent Events, resumable with `Last-Event-ID` (or `?after=SEQ`).
async fn sse_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<AfterQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    let log = stream_of(&state, &id).await?;
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .or(query.after)
        .unwrap_or(0);
    let deliveries = events::subscribe(log, after, 64);
    let stream = tokio_stream::wrappers::ReceiverStream::new(deliveries).map(|delivery| {
        Ok(match delivery {
            Delivery::Event(e) => Event::default()
                .id(e.seq.to_string())
                .event(event_type(&e.event))
                .data(e.to_json()),
            Delivery::Lagged(missed) => Event::default()
                .event("lagged")
                .data(json!({"type": "lagged", "missed": missed}).to_string()),
        })
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

use tokio_stream::StreamExt as _;

fn event_type(event: &RunEvent) -> String {
    serde_json::to_value(&event.kind)
        .ok()
        .and_then(|v| v["type"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "event".to_owned())
}

/// WebSocket, resumable with `?after=SEQ`: one JSON text message per event.
async fn ws_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<AfterQuery>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    let upgrade =
        upgrade.map_err(|r| ApiError::new(r.status(), "websocket_required", r.body_text()))?;
    let log = stream_of(&state, &id).await?;
    let after = query.after.unwrap_or(0);
    let idle = state.inner.config.http.idle_timeout;
    Ok(crate::conn::limit_websocket(upgrade)
        .on_upgrade(move |socket| stream_ws(socket, log, after, idle)))
}

/// Streams the run's events until the last is sent, then closes. Pings the
/// client and drops it when it has answered nothing for `idle`, or when a
/// send has been stuck that long (a client that stopped reading).
async fn stream_ws(mut socket: WebSocket, log: Arc<EventLog>, after: u64, idle: Duration) {
    let mut deliveries = events::subscribe(log, after, 64);
    let every = crate::conn::ws_ping_interval(idle);
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heard = tokio::time::Instant::now();
    loop {
        tokio::select! {
            delivery = deliveries.recv() => {
                let Some(delivery) = delivery else { break };
                let text = match delivery {
                    Delivery::Event(e) => e.to_json(),
                    Delivery::Lagged(missed) => json!({"type": "lagged", "missed": missed}).to_string(),
                };
                let sent = tokio::time::timeout(idle, socket.send(Message::Text(text.into()))).await;
                if !matches!(sent, Ok(Ok(()))) {
                    return; // the client went away, or stopped reading
                }
            }
            incoming = socket.recv() => match incoming {
                // An error includes a message over the size limit.
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => heard = tokio::time::Instant::now(),
            },
            _ = ping.tick() => {
                if heard.elapsed() >= idle {
                    tracing::debug!("dropping a WebSocket client that answers no pings");
                    return;
                }
                let sent = tokio::time::timeout(idle, socket.send(Message::Ping(Default::default()))).await;
                if !matches!(sent, Ok(Ok(()))) {
                    return;
                }
            }
        }
    }
    let _ = tokio::time::timeout(idle, socket.send(Message::Close(None))).await;
}
