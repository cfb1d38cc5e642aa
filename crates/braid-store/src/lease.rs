//! Leases: which process owns a run, for how long, and since which claim.
//!
//! Every `running` run checkpointed by a store has an `owner`, an `epoch`
//! and a `lease_until_ms`. The owner renews the leases of all its runs in
//! one statement every third of the lease ([`renew_forever`]); a run whose
//! lease ran out is *abandoned* (shown so when read, stored as `running`)
//! and another process may claim it ([`Store::claim_expired`], or a resume
//! through [`Store::claim`]): the claim adds one to the epoch. The writer
//! checks, in every batch, that the stored epoch of each of the batch's
//! runs is the one this process holds ([`Leases::check`]); a run claimed
//! elsewhere is *deposed*: its operations are dropped, it is counted and
//! logged, and announced on [`Store::deposed`] so whoever runs it here
//! stops it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use sqlx::{AnyPool, AssertSqlSafe, Row};
use tokio::sync::{broadcast, oneshot};

use crate::clock::now_ms;
use crate::{Backend, Store, StoreError, acquire};

/// The default lease: how long a run's owner may go silent before another
/// process may take the run over.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);

/// What this process holds of a run in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Held {
    /// Started here without a claim: the epoch stored when its first batch
    /// is written (0 for a new run) is taken as this process's.
    Adopt,
    /// This epoch.
    Epoch(u64),
    /// Claimed elsewhere since: nothing more of it is written.
    Deposed,
}

/// The runs this process holds, shared by the writer, the renewal task and
/// the claims.
pub(crate) struct Leases {
    held: Mutex<HashMap<Arc<str>, Held>>,
    /// Answers to command agents' process records of deposed runs, held
    /// back (the agent gets its input only once answered) until the run
    /// ends here.
    parked: Mutex<HashMap<Arc<str>, Vec<oneshot::Sender<()>>>>,
    deposed: broadcast::Sender<Arc<str>>,
    /// Operations dropped because their run was deposed.
    pub(crate) fenced: AtomicU64,
    /// Runs found deposed.
    pub(crate) deposed_runs: AtomicU64,
    /// How long a claim lasts unless renewed.
    pub(crate) lease: Duration,
    /// `host:pid`, as stored in `owner`.
    pub(crate) owner: String,
}

/// The epoch a store holds for each run in flight here, as a function
/// that outlives the borrow ([`Store::epochs`]).
pub type Epochs = Arc<dyn Fn(&str) -> Option<u64> + Send + Sync>;

/// A run [`Store::claim_expired`] took over.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The run's id.
    pub run_id: String,
    /// Its new epoch (one more than its dead owner's).
    pub epoch: u64,
    /// Who held it before (`host:pid`), if anyone was recorded.
    pub previous_owner: Option<String>,
}

