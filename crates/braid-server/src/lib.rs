//! The braid server: pipelines and runs over an HTTP API, live events over
//! Server-Sent Events and WebSocket (only for runs that ask for them), a
//! live web view, bearer-token auth and limits.
//!
//! [`app`] builds the whole router from an [`AppState`]; [`serve`] serves it
//! on a listener, with the connection limits of [`HttpConfig`], and shuts
//! down gracefully. The run lifecycle lives in a registry with no HTTP in
//! it (`runs.rs`), the routes are split by resource (`routes/`), and the
//! store is reached through the [`RunStore`] trait. Nothing here is on a
//! run's hot path: a run with `events: "off"` has no sink, so the engine
//! builds no events at all.
//!
//! # A tour
//!
//! | Item | What it is |
//! |---|---|
//! | [`AppState`] | What every handler shares: the config, the pipelines, the runs in flight and the store. |
//! | [`ServerConfig`], [`HttpConfig`] | The token, the agent kinds clients may use, and every limit (bodies, pipelines, compiles, runs, events, connections). |
//! | [`app`] | The router: `/v1/pipelines`, `/v1/runs` (start, get, cancel, resume, SSE and WebSocket events), `/healthz`, `/readyz`, `/metrics` and the web view at `/`. |
//! | [`serve`] | HTTP/1.1 and h2c on a listener, until a shutdown signal; then runs finish within the grace period. |
//! | [`Retention`] | How long runs are kept: [`serve`] prunes older ones in the background ([`retention`]). |
//! | [`RunStore`] | What the server needs from a store; [`braid_store::Store`] implements it. |
//! | [`mcp`] | The pipelines as MCP tools: at `/mcp` with [`ServerConfig::mcp`], or over stdio. |
//! | [`ApiError`] | Every error response: a status and a JSON body with a code, a message and the problems found. |
//!
//! # Calling the API in process
//!
//! [`app`] is a tower service: a test (or an application embedding the
//! API in a larger router) can call it without a socket. Here a pipeline
//! the operator loaded is run with `POST /v1/runs?wait=true`, which answers
//! with the run's report.
//!
//! ```
//! use axum::body::Body;
//! use axum::http::{Request, StatusCode};
//! use braid_core::Pipeline;
//! use braid_server::{AppState, ServerConfig, app};
//! use tower::ServiceExt; // for `oneshot`
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = ServerConfig { token: Some("s3cret".into()), ..ServerConfig::default() };
//! let state = AppState::new(config, None); // no store: runs live in memory
//! let yaml = "pipeline: hello\nagents:\n  a: { kind: sleep, ms: 1, writes: [x] }\n";
//! state.preload(Pipeline::from_yaml_str(yaml)?, yaml.to_owned())?;
//!
//! let request = Request::post("/v1/runs?wait=true")
//!     .header("authorization", "Bearer s3cret")
//!     .header("content-type", "application/json")
//!     .body(Body::from(r#"{"pipeline": "hello", "input": {}}"#))?;
//! let response = app(state.clone()).oneshot(request).await?;
//! assert_eq!(response.status(), StatusCode::OK);
//! let body = axum::body::to_bytes(response.into_body(), usize::MAX).await?;
//! let report: serde_json::Value = serde_json::from_slice(&body)?;
//! assert_eq!(report["status"], "completed");
//!
//! // Without the token: 401.
//! let response = app(state).oneshot(Request::get("/v1/runs").body(Body::empty())?).await?;
//! assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
//! # Ok(()) }
//! ```
//!
//! To keep runs, pass a store: `AppState::new(config,
//! Some(Arc::new(store)))` with a [`braid_store::Store`]: runs and their
//! events are then kept there, listed and resumed from it, and runs in
//! flight at shutdown are marked interrupted there.
//!
//! # Serving
//!
//! [`serve`] serves the same router on a TCP listener until its shutdown
//! future resolves. (Not run as a test: it serves until Ctrl-C.)
//!
//! ```no_run
//! use braid_server::{AppState, ServerConfig, serve};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let state = AppState::new(ServerConfig::default(), None);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7700").await?;
//! serve(state, listener, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await?;
//! # Ok(()) }
//! ```

