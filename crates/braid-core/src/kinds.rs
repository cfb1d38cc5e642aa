//! The agent kinds a pipeline may use, and the Rust agents it may call.
//!
//! Every kind is looked up here, by name. [`AgentKinds::standard`]
//! registers the core's: `sleep`, `command` and `builtin`. Library users
//! add their own Rust agents by name ([`AgentKinds::builtin`], used as
//! `kind: builtin, function: NAME`), and crates outside the core add whole
//! kinds ([`AgentKinds::kind`]; `braid-agents` adds `http` and `llm` this
//! way), so the core stays free of HTTP and SQL. A kind registered under
//! a core kind's name replaces it.
//!
//! The keys of `sleep` (`ms`, `value`) and `command` (`run`, `env`,
//! `pool`) are part of the file's vocabulary: they are type-checked with
//! the file's shape whatever the kind, and reported on agents of kinds
//! that do not take them. The core's own `sleep` and `command` also refuse
//! any other key with the file's shape; a kind replacing them gets every
//! key in its settings, `ms` or `run` included.
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
use std::time::Duration;

use serde_json::{Map, Value};

use crate::agent::command::{CommandAgent, resolve_program};
use crate::agent::pool::PooledCommandAgent;
use crate::agent::sleep::SleepAgent;
use crate::agent::{Agent, AgentError, AgentInput, Reads, Writes};

/// What kind of agent, with the settings that matter for `explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentKind {
    /// Waits, then writes constants.
    Sleep {
        /// How long it waits.
        duration: Duration,
    },
    /// Runs a program.
    Command {
        /// The program and its arguments.
        argv: Vec<String>,
    },
    /// A Rust function registered with [`AgentKinds::builtin`].
    Builtin {
        /// The name it was registered under.
        function: String,
    },
    /// A kind added with [`AgentKinds::kind`] (`http`, `llm`, …).
    Other {
        /// The kind's name.
        kind: String,
    },
}

impl AgentKind {
    /// The kind's name as written in pipeline files.
    pub fn name(&self) -> &str {
        match self {
            AgentKind::Sleep { .. } => "sleep",
            AgentKind::Command { .. } => "command",
            AgentKind::Builtin { .. } => "builtin",
            AgentKind::Other { kind } => kind,
        }
    }
}

/// What a kind's factory gets to build one agent.
#[derive(Debug)]
pub struct AgentConfig<'a> {
    /// The agent's name.
    pub name: &'a str,
    /// The kind, as written.
    pub kind: &'a str,
    /// The agent's own keys (all but the common ones: reads, writes,
    /// when…), with the `sleep` and `command` keys its kind takes.
    pub settings: &'a Map<String, Value>,
    /// The pipeline file's folder (or the current directory).
    pub dir: &'a Path,
    /// The fields it reads (optional ones end in `?`).
    pub reads: Vec<String>,
    /// The fields it writes (names only: an optional write's `?` is
    /// dropped; the agent may leave such a field out of its output).
    pub writes: Vec<String>,
    /// The tool agents it may call (its `tools:`'s `agent:` entries; the
    /// tools of sources such as `mcp` are added once it is built, and are
    /// in [`AgentInput::tools`](crate::agent::AgentInput::tools) when it
    /// runs).
    pub tools: &'a [Arc<crate::agent::tool::Tool>],
    /// Whether it has `tools:` at all: a kind whose agents call no tools
    /// refuses an agent that does.
    pub calls_tools: bool,
}

/// Builds an agent of one kind from its settings, or says what is wrong
/// with them (the message is shown with the agent's name and position).
pub type KindFactory =
    Arc<dyn Fn(&AgentConfig<'_>) -> Result<Arc<dyn Agent>, String> + Send + Sync>;

/// The kinds and builtin agents a pipeline may use.
#[derive(Clone)]
pub struct AgentKinds {
    kinds: BTreeMap<String, Kind>,
    builtins: BTreeMap<String, Arc<dyn Agent>>,
    tool_sources: BTreeMap<String, ToolSourceFactory>,
}

/// What a tool source's factory gets: one entry of an agent's `tools:`
/// (`- mcp: { command: [...] }` gives the source `mcp` and its settings).
#[derive(Debug)]
pub struct ToolSourceConfig<'a> {
    /// The agent whose `tools:` names the source.
    pub agent: &'a str,
    /// The entry's value.
    pub settings: &'a Value,
    /// The pipeline file's folder (or the current directory).
    pub dir: &'a Path,
    /// Whether the source may start a program (a server over stdio): see
    /// [`LoadLimits::allow_tool_processes`](crate::LoadLimits::allow_tool_processes).
    pub allow_processes: bool,
}

