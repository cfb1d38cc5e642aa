//! The store's one writer: group commit of every run's checkpoints.
//!
//! Runs call the [`Checkpointer`] methods from their scheduler loops; each
//! call turns the record into an operation on an unbounded queue and
//! returns at once. The writer task takes everything queued (up to
//! `max_batch`), writes it in one transaction and commits, so while one
//! transaction is in flight the next batch builds up: with many runs in
//! flight, many runs share a transaction. All statements are upserts, so a
//! failed batch is simply tried again.
//!
//! The writer has a connection of its own, closed after any error and
//! opened afresh for the next attempt (a failed COMMIT can leave sqlx's
//! transaction depth out of step, after which "transactions" are savepoints
//! that are thrown away). Retries follow `StoreSettings`' schedule and stop
//! after [`StoreSettings::give_up_after`]; errors retrying cannot cure
//! (read-only, corrupt, constraint) stop at once. A batch that fails for
//! good is appended to the spill file (see `spill`) and its runs are
//! reported by the next flush.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use braid_core::checkpoint::{AgentRecord, CheckpointPolicy, Checkpointer, FieldValue, RunRecord};
use braid_core::report::RUNNING;
use braid_core::{AgentReport, RunReport};
use indexmap::IndexMap;
use serde::Serialize;
use sqlx::{AnyConnection, AssertSqlSafe};
use tokio::sync::{mpsc, oneshot, watch};

use crate::clock::now_ms;
use crate::lease::{Leases, begin_write};
use crate::{Backend, StoreSettings};

/// Runs whose checkpoints could not be written, with the last error.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", describe_failures(.runs))]
pub struct PersistError {
    /// `(run id, last error)`.
    pub runs: Vec<(String, String)>,
}

fn describe_failures(runs: &[(String, String)]) -> String {
    const SHOWN: usize = 3;
    let listed: Vec<String> = runs
        .iter()
        .take(SHOWN)
        .map(|(id, e)| format!("{id}: {e}"))
        .collect();
    let more = match runs.len().saturating_sub(SHOWN) {
        0 => String::new(),
        n => format!("; and {n} more"),
    };
    format!(
        "checkpoints of {} run(s) could not be written: {}{more}",
        runs.len(),
        listed.join("; ")
    )
}

/// What the writer has done so far.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct WriterStats {
    /// Transactions committed.
    pub transactions: u64,
    /// Operations (run starts, agent records, run ends) written.
    pub operations: u64,
    /// Batches that failed and were tried again.
    pub retries: u64,
    /// Operations dropped because their run was claimed by another process
    /// (its stored epoch was no longer this process's).
    pub fenced: u64,
    /// Runs of this process found claimed by another process.
    pub deposed: u64,
}

/// A run's row, as the writer upserts it.
#[derive(Clone, Serialize, serde::Deserialize)]
pub(crate) struct RunRow {
    pub(crate) id: Arc<str>,
    pipeline: Arc<str>,
    pipeline_hash: Arc<str>,
    pipeline_path: Option<String>,
    pub(crate) checkpoint: CheckpointPolicy,
    status: String,
    input: Vec<FieldValue>,
    error: Option<String>,
    makespan_ms: Option<f64>,
    created_at_ms: i64,
    #[serde(default)]
    started_by: Option<String>,
}

/// An agent's row and its writes.
pub(crate) struct AgentRow {
    pub(crate) agent: Arc<str>,
    pub(crate) report: AgentReport,
    pub(crate) writes: Vec<FieldValue>,
    pub(crate) definition: Option<Arc<str>>,
}

#[expect(
    clippy::large_enum_variant,
    reason = "`Agent` is the op of every checkpointed agent: boxing its row would add an allocation to each"
)]
pub(crate) enum Op {
    /// The run's record, inserted or brought back to `running`.
    Run(RunRow),
    /// One agent's record and writes.
    Agent { run_id: Arc<str>, row: AgentRow },
    /// The run's final record and every agent's.
    Finished { run: RunRow, agents: Vec<AgentRow> },
    /// Answer once everything before this is committed, with the failures
    /// of one run (or of all runs, for `None`).
    Flush(Option<Arc<str>>, oneshot::Sender<Vec<(String, String)>>),
    /// A command agent's process group started (`Some(agent)`, answered
    /// once written) or ended (`None`).
    Process {
        run_id: Arc<str>,
        pgid: i32,
        agent: Option<Arc<str>>,
        written: Option<oneshot::Sender<()>>,
    },
    /// A cached agent's result (`braid_cache`). Belongs to no run: never
    /// spilled, never reported by a flush (losing one costs a later miss).
    Cache(CacheRow),
}

