//! `braid runs`: the run history in the store: list, show, resume, prune.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use braid_core::agent::process;
use braid_core::{AgentReport, CheckpointPolicy, Pipeline, ResumePoint, RunOptions};
use braid_store::prune::{DEFAULT_PRUNE_BATCH, MAX_PRUNE_BATCH};
use braid_store::{PruneFilter, PruneReport, RunFilter, Store, StoredRun};
use clap::{Args, Subcommand};
use indexmap::IndexMap;
use serde_json::{Value, json};

use super::run::{DisplayArgs, Output, StoreArgs, execute, fmt_ms, runtime};
use crate::exit;

#[derive(Debug, Args)]
pub(crate) struct RunsArgs {
    #[command(subcommand)]
    command: RunsCommand,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Debug, Subcommand)]
enum RunsCommand {
    /// Recent runs, newest first.
    List {
        /// Only runs with this status (running, completed, failed, cancelled).
        #[arg(long)]
        status: Option<String>,
        /// Only runs of this pipeline.
        #[arg(long)]
        pipeline: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: i64,
        /// `text` or `json` (one array).
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// One run: status, input, state, and each agent's status and timings.
    Show {
        /// The run's id.
        id: String,
        /// `text` or `json` (one object).
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
        /// Also draw the run's timeline (queue waits, executions, the
        /// critical path) as SVG into this file.
        #[arg(long)]
        timeline: Option<std::path::PathBuf>,
    },
    /// Continue a run that failed, was cancelled or whose process died:
    /// agents that completed are not run again, unless their definition
    /// (or an upstream one) changed since.
    Resume {
        /// The run's id.
        id: String,
        /// Resume even though the pipeline file changed since the run
        /// started, or the run was last seen running on another host.
        /// Stored results are still reused only for agents whose
        /// definition, and every upstream one, is unchanged.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        display: DisplayArgs,
    },
    /// Delete old runs with everything stored about them (agents' records,
    /// writes, events), and expired cache entries, in short batches that
    /// never hold up runs in flight for long. Runs that are running or
    /// waiting are kept unless --status names them (and a running run whose
    /// process is alive, or on another host, always); runs whose results a
    /// fork reuses are kept until the fork goes.
    Prune {
        /// Delete runs created longer ago than this: 30d, 12h, 1h30m…
        /// Required unless --keep-last is given.
        #[arg(long, value_name = "DURATION", value_parser = parse_age)]
        older_than: Option<std::time::Duration>,
        /// Only runs with this status; repeatable [default: every status
        /// but running and waiting].
        #[arg(long, value_parser = [
            "completed", "failed", "cancelled", "interrupted", "waiting", "running",
        ])]
        status: Vec<String>,
        /// Only runs of this pipeline.
        #[arg(long)]
        pipeline: Option<String>,
        /// Keep the N newest runs of each pipeline (among those --status and
        /// --pipeline select), however old.
        #[arg(long, value_name = "N", value_parser = parse_keep_last)]
        keep_last: Option<u64>,
        /// Count what would be deleted; delete nothing (works on a
        /// read-only store too).
        #[arg(long)]
        dry_run: bool,
        /// Most runs deleted in one transaction.
        #[arg(long, default_value_t = DEFAULT_PRUNE_BATCH,
              value_parser = clap::builder::RangedU64ValueParser::<usize>::new()
                  .range(1..=MAX_PRUNE_BATCH as u64))]
        batch_size: usize,
        /// `text` or `json` (one object).
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

/// `--keep-last`: a count of at least one (none would keep nothing).
fn parse_keep_last(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "expected a number of runs to keep, at least 1, found `{text}`"
        )),
    }
}

/// `--older-than` (and `serve --retention`): a duration, with a message
/// saying what one looks like.
pub(crate) fn parse_age(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|e| {
        format!("expected a duration such as 30d, 12h or 1h30m, found `{text}` ({e})")
    })
}

