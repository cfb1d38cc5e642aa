//! `braid serve`: the HTTP API, live event streams and the web view.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use braid_core::Pipeline;
use braid_server::{AppState, HttpConfig, ServerConfig};
use clap::Args;

use super::run::StoreArgs;
use crate::exit;

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on. Anything but loopback needs a token.
    #[arg(long, default_value = "127.0.0.1:7700")]
    bind: SocketAddr,
    /// Load every *.yaml, *.yml and *.json pipeline in this folder and its
    /// subfolders at start
    /// (these may contain command agents: the operator put them there).
    /// Clients can neither replace nor delete them (409).
    #[arg(long)]
    pipelines: Option<PathBuf>,
    /// Refuse to start when a file under --pipelines does not load (by
    /// default it is reported and skipped).
    #[arg(long)]
    strict: bool,
    /// A file holding the bearer token (else BRAID_TOKEN).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Let pipelines registered over HTTP contain `command` agents, which
    /// run programs on this host.
    #[arg(long)]
    allow_command_agents: bool,
    /// Largest request body, in bytes (and so the largest pipeline a
    /// client can register).
    #[arg(long, default_value_t = 1024 * 1024)]
    max_body_bytes: usize,
    /// Most agents in a pipeline registered over HTTP, checked before it
    /// is compiled.
    #[arg(long, default_value_t = 1000)]
    max_agents: usize,
    /// Deepest nesting of mappings and sequences in a pipeline registered
    /// over HTTP, checked while parsing.
    #[arg(long, default_value_t = 64)]
    max_yaml_depth: usize,
    /// Longest `when:` condition in a pipeline registered over HTTP, in bytes.
    #[arg(long, default_value_t = 4096)]
    max_condition_bytes: usize,
    /// Deepest nesting of a `when:` condition's expression.
    #[arg(long, default_value_t = 32)]
    max_condition_depth: usize,
    /// Most problems listed when a pipeline is refused (then "and K more").
    #[arg(long, default_value_t = 100)]
    max_diagnostics: usize,
    /// How long compiling one pipeline registered over HTTP may take
    /// (then 422). Compiles run on blocking threads, never on the ones
    /// that answer requests.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    compile_budget: Duration,
    /// Most pipelines compiled at once (a registration that waits longer
    /// than the compile budget for a turn gets 429).
    #[arg(long, default_value_t = 2)]
    max_compiles: usize,
    /// Most pipelines registered over HTTP (those in --pipelines DIR do not
    /// count); 409 beyond it until one is deleted.
    #[arg(long, default_value_t = 1000)]
    max_pipelines: usize,
    /// Most runs in flight (429 beyond it).
    #[arg(long, default_value_t = 1000)]
    max_runs: usize,
    /// Threads runs execute on, each a current-thread runtime: a run stays
    /// on one for its whole life [default: one per core]. 0 runs them on
    /// the HTTP server's multi-threaded runtime instead.
    #[arg(long)]
    run_threads: Option<usize>,
    /// Most events kept per run. Beyond it log lines are dropped and each
    /// agent's lifecycle events coalesce into its latest; the final event
    /// always arrives.
    #[arg(long, default_value_t = 10_000)]
    max_events_per_run: usize,
    /// How long runs in flight may take to finish on shutdown before they
    /// are cancelled and marked interrupted.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// How long a client may take to send a request's headers (HTTP/1);
    /// also how long a keep-alive connection may wait for its next request.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    header_timeout: Duration,
    /// Close a connection with no request in flight and no bytes moving for
    /// this long, or whose client reads nothing it is sent or stops sending
    /// a request body for this long; drop a WebSocket client that answers no
    /// ping for this long.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    /// Most connections open at once (WebSockets included); more are
    /// answered 503 and closed.
    #[arg(long, default_value_t = 2048)]
    max_connections: usize,
    /// An origin (scheme://host[:port]) whose web pages may call the API and
    /// open its event streams, besides the server's own. Repeatable.
    // This comment is also `--help`'s text, where `[:port]` is no link.
    #[allow(rustdoc::broken_intra_doc_links)]
    #[arg(long = "allow-origin", value_name = "ORIGIN", value_parser = parse_origin)]
    allow_origins: Vec<String>,
    /// Serve /metrics without the token (for a scraper that cannot send it).
    #[arg(long)]
    public_metrics: bool,
    /// Keep no run history (no database at all).
    #[arg(long)]
    no_store: bool,
    /// Prune runs created longer ago than this (30d, 12h…) in the
    /// background: at start, then every --retention-interval, in small
    /// batches, with their agents' records, writes and events, and expired
    /// cache entries. Running and waiting runs, and runs that forks
    /// reference, are kept.
    #[arg(long, value_name = "DURATION", value_parser = super::runs::parse_age,
          conflicts_with = "no_store")]
    retention: Option<Duration>,
    /// How often the background prune runs [default: 10m, or a tenth of
    /// --retention if that is shorter, at least 1s].
    #[arg(long, value_name = "DURATION", value_parser = parse_interval, requires = "retention")]
    retention_interval: Option<Duration>,
    /// Send agents to `braid worker`s through this NATS server (with
    /// JetStream) instead of running them here; runs, their scheduling,
    /// retries, timeouts and checkpoints stay here.
    #[arg(long, env = "BRAID_NATS", value_name = "URL")]
    nats: Option<String>,
    /// Also serve the pipelines as MCP tools at /mcp (streamable HTTP,
    /// behind the same token): each pipeline is a tool whose arguments
    /// are its inputs and whose result is its output.
    #[arg(long)]
    mcp: bool,
    #[command(flatten)]
    store: StoreArgs,
}

