//! A validated, runnable pipeline.
//!
//! [`Pipeline::from_file`] reads a pipeline file, checks everything that can
//! be checked before running (shape, names, reads that resolve, `after`
//! targets, conditions, cycles, write-write races, input schemas) and builds
//! the dependency graph. After this point nothing is validated again, except
//! a run's input (once, by [`Pipeline::check_input`]) and each agent's output
//! against its own declared writes.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::agent::Agent;
use crate::agent::command::{CommandAgent, resolve_program};
use crate::agent::pool::PooledCommandAgent;
use crate::agent::sleep::SleepAgent;
use crate::checkpoint::CheckpointPolicy;
use crate::condition::{Condition, ConditionError};
use crate::diagnostic::{Diagnostic, Diagnostics, LoadError, Location};
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
        let text = read_text(path, limits)?;
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
        let source = Source {
            file: file.map(Arc::from),
        };
        // In file order, as a reader goes through the file, at most
        // `max_diagnostics` of them.
        let invalid = |diagnostics: Diagnostics| LoadError::Invalid {
            diagnostics: diagnostics.finish(),
        };
        if text.len() > limits.max_bytes {
            let mut errors = Diagnostics::new(1);
            errors.push(Diagnostic::new(
                source.start(),
                format!(
                    "the pipeline is {} bytes long; the limit is {} bytes (max_bytes)",
                    text.len(),
                    limits.max_bytes
                ),
            ));
            return Err(invalid(errors));
        }
        // A byte-order mark is not part of the document (editors on Windows
        // write one); the hash still covers the text as given.
        let body = text.strip_prefix('\u{feff}').unwrap_or(text);
        let deadline = Deadline::after(limits.compile_budget);
        let spec = spec::parse(body, &source, limits).map_err(invalid)?;
        if spec.agents.len() > limits.max_agents {
            let mut errors = Diagnostics::new(1);
            errors.push(Diagnostic::new(
                spec.agents_at.clone(),
                format!(
                    "the pipeline declares {} agents; the limit is {} (max_agents)",
                    spec.agents.len(),
                    limits.max_agents
                ),
            ));
            return Err(invalid(errors));
        }
        let mut pipeline = compile(spec, dir, kinds, limits, &deadline).map_err(invalid)?;
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
    errors: &mut Diagnostics,
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

/// A `retries` count, refused (at its place) above [`MAX_RETRIES`].
fn retries(
    value: &Option<marked_yaml::Spanned<u32>>,
    what: &str,
    source: &Source,
    errors: &mut Diagnostics,
) -> Option<u32> {
    let value = value.as_ref()?;
    if **value > MAX_RETRIES {
        errors.push(Diagnostic::new(
            source.at(value.span()),
            format!(
                "{what}: {} is too many; at most {MAX_RETRIES} retries are allowed",
                **value
            ),
        ));
        return None;
    }
    Some(**value)
}

/// A `backoff` duration, refused (at its place) below [`MIN_BACKOFF`].
fn backoff(
    value: &Option<marked_yaml::Spanned<String>>,
    what: &str,
    source: &Source,
    errors: &mut Diagnostics,
) -> Option<Duration> {
    let parsed = duration(value, what, source, errors)?;
    if parsed < MIN_BACKOFF {
        errors.push(Diagnostic::new(
            value.as_ref().and_then(|v| source.at(v.span())),
            format!(
                "{what}: `{}` is too short; the shortest backoff is {}",
                value.as_ref().map_or("", |v| v.as_str()),
                humantime::format_duration(MIN_BACKOFF)
            ),
        ));
        return None;
    }
    Some(parsed)
}

/// Everything known about one agent while compiling.
struct Draft<'a> {
    name: &'a str,
    spec: &'a AgentSpec,
    at: Option<Location>,
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

/// When compiling has to stop ([`LoadLimits::compile_budget`]).
struct Deadline {
    at: Option<Instant>,
    budget: Duration,
}

impl Deadline {
    fn after(budget: Duration) -> Self {
        Self {
            at: Instant::now().checked_add(budget),
            budget,
        }
    }

