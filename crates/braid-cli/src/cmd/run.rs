//! `braid run`: one run of a pipeline, with a live progress display on a
//! terminal and a per-agent table (or one JSON object) at the end.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use braid_core::event::{EventLevel, EventSink};
use braid_core::{CheckpointPolicy, Pipeline, RunOptions, RunReport, RunStatus, ValidInput};
use braid_store::{Store, StoreSettings};
use clap::{Args, ValueEnum};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::exit;

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The pipeline file (YAML or JSON).
    file: PathBuf,
    /// The run's input: a JSON object, @FILE to read it from a file, or
    /// @- to read it from stdin.
    #[arg(long, short)]
    input: Option<String>,
    /// Run one agent at a time in topological order (the baseline).
    #[arg(long)]
    sequential: bool,
    /// Most agents in flight (overrides the pipeline's `concurrency`; at
    /// least 1: --sequential runs one at a time).
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    concurrency: Option<usize>,
    /// When to write the run to the store: `none`, `end` (the default,
    /// unless the pipeline sets `checkpoint:`) or `agent` (resumable).
    #[arg(long, value_parser = ["none", "end", "agent"])]
    checkpoint: Option<String>,
    #[command(flatten)]
    pub(crate) dispatch: DispatchArgs,
    /// Write the run's metrics (Prometheus text format) to this file: for
    /// batch jobs, which have no /metrics to scrape.
    #[arg(long)]
    metrics_file: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) display: DisplayArgs,
    #[command(flatten)]
    pub(crate) cache: CacheArgs,
    #[command(flatten)]
    pub(crate) store: StoreArgs,
}

/// Where agents execute: here, or on `braid worker`s (`--nats`).
#[derive(Debug, Args)]
pub(crate) struct DispatchArgs {
    /// Send agents to `braid worker`s through this NATS server (with
    /// JetStream) instead of running them in this process; the run and its
    /// scheduling stay here.
    #[arg(long, env = "BRAID_NATS", value_name = "URL")]
    pub(crate) nats: Option<String>,
}

impl DispatchArgs {
    /// Sends `pipeline`'s agents to workers when `--nats` was given, with
    /// run epochs from `store`'s leases.
    pub(crate) async fn apply(
        &self,
        pipeline: &mut Pipeline,
        store: Option<&Store>,
    ) -> anyhow::Result<()> {
        if let Some(url) = &self.nats {
            let prepare = dispatch_to(url, store).await?;
            (prepare.0)(pipeline).map_err(anyhow::Error::msg)?;
        }
        Ok(())
    }
}

/// Whether cached agents use the store's cache.
#[derive(Debug, Args)]
pub(crate) struct CacheArgs {
    /// Run every agent: agents with `cache:` neither reuse a stored result
    /// nor store theirs.
    #[arg(long)]
    pub(crate) no_cache: bool,
}

impl CacheArgs {
    /// Whether a run of `pipeline` needs the store for its cache.
    pub(crate) fn wanted(&self, pipeline: &Pipeline) -> bool {
        !self.no_cache && pipeline.uses_cache()
    }

    /// The cache a run of `pipeline` uses: the store's, unless
    /// `--no-cache` (or nothing in it is cached).
    pub(crate) fn of(
        &self,
        pipeline: &Pipeline,
        store: Option<&Store>,
    ) -> Option<std::sync::Arc<dyn braid_core::AgentCache>> {
        store.filter(|_| self.wanted(pipeline)).map(Store::cache)
    }
}

/// How a run is shown.
#[derive(Debug, Args)]
pub(crate) struct DisplayArgs {
    /// `text`: a per-agent table; `json`: exactly one JSON object on stdout.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub(crate) output: Output,
    /// No live progress display, even on a terminal.
    #[arg(long)]
    no_progress: bool,
    /// Also write the pipeline's `output:` field (or the whole state) and
    /// a per-agent timeline, as Markdown, to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Leave each `foreach` agent's per-instance entries out of the report
    /// (its counts by status stay): a fan-out over many elements then
    /// reports in a few lines.
    #[arg(long)]
    pub(crate) no_instances: bool,
    /// Print agents' log lines (a command agent's stderr, an LLM agent's
    /// streamed text) on stderr as they come, each after its agent's name.
    #[arg(long, short)]
    pub(crate) verbose: bool,
}

