//! braid as a Model Context Protocol server: every pipeline is a tool, so
//! desktop assistants, IDEs and other agents can call braid pipelines.
//!
//! A tool's name is its pipeline's, its description the pipeline's, its
//! input schema the pipeline's `inputs` (an object with one property per
//! input, required unless it has a `default`), and its result the run's
//! `output` field (or, without one, its whole state), as structured
//! content and as JSON text. The run is an ordinary run of the server: it
//! takes a slot (`--max-runs`), is stored like any other and shows in the
//! console, started by `mcp`. A call that asks for progress (a
//! `progressToken`) gets a `notifications/progress` as each agent ends
//! (`progress` agents ended of `total`); a cancelled call cancels its run.
//! A run that fails, or does not fit the inputs, is a tool error
//! (`isError`) that says why, with the run's id.
//!
//! [`McpHandler`] is the handler; [`service`] serves it over streamable
//! HTTP (`braid serve --mcp`, at `/mcp` behind the server's token and
//! Origin checks) and [`serve_stdio`] over stdin and stdout (`braid mcp`).

use std::sync::Arc;

use braid_core::RunStatus;
use braid_core::event::{EventKind, EventLevel};
use rmcp::ErrorData as McpError;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ProgressNotificationParam, ServerCapabilities,
    ServerConfig as McpServerConfig, Tool,
};
use rmcp::service::{RequestContext, RoleServer};
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::runs::Launch;

/// Who the console says started an MCP tool's runs.
const STARTED_BY: &str = "mcp";

/// The MCP handler over a server's pipelines: see the [module docs](self).
#[derive(Clone)]
pub struct McpHandler {
    state: AppState,
}

impl McpHandler {
    /// The handler for `state`'s pipelines and runs.
    pub fn new(state: AppState) -> Self {
        Self { state }
    }

    fn tools(&self) -> Vec<Tool> {
        let pipelines = self
            .state
            .inner
            .pipelines
            .read()
            .unwrap_or_else(|e| e.into_inner());
        pipelines
            .values()
            .map(|registered| {
                let pipeline = &registered.pipeline;
                let description = pipeline
                    .description()
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("Runs the braid pipeline `{}`.", pipeline.name()));
                Tool::new(
                    pipeline.name().to_owned(),
                    description,
                    Arc::new(input_schema(pipeline)),
                )
            })
            .collect()
    }

    async fn call(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let Some(registered) = self.state.pipeline(&request.name) else {
            return Err(McpError::invalid_params(
                format!("no pipeline (tool) named `{}`", request.name),
                None,
            ));
        };
        let arguments = Value::Object(request.arguments.unwrap_or_default());
        let input = match registered.pipeline.check_input(&arguments) {
            Ok(input) => input,
            Err(error) => {
                return Ok(tool_error(format!(
                    "the arguments do not fit the pipeline's inputs:\n  - {}",
                    error.problems.join("\n  - ")
                )));
            }
        };
        let slot = match self.state.inner.runs.reserve() {
            Ok(slot) => slot,
            Err(refused) => return Ok(tool_error(refused.to_string())),
        };
        let progress = context.meta.get_progress_token();
        let (level, mode) = match progress {
            Some(_) => (Some(EventLevel::Summary), "summary"),
            None => (None, "off"),
        };
        let how = Launch {
            registered: registered.clone(),
            input,
            level,
            mode,
            checkpoint: None,
            run_id: None,
            resume: None,
            events_before: 0,
            parent_id: None,
            no_cache: false,
            started_by: Some(STARTED_BY.to_owned()),
            resumed_after: None,
        };
        let run = match self.state.inner.runs.launch(how, slot) {
            Ok(run) => run,
            Err(refused) => return Ok(tool_error(refused.to_string())),
        };
        let mut notifying = None;
        if let Some(token) = progress {
            let total = registered.pipeline.agents().len() as f64;
            let mut events = crate::events::subscribe(run.events.clone(), 0, 64);
            let peer = context.peer.clone();
            notifying = Some(tokio::spawn(async move {
                let mut ended = 0.0;
                while let Some(delivery) = events.recv().await {
                    let crate::events::Delivery::Event(event) = delivery else {
                        continue;
                    };
                    let message = match &event.event.kind {
                        EventKind::AgentCompleted { agent, .. } => format!("{agent} completed"),
                        EventKind::AgentFailed { agent, .. } => format!("{agent} failed"),
                        EventKind::AgentSkipped { agent, .. } => format!("{agent} skipped"),
                        _ => continue,
                    };
                    // Instances and groups' members are counted on their agent.
                    if event
                        .event
                        .kind
                        .agent()
                        .is_some_and(|a| braid_core::report::top_agent(a) != &**a)
                    {
                        continue;
                    }
                    ended += 1.0;
                    let mut update = ProgressNotificationParam::new(token.clone(), ended);
                    update.total = Some(total);
                    update.message = Some(message);
                    if peer.notify_progress(update).await.is_err() {
                        return;
                    }
                }
            }));
        }
        let mut report = run.report.clone();
        let finished = tokio::select! {
            finished = report.wait_for(Option::is_some) => finished.ok().and_then(|r| r.clone()),
            () = context.ct.cancelled() => {
                run.cancel.cancel();
                return Err(McpError::internal_error(format!("cancelled; run {} was cancelled", run.id), None));
            }
        };
        // The last notifications go out before the result: a client
        // ignores progress for a call it has the answer to.
        if let Some(task) = notifying {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
        }
        let Some(report) = finished else {
            return Ok(tool_error(format!("run {} ended without a report", run.id)));
        };
        Ok(match report.status {
            RunStatus::Completed => {
                let result = match registered.pipeline.output_field() {
                    Some(field) => report
                        .state
                        .get(field)
                        .map(|v| (**v).clone())
                        .unwrap_or(Value::Null),
                    None => Value::Object(
                        report
                            .state
                            .iter()
                            .map(|(k, v)| (k.to_string(), (**v).clone()))
                            .collect(),
                    ),
                };
                // Structured content must be an object: an `output` that
                // is not one is wrapped as `{"result": ...}`.
                let structured = match result {
                    Value::Object(_) => result,
                    other => json!({ "result": other }),
                };
                CallToolResult::structured(structured)
            }
            RunStatus::Waiting => tool_error(format!(
                "run {} waits for an answer to an `input` agent; answer it through the server's API or console",
                run.id
            )),
            status => tool_error(format!(
                "run {} {status}: {}",
                run.id,
                report.error.as_deref().unwrap_or("no reason given")
            )),
        })
    }
}