    /// `Err` with the diagnostic to report once the budget is spent.
    fn check(&self, doing: &str) -> Result<(), Diagnostic> {
        match self.at {
            Some(at) if Instant::now() >= at => Err(Diagnostic::new(
                None,
                format!(
                    "compiling the pipeline took longer than its budget of {} (compile_budget) while {doing}; \
                     split the pipeline or ask for a larger budget",
                    humantime::format_duration(self.budget)
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// Reads a pipeline file of at most `limits.max_bytes` bytes as UTF-8,
/// reporting invalid UTF-8 at its line and column.
fn read_text(path: &Path, limits: &LoadLimits) -> Result<String, LoadError> {
    use std::io::Read;
    let read_error = |source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    let cap = u64::try_from(limits.max_bytes)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    file.take(cap).read_to_end(&mut bytes).map_err(read_error)?;
    let at = |line: usize, column: usize| {
        Some(Location {
            file: Some(Arc::from(path)),
            line,
            column,
        })
    };
    if bytes.len() > limits.max_bytes {
        return Err(LoadError::Invalid {
            diagnostics: vec![Diagnostic::new(
                at(1, 1),
                format!(
                    "the pipeline file is larger than the limit of {} bytes (max_bytes)",
                    limits.max_bytes
                ),
            )],
        });
    }
    String::from_utf8(bytes).map_err(|err| {
        let bytes = err.as_bytes();
        let good = err.utf8_error().valid_up_to();
        let valid = std::str::from_utf8(&bytes[..good]).unwrap_or_default();
        let line = valid.matches('\n').count() + 1;
        let column = valid.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        LoadError::Invalid {
            diagnostics: vec![Diagnostic::new(
                at(line, column),
                format!(
                    "invalid UTF-8 (byte 0x{:02x}); pipeline files must be UTF-8 text",
                    bytes[good]
                ),
            )],
        }
    })
}

fn compile(
    spec: PipelineSpec,
    dir: &Path,
    kinds: &AgentKinds,
    limits: &LoadLimits,
    deadline: &Deadline,
) -> Result<Pipeline, Diagnostics> {
    let source = Source {
        file: spec
            .name
            .as_ref()
            .and_then(|n| n.at.as_ref())
            .and_then(|l| l.file.clone()),
    };
    let mut errors = Diagnostics::new(limits.max_diagnostics);
    // Gives up with `$errors` plus the budget diagnostic once time is out.
    macro_rules! budget {
        ($doing:expr) => {
            if let Err(d) = deadline.check($doing) {
                errors.push(d);
                return Err(errors);
            }
        };
    }
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
        retries: retries(
            &spec.defaults.retries,
            "defaults.retries",
            &source,
            &mut errors,
        )
        .unwrap_or(0),
        backoff: backoff(
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
        budget!("compiling input schemas");
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
        budget!("resolving writes");
        let mut seen = HashSet::new();
        for w in &draft.spec.writes {
            let field = w.as_str();
            let at = source.at(w.span());
            if !is_identifier(field) {
                errors.push(Diagnostic::new(at, format!("agent `{}` writes `{field}`: field names must be letters, digits and `_`, starting with a letter or `_`", draft.name)));
                continue;
            }
            if !seen.insert(field) {
                errors.push(Diagnostic::new(
                    at,
                    format!("agent `{}` lists `{field}` twice in `writes`", draft.name),
                ));
                continue;
            }
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

    // Conditions, all on one parser thread (see `condition`).
    budget!("compiling conditions");
    let when_sources: Vec<&str> = drafts
        .iter()
        .filter_map(|d| d.spec.when.as_ref().map(|w| w.as_str()))
        .collect();
    let mut compiled_conditions =
        Condition::parse_many(&when_sources, limits, &|| deadline.check("").is_err()).into_iter();
    budget!("compiling conditions");

    // Reads, conditions, `after`, kinds; and the edges they imply.
    let mut edges: Vec<(AgentId, AgentId)> = Vec::new();
    // The fields behind each agent's incoming edges, to explain a cycle.
    let mut edge_fields: Vec<Vec<(FieldId, &'static str)>> = vec![Vec::new(); drafts.len()];
    let mut agents = Vec::with_capacity(drafts.len());
    let mut after_edges = Vec::new();
    let mut own_definitions = Vec::with_capacity(drafts.len());
    for (id, draft) in drafts.iter().enumerate() {
        let agent = draft.spec;
        budget!("resolving reads");
        if edges.len() >= MAX_DEPENDENCIES {
            errors.push(too_many_dependencies(draft));
            return Err(errors);
        }
        let who = format!("agent `{}`", draft.name);
        let mut reads = Vec::new();
        let mut read_names = HashSet::new();
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
            if !read_names.insert(field) {
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
                    add_edges(&mut edges, &fields, id, f);
                    edge_fields[id].push((f, "reads"));
                    reads.push(Read { field: f, optional });
                }
                None if optional => {}
                None => errors.push(Diagnostic::new(
                    at,
                    format!(
                        "{who} reads `{field}`, which no agent writes and no input declares{}",
                        suggestion(field, field_ids.keys().map(String::as_str), &errors)
                    ),
                )),
            }
        }

        let mut condition_fields = Vec::new();
        let when = match &agent.when {
            None => None,
            Some(expr) => match compiled_conditions
                .next()
                .expect("one compiled condition per `when`")
            {
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
                                add_edges(&mut edges, &fields, id, f);
                                edge_fields[id].push((f, "has a condition on"));
                                condition_fields.push(f);
                            }
                            None => errors.push(Diagnostic::new(
                                source.at(expr.span()),
                                format!(
                                    "{who}: `when` refers to `{field}`, which no agent writes and no input declares{}",
                                    suggestion(field, field_ids.keys().map(String::as_str), &errors)
                                ),
                            )),
                        }
                    }
                    Some(condition)
                }
                Err(e @ ConditionError::Malformed(_)) => {
                    errors.push(Diagnostic::new(
                        source.at(expr.span()),
                        format!(
                            "{who}: malformed `when` expression `{}`: {e}",
                            abbreviate(expr.as_str())
                        ),
                    ));
                    None
                }
                Err(e) => {
                    errors.push(Diagnostic::new(
                        source.at(expr.span()),
                        format!("{who}: `when`: {e}"),
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
                }
                None => errors.push(Diagnostic::new(
                    at,
                    format!(
                        "{who}: `after` names `{}`, which is not an agent of this pipeline{}",
                        target.as_str(),
                        suggestion(target.as_str(), drafts.iter().map(|d| d.name), &errors)
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
            retries: retries(
                &agent.retries,
                &format!("{who}: `retries`"),
                &source,
                &mut errors,
            )
            .unwrap_or(defaults.retries),
            backoff: backoff(
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

        let writes: Arc<[FieldWrite]> = agent
            .writes
            .iter()
            .filter_map(|w| field_ids.get(w.as_str()).copied())
            .filter(|&f| fields[f].input.is_none())
            .map(|f| FieldWrite {
                field: f,
                name: fields[f].name.clone(),
                merge: fields[f].merge,
                optional: false,
            })
            .collect();

        let kind_at = source.at(agent.kind.span());
        let misplaced = |key: &str, present: bool, kind: &str, errors: &mut Diagnostics| {
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
                foreach: None,
            });
        }
    }
    if edges.len() >= MAX_DEPENDENCIES {
        errors.push(too_many_dependencies(
            drafts.last().expect("agents were read"),
        ));
        return Err(errors);
    }
    edges.extend(after_edges);

    // Cycles are reported alongside other problems: the edges that did
    // resolve are enough to find them.
    let graph = match DependencyGraph::build(drafts.len(), &edges) {
        Ok(graph) => graph,
        Err(cycles) => {
            errors.extend(cycles.into_iter().map(|cycle| {
                // A long cycle is shown by its first steps and its length.
                const SHOWN: usize = 10;
                let steps = cycle.agents.len() - 1;
                let mut names: Vec<&str> = cycle
                    .agents
                    .iter()
                    .take(SHOWN + 1)
                    .map(|&a| drafts[a].name)
                    .collect();
                if steps > SHOWN {
                    names.push("…");
                    names.push(drafts[cycle.agents[0]].name);
                }
                let length = if steps > SHOWN {
                    format!("; {steps} agents, the first {SHOWN} steps shown")
                } else {
                    String::new()
                };
                let reasons: Vec<String> = cycle.agents[..cycle.agents.len().min(SHOWN + 1)]
                    .windows(2)
                    .filter_map(|w| {
                        let (from, to) = (drafts[w[0]].name, drafts[w[1]].name);
                        let field = edge_fields[w[1]]
                            .iter()
                            .find(|(f, _)| fields[*f].writers.contains(&w[0]));
                        match field {
                            Some((f, how)) => Some(format!(
                                "{to} {how} `{}` written by {from}",
                                fields[*f].name
                            )),
                            None if drafts[w[1]].spec.after.iter().any(|a| a.as_str() == from) => {
                                Some(format!("{to} runs after {from}"))
                            }
                            None => None,
                        }
                    })
                    .collect();
                Diagnostic::new(
                    drafts[cycle.agents[0]].at.clone(),
                    format!(
                        "dependency cycle: {} ({}{length})",
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
    // ordered by a dependency path, or the result depends on timing. The
    // writers of a field are all ordered exactly when each one reaches the
    // next in topological order, so only those neighbouring pairs are asked
    // about, all at once (see `DependencyGraph::reaches_all`).
    budget!("looking for write-write races");
    let mut racy_fields: Vec<(FieldId, Vec<AgentId>)> = Vec::new();
    let mut queries: Vec<(AgentId, AgentId)> = Vec::new();
    for (f, field) in fields.iter().enumerate() {
        if field.merge.is_some() || field.writers.len() < 2 {
            continue;
        }
        let mut writers = field.writers.clone();
        writers.sort_unstable_by_key(|&a| graph.rank(a));
        queries.extend(writers.windows(2).map(|w| (w[0], w[1])));
        racy_fields.push((f, writers));
    }
    let answers = match graph.reaches_all(&queries, &|| deadline.check("").is_err()) {
        Some(answers) => answers,
        None => {
            budget!("looking for write-write races");
            unreachable!("reaches_all gives up only when the budget is spent")
        }
    };
    let mut answers = answers.into_iter();
    for (f, writers) in racy_fields {
        let field = &fields[f];
        // Writers on either side of an unordered neighbouring pair.
        let mut involved: Vec<AgentId> = Vec::new();
        let mut first: Option<(AgentId, AgentId)> = None;
        for w in writers.windows(2) {
            if !answers.next().expect("one answer per pair") {
                first.get_or_insert((w[0], w[1]));
                involved.extend([w[0], w[1]]);
            }
        }
        let Some((a, b)) = first else { continue };
        let (a, b) = (a.min(b), a.max(b));
        involved.sort_unstable();
        involved.dedup();
        let at = drafts[b]
            .spec
            .writes
            .iter()
            .find(|w| w.as_str() == &*field.name)
            .and_then(|w| source.at(w.span()));
        let who = if involved.len() == 2 {
            format!(
                "agents `{}` and `{}` both write it and neither depends on the other",
                drafts[a].name, drafts[b].name
            )
        } else {
            const SHOWN: usize = 5;
            let names: Vec<String> = involved
                .iter()
                .take(SHOWN)
                .map(|&x| format!("`{}`", drafts[x].name))
                .collect();
            let more = involved.len().saturating_sub(SHOWN);
            format!(
                "agents {}{} write it without an order between them (`{}` and `{}` do not depend on each other)",
                names.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                },
                drafts[a].name,
                drafts[b].name,
            )
        };
        errors.push(Diagnostic::new(
            at,
            format!(
                "write-write race on `{f}`: {who}; \
                 order them with `after: [{a}]` on `{b}`, or declare how concurrent writes combine: \
                 `fields: {{ {f}: {{ merge: append }} }}` (one of {rules})",
                f = field.name,
                a = drafts[a].name,
                b = drafts[b].name,
                rules = MergeRule::NAMES.join(", "),
            ),
        ));
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
    errors: &mut Diagnostics,
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

/// The error for a pipeline with [`MAX_DEPENDENCIES`] edges, at the agent
/// that reached it.
fn too_many_dependencies(draft: &Draft<'_>) -> Diagnostic {
    Diagnostic::new(
        draft.at.clone(),
        format!(
            "the pipeline implies {MAX_DEPENDENCIES} or more dependencies \
             (every reader of a field depends on every writer of it), \
             reached at agent `{}`; the limit is {MAX_DEPENDENCIES}: share fewer fields between many writers and many readers",
            draft.name
        ),
    )
}

/// Adds an edge from every writer of `field` to `to` (except `to` itself),
/// up to [`MAX_DEPENDENCIES`] edges in all.
fn add_edges(edges: &mut Vec<(AgentId, AgentId)>, fields: &[Field], to: AgentId, field: FieldId) {
    for &from in &fields[field].writers {
        if edges.len() >= MAX_DEPENDENCIES {
            return;
        }
        if from != to {
            edges.push((from, to));
        }
    }
}

/// `text` cut to its first 80 characters, for quoting in a message.
fn abbreviate(text: &str) -> String {
    match text.char_indices().nth(80) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

fn content_hash(text: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// ` (did you mean `x`?)` when a known name is one or two edits away.
/// Only worked out for short names and while the diagnostic will be kept
/// (it compares against every known name).
fn suggestion<'a>(
    wanted: &str,
    known: impl Iterator<Item = &'a str>,
    errors: &Diagnostics,
) -> String {
    if wanted.len() > 64 || !errors.has_room() {
        return String::new();
    }
    known
        .filter(|k| k.len().abs_diff(wanted.len()) <= 2)
        .take(10_000)
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
