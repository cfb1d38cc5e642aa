//! Runs that wait for an answer, and forks, as the store keeps them.
//!
//! - An answer is recorded in one transaction that also takes the run
//!   over ([`Store::answer`]): of two answers, or an answer and a timeout,
//!   exactly one wins, and whoever wins continues the run from its records.
//! - A timeout outlives every process: [`Store::due_waits`] lists waiting
//!   runs whose earliest deadline has passed, for a server to continue
//!   (the run then applies the timeout itself).
//! - A fork is recorded before it runs ([`Store::record_fork`]): its parent
//!   and where it re-ran from, and the writes it set. The agents it keeps
//!   point at their source run's deltas; none is copied.

use braid_core::checkpoint::FieldValue;
use braid_core::{AgentStatus, CheckpointPolicy};
use serde_json::Value;
use sqlx::Row;

use crate::clock::now_ms;
use crate::{Store, StoreError, acquire};

/// Why an answer was not recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerRefused {
    /// No such run.
    #[error("no run {0}")]
    NoRun(String),
    /// The run is not waiting (it is running, or has ended).
    #[error("run {run_id} is not waiting for an answer: it is {status}")]
    RunNotWaiting {
        /// The run.
        run_id: String,
        /// What it is.
        status: String,
    },
    /// The agent is not waiting: answered already, or never reached.
    #[error("agent `{agent}` of run {run_id} is not waiting for an answer: it is {status}")]
    AgentNotWaiting {
        /// The run.
        run_id: String,
        /// The agent.
        agent: String,
        /// Its status (`none` when it has no record).
        status: String,
    },
    /// Its wait timed out before the answer came.
    #[error(
        "agent `{agent}` of run {run_id} stopped waiting at {deadline}: its timeout passed; \
         `braid runs resume {run_id}` applies it (its default, or a failure)"
    )]
    TimedOut {
        /// The run.
        run_id: String,
        /// The agent.
        agent: String,
        /// When it timed out (RFC 3339).
        deadline: String,
    },
}

/// A fork, as recorded before it runs.
#[derive(Debug, Clone)]
pub struct ForkRecord {
    /// The new run's id.
    pub run_id: String,
    /// The run it is forked from.
    pub parent_id: String,
    /// What it re-runs from: `--from` and the fields it sets, as shown.
    pub forked_from: String,
    /// The pipeline's name.
    pub pipeline: String,
    /// The pipeline file's content hash.
    pub pipeline_hash: String,
    /// The pipeline file.
    pub pipeline_path: Option<String>,
    /// Its checkpoint policy.
    pub checkpoint: CheckpointPolicy,
    /// Its input.
    pub input: serde_json::Map<String, Value>,
    /// Agents whose writes the fork sets (`--set` on a field an agent
    /// wrote): all their writes, the set ones replaced, kept as the fork's
    /// own deltas.
    pub set_writes: Vec<(String, Vec<FieldValue>)>,
}

fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

impl Store {
    /// Records `value` as the answer of `agent`, an `input` agent of the
    /// waiting run `run_id`, writing `field`, and takes the run over (its
    /// status becomes `running`, owned by this process): continue it with
    /// its records ([`Store::get_run`]) right after. Refused, with nothing
    /// changed, when the run or the agent is not waiting or the wait timed
    /// out. Check the answer against the pipeline first
    /// ([`braid_core::Pipeline::check_answer`]).
    pub async fn answer(
        &self,
        run_id: &str,
        agent: &str,
        field: &str,
        value: &Value,
    ) -> Result<Result<(), AnswerRefused>, StoreError> {
        if self.read_only {
            return Err(self.read_only_error("answering writes"));
        }
        let mut conn = acquire(&self.pool, "store").await?;
        let now = now_ms();
        let leases = self.writer.leases();
        let mut epoch = None;
        let done: Result<Result<(), AnswerRefused>, sqlx::Error> = async {
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            // A claim like a resume's: the next epoch, leased from now.
            let claimed: Option<i64> = sqlx::query_scalar(
                "UPDATE braid_runs SET status = 'running', owner = $1, updated_at_ms = $2,
                        epoch = epoch + 1, lease_until_ms = $4
                 WHERE id = $3 AND status = 'waiting'
                 RETURNING epoch",
            )
            .bind(self.writer.owner().to_owned())
            .bind(now)
            .bind(run_id)
            .bind(leases.until_ms())
            .fetch_optional(&mut *tx)
            .await?;
            epoch = claimed;
            if claimed.is_none() {
                let status: Option<String> =
                    sqlx::query_scalar("SELECT status FROM braid_runs WHERE id = $1")
                        .bind(run_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                tx.rollback().await?;
                return Ok(Err(match status {
                    None => AnswerRefused::NoRun(run_id.to_owned()),
                    Some(status) => AnswerRefused::RunNotWaiting {
                        run_id: run_id.to_owned(),
                        status,
                    },
                }));
            }
            let answered = sqlx::query(
                "UPDATE braid_agent_runs SET status = 'completed', deadline_ms = NULL,
                        error = NULL, reason = NULL
                 WHERE run_id = $1 AND agent = $2 AND status = 'waiting'
                   AND (deadline_ms IS NULL OR deadline_ms > $3)",
            )
            .bind(run_id)
            .bind(agent)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if answered.rows_affected() != 1 {
                let row = sqlx::query(
                    "SELECT status, deadline_ms FROM braid_agent_runs WHERE run_id = $1 AND agent = $2",
                )
                .bind(run_id)
                .bind(agent)
                .fetch_optional(&mut *tx)
                .await?;
                tx.rollback().await?;
                let refused = match row {
                    Some(row) => {
                        let status: String = row.try_get("status")?;
                        let deadline: Option<i64> = row.try_get("deadline_ms")?;
                        match deadline {
                            Some(d) if status == AgentStatus::Waiting.as_str() => {
                                AnswerRefused::TimedOut {
                                    run_id: run_id.to_owned(),
                                    agent: agent.to_owned(),
                                    deadline: rfc3339(d),
                                }
                            }
                            _ => AnswerRefused::AgentNotWaiting {
                                run_id: run_id.to_owned(),
                                agent: agent.to_owned(),
                                status,
                            },
                        }
                    }
                    None => AnswerRefused::AgentNotWaiting {
                        run_id: run_id.to_owned(),
                        agent: agent.to_owned(),
                        status: "none".to_owned(),
                    },
                };
                return Ok(Err(refused));
            }
            sqlx::query(
                "INSERT INTO braid_deltas (run_id, agent, field, value) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (run_id, agent, field) DO UPDATE SET value = excluded.value",
            )
            .bind(run_id)
            .bind(agent)
            .bind(field)
            .bind(value.to_string())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Ok(()))
        }
        .await;
        match done {
            Ok(outcome) => {
                if outcome.is_ok()
                    && let Some(epoch) = epoch
                {
                    leases.claimed(run_id, u64::try_from(epoch).unwrap_or(0));
                }
                Ok(outcome)
            }
            Err(error) => {
                let _ = conn.close().await;
                Err(error.into())
            }
        }
    }

