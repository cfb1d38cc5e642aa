//! `braid`: run, explain, validate and benchmark agent pipelines from the
//! command line.
//!
//! Exit codes: 0 success; 1 the run failed (or another error); 2 the
//! pipeline or the input is invalid (or the command line is wrong); 3 the
//! run finished but could not be saved to the store; 130 the run was
//! cancelled.

mod allocator;
mod cmd;
mod progress;
mod traces;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// mimalloc rather than the system allocator: runs allocate many small,
/// short-lived objects across threads (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: allocator::Allocator = allocator::Allocator;

/// Runs multi-agent pipelines as fast as their data dependencies allow.
#[derive(Debug, Parser)]
#[command(name = "braid", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr (what is logged: RUST_LOG, default `warn`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// What must outlive the run for logs and traces to be complete: dropped
/// at exit, it exports the spans still queued, then flushes the log writer.
struct Logging {
    _traces: Option<traces::Export>,
    _log: tracing_appender::non_blocking::WorkerGuard,
}

/// Logs through a non-blocking writer: a slow stderr never stalls a run.
/// With the `otlp` feature and an endpoint set, spans are exported too
/// ([`traces`]).
fn init_logging(format: LogFormat) -> Logging {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::fmt::format::FmtSpan;
    use tracing_subscriber::prelude::*;
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    // sqlx's "slow statement" warnings are for whoever tunes the database,
    // not for a terminal showing a run: shown only when RUST_LOG asks.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    // A closing span logs its busy and idle time: per run and per agent
    // attempt, when RUST_LOG lets them through (e.g. braid_core=debug).
    let log = tracing_subscriber::fmt::layer()
        .with_span_events(FmtSpan::CLOSE)
        .with_writer(writer);
    let log = match format {
        LogFormat::Text => log.boxed(),
        LogFormat::Json => log.json().boxed(),
    };
    let (trace_layer, export) = traces::layer();
    let _ = tracing_subscriber::registry()
        .with(trace_layer)
        .with(log.with_filter(filter))
        .try_init();
    Logging {
        _traces: export,
        _log: guard,
    }
}

/// What is logged when RUST_LOG is not set.
const DEFAULT_LOG_FILTER: &str = "warn,sqlx::query=error";

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a pipeline once and report each agent's status and timing.
    Run(cmd::run::RunArgs),
    /// Show the dependency graph derived from reads and writes.
    Explain {
        /// The pipeline file (YAML or JSON).
        file: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ExplainFormat::Text)]
        format: ExplainFormat,
    },
    /// Serve the HTTP API, live event streams and the web view.
    Serve(cmd::serve::ServeArgs),
    /// Serve a folder's pipelines as Model Context Protocol tools over
    /// stdin and stdout, for desktop assistants, IDEs and other agents.
    Mcp(cmd::serve::McpArgs),
    /// Run agents for coordinators elsewhere (`braid serve --nats`,
    /// `braid run --nats`): pull their tasks from NATS JetStream.
    Worker(cmd::worker::WorkerArgs),
    /// The run history: list, show and resume stored runs.
    Runs(cmd::runs::RunsArgs),
    /// Cached agents' results in the store: clear them.
    Cache(cmd::cache::CacheArgs),
    /// Run the benchmark scenarios (the same as the LangGraph peer's) and
    /// print one JSON object per scenario.
    Bench(cmd::bench::BenchArgs),
    /// Check pipeline files and report every problem found in each.
    Validate {
        /// The pipeline files (YAML or JSON).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print a shell completion script: `braid completions bash >
    /// ~/.local/share/bash-completion/completions/braid`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write a small pipeline, with a Python command agent, that runs at
    /// once: `braid init demo && braid run demo/pipeline.yaml`.
    Init {
        /// Where to write it (created if missing; must not already hold a
        /// pipeline.yaml).
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Print the JSON Schema (draft 2020-12) of pipeline files, with every
    /// agent kind this binary knows: for editors (docs/pipeline.schema.json
    /// is a copy).
    Schema,
    /// Print the HTTP API's OpenAPI 3.1 document (what `braid serve`
    /// serves at /openapi.json; docs/openapi.json is a copy).
    Openapi,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ExplainFormat {
    Text,
    Json,
    Dot,
    Mermaid,
    /// An SVG drawing of the graph, laid out in layers (layout-rs).
    Svg,
}

/// Every agent kind the CLI's pipelines may use: the core's, `http` and
/// `llm` (braid-agents) and `sql` (braid-store).
pub(crate) fn kinds() -> braid_core::AgentKinds {
    let mut kinds = braid_agents::kinds();
    braid_store::sql::register(&mut kinds);
    kinds
}

/// The process exit codes, in one place.
pub(crate) mod exit {
    pub(crate) const FAILED: u8 = 1;
    pub(crate) const INVALID: u8 = 2;
    pub(crate) const NOT_SAVED: u8 = 3;
    /// The run waits for an answer (`kind: input`).
    pub(crate) const WAITING: u8 = 4;
    pub(crate) const CANCELLED: u8 = 130;
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return match err.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(exit::INVALID),
            };
        }
    };
    let _logging = init_logging(cli.log_format);
    let result = match cli.command {
        Command::Run(args) => cmd::run::run(args),
        Command::Bench(args) => cmd::bench::bench(args),
        Command::Runs(args) => cmd::runs::runs(args),
        Command::Cache(args) => cmd::cache::cache(args),
        Command::Serve(args) => cmd::serve::serve(args),
        Command::Mcp(args) => cmd::serve::mcp(args),
        Command::Worker(args) => cmd::worker::worker(args),
        Command::Explain { file, format } => cmd::explain(&file, format),
        Command::Validate { files } => cmd::validate(&files),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "braid", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Init { dir } => cmd::init::init(&dir),
        Command::Schema => cmd::print_json(&cmd::pipeline_schema()),
        Command::Openapi => cmd::print_json(braid_server::openapi_document()),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", chain(&err));
            ExitCode::from(exit::FAILED)
        }
    }
}

/// The error and its causes, `: `-separated, leaving out a cause whose text
/// its parent already includes (some drivers' errors repeat their source).
fn chain(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if !parts.last().is_some_and(|prev| prev.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}
