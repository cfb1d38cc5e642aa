//! What crosses the wire: a [`Task`] (one attempt of one agent, with its
//! reads) and its [`TaskResult`] (the writes, or why it failed, with the
//! agent's log lines and tokens). Both are JSON.

use std::time::Duration;

use braid_core::agent::{AgentError, Writes};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One attempt of one agent, as a coordinator sends it to a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Task {
    /// `run:agent:attempt:epoch`, also the message's `Nats-Msg-Id`.
    pub id: String,
    /// The run it belongs to.
    pub run: String,
    /// The pipeline's name: the worker runs its own copy of it.
    pub pipeline: String,
    /// The agent as the run names it (`summarise`, `per_doc[3].inner`).
    pub agent: String,
    /// The agent's path in the pipeline (`per_doc.inner`): what the worker
    /// looks up.
    pub path: String,
    /// The agent's portable definition hash (`Pipeline::portable_hashes`:
    /// its settings and its dependencies', not where the file is): a
    /// worker holding another definition refuses the task.
    pub definition: String,
    /// 1 for the first try.
    pub attempt: u32,
    /// The epoch under which the coordinator owns the run.
    pub epoch: u64,
    /// The agent's reads, and nothing else of the run's state.
    pub reads: Map<String, Value>,
    /// How long the attempt may take, when the agent has a `timeout`: the
    /// worker stops it then too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The subject its result goes to.
    pub reply: String,
}

impl Task {
    /// The id of one attempt: `run:agent:attempt:epoch`.
    pub fn id_of(run: &str, agent: &str, attempt: u32, epoch: u64) -> String {
        format!("{run}:{agent}:{attempt}:{epoch}")
    }
}

/// What a worker sends back for a task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskResult {
    /// The task's id.
    pub id: String,
    /// The worker that ran it (`host-pid-nonce`).
    pub worker: String,
    /// Its writes, or why it failed.
    pub outcome: TaskOutcome,
    /// The agent's log lines (the last ones, bounded as a checkpointed
    /// run keeps them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<String>,
    /// Tokens its model calls used: `[prompt, completion]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<[u64; 2]>,
    /// How long the agent ran on the worker.
    pub duration_ms: f64,
}

/// A task's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskOutcome {
    /// The agent's writes (checked by the coordinator against its declared
    /// writes, as for an agent run in-process).
    Ok(Writes),
    /// Why the attempt failed.
    Error(WireError),
}

/// An [`AgentError`] on the wire, so the coordinator retries exactly what
/// it would retry in-process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WireError {
    /// [`AgentError::Timeout`].
    Timeout {
        /// The limit, in milliseconds.
        ms: u64,
    },
    /// [`AgentError::Spawn`].
    Spawn {
        /// The program.
        program: String,
        /// The reason.
        message: String,
    },
    /// [`AgentError::Exit`].
    Exit {
        /// How it ended.
        status: String,
        /// Its last stderr lines.
        stderr_tail: Vec<String>,
    },
    /// [`AgentError::Output`].
    Output {
        /// What was wrong.
        message: String,
    },
    /// [`AgentError::Other`].
    Other {
        /// The reason.
        message: String,
    },
    /// [`AgentError::Refused`].
    Refused {
        /// The reason.
        message: String,
    },
}

impl From<&AgentError> for WireError {
    fn from(e: &AgentError) -> Self {
        match e {
            AgentError::Timeout(d) => WireError::Timeout {
                ms: u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
            },
            AgentError::Spawn { program, message } => WireError::Spawn {
                program: program.clone(),
                message: message.clone(),
            },
            AgentError::Exit {
                status,
                stderr_tail,
            } => WireError::Exit {
                status: status.clone(),
                stderr_tail: stderr_tail.clone(),
            },
            AgentError::Output(m) => WireError::Output { message: m.clone() },
            AgentError::Refused(m) => WireError::Refused { message: m.clone() },
            other => WireError::Other {
                message: other.to_string(),
            },
        }
    }
}

impl From<WireError> for AgentError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Timeout { ms } => AgentError::Timeout(Duration::from_millis(ms)),
            WireError::Spawn { program, message } => AgentError::Spawn { program, message },
            WireError::Exit {
                status,
                stderr_tail,
            } => AgentError::Exit {
                status,
                stderr_tail,
            },
            WireError::Output { message } => AgentError::Output(message),
            WireError::Other { message } => AgentError::Other(message),
            WireError::Refused { message } => AgentError::Refused(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_their_kind_across_the_wire() {
        let errors = [
            AgentError::Timeout(Duration::from_millis(1500)),
            AgentError::Spawn {
                program: "x".into(),
                message: "not found".into(),
            },
            AgentError::Exit {
                status: "exit code 3".into(),
                stderr_tail: vec!["boom".into()],
            },
            AgentError::Output("bad".into()),
            AgentError::Other("flaky".into()),
            AgentError::Refused("no".into()),
        ];
        for error in errors {
            let wire = serde_json::to_string(&WireError::from(&error)).unwrap();
            let back: AgentError = serde_json::from_str::<WireError>(&wire).unwrap().into();
            assert_eq!(back.to_string(), error.to_string(), "{wire}");
            assert_eq!(back.is_retryable(), error.is_retryable(), "{wire}");
        }
    }

    #[test]
    fn a_task_id_names_run_agent_attempt_and_epoch() {
        assert_eq!(Task::id_of("r1", "docs[3].sum", 2, 7), "r1:docs[3].sum:2:7");
    }
}
