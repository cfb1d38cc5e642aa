//! A validated, runnable pipeline.
//!
//! [`Pipeline::from_file`] reads a pipeline file, checks everything that can
//! be checked before running (shape, names, reads that resolve, `after`
//! targets, conditions, cycles, write-write races, input schemas) and builds
//! the dependency graph. After this point nothing is validated again, except
//! a run's input (once, by [`Pipeline::check_input`]) and each agent's output
//! against its own declared writes.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::agent::Agent;
use crate::agent::command::{CommandAgent, resolve_program};
use crate::agent::pool::PooledCommandAgent;
use crate::agent::sleep::SleepAgent;
use crate::checkpoint::CheckpointPolicy;
use crate::condition::Condition;
use crate::diagnostic::{Diagnostic, LoadError, Location};
use crate::graph::{AgentId, DependencyGraph};
use crate::kinds::{AgentConfig, AgentKinds};
use crate::limits::LoadLimits;
use crate::merge::MergeRule;
use crate::spec::CORE_KIND_KEYS;
use crate::spec::{self, AgentSpec, Located, PipelineSpec, Source};

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

/// Timeout and retry settings of one agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Longest one attempt may take; `None` waits for ever.
    pub timeout: Option<Duration>,
    /// How many times a failed attempt is tried again.
    pub retries: u32,
    /// The first retry's delay; each later one doubles it, with jitter.
    pub backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            timeout: None,
            retries: 0,
            backoff: Duration::from_millis(200),
        }
    }
}

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
    /// A Rust function registered with [`crate::AgentKinds::builtin`].
    Builtin {
        /// The name it was registered under.
        function: String,
    },
    /// A kind added with [`crate::AgentKinds::kind`] (`http`, `llm`, …).
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

/// One read of an agent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Read {
    pub(crate) field: FieldId,
    pub(crate) optional: bool,
}

/// One write of an agent, with what the scheduler needs to apply it.
#[derive(Debug, Clone)]
pub(crate) struct WriteSlot {
    pub(crate) field: FieldId,
    pub(crate) name: Arc<str>,
    pub(crate) merge: Option<MergeRule>,
}

/// An agent of a loaded pipeline.
#[derive(Debug)]
pub struct AgentDef {
    pub(crate) name: Arc<str>,
    pub(crate) description: Option<String>,
    pub(crate) kind: AgentKind,
    pub(crate) runner: Arc<dyn Agent>,
    pub(crate) reads: Vec<Read>,
    pub(crate) writes: Arc<[WriteSlot]>,
    pub(crate) when: Option<Condition>,
    pub(crate) condition_fields: Vec<FieldId>,
    pub(crate) policy: RetryPolicy,
    pub(crate) expected: Option<Duration>,
    pub(crate) location: Option<Location>,
    /// See [`AgentDef::definition_hash`].
    pub(crate) definition: Arc<str>,
}

impl AgentDef {
    /// The agent's name.
    pub fn name(&self) -> &str {
        &self.name
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
}

static PIPELINE_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A new pipeline instance's identity (see [`crate::ValidInput`]).
pub(crate) fn next_pipeline_id() -> u64 {
    PIPELINE_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Pipeline {
    /// Loads and validates a pipeline file (YAML or JSON). Command agents
    /// run from the file's folder.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, LoadError> {
        Self::from_file_with(path, &AgentKinds::standard())
    }

    /// Loads a pipeline file whose agents may use `kinds`' builtin agents
    /// and extra kinds.
    pub fn from_file_with(path: impl AsRef<Path>, kinds: &AgentKinds) -> Result<Self, LoadError> {
        Self::from_file_limited(path, kinds, &LoadLimits::default())
    }

    /// Loads a pipeline file under `limits` (size, nesting depth, agent
    /// count, condition size, compile time).
    pub fn from_file_limited(
        path: impl AsRef<Path>,
        kinds: &AgentKinds,
        limits: &LoadLimits,
    ) -> Result<Self, LoadError> {
        let path = path.as_ref();
        let read_error = |source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        };
        let text = std::fs::read_to_string(path).map_err(read_error)?;
        let absolute = std::path::absolute(path).map_err(read_error)?;
        let dir = absolute
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        let mut pipeline = Self::load(&text, Some(path), &dir, kinds, limits)?;
        // Absolute, so a stored run can find its file from anywhere.
        pipeline.source = Some(absolute);
        Ok(pipeline)
    }