/// Where runs are stored, and the connection pool's limits.
#[derive(Debug, Args)]
pub(crate) struct StoreArgs {
    /// sqlite://PATH or postgres://USER:PASSWORD@HOST/DB
    /// [default: sqlite://$XDG_DATA_HOME/braid/braid.db]
    #[arg(global = true, long, env = "BRAID_STORE")]
    store: Option<String>,
    /// Most open database connections.
    #[arg(global = true, long, default_value_t = 8)]
    db_max_connections: u32,
    /// Connections kept open while idle.
    #[arg(global = true, long, default_value_t = 0)]
    db_min_connections: u32,
    /// Longest wait for a free connection.
    #[arg(global = true, long, default_value = "5s", value_parser = humantime::parse_duration)]
    db_acquire_timeout: Duration,
    /// Idle connections above the minimum close after this long.
    #[arg(global = true, long, default_value = "10m", value_parser = humantime::parse_duration)]
    db_idle_timeout: Duration,
    /// How often a failed write is tried again (backoff from 100 ms,
    /// doubling up to 5 s: 16.3 s in all with the default 8) before the
    /// run is reported as not saved and its records are spilled.
    #[arg(global = true, long, default_value_t = 8)]
    db_write_retries: u32,
    /// The longest one write attempt may take on a database that accepts
    /// connections but does not answer.
    #[arg(global = true, long, default_value = "30s", value_parser = humantime::parse_duration)]
    db_write_timeout: Duration,
    /// Where writes the store would not take are kept (JSON lines) until
    /// braid next opens it [default: beside a SQLite store's file; the
    /// data directory's `braid` folder for PostgreSQL].
    #[arg(global = true, long, env = "BRAID_SPILL_DIR")]
    spill_dir: Option<PathBuf>,
    /// How long this process's claim on a run it runs lasts unless renewed
    /// (renewed every third of it). Once a run's lease has expired it shows
    /// as `abandoned`, and a `braid serve` on the same store takes it over
    /// (runs checkpointed per agent): keep it well above the longest pause
    /// this process or its database may take.
    #[arg(global = true, long, env = "BRAID_LEASE", default_value = "15s",
          value_parser = parse_lease)]
    pub(crate) lease: Duration,
}

/// `--lease`: a duration of at least 300 ms.
fn parse_lease(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(lease) if lease >= Duration::from_millis(300) => Ok(lease),
        Ok(_) => Err(format!(
            "expected a lease of at least 300ms (15s is the default), found `{text}`"
        )),
        Err(e) => Err(format!(
            "expected a duration such as 15s or 1m, found `{text}` ({e})"
        )),
    }
}

impl StoreArgs {
    /// Connects, or explains which store could not be opened.
    /// The store, unless `no_store` (`--no-store`: no database at all).
    pub(crate) async fn open_unless(
        &self,
        no_store: bool,
    ) -> anyhow::Result<Option<std::sync::Arc<Store>>> {
        if no_store {
            return Ok(None);
        }
        Ok(Some(std::sync::Arc::new(self.open().await?)))
    }

    pub(crate) async fn open(&self) -> anyhow::Result<Store> {
        let url = self.store.clone().unwrap_or_else(braid_store::default_url);
        let settings = StoreSettings {
            max_connections: self.db_max_connections,
            min_connections: self.db_min_connections,
            acquire_timeout: self.db_acquire_timeout,
            idle_timeout: Some(self.db_idle_timeout),
            write_retries: self.db_write_retries,
            write_timeout: self.db_write_timeout,
            spill_dir: self.spill_dir.clone(),
            lease: self.lease,
            ..StoreSettings::default()
        };
        let store = Store::connect(&url, &settings).await?;
        // Writes an earlier braid could not deliver were replayed on open.
        if let Some(replay) = store.replayed() {
            match &replay.error {
                None => eprintln!(
                    "braid: replayed {} saved write(s) of {} run(s) from {} into {}{}",
                    replay.written,
                    replay.runs,
                    replay.path.display(),
                    store.url(),
                    match replay.skipped {
                        0 => String::new(),
                        n => format!(" ({n} left out: the store had newer records of their runs)"),
                    }
                ),
                Some(error) => eprintln!(
                    "braid: writes kept in {} could not be replayed into {} yet: {error}",
                    replay.path.display(),
                    store.url()
                ),
            }
        }
        Ok(store)
    }

