//! Retention: [`Store::prune`] deletes old runs with everything stored
//! about them, in small batches, so the store stays bounded by policy.
//!
//! What a prune deletes is chosen by a [`PruneFilter`]: runs created
//! before a cutoff (`older_than`), of some statuses, of one pipeline, past
//! the `keep_last` newest of each pipeline. With each run go its agents'
//! records (`braid_agent_runs`), their writes (`braid_deltas`), its event
//! stream (`braid_events`) and its process groups on record
//! (`braid_agent_processes`). Expired cache entries (`braid_cache`,
//! `expires_at_ms` in the past) are deleted too, whatever the filter.
//!
//! What a prune never deletes:
//! - a run in flight: runs that are `running` or `waiting` are left alone
//!   unless the filter names that status; even then a `running` run whose
//!   owner process is alive on this host, is this very process, or is on
//!   another host (which this host cannot check) is kept
//!   ([`PruneReport::kept_running`]);
//! - a run that a fork still needs: a run referenced through
//!   `braid_agent_runs.source_run` by another run's agent records (the
//!   fork reuses the writes held in its deltas) is kept, whole, until every
//!   run referencing it is pruned ([`PruneReport::kept_referenced`]). Runs
//!   are visited newest first, and a fork is newer than the runs it
//!   references, so a parent and its forks that are all due go in the same
//!   prune.
//!
//! Each batch of at most `batch_size` runs is deleted in one short
//! transaction (`BEGIN IMMEDIATE` on SQLite, the runs' rows locked on
//! PostgreSQL), in which each run's status and owner are checked again: a
//! run resumed meanwhile is left alone. Between batches the prune pauses
//! for `batch_pause`, so that SQLite's single writer (the checkpoint
//! writer of the runs in flight) gets its turn: pruning never holds the
//! write lock for more than one batch at a time.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use braid_core::RunStatus;
use braid_core::agent::process::{Owner, owner_state};
use braid_core::report::RUNNING;
use serde::Serialize;
use sqlx::Row;

use crate::{Backend, Store, StoreError, acquire};

/// Runs a batch deletes by default: small enough that one batch's
/// transaction holds SQLite's write lock for a few milliseconds.
pub const DEFAULT_PRUNE_BATCH: usize = 200;

/// The pause between two batches by default.
pub const DEFAULT_PRUNE_PAUSE: Duration = Duration::from_millis(20);

/// The largest batch (bound parameters stay far below every backend's
/// limit).
pub const MAX_PRUNE_BATCH: usize = 5000;

/// Which runs [`Store::prune`] deletes. A run is pruned when it matches
/// every criterion given.
#[derive(Debug, Clone)]
pub struct PruneFilter {
    /// Only runs created longer ago than this. A filter needs this or
    /// `keep_last`: one with neither would delete every finished run
    /// (`Some(Duration::ZERO)` does that on purpose).
    pub older_than: Option<Duration>,
    /// Only runs with one of these statuses (`running`, `waiting`,
    /// `completed`, `failed`, `cancelled`, `interrupted`). Empty: every
    /// status but `running` and `waiting`, which are pruned only when named
    /// here.
    pub statuses: Vec<String>,
    /// Only runs of this pipeline.
    pub pipeline: Option<String>,
    /// Keep the N newest runs of each pipeline among those the statuses
    /// and pipeline select, however old.
    pub keep_last: Option<u64>,
    /// Count what would be deleted, delete nothing.
    pub dry_run: bool,
    /// Most runs deleted in one transaction (1 to [`MAX_PRUNE_BATCH`]).
    pub batch_size: usize,
    /// The pause between two batches.
    pub batch_pause: Duration,
}

impl Default for PruneFilter {
    fn default() -> Self {
        Self {
            older_than: None,
            statuses: Vec::new(),
            pipeline: None,
            keep_last: None,
            dry_run: false,
            batch_size: DEFAULT_PRUNE_BATCH,
            batch_pause: DEFAULT_PRUNE_PAUSE,
        }
    }
}