/// `braid mcp`: the pipelines of a folder as MCP tools over stdio.
#[derive(Debug, Args)]
pub(crate) struct McpArgs {
    /// Serve every *.yaml, *.yml and *.json pipeline in this folder and
    /// its subfolders as a tool.
    #[arg(long)]
    pipelines: PathBuf,
    /// Refuse to start when a file under --pipelines does not load (by
    /// default it is reported on stderr and skipped).
    #[arg(long)]
    strict: bool,
    /// Most runs in flight at once (a call beyond it is a tool error).
    #[arg(long, default_value_t = 100)]
    max_runs: usize,
    /// Keep no run history (no database at all).
    #[arg(long)]
    no_store: bool,
    #[command(flatten)]
    store: StoreArgs,
}

/// Serves the pipelines under `--pipelines` as MCP tools on stdin and
/// stdout until the client closes them. Everything else braid says goes to
/// stderr: stdout carries only the protocol.
pub(crate) fn mcp(args: McpArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let store = args.store.open_unless(args.no_store).await?;
        let config = ServerConfig {
            max_concurrent_runs: args.max_runs,
            ..ServerConfig::default()
        };
        let state = AppState::new(
            config,
            store.clone().map(|s| s as Arc<dyn braid_server::RunStore>),
        );
        let loaded = match load_dir(&args.pipelines, &state, args.strict)? {
            Ok(n) => n,
            Err(code) => return Ok(code),
        };
        eprintln!(
            "braid: serving {loaded} {} as MCP tools on stdio (store: {})",
            if loaded == 1 { "pipeline" } else { "pipelines" },
            store.as_ref().map_or("none", |s| s.url())
        );
        let served = braid_server::mcp::serve_stdio(state.clone()).await;
        // Runs still in flight are cancelled and marked interrupted; what
        // they wrote is flushed to the store.
        state.shut_down().await;
        served.map_err(anyhow::Error::msg)?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `--retention-interval` (and `braid worker --max-task-time`): a duration
/// above zero.
pub(crate) fn parse_interval(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(interval) if !interval.is_zero() => Ok(interval),
        Ok(_) => Err("expected a duration above zero, such as 10m".to_owned()),
        Err(e) => Err(format!(
            "expected a duration such as 10m or 30s, found `{text}` ({e})"
        )),
    }
}

