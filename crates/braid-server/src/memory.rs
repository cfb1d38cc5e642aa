//! An in-memory [`RunStore`] for tests where the database is not the
//! subject (behind the `test-support` feature).
//!
//! It keeps what a real store keeps (runs with their agents' records and
//! writes, event streams, statuses) in a mutex, and writes checkpoints at
//! once (so `flush` has nothing to wait for). [`MemoryStore::set_down`]
//! makes it fail like an unreachable database. Processes left by a dead
//! owner are not tracked: there are none to kill.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use braid_core::checkpoint::{AgentRecord, Checkpointer, RunRecord};
use braid_core::{RunReport, RunStatus};
use braid_store::{
    AnswerRefused, ForkRecord, PersistError, RunFilter, RunSummary, StoreError, StoredRun,
};
use indexmap::IndexMap;

use crate::store::RunStore;

/// A store that lives in memory and is gone with the process.
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Runs>>,
    down: Arc<AtomicBool>,
}

#[derive(Default)]
struct Runs {
    runs: IndexMap<String, Kept>,
    events: HashMap<String, Vec<(u64, String)>>,
}

struct Kept {
    run: StoredRun,
    agents: IndexMap<Arc<str>, AgentRecord>,
}

impl Kept {
    fn stored(&self) -> StoredRun {
        StoredRun {
            agents: self.agents.values().cloned().collect(),
            ..self.run.clone()
        }
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// While `down`, every operation fails as if the database were
    /// unreachable, and checkpoints are lost (reported by the flushes).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Records `owner` (`host:pid`) as the process running `run_id`, as
    /// another braid process sharing a real store would.
    pub fn set_owner(&self, run_id: &str, owner: &str) {
        if let Some(kept) = self.lock().runs.get_mut(run_id) {
            kept.run.owner = Some(owner.to_owned());
        }
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Corrupt(
                "the in-memory store is down (MemoryStore::set_down)".to_owned(),
            ));
        }
        Ok(())
    }

    fn check_flush(&self, run_id: Option<&str>) -> Result<(), PersistError> {
        self.check().map_err(|err| PersistError {
            runs: vec![(run_id.unwrap_or("every run").to_owned(), err.to_string())],
        })
    }

    fn lock(&self) -> MutexGuard<'_, Runs> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The run's record, created from `run` if it is new.
    fn upsert(&self, run: &RunRecord, update: impl FnOnce(&mut Kept)) {
        if self.check().is_err() {
            return;
        }
        let mut runs = self.lock();
        let kept = runs
            .runs
            .entry(run.run_id.to_string())
            .or_insert_with(|| Kept {
                run: new_run(run),
                agents: IndexMap::new(),
            });
        update(kept);
    }
}

fn new_run(run: &RunRecord) -> StoredRun {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    StoredRun {
        summary: RunSummary {
            run_id: run.run_id.to_string(),
            pipeline: run.pipeline.to_string(),
            status: braid_core::report::RUNNING.to_owned(),
            checkpoint: run.policy.to_string(),
            created_at_ms: now,
            makespan_ms: None,
            error: None,
            started_by: run.started_by.as_deref().map(str::to_owned),
        },
        pipeline_hash: run.pipeline_hash.to_string(),
        pipeline_path: run.pipeline_path.as_ref().map(|p| p.display().to_string()),
        owner: Some(format!("memory:{}", std::process::id())),
        epoch: 0,
        lease_until_ms: None,
        input: run
            .input
            .iter()
            .map(|(field, value)| (field.to_string(), (**value).clone()))
            .collect(),
        parent_id: None,
        forked_from: None,
        forks: Vec::new(),
        agents: Vec::new(),
    }
}

impl Checkpointer for MemoryStore {
    fn run_started(&self, run: &RunRecord) {
        self.upsert(run, |kept| {
            kept.run.summary.status = braid_core::report::RUNNING.to_owned()
        });
    }

    fn agent_finished(&self, run: &RunRecord, agent: &AgentRecord) {
        self.upsert(run, |kept| {
            kept.agents.insert(agent.agent.clone(), agent.clone());
        });
    }

    fn run_finished(&self, run: &RunRecord, report: &RunReport, agents: &[AgentRecord]) {
        self.upsert(run, |kept| {
            let summary = &mut kept.run.summary;
            summary.status = report.status.to_string();
            summary.error = report.error.clone();
            summary.makespan_ms = Some(report.makespan_ms);
            for agent in agents {
                kept.agents.insert(agent.agent.clone(), agent.clone());
            }
        });
    }
}

#[async_trait]
impl RunStore for MemoryStore {
    fn describe(&self) -> String {
        "memory".to_owned()
    }

    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunSummary>, StoreError> {
        self.check()?;
        let runs = self.lock();
        let mut listed: Vec<RunSummary> = runs
            .runs
            .values()
            .map(|k| &k.run.summary)
            .filter(|s| filter.matches(s))
            .cloned()
            .collect();
        listed.sort_by(|a, b| (b.created_at_ms, &b.run_id).cmp(&(a.created_at_ms, &a.run_id)));
        listed.truncate(usize::try_from(filter.limit.unwrap_or(50).max(1)).unwrap_or(usize::MAX));
        Ok(listed)
    }