pub(crate) fn runs(args: RunsArgs) -> anyhow::Result<ExitCode> {
    if let RunsCommand::Prune {
        older_than: None,
        keep_last: None,
        ..
    } = args.command
    {
        eprintln!(
            "error: `braid runs prune` needs --older-than DURATION (e.g. 30d) or --keep-last N; \
             with neither it would delete every finished run (--older-than 0s does that on purpose)"
        );
        return Ok(ExitCode::from(exit::INVALID));
    }
    let runtime = runtime()?;
    let code = runtime.block_on(async {
        let store = match args.command {
            RunsCommand::Resume { .. } => args.store.open_writable().await?,
            _ => args.store.open().await?,
        };
        match args.command {
            RunsCommand::List {
                status,
                pipeline,
                limit,
                output,
            } => list(&store, status, pipeline, limit, output).await,
            RunsCommand::Show {
                id,
                output,
                timeline,
            } => show(&store, &id, output, timeline.as_deref()).await,
            RunsCommand::Resume { id, force, display } => {
                resume(&store, &id, force, &display).await
            }
            RunsCommand::Prune {
                older_than,
                status,
                pipeline,
                keep_last,
                dry_run,
                batch_size,
                output,
            } => {
                let filter = PruneFilter {
                    older_than,
                    statuses: status,
                    pipeline,
                    keep_last,
                    dry_run,
                    batch_size,
                    ..PruneFilter::default()
                };
                prune(&store, &filter, output).await
            }
        }
    });
    runtime.shutdown_background();
    code
}

fn write_out(
    f: impl FnOnce(&mut std::io::StdoutLock<'_>) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match f(&mut out) {
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("cannot write to stdout"),
    }
}

