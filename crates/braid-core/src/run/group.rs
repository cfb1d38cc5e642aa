//! Groups (`kind: pipeline`) at run time: each run of a group's agents is a
//! nested [`Scheduler`] over the group's pipeline, inside the group's
//! member future among the parent's members in flight (so dropping or
//! aborting the parent drops it and every agent it started). A group under `foreach` is a fan-out like any other:
//! each instance (`per_doc[3]`) is one nested run, so element 3's agents
//! move on as soon as their own inputs are ready, whatever the other
//! elements do. A group under `repeat` runs its nested run again, round
//! after round (`refine#2`), until `until` holds or `max` rounds passed,
//! carrying fields from one round to the next.
//!
//! Members of nested runs are named by their path (`per_doc[3].classify`,
//! `refine#2.draft`) in events, reports and checkpoint records. What the
//! nested runs share with the whole run (events, checkpoints, records to
//! resume from, members' reports) is in one [`RunContext`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::time::Instant;

use super::attempt::{Finished, Member};
use super::ms;
use super::scheduler::Scheduler;
use crate::agent::{AgentError, AgentInput};
use crate::checkpoint::{AgentRecord, CheckpointPolicy, Checkpointer, ResumePoint, RunRecord};
use crate::event::EventSink;
use crate::pipeline::{FieldId, Group, OnMax, Pipeline};
use crate::report::{AgentReport, AgentStatus, RunStatus};

/// What every nested run of one run shares.
pub(super) struct RunContext {
    pub(super) run_id: Arc<str>,
    pub(super) events: Option<EventSink>,
    pub(super) cancel: tokio_util::sync::CancellationToken,
    pub(super) checkpoint: Option<(Arc<dyn Checkpointer>, CheckpointPolicy, RunRecord)>,
    pub(super) processes: Option<Arc<crate::agent::ProcessRecorder>>,
    pub(super) max_value_depth: usize,
    /// The run's cache, for cached agents of nested runs.
    pub(super) cache: Option<Arc<dyn crate::cache::AgentCache>>,
    /// The run's concurrency limit (`usize::MAX` for none).
    pub(super) run_limit: usize,
    /// The run's concurrency slots, when it has a limit.
    pub(super) slots: Option<Arc<tokio::sync::Semaphore>>,
    /// When the run started: nested runs time their members from it.
    pub(super) start: std::sync::OnceLock<Instant>,
    /// Nested members an earlier attempt completed, by the path of the
    /// nested run they belong to (`per_doc[3]`), with names relative to it.
    pub(super) resume: Mutex<HashMap<String, Vec<AgentRecord>>>,
    /// Rounds of `repeat` groups an earlier attempt completed, by path
    /// (`refine#2`): their state, to carry on from.
    pub(super) rounds: Mutex<HashMap<String, AgentRecord>>,
    /// Reports of nested members and rounds, as they end.
    pub(super) reports: Mutex<Vec<(Arc<str>, AgentReport)>>,
    /// Records of nested members for the end of a checkpointed run.
    pub(super) records: Mutex<Vec<AgentRecord>>,
}

impl std::fmt::Debug for RunContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunContext")
            .field("run_id", &self.run_id)
            .finish_non_exhaustive()
    }
}

/// Whether a path names a round of a `repeat` group (`refine#2`,
/// `outer[1].refine#0`) rather than a member of a nested run.
fn is_round(path: &str) -> bool {
    let last = path.rsplit('.').next().unwrap_or(path);
    last.contains('#')
}

impl RunContext {
    /// Files an earlier attempt's record of a nested member or round.
    pub(super) fn keep_for_resume(&self, record: AgentRecord) {
        if is_round(&record.agent) {
            let path = record.agent.to_string();
            self.rounds
                .lock()
                .expect("not poisoned")
                .insert(path, record);
        } else if let Some((parent, own)) = record.agent.rsplit_once('.') {
            let parent = parent.to_owned();
            let record = AgentRecord {
                agent: Arc::from(own),
                ..record
            };
            self.resume
                .lock()
                .expect("not poisoned")
                .entry(parent)
                .or_default()
                .push(record);
        }
    }

