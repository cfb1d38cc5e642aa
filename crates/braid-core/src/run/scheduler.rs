//! The scheduler loop: which agents are ready, launching them within the
//! concurrency limit, resuming, stopping, and the run's report. How an
//! agent's outcome is recorded, and winding down, are in `outcome.rs`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::future::Pending;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::future::Either;

use serde_json::Value;
use tokio::time::Instant;

use super::attempt::{Finished, Member, attempt_loop};
use super::fanout::Fanout;
use super::members::{InFlight, MemberTask};
use super::{RunOptions, ms};
use crate::agent::{AgentInput, Reads};
use crate::checkpoint::{
    AgentRecord, CheckpointPolicy, Checkpointer, FieldValue, ResumePoint, RunRecord,
};
use crate::event::EventKind;
use crate::graph::AgentId;
use crate::input::ValidInput;
use crate::pipeline::{FieldId, Pipeline};
use crate::report::{AgentReport, AgentStatus, RunReport, RunStatus};
use crate::state::RunState;

/// One agent's bookkeeping during a run: what every agent has inline,
/// what few agents have behind one pointer ([`Rare`]), so that the
/// bookkeeping of a run in flight stays small.
#[derive(Debug)]
pub(super) struct AgentProgress {
    pub(super) status: AgentStatus,
    /// Waiting in the ready queue (never queued twice).
    pub(super) queued: bool,
    /// Its writes came from the cache.
    pub(super) cached: bool,
    pub(super) attempts: u32,
    pub(super) missing: usize,
    pub(super) ready_at: Option<Instant>,
    pub(super) started: Option<Instant>,
    pub(super) finished: Option<Instant>,
    /// Made when the agent first needs one of its fields.
    pub(super) rare: Option<Box<Rare>>,
}

/// The parts of an agent's bookkeeping most agents never use: an error or
/// a reason, a resumed record, a fan-out, kept logs, failed attempts, tool
/// calls.
#[derive(Debug, Default)]
pub(super) struct Rare {
    pub(super) error: Option<String>,
    pub(super) reason: Option<String>,
    /// Its record from the run this one resumes.
    pub(super) resumed: Option<AgentReport>,
    /// A `foreach` agent's instances, once its list is known.
    pub(super) fanout: Option<Box<Fanout>>,
    /// Its log lines, kept when the run is checkpointed (made at its start).
    pub(super) logs: Option<Arc<crate::agent::logs::KeptLogs>>,
    /// Its failed attempts (and its instances', named), oldest first.
    pub(super) failures: Vec<crate::report::AttemptFailure>,
    /// Its tool calls (an agent with `tools:`), made at its start.
    pub(super) tool_calls: Option<Arc<crate::agent::tool::ToolCalls>>,
}

impl AgentProgress {
    fn new(missing: usize) -> Self {
        Self {
            status: AgentStatus::Pending,
            queued: false,
            cached: false,
            attempts: 0,
            missing,
            ready_at: None,
            started: None,
            finished: None,
            rare: None,
        }
    }

    /// Its rare parts, made on first use.
    pub(super) fn rare(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Default::default)
    }

    pub(super) fn error(&self) -> Option<&String> {
        self.rare.as_ref()?.error.as_ref()
    }

    pub(super) fn resumed(&self) -> Option<&AgentReport> {
        self.rare.as_ref()?.resumed.as_ref()
    }

    pub(super) fn fanout(&self) -> Option<&Fanout> {
        self.rare.as_ref()?.fanout.as_deref()
    }

    pub(super) fn fanout_mut(&mut self) -> Option<&mut Fanout> {
        self.rare.as_mut()?.fanout.as_deref_mut()
    }

    /// Takes its fan-out out (to be put back with `put_fanout`).
    pub(super) fn take_fanout(&mut self) -> Option<Box<Fanout>> {
        self.rare.as_mut()?.fanout.take()
    }

    pub(super) fn put_fanout(&mut self, fanout: Box<Fanout>) {
        self.rare().fanout = Some(fanout);
    }
}

