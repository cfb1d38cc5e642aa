//! What the server needs from a store, as a trait: [`RunStore`].
//!
//! The server never names the concrete [`braid_store::Store`]; it holds an
//! `Arc<dyn RunStore>`, so tests where the database is not the subject can
//! use an in-memory store (`MemoryStore`, behind the `test-support`
//! feature). The trait lives here, not in braid-store, because it is the
//! server's view of a store (what its routes and run registry call), and
//! braid-store has no reason to know about a server.

use std::sync::Arc;

use async_trait::async_trait;
use braid_core::checkpoint::Checkpointer;
use braid_core::{AgentCache, RunStatus};
use braid_store::{
    AnswerRefused, Claimed, ForkRecord, PersistError, PruneFilter, PruneReport, RunFilter,
    RunSummary, StoreError, StoredRun,
};
use tokio_util::sync::CancellationToken;

/// The store operations the server uses: run history, resume claims,
/// event streams, checkpoints and health.
#[async_trait]
pub trait RunStore: Send + Sync + 'static {
    /// Where the store is (for logs), with any password masked.
    fn describe(&self) -> String;
    /// Runs, newest first (by creation time, then id), as `filter` selects
    /// (see [`braid_store::Store::list_runs`]).
    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunSummary>, StoreError>;
    /// One run with its agents' records, or `None`.
    async fn get_run(&self, run_id: &str) -> Result<Option<StoredRun>, StoreError>;
    /// Takes over a stored run before resuming it, only if it is still as
    /// `seen`; `false` if another process took it first.
    async fn claim(&self, seen: &StoredRun) -> Result<bool, StoreError>;
    /// Takes over up to `limit` runs of `pipelines` whose lease expired
    /// (see [`braid_store::Store::claim_expired`]); the default takes none
    /// (a store no other process shares).
    async fn claim_expired(
        &self,
        limit: i64,
        pipelines: &[String],
    ) -> Result<Vec<Claimed>, StoreError> {
        let _ = (limit, pipelines);
        Ok(Vec::new())
    }
    /// Gives up a claim this process cannot act on now (see
    /// [`braid_store::Store::release`]); the default does nothing.
    async fn release(&self, run_id: &str) -> Result<(), StoreError> {
        let _ = run_id;
        Ok(())
    }
    /// Announces runs of this process that another process claimed (see
    /// [`braid_store::Store::deposed`]); `None` (the default): none ever is.
    fn deposed(&self) -> Option<tokio::sync::broadcast::Receiver<Arc<str>>> {
        None
    }
    /// Kills process groups the run's dead owner left on this host.
    async fn kill_leftover_processes(&self, run_id: &str) -> Result<(), StoreError>;
    /// Stores a run's event stream, `(seq, event as JSON)` in order.
    async fn save_events(&self, run_id: &str, events: &[(u64, String)]) -> Result<(), StoreError>;
    /// A run's stored event stream, in order (empty if none was stored).
    async fn load_events(&self, run_id: &str) -> Result<Vec<String>, StoreError>;
    /// Overwrites a run's status (e.g. `interrupted` on shutdown).
    async fn set_status(&self, run_id: &str, status: RunStatus) -> Result<(), StoreError>;
    /// What runs hand their checkpoints to. Never blocks.
    fn checkpointer(&self) -> Arc<dyn Checkpointer>;
    /// Where cached agents' results live; `None` (the default): the store
    /// keeps none, and cached agents always run.
    fn cache(&self) -> Option<Arc<dyn AgentCache>> {
        None
    }
    /// Waits until everything queued is written; reports runs that were not.
    async fn flush(&self) -> Result<(), PersistError>;
    /// Waits until everything queued is written; reports whether `run_id`'s
    /// checkpoints all were.
    async fn flush_run(&self, run_id: &str) -> Result<(), PersistError>;
    /// Whether the store answers (for `/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;
    /// Publishes the store's own gauges before `/metrics` renders; the
    /// default publishes nothing.
    fn record_gauges(&self) {}
    /// Records the answer to a waiting `input` agent and claims its run
    /// (see [`braid_store::Store::answer`]).
    async fn answer(
        &self,
        run_id: &str,
        agent: &str,
        field: &str,
        value: &serde_json::Value,
    ) -> Result<Result<(), AnswerRefused>, StoreError>;
    /// Records a fork before it runs (see [`braid_store::Store::record_fork`]).
    async fn record_fork(&self, fork: &ForkRecord) -> Result<(), StoreError>;
    /// Waiting runs whose wait has timed out, and the next deadline (see
    /// [`braid_store::Store::due_waits`]).
    async fn due_waits(
        &self,
        now_ms: i64,
        limit: i64,
    ) -> Result<(Vec<String>, Option<i64>), StoreError>;
    /// Deletes the runs `filter` selects (see [`braid_store::prune`]),
    /// stopping between batches once `stop` is cancelled. The default
    /// prunes nothing: a store that keeps no history has none to bound.
    async fn prune(
        &self,
        filter: &PruneFilter,
        stop: CancellationToken,
    ) -> Result<PruneReport, StoreError> {
        let _ = (filter, stop);
        Ok(PruneReport {
            complete: true,
            ..PruneReport::default()
        })
    }
}

