//! Forks ("time travel"): a new run that keeps an earlier run's recorded
//! results for every agent not downstream of the point it re-runs from,
//! and runs the rest.
//!
//! The point is an agent (`review`), an instance of a `foreach` agent
//! (`summarize[3]`: its other instances are kept), or a member of a
//! group's nested run (`per_doc[2].classify`, `refine#2.critique`: the
//! other elements, the earlier rounds and, in that run, the members not
//! downstream of it are kept), at any depth. Fields set on the fork
//! (`--set FIELD=JSON`) re-run their readers: an input field changes the
//! input; a field an agent wrote replaces that agent's recorded write.
//!
//! What is kept is handed to the run as a [`ResumePoint`], so the usual
//! rule still holds: a record is reused only if its agent's definition,
//! and every upstream one, is unchanged (a fork with an edited pipeline
//! re-runs what changed). Kept records say which run holds their writes
//! ([`AgentReport::reused_from`](crate::AgentReport)), so a store refers to
//! them rather than copying them.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::checkpoint::{AgentRecord, FieldValue, ResumePoint};
use crate::graph::AgentId;
use crate::pipeline::Pipeline;
use crate::report::{AgentStatus, top_agent};

/// Why a fork cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForkError {
    /// Neither `from` nor a field to set was given.
    #[error(
        "a fork needs a point to re-run from (--from AGENT) or a field to set (--set FIELD=JSON)"
    )]
    NoPoint,
    /// `from` names no agent of the pipeline.
    #[error("pipeline `{pipeline}` has no agent `{agent}`; its agents are: {known}")]
    UnknownAgent {
        /// The agent named.
        agent: String,
        /// The pipeline.
        pipeline: String,
        /// Its agents.
        known: String,
    },
    /// `from` is an instance, round or member the run has no record of.
    #[error("run {run_id} has no record of `{from}`")]
    NoRecord {
        /// The run forked.
        run_id: String,
        /// The point named.
        from: String,
    },
    /// A set field is not a field of the pipeline.
    #[error("pipeline `{pipeline}` has no field `{field}`")]
    UnknownField {
        /// The field.
        field: String,
        /// The pipeline.
        pipeline: String,
    },
    /// A set field is written by an agent the fork re-runs, which would
    /// overwrite it.
    #[error(
        "`{field}` is written by `{writer}`, which this fork re-runs; set a field it reads instead, or fork from a later point"
    )]
    SetByRerun {
        /// The field.
        field: String,
        /// Its writer.
        writer: String,
    },
    /// A set field has several writers (merged): which one to replace is
    /// not clear.
    #[error("`{field}` is written by several agents ({writers}); set a field they read instead")]
    SeveralWriters {
        /// The field.
        field: String,
        /// Its writers.
        writers: String,
    },
    /// The run has no completed record of a set field's writer.
    #[error("`{field}` was not written in run {run_id} (its writer `{writer}` did not complete)")]
    NotWritten {
        /// The field.
        field: String,
        /// Its writer.
        writer: String,
        /// The run forked.
        run_id: String,
    },
}

/// A fork, ready to run.
#[derive(Debug, Clone)]
pub struct Fork {
    /// The records the fork keeps, each pointing at the run that holds its
    /// writes; give it as [`RunOptions::resume`](crate::RunOptions).
    pub resume: ResumePoint,
    /// The fork's input: the earlier run's, with set input fields replaced.
    pub input: Map<String, Value>,
    /// Agents whose recorded writes the fork replaces (set fields they
    /// wrote): all their writes, for the store to keep as the fork's own.
    pub set_writes: Vec<(String, Vec<FieldValue>)>,
    /// Top-level agents that run again (the rest keep their results, if
    /// their definitions are unchanged).
    pub rerun: Vec<String>,
}

/// A position inside a fan-out or a group: `[i]` or `#r`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Selector {
    Element(usize),
    Round(usize),
}