/// A row of `braid_cache`, as the writer upserts it.
pub(crate) struct CacheRow {
    pub(crate) key: Arc<str>,
    pub(crate) agent: Arc<str>,
    /// The writes as a JSON object, field to value.
    pub(crate) writes: String,
    pub(crate) created_at_ms: i64,
    pub(crate) expires_at_ms: i64,
}

impl Op {
    pub(crate) fn run_id(&self) -> Option<&str> {
        match self {
            Op::Run(run) | Op::Finished { run, .. } => Some(&run.id),
            Op::Agent { run_id, .. } | Op::Process { run_id, .. } => Some(run_id),
            Op::Flush(..) | Op::Cache(_) => None,
        }
    }
}

/// Where the writer sends its batches: the database, opened afresh after
/// any error, and the spill file for what the database would not take.
#[derive(Clone)]
pub(crate) struct Target {
    /// The URL to connect to (with the password: never shown).
    pub(crate) url: String,
    /// The URL with its password masked, for messages and spill lines.
    pub(crate) masked: String,
    pub(crate) backend: Backend,
    /// The spill file, unless spilling is off.
    pub(crate) spill: Option<PathBuf>,
}

pub(crate) struct Writer {
    queue: mpsc::UnboundedSender<Op>,
    counters: Counters,
    owner: String,
    leases: Arc<Leases>,
    abandon: watch::Sender<bool>,
    status: Arc<Mutex<Option<String>>>,
}

/// `host:pid` of this process.
pub(crate) fn this_owner() -> String {
    format!(
        "{}:{}",
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".to_owned()),
        std::process::id()
    )
}

impl Writer {
    pub(crate) fn start(target: Target, settings: StoreSettings) -> Arc<Self> {
        let (queue, rx) = mpsc::unbounded_channel();
        let (abandon, abandoned) = watch::channel(false);
        let owner = settings.owner.clone().unwrap_or_else(this_owner);
        let writer = Arc::new(Self {
            queue,
            counters: Counters::default(),
            leases: Arc::new(Leases::new(settings.lease, owner.clone())),
            owner,
            abandon,
            status: Arc::default(),
        });
        let state = Loop {
            target,
            settings,
            owner: writer.owner.clone(),
            leases: writer.leases.clone(),
            counters: writer.counters.clone(),
            failed: BTreeMap::new(),
            lost: HashSet::new(),
            degraded: false,
            conn: None,
            abandoned,
            status: writer.status.clone(),
        };
        tokio::spawn(state.run(rx));
        writer
    }

    pub(crate) async fn flush(&self, run_id: Option<&str>) -> Result<(), crate::PersistError> {
        let (tx, rx) = oneshot::channel();
        if self
            .queue
            .send(Op::Flush(run_id.map(Arc::from), tx))
            .is_err()
        {
            return Err(PersistError {
                runs: vec![("*".to_owned(), "the store's writer has stopped".to_owned())],
            });
        }
        match rx.await {
            Ok(failed) if failed.is_empty() => Ok(()),
            Ok(failed) => Err(PersistError { runs: failed }),
            Err(_) => Err(PersistError {
                runs: vec![("*".to_owned(), "the store's writer has stopped".to_owned())],
            }),
        }
    }

    /// Stops trying the database: what is being written and everything
    /// queued from now on goes to the spill file at once.
    pub(crate) fn abandon(&self) {
        let _ = self.abandon.send(true);
    }

    /// Why the last attempt failed, while the writer is retrying.
    pub(crate) fn retrying(&self) -> Option<String> {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `host:pid` of this process, as stored in `owner`.
    pub(crate) fn owner(&self) -> &str {
        &self.owner
    }

    /// The runs this process holds, with their epochs.
    pub(crate) fn leases(&self) -> &Arc<Leases> {
        &self.leases
    }

    /// Queues a cached agent's result; returns at once.
    pub(crate) fn cache(&self, row: CacheRow) {
        let _ = self.queue.send(Op::Cache(row));
    }

    pub(crate) fn stats(&self) -> WriterStats {
        WriterStats {
            transactions: self.counters.transactions.load(Ordering::Relaxed),
            operations: self.counters.operations.load(Ordering::Relaxed),
            retries: self.counters.retries.load(Ordering::Relaxed),
            fenced: self.leases.fenced.load(Ordering::Relaxed),
            deposed: self.leases.deposed_runs.load(Ordering::Relaxed),
        }
    }

    fn row(run: &RunRecord, status: &str) -> RunRow {
        RunRow {
            id: run.run_id.clone(),
            pipeline: run.pipeline.clone(),
            pipeline_hash: run.pipeline_hash.clone(),
            pipeline_path: run.pipeline_path.as_ref().map(|p| p.display().to_string()),
            checkpoint: run.policy,
            status: status.to_owned(),
            input: run.input.clone(),
            error: None,
            makespan_ms: None,
            created_at_ms: now_ms(),
            started_by: run.started_by.as_deref().map(str::to_owned),
        }
    }
}

impl Checkpointer for Writer {
    fn run_started(&self, run: &RunRecord) {
        self.leases.started(&run.run_id);
        let _ = self.queue.send(Op::Run(Self::row(run, RUNNING)));
    }