    async fn get_run(&self, run_id: &str) -> Result<Option<StoredRun>, StoreError> {
        self.check()?;
        let runs = self.lock();
        let Some(mut run) = runs.runs.get(run_id).map(Kept::stored) else {
            return Ok(None);
        };
        // A fork's kept agents: their writes are their source run's.
        for agent in &mut run.agents {
            if let Some(source) = &agent.report.reused_from
                && agent.writes.is_empty()
                && let Some(kept) = runs.runs.get(source)
                && let Some(record) = kept.agents.get(&agent.agent)
            {
                agent.writes = record.writes.clone();
            }
        }
        run.forks = runs
            .runs
            .iter()
            .filter(|(_, k)| k.run.parent_id.as_deref() == Some(run_id))
            .map(|(id, _)| id.clone())
            .collect();
        Ok(Some(run))
    }

    async fn claim(&self, seen: &StoredRun) -> Result<bool, StoreError> {
        self.check()?;
        let mut runs = self.lock();
        let Some(kept) = runs.runs.get_mut(&seen.summary.run_id) else {
            return Ok(false);
        };
        if kept.run.summary.status != seen.summary.status || kept.run.owner != seen.owner {
            return Ok(false);
        }
        kept.run.summary.status = braid_core::report::RUNNING.to_owned();
        Ok(true)
    }

    async fn answer(
        &self,
        run_id: &str,
        agent: &str,
        field: &str,
        value: &serde_json::Value,
    ) -> Result<Result<(), AnswerRefused>, StoreError> {
        self.check()?;
        let mut runs = self.lock();
        let Some(kept) = runs.runs.get_mut(run_id) else {
            return Ok(Err(AnswerRefused::NoRun(run_id.to_owned())));
        };
        if kept.run.summary.status != "waiting" {
            return Ok(Err(AnswerRefused::RunNotWaiting {
                run_id: run_id.to_owned(),
                status: kept.run.summary.status.clone(),
            }));
        }
        let Some(record) = kept
            .agents
            .get_mut(agent)
            .filter(|r| r.report.status == braid_core::AgentStatus::Waiting)
        else {
            return Ok(Err(AnswerRefused::AgentNotWaiting {
                run_id: run_id.to_owned(),
                agent: agent.to_owned(),
                status: "not waiting".to_owned(),
            }));
        };
        record.report.status = braid_core::AgentStatus::Completed;
        record.report.deadline_ms = None;
        record.writes = vec![(Arc::from(field), Arc::new(value.clone()))];
        kept.run.summary.status = braid_core::report::RUNNING.to_owned();
        Ok(Ok(()))
    }

    async fn record_fork(&self, fork: &ForkRecord) -> Result<(), StoreError> {
        self.check()?;
        let record = RunRecord {
            run_id: Arc::from(fork.run_id.as_str()),
            pipeline: Arc::from(fork.pipeline.as_str()),
            pipeline_hash: Arc::from(fork.pipeline_hash.as_str()),
            pipeline_path: fork.pipeline_path.as_ref().map(Into::into),
            input: fork
                .input
                .iter()
                .map(|(k, v)| (Arc::from(k.as_str()), Arc::new(v.clone())))
                .collect(),
            policy: fork.checkpoint,
            started_by: None,
        };
        self.upsert(&record, |kept| {
            kept.run.parent_id = Some(fork.parent_id.clone());
            kept.run.forked_from = Some(fork.forked_from.clone());
        });
        Ok(())
    }

    async fn due_waits(
        &self,
        now_ms: i64,
        limit: i64,
    ) -> Result<(Vec<String>, Option<i64>), StoreError> {
        self.check()?;
        let runs = self.lock();
        let mut due = Vec::new();
        let mut next: Option<i64> = None;
        for (id, kept) in &runs.runs {
            if kept.run.summary.status != "waiting" {
                continue;
            }
            for record in kept.agents.values() {
                match record.report.deadline_ms {
                    Some(d) if record.report.status == braid_core::AgentStatus::Waiting => {
                        if d <= now_ms {
                            if !due.contains(id) && (due.len() as i64) < limit {
                                due.push(id.clone());
                            }
                        } else {
                            next = Some(next.map_or(d, |n| n.min(d)));
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok((due, next))
    }

    async fn kill_leftover_processes(&self, _run_id: &str) -> Result<(), StoreError> {
        self.check()?;
        Ok(())
    }

    async fn save_events(&self, run_id: &str, events: &[(u64, String)]) -> Result<(), StoreError> {
        self.check()?;
        let mut runs = self.lock();
        let kept = runs.events.entry(run_id.to_owned()).or_default();
        for (seq, event) in events {
            match kept.binary_search_by_key(seq, |(s, _)| *s) {
                Ok(at) => kept[at].1 = event.clone(),
                Err(at) => kept.insert(at, (*seq, event.clone())),
            }
        }
        Ok(())
    }

    async fn load_events(&self, run_id: &str) -> Result<Vec<String>, StoreError> {
        self.check()?;
        Ok(self
            .lock()
            .events
            .get(run_id)
            .map(|events| events.iter().map(|(_, e)| e.clone()).collect())
            .unwrap_or_default())
    }

    async fn set_status(&self, run_id: &str, status: RunStatus) -> Result<(), StoreError> {
        self.check()?;
        if let Some(kept) = self.lock().runs.get_mut(run_id) {
            kept.run.summary.status = status.as_str().to_owned();
        }
        Ok(())
    }

    fn checkpointer(&self) -> Arc<dyn Checkpointer> {
        Arc::new(self.clone())
    }

    async fn flush(&self) -> Result<(), PersistError> {
        self.check_flush(None)
    }

    async fn flush_run(&self, run_id: &str) -> Result<(), PersistError> {
        self.check_flush(Some(run_id))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.check()?;
        Ok(())
    }
}
