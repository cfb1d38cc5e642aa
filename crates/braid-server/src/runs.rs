//! The run registry: every run the server started, and its lifecycle, with
//! no HTTP in it.
//!
//! [`RunRegistry`] admits runs (a slot each, none once shutdown began),
//! launches each in the server's task tracker, pumps the engine's events
//! into the run's [`EventLog`], turns a panic in the engine into a failed
//! report, saves the events and the run to the store, marks runs the
//! shutdown stopped as interrupted, and keeps a window of finished runs in
//! memory. The routes call it and translate its refusals into HTTP.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use braid_core::event::{EventKind, EventLevel, EventSink, RunEvent};
use braid_core::{CheckpointPolicy, ResumePoint, RunOptions, RunReport, RunStatus, ValidInput};
use indexmap::IndexMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::events::{self, EventLog};
use crate::store::RunStore;
use crate::{Registered, ServerConfig};

/// A run the server started (in flight, or finished recently).
pub struct LiveRun {
    /// The run's id.
    pub id: String,
    /// Its pipeline's name.
    pub pipeline: String,
    /// When this server started (or continued) it, in ms since the Unix
    /// epoch: where it sorts among the runs listed.
    pub created_at_ms: i64,
    /// `off`, `summary` or `full`.
    pub events_mode: &'static str,
    /// Its events (empty for `off` until the final event).
    pub events: Arc<EventLog>,
    /// Cancels the run.
    pub cancel: CancellationToken,
    /// `None` while running; the report once finished.
    pub report: watch::Receiver<Option<Arc<RunReport>>>,
    /// Set when the server cancelled it because it was shutting down.
    pub interrupted: AtomicBool,
    /// Set when the server cancelled it because another process took it
    /// over (its lease had expired): that process runs it now.
    pub deposed: AtomicBool,
    /// Why the run (or its events) could not be saved, if so: its report
    /// says so instead of passing for saved.
    pub not_saved: std::sync::OnceLock<String>,
    /// For a fork: the run it was forked from.
    pub parent_id: Option<String>,
    /// Hands answers to its `input` agents while it is in flight.
    pub answers: braid_core::answer::AnswerSender,
    /// Resolves once the run has ended and its checkpoints are written (or
    /// could not be): an answer that missed the run in flight then goes
    /// through the store.
    pub saved: watch::Receiver<bool>,
    /// Asks the run in flight where it has got to (its agents and state),
    /// for clients that read a run started without events.
    pub snapshots: braid_core::snapshot::SnapshotTaker,
    /// Who or what started it, when this server did.
    pub started_by: Option<String>,
}

/// Why the registry takes no new run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refused {
    /// Shutdown has begun.
    #[error("the server is shutting down and takes no new runs")]
    ShuttingDown,
    /// Every slot is taken.
    #[error("{max} runs are in flight, the most this server takes; try again later")]
    TooManyRuns {
        /// The limit (`max_concurrent_runs`).
        max: usize,
    },
}

/// A reserved place for one run in flight; freed when the run ends (or
/// when dropped unused).
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
}

/// How a run is to be started.
pub(crate) struct Launch {
    /// The pipeline to run.
    pub(crate) registered: Arc<Registered>,
    /// Its checked input.
    pub(crate) input: ValidInput,
    /// Which events the engine builds (`None`: none).
    pub(crate) level: Option<EventLevel>,
    /// `off`, `summary` or `full`, as the API shows it.
    pub(crate) mode: &'static str,
    /// The request's checkpoint policy, over the pipeline's.
    pub(crate) checkpoint: Option<CheckpointPolicy>,
    /// The id of a run being resumed; a new one otherwise.
    pub(crate) run_id: Option<String>,
    /// Where a resumed run starts.
    pub(crate) resume: Option<ResumePoint>,
    /// Events of an earlier attempt at this run: numbering goes on after them.
    pub(crate) events_before: u64,
    /// For a fork: the run it was forked from.
    pub(crate) parent_id: Option<String>,
    /// Cached agents run without the store's cache (`"no_cache": true`).
    pub(crate) no_cache: bool,
    /// Who or what started it (`api`, or the request's `started_by`);
    /// `None` for a run continued (resumed, answered): it keeps its own.
    pub(crate) started_by: Option<String>,
    /// A continued run: how long ago it first started (its clock starts
    /// then; see [`RunOptions::resumed_after`]).
    pub(crate) resumed_after: Option<std::time::Duration>,
}

