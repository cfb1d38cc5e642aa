//! Pipeline routes: list, register (compiled off the async workers, within
//! the server's load limits), show and delete.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use braid_core::Pipeline;
use serde_json::{Value, json};

use super::body_error;
use crate::error::ApiError;
use crate::{AppState, Origin, Registered};

/// `GET /v1/pipelines`: every pipeline the server knows, in short.
#[utoipa::path(
    get,
    path = "/v1/pipelines",
    tag = "pipelines",
    summary = "Every pipeline the server knows, in short.",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The pipelines.", body = [crate::routes::openapi::PipelineSummary]),
        (status = 401, description = "No valid bearer token.", body = crate::routes::openapi::ErrorBody),
        (status = 403, description = "The request's Origin (or, without a token, its Host) is not allowed.", body = crate::routes::openapi::ErrorBody),
    ),
)]
pub(super) async fn list_pipelines(State(state): State<AppState>) -> Json<Value> {
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
        "description": registered.pipeline.description(),
        "explain": registered.explain,
        "inputs": registered
            .pipeline
            .inputs()
            .map(|(name, schema)| (name.to_owned(), schema.clone()))
            .collect::<serde_json::Map<_, _>>(),
        "source": registered.source,
        "origin": registered.origin.as_str(),
    })
}

/// The longest pipeline name the API takes.
const MAX_NAME_CHARS: usize = 128;

/// The longest problem listed in a 422, in bytes; longer ones are cut.
const MAX_PROBLEM_BYTES: usize = 2048;

/// `POST /v1/pipelines`: registers (or replaces) a client's pipeline.
#[utoipa::path(
    post,
    path = "/v1/pipelines",
    tag = "pipelines",
    summary = "Registers (or replaces) a pipeline from its YAML or JSON text.",
    request_body(content = String, description = "The pipeline file's text (YAML or JSON).", content_type = "application/yaml", example = json!("pipeline: hello\ninputs: { name: { type: string } }\nagents:\n  greet: { kind: sleep, ms: 1, reads: [name], writes: [greeting], value: hi }\n")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Replaced a pipeline registered over HTTP.", body = crate::routes::openapi::PipelineDetail),
        (status = 201, description = "Registered.", body = crate::routes::openapi::PipelineDetail),
        (status = 400, description = "The body is not UTF-8 text.", body = crate::routes::openapi::ErrorBody),
        (status = 401, description = "No valid bearer token.", body = crate::routes::openapi::ErrorBody),
        (status = 403, description = "`command` agents without --allow-command-agents, or a refused Origin.", body = crate::routes::openapi::ErrorBody),
        (status = 409, description = "The name is an operator's pipeline, or --max-pipelines are registered.", body = crate::routes::openapi::ErrorBody),
        (status = 413, description = "The body is larger than the server takes.", body = crate::routes::openapi::ErrorBody),
        (status = 415, description = "Not sent as application/json or application/yaml.", body = crate::routes::openapi::ErrorBody),
        (status = 422, description = "The pipeline is not valid (`problems` lists why, with lines and columns), or its name is not allowed.", body = crate::routes::openapi::ErrorBody),
        (status = 429, description = "As many pipelines are being compiled as the server compiles at once.", body = crate::routes::openapi::ErrorBody),
    ),
)]
pub(super) async fn register_pipeline(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = body.map_err(body_error)?;
    let text = String::from_utf8(body.into()).map_err(|error| {
        let valid = &error.as_bytes()[..error.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
        let column = valid.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("the pipeline must be UTF-8 text; line {line}, byte {column} is not"),
        )
    })?;
    let registered = Arc::new(compile(&state, text).await?);
    let pipeline = &registered.pipeline;
    let config = &state.inner.config;
    let name = pipeline.name().to_owned();
    check_name(&name)?;
    if !config.allow_command_agents {
        let mut commands = Vec::new();
        command_agents(pipeline, "", &mut commands);
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

/// The `command` agents of `pipeline` by path: its own, its tool agents
/// (which a model can make run) and its groups', at any depth.
fn command_agents(pipeline: &braid_core::Pipeline, prefix: &str, found: &mut Vec<String>) {
    for agent in pipeline.agents() {
        if agent.kind().name() == "command" {
            found.push(format!("{prefix}{}", agent.name()));
        }
        if let Some(group) = agent.group_pipeline() {
            command_agents(group, &format!("{prefix}{}.", agent.name()), found);
        }
    }
    for tool in pipeline.tool_agents() {
        if tool.kind() == "command" {
            found.push(format!("{prefix}{}", tool.name()));
        }
    }
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
        let mut pipeline =
            Pipeline::from_yaml_str_limited(&text, &config.kinds, &config.load_limits())?;
        if let Some(prepare) = &config.prepare {
            (prepare.0)(&mut pipeline).map_err(|message| braid_core::LoadError::Invalid {
                diagnostics: vec![braid_core::Diagnostic {
                    location: None,
                    message,
                }],
            })?;
        }
        Ok(Registered::new(pipeline, text, Origin::Api))
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
#[utoipa::path(
    delete,
    path = "/v1/pipelines/{name}",
    tag = "pipelines",
    summary = "Deletes a pipeline registered over HTTP (runs already started go on).",
    params(
        ("name" = String, Path, description = "The pipeline's name."),
    ),
    request_body(content = crate::routes::openapi::EmptyBody, description = "Nothing is read, but the request must be sent as application/json (or application/yaml), like every request that changes something.", content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, description = "No pipeline of that name.", body = crate::routes::openapi::ErrorBody),
        (status = 409, description = "An operator's pipeline, which cannot be deleted over HTTP.", body = crate::routes::openapi::ErrorBody),
        (status = 415, description = "Not sent as application/json or application/yaml.", body = crate::routes::openapi::ErrorBody),
        (status = 401, description = "No valid bearer token.", body = crate::routes::openapi::ErrorBody),
        (status = 403, description = "The request's Origin (or, without a token, its Host) is not allowed.", body = crate::routes::openapi::ErrorBody),
    ),
)]
pub(super) async fn delete_pipeline(
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

/// `GET /v1/pipelines/{name}`: one pipeline with its text and explanation.
#[utoipa::path(
    get,
    path = "/v1/pipelines/{name}",
    tag = "pipelines",
    summary = "One pipeline with its text and explanation.",
    params(
        ("name" = String, Path, description = "The pipeline's name."),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The pipeline.", body = crate::routes::openapi::PipelineDetail),
        (status = 404, description = "No pipeline of that name.", body = crate::routes::openapi::ErrorBody),
        (status = 401, description = "No valid bearer token.", body = crate::routes::openapi::ErrorBody),
        (status = 403, description = "The request's Origin (or, without a token, its Host) is not allowed.", body = crate::routes::openapi::ErrorBody),
    ),
)]
pub(super) async fn get_pipeline(
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

/// The pipeline named `name`, or a 404 saying how to register it.
pub(super) fn registered(state: &AppState, name: &str) -> Result<Arc<Registered>, ApiError> {
    state.pipeline(name).ok_or_else(|| {
        ApiError::not_found(format!(
            "no pipeline named `{name}`; register it with POST /v1/pipelines"
        ))
    })
}