mod conn;
pub mod cores;
pub mod error;
pub mod events;
pub mod guard;
pub mod mcp;
#[cfg(any(test, feature = "test-support"))]
pub mod memory;
pub mod retention;
mod routes;
mod runs;
pub mod store;
mod takeover;
mod waiter;

use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use braid_core::{AgentKinds, LoadLimits, Pipeline};
use indexmap::IndexMap;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use conn::{HttpConfig, WS_MAX_MESSAGE_BYTES};
pub use error::ApiError;
pub use retention::Retention;
pub use routes::{app, openapi_document};
pub use runs::LiveRun;
pub use store::RunStore;

use runs::RunRegistry;

/// Limits and switches of a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The bearer token every `/v1` route and stream requires; `None`
    /// leaves them open (only allowed on a loopback address).
    pub token: Option<String>,
    /// Whether pipelines registered over HTTP may contain `command` agents
    /// (which run programs on this host).
    pub allow_command_agents: bool,
    /// Largest request body (and so the largest pipeline text).
    pub max_body_bytes: usize,
    /// Most agents in one pipeline registered over HTTP, checked before
    /// it is compiled.
    pub max_agents: usize,
    /// Deepest nesting of mappings and sequences in a pipeline registered
    /// over HTTP, checked while parsing.
    pub max_depth: usize,
    /// Longest `when:` condition, in bytes.
    pub max_condition_bytes: usize,
    /// Deepest nesting of a `when:` condition's expression.
    pub max_condition_depth: usize,
    /// Most problems listed in a 422 for an invalid pipeline; the rest are
    /// summarised as "and K more".
    pub max_diagnostics: usize,
    /// How long compiling one pipeline may take; a client waiting longer
    /// gets a 422 naming `compile_budget`.
    pub compile_budget: Duration,
    /// Most pipelines compiled at once, each on a blocking thread (never on
    /// the async workers); a registration that finds no free slot within
    /// the compile budget gets a 429.
    pub max_concurrent_compiles: usize,
    /// Most pipelines registered over HTTP (those loaded by the operator
    /// do not count); beyond it a new name gets a 409.
    pub max_pipelines: usize,
    /// The agent kinds pipelines registered over HTTP may use: only
    /// `sleep`, `command` (if allowed) and `builtin` unless a library user
    /// adds more. Operator pipelines ([`AppState::preload`]) are compiled
    /// by the caller with whatever kinds it likes.
    pub kinds: AgentKinds,
    /// Most runs in flight at once (429 beyond it).
    pub max_concurrent_runs: usize,
    /// Most events kept per run. Beyond it log lines are dropped and
    /// lifecycle events coalesce (the latest per agent is kept, with a
    /// count of those it stands for); the run's final event is always kept.
    pub max_events_per_run: usize,
    /// Finished runs kept in memory (older ones are still in the store).
    pub max_finished_runs: usize,
    /// How long runs in flight may take to finish on shutdown.
    pub grace: Duration,
    /// Connection limits and which browsers' pages may call.
    pub http: HttpConfig,
    /// Prune the store in the background ([`serve`] only): `None` keeps
    /// every run.
    pub retention: Option<Retention>,
    /// Where runs execute: one current-thread runtime per core (see
    /// [`cores`]); `None` runs them on the runtime that serves the request.
    pub cores: Option<Arc<cores::Cores>>,
    /// Applied to every pipeline the server registers, the operator's and
    /// clients': e.g. `braid serve --nats` sends their agents to workers
    /// (`braid_nats::Dispatcher::remote`). An error refuses the pipeline.
    pub prepare: Option<PreparePipeline>,
    /// With a store: how often (a third of this) the server looks for runs
    /// whose lease expired, to take them over. Give the store the same
    /// lease ([`braid_store::StoreSettings::lease`]), which sets how long
    /// claims last and how often they are renewed. 15 s by default.
    pub lease: Duration,
    /// Serve the pipelines as MCP tools at `/mcp` (streamable HTTP, behind
    /// the same token; see [`mcp`]).
    pub mcp: bool,
}