/// Every run the server started, and the machinery that runs them.
pub(crate) struct RunRegistry {
    store: Option<Arc<dyn RunStore>>,
    runs: RwLock<IndexMap<String, Arc<LiveRun>>>,
    slots: Arc<Semaphore>,
    max_runs: usize,
    max_events_per_run: usize,
    max_finished_runs: usize,
    tracker: TaskTracker,
    /// Where runs execute: one current-thread runtime per core (`None`:
    /// on the runtime that launches them).
    cores: Option<Arc<crate::cores::Cores>>,
    /// Held (shared) while a run is admitted and spawned, and (exclusively)
    /// while the tracker closes, so no run slips in after shutdown began.
    admission: RwLock<()>,
    /// Woken when a run ends waiting (see `waiter.rs`).
    pub(crate) waits: Arc<tokio::sync::Notify>,
}

impl RunRegistry {
    /// An empty registry with `config`'s limits, saving runs to `store`.
    pub(crate) fn new(config: &ServerConfig, store: Option<Arc<dyn RunStore>>) -> Self {
        Self {
            store,
            runs: RwLock::new(IndexMap::new()),
            slots: Arc::new(Semaphore::new(config.max_concurrent_runs.max(1))),
            max_runs: config.max_concurrent_runs,
            max_events_per_run: config.max_events_per_run,
            max_finished_runs: config.max_finished_runs,
            tracker: TaskTracker::new(),
            cores: config.cores.clone(),
            admission: RwLock::new(()),
            waits: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Whether shutdown has begun.
    pub(crate) fn shutting_down(&self) -> bool {
        self.tracker.is_closed()
    }

    /// How many more runs it takes now.
    pub(crate) fn free_slots(&self) -> usize {
        if self.tracker.is_closed() {
            0
        } else {
            self.slots.available_permits()
        }
    }

    /// Reserves a slot for a run, or says why there is none.
    pub(crate) fn reserve(&self) -> Result<Slot, Refused> {
        if self.tracker.is_closed() {
            return Err(Refused::ShuttingDown);
        }
        self.slots
            .clone()
            .try_acquire_owned()
            .map(|permit| Slot { _permit: permit })
            .map_err(|_| Refused::TooManyRuns { max: self.max_runs })
    }

    /// The run `id`, if it is in memory (in flight or finished recently).
    pub(crate) fn get(&self, id: &str) -> Option<Arc<LiveRun>> {
        self.read().get(id).cloned()
    }

    /// Forgets the run `id` (it goes on ending if in flight): its record
    /// is then read from the store. For a run another process took over.
    pub(crate) fn forget(&self, id: &str) {
        self.runs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .shift_remove(id);
    }

    /// The runs in memory, newest first.
    pub(crate) fn newest_first(&self) -> Vec<Arc<LiveRun>> {
        self.read().values().rev().cloned().collect()
    }

    /// Counts of runs in memory by status (`running`, `completed`, …).
    pub(crate) fn counts(&self) -> HashMap<&'static str, usize> {
        let mut counts = HashMap::new();
        for run in self.read().values() {
            let status = match run.report.borrow().as_ref() {
                None => braid_core::report::RUNNING,
                Some(r) => r.status.as_str(),
            };
            *counts.entry(status).or_default() += 1;
        }
        counts
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, IndexMap<String, Arc<LiveRun>>> {
        self.runs.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a run in the task tracker and registers it; refuses once
    /// shutdown has begun.
    pub(crate) fn launch(&self, how: Launch, slot: Slot) -> Result<Arc<LiveRun>, Refused> {
        let _admitted = self.admission.read().unwrap_or_else(|e| e.into_inner());
        if self.tracker.is_closed() {
            return Err(Refused::ShuttingDown);
        }
        let id = how
            .run_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let log = EventLog::continuing(self.max_events_per_run, how.events_before);
        let (report_tx, report_rx) = watch::channel(None);
        let (saved_tx, saved_rx) = watch::channel(false);
        let (answers, inbox) = braid_core::answer::channel();
        let (snapshots, snapshot_inbox) = braid_core::snapshot::channel();
        let run = Arc::new(LiveRun {
            id: id.clone(),
            pipeline: how.registered.pipeline.name().to_owned(),
            created_at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            events_mode: how.mode,
            events: log,
            cancel: CancellationToken::new(),
            report: report_rx,
            interrupted: Default::default(),
            deposed: Default::default(),
            not_saved: Default::default(),
            parent_id: how.parent_id.clone(),
            answers,
            saved: saved_rx,
            snapshots,
            started_by: how.started_by.clone(),
        });
        {
            let mut runs = self.runs.write().unwrap_or_else(|e| e.into_inner());
            runs.insert(id, run.clone());
            prune(&mut runs, self.max_finished_runs);
        }
        metrics::counter!("braid_runs_started_total").increment(1);
        let execution = Execution {
            run: run.clone(),
            store: self.store.clone(),
            how,
            inbox,
            snapshot_inbox,
            waits: self.waits.clone(),
        };
        let task = async move {
            let report = execution.run().await;
            let _ = saved_tx.send(true);
            // Free the slot before telling waiters, so a client that
            // resubmits at once is not refused for its own finished run.
            drop(slot);
            let _ = report_tx.send(Some(Arc::new(report)));
        };
        // A run stays on the one runtime it starts on, agents included.
        match &self.cores {
            Some(cores) => drop(self.tracker.spawn_on(task, cores.handle())),
            None => drop(self.tracker.spawn(task)),
        }
        Ok(run)
    }

    /// Stops taking runs and waits up to `grace` for runs in flight; then
    /// cancels the rest and marks them interrupted (in the store,
    /// resumable). Finally flushes the store.
    pub(crate) async fn shut_down(&self, grace: Duration) {
        {
            let _closing = self.admission.write().unwrap_or_else(|e| e.into_inner());
            self.tracker.close();
        }
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            let live: Vec<Arc<LiveRun>> = self
                .read()
                .values()
                .filter(|r| r.report.borrow().is_none())
                .cloned()
                .collect();
            for run in &live {
                run.interrupted.store(true, Ordering::SeqCst);
                run.cancel.cancel();
            }
            self.tracker.wait().await;
        }
        if let Some(store) = &self.store
            && let Err(err) = store.flush().await
        {
            tracing::error!(%err, "some runs could not be saved");
        }
    }
}

/// Runs kept in memory: drops the oldest finished ones beyond the limit.
fn prune(runs: &mut IndexMap<String, Arc<LiveRun>>, keep_finished: usize) {
    let finished: Vec<String> = runs
        .iter()
        .filter(|(_, r)| r.report.borrow().is_some())
        .map(|(id, _)| id.clone())
        .collect();
    if finished.len() > keep_finished {
        for id in &finished[..finished.len() - keep_finished] {
            runs.shift_remove(id);
        }
    }
}

/// One run being carried out: the engine, its events, its record.
struct Execution {
    run: Arc<LiveRun>,
    store: Option<Arc<dyn RunStore>>,
    how: Launch,
    inbox: braid_core::answer::AnswerInbox,
    snapshot_inbox: braid_core::snapshot::SnapshotInbox,
    waits: Arc<tokio::sync::Notify>,
}

impl Execution {
    /// Runs the pipeline to its report, ends its event log, saves it and
    /// counts it.
    async fn run(self) -> RunReport {
        let Execution {
            run,
            store,
            how,
            inbox,
            snapshot_inbox,
            waits,
        } = self;
        let (sink, pump) = match how.level {
            Some(level) => {
                let (sink, rx) = EventSink::channel(level);
                let pump = tokio::spawn(events::pump(rx, run.events.clone()));
                (Some(sink), Some(pump))
            }
            None => (None, None),
        };
        let options = RunOptions {
            run_id: Some(run.id.clone()),
            cancel: run.cancel.clone(),
            events: sink,
            checkpoint: how.checkpoint,
            checkpointer: store.as_ref().map(|s| s.checkpointer()),
            resume: how.resume,
            answers: Some(inbox),
            snapshots: Some(snapshot_inbox),
            started_by: how.started_by.clone(),
            resumed_after: how.resumed_after,
            cache: store
                .as_ref()
                .filter(|_| !how.no_cache)
                .and_then(|s| s.cache()),
            ..RunOptions::default()
        };
        let report = engine(&how.registered, &run.id, how.input, options).await;
        end_events(&run.events, pump, &report).await;
        // Only a run the shutdown actually stopped is interrupted; one that
        // finished meanwhile keeps its status.
        let interrupted =
            run.interrupted.load(Ordering::SeqCst) && report.status == RunStatus::Cancelled;
        run.interrupted.store(interrupted, Ordering::SeqCst);
        if let Some(store) = &store {
            let policy = how
                .checkpoint
                .or(how.registered.pipeline.checkpoint())
                .unwrap_or_default();
            let keep_events = how.mode != "off" && policy != CheckpointPolicy::None;
            save(store.as_ref(), &run, keep_events, interrupted).await;
        }
        let status = if interrupted {
            RunStatus::Interrupted
        } else {
            report.status
        }
        .as_str();
        metrics::counter!("braid_runs_finished_total", "status" => status).increment(1);
        if report.status == RunStatus::Waiting {
            // Its wait may time out sooner than the waiter looks next.
            waits.notify_one();
        }
        report
    }
}

/// Runs the pipeline in a task of its own, so that a panic in the engine
/// still ends the run's record and its event streams: it becomes a failed
/// report.
async fn engine(
    registered: &Registered,
    id: &str,
    input: ValidInput,
    options: RunOptions,
) -> RunReport {
    let pipeline = registered.pipeline.clone();
    match tokio::spawn(async move { pipeline.run(input, options).await }).await {
        Ok(report) => report,
        Err(failure) => RunReport {
            run_id: id.to_owned(),
            pipeline: registered.pipeline.name().to_owned(),
            status: RunStatus::Failed,
            error: Some(format!("the run failed inside the engine: {failure}")),
            makespan_ms: 0.0,
            state: Default::default(),
            agents: Default::default(),
            tokens: None,
        },
    }
}

/// Ends the run's event log: waits for the pump to deliver the engine's
/// last event, or (`off`: no events were built) adds the run's final event
/// itself, so every stream ends with it.
async fn end_events(log: &EventLog, pump: Option<JoinHandle<()>>, report: &RunReport) {
    match pump {
        Some(pump) => {
            if pump.await.is_err() || !log.is_finished() {
                log.finish();
            }
        }
        None => {
            log.push(RunEvent {
                seq: 1,
                at_ms: report.makespan_ms,
                kind: EventKind::RunFinished {
                    status: report.status,
                    makespan_ms: report.makespan_ms,
                },
            });
            log.finish();
        }
    }
}

/// Saves the run's events (if kept) and waits for its checkpoints; marks
/// it interrupted once it is saved. Failures are logged and kept on the
/// run (`not_saved`), whose report then says so: the run is over either
/// way, but nobody is told it was saved when it was not.
async fn save(store: &dyn RunStore, run: &LiveRun, keep_events: bool, interrupted: bool) {
    let id = &run.id;
    if keep_events {
        // The stream is kept with the run, so it can be replayed later.
        let events: Vec<(u64, String)> = run
            .events
            .all()
            .iter()
            .map(|e| (e.seq, e.to_json()))
            .collect();
        if let Err(err) = store.save_events(id, &events).await {
            tracing::error!(run = %id, %err, "the run's events were not saved");
            let _ = run
                .not_saved
                .set(format!("its events were not saved: {err}"));
        }
    }
    let saved = store.flush_run(id).await;
    if let Err(err) = &saved {
        tracing::error!(run = %id, %err, "the run was not saved");
        let _ = run.not_saved.set(format!("the run was not saved: {err}"));
    }
    if interrupted
        && saved.is_ok()
        && let Err(err) = store.set_status(id, RunStatus::Interrupted).await
    {
        tracing::error!(run = %id, %err, "cannot mark the run interrupted");
    }
}

#[cfg(test)]
mod tests {
    //! The registry on its own, with no HTTP and the in-memory store.

    use std::time::Instant;

    use braid_core::{AgentStatus, Pipeline};

    use super::*;
    use crate::Origin;
    use crate::memory::MemoryStore;

    const SLOW: &str = "pipeline: slow
agents:
  quick: { kind: sleep, ms: 1, writes: [q] }
  slow:  { kind: sleep, ms: 60000, reads: [q], writes: [s] }
";

    fn launch(registry: &RunRegistry, slot: Slot) -> Arc<LiveRun> {
        let pipeline = Pipeline::from_yaml_str(SLOW).unwrap();
        let registered = Arc::new(Registered::new(pipeline, SLOW.to_owned(), Origin::Api));
        let input = registered
            .pipeline
            .check_input(&serde_json::json!({}))
            .unwrap();
        let how = Launch {
            registered,
            input,
            level: Some(EventLevel::Summary),
            mode: "summary",
            checkpoint: Some(CheckpointPolicy::Agent),
            run_id: None,
            resume: None,
            events_before: 0,
            parent_id: None,
            no_cache: false,
            started_by: None,
            resumed_after: None,
        };
        registry.launch(how, slot).unwrap()
    }

    #[tokio::test]
    async fn a_run_the_shutdown_stops_is_saved_interrupted_with_its_events() {
        let store = Arc::new(MemoryStore::new());
        let config = ServerConfig {
            max_concurrent_runs: 1,
            ..ServerConfig::default()
        };
        let registry = RunRegistry::new(&config, Some(store.clone()));
        let run = launch(&registry, registry.reserve().unwrap());
        assert!(
            matches!(registry.reserve(), Err(Refused::TooManyRuns { max: 1 })),
            "its one slot is taken"
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let stored = store.get_run(&run.id).await.unwrap();
            if stored.is_some_and(|s| {
                s.agents
                    .iter()
                    .any(|a| &*a.agent == "quick" && a.report.status == AgentStatus::Completed)
            }) {
                break;
            }
            assert!(Instant::now() < deadline, "`quick` was never checkpointed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        registry.shut_down(Duration::ZERO).await;
        assert!(matches!(registry.reserve(), Err(Refused::ShuttingDown)));
        let report = run.report.borrow().clone().expect("the run ended");
        assert_eq!(report.status, RunStatus::Cancelled);
        assert!(run.interrupted.load(Ordering::SeqCst));
        let stored = store.get_run(&run.id).await.unwrap().unwrap();
        assert_eq!(stored.summary.status, "interrupted");
        let events = store.load_events(&run.id).await.unwrap();
        assert!(
            events.last().is_some_and(|e| e.contains("run_finished")),
            "the stream is saved, ending with the run's final event: {events:?}"
        );
        assert_eq!(registry.counts().get("cancelled"), Some(&1));
        assert_eq!(registry.newest_first().len(), 1);
    }
}