    /// Loads and validates a pipeline from text. Command agents run from the
    /// current directory.
    pub fn from_yaml_str(text: &str) -> Result<Self, LoadError> {
        Self::from_yaml_str_with(text, &AgentKinds::standard())
    }

    /// Loads a pipeline from text whose agents may use `kinds`' builtin
    /// agents and extra kinds.
    pub fn from_yaml_str_with(text: &str, kinds: &AgentKinds) -> Result<Self, LoadError> {
        Self::from_yaml_str_limited(text, kinds, &LoadLimits::default())
    }

    /// Loads a pipeline from text under `limits` (size, nesting depth,
    /// agent count, condition size, compile time): what a server uses for
    /// pipelines its clients send.
    pub fn from_yaml_str_limited(
        text: &str,
        kinds: &AgentKinds,
        limits: &LoadLimits,
    ) -> Result<Self, LoadError> {
        let dir = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        Self::load(text, None, &dir, kinds, limits)
    }

    fn load(
        text: &str,
        file: Option<&Path>,
        dir: &Path,
        kinds: &AgentKinds,
        limits: &LoadLimits,
    ) -> Result<Self, LoadError> {
        // TODO(issue 9): enforce every limit; only the agent count is checked so far.
        let source = Source {
            file: file.map(Arc::from),
        };
        let invalid = |mut diagnostics: Vec<Diagnostic>| {
            // In file order, as a reader goes through the file.
            diagnostics.sort_by_key(|d| d.location.as_ref().map(|l| (l.line, l.column)));
            LoadError::Invalid { diagnostics }
        };
        let spec = spec::parse(text, &source).map_err(invalid)?;
        if spec.agents.len() > limits.max_agents {
            return Err(invalid(vec![Diagnostic::new(
                spec.agents_at.clone(),
                format!(
                    "the pipeline declares {} agents; the limit is {} (max_agents)",
                    spec.agents.len(),
                    limits.max_agents
                ),
            )]));
        }
        let mut pipeline = compile(spec, dir, kinds).map_err(invalid)?;
        pipeline.content_hash = Arc::from(content_hash(text));
        Ok(pipeline)
    }

