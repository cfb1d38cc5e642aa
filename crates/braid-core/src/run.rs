//! Running a pipeline: input checking, the eager scheduler, retries and
//! timeouts, cancellation, and the run report.
//!
//! The scheduler is one loop that owns the run's state. Agents run as tasks
//! in a [`JoinSet`]; when one finishes, its writes are merged and every
//! dependent whose last dependency that was is started at once (subject
//! only to the run's concurrency limit). There is no level barrier. Dropping
//! the run's future, cancelling its token or a failing agent aborts every
//! task still in flight, and command agents' process groups with them.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::agent::{Agent, AgentError, AgentInput, Reads, Writes};
use crate::checkpoint::{
    AgentRecord, CheckpointPolicy, Checkpointer, FieldValue, ResumePoint, RunRecord,
};
use crate::event::{EventKind, EventSink};
use crate::graph::AgentId;
use crate::pipeline::{FailurePolicy, FieldId, Pipeline, RetryPolicy, WriteSlot};
use crate::state::RunState;

/// How to run a pipeline once.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The run's id; a new time-ordered UUID (v7) when `None`.
    pub run_id: Option<String>,
    /// Run one agent at a time, in topological order: the baseline that
    /// shows what the dependency graph buys.
    pub sequential: bool,
    /// Most agents in flight; overrides the pipeline's `concurrency`.
    pub concurrency: Option<usize>,
    /// Cancelling this token stops the run: agents in flight are aborted
    /// and the report says what had finished.
    pub cancel: CancellationToken,
    /// Where progress events go. `None` (batch runs): no event is built.
    pub events: Option<EventSink>,
    /// Where checkpoints go. `None`: nothing is recorded.
    pub checkpointer: Option<Arc<dyn Checkpointer>>,
    /// When to checkpoint; overrides the pipeline's `checkpoint:`, which
    /// defaults to `end`.
    pub checkpoint: Option<CheckpointPolicy>,
    /// Continue an earlier run: its completed agents whose definition hash
    /// (and every upstream one) is unchanged do not run again; see
    /// [`ResumePoint`]. Use the earlier run's id in `run_id`.
    pub resume: Option<ResumePoint>,
}

impl fmt::Debug for dyn Checkpointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<checkpointer>")
    }
}

/// A run's input, checked against the pipeline's `inputs` schemas. Only
/// [`Pipeline::check_input`] makes one, so a run never re-validates.
///
/// It belongs to the pipeline instance that checked it: another pipeline
/// (even one loaded from the same file) refuses it, and its run ends
/// `failed` at once, with an error that says so and nothing run.
#[derive(Debug, Clone)]
pub struct ValidInput {
    pub(crate) values: Vec<(FieldId, Arc<Value>)>,
    /// The [`Pipeline`] instance that checked it.
    pub(crate) pipeline: u64,
    /// That pipeline's name, for the error when another one is given it.
    pub(crate) pipeline_name: Arc<str>,
}

static PIPELINE_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A new pipeline instance's identity.
pub(crate) fn next_pipeline_id() -> u64 {
    PIPELINE_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Why a run's input was refused: every problem found.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid run input:\n  - {}", .problems.join("\n  - "))]
pub struct InputError {
    /// One line per problem, naming the input field.
    pub problems: Vec<String>,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Every agent completed or was skipped.
    Completed,
    /// An agent failed.
    Failed,
    /// The run was cancelled before it finished.
    Cancelled,
}

impl RunStatus {
    /// True for [`RunStatus::Completed`].
    pub fn is_success(self) -> bool {
        self == RunStatus::Completed
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        })
    }
}

/// Where one agent got to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentStatus {
    /// Not started (only seen while a run is in progress).
    Pending,
    /// In flight.
    Running,
    /// Finished; its writes are in the state.
    Completed,
    /// Failed for good (after its retries).
    Failed,
    /// Did not run: its condition was false, or a read it needs was never produced.
    Skipped,
    /// Stopped, or never started, because the run was cancelled or failed.
    Cancelled,
}

impl fmt::Display for AgentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self).expect("a plain enum serializes");
        f.write_str(s.as_str().unwrap_or("?"))
    }
}

impl std::str::FromStr for AgentStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        serde_json::from_value(Value::String(s.to_owned()))
            .map_err(|_| format!("unknown agent status `{s}`"))
    }
}

impl std::str::FromStr for RunStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        serde_json::from_value(Value::String(s.to_owned()))
            .map_err(|_| format!("unknown run status `{s}`"))
    }
}