    fn agent_finished(&self, run: &RunRecord, agent: &AgentRecord) {
        let _ = self.queue.send(Op::Agent {
            run_id: run.run_id.clone(),
            row: AgentRow {
                agent: agent.agent.clone(),
                report: agent.report.clone(),
                writes: agent.writes.clone(),
                definition: agent.definition.clone(),
            },
        });
    }

    fn run_finished(&self, run: &RunRecord, report: &RunReport, agents: &[AgentRecord]) {
        let mut row = Self::row(run, report.status.as_str());
        row.error = report.error.clone();
        row.makespan_ms = Some(report.makespan_ms);
        row.created_at_ms -= report.makespan_ms as i64;
        let agents = agents
            .iter()
            .map(|a| AgentRow {
                agent: a.agent.clone(),
                report: a.report.clone(),
                writes: a.writes.clone(),
                definition: a.definition.clone(),
            })
            .collect();
        let _ = self.queue.send(Op::Finished { run: row, agents });
    }

    fn process_started(
        &self,
        run: &RunRecord,
        agent: &str,
        pgid: i32,
    ) -> braid_core::checkpoint::Recorded {
        let (written, done) = oneshot::channel();
        let _ = self.queue.send(Op::Process {
            run_id: run.run_id.clone(),
            pgid,
            agent: Some(Arc::from(agent)),
            written: Some(written),
        });
        // Answered after the batch's commit (or its final failure); a
        // stopped writer drops the sender, which ends the wait too.
        Box::pin(async move {
            let _ = done.await;
        })
    }

    fn process_ended(&self, run: &RunRecord, pgid: i32) {
        let _ = self.queue.send(Op::Process {
            run_id: run.run_id.clone(),
            pgid,
            agent: None,
            written: None,
        });
    }
}

/// Why a batch was not written.
enum Failure {
    /// What the database (or the connection to it) said.
    Db(sqlx::Error),
    /// An attempt took longer than `write_timeout`.
    TimedOut(Duration),
    /// [`Writer::abandon`] was called.
    Abandoned,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Db(e) => write!(f, "{e}"),
            Failure::TimedOut(t) => write!(
                f,
                "the database did not finish a write within {}",
                humanize(*t)
            ),
            Failure::Abandoned => f.write_str("saving was stopped (a second signal)"),
        }
    }
}