/// `[3].rest`, `#2.rest`, `[3]`, `#2` → the selector and what follows the dot.
fn selector(rest: &str) -> Option<(Selector, Option<&str>)> {
    let (sel, after) = if let Some(inner) = rest.strip_prefix('[') {
        let end = inner.find(']')?;
        (
            Selector::Element(inner[..end].parse().ok()?),
            &inner[end + 1..],
        )
    } else if let Some(inner) = rest.strip_prefix('#') {
        let end = inner.find('.').unwrap_or(inner.len());
        (Selector::Round(inner[..end].parse().ok()?), &inner[end..])
    } else {
        return None;
    };
    match after {
        "" => Some((sel, None)),
        _ => after.strip_prefix('.').map(|sub| (sel, Some(sub))),
    }
}

/// `seeds` and everything downstream of them.
fn downstream(pipeline: &Pipeline, seeds: impl IntoIterator<Item = AgentId>) -> HashSet<AgentId> {
    let mut seen = HashSet::new();
    let mut stack: Vec<AgentId> = seeds.into_iter().collect();
    while let Some(a) = stack.pop() {
        if seen.insert(a) {
            stack.extend(pipeline.graph.dependents(a).iter().copied());
        }
    }
    seen
}

fn agent_id(pipeline: &Pipeline, name: &str) -> Option<AgentId> {
    pipeline.agents.iter().position(|a| &*a.name == name)
}

/// Whether the record `name` (relative to `pipeline`) is kept when
/// re-running from `from` (relative to the same pipeline); `rerun` is
/// `from`'s agent and everything downstream of it at this level.
fn kept(pipeline: &Pipeline, from: &str, rerun: &HashSet<AgentId>, name: &str) -> bool {
    let top = top_agent(name);
    let Some(id) = agent_id(pipeline, top) else {
        return false;
    };
    if !rerun.contains(&id) {
        return true;
    }
    let from_top = top_agent(from);
    if top != from_top {
        return false;
    }
    let (Some((sel, sub)), Some((mine, my_sub))) = (
        selector(&from[from_top.len()..]),
        selector(&name[top.len()..]),
    ) else {
        // The agent's own record, or a point that is the whole agent.
        return false;
    };
    let inside =
        |sub: Option<&str>, my_sub: Option<&str>| match (sub, my_sub, &pipeline.agents[id].group) {
            (Some(sub), Some(my_sub), Some(group)) => {
                let nested = &*group.pipeline;
                match agent_id(nested, top_agent(sub)) {
                    Some(start) => kept(nested, sub, &downstream(nested, [start]), my_sub),
                    None => false,
                }
            }
            _ => false,
        };
    match (sel, mine) {
        (Selector::Element(i), Selector::Element(j)) if i != j => true,
        (Selector::Round(r), Selector::Round(k)) if k < r => true,
        (Selector::Element(i), Selector::Element(j)) if i == j => inside(sub, my_sub),
        (Selector::Round(r), Selector::Round(k)) if k == r => inside(sub, my_sub),
        _ => false,
    }
}