/// `--allow-origin`: an http(s) origin, kept in its normal form.
fn parse_origin(text: &str) -> Result<String, String> {
    braid_server::guard::normalize_origin(text).ok_or_else(|| {
        format!(
            "`{text}` is not an origin; write scheme://host[:port], e.g. https://dash.example.com"
        )
    })
}

/// Deepest folder `--pipelines DIR` is searched to.
const MAX_PIPELINE_DEPTH: usize = 8;
/// Most files `--pipelines DIR` loads.
const MAX_PIPELINE_FILES: usize = 1000;

/// Every `*.yaml`, `*.yml` and `*.json` file under `dir`, its subfolders
/// included (hidden ones, `node_modules` and `target` left out), sorted;
/// bounded in depth and count.
pub(crate) fn pipeline_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut folders = vec![(dir.to_path_buf(), 0)];
    while let Some((folder, depth)) = folders.pop() {
        let entries = std::fs::read_dir(&folder)
            .with_context(|| format!("cannot read the pipelines folder {}", folder.display()))?;
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                let skipped = name.starts_with('.') || name == "node_modules" || name == "target";
                if !skipped && depth < MAX_PIPELINE_DEPTH {
                    folders.push((path, depth + 1));
                }
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            ) {
                found.push(path);
                if found.len() > MAX_PIPELINE_FILES {
                    anyhow::bail!(
                        "{} holds more than {MAX_PIPELINE_FILES} pipeline files (*.yaml, *.yml, \
                         *.json), the most --pipelines loads; point it at a smaller folder",
                        dir.display()
                    );
                }
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Loads every pipeline under `dir` (see [`pipeline_files`]) and prints
/// what it loaded. A file that does not load is reported with every
/// problem in it and skipped, or, with `strict`, stops the server (exit
/// code 2). Two files with one pipeline name are an error naming both.
fn load_dir(dir: &Path, state: &AppState, strict: bool) -> anyhow::Result<Result<usize, ExitCode>> {
    let mut loaded: Vec<(String, PathBuf)> = Vec::new();
    let mut skipped = 0;
    for path in pipeline_files(dir)? {
        let source = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        match Pipeline::from_file_with(&path, &crate::kinds()) {
            Ok(pipeline) => {
                if let Some((_, first)) = loaded.iter().find(|(n, _)| n == pipeline.name()) {
                    eprintln!(
                        "error: {} and {} both define pipeline `{}`; names must be unique \
                         (rename one with `pipeline:`)",
                        first.display(),
                        path.display(),
                        pipeline.name()
                    );
                    return Ok(Err(ExitCode::from(exit::INVALID)));
                }
                loaded.push((pipeline.name().to_owned(), path.clone()));
                if let Err(why) = state.preload(pipeline, source) {
                    eprintln!("error: {}: {why}", path.display());
                    return Ok(Err(ExitCode::from(exit::INVALID)));
                }
            }
            Err(err) => {
                for d in err.diagnostics() {
                    eprintln!("error: {d}");
                }
                if strict {
                    return Ok(Err(ExitCode::from(exit::INVALID)));
                }
                skipped += 1;
            }
        }
    }
    for (name, path) in &loaded {
        let shown = path.strip_prefix(dir).unwrap_or(path);
        eprintln!("braid: loaded pipeline {name} ({})", shown.display());
    }
    if skipped > 0 {
        eprintln!(
            "braid: skipped {skipped} pipeline {} that did not load (errors above); \
             --strict refuses to start instead",
            if skipped == 1 { "file" } else { "files" }
        );
    }
    Ok(Ok(loaded.len()))
}

pub(crate) fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let token = match &args.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the token file {}", path.display()))?
                .trim()
                .to_owned(),
        ),
        None => std::env::var("BRAID_TOKEN").ok().filter(|t| !t.is_empty()),
    };
    if token.as_deref() == Some("") {
        eprintln!("error: the token file is empty; put the token in it");
        return Ok(ExitCode::from(exit::INVALID));
    }
    if token.is_none() && !braid_server::is_loopback(&args.bind) {
        eprintln!(
            "error: refusing to listen on {} without a token: anyone who can reach it could \
             run pipelines. Set BRAID_TOKEN or --token-file, or bind 127.0.0.1.",
            args.bind
        );
        return Ok(ExitCode::from(exit::INVALID));
    }
    // Connections, the store's writer and background jobs: the multi-threaded
    // runtime; runs go to the per-core run threads (`--run-threads`).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let store = args.store.open_unless(args.no_store).await?;
        let has_token = token.is_some();
        let config = ServerConfig {
            token,
            allow_command_agents: args.allow_command_agents,
            max_body_bytes: args.max_body_bytes,
            max_agents: args.max_agents,
            max_depth: args.max_yaml_depth,
            max_condition_bytes: args.max_condition_bytes,
            max_condition_depth: args.max_condition_depth,
            max_diagnostics: args.max_diagnostics,
            compile_budget: args.compile_budget,
            max_concurrent_compiles: args.max_compiles,
            max_pipelines: args.max_pipelines,
            max_concurrent_runs: args.max_runs,
            max_events_per_run: args.max_events_per_run,
            grace: args.grace,
            http: HttpConfig {
                allow_origins: args.allow_origins.clone(),
                public_metrics: args.public_metrics,
                header_timeout: args.header_timeout,
                idle_timeout: args.idle_timeout,
                max_connections: args.max_connections,
            },
            retention: args.retention.map(|older_than| braid_server::Retention {
                interval: args
                    .retention_interval
                    .unwrap_or_else(|| braid_server::Retention::default_interval(older_than)),
                ..braid_server::Retention::new(older_than)
            }),
            lease: args.store.lease,
            cores: match args.run_threads.unwrap_or_else(cores_here) {
                0 => None,
                n => Some(Arc::new(
                    braid_server::cores::Cores::new(n).context("cannot start the run threads")?,
                )),
            },
            mcp: args.mcp,
            prepare: match &args.nats {
                Some(url) => Some(super::run::dispatch_to(url, store.as_deref()).await?),
                None => None,
            },
            ..ServerConfig::default()
        };
        let config_retention = config.retention.clone();
        let state = AppState::new(
            config,
            store.clone().map(|s| s as Arc<dyn braid_server::RunStore>),
        );
        let loaded = match &args.pipelines {
            Some(dir) => match load_dir(dir, &state, args.strict)? {
                Ok(n) => n,
                Err(code) => return Ok(code),
            },
            None => 0,
        };
        let listener = tokio::net::TcpListener::bind(args.bind)
            .await
            .with_context(|| format!("cannot listen on {}", args.bind))?;
        let addr = listener.local_addr()?;
        eprintln!(
            "braid: serving on http://{addr} ({loaded} {}; store: {})",
            if loaded == 1 { "pipeline" } else { "pipelines" },
            store.as_ref().map_or("none", |s| s.url())
        );
        eprintln!("braid: console: {}", console_url(addr, has_token));
        if args.mcp {
            eprintln!("braid: MCP tools at http://{addr}/mcp (streamable HTTP)");
        }
        if let Some(retention) = &config_retention {
            eprintln!(
                "braid: pruning runs older than {} at start and every {}",
                humantime::format_duration(retention.older_than),
                humantime::format_duration(retention.interval)
            );
        }
        braid_server::serve(state, listener, shutdown_signal()).await?;
        eprintln!("braid: stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// The cores this process may use (1 if unknown).
pub(crate) fn cores_here() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// The console's address to open, and how to sign in. A wildcard bind
/// address is shown as the loopback one, which a browser can open.
fn console_url(addr: std::net::SocketAddr, has_token: bool) -> String {
    let host = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => "127.0.0.1".to_owned(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => "[::1]".to_owned(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    let url = format!("http://{host}:{}/", addr.port());
    if has_token {
        format!("open {url} and sign in with the token")
    } else {
        format!("open {url}")
    }
}

pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
    eprintln!("braid: shutting down: no new runs; waiting for runs in flight");
}