/// One run in progress: everything the loop owns.
pub(super) struct Scheduler<'p> {
    pub(super) pipeline: &'p Pipeline,
    pub(super) run_id: Arc<str>,
    pub(super) options: RunOptions,
    pub(super) state: RunState,
    pub(super) progress: Vec<AgentProgress>,
    /// Tokens each agent's calls used, by agent (one allocation a run).
    pub(super) tokens: Arc<[crate::agent::TokenCounter]>,
    /// Ready agents, earliest in topological order first.
    pub(super) ready: BinaryHeap<Reverse<(usize, AgentId)>>,
    /// Its members in flight (see `members.rs`).
    pub(super) tasks: InFlight<'p>,
    /// What the run this one continues left to take up (a resumed run's
    /// alone: boxed, so that other runs do not carry three empty maps).
    pub(super) resumed: Option<Box<Resumed>>,
    pub(super) start: Instant,
    /// The time of this turn of the loop, read once (see
    /// [`Scheduler::clock`]).
    pub(super) turn_time: Option<Instant>,
    /// Set when the run must stop: its status and why.
    pub(super) stop: Option<(RunStatus, String)>,
    pub(super) any_failed: bool,
    /// Present when the run is checkpointed.
    pub(super) checkpoint: Option<(Arc<dyn Checkpointer>, CheckpointPolicy, RunRecord)>,
    /// Each completed agent's writes, until the end (when checkpointed).
    pub(super) kept_writes: Vec<Vec<FieldValue>>,
    /// Where command agents put their process groups on record (policy `agent`).
    pub(super) processes: Option<Arc<crate::agent::ProcessRecorder>>,
    /// A nested run's path (`per_doc[3]`, `refine#2`): its members are
    /// named `path.agent`. `None` for the run itself.
    pub(super) prefix: Option<Arc<str>>,
    /// In a nested run: each agent's path (`prefix.agent`), made once
    /// rather than formatted at every start, end and report.
    pub(super) paths: Vec<Arc<str>>,
    /// A nested run's members went to the run's context (see
    /// `hand_over_members`).
    pub(super) handed_over: bool,
    /// In a nested run: the group's definition hash (see `definition_of`).
    pub(super) group_definition: Option<Arc<str>>,
    /// What nested runs share; present when the pipeline has groups.
    pub(super) ctx: Option<Arc<super::group::RunContext>>,
    /// The deepest value an agent may write (the run's `max_value_depth`,
    /// which nested runs share).
    pub(super) max_depth: usize,
    /// The run's concurrency slots, shared with nested runs (only a run
    /// with groups and a limit has them; others count their tasks).
    pub(super) slots: Option<Arc<tokio::sync::Semaphore>>,
    /// The slot taken for the agent being launched, moved into its task.
    pub(super) slot: Option<tokio::sync::OwnedSemaphorePermit>,
    /// A slot that came free while the loop waited for one.
    pub(super) spare: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Ready agents wait for a slot.
    pub(super) wants_slot: bool,
    /// The run's concurrency limit (`usize::MAX` for none), nested runs
    /// included.
    pub(super) run_limit: usize,
    /// `input` agents waiting for their answer, with their deadline (ms
    /// since the Unix epoch; `None` waits for ever). See `wait.rs`.
    pub(super) waits: Vec<(AgentId, Option<i64>)>,
    /// The span current when the loop began (the run's, when recorded):
    /// its agents' spans are its children. Taken once, not looked up in
    /// the dispatcher for every agent.
    pub(super) loop_span: tracing::Span,
}

/// The next answer in the inbox (never, without one).
async fn next_answer(
    inbox: Option<&mut tokio::sync::mpsc::Receiver<crate::answer::Answer>>,
) -> Option<crate::answer::Answer> {
    match inbox {
        Some(inbox) => inbox.recv().await,
        None => std::future::pending().await,
    }
}

/// The next snapshot request (for ever, without an inbox).
async fn next_snapshot_request(
    inbox: Option<&mut tokio::sync::mpsc::Receiver<SnapshotReply>>,
) -> Option<SnapshotReply> {
    match inbox {
        Some(inbox) => inbox.recv().await,
        None => std::future::pending().await,
    }
}

type SnapshotReply = tokio::sync::oneshot::Sender<crate::snapshot::RunSnapshot>;

/// Sleeps until `wake` (for ever, without one).
///
/// The timer is boxed: the run loop's future holds every branch of its
/// `select!` while it waits, and a timer inline is 112 bytes in every run
/// in flight, while few runs ever have a deadline.
fn sleep_until(wake: Option<Instant>) -> Either<Pin<Box<tokio::time::Sleep>>, Pending<()>> {
    match wake {
        Some(wake) => Either::Left(Box::pin(tokio::time::sleep_until(wake))),
        None => Either::Right(std::future::pending()),
    }
}

/// A member's task, boxed once, under `span` (when one is recorded) and
/// inside its cache call if it has one.
///
/// Boxed once, here: a spawned task's cell then holds a pointer, not the
/// whole future, which is otherwise copied several times on its way into
/// the cell and again when its output replaces it (measured: about 1,000
/// instructions of `memcpy` per agent).
fn boxed<'a>(
    task: impl Future<Output = Finished> + Send + 'a,
    cache: Option<super::cached::CacheCall>,
    span: tracing::Span,
) -> MemberTask<'a> {
    use tracing::Instrument;
    match (cache, span.is_disabled()) {
        (None, true) => Box::pin(task),
        (None, false) => Box::pin(task.instrument(span)),
        (Some(call), true) => Box::pin(call.around(task)),
        (Some(call), false) => Box::pin(call.around(task).instrument(span)),
    }
}

/// What a resumed run takes up from the run it continues, until each
/// agent it concerns starts.
#[derive(Default)]
pub(super) struct Resumed {
    /// Instances of `foreach` agents an earlier attempt completed, by
    /// agent and element, until the fan-out starts.
    pub(super) items: HashMap<AgentId, HashMap<usize, AgentRecord>>,
    /// Deadlines of `input` agents that were waiting: a wait keeps its
    /// deadline across processes (see `wait.rs`).
    pub(super) waits: HashMap<AgentId, i64>,
    /// Agents with tools that were running when it stopped: their record
    /// (tool calls and conversation), to take up.
    pub(super) tool_calls: HashMap<AgentId, AgentReport>,
}

