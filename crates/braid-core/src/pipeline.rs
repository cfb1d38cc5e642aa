//! A validated, runnable pipeline.
//!
//! [`Pipeline::from_file`] reads a pipeline file, checks everything that can
//! be checked before running (shape, names, reads that resolve, `after`
//! targets, conditions, cycles, write-write races, input schemas) and builds
//! the dependency graph. After this point nothing is validated again, except
//! a run's input (once, by [`Pipeline::check_input`]) and each agent's output
//! against its own declared writes.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::agent::Agent;
pub use crate::backoff::RetryPolicy;
use crate::checkpoint::CheckpointPolicy;
use crate::condition::Condition;
use crate::diagnostic::Location;
use crate::graph::{AgentId, DependencyGraph};
pub use crate::kinds::AgentKind;
use crate::merge::MergeRule;

/// A field's position in its pipeline's field table.
pub type FieldId = usize;

/// What a run does when an agent fails for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Fail the run at once and cancel agents still in flight (the default).
    #[default]
    Fail,
    /// Keep going: agents that need the failed agent's writes are skipped,
    /// everything else runs. The run still ends `failed`.
    Continue,
}

/// One read of an agent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Read {
    pub(crate) field: FieldId,
    pub(crate) optional: bool,
}

/// A field an agent writes, resolved at load: its id, its name and its merge
/// rule, which is what the scheduler needs to apply the write.
#[derive(Debug, Clone)]
pub(crate) struct FieldWrite {
    pub(crate) field: FieldId,
    pub(crate) name: Arc<str>,
    pub(crate) merge: Option<MergeRule>,
    /// Written as `name?`: the agent may leave it out.
    pub(crate) optional: bool,
}

/// What a `foreach` agent's instances do when one of them fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ItemFailure {
    /// The agent fails (instances still in flight are cancelled).
    #[default]
    Fail,
    /// That element's result is `null`; the other instances go on and the
    /// report lists the failures.
    Skip,
}

impl ItemFailure {
    /// The spelling in pipeline files (`on_item_failure:`).
    pub fn as_str(self) -> &'static str {
        match self {
            ItemFailure::Fail => "fail",
            ItemFailure::Skip => "skip",
        }
    }
}

/// How a `foreach` agent fans out: one instance per element of a list
/// field, each with the element (and its index) among its reads.
#[derive(Debug, Clone)]
pub(crate) struct Foreach {
    /// The list field.
    pub(crate) field: FieldId,
    /// The element's name inside an instance (`as:`, default `item`).
    pub(crate) item: Arc<str>,
    /// The element's index's name (`<as>_index`).
    pub(crate) index: Arc<str>,
    /// Whether the agent reads the element, and its index.
    pub(crate) reads_item: bool,
    pub(crate) reads_index: bool,
    /// Most instances of this agent in flight (`concurrency:`).
    pub(crate) concurrency: Option<usize>,
    pub(crate) on_item_failure: ItemFailure,
    /// `expected_items:`, for `explain`'s estimate.
    pub(crate) expected_items: Option<u64>,
}

/// What a group's loop does when `max` rounds pass and `until` still
/// does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnMax {
    /// The group fails, saying so.
    #[default]
    Fail,
    /// The group completes with the last round's outputs.
    Continue,
}

/// A group (`kind: pipeline`): agents of its own, with a derived graph of
/// their own, run as one member of the pipeline around it (once, once per
/// element under `foreach`, or round after round under `repeat`).
#[derive(Debug)]
pub(crate) struct Group {
    /// The group's agents as a pipeline. Its inputs are the group's reads,
    /// the element and its index (under `foreach`), `round` and the
    /// `carry` targets (under `repeat`).
    pub(crate) pipeline: Arc<Pipeline>,
    /// Each parent field the group writes, with the group field it takes.
    pub(crate) outputs: Vec<(Arc<str>, FieldId)>,
    /// The parent's ids of the fields in `outputs`, in the same order.
    pub(crate) writes: Vec<FieldId>,
    /// `path:`, for a group whose agents are a pipeline file's: what it is
    /// given is then checked against the file's `inputs` (and their
    /// defaults fill in what it is not given).
    pub(crate) file: Option<String>,
    pub(crate) repeat: Option<Repeat>,
}