    /// Waiting runs whose earliest wait has timed out by `now_ms`, oldest
    /// deadline first, at most `limit`; and the earliest deadline still to
    /// come (when to look again).
    pub async fn due_waits(
        &self,
        now_ms: i64,
        limit: i64,
    ) -> Result<(Vec<String>, Option<i64>), StoreError> {
        let due = sqlx::query(
            "SELECT a.run_id, MIN(a.deadline_ms) AS deadline
             FROM braid_agent_runs a JOIN braid_runs r ON r.id = a.run_id
             WHERE r.status = 'waiting' AND a.status = 'waiting' AND a.deadline_ms IS NOT NULL
               AND a.deadline_ms <= $1
             GROUP BY a.run_id ORDER BY deadline LIMIT $2",
        )
        .bind(now_ms)
        .bind(limit.max(1))
        .fetch_all(&self.pool)
        .await?;
        let due = due
            .iter()
            .map(|r| r.try_get::<String, _>("run_id"))
            .collect::<Result<Vec<_>, _>>()?;
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(a.deadline_ms)
             FROM braid_agent_runs a JOIN braid_runs r ON r.id = a.run_id
             WHERE r.status = 'waiting' AND a.status = 'waiting' AND a.deadline_ms > $1",
        )
        .bind(now_ms)
        .fetch_one(&self.pool)
        .await?;
        Ok((due, next))
    }

    /// Records a fork before it runs: its run row (status `running`, owned
    /// by this process) with its parent and where it re-ran from, and the
    /// writes it sets. The run's own checkpoints fill in the rest.
    pub async fn record_fork(&self, fork: &ForkRecord) -> Result<(), StoreError> {
        if self.read_only {
            return Err(self.read_only_error("a fork writes"));
        }
        let mut conn = acquire(&self.pool, "store").await?;
        let now = now_ms();
        let done: Result<(), sqlx::Error> = async {
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            sqlx::query(
                "INSERT INTO braid_runs (id, pipeline, pipeline_hash, pipeline_path, checkpoint,
                     status, input, owner, created_at_ms, updated_at_ms, parent_id, forked_from,
                     lease_until_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            )
            .bind(fork.run_id.clone())
            .bind(fork.pipeline.clone())
            .bind(fork.pipeline_hash.clone())
            .bind(fork.pipeline_path.clone())
            .bind(fork.checkpoint.as_str())
            .bind(braid_core::report::RUNNING)
            .bind(Value::Object(fork.input.clone()).to_string())
            .bind(self.writer.owner().to_owned())
            .bind(now)
            .bind(now)
            .bind(fork.parent_id.clone())
            .bind(fork.forked_from.clone())
            .bind(self.writer.leases().until_ms())
            .execute(&mut *tx)
            .await?;
            for (agent, writes) in &fork.set_writes {
                for (field, value) in writes {
                    sqlx::query(
                        "INSERT INTO braid_deltas (run_id, agent, field, value) VALUES ($1, $2, $3, $4)",
                    )
                    .bind(fork.run_id.clone())
                    .bind(agent.clone())
                    .bind(field.to_string())
                    .bind(value.to_string())
                    .execute(&mut *tx)
                    .await?;
                }
            }
            tx.commit().await
        }
        .await;
        if let Err(error) = done {
            let _ = conn.close().await;
            return Err(error.into());
        }
        self.writer.leases().claimed(&fork.run_id, 0);
        Ok(())
    }
}