    /// The pipeline's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its description, if it has one.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// The file it was loaded from.
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// Every agent, in declaration order (indexable by [`AgentId`]).
    pub fn agents(&self) -> &[AgentDef] {
        &self.agents
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

    /// The names of the fields `agent` writes.
    pub fn writes_of(&self, agent: AgentId) -> Vec<String> {
        self.agents[agent]
            .writes
            .iter()
            .map(|w| w.name.to_string())
            .collect()
    }

    pub(crate) fn field_name(&self, field: FieldId) -> &str {
        &self.fields[field].name
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_agent_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn duration(
    value: &Option<marked_yaml::Spanned<String>>,
    what: &str,
    source: &Source,
    errors: &mut Vec<Diagnostic>,
) -> Option<Duration> {
    let value = value.as_ref()?;
    match humantime::parse_duration(value.trim()) {
        Ok(d) => Some(d),
        Err(e) => {
            errors.push(Diagnostic::new(
                source.at(value.span()),
                format!(
                    "{what}: bad duration `{}` ({e}); expected a number with a unit, like 200ms, 30s or 2m",
                    value.as_str()
                ),
            ));
            None
        }
    }
}

/// Everything known about one agent while compiling.
struct Draft<'a> {
    name: &'a str,
    spec: &'a AgentSpec,
    at: Option<Location>,
}

fn compile(
    spec: PipelineSpec,
    dir: &Path,
    kinds: &AgentKinds,
) -> Result<Pipeline, Vec<Diagnostic>> {
    let source = Source {
        file: spec
            .name
            .as_ref()
            .and_then(|n| n.at.as_ref())
            .and_then(|l| l.file.clone()),
    };
    let mut errors = Vec::new();
    let name = spec.name.clone().expect("parse requires a name");
    let valid_name = !name.value.is_empty()
        && name
            .value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid_name {
        errors.push(Diagnostic::new(
            name.at.clone(),
            format!(
                "`pipeline: {}`: a pipeline's name must be letters, digits, `-`, `_` and `.` (it appears in URLs and file names)",
                name.value
            ),
        ));
    }
    if spec.agents.is_empty() {
        errors.push(Diagnostic::new(
            spec.agents_at.clone().or(name.at.clone()),
            "the pipeline has no agents; add at least one under `agents:`",
        ));
    }

    let on_failure = match spec.on_failure.as_ref().map(|l| (l.value.as_str(), l)) {
        None | Some(("fail", _)) => FailurePolicy::Fail,
        Some(("continue", _)) => FailurePolicy::Continue,
        Some((other, l)) => {
            errors.push(Diagnostic::new(
                l.at.clone(),
                format!("`on_failure` must be `fail` or `continue`, found `{other}`"),
            ));
            FailurePolicy::Fail
        }
    };
    if let Some(t) = &spec.defaults.timeout
        && humantime::parse_duration(t.trim()).is_ok_and(|d| d.is_zero())
    {
        errors.push(Diagnostic::new(
            source.at(t.span()),
            "`defaults.timeout` must be longer than zero (leave it out for no timeout)",
        ));
    }
    let checkpoint = match &spec.checkpoint {
        None => None,
        Some(l) => match l.value.parse::<CheckpointPolicy>() {
            Ok(policy) => Some(policy),
            Err(e) => {
                errors.push(Diagnostic::new(l.at.clone(), format!("`checkpoint`: {e}")));
                None
            }
        },
    };
    let defaults = RetryPolicy {
        timeout: duration(
            &spec.defaults.timeout,
            "defaults.timeout",
            &source,
            &mut errors,
        ),
        retries: spec.defaults.retries.as_ref().map_or(0, |r| **r),
        backoff: duration(
            &spec.defaults.backoff,
            "defaults.backoff",
            &source,
            &mut errors,
        )
        .unwrap_or(RetryPolicy::default().backoff),
    };

    // The field table: inputs first, then every written field in order.
    let mut fields: Vec<Field> = Vec::new();
    let mut field_ids: HashMap<String, FieldId> = HashMap::new();
    for (input, schema) in &spec.inputs {
        if !is_identifier(input) {
            errors.push(Diagnostic::new(
                schema.at.clone(),
                format!("input `{input}`: field names must be letters, digits and `_`, starting with a letter or `_`"),
            ));
        }
        let validator = match jsonschema::validator_for(&schema.value) {
            Ok(v) => Arc::new(v),
            Err(e) => {
                errors.push(Diagnostic::new(
                    schema.at.clone(),
                    format!("input `{input}`: invalid JSON Schema: {e}"),
                ));
                continue;
            }
        };
        field_ids.insert(input.clone(), fields.len());
        fields.push(Field {
            name: Arc::from(input.as_str()),
            merge: None,
            writers: Vec::new(),
            input: Some(InputField {
                default: schema.value.get("default").cloned(),
                validator,
            }),
        });
    }

    let drafts: Vec<Draft<'_>> = spec
        .agents
        .iter()
        .map(|(name, located)| Draft {
            name,
            spec: &located.value,
            at: located.at.clone(),
        })
        .collect();
    let agent_ids: HashMap<&str, AgentId> = drafts
        .iter()
        .enumerate()
        .map(|(i, d)| (d.name, i))
        .collect();

    // Writes.
    for (id, draft) in drafts.iter().enumerate() {
        if !is_agent_name(draft.name) {
            errors.push(Diagnostic::new(
                draft.at.clone(),
                format!("agent `{}`: names must be letters, digits, `_` and `-`, starting with a letter or `_`", draft.name),
            ));
        }
        let mut seen = Vec::new();
        for w in &draft.spec.writes {
            let field = w.as_str();
            let at = source.at(w.span());
            if !is_identifier(field) {
                errors.push(Diagnostic::new(at, format!("agent `{}` writes `{field}`: field names must be letters, digits and `_`, starting with a letter or `_`", draft.name)));
                continue;
            }
            if seen.contains(&field) {
                errors.push(Diagnostic::new(
                    at,
                    format!("agent `{}` lists `{field}` twice in `writes`", draft.name),
                ));
                continue;
            }
            seen.push(field);
            match field_ids.get(field) {
                Some(&f) if fields[f].input.is_some() => errors.push(Diagnostic::new(
                    at,
                    format!("agent `{}` writes `{field}`, which is a run input; inputs are read-only, write a new field instead", draft.name),
                )),
                Some(&f) => fields[f].writers.push(id),
                None => {
                    field_ids.insert(field.to_owned(), fields.len());
                    fields.push(Field {
                        name: Arc::from(field),
                        merge: None,
                        writers: vec![id],
                        input: None,
                    });
                }
            }
        }
    }

    // Merge rules.
    for (field, settings) in &spec.fields {
        let Some(&f) = field_ids
            .get(field.as_str())
            .filter(|&&f| fields[f].input.is_none())
        else {
            errors.push(Diagnostic::new(
                settings.at.clone(),
                format!("`fields.{field}` configures a field that no agent writes"),
            ));
            continue;
        };
        if let Some(rule) = &settings.value.merge {
            match rule.parse::<MergeRule>() {
                Ok(rule) => fields[f].merge = Some(rule),
                Err(e) => errors.push(Diagnostic::new(
                    source.at(rule.span()),
                    format!("`fields.{field}.merge`: {e}"),
                )),
            }
        }
    }

    // Reads, conditions, `after`, kinds; and the edges they imply.
    let mut edges: Vec<(AgentId, AgentId)> = Vec::new();
    let mut edge_reasons: HashMap<(AgentId, AgentId), String> = HashMap::new();
    let mut agents = Vec::with_capacity(drafts.len());
    let mut after_edges = Vec::new();
    let mut own_definitions = Vec::with_capacity(drafts.len());
    for (id, draft) in drafts.iter().enumerate() {
        let agent = draft.spec;
        let who = format!("agent `{}`", draft.name);
        let mut reads = Vec::new();
        for r in &agent.reads {
            let at = source.at(r.span());
            let (field, optional) = match r.strip_suffix('?') {
                Some(f) => (f, true),
                None => (r.as_str(), false),
            };
            if !is_identifier(field) {
                errors.push(Diagnostic::new(at, format!("{who} reads `{field}`: field names must be letters, digits and `_` (mark an optional read with a trailing `?`)")));
                continue;
            }
            if reads.iter().any(|r: &Read| &*fields[r.field].name == field) {
                errors.push(Diagnostic::new(
                    at,
                    format!("{who} lists `{field}` twice in `reads`"),
                ));
                continue;
            }
            match field_ids.get(field) {
                Some(&f) if !optional && fields[f].input.is_none() && fields[f].writers == [id] => {
                    errors.push(Diagnostic::new(
                        at,
                        format!("{who} reads `{field}`, which only it writes, so it could never start; mark the read optional (`{field}?`) or read a field another agent writes"),
                    ))
                }
                Some(&f) => {
                    add_edges(
                        &mut edges,
                        &mut edge_reasons,
                        &fields,
                        &drafts,
                        id,
                        f,
                        "reads",
                    );
                    reads.push(Read { field: f, optional });
                }
                None if optional => {}
                None => errors.push(Diagnostic::new(
                    at,
                    format!(
                        "{who} reads `{field}`, which no agent writes and no input declares{}",
                        suggestion(field, field_ids.keys().map(String::as_str))
                    ),
                )),
            }
        }

        let mut condition_fields = Vec::new();
        let when = match &agent.when {
            None => None,
            Some(expr) => match Condition::compile(expr.as_str()) {
                Ok(condition) => {
                    for field in condition.fields() {
                        match field_ids.get(field.as_str()) {
                            Some(&f) if fields[f].input.is_none() && fields[f].writers == [id] => {
                                errors.push(Diagnostic::new(
                                    source.at(expr.span()),
                                    format!("{who}: `when` refers to `{field}`, which only this agent writes, so the condition could never be evaluated"),
                                ))
                            }
                            Some(&f) => {
                                add_edges(&mut edges, &mut edge_reasons, &fields, &drafts, id, f, "has a condition on");
                                condition_fields.push(f);
                            }
                            None => errors.push(Diagnostic::new(
                                source.at(expr.span()),
                                format!(
                                    "{who}: `when` refers to `{field}`, which no agent writes and no input declares{}",
                                    suggestion(field, field_ids.keys().map(String::as_str))
                                ),
                            )),
                        }
                    }
                    Some(condition)
                }
                Err(e) => {
                    errors.push(Diagnostic::new(
                        source.at(expr.span()),
                        format!(
                            "{who}: malformed `when` expression `{}`: {e}",
                            expr.as_str()
                        ),
                    ));
                    None
                }
            },
        };

        for target in &agent.after {
            let at = source.at(target.span());
            match agent_ids.get(target.as_str()) {
                Some(&t) if t == id => errors.push(Diagnostic::new(
                    at,
                    format!("{who} lists itself in `after`"),
                )),
                Some(&t) => {
                    after_edges.push((t, id));
                    edge_reasons.entry((t, id)).or_insert_with(|| {
                        format!("{} runs after {}", draft.name, target.as_str())
                    });
                }
                None => errors.push(Diagnostic::new(
                    at,
                    format!(
                        "{who}: `after` names `{}`, which is not an agent of this pipeline{}",
                        target.as_str(),
                        suggestion(target.as_str(), drafts.iter().map(|d| d.name))
                    ),
                )),
            }
        }

        let timeout = duration(
            &agent.timeout,
            &format!("{who}: `timeout`"),
            &source,
            &mut errors,
        );
        if let (Some(t), Some(at)) = (timeout, &agent.timeout)
            && t.is_zero()
        {
            errors.push(Diagnostic::new(
                source.at(at.span()),
                format!("{who}: `timeout` must be longer than zero (leave it out for no timeout)"),
            ));
        }
        let policy = RetryPolicy {
            timeout: timeout.or(defaults.timeout),
            retries: agent.retries.as_ref().map_or(defaults.retries, |r| **r),
            backoff: duration(
                &agent.backoff,
                &format!("{who}: `backoff`"),
                &source,
                &mut errors,
            )
            .unwrap_or(defaults.backoff),
        };
        let expected = duration(
            &agent.expected,
            &format!("{who}: `expected`"),
            &source,
            &mut errors,
        );

        let writes: Arc<[WriteSlot]> = agent
            .writes
            .iter()
            .filter_map(|w| field_ids.get(w.as_str()).copied())
            .filter(|&f| fields[f].input.is_none())
            .map(|f| WriteSlot {
                field: f,
                name: fields[f].name.clone(),
                merge: fields[f].merge,
            })
            .collect();

        let kind_at = source.at(agent.kind.span());
        let misplaced = |key: &str, present: bool, kind: &str, errors: &mut Vec<Diagnostic>| {
            if present {
                errors.push(Diagnostic::new(
                    draft.at.clone(),
                    format!("{who}: `{key}` does not apply to a `{kind}` agent"),
                ));
            }
        };
        let built: Option<(AgentKind, Arc<dyn Agent>)> = match agent.kind.as_str() {
            "sleep" => {
                misplaced("run", agent.run.is_some(), "sleep", &mut errors);
                misplaced("pool", agent.pool.is_some(), "sleep", &mut errors);
                misplaced("env", !agent.env.is_empty(), "sleep", &mut errors);
                let duration = Duration::from_millis(agent.ms.as_ref().map_or(0, |ms| **ms));
                let value = agent
                    .value
                    .as_ref()
                    .map_or(Value::Bool(true), |v: &Located<Value>| v.value.clone());
                let names: Arc<[Arc<str>]> = writes.iter().map(|w| w.name.clone()).collect();
                Some((
                    AgentKind::Sleep { duration },
                    Arc::new(SleepAgent::new(duration, value, names)),
                ))
            }
            "command" => {
                misplaced("ms", agent.ms.is_some(), "command", &mut errors);
                misplaced("value", agent.value.is_some(), "command", &mut errors);
                match &agent.run {
                    Some(argv) if !argv.is_empty() && !argv[0].is_empty() => {
                        let argv: Vec<String> = argv.iter().map(|a| a.to_string()).collect();
                        let env = agent
                            .env
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect();
                        let runner: Arc<dyn Agent> = match agent.pool.as_ref().map(|p| **p) {
                            None => Arc::new(CommandAgent::new(&argv, dir, env)),
                            Some(0) => {
                                errors.push(Diagnostic::new(
                                    agent.pool.as_ref().and_then(|p| source.at(p.span())),
                                    format!("{who}: `pool` must be at least 1"),
                                ));
                                Arc::new(CommandAgent::new(&argv, dir, env))
                            }
                            Some(size) => Arc::new(PooledCommandAgent::new(
                                resolve_program(&argv[0], dir),
                                argv[1..].to_vec(),
                                dir.to_path_buf(),
                                env,
                                size as usize,
                            )),
                        };
                        Some((AgentKind::Command { argv }, runner))
                    }
                    _ => {
                        errors.push(Diagnostic::new(
                            draft.at.clone(),
                            format!("{who}: a `command` agent needs `run: [PROGRAM, ARGS...]`"),
                        ));
                        None
                    }
                }
            }
            "builtin" => {
                misplaced_core_keys(agent, &who, "builtin", draft.at.clone(), &mut errors);
                let function = agent.settings.get("function");
                match function.and_then(|f| f.value.as_str()) {
                    Some(function) => match kinds.builtin_named(function) {
                        Some(runner) => Some((
                            AgentKind::Builtin {
                                function: function.to_owned(),
                            },
                            runner,
                        )),
                        None => {
                            let known = kinds.builtin_names();
                            errors.push(Diagnostic::new(
                                function_at(agent, &draft.at),
                                format!(
                                    "{who}: no builtin agent `{function}` is registered{}",
                                    if known.is_empty() {
                                        " (register Rust agents with AgentKinds::builtin)"
                                            .to_owned()
                                    } else {
                                        format!("; registered: {}", known.join(", "))
                                    }
                                ),
                            ));
                            None
                        }
                    },
                    None => {
                        errors.push(Diagnostic::new(
                            draft.at.clone(),
                            format!("{who}: a `builtin` agent needs `function: NAME`"),
                        ));
                        None
                    }
                }
            }
            other => match kinds.factory(other) {
                Some(factory) => {
                    misplaced_core_keys(agent, &who, other, draft.at.clone(), &mut errors);
                    let settings: serde_json::Map<String, Value> = agent
                        .settings
                        .iter()
                        .map(|(k, v)| (k.clone(), v.value.clone()))
                        .collect();
                    let config = AgentConfig {
                        name: draft.name,
                        kind: other,
                        settings: &settings,
                        dir,
                        reads: agent.reads.iter().map(|r| r.to_string()).collect(),
                        writes: agent.writes.iter().map(|w| w.to_string()).collect(),
                    };
                    match factory(&config) {
                        Ok(runner) => Some((
                            AgentKind::Other {
                                kind: other.to_owned(),
                            },
                            runner,
                        )),
                        Err(message) => {
                            errors.push(Diagnostic::new(
                                draft.at.clone(),
                                format!("{who}: {message}"),
                            ));
                            None
                        }
                    }
                }
                None => {
                    errors.push(Diagnostic::new(
                        kind_at,
                        format!(
                            "{who}: unknown kind `{other}`; expected one of: {}",
                            kinds.names().join(", ")
                        ),
                    ));
                    None
                }
            },
        };
        own_definitions.push(crate::definition::own(draft.name, agent, dir, |f| {
            field_ids.get(f).and_then(|&f| fields[f].merge)
        }));
        if let Some((kind, runner)) = built {
            agents.push(AgentDef {
                name: Arc::from(draft.name),
                description: agent.description.clone(),
                kind,
                runner,
                reads,
                writes,
                when,
                condition_fields,
                policy,
                expected,
                location: draft.at.clone(),
                definition: Arc::from(""),
            });
        }
    }
    edges.extend(after_edges);

    // Cycles are reported alongside other problems: the edges that did
    // resolve are enough to find them.
    let graph = match DependencyGraph::build(drafts.len(), &edges) {
        Ok(graph) => graph,
        Err(cycles) => {
            errors.extend(cycles.into_iter().map(|cycle| {
                let names: Vec<&str> = cycle.agents.iter().map(|&a| drafts[a].name).collect();
                let reasons: Vec<&str> = cycle
                    .agents
                    .windows(2)
                    .filter_map(|w| edge_reasons.get(&(w[0], w[1])).map(String::as_str))
                    .collect();
                Diagnostic::new(
                    drafts[cycle.agents[0]].at.clone(),
                    format!(
                        "dependency cycle: {} ({})",
                        names.join(" -> "),
                        reasons.join("; ")
                    ),
                )
            }));
            return Err(errors);
        }
    };
    if !errors.is_empty() {
        // Agent ids only line up with the graph when every agent was built.
        return Err(errors);
    }

    if let Some(output) = &spec.output
        && !field_ids.contains_key(output.value.as_str())
    {
        errors.push(Diagnostic::new(
            output.at.clone(),
            format!(
                "`output: {}` names a field no agent writes and no input declares",
                output.value
            ),
        ));
    }

    // Write-write races: two writers of a field with no merge rule must be
    // ordered by a dependency path, or the result depends on timing.
    for field in &fields {
        if field.merge.is_some() || field.writers.len() < 2 {
            continue;
        }
        for (i, &a) in field.writers.iter().enumerate() {
            for &b in &field.writers[i + 1..] {
                if !graph.reaches(a, b) && !graph.reaches(b, a) {
                    let at = drafts[b]
                        .spec
                        .writes
                        .iter()
                        .find(|w| w.as_str() == &*field.name)
                        .and_then(|w| source.at(w.span()));
                    errors.push(Diagnostic::new(
                        at,
                        format!(
                            "write-write race on `{f}`: agents `{a}` and `{b}` both write it and neither depends on the other; \
                             order them with `after: [{a}]` on `{b}`, or declare how concurrent writes combine: \
                             `fields: {{ {f}: {{ merge: append }} }}` (one of {rules})",
                            f = field.name,
                            a = drafts[a].name,
                            b = drafts[b].name,
                            rules = MergeRule::NAMES.join(", "),
                        ),
                    ));
                }
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    for (agent, hash) in agents
        .iter_mut()
        .zip(crate::definition::chain(&own_definitions, &graph))
    {
        agent.definition = hash;
    }

    Ok(Pipeline {
        name: Arc::from(name.value.as_str()),
        description: spec.description,
        source: None,
        fields,
        agents,
        graph,
        concurrency: spec.concurrency.map(|c| c.value),
        on_failure,
        checkpoint,
        content_hash: Arc::from(""),
        output: spec.output.map(|o| o.value),
        id: next_pipeline_id(),
        max_value_depth: crate::depth::DEFAULT_MAX_VALUE_DEPTH,
    })
}

/// `sleep` and `command` keys on an agent of another kind.
fn misplaced_core_keys(
    agent: &AgentSpec,
    who: &str,
    kind: &str,
    at: Option<Location>,
    errors: &mut Vec<Diagnostic>,
) {
    let present = [
        ("ms", agent.ms.is_some()),
        ("value", agent.value.is_some()),
        ("run", agent.run.is_some()),
        ("env", !agent.env.is_empty()),
        ("pool", agent.pool.is_some()),
    ];
    for (key, is_there) in present {
        if is_there && CORE_KIND_KEYS.contains(&key) {
            errors.push(Diagnostic::new(
                at.clone(),
                format!("{who}: `{key}` does not apply to a `{kind}` agent"),
            ));
        }
    }
}

fn function_at(agent: &AgentSpec, fallback: &Option<Location>) -> Option<Location> {
    agent
        .settings
        .get("function")
        .and_then(|f| f.at.clone())
        .or_else(|| fallback.clone())
}

/// Adds an edge from every writer of `field` to `to` (except `to` itself).
fn add_edges(
    edges: &mut Vec<(AgentId, AgentId)>,
    reasons: &mut HashMap<(AgentId, AgentId), String>,
    fields: &[Field],
    drafts: &[Draft<'_>],
    to: AgentId,
    field: FieldId,
    how: &str,
) {
    for &from in &fields[field].writers {
        if from != to {
            edges.push((from, to));
            reasons.entry((from, to)).or_insert_with(|| {
                format!(
                    "{} {how} `{}` written by {}",
                    drafts[to].name, fields[field].name, drafts[from].name
                )
            });
        }
    }
}

fn content_hash(text: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// ` (did you mean `x`?)` when a known name is one or two edits away.
fn suggestion<'a>(wanted: &str, known: impl Iterator<Item = &'a str>) -> String {
    known
        .map(|k| (edit_distance(wanted, k), k))
        .filter(|&(d, _)| d <= 2)
        .min()
        .map(|(_, k)| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}
