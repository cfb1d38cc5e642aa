//! Fan-out: a `foreach` agent runs one instance per element of a list.
//!
//! The agent becomes ready like any other (when its dependencies, the list's
//! writers among them, are done). Launching it reads the list and sets up a
//! [`Fanout`]; from then on the agent stays in the ready queue, at its
//! topological rank, while it has instances left to start, and each pop
//! starts one instance. So the run's concurrency limit and the agent's own
//! `concurrency:` bound its instances, and other ready agents interleave by
//! rank. Instances are run members of their own: attempts, retries,
//! timeouts, status, timings, events (named `agent[i]`) and per-agent
//! checkpoint records. When the last instance ends, the agent completes
//! with each declared write assembled into a list in element order
//! (`null` where an instance failed under `on_item_failure: skip` or left
//! an optional write out), and its dependents are released: no barrier
//! other than the data dependency itself.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use tokio::time::Instant;

use super::attempt::Member;
use super::ms;
use super::outcome::Outcome;
use super::scheduler::Scheduler;
use crate::agent::{AgentInput, Reads};
use crate::checkpoint::{AgentRecord, CheckpointPolicy, FieldValue};
use crate::event::EventKind;
use crate::graph::AgentId;
use crate::pipeline::{ItemFailure, MAX_ITEMS};
use crate::report::{AgentReport, AgentStatus, ItemCounts};

/// A `foreach` agent's instances during a run.
#[derive(Debug)]
pub(super) struct Fanout {
    /// The list (a JSON array), shared with the state.
    list: Arc<Value>,
    len: usize,
    /// The next element to start.
    next: usize,
    running: usize,
    done: usize,
    /// In the ready queue (never twice).
    queued: bool,
    /// The agent has ended (an instance failed under `on_item_failure:
    /// fail`, or the run wound down): nothing more starts.
    stopped: bool,
    /// The agent's reads from the state, taken when the list was read.
    base: Vec<(Arc<str>, Arc<Value>)>,
    /// Each declared write's value per element: `results[write][item]`.
    results: Vec<Vec<Option<Arc<Value>>>>,
    items: Vec<Item>,
    /// Instances an earlier attempt at this run completed.
    resumed: HashMap<usize, AgentRecord>,
    /// Each instance's writes by name, kept for the end (checkpointed runs).
    kept: Vec<Vec<FieldValue>>,
}

/// One instance's bookkeeping.
#[derive(Debug, Default)]
struct Item {
    status: Option<AgentStatus>,
    attempts: u32,
    started: Option<Instant>,
    finished: Option<Instant>,
    error: Option<Box<str>>,
    resumed: Option<Box<AgentReport>>,
    /// Its writes came from the cache.
    cached: bool,
}

/// `agent[i]`: an instance's name.
pub(crate) fn instance_name(agent: &str, item: usize) -> Arc<str> {
    Arc::from(format!("{agent}[{item}]"))
}

/// The agent and element an instance's name (`agent[i]`) stands for.
pub(super) fn instance_of(name: &str, ids: &HashMap<&str, AgentId>) -> Option<(AgentId, usize)> {
    let (agent, item) = crate::report::split_instance(name)?;
    Some((*ids.get(agent)?, item))
}

/// The reports of a resumed fan-out's instances, in element order.
pub(super) fn resumed_instances(
    records: HashMap<usize, AgentRecord>,
) -> crate::report::ByName<AgentReport> {
    let mut records: Vec<(usize, AgentRecord)> = records.into_iter().collect();
    records.sort_unstable_by_key(|(i, _)| *i);
    records
        .into_iter()
        .map(|(_, r)| {
            (
                r.agent,
                AgentReport {
                    resumed: true,
                    ..r.report
                },
            )
        })
        .collect()
}

use crate::diagnostic::json_kind as kind_of;