    fn take_resume(&self, path: &str) -> Option<Vec<AgentRecord>> {
        self.resume.lock().expect("not poisoned").remove(path)
    }

    fn take_round(&self, path: &str) -> Option<AgentRecord> {
        self.rounds.lock().expect("not poisoned").remove(path)
    }

    /// A round's record: its report and every field it ended with.
    fn round_finished(&self, record: AgentRecord) {
        if let Some((checkpointer, policy, run)) = &self.checkpoint {
            if *policy == CheckpointPolicy::Agent {
                checkpointer.agent_finished(run, &record);
            }
            if *policy != CheckpointPolicy::None {
                self.records
                    .lock()
                    .expect("not poisoned")
                    .push(AgentRecord {
                        report: AgentReport {
                            instances: None,
                            ..record.report.clone()
                        },
                        ..record.clone()
                    });
            }
        }
        let path = record.agent.to_string();
        self.reports
            .lock()
            .expect("not poisoned")
            .push((path.into(), record.report));
    }
}

/// How one nested run ended: its state, or why it did not complete.
type NestedResult = Result<Vec<Option<Arc<Value>>>, String>;

/// A group's task: the group's agents run once, or round after round,
/// and its outputs become the writes of the member (`member`) it runs for.
pub(super) async fn run_group(
    member: Member,
    group: Arc<Group>,
    input: AgentInput,
    ctx: Arc<RunContext>,
    definition: Arc<str>,
    timeout: Option<std::time::Duration>,
) -> Finished {
    let run = run_group_once(&group, &input, &ctx, &definition);
    let result = match timeout {
        None => run.await,
        Some(limit) => tokio::time::timeout(limit, run)
            .await
            .unwrap_or_else(|_| Err(AgentError::Timeout(limit).to_string())),
    };
    // The group's writes are its outputs, in order: the parent's fields.
    let writes = &group.writes;
    Finished {
        member,
        attempts: 1,
        finished: Some(Instant::now()),
        result: result
            .map(|outputs| {
                outputs
                    .into_iter()
                    .filter_map(|(i, v)| Some((*writes.get(i)?, v)))
                    .collect()
            })
            .map_err(AgentError::Other),
        cached: false,
        failures: Vec::new(),
    }
}

async fn run_group_once(
    group: &Group,
    input: &AgentInput,
    ctx: &Arc<RunContext>,
    definition: &Arc<str>,
) -> Result<Vec<(usize, Arc<Value>)>, String> {
    let path = input.agent.clone();
    let mut base: Vec<(FieldId, Arc<Value>)> = input
        .reads
        .0
        .iter()
        .filter_map(|(name, value)| Some((group.pipeline.field_id(name)?, value.clone())))
        .collect();
    if let Some(file) = &group.file {
        file_inputs(&group.pipeline, file, &mut base)?;
    }
    match &group.repeat {
        None => nested(&group.pipeline, base, path.clone(), ctx, definition)
            .await
            .map(|state| outputs(group, &state)),
        Some(_) => repeat(group, base, &path, ctx, definition).await,
    }
}

/// A group file's inputs: what the group gives is checked against the
/// file's schemas, and defaults fill in the rest.
fn file_inputs(
    pipeline: &Pipeline,
    file: &str,
    values: &mut Vec<(FieldId, Arc<Value>)>,
) -> Result<(), String> {
    for (field, value) in values.iter() {
        if let Some(input) = &pipeline.fields[*field].input
            && let Some(error) = input.validator.iter_errors(value).next()
        {
            return Err(format!(
                "input `{}` of `{file}`: {error}",
                pipeline.field_name(*field)
            ));
        }
    }
    for (field, def) in pipeline.fields.iter().enumerate() {
        if let Some(default) = def.input.as_ref().and_then(|i| i.default.as_ref())
            && !values.iter().any(|(f, _)| *f == field)
        {
            values.push((field, Arc::new(default.clone())));
        }
    }
    Ok(())
}