/// What a prune deleted (or, with `dry_run`, would delete).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    /// Whether this was a dry run (nothing deleted).
    pub dry_run: bool,
    /// Runs deleted.
    pub runs: u64,
    /// Their agents' records.
    pub agent_records: u64,
    /// Their agents' writes.
    pub deltas: u64,
    /// Their stored events.
    pub events: u64,
    /// Their process groups on record.
    pub processes: u64,
    /// Expired cache entries deleted.
    pub cache_entries: u64,
    /// Runs the filter selected but kept because another run's agents
    /// reference them (forks reusing their writes).
    pub kept_referenced: u64,
    /// `running` runs the filter selected but kept because their owner
    /// process is alive, is this process, or is on another host.
    pub kept_running: u64,
    /// Runs old enough but kept as one of the `keep_last` newest of their
    /// pipeline.
    pub kept_newest: u64,
    /// Batches (transactions, with `dry_run` rounds of counting) it took.
    pub batches: u64,
    /// False when the prune was stopped before it finished (see
    /// [`Store::prune_until`]).
    pub complete: bool,
}

/// Every status a run can be stored with.
fn known_status(status: &str) -> Option<&'static str> {
    if status == RUNNING {
        return Some(RUNNING);
    }
    RunStatus::ALL
        .iter()
        .map(|s| s.as_str())
        .find(|s| *s == status)
}