impl Scheduler<'_> {
    /// Launching a `foreach` agent: reads its list and queues its
    /// instances (or fails it, if the field is not a list).
    pub(super) fn start_fanout(
        &mut self,
        agent: AgentId,
        base: Vec<(Arc<str>, Arc<Value>)>,
        now: Instant,
    ) {
        let pipeline = self.pipeline;
        let def = &pipeline.agents[agent];
        let Some(foreach) = def.foreach.as_deref() else {
            return;
        };
        let field = pipeline.field_name(foreach.field);
        // The list is a required read: `launch` skipped the agent if it
        // was never produced.
        let Some(list) = self.state.get(foreach.field).cloned() else {
            return self.skip(agent, self.unavailable(foreach.field), now);
        };
        let len = match &*list {
            Value::Array(items) => items.len(),
            other => {
                let why = format!(
                    "`foreach: {field}` needs a list, but `{field}` is {}",
                    kind_of(other)
                );
                return self.fail(agent, why, now);
            }
        };
        if len > MAX_ITEMS {
            let why = format!(
                "`foreach: {field}` holds {len} elements; at most {MAX_ITEMS} instances may fan out \
                 from one agent (MAX_ITEMS): each costs bookkeeping and a report entry"
            );
            return self.fail(agent, why, now);
        }
        let checkpointed = self.policy() != CheckpointPolicy::None;
        let progress = &mut self.progress[agent];
        progress.status = AgentStatus::Running;
        progress.started = Some(now);
        if let Some(ready) = progress.ready_at {
            crate::telemetry::queue_wait(now - ready);
        }
        progress.rare().fanout = Some(Box::new(Fanout {
            list,
            len,
            next: 0,
            running: 0,
            done: 0,
            queued: false,
            stopped: false,
            base,
            results: vec![vec![None; len]; def.writes.len()],
            items: (0..len).map(|_| Item::default()).collect(),
            resumed: self
                .resumed
                .as_mut()
                .and_then(|r| r.items.remove(&agent))
                .unwrap_or_default(),
            kept: if checkpointed {
                vec![Vec::new(); len]
            } else {
                Vec::new()
            },
        }));
        let name = self.name_of(agent);
        self.emit(|| EventKind::AgentStarted {
            agent: name,
            attempt: 1,
            items: Some(len as u64),
        });
        self.advance(agent, now);
    }

    /// After any change to a fan-out: completes the agent once every
    /// instance ended, or queues it while it has instances to start.
    fn advance(&mut self, agent: AgentId, now: Instant) {
        let limit = self.item_limit(agent);
        let rank = self.pipeline.graph.rank(agent);
        let Some(f) = self.progress[agent].fanout_mut() else {
            return;
        };
        if f.stopped {
            return;
        }
        if f.done == f.len {
            f.stopped = true;
            let writes = self.assemble(agent);
            return self.conclude_fanout(agent, Outcome::Completed(writes), now);
        }
        if !f.queued && f.next < f.len && f.running < limit {
            f.queued = true;
            self.ready.push(Reverse((rank, agent)));
        }
    }

    /// Each declared write as a list in element order.
    fn assemble(&mut self, agent: AgentId) -> Vec<(crate::pipeline::FieldId, Arc<Value>)> {
        let def = &self.pipeline.agents[agent];
        let Some(f) = self.progress[agent].fanout_mut() else {
            return Vec::new();
        };
        def.writes
            .iter()
            .zip(&mut f.results)
            .map(|(write, values)| {
                let list: Vec<Value> = std::mem::take(values)
                    .into_iter()
                    .map(|v| v.map_or(Value::Null, Arc::unwrap_or_clone))
                    .collect();
                (write.field, Arc::new(Value::Array(list)))
            })
            .collect()
    }

    /// The agent's attempts are its instances' attempts, added up.
    fn conclude_fanout(&mut self, agent: AgentId, outcome: Outcome, now: Instant) {
        if let Some(f) = self.progress[agent].fanout() {
            let attempts = f.items.iter().map(|i| i.attempts).sum();
            self.progress[agent].attempts = attempts;
        }
        self.conclude(agent, outcome, now);
    }

    /// Popped from the ready queue: starts the next instance (taking the
    /// ones an earlier attempt completed as they are).
    pub(super) fn launch_item(&mut self, agent: AgentId) {
        let now = self.start_time();
        let Some(mut f) = self.progress[agent].take_fanout() else {
            return;
        };
        f.queued = false;
        // As many as the limits let start now (one at a time when each
        // needs one of the run's shared slots, taken by the loop).
        let room = if self.slots.is_some() {
            1
        } else {
            self.limit().saturating_sub(self.tasks.len()).max(1)
        };
        let room = room.min(self.item_limit(agent).saturating_sub(f.running).max(1));
        let mut started = 0;
        while !f.stopped && f.next < f.len && started < room {
            let i = f.next;
            f.next += 1;
            if let Some(record) = f.resumed.remove(&i) {
                self.take_resumed(agent, &mut f, i, record);
                continue;
            }
            self.spawn_item(agent, &mut f, i, now);
            started += 1;
        }
        self.progress[agent].put_fanout(f);
        self.advance(agent, now);
    }

    /// Most instances of `agent` in flight: its `concurrency:`, and for a
    /// group under a run limit at most four times that limit (a group
    /// takes no slot, so its nested runs would otherwise all be set up at
    /// once, each holding its state, however few of their agents run).
    fn item_limit(&self, agent: AgentId) -> usize {
        let def = &self.pipeline.agents[agent];
        let own = def
            .foreach
            .as_ref()
            .and_then(|f| f.concurrency)
            .unwrap_or(usize::MAX);
        match (&def.group, &self.slots) {
            (Some(_), Some(_)) => own.min(self.run_limit.saturating_mul(4).max(1)),
            _ => own,
        }
    }

    fn take_resumed(&mut self, agent: AgentId, f: &mut Fanout, i: usize, record: AgentRecord) {
        let def = &self.pipeline.agents[agent];
        for (name, value) in &record.writes {
            if let Some(w) = def.writes.iter().position(|w| w.name == *name) {
                f.results[w][i] = Some(value.clone());
            }
        }
        if !f.kept.is_empty() {
            f.kept[i] = record.writes;
        }
        let item = &mut f.items[i];
        item.status = Some(AgentStatus::Completed);
        item.attempts = record.report.attempts;
        item.resumed = Some(Box::new(AgentReport {
            resumed: true,
            ..record.report
        }));
        f.done += 1;
    }

    fn spawn_item(&mut self, agent: AgentId, f: &mut Fanout, i: usize, now: Instant) {
        let pipeline = self.pipeline;
        let def = &pipeline.agents[agent];
        let Some(foreach) = def.foreach.as_deref() else {
            return;
        };
        let name = instance_name(&self.name_of(agent), i);
        let mut reads = Vec::with_capacity(f.base.len() + 2);
        reads.extend(f.base.iter().cloned());
        if foreach.reads_item
            && let Some(element) = f.list.as_array().and_then(|a| a.get(i))
        {
            reads.push((foreach.item.clone(), Arc::new(element.clone())));
        }
        if foreach.reads_index {
            reads.push((foreach.index.clone(), Arc::new(Value::from(i))));
        }
        let member = Member {
            agent,
            item: Some(i),
        };
        let input = AgentInput {
            run_id: self.run_id.clone(),
            agent: name.clone(),
            attempt: 1,
            reads: Reads(reads),
            events: self.options.events.clone(),
            usage: crate::agent::TokenSlot::new(self.tokens.clone(), agent),
            logs: self.kept_logs(agent),
            processes: self.processes.clone(),
            tools: self.tool_calls(agent),
        };
        self.spawn_member(member, input, now);
        f.running += 1;
        let item = &mut f.items[i];
        item.status = Some(AgentStatus::Running);
        item.started = Some(now);
        self.emit(|| EventKind::AgentStarted {
            agent: name,
            attempt: 1,
            items: None,
        });
    }

    /// Records how instance `i` of `agent` ended. While the run goes on
    /// (`go_on`), the fan-out then advances: a failure under
    /// `on_item_failure: fail` fails the agent at once (cancelling its
    /// other instances); the last instance completes it.
    pub(super) fn item_finished(
        &mut self,
        member: Member,
        outcome: Outcome,
        attempts: u32,
        now: Instant,
        go_on: bool,
    ) {
        let (agent, Some(i)) = (member.agent, member.item) else {
            return;
        };
        let pipeline = self.pipeline;
        let def = &pipeline.agents[agent];
        let Some(mut f) = self.progress[agent].take_fanout() else {
            return;
        };
        f.running -= 1;
        f.done += 1;
        // Named only for what is told about it: events, records, errors.
        let name = if self.options.events.is_some() || self.checkpoint.is_some() {
            instance_name(&self.name_of(agent), i)
        } else {
            Arc::from("")
        };
        f.items[i].finished = Some(now);
        f.items[i].attempts = attempts;
        let mut failure = None;
        let writes = match outcome {
            Outcome::Completed(writes) => {
                let named = if f.kept.is_empty() {
                    Vec::new()
                } else {
                    self.named(&writes)
                };
                for (field, value) in writes {
                    if let Some(w) = def.writes.iter().position(|w| w.field == field) {
                        f.results[w][i] = Some(value);
                    }
                }
                f.items[i].status = Some(AgentStatus::Completed);
                let duration_ms = f.items[i].started.map(|s| ms(now - s)).unwrap_or_default();
                let cached = f.items[i].cached;
                self.emit(|| EventKind::AgentCompleted {
                    agent: name.clone(),
                    duration_ms,
                    cached,
                });
                crate::telemetry::agent_finished("completed", Some(duration_ms), attempts);
                named
            }
            Outcome::Failed(error) | Outcome::Skipped(error) => {
                self.emit(|| EventKind::AgentFailed {
                    agent: name.clone(),
                    error: error.clone(),
                });
                crate::telemetry::agent_finished("failed", None, attempts);
                f.items[i].status = Some(AgentStatus::Failed);
                let name = instance_name(&self.name_of(agent), i);
                failure = Some(format!("instance `{name}` failed: {error}"));
                f.items[i].error = Some(error.into());
                Vec::new()
            }
        };
        if !f.kept.is_empty() {
            f.kept[i] = writes.clone();
        }
        let record =
            (self.policy() == CheckpointPolicy::Agent).then(|| self.item_report(agent, &f, i));
        let fail_agent = failure.filter(|_| {
            go_on
                && !f.stopped
                && def.foreach.as_ref().map(|f| f.on_item_failure) == Some(ItemFailure::Fail)
        });
        if fail_agent.is_some() {
            f.stopped = true;
            // Its other instances in flight are cancelled.
            self.tasks
                .abort_where(|m| m.agent == agent && m.item.is_some());
        }
        self.progress[agent].put_fanout(f);
        if let Some(report) = record
            && let Some((checkpointer, _, run)) = &self.checkpoint
        {
            checkpointer.agent_finished(
                run,
                &AgentRecord {
                    agent: name,
                    report,
                    writes,
                    definition: Some(self.definition_of(agent)),
                },
            );
        }
        if let Some(why) = fail_agent {
            return self.conclude_fanout(agent, Outcome::Failed(why), now);
        }
        if go_on {
            self.advance(agent, now);
        }
    }

    /// Instance `i` of `agent` took its writes from the cache.
    pub(super) fn item_cached(&mut self, agent: AgentId, i: usize) {
        if let Some(item) = self.progress[agent]
            .fanout_mut()
            .and_then(|f| f.items.get_mut(i))
        {
            item.cached = true;
        }
    }

    /// An instance aborted in flight.
    pub(super) fn item_cancelled(&mut self, member: Member, now: Instant, why: &str) {
        let (agent, Some(i)) = (member.agent, member.item) else {
            return;
        };
        let Some(f) = self.progress[agent].fanout_mut() else {
            return;
        };
        f.running -= 1;
        let item = &mut f.items[i];
        item.status = Some(AgentStatus::Cancelled);
        item.finished = Some(now);
        item.attempts = item.attempts.max(1);
        item.error = Some(format!("cancelled in flight: {why}").into());
    }

    /// A fan-out still running when the run stopped: nothing more starts,
    /// and the agent is cancelled.
    pub(super) fn cancel_fanouts(&mut self, why: &str, now: Instant) {
        for progress in &mut self.progress {
            if progress.status != AgentStatus::Running {
                continue;
            }
            let Some(f) = progress.fanout_mut() else {
                continue;
            };
            f.stopped = true;
            let attempts = f.items.iter().map(|i| i.attempts).sum::<u32>().max(1);
            progress.status = AgentStatus::Cancelled;
            progress.finished = Some(now);
            progress.attempts = attempts;
            progress.rare().error = Some(format!("cancelled in flight: {why}"));
        }
    }

    /// One instance's report, as of now.
    fn item_report(&self, agent: AgentId, f: &Fanout, i: usize) -> AgentReport {
        let item = &f.items[i];
        if let Some(earlier) = &item.resumed {
            return (**earlier).clone();
        }
        let progress = &self.progress[agent];
        let mut status = item.status.unwrap_or(AgentStatus::Pending);
        let mut error = item.error.as_deref().map(str::to_owned);
        if progress.status != AgentStatus::Running
            && matches!(status, AgentStatus::Pending | AgentStatus::Running)
        {
            status = AgentStatus::Cancelled;
            let why = progress
                .error()
                .cloned()
                .unwrap_or_else(|| "the run stopped".to_owned());
            error = Some(format!("not started: {why}"));
        }
        AgentReport {
            start_ms: item.started.map(|s| ms(s - self.start)),
            duration_ms: item.started.zip(item.finished).map(|(s, f)| ms(f - s)),
            queue_ms: progress
                .started
                .zip(item.started)
                .map(|(ready, started)| ms(started - ready)),
            attempts: item.attempts,
            error,
            cached: item.cached,
            ..AgentReport::new(status)
        }
    }

    /// A fan-out's counts and instance reports, for its agent's report.
    pub(super) fn fanout_report(&self, agent: AgentId, report: &mut AgentReport) {
        let Some(f) = self.progress[agent].fanout() else {
            return;
        };
        let name = self.name_of(agent);
        let mut counts = ItemCounts {
            total: f.len as u64,
            ..ItemCounts::default()
        };
        let mut instances =
            crate::report::ByName::with_capacity_and_hasher(f.len, Default::default());
        for i in 0..f.len {
            let item = self.item_report(agent, f, i);
            counts.count(item.status);
            instances.insert(instance_name(&name, i), item);
        }
        report.items = Some(counts);
        report.instances = Some(instances);
    }

    /// Every instance's record with its writes, for the end of a
    /// checkpointed run.
    pub(super) fn item_records(
        &mut self,
        agent: AgentId,
        report: &AgentReport,
    ) -> Vec<AgentRecord> {
        let definition = self.definition_of(agent);
        let Some(f) = self.progress[agent].fanout_mut() else {
            return Vec::new();
        };
        let Some(instances) = &report.instances else {
            return Vec::new();
        };
        instances
            .iter()
            .enumerate()
            .filter(|(_, (_, r))| !matches!(r.status, AgentStatus::Pending | AgentStatus::Running))
            .map(|(i, (name, r))| AgentRecord {
                agent: name.clone(),
                report: r.clone(),
                writes: f.kept.get_mut(i).map(std::mem::take).unwrap_or_default(),
                definition: Some(definition.clone()),
            })
            .collect()
    }
}
