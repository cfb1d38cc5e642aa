//! Checkpointing, as the engine sees it: a policy, the records a run hands
//! to a [`Checkpointer`], and the [`ResumePoint`] a run can continue from.
//!
//! The engine knows nothing of databases. A store implements
//! [`Checkpointer`]; its methods must not block (they queue the record and
//! return), so checkpointing never slows the scheduler. Only what changed is
//! handed over: an agent's own writes, never the whole state.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::report::{AgentReport, RunReport};

/// When a run's state is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointPolicy {
    /// Nothing is written: the fastest batch mode.
    None,
    /// One write when the run finishes: the run, each agent's record and
    /// each completed agent's writes.
    #[default]
    End,
    /// Each agent's record and writes as soon as it finishes, so a run
    /// that dies can be resumed.
    Agent,
}

impl CheckpointPolicy {
    /// Every policy, by name.
    pub const NAMES: &'static [&'static str] = &["none", "end", "agent"];

    /// Its one string form: `none`, `end` or `agent`.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckpointPolicy::None => "none",
            CheckpointPolicy::End => "end",
            CheckpointPolicy::Agent => "agent",
        }
    }
}

impl fmt::Display for CheckpointPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CheckpointPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match [Self::None, Self::End, Self::Agent]
            .into_iter()
            .find(|policy| policy.as_str() == s)
        {
            Some(policy) => Ok(policy),
            None => Err(format!(
                "unknown checkpoint policy `{other}`; expected one of: {}",
                CheckpointPolicy::NAMES.join(", "),
                other = s
            )),
        }
    }
}

/// A field and the value an agent wrote to it.
pub type FieldValue = (Arc<str>, Arc<Value>);

/// What identifies a run and its starting point.
#[derive(Debug, Clone)]
pub struct RunRecord {
    /// The run's id.
    pub run_id: Arc<str>,
    /// The pipeline's name.
    pub pipeline: Arc<str>,
    /// The pipeline file's content hash (see [`crate::Pipeline::content_hash`]).
    pub pipeline_hash: Arc<str>,
    /// The pipeline file, when it was loaded from one.
    pub pipeline_path: Option<PathBuf>,
    /// The checked input, field by field.
    pub input: Vec<FieldValue>,
    /// The run's checkpoint policy.
    pub policy: CheckpointPolicy,
    /// Who or what started it (see [`RunOptions::started_by`](crate::RunOptions)).
    pub started_by: Option<Arc<str>>,
}

/// One agent's outcome and, if it completed, its writes.
#[derive(Debug, Clone)]
pub struct AgentRecord {
    /// The agent's name.
    pub agent: Arc<str>,
    /// Its status, attempts, timings and error.
    pub report: AgentReport,
    /// What it wrote (empty unless it completed).
    pub writes: Vec<FieldValue>,
    /// Its [definition hash](crate::AgentDef::definition_hash) when it ran.
    /// A resumed run reuses its writes only if the agent's hash is still the
    /// same; `None` (a record from before hashes were kept) never matches.
    pub definition: Option<Arc<str>>,
}

/// Receives a run's checkpoints. Implementations queue and return: they
/// are called from the scheduler loop.
pub trait Checkpointer: Send + Sync + 'static {
    /// The run began. Called with policy `agent` only, so that a run whose
    /// process dies is on record and can be resumed.
    fn run_started(&self, run: &RunRecord);
    /// An agent finished: completed, skipped or failed. Policy `agent` only.
    fn agent_finished(&self, run: &RunRecord, agent: &AgentRecord);
    /// The run ended. `agents` holds every agent's record, and every
    /// completed agent's writes (with policy `agent`, again: a store that
    /// lost an earlier write of this run can restore it from here).
    fn run_finished(&self, run: &RunRecord, report: &RunReport, agents: &[AgentRecord]);
    /// A command agent of the run started a process group (policy `agent`
    /// only), so that whoever resumes the run after this process died can
    /// kill what is left of it. The returned future resolves once the
    /// record is durable, or could not be made so; the agent gets its input
    /// only then. The default records nothing.
    fn process_started(&self, run: &RunRecord, agent: &str, pgid: i32) -> Recorded {
        let _ = (run, agent, pgid);
        Box::pin(std::future::ready(()))
    }
    /// That process group is gone (killed with its agent). Queues and
    /// returns; the default does nothing.
    fn process_ended(&self, run: &RunRecord, pgid: i32) {
        let _ = (run, pgid);
    }
}

/// Resolves when a [`Checkpointer::process_started`] record is durable.
pub type Recorded = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'static>>;

/// Where a resumed run starts: agents that already completed, with their
/// writes.
///
/// A record is reused only if the agent completed, its
/// [definition hash](crate::AgentDef::definition_hash) is the one stored
/// with the record, and every agent it depends on is reused too. Everything
/// else (changed agents and everything downstream of them, failed,
/// cancelled, skipped or never started agents) is decided and run again.
/// This holds whatever let the resume through (`--force` included): a
/// stored output is never handed to an agent whose definition, or whose
/// upstream's, differs from the one that produced it.
#[derive(Debug, Clone, Default)]
pub struct ResumePoint {
    /// Records of finished agents, in any order.
    pub agents: Vec<AgentRecord>,
}

impl fmt::Debug for dyn Checkpointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<checkpointer>")
    }
}