fn humanize(d: Duration) -> String {
    if d.as_millis().is_multiple_of(1000) {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// The writer's bookkeeping between batches.
struct Loop {
    target: Target,
    settings: StoreSettings,
    owner: String,
    leases: Arc<Leases>,
    counters: Counters,
    /// Runs whose writes failed for good, not yet reported by a flush.
    failed: BTreeMap<String, String>,
    /// Runs that lost an operation: their final record restores all deltas.
    lost: HashSet<Arc<str>>,
    /// Set after a batch failed for good, until a batch succeeds: batches
    /// are then tried once, so a dead database does not stall every run's
    /// flush for the whole retry schedule.
    degraded: bool,
    /// The writer's own connection, with when it was last used. Never
    /// reused after an error: a failed COMMIT can leave the driver's
    /// transaction depth out of step with the database, after which every
    /// "transaction" is a savepoint that is thrown away.
    conn: Option<(AnyConnection, Instant)>,
    abandoned: watch::Receiver<bool>,
    /// The last attempt's error while retrying, `None` otherwise.
    status: Arc<Mutex<Option<String>>>,
}

#[derive(Clone, Default)]
struct Counters {
    transactions: Arc<AtomicU64>,
    operations: Arc<AtomicU64>,
    retries: Arc<AtomicU64>,
}

impl Loop {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Op>) {
        let max_batch = self.settings.max_batch.max(1);
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < max_batch {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            let (flushes, ops): (Vec<Op>, Vec<Op>) = batch
                .into_iter()
                .partition(|op| matches!(op, Op::Flush(..)));
            let mut ops = ops;
            let written: Vec<(Arc<str>, oneshot::Sender<()>)> = ops
                .iter_mut()
                .filter_map(|op| match op {
                    Op::Process {
                        run_id, written, ..
                    } => written.take().map(|w| (run_id.clone(), w)),
                    _ => None,
                })
                .collect();
            let ended: Vec<Arc<str>> = ops
                .iter()
                .filter_map(|op| match op {
                    Op::Finished { run, .. } => Some(run.id.clone()),
                    _ => None,
                })
                .collect();
            if !ops.is_empty() {
                self.write(ops).await;
            }
            for (run_id, answer) in written {
                // A deposed run's agent does not get its input: it waits
                // until the run here is stopped (and it with it).
                self.leases.park(&run_id, answer);
            }
            for run_id in ended {
                self.leases.unpark(&run_id);
            }
            for flush in flushes {
                if let Op::Flush(run_id, answer) = flush {
                    let report = match run_id {
                        None => std::mem::take(&mut self.failed).into_iter().collect(),
                        Some(id) => self.failed.remove_entry(&*id).into_iter().collect(),
                    };
                    let _ = answer.send(report);
                }
            }
        }
        if let Some((conn, _)) = self.conn.take() {
            close(conn).await;
        }
    }

    /// Writes `ops` in one transaction, with retries; if that fails for
    /// good, each run's operations on their own, so one bad run does not
    /// sink the others. What fails for good is spilled.
    async fn write(&mut self, ops: Vec<Op>) {
        if *self.abandoned.borrow() {
            self.give_up(&ops, &Failure::Abandoned).await;
            return;
        }
        let retries = if self.degraded {
            0
        } else {
            self.settings.write_retries
        };
        let error = match self.attempt(&ops, retries).await {
            Ok(()) => return,
            Err(error) => error,
        };
        if matches!(error, Failure::Abandoned)
            || ops
                .iter()
                .filter_map(Op::run_id)
                .collect::<HashSet<_>>()
                .len()
                <= 1
        {
            self.give_up(&ops, &error).await;
            return;
        }
        let mut by_run: IndexMap<Option<Arc<str>>, Vec<Op>> = IndexMap::new();
        for op in ops {
            by_run
                .entry(op.run_id().map(Arc::from))
                .or_default()
                .push(op);
        }
        for (_, group) in by_run {
            if let Err(error) = self.attempt(&group, 0).await {
                self.give_up(&group, &error).await;
            }
        }
    }

    async fn attempt(&mut self, ops: &[Op], retries: u32) -> Result<(), Failure> {
        let mut delays = self.settings.backoff().delays();
        let mut attempt = 0;
        // The retry budget runs from the first failure: the schedule's
        // delays plus one wait for a connection, so attempts that hang
        // (a host that does not answer) cannot stretch it further.
        let mut first: Option<Instant> = None;
        let budget = self.settings.give_up_after() + self.settings.acquire_timeout;
        let mut abandoned = self.abandoned.clone();
        loop {
            let started = Instant::now();
            let outcome = tokio::select! {
                outcome = self.try_once(ops) => outcome,
                _ = abandoned.wait_for(|a| *a) => Err(Failure::Abandoned),
            };
            match outcome {
                Ok(()) => {
                    *self.status.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    metrics::histogram!("braid_checkpoint_batch_size").record(ops.len() as f64);
                    metrics::histogram!("braid_checkpoint_commit_seconds")
                        .record(started.elapsed().as_secs_f64());
                    metrics::counter!("braid_checkpoint_transactions_total").increment(1);
                    self.counters.transactions.fetch_add(1, Ordering::Relaxed);
                    self.counters
                        .operations
                        .fetch_add(ops.len() as u64, Ordering::Relaxed);
                    self.degraded = false;
                    for op in ops {
                        if let Op::Finished { run, .. } = op {
                            self.lost.remove(&run.id);
                            self.leases.ended(&run.id);
                        }
                    }
                    return Ok(());
                }
                Err(Failure::Db(error)) if permanent(self.target.backend, &error) => {
                    // Retrying cannot cure it: say so at once.
                    return Err(Failure::Db(error));
                }
                Err(error @ Failure::Abandoned) => return Err(error),
                Err(error)
                    if attempt < retries
                        && first.get_or_insert_with(Instant::now).elapsed() < budget =>
                {
                    attempt += 1;
                    if attempt == 1 {
                        tracing::warn!(%error, "a checkpoint write failed; trying again");
                    } else {
                        tracing::debug!(%error, attempt, "a checkpoint write failed again");
                    }
                    *self.status.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(error.to_string());
                    metrics::counter!("braid_checkpoint_retries_total").increment(1);
                    self.counters.retries.fetch_add(1, Ordering::Relaxed);
                    let spent = first.map_or(Duration::ZERO, |t| t.elapsed());
                    let delay = delays.next().unwrap_or(self.settings.retry_backoff_max);
                    let pause = delay.min(budget.saturating_sub(spent));
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        _ = abandoned.wait_for(|a| *a) => return Err(Failure::Abandoned),
                    }
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// One attempt: the writer's connection (opened if need be, checked if
    /// it sat idle), one transaction, its commit checked. On any error the
    /// connection is closed, never reused.
    async fn try_once(&mut self, ops: &[Op]) -> Result<(), Failure> {
        let mut conn = match self.conn.take() {
            Some((mut conn, used)) => {
                if used.elapsed() > Duration::from_secs(1)
                    && !matches!(
                        tokio::time::timeout(
                            self.settings.acquire_timeout,
                            sqlx::Connection::ping(&mut conn)
                        )
                        .await,
                        Ok(Ok(()))
                    )
                {
                    drop(conn);
                    self.connect().await?
                } else {
                    conn
                }
            }
            None => self.connect().await?,
        };
        let written = tokio::time::timeout(
            self.settings.write_timeout,
            write_batch(
                &mut conn,
                self.target.backend,
                ops,
                &self.owner,
                &self.lost,
                Fence::Check(&self.leases),
            ),
        )
        .await;
        match written {
            Ok(Ok(())) => {
                self.conn = Some((conn, Instant::now()));
                Ok(())
            }
            Ok(Err(error)) => {
                close(conn).await;
                Err(Failure::Db(error))
            }
            Err(_) => {
                // Mid-statement: dropping it closes the socket or the
                // SQLite handle, which rolls the transaction back.
                drop(conn);
                Err(Failure::TimedOut(self.settings.write_timeout))
            }
        }
    }

    fn connect(&self) -> impl Future<Output = Result<AnyConnection, Failure>> + Send + 'static {
        let timeout = self.settings.acquire_timeout;
        let url = self.target.url.clone();
        let backend = self.target.backend;
        let lease = self.settings.lease;
        async move {
            let mut conn = connect(timeout, &url, backend).await?;
            if backend == Backend::Postgres {
                // A batch locks its runs' rows: if this process freezes
                // inside one, PostgreSQL ends the transaction after a
                // lease, so the runs can be taken over (claims skip locked
                // rows).
                let ms = lease.as_millis().max(1000);
                let set = format!("SET idle_in_transaction_session_timeout = {ms}");
                sqlx::query(AssertSqlSafe(set))
                    .persistent(false)
                    .execute(&mut conn)
                    .await
                    .map_err(Failure::Db)?;
            }
            Ok(conn)
        }
    }
}

/// A new connection for the writer, bounded by `timeout`.
async fn connect(timeout: Duration, url: &str, backend: Backend) -> Result<AnyConnection, Failure> {
    match tokio::time::timeout(timeout, crate::connect_one(url, backend)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(error)) => Err(Failure::Db(error)),
        Err(_) => Err(Failure::TimedOut(timeout)),
    }
}

impl Loop {
    async fn give_up(&mut self, ops: &[Op], error: &Failure) {
        self.degraded = true;
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = None;
        metrics::counter!("braid_checkpoint_failures_total").increment(ops.len() as u64);
        let kept = match &self.target.spill {
            None => String::new(),
            Some(path) => {
                let path = path.clone();
                let store = self.target.masked.clone();
                let owner = self.owner.clone();
                let owned: Vec<Op> = ops.iter().filter_map(Op::copy).collect();
                let spilled = tokio::task::spawn_blocking(move || {
                    crate::spill::append(&path, &store, &owner, now_ms(), &owned).map(|()| path)
                })
                .await;
                match spilled {
                    Ok(Ok(path)) => {
                        metrics::counter!("braid_checkpoint_spilled_total")
                            .increment(ops.len() as u64);
                        format!(
                            "; kept in {}, written to the store when braid next opens it",
                            path.display()
                        )
                    }
                    Ok(Err(e)) => format!("; could not keep them in the spill file either: {e}"),
                    Err(e) => format!("; could not keep them in the spill file either: {e}"),
                }
            }
        };
        tracing::error!(%error, "checkpoints could not be written{kept}");
        for op in ops {
            if let Some(id) = op.run_id() {
                self.failed.insert(id.to_owned(), format!("{error}{kept}"));
                self.lost.insert(Arc::from(id));
            }
        }
    }
}

impl Op {
    /// A copy of a data operation (flushes are not copied).
    fn copy(&self) -> Option<Op> {
        let agent = |row: &AgentRow| AgentRow {
            agent: row.agent.clone(),
            report: row.report.clone(),
            writes: row.writes.clone(),
            definition: row.definition.clone(),
        };
        Some(match self {
            Op::Run(run) => Op::Run(run.clone()),
            Op::Agent { run_id, row } => Op::Agent {
                run_id: run_id.clone(),
                row: agent(row),
            },
            Op::Finished { run, agents } => Op::Finished {
                run: run.clone(),
                agents: agents.iter().map(agent).collect(),
            },
            // Process groups are live state of this process, not history:
            // a later braid finds none of them alive. Cache entries are
            // not history either.
            Op::Flush(..) | Op::Process { .. } | Op::Cache(_) => return None,
        })
    }
}

/// Closes a connection that saw an error, without waiting long for a
/// database that does not answer.
async fn close(conn: AnyConnection) {
    let _ = tokio::time::timeout(Duration::from_secs(1), sqlx::Connection::close(conn)).await;
}

/// Errors that retrying cannot cure: a read-only or corrupt database, a
/// file that is not one, a constraint the rows break, missing privileges.
pub(crate) fn permanent(backend: Backend, error: &sqlx::Error) -> bool {
    let Some(db) = error.as_database_error() else {
        return false;
    };
    let Some(code) = db.code() else {
        return false;
    };
    match backend {
        Backend::Sqlite => matches!(
            code.parse::<i32>().map(|c| c & 0xff),
            // READONLY, CORRUPT, CONSTRAINT, NOTADB, PERM
            Ok(8 | 11 | 19 | 26 | 3)
        ),
        // integrity constraints, read-only transaction, privileges,
        // corrupted data or index
        Backend::Postgres => {
            code.starts_with("23") || matches!(&*code, "25006" | "42501" | "XX001" | "XX002")
        }
    }
}

/// Text as PostgreSQL accepts it: no NUL characters.
fn text(s: &str) -> String {
    s.replace('\0', "\u{FFFD}")
}

fn input_json(input: &[FieldValue]) -> String {
    let map: serde_json::Map<String, serde_json::Value> = input
        .iter()
        .map(|(k, v)| (k.to_string(), (**v).clone()))
        .collect();
    serde_json::Value::Object(map).to_string()
}

/// Whether a batch is fenced by epoch.
#[derive(Clone, Copy)]
pub(crate) enum Fence<'a> {
    /// The writer's batches: runs this process holds are checked against
    /// their stored epochs, and those claimed elsewhere dropped.
    Check(&'a Leases),
    /// Spilled operations replayed on open (their runs' newer records are
    /// left out before): nothing is checked; runs in progress are leased
    /// for this long.
    Replay(Duration),
}

/// Most rows in one multi-row statement (SQLite allows 32,766 bound
/// parameters, PostgreSQL 65,535; agent rows bind 12 each).
const ROWS_PER_STATEMENT: usize = 1000;

/// Writes a batch in one transaction: every run, agent record and delta of
/// the batch as a few multi-row upserts. Within a batch the last record of
/// a run, agent or field wins, as it would one statement at a time.
pub(crate) async fn write_batch(
    connection: &mut AnyConnection,
    backend: Backend,
    ops: &[Op],
    owner: &str,
    lost: &HashSet<Arc<str>>,
    fence: Fence<'_>,
) -> Result<(), sqlx::Error> {
    let now = now_ms();
    let mut tx = begin_write(&mut *connection, backend).await?;
    // The fence: runs claimed by another process since are dropped whole.
    let (dropped, lease_until) = match fence {
        Fence::Check(leases) => {
            let mut ids: Vec<&str> = ops.iter().filter_map(Op::run_id).collect();
            ids.sort_unstable();
            ids.dedup();
            let dropped = leases.check(&mut tx, backend, &ids).await?;
            (dropped, leases.until_ms())
        }
        Fence::Replay(lease) => (
            HashSet::new(),
            now.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX)),
        ),
    };
    if !dropped.is_empty()
        && let Fence::Check(leases) = fence
    {
        let n = ops
            .iter()
            .filter(|op| op.run_id().is_some_and(|id| dropped.contains(id)))
            .count() as u64;
        leases.fenced.fetch_add(n, Ordering::Relaxed);
        metrics::counter!("braid_fenced_writes_total").increment(n);
    }
    let ops: Vec<&Op> = ops
        .iter()
        .filter(|op| op.run_id().is_none_or(|id| !dropped.contains(id)))
        .collect();
    let mut runs: IndexMap<&str, &RunRow> = IndexMap::new();
    let mut agents: IndexMap<(&str, &str), &AgentRow> = IndexMap::new();
    let mut deltas: IndexMap<(&str, &str, &str), &serde_json::Value> = IndexMap::new();
    let mut cached: IndexMap<&str, &CacheRow> = IndexMap::new();
    for op in ops.iter().copied() {
        match op {
            Op::Run(run) => {
                runs.insert(&run.id, run);
            }
            Op::Agent { run_id, row } => {
                agents.insert((run_id, &row.agent), row);
                for (field, value) in &row.writes {
                    deltas.insert((run_id, &row.agent, field), value);
                }
            }
            Op::Finished { run, agents: rows } => {
                runs.insert(&run.id, run);
                // With `agent`, the deltas went out as agents finished; write
                // them again only if one of those writes was lost.
                let restore = run.checkpoint != CheckpointPolicy::Agent || lost.contains(&run.id);
                for row in rows {
                    agents.insert((&run.id, &row.agent), row);
                    // A fork's kept agents point at their source run's deltas.
                    if restore && row.report.reused_from.is_none() {
                        for (field, value) in &row.writes {
                            deltas.insert((&run.id, &row.agent, field), value);
                        }
                    }
                }
            }
            Op::Cache(row) => {
                cached.insert(&row.key, row);
            }
            Op::Flush(..) | Op::Process { .. } => {}
        }
    }

    let runs: Vec<&RunRow> = runs.into_values().collect();
    for chunk in runs.chunks(ROWS_PER_STATEMENT / 2) {
        // `epoch` is never written here: only claims change it.
        let sql = upsert_sql(
            backend,
            "braid_runs (id, pipeline, pipeline_hash, pipeline_path, checkpoint, status, \
             input, error, makespan_ms, owner, created_at_ms, updated_at_ms, started_by, \
             lease_until_ms)",
            14,
            chunk.len(),
            "(id) DO UPDATE SET
                 pipeline = excluded.pipeline, pipeline_hash = excluded.pipeline_hash,
                 pipeline_path = excluded.pipeline_path,
                 checkpoint = excluded.checkpoint, status = excluded.status, error = excluded.error,
                 makespan_ms = excluded.makespan_ms, owner = excluded.owner,
                 updated_at_ms = excluded.updated_at_ms,
                 started_by = COALESCE(braid_runs.started_by, excluded.started_by),
                 lease_until_ms = excluded.lease_until_ms",
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for run in chunk {
            q = q
                .bind(run.id.to_string())
                .bind(run.pipeline.to_string())
                .bind(run.pipeline_hash.to_string())
                .bind(run.pipeline_path.clone())
                .bind(run.checkpoint.as_str())
                .bind(run.status.clone())
                .bind(input_json(&run.input))
                .bind(run.error.as_deref().map(text))
                .bind(run.makespan_ms)
                .bind(owner.to_owned())
                .bind(run.created_at_ms)
                .bind(now)
                .bind(run.started_by.clone())
                // A run in progress is leased from now; an ended one is not.
                .bind((run.status == RUNNING).then_some(lease_until));
        }
        // Prepared once per execution: the text changes with the row count,
        // and sqlx 0.9.0's Any driver declares a NULL `Option<f64>` as
        // `real` (float4) on PostgreSQL, which a cached statement would keep.
        q.persistent(false).execute(&mut *tx).await?;
    }
    let agents: Vec<((&str, &str), &AgentRow)> = agents.into_iter().collect();
    for chunk in agents.chunks(ROWS_PER_STATEMENT) {
        let sql = upsert_sql(
            backend,
            "braid_agent_runs (run_id, agent, status, attempts, start_ms, duration_ms, \
             queue_ms, error, reason, definition_hash, source_run, deadline_ms, details)",
            13,
            chunk.len(),
            "(run_id, agent) DO UPDATE SET
                 status = excluded.status, attempts = excluded.attempts,
                 start_ms = excluded.start_ms, duration_ms = excluded.duration_ms,
                 queue_ms = excluded.queue_ms, error = excluded.error, reason = excluded.reason,
                 definition_hash = excluded.definition_hash, source_run = excluded.source_run,
                 deadline_ms = excluded.deadline_ms, details = excluded.details",
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for ((run_id, agent), row) in chunk {
            let r = &row.report;
            q = q
                .bind(run_id.to_string())
                .bind(agent.to_string())
                .bind(r.status.as_str())
                .bind(i64::from(r.attempts))
                .bind(r.start_ms)
                .bind(r.duration_ms)
                .bind(r.queue_ms)
                .bind(r.error.as_deref().map(text))
                .bind(r.reason.as_deref().map(text))
                .bind(row.definition.as_deref().map(str::to_owned))
                .bind(r.reused_from.clone())
                .bind(r.deadline_ms)
                .bind(crate::details::to_column(r));
        }
        q.persistent(false).execute(&mut *tx).await?;
    }
    let deltas: Vec<((&str, &str, &str), &serde_json::Value)> = deltas.into_iter().collect();
    for chunk in deltas.chunks(ROWS_PER_STATEMENT * 2) {
        let sql = upsert_sql(
            backend,
            "braid_deltas (run_id, agent, field, value)",
            4,
            chunk.len(),
            "(run_id, agent, field) DO UPDATE SET value = excluded.value",
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for ((run_id, agent, field), value) in chunk {
            q = q
                .bind(run_id.to_string())
                .bind(agent.to_string())
                .bind(field.to_string())
                .bind(value.to_string());
        }
        q.persistent(false).execute(&mut *tx).await?;
    }
    let cached: Vec<&CacheRow> = cached.into_values().collect();
    for chunk in cached.chunks(ROWS_PER_STATEMENT) {
        let sql = upsert_sql(
            backend,
            "braid_cache (key, agent, writes, created_at_ms, expires_at_ms)",
            5,
            chunk.len(),
            "(key) DO UPDATE SET
                 agent = excluded.agent, writes = excluded.writes,
                 created_at_ms = excluded.created_at_ms, expires_at_ms = excluded.expires_at_ms",
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for row in chunk {
            q = q
                .bind(row.key.to_string())
                .bind(text(&row.agent))
                .bind(row.writes.clone())
                .bind(row.created_at_ms)
                .bind(row.expires_at_ms);
        }
        q.persistent(false).execute(&mut *tx).await?;
    }
    write_processes(&ops, owner, &mut tx).await?;
    tx.commit().await
}

/// Process groups on record, in the order they started and ended; a run's
/// end takes back whatever of it is left.
async fn write_processes(
    ops: &[&Op],
    owner: &str,
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
) -> Result<(), sqlx::Error> {
    for op in ops.iter().copied() {
        let query = match op {
            Op::Process {
                run_id,
                pgid,
                agent: Some(agent),
                ..
            } => sqlx::query(
                "INSERT INTO braid_agent_processes (run_id, pgid, agent, owner)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (run_id, pgid) DO UPDATE SET agent = excluded.agent, owner = excluded.owner",
            )
            .bind(run_id.to_string())
            .bind(i64::from(*pgid))
            .bind(agent.to_string())
            .bind(owner.to_owned()),
            Op::Process {
                run_id,
                pgid,
                agent: None,
                ..
            } => sqlx::query("DELETE FROM braid_agent_processes WHERE run_id = $1 AND pgid = $2")
                .bind(run_id.to_string())
                .bind(i64::from(*pgid)),
            Op::Finished { run, .. } if run.checkpoint == CheckpointPolicy::Agent => {
                sqlx::query("DELETE FROM braid_agent_processes WHERE run_id = $1")
                    .bind(run.id.to_string())
            }
            _ => continue,
        };
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

/// `INSERT INTO {table} VALUES (…), (…) ON CONFLICT {on_conflict}` for
/// `rows` rows of `columns` values, with each backend's positional
/// placeholders: `$1, $2…` for PostgreSQL, `?` for SQLite (where `$N` are
/// named parameters, which sqlx binds by looking each one up: quadratic in
/// a statement with thousands of them). sqlx's `QueryBuilder` for `Any`
/// writes `?` for both, which PostgreSQL rejects.
pub(crate) fn upsert_sql(
    backend: Backend,
    table: &str,
    columns: usize,
    rows: usize,
    on_conflict: &str,
) -> String {
    use std::fmt::Write;
    let mut sql = format!("INSERT INTO {table} VALUES ");
    let mut n = 0;
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..columns {
            n += 1;
            let comma = if column == 0 { "" } else { ", " };
            let _ = match backend {
                Backend::Postgres => write!(sql, "{comma}${n}"),
                Backend::Sqlite => write!(sql, "{comma}?"),
            };
        }
        sql.push(')');
    }
    let _ = write!(sql, " ON CONFLICT {on_conflict}");
    sql
}

#[cfg(test)]
mod tests {
    #[test]
    fn upserts_number_their_placeholders() {
        use crate::Backend::{Postgres, Sqlite};
        assert_eq!(
            super::upsert_sql(Postgres, "t (a, b)", 2, 2, "(a) DO NOTHING"),
            "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4) ON CONFLICT (a) DO NOTHING"
        );
        assert_eq!(
            super::upsert_sql(Sqlite, "t (a, b)", 2, 2, "(a) DO NOTHING"),
            "INSERT INTO t (a, b) VALUES (?, ?), (?, ?) ON CONFLICT (a) DO NOTHING"
        );
    }
}
