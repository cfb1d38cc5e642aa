//! Building a pipeline in Rust, without a file.
//!
//! The builder writes the same document a pipeline file holds and loads it
//! through the same validation, so a pipeline built in code is checked
//! exactly as a file is (cycles, races, unresolved reads…).
//!
//! ```
//! use braid_core::{Pipeline, RunOptions};
//! use braid_core::agent::{AgentError, Writes};
//!
//! let mut builder = Pipeline::builder("greeting");
//! builder.input("name", serde_json::json!({"type": "string"}));
//! builder
//!     .agent_fn("greet", |reads| async move {
//!         let name = reads.get("name").and_then(|v| v.as_str()).unwrap_or("you");
//!         let mut out = Writes::new();
//!         out.insert("greeting".into(), format!("hello, {name}").into());
//!         Ok::<_, AgentError>(out)
//!     })
//!     .reads(["name"])
//!     .writes(["greeting"]);
//! let pipeline = builder.build().unwrap();
//! # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
//! # rt.block_on(async {
//! let input = pipeline.check_input(&serde_json::json!({"name": "Ada"})).unwrap();
//! let report = pipeline.run(input, RunOptions::default()).await;
//! assert_eq!(*report.state["greeting"], serde_json::json!("hello, Ada"));
//! # });
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::agent::{Agent, AgentError, Reads, Writes};
use crate::diagnostic::LoadError;
use crate::kinds::AgentKinds;
use crate::pipeline::Pipeline;

/// Builds a [`Pipeline`] from Rust agents. See the [module docs](self).
#[derive(Debug)]
pub struct PipelineBuilder {
    document: Map<String, Value>,
    agents: Map<String, Value>,
    kinds: AgentKinds,
}

/// One agent being added; its methods set what a file's keys would.
#[derive(Debug)]
pub struct AgentBuilder<'b> {
    entry: &'b mut Map<String, Value>,
}

impl Pipeline {
    /// Starts building a pipeline named `name` in code.
    pub fn builder(name: &str) -> PipelineBuilder {
        let mut document = Map::new();
        document.insert("pipeline".into(), json!(name));
        PipelineBuilder {
            document,
            agents: Map::new(),
            kinds: AgentKinds::standard(),
        }
    }
}

impl PipelineBuilder {
    /// Declares an input field with its JSON Schema.
    pub fn input(&mut self, field: &str, schema: Value) -> &mut Self {
        self.document
            .entry("inputs")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("inputs is an object")
            .insert(field.into(), schema);
        self
    }

    /// Sets the most agents in flight in one run.
    pub fn concurrency(&mut self, limit: usize) -> &mut Self {
        self.document.insert("concurrency".into(), json!(limit));
        self
    }

    /// Sets a field's merge rule (`append`, `merge`, `sum`, `max`, `min`).
    pub fn merge(&mut self, field: &str, rule: &str) -> &mut Self {
        self.document
            .entry("fields")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("fields is an object")
            .insert(field.into(), json!({ "merge": rule }));
        self
    }

    /// Adds a Rust agent.
    pub fn agent(&mut self, name: &str, agent: Arc<dyn Agent>) -> AgentBuilder<'_> {
        self.kinds.builtin(name, agent);
        self.entry(name, json!({"kind": "builtin", "function": name}))
    }

    /// Adds an `async fn(Reads) -> Result<Writes, AgentError>` as an agent.
    pub fn agent_fn<F, Fut>(&mut self, name: &str, f: F) -> AgentBuilder<'_>
    where
        F: Fn(Reads) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Writes, AgentError>> + Send + 'static,
    {
        self.kinds.builtin_fn(name, f);
        self.entry(name, json!({"kind": "builtin", "function": name}))
    }

    /// Adds an agent of any kind, with its settings as a file would give
    /// them (e.g. `json!({"kind": "sleep", "ms": 50})`).
    pub fn agent_spec(&mut self, name: &str, spec: Value) -> AgentBuilder<'_> {
        self.entry(name, spec)
    }

    /// Makes extra kinds and builtin agents available to the pipeline.
    pub fn kinds(&mut self, kinds: AgentKinds) -> &mut Self {
        self.kinds = kinds;
        self
    }

    fn entry(&mut self, name: &str, spec: Value) -> AgentBuilder<'_> {
        self.agents.insert(name.into(), spec);
        let entry = self
            .agents
            .get_mut(name)
            .and_then(Value::as_object_mut)
            .expect("an agent is an object");
        AgentBuilder { entry }
    }

    /// Validates and builds the pipeline, exactly as a file is loaded.
    pub fn build(&self) -> Result<Pipeline, LoadError> {
        let mut document = self.document.clone();
        document.insert("agents".into(), Value::Object(self.agents.clone()));
        let text = serde_json::to_string_pretty(&Value::Object(document))
            .expect("a JSON document serializes");
        Pipeline::from_yaml_str_with(&text, &self.kinds)
    }
}

impl AgentBuilder<'_> {
    fn list<I, S>(self, key: &str, items: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let items: Vec<Value> = items.into_iter().map(|s| Value::String(s.into())).collect();
        self.entry.insert(key.into(), Value::Array(items));
        self
    }

    /// The fields it reads (a trailing `?` marks an optional read).
    pub fn reads<I: IntoIterator<Item = S>, S: Into<String>>(self, fields: I) -> Self {
        self.list("reads", fields)
    }

    /// The fields it writes.
    pub fn writes<I: IntoIterator<Item = S>, S: Into<String>>(self, fields: I) -> Self {
        self.list("writes", fields)
    }

    /// Agents it runs after, where no data flows.
    pub fn after<I: IntoIterator<Item = S>, S: Into<String>>(self, agents: I) -> Self {
        self.list("after", agents)
    }

    /// A CEL condition; false skips the agent.
    pub fn when(self, condition: &str) -> Self {
        self.entry.insert("when".into(), json!(condition));
        self
    }

    /// Longest one attempt may take.
    pub fn timeout(self, limit: Duration) -> Self {
        self.entry
            .insert("timeout".into(), json!(format!("{}ms", limit.as_millis())));
        self
    }

    /// Retries after a failed attempt, with exponential backoff from `backoff`.
    pub fn retries(self, retries: u32, backoff: Duration) -> Self {
        self.entry.insert("retries".into(), json!(retries));
        self.entry.insert(
            "backoff".into(),
            json!(format!("{}ms", backoff.as_millis())),
        );
        self
    }
}
