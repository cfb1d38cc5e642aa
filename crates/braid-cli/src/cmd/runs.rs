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
use serde_json::{Value, json};

use super::run::{
    CacheArgs, DispatchArgs, DisplayArgs, Output, StoreArgs, execute, fmt_ms, runtime,
};
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
        /// Only runs with this status.
        #[arg(long, value_parser = RUN_STATUSES)]
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
        /// The run's id, or the start of it.
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
        /// The run's id, or the start of it.
        id: String,
        /// Resume even though the pipeline file changed since the run
        /// started, or the run was last seen running on another host.
        /// Stored results are still reused only for agents whose
        /// definition, and every upstream one, is unchanged.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        display: DisplayArgs,
        #[command(flatten)]
        cache: CacheArgs,
        #[command(flatten)]
        dispatch: DispatchArgs,
    },
    /// Answer an `input` agent of a waiting run, and continue the run here
    /// (printing its report as `braid run` does).
    Answer {
        /// The run's id, or the start of it.
        id: String,
        /// The `input` agent answered.
        agent: String,
        /// The answer, as JSON (checked against the agent's `schema`),
        /// @FILE to read it from a file, or @- from stdin.
        #[arg(long)]
        value: String,
        /// Continue even though the pipeline file changed since the run
        /// started (as `resume --force`).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        display: DisplayArgs,
        #[command(flatten)]
        cache: CacheArgs,
        #[command(flatten)]
        dispatch: DispatchArgs,
    },
    /// A new run from an earlier one: every agent not downstream of
    /// `--from` (or of a field set with `--set`) keeps its recorded
    /// result without running; the rest run.
    Fork {
        /// The run forked: its id, or the start of it.
        id: String,
        /// Where to re-run from: an agent (`review`), an instance
        /// (`summarize[3]`), or a member of a group's run
        /// (`per_doc[2].classify`, `refine#2.critique`).
        #[arg(long)]
        from: Option<String>,
        /// FIELD=JSON: a value the fork starts with instead (an input
        /// field, or a field an agent wrote); its readers re-run.
        #[arg(long = "set", value_name = "FIELD=JSON")]
        set: Vec<String>,
        /// Run the fork with this pipeline file instead of the run's own
        /// (agents whose definition changed re-run too).
        #[arg(long)]
        pipeline: Option<std::path::PathBuf>,
        #[command(flatten)]
        display: DisplayArgs,
        #[command(flatten)]
        cache: CacheArgs,
        #[command(flatten)]
        dispatch: DispatchArgs,
    },
    /// Agents' log lines kept with a run (each agent's last
    /// lines, oldest first; see `KEPT_LOG_LINES` in the docs).
    Logs {
        /// The run's id, or the start of it.
        id: String,
        /// Only this agent's lines (a `foreach` agent's include its
        /// instances', each after the instance's name).
        #[arg(long)]
        agent: Option<String>,
        /// Keep printing lines as agents' records land, until the run is no
        /// longer running (lines reach the store when their agent ends;
        /// `braid run --verbose` streams them as they come).
        #[arg(long, short)]
        follow: bool,
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

/// Every status a stored run can have (`abandoned`: `running` past its
/// lease, with nobody renewing it).
const RUN_STATUSES: [&str; 7] = [
    "running",
    "abandoned",
    "waiting",
    "completed",
    "failed",
    "cancelled",
    "interrupted",
];

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
    humantime::parse_duration(text)
        .map_err(|e| format!("expected a duration such as 30d, 12h or 1h30m, found `{text}` ({e})"))
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
            RunsCommand::Resume { .. } | RunsCommand::Answer { .. } | RunsCommand::Fork { .. } => {
                args.store.open_writable().await?
            }
            _ => args.store.open().await?,
        };
        // A run named by the start of its id: the one it names, or a
        // clear error (none, or several: which).
        let mut command = args.command;
        if let RunsCommand::Show { id, .. }
        | RunsCommand::Resume { id, .. }
        | RunsCommand::Answer { id, .. }
        | RunsCommand::Fork { id, .. }
        | RunsCommand::Logs { id, .. } = &mut command
        {
            match store.resolve_run_id(id).await {
                Ok(full) => *id = full,
                Err(
                    err @ (braid_store::StoreError::NoSuchRun(_)
                    | braid_store::StoreError::AmbiguousRun { .. }),
                ) => {
                    eprintln!("error: {err} ({})", store.url());
                    return Ok(ExitCode::from(exit::INVALID));
                }
                Err(err) => return Err(err.into()),
            }
        }
        match command {
            RunsCommand::Logs { id, agent, follow } => {
                logs(&store, &id, agent.as_deref(), follow).await
            }
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
            RunsCommand::Resume {
                id,
                force,
                display,
                cache,
                dispatch,
            } => resume(&store, &id, force, &display, &cache, &dispatch).await,
            RunsCommand::Answer {
                id,
                agent,
                value,
                force,
                display,
                cache,
                dispatch,
            } => {
                let how = (&display, &cache, &dispatch);
                answer(&store, &id, &agent, &value, force, how).await
            }
            RunsCommand::Fork {
                id,
                from,
                set,
                pipeline,
                display,
                cache,
                dispatch,
            } => {
                fork(
                    &store,
                    &id,
                    from.as_deref(),
                    &set,
                    pipeline.as_deref(),
                    (&display, &cache, &dispatch),
                )
                .await
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
            ..RunFilter::default()
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
                "{:<36}  {:<20}  {:<11}  {:>12}  {:<20}  started by",
                "run", "pipeline", "status", "makespan", "started"
            )?;
            for run in &runs {
                writeln!(
                    out,
                    "{:<36}  {:<20}  {:<11}  {:>12}  {:<20}  {}",
                    run.run_id,
                    run.pipeline,
                    run.status,
                    fmt_ms(run.makespan_ms),
                    format_time(run.created_at_ms),
                    run.started_by.as_deref().unwrap_or("-")
                )?;
            }
            Ok(())
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `braid runs logs`: each agent's kept lines, in the order agents
/// started; with `follow`, more as agents' records land.
async fn logs(
    store: &Store,
    id: &str,
    agent: Option<&str>,
    follow: bool,
) -> anyhow::Result<ExitCode> {
    let mut printed: std::collections::HashMap<String, (u32, usize)> = Default::default();
    let mut known_agent = agent.is_none();
    loop {
        let Some(run) = store.run_logs(id).await? else {
            eprintln!("error: no run {id} in {}", store.url());
            return Ok(ExitCode::from(exit::INVALID));
        };
        write_out(|out| {
            for (name, report) in &run.agents {
                let name = name.as_str();
                if agent.is_some_and(|a| a != name) {
                    continue;
                }
                known_agent = true;
                // A record seen before prints only what it has gained
                // (a retried or resumed agent's record replaces its
                // earlier one).
                let seen = printed.entry(name.to_owned()).or_default();
                let from = if seen.0 == report.attempts { seen.1 } else { 0 };
                if from == 0 && report.logs_dropped > 0 && from < report.logs.len() {
                    writeln!(
                        out,
                        "{name} | ({} earlier lines dropped)",
                        report.logs_dropped
                    )?;
                }
                for line in report.logs.iter().skip(from) {
                    if agent.is_some() {
                        writeln!(out, "{line}")?;
                    } else {
                        writeln!(out, "{name} | {line}")?;
                    }
                }
                *seen = (report.attempts, report.logs.len().max(from));
            }
            out.flush()
        })?;
        let running = run.status == braid_core::report::RUNNING;
        if !known_agent
            && (!follow || !running)
            && let Some(agent) = agent
        {
            let names: Vec<&str> = run.agents.iter().map(|(a, _)| a.as_str()).collect();
            eprintln!(
                "error: run {id} has no record of agent `{agent}` (it has: {})",
                names.join(", ")
            );
            return Ok(ExitCode::from(exit::INVALID));
        }
        if !follow || !running {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
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
        (
            report.kept_running,
            "running in a live process or on another host",
        ),
        (
            report.kept_newest,
            "among the newest of their pipeline (--keep-last)",
        ),
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
fn state_of(run: &StoredRun) -> (braid_core::report::ByName<Arc<Value>>, Option<String>) {
    match same_pipeline(run) {
        Ok(pipeline) => match pipeline.check_input(&Value::Object(run.input.clone())) {
            Ok(input) => (pipeline.replay(input, &run.agents), None),
            Err(e) => (run.recorded_state(), Some(e.to_string())),
        },
        Err(why) => (
            run.recorded_state(),
            Some(format!(
                "{why}; fields written by several agents show the last writer's value"
            )),
        ),
    }
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
                .map(|a| (a.agent.clone(), a.report.clone())),
        )
        .into_iter()
        .map(|(name, report)| (name.to_string(), report))
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
    let agents: braid_core::report::ByName<AgentReport> = braid_core::report::nest_instances(
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
            if let Some(who) = &s.started_by {
                writeln!(out, "  started by {who}")?;
            }
            if let Some(error) = &s.error {
                writeln!(out, "  {error}")?;
            }
            if let Some(parent) = &run.parent_id {
                writeln!(
                    out,
                    "  forked from run {parent}, re-running from {}",
                    run.forked_from.as_deref().unwrap_or("?")
                )?;
            }
            if !run.forks.is_empty() {
                writeln!(out, "  forks: {}", run.forks.join(", "))?;
            }
            if s.status == braid_core::report::RUNNING || s.status == braid_store::ABANDONED {
                // Who holds it, since which takeover, and until when.
                let lease = match run.lease_until_ms {
                    Some(t) if s.status == braid_store::ABANDONED => {
                        format!(", lease expired {}", format_time(t))
                    }
                    Some(t) => format!(", leased until {}", format_time(t)),
                    None => String::new(),
                };
                writeln!(
                    out,
                    "  owner {} (epoch {}){lease}",
                    run.owner.as_deref().unwrap_or("?"),
                    run.epoch
                )?;
            }
            writeln!(out)?;
            let width = agents.keys().map(|a| a.len()).max().unwrap_or(5).max(5);
            writeln!(
                out,
                "{:<width$}  {:<9}  {:>10}  {:>10}  {:>8}  note",
                "agent", "status", "start", "duration", "attempts"
            )?;
            for (name, a) in &agents {
                let kept = a.reused_from.as_ref().map(|r| format!("kept from run {r}"));
                let waits =
                    (a.status == braid_core::AgentStatus::Waiting).then(|| match a.deadline_ms {
                        Some(d) => format!("waiting for an answer until {}", format_time(d)),
                        None => "waiting for an answer".to_owned(),
                    });
                let note = a
                    .error
                    .as_deref()
                    .or(a.reason.as_deref())
                    .or(kept.as_deref())
                    .or(waits.as_deref())
                    .unwrap_or("");
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
            // Failed attempts before the last (whose error is the note).
            for (name, a) in &agents {
                let earlier = a
                    .failures
                    .len()
                    .saturating_sub(usize::from(a.error.is_some()));
                for f in a.failures.iter().take(earlier) {
                    let first = f.error.lines().next().unwrap_or("");
                    writeln!(
                        out,
                        "  {name}: attempt {} failed after {}: {first}",
                        f.attempt,
                        fmt_ms(Some(f.duration_ms))
                    )?;
                }
            }
            let logged: Vec<(&Arc<str>, usize)> = agents
                .iter()
                .filter(|(_, a)| !a.logs.is_empty())
                .map(|(n, a)| (n, a.logs.len() + a.logs_dropped as usize))
                .collect();
            if !logged.is_empty() {
                let list: Vec<String> = logged.iter().map(|(n, c)| format!("{n} ({c})")).collect();
                writeln!(
                    out,
                    "  log lines: {}; see `braid runs logs {}`",
                    list.join(", "),
                    s.run_id
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
    cache: &CacheArgs,
    dispatch: &DispatchArgs,
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
    let (pipeline, input) = match continuable(&run, force) {
        Ok(loaded) => loaded,
        Err(why) => return refuse(why),
    };
    if !store.claim(&run).await? {
        return refuse("another process took it over just now".to_owned());
    }
    continue_run(store, run, pipeline, input, (display, cache, dispatch)).await
}

/// The pipeline and input a stored run continues with (resume, answer),
/// or why it cannot: its file is gone, no longer loads, changed (unless
/// `force`), or no longer takes its input.
fn continuable(run: &StoredRun, force: bool) -> Result<(Pipeline, braid_core::ValidInput), String> {
    let Some(path) = &run.pipeline_path else {
        return Err("it did not come from a pipeline file".to_owned());
    };
    let pipeline = Pipeline::from_file_with(path, &crate::kinds())
        .map_err(|err| format!("its pipeline no longer loads: {err}"))?;
    if pipeline.content_hash() != run.pipeline_hash && !force {
        return Err(format!(
            "{path} has changed since the run started; use --force to continue it with the \
             current file (completed agents whose definition and upstream are unchanged keep \
             their results; changed agents and everything downstream of them run again)"
        ));
    }
    let input = pipeline
        .check_input(&Value::Object(run.input.clone()))
        .map_err(|err| format!("its input no longer fits the pipeline: {err}"))?;
    Ok((pipeline, input))
}

/// Continues `run`, which this process has claimed, from its records.
async fn continue_run(
    store: &Store,
    run: StoredRun,
    mut pipeline: Pipeline,
    input: braid_core::ValidInput,
    (display, cache, dispatch): (&DisplayArgs, &CacheArgs, &DispatchArgs),
) -> anyhow::Result<ExitCode> {
    dispatch.apply(&mut pipeline, Some(store)).await?;
    let pipeline = &pipeline;
    let id = run.summary.run_id.clone();
    // Its dead owner's agents may have left processes running: they go
    // before anything runs again, or their side effects would happen twice.
    let leftovers = store.kill_leftover_processes(&id).await?;
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
        resumed_after: Some(run.summary.age()),
        cache: cache.of(pipeline, Some(store)),
        ..RunOptions::default()
    };
    execute(pipeline, input, options, display, Some(store)).await
}

/// Reads `--value`: JSON, or @FILE.
fn read_value(arg: &str) -> anyhow::Result<Value> {
    let text = match arg.strip_prefix('@') {
        Some("-") => super::run::read_stdin()?,
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?
        }
        None => arg.to_owned(),
    };
    serde_json::from_str(&text).with_context(|| format!("the value is not valid JSON: {text}"))
}

async fn answer(
    store: &Store,
    id: &str,
    agent: &str,
    value: &str,
    force: bool,
    how: (&DisplayArgs, &CacheArgs, &DispatchArgs),
) -> anyhow::Result<ExitCode> {
    let refuse = |why: String| {
        eprintln!("error: cannot answer `{agent}` of run {id}: {why}");
        Ok(ExitCode::from(exit::INVALID))
    };
    let Some(run) = store.get_run(id).await? else {
        eprintln!("error: no run {id} in {}", store.url());
        return Ok(ExitCode::from(exit::INVALID));
    };
    if run.summary.status != "waiting" {
        let why = match run.summary.status.as_str() {
            "running" => format!(
                "it is still running (process {}); it takes answers once it waits, or through \
                 the server that runs it",
                run.owner.as_deref().unwrap_or("?")
            ),
            status => format!("it is {status}, not waiting for an answer"),
        };
        return refuse(why);
    }
    let value = match read_value(value) {
        Ok(value) => value,
        Err(err) => return refuse(format!("{err:#}")),
    };
    let (pipeline, input) = match continuable(&run, force) {
        Ok(loaded) => loaded,
        Err(why) => return refuse(why),
    };
    let checked = match pipeline.check_answer(agent, &value) {
        Ok(checked) => checked,
        Err(err) => {
            eprintln!("error: {err}");
            return Ok(ExitCode::from(exit::INVALID));
        }
    };
    let field = pipeline
        .agents()
        .iter()
        .find(|a| a.name() == agent)
        .and_then(|a| a.input())
        .map(|i| i.field().to_owned())
        .unwrap_or_default();
    if let Err(refused) = store.answer(id, agent, &field, checked.value()).await? {
        return refuse(refused.to_string());
    }
    eprintln!("braid: answered `{agent}`; continuing run {id}");
    // Its records, the answer included, as the run continues from them.
    let Some(run) = store.get_run(id).await? else {
        anyhow::bail!(
            "run {id} vanished from {} while it was answered",
            store.url()
        );
    };
    continue_run(store, run, pipeline, input, how).await
}

/// Parses `--set FIELD=JSON`.
fn parse_set(arg: &str) -> Result<(String, Value), String> {
    let (field, json) = arg
        .split_once('=')
        .ok_or_else(|| format!("--set `{arg}`: expected FIELD=JSON"))?;
    let value = serde_json::from_str(json)
        .map_err(|e| format!("--set `{field}`: the value is not valid JSON ({e}): {json}"))?;
    Ok((field.to_owned(), value))
}

async fn fork(
    store: &Store,
    id: &str,
    from: Option<&str>,
    set: &[String],
    file: Option<&std::path::Path>,
    (display, cache, dispatch): (&DisplayArgs, &CacheArgs, &DispatchArgs),
) -> anyhow::Result<ExitCode> {
    let refuse = |why: String| {
        eprintln!("error: cannot fork run {id}: {why}");
        Ok(ExitCode::from(exit::INVALID))
    };
    let Some(parent) = store.get_run(id).await? else {
        eprintln!("error: no run {id} in {}", store.url());
        return Ok(ExitCode::from(exit::INVALID));
    };
    if parent.summary.status == "running"
        && matches!(
            parent.owner.as_deref().map(process::owner_state),
            Some(process::Owner::Alive)
        )
    {
        return refuse(format!(
            "it is still running (process {}); fork it once it has ended",
            parent.owner.as_deref().unwrap_or("?")
        ));
    }
    let set = match set
        .iter()
        .map(|s| parse_set(s))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(set) => set,
        Err(why) => return refuse(why),
    };
    let path = match (file, &parent.pipeline_path) {
        (Some(file), _) => file.to_path_buf(),
        (None, Some(path)) => std::path::PathBuf::from(path),
        (None, None) => {
            return refuse(
                "it did not come from a pipeline file; give one with --pipeline".to_owned(),
            );
        }
    };
    let mut pipeline = match Pipeline::from_file_with(&path, &crate::kinds()) {
        Ok(p) => p,
        Err(err) => return refuse(format!("{} does not load: {err}", path.display())),
    };
    if pipeline.content_hash() != parent.pipeline_hash {
        eprintln!(
            "note: {} differs from the run's pipeline: agents whose definition changed re-run too",
            path.display()
        );
    }
    dispatch.apply(&mut pipeline, Some(store)).await?;
    let fork = match pipeline.fork(id, &parent.agents, &parent.input, from, &set) {
        Ok(fork) => fork,
        Err(err) => return refuse(err.to_string()),
    };
    let input = match pipeline.check_input(&Value::Object(fork.input.clone())) {
        Ok(input) => input,
        Err(err) => return refuse(err.to_string()),
    };
    let policy = match braid_store::parse_policy(&parent.summary.checkpoint) {
        Some(CheckpointPolicy::Agent) => CheckpointPolicy::Agent,
        _ => CheckpointPolicy::End,
    };
    let run_id = braid_core::run::new_run_id();
    let mut point = from.map(str::to_owned).into_iter().collect::<Vec<_>>();
    point.extend(set.iter().map(|(field, _)| format!("{field}=…")));
    store
        .record_fork(&braid_store::ForkRecord {
            run_id: run_id.clone(),
            parent_id: id.to_owned(),
            forked_from: point.join(", "),
            pipeline: pipeline.name().to_owned(),
            pipeline_hash: pipeline.content_hash().to_owned(),
            pipeline_path: pipeline.source().map(|p| p.display().to_string()),
            checkpoint: policy,
            input: fork.input.clone(),
            set_writes: fork.set_writes.clone(),
        })
        .await?;
    eprintln!(
        "braid: run {run_id} forks {id}; re-running: {}",
        if fork.rerun.is_empty() {
            "(what changed)".to_owned()
        } else {
            fork.rerun.join(", ")
        }
    );
    let options = RunOptions {
        run_id: Some(run_id),
        checkpoint: Some(policy),
        resume: Some(fork.resume),
        cache: cache.of(&pipeline, Some(store)),
        ..RunOptions::default()
    };
    execute(&pipeline, input, options, display, Some(store)).await
}