/// What happened to one agent.
#[derive(Debug, Clone, Serialize)]
pub struct AgentReport {
    /// Where it got to.
    pub status: AgentStatus,
    /// When its first attempt started, in ms from the run's start.
    pub start_ms: Option<f64>,
    /// From its first attempt's start to its last attempt's end, in ms.
    pub duration_ms: Option<f64>,
    /// How long it waited between being ready and starting (concurrency limit), in ms.
    pub queue_ms: Option<f64>,
    /// How many attempts it made.
    pub attempts: u32,
    /// Why it failed or was cancelled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why it was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// It finished in an earlier attempt at this run, which this one resumed;
    /// its timings are from then.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub resumed: bool,
    /// Model tokens it used (LLM agents).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tokens: Option<crate::agent::TokenUsage>,
}

/// The outcome of a run: status, timings, and the final state.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// The run's id.
    pub run_id: String,
    /// The pipeline's name.
    pub pipeline: String,
    /// How it ended.
    pub status: RunStatus,
    /// Why it failed or was cancelled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// From start to the last agent's end, in ms (monotonic clock).
    pub makespan_ms: f64,
    /// Every field that has a value: the inputs and what completed agents wrote.
    pub state: IndexMap<String, Arc<Value>>,
    /// Every agent, in declaration order.
    pub agents: IndexMap<String, AgentReport>,
    /// Model tokens all agents used, when any did.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tokens: Option<crate::agent::TokenUsage>,
}

impl Pipeline {
    /// Checks a run's input against the pipeline's `inputs` (JSON Schema per
    /// field). Unknown fields are refused; a missing field takes its
    /// schema's `default` or is refused. `null` counts as `{}`.
    pub fn check_input(&self, input: &Value) -> Result<ValidInput, InputError> {
        let empty = Map::new();
        let object = match input {
            Value::Object(map) => map,
            Value::Null => &empty,
            other => {
                return Err(InputError {
                    problems: vec![format!(
                        "the run input must be a JSON object of input fields, got `{other}`"
                    )],
                });
            }
        };
        let mut problems = Vec::new();
        let declared: Vec<&str> = self.input_names().collect();
        for key in object.keys() {
            if !declared.contains(&key.as_str()) {
                problems.push(if declared.is_empty() {
                    format!("unknown input field `{key}`: this pipeline declares no inputs")
                } else {
                    format!(
                        "unknown input field `{key}`; this pipeline's inputs are: {}",
                        declared.join(", ")
                    )
                });
            }
        }
        let mut values = Vec::new();
        for (id, field) in self.fields.iter().enumerate() {
            let Some(input) = &field.input else { continue };
            let value = match object.get(&*field.name) {
                Some(v) => v,
                None => match &input.default {
                    Some(default) => default,
                    None => {
                        problems.push(format!("missing input field `{}`", field.name));
                        continue;
                    }
                },
            };
            if crate::depth::exceeds(value, self.max_value_depth) {
                problems.push(format!(
                    "input `{}` is nested more than {} levels deep, the limit (max_value_depth)",
                    field.name, self.max_value_depth
                ));
                continue;
            }
            let before = problems.len();
            for error in input.validator.iter_errors(value) {
                let path = error.instance_path().to_string();
                problems.push(format!("input `{}{path}`: {error}", field.name));
            }
            if problems.len() == before {
                values.push((id, Arc::new(value.clone())));
            }
        }
        if problems.is_empty() {
            Ok(ValidInput {
                values,
                pipeline: self.id,
                pipeline_name: self.name.clone(),
            })
        } else {
            Err(InputError { problems })
        }
    }

    /// The deepest nesting of arrays and objects a value in this
    /// pipeline's runs may have: inputs deeper than this are refused by
    /// [`check_input`](Self::check_input), and an agent whose output is
    /// deeper fails. Defaults to [`crate::depth::DEFAULT_MAX_VALUE_DEPTH`]
    /// (64); see [`crate::depth`].
    pub fn max_value_depth(&self) -> usize {
        self.max_value_depth
    }

    /// Sets [`max_value_depth`](Self::max_value_depth), at most
    /// [`crate::depth::MAX_VALUE_DEPTH_CEILING`] (100), so that everything a
    /// run stores can be read back.
    pub fn set_max_value_depth(
        &mut self,
        depth: usize,
    ) -> Result<(), crate::depth::DepthCeilingError> {
        if depth > crate::depth::MAX_VALUE_DEPTH_CEILING {
            return Err(crate::depth::DepthCeilingError { asked: depth });
        }
        self.max_value_depth = depth;
        Ok(())
    }

    /// The state an earlier run reached: `input` plus the writes of its
    /// completed agents, applied in topological order with the pipeline's
    /// merge rules. Records of agents the pipeline no longer has are ignored;
    /// definition hashes are not compared (this shows what the run reached).
    /// An input another pipeline checked contributes nothing.
    pub fn replay(
        &self,
        input: ValidInput,
        agents: &[AgentRecord],
    ) -> IndexMap<String, Arc<Value>> {
        let mut scheduler = Scheduler::new(self, input, RunOptions::default());
        // What the run reached, as recorded: no definition check here.
        scheduler.resume(
            ResumePoint {
                agents: agents.to_vec(),
            },
            false,
        );
        scheduler.state.into_map(self)
    }

