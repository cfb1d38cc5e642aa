//! Durable runs: checkpoints written to SQLite (the embedded default) or
//! PostgreSQL, run history, and resume points.
//!
//! A [`Store`] owns a configured sqlx pool and one background writer. The
//! engine hands checkpoints to [`Store::checkpointer`], which only queues
//! them; the writer commits whatever has queued up, from every run in
//! flight, in one transaction (group commit), then takes the next batch.
//! Failed batches are retried with backoff (errors retrying cannot cure
//! fail at once); a batch that finally fails is kept in a local spill file,
//! replayed by the next [`Store::connect`] to the same store, and reported
//! by [`Store::flush`] for the runs it held, never dropped silently. Only
//! deltas are stored: an agent's own writes, never a copy of the whole
//! state.
//!
//! # A tour
//!
//! | Item | What it is |
//! |---|---|
//! | [`Store`] | A connected, migrated store: [`connect`](Store::connect), [`checkpointer`](Store::checkpointer), [`flush`](Store::flush), [`list_runs`](Store::list_runs), [`get_run`](Store::get_run), [`claim`](Store::claim), [`claim_expired`](Store::claim_expired), [`deposed`](Store::deposed), [`epoch`](Store::epoch), [`cache`](Store::cache), [`close`](Store::close). |
//! | [`StoreSettings`] | Pool and writer limits: connections, batch size, retries, timeouts, spilling, the lease. |
//! | [`Claimed`], [`ABANDONED`] | Leases: a run taken over from an owner that stopped renewing it, and how such a run shows before anyone takes it. |
//! | [`RunSummary`], [`StoredRun`], [`RunFilter`] | Run history as `braid runs list` and `braid runs show` read it. |
//! | [`StoreError`], [`PersistError`] | Why the store could not be reached or read, and which runs' checkpoints could not be written. |
//! | [`PruneFilter`], [`PruneReport`] | Retention: [`Store::prune`] deletes old runs in small batches ([`prune`]). |
//! | [`sql`] | The `sql` agent kind: one query, its rows written as JSON. |
//!
//! # Connecting, and running with the store
//!
//! [`Store::connect`] takes `sqlite://PATH` (created if missing; the
//! folder too) or `postgres://…`, and applies pending migrations. An
//! in-memory SQLite database (`sqlite::memory:`) is refused: it would
//! vanish with each pooled connection, so give a file (a temporary one in
//! tests). A run records itself through [`Store::checkpointer`];
//! [`Store::flush`] waits until what was queued is committed.
//!
//! ```
//! use braid_core::{Pipeline, RunOptions};
//! use braid_store::{RunFilter, Store, StoreSettings};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let url = format!("sqlite://{}", dir.path().join("runs.db").display());
//! let store = Store::connect(&url, &StoreSettings::default()).await?;
//!
//! let pipeline = Pipeline::from_yaml_str(r#"
//! pipeline: hello
//! agents:
//!   a: { kind: sleep, ms: 1, writes: [x] }
//!   b: { kind: sleep, ms: 1, reads: [x], writes: [y] }
//! "#)?;
//! let input = pipeline.check_input(&serde_json::json!({}))?;
//! let options = RunOptions { checkpointer: Some(store.checkpointer()), ..RunOptions::default() };
//! let report = pipeline.run(input, options).await;
//! store.flush().await?; // the run's checkpoints are committed
//!
//! let runs = store.list_runs(&RunFilter::default()).await?;
//! assert_eq!(runs.len(), 1);
//! assert_eq!(runs[0].run_id, report.run_id);
//! assert_eq!(runs[0].status, "completed");
//!
//! let run = store.get_run(&report.run_id).await?.expect("it was stored");
//! assert_eq!(run.summary.pipeline, "hello");
//! assert_eq!(run.agents.len(), 2); // each agent's record, with its writes
//! store.close().await?;
//! # Ok(()) }
//! ```
//!
//! # Resuming a run
//!
//! With [`CheckpointPolicy::Agent`] each agent's record is written as soon
//! as it finishes, so a run that failed or whose process died can go on
//! where it stopped: [`Store::get_run`] gives its input and records,
//! [`Store::claim`] takes it over (only one resumer wins), and a
//! [`ResumePoint`](braid_core::ResumePoint) of its records makes a run
//! with the same id reuse what completed. `braid runs resume` does this,
//! and also kills processes the run's dead owner left
//! ([`Store::kill_leftover_processes`]).
//!
//! # Leases
//!
//! A run in progress is leased by its owner, which renews the leases of all
//! its runs in one statement every third of [`StoreSettings::lease`]. A
//! `running` run whose lease expired reads as `abandoned`
//! ([`ABANDONED`]); [`Store::claim_expired`] takes such runs over (as
//! `braid serve` does), and every claim adds one to the run's epoch. Each
//! writer batch checks the stored epochs of its runs: a run claimed
//! elsewhere is *deposed* here, its writes dropped, and announced on
//! [`Store::deposed`] so that it is stopped.
//!
//! ```
//! use std::sync::atomic::{AtomicBool, Ordering};
//! use std::sync::Arc;
//!
//! use braid_core::agent::{AgentError, Writes};
//! use braid_core::{AgentKinds, CheckpointPolicy, Pipeline, ResumePoint, RunOptions, RunStatus};
//! use braid_store::{Store, StoreSettings};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let url = format!("sqlite://{}", dir.path().join("runs.db").display());
//! let store = Store::connect(&url, &StoreSettings::default()).await?;
//! // `publish` fails the first time it is called, and works after that.
//! let failed_once = Arc::new(AtomicBool::new(false));
//! let mut kinds = AgentKinds::standard();
//! kinds.builtin_fn("publish", move |_reads| {
//!     let first = !failed_once.swap(true, Ordering::SeqCst);
//!     async move {
//!         if first {
//!             return Err(AgentError::Other("the service is down".into()));
//!         }
//!         Ok(Writes::from_iter([("published".to_owned(), true.into())]))
//!     }
//! });
//! let pipeline = Pipeline::from_yaml_str_with(r#"
//! pipeline: publish
//! agents:
//!   draft:   { kind: sleep, ms: 1, writes: [text] }
//!   publish: { kind: builtin, function: publish, reads: [text], writes: [published] }
//! "#, &kinds)?;
//! let options = RunOptions {
//!     checkpointer: Some(store.checkpointer()),
//!     checkpoint: Some(CheckpointPolicy::Agent),
//!     ..RunOptions::default()
//! };
//! let first = pipeline.run(pipeline.check_input(&serde_json::json!({}))?, options).await;
//! assert_eq!(first.status, RunStatus::Failed);
//! store.flush().await?;
//!
//! // Later, perhaps in another process:
//! let run = store.get_run(&first.run_id).await?.expect("it was stored");
//! assert!(store.claim(&run).await?, "nobody else resumed it");
//! let input = pipeline.check_input(&serde_json::Value::Object(run.input.clone()))?;
//! let options = RunOptions {
//!     run_id: Some(run.summary.run_id.clone()),
//!     checkpointer: Some(store.checkpointer()),
//!     checkpoint: Some(CheckpointPolicy::Agent),
//!     resume: Some(ResumePoint { agents: run.agents }),
//!     ..RunOptions::default()
//! };
//! let resumed = pipeline.run(input, options).await;
//! assert_eq!(resumed.status, RunStatus::Completed);
//! assert!(resumed.agents["draft"].resumed); // reused, not run again
//! store.close().await?;
//! # Ok(()) }
//! ```
//!
//! # The `sql` agent kind
//!
//! [`sql::register`] adds `kind: sql` to an
//! [`AgentKinds`](braid_core::AgentKinds): one query whose rows are
//! written as JSON, over a pool shared by every `sql` agent naming the same
//! database.
//!
//! ```
//! use braid_core::{AgentKinds, Pipeline, RunOptions};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let mut kinds = AgentKinds::standard();
//! braid_store::sql::register(&mut kinds);
//! let yaml = format!(r#"
//! pipeline: sums
//! inputs: {{ n: {{ type: integer }} }}
//! agents:
//!   double:
//!     kind: sql
//!     database: sqlite://{}?mode=rwc
//!     query: SELECT ? * 2 AS doubled
//!     params: [n]
//!     one: true
//!     reads: [n]
//!     writes: [row]
//! "#, dir.path().join("data.db").display());
//! let pipeline = Pipeline::from_yaml_str_with(&yaml, &kinds)?;
//! let input = pipeline.check_input(&serde_json::json!({"n": 21}))?;
//! let report = pipeline.run(input, RunOptions::default()).await;
//! assert_eq!(*report.state["row"], serde_json::json!({"doubled": 42}));
//! # Ok(()) }
//! ```