    /// Connects to a store `braid` will write to: a read-only one is refused.
    pub(crate) async fn open_writable(&self) -> anyhow::Result<Store> {
        let store = self.open().await?;
        if store.read_only() {
            anyhow::bail!(
                "the store at {} is opened read-only (?mode=ro); runs cannot be saved to it",
                store.url()
            );
        }
        Ok(store)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    Text,
    Json,
}

fn read_input(arg: Option<&str>) -> anyhow::Result<Value> {
    let Some(arg) = arg else {
        return Ok(Value::Object(Default::default()));
    };
    let (text, origin) = match arg.strip_prefix('@') {
        Some("-") => (read_stdin()?, "the input on stdin".to_owned()),
        Some(path) => (
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read input file {path}"))?,
            path.to_owned(),
        ),
        None => (arg.to_owned(), "--input".to_owned()),
    };
    serde_json::from_str(&text).with_context(|| format!("{origin} is not valid JSON"))
}

/// Most bytes `@-` reads from stdin (an input or an answer).
const MAX_STDIN_BYTES: u64 = 64 * 1024 * 1024;

/// Reads all of stdin (for `@-`), up to [`MAX_STDIN_BYTES`].
pub(crate) fn read_stdin() -> anyhow::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::io::stdin()
        .take(MAX_STDIN_BYTES + 1)
        .read_to_string(&mut text)
        .context("cannot read stdin")?;
    if text.len() as u64 > MAX_STDIN_BYTES {
        anyhow::bail!("stdin holds more than {MAX_STDIN_BYTES} bytes, the most read");
    }
    Ok(text)
}

/// Who starts runs from this command line: `cli:USER@HOST`.
pub(crate) fn started_by() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".to_owned());
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("cli:{user}@{host}")
}

/// The runtime `braid run` and `braid runs` use.
///
/// One run is I/O-bound: its agents wait on timers, sockets and child
/// processes. A single-threaded runtime keeps the scheduler and its agent
/// tasks on one thread, with no cross-thread wake-ups (about 1.3 us per
/// agent on a 1,000-agent chain, against 10 us on the multi-threaded one).
///
/// Its sleeps wake from its own reactor (see
/// [`braid_core::agent::sleep::use_runtime_timer`]).
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    braid_core::agent::sleep::use_runtime_timer();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// What sends a pipeline's agents to workers through the NATS server at
/// `url` (`--nats`).
pub(crate) async fn dispatch_to(
    url: &str,
    store: Option<&Store>,
) -> anyhow::Result<braid_server::PreparePipeline> {
    let dispatcher = braid_nats::Dispatcher::connect(url).await?;
    // Task ids carry the epoch under which this process owns each run, so
    // results sent to an owner that was deposed never match.
    if let Some(store) = store {
        let epochs = store.epochs();
        dispatcher.set_epochs(std::sync::Arc::new(move |run: &str| {
            epochs(run).unwrap_or(0)
        }));
    }
    Ok(braid_server::PreparePipeline(std::sync::Arc::new(
        move |pipeline: &mut Pipeline| dispatcher.remote(pipeline),
    )))
}