    /// Runs the pipeline once with a checked input. Never fails as a whole:
    /// agent failures, skips and cancellation are in the report.
    ///
    /// (A plain `fn` returning a future rather than an `async fn`: the
    /// future then holds the scheduler once, not also room for the
    /// arguments it was built from; 10,000 runs in flight hold 10,000.)
    pub fn run(
        &self,
        input: ValidInput,
        options: RunOptions,
    ) -> impl Future<Output = RunReport> + Send + '_ {
        use tracing::Instrument;
        let scheduler = Scheduler::new(self, input, options);
        // `status` and `otel.status_code` are filled in at the end (the
        // latter is what OpenTelemetry exporters read, see braid-cli).
        let span = tracing::info_span!(
            "run",
            pipeline = %self.name,
            run_id = %scheduler.run_id,
            status = tracing::field::Empty,
            "otel.status_code" = tracing::field::Empty,
        );
        scheduler.run().instrument(span)
    }
}

/// One agent's bookkeeping during a run.
#[derive(Debug, Clone)]
struct Slot {
    status: AgentStatus,
    missing: usize,
    ready_at: Option<Instant>,
    started: Option<Instant>,
    finished: Option<Instant>,
    attempts: u32,
    error: Option<String>,
    reason: Option<String>,
    /// Its record from the run this one resumes (boxed: rare, and slots
    /// are per agent per run in flight).
    resumed: Option<Box<AgentReport>>,
    /// Waiting in the ready queue (never queued twice).
    queued: bool,
    /// Tokens its calls used.
    usage: Arc<crate::agent::TokenCounter>,
}

/// What an agent's task hands back.
struct Finished {
    agent: AgentId,
    attempts: u32,
    finished: Instant,
    result: Result<Vec<(FieldId, Arc<Value>)>, AgentError>,
}

struct Scheduler<'p> {
    pipeline: &'p Pipeline,
    run_id: Arc<str>,
    options: RunOptions,
    state: RunState,
    slots: Vec<Slot>,
    /// Ready agents, earliest in topological order first.
    ready: BinaryHeap<Reverse<(usize, AgentId)>>,
    tasks: JoinSet<Finished>,
    task_agent: HashMap<tokio::task::Id, AgentId>,
    start: Instant,
    /// Set when the run must stop: its status and why.
    stop: Option<(RunStatus, String)>,
    any_failed: bool,
    /// Present when the run is checkpointed.
    checkpoint: Option<(Arc<dyn Checkpointer>, CheckpointPolicy, RunRecord)>,
    /// Each completed agent's writes, until the end (when checkpointed).
    kept_writes: Vec<Vec<FieldValue>>,
    /// Where command agents put their process groups on record (policy `agent`).
    processes: Option<Arc<crate::agent::ProcessRecorder>>,
}

impl<'p> Scheduler<'p> {
    fn new(pipeline: &'p Pipeline, input: ValidInput, options: RunOptions) -> Self {
        // An input another pipeline checked names fields by that pipeline's
        // table: it is not used, and the run fails before anything starts.
        let foreign = (input.pipeline != pipeline.id).then(|| {
            format!(
                "the run's input was checked by another pipeline (`{}`, a different instance), \
                 not by this `{}`; check it with this pipeline's check_input",
                input.pipeline_name, pipeline.name
            )
        });
        let input = if foreign.is_some() {
            tracing::warn!(pipeline = %pipeline.name, "refusing an input checked by another pipeline");
            ValidInput {
                values: Vec::new(),
                pipeline: pipeline.id,
                pipeline_name: pipeline.name.clone(),
            }
        } else {
            input
        };
        let run_id: Arc<str> = match &options.run_id {
            Some(id) => Arc::from(id.as_str()),
            None => Arc::from(uuid::Uuid::now_v7().to_string()),
        };
        let n = pipeline.agents.len();
        let slots = (0..n)
            .map(|a| Slot {
                status: AgentStatus::Pending,
                missing: pipeline.graph.dependencies(a).len(),
                ready_at: None,
                started: None,
                finished: None,
                attempts: 0,
                error: None,
                reason: None,
                resumed: None,
                queued: false,
                usage: Arc::default(),
            })
            .collect();
        let policy = options
            .checkpoint
            .or(pipeline.checkpoint)
            .unwrap_or_default();
        let checkpoint = options
            .checkpointer
            .clone()
            .filter(|_| policy != CheckpointPolicy::None && foreign.is_none())
            .map(|checkpointer| {
                let record = RunRecord {
                    run_id: run_id.clone(),
                    pipeline: pipeline.name.clone(),
                    pipeline_hash: pipeline.content_hash.clone(),
                    pipeline_path: pipeline.source.clone(),
                    input: input
                        .values
                        .iter()
                        .map(|(f, v)| (pipeline.fields[*f].name.clone(), v.clone()))
                        .collect(),
                    policy,
                };
                (checkpointer, policy, record)
            });
        // Only checkpointed runs keep writes for the end.
        let kept_writes = if checkpoint.is_some() {
            vec![Vec::new(); n]
        } else {
            Vec::new()
        };
        let processes = checkpoint
            .as_ref()
            .filter(|(_, policy, _)| *policy == CheckpointPolicy::Agent)
            .map(|(checkpointer, _, run)| {
                Arc::new(crate::agent::ProcessRecorder {
                    checkpointer: checkpointer.clone(),
                    run: run.clone(),
                })
            });
        Self {
            pipeline,
            run_id,
            processes,
            state: RunState::new(pipeline, input),
            options,
            slots,
            ready: BinaryHeap::new(),
            tasks: JoinSet::new(),
            task_agent: HashMap::new(),
            start: Instant::now(),
            stop: foreign.map(|why| (RunStatus::Failed, why)),
            any_failed: false,
            kept_writes,
            checkpoint,
        }
    }

