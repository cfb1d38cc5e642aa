//! The HTTP API's OpenAPI 3.1 document, served at `GET /openapi.json` (no
//! token needed, like `/healthz`) and committed as `docs/openapi.json`.
//!
//! Each handler carries a `#[utoipa::path]` attribute naming its statuses
//! and bodies; [`ApiDoc`] gathers them. Most handlers build their JSON with
//! `json!`, so the bodies are described by the schema types here, which
//! mirror what the handlers send and take (mirrors rather than derives on
//! the handlers' own structs, so the routes' code stays as it is). A unit
//! test checks every route of the router is in it. Schemathesis checks, against a live
//! server, that no response breaks the document (`scripts/api-fuzz.sh`).

use std::sync::OnceLock;

use axum::Json;
use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// The document, built once.
pub fn document() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serializes")
    })
}

/// `GET /openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "This OpenAPI 3.1 document.", body = Object)),
)]
pub(super) async fn openapi_json() -> Json<&'static Value> {
    Json(document())
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "braid",
        description = "Pipelines and runs over REST, live events over SSE and WebSocket. \
            Every `/v1` route needs `Authorization: Bearer TOKEN` when the server has a token \
            (the event streams also take `?token=`); requests that change something must be \
            sent as `application/json` or `application/yaml`. Every error is \
            `{\"error\": {\"code\", \"message\", \"problems\"?}}`.",
    ),
    paths(
        super::ops::healthz,
        super::ops::readyz,
        super::ops::metrics,
        super::ops::index,
        openapi_json,
        super::pipelines::list_pipelines,
        super::pipelines::register_pipeline,
        super::pipelines::get_pipeline,
        super::pipelines::delete_pipeline,
        super::runs::list_runs,
        super::runs::start_run,
        super::runs::get_run,
        super::runs::cancel_run,
        super::runs::resume_run,
        super::waits::answer,
        super::waits::fork,
        super::streams::sse_events,
        super::streams::ws_events,
    ),
    modifiers(&Bearer),
    tags(
        (name = "operations", description = "Health, readiness, metrics, the web view and this document."),
        (name = "pipelines", description = "Pipelines the server can run."),
        (name = "runs", description = "Runs: start, list, show, cancel, resume, answer, fork."),
        (name = "events", description = "A run's live events."),
    ),
)]
pub(crate) struct ApiDoc;

/// Adds the bearer token scheme the `/v1` routes name.
struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The server's token (`braid serve --token` or BRAID_TOKEN); not needed when the server has none (then it answers loopback clients only).",
                    ))
                    .build(),
            ),
        );
    }
}

/// Every error the API sends.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    /// What went wrong.
    pub(crate) error: ErrorDetail,
}

/// The error itself.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorDetail {
    /// A stable, machine-readable code (`not_found`, `invalid_input`,
    /// `unauthorized`, `too_many_runs`…).
    pub(crate) code: String,
    /// What went wrong, for people.
    pub(crate) message: String,
    /// With a 422: each problem found (a pipeline's diagnostics, an
    /// input's or an answer's schema errors).
    #[schema(nullable = false)]
    pub(crate) problems: Option<Vec<String>>,
}

/// `/healthz` and `/readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Health {
    /// `ok` (`/healthz`) or `ready` (`/readyz`).
    pub(crate) status: String,
}

/// Who registered a pipeline.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)] // a schema type: described, never built
pub(crate) enum PipelineOrigin {
    /// Loaded by the server's operator (`--pipelines`): it cannot be
    /// replaced or deleted over HTTP.
    Operator,
    /// Registered over HTTP.
    Api,
}

/// One pipeline, in short.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PipelineSummary {
    /// The pipeline's name.
    pub(crate) name: String,
    /// Its `description`, if any.
    pub(crate) description: Option<String>,
    /// How many agents it has.
    pub(crate) agents: u64,
    /// A hash of its text: a run resumed with another hash needs `force`.
    pub(crate) content_hash: String,
    /// Who registered it.
    pub(crate) origin: PipelineOrigin,
}

/// One pipeline, with its text and explanation.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PipelineDetail {
    /// The pipeline's name.
    pub(crate) name: String,
    /// A hash of its text.
    pub(crate) content_hash: String,
    /// `braid explain --format json`: the derived graph, its stages and
    /// critical path.
    #[schema(value_type = Object)]
    pub(crate) explain: Value,
    /// The pipeline file's text.
    pub(crate) source: String,
    /// Who registered it.
    pub(crate) origin: PipelineOrigin,
}