/// Gives the tools of one `tools:` entry of a source (see
/// [`AgentKinds::tool_source`]), or says what is wrong with it (a load
/// error at the entry).
pub type ToolSourceFactory = Arc<
    dyn Fn(&ToolSourceConfig<'_>) -> Result<Vec<Arc<crate::agent::tool::Tool>>, String>
        + Send
        + Sync,
>;

/// How a registered kind builds its agents.
#[derive(Clone)]
pub(crate) enum Kind {
    /// `sleep` or `command`, the core's own: their keys are checked with
    /// the file's shape, and a problem is reported at its setting.
    Core(fn(&AgentConfig<'_>) -> Result<Built, KindError>),
    /// `builtin`: the Rust agent registered under its `function:`.
    Builtin,
    /// A factory added with [`AgentKinds::kind`].
    Factory(KindFactory),
}

/// An agent built by its kind: the kind as `explain` shows it, and the
/// agent itself.
pub(crate) type Built = (AgentKind, Arc<dyn Agent>);

/// Why a kind could not build an agent.
#[derive(Debug)]
pub(crate) struct KindError {
    /// The setting at fault (reported at its place), or `None` for the
    /// agent as a whole.
    pub(crate) setting: Option<&'static str>,
    /// What is wrong, without the agent's name.
    pub(crate) message: String,
}

impl KindError {
    fn agent(message: impl Into<String>) -> Self {
        Self {
            setting: None,
            message: message.into(),
        }
    }
}

impl Kind {
    /// Builds one agent from `config`.
    pub(crate) fn build(
        &self,
        config: &AgentConfig<'_>,
        kinds: &AgentKinds,
    ) -> Result<Built, KindError> {
        match self {
            Kind::Core(build) => build(config),
            Kind::Builtin => builtin(config, kinds),
            Kind::Factory(factory) => match factory(config) {
                Ok(runner) => Ok((
                    AgentKind::Other {
                        kind: config.kind.to_owned(),
                    },
                    runner,
                )),
                Err(message) => Err(KindError::agent(message)),
            },
        }
    }

    /// Whether the kind's keys are checked with the file's shape (the
    /// core's `sleep` and `command`): then any key but theirs is refused
    /// there.
    pub(crate) fn checks_keys(&self) -> bool {
        matches!(self, Kind::Core(_))
    }
}

impl Default for AgentKinds {
    /// The same as [`AgentKinds::standard`].
    fn default() -> Self {
        Self::standard()
    }
}

impl std::fmt::Debug for AgentKinds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentKinds")
            .field("kinds", &self.names())
            .field("builtins", &self.builtins.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The kinds the core registers, in the order [`AgentKinds::names`] lists
/// them, before any other.
const CORE_KINDS: &[&str] = &["sleep", "command", "builtin"];

impl AgentKinds {
    /// `sleep`, `command` and `builtin` (with no builtin agents yet).
    pub fn standard() -> Self {
        let kinds = BTreeMap::from([
            ("sleep".to_owned(), Kind::Core(sleep)),
            ("command".to_owned(), Kind::Core(command)),
            ("builtin".to_owned(), Kind::Builtin),
        ]);
        Self {
            kinds,
            builtins: BTreeMap::new(),
            tool_sources: BTreeMap::new(),
        }
    }

    /// Adds (or replaces) a source of tools that agents list under
    /// `tools:` as `- NAME: SETTINGS` (`braid-agents` adds `mcp`). `agent`
    /// is taken: it names a tool agent of the pipeline.
    pub fn tool_source(&mut self, name: &str, factory: ToolSourceFactory) -> &mut Self {
        self.tool_sources.insert(name.to_owned(), factory);
        self
    }

    /// The tool sources' names, `agent` first.
    pub fn tool_source_names(&self) -> Vec<String> {
        std::iter::once("agent".to_owned())
            .chain(self.tool_sources.keys().cloned())
            .collect()
    }

    pub(crate) fn get_tool_source(&self, name: &str) -> Option<&ToolSourceFactory> {
        self.tool_sources.get(name)
    }

    /// Adds (or replaces) a kind; a factory registered as `sleep`,
    /// `command` or `builtin` replaces the core's.
    pub fn kind(&mut self, name: &str, factory: KindFactory) -> &mut Self {
        self.kinds.insert(name.to_owned(), Kind::Factory(factory));
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
        let core = CORE_KINDS
            .iter()
            .copied()
            .filter(|k| self.kinds.contains_key(*k));
        let others = self
            .kinds
            .keys()
            .map(String::as_str)
            .filter(|k| !CORE_KINDS.contains(k));
        core.chain(others).map(str::to_owned).collect()
    }

    /// The kind registered as `name`: the one place kinds are looked up.
    pub(crate) fn get(&self, name: &str) -> Option<&Kind> {
        self.kinds.get(name)
    }
}

/// The core's `sleep`: waits `ms` milliseconds, then writes `value` (or
/// `true`) to each of its writes.
fn sleep(config: &AgentConfig<'_>) -> Result<Built, KindError> {
    let ms = config.settings.get("ms").and_then(Value::as_u64);
    let duration = Duration::from_millis(ms.unwrap_or(0));
    let value = config
        .settings
        .get("value")
        .cloned()
        .unwrap_or(Value::Bool(true));
    let writes: Arc<[Arc<str>]> = config
        .writes
        .iter()
        .map(|w| Arc::from(w.as_str()))
        .collect();
    Ok((
        AgentKind::Sleep { duration },
        Arc::new(SleepAgent::new(duration, value, writes)),
    ))
}

/// The core's `command`: `run` from the pipeline's folder with `env`, or
/// a pool of `pool` warm processes.
fn command(config: &AgentConfig<'_>) -> Result<Built, KindError> {
    let argv: Vec<String> = config
        .settings
        .get("run")
        .and_then(Value::as_array)
        .map(|run| {
            run.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if argv.first().is_none_or(|program| program.is_empty()) {
        return Err(KindError::agent(
            "a `command` agent needs `run: [PROGRAM, ARGS...]`",
        ));
    }
    // Values may use `${VAR}` from braid's environment, as `http` headers
    // do; an unset one is a load error, not an empty string.
    let mut env: Vec<(String, String)> = Vec::new();
    if let Some(vars) = config.settings.get("env").and_then(Value::as_object) {
        for (name, value) in vars {
            let Some(value) = value.as_str() else {
                continue;
            };
            let value =
                expand_env(value, &format!("env `{name}`")).map_err(|message| KindError {
                    setting: Some("env"),
                    message,
                })?;
            env.push((name.clone(), value));
        }
    }
    let dir = config.dir;
    let runner: Arc<dyn Agent> = match config.settings.get("pool").and_then(Value::as_u64) {
        None => Arc::new(CommandAgent::new(&argv, dir, env)),
        Some(0) => {
            return Err(KindError {
                setting: Some("pool"),
                message: "`pool` must be at least 1".to_owned(),
            });
        }
        Some(size) => Arc::new(PooledCommandAgent::new(
            resolve_program(&argv[0], dir),
            argv[1..].to_vec(),
            dir.to_path_buf(),
            env,
            usize::try_from(size).unwrap_or(usize::MAX),
        )),
    };
    Ok((AgentKind::Command { argv }, runner))
}

/// `builtin`: the Rust agent registered under the agent's `function`.
fn builtin(config: &AgentConfig<'_>, kinds: &AgentKinds) -> Result<Built, KindError> {
    let Some(function) = config.settings.get("function").and_then(Value::as_str) else {
        return Err(KindError::agent("a `builtin` agent needs `function: NAME`"));
    };
    match kinds.builtins.get(function) {
        Some(runner) => Ok((
            AgentKind::Builtin {
                function: function.to_owned(),
            },
            runner.clone(),
        )),
        None => Err(KindError {
            setting: Some("function"),
            message: format!(
                "no builtin agent `{function}` is registered{}",
                if kinds.builtins.is_empty() {
                    " (register Rust agents with AgentKinds::builtin)".to_owned()
                } else {
                    let known: Vec<&str> = kinds.builtins.keys().map(String::as_str).collect();
                    format!("; registered: {}", known.join(", "))
                }
            ),
        }),
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

/// Replaces each `${NAME}` with the environment variable NAME.
///
/// Used for `command` agents' `env` and `http`/`llm` agents' URLs and
/// headers; `what` names the setting in the error.
pub fn expand_env(text: &str, what: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("{what}: `${{` without a closing `}}`"))?;
        let name = &after[..end];
        let value = std::env::var(name)
            .map_err(|_| format!("{what} uses ${{{name}}}, which is not set in the environment"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}
