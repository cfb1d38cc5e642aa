//! The braid engine: multi-agent pipelines run as fast as their data
//! dependencies allow.
//!
//! A [`Pipeline`] is loaded and validated once, from YAML or built in code;
//! its agents declare the state fields they `reads` and `writes`, and the
//! dependency graph is derived from that. [`Pipeline::run`] then starts
//! every agent the moment its inputs are ready — no level or superstep
//! barrier — handing it a cheap snapshot of only the fields it reads and
//! merging back only what it wrote.
//!
//! This crate knows nothing of HTTP, SQL or terminals: `braid-store`
//! (durable runs), `braid-agents` (the `http` and `llm` kinds),
//! `braid-server` (the HTTP API) and the `braid` CLI build on it.
//!
//! # A tour
//!
//! | Type | What it is |
//! |---|---|
//! | [`Pipeline`] | A validated pipeline and its [dependency graph](graph::DependencyGraph); run it any number of times, concurrently too. |
//! | [`LoadError`], [`Diagnostic`] | Why a pipeline did not load: every problem, with its line and column. |
//! | [`PipelineBuilder`] | A pipeline built in code ([`Pipeline::builder`]), validated exactly like a file. |
//! | [`ValidInput`], [`InputError`] | A run's input, checked once against the pipeline's `inputs` ([`Pipeline::check_input`]). |
//! | [`RunOptions`] | One run's id, concurrency, cancellation, events, checkpoints and resume point. |
//! | [`RunReport`], [`RunStatus`], [`AgentReport`] | How a run ended: its final state, and each agent's status, timing and attempts. |
//! | [`event::EventSink`], [`event::EventReceiver`] | Live progress events, built only when a run asks for them. |
//! | [`Checkpointer`], [`ResumePoint`] | Where a run's records go, and where a resumed run starts. |
//! | [`AgentCache`], [`CachePolicy`] | Where cached agents' results live (`cache:`), and how long each is reused. |
//! | [`AgentKinds`], [`agent::Agent`] | The kinds a pipeline may use, and Rust agents of your own. |
//! | [`explain::Explanation`] | The derived graph, its critical path and the speedup to expect ([`Pipeline::explain`]). |
//!
//! Each section below shows one entry point with an example that runs.
//!
//! # Loading a pipeline
//!
//! [`Pipeline::from_yaml_str`] loads a pipeline from text and
//! [`Pipeline::from_file`] from a YAML or JSON file (whose folder command
//! agents run from). The `_with` variants take the [`AgentKinds`] the
//! pipeline may use, the `_limited` ones [`LoadLimits`] for untrusted text.
//!
//! ```
//! use braid_core::Pipeline;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("fan-out.yaml");
//! std::fs::write(&path, r#"
//! pipeline: fan-out
//! agents:
//!   triage:  { kind: sleep, ms: 10, writes: [route] }
//!   data:    { kind: sleep, ms: 40, reads: [route], writes: [data] }
//!   metrics: { kind: sleep, ms: 30, reads: [route], writes: [metrics] }
//!   report:  { kind: sleep, ms: 10, reads: [data, metrics], writes: [report] }
//! "#)?;
//!
//! let pipeline = Pipeline::from_file(&path)?;
//! assert_eq!(pipeline.name(), "fan-out");
//! assert_eq!(pipeline.agent_names().collect::<Vec<_>>(), ["triage", "data", "metrics", "report"]);
//! # Ok(()) }
//! ```
//!
//! A pipeline that does not load yields a [`LoadError`] holding every
//! problem found, each a [`Diagnostic`] with the [`Location`] of the key or
//! value at fault; its `Display` lists them all, as `braid validate` does.
//!
//! ```
//! use braid_core::{LoadError, Pipeline};
//!
//! let err = Pipeline::from_yaml_str(r#"
//! pipeline: broken
//! agents:
//!   a: { kind: sleep, ms: 1, writes: [x] }
//!   b: { kind: sleep, ms: 1, reads: [y], writes: [z] }
//! "#).unwrap_err();
//! assert!(matches!(err, LoadError::Invalid { .. }));
//! let problems = err.diagnostics();
//! assert_eq!(problems.len(), 1);
//! assert_eq!(problems[0].location.as_ref().map(|at| at.line), Some(5));
//! assert!(problems[0].message.contains("`y`"), "{}", problems[0]);
//! ```
//!
//! # Building a pipeline in code
//!
//! [`Pipeline::builder`] takes Rust agents directly: an [`agent::Agent`]
//! value ([`PipelineBuilder::agent`]) or an async function of the agent's
//! [`Reads`](agent::Reads) ([`PipelineBuilder::agent_fn`]). `build` checks
//! it exactly as a file is checked.
//!
//! ```
//! use braid_core::Pipeline;
//! use braid_core::agent::{AgentError, Writes};
//! use serde_json::json;
//!
//! # fn main() -> Result<(), braid_core::LoadError> {
//! let mut builder = Pipeline::builder("greeting");
//! builder.input("name", json!({"type": "string"}));
//! builder
//!     .agent_fn("greet", |reads| async move {
//!         let name = reads.get("name").and_then(|v| v.as_str()).unwrap_or("world");
//!         let mut out = Writes::new();
//!         out.insert("greeting".into(), json!(format!("hello, {name}")));
//!         Ok::<_, AgentError>(out)
//!     })
//!     .reads(["name"])
//!     .writes(["greeting"]);
//! let pipeline = builder.build()?;
//! assert_eq!(pipeline.input_names().collect::<Vec<_>>(), ["name"]);
//! # Ok(()) }
//! ```
//!
//! # Checking a run's input
//!
//! A run takes a [`ValidInput`], which only [`Pipeline::check_input`]
//! makes: the input is checked once against the pipeline's `inputs` (JSON
//! Schema per field), defaults are filled in, and the run trusts it. An
//! [`InputError`] lists every problem.
//!
//! ```
//! use braid_core::Pipeline;
//! use serde_json::json;
//!
//! let pipeline = Pipeline::from_yaml_str(r#"
//! pipeline: sized
//! inputs:
//!   size: { type: integer, minimum: 1 }
//! agents:
//!   a: { kind: sleep, ms: 1, reads: [size], writes: [done] }
//! "#).unwrap();
//!
//! let input = pipeline.check_input(&json!({"size": 3}));
//! assert!(input.is_ok());
//!
//! let err = pipeline.check_input(&json!({"size": 0, "colour": "red"})).unwrap_err();
//! assert_eq!(err.problems.len(), 2, "{err}");
//! ```
//!
//! # Running
//!
//! [`Pipeline::run`] runs once with a checked input and [`RunOptions`]. It
//! never fails as a whole: agent failures, skips and cancellation are in
//! the [`RunReport`], with the final state and each agent's
//! [`AgentReport`].
//!
//! ```
//! use braid_core::{AgentStatus, Pipeline, RunOptions, RunStatus};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pipeline = Pipeline::from_yaml_str(r#"
//! pipeline: fan-out
//! agents:
//!   triage:  { kind: sleep, ms: 10, writes: [route] }
//!   data:    { kind: sleep, ms: 10, reads: [route], writes: [data] }
//!   metrics: { kind: sleep, ms: 10, reads: [route], writes: [metrics] }
//!   report:  { kind: sleep, ms: 10, reads: [data, metrics], writes: [report] }
//! "#)?;
//! let input = pipeline.check_input(&serde_json::json!({}))?;
//! let options = RunOptions { run_id: Some("run-1".into()), ..RunOptions::default() };
//! let report = pipeline.run(input, options).await;
//!
//! assert_eq!(report.run_id, "run-1");
//! assert_eq!(report.status, RunStatus::Completed);
//! assert_eq!(report.agents["data"].status, AgentStatus::Completed);
//! assert_eq!(*report.state["report"], serde_json::json!(true));
//! // `data` and `metrics` ran side by side: about 30 ms, not 40.
//! println!("{} in {:.1} ms", report.status, report.makespan_ms);
//! # Ok(()) }
//! ```
//!
//! Cancelling [`RunOptions::cancel`] stops a run (it ends
//! [`RunStatus::Cancelled`]); so does dropping its future.
//!
//! # Events
//!
//! Progress events are built only for a run that asks for them with an
//! [`EventSink`](event::EventSink); its [`EventReceiver`](event::EventReceiver)
//! yields them in order and ends when the run does. A run without a sink
//! builds no event at all.
//!
//! ```
//! use braid_core::event::{EventKind, EventLevel, EventSink};
//! use braid_core::{Pipeline, RunOptions};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pipeline = Pipeline::from_yaml_str(
//!     "pipeline: p\nagents:\n  a: { kind: sleep, ms: 1, writes: [x] }\n",
//! )?;
//! let (sink, mut receiver) = EventSink::channel(EventLevel::Summary);
//! let options = RunOptions { events: Some(sink), ..RunOptions::default() };
//! let run = pipeline.run(pipeline.check_input(&serde_json::json!({}))?, options);
//! let watch = async {
//!     let mut completed = Vec::new();
//!     while let Some(event) = receiver.recv().await {
//!         if let EventKind::AgentCompleted { agent, .. } = event.kind {
//!             completed.push(agent.to_string());
//!         }
//!     }
//!     completed
//! };
//! let (report, completed) = tokio::join!(run, watch);
//! assert!(report.status.is_success());
//! assert_eq!(completed, ["a"]);
//! # Ok(()) }
//! ```
//!
//! # Checkpoints and resume
//!
//! A run hands its records to the [`Checkpointer`] in
//! [`RunOptions::checkpointer`] (`braid-store` is one) as the
//! [`CheckpointPolicy`] says. A later run with the same id and a
//! [`ResumePoint`] built from those records reuses what completed (when the
//! agent's definition, and every upstream one, is unchanged) and runs the
//! rest.
//!
//! ```
//! use std::sync::atomic::{AtomicBool, Ordering};
//! use std::sync::{Arc, Mutex};
//!
//! use braid_core::agent::{AgentError, Writes};
//! use braid_core::checkpoint::{AgentRecord, RunRecord};
//! use braid_core::{
//!     AgentKinds, CheckpointPolicy, Checkpointer, Pipeline, ResumePoint, RunOptions, RunReport,
//!     RunStatus,
//! };
//!
//! /// Keeps each finished agent's record in memory; a store would queue it
//! /// for its database (checkpointers must not block).
//! #[derive(Default)]
//! struct Records(Mutex<Vec<AgentRecord>>);
//!
//! impl Checkpointer for Records {
//!     fn run_started(&self, _run: &RunRecord) {}
//!     fn agent_finished(&self, _run: &RunRecord, agent: &AgentRecord) {
//!         self.0.lock().unwrap().push(agent.clone());
//!     }
//!     fn run_finished(&self, _run: &RunRecord, _report: &RunReport, _agents: &[AgentRecord]) {}
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // `publish` fails the first time it is called, and works after that.
//! let failed_once = Arc::new(AtomicBool::new(false));
//! let mut kinds = AgentKinds::standard();
//! kinds.builtin_fn("publish", move |_reads| {
//!     let first = !failed_once.swap(true, Ordering::SeqCst);
//!     async move {
//!         if first {
//!             return Err(AgentError::Other("the service is down".into()));
//!         }
//!         let mut out = Writes::new();
//!         out.insert("published".into(), true.into());
//!         Ok(out)
//!     }
//! });
//! let pipeline = Pipeline::from_yaml_str_with(r#"
//! pipeline: publish
//! agents:
//!   draft:   { kind: sleep, ms: 1, writes: [text] }
//!   publish: { kind: builtin, function: publish, reads: [text], writes: [published] }
//! "#, &kinds)?;
//!
//! let records = Arc::new(Records::default());
//! let first = pipeline
//!     .run(pipeline.check_input(&serde_json::json!({}))?, RunOptions {
//!         checkpointer: Some(records.clone()),
//!         checkpoint: Some(CheckpointPolicy::Agent),
//!         ..RunOptions::default()
//!     })
//!     .await;
//! assert_eq!(first.status, RunStatus::Failed);
//!
//! // Resume it: `draft` completed, so only `publish` runs again.
//! let done = std::mem::take(&mut *records.0.lock().unwrap());
//! let resumed = pipeline
//!     .run(pipeline.check_input(&serde_json::json!({}))?, RunOptions {
//!         run_id: Some(first.run_id.clone()),
//!         resume: Some(ResumePoint { agents: done }),
//!         ..RunOptions::default()
//!     })
//!     .await;
//! assert_eq!(resumed.status, RunStatus::Completed);
//! assert!(resumed.agents["draft"].resumed);
//! assert!(!resumed.agents["publish"].resumed);
//! # Ok(()) }
//! ```
//!
//! # Agents of your own
//!
//! [`AgentKinds::standard`] knows `sleep`, `command` and `builtin`. Add a
//! Rust agent by name with [`AgentKinds::builtin_fn`] (or
//! [`AgentKinds::builtin`] for an [`agent::Agent`] value) and call it as
//! `kind: builtin, function: NAME`:
//!
//! ```
//! use braid_core::agent::{AgentError, Writes};
//! use braid_core::{AgentKinds, Pipeline, RunOptions};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut kinds = AgentKinds::standard();
//! kinds.builtin_fn("shout", |reads| async move {
//!     let text = reads.get("text").and_then(|v| v.as_str()).unwrap_or("");
//!     let mut out = Writes::new();
//!     out.insert("loud".into(), text.to_uppercase().into());
//!     Ok::<_, AgentError>(out)
//! });
//! let pipeline = Pipeline::from_yaml_str_with(r#"
//! pipeline: shout
//! inputs: { text: { type: string } }
//! agents:
//!   a: { kind: builtin, function: shout, reads: [text], writes: [loud] }
//! "#, &kinds)?;
//! let input = pipeline.check_input(&serde_json::json!({"text": "hi"}))?;
//! let report = pipeline.run(input, RunOptions::default()).await;
//! assert_eq!(*report.state["loud"], serde_json::json!("HI"));
//! # Ok(()) }
//! ```
//!
//! A whole new kind, with settings of its own, is a factory registered with
//! [`AgentKinds::kind`]: it gets each agent's [`AgentConfig`] at load time
//! and builds an [`agent::Agent`], or says what is wrong with the settings
//! (the loader reports that with the agent's name and position).
//! `braid-agents` adds `http` and `llm` this way.
//!
//! ```
//! use std::sync::Arc;
//!
//! use braid_core::agent::{Agent, AgentError, AgentInput, Writes};
//! use braid_core::{AgentConfig, AgentKinds, Pipeline};
//! use serde_json::Value;
//!
//! /// `kind: constant`: writes its `result` setting to each field it writes.
//! struct Constant {
//!     value: Value,
//!     writes: Vec<String>,
//! }
//!
//! #[async_trait::async_trait]
//! impl Agent for Constant {
//!     async fn call(&self, _input: &AgentInput) -> Result<Writes, AgentError> {
//!         Ok(self.writes.iter().map(|f| (f.clone(), self.value.clone())).collect())
//!     }
//! }
//!
//! let mut kinds = AgentKinds::standard();
//! kinds.kind("constant", Arc::new(|config: &AgentConfig<'_>| -> Result<Arc<dyn Agent>, String> {
//!     let value = config.settings.get("result").cloned().ok_or("`constant` needs a `result`")?;
//!     Ok(Arc::new(Constant { value, writes: config.writes.clone() }))
//! }));
//!
//! let yaml = "pipeline: p\nagents:\n  seed: { kind: constant, result: 42, writes: [n] }\n";
//! assert!(Pipeline::from_yaml_str_with(yaml, &kinds).is_ok());
//!
//! let yaml = "pipeline: p\nagents:\n  seed: { kind: constant, writes: [n] }\n";
//! let err = Pipeline::from_yaml_str_with(yaml, &kinds).unwrap_err();
//! assert!(err.to_string().contains("`constant` needs a `result`"), "{err}");
//! ```
//!
//! # Explaining a pipeline
//!
//! [`Pipeline::explain`] shows the derived graph without running anything:
//! its edges, stages, critical path and, when every agent's duration is
//! known (`sleep`'s `ms`, or an agent's `expected`), the speedup over
//! running one agent at a time. It renders as text, DOT or Mermaid, and
//! serialises to JSON.
//!
//! ```
//! use braid_core::Pipeline;
//!
//! let pipeline = Pipeline::from_yaml_str(r#"
//! pipeline: fan-out
//! agents:
//!   triage:  { kind: sleep, ms: 10, writes: [route] }
//!   data:    { kind: sleep, ms: 40, reads: [route], writes: [data] }
//!   metrics: { kind: sleep, ms: 30, reads: [route], writes: [metrics] }
//!   report:  { kind: sleep, ms: 10, reads: [data, metrics], writes: [report] }
//! "#).unwrap();
//! let plan = pipeline.explain();
//! assert_eq!(plan.stages, [vec!["triage"], vec!["data", "metrics"], vec!["report"]]);
//! assert_eq!(plan.critical_path, ["triage", "data", "report"]);
//! assert_eq!(plan.sequential_ms, Some(90.0));
//! assert_eq!(plan.parallel_ms, Some(60.0));
//! println!("{}", plan.to_text());
//! ```