/// A change made to every pipeline a server registers (see
/// [`ServerConfig::prepare`]).
#[derive(Clone)]
pub struct PreparePipeline(pub Arc<PrepareFn>);

/// What [`PreparePipeline`] calls: changes a pipeline, or says why it
/// cannot be registered.
pub type PrepareFn = dyn Fn(&mut Pipeline) -> Result<(), String> + Send + Sync;

impl std::fmt::Debug for PreparePipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PreparePipeline")
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            token: None,
            allow_command_agents: false,
            max_body_bytes: 1024 * 1024,
            max_agents: 1000,
            max_depth: 64,
            max_condition_bytes: 4 * 1024,
            max_condition_depth: 32,
            max_diagnostics: 100,
            compile_budget: Duration::from_secs(5),
            max_concurrent_compiles: 2,
            max_pipelines: 1000,
            kinds: AgentKinds::standard(),
            max_concurrent_runs: 1000,
            max_events_per_run: 10_000,
            max_finished_runs: 1000,
            grace: Duration::from_secs(30),
            http: HttpConfig::default(),
            retention: None,
            cores: None,
            prepare: None,
            lease: Duration::from_secs(15),
            mcp: false,
        }
    }
}

impl ServerConfig {
    /// The loader's limits for pipelines registered over HTTP.
    pub fn load_limits(&self) -> LoadLimits {
        LoadLimits {
            max_bytes: self.max_body_bytes,
            max_depth: self.max_depth,
            max_agents: self.max_agents,
            max_condition_bytes: self.max_condition_bytes,
            max_condition_depth: self.max_condition_depth,
            max_diagnostics: self.max_diagnostics,
            compile_budget: self.compile_budget,
            // A client's pipeline starts no MCP server over stdio unless
            // it could run `command` agents anyway.
            allow_tool_processes: self.allow_command_agents,
        }
    }
}

/// Where a pipeline the server knows came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Loaded by the operator ([`AppState::preload`], `--pipelines DIR`):
    /// clients can neither replace nor delete it.
    Operator,
    /// Registered by a client with `POST /v1/pipelines`.
    Api,
}

impl Origin {
    /// `operator` or `api`, as the API shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Operator => "operator",
            Origin::Api => "api",
        }
    }
}

/// A pipeline the server knows.
pub struct Registered {
    /// The validated pipeline.
    pub pipeline: Arc<Pipeline>,
    /// Its text as registered.
    pub source: String,
    /// Who registered it.
    pub origin: Origin,
    /// Its `explain` JSON, worked out once when it was registered (off the
    /// async workers for a client's pipeline), not on every request.
    pub explain: serde_json::Value,
}

impl Registered {
    /// `pipeline` with its text, origin and explanation.
    pub fn new(pipeline: Pipeline, source: String, origin: Origin) -> Self {
        let explain = serde_json::to_value(pipeline.explain()).unwrap_or_default();
        Self {
            pipeline: Arc::new(pipeline),
            source,
            origin,
            explain,
        }
    }
}

/// Everything the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub(crate) inner: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) config: ServerConfig,
    pub(crate) store: Option<Arc<dyn RunStore>>,
    pub(crate) pipelines: RwLock<IndexMap<String, Arc<Registered>>>,
    pub(crate) runs: RunRegistry,
    /// Compiles in flight (each holds a permit on its blocking thread).
    pub(crate) compiles: Arc<Semaphore>,
    pub(crate) metrics: metrics_exporter_prometheus::PrometheusHandle,
}