/// A group's loop.
#[derive(Debug)]
pub(crate) struct Repeat {
    /// Evaluated after each round over the group's fields and `round`.
    pub(crate) until: Condition,
    pub(crate) until_fields: Vec<FieldId>,
    pub(crate) max: u32,
    pub(crate) on_max: OnMax,
    /// The `round` input of the group's pipeline.
    pub(crate) round: FieldId,
    /// Next round's input ← this round's field.
    pub(crate) carry: Vec<(FieldId, FieldId)>,
    /// `expected_rounds:`, for `explain`'s estimate.
    pub(crate) expected_rounds: Option<u32>,
}

/// An agent of a loaded pipeline.
#[derive(Debug)]
pub struct AgentDef {
    pub(crate) name: Arc<str>,
    pub(crate) description: Option<String>,
    pub(crate) kind: AgentKind,
    pub(crate) runner: Arc<dyn Agent>,
    pub(crate) reads: Vec<Read>,
    pub(crate) writes: Arc<[FieldWrite]>,
    pub(crate) when: Option<Condition>,
    pub(crate) condition_fields: Vec<FieldId>,
    pub(crate) policy: RetryPolicy,
    pub(crate) expected: Option<Duration>,
    pub(crate) location: Option<Location>,
    /// See [`AgentDef::definition_hash`].
    pub(crate) definition: Arc<str>,
    /// Set for a `foreach` agent.
    pub(crate) foreach: Option<Box<Foreach>>,
    /// Set for a group (`kind: pipeline`): what runs instead of `runner`.
    pub(crate) group: Option<Arc<Group>>,
    /// Set for an `input` agent: the question it waits on.
    pub(crate) input: Option<Arc<InputSpec>>,
    /// Set for a cached agent (`cache:`, or `defaults.cache`).
    pub(crate) cache: Option<crate::cache::CachePolicy>,
    /// `queue:`, the worker queue it is dispatched to (see [`AgentDef::queue`]).
    pub(crate) queue: Option<Arc<str>>,
    /// `tools:`: the tools it may call, and `max_tool_calls`.
    pub(crate) tools: Option<Arc<crate::agent::tool::AgentTools>>,
}

/// Why an answer to an `input` agent was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// The pipeline has no such agent.
    #[error("pipeline `{pipeline}` has no agent `{agent}`")]
    UnknownAgent {
        /// The agent named.
        agent: String,
        /// The pipeline.
        pipeline: String,
    },
    /// The agent does not wait for answers.
    #[error("agent `{agent}` is a `{kind}` agent, not an `input` agent: it takes no answer")]
    NotAnInput {
        /// The agent named.
        agent: String,
        /// Its kind.
        kind: String,
    },
    /// The answer does not fit the agent's schema.
    #[error("the answer to `{agent}` does not fit its schema:\n  - {}", .problems.join("\n  - "))]
    Invalid {
        /// The agent.
        agent: String,
        /// One line per problem.
        problems: Vec<String>,
    },
}

/// The longest `prompt` an `input` agent may have, in bytes.
pub const MAX_PROMPT_BYTES: usize = 16 * 1024;

/// What an `input` agent asks, and how its answer is checked.
#[derive(Clone)]
pub struct InputSpec {
    pub(crate) prompt: String,
    pub(crate) schema: Option<Value>,
    pub(crate) validator: Arc<jsonschema::Validator>,
    pub(crate) default: Option<Arc<Value>>,
    /// The one field it writes: the answer.
    pub(crate) field: Arc<str>,
}

impl InputSpec {
    /// The question, as the file words it.
    pub fn prompt(&self) -> &str {
        &self.prompt
    }

    /// The JSON Schema an answer must fit (`None`: any JSON value).
    pub fn schema(&self) -> Option<&Value> {
        self.schema.as_ref()
    }

    /// The answer used when the wait times out (`None`: the agent fails).
    pub fn default(&self) -> Option<&Value> {
        self.default.as_deref()
    }

