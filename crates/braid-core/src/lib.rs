//! The braid engine: multi-agent pipelines run as fast as their data
//! dependencies allow.
//!
//! A [`Pipeline`] is loaded and validated once ([`Pipeline::from_file`]); its
//! agents declare the state fields they `reads` and `writes`, and the
//! dependency graph is derived from that. [`Pipeline::run`] then starts every
//! agent the moment its inputs are ready — no level or superstep barrier —
//! handing it a cheap snapshot of only the fields it reads and merging back
//! only what it wrote.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use braid_core::{Pipeline, RunOptions};
//!
//! let pipeline = Pipeline::from_yaml_str(r#"
//! pipeline: fan-out
//! agents:
//!   triage:  { kind: sleep, ms: 10, writes: [route] }
//!   data:    { kind: sleep, ms: 10, reads: [route], writes: [data] }
//!   metrics: { kind: sleep, ms: 10, reads: [route], writes: [metrics] }
//!   report:  { kind: sleep, ms: 10, reads: [data, metrics], writes: [report] }
//! "#).unwrap();
//! let input = pipeline.check_input(&serde_json::json!({})).unwrap();
//! let report = pipeline.run(input, RunOptions::default()).await;
//! assert!(report.status.is_success());
//! assert_eq!(*report.state["report"], serde_json::json!(true));
//! # }
//! ```
//!
//! This crate knows nothing of HTTP, SQL or terminals: stores, servers and
//! the CLI build on it.

pub mod agent;
pub mod backoff;
pub mod builder;
pub mod checkpoint;
mod compile;
mod condition;
pub mod definition;
pub mod depth;
pub mod diagnostic;
pub mod event;
pub mod explain;
pub mod graph;
pub mod input;
pub mod kinds;
pub mod limits;
pub mod merge;
pub mod pipeline;
pub mod report;
pub mod run;
pub mod scenarios;
mod spec;
mod state;
mod telemetry;

pub use builder::PipelineBuilder;
pub use checkpoint::{CheckpointPolicy, Checkpointer, ResumePoint};
pub use condition::{Condition, ConditionError};
pub use diagnostic::{Diagnostic, LoadError, Location};
pub use input::{InputError, ValidInput};
pub use kinds::{AgentConfig, AgentKind, AgentKinds};
pub use limits::LoadLimits;
pub use pipeline::{AgentDef, FailurePolicy, Pipeline, RetryPolicy};
pub use report::{AgentReport, AgentStatus, RunReport, RunStatus, TokenUsage};
pub use run::RunOptions;