pub(crate) fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let pipeline = match super::load(&args.file) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let input = match read_input(args.input.as_deref()) {
        Ok(v) => v,
        Err(err) => {
            eprintln!("error: {err:#}");
            return Ok(ExitCode::from(exit::INVALID));
        }
    };
    let input = match pipeline.check_input(&input) {
        Ok(input) => input,
        Err(err) => {
            eprintln!("error: {err}");
            return Ok(ExitCode::from(exit::INVALID));
        }
    };
    let policy = match &args.checkpoint {
        Some(p) => p.parse::<CheckpointPolicy>().map_err(anyhow::Error::msg)?,
        None => pipeline.checkpoint().unwrap_or_default(),
    };
    if policy == CheckpointPolicy::None
        && let Some(ask) = pipeline.agents().iter().find(|a| a.input().is_some())
    {
        eprintln!(
            "error: --checkpoint none cannot keep a run that waits: agent `{}` is an `input` agent; \
             use `end` or `agent` (runs that wait are checkpointed per agent)",
            ask.name()
        );
        return Ok(ExitCode::from(exit::INVALID));
    }
    let metrics = args.metrics_file.as_ref().map(|_| {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let _ = metrics::set_global_recorder(recorder);
        handle
    });
    let runtime = runtime()?;
    let code = runtime.block_on(async {
        // The store keeps runs (unless `none`) and cached agents' results.
        let store = match policy {
            CheckpointPolicy::None if !args.cache.wanted(&pipeline) => None,
            _ => Some(args.store.open_writable().await?),
        };
        let mut pipeline = pipeline;
        args.dispatch.apply(&mut pipeline, store.as_ref()).await?;
        let options = RunOptions {
            sequential: args.sequential,
            concurrency: args.concurrency,
            checkpoint: Some(policy),
            cache: args.cache.of(&pipeline, store.as_ref()),
            started_by: Some(started_by()),
            ..RunOptions::default()
        };
        let code = execute(&pipeline, input, options, &args.display, store.as_ref()).await;
        if let Some(store) = &store {
            store.record_pool_gauges();
        }
        code
    });
    if let (Some(path), Some(handle)) = (&args.metrics_file, &metrics) {
        std::fs::write(path, handle.render())
            .with_context(|| format!("cannot write metrics to {}", path.display()))?;
    }
    // Command agents killed on cancellation are reaped by the runtime's
    // background tasks; do not wait for stragglers.
    runtime.shutdown_background();
    code
}

/// Runs `pipeline` with live progress (on a terminal), cancellation on
/// signals and checkpoints to `store`; prints the report; the exit code
/// says how it ended.
pub(crate) async fn execute(
    pipeline: &Pipeline,
    input: ValidInput,
    mut options: RunOptions,
    display: &DisplayArgs,
    store: Option<&Store>,
) -> anyhow::Result<ExitCode> {
    let cancel = CancellationToken::new();
    let signals = listen_for_signals();
    // The one run of this process: any run deposed is this one.
    let mut deposed = store.map(Store::deposed);
    let canceller = tokio::spawn({
        let cancel = cancel.clone();
        let mut signals = signals.clone();
        async move {
            let lost = async {
                match deposed.as_mut() {
                    Some(rx) => rx.recv().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                signalled = signals.wait_for(|n| *n >= 1) => {
                    if signalled.is_ok() {
                        eprintln!("braid: cancelling the run…");
                        cancel.cancel();
                    }
                }
                true = lost => {
                    eprintln!(
                        "braid: another process took this run over (its lease expired); \
                         stopping it here, nothing more of it is saved by this process"
                    );
                    cancel.cancel();
                }
            }
        }
    });
    let show_progress =
        display.output == Output::Text && !display.no_progress && std::io::stderr().is_terminal();
    let level = if display.verbose {
        EventLevel::Full
    } else {
        EventLevel::Summary
    };
    let progress = if show_progress {
        let (sink, rx) = EventSink::channel(level);
        let names = pipeline.agent_names().map(str::to_owned).collect();
        options.events = Some(sink);
        Some(tokio::spawn(crate::progress::show(names, rx)))
    } else if display.verbose {
        let (sink, rx) = EventSink::channel(level);
        options.events = Some(sink);
        Some(tokio::spawn(crate::progress::print_logs(rx)))
    } else {
        None
    };
    options.cancel = cancel;
    options.checkpointer = store.map(Store::checkpointer);
    let mut report = pipeline.run(input, options).await;
    if display.no_instances {
        report = report.without_instances();
    }
    // A signal from now on stops the saving, not the (finished) run.
    canceller.abort();
    if let Some(progress) = progress {
        let _ = progress.await;
    }
    // The report is printed whatever happens to the checkpoints: the run's
    // result is never lost because the database is.
    let persisted = match store {
        Some(store) => save(store, &report.run_id, signals).await,
        None => Ok(()),
    };

    let mut out = std::io::stdout().lock();
    let written = match display.output {
        Output::Json => serde_json::to_writer(&mut out, &report)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out)),
        Output::Text => print_table(&mut out, &report, pipeline.output_field()),
    };
    if let Some(path) = &display.out {
        std::fs::write(path, markdown(&report, pipeline.output_field()))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    match written {
        // A reader that went away (`braid run … | head`) is not a failure of the run.
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other.context("cannot write the report to stdout")?,
    }
    if let Err(err) = persisted {
        eprintln!(
            "error: the run {} but was not saved to {}: {err}",
            report.status,
            store.map_or("the store", Store::url)
        );
        return Ok(ExitCode::from(exit::NOT_SAVED));
    }
    Ok(match report.status {
        RunStatus::Completed => ExitCode::SUCCESS,
        RunStatus::Failed => ExitCode::from(exit::FAILED),
        RunStatus::Waiting => {
            print_questions(pipeline, &report, store);
            ExitCode::from(exit::WAITING)
        }
        // The engine never reports `interrupted` (stores mark it).
        RunStatus::Cancelled | RunStatus::Interrupted => ExitCode::from(exit::CANCELLED),
    })
}