mod cache;
mod clock;
mod details;
mod lease;
pub mod prune;
mod spill;
pub mod sql;
mod synthetic;
mod waits;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use braid_core::backoff::Backoff;
use braid_core::checkpoint::{AgentRecord, Checkpointer, FieldValue};
use braid_core::{AgentReport, AgentStatus, CheckpointPolicy, RunStatus};
use indexmap::IndexMap;
use serde::Serialize;
use serde_json::Value;
use sqlx::AnyPool;
use sqlx::Row;
use sqlx::any::{AnyPoolOptions, AnyRow};

pub use lease::{Claimed, DEFAULT_LEASE, Epochs};
pub use prune::{PruneFilter, PruneReport};
pub use synthetic::SyntheticRuns;
pub use waits::{AnswerRefused, ForkRecord};
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
    /// Most open connections of the pool (reads, claims, events). The
    /// writer holds one more connection of its own.
    pub max_connections: u32,
    /// Connections kept open while idle.
    pub min_connections: u32,
    /// Longest wait for a free connection, or for a new one to open,
    /// before an operation (or one write attempt) fails.
    pub acquire_timeout: Duration,
    /// Idle connections above `min_connections` are closed after this long.
    pub idle_timeout: Option<Duration>,
    /// Most queued operations one transaction takes.
    pub max_batch: usize,
    /// How often a failed batch is tried again before its runs are
    /// reported as not persisted (and their records spilled).
    pub write_retries: u32,
    /// The first retry's delay; it doubles each time, up to
    /// `retry_backoff_max`.
    pub retry_backoff: Duration,
    /// The longest delay between two attempts.
    pub retry_backoff_max: Duration,
    /// The longest one write attempt (its transaction and commit) may take
    /// on a database that accepts connections but does not answer.
    pub write_timeout: Duration,
    /// Where writes the database would not take are kept until the store
    /// is next opened: `None` for the default (beside a SQLite file; in
    /// the user's data directory for PostgreSQL).
    pub spill_dir: Option<PathBuf>,
    /// Whether to spill at all (on by default).
    pub spill: bool,
    /// How long this process's claim on a run lasts unless renewed (it
    /// renews every third of it): another process may take a run over
    /// once its lease has expired ([`Store::claim_expired`]). 15 s by
    /// default.
    pub lease: Duration,
    /// Who this store's runs and claims are recorded as (`owner`): `None`
    /// for this process's `host:pid`, which is also how a resume on this
    /// host tells a dead owner from a live one. Give each store in one
    /// process its own name if several of them must claim each other's
    /// runs (tests do).
    pub owner: Option<String>,
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
            retry_backoff_max: Duration::from_secs(5),
            write_timeout: Duration::from_secs(30),
            spill_dir: None,
            spill: true,
            lease: lease::DEFAULT_LEASE,
            owner: None,
        }
    }
}

impl StoreSettings {
    /// The sum of the retry delays (16.3 s by default): how long the writer
    /// keeps retrying a batch after its first failure when attempts fail
    /// fast (connection refused). Attempts that hang cannot stretch that
    /// past `give_up_after() + acquire_timeout` (21.3 s by default), plus
    /// the attempt in progress then (bounded by `acquire_timeout` to
    /// connect, `write_timeout` to write).
    pub fn give_up_after(&self) -> Duration {
        self.backoff().total(self.write_retries)
    }

