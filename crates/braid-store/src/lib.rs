//! Durable runs: checkpoints written to SQLite (the embedded default) or
//! PostgreSQL, run history, and resume points.
//!
//! A [`Store`] owns a configured sqlx pool and one background writer. The
//! engine hands checkpoints to [`Store::checkpointer`], which only queues
//! them; the writer commits whatever has queued up, from every run in
//! flight, in one transaction (group commit), then takes the next batch.
//! Failed batches are retried with backoff; a batch that finally fails is
//! reported by [`Store::flush`] for the runs it held, never dropped
//! silently. Only deltas are stored: an agent's own writes, never a copy of
//! the whole state.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use braid_store::{Store, StoreSettings};
//! let store = Store::connect("sqlite://runs.db", &StoreSettings::default()).await?;
//! let runs = store.list_runs(&Default::default()).await?;
//! # Ok(()) }
//! ```

pub mod sql;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use braid_core::checkpoint::{AgentRecord, Checkpointer, FieldValue};
use braid_core::{AgentReport, AgentStatus, CheckpointPolicy, RunStatus};
use indexmap::IndexMap;
use serde::Serialize;
use serde_json::Value;
use sqlx::AnyPool;
use sqlx::Row;
use sqlx::any::{AnyPoolOptions, AnyRow};

pub use writer::{PersistError, WriterStats};

/// What [`Store::kill_leftover_processes`] found: agents' process groups,
/// as `agent (group PGID)`.
#[derive(Debug, Clone, Default)]
pub struct Leftovers {
    /// Groups of a dead owner that were still there, now killed.
    pub killed: Vec<String>,
    /// Groups of an owner alive or on another host, left alone.
    pub elsewhere: Vec<String>,
}

/// Pool and writer settings. Every limit is explicit; see the README for
/// what each one means in production.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// Most open connections.
    pub max_connections: u32,
    /// Connections kept open while idle.
    pub min_connections: u32,
    /// Longest wait for a free connection before an operation fails.
    pub acquire_timeout: Duration,
    /// Idle connections above `min_connections` are closed after this long.
    pub idle_timeout: Option<Duration>,
    /// Most queued operations one transaction takes.
    pub max_batch: usize,
    /// How often a failed batch is tried again before its runs are
    /// reported as not persisted.
    pub write_retries: u32,
    /// The first retry's delay; it doubles each time, up to 5 s.
    pub retry_backoff: Duration,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            max_connections: 8,
            min_connections: 0,
            acquire_timeout: Duration::from_secs(5),
            idle_timeout: Some(Duration::from_secs(600)),
            max_batch: 2048,
            write_retries: 8,
            retry_backoff: Duration::from_millis(100),
        }
    }
}

/// What can go wrong talking to the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL is not one braid understands.
    #[error("unsupported store URL `{0}`: expected sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
    /// The database could not be reached or opened.
    #[error("cannot open the store at {url}")]
    Connect {
        /// The URL, with any password masked.
        url: String,
        /// What the driver said.
        #[source]
        source: sqlx::Error,
    },
    /// The schema could not be brought up to date.
    #[error("cannot migrate the store at {url}")]
    Migrate {
        /// The URL, with any password masked.
        url: String,
        /// What the migrator said.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// A query failed.
    #[error("store query failed")]
    Query(#[from] sqlx::Error),
    /// A stored value could not be read back.
    #[error("corrupt record in the store: {0}")]
    Corrupt(String),
}

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// SQLite, in WAL mode.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// A run as `braid runs list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// The run's id.
    pub run_id: String,
    /// Its pipeline's name.
    pub pipeline: String,
    /// `running`, `completed`, `failed` or `cancelled`.
    pub status: String,
    /// Its checkpoint policy.
    pub checkpoint: String,
    /// When it started, in ms since the Unix epoch.
    pub created_at_ms: i64,
    /// Its makespan, once finished.
    pub makespan_ms: Option<f64>,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
}