/// The group's outputs, by their index in `outputs`, taken from a nested
/// run's state (a field the group did not write is left out: outputs are
/// optional writes).
fn outputs(group: &Group, state: &[Option<Arc<Value>>]) -> Vec<(usize, Arc<Value>)> {
    group
        .outputs
        .iter()
        .enumerate()
        .filter_map(|(i, (_, inner))| Some((i, state.get(*inner)?.clone()?)))
        .collect()
}

/// One run of the group's agents, at `path`.
async fn nested(
    pipeline: &Pipeline,
    values: Vec<(FieldId, Arc<Value>)>,
    path: Arc<str>,
    ctx: &Arc<RunContext>,
    definition: &Arc<str>,
) -> NestedResult {
    let mut scheduler = Scheduler::nested(
        pipeline,
        values,
        path.clone(),
        ctx.clone(),
        definition.clone(),
    );
    if let Some(records) = ctx.take_resume(&path) {
        scheduler.resume(ResumePoint { agents: records }, true);
    }
    scheduler.run_loop().await;
    scheduler.finish_nested()
}

/// Rounds of a `repeat` group until `until` holds.
async fn repeat(
    group: &Group,
    base: Vec<(FieldId, Arc<Value>)>,
    path: &str,
    ctx: &Arc<RunContext>,
    definition: &Arc<str>,
) -> Result<Vec<(usize, Arc<Value>)>, String> {
    let repeat = group.repeat.as_ref().expect("a repeat group");
    let pipeline = &group.pipeline;
    let mut carried: Vec<(FieldId, Arc<Value>)> = Vec::new();
    let mut last: Option<Vec<Option<Arc<Value>>>> = None;
    let mut round = 0u32;
    // Rounds an earlier attempt completed: carry on after the last one.
    while let Some(record) = ctx.take_round(&format!("{path}#{round}")) {
        if record.definition.as_deref() != Some(&**definition) {
            break;
        }
        let mut state = vec![None; pipeline.fields.len()];
        for (name, value) in &record.writes {
            if let Some(f) = pipeline.field_id(name) {
                state[f] = Some(value.clone());
            }
        }
        if until(repeat, pipeline, &state)? {
            return Ok(outputs(group, &state));
        }
        carried = carry(repeat, &state);
        last = Some(state);
        round += 1;
    }
    while round < repeat.max {
        // Joined, not formatted: this is once a round.
        let round_path: Arc<str> = Arc::from([path, "#", round.to_string().as_str()].concat());
        let started = Instant::now();
        let mut values = base.clone();
        values.push((repeat.round, Arc::new(Value::from(round))));
        values.extend(carried.iter().cloned());
        let state = nested(pipeline, values, round_path.clone(), ctx, definition)
            .await
            .map_err(|why| format!("round {round} ({round_path}): {why}"))?;
        let written: Vec<(Arc<str>, Arc<Value>)> = state
            .iter()
            .enumerate()
            .filter_map(|(f, v)| Some((pipeline.fields[f].name.clone(), v.clone()?)))
            .collect();
        ctx.round_finished(AgentRecord {
            agent: round_path,
            report: AgentReport {
                duration_ms: Some(ms(Instant::now() - started)),
                attempts: 1,
                ..AgentReport::new(AgentStatus::Completed)
            },
            writes: written,
            definition: Some(definition.clone()),
        });
        if until(repeat, pipeline, &state)? {
            return Ok(outputs(group, &state));
        }
        carried = carry(repeat, &state);
        last = Some(state);
        round += 1;
    }
    match (repeat.on_max, last) {
        (OnMax::Continue, Some(state)) => Ok(outputs(group, &state)),
        _ => Err(format!(
            "`until: {}` still did not hold after {} rounds (repeat.max; on_max: fail)",
            repeat.until.source(),
            repeat.max
        )),
    }
}