fn all_statuses() -> String {
    std::iter::once(RUNNING)
        .chain(RunStatus::ALL.iter().map(|s| s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What one step of a prune did.
enum Step {
    /// Deleted rows in a transaction (a pause follows).
    Wrote,
    /// Only read (or counted, or kept everything it found).
    Read,
    /// Nothing is left to do.
    Done,
}

/// A run the candidate query found.
struct Candidate {
    id: String,
    pipeline: String,
    status: String,
    owner: Option<String>,
    created_at_ms: i64,
}

/// `?, ?, …` (SQLite) or `$first, $first+1, …` (PostgreSQL), `n` of them.
fn placeholders(backend: Backend, first: usize, n: usize) -> String {
    (0..n)
        .map(|i| match backend {
            Backend::Sqlite => "?".to_owned(),
            Backend::Postgres => format!("${}", first + i),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Resolves once `stop` has; never polls it again after that.
struct Stop<'a> {
    future: Pin<&'a mut (dyn Future<Output = ()> + Send)>,
    done: bool,
}

impl Stop<'_> {
    /// Whether `stop` has resolved, without waiting.
    async fn now(&mut self) -> bool {
        if !self.done {
            self.done = tokio::select! {
                biased;
                () = self.future.as_mut() => true,
                () = std::future::ready(()) => false,
            };
        }
        self.done
    }

    /// Sleeps `pause`, or less if `stop` resolves; whether it did.
    async fn sleep(&mut self, pause: Duration) -> bool {
        if !self.done && !pause.is_zero() {
            self.done = tokio::select! {
                () = self.future.as_mut() => true,
                () = tokio::time::sleep(pause) => false,
            };
        }
        self.now().await
    }
}

impl Store {
    /// Deletes the runs `filter` selects, with their agents' records,
    /// writes, events and process groups, and every expired cache entry;
    /// see the [module docs](crate::prune) for what is never deleted.
    /// With `dry_run`, deletes nothing and reports what it would delete.
    /// A read-only store refuses ([`StoreError::ReadOnly`]) unless
    /// `dry_run`.
    pub async fn prune(&self, filter: &PruneFilter) -> Result<PruneReport, StoreError> {
        self.prune_until(filter, std::future::pending()).await
    }

    /// [`Store::prune`], stopping between two batches once `stop`
    /// resolves (the batch in flight finishes its transaction); the report
    /// then says `complete: false`. For a server pruning in the
    /// background that is shutting down.
    pub async fn prune_until(
        &self,
        filter: &PruneFilter,
        stop: impl Future<Output = ()> + Send,
    ) -> Result<PruneReport, StoreError> {
        let statuses = self.check_prune(filter)?;
        let stop = std::pin::pin!(stop);
        let mut stop = Stop {
            future: stop,
            done: false,
        };
        let mut pruning = Pruning::start(self, filter, statuses).await?;
        loop {
            if stop.now().await {
                return Ok(pruning.report);
            }
            match pruning.step().await? {
                Step::Done => break,
                Step::Read => {}
                // Let the checkpoint writer have the database for a while.
                Step::Wrote => {
                    if stop.sleep(filter.batch_pause).await {
                        return Ok(pruning.report);
                    }
                }
            }
        }
        pruning.report.complete = true;
        Ok(pruning.report)
    }

    /// The filter's statuses, checked, as SQL literals from a fixed list.
    fn check_prune(&self, filter: &PruneFilter) -> Result<Vec<&'static str>, StoreError> {
        if self.read_only && !filter.dry_run {
            return Err(self.read_only_error("pruning deletes runs"));
        }
        if filter.older_than.is_none() && filter.keep_last.is_none() {
            return Err(StoreError::InvalidFilter(
                "a prune needs `older_than` or `keep_last`; with neither it would delete every \
                 finished run (give an age of zero to mean that)"
                    .to_owned(),
            ));
        }
        if !(1..=MAX_PRUNE_BATCH).contains(&filter.batch_size) {
            return Err(StoreError::InvalidFilter(format!(
                "a prune's batch size must be 1 to {MAX_PRUNE_BATCH}, not {}",
                filter.batch_size
            )));
        }
        filter
            .statuses
            .iter()
            .map(|s| {
                known_status(s).ok_or_else(|| {
                    StoreError::InvalidFilter(format!(
                        "unknown run status `{s}`; expected one of: {}",
                        all_statuses()
                    ))
                })
            })
            .collect()
    }
}

/// One prune in progress: where it is, and what it did so far.
struct Pruning<'a> {
    store: &'a Store,
    filter: &'a PruneFilter,
    /// `status IN (…)` or `status NOT IN ('running', 'waiting')`.
    status_sql: String,
    /// Runs created before this (ms since the Unix epoch), if any.
    cutoff_ms: Option<i64>,
    /// For `keep_last`: per pipeline, the oldest run kept as one of its
    /// newest (`(created_at_ms, id)`); a pipeline missing here has no more
    /// runs than that, all kept.
    newest: Option<HashMap<String, (i64, String)>>,
    /// The last candidate seen: the next batch starts below it.
    cursor: Option<(i64, String)>,
    /// Dry run: the runs it would have deleted so far (their references
    /// to older runs would be gone).
    counted: HashSet<String>,
    /// The moment expired cache entries are counted from.
    now_ms: i64,
    /// The runs are done; the cache is next.
    runs_done: bool,
    /// No expired cache entry is left.
    cache_done: bool,
    report: PruneReport,
}

impl<'a> Pruning<'a> {
    async fn start(
        store: &'a Store,
        filter: &'a PruneFilter,
        statuses: Vec<&'static str>,
    ) -> Result<Pruning<'a>, StoreError> {
        let status_sql = if statuses.is_empty() {
            format!(
                "status NOT IN ('{RUNNING}', '{}')",
                RunStatus::Waiting.as_str()
            )
        } else {
            let quoted: Vec<String> = statuses.iter().map(|s| format!("'{s}'")).collect();
            format!("status IN ({})", quoted.join(", "))
        };
        let now_ms = crate::clock::now_ms();
        let cutoff_ms = filter
            .older_than
            .map(|age| now_ms.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX)));
        let mut pruning = Pruning {
            store,
            filter,
            status_sql,
            cutoff_ms,
            newest: None,
            cursor: None,
            counted: HashSet::new(),
            now_ms,
            runs_done: false,
            cache_done: false,
            report: PruneReport {
                dry_run: filter.dry_run,
                ..PruneReport::default()
            },
        };
        if let Some(n) = filter.keep_last {
            pruning.newest = Some(pruning.newest_kept(n).await?);
        }
        Ok(pruning)
    }

    /// Per pipeline, the `n`th newest run among those the statuses and
    /// pipeline select (whatever their age).
    async fn newest_kept(&self, n: u64) -> Result<HashMap<String, (i64, String)>, StoreError> {
        let sql = format!(
            "SELECT pipeline, created_at_ms, id FROM (
                 SELECT pipeline, created_at_ms, id,
                        ROW_NUMBER() OVER (PARTITION BY pipeline
                                           ORDER BY created_at_ms DESC, id DESC) AS newest
                 FROM braid_runs
                 WHERE {} AND (CAST($1 AS TEXT) IS NULL OR pipeline = $1)
             ) ranked
             WHERE newest = $2",
            self.status_sql
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(self.filter.pipeline.clone())
            .bind(i64::try_from(n).unwrap_or(i64::MAX))
            .fetch_all(&self.store.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get("pipeline")?,
                    (row.try_get("created_at_ms")?, row.try_get("id")?),
                ))
            })
            .collect()
    }

    /// The next runs the filter selects, newest first, below the cursor.
    async fn candidates(&self) -> Result<Vec<Candidate>, StoreError> {
        let sql = format!(
            "SELECT id, pipeline, status, owner, created_at_ms FROM braid_runs
             WHERE {}
               AND (CAST($1 AS TEXT) IS NULL OR pipeline = $1)
               AND (CAST($2 AS BIGINT) IS NULL OR created_at_ms < $2)
               AND (CAST($3 AS BIGINT) IS NULL OR created_at_ms < $3
                    OR (created_at_ms = $3 AND id < $4))
             ORDER BY created_at_ms DESC, id DESC
             LIMIT $5",
            self.status_sql
        );
        let (at, id) = match &self.cursor {
            Some((at, id)) => (Some(*at), Some(id.clone())),
            None => (None, None),
        };
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(self.filter.pipeline.clone())
            .bind(self.cutoff_ms)
            .bind(at)
            .bind(id)
            .bind(self.filter.batch_size as i64)
            .persistent(false)
            .fetch_all(&self.store.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(Candidate {
                    id: row.try_get("id")?,
                    pipeline: row.try_get("pipeline")?,
                    status: row.try_get("status")?,
                    owner: row.try_get("owner")?,
                    created_at_ms: row.try_get("created_at_ms")?,
                })
            })
            .collect()
    }

    /// Whether a `running` run may be in flight: its owner is alive here,
    /// is this process, or is on another host.
    fn maybe_live(&self, run: &Candidate) -> bool {
        if run.status != RUNNING {
            return false;
        }
        let Some(owner) = run.owner.as_deref() else {
            return false;
        };
        owner == self.store.writer.owner() || !matches!(owner_state(owner), Owner::Gone)
    }

    /// Whether `run` is one of the `keep_last` newest of its pipeline.
    fn among_newest(&self, run: &Candidate) -> bool {
        let Some(newest) = &self.newest else {
            return false;
        };
        match newest.get(&run.pipeline) {
            // Fewer runs than `keep_last` (or a pipeline new since the
            // prune started): all kept.
            None => true,
            Some((at, id)) => (run.created_at_ms, run.id.as_str()) >= (*at, id.as_str()),
        }
    }

    /// The next batch of runs, or once they are done of expired cache
    /// entries.
    async fn step(&mut self) -> Result<Step, StoreError> {
        if !self.runs_done {
            return self.batch().await;
        }
        if self.cache_done {
            return Ok(Step::Done);
        }
        self.cache_batch().await
    }

    /// One batch: the next candidates, those that may go deleted (or
    /// counted) in one transaction.
    async fn batch(&mut self) -> Result<Step, StoreError> {
        let candidates = self.candidates().await?;
        let Some(last) = candidates.last() else {
            self.runs_done = true;
            return Ok(Step::Read);
        };
        self.cursor = Some((last.created_at_ms, last.id.clone()));
        let full = candidates.len() >= self.filter.batch_size;
        let mut chosen = Vec::new();
        for run in candidates {
            if self.among_newest(&run) {
                self.report.kept_newest += 1;
            } else if self.maybe_live(&run) {
                self.report.kept_running += 1;
            } else {
                chosen.push(run);
            }
        }
        if !full {
            self.runs_done = true;
        }
        if chosen.is_empty() {
            return Ok(Step::Read);
        }
        self.report.batches += 1;
        if self.filter.dry_run {
            self.count(chosen).await?;
            Ok(Step::Read)
        } else {
            self.delete(chosen).await?;
            Ok(Step::Wrote)
        }
    }

    /// Of `chosen`, those no run outside them (and outside the runs
    /// already gone) references: removing one run can free another, so
    /// this repeats until nothing changes.
    fn unreferenced(&mut self, chosen: &[String], references: &[(String, String)]) -> Vec<String> {
        let mut going: HashSet<&str> = chosen.iter().map(String::as_str).collect();
        loop {
            let held: HashSet<&str> = references
                .iter()
                .filter(|(_, by)| !going.contains(by.as_str()) && !self.counted.contains(by))
                .map(|(source, _)| source.as_str())
                .filter(|source| going.contains(source))
                .collect();
            if held.is_empty() {
                break;
            }
            going.retain(|id| !held.contains(id));
        }
        self.report.kept_referenced += (chosen.len() - going.len()) as u64;
        chosen
            .iter()
            .filter(|id| going.contains(id.as_str()))
            .cloned()
            .collect()
    }

    /// `(source_run, run_id)` of other runs' agents that reference `ids`.
    fn references_sql(&self, n: usize) -> String {
        format!(
            "SELECT DISTINCT source_run, run_id FROM braid_agent_runs
             WHERE source_run IN ({}) AND run_id <> source_run",
            placeholders(self.store.backend, 1, n)
        )
    }

    async fn count(&mut self, chosen: Vec<Candidate>) -> Result<(), StoreError> {
        let pool = &self.store.pool;
        let ids: Vec<String> = chosen.into_iter().map(|c| c.id).collect();
        let mut query = sqlx::query(sqlx::AssertSqlSafe(self.references_sql(ids.len())));
        for id in &ids {
            query = query.bind(id.clone());
        }
        let references = query
            .persistent(false)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| Ok((r.try_get("source_run")?, r.try_get("run_id")?)))
            .collect::<Result<Vec<(String, String)>, sqlx::Error>>()?;
        let going = self.unreferenced(&ids, &references);
        if going.is_empty() {
            return Ok(());
        }
        let list = placeholders(self.store.backend, 1, going.len());
        let mut counts = [0u64; 4];
        for (i, table) in CHILD_TABLES.iter().enumerate() {
            let sql = format!("SELECT COUNT(*) FROM {table} WHERE run_id IN ({list})");
            let mut query = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql));
            for id in &going {
                query = query.bind(id.clone());
            }
            counts[i] = query.persistent(false).fetch_one(pool).await?.max(0) as u64;
        }
        self.tally(going.len() as u64, counts);
        self.counted.extend(going);
        Ok(())
    }

    fn tally(&mut self, runs: u64, [agents, deltas, events, processes]: [u64; 4]) {
        let report = &mut self.report;
        report.runs += runs;
        report.agent_records += agents;
        report.deltas += deltas;
        report.events += events;
        report.processes += processes;
    }

    /// Deletes `chosen` (those still as they were seen, and referenced by
    /// no run that stays) with their rows, in one transaction.
    async fn delete(&mut self, chosen: Vec<Candidate>) -> Result<(), StoreError> {
        // A running run whose owner died here may have left agents'
        // helpers behind: they go first, as a resume would kill them.
        for run in chosen.iter().filter(|r| r.status == RUNNING) {
            self.store.kill_leftover_processes(&run.id).await?;
        }
        let mut conn = acquire(&self.store.pool, "store").await?;
        let deleted = self.delete_on(&mut conn, chosen).await;
        match deleted {
            Ok((runs, counts)) => {
                self.tally(runs, counts);
                metrics::counter!("braid_pruned_runs_total").increment(runs);
                Ok(())
            }
            Err(error) => {
                // A failed COMMIT can leave the driver's transaction depth
                // out of step: the connection is closed, never reused.
                let _ = conn.close().await;
                Err(error)
            }
        }
    }

    async fn delete_on(
        &mut self,
        conn: &mut sqlx::AnyConnection,
        chosen: Vec<Candidate>,
    ) -> Result<(u64, [u64; 4]), StoreError> {
        let backend = self.store.backend;
        let mut tx = match backend {
            // Take the write lock at once: a transaction that reads first
            // and writes later fails (busy) if another commit came between.
            Backend::Sqlite => sqlx::Connection::begin_with(conn, "BEGIN IMMEDIATE").await?,
            Backend::Postgres => sqlx::Connection::begin(conn).await?,
        };
        // Each run as it is now (locked on PostgreSQL): one resumed or
        // changed since it was chosen is left alone.
        let list = placeholders(backend, 1, chosen.len());
        let lock = match backend {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE",
        };
        let sql = format!("SELECT id, status, owner FROM braid_runs WHERE id IN ({list}){lock}");
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for run in &chosen {
            query = query.bind(run.id.clone());
        }
        let mut now: HashMap<String, (String, Option<String>)> = HashMap::new();
        for row in query.persistent(false).fetch_all(&mut *tx).await? {
            now.insert(
                row.try_get("id")?,
                (row.try_get("status")?, row.try_get("owner")?),
            );
        }
        let ids: Vec<String> = chosen
            .into_iter()
            .filter(|c| now.get(&c.id) == Some(&(c.status.clone(), c.owner.clone())))
            .map(|c| c.id)
            .collect();
        if ids.is_empty() {
            tx.rollback().await?;
            return Ok((0, [0; 4]));
        }
        let mut query = sqlx::query(sqlx::AssertSqlSafe(self.references_sql(ids.len())));
        for id in &ids {
            query = query.bind(id.clone());
        }
        let references = query
            .persistent(false)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| Ok((r.try_get("source_run")?, r.try_get("run_id")?)))
            .collect::<Result<Vec<(String, String)>, sqlx::Error>>()?;
        let going = self.unreferenced(&ids, &references);
        if going.is_empty() {
            tx.rollback().await?;
            return Ok((0, [0; 4]));
        }
        let list = placeholders(backend, 1, going.len());
        let mut counts = [0u64; 4];
        for (i, table) in CHILD_TABLES.iter().enumerate() {
            let sql = format!("DELETE FROM {table} WHERE run_id IN ({list})");
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in &going {
                query = query.bind(id.clone());
            }
            counts[i] = query
                .persistent(false)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        let sql = format!("DELETE FROM braid_runs WHERE id IN ({list})");
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for id in &going {
            query = query.bind(id.clone());
        }
        let runs = query
            .persistent(false)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok((runs, counts))
    }

    /// Deletes (or counts) one batch of expired cache entries.
    async fn cache_batch(&mut self) -> Result<Step, StoreError> {
        let pool = &self.store.pool;
        if self.filter.dry_run {
            let expired: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM braid_cache WHERE expires_at_ms < $1")
                    .bind(self.now_ms)
                    .fetch_one(pool)
                    .await?;
            self.report.cache_entries = expired.max(0) as u64;
            self.cache_done = true;
            return Ok(Step::Read);
        }
        let deleted = sqlx::query(
            "DELETE FROM braid_cache WHERE key IN (
                 SELECT key FROM braid_cache WHERE expires_at_ms < $1 LIMIT $2)",
        )
        .bind(self.now_ms)
        .bind(self.filter.batch_size as i64)
        .execute(pool)
        .await?
        .rows_affected();
        self.report.cache_entries += deleted;
        metrics::counter!("braid_pruned_cache_entries_total").increment(deleted);
        self.cache_done = deleted < self.filter.batch_size as u64;
        Ok(if deleted == 0 {
            Step::Read
        } else {
            Step::Wrote
        })
    }
}

/// What goes with a run, in the order of [`PruneReport`]'s counts.
const CHILD_TABLES: [&str; 4] = [
    "braid_agent_runs",
    "braid_deltas",
    "braid_events",
    "braid_agent_processes",
];