    fn policy(&self) -> CheckpointPolicy {
        self.checkpoint
            .as_ref()
            .map_or(CheckpointPolicy::None, |(_, policy, _)| *policy)
    }

    /// What the report will say of `agent`, as of now.
    fn agent_report(&self, agent: AgentId) -> AgentReport {
        let slot = &self.slots[agent];
        if let Some(earlier) = &slot.resumed {
            return (**earlier).clone();
        }
        let start = self.start;
        AgentReport {
            status: slot.status,
            start_ms: slot.started.map(|s| ms(s - start)),
            duration_ms: slot.started.zip(slot.finished).map(|(s, f)| ms(f - s)),
            queue_ms: slot.ready_at.zip(slot.started).map(|(r, s)| ms(s - r)),
            attempts: slot.attempts,
            error: slot.error.clone(),
            reason: slot.reason.clone(),
            resumed: false,
            tokens: slot.usage.usage(),
        }
    }

    /// Hands an agent's outcome to the checkpointer (policy `agent`), or
    /// keeps its writes for the end (policy `end`).
    fn checkpoint_agent(&mut self, agent: AgentId, writes: Vec<FieldValue>) {
        if self.policy() == CheckpointPolicy::Agent {
            let record = AgentRecord {
                agent: self.pipeline.agents[agent].name.clone(),
                report: self.agent_report(agent),
                writes: writes.clone(),
                definition: Some(self.pipeline.agents[agent].definition.clone()),
            };
            if let Some((checkpointer, _, run)) = &self.checkpoint {
                checkpointer.agent_finished(run, &record);
            }
        }
        // Kept for the end either way (shared values, not copies): with
        // `agent`, the store needs them again only if an earlier write of
        // this run was lost.
        if self.policy() != CheckpointPolicy::None {
            self.kept_writes[agent] = writes;
        }
    }

    fn named(&self, writes: &[(FieldId, Arc<Value>)]) -> Vec<FieldValue> {
        writes
            .iter()
            .map(|(f, v)| (self.pipeline.fields[*f].name.clone(), v.clone()))
            .collect()
    }

    /// Marks the agents an earlier attempt finished as done, applying
    /// their writes in topological order. With `check_definitions`, a
    /// record is reused only if its agent's definition hash is unchanged
    /// and every agent it depends on is reused too (see [`ResumePoint`]).
    fn resume(&mut self, point: ResumePoint, check_definitions: bool) {
        let pipeline = self.pipeline;
        let mut by_agent: Vec<Option<AgentRecord>> = vec![None; pipeline.agents.len()];
        for record in point.agents {
            // Only completed agents keep their results; skips are decided
            // again, since what they depended on may now turn out otherwise.
            if record.report.status != AgentStatus::Completed {
                continue;
            }
            let Some(id) = pipeline.agents.iter().position(|a| a.name == record.agent) else {
                continue;
            };
            by_agent[id] = Some(record);
        }
        let mut reused = vec![false; pipeline.agents.len()];
        for &id in pipeline.graph.topological_order() {
            let Some(record) = by_agent[id].take() else {
                continue;
            };
            if check_definitions {
                let same = record.definition.as_deref() == Some(&*pipeline.agents[id].definition);
                let upstream = pipeline.graph.dependencies(id).iter().all(|&d| reused[d]);
                if !same || !upstream {
                    tracing::debug!(
                        agent = %record.agent,
                        changed = !same,
                        "resume: stored output not reused; the agent runs again"
                    );
                    continue;
                }
            }
            reused[id] = true;
            let writes: Vec<(FieldId, Arc<Value>)> = record
                .writes
                .iter()
                .filter_map(|(name, value)| {
                    let slot = pipeline.agents[id]
                        .writes
                        .iter()
                        .find(|w| w.name == *name)?;
                    Some((slot.field, value.clone()))
                })
                .collect();
            self.state.apply(pipeline, id, writes);
            let slot = &mut self.slots[id];
            slot.status = record.report.status;
            slot.attempts = record.report.attempts;
            slot.resumed = Some(Box::new(AgentReport {
                resumed: true,
                ..record.report
            }));
        }
        let now = self.start;
        for a in 0..self.slots.len() {
            if self.slots[a].resumed.is_some() {
                self.release(a, now);
            }
        }
    }