    /// The writer's retry delays: `retry_backoff` doubling up to
    /// `retry_backoff_max`.
    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.retry_backoff, self.retry_backoff_max)
    }
}

/// What can go wrong talking to the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL is not one braid understands.
    #[error("unsupported store URL `{0}`: expected sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
    /// The folder of a SQLite store could not be created.
    #[error("cannot create the folder {path} for the store")]
    Directory {
        /// The folder.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// A store opened read-only (`?mode=ro`) that needs changes it cannot
    /// make, or an operation that writes on a read-only store.
    #[error("the store at {url} is read-only: {why}")]
    ReadOnly {
        /// The URL, with any password masked.
        url: String,
        /// What needed writing.
        why: String,
    },
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
    /// A [`PruneFilter`] that cannot be applied (what was expected, what
    /// was given).
    #[error("{0}")]
    InvalidFilter(String),
    /// No run's id is, or starts with, what was given.
    #[error("no run with id `{0}` (or an id starting with it) in the store")]
    NoSuchRun(String),
    /// Several runs' ids start with what was given.
    #[error(
        "`{given}` is the start of several runs' ids ({}{}); give more of the id",
        .candidates.join(", "),
        if .candidates.len() >= MAX_PREFIX_CANDIDATES { ", …" } else { "" }
    )]
    AmbiguousRun {
        /// What was given.
        given: String,
        /// Some of the ids it starts.
        candidates: Vec<String>,
    },
}

/// Most candidates an ambiguous run id prefix lists.
pub const MAX_PREFIX_CANDIDATES: usize = 5;

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
    /// `running`, `waiting`, `completed`, `failed`, `cancelled`,
    /// `interrupted`, or `abandoned`: `running` past its lease, with
    /// nobody renewing it (its owner is gone).
    pub status: String,
    /// Its checkpoint policy.
    pub checkpoint: String,
    /// When it started, in ms since the Unix epoch.
    pub created_at_ms: i64,
    /// Its makespan, once finished.
    pub makespan_ms: Option<f64>,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
    /// Who or what started it (`cli:USER@HOST`, `api`, a client's name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_by: Option<String>,
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
    /// How many times it was claimed (taken over or resumed).
    pub epoch: u64,
    /// While it runs: until when its owner's lease lasts (ms since the
    /// Unix epoch); `None` for runs from before leases, and ended ones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_until_ms: Option<i64>,
    /// The run's input.
    pub input: serde_json::Map<String, Value>,
    /// For a fork: the run it was forked from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    /// For a fork: what it re-ran from (`--from`, or the fields it set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forked_from: Option<String>,
    /// Runs forked from this one, oldest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub forks: Vec<String>,
    /// Each agent's record, with its writes if it completed.
    #[serde(skip)]
    pub agents: Vec<AgentRecord>,
}

impl StoredRun {
    /// The status as a [`RunStatus`], or `None` while it is `running`
    /// ([`braid_core::report::RUNNING`]).
    pub fn run_status(&self) -> Option<RunStatus> {
        self.summary.status.parse().ok()
    }

    /// Its state as recorded: the input plus each completed agent's writes,
    /// a later record's value winning. Exact only without merge fields or
    /// several writers of a field; with the unchanged pipeline at hand,
    /// [`braid_core::Pipeline::replay`] is (merge rules, topological order).
    pub fn recorded_state(&self) -> braid_core::report::ByName<Arc<Value>> {
        let mut state: braid_core::report::ByName<Arc<Value>> = self
            .input
            .iter()
            .map(|(k, v)| (Arc::from(k.as_str()), Arc::new(v.clone())))
            .collect();
        for agent in &self.agents {
            for (field, value) in &agent.writes {
                state.insert(field.clone(), value.clone());
            }
        }
        state
    }
}

/// A run's status and its agents' kept log lines: [`Store::run_logs`].
#[derive(Debug, Clone)]
pub struct RunLogs {
    /// The run's status (`running` while it runs).
    pub status: String,
    /// Each agent's record (status, attempts, `logs`, `logs_dropped`,
    /// `failures`; no timings), in the order the agents started.
    pub agents: Vec<(String, AgentReport)>,
}

