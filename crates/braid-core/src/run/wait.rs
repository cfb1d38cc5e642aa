//! `input` agents: waiting for an answer without holding up the rest of
//! the run. A waiting agent is not a task: it is a row in
//! [`Scheduler::waits`] with its deadline. Every agent that does not depend
//! on it keeps running; when nothing else can progress the run ends with
//! status `waiting`, checkpointed, and is continued from its store once
//! answered (or once its wait times out). An answer that arrives while the
//! run is still in flight (through its [`AnswerInbox`](crate::answer)) is
//! applied at once.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use indexmap::IndexMap;
use serde_json::Value;
use tokio::time::Instant;

use super::outcome::Outcome;
use super::scheduler::Scheduler;
use crate::answer::{Answer, Delivery};
use crate::event::EventKind;
use crate::graph::AgentId;
use crate::report::AgentStatus;

/// Now, in ms since the Unix epoch (deadlines outlive the process, so they
/// are wall-clock times; durations are still measured on the monotonic clock).
pub(super) fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Scheduler<'_> {
    /// `agent`, an `input` agent whose reads are ready, starts waiting;
    /// its deadline is the one an earlier attempt at this run set, or now
    /// plus its `timeout`. A deadline already past times it out at once.
    pub(super) fn start_wait(
        &mut self,
        agent: AgentId,
        reads: Vec<(Arc<str>, Arc<Value>)>,
        now: Instant,
    ) {
        let def = &self.pipeline.agents[agent];
        let Some(input) = def.input.clone() else {
            return;
        };
        let deadline = self
            .resumed
            .as_mut()
            .and_then(|r| r.waits.remove(&agent))
            .or_else(|| {
                def.policy.timeout.map(|t| {
                    unix_ms().saturating_add(i64::try_from(t.as_millis()).unwrap_or(i64::MAX))
                })
            });
        let progress = &mut self.progress[agent];
        progress.status = AgentStatus::Waiting;
        progress.started = Some(now);
        progress.attempts = 1;
        self.waits.push((agent, deadline));
        if deadline.is_some_and(|d| d <= unix_ms()) {
            return self.time_out(agent, now);
        }
        let name = self.name_of(agent);
        self.emit(|| EventKind::AgentWaiting {
            agent: name,
            prompt: input.prompt.clone(),
            schema: input.schema.clone(),
            reads: reads.into_iter().collect::<IndexMap<_, _>>(),
            deadline_ms: deadline,
        });
        crate::telemetry::agent_waiting();
        self.checkpoint_waiting(agent);
    }

    /// The deadline of a waiting agent (`None`: not waiting, or no timeout).
    pub(super) fn deadline_of(&self, agent: AgentId) -> Option<i64> {
        self.waits
            .iter()
            .find(|(a, _)| *a == agent)
            .and_then(|(_, d)| *d)
    }

    /// When the loop must next wake to time a wait out.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let earliest = self.waits.iter().filter_map(|(_, d)| *d).min()?;
        let from_now = u64::try_from(earliest.saturating_sub(unix_ms())).unwrap_or(0);
        Some(Instant::now() + Duration::from_millis(from_now))
    }

    /// Times out every wait whose deadline has passed.
    pub(super) fn expire_waits(&mut self) {
        let now_ms = unix_ms();
        let due: Vec<AgentId> = self
            .waits
            .iter()
            .filter(|(_, d)| d.is_some_and(|d| d <= now_ms))
            .map(|(a, _)| *a)
            .collect();
        let now = Instant::now();
        for agent in due {
            self.time_out(agent, now);
        }
    }

    /// `agent`'s wait timed out: it completes with its `default`, or fails.
    fn time_out(&mut self, agent: AgentId, now: Instant) {
        self.waits.retain(|(a, _)| *a != agent);
        let def = &self.pipeline.agents[agent];
        let Some(input) = def.input.clone() else {
            return;
        };
        let waited = def
            .policy
            .timeout
            .map(|t| humantime::format_duration(t).to_string())
            .unwrap_or_default();
        match &input.default {
            Some(value) => {
                self.progress[agent].rare().reason =
                    Some(format!("no answer within {waited}; its default was used"));
                let name = self.name_of(agent);
                self.emit(|| EventKind::AgentAnswered {
                    agent: name,
                    by_default: true,
                });
                let field = def.writes[0].field;
                self.conclude(agent, Outcome::Completed(vec![(field, value.clone())]), now);
            }
            None => self.conclude(
                agent,
                Outcome::Failed(format!(
                    "no answer within {waited} (its timeout), and it has no `default`"
                )),
                now,
            ),
        }
    }

    /// An answer that arrived while the run is in flight.
    pub(super) fn take_answer(&mut self, answer: Answer) {
        let Answer { answer, reply } = answer;
        let found = self
            .pipeline
            .agents
            .iter()
            .position(|a| a.name == answer.agent);
        let delivery = match found {
            Some(agent) if self.waits.iter().any(|(a, _)| *a == agent) => {
                self.waits.retain(|(a, _)| *a != agent);
                let name = self.name_of(agent);
                self.emit(|| EventKind::AgentAnswered {
                    agent: name,
                    by_default: false,
                });
                let field = self.pipeline.agents[agent].writes[0].field;
                self.conclude(
                    agent,
                    Outcome::Completed(vec![(field, answer.value)]),
                    Instant::now(),
                );
                Delivery::Applied
            }
            Some(agent) => Delivery::NotWaiting(self.progress[agent].status),
            None => Delivery::NotWaiting(AgentStatus::Pending),
        };
        let _ = reply.send(delivery);
    }
}