    fn emit(&self, kind: impl FnOnce() -> EventKind) {
        if let Some(events) = &self.options.events {
            events.emit(kind());
        }
    }

    fn limit(&self) -> usize {
        if self.options.sequential {
            1
        } else {
            self.options
                .concurrency
                .or(self.pipeline.concurrency)
                .unwrap_or(usize::MAX)
                .max(1)
        }
    }

    async fn run(mut self) -> RunReport {
        self.start = Instant::now();
        if let Some(events) = &self.options.events {
            events.started_at(self.start);
        }
        self.emit(|| EventKind::RunStarted {
            run_id: self.run_id.clone(),
            pipeline: self.pipeline.name.clone(),
        });
        if let Some((checkpointer, CheckpointPolicy::Agent, run)) = &self.checkpoint {
            checkpointer.run_started(run);
        }
        if let Some(point) = self.options.resume.take()
            && self.stop.is_none()
        {
            self.resume(point, true);
        }
        for a in 0..self.slots.len() {
            if self.slots[a].missing == 0 && self.slots[a].status == AgentStatus::Pending {
                self.make_ready(a, self.start);
            }
        }
        let limit = self.limit();
        let cancel = self.options.cancel.clone();
        while self.stop.is_none() {
            if cancel.is_cancelled() {
                self.stop = Some((RunStatus::Cancelled, "the run was cancelled".to_owned()));
                break;
            }
            while self.tasks.len() < limit && self.stop.is_none() {
                let Some(Reverse((_, a))) = self.ready.pop() else {
                    break;
                };
                self.launch(a);
            }
            if self.tasks.is_empty() || self.stop.is_some() {
                break;
            }
            tokio::select! {
                biased;
                () = cancel.cancelled() => {
                    self.stop = Some((RunStatus::Cancelled, "the run was cancelled".to_owned()));
                }
                Some(joined) = self.tasks.join_next_with_id() => self.finish(joined),
            }
        }
        self.wind_down().await;
        let report = self.report();
        // The run's span is current: `Pipeline::run` instruments this future.
        let span = tracing::Span::current();
        if !span.is_disabled() {
            span.record("status", tracing::field::display(report.status));
            if !report.status.is_success() {
                span.record("otel.status_code", "ERROR");
            }
        }
        crate::telemetry::run_finished(&report);
        report
    }

    fn make_ready(&mut self, agent: AgentId, now: Instant) {
        let slot = &mut self.slots[agent];
        if slot.queued || slot.status != AgentStatus::Pending {
            return;
        }
        slot.queued = true;
        slot.ready_at = Some(now);
        self.ready
            .push(Reverse((self.pipeline.graph.rank(agent), agent)));
    }

    /// Marks `agent` done (whatever its status) and readies dependents
    /// whose last dependency it was.
    fn release(&mut self, agent: AgentId, now: Instant) {
        for &d in self.pipeline.graph.dependents(agent) {
            let slot = &mut self.slots[d];
            slot.missing -= 1;
            if slot.missing == 0 {
                self.make_ready(d, now);
            }
        }
    }

    /// Whether a writer of `field` (other than `reader`) failed or was
    /// cancelled: the field's value is then partial or stale, and is not
    /// handed on (this only happens with `on_failure: continue`).
    fn writer_failed(&self, field: FieldId, reader: AgentId) -> bool {
        self.pipeline.fields[field].writers.iter().any(|&w| {
            w != reader
                && matches!(
                    self.slots[w].status,
                    AgentStatus::Failed | AgentStatus::Cancelled
                )
        })
    }

    /// Why `field` has no usable value: which of its writers did not complete.
    fn unavailable(&self, field: FieldId) -> String {
        let def = &self.pipeline.fields[field];
        let writers: Vec<String> = def
            .writers
            .iter()
            .map(|&w| {
                format!(
                    "`{}` {}",
                    self.pipeline.agents[w].name, self.slots[w].status
                )
            })
            .collect();
        format!(
            "needs `{}`, which was not fully produced ({})",
            def.name,
            writers.join(", ")
        )
    }

    fn skip(&mut self, agent: AgentId, reason: String, now: Instant) {
        self.emit(|| EventKind::AgentSkipped {
            agent: self.pipeline.agents[agent].name.clone(),
            reason: reason.clone(),
        });
        crate::telemetry::agent_finished("skipped", None, 0);
        let slot = &mut self.slots[agent];
        slot.status = AgentStatus::Skipped;
        slot.reason = Some(reason);
        self.checkpoint_agent(agent, Vec::new());
        self.release(agent, now);
    }