/// A run in the list: a run in memory, or one the store has.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RunListItem {
    /// The run's id.
    pub(crate) run_id: String,
    /// The pipeline it runs.
    pub(crate) pipeline: String,
    /// `running`, `waiting`, `completed`, `failed`, `cancelled`,
    /// `interrupted`, or `abandoned` (a stored run still `running` whose
    /// owner's lease expired with nobody renewing it).
    pub(crate) status: String,
    /// How long it took, in milliseconds (`null` while it runs).
    pub(crate) makespan_ms: Option<f64>,
    /// A run in memory: the events it records (`off`, `summary`, `full`).
    #[schema(nullable = false)]
    pub(crate) events: Option<String>,
    /// A stored run: its checkpoint policy.
    #[schema(nullable = false)]
    pub(crate) checkpoint: Option<String>,
    /// A stored run: when it started (milliseconds since the Unix epoch).
    #[schema(nullable = false)]
    pub(crate) created_at_ms: Option<i64>,
    /// A stored run: why it failed.
    pub(crate) error: Option<String>,
    /// Who or what started it (`cli:USER@HOST`, `api`, a client's name).
    pub(crate) started_by: Option<String>,
}

/// `202` for a run started (or continued) without `?wait=true`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RunAccepted {
    /// The run's id: follow it at `/v1/runs/{id}` or its event streams.
    pub(crate) run_id: String,
}

/// `202` for a cancellation asked.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Cancelling {
    /// The run's id.
    pub(crate) run_id: String,
    /// Always `cancelling`.
    pub(crate) status: String,
}

/// `202` for an answer handed to a run.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Answered {
    /// The run's id.
    pub(crate) run_id: String,
    /// The agent answered.
    pub(crate) agent: String,
    /// Always `true`.
    pub(crate) answered: bool,
}

/// `202` for a fork started.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Forked {
    /// The new run's id.
    pub(crate) run_id: String,
    /// The run it was forked from.
    pub(crate) parent_id: String,
    /// The agents the fork runs again.
    pub(crate) rerun: Vec<String>,
}

/// One Server-Sent Event of `GET /v1/runs/{id}/events`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SseEvent {
    /// The event's sequence number (send it back as `?after=` or
    /// `Last-Event-ID` to resume).
    pub(crate) id: String,
    /// The event's type (`run_started`, `agent_started`, `agent_completed`,
    /// `log`, `run_finished`…).
    pub(crate) event: String,
    /// The event as JSON, with `seq`, `at_ms` and `type`.
    pub(crate) data: String,
}

/// Token counts of `llm` agents.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Tokens {
    /// Prompt tokens.
    pub(crate) prompt: u64,
    /// Completion tokens.
    pub(crate) completion: u64,
}

/// A question a waiting `input` agent asks.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Question {
    /// The waiting agent.
    pub(crate) agent: String,
    /// What it asks.
    pub(crate) prompt: String,
    /// The JSON Schema an answer must match.
    #[schema(value_type = Object, nullable = true)]
    pub(crate) schema: Value,
    /// The answer taken at the deadline, if any (any JSON).
    #[schema(value_type = Value)]
    pub(crate) default: Value,
    /// The values of the fields it reads.
    #[schema(value_type = Object)]
    pub(crate) reads: Value,
    /// When it stops waiting (milliseconds since the Unix epoch), if ever.
    pub(crate) deadline_ms: Option<i64>,
}

