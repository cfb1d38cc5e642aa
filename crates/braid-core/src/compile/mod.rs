//! Compiling a [`PipelineSpec`] into a [`Pipeline`]: every semantic check.
//!
//! One [`Compiler`] owns what the phases share (the field table, the agents
//! built so far, the dependency edges) and collects their diagnostics. The
//! phases run in a fixed order, which is also the order their diagnostics
//! are collected in (it decides which are kept past `max_diagnostics`):
//!
//! 1. the pipeline's own settings (name, `on_failure`, `checkpoint`,
//!    `defaults`), here;
//! 2. the field table: inputs, writes, merge rules (`fields.rs`);
//! 3. conditions, all parsed together, then each agent: its reads, `when`
//!    and `after` with the edges they imply (`edges.rs`), its retry policy
//!    and its kind (`agents.rs`);
//! 4. the dependency graph and its cycles (`edges.rs`), the `output` field
//!    (`fields.rs`) and write-write races (`races.rs`).
//!
//! Every check is linear in the file, and the compile stops with the
//! `compile_budget` diagnostic once its [`Deadline`] passes (checked between
//! inputs, agents and race batches). Loading (reading the file, limits,
//! parsing) is in `load.rs`.

mod agents;
mod edges;
mod fields;
mod foreach;
mod group;
mod input;

#[cfg(test)]
pub(crate) use input::INPUT_KEYS;
mod load;
mod races;
mod tools;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::checkpoint::CheckpointPolicy;
use crate::diagnostic::{Diagnostic, Diagnostics, Location};
use crate::graph::AgentId;
use crate::kinds::AgentKinds;
use crate::limits::LoadLimits;
use crate::pipeline::{AgentDef, FailurePolicy, Field, FieldId, Pipeline, next_pipeline_id};
use crate::spec::{AgentSpec, PipelineSpec, Source};

/// When compiling has to stop ([`LoadLimits::compile_budget`]).
pub(crate) struct Deadline {
    at: Option<Instant>,
    budget: Duration,
}

impl Deadline {
    pub(crate) fn after(budget: Duration) -> Self {
        Self {
            at: Instant::now().checked_add(budget),
            budget,
        }
    }

