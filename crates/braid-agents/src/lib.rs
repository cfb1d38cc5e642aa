//! Agent kinds that reach the network, kept out of the engine core.
//!
//! [`kinds`] returns the standard kinds plus `http` (any JSON service) and
//! `llm` (any OpenAI-compatible chat endpoint); [`register`] adds those two
//! to an [`AgentKinds`] you already have. Every HTTP agent of the process
//! shares one client ([`client`]): connections are pooled per host and
//! kept alive, never opened per call, within the limits of
//! [`ClientSettings`].
//!
//! # A tour
//!
//! | Item | What it is |
//! |---|---|
//! | [`kinds`], [`register`] | The kinds to load pipelines with. |
//! | [`http`] | `kind: http`: POSTs the agent's reads as JSON, takes a JSON object of writes back; retries, timeouts and a response size limit. |
//! | [`llm`] | `kind: llm`: a chat completion, text or JSON (checked against a schema), with token usage, streamed output, and the tool-calling loop over the agent's `tools:`. |
//! | [`client`], [`ClientSettings`] | The process-wide pooled client and its limits. |
//!
//! # Loading a pipeline with `http` agents
//!
//! Agents are built when the pipeline loads, so a bad setting (a missing
//! `url`, an unknown key, a header naming an unset environment variable)
//! is a load error with the agent's position; nothing is sent until it
//! runs.
//!
//! ```
//! use braid_agents::kinds;
//! use braid_core::Pipeline;
//!
//! let pipeline = Pipeline::from_yaml_str_with(r#"
//! pipeline: scoring
//! inputs: { request: { type: string } }
//! agents:
//!   score:
//!     kind: http
//!     url: https://scoring.example/v1/score   # POSTed {"agent", "run_id", "attempt", "state"}
//!     http_retries: 3                          # connect errors, 429 and 5xx
//!     timeout: 10s
//!     reads: [request]
//!     writes: [score]                          # from the JSON object it answers with
//! "#, &kinds()).unwrap();
//! assert_eq!(pipeline.agents()[0].kind().name(), "http");
//!
//! let err = Pipeline::from_yaml_str_with(
//!     "pipeline: p\nagents:\n  score: { kind: http, writes: [score] }\n",
//!     &kinds(),
//! ).unwrap_err();
//! assert!(err.to_string().contains("needs `url"), "{err}");
//! ```
//!
//! Header values may take secrets from the environment at load time
//! (`headers: { Authorization: "Bearer ${SCORING_TOKEN}" }`), so they never
//! live in pipeline files.
//!
//! # Adding the kinds to your own
//!
//! [`register`] adds `http` and `llm` to kinds that already hold your
//! builtin agents or kinds; here an `http` agent calls a service on the
//! loopback address and a Rust agent uses what it answered.
//!
//! ```
//! use axum::{Json, Router, routing::post};
//! use braid_core::agent::{AgentError, Writes};
//! use braid_core::{AgentKinds, Pipeline, RunOptions};
//! use serde_json::{Value, json};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A scoring service: it gets the agent's reads under "state", and
//! // answers with the fields the agent writes.
//! let service = Router::new().route("/score", post(|Json(call): Json<Value>| async move {
//!     let length = call["state"]["request"].as_str().unwrap_or("").len();
//!     Json(json!({ "score": length }))
//! }));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let url = format!("http://{}/score", listener.local_addr()?);
//! tokio::spawn(async move { axum::serve(listener, service).await });
//!
//! let mut kinds = AgentKinds::standard();
//! kinds.builtin_fn("verdict", |reads| async move {
//!     let score = reads.get("score").and_then(Value::as_u64).unwrap_or(0);
//!     let verdict = if score > 10 { "long" } else { "short" };
//!     Ok::<_, AgentError>(Writes::from_iter([("verdict".to_owned(), json!(verdict))]))
//! });
//! braid_agents::register(&mut kinds);
//!
//! let pipeline = Pipeline::from_yaml_str_with(&format!(r#"
//! pipeline: scoring
//! inputs: {{ request: {{ type: string }} }}
//! agents:
//!   score:   {{ kind: http, url: "{url}", reads: [request], writes: [score] }}
//!   verdict: {{ kind: builtin, function: verdict, reads: [score], writes: [verdict] }}
//! "#), &kinds)?;
//! let input = pipeline.check_input(&json!({"request": "cut our LLM spend"}))?;
//! let report = pipeline.run(input, RunOptions::default()).await;
//! assert!(report.status.is_success(), "{:?}", report.error);
//! assert_eq!(*report.state["score"], json!(17));
//! assert_eq!(*report.state["verdict"], json!("long"));
//! # Ok(()) }
//! ```