/// What a waiting run asks, with the values each question reads, and how
/// to answer it (on stderr: stdout has the report).
fn print_questions(pipeline: &Pipeline, report: &RunReport, store: Option<&Store>) {
    let store_flag = match store {
        Some(store) if store.url() != braid_store::default_url() => {
            format!(" --store '{}'", store.url())
        }
        _ => String::new(),
    };
    eprintln!("\nrun {} is waiting for an answer:", report.run_id);
    for def in pipeline.agents() {
        let Some(input) = def.input() else { continue };
        let Some(agent) = report.agents.get(def.name()) else {
            continue;
        };
        if agent.status != braid_core::AgentStatus::Waiting {
            continue;
        }
        eprintln!("\n  {}: {}", def.name(), input.prompt());
        for read in pipeline.reads_of(
            pipeline
                .agent_names()
                .position(|n| n == def.name())
                .unwrap_or(0),
        ) {
            let read = read.trim_end_matches('?');
            if let Some(value) = report.state.get(read) {
                let mut text = value.to_string();
                if text.len() > 400 {
                    let cut = (0..=400)
                        .rev()
                        .find(|&i| text.is_char_boundary(i))
                        .unwrap_or(0);
                    text.truncate(cut);
                    text.push('…');
                }
                eprintln!("    {read} = {text}");
            }
        }
        if let Some(schema) = input.schema() {
            eprintln!("    the answer must fit: {schema}");
        }
        if let Some(deadline) = agent.deadline_ms {
            let at = std::time::UNIX_EPOCH
                + std::time::Duration::from_millis(u64::try_from(deadline).unwrap_or(0));
            let then = match input.default() {
                Some(default) => format!("then its default {default} is used"),
                None => "then it fails".to_owned(),
            };
            eprintln!(
                "    waits until {} ({then}, applied by `braid serve` or `braid runs resume`)",
                humantime::format_rfc3339_seconds(at)
            );
        }
        eprintln!(
            "    answer: braid runs answer{store_flag} {} {} --value '<JSON>'",
            report.run_id,
            def.name()
        );
    }
}

/// Counts the signals that stop `braid run`: Ctrl-C (SIGINT), SIGTERM,
/// SIGHUP (the terminal closed) and SIGQUIT. The first cancels the run
/// (command agents run in their own process groups, so they do not see the
/// terminal's signals; cancelling the run kills them); one more while the
/// run is being saved stops the saving (see [`save`]).
fn listen_for_signals() -> tokio::sync::watch::Receiver<u32> {
    use tokio::signal::unix::{SignalKind, signal};
    let (count, counted) = tokio::sync::watch::channel(0u32);
    let kinds = [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
        SignalKind::quit(),
    ];
    let mut streams = Vec::new();
    for kind in kinds {
        match signal(kind) {
            Ok(stream) => streams.push(stream),
            Err(err) => eprintln!("braid: cannot listen for signal {kind:?}: {err}"),
        }
    }
    if !streams.is_empty() {
        tokio::spawn(async move {
            loop {
                // Whichever signal comes next.
                std::future::poll_fn(|cx| {
                    for stream in &mut streams {
                        if stream.poll_recv(cx).is_ready() {
                            return std::task::Poll::Ready(());
                        }
                    }
                    std::task::Poll::Pending
                })
                .await;
                count.send_modify(|n| *n += 1);
            }
        });
    }
    counted
}