/// One agent's part in a run.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AgentRunReport {
    /// `pending`, `running`, `waiting`, `completed`, `failed`, `skipped`,
    /// `cancelled`…
    pub(crate) status: String,
    /// When it started, in milliseconds from the run's start.
    pub(crate) start_ms: Option<f64>,
    /// How long it ran, in milliseconds.
    pub(crate) duration_ms: Option<f64>,
    /// How long it waited for a concurrency slot, in milliseconds.
    pub(crate) queue_ms: Option<f64>,
    /// How many attempts it took.
    pub(crate) attempts: u32,
    /// Why it failed.
    #[schema(nullable = false)]
    pub(crate) error: Option<String>,
    /// Why it was skipped.
    #[schema(nullable = false)]
    pub(crate) reason: Option<String>,
    /// Its result was kept from the run resumed or forked.
    #[schema(nullable = false)]
    pub(crate) resumed: Option<bool>,
    /// Its tokens, for `llm` agents.
    #[schema(nullable = false)]
    pub(crate) tokens: Option<Tokens>,
    /// A `foreach` agent: its items by outcome.
    #[schema(value_type = Object, nullable = false, required = false)]
    pub(crate) items: Option<Value>,
    /// A `foreach` agent's items, or a group's members, by name.
    #[schema(value_type = Object, nullable = false, required = false)]
    pub(crate) instances: Option<Value>,
    /// Its result came from the cache.
    #[schema(nullable = false)]
    pub(crate) cached: Option<bool>,
    /// The run whose cached result it reused.
    #[schema(nullable = false)]
    pub(crate) reused_from: Option<String>,
    /// A waiting `input` agent's deadline (milliseconds since the Unix epoch).
    #[schema(nullable = false)]
    pub(crate) deadline_ms: Option<i64>,
    /// Each failed attempt, oldest first.
    #[schema(nullable = false)]
    pub(crate) failures: Option<Vec<AttemptFailure>>,
    /// Its last log lines (runs checkpointed `end` or `agent`).
    #[schema(nullable = false)]
    pub(crate) logs: Option<Vec<String>>,
    /// Earlier log lines dropped to keep within the bound.
    #[schema(nullable = false)]
    pub(crate) logs_dropped: Option<u64>,
    /// A tool-calling agent's tool calls, in the order they started.
    #[schema(nullable = false)]
    pub(crate) tool_calls: Option<Vec<ToolCall>>,
    /// A tool-calling agent's conversation with its model (OpenAI-style
    /// chat messages, tool calls and results included).
    #[schema(value_type = Vec<Object>, nullable = false, required = false)]
    pub(crate) transcript: Option<Vec<Value>>,
}

/// One tool call of an agent: a step of its run.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ToolCall {
    /// The step's name, `agent.tool#N:tool`.
    pub(crate) name: String,
    /// The tool called.
    pub(crate) tool: String,
    /// `running`, `completed`, `failed` or `cancelled`.
    pub(crate) status: String,
    /// Its arguments.
    #[schema(value_type = Object)]
    pub(crate) arguments: Value,
    /// Attempts made (0 when refused before running, or taken from the cache).
    pub(crate) attempts: u32,
    /// When it started, in milliseconds from the run's start.
    pub(crate) start_ms: f64,
    /// How long it took, retries included.
    #[schema(nullable = false)]
    pub(crate) duration_ms: Option<f64>,
    /// Its result: the tool's writes.
    #[schema(value_type = Object, nullable = false, required = false)]
    pub(crate) result: Option<Value>,
    /// Why it failed.
    #[schema(nullable = false)]
    pub(crate) error: Option<String>,
    /// The model's id for the call.
    #[schema(nullable = false)]
    pub(crate) call_id: Option<String>,
    /// Its result was recorded before the run was resumed and given again.
    #[schema(nullable = false)]
    pub(crate) resumed: Option<bool>,
    /// Its result came from the cache.
    #[schema(nullable = false)]
    pub(crate) cached: Option<bool>,
}

/// One failed attempt of an agent.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AttemptFailure {
    /// 1 for the first try, 2 for the first retry…
    pub(crate) attempt: u32,
    /// Why it failed.
    pub(crate) error: String,
    /// How long the attempt ran, in milliseconds.
    pub(crate) duration_ms: f64,
}