impl Leases {
    pub(crate) fn new(lease: Duration, owner: String) -> Self {
        Self {
            held: Mutex::default(),
            parked: Mutex::default(),
            deposed: broadcast::channel(1024).0,
            fenced: AtomicU64::new(0),
            deposed_runs: AtomicU64::new(0),
            lease,
            owner,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Held>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `lease_until_ms` for a claim or renewal made now.
    pub(crate) fn until_ms(&self) -> i64 {
        now_ms().saturating_add(i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX))
    }

    /// A run started here: held from its first write on (a run claimed
    /// before it started keeps its claim's epoch; one deposed here stays
    /// deposed until this process claims it again).
    pub(crate) fn started(&self, run_id: &Arc<str>) {
        self.lock().entry(run_id.clone()).or_insert(Held::Adopt);
    }

    /// This process claimed `run_id` at `epoch`.
    pub(crate) fn claimed(&self, run_id: &str, epoch: u64) {
        self.lock().insert(Arc::from(run_id), Held::Epoch(epoch));
    }

    /// The run ended here and its end was written: nothing more to renew
    /// or check. A deposed run stays known as deposed.
    pub(crate) fn ended(&self, run_id: &str) {
        let mut held = self.lock();
        if held.get(run_id).is_some_and(|h| *h != Held::Deposed) {
            held.remove(run_id);
        }
    }

    /// Answers that a command agent's process record is written, unless
    /// its run is deposed: then the answer is held back until the run
    /// ends here ([`Leases::unpark`]), so a deposed coordinator's agent
    /// that started as it woke never gets its input.
    pub(crate) fn park(&self, run_id: &Arc<str>, answer: oneshot::Sender<()>) {
        if self.get(run_id) == Some(Held::Deposed) {
            self.parked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(run_id.clone())
                .or_default()
                .push(answer);
        } else {
            let _ = answer.send(());
        }
    }

    /// The run ended here: its parked answers are dropped (its agents were
    /// stopped with it).
    pub(crate) fn unpark(&self, run_id: &str) {
        self.parked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(run_id);
    }

    /// What this process holds of `run_id`, if anything.
    pub(crate) fn get(&self, run_id: &str) -> Option<Held> {
        self.lock().get(run_id).copied()
    }

    /// Whether this process holds runs whose leases need renewing.
    fn holds_any(&self) -> bool {
        self.lock().values().any(|h| *h != Held::Deposed)
    }

    /// Marks `run_id` deposed (it was claimed elsewhere, the stored epoch
    /// is `stored`): counted, logged and announced once.
    pub(crate) fn depose(&self, run_id: &str, stored: Option<u64>) {
        let was = {
            let mut held = self.lock();
            held.insert(Arc::from(run_id), Held::Deposed)
        };
        if was == Some(Held::Deposed) {
            return;
        }
        let held = match was {
            Some(Held::Epoch(e)) => e.to_string(),
            _ => "?".to_owned(),
        };
        tracing::warn!(
            run = %run_id,
            held_epoch = %held,
            stored_epoch = ?stored,
            "deposed: another process claimed this run; stopping it here, writing nothing more of it"
        );
        self.deposed_runs.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("braid_runs_deposed_total").increment(1);
        let _ = self.deposed.send(Arc::from(run_id));
    }

    /// Deposed runs' ids, as they are found.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.deposed.subscribe()
    }

    /// The fence of one writer batch, inside its transaction: reads the
    /// stored epochs of the batch's held runs in one statement (locking
    /// their rows, in id order, on PostgreSQL; SQLite's write lock was
    /// taken when the transaction began, see [`begin_write`]) and returns
    /// the runs whose operations must be dropped. Runs this process does
    /// not hold (`end` runs started here) cost nothing.
    pub(crate) async fn check(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        backend: Backend,
        run_ids: &[&str],
    ) -> Result<HashSet<Arc<str>>, sqlx::Error> {
        let mut dropped = HashSet::new();
        let mut checked: Vec<(&str, Held)> = Vec::new();
        {
            let held = self.lock();
            for id in run_ids {
                match held.get(*id) {
                    None => {}
                    Some(Held::Deposed) => {
                        dropped.insert(Arc::from(*id));
                    }
                    Some(h) => checked.push((id, *h)),
                }
            }
        }
        if checked.is_empty() {
            return Ok(dropped);
        }
        checked.sort_by(|a, b| a.0.cmp(b.0));
        checked.dedup_by(|a, b| a.0 == b.0);
        let list = placeholders(backend, 1, checked.len());
        let lock = match backend {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        };
        let mut q = sqlx::query(AssertSqlSafe(format!(
            "SELECT id, epoch FROM braid_runs WHERE id IN ({list}) ORDER BY id{lock}"
        )));
        for (id, _) in &checked {
            q = q.bind(id.to_string());
        }
        let rows = q.persistent(false).fetch_all(&mut **tx).await?;
        let mut stored: HashMap<String, u64> = HashMap::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get("id")?;
            let epoch: i64 = row.try_get("epoch")?;
            stored.insert(id, u64::try_from(epoch).unwrap_or(0));
        }
        for (id, held) in checked {
            let now = stored.get(id).copied();
            match (held, now) {
                // A new run's row is inserted by this batch, at epoch 0.
                (Held::Adopt, None) => self.adopt(id, 0),
                (Held::Adopt, Some(e)) => self.adopt(id, e),
                (Held::Epoch(e), Some(s)) if s == e => {}
                (Held::Epoch(0), None) => {}
                (Held::Epoch(_), s) => {
                    self.depose(id, s);
                    dropped.insert(Arc::from(id));
                }
                (Held::Deposed, _) => {
                    dropped.insert(Arc::from(id));
                }
            }
        }
        Ok(dropped)
    }

    fn adopt(&self, run_id: &str, epoch: u64) {
        let mut held = self.lock();
        if let Some(h @ Held::Adopt) = held.get_mut(run_id) {
            *h = Held::Epoch(epoch);
        }
    }
}