    /// The field the answer is written to.
    pub fn field(&self) -> &str {
        &self.field
    }

    /// Every way `value` does not fit the schema (empty when it fits).
    pub fn problems(&self, value: &Value) -> Vec<String> {
        self.validator
            .iter_errors(value)
            .map(|error| {
                let path = error.instance_path().to_string();
                if path.is_empty() {
                    format!("the answer {error}")
                } else {
                    format!("`{path}`: {error}")
                }
            })
            .collect()
    }
}

impl fmt::Debug for InputSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InputSpec")
            .field("prompt", &self.prompt)
            .field("schema", &self.schema)
            .field("default", &self.default)
            .field("field", &self.field)
            .finish_non_exhaustive()
    }
}

impl AgentDef {
    /// The agent's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tools it may call (`tools:`), in the order it lists them.
    pub fn tools(&self) -> &[Arc<crate::agent::tool::Tool>] {
        self.tools.as_ref().map_or(&[], |t| &t.tools)
    }

    /// What it is for, as the file describes it.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// Its kind and kind-specific settings.
    pub fn kind(&self) -> &AgentKind {
        &self.kind
    }

    /// Its timeout and retry settings.
    pub fn policy(&self) -> RetryPolicy {
        self.policy
    }

    /// Its `when` condition, if any.
    pub fn condition(&self) -> Option<&Condition> {
        self.when.as_ref()
    }

    /// How long it is expected to take: a `sleep` agent's duration, or the
    /// `expected:` hint. `None` when unknown.
    pub fn expected_duration(&self) -> Option<Duration> {
        self.expected.or(match self.kind {
            AgentKind::Sleep { duration } => Some(duration),
            _ => None,
        })
    }

    /// Where the agent is defined.
    pub fn location(&self) -> Option<&Location> {
        self.location.as_ref()
    }

    /// A hash (SHA-256, hex) of everything that decides this agent's output
    /// (its own settings and, through theirs, every agent it depends on,
    /// transitively). A resumed run reuses a stored output only when the
    /// agent's hash is still the same; see the `definition` module's docs.
    pub fn definition_hash(&self) -> &str {
        &self.definition
    }

    /// For an `input` agent: its question, schema and default.
    pub fn input(&self) -> Option<&InputSpec> {
        self.input.as_deref()
    }

    /// Whether its results are cached, and for how long (`cache:`, or
    /// `defaults.cache`).
    pub fn cache(&self) -> Option<crate::cache::CachePolicy> {
        self.cache
    }

    /// `queue:`: the worker queue this agent is dispatched to when its
    /// run sends agents to workers (`braid serve --nats`), as written on
    /// the agent (see [`Pipeline::code_agents`] for the one it inherits
    /// from its group).
    pub fn queue(&self) -> Option<&str> {
        self.queue.as_deref()
    }

    /// What runs for this agent: the runner its kind built (for a group or
    /// an `input` agent, a placeholder that is never called).
    pub fn runner(&self) -> &Arc<dyn Agent> {
        &self.runner
    }

    /// How long one attempt may take, if the agent has a `timeout`.
    pub fn timeout(&self) -> Option<Duration> {
        self.policy.timeout
    }

    /// For a group (`kind: pipeline`): its agents, as a pipeline.
    pub fn group_pipeline(&self) -> Option<&Pipeline> {
        self.group.as_ref().map(|g| &*g.pipeline)
    }

    /// For a group with `repeat`: its `until` condition, its most rounds
    /// and what it does when they pass.
    pub fn repeat(&self) -> Option<(&str, u32, OnMax)> {
        let repeat = self.group.as_ref()?.repeat.as_ref()?;
        Some((repeat.until.source(), repeat.max, repeat.on_max))
    }