/// A run: its report when it ended (or is waiting), a stub while it runs,
/// or the store's record of it. `run_id`, `pipeline` and `status` are
/// always there.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RunReport {
    /// The run's id.
    pub(crate) run_id: String,
    /// The pipeline it runs.
    pub(crate) pipeline: String,
    /// `running`, `waiting`, `completed`, `failed`, `cancelled`,
    /// `interrupted`, or `abandoned` (a stored run still `running` whose
    /// owner's lease expired with nobody renewing it).
    pub(crate) status: String,
    /// Why it failed.
    pub(crate) error: Option<String>,
    /// How long it took, in milliseconds.
    pub(crate) makespan_ms: Option<f64>,
    /// The final state: every field written, by name.
    #[schema(value_type = Object, nullable = false, required = false)]
    pub(crate) state: Option<Value>,
    /// Each agent's report, by name.
    #[schema(nullable = false)]
    pub(crate) agents: Option<std::collections::BTreeMap<String, AgentRunReport>>,
    /// The tokens of every `llm` agent.
    #[schema(nullable = false)]
    pub(crate) tokens: Option<Tokens>,
    /// The events it records (`off`, `summary`, `full`).
    #[schema(nullable = false)]
    pub(crate) events: Option<String>,
    /// A fork: the run it was forked from.
    #[schema(nullable = false)]
    pub(crate) parent_id: Option<String>,
    /// A fork: what it re-runs from.
    #[schema(nullable = false)]
    pub(crate) forked_from: Option<String>,
    /// The runs forked from it.
    #[schema(nullable = false)]
    pub(crate) forks: Option<Vec<String>>,
    /// `false` when it could not be saved to the store.
    #[schema(nullable = false)]
    pub(crate) saved: Option<bool>,
    /// Why it could not be saved.
    #[schema(nullable = false)]
    pub(crate) save_error: Option<String>,
    /// A stored run: its checkpoint policy.
    #[schema(nullable = false)]
    pub(crate) checkpoint: Option<String>,
    /// A stored run: when it started (milliseconds since the Unix epoch).
    #[schema(nullable = false)]
    pub(crate) created_at_ms: Option<i64>,
    /// A stored run: the hash of the pipeline it ran.
    #[schema(nullable = false)]
    pub(crate) pipeline_hash: Option<String>,
    /// A stored run: the pipeline file it was started from, if any.
    pub(crate) pipeline_path: Option<String>,
    /// A stored run: the process that runs it (`host:pid`).
    pub(crate) owner: Option<String>,
    /// A stored run: its input.
    #[schema(value_type = Object, nullable = false, required = false)]
    pub(crate) input: Option<Value>,
    /// What its waiting `input` agents ask.
    #[schema(nullable = false)]
    pub(crate) questions: Option<Vec<Question>>,
    /// Who or what started it (`cli:USER@HOST`, `api`, a client's name).
    #[schema(nullable = false)]
    pub(crate) started_by: Option<String>,
    /// A finished run's critical path as it happened, first agent first
    /// (when the server holds its pipeline).
    #[schema(nullable = false)]
    pub(crate) critical_path: Option<Vec<String>>,
}

/// A body that is not read (the request must still say it is JSON).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EmptyBody {}

/// The body of `POST /v1/runs`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StartRunBody {
    /// The registered pipeline to run.
    #[schema(example = "seed-optimization")]
    pub(crate) pipeline: String,
    /// The run's input, checked against the pipeline's `inputs`.
    #[schema(value_type = Object, nullable = false, required = false)]
    pub(crate) input: Option<Value>,
    /// The events the run records: `off` (default), `summary` or `full`.
    #[schema(nullable = false)]
    pub(crate) events: Option<EventsMode>,
    /// The checkpoint policy: `none`, `end` or `agent` (default: the
    /// pipeline's).
    #[schema(nullable = false)]
    pub(crate) checkpoint: Option<CheckpointMode>,
    /// Run every agent: cached ones neither reuse nor store results.
    #[schema(nullable = false)]
    pub(crate) no_cache: Option<bool>,
    /// Who or what starts it, as operators see it (default `api`).
    #[schema(nullable = false, max_length = 128)]
    pub(crate) started_by: Option<String>,
}

/// The events a run records.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)] // a schema type: described, never built
pub(crate) enum EventsMode {
    /// None.
    Off,
    /// One per agent start and end.
    Summary,
    /// Every log line and partial answer too.
    Full,
}

/// A checkpoint policy.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)] // a schema type: described, never built
pub(crate) enum CheckpointMode {
    /// Nothing is saved.
    None,
    /// The final report.
    End,
    /// After every agent.
    Agent,
}

/// The body of `POST /v1/runs/{id}/agents/{agent}/answer`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AnswerBody {
    /// The answer (any JSON), checked against the agent's schema.
    #[schema(value_type = Value)]
    pub(crate) value: Value,
}

/// The body of `POST /v1/runs/{id}/fork`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ForkBody {
    /// Run again from this agent (and everything downstream of it).
    #[schema(nullable = false)]
    pub(crate) from: Option<String>,
    /// Fields set to new values (at most 256); what reads them runs again.
    #[schema(value_type = Object, nullable = false, required = false)]
    pub(crate) set: Option<Value>,
    /// The events the fork records.
    #[schema(nullable = false)]
    pub(crate) events: Option<EventsMode>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_of_the_router_is_documented() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().unwrap();
        for path in [
            "/",
            "/healthz",
            "/readyz",
            "/metrics",
            "/openapi.json",
            "/v1/pipelines",
            "/v1/pipelines/{name}",
            "/v1/runs",
            "/v1/runs/{id}",
            "/v1/runs/{id}/cancel",
            "/v1/runs/{id}/resume",
            "/v1/runs/{id}/fork",
            "/v1/runs/{id}/agents/{agent}/answer",
            "/v1/runs/{id}/events",
            "/v1/runs/{id}/ws",
        ] {
            assert!(paths.contains_key(path), "{path} is not documented");
        }
        assert_eq!(paths.len(), 15, "{:?}", paths.keys().collect::<Vec<_>>());
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
    }
}
