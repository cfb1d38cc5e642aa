//! The agent kinds a pipeline may use, and the Rust agents it may call.
//!
//! [`AgentKinds::standard`] knows `sleep` and `command`. Library users add
//! their own Rust agents by name ([`AgentKinds::builtin`], used as
//! `kind: builtin, function: NAME`), and crates outside the core add whole
//! kinds ([`AgentKinds::kind`]; `braid-agents` adds `http` and `llm` this
//! way), so the core stays free of HTTP and SQL.
//!
//! ```
//! use braid_core::{AgentKinds, Pipeline, RunOptions};
//! use braid_core::agent::{AgentError, Writes};
//!
//! let mut kinds = AgentKinds::standard();
//! kinds.builtin_fn("shout", |reads| async move {
//!     let text = reads.get("text").and_then(|v| v.as_str()).unwrap_or("").to_uppercase();
//!     let mut out = Writes::new();
//!     out.insert("loud".into(), text.into());
//!     Ok::<_, AgentError>(out)
//! });
//! let pipeline = Pipeline::from_yaml_str_with(
//!     "pipeline: p\ninputs: { text: { type: string } }\nagents:\n  a: { kind: builtin, function: shout, reads: [text], writes: [loud] }\n",
//!     &kinds,
//! ).unwrap();
//! # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
//! # rt.block_on(async {
//! let input = pipeline.check_input(&serde_json::json!({"text": "hi"})).unwrap();
//! let report = pipeline.run(input, RunOptions::default()).await;
//! assert_eq!(*report.state["loud"], serde_json::json!("HI"));
//! # });
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::agent::{Agent, AgentError, AgentInput, Reads, Writes};

/// What a kind's factory gets to build one agent.
#[derive(Debug)]
pub struct AgentConfig<'a> {
    /// The agent's name.
    pub name: &'a str,
    /// The kind, as written.
    pub kind: &'a str,
    /// The agent's own keys (all but the common ones: reads, writes, when…).
    pub settings: &'a Map<String, Value>,
    /// The pipeline file's folder (or the current directory).
    pub dir: &'a Path,
    /// The fields it reads (optional ones end in `?`).
    pub reads: Vec<String>,
    /// The fields it writes.
    pub writes: Vec<String>,
}

/// Builds an agent of one kind from its settings, or says what is wrong
/// with them (the message is shown with the agent's name and position).
pub type KindFactory =
    Arc<dyn Fn(&AgentConfig<'_>) -> Result<Arc<dyn Agent>, String> + Send + Sync>;

/// The kinds and builtin agents a pipeline may use.
#[derive(Clone, Default)]
pub struct AgentKinds {
    kinds: BTreeMap<String, KindFactory>,
    builtins: BTreeMap<String, Arc<dyn Agent>>,
}

impl std::fmt::Debug for AgentKinds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentKinds")
            .field("kinds", &self.names())
            .field("builtins", &self.builtins.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Kinds the core builds itself.
const CORE_KINDS: &[&str] = &["sleep", "command", "builtin"];

impl AgentKinds {
    /// `sleep`, `command` and `builtin` (with no builtin agents yet).
    pub fn standard() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a kind.
    pub fn kind(&mut self, name: &str, factory: KindFactory) -> &mut Self {
        self.kinds.insert(name.to_owned(), factory);
        self
    }

    /// Adds a Rust agent that pipelines call as `kind: builtin, function: NAME`.
    pub fn builtin(&mut self, name: &str, agent: Arc<dyn Agent>) -> &mut Self {
        self.builtins.insert(name.to_owned(), agent);
        self
    }

    /// Adds an `async fn(Reads) -> Result<Writes, AgentError>` as a builtin agent.
    pub fn builtin_fn<F, Fut>(&mut self, name: &str, f: F) -> &mut Self
    where
        F: Fn(Reads) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Writes, AgentError>> + Send + 'static,
    {
        self.builtin(name, Arc::new(FnAgent(f)))
    }

    /// Every kind name, core kinds first.
    pub fn names(&self) -> Vec<String> {
        CORE_KINDS
            .iter()
            .map(|k| (*k).to_owned())
            .chain(self.kinds.keys().cloned())
            .collect()
    }

    pub(crate) fn factory(&self, kind: &str) -> Option<&KindFactory> {
        self.kinds.get(kind)
    }

    pub(crate) fn builtin_named(&self, name: &str) -> Option<Arc<dyn Agent>> {
        self.builtins.get(name).cloned()
    }

    pub(crate) fn builtin_names(&self) -> Vec<&str> {
        self.builtins.keys().map(String::as_str).collect()
    }
}

/// An async function as an [`Agent`].
struct FnAgent<F>(F);

#[async_trait::async_trait]
impl<F, Fut> Agent for FnAgent<F>
where
    F: Fn(Reads) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Writes, AgentError>> + Send + 'static,
{
    async fn call(&self, input: &AgentInput) -> Result<Writes, AgentError> {
        (self.0)(input.reads.clone()).await
    }
}