pub mod agent;
pub mod answer;
pub mod backoff;
pub mod builder;
pub mod cache;
pub mod checkpoint;
mod compile;
mod condition;
pub mod definition;
pub mod depth;
pub mod diagnostic;
pub mod event;
pub mod explain;
pub mod fork;
pub mod graph;
pub mod input;
pub mod kinds;
pub mod limits;
pub mod merge;
pub mod pipeline;
pub mod report;
pub mod run;
pub mod scenarios;
pub mod schema;
pub mod snapshot;
mod spec;
mod state;
mod telemetry;
pub use agent::tool;

pub use builder::PipelineBuilder;
pub use cache::{AgentCache, CachePolicy};
pub use checkpoint::{CheckpointPolicy, Checkpointer, ResumePoint};
pub use condition::{Condition, ConditionError};
pub use diagnostic::{Diagnostic, LoadError, Location};
pub use input::{InputError, ValidInput};
pub use kinds::{AgentConfig, AgentKind, AgentKinds};
pub use limits::LoadLimits;
pub use pipeline::{
    AgentDef, AnswerError, CodeAgent, FailurePolicy, InputSpec, ItemFailure, Pipeline, RetryPolicy,
};
pub use report::{AgentReport, AgentStatus, ItemCounts, RunReport, RunStatus, TokenUsage};
pub use run::RunOptions;
pub use schema::pipeline_schema;