#[async_trait]
impl RunStore for braid_store::Store {
    fn describe(&self) -> String {
        self.url().to_owned()
    }

    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunSummary>, StoreError> {
        braid_store::Store::list_runs(self, filter).await
    }

    async fn get_run(&self, run_id: &str) -> Result<Option<StoredRun>, StoreError> {
        braid_store::Store::get_run(self, run_id).await
    }

    async fn claim(&self, seen: &StoredRun) -> Result<bool, StoreError> {
        braid_store::Store::claim(self, seen).await
    }

    async fn claim_expired(
        &self,
        limit: i64,
        pipelines: &[String],
    ) -> Result<Vec<Claimed>, StoreError> {
        braid_store::Store::claim_expired(self, limit, pipelines).await
    }

    fn deposed(&self) -> Option<tokio::sync::broadcast::Receiver<Arc<str>>> {
        Some(braid_store::Store::deposed(self))
    }

    async fn release(&self, run_id: &str) -> Result<(), StoreError> {
        braid_store::Store::release(self, run_id).await
    }

    async fn kill_leftover_processes(&self, run_id: &str) -> Result<(), StoreError> {
        braid_store::Store::kill_leftover_processes(self, run_id)
            .await
            .map(drop)
    }

    async fn save_events(&self, run_id: &str, events: &[(u64, String)]) -> Result<(), StoreError> {
        braid_store::Store::save_events(self, run_id, events).await
    }

    async fn load_events(&self, run_id: &str) -> Result<Vec<String>, StoreError> {
        braid_store::Store::load_events(self, run_id).await
    }

    async fn set_status(&self, run_id: &str, status: RunStatus) -> Result<(), StoreError> {
        braid_store::Store::set_status(self, run_id, status).await
    }

    fn checkpointer(&self) -> Arc<dyn Checkpointer> {
        braid_store::Store::checkpointer(self)
    }

    fn cache(&self) -> Option<Arc<dyn AgentCache>> {
        Some(braid_store::Store::cache(self))
    }

    async fn flush(&self) -> Result<(), PersistError> {
        braid_store::Store::flush(self).await
    }

    async fn flush_run(&self, run_id: &str) -> Result<(), PersistError> {
        braid_store::Store::flush_run(self, run_id).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        braid_store::Store::ping(self).await
    }

    fn record_gauges(&self) {
        self.record_pool_gauges();
    }

    async fn answer(
        &self,
        run_id: &str,
        agent: &str,
        field: &str,
        value: &serde_json::Value,
    ) -> Result<Result<(), AnswerRefused>, StoreError> {
        braid_store::Store::answer(self, run_id, agent, field, value).await
    }

    async fn record_fork(&self, fork: &ForkRecord) -> Result<(), StoreError> {
        braid_store::Store::record_fork(self, fork).await
    }

    async fn due_waits(
        &self,
        now_ms: i64,
        limit: i64,
    ) -> Result<(Vec<String>, Option<i64>), StoreError> {
        braid_store::Store::due_waits(self, now_ms, limit).await
    }

    async fn prune(
        &self,
        filter: &PruneFilter,
        stop: CancellationToken,
    ) -> Result<PruneReport, StoreError> {
        braid_store::Store::prune_until(self, filter, stop.cancelled_owned()).await
    }
}