/// Whether a round's state satisfies `until`.
fn until(
    repeat: &crate::pipeline::Repeat,
    pipeline: &Pipeline,
    state: &[Option<Arc<Value>>],
) -> Result<bool, String> {
    let values = repeat
        .until_fields
        .iter()
        .filter_map(|&f| Some((pipeline.field_name(f), &**state[f].as_ref()?)));
    repeat
        .until
        .evaluate(values)
        .map_err(|e| format!("`until` could not be evaluated: {e}"))
}

/// The next round's carried inputs, from this round's state.
fn carry(
    repeat: &crate::pipeline::Repeat,
    state: &[Option<Arc<Value>>],
) -> Vec<(FieldId, Arc<Value>)> {
    repeat
        .carry
        .iter()
        .filter_map(|&(target, from)| Some((target, state[from].clone()?)))
        .collect()
}

impl Scheduler<'_> {
    /// Ends a nested run: its members' reports (and, for checkpointed
    /// runs, their records) go to the run's context; its state, or why it
    /// did not complete, to the group.
    pub(super) fn finish_nested(mut self) -> NestedResult {
        if let Err(why) = self.state.settle_all(self.pipeline)
            && self.stop.is_none()
        {
            self.stop = Some((RunStatus::Failed, format!("merge failed: {why}")));
        }
        let reports = self.hand_over_members();
        let failed: Vec<&str> = reports
            .iter()
            .filter(|(_, status)| *status == AgentStatus::Failed)
            .map(|(name, _)| &**name)
            .collect();
        let outcome = match &self.stop {
            Some((_, why)) => Err(why.clone()),
            None if !failed.is_empty() => Err(format!("failed: {}", failed.join(", "))),
            None => Ok(()),
        };
        outcome.map(|()| self.state.take_values())
    }

    /// Hands the members' reports (and, for checkpointed runs, their
    /// records) to the run's context, once; returns each member's name and
    /// status. A member still pending or in flight (the nested run was
    /// dropped: its group was cancelled, timed out or failed) is reported
    /// cancelled.
    pub(super) fn hand_over_members(&mut self) -> Vec<(Arc<str>, AgentStatus)> {
        let Some(ctx) = self.ctx.clone().filter(|_| !self.handed_over) else {
            return Vec::new();
        };
        self.handed_over = true;
        let mut reports: Vec<(Arc<str>, AgentReport)> = (0..self.progress.len())
            .map(|a| (self.name_of(a), self.agent_report(a)))
            .collect();
        for (_, report) in &mut reports {
            if matches!(report.status, AgentStatus::Pending | AgentStatus::Running) {
                let what = if report.status == AgentStatus::Running {
                    "cancelled in flight"
                } else {
                    "not started"
                };
                report.status = AgentStatus::Cancelled;
                report.error = Some(format!("{what}: its group was stopped"));
            }
        }
        if self.checkpoint.is_some() {
            let mut records = Vec::new();
            for (a, (name, report)) in reports.iter().enumerate() {
                records.push(AgentRecord {
                    agent: name.clone(),
                    report: AgentReport {
                        instances: None,
                        ..report.clone()
                    },
                    writes: std::mem::take(&mut self.kept_writes[a]),
                    definition: Some(self.definition_of(a)),
                });
                if self.pipeline.agents[a].foreach.is_some() {
                    records.extend(self.item_records(a, report));
                }
            }
            ctx.records.lock().expect("not poisoned").extend(records);
        }
        let statuses = reports
            .iter()
            .map(|(name, report)| (name.clone(), report.status))
            .collect();
        ctx.reports.lock().expect("not poisoned").extend(reports);
        statuses
    }
}

/// A nested run dropped before it ended (its group's task was aborted)
/// still tells the run what its members did.
impl Drop for Scheduler<'_> {
    fn drop(&mut self) {
        if self.prefix.is_some() && !self.handed_over {
            self.hand_over_members();
        }
    }
}
