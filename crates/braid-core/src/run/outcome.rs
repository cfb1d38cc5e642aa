//! Recording how an agent ended, in one place: the state merge, its
//! report, telemetry, its event and its per-agent checkpoint. The scheduler
//! loop and wind-down both go through [`Scheduler::record`], so an outcome
//! that arrives while the run is stopping is recorded exactly like one that
//! arrives while it runs.

use std::sync::Arc;

use serde_json::Value;
use tokio::time::Instant;

use super::attempt::Member;
use super::members::Ended;
use super::ms;
use super::scheduler::Scheduler;
use crate::checkpoint::{AgentRecord, CheckpointPolicy, FieldValue};
use crate::event::EventKind;
use crate::graph::AgentId;
use crate::pipeline::{FailurePolicy, FieldId};
use crate::report::{AgentReport, AgentStatus, RunStatus};

/// How an agent ended.
pub(super) enum Outcome {
    /// It completed with these writes.
    Completed(Vec<(FieldId, Arc<Value>)>),
    /// It failed for good, for this reason.
    Failed(String),
    /// It did not run, for this reason.
    Skipped(String),
}

impl Scheduler<'_> {
    /// Records how `agent` ended: merges a completed agent's writes into
    /// the state, updates what its report will say, emits its event, counts
    /// it in the metrics and hands it to the checkpointer. What the run does
    /// next (ready dependents, stop) is the caller's.
    pub(super) fn record(&mut self, agent: AgentId, outcome: Outcome, now: Instant) {
        let attempts = self.progress[agent].attempts;
        match outcome {
            Outcome::Completed(writes) => {
                let named = if self.checkpoint.is_some() {
                    self.named(&writes)
                } else {
                    Vec::new()
                };
                self.state.apply(self.pipeline, agent, writes);
                let progress = &mut self.progress[agent];
                progress.status = AgentStatus::Completed;
                progress.finished = Some(now);
                let duration_ms = progress.started.map(|s| ms(now - s)).unwrap_or_default();
                let cached = progress.cached;
                self.emit(|| EventKind::AgentCompleted {
                    agent: self.name_of(agent),
                    duration_ms,
                    cached,
                });
                crate::telemetry::agent_finished("completed", Some(duration_ms), attempts);
                self.checkpoint_agent(agent, named);
            }
            Outcome::Failed(error) => {
                self.emit(|| EventKind::AgentFailed {
                    agent: self.name_of(agent),
                    error: error.clone(),
                });
                self.any_failed = true;
                crate::telemetry::agent_finished("failed", None, attempts);
                let progress = &mut self.progress[agent];
                progress.status = AgentStatus::Failed;
                progress.finished.get_or_insert(now);
                progress.rare().error = Some(error);
                self.checkpoint_agent(agent, Vec::new());
            }
            Outcome::Skipped(reason) => {
                self.emit(|| EventKind::AgentSkipped {
                    agent: self.name_of(agent),
                    reason: reason.clone(),
                });
                crate::telemetry::agent_finished("skipped", None, 0);
                let progress = &mut self.progress[agent];
                progress.status = AgentStatus::Skipped;
                progress.rare().reason = Some(reason);
                self.checkpoint_agent(agent, Vec::new());
            }
        }
    }

    /// Records `agent`'s outcome while the run goes on: dependents of a
    /// completed or skipped agent (or of a failed one under
    /// `on_failure: continue`) are readied; a failure under
    /// `on_failure: fail` stops the run.
    pub(super) fn conclude(&mut self, agent: AgentId, outcome: Outcome, now: Instant) {
        let failed = match &outcome {
            Outcome::Failed(error) => Some(error.clone()),
            _ => None,
        };
        self.record(agent, outcome, now);
        match failed {
            Some(error) if matches!(self.pipeline.on_failure, FailurePolicy::Fail) => {
                let name = self.name_of(agent);
                self.stop = Some((RunStatus::Failed, format!("agent `{name}` failed: {error}")));
            }
            _ => self.release(agent, now),
        }
    }

    /// Skips `agent` (its condition is false, or a read it needs is missing).
    pub(super) fn skip(&mut self, agent: AgentId, reason: String, now: Instant) {
        self.conclude(agent, Outcome::Skipped(reason), now);
    }

    /// Fails `agent` before it ran (its condition could not be evaluated).
    pub(super) fn fail(&mut self, agent: AgentId, error: String, now: Instant) {
        self.conclude(agent, Outcome::Failed(error), now);
    }

    /// Takes a member that ended while the run goes on.
    pub(super) fn finish(&mut self, ended: Ended) {
        if let Some((member, outcome, attempts, now)) = self.joined(ended) {
            match member.item {
                None => self.conclude(member.agent, outcome, now),
                Some(_) => self.item_finished(member, outcome, attempts, now, true),
            }
        }
    }

    /// What a member's end says: who it ran for, its outcome, attempts
    /// and end. A member aborted in flight is marked cancelled here (and
    /// gives `None`).
    fn joined(&mut self, ended: Ended) -> Option<(Member, Outcome, u32, Instant)> {
        match ended {
            Ended::Finished(done) => {
                if done.member.item.is_none() {
                    self.progress[done.member.agent].attempts = done.attempts;
                }
                if done.cached {
                    self.mark_cached(done.member);
                }
                if !done.failures.is_empty() {
                    let failures = &mut self.progress[done.member.agent].rare().failures;
                    match done.member.item {
                        None => failures.extend(done.failures),
                        // An instance's failures join its agent's, named.
                        Some(i) => failures.extend(done.failures.into_iter().map(|mut f| {
                            f.error = format!("[{i}]: {}", f.error);
                            f
                        })),
                    }
                }
                let outcome = match done.result {
                    Ok(writes) => Outcome::Completed(writes),
                    Err(error) => Outcome::Failed(error.to_string()),
                };
                let finished = done.finished.unwrap_or_else(|| self.clock());
                Some((done.member, outcome, done.attempts, finished))
            }
            Ended::Cancelled(member) => {
                self.cancelled(member, Instant::now());
                None
            }
            Ended::Panicked(member, message) => {
                let why = format!("the agent panicked: {message}");
                if member.item.is_none() {
                    let progress = &mut self.progress[member.agent];
                    progress.attempts = progress.attempts.max(1);
                }
                Some((member, Outcome::Failed(why), 1, Instant::now()))
            }
        }
    }

    /// Notes that `member`'s writes came from the cache.
    fn mark_cached(&mut self, member: Member) {
        match member.item {
            None => self.progress[member.agent].cached = true,
            Some(i) => self.item_cached(member.agent, i),
        }
    }

    fn cancelled(&mut self, member: Member, now: Instant) {
        let reason = self
            .stop
            .as_ref()
            .map(|(_, why)| why.clone())
            .or_else(|| self.progress[member.agent].error().cloned())
            .unwrap_or_else(|| "the run stopped".to_owned());
        if member.item.is_some() {
            return self.item_cancelled(member, now, &reason);
        }
        let progress = &mut self.progress[member.agent];
        progress.status = AgentStatus::Cancelled;
        progress.finished = Some(now);
        progress.attempts = progress.attempts.max(1);
        progress.rare().error = Some(format!("cancelled in flight: {reason}"));
    }

    /// Aborts what is still in flight and records what finished meanwhile
    /// (completed or failed), starting nothing new; agents never started
    /// are cancelled.
    pub(super) async fn wind_down(&mut self) {
        self.tasks.abort_all();
        while let Some(ended) = self.tasks.join_next().await {
            // Each join is a turn of its own.
            self.turn_time = None;
            if let Some((member, outcome, attempts, now)) = self.joined(ended) {
                match member.item {
                    None => self.record(member.agent, outcome, now),
                    Some(_) => self.item_finished(member, outcome, attempts, now, false),
                }
            }
        }
        let why = self.stop.as_ref().map(|(_, why)| why.clone());
        self.cancel_fanouts(why.as_deref().unwrap_or("the run stopped"), Instant::now());
        if why.is_none() && !self.waits.is_empty() {
            // The run waits: what depends on the answer stays pending.
            return;
        }
        self.waits.clear();
        for progress in &mut self.progress {
            if progress.status == AgentStatus::Waiting {
                progress.status = AgentStatus::Cancelled;
                progress.rare().error = Some(format!(
                    "stopped while waiting for its answer: {}",
                    why.clone().unwrap_or_else(|| "the run stopped".to_owned())
                ));
            }
            if progress.status == AgentStatus::Pending {
                progress.status = AgentStatus::Cancelled;
                progress.rare().error = Some(format!(
                    "not started: {}",
                    why.clone().unwrap_or_else(|| "the run stopped".to_owned())
                ));
            }
        }
    }

    /// What the report will say of `agent`, as of now.
    pub(super) fn agent_report(&self, agent: AgentId) -> AgentReport {
        let mut report = AgentReport::new(self.progress[agent].status);
        self.fill_report(agent, &mut report);
        report
    }

    /// Fills in what the report will say of `agent` in place, into a
    /// fresh `AgentReport::new(status)` (fields its progress does not have
    /// are left as they are): a run's report builds each agent's entry
    /// where it is kept, rather than build and move its 384 bytes.
    pub(super) fn fill_report(&self, agent: AgentId, report: &mut AgentReport) {
        debug_assert!(
            report.error.is_none() && report.instances.is_none() && report.logs.is_empty(),
            "fill_report takes a fresh report"
        );
        let progress = &self.progress[agent];
        if let Some(earlier) = progress.resumed() {
            return report.clone_from(earlier);
        }
        let start = self.start;
        report.start_ms = progress.started.map(|s| ms(s - start));
        report.duration_ms = progress
            .started
            .zip(progress.finished)
            .map(|(s, f)| ms(f - s));
        report.queue_ms = progress
            .ready_at
            .zip(progress.started)
            .map(|(r, s)| ms(s - r));
        report.attempts = progress.attempts;
        report.tokens = self.tokens[agent].usage();
        report.deadline_ms = self.deadline_of(agent);
        report.cached = progress.cached;
        if let Some(rare) = progress.rare.as_deref() {
            report.error.clone_from(&rare.error);
            report.reason.clone_from(&rare.reason);
            report.failures.clone_from(&rare.failures);
            if let Some(kept) = &rare.logs {
                (report.logs, report.logs_dropped) = kept.lines();
            }
            if let Some(calls) = &rare.tool_calls {
                report.tool_calls = calls.records();
                report.transcript = calls.transcript(&self.pipeline.agents[agent].name);
            }
        }
        self.fanout_report(agent, report);
    }

    /// Hands an agent's outcome to the checkpointer (policy `agent`), or
    /// keeps its writes for the end (policy `end`).
    /// A waiting agent's record (policy `agent`), with its deadline, so the
    /// wait outlives this process.
    pub(super) fn checkpoint_waiting(&mut self, agent: AgentId) {
        self.checkpoint_agent(agent, Vec::new());
    }

    fn checkpoint_agent(&mut self, agent: AgentId, writes: Vec<FieldValue>) {
        if self.policy() == CheckpointPolicy::Agent {
            let record = AgentRecord {
                agent: self.name_of(agent),
                report: self.agent_report(agent),
                writes: writes.clone(),
                definition: Some(self.definition_of(agent)),
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
}