    /// For a `foreach` agent: the list field it fans out over.
    pub fn foreach_field<'p>(&self, pipeline: &'p Pipeline) -> Option<&'p str> {
        self.foreach
            .as_ref()
            .map(|f| &*pipeline.fields[f.field].name)
    }

    /// For a `foreach` agent: the most instances in flight (`concurrency:`),
    /// what a failed instance does (`on_item_failure:`) and the expected
    /// number of elements (`expected_items:`).
    pub fn foreach_settings(&self) -> Option<(Option<usize>, ItemFailure, Option<u64>)> {
        self.foreach
            .as_ref()
            .map(|f| (f.concurrency, f.on_item_failure, f.expected_items))
    }
}

/// A field of the run's state.
#[derive(Debug, Clone)]
pub(crate) struct Field {
    pub(crate) name: Arc<str>,
    pub(crate) merge: Option<MergeRule>,
    /// Agents that write it, in declaration order.
    pub(crate) writers: Vec<AgentId>,
    pub(crate) input: Option<InputField>,
}

#[derive(Clone)]
pub(crate) struct InputField {
    /// Its JSON Schema as written (`{}` for a group's inputs).
    pub(crate) schema: Arc<Value>,
    pub(crate) default: Option<Value>,
    pub(crate) validator: Arc<jsonschema::Validator>,
}

impl fmt::Debug for InputField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InputField")
            .field("default", &self.default)
            .finish_non_exhaustive()
    }
}

/// A validated pipeline with its dependency graph, ready to run any number
/// of times (concurrently too: share it in an `Arc`).
///
/// ```
/// use braid_core::Pipeline;
///
/// let pipeline = Pipeline::from_yaml_str(r#"
/// pipeline: hello
/// inputs: { name: { type: string } }
/// agents:
///   greet: { kind: sleep, ms: 0, reads: [name], writes: [greeting] }
///   shout: { kind: sleep, ms: 0, reads: [greeting], writes: [loud] }
/// "#).unwrap();
/// assert_eq!(pipeline.agent_names().collect::<Vec<_>>(), ["greet", "shout"]);
/// assert_eq!(pipeline.graph().edges().collect::<Vec<_>>(), [(0, 1)]);
/// ```
#[derive(Debug)]
pub struct Pipeline {
    pub(crate) name: Arc<str>,
    pub(crate) description: Option<String>,
    pub(crate) source: Option<PathBuf>,
    pub(crate) fields: Vec<Field>,
    pub(crate) agents: Vec<AgentDef>,
    pub(crate) graph: DependencyGraph,
    pub(crate) concurrency: Option<usize>,
    pub(crate) on_failure: FailurePolicy,
    pub(crate) checkpoint: Option<CheckpointPolicy>,
    pub(crate) content_hash: Arc<str>,
    pub(crate) output: Option<String>,
    /// This instance's identity: a [`crate::ValidInput`] runs only here.
    pub(crate) id: u64,
    /// See [`Pipeline::max_value_depth`].
    pub(crate) max_value_depth: usize,
    /// Whether any agent is a group (runs then share a `RunContext`).
    pub(crate) has_groups: bool,
    /// Whether any agent is an `input` agent (its runs may wait).
    pub(crate) waits_for_input: bool,
    /// Each agent's own definition, as its hash covers it (kept for
    /// [`Pipeline::portable_hashes`]).
    pub(crate) own_definitions: Vec<serde_json::Value>,
    /// See [`Pipeline::portable_hashes`]: made on first use.
    pub(crate) portable: std::sync::OnceLock<Vec<Arc<str>>>,
    /// Its tool agents (`tool:`), which are not steps of the graph.
    pub(crate) tool_agents: Vec<Arc<crate::agent::tool::Tool>>,
}

/// An agent that runs code, where it is in its pipeline: see
/// [`Pipeline::code_agents`].
#[derive(Debug)]
pub struct CodeAgent<'a> {
    /// Its path: its name, or `group.name` for a group's agent (without
    /// the `[i]` of `foreach` instances).
    pub path: String,
    /// Its definition: runner, definition hash, timeout.
    pub def: &'a AgentDef,
    /// Its worker queue: its own `queue:`, else its group's.
    pub queue: Option<&'a str>,
    /// Its portable definition hash (see [`Pipeline::portable_hashes`]),
    /// which a coordinator sends with each task and a worker checks.
    pub portable_hash: Arc<str>,
}