/// A slot of the run's concurrency limit.
type Slot = tokio::sync::OwnedSemaphorePermit;

/// `task` boxed (see [`boxed`]), holding `slot` (if it took one) until it
/// ends, however it ends (aborted too). Without a slot, `task` is boxed as
/// it is: a wrapper would make every agent's box larger.
fn boxed_holding<'a>(
    task: impl Future<Output = Finished> + Send + 'a,
    slot: Option<Slot>,
    cache: Option<super::cached::CacheCall>,
    span: tracing::Span,
) -> MemberTask<'a> {
    match slot {
        Some(slot) => boxed(
            async move {
                let finished = task.await;
                drop(slot);
                finished
            },
            cache,
            span,
        ),
        None => boxed(task, cache, span),
    }
}

/// A boxed wait for a [`Slot`].
type SlotWait = Pin<Box<dyn Future<Output = Option<Slot>> + Send>>;

/// A slot of `slots`, once one is free (never, without slots).
///
/// Boxed, like [`sleep_until`]'s timer: only a run held back by its
/// concurrency limit waits for a slot.
fn acquire(slots: Option<Arc<tokio::sync::Semaphore>>) -> Either<SlotWait, Pending<Option<Slot>>> {
    match slots {
        Some(slots) => Either::Left(Box::pin(async move { slots.acquire_owned().await.ok() })),
        None => Either::Right(std::future::pending()),
    }
}