impl AppState {
    /// The pipeline registered as `name`, if any (shared, not copied).
    pub(crate) fn pipeline(&self, name: &str) -> Option<Arc<Registered>> {
        self.inner
            .pipelines
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// A server with `config`, saving runs to `store` if given (a
    /// [`braid_store::Store`], or any other [`RunStore`]).
    pub fn new(config: ServerConfig, store: Option<Arc<dyn RunStore>>) -> Self {
        let compiles = Arc::new(Semaphore::new(config.max_concurrent_compiles.max(1)));
        let runs = RunRegistry::new(&config, store.clone());
        Self {
            inner: Arc::new(Shared {
                config,
                store,
                pipelines: RwLock::new(IndexMap::new()),
                runs,
                compiles,
                metrics: metrics_handle(),
            }),
        }
    }

    /// Registers a pipeline loaded by the operator (e.g. `--pipelines DIR`):
    /// it may contain `command` agents whatever `allow_command_agents` says,
    /// and clients cannot replace or delete it. It replaces a pipeline of
    /// the same name that a client registered.
    ///
    /// # Errors
    /// When [`ServerConfig::prepare`] refuses it.
    pub fn preload(&self, mut pipeline: Pipeline, source: String) -> Result<(), String> {
        if let Some(prepare) = &self.inner.config.prepare {
            (prepare.0)(&mut pipeline)?;
        }
        let name = pipeline.name().to_owned();
        self.inner
            .pipelines
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                name,
                Arc::new(Registered::new(pipeline, source, Origin::Operator)),
            );
        Ok(())
    }

    /// Starts the server's background work on the current runtime: the
    /// task that applies waiting runs' timeouts on time (see
    /// `waiter.rs`), and the one that takes over runs whose lease expired
    /// and stops runs taken over elsewhere (`takeover.rs`). [`serve`] calls
    /// it; it ends with shutdown.
    pub fn start_background(&self) {
        if self.inner.store.is_some() {
            tokio::spawn(waiter::apply_timeouts(self.clone()));
            tokio::spawn(takeover::run(self.clone()));
        }
    }

    /// Stops taking runs and waits up to the grace period for runs in
    /// flight; then cancels the rest and marks them interrupted (in the
    /// store, resumable). Finally flushes the store.
    pub async fn shut_down(&self) {
        let shared = &self.inner;
        shared.runs.shut_down(shared.config.grace).await;
    }
}

/// Is `addr` a loopback address (127.0.0.0/8 or ::1)?
pub fn is_loopback(addr: &std::net::SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// The process-wide Prometheus recorder (installed once).
fn metrics_handle() -> metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (a library user's);
            // then /metrics shows what this one sees, which is nothing.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Serves on `listener` until `shutdown` resolves; then stops accepting,
/// lets runs finish within the grace period and flushes the store. HTTP/1.1
/// and h2c, within the limits of the config's [`HttpConfig`]. With a
/// [`Retention`] and a store, prunes the store in the background meanwhile.
pub async fn serve(
    state: AppState,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = app(state.clone());
    state.start_background();
    let stop = CancellationToken::new();
    let stopping = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopping.cancel();
    });
    let force = CancellationToken::new();
    let serving = conn::serve_connections(
        listener,
        router,
        state.inner.config.http.clone(),
        stop.clone(),
        force.clone(),
    );
    let mut server = tokio::spawn(serving);
    let pruning = match (&state.inner.config.retention, &state.inner.store) {
        (Some(retention), Some(store)) => Some(tokio::spawn(retention::run(
            store.clone(),
            retention.clone(),
            stop.child_token(),
        ))),
        _ => None,
    };
    stop.cancelled().await;
    if let Some(mut pruning) = pruning {
        // It stops after the batch in flight (one short transaction).
        if tokio::time::timeout(Duration::from_secs(10), &mut pruning)
            .await
            .is_err()
        {
            tracing::warn!("the background prune did not stop within 10 s; abandoning it");
            pruning.abort();
        }
    }
    // Open event streams end when their runs end: finish the runs first.
    state.shut_down().await;
    let finished = match tokio::time::timeout(Duration::from_secs(5), &mut server).await {
        Ok(finished) => finished,
        Err(_) => {
            tracing::warn!("connections still open 5 s after the last run; closing them");
            force.cancel();
            server.await
        }
    };
    finished.map_err(|join| std::io::Error::other(format!("the server task failed: {join}")))
}