pub mod http;
pub mod llm;
pub mod mcp;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use braid_core::AgentKinds;

/// The standard kinds plus `http` and `llm`.
pub fn kinds() -> AgentKinds {
    let mut kinds = AgentKinds::standard();
    register(&mut kinds);
    kinds
}

/// Adds `http` and `llm` to `kinds`, and the `mcp` tool source.
pub fn register(kinds: &mut AgentKinds) {
    kinds.kind("http", Arc::new(http::build));
    kinds.kind("llm", Arc::new(llm::build));
    kinds.tool_source("mcp", mcp::source());
}

/// The keys of `http` and `llm` agents, for the pipeline file's JSON
/// Schema ([`braid_core::schema::pipeline_schema_with`]).
pub fn kind_schemas() -> Vec<braid_core::schema::KindSchema> {
    vec![http::schema(), llm::schema()]
}

/// Limits of the process-wide HTTP client.
#[derive(Debug, Clone, Copy)]
pub struct ClientSettings {
    /// Idle keep-alive connections kept per host.
    pub max_idle_per_host: usize,
    /// Idle connections are closed after this long.
    pub idle_timeout: Duration,
    /// Longest wait to establish a connection.
    pub connect_timeout: Duration,
    /// Most requests in flight to one host. HTTP/1.1 carries one request per
    /// connection at a time, so this also bounds the connections in use; the
    /// pool takes a connection back a moment after its response is read, so
    /// a request starting in that moment may open one more.
    pub max_connections_per_host: usize,
}

impl Default for ClientSettings {
    fn default() -> Self {
        Self {
            max_idle_per_host: 64,
            idle_timeout: Duration::from_secs(90),
            connect_timeout: Duration::from_secs(5),
            max_connections_per_host: 32,
        }
    }
}

/// The one HTTP client every agent of this process shares (built on first
/// use with [`ClientSettings::default`]).
pub fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        install_tls_provider();
        let settings = ClientSettings::default();
        reqwest::Client::builder()
            .pool_max_idle_per_host(settings.max_idle_per_host)
            .pool_idle_timeout(settings.idle_timeout)
            .connect_timeout(settings.connect_timeout)
            .tcp_nodelay(true)
            // Counts the connections the pool opens: with requests and
            // in-flight, it shows how well connections are reused.
            .connector_layer(tower::util::MapResponseLayer::new(|connection| {
                metrics::counter!("braid_http_connections_opened_total").increment(1);
                connection
            }))
            .user_agent(concat!("braid/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the HTTP client's settings are valid")
    })
}

/// Makes rustls's `ring` provider the process default, for HTTPS clients
/// built with reqwest's `rustls-no-provider` (ours, and the OTLP exporter's
/// in `braid-cli`). A provider another part of the program installed first
/// is kept.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A request's slot on its host (see
/// [`ClientSettings::max_connections_per_host`]). Releasing it (dropping)
/// updates `braid_http_in_flight`.
pub(crate) struct HostSlot {
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    semaphore: Arc<tokio::sync::Semaphore>,
    host: String,
}

impl HostSlot {
    fn report_in_flight(&self) {
        let limit = ClientSettings::default().max_connections_per_host;
        metrics::gauge!("braid_http_in_flight", "host" => self.host.clone())
            .set(limit.saturating_sub(self.semaphore.available_permits()) as f64);
    }
}

impl Drop for HostSlot {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.report_in_flight();
    }
}

/// Waits for a slot to send one request to `host`.
pub(crate) async fn host_slot(host: &str) -> HostSlot {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static HOSTS: OnceLock<Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>> = OnceLock::new();
    let semaphore = HOSTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(host.to_owned())
        .or_insert_with(|| {
            Arc::new(tokio::sync::Semaphore::new(
                ClientSettings::default().max_connections_per_host,
            ))
        })
        .clone();
    if semaphore.available_permits() == 0 {
        metrics::counter!("braid_http_pool_waits_total").increment(1);
    }
    let permit = semaphore
        .clone()
        .acquire_owned()
        .await
        .expect("host semaphores are never closed");
    metrics::counter!("braid_http_requests_total").increment(1);
    let slot = HostSlot {
        permit: Some(permit),
        semaphore,
        host: host.to_owned(),
    };
    slot.report_in_flight();
    slot
}