/// A transaction that will write: on SQLite it takes the write lock at
/// once (`BEGIN IMMEDIATE`), so what it reads cannot change before it
/// writes.
pub(crate) async fn begin_write(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
) -> Result<sqlx::Transaction<'_, sqlx::Any>, sqlx::Error> {
    match backend {
        Backend::Sqlite => sqlx::Connection::begin_with(conn, "BEGIN IMMEDIATE").await,
        Backend::Postgres => sqlx::Connection::begin(conn).await,
    }
}

/// `$first, $first+1, …` (PostgreSQL) or `?, ?, …` (SQLite), `n` of them.
pub(crate) fn placeholders(backend: Backend, first: usize, n: usize) -> String {
    (0..n)
        .map(|i| match backend {
            Backend::Postgres => format!("${}", first + i),
            Backend::Sqlite => "?".to_owned(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Renews the leases of every run this process owns, every third of the
/// lease, while it holds any; ends when the store is dropped or closed.
pub(crate) async fn renew_forever(leases: Weak<Leases>, pool: AnyPool, backend: Backend) {
    let every = match leases.upgrade() {
        Some(l) => (l.lease / 3).max(Duration::from_millis(50)),
        None => return,
    };
    loop {
        tokio::time::sleep(every).await;
        let Some(leases) = leases.upgrade() else {
            return;
        };
        if pool.is_closed() {
            return;
        }
        if !leases.holds_any() {
            continue;
        }
        if let Err(error) = renew(&leases, &pool, backend).await {
            tracing::warn!(%error, "cannot renew the leases of this process's runs");
        }
    }
}

/// One renewal: one statement for all of this process's runs; the runs it
/// holds but did not renew are looked at, and those claimed elsewhere are
/// deposed.
pub(crate) async fn renew(
    leases: &Leases,
    pool: &AnyPool,
    backend: Backend,
) -> Result<(), sqlx::Error> {
    let sql = match backend {
        // Rows locked in id order, as the writer's batches lock them.
        Backend::Postgres => {
            "UPDATE braid_runs SET lease_until_ms = $1
             WHERE id IN (SELECT id FROM braid_runs WHERE owner = $2 AND status = 'running'
                          ORDER BY id FOR UPDATE)
             RETURNING id, epoch"
        }
        Backend::Sqlite => {
            "UPDATE braid_runs SET lease_until_ms = $1
             WHERE owner = $2 AND status = 'running'
             RETURNING id, epoch"
        }
    };
    let mut conn = acquire(pool, "store").await?;
    let rows = match sqlx::query(sql)
        .bind(leases.until_ms())
        .bind(leases.owner.clone())
        .fetch_all(&mut *conn)
        .await
    {
        Ok(rows) => rows,
        Err(error) => {
            let _ = conn.close().await;
            return Err(error);
        }
    };
    drop(conn);
    let mut renewed: HashMap<String, u64> = HashMap::with_capacity(rows.len());
    for row in rows {
        let id: String = row.try_get("id")?;
        let epoch: i64 = row.try_get("epoch")?;
        renewed.insert(id, u64::try_from(epoch).unwrap_or(0));
    }
    metrics::counter!("braid_lease_renewals_total").increment(1);
    let held: Vec<(Arc<str>, Held)> = leases
        .lock()
        .iter()
        .filter(|(_, h)| **h != Held::Deposed)
        .map(|(id, h)| (id.clone(), *h))
        .collect();
    let mut missing = Vec::new();
    for (id, h) in held {
        match (renewed.get(&*id), h) {
            (Some(s), Held::Epoch(e)) if *s != e => leases.depose(&id, Some(*s)),
            (Some(_), _) => {}
            (None, _) => missing.push(id),
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    // Not renewed: a run whose first write is still queued, one that ended
    // or waits, or one someone else claimed.
    let mut q = sqlx::query(AssertSqlSafe(format!(
        "SELECT id, owner, epoch, status FROM braid_runs WHERE id IN ({})",
        placeholders(backend, 1, missing.len())
    )));
    for id in &missing {
        q = q.bind(id.to_string());
    }
    for row in q.persistent(false).fetch_all(pool).await? {
        let id: String = row.try_get("id")?;
        let owner: Option<String> = row.try_get("owner")?;
        let epoch: i64 = row.try_get("epoch")?;
        let epoch = u64::try_from(epoch).unwrap_or(0);
        let status: String = row.try_get("status")?;
        let claimed_elsewhere = owner.as_deref() != Some(leases.owner.as_str())
            && status == braid_core::report::RUNNING;
        let newer = matches!(leases.get(&id), Some(Held::Epoch(e)) if e != epoch);
        if claimed_elsewhere || newer {
            leases.depose(&id, Some(epoch));
        }
    }
    Ok(())
}

impl Store {
    /// Takes over up to `limit` runs whose lease expired with nobody
    /// renewing it (their owner died, hangs or lost the database): each
    /// becomes this process's, its epoch one more than before, so the old
    /// owner's late writes are refused. Only runs checkpointed per agent
    /// (`checkpoint: agent`) are taken: others have no agents' records to
    /// continue from (they show as `abandoned` and can be resumed by
    /// hand), and only runs of `pipelines` (those the caller can run; all
    /// if empty). Rows another claimer has locked are skipped, never
    /// waited for. Continue each from [`Store::get_run`]'s records.
    pub async fn claim_expired(
        &self,
        limit: i64,
        pipelines: &[String],
    ) -> Result<Vec<Claimed>, StoreError> {
        if self.read_only || limit <= 0 {
            return Ok(Vec::new());
        }
        let leases = self.writer.leases();
        let mut conn = acquire(&self.pool, "store").await?;
        let backend = self.backend;
        let now = now_ms();
        let until = leases.until_ms();
        let done: Result<Vec<Claimed>, sqlx::Error> = async {
            // SQLite: the write lock first, so the candidates cannot change under us.
            let mut tx = begin_write(&mut conn, backend).await?;
            let lock = match backend {
                Backend::Postgres => " FOR UPDATE SKIP LOCKED",
                Backend::Sqlite => "",
            };
            let only = if pipelines.is_empty() {
                String::new()
            } else {
                format!(
                    " AND pipeline IN ({})",
                    // `$N` on SQLite too: sqlx binds those by number.
                    placeholders(Backend::Postgres, 3, pipelines.len())
                )
            };
            let mut q = sqlx::query(AssertSqlSafe(format!(
                "SELECT id, owner, epoch FROM braid_runs
                 WHERE status = 'running' AND lease_until_ms < $1 AND checkpoint = 'agent'{only}
                 ORDER BY lease_until_ms LIMIT $2{lock}"
            )))
            .bind(now)
            .bind(limit);
            for p in pipelines {
                q = q.bind(p.clone());
            }
            let candidates = q.persistent(false).fetch_all(&mut *tx).await?;
            let mut claimed = Vec::with_capacity(candidates.len());
            for row in candidates {
                let id: String = row.try_get("id")?;
                let owner: Option<String> = row.try_get("owner")?;
                let epoch: i64 = row.try_get("epoch")?;
                let done = sqlx::query(
                    "UPDATE braid_runs SET owner = $1, epoch = epoch + 1, lease_until_ms = $2
                     WHERE id = $3 AND epoch = $4 AND status = 'running' AND lease_until_ms < $5",
                )
                .bind(leases.owner.clone())
                .bind(until)
                .bind(id.clone())
                .bind(epoch)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() == 1 {
                    claimed.push(Claimed {
                        run_id: id,
                        epoch: u64::try_from(epoch + 1).unwrap_or(0),
                        previous_owner: owner,
                    });
                }
            }
            tx.commit().await?;
            Ok(claimed)
        }
        .await;
        match done {
            Ok(claimed) => {
                for c in &claimed {
                    leases.claimed(&c.run_id, c.epoch);
                }
                if !claimed.is_empty() {
                    metrics::counter!("braid_runs_taken_over_total")
                        .increment(claimed.len() as u64);
                }
                Ok(claimed)
            }
            Err(error) => {
                // A failed COMMIT can leave the connection out of step.
                let _ = conn.close().await;
                Err(error.into())
            }
        }
    }

    /// The epoch this process holds for `run_id`, while the run is in
    /// flight here (0 for a run started here; one more per takeover).
    /// `None` if this process does not hold it (never did, it ended, or it
    /// was deposed). Remote agent dispatch puts it in task ids, so a
    /// deposed owner's results can be told apart.
    pub fn epoch(&self, run_id: &str) -> Option<u64> {
        match self.writer.leases().get(run_id)? {
            Held::Epoch(e) => Some(e),
            Held::Adopt => Some(0),
            Held::Deposed => None,
        }
    }

    /// [`Store::epoch`] as a function that outlives this borrow, for
    /// whoever needs it while the store lives (remote agent dispatch).
    pub fn epochs(&self) -> Epochs {
        let writer = self.writer.clone();
        Arc::new(move |run_id: &str| match writer.leases().get(run_id)? {
            Held::Epoch(e) => Some(e),
            Held::Adopt => Some(0),
            Held::Deposed => None,
        })
    }

    /// Announces the id of each run of this process that another process
    /// claimed (found when a write of it was refused by epoch, or when its
    /// lease could not be renewed): stop it, without writing anything more
    /// (the writer drops whatever of it is still queued).
    pub fn deposed(&self) -> broadcast::Receiver<Arc<str>> {
        self.writer.leases().subscribe()
    }

    /// Gives up this process's claim on `run_id` (one it took over but
    /// cannot continue now): its lease ends at once, so another process
    /// (or this one, later) may claim it; this process stops renewing it
    /// even if the database cannot be told.
    pub async fn release(&self, run_id: &str) -> Result<(), StoreError> {
        let leases = self.writer.leases();
        let held = leases.get(run_id);
        leases.ended(run_id);
        let Some(Held::Epoch(epoch)) = held else {
            return Ok(());
        };
        sqlx::query(
            // No owner: this process's renewals (of its owner's runs) skip it.
            "UPDATE braid_runs SET lease_until_ms = 0, owner = NULL
             WHERE id = $1 AND epoch = $2 AND status = 'running'",
        )
        .bind(run_id)
        .bind(i64::try_from(epoch).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Whether `run_id` was deposed here (another process claimed it).
    pub fn is_deposed(&self, run_id: &str) -> bool {
        self.writer.leases().get(run_id) == Some(Held::Deposed)
    }

    /// How long this store's claims last unless renewed.
    pub fn lease(&self) -> Duration {
        self.writer.leases().lease
    }

    /// Renews this process's leases now (the renewal task does it every
    /// third of the lease); for tests and benchmarks.
    pub async fn renew_leases(&self) -> Result<(), StoreError> {
        renew(self.writer.leases(), &self.pool, self.backend)
            .await
            .map_err(StoreError::from)
    }
}