impl RunSummary {
    /// How long ago the run was created (zero if its time is ahead of
    /// this machine's clock): a continued run's clock starts that long
    /// ago (see [`braid_core::RunOptions::resumed_after`]).
    pub fn age(&self) -> Duration {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        now.saturating_sub(Duration::from_millis(
            u64::try_from(self.created_at_ms).unwrap_or(0),
        ))
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
    /// Only runs whose id starts with this, case and all (`%`, `_` and
    /// `\` match themselves).
    pub id_prefix: Option<String>,
    /// Only runs created at or after this time (ms since the Unix epoch).
    pub since_ms: Option<i64>,
    /// Only runs created before this time (ms since the Unix epoch).
    pub until_ms: Option<i64>,
    /// Only runs listed after this one in the newest-first order: its
    /// `(created_at_ms, run id)`, the last row of the previous page.
    pub before: Option<(i64, String)>,
}

impl RunFilter {
    /// Whether `run` passes every filter but `limit`: what
    /// [`Store::list_runs`] selects, for callers listing runs held elsewhere
    /// (a server's runs in memory) the same way.
    pub fn matches(&self, run: &RunSummary) -> bool {
        self.status.as_ref().is_none_or(|s| *s == run.status)
            && self.pipeline.as_ref().is_none_or(|p| *p == run.pipeline)
            && self
                .id_prefix
                .as_ref()
                .is_none_or(|p| run.run_id.starts_with(p.as_str()))
            && self.since_ms.is_none_or(|t| run.created_at_ms >= t)
            && self.until_ms.is_none_or(|t| run.created_at_ms < t)
            && self.before.as_ref().is_none_or(|(at, id)| {
                (run.created_at_ms, run.run_id.as_str()) < (*at, id.as_str())
            })
    }
}

/// `prefix` as a `LIKE` pattern that matches only ids starting with it.
fn like_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// A connected, migrated store with its background writer.
pub struct Store {
    pool: AnyPool,
    url: String,
    backend: Backend,
    writer: Arc<writer::Writer>,
    settings: StoreSettings,
    read_only: bool,
    spill: Option<PathBuf>,
    replayed: Option<Replay>,
    cache: Arc<cache::StoreCache>,
}

/// What opening a store did with the writes an earlier process could not
/// deliver (its spill file).
#[derive(Debug, Clone, Serialize)]
pub struct Replay {
    /// The spill file.
    pub path: PathBuf,
    /// Operations written to the store.
    pub written: usize,
    /// Operations left out because the store held newer records of
    /// their runs.
    pub skipped: usize,
    /// The runs they belonged to.
    pub runs: usize,
    /// Why the replay failed, if it did (the file is then kept for the
    /// next open).
    pub error: Option<String>,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Whether a SQLite URL asks for a read-only connection.
fn sqlite_read_only(url: &str) -> bool {
    url.split_once('?').is_some_and(|(_, query)| {
        query
            .split('&')
            .any(|kv| matches!(kv, "mode=ro" | "immutable=1" | "immutable=true"))
    })
}

/// One connection to the store, set up as the pool's are (SQLite: WAL,
/// NORMAL sync, a busy timeout). Used for the probe and by the writer.
pub(crate) async fn connect_one(
    url: &str,
    backend: Backend,
) -> Result<sqlx::AnyConnection, sqlx::Error> {
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(url).await?;
    if backend == Backend::Sqlite {
        use sqlx::Executor;
        setup_sqlite(&mut conn, sqlite_read_only(url)).await?;
        // Reading the schema makes SQLite read the file's header: a file
        // that is not a database fails here, with the driver's reason.
        conn.execute("SELECT count(*) FROM sqlite_master").await?;
    }
    Ok(conn)
}

async fn setup_sqlite(conn: &mut sqlx::AnyConnection, read_only: bool) -> Result<(), sqlx::Error> {
    use sqlx::Executor;
    // Wait for locks instead of failing, first: switching a new file to
    // WAL takes a lock that another process opening the same new store
    // may hold at that moment (batch jobs started side by side), and
    // without the timeout set the switch fails at once with "database is
    // locked". WAL lets readers and the writer work at once; NORMAL syncs
    // at checkpoints, durable across process crashes. A read-only
    // connection cannot change the journal mode.
    conn.execute("PRAGMA busy_timeout = 5000;").await?;
    if !read_only {
        conn.execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
            .await?;
    }
    Ok(())
}

/// Why a SQLite file could not be opened for writing, as the system says
/// it (a read-only file system, say), when SQLite's own words are vague.
fn sqlite_write_problem(path: &Path) -> Option<String> {
    if path.exists() {
        let err = std::fs::OpenOptions::new().write(true).open(path).err()?;
        return Some(format!("{}: {err}", path.display()));
    }
    // A new store: can its folder take a file?
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty())?;
    let probe = dir.join(format!(".braid-write-check-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            None
        }
        Err(err) => Some(format!("{}: {err}", dir.display())),
    }
}

impl Store {
    /// Opens the store at `url` (`sqlite://PATH`, created if missing, or
    /// `postgres://…`), applies pending migrations, replays the writes an
    /// earlier process spilled, and starts the writer. `sqlite://PATH?mode=ro`
    /// opens a SQLite store read-only, for reading history (no migration;
    /// every write fails). Must be called inside a Tokio runtime.
    pub async fn connect(url: &str, settings: &StoreSettings) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let masked = mask_password(url);
        let mut read_only = false;
        let mut sqlite_path = None;
        let (backend, mut url) = if let Some(rest) = url.strip_prefix("sqlite:") {
            let path = rest.trim_start_matches("//");
            let path = path.split('?').next().unwrap_or(path);
            if path.contains(":memory:") || path.is_empty() {
                return Err(StoreError::UnsupportedUrl(format!(
                    "{masked} (an in-memory database would vanish with each pooled connection; give a file)"
                )));
            }
            read_only = sqlite_read_only(url);
            if let Some(dir) = Path::new(path).parent()
                && !dir.as_os_str().is_empty()
                && !read_only
            {
                std::fs::create_dir_all(dir).map_err(|source| StoreError::Directory {
                    path: dir.to_owned(),
                    source,
                })?;
            }
            sqlite_path = Some(PathBuf::from(path));
            let url = if url.contains('?') {
                url.to_owned()
            } else {
                format!("{url}?mode=rwc")
            };
            (Backend::Sqlite, url)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_owned())
        } else if !url.contains("://") {
            // A bare path: say how to write it rather than that it does
            // not parse (a path has no password to hide).
            return Err(StoreError::UnsupportedUrl(format!(
                "{url} (a path is not a store URL: for a SQLite file, write sqlite://{url})"
            )));
        } else {
            return Err(StoreError::UnsupportedUrl(masked));
        };
        // One direct connection first, set up as the pool's will be: a pool
        // that cannot connect only says it timed out, while the driver says
        // why (refused, unknown host, bad password, missing database, not
        // a database, read-only).
        let mut probe = tokio::time::timeout(settings.acquire_timeout, connect_one(&url, backend))
            .await
            .unwrap_or_else(|_| Err(sqlx::Error::PoolTimedOut));
        if read_only && backend == Backend::Sqlite && probe.is_err() && !url.contains("immutable=")
        {
            // A WAL database on read-only media cannot be opened for
            // reading unless SQLite is told nobody will change it.
            let immutable = format!("{url}&immutable=true");
            if let Ok(Ok(conn)) =
                tokio::time::timeout(settings.acquire_timeout, connect_one(&immutable, backend))
                    .await
            {
                url = immutable;
                probe = Ok(conn);
            }
        }
        match probe {
            Ok(conn) => {
                let _ = sqlx::Connection::close(conn).await;
                // Reading can succeed where writing cannot: a database on
                // media remounted read-only opens and reads while its WAL
                // files are still there. Say so now, not after the run.
                if backend == Backend::Sqlite
                    && !read_only
                    && let Some(path) = &sqlite_path
                    && let Some(why) = sqlite_write_problem(path)
                {
                    return Err(StoreError::ReadOnly {
                        url: masked,
                        why: format!("{why}; open it with ?mode=ro to read its runs"),
                    });
                }
            }
            Err(source) => {
                if backend == Backend::Sqlite
                    && !read_only
                    && let Some(path) = &sqlite_path
                    && let Some(why) = sqlite_write_problem(path)
                {
                    return Err(StoreError::ReadOnly {
                        url: masked,
                        why: format!("{why} ({source}); open it with ?mode=ro to read its runs"),
                    });
                }
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
                        setup_sqlite(conn, read_only).await?;
                    }
                    Ok(())
                })
            })
            .connect_lazy(&url)
            .map_err(|source| StoreError::Connect {
                url: masked.clone(),
                source,
            })?;
        if read_only {
            check_schema(&pool, &masked).await?;
        } else {
            migrate(&pool, backend, &masked).await?;
        }
        let spill = (settings.spill && !read_only).then(|| {
            let dir = match (&settings.spill_dir, &sqlite_path) {
                (Some(dir), _) => dir.clone(),
                (None, Some(path)) => path
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .map_or_else(|| PathBuf::from("."), Path::to_owned),
                (None, None) => dirs_data_dir().join("braid"),
            };
            // One file per store: a SQLite store by its file's real path,
            // whatever URL named it; PostgreSQL by its URL.
            let identity = match &sqlite_path {
                Some(path) => std::fs::canonicalize(path)
                    .unwrap_or_else(|_| path.clone())
                    .display()
                    .to_string(),
                None => masked.clone(),
            };
            spill::path_for(&dir, &identity)
        });
        let target = writer::Target {
            url,
            masked: masked.clone(),
            backend,
            spill: spill.clone(),
        };
        let replayed = match &spill {
            Some(path) => replay(&target, settings, path).await,
            None => None,
        };
        let writer = writer::Writer::start(target, settings.clone());
        if !read_only {
            tokio::spawn(lease::renew_forever(
                Arc::downgrade(writer.leases()),
                pool.clone(),
                backend,
            ));
        }
        let cache = Arc::new(cache::StoreCache::start(
            pool.clone(),
            backend,
            writer.clone(),
            read_only,
        ));
        Ok(Self {
            cache,
            pool,
            url: masked,
            backend,
            writer,
            settings: settings.clone(),
            read_only,
            spill,
            replayed,
        })
    }

    /// Whether the store was opened read-only (`?mode=ro`).
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The file where writes the database would not take are kept.
    pub fn spill_path(&self) -> Option<&Path> {
        self.spill.as_deref()
    }

    /// What opening the store did with an earlier process's spill file,
    /// if there was one.
    pub fn replayed(&self) -> Option<&Replay> {
        self.replayed.as_ref()
    }

    /// The settings the store was opened with.
    pub fn settings(&self) -> &StoreSettings {
        &self.settings
    }

    /// Stops trying the database: what the writer holds and everything
    /// queued from now on goes to the spill file at once (then
    /// [`Store::flush_run`] answers). For a process that must exit now.
    pub fn abandon(&self) {
        self.writer.abandon();
    }

    /// While the writer is retrying a failed batch: why its last attempt
    /// failed.
    pub fn retrying(&self) -> Option<String> {
        self.writer.retrying()
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

    /// The store's agent cache (`braid_cache`), for runs of pipelines with
    /// cached agents ([`RunOptions::cache`](braid_core::RunOptions::cache)):
    /// lookups read through the pool, all those waiting in one query;
    /// results are kept through the writer (never blocking); entries past
    /// their `ttl` are never returned.
    /// Shared by every braid on the store.
    pub fn cache(&self) -> Arc<dyn braid_core::AgentCache> {
        self.cache.clone()
    }

    /// Deletes cached results: every one, or `agent`'s only (by its name,
    /// as `braid_cache.agent` holds it). For when what the key does not
    /// cover changed, such as a command agent's program. Waits for
    /// results queued before it to be written first, so none outlives it.
    /// Returns how many entries were deleted.
    pub async fn clear_cache(&self, agent: Option<&str>) -> Result<u64, StoreError> {
        if self.read_only {
            return Err(self.read_only_error("clearing the cache deletes"));
        }
        // Entries still queued would come back after the delete. (A flush
        // for no run: other runs' failures stay for their own flush.)
        let _ = self.writer.flush(Some("")).await;
        let done = match agent {
            None => {
                sqlx::query("DELETE FROM braid_cache")
                    .execute(&self.pool)
                    .await?
            }
            Some(agent) => {
                sqlx::query("DELETE FROM braid_cache WHERE agent = $1")
                    .bind(agent.to_owned())
                    .execute(&self.pool)
                    .await?
            }
        };
        Ok(done.rows_affected())
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
    /// process, its status to `running`, adds one to its epoch (so its
    /// previous owner's late writes are refused) and leases it, but only if
    /// it is still as `seen` (same status, owner and epoch), so two resumes
    /// cannot both win. An `abandoned` run is a `running` one whose lease
    /// expired.
    pub async fn claim(&self, seen: &StoredRun) -> Result<bool, StoreError> {
        if self.read_only {
            return Err(self.read_only_error("a resume claims its run"));
        }
        let leases = self.writer.leases();
        let status = match seen.summary.status.as_str() {
            ABANDONED => braid_core::report::RUNNING,
            status => status,
        };
        let mut conn = acquire(&self.pool, "store").await?;
        let done = sqlx::query(
            "UPDATE braid_runs SET status = 'running', owner = $1, epoch = epoch + 1,
                    lease_until_ms = $6
             WHERE id = $2 AND status = $3 AND COALESCE(owner, '') = $4 AND epoch = $5",
        )
        .bind(self.writer.owner().to_owned())
        .bind(seen.summary.run_id.clone())
        .bind(status.to_owned())
        .bind(seen.owner.clone().unwrap_or_default())
        .bind(i64::try_from(seen.epoch).unwrap_or(i64::MAX))
        .bind(leases.until_ms())
        .execute(&mut *conn)
        .await;
        match done {
            Ok(done) if done.rows_affected() == 1 => {
                leases.claimed(&seen.summary.run_id, seen.epoch + 1);
                Ok(true)
            }
            Ok(_) => Ok(false),
            Err(error) => {
                // Never handed out again after an error.
                let _ = conn.close().await;
                Err(error.into())
            }
        }
    }

    fn read_only_error(&self, why: &str) -> StoreError {
        StoreError::ReadOnly {
            url: self.url.clone(),
            why: format!("{why}, and it was opened with ?mode=ro"),
        }
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

    /// The id of the run `given` names: its whole id, or the start of
    /// exactly one run's id (at least 4 characters; run ids are UUIDv7,
    /// whose first 12 hex digits are the time, so runs started close
    /// together need more).
    pub async fn resolve_run_id(&self, given: &str) -> Result<String, StoreError> {
        let exact = sqlx::query("SELECT id FROM braid_runs WHERE id = $1")
            .bind(given)
            .fetch_optional(&self.pool)
            .await?;
        if exact.is_some() {
            return Ok(given.to_owned());
        }
        // Only hex digits and dashes: nothing LIKE could read as a pattern.
        let usable = given.len() >= 4
            && given.len() <= 36
            && given.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
        if !usable {
            return Err(StoreError::NoSuchRun(given.to_owned()));
        }
        let rows = sqlx::query("SELECT id FROM braid_runs WHERE id LIKE $1 ORDER BY id LIMIT $2")
            .bind(format!("{}%", given.to_ascii_lowercase()))
            .bind(MAX_PREFIX_CANDIDATES as i64)
            .fetch_all(&self.pool)
            .await?;
        let mut ids: Vec<String> = rows
            .iter()
            .map(|r| r.try_get("id"))
            .collect::<Result<_, _>>()?;
        match ids.len() {
            0 => Err(StoreError::NoSuchRun(given.to_owned())),
            1 => Ok(ids.remove(0)),
            _ => Err(StoreError::AmbiguousRun {
                given: given.to_owned(),
                candidates: ids,
            }),
        }
    }

    /// Runs, newest first (by creation time, then id), as `filter` selects.
    pub async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunSummary>, StoreError> {
        let (before_ms, before_id) = match &filter.before {
            Some((at, id)) => (Some(*at), Some(id.clone())),
            None => (None, None),
        };
        let rows = sqlx::query(
            "SELECT id, pipeline, status, checkpoint, created_at_ms, makespan_ms, error, started_by,
                    lease_until_ms
             FROM braid_runs
             WHERE (CAST($1 AS TEXT) IS NULL OR status = $1)
               AND (CAST($10 AS BIGINT) IS NULL
                    OR (lease_until_ms IS NOT NULL AND lease_until_ms < $10))
               AND (CAST($11 AS BIGINT) IS NULL
                    OR lease_until_ms IS NULL OR lease_until_ms >= $11)
               AND (CAST($2 AS TEXT) IS NULL OR pipeline = $2)
               AND (CAST($4 AS TEXT) IS NULL
                    OR (id LIKE $4 ESCAPE '\\'
                        AND substr(id, 1, length(CAST($9 AS TEXT))) = CAST($9 AS TEXT)))
               AND (CAST($5 AS BIGINT) IS NULL OR created_at_ms >= $5)
               AND (CAST($6 AS BIGINT) IS NULL OR created_at_ms < $6)
               AND (CAST($7 AS BIGINT) IS NULL
                    OR created_at_ms < $7
                    OR (created_at_ms = $7 AND id < $8))
             ORDER BY created_at_ms DESC, id DESC
             LIMIT $3",
        )
        // `abandoned` is `running` past its lease; `running` is not that.
        .bind(match filter.status.as_deref() {
            Some(ABANDONED) => Some(braid_core::report::RUNNING.to_owned()),
            other => other.map(str::to_owned),
        })
        .bind(filter.pipeline.clone())
        .bind(filter.limit.unwrap_or(50).max(1))
        .bind(filter.id_prefix.as_deref().map(like_prefix))
        .bind(filter.since_ms)
        .bind(filter.until_ms)
        .bind(before_ms)
        .bind(before_id)
        // SQLite's LIKE ignores ASCII case: the prefix is compared as is too.
        .bind(filter.id_prefix.clone())
        .bind((filter.status.as_deref() == Some(ABANDONED)).then(clock::now_ms))
        .bind((filter.status.as_deref() == Some(braid_core::report::RUNNING)).then(clock::now_ms))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(summary).collect()
    }

    /// A run's status and each agent's kept log lines, in the order the
    /// agents started (what `braid runs logs` reads, and reads again while
    /// it follows a run): no writes are loaded. `None` if there is no
    /// such run.
    pub async fn run_logs(&self, run_id: &str) -> Result<Option<RunLogs>, StoreError> {
        let Some(status) =
            sqlx::query_scalar::<_, String>("SELECT status FROM braid_runs WHERE id = $1")
                .bind(run_id)
                .fetch_optional(&self.pool)
                .await?
        else {
            return Ok(None);
        };
        let mut agents = Vec::new();
        for a in sqlx::query(
            "SELECT agent, status, attempts, details FROM braid_agent_runs WHERE run_id = $1
             ORDER BY COALESCE(start_ms, 1e18), agent",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?
        {
            let status: String = a.try_get("status")?;
            let status: AgentStatus = status
                .parse()
                .map_err(|e: String| StoreError::Corrupt(format!("run {run_id}: {e}")))?;
            let attempts: i64 = a.try_get("attempts")?;
            let mut report = AgentReport {
                attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                ..AgentReport::new(status)
            };
            details::from_column(a.try_get("details")?, &mut report);
            agents.push((a.try_get("agent")?, report));
        }
        Ok(Some(RunLogs { status, agents }))
    }

    /// One run with its agents' records and writes, or `None`.
    pub async fn get_run(&self, run_id: &str) -> Result<Option<StoredRun>, StoreError> {
        let Some(row) = sqlx::query(
            "SELECT id, pipeline, status, checkpoint, created_at_ms, makespan_ms, error, started_by,
                    pipeline_hash, pipeline_path, owner, input, parent_id, forked_from,
                    lease_until_ms, epoch
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
        let mut deltas = self.deltas_of(run_id).await?;
        let mut sources: HashMap<String, IndexMap<String, Vec<FieldValue>>> = HashMap::new();
        let mut agents = Vec::new();
        for a in sqlx::query(
            "SELECT agent, status, attempts, start_ms, duration_ms, queue_ms, error, reason,
                    definition_hash, source_run, deadline_ms, details
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
            let mut report = AgentReport {
                start_ms: a.try_get("start_ms")?,
                duration_ms: a.try_get("duration_ms")?,
                queue_ms: a.try_get("queue_ms")?,
                attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                error: a.try_get("error")?,
                reason: a.try_get("reason")?,
                reused_from: a.try_get("source_run")?,
                deadline_ms: a.try_get("deadline_ms")?,
                ..AgentReport::new(status)
            };
            details::from_column(a.try_get("details")?, &mut report);
            let writes = match (&report.reused_from, status) {
                // A fork's kept agent: its writes are its source run's.
                (Some(source), AgentStatus::Completed) => {
                    if !sources.contains_key(source) {
                        let loaded = self.deltas_of(source).await?;
                        sources.insert(source.clone(), loaded);
                    }
                    sources
                        .get_mut(source)
                        .and_then(|d| d.get(&agent).cloned())
                        .unwrap_or_default()
                }
                (None, AgentStatus::Completed) => deltas.shift_remove(&agent).unwrap_or_default(),
                _ => Vec::new(),
            };
            let definition: Option<String> = a.try_get("definition_hash")?;
            agents.push(AgentRecord {
                agent: Arc::from(agent.as_str()),
                report,
                writes,
                definition: definition.map(|d| Arc::from(d.as_str())),
            });
        }
        let forks = sqlx::query_scalar(
            "SELECT id FROM braid_runs WHERE parent_id = $1 ORDER BY created_at_ms, id LIMIT 1000",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(Some(StoredRun {
            summary: summary(&row)?,
            pipeline_hash: row.try_get("pipeline_hash")?,
            pipeline_path: row.try_get("pipeline_path")?,
            owner: row.try_get("owner")?,
            epoch: u64::try_from(row.try_get::<i64, _>("epoch")?).unwrap_or(0),
            lease_until_ms: row.try_get("lease_until_ms")?,
            input,
            parent_id: row.try_get("parent_id")?,
            forked_from: row.try_get("forked_from")?,
            forks,
            agents,
        }))
    }

    /// A run's deltas, by agent.
    async fn deltas_of(
        &self,
        run_id: &str,
    ) -> Result<IndexMap<String, Vec<FieldValue>>, StoreError> {
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
        Ok(deltas)
    }

    /// Stores a run's event stream: `(seq, event as JSON)`, in order. A
    /// resumed run's events continue the numbering and are added.
    pub async fn save_events(
        &self,
        run_id: &str,
        events: &[(u64, String)],
    ) -> Result<(), StoreError> {
        if self.read_only {
            return Err(self.read_only_error("saving events writes"));
        }
        if self.is_deposed(run_id) {
            // Its stream is its new owner's now.
            return Ok(());
        }
        let mut conn = acquire(&self.pool, "store").await?;
        let saved = async {
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
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
            // The commit's outcome is the transaction's.
            tx.commit().await
        }
        .await;
        if let Err(error) = saved {
            // A failed COMMIT can leave the driver's transaction depth out
            // of step: the connection is closed, never reused.
            let _ = conn.close().await;
            return Err(error.into());
        }
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

    /// Overwrites a run's status, e.g. [`RunStatus::Interrupted`] for a
    /// run a server stopped on shutdown (it can be resumed).
    /// A run another process claimed since (see [`Store::deposed`]) is
    /// left alone, and one this process holds only at its epoch.
    pub async fn set_status(&self, run_id: &str, status: RunStatus) -> Result<(), StoreError> {
        let epoch = match self.writer.leases().get(run_id) {
            Some(lease::Held::Deposed) => return Ok(()),
            Some(lease::Held::Epoch(e)) => Some(i64::try_from(e).unwrap_or(i64::MAX)),
            _ => None,
        };
        sqlx::query(
            "UPDATE braid_runs SET status = $1
             WHERE id = $2 AND (CAST($3 AS BIGINT) IS NULL OR epoch = $3)",
        )
        .bind(status.as_str())
        .bind(run_id.to_owned())
        .bind(epoch)
        .execute(&self.pool)
        .await?;
        // Not running any more: nothing of it to renew.
        self.writer.leases().ended(run_id);
        Ok(())
    }

    /// Flushes, then closes the pool.
    pub async fn close(self) -> Result<(), PersistError> {
        let flushed = self.flush().await;
        self.pool.close().await;
        flushed
    }
}

/// The waits between tries when migrating races another process (SQLite).
const MIGRATE_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(20), Duration::from_millis(160));

/// Brings the schema up to date.
async fn migrate(pool: &AnyPool, backend: Backend, masked: &str) -> Result<(), StoreError> {
    // PostgreSQL serialises migrators with an advisory lock; SQLite has
    // none, so two processes opening a new file at once can both try the
    // first migration. The loser's transaction rolls back whole; trying
    // again finds it applied.
    let mut tried = 0;
    loop {
        tried += 1;
        match MIGRATOR.run(pool).await {
            Ok(()) => return Ok(()),
            Err(err) if backend == Backend::Sqlite && tried < 5 && !migrate_is_final(&err) => {
                tracing::debug!(error = %err, "migrating raced another process; trying again");
                tokio::time::sleep(MIGRATE_BACKOFF.delay(tried)).await;
            }
            Err(source) => {
                return Err(StoreError::Migrate {
                    url: masked.to_owned(),
                    source,
                });
            }
        }
    }
}

/// A migration error that trying again cannot cure (read-only, corrupt).
fn migrate_is_final(err: &sqlx::migrate::MigrateError) -> bool {
    match err {
        sqlx::migrate::MigrateError::Execute(e) => writer::permanent(Backend::Sqlite, e),
        _ => false,
    }
}

/// For a read-only store: every migration braid knows must be applied.
async fn check_schema(pool: &AnyPool, masked: &str) -> Result<(), StoreError> {
    let applied: Vec<i64> =
        match sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await
        {
            Ok(versions) => versions,
            Err(e) => {
                return Err(StoreError::ReadOnly {
                    url: masked.to_owned(),
                    why: format!("it holds no braid schema to read ({e})"),
                });
            }
        };
    if let Some(missing) = MIGRATOR.iter().find(|m| !applied.contains(&m.version)) {
        return Err(StoreError::ReadOnly {
            url: masked.to_owned(),
            why: format!(
                "its schema lacks migration {} ({}), which a read-only store cannot apply; \
                 open it read-write once",
                missing.version, missing.description
            ),
        });
    }
    Ok(())
}

/// Writes what an earlier process spilled for this store, in order, in
/// transactions of at most `max_batch` operations; removes the file when
/// all is written. A spilled operation is left out when the store holds a
/// newer record of its run (written by another process since).
async fn replay(target: &writer::Target, settings: &StoreSettings, path: &Path) -> Option<Replay> {
    let file = path.to_owned();
    let taken = tokio::task::spawn_blocking(move || spill::take(&file))
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    let mut report = Replay {
        path: path.to_owned(),
        written: 0,
        skipped: 0,
        runs: 0,
        error: None,
    };
    let mut taken = match taken {
        Ok(Some(taken)) => taken,
        Ok(None) => return None,
        Err(e) => {
            report.error = Some(e);
            return Some(report);
        }
    };
    let lines = std::mem::take(&mut taken.lines);
    match replay_lines(target, settings, lines, &mut report).await {
        Ok(()) => {
            let done = tokio::task::spawn_blocking(move || taken.done()).await;
            if let Ok(Err(e)) = done {
                report.error = Some(format!("replayed, but cannot remove the file: {e}"));
            }
            tracing::info!(
                file = %report.path.display(),
                written = report.written,
                skipped = report.skipped,
                "replayed spilled checkpoints"
            );
        }
        Err(e) => {
            tracing::warn!(file = %report.path.display(), error = %e, "cannot replay spilled checkpoints yet");
            report.error = Some(e);
        }
    }
    Some(report)
}

async fn replay_lines(
    target: &writer::Target,
    settings: &StoreSettings,
    lines: Vec<spill::Line>,
    report: &mut Replay,
) -> Result<(), String> {
    let mut conn = tokio::time::timeout(
        settings.acquire_timeout,
        connect_one(&target.url, target.backend),
    )
    .await
    .map_err(|_| "the store did not answer".to_owned())?
    .map_err(|e| e.to_string())?;
    let mut newest: std::collections::HashMap<String, Option<i64>> = Default::default();
    let mut ops = Vec::new();
    for line in lines {
        let at_ms = line.at_ms;
        let owner = line.owner;
        let op = line.op.op();
        let Some(id) = op.run_id().map(str::to_owned) else {
            continue;
        };
        if !newest.contains_key(&id) {
            let updated: Option<i64> =
                sqlx::query_scalar("SELECT updated_at_ms FROM braid_runs WHERE id = $1")
                    .bind(id.clone())
                    .fetch_optional(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
            newest.insert(id.clone(), updated);
        }
        if newest[&id].is_some_and(|updated| updated > at_ms) {
            report.skipped += 1;
        } else {
            ops.push((owner, op));
        }
    }
    report.runs = newest.len();
    // Every delta of a spilled run goes out again with its final record.
    let lost: std::collections::HashSet<Arc<str>> =
        newest.keys().map(|id| Arc::from(id.as_str())).collect();
    // In order, in transactions of one process's consecutive operations
    // (so each run keeps the owner that ran it), at most `max_batch` each.
    let this = writer::this_owner();
    let mut ops = ops.into_iter().peekable();
    while let Some((owner, op)) = ops.next() {
        let mut batch = vec![op];
        while batch.len() < settings.max_batch.max(1)
            && let Some((_, op)) = ops.next_if(|(next, _)| *next == owner)
        {
            batch.push(op);
        }
        let owner = if owner.is_empty() { &this } else { &owner };
        let fence = writer::Fence::Replay(settings.lease);
        if let Err(e) =
            writer::write_batch(&mut conn, target.backend, &batch, owner, &lost, fence).await
        {
            let _ = sqlx::Connection::close(conn).await;
            return Err(e.to_string());
        }
        report.written += batch.len();
    }
    let _ = sqlx::Connection::close(conn).await;
    Ok(())
}

/// How a `running` run whose lease expired with nobody renewing it is
/// shown (its stored status stays `running`, so that it can be claimed).
pub const ABANDONED: &str = "abandoned";

/// The status as shown: `abandoned` for a `running` run past its lease.
fn shown_status(status: String, lease_until_ms: Option<i64>, now_ms: i64) -> String {
    if status == braid_core::report::RUNNING && lease_until_ms.is_some_and(|t| t < now_ms) {
        ABANDONED.to_owned()
    } else {
        status
    }
}

fn summary(row: &AnyRow) -> Result<RunSummary, StoreError> {
    Ok(RunSummary {
        run_id: row.try_get("id")?,
        pipeline: row.try_get("pipeline")?,
        status: shown_status(
            row.try_get("status")?,
            row.try_get("lease_until_ms")?,
            clock::now_ms(),
        ),
        checkpoint: row.try_get("checkpoint")?,
        created_at_ms: row.try_get("created_at_ms")?,
        makespan_ms: row.try_get("makespan_ms")?,
        error: row.try_get("error")?,
        started_by: row.try_get("started_by")?,
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