/// Waits for the run's records to be committed. If that takes a while
/// (the database is down or stuck), says what it waits for and how long it
/// will try; a signal meanwhile (beyond the one that cancelled the run)
/// stops it: the records go to the spill file and the run counts as not
/// saved.
async fn save(
    store: &Store,
    run_id: &str,
    mut signals: tokio::sync::watch::Receiver<u32>,
) -> Result<(), braid_store::PersistError> {
    let seen = *signals.borrow_and_update();
    // The signal that cancelled the run does not count; any other does.
    let allowed = seen.min(1);
    let flush = store.flush_run(run_id);
    tokio::pin!(flush);
    let said = tokio::time::sleep(Duration::from_secs(1));
    tokio::pin!(said);
    let mut told = false;
    // False when no signal can be listened for (then nothing counts them).
    let mut listening = true;
    loop {
        tokio::select! {
            result = &mut flush => return result,
            () = &mut said, if !told => {
                told = true;
                let settings = store.settings();
                let why = store
                    .retrying()
                    .map_or_else(|| "it has not answered yet".to_owned(), |e| format!("last error: {e}"));
                let spill = store.spill_path().map_or_else(
                    String::new,
                    |p| format!("; Ctrl-C again to stop now and keep the records in {}", p.display()),
                );
                eprintln!(
                    "braid: saving run {run_id} to {}: waiting for the database ({why}); \
                     trying for up to {:.1} s (each attempt at most {} s){spill}",
                    store.url(),
                    settings.give_up_after().as_secs_f64(),
                    settings.acquire_timeout.max(settings.write_timeout).as_secs(),
                );
            }
            changed = signals.wait_for(|n| *n > allowed), if listening => {
                listening = changed.is_ok();
                if listening {
                    eprintln!("braid: stopping: the run's records go to the spill file");
                    store.abandon();
                    // The writer spills at once; do not wait on a stuck disk.
                    return match tokio::time::timeout(Duration::from_secs(10), &mut flush).await {
                        Ok(result) => result,
                        Err(_) => Err(braid_store::PersistError {
                            runs: vec![(run_id.to_owned(), "saving was stopped; the spill file did not answer".to_owned())],
                        }),
                    };
                }
            }
        }
    }
}

pub(crate) fn fmt_ms(v: Option<f64>) -> String {
    v.map(|ms| format!("{ms:.1} ms"))
        .unwrap_or_else(|| "-".to_owned())
}

/// The output field (or the state) and a timeline, as Markdown.
fn markdown(report: &RunReport, output: Option<&str>) -> String {
    let mut text = match output.and_then(|f| report.state.get(f)) {
        Some(value) => match value.as_str() {
            Some(s) => s.to_owned(),
            None => format!(
                "```json\n{}\n```",
                serde_json::to_string_pretty(value).unwrap_or_default()
            ),
        },
        None => format!(
            "```json\n{}\n```",
            serde_json::to_string_pretty(&report.state).unwrap_or_default()
        ),
    };
    text.push_str(&format!(
        "\n\n## Timeline\n\nRun `{}` {} in {:.1} ms.\n\n| agent | status | start | duration | attempts |\n|---|---|---:|---:|---:|\n",
        report.run_id, report.status, report.makespan_ms
    ));
    for (name, agent) in &report.agents {
        text.push_str(&format!(
            "| {name} | {} | {} | {} | {} |\n",
            agent.status,
            fmt_ms(agent.start_ms),
            fmt_ms(agent.duration_ms),
            agent.attempts
        ));
    }
    text
}

/// The first few failed instances of a `foreach` agent, under its row.
fn print_failed_instances(
    out: &mut impl Write,
    agent: &braid_core::AgentReport,
    width: usize,
) -> std::io::Result<()> {
    const SHOWN: usize = 5;
    let Some(instances) = &agent.instances else {
        return Ok(());
    };
    let failed: Vec<_> = instances
        .iter()
        .filter(|(_, r)| r.status == braid_core::AgentStatus::Failed)
        .collect();
    for (name, r) in failed.iter().take(SHOWN) {
        let error = r
            .error
            .as_deref()
            .unwrap_or("")
            .lines()
            .next()
            .unwrap_or("");
        writeln!(
            out,
            "  {name:<w$}  {:<9}  {:>10}  {:>10}  {:>8}  {error}",
            r.status.to_string(),
            fmt_ms(r.start_ms),
            fmt_ms(r.duration_ms),
            r.attempts,
            w = width.saturating_sub(2),
        )?;
    }
    if failed.len() > SHOWN {
        writeln!(
            out,
            "  … and {} more failed instances",
            failed.len() - SHOWN
        )?;
    }
    Ok(())
}