/// Everything stored about one run.
#[derive(Debug, Clone, Serialize)]
pub struct StoredRun {
    /// The run as listed.
    #[serde(flatten)]
    pub summary: RunSummary,
    /// The pipeline file's content hash when the run started.
    pub pipeline_hash: String,
    /// The pipeline file, when the run came from one.
    pub pipeline_path: Option<String>,
    /// `host:pid` of the process that last ran it.
    pub owner: Option<String>,
    /// The run's input.
    pub input: serde_json::Map<String, Value>,
    /// Each agent's record, with its writes if it completed.
    #[serde(skip)]
    pub agents: Vec<AgentRecord>,
}

impl StoredRun {
    /// The status as a [`RunStatus`], or `None` while it is `running`.
    pub fn run_status(&self) -> Option<RunStatus> {
        self.summary.status.parse().ok()
    }
}

/// Filters for [`Store::list_runs`].
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Only runs with this status.
    pub status: Option<String>,
    /// Only runs of this pipeline.
    pub pipeline: Option<String>,
    /// At most this many, newest first (default 50).
    pub limit: Option<i64>,
}

/// A connected, migrated store with its background writer.
pub struct Store {
    pool: AnyPool,
    url: String,
    backend: Backend,
    writer: Arc<writer::Writer>,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

impl Store {
    /// Opens the store at `url` (`sqlite://PATH`, created if missing, or
    /// `postgres://…`), applies pending migrations and starts the writer.
    /// Must be called inside a Tokio runtime.
    pub async fn connect(url: &str, settings: &StoreSettings) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let masked = mask_password(url);
        let (backend, url) = if let Some(rest) = url.strip_prefix("sqlite:") {
            let path = rest.trim_start_matches("//");
            let path = path.split('?').next().unwrap_or(path);
            if let Some(dir) = std::path::Path::new(path).parent()
                && !dir.as_os_str().is_empty()
            {
                let _ = std::fs::create_dir_all(dir);
            }
            if path.contains(":memory:") || path.is_empty() {
                return Err(StoreError::UnsupportedUrl(format!(
                    "{masked} (an in-memory database would vanish with each pooled connection; give a file)"
                )));
            }
            let url = if url.contains('?') {
                url.to_owned()
            } else {
                format!("{url}?mode=rwc")
            };
            (Backend::Sqlite, url)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_owned())
        } else {
            return Err(StoreError::UnsupportedUrl(masked));
        };
        // One direct connection first: a pool that cannot connect only says
        // it timed out, while the driver says why (refused, unknown host,
        // bad password, missing database).
        let probe = tokio::time::timeout(
            settings.acquire_timeout,
            <sqlx::AnyConnection as sqlx::Connection>::connect(&url),
        )
        .await
        .unwrap_or_else(|_| Err(sqlx::Error::PoolTimedOut));
        match probe {
            Ok(conn) => {
                let _ = sqlx::Connection::close(conn).await;
            }
            Err(source) => {
                return Err(StoreError::Connect {
                    url: masked,
                    source,
                });
            }
        }
        let pool = AnyPoolOptions::new()
            .max_connections(settings.max_connections.max(1))
            .min_connections(settings.min_connections)
            .acquire_timeout(settings.acquire_timeout)
            .idle_timeout(settings.idle_timeout)
            // The equivalent of `pool_pre_ping`: a connection that died
            // while idle is replaced, not handed out.
            .test_before_acquire(true)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        use sqlx::Executor;
                        // WAL lets readers and the writer work at once;
                        // NORMAL syncs at checkpoints, durable across
                        // process crashes; wait for locks instead of failing.
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;",
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(|source| StoreError::Connect {
                url: masked.clone(),
                source,
            })?;
        // PostgreSQL serialises migrators with an advisory lock; SQLite has
        // none, so two processes opening a new file at once can both try the
        // first migration. The loser's transaction rolls back whole; trying
        // again finds it applied.
        let mut tried = 0;
        loop {
            tried += 1;
            match MIGRATOR.run(&pool).await {
                Ok(()) => break,
                Err(err) if backend == Backend::Sqlite && tried < 5 => {
                    tracing::debug!(error = %err, "migrating raced another process; trying again");
                    tokio::time::sleep(std::time::Duration::from_millis(20 * tried)).await;
                }
                Err(source) => {
                    return Err(StoreError::Migrate {
                        url: masked.clone(),
                        source,
                    });
                }
            }
        }
        let writer = writer::Writer::start(pool.clone(), backend, settings.clone());
        Ok(Self {
            pool,
            url: masked,
            backend,
            writer,
        })
    }

    /// The URL, with any password masked.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pool, for checks such as readiness probes.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// What runs hand their checkpoints to. Never blocks.
    pub fn checkpointer(&self) -> Arc<dyn Checkpointer> {
        self.writer.clone()
    }

    /// Waits until everything queued so far is committed. Returns the runs
    /// whose checkpoints could not be written (after all retries) since
    /// the last flush.
    pub async fn flush(&self) -> Result<(), PersistError> {
        self.writer.flush(None).await
    }

    /// Waits until everything queued so far is committed, and reports
    /// whether `run_id`'s checkpoints were all written. Other runs'
    /// failures are kept for their own flush.
    pub async fn flush_run(&self, run_id: &str) -> Result<(), PersistError> {
        self.writer.flush(Some(run_id)).await
    }

    /// Takes over a stored run before resuming it: sets its owner to this
    /// process and its status to `running`, but only if it is still as
    /// `seen` (same status and owner), so two resumes cannot both win.
    pub async fn claim(&self, seen: &StoredRun) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE braid_runs SET status = 'running', owner = $1
             WHERE id = $2 AND status = $3 AND COALESCE(owner, '') = $4",
        )
        .bind(self.writer.owner().to_owned())
        .bind(seen.summary.run_id.clone())
        .bind(seen.summary.status.clone())
        .bind(seen.owner.clone().unwrap_or_default())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Kills the process groups that `run_id`'s agents left running when
    /// their owner died on this host (see
    /// [`braid_core::agent::process`]), and takes them off the record. Call
    /// after [`Store::claim`], before the run continues. Groups of an owner
    /// still alive or on another host are left alone and returned in
    /// [`Leftovers::elsewhere`].
    pub async fn kill_leftover_processes(&self, run_id: &str) -> Result<Leftovers, StoreError> {
        use braid_core::agent::process::{Owner, kill_leftover_groups, owner_state};
        let rows = sqlx::query(
            "SELECT pgid, agent, owner FROM braid_agent_processes WHERE run_id = $1 ORDER BY pgid",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        let mut dead = Vec::new();
        let mut leftovers = Leftovers::default();
        for row in &rows {
            let pgid: i64 = row.try_get("pgid")?;
            let agent: String = row.try_get("agent")?;
            let owner: String = row.try_get("owner")?;
            match (owner_state(&owner), i32::try_from(pgid)) {
                (Owner::Gone, Ok(pgid)) => dead.push((pgid, agent)),
                (Owner::Gone, Err(_)) => {}
                _ => leftovers
                    .elsewhere
                    .push(format!("{agent} (group {pgid} of {owner})")),
            }
        }
        let pgids: Vec<i32> = dead.iter().map(|(g, _)| *g).collect();
        let killed = kill_leftover_groups(&pgids).await;
        leftovers.killed = dead
            .into_iter()
            .filter(|(g, _)| killed.contains(g))
            .map(|(g, agent)| format!("{agent} (group {g})"))
            .collect();
        if leftovers.elsewhere.is_empty() {
            sqlx::query("DELETE FROM braid_agent_processes WHERE run_id = $1")
                .bind(run_id)
                .execute(&self.pool)
                .await?;
        } else {
            for pgid in pgids {
                sqlx::query("DELETE FROM braid_agent_processes WHERE run_id = $1 AND pgid = $2")
                    .bind(run_id)
                    .bind(i64::from(pgid))
                    .execute(&self.pool)
                    .await?;
            }
        }
        Ok(leftovers)
    }

    /// Counters of the writer: transactions, operations, retries.
    pub fn stats(&self) -> WriterStats {
        self.writer.stats()
    }

    /// Publishes the pool's size and idle connections as gauges
    /// (`braid_db_pool_connections{state}`); call before rendering metrics.
    pub fn record_pool_gauges(&self) {
        let size = f64::from(self.pool.size());
        let idle = self.pool.num_idle() as f64;
        metrics::gauge!("braid_db_pool_connections", "state" => "open").set(size);
        metrics::gauge!("braid_db_pool_connections", "state" => "idle").set(idle);
    }

    /// Runs, newest first.
    pub async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunSummary>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, pipeline, status, checkpoint, created_at_ms, makespan_ms, error
             FROM braid_runs
             WHERE (CAST($1 AS TEXT) IS NULL OR status = $1)
               AND (CAST($2 AS TEXT) IS NULL OR pipeline = $2)
             ORDER BY created_at_ms DESC, id DESC
             LIMIT $3",
        )
        .bind(filter.status.clone())
        .bind(filter.pipeline.clone())
        .bind(filter.limit.unwrap_or(50).max(1))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(summary).collect()
    }

    /// One run with its agents' records and writes, or `None`.
    pub async fn get_run(&self, run_id: &str) -> Result<Option<StoredRun>, StoreError> {
        let Some(row) = sqlx::query(
            "SELECT id, pipeline, status, checkpoint, created_at_ms, makespan_ms, error,
                    pipeline_hash, pipeline_path, owner, input
             FROM braid_runs WHERE id = $1",
        )
        .bind(run_id)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let input: String = row.try_get("input")?;
        let input = match serde_json::from_str(&input) {
            Ok(Value::Object(map)) => map,
            _ => {
                return Err(StoreError::Corrupt(format!(
                    "run {run_id}: input is not a JSON object"
                )));
            }
        };
        let mut deltas: IndexMap<String, Vec<FieldValue>> = IndexMap::new();
        for d in sqlx::query(
            "SELECT agent, field, value FROM braid_deltas WHERE run_id = $1 ORDER BY agent, field",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?
        {
            let agent: String = d.try_get("agent")?;
            let field: String = d.try_get("field")?;
            let value: String = d.try_get("value")?;
            let value: Value = serde_json::from_str(&value).map_err(|e| {
                StoreError::Corrupt(format!("run {run_id}, agent {agent}, field {field}: {e}"))
            })?;
            deltas
                .entry(agent)
                .or_default()
                .push((Arc::from(field.as_str()), Arc::new(value)));
        }
        let mut agents = Vec::new();
        for a in sqlx::query(
            "SELECT agent, status, attempts, start_ms, duration_ms, queue_ms, error, reason
             FROM braid_agent_runs WHERE run_id = $1
             ORDER BY COALESCE(start_ms, 1e18), agent",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?
        {
            let agent: String = a.try_get("agent")?;
            let status: String = a.try_get("status")?;
            let status: AgentStatus = status
                .parse()
                .map_err(|e: String| StoreError::Corrupt(format!("run {run_id}: {e}")))?;
            let attempts: i64 = a.try_get("attempts")?;
            let report = AgentReport {
                status,
                start_ms: a.try_get("start_ms")?,
                duration_ms: a.try_get("duration_ms")?,
                queue_ms: a.try_get("queue_ms")?,
                attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                error: a.try_get("error")?,
                reason: a.try_get("reason")?,
                resumed: false,
                tokens: None,
            };
            let writes = if status == AgentStatus::Completed {
                deltas.shift_remove(&agent).unwrap_or_default()
            } else {
                Vec::new()
            };
            agents.push(AgentRecord {
                agent: Arc::from(agent.as_str()),
                report,
                writes,
            });
        }
        Ok(Some(StoredRun {
            summary: summary(&row)?,
            pipeline_hash: row.try_get("pipeline_hash")?,
            pipeline_path: row.try_get("pipeline_path")?,
            owner: row.try_get("owner")?,
            input,
            agents,
        }))
    }

    /// Stores a run's event stream: `(seq, event as JSON)`, in order. A
    /// resumed run's events continue the numbering and are added.
    pub async fn save_events(
        &self,
        run_id: &str,
        events: &[(u64, String)],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for chunk in events.chunks(2000) {
            let sql = writer::upsert_sql(
                self.backend,
                "braid_events (run_id, seq, event)",
                3,
                chunk.len(),
                "(run_id, seq) DO UPDATE SET event = excluded.event",
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (seq, event) in chunk {
                query = query
                    .bind(run_id.to_owned())
                    .bind(*seq as i64)
                    .bind(event.replace('\0', "\u{FFFD}"));
            }
            query.persistent(false).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A run's stored event stream, in order (empty if none was stored).
    pub async fn load_events(&self, run_id: &str) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT event FROM braid_events WHERE run_id = $1 ORDER BY seq")
            .bind(run_id.to_owned())
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("event").map_err(StoreError::from))
            .collect()
    }

    /// Whether the database answers (for readiness probes).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Overwrites a run's status, e.g. `interrupted` for a run a server
    /// stopped on shutdown (it can be resumed).
    pub async fn set_status(&self, run_id: &str, status: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE braid_runs SET status = $1 WHERE id = $2")
            .bind(status.to_owned())
            .bind(run_id.to_owned())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Flushes, then closes the pool.
    pub async fn close(self) -> Result<(), PersistError> {
        let flushed = self.flush().await;
        self.pool.close().await;
        flushed
    }
}

fn summary(row: &AnyRow) -> Result<RunSummary, StoreError> {
    Ok(RunSummary {
        run_id: row.try_get("id")?,
        pipeline: row.try_get("pipeline")?,
        status: row.try_get("status")?,
        checkpoint: row.try_get("checkpoint")?,
        created_at_ms: row.try_get("created_at_ms")?,
        makespan_ms: row.try_get("makespan_ms")?,
        error: row.try_get("error")?,
    })
}

/// The URL with its password (in the user part or a `password` query
/// parameter) replaced by `***`: `postgres://app:s3cret@db/braid` →
/// `postgres://app:***@db/braid`. A URL that does not parse is not echoed.
pub fn mask_password(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return "<a store URL that does not parse>".to_owned();
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    }
    if parsed
        .query_pairs()
        .any(|(k, _)| k.eq_ignore_ascii_case("password"))
    {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let v = if k.eq_ignore_ascii_case("password") {
                    "***".to_owned()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

/// The default store: `braid.db` in the user's data directory.
pub fn default_url() -> String {
    let dir = dirs_data_dir().join("braid");
    format!("sqlite://{}", dir.join("braid.db").display())
}

fn dirs_data_dir() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return dir.into();
    }
    match std::env::var_os("HOME") {
        Some(home) => std::path::PathBuf::from(home).join(".local/share"),
        None => std::env::temp_dir(),
    }
}

/// The policy names stored in `checkpoint`, for parsing back.
pub fn parse_policy(s: &str) -> Option<CheckpointPolicy> {
    s.parse().ok()
}

/// Takes a connection from `pool` (the store's, or a `sql` agent's: `which`),
/// recording how long that took (`braid_db_pool_acquire_seconds`) and
/// counting the acquires that found no idle connection and so had to open
/// one or wait for one (`braid_db_pool_waits_total`).
pub(crate) async fn acquire(
    pool: &sqlx::AnyPool,
    which: &'static str,
) -> Result<sqlx::pool::PoolConnection<sqlx::Any>, sqlx::Error> {
    if pool.num_idle() == 0 {
        metrics::counter!("braid_db_pool_waits_total", "pool" => which).increment(1);
    }
    let start = std::time::Instant::now();
    let connection = pool.acquire().await;
    metrics::histogram!("braid_db_pool_acquire_seconds", "pool" => which)
        .record(start.elapsed().as_secs_f64());
    connection
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            mask_password("postgres://app:s3cret@db.internal:5432/braid"),
            "postgres://app:***@db.internal:5432/braid"
        );
        assert_eq!(
            mask_password("postgres://app@db/braid"),
            "postgres://app@db/braid"
        );
        assert_eq!(mask_password("sqlite:///tmp/x.db"), "sqlite:///tmp/x.db");
        assert_eq!(
            mask_password("postgres://app@db/braid?password=s3cret&sslmode=require"),
            "postgres://app@db/braid?password=***&sslmode=require"
        );
        let odd = mask_password("postgres://app:pa/ss@db/braid");
        assert!(!odd.contains("ss@"), "{odd}");
    }
}