async fn list(
    store: &Store,
    status: Option<String>,
    pipeline: Option<String>,
    limit: i64,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let runs = store
        .list_runs(&RunFilter {
            status,
            pipeline,
            limit: Some(limit),
        })
        .await?;
    write_out(|out| match output {
        Output::Json => {
            serde_json::to_writer(&mut *out, &runs)?;
            writeln!(out)
        }
        Output::Text => {
            writeln!(
                out,
                "{:<36}  {:<20}  {:<9}  {:>12}  started",
                "run", "pipeline", "status", "makespan"
            )?;
            for run in &runs {
                writeln!(
                    out,
                    "{:<36}  {:<20}  {:<9}  {:>12}  {}",
                    run.run_id,
                    run.pipeline,
                    run.status,
                    fmt_ms(run.makespan_ms),
                    format_time(run.created_at_ms)
                )?;
            }
            Ok(())
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn prune(store: &Store, filter: &PruneFilter, output: Output) -> anyhow::Result<ExitCode> {
    let report = store.prune(filter).await?;
    write_out(|out| match output {
        Output::Json => {
            serde_json::to_writer(&mut *out, &report)?;
            writeln!(out)
        }
        Output::Text => writeln!(out, "{}", describe_prune(&report)),
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `pruned 3 runs (…) and 1 expired cache entry`, and what was kept.
fn describe_prune(report: &PruneReport) -> String {
    fn n(count: u64, one: &str, many: &str) -> String {
        format!("{count} {}", if count == 1 { one } else { many })
    }
    let mut text = format!(
        "{} {} ({}, {}, {}, {}) and {}",
        if report.dry_run {
            "would prune"
        } else {
            "pruned"
        },
        n(report.runs, "run", "runs"),
        n(report.agent_records, "agent record", "agent records"),
        n(report.deltas, "write", "writes"),
        n(report.events, "event", "events"),
        n(report.processes, "process record", "process records"),
        n(
            report.cache_entries,
            "expired cache entry",
            "expired cache entries"
        ),
    );
    let kept: Vec<String> = [
        (report.kept_referenced, "that forks reference"),
        (report.kept_running, "running in a live process or on another host"),
        (report.kept_newest, "among the newest of their pipeline (--keep-last)"),
    ]
    .into_iter()
    .filter(|(count, _)| *count > 0)
    .map(|(count, why)| format!("{} {why}", n(count, "run", "runs")))
    .collect();
    if !kept.is_empty() {
        text.push_str(&format!("\nkept {}", kept.join("; ")));
    }
    text
}

fn format_time(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The run's pipeline, if its file is still there and unchanged.
fn same_pipeline(run: &StoredRun) -> Result<Pipeline, String> {
    let Some(path) = &run.pipeline_path else {
        return Err("the run did not come from a pipeline file".to_owned());
    };
    let pipeline = Pipeline::from_file_with(path, &crate::kinds()).map_err(|e| e.to_string())?;
    if pipeline.content_hash() != run.pipeline_hash {
        return Err(format!("{path} has changed since the run started"));
    }
    Ok(pipeline)
}

/// Input plus deltas. Exact with the unchanged pipeline (merge rules,
/// topological order); otherwise later-starting writers win.
fn state_of(run: &StoredRun) -> (IndexMap<String, Arc<Value>>, Option<String>) {
    match same_pipeline(run) {
        Ok(pipeline) => match pipeline.check_input(&Value::Object(run.input.clone())) {
            Ok(input) => (pipeline.replay(input, &run.agents), None),
            Err(e) => (naive_state(run), Some(e.to_string())),
        },
        Err(why) => (
            naive_state(run),
            Some(format!(
                "{why}; fields written by several agents show the last writer's value"
            )),
        ),
    }
}

fn naive_state(run: &StoredRun) -> IndexMap<String, Arc<Value>> {
    let mut state: IndexMap<String, Arc<Value>> = run
        .input
        .iter()
        .map(|(k, v)| (k.clone(), Arc::new(v.clone())))
        .collect();
    for agent in &run.agents {
        for (field, value) in &agent.writes {
            state.insert(field.to_string(), value.clone());
        }
    }
    state
}

async fn show(
    store: &Store,
    id: &str,
    output: Output,
    timeline: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    let Some(run) = store.get_run(id).await? else {
        eprintln!("error: no run {id} in {}", store.url());
        return Ok(ExitCode::from(exit::INVALID));
    };
    if let Some(path) = timeline {
        let pipeline = same_pipeline(&run).ok();
        // In the pipeline's order when it is at hand, else by start.
        // A `foreach` agent is one bar labelled with its progress: its
        // instances are nested (and counted) under it, not drawn apart; so
        // are a group's members and rounds.
        let mut agents: Vec<(String, AgentReport)> = braid_core::report::nest_instances(
            run.agents
                .iter()
                .map(|a| (a.agent.to_string(), a.report.clone())),
        )
        .into_iter()
        .collect();
        if let Some(p) = &pipeline {
            agents.sort_by_key(|(name, _)| p.agent_names().position(|n| n == name));
        }
        let critical = super::timeline::critical_path(pipeline.as_ref(), &agents);
        let title = format!("{} — run {}", run.summary.pipeline, run.summary.run_id);
        std::fs::write(path, super::timeline::svg(&title, &agents, &critical))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let (state, note) = state_of(&run);
    let agents: IndexMap<String, AgentReport> = braid_core::report::nest_instances(
        run.agents
            .iter()
            .map(|a| (a.agent.to_string(), a.report.clone())),
    );
    write_out(|out| match output {
        Output::Json => {
            let mut value = serde_json::to_value(&run)?;
            value["state"] = serde_json::to_value(&state)?;
            value["agents"] = serde_json::to_value(&agents)?;
            if let Some(note) = &note {
                value["state_note"] = json!(note);
            }
            serde_json::to_writer(&mut *out, &value)?;
            writeln!(out)
        }
        Output::Text => {
            let s = &run.summary;
            writeln!(out, "run {} of {}: {}", s.run_id, s.pipeline, s.status)?;
            writeln!(
                out,
                "  started {}, makespan {}, checkpoint {}",
                format_time(s.created_at_ms),
                fmt_ms(s.makespan_ms),
                s.checkpoint
            )?;
            if let Some(error) = &s.error {
                writeln!(out, "  {error}")?;
            }
            writeln!(out)?;
            let width = agents.keys().map(|a| a.len()).max().unwrap_or(5).max(5);
            writeln!(
                out,
                "{:<width$}  {:<9}  {:>10}  {:>10}  {:>8}  note",
                "agent", "status", "start", "duration", "attempts"
            )?;
            for (name, a) in &agents {
                let note = a.error.as_deref().or(a.reason.as_deref()).unwrap_or("");
                writeln!(
                    out,
                    "{name:<width$}  {:<9}  {:>10}  {:>10}  {:>8}  {}",
                    a.status.to_string(),
                    fmt_ms(a.start_ms),
                    fmt_ms(a.duration_ms),
                    a.attempts,
                    note.lines().next().unwrap_or("")
                )?;
            }
            writeln!(out)?;
            writeln!(out, "input:")?;
            serde_json::to_writer_pretty(&mut *out, &run.input)?;
            writeln!(out)?;
            writeln!(out, "state:")?;
            serde_json::to_writer_pretty(&mut *out, &state)?;
            writeln!(out)?;
            if let Some(note) = &note {
                writeln!(out, "note: {note}")?;
            }
            Ok(())
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn resume(
    store: &Store,
    id: &str,
    force: bool,
    display: &DisplayArgs,
) -> anyhow::Result<ExitCode> {
    let Some(run) = store.get_run(id).await? else {
        eprintln!("error: no run {id} in {}", store.url());
        return Ok(ExitCode::from(exit::INVALID));
    };
    let refuse = |why: String| {
        eprintln!("error: cannot resume run {id}: {why}");
        Ok(ExitCode::from(exit::INVALID))
    };
    match run.summary.status.as_str() {
        "completed" => return refuse("it already completed".to_owned()),
        "running" => match run.owner.as_deref().map(process::owner_state) {
            Some(process::Owner::Alive) => {
                return refuse(format!(
                    "it is still running (process {})",
                    run.owner.as_deref().unwrap_or("?")
                ));
            }
            Some(process::Owner::Elsewhere(host)) if !force => {
                return refuse(format!(
                    "it was last running on {host}, which this machine cannot check; \
                     if that process is gone, resume with --force"
                ));
            }
            _ => {}
        },
        _ => {}
    }
    let Some(path) = &run.pipeline_path else {
        return refuse("it did not come from a pipeline file".to_owned());
    };
    let pipeline = match Pipeline::from_file_with(path, &crate::kinds()) {
        Ok(p) => p,
        Err(err) => return refuse(format!("its pipeline no longer loads: {err}")),
    };
    if pipeline.content_hash() != run.pipeline_hash && !force {
        return refuse(format!(
            "{path} has changed since the run started; use --force to resume it with the \
             current file (completed agents whose definition and upstream are unchanged keep \
             their results; changed agents and everything downstream of them run again)"
        ));
    }
    let input = match pipeline.check_input(&Value::Object(run.input.clone())) {
        Ok(input) => input,
        Err(err) => return refuse(format!("its input no longer fits the pipeline: {err}")),
    };
    if !store.claim(&run).await? {
        return refuse("another process took it over just now".to_owned());
    }
    // Its dead owner's agents may have left processes running: they go
    // before anything runs again, or their side effects would happen twice.
    let leftovers = store.kill_leftover_processes(id).await?;
    if !leftovers.killed.is_empty() {
        eprintln!(
            "note: killed what the run's previous process left running: {}",
            leftovers.killed.join(", ")
        );
    }
    if !leftovers.elsewhere.is_empty() {
        eprintln!(
            "warning: processes of this run on another host or of a live process were not killed: {}",
            leftovers.elsewhere.join(", ")
        );
    }
    let policy =
        braid_store::parse_policy(&run.summary.checkpoint).unwrap_or(CheckpointPolicy::Agent);
    let options = RunOptions {
        run_id: Some(run.summary.run_id.clone()),
        checkpoint: Some(policy),
        resume: Some(ResumePoint { agents: run.agents }),
        ..RunOptions::default()
    };
    execute(&pipeline, input, options, display, Some(store)).await
}