impl Pipeline {
    /// A fork of run `run_id` (its `records` and `input`): re-runs from
    /// `from` (an agent, instance, round or member) and the readers of the
    /// `set` fields, keeping every other completed record. See the module
    /// docs ([`crate::fork`]).
    pub fn fork(
        &self,
        run_id: &str,
        records: &[AgentRecord],
        input: &Map<String, Value>,
        from: Option<&str>,
        set: &[(String, Value)],
    ) -> Result<Fork, ForkError> {
        if from.is_none() && set.is_empty() {
            return Err(ForkError::NoPoint);
        }
        let mut seeds = Vec::new();
        if let Some(from) = from {
            let top = top_agent(from);
            let Some(id) = agent_id(self, top) else {
                return Err(ForkError::UnknownAgent {
                    agent: top.to_owned(),
                    pipeline: self.name.to_string(),
                    known: self.agent_names().collect::<Vec<_>>().join(", "),
                });
            };
            if top != from && !records.iter().any(|r| *r.agent == *from) {
                return Err(ForkError::NoRecord {
                    run_id: run_id.to_owned(),
                    from: from.to_owned(),
                });
            }
            seeds.push(id);
        }
        let mut input = input.clone();
        let mut replaced: Vec<(AgentId, &str, &Value)> = Vec::new();
        for (field, value) in set {
            let Some(f) = self.field_id(field) else {
                return Err(ForkError::UnknownField {
                    field: field.clone(),
                    pipeline: self.name.to_string(),
                });
            };
            let def = &self.fields[f];
            if def.input.is_some() {
                input.insert(field.clone(), value.clone());
            } else {
                match def.writers.as_slice() {
                    [writer] => replaced.push((*writer, field, value)),
                    writers => {
                        return Err(ForkError::SeveralWriters {
                            field: field.clone(),
                            writers: writers
                                .iter()
                                .map(|&w| format!("`{}`", self.agents[w].name))
                                .collect::<Vec<_>>()
                                .join(", "),
                        });
                    }
                }
            }
            // Its readers run again.
            seeds.extend(self.agents.iter().enumerate().filter_map(|(id, a)| {
                let reads = a.reads.iter().any(|r| r.field == f)
                    || a.condition_fields.contains(&f)
                    || a.foreach.as_ref().is_some_and(|fe| fe.field == f);
                reads.then_some(id)
            }));
        }
        let rerun = downstream(self, seeds);
        let mut set_writes = Vec::new();
        for &(writer, field, _) in &replaced {
            if rerun.contains(&writer) {
                return Err(ForkError::SetByRerun {
                    field: field.to_owned(),
                    writer: self.agents[writer].name.to_string(),
                });
            }
        }
        let mut kept_records = Vec::new();
        for record in records {
            if record.report.status != AgentStatus::Completed {
                continue;
            }
            let keep = match from {
                Some(from) => kept(self, from, &rerun, &record.agent),
                None => {
                    agent_id(self, top_agent(&record.agent)).is_some_and(|id| !rerun.contains(&id))
                }
            };
            if !keep {
                continue;
            }
            let mut record = record.clone();
            let own: Vec<&(AgentId, &str, &Value)> = replaced
                .iter()
                .filter(|(w, _, _)| *self.agents[*w].name == *record.agent)
                .collect();
            if own.is_empty() {
                record.report.reused_from = Some(
                    record
                        .report
                        .reused_from
                        .clone()
                        .unwrap_or_else(|| run_id.to_owned()),
                );
            } else {
                for (_, field, value) in own {
                    match record.writes.iter_mut().find(|(n, _)| **n == **field) {
                        Some(slot) => slot.1 = Arc::new((*value).clone()),
                        None => record
                            .writes
                            .push((Arc::from(*field), Arc::new((*value).clone()))),
                    }
                }
                // The fork holds these writes itself.
                record.report.reused_from = None;
                set_writes.push((record.agent.to_string(), record.writes.clone()));
            }
            kept_records.push(record);
        }
        for &(writer, field, _) in &replaced {
            let name = &self.agents[writer].name;
            if !set_writes.iter().any(|(a, _)| **a == **name) {
                return Err(ForkError::NotWritten {
                    field: field.to_owned(),
                    writer: name.to_string(),
                    run_id: run_id.to_owned(),
                });
            }
        }
        let mut rerun: Vec<String> = rerun
            .into_iter()
            .map(|a| self.agents[a].name.to_string())
            .collect();
        rerun.sort_by_key(|name| self.agent_names().position(|n| n == name));
        Ok(Fork {
            resume: ResumePoint {
                agents: kept_records,
            },
            input,
            set_writes,
            rerun,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_parse_elements_rounds_and_members() {
        assert_eq!(selector("[3]"), Some((Selector::Element(3), None)));
        assert_eq!(selector("[3].x"), Some((Selector::Element(3), Some("x"))));
        assert_eq!(
            selector("#2.c[1]"),
            Some((Selector::Round(2), Some("c[1]")))
        );
        assert_eq!(selector("#2"), Some((Selector::Round(2), None)));
        assert_eq!(selector("[x]"), None);
        assert_eq!(selector("[3]x"), None);
    }
}