    /// `Err` with the diagnostic to report once the budget is spent.
    pub(crate) fn check(&self, doing: &str) -> Result<(), Diagnostic> {
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

/// Compiling stopped early; the collected diagnostics say why.
struct Stop;

/// One agent of the file while compiling.
struct Draft<'a> {
    name: &'a str,
    spec: &'a AgentSpec,
    at: Option<Location>,
}

/// The pipeline's own settings, checked before its agents.
struct Header {
    on_failure: FailurePolicy,
    checkpoint: Option<CheckpointPolicy>,
}

/// The state the phases share, and the diagnostics they collect.
struct Compiler<'a> {
    spec: &'a PipelineSpec,
    source: Source,
    dir: &'a Path,
    kinds: &'a AgentKinds,
    limits: &'a LoadLimits,
    deadline: &'a Deadline,
    errors: Diagnostics,
    /// The field table: inputs first, then every written field in order.
    fields: Vec<Field>,
    field_ids: HashMap<String, FieldId>,
    drafts: Vec<Draft<'a>>,
    agent_ids: HashMap<&'a str, AgentId>,
    /// Dependency edges from reads and conditions (`after` ones come last).
    edges: Vec<(AgentId, AgentId)>,
    /// The fields behind each agent's incoming edges, to explain a cycle.
    edge_fields: Vec<Vec<(FieldId, &'static str)>>,
    after_edges: Vec<(AgentId, AgentId)>,
    /// The agents built so far (every one, when there is no error).
    agents: Vec<AgentDef>,
    /// Each agent's own definition (see `definition.rs`).
    own_definitions: Vec<Value>,
    /// For a group's agents: the group's settings (see `group.rs`).
    nested: Option<Nested>,
    /// `defaults.cache` (or the one a group's agents inherit), which
    /// agents without a `cache:` of their own take.
    cache_default: Option<crate::cache::CachePolicy>,
    /// The tool agents (`tool:`), by name: not steps, so not drafts.
    tool_agents: indexmap::IndexMap<String, Arc<crate::agent::tool::Tool>>,
    /// Agents compiled so far, groups' included, shared by the nested
    /// compilers: groups (group files naming themselves, say) may not
    /// expand a pipeline past `max_agents`.
    compiled_agents: std::rc::Rc<std::cell::Cell<usize>>,
}

/// What a group's compile inherits from the pipeline around it.
struct Nested {
    /// The parent's `defaults`, as the group's agents start from them.
    defaults: crate::pipeline::RetryPolicy,
    /// The parent's `defaults.cache`, likewise.
    cache: Option<crate::cache::CachePolicy>,
    /// Inputs of the group's pipeline: the group's reads, the element and
    /// its index, `round`, the `carry` targets (each with where it is said).
    inputs: Vec<(String, Option<Location>)>,
    /// How many groups enclose this one (1 for a group of the pipeline).
    depth: usize,
}

/// Compiles `spec` (its agents run from `dir`): the field table, the
/// agents, the dependency graph, and every check on them.
pub(crate) fn compile(
    spec: &PipelineSpec,
    dir: &Path,
    kinds: &AgentKinds,
    limits: &LoadLimits,
    deadline: &Deadline,
    earlier: Diagnostics,
) -> Result<Pipeline, Diagnostics> {
    let mut compiler = Compiler::new(spec, dir, kinds, limits, deadline, None);
    // Problems found while reading the file (the spec holds the rest).
    compiler.errors = earlier;
    match compiler.run() {
        Ok(_) if !compiler.errors.is_empty() => Err(compiler.errors),
        Ok(pipeline) => Ok(pipeline),
        Err(Stop) => Err(compiler.errors),
    }
}

impl<'a> Compiler<'a> {
    fn new(
        spec: &'a PipelineSpec,
        dir: &'a Path,
        kinds: &'a AgentKinds,
        limits: &'a LoadLimits,
        deadline: &'a Deadline,
        source: Option<Source>,
    ) -> Self {
        let source = source.unwrap_or_else(|| Source {
            file: spec
                .name
                .as_ref()
                .and_then(|n| n.at.as_ref())
                .and_then(|l| l.file.clone()),
        });
        let drafts: Vec<Draft<'a>> = spec
            .agents
            .iter()
            .filter(|(_, located)| located.value.tool.is_none())
            .map(|(name, located)| Draft {
                name,
                spec: &located.value,
                at: located.at.clone(),
            })
            .collect();
        let agent_ids = drafts
            .iter()
            .enumerate()
            .map(|(i, d)| (d.name, i))
            .collect();
        Self {
            spec,
            source,
            dir,
            kinds,
            limits,
            deadline,
            errors: Diagnostics::new(limits.max_diagnostics),
            fields: Vec::new(),
            field_ids: HashMap::new(),
            edge_fields: vec![Vec::new(); drafts.len()],
            agents: Vec::with_capacity(drafts.len()),
            own_definitions: Vec::with_capacity(drafts.len()),
            drafts,
            agent_ids,
            edges: Vec::new(),
            after_edges: Vec::new(),
            nested: None,
            cache_default: None,
            tool_agents: indexmap::IndexMap::new(),
            compiled_agents: std::rc::Rc::new(std::cell::Cell::new(spec.agents.len())),
        }
    }

    /// The phases, in order.
    fn run(&mut self) -> Result<Pipeline, Stop> {
        let header = self.header();
        let defaults = self.default_policy();
        self.cache_default = self.default_cache();
        self.inputs()?;
        self.writes()?;
        self.merge_rules();
        self.tool_agents(&defaults);
        let mut conditions = self.conditions()?;
        for id in 0..self.drafts.len() {
            self.agent(id, &defaults, &mut conditions)?;
        }
        let graph = self.graph()?;
        // Races are found on the drafts' graph, so they are reported with
        // the other problems even when an agent could not be built: the
        // whole file's problems come in one report, not one phase at a time.
        self.output_field();
        self.waiting_needs_a_store(header.checkpoint);
        self.races(&graph)?;
        self.stop_if_failed()?;
        let hashes = crate::definition::chain(&self.own_definitions, &graph);
        let mut agents = std::mem::take(&mut self.agents);
        let has_groups = agents.iter().any(|a| a.group.is_some());
        let waits = agents.iter().any(|a| a.input.is_some());
        for (agent, hash) in agents.iter_mut().zip(hashes) {
            agent.definition = hash;
        }
        let spec = self.spec;
        Ok(Pipeline {
            name: Arc::from(spec.name.as_ref().map_or("", |n| n.value.as_str())),
            description: spec.description.clone(),
            source: None,
            fields: std::mem::take(&mut self.fields),
            agents,
            graph,
            concurrency: spec.concurrency.as_ref().map(|c| c.value),
            on_failure: header.on_failure,
            checkpoint: header.checkpoint,
            content_hash: Arc::from(""),
            output: spec.output.as_ref().map(|o| o.value.clone()),
            id: next_pipeline_id(),
            max_value_depth: crate::depth::DEFAULT_MAX_VALUE_DEPTH,
            has_groups,
            waits_for_input: waits,
            own_definitions: std::mem::take(&mut self.own_definitions),
            portable: std::sync::OnceLock::new(),
            tool_agents: std::mem::take(&mut self.tool_agents)
                .into_values()
                .collect(),
        })
    }