pub(crate) fn print_table(
    out: &mut impl Write,
    report: &RunReport,
    output: Option<&str>,
) -> std::io::Result<()> {
    let width = report
        .agents
        .keys()
        .map(|name| name.len())
        .max()
        .unwrap_or(5)
        .max(5);
    writeln!(
        out,
        "run {} of {}: {} in {:.1} ms",
        report.run_id, report.pipeline, report.status, report.makespan_ms
    )?;
    if let Some(error) = &report.error {
        writeln!(out, "  {error}")?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:<width$}  {:<9}  {:>10}  {:>10}  {:>8}  note",
        "agent", "status", "start", "duration", "attempts"
    )?;
    for (name, agent) in &report.agents {
        let kept = agent
            .reused_from
            .as_ref()
            .map(|run| format!("kept from run {run}"))
            .or_else(|| {
                agent
                    .resumed
                    .then(|| "kept from the earlier attempt".to_owned())
            })
            .or_else(|| agent.cached.then(|| "cached (not run)".to_owned()))
            .or_else(|| {
                (agent.status == braid_core::AgentStatus::Waiting)
                    .then(|| "waiting for an answer".to_owned())
            });
        let note = agent
            .error
            .as_deref()
            .or(agent.reason.as_deref())
            .or(kept.as_deref())
            .unwrap_or("")
            .lines()
            .next()
            .unwrap_or("");
        let cached_items = agent
            .instances
            .iter()
            .flat_map(|i| i.values())
            .filter(|i| i.cached)
            .count();
        let items = agent.items.map(|c| {
            let mut counts = format!("{} of {} items completed", c.completed, c.total);
            if cached_items > 0 {
                counts.push_str(&format!(" ({cached_items} cached)"));
            }
            for (n, what) in [
                (c.failed, "failed"),
                (c.cancelled, "cancelled"),
                (c.pending, "pending"),
            ] {
                if n > 0 {
                    counts.push_str(&format!(", {n} {what}"));
                }
            }
            counts
        });
        // A tool-calling agent: how many calls, and how many failed.
        let calls = (!agent.tool_calls.is_empty()).then(|| {
            let failed = agent
                .tool_calls
                .iter()
                .filter(|c| c.status != braid_core::AgentStatus::Completed)
                .count();
            let n = agent.tool_calls.len();
            let mut counts = format!("{n} tool call{}", if n == 1 { "" } else { "s" });
            if failed > 0 {
                counts.push_str(&format!(" ({failed} not completed)"));
            }
            counts
        });
        let items = match (items, calls) {
            (Some(items), Some(calls)) => Some(format!("{items}; {calls}")),
            (items, calls) => items.or(calls),
        };
        let note = match (items, note) {
            (Some(items), "") => items,
            (Some(items), note) => format!("{items}; {note}"),
            (None, note) => note.to_owned(),
        };
        writeln!(
            out,
            "{name:<width$}  {:<9}  {:>10}  {:>10}  {:>8}  {note}",
            agent.status.to_string(),
            fmt_ms(agent.start_ms),
            fmt_ms(agent.duration_ms),
            agent.attempts,
        )?;
        print_failed_instances(out, agent, width)?;
    }
    writeln!(out)?;
    // The field the pipeline names as its result, or the whole state.
    match output.and_then(|f| report.state.get(f)) {
        Some(value) => match value.as_str() {
            Some(text) => writeln!(out, "{text}"),
            None => {
                serde_json::to_writer_pretty(&mut *out, value)?;
                writeln!(out)
            }
        },
        None => {
            writeln!(out, "state:")?;
            serde_json::to_writer_pretty(&mut *out, &report.state)?;
            writeln!(out)
        }
    }
}