    fn fail(&mut self, agent: AgentId, error: String, now: Instant) {
        let name = self.pipeline.agents[agent].name.clone();
        self.emit(|| EventKind::AgentFailed {
            agent: name.clone(),
            error: error.clone(),
        });
        self.any_failed = true;
        crate::telemetry::agent_finished("failed", None, self.slots[agent].attempts);
        let slot = &mut self.slots[agent];
        slot.status = AgentStatus::Failed;
        slot.finished.get_or_insert(now);
        slot.error = Some(error.clone());
        self.checkpoint_agent(agent, Vec::new());
        match self.pipeline.on_failure {
            FailurePolicy::Fail => {
                self.stop = Some((RunStatus::Failed, format!("agent `{name}` failed: {error}")));
            }
            FailurePolicy::Continue => self.release(agent, now),
        }
    }

    /// Starts `agent`, or skips it when its condition is false or a read it
    /// needs was never produced.
    fn launch(&mut self, agent: AgentId) {
        let now = Instant::now();
        let pipeline = self.pipeline;
        let def = &pipeline.agents[agent];
        // Merge fields it reads are combined now, once all their writers are done.
        for field in def
            .reads
            .iter()
            .map(|r| r.field)
            .chain(def.condition_fields.iter().copied())
        {
            if let Err(why) = self.state.settle(pipeline, field) {
                self.stop = Some((RunStatus::Failed, format!("merge failed: {why}")));
                return;
            }
        }
        let required = def
            .condition_fields
            .iter()
            .copied()
            .chain(def.reads.iter().filter(|r| !r.optional).map(|r| r.field));
        for field in required {
            if self.state.get(field).is_none() || self.writer_failed(field, agent) {
                let reason = self.unavailable(field);
                return self.skip(agent, reason, now);
            }
        }
        if let Some(condition) = &def.when {
            let values = def
                .condition_fields
                .iter()
                .filter_map(|&f| self.state.get(f).map(|v| (pipeline.field_name(f), &**v)));
            match condition.evaluate(values) {
                Ok(true) => {}
                Ok(false) => {
                    let reason = format!("condition `{}` is false", condition.source());
                    return self.skip(agent, reason, now);
                }
                Err(error) => return self.fail(agent, error, now),
            }
        }

        let reads = Reads(
            def.reads
                .iter()
                .filter(|r| !r.optional || !self.writer_failed(r.field, agent))
                .filter_map(|r| {
                    self.state
                        .get(r.field)
                        .map(|v| (pipeline.fields[r.field].name.clone(), v.clone()))
                })
                .collect(),
        );
        let input = AgentInput {
            run_id: self.run_id.clone(),
            agent: def.name.clone(),
            attempt: 1,
            reads,
            events: self.options.events.clone(),
            usage: self.slots[agent].usage.clone(),
            processes: self.processes.clone(),
        };
        let task = attempt_loop(
            agent,
            def.runner.clone(),
            input,
            def.policy,
            def.writes.clone(),
            pipeline.max_value_depth,
        );
        // The agent's spans are children of the run's.
        let task = tracing::Instrument::instrument(task, tracing::Span::current());
        let handle = self.tasks.spawn(task);
        self.task_agent.insert(handle.id(), agent);
        let slot = &mut self.slots[agent];
        slot.status = AgentStatus::Running;
        slot.started = Some(now);
        if let Some(ready) = slot.ready_at {
            crate::telemetry::queue_wait(now - ready);
        }
        self.emit(|| EventKind::AgentStarted {
            agent: def.name.clone(),
            attempt: 1,
        });
    }

    fn finish(&mut self, joined: Result<(tokio::task::Id, Finished), tokio::task::JoinError>) {
        match joined {
            Ok((id, done)) => {
                self.task_agent.remove(&id);
                let agent = done.agent;
                self.slots[agent].attempts = done.attempts;
                match done.result {
                    Ok(writes) => self.complete(agent, writes, done.finished),
                    Err(error) => self.fail(agent, error.to_string(), done.finished),
                }
            }
            Err(error) => {
                let Some(agent) = self.task_agent.remove(&error.id()) else {
                    return;
                };
                let now = Instant::now();
                if error.is_cancelled() {
                    self.cancelled(agent, now);
                } else {
                    self.slots[agent].attempts = self.slots[agent].attempts.max(1);
                    self.fail(agent, format!("the agent panicked: {error}"), now);
                }
            }
        }
    }

    fn complete(&mut self, agent: AgentId, writes: Vec<(FieldId, Arc<Value>)>, now: Instant) {
        let named = if self.checkpoint.is_some() {
            self.named(&writes)
        } else {
            Vec::new()
        };
        self.state.apply(self.pipeline, agent, writes);
        let slot = &mut self.slots[agent];
        slot.status = AgentStatus::Completed;
        slot.finished = Some(now);
        let duration = slot.started.map(|s| ms(now - s)).unwrap_or_default();
        self.emit(|| EventKind::AgentCompleted {
            agent: self.pipeline.agents[agent].name.clone(),
            duration_ms: duration,
        });
        crate::telemetry::agent_finished("completed", Some(duration), self.slots[agent].attempts);
        self.checkpoint_agent(agent, named);
        self.release(agent, now);
    }