/// A tool error: the call ran (or was refused) and the model is told why.
fn tool_error(message: String) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message)])
}

/// A pipeline's `inputs` as one object schema.
fn input_schema(pipeline: &braid_core::Pipeline) -> Map<String, Value> {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for (name, schema) in pipeline.inputs() {
        if schema.get("default").is_none() {
            required.push(Value::from(name));
        }
        properties.insert(name.to_owned(), schema.clone());
    }
    let mut schema = Map::new();
    schema.insert("type".into(), json!("object"));
    schema.insert("properties".into(), Value::Object(properties));
    schema.insert("required".into(), Value::Array(required));
    schema.insert("additionalProperties".into(), json!(false));
    schema
}

impl rmcp::ServerHandler for McpHandler {
    fn get_info(&self) -> McpServerConfig {
        McpServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("braid", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Each tool runs a braid pipeline with the tool's arguments as its inputs and returns its output.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(self.tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        self.call(request, context).await.map(Into::into)
    }
}

/// The handler over streamable HTTP, for `/mcp`: stateless (no session is
/// kept between requests), bodies bounded by the server's
/// `max_body_bytes`; the server's own middleware checks the token, Host
/// and Origin.
pub fn service(
    state: AppState,
) -> rmcp::transport::StreamableHttpService<
    McpHandler,
    rmcp::transport::streamable_http_server::session::local::LocalSessionManager,
> {
    use rmcp::transport::streamable_http_server::StreamableHttpServerConfig;
    let mut config = StreamableHttpServerConfig::default().disable_allowed_hosts();
    config.legacy_session_mode = false;
    config.max_request_body_bytes = state.inner.config.max_body_bytes;
    let handler = McpHandler::new(state);
    rmcp::transport::StreamableHttpService::new(move || Ok(handler.clone()), Arc::default(), config)
}

/// Serves the handler over stdin and stdout until the client goes away
/// (`braid mcp`).
///
/// # Errors
/// When the MCP handshake fails.
pub async fn serve_stdio(state: AppState) -> Result<(), String> {
    use rmcp::ServiceExt;
    let running = McpHandler::new(state)
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| format!("the MCP handshake failed: {e}"))?;
    running
        .waiting()
        .await
        .map_err(|e| format!("the MCP server stopped: {e}"))?;
    Ok(())
}