impl<'p> Scheduler<'p> {
    pub(super) fn new(pipeline: &'p Pipeline, input: ValidInput, options: RunOptions) -> Self {
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
            // Encoded into a buffer: `to_string` goes through the
            // formatting machinery, several hundred instructions a run.
            None => Arc::from(
                &*uuid::Uuid::now_v7()
                    .hyphenated()
                    .encode_lower(&mut uuid::Uuid::encode_buffer()),
            ),
        };
        let n = pipeline.agents.len();
        let progress = (0..n)
            .map(|a| AgentProgress::new(pipeline.graph.dependencies(a).len()))
            .collect();
        let mut policy = options
            .checkpoint
            .or(pipeline.checkpoint)
            .unwrap_or_default();
        // A run that may wait is kept per agent, so that whoever answers can
        // continue it from its store.
        if pipeline.waits_for_input && policy == CheckpointPolicy::End {
            policy = CheckpointPolicy::Agent;
        }
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
                    started_by: options.started_by.as_deref().map(Arc::from),
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
        let limit = if options.sequential {
            Some(1)
        } else {
            options.concurrency.or(pipeline.concurrency)
        };
        let has_groups = pipeline.has_groups;
        let slots = limit.filter(|_| has_groups).map(|n| {
            Arc::new(tokio::sync::Semaphore::new(
                n.clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
            ))
        });
        let ctx = has_groups.then(|| {
            Arc::new(super::group::RunContext {
                run_limit: limit.unwrap_or(usize::MAX),
                slots: slots.clone(),
                run_id: run_id.clone(),
                events: options.events.clone(),
                cancel: options.cancel.clone(),
                checkpoint: checkpoint.clone(),
                processes: processes.clone(),
                max_value_depth: pipeline.max_value_depth,
                cache: options.cache.clone(),
                start: Default::default(),
                resume: Default::default(),
                rounds: Default::default(),
                reports: Default::default(),
                records: Default::default(),
            })
        });
        Self {
            pipeline,
            run_id,
            processes,
            prefix: None,
            paths: Vec::new(),
            handed_over: false,
            group_definition: None,
            slots,
            ctx,
            max_depth: pipeline.max_value_depth,
            slot: None,
            spare: None,
            wants_slot: false,
            run_limit: limit.unwrap_or(usize::MAX),
            state: RunState::new(pipeline, input),
            options,
            progress,
            tokens: (0..n).map(|_| Default::default()).collect(),
            ready: BinaryHeap::new(),
            tasks: InFlight::default(),
            resumed: None,
            start: Instant::now(),
            turn_time: None,
            stop: foreign.map(|why| (RunStatus::Failed, why)),
            any_failed: false,
            kept_writes,
            checkpoint,
            waits: Vec::new(),
            loop_span: tracing::Span::none(),
        }
    }

    /// A nested run of a group's pipeline at `path`, sharing `ctx`.
    pub(super) fn nested(
        pipeline: &'p Pipeline,
        values: Vec<(FieldId, Arc<Value>)>,
        path: Arc<str>,
        ctx: Arc<super::group::RunContext>,
        group_definition: Arc<str>,
    ) -> Self {
        let input = ValidInput {
            values,
            pipeline: pipeline.id,
            pipeline_name: pipeline.name.clone(),
        };
        let options = RunOptions {
            run_id: Some(ctx.run_id.to_string()),
            events: ctx.events.clone(),
            cancel: ctx.cancel.clone(),
            cache: ctx.cache.clone(),
            ..RunOptions::default()
        };
        let mut scheduler = Self::new(pipeline, input, options);
        scheduler.paths = pipeline
            .agents
            .iter()
            // Joined, not formatted: a nested run is made every round.
            .map(|a| Arc::from([&*path, ".", &*a.name].concat()))
            .collect();
        scheduler.prefix = Some(path);
        scheduler.group_definition = Some(group_definition);
        scheduler.checkpoint = ctx.checkpoint.clone();
        if scheduler.checkpoint.is_some() {
            scheduler.kept_writes = vec![Vec::new(); pipeline.agents.len()];
        }
        scheduler.processes = ctx.processes.clone();
        scheduler.max_depth = ctx.max_value_depth;
        scheduler.slots = ctx.slots.clone();
        scheduler.run_limit = ctx.run_limit;
        if let Some(&start) = ctx.start.get() {
            scheduler.start = start;
        }
        scheduler.ctx = Some(ctx);
        scheduler
    }

    /// `agent`'s definition hash as records carry it: its own, or, in a
    /// nested run, joined to its group's (whose hash covers what the group
    /// feeds its agents: its list, carry, file, and everything upstream),
    /// so a changed group never reuses its agents' earlier outputs.
    pub(super) fn definition_of(&self, agent: AgentId) -> Arc<str> {
        let own = &self.pipeline.agents[agent].definition;
        match &self.group_definition {
            None => own.clone(),
            Some(group) => Arc::from(format!("{group}/{own}")),
        }
    }

    /// The name `agent` goes by in events, reports and records: its own,
    /// or its path in a nested run (`per_doc[3].classify`).
    pub(super) fn name_of(&self, agent: AgentId) -> Arc<str> {
        match self.paths.get(agent) {
            Some(path) => path.clone(),
            None => self.pipeline.agents[agent].name.clone(),
        }
    }

    pub(super) fn policy(&self) -> CheckpointPolicy {
        self.checkpoint
            .as_ref()
            .map_or(CheckpointPolicy::None, |(_, policy, _)| *policy)
    }

    pub(super) fn named(&self, writes: &[(FieldId, Arc<Value>)]) -> Vec<FieldValue> {
        writes
            .iter()
            .map(|(f, v)| (self.pipeline.fields[*f].name.clone(), v.clone()))
            .collect()
    }

    /// Marks the agents an earlier attempt finished as done, applying
    /// their writes in topological order. With `check_definitions`, a
    /// record is reused only if its agent's definition hash is unchanged
    /// and every agent it depends on is reused too (see [`ResumePoint`]).
    pub(super) fn resume(&mut self, point: ResumePoint, check_definitions: bool) {
        let pipeline = self.pipeline;
        let ids: HashMap<&str, AgentId> = pipeline
            .agents
            .iter()
            .enumerate()
            .map(|(id, a)| (&*a.name, id))
            .collect();
        let mut by_agent: Vec<Option<AgentRecord>> = vec![None; pipeline.agents.len()];
        // Agents with tools that were running: their calls and conversation.
        let mut running: HashMap<AgentId, AgentRecord> = HashMap::new();
        let mut items: HashMap<AgentId, HashMap<usize, AgentRecord>> = HashMap::new();
        // Members and rounds of groups' nested runs, by group.
        let mut nested: HashMap<AgentId, Vec<AgentRecord>> = HashMap::new();
        for record in point.agents {
            // A wait keeps its deadline.
            if record.report.status == AgentStatus::Waiting
                && let (Some(&id), Some(deadline)) =
                    (ids.get(&*record.agent), record.report.deadline_ms)
            {
                self.resumed_mut().waits.insert(id, deadline);
            }
            if record.report.status == AgentStatus::Running
                && (!record.report.tool_calls.is_empty() || record.report.transcript.is_some())
                && let Some(&id) = ids.get(&*record.agent)
                && pipeline.agents[id].tools.is_some()
            {
                running.insert(id, record);
                continue;
            }
            // Only completed agents keep their results; skips are decided
            // again, since what they depended on may now turn out otherwise.
            if record.report.status != AgentStatus::Completed {
                continue;
            }
            if let Some(&id) = ids.get(&*record.agent) {
                by_agent[id] = Some(record);
            } else if let Some((id, item)) = super::fanout::instance_of(&record.agent, &ids)
                && pipeline.agents[id].foreach.is_some()
            {
                items.entry(id).or_default().insert(item, record);
            } else if let Some(&id) = ids.get(crate::report::top_agent(&record.agent))
                && pipeline.agents[id].group.is_some()
            {
                nested.entry(id).or_default().push(record);
            }
        }
        let mut reused = vec![false; pipeline.agents.len()];
        for &id in pipeline.graph.topological_order() {
            let upstream = pipeline.graph.dependencies(id).iter().all(|&d| reused[d]);
            let current = self.definition_of(id);
            let same = |definition: Option<&str>| {
                !check_definitions || (definition == Some(&*current) && upstream)
            };
            // A group that did not finish keeps what its nested runs
            // finished, if everything upstream of it is unchanged (each
            // member's own definition is checked by its nested run).
            if let Some(records) = nested.remove(&id)
                && by_agent[id].is_none()
                && (upstream || !check_definitions)
                && let Some(ctx) = &self.ctx
            {
                for record in records {
                    ctx.keep_for_resume(record);
                }
            }
            // An agent with tools that was running takes up its calls and
            // conversation, if it and everything upstream are unchanged.
            if by_agent[id].is_none()
                && let Some(record) = running.remove(&id)
                && same(record.definition.as_deref())
            {
                self.resumed_mut().tool_calls.insert(id, record.report);
            }
            let Some(record) = by_agent[id].take() else {
                // A fan-out that did not finish keeps its finished
                // instances, if what it fans out over is unchanged.
                if let Some(mut done) = items.remove(&id) {
                    done.retain(|_, r| same(r.definition.as_deref()));
                    if !done.is_empty() {
                        self.resumed_mut().items.insert(id, done);
                    }
                }
                continue;
            };
            if !same(record.definition.as_deref()) {
                tracing::debug!(
                    agent = %record.agent,
                    "resume: stored output not reused; the agent runs again"
                );
                continue;
            }
            reused[id] = true;
            let writes: Vec<(FieldId, Arc<Value>)> = record
                .writes
                .iter()
                .filter_map(|(name, value)| {
                    let write = pipeline.agents[id]
                        .writes
                        .iter()
                        .find(|w| w.name == *name)?;
                    Some((write.field, value.clone()))
                })
                .collect();
            self.state.apply(pipeline, id, writes);
            let mut report = AgentReport {
                resumed: true,
                ..record.report
            };
            if let Some(done) = items.remove(&id) {
                report.instances = Some(super::fanout::resumed_instances(done));
            }
            let progress = &mut self.progress[id];
            progress.status = report.status;
            progress.attempts = report.attempts;
            progress.rare().resumed = Some(report);
        }
        let now = self.start;
        for a in 0..self.progress.len() {
            if self.progress[a].resumed().is_some() {
                self.release(a, now);
            }
        }
    }

    pub(super) fn emit(&self, kind: impl FnOnce() -> EventKind) {
        if let Some(events) = &self.options.events {
            events.emit(kind());
        }
    }

    pub(super) fn limit(&self) -> usize {
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

    /// The run: every agent, then the report. An `async move` block, not an
    /// `async fn`: an `async fn` would keep a second copy of the scheduler
    /// in its state (rust-lang/rust#62958), some 800 bytes a run in flight.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice in its state"
    )]
    pub(super) fn run(mut self) -> impl Future<Output = RunReport> + Send + 'p {
        async move {
            let now = Instant::now();
            self.start = self
                .options
                .resumed_after
                .and_then(|ago| now.checked_sub(ago))
                .unwrap_or(now);
            if let Some(ctx) = &self.ctx {
                let _ = ctx.start.set(self.start);
            }
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
            self.run_loop().await;
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
    }

    /// Readies the agents with no dependencies, then runs until every
    /// agent has ended or the run stops, and winds down.
    pub(super) async fn run_loop(&mut self) {
        // A nested run's first agents became ready when it began, not when
        // the run (whose clock it shares) did.
        let ready_at = if self.prefix.is_some() || self.options.resumed_after.is_some() {
            Instant::now()
        } else {
            self.start
        };
        for a in 0..self.progress.len() {
            if self.progress[a].missing == 0 && self.progress[a].status == AgentStatus::Pending {
                self.make_ready(a, ready_at);
            }
        }
        // With groups and a limit, every nested run shares the run's slots
        // (a semaphore): agents take one to start, groups do not (their
        // agents do), so a group never holds a slot its agents wait for.
        let limit = if self.slots.is_some() {
            usize::MAX
        } else {
            self.limit()
        };
        let cancel = self.options.cancel.clone();
        // Made once and polled in every turn of the loop (it stays
        // registered), rather than made and dropped at each turn; it asks
        // the token only when the token woke it (see `cancel.rs`).
        let token_cancelled = cancel.cancelled();
        tokio::pin!(token_cancelled);
        let mut cancelled = super::cancel::Cancelled::new(&cancel, token_cancelled);
        self.loop_span = tracing::Span::current();
        // Answers delivered while the run is in flight (see `wait.rs`).
        let mut inbox = match self.options.answers.clone() {
            Some(inbox) => Some(inbox.0.lock_owned().await),
            None => None,
        };
        let mut snapshots = match self.options.snapshots.clone() {
            Some(inbox) => Some(inbox.0.lock_owned().await),
            None => None,
        };
        while self.stop.is_none() {
            // Before anything starts, or the run ends.
            if cancelled.is_cancelled() {
                self.stop = Some((RunStatus::Cancelled, "the run was cancelled".to_owned()));
                break;
            }
            while self.tasks.len() < limit && self.stop.is_none() {
                let Some(&Reverse((_, a))) = self.ready.peek() else {
                    break;
                };
                if !self.take_slot(a) {
                    break;
                }
                self.ready.pop();
                if self.progress[a].fanout().is_some() {
                    self.launch_item(a);
                } else {
                    self.launch(a);
                }
                // A slot the launch did not use (a skip) goes back.
                self.slot = None;
            }
            if (self.tasks.is_empty() && !self.wants_slot) || self.stop.is_some() {
                break;
            }
            let wake = self.next_deadline();
            // What happens after the wait is a new turn, at a new time.
            self.turn_time = None;
            tokio::select! {
                biased;
                () = &mut cancelled => {
                    self.stop = Some((RunStatus::Cancelled, "the run was cancelled".to_owned()));
                }
                Some(ended) = self.tasks.join_next() => self.finish(ended),
                // `select!` builds a disabled branch's future too (it only
                // skips polling it): filtered, that is no clone and no box.
                permit = acquire(self.slots.as_ref().filter(|_| self.wants_slot).cloned()), if self.wants_slot => {
                    self.wants_slot = false;
                    self.spare = permit;
                }
                Some(answer) = next_answer(inbox.as_deref_mut()) => {
                    self.take_answer(answer);
                }
                () = sleep_until(wake), if wake.is_some() => self.expire_waits(),
                Some(reply) = next_snapshot_request(snapshots.as_deref_mut()) => {
                    let _ = reply.send(self.snapshot());
                }
            }
        }
        // Requests from now on get `None`: the report is on its way.
        drop(snapshots);
        // Answers that arrive from now on go through the store.
        if let Some(inbox) = inbox.as_deref_mut() {
            inbox.close();
            while let Ok(answer) = inbox.try_recv() {
                let _ = answer.reply.send(crate::answer::Delivery::NotListening);
            }
        }
        drop(inbox);
        self.wind_down().await;
    }

    /// Takes one of the run's shared slots for `agent` if it needs one
    /// (agents do, groups do not); `false` when none is free, and the loop
    /// then waits for one.
    fn take_slot(&mut self, agent: AgentId) -> bool {
        let Some(slots) = &self.slots else {
            return true;
        };
        if self.pipeline.agents[agent].group.is_some() {
            return true;
        }
        let permit = self
            .spare
            .take()
            .or_else(|| slots.clone().try_acquire_owned().ok());
        match permit {
            Some(permit) => {
                self.slot = Some(permit);
                true
            }
            None => {
                self.wants_slot = true;
                false
            }
        }
    }

    /// The time of this turn of the run's loop: read from the monotonic
    /// clock at its first use in the turn, then the same for what else
    /// happens in the turn (members that ended, the agents they made
    /// ready; those that start in it, a nanosecond later: see
    /// [`Scheduler::start_time`]). A clock read was about a tenth of a no-op
    /// agent's time (issue 16); times in the report have the resolution
    /// of one turn, which lasts microseconds (a turn that starts a
    /// fan-out of thousands, a millisecond or so).
    pub(super) fn clock(&mut self) -> Instant {
        *self.turn_time.get_or_insert_with(Instant::now)
    }

    /// When an agent (or instance) that starts in this turn starts: a
    /// nanosecond after [`Scheduler::clock`], so that it comes after every
    /// end joined in the turn (its dependencies' among them), in the
    /// report's milliseconds too: a start equal to an end could read as a
    /// rounding error before it (`start_ms + duration_ms`).
    pub(super) fn start_time(&mut self) -> Instant {
        self.clock() + std::time::Duration::from_nanos(1)
    }

    /// What this run takes up from the one it continues (made on first use).
    pub(super) fn resumed_mut(&mut self) -> &mut Resumed {
        self.resumed.get_or_insert_with(Default::default)
    }

    pub(super) fn make_ready(&mut self, agent: AgentId, now: Instant) {
        let progress = &mut self.progress[agent];
        if progress.queued || progress.status != AgentStatus::Pending {
            return;
        }
        progress.queued = true;
        progress.ready_at = Some(now);
        self.ready
            .push(Reverse((self.pipeline.graph.rank(agent), agent)));
    }

    /// Marks `agent` done (whatever its status) and readies dependents
    /// whose last dependency it was.
    pub(super) fn release(&mut self, agent: AgentId, now: Instant) {
        for &d in self.pipeline.graph.dependents(agent) {
            let progress = &mut self.progress[d];
            progress.missing -= 1;
            if progress.missing == 0 {
                self.make_ready(d, now);
            }
        }
    }

    /// Whether a writer of `field` (other than `reader`) failed or was
    /// cancelled: the field's value is then partial or stale, and is not
    /// handed on (this only happens with `on_failure: continue`).
    pub(super) fn writer_failed(&self, field: FieldId, reader: AgentId) -> bool {
        self.pipeline.fields[field].writers.iter().any(|&w| {
            w != reader
                && matches!(
                    self.progress[w].status,
                    AgentStatus::Failed | AgentStatus::Cancelled
                )
        })
    }

    /// Why `field` has no usable value: which of its writers did not complete.
    pub(super) fn unavailable(&self, field: FieldId) -> String {
        let def = &self.pipeline.fields[field];
        let writers: Vec<String> = def
            .writers
            .iter()
            .map(|&w| {
                format!(
                    "`{}` {}",
                    self.pipeline.agents[w].name, self.progress[w].status
                )
            })
            .collect();
        let all_completed = def
            .writers
            .iter()
            .all(|&w| self.progress[w].status == AgentStatus::Completed);
        if all_completed && !def.writers.is_empty() {
            // Only optional writes (`name?`) can be left out by a writer
            // that completed.
            return format!(
                "needs `{}`, which no writer wrote ({} without it)",
                def.name,
                writers.join(", ")
            );
        }
        format!(
            "needs `{}`, which was not fully produced ({})",
            def.name,
            writers.join(", ")
        )
    }

    /// Starts `agent`, or skips it when its condition is false or a read it
    /// needs was never produced.
    pub(super) fn launch(&mut self, agent: AgentId) {
        let now = self.start_time();
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
        // Fields the condition only tests with `has(field)` may be absent.
        let presence_only = def.when.as_ref().map_or(&[][..], |w| w.presence_only());
        let required = def
            .condition_fields
            .iter()
            .copied()
            .filter(|&f| !presence_only.iter().any(|p| **p == *pipeline.field_name(f)))
            .chain(def.foreach.as_ref().map(|f| f.field))
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
        if def.foreach.is_some() {
            return self.start_fanout(agent, reads.0, now);
        }
        if def.input.is_some() {
            return self.start_wait(agent, reads.0, now);
        }
        let input = AgentInput {
            run_id: self.run_id.clone(),
            agent: self.name_of(agent),
            attempt: 1,
            reads,
            events: self.options.events.clone(),
            usage: crate::agent::TokenSlot::new(self.tokens.clone(), agent),
            logs: self.kept_logs(agent),
            processes: self.processes.clone(),
            tools: self.tool_calls(agent),
        };
        self.spawn_member(Member { agent, item: None }, input, now);
        let progress = &mut self.progress[agent];
        progress.status = AgentStatus::Running;
        progress.started = Some(now);
        if let Some(ready) = progress.ready_at {
            crate::telemetry::queue_wait(now - ready);
        }
        // Named only when an event is wanted.
        self.emit(|| EventKind::AgentStarted {
            agent: self.name_of(agent),
            attempt: 1,
            items: None,
        });
    }

    /// Starts a member's task: its attempts, or a group's nested run(s).
    /// `now` is when it starts (its first attempt's start: the clock is
    /// not read again for it).
    pub(super) fn spawn_member(&mut self, member: Member, input: AgentInput, now: Instant) {
        let pipeline = self.pipeline;
        let def = &pipeline.agents[member.agent];
        // The agent's spans are children of the run's.
        let span = self.loop_span.clone();
        // A cached agent's task looks itself up first (see `cached.rs`).
        let cache = self.cache_call(member, &input.agent, &input.reads.0);
        match (&def.group, &self.ctx) {
            (Some(group), Some(ctx)) => {
                let task = super::group::run_group(
                    member,
                    group.clone(),
                    input,
                    ctx.clone(),
                    self.definition_of(member.agent),
                    def.policy.timeout,
                );
                self.tasks.start(member, boxed(task, cache, span));
            }
            // Polled by this run's task, the attempts borrow the agent's
            // runner and writes from the pipeline: no reference count is
            // taken and given back per agent (which every run on every
            // core shares).
            _ if self.tasks.polled() => {
                let task = attempt_loop(
                    member,
                    &*def.runner,
                    input,
                    def.policy,
                    &*def.writes,
                    self.max_depth,
                    now,
                    // Joined in the poll it ends in: the loop stamps it.
                    false,
                );
                let task = boxed_holding(task, self.slot.take(), cache, span);
                self.tasks.start_borrowing(member, task);
            }
            _ => {
                let task = attempt_loop(
                    member,
                    def.runner.clone(),
                    input,
                    def.policy,
                    def.writes.clone(),
                    self.max_depth,
                    now,
                    true,
                );
                let task = boxed_holding(task, self.slot.take(), cache, span);
                self.tasks.start(member, task);
            }
        }
    }

    /// Where `agent`'s tool calls are recorded, for an agent with tools
    /// (made on first use: a fan-out's instances share it).
    pub(super) fn tool_calls(
        &mut self,
        agent: AgentId,
    ) -> Option<Arc<crate::agent::tool::ToolCalls>> {
        let tools = self.pipeline.agents[agent].tools.as_ref()?;
        if let Some(calls) = self.progress[agent]
            .rare
            .as_ref()
            .and_then(|r| r.tool_calls.as_ref())
        {
            return Some(calls.clone());
        }
        // Per agent: each completed call and each turn goes on record.
        let journal = match (&self.processes, self.policy()) {
            (Some(recorder), CheckpointPolicy::Agent) => Some(crate::agent::tool::Journal {
                recorder: recorder.clone(),
                definition: self.definition_of(agent),
            }),
            _ => None,
        };
        let cache = self.options.cache.clone();
        let mut calls = crate::agent::tool::ToolCalls::new(
            tools.clone(),
            self.start,
            self.max_depth,
            journal,
            cache,
        );
        if let Some(earlier) = self
            .resumed
            .as_mut()
            .and_then(|r| r.tool_calls.remove(&agent))
        {
            calls = calls.resuming(&self.name_of(agent), earlier);
        }
        let calls = Arc::new(calls);
        self.progress[agent].rare().tool_calls = Some(calls.clone());
        Some(calls)
    }

    /// Where `agent`'s log lines are kept: made on first use, when the run
    /// is checkpointed (`None` otherwise: nothing is kept).
    pub(super) fn kept_logs(
        &mut self,
        agent: AgentId,
    ) -> Option<Arc<crate::agent::logs::KeptLogs>> {
        if self.checkpoint.is_none() || self.policy() == CheckpointPolicy::None {
            return None;
        }
        // A fan-out's instances share their agent's (named once).
        if let Some(kept) = self.progress[agent]
            .rare
            .as_ref()
            .and_then(|r| r.logs.as_ref())
        {
            return Some(kept.clone());
        }
        let owner = self.name_of(agent);
        Some(
            self.progress[agent]
                .rare()
                .logs
                .get_or_insert_with(|| Arc::new(crate::agent::logs::KeptLogs::new(owner)))
                .clone(),
        )
    }

    /// The run as of now, for [`crate::snapshot`].
    fn snapshot(&self) -> crate::snapshot::RunSnapshot {
        crate::snapshot::RunSnapshot {
            elapsed_ms: ms(self.start.elapsed()),
            agents: (0..self.progress.len())
                .map(|a| (self.pipeline.agents[a].name.clone(), self.agent_report(a)))
                .collect(),
            state: self.state.map(self.pipeline),
        }
    }

    pub(super) fn report(mut self) -> RunReport {
        // Merge fields nobody read yet are combined now; one that cannot be
        // (a `sum` that does not fit) fails the run.
        if let Err(why) = self.state.settle_all(self.pipeline)
            && self.stop.is_none()
        {
            self.stop = Some((RunStatus::Failed, format!("merge failed: {why}")));
        }
        let end = self
            .progress
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
            None if !self.waits.is_empty() => (RunStatus::Waiting, None),
            None if self.any_failed => {
                let failed: Vec<&str> = self
                    .progress
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
        // Each entry is filled in where the map keeps it (see `fill_report`).
        let mut agents: crate::report::ByName<AgentReport> =
            crate::report::ByName::with_capacity_and_hasher(
                self.progress.len(),
                Default::default(),
            );
        for (a, progress) in self.progress.iter().enumerate() {
            let name = self.pipeline.agents[a].name.clone();
            let (i, _) = agents.insert_full(name, AgentReport::new(progress.status));
            if let Some((_, report)) = agents.get_index_mut(i) {
                self.fill_report(a, report);
            }
        }
        // Checkpointed runs hand over every instance's record at the end.
        let mut item_records = Vec::new();
        if self.checkpoint.is_some() {
            for (agent, (_, agent_report)) in agents.iter().enumerate() {
                if self.pipeline.agents[agent].foreach.is_some() {
                    item_records.extend(self.item_records(agent, agent_report));
                }
            }
        }
        // Groups' nested members and rounds join their group's instances.
        if let Some(ctx) = &self.ctx {
            let nested = std::mem::take(&mut *ctx.reports.lock().expect("not poisoned"));
            // Each group's map sized once: a loop of many rounds would
            // otherwise grow (and copy) it again and again.
            let mut sizes = vec![0; agents.len()];
            for (path, _) in &nested {
                if let Some(i) = agents.get_index_of(crate::report::top_agent(path)) {
                    sizes[i] += 1;
                }
            }
            for (path, report) in nested {
                if let Some((i, _, group)) = agents.get_full_mut(crate::report::top_agent(&path)) {
                    group
                        .instances
                        .get_or_insert_with(|| {
                            crate::report::ByName::with_capacity_and_hasher(
                                sizes[i],
                                Default::default(),
                            )
                        })
                        .insert(path, report);
                }
            }
            // A group's instances by the nested run they belong to, in
            // element and round order (a stable sort: members of one
            // nested run stay in declaration order).
            for (a, group) in agents.values_mut().enumerate() {
                if let Some(instances) = &mut group.instances
                    && self.pipeline.agents[a].group.is_some()
                {
                    // Already in order but for a fan-out's elements that
                    // finished out of order: a stable sort that compares
                    // without allocating is about linear then.
                    use crate::report::{natural_cmp, nested_run_of};
                    instances.sort_by(|a, _, b, _| natural_cmp(nested_run_of(a), nested_run_of(b)));
                }
            }
            if self.checkpoint.is_some() {
                item_records.append(&mut ctx.records.lock().expect("not poisoned"));
            }
        }
        let report = RunReport {
            // Copied, not formatted: `to_string` on an `Arc<str>` goes
            // through `Display` and the formatter (issue 16).
            run_id: String::from(&*self.run_id),
            pipeline: String::from(&*self.pipeline.name),
            status,
            error,
            makespan_ms,
            state: self.state.take_map(self.pipeline),
            tokens: agents.values().filter_map(|a| a.tokens).reduce(|a, b| {
                crate::agent::TokenUsage {
                    prompt: a.prompt + b.prompt,
                    completion: a.completion + b.completion,
                }
            }),
            agents,
        };
        if let Some((checkpointer, _, run)) = self.checkpoint.take() {
            let mut records: Vec<AgentRecord> = self
                .kept_writes
                .iter_mut()
                .zip(&report.agents)
                .zip(&self.pipeline.agents)
                .map(|((writes, (name, agent)), def)| AgentRecord {
                    agent: name.clone(),
                    report: AgentReport {
                        instances: None,
                        ..agent.clone()
                    },
                    writes: std::mem::take(writes),
                    definition: Some(def.definition.clone()),
                })
                .collect();
            records.extend(item_records);
            checkpointer.run_finished(&run, &report, &records);
        }
        report
    }
}