static PIPELINE_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A new pipeline instance's identity (see [`crate::ValidInput`]).
pub(crate) fn next_pipeline_id() -> u64 {
    PIPELINE_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Pipeline {
    /// Its tool agents (agents with `tool:`): they run only when an agent
    /// calls them, so they are not among [`Pipeline::agents`].
    pub fn tool_agents(&self) -> &[Arc<crate::agent::tool::Tool>] {
        &self.tool_agents
    }

    /// Whether any agent is an `input` agent, so that its runs may wait
    /// for an answer (and are then checkpointed per agent).
    pub fn waits_for_input(&self) -> bool {
        self.waits_for_input
    }

    /// Checks an answer to `agent`, an `input` agent, against its schema,
    /// as [`check_input`](Self::check_input) checks a run's input: once,
    /// where the answer enters.
    ///
    /// ```
    /// use braid_core::Pipeline;
    /// use serde_json::json;
    ///
    /// let pipeline = Pipeline::from_yaml_str(r#"
    /// pipeline: approval
    /// agents:
    ///   approve:
    ///     kind: input
    ///     prompt: Ship it?
    ///     schema: { type: object, properties: { approved: { type: boolean } }, required: [approved] }
    ///     writes: [approval]
    /// "#).unwrap();
    /// assert!(pipeline.check_answer("approve", &json!({"approved": true})).is_ok());
    /// let refused = pipeline.check_answer("approve", &json!({"ok": 1})).unwrap_err();
    /// assert!(refused.to_string().contains("approved"), "{refused}");
    /// ```
    pub fn check_answer(
        &self,
        agent: &str,
        value: &Value,
    ) -> Result<crate::answer::CheckedAnswer, AnswerError> {
        let Some(def) = self.agents.iter().find(|a| &*a.name == agent) else {
            return Err(AnswerError::UnknownAgent {
                agent: agent.to_owned(),
                pipeline: self.name.to_string(),
            });
        };
        let Some(input) = &def.input else {
            return Err(AnswerError::NotAnInput {
                agent: agent.to_owned(),
                kind: def.kind.name().to_owned(),
            });
        };
        if crate::depth::exceeds(value, self.max_value_depth) {
            return Err(AnswerError::Invalid {
                agent: agent.to_owned(),
                problems: vec![format!(
                    "the answer is nested more than {} levels deep, the limit (max_value_depth)",
                    self.max_value_depth
                )],
            });
        }
        let problems = input.problems(value);
        if problems.is_empty() {
            Ok(crate::answer::CheckedAnswer {
                agent: def.name.clone(),
                value: Arc::new(value.clone()),
            })
        } else {
            Err(AnswerError::Invalid {
                agent: agent.to_owned(),
                problems,
            })
        }
    }

    /// The pipeline's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its description, if it has one.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// Its `inputs`: each input field's name with its JSON Schema as
    /// written, in declaration order (a client renders a form from them).
    pub fn inputs(&self) -> impl Iterator<Item = (&str, &Value)> + '_ {
        self.fields
            .iter()
            .filter_map(|f| f.input.as_ref().map(|i| (&*f.name, &*i.schema)))
    }

    /// The file it was loaded from.
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// Every agent, in declaration order (indexable by [`AgentId`]).
    pub fn agents(&self) -> &[AgentDef] {
        &self.agents
    }

    /// Each agent's definition hash (in declaration order) without the
    /// pipeline file's folder: equal for copies of one pipeline file
    /// wherever they are (a coordinator's and its workers', `braid
    /// worker`), different when the agent or anything it depends on is
    /// defined otherwise. Made on first use: only remote workers need it,
    /// and hashing every definition again at each load cost a quarter of
    /// loading a chain of agents.
    pub fn portable_hashes(&self) -> &[Arc<str>] {
        self.portable.get_or_init(|| {
            crate::definition::portable(
                &self.own_definitions,
                |id| {
                    self.agents[id]
                        .group
                        .as_ref()
                        .map(|g| g.pipeline.portable_hashes())
                },
                &self.graph,
            )
        })
    }

    /// Every agent that runs code (not a group, not an `input` agent, not
    /// an agent with `tools:`, whose calls are steps of its run), a group's
    /// own too, in declaration order: what a worker can run for a run
    /// elsewhere (see [`Pipeline::wrap_code_agents`]). Tool agents are not
    /// steps, so not listed either: they run where their caller runs.
    ///
    /// ```
    /// let pipeline = braid_core::Pipeline::from_yaml_str(r#"
    /// pipeline: p
    /// agents:
    ///   a: { kind: sleep, ms: 1, writes: [x] }
    ///   g:
    ///     kind: pipeline
    ///     queue: gpu
    ///     reads: [x]
    ///     agents:
    ///       inner: { kind: sleep, ms: 1, reads: [x], writes: [z] }
    ///     outputs: { y: z }
    /// "#)
    /// .unwrap();
    /// let sites: Vec<(String, Option<&str>)> = pipeline
    ///     .code_agents()
    ///     .iter()
    ///     .map(|a| (a.path.clone(), a.queue))
    ///     .collect();
    /// assert_eq!(sites, [("a".to_owned(), None), ("g.inner".to_owned(), Some("gpu"))]);
    /// ```
    pub fn code_agents(&self) -> Vec<CodeAgent<'_>> {
        let mut found = Vec::new();
        self.collect_code_agents("", None, &mut found);
        found
    }

    fn collect_code_agents<'p>(
        &'p self,
        prefix: &str,
        inherited: Option<&'p str>,
        found: &mut Vec<CodeAgent<'p>>,
    ) {
        for (def, portable) in self.agents.iter().zip(self.portable_hashes()) {
            let path = format!("{prefix}{}", def.name);
            let queue = def.queue.as_deref().or(inherited);
            if let Some(group) = &def.group {
                group
                    .pipeline
                    .collect_code_agents(&format!("{path}."), queue, found);
            } else if def.input.is_none() && def.tools.is_none() {
                found.push(CodeAgent {
                    path,
                    def,
                    queue,
                    portable_hash: portable.clone(),
                });
            }
        }
    }

    /// Replaces the runner of every agent [`Pipeline::code_agents`] lists
    /// with what `wrap` makes of it: how a coordinator sends its agents to
    /// workers while its scheduler, retries, timeouts and cache stay here.
    ///
    /// # Errors
    /// When a group's pipeline is shared with another pipeline value (it
    /// never is for one loaded from YAML), it cannot be changed: the
    /// group's path is returned.
    pub fn wrap_code_agents(
        &mut self,
        wrap: &mut dyn FnMut(&CodeAgent<'_>) -> Arc<dyn Agent>,
    ) -> Result<(), String> {
        self.wrap_code_agents_under("", None, wrap)
    }

    fn wrap_code_agents_under(
        &mut self,
        prefix: &str,
        inherited: Option<&str>,
        wrap: &mut dyn FnMut(&CodeAgent<'_>) -> Arc<dyn Agent>,
    ) -> Result<(), String> {
        let portable = self.portable_hashes().to_vec();
        for (def, portable) in self.agents.iter_mut().zip(portable) {
            let path = format!("{prefix}{}", def.name);
            let queue = def.queue.clone().or_else(|| inherited.map(Arc::from));
            if let Some(group) = &mut def.group {
                let inner = Arc::get_mut(group)
                    .and_then(|g| Arc::get_mut(&mut g.pipeline))
                    .ok_or_else(|| path.clone())?;
                inner.wrap_code_agents_under(&format!("{path}."), queue.as_deref(), wrap)?;
            } else if def.input.is_none() && def.tools.is_none() {
                // An agent with tools stays where its run is: its tool
                // calls are steps of that run (tool agents run there too).
                let site = CodeAgent {
                    path,
                    def,
                    queue: queue.as_deref(),
                    portable_hash: portable,
                };
                let runner = wrap(&site);
                def.runner = runner;
            }
        }
        Ok(())
    }

    /// Whether any agent or tool agent, in a group too, is cached
    /// (`cache:` or `defaults.cache`): a run of it then has use for an
    /// [`AgentCache`](crate::AgentCache).
    pub fn uses_cache(&self) -> bool {
        self.tool_agents.iter().any(|t| t.is_cached())
            || self.agents.iter().any(|a| {
                a.cache.is_some()
                    || a.tools().iter().any(|t| t.is_cached())
                    || a.group_pipeline().is_some_and(Pipeline::uses_cache)
            })
    }

    /// Every agent's name, in declaration order.
    pub fn agent_names(&self) -> impl Iterator<Item = &str> {
        self.agents.iter().map(|a| &*a.name)
    }

    /// The dependency graph derived from reads, writes, conditions and `after`.
    pub fn graph(&self) -> &DependencyGraph {
        &self.graph
    }

    /// The most agents in flight in one run, if the pipeline sets a limit.
    pub fn concurrency(&self) -> Option<usize> {
        self.concurrency
    }

    /// The field the pipeline names as its result (`output:`), which the
    /// CLI shows instead of the whole state.
    pub fn output_field(&self) -> Option<&str> {
        self.output.as_deref()
    }

    /// The pipeline's own checkpoint policy (`checkpoint:`), if it sets one.
    pub fn checkpoint(&self) -> Option<CheckpointPolicy> {
        self.checkpoint
    }

    /// A hash of the pipeline file's text (SHA-256, hex): a stored run
    /// remembers it, so that resuming against a changed file is noticed.
    pub fn content_hash(&self) -> &str {
        &self.content_hash
    }

    /// What a run does when an agent fails.
    pub fn on_failure(&self) -> FailurePolicy {
        self.on_failure
    }

    /// The declared input fields, in order.
    pub fn input_names(&self) -> impl Iterator<Item = &str> {
        self.fields
            .iter()
            .filter(|f| f.input.is_some())
            .map(|f| &*f.name)
    }

    /// The names of the fields `agent` reads (optional ones end in `?`).
    pub fn reads_of(&self, agent: AgentId) -> Vec<String> {
        self.agents[agent]
            .reads
            .iter()
            .map(|r| {
                let name = &self.fields[r.field].name;
                if r.optional {
                    format!("{name}?")
                } else {
                    name.to_string()
                }
            })
            .collect()
    }

    /// The names of the fields `agent` writes (optional ones end in `?`).
    pub fn writes_of(&self, agent: AgentId) -> Vec<String> {
        self.agents[agent]
            .writes
            .iter()
            .map(|w| {
                if w.optional {
                    format!("{}?", w.name)
                } else {
                    w.name.to_string()
                }
            })
            .collect()
    }

    /// The field called `name`, if the pipeline has one (a linear search:
    /// for the few fields of a group).
    pub(crate) fn field_id(&self, name: &str) -> Option<FieldId> {
        self.fields.iter().position(|f| *f.name == *name)
    }

    pub(crate) fn field_name(&self, field: FieldId) -> &str {
        &self.fields[field].name
    }
}

/// The most retries an agent may ask for: each retry is an attempt with its
/// own events, so the count bounds the events one agent can produce.
pub const MAX_RETRIES: u32 = 100;
/// The shortest `backoff` allowed: with none, retries would spin.
pub const MIN_BACKOFF: Duration = Duration::from_millis(1);
/// The most dependency edges a pipeline may imply. Each reader of a field
/// depends on every writer of it, so a few kilobytes (1,000 writers of a
/// merged field, 100,000 readers) could otherwise ask for 10⁸ edges.
pub const MAX_DEPENDENCIES: usize = 5_000_000;
/// How deep groups (`kind: pipeline`) may nest: a group of a group of a
/// group … Each level is a nested run at run time.
pub const MAX_GROUP_DEPTH: usize = 8;
/// The most elements a `foreach` list may have: the list comes from an
/// agent's output, and each element costs bookkeeping and a report entry
/// (about 300 bytes), so 1,000,000 bound a fan-out to a few hundred MB.
pub const MAX_ITEMS: usize = 1_000_000;
/// The most rounds a group's `repeat.max` may allow.
pub const MAX_ROUNDS: u64 = 100_000;