    fn cancelled(&mut self, agent: AgentId, now: Instant) {
        let reason = self.stop.as_ref().map(|(_, why)| why.clone());
        let slot = &mut self.slots[agent];
        slot.status = AgentStatus::Cancelled;
        slot.finished = Some(now);
        slot.attempts = slot.attempts.max(1);
        slot.error = Some(format!(
            "cancelled in flight: {}",
            reason.unwrap_or_else(|| "the run stopped".to_owned())
        ));
    }

    /// Aborts what is still in flight and keeps what finished meanwhile.
    async fn wind_down(&mut self) {
        self.tasks.abort_all();
        while let Some(joined) = self.tasks.join_next_with_id().await {
            match joined {
                Ok((id, done)) => {
                    self.task_agent.remove(&id);
                    self.slots[done.agent].attempts = done.attempts;
                    if let Ok(writes) = done.result {
                        // It finished before the abort reached it: keep its work,
                        // but start nothing new.
                        let named = if self.checkpoint.is_some() {
                            self.named(&writes)
                        } else {
                            Vec::new()
                        };
                        self.state.apply(self.pipeline, done.agent, writes);
                        let slot = &mut self.slots[done.agent];
                        slot.status = AgentStatus::Completed;
                        slot.finished = Some(done.finished);
                        let duration_ms = slot
                            .started
                            .map(|s| ms(done.finished - s))
                            .unwrap_or_default();
                        self.emit(|| EventKind::AgentCompleted {
                            agent: self.pipeline.agents[done.agent].name.clone(),
                            duration_ms,
                        });
                        self.checkpoint_agent(done.agent, named);
                    } else if let Err(error) = done.result {
                        let error = error.to_string();
                        self.emit(|| EventKind::AgentFailed {
                            agent: self.pipeline.agents[done.agent].name.clone(),
                            error: error.clone(),
                        });
                        let slot = &mut self.slots[done.agent];
                        slot.status = AgentStatus::Failed;
                        slot.finished = Some(done.finished);
                        slot.error = Some(error);
                    }
                }
                Err(error) => {
                    if let Some(agent) = self.task_agent.remove(&error.id()) {
                        self.cancelled(agent, Instant::now());
                    }
                }
            }
        }
        let why = self.stop.as_ref().map(|(_, why)| why.clone());
        for slot in &mut self.slots {
            if slot.status == AgentStatus::Pending {
                slot.status = AgentStatus::Cancelled;
                slot.error = Some(format!(
                    "not started: {}",
                    why.clone().unwrap_or_else(|| "the run stopped".to_owned())
                ));
            }
        }
    }