    /// A pipeline with `input` agents keeps its waiting runs in a store:
    /// `checkpoint: none` is refused.
    fn waiting_needs_a_store(&mut self, checkpoint: Option<CheckpointPolicy>) {
        if checkpoint != Some(CheckpointPolicy::None) {
            return;
        }
        if let Some(agent) = self.agents.iter().find(|a| a.input.is_some()) {
            let at = self.spec.checkpoint.as_ref().and_then(|c| c.at.clone());
            let message = format!(
                "`checkpoint: none` cannot keep a run that waits: agent `{}` is an `input` agent; \
                 leave `checkpoint` out or use `end` or `agent` (runs that wait are checkpointed per agent)",
                agent.name
            );
            self.error(at, message);
        }
    }

    /// Records a diagnostic at `at`.
    fn error(&mut self, at: Option<Location>, message: impl Into<String>) {
        self.errors.push(Diagnostic::new(at, message));
    }

    /// Stops with the budget diagnostic once time is out.
    fn budget(&mut self, doing: &str) -> Result<(), Stop> {
        self.deadline.check(doing).map_err(|d| {
            self.errors.push(d);
            Stop
        })
    }

    /// Stops if anything was found so far.
    fn stop_if_failed(&self) -> Result<(), Stop> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(Stop)
        }
    }

    /// The pipeline's name, its agents' presence, `on_failure`,
    /// `defaults.timeout` and `checkpoint`.
    fn header(&mut self) -> Header {
        let spec = self.spec;
        let name = spec.name.as_ref().expect("parse requires a name");
        let valid_name = !name.value.is_empty()
            && name
                .value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid_name {
            self.error(
                name.at.clone(),
                format!(
                    "`pipeline: {}`: a pipeline's name must be letters, digits, `-`, `_` and `.` (it appears in URLs and file names)",
                    name.value
                ),
            );
        }
        if self.drafts.is_empty() {
            self.error(
                spec.agents_at.clone().or(name.at.clone()),
                "the pipeline has no agents; add at least one under `agents:`",
            );
        }
        let on_failure = match spec.on_failure.as_ref().map(|l| (l.value.as_str(), l)) {
            None | Some(("fail", _)) => FailurePolicy::Fail,
            Some(("continue", _)) => FailurePolicy::Continue,
            Some((other, l)) => {
                self.error(
                    l.at.clone(),
                    format!("`on_failure` must be `fail` or `continue`, found `{other}`"),
                );
                FailurePolicy::Fail
            }
        };
        if let Some(t) = &spec.defaults.timeout
            && humantime::parse_duration(t.trim()).is_ok_and(|d| d.is_zero())
        {
            self.error(
                self.source.at(t.span()),
                "`defaults.timeout` must be longer than zero (leave it out for no timeout)",
            );
        }
        let checkpoint = match &spec.checkpoint {
            None => None,
            Some(l) => match l.value.parse::<CheckpointPolicy>() {
                Ok(policy) => Some(policy),
                Err(e) => {
                    self.error(l.at.clone(), format!("`checkpoint`: {e}"));
                    None
                }
            },
        };
        Header {
            on_failure,
            checkpoint,
        }
    }
}

/// ` (did you mean `x`?)` when a known name is one or two edits away.
/// Only worked out while the diagnostic will be kept (it compares against
/// every known name).
fn suggestion<'n>(
    wanted: &str,
    known: impl Iterator<Item = &'n str>,
    errors: &Diagnostics,
) -> String {
    if !errors.has_room() {
        return String::new();
    }
    crate::diagnostic::did_you_mean(wanted, known)
}