    fn report(mut self) -> RunReport {
        // Merge fields nobody read yet are combined now; one that cannot be
        // (a `sum` that does not fit) fails the run.
        if let Err(why) = self.state.settle_all(self.pipeline)
            && self.stop.is_none()
        {
            self.stop = Some((RunStatus::Failed, format!("merge failed: {why}")));
        }
        let end = self
            .slots
            .iter()
            .filter_map(|s| s.finished)
            .max()
            .unwrap_or(self.start)
            .max(if self.stop.is_some() {
                Instant::now()
            } else {
                self.start
            });
        let makespan_ms = ms(end - self.start);
        let (status, error) = match self.stop.clone() {
            Some((status, why)) => (status, Some(why)),
            None if self.any_failed => {
                let failed: Vec<&str> = self
                    .slots
                    .iter()
                    .zip(&self.pipeline.agents)
                    .filter(|(s, _)| s.status == AgentStatus::Failed)
                    .map(|(_, a)| &*a.name)
                    .collect();
                (
                    RunStatus::Failed,
                    Some(format!("failed agents: {}", failed.join(", "))),
                )
            }
            None => (RunStatus::Completed, None),
        };
        self.emit(|| EventKind::RunFinished {
            status,
            makespan_ms,
        });
        let agents: IndexMap<String, AgentReport> = (0..self.slots.len())
            .map(|a| {
                (
                    self.pipeline.agents[a].name.to_string(),
                    self.agent_report(a),
                )
            })
            .collect();
        let report = RunReport {
            run_id: self.run_id.to_string(),
            pipeline: self.pipeline.name.to_string(),
            status,
            error,
            makespan_ms,
            state: self.state.into_map(self.pipeline),
            tokens: agents.values().filter_map(|a| a.tokens).reduce(|a, b| {
                crate::agent::TokenUsage {
                    prompt: a.prompt + b.prompt,
                    completion: a.completion + b.completion,
                }
            }),
            agents,
        };
        if let Some((checkpointer, _, run)) = &self.checkpoint {
            let records: Vec<AgentRecord> = self
                .kept_writes
                .iter_mut()
                .zip(&report.agents)
                .zip(&self.pipeline.agents)
                .map(|((writes, (name, agent)), def)| AgentRecord {
                    agent: Arc::from(name.as_str()),
                    report: agent.clone(),
                    writes: std::mem::take(writes),
                    definition: Some(def.definition.clone()),
                })
                .collect();
            checkpointer.run_finished(run, &report, &records);
        }
        report
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs an agent's attempts: timeout per attempt, retries with exponential
/// backoff and jitter, and the output checked against its declared writes.
async fn attempt_loop(
    agent: AgentId,
    runner: Arc<dyn Agent>,
    mut input: AgentInput,
    policy: RetryPolicy,
    writes: Arc<[WriteSlot]>,
    max_depth: usize,
) -> Finished {
    use tracing::Instrument;
    let mut attempt = 1;
    loop {
        input.attempt = attempt;
        let span = tracing::debug_span!(
            "agent",
            agent = %input.agent,
            attempt,
            error = tracing::field::Empty,
            "otel.status_code" = tracing::field::Empty,
        );
        let outcome = match policy.timeout {
            Some(limit) => tokio::time::timeout(limit, runner.call(&input))
                .instrument(span.clone())
                .await
                .unwrap_or(Err(AgentError::Timeout(limit))),
            None => runner.call(&input).instrument(span.clone()).await,
        };
        let result = outcome.and_then(|out| check_writes(out, &writes, &input.agent, max_depth));
        if let Err(error) = &result
            && !span.is_disabled()
        {
            span.record("error", tracing::field::display(error));
            span.record("otel.status_code", "ERROR");
        }
        drop(span);
        match result {
            Err(error) if attempt <= policy.retries && error.is_retryable() => {
                let delay = backoff(policy.backoff, attempt);
                crate::telemetry::retried();
                tracing::debug!(agent = %input.agent, attempt, %error, "retrying");
                if let Some(events) = &input.events {
                    events.emit(EventKind::AgentRetrying {
                        agent: input.agent.clone(),
                        attempt,
                        error: error.to_string(),
                        delay_ms: ms(delay),
                    });
                }
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            result => {
                return Finished {
                    agent,
                    attempts: attempt,
                    finished: Instant::now(),
                    result,
                };
            }
        }
    }
}

/// The delay before retry number `attempt`: `base × 2^(attempt-1)`, capped
/// at one minute, with "equal jitter" (half fixed, half random) so that
/// agents failing together do not retry in lockstep.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let exp = base
        .saturating_mul(1u32 << (attempt - 1).min(16))
        .min(Duration::from_secs(60));
    let half = exp / 2;
    half + half.mul_f64(fastrand::f64())
}

/// Checks an agent's output against its declared writes: an object with
/// exactly those fields, each nested at most `max_depth` deep and
/// acceptable to its field's merge rule.
fn check_writes(
    mut out: Writes,
    writes: &[WriteSlot],
    agent: &str,
    max_depth: usize,
) -> Result<Vec<(FieldId, Arc<Value>)>, AgentError> {
    let undeclared: Vec<&String> = out
        .keys()
        .filter(|k| !writes.iter().any(|w| &*w.name == k.as_str()))
        .collect();
    if !undeclared.is_empty() {
        let declared: Vec<&str> = writes.iter().map(|w| &*w.name).collect();
        return Err(AgentError::Output(format!(
            "wrote undeclared field(s) {}; it declares writes: [{}]",
            undeclared
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", "),
            declared.join(", ")
        )));
    }
    let mut values = Vec::with_capacity(writes.len());
    let mut missing = Vec::new();
    for slot in writes {
        match out.remove(&*slot.name) {
            Some(value) => {
                if crate::depth::exceeds(&value, max_depth) {
                    return Err(AgentError::Output(format!(
                        "agent `{agent}` wrote `{}` nested more than {max_depth} levels deep, \
                         the limit (max_value_depth); deeper values could not be stored and read back",
                        slot.name
                    )));
                }
                if let Some(rule) = slot.merge {
                    rule.check(&value)
                        .map_err(|e| AgentError::Output(format!("field `{}`: {e}", slot.name)))?;
                }
                values.push((slot.field, Arc::new(value)));
            }
            None => missing.push(format!("`{}`", slot.name)),
        }
    }
    if !missing.is_empty() {
        return Err(AgentError::Output(format!(
            "did not write declared field(s) {}",
            missing.join(", ")
        )));
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let base = Duration::from_millis(100);
        for attempt in 1..=4 {
            let d = backoff(base, attempt);
            let full = base * (1 << (attempt - 1));
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
        }
        assert!(backoff(Duration::from_secs(10), 30) <= Duration::from_secs(60));
    }
}
