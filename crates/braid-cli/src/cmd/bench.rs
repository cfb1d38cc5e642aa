//! `braid bench`: the benchmark scenarios of `shared/peers/langgraph_peer.py`
//! run on braid, in process, printing one JSON object per scenario with the
//! same field names, so the two can be compared side by side.
//!
//! Scenarios (agents are `sleep` agents standing for I/O):
//! - `seed`: triage → {data, metrics, cost} → optimization → report, L each; ideal 4L.
//! - `sequential`: the seed pipeline run one agent at a time; ideal 6L.
//! - `skewed`: triage → slow(10L) ‖ quick(L) → slow2(9L) → join; ideal 12L.
//! - `overhead`: the seed pipeline with no-op agents, R runs one after another.
//! - `wide`: 1 → N no-op agents → join.
//! - `deep`: a chain of N no-op agents.
//! - `many`: C concurrent seed runs with L-ms agents (throughput, peak memory).
//! - `fanout`: plan → one `work` instance per element of a list of N → join;
//!   per-item cost with no-op items, and makespan / L with L-ms items.
//! - `mapchain`: 100 items each through a 3-stage group (`foreach`); item
//!   0 is slow (10L) in stage 1, item 1 in stage 2, item 2 in stage 3;
//!   ideal 14L (no stage barrier between items).
//! - `loop`: draft → critique repeated for 10 rounds of L each (ideal
//!   20L), and 1,000 rounds of no-ops (per-round cost).
//! - `fanout-large`: one run fanning out over 100,000 no-op items (makespan
//!   and the process's peak RSS; run it alone for a meaningful peak).
//! - `persist`: the `overhead` runs with checkpoints (`none`, `end`, `agent`)
//!   to SQLite (a fresh file) and, with `--postgres URL`, PostgreSQL: one
//!   run at a time waiting for its commit (`wait_each`, as `braid run`
//!   does), one at a time without waiting, and 100 in flight; cost per run
//!   (until every checkpoint is committed) and transactions per run.
//! - `cache`: 100 cached no-op agents (side by side, `wide`, and one after
//!   another, `chain`) with the cache in SQLite (and PostgreSQL with
//!   `--postgres`): uncached, cold (an empty cache: every agent misses,
//!   runs and is stored) and warm (every agent hits); the cost per hit.
//!   Like `fanout-large`, not part of `all`: run it by name.
//! - `dispatch`: a chain of 200 no-op agents run in-process and through
//!   NATS JetStream to a worker (in this process, on a thread of its own;
//!   the server is `--nats URL`, or a `nats-server -js` the bench starts):
//!   what dispatch adds per agent, p50 and p99. Not part of `all`.
//! - `workers`: C concurrent seed runs with L-ms agents whose agents run
//!   on `braid worker`s started elsewhere (`--nats URL` required; see
//!   `scripts/bench-workers.sh`, which starts 1, 2 and 4 workers and
//!   writes their pipeline with `--emit-pipeline`). Not part of `all`.
//! - `tools`: an `llm` agent against a stand-in model in this process
//!   (an OpenAI-compatible endpoint with no latency) that calls a no-op
//!   tool agent K times in one turn, then answers: what one tool call
//!   costs, from K = 1 and K = 101 (the two model turns cancel out).
//!   With `--mcp "PROGRAM ARGS..."` (an MCP server over stdio offering
//!   `echo`, such as `@modelcontextprotocol/server-everything`), the same
//!   for that server's `echo`: a whole MCP round trip per call.
//!   Not part of `all`.
//!
//! Times are medians of `--repeat` measurements (after one warm-up); `min_ms`
//! is the fastest, which is what the peer script reports.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use braid_core::{CheckpointPolicy, Pipeline, RunOptions, RunStatus};
use braid_store::{Store, StoreSettings};
use clap::Args;
use serde_json::{Value, json};

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Which scenario to run.
    #[arg(long, default_value = "all", value_parser = [
        "all", "seed", "sequential", "skewed", "overhead", "wide", "deep", "many", "persist",
        "fanout", "fanout-large", "mapchain", "loop", "cache", "dispatch", "workers", "tools",
    ])]
    scenario: String,
    /// L: how long each agent's simulated I/O takes, in ms.
    #[arg(long, default_value_t = 50.0)]
    latency_ms: f64,
    /// R: runs one after another in `overhead`.
    #[arg(long, default_value_t = 200)]
    runs: usize,
    /// N: agents in `wide` and `deep`, items in `fanout`.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Threads `many` spreads its runs over, each a current-thread
    /// runtime (as `braid serve`) [default: one per core]; 0 runs them
    /// all on the bench's one thread.
    #[arg(long)]
    run_threads: Option<usize>,
    /// C: concurrent runs in `many`.
    #[arg(long, default_value_t = 1000)]
    concurrent: usize,
    /// How many measurements each figure is the median of.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Only this checkpoint policy in `persist` (none, end or agent), one
    /// run at a time waiting for its commit: what
    /// `scripts/bench-instructions.sh` counts per checkpointed agent.
    #[arg(long, value_name = "POLICY", value_parser = ["none", "end", "agent"])]
    checkpoint: Option<String>,
    /// PostgreSQL for `persist` and `cache` (its tables are created if missing).
    #[arg(long, env = "BRAID_BENCH_POSTGRES_URL")]
    postgres: Option<String>,
    /// NATS (with JetStream) for `dispatch` and `workers`.
    #[arg(long, value_name = "URL")]
    nats: Option<String>,
    /// `tools`: also measure calls of `echo` on this MCP server over stdio
    /// (its command line, split at spaces).
    #[arg(long, value_name = "COMMAND")]
    mcp: Option<String>,
    /// Print the scenario's pipeline (YAML) instead of running it: what
    /// `braid worker --pipelines` needs for `workers`.
    #[arg(long)]
    emit_pipeline: bool,
}

const SCENARIOS: &[&str] = &[
    "seed",
    "sequential",
    "skewed",
    "overhead",
    "wide",
    "deep",
    "many",
    "persist",
    "fanout",
    "mapchain",
    "loop",
];

use braid_core::scenarios::{
    cache_yaml, deep_yaml, fanout_yaml, loop_yaml, mapchain_yaml, seed_yaml, skewed_yaml, wide_yaml,
};

/// The builtins of `mapchain` and `loop`: `stage0`..`stage2` take 10L on
/// the item whose number is theirs and L on the others (on the same
/// precise timer as `sleep` agents); `critique` takes L and writes
/// `round + 1`.
fn stage_kinds(l: f64) -> braid_core::AgentKinds {
    let mut kinds = braid_core::AgentKinds::standard();
    for stage in 0..3u64 {
        let out = ["a", "b", "c"][stage as usize];
        kinds.builtin_fn(&format!("stage{stage}"), move |reads| async move {
            let item = reads.get("item").and_then(serde_json::Value::as_u64);
            let ms = if item == Some(stage) { 10.0 * l } else { l };
            braid_core::agent::sleep::precise_sleep(std::time::Duration::from_secs_f64(ms / 1e3))
                .await;
            let mut writes = braid_core::agent::Writes::new();
            writes.insert(out.to_owned(), json!(item));
            Ok(writes)
        });
    }
    kinds.builtin_fn("critique", move |reads| async move {
        if l > 0.0 {
            braid_core::agent::sleep::precise_sleep(std::time::Duration::from_secs_f64(l / 1e3))
                .await;
        }
        let round = reads
            .get("round")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        let mut writes = braid_core::agent::Writes::new();
        writes.insert("critique".to_owned(), json!(round + 1));
        Ok(writes)
    });
    kinds
}

fn load_with(yaml: &str, kinds: &braid_core::AgentKinds) -> anyhow::Result<Arc<Pipeline>> {
    Ok(Arc::new(
        Pipeline::from_yaml_str_with(yaml, kinds).map_err(|e| anyhow::anyhow!("{e}"))?,
    ))
}

fn load(yaml: &str) -> anyhow::Result<Arc<Pipeline>> {
    Ok(Arc::new(
        Pipeline::from_yaml_str(yaml).context("a benchmark pipeline failed to load")?,
    ))
}

/// Runs once and returns the makespan in ms (the run must complete).
/// Wall-clock time of one whole run, report included (what the peer script
/// times around `ainvoke`): for fan-outs, whose report lists every instance.
async fn wall_ms(pipeline: &Pipeline) -> anyhow::Result<f64> {
    let start = Instant::now();
    makespan(pipeline, false).await?;
    Ok(start.elapsed().as_secs_f64() * 1e3)
}

async fn makespan(pipeline: &Pipeline, sequential: bool) -> anyhow::Result<f64> {
    let input = pipeline.check_input(&Value::Null)?;
    let report = pipeline
        .run(
            input,
            RunOptions {
                sequential,
                ..Default::default()
            },
        )
        .await;
    anyhow::ensure!(
        report.status == RunStatus::Completed,
        "benchmark run of {} ended {}: {:?}",
        pipeline.name(),
        report.status,
        report.error
    );
    Ok(report.makespan_ms)
}

/// `c` seed runs started at once: ms until the last one finishes.
///
/// Over per-core runtimes, each core is handed its share of the runs in
/// one cross-thread hop and starts and joins them itself, as a server's
/// core does with the requests it accepts: handing each run over, and
/// joining it back, through this thread took two cross-thread wake-ups
/// (an `eventfd` write each) per run, which at 100,000 runs measured the
/// bench's own thread more than the engine.
async fn many_once(
    pipeline: &Arc<Pipeline>,
    c: usize,
    cores: Option<&braid_server::cores::Cores>,
) -> anyhow::Result<f64> {
    /// Starts `runs` runs here and waits for them: how many completed.
    async fn share(pipeline: Arc<Pipeline>, runs: usize) -> anyhow::Result<usize> {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..runs {
            let pipeline = pipeline.clone();
            set.spawn(async move { makespan(&pipeline, false).await });
        }
        let mut completed = 0;
        while let Some(result) = set.join_next().await {
            result??;
            completed += 1;
        }
        Ok(completed)
    }
    let start = Instant::now();
    let completed = match cores {
        Some(cores) => {
            let n = cores.len();
            let mut shares = tokio::task::JoinSet::new();
            for (i, handle) in cores.handles().iter().enumerate() {
                let runs = c / n + usize::from(i < c % n);
                shares.spawn_on(share(pipeline.clone(), runs), handle);
            }
            let mut completed = 0;
            while let Some(result) = shares.join_next().await {
                completed += result??;
            }
            completed
        }
        None => share(pipeline.clone(), c).await?,
    };
    anyhow::ensure!(
        completed == c,
        "{completed} of {c} concurrent runs completed"
    );
    Ok(start.elapsed().as_secs_f64() * 1e3)
}

/// What [`measure`] found.
struct Measured {
    median: f64,
    min: f64,
    /// The warm-up round, left out of the others.
    warm_up: f64,
}

/// A warm-up, then `repeat` measurements.
async fn measure<F, Fut>(repeat: usize, mut once: F) -> anyhow::Result<Measured>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<f64>>,
{
    let warm_up = once().await?;
    let mut samples = Vec::with_capacity(repeat.max(1));
    for _ in 0..repeat.max(1) {
        samples.push(once().await?);
    }
    samples.sort_by(f64::total_cmp);
    Ok(Measured {
        median: samples[samples.len() / 2],
        min: samples[0],
        warm_up,
    })
}

/// Peak resident memory of this process, in MB (Linux `VmHWM`).
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// `runs` no-op seed runs with `in_flight` at a time, checkpointed to
/// `store` with `policy`; the time until the last checkpoint is committed.
async fn persist_once(
    pipeline: &Arc<Pipeline>,
    store: &Arc<Store>,
    policy: CheckpointPolicy,
    runs: usize,
    in_flight: usize,
    wait_each: bool,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..runs {
        if i >= in_flight
            && let Some(done) = tasks.join_next().await
        {
            done??;
        }
        let (pipeline, store) = (pipeline.clone(), store.clone());
        tasks.spawn(async move {
            let input = pipeline.check_input(&Value::Null)?;
            let options = RunOptions {
                checkpoint: Some(policy),
                checkpointer: Some(store.checkpointer()),
                ..Default::default()
            };
            let report = pipeline.run(input, options).await;
            anyhow::ensure!(
                report.status == RunStatus::Completed,
                "a persist run failed"
            );
            if wait_each {
                // As `braid run` does: the run returns once it is committed.
                store.flush().await?;
            }
            Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    store.flush().await?;
    Ok(start.elapsed().as_secs_f64() * 1e3)
}

async fn persist(a: &BenchArgs) -> anyhow::Result<Vec<Value>> {
    let pipeline = load(&seed_yaml(0.0))?;
    let dir = std::env::temp_dir().join(format!("braid-bench-{}", std::process::id()));
    let sqlite = format!("sqlite://{}", dir.join("bench.db").display());
    let mut backends = vec![("sqlite", sqlite)];
    if let Some(url) = &a.postgres {
        backends.push(("postgres", url.clone()));
    }
    let runs = a.runs.max(1);
    let only = match &a.checkpoint {
        Some(policy) => Some(
            policy
                .parse::<CheckpointPolicy>()
                .map_err(anyhow::Error::msg)?,
        ),
        None => None,
    };
    let mut lines = Vec::new();
    for (backend, url) in backends {
        let store = Arc::new(
            Store::connect(&url, &StoreSettings::default())
                .await
                .with_context(|| format!("cannot open the {backend} store for the benchmark"))?,
        );
        // (runs in flight, whether each run waits until it is committed)
        let modes: &[(usize, bool)] = if only.is_some() {
            &[(1, true)]
        } else {
            &[(1, true), (1, false), (100, false)]
        };
        for &(in_flight, wait_each) in modes {
            for policy in [
                CheckpointPolicy::None,
                CheckpointPolicy::End,
                CheckpointPolicy::Agent,
            ] {
                if only.is_some_and(|only| only != policy) {
                    continue;
                }
                let before = store.stats().transactions;
                let Measured { median, .. } = measure(a.repeat, || {
                    persist_once(&pipeline, &store, policy, runs, in_flight, wait_each)
                })
                .await?;
                let transactions = store.stats().transactions - before;
                let measured_runs = (runs * (a.repeat.max(1) + 1)) as f64;
                lines.push(json!({
                    "scenario": "persist", "backend": backend, "checkpoint": policy.to_string(),
                    "in_flight": in_flight, "wait_each": wait_each, "runs": runs,
                    "per_run_us": median * 1e3 / runs as f64,
                    "transactions_per_run": transactions as f64 / measured_runs,
                }));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(lines)
}

/// One run of the `cache` pipeline with `cache`; its makespan. Exactly
/// `hits` agents must have come from the cache.
async fn cache_run(
    pipeline: &Pipeline,
    cache: Option<Arc<dyn braid_core::AgentCache>>,
    hits: usize,
) -> anyhow::Result<f64> {
    let input = pipeline.check_input(&json!({"seed": "bench"}))?;
    let options = RunOptions {
        cache,
        ..Default::default()
    };
    let report = pipeline.run(input, options).await;
    anyhow::ensure!(
        report.status == RunStatus::Completed,
        "a cache run failed: {:?}",
        report.error
    );
    let cached = report.agents.values().filter(|a| a.cached).count();
    anyhow::ensure!(
        cached == hits,
        "a cache run took {cached} agents from the cache, not {hits}"
    );
    Ok(report.makespan_ms)
}

async fn cache(a: &BenchArgs) -> anyhow::Result<Vec<Value>> {
    const AGENTS: usize = 100;
    let dir = std::env::temp_dir().join(format!("braid-bench-cache-{}", std::process::id()));
    let sqlite = format!("sqlite://{}", dir.join("bench.db").display());
    let mut backends = vec![("sqlite", sqlite)];
    if let Some(url) = &a.postgres {
        backends.push(("postgres", url.clone()));
    }
    let mut lines = Vec::new();
    for (backend, url) in backends {
        let store = Store::connect(&url, &StoreSettings::default())
            .await
            .with_context(|| format!("cannot open the {backend} store for the benchmark"))?;
        for (shape, chain) in [("wide", false), ("chain", true)] {
            let pipeline = load(&cache_yaml(AGENTS, chain))?;
            let Measured {
                median: uncached, ..
            } = measure(a.repeat, || cache_run(&pipeline, None, 0)).await?;
            // Cold: an empty cache (emptied outside the timing); every
            // agent misses, runs, and its result is stored.
            let Measured { median: cold, .. } = measure(a.repeat, || async {
                store.clear_cache(None).await?;
                let ms = cache_run(&pipeline, Some(store.cache()), 0).await?;
                store.flush().await?;
                Ok(ms)
            })
            .await?;
            // Warm: what the last cold run stored; every agent hits.
            let Measured { median: warm, .. } = measure(a.repeat, || {
                cache_run(&pipeline, Some(store.cache()), AGENTS)
            })
            .await?;
            let per = |ms: f64| ms * 1e3 / AGENTS as f64;
            lines.push(json!({
                "scenario": "cache", "backend": backend, "shape": shape, "agents": AGENTS,
                "uncached_ms": uncached, "cold_ms": cold, "warm_ms": warm,
                "per_hit_us": per(warm), "per_miss_us": per(cold),
                "hit_over_uncached_us": per(warm - uncached),
            }));
        }
        store.close().await?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(lines)
}

/// A stand-in for an OpenAI-compatible model with no latency: asked
/// `calls=K tool=NAME`, it calls that tool K times in one turn (`echo`
/// with a message, others with no arguments), then answers once the
/// results are in. Returns its `/v1` URL.
async fn model_stand_in() -> anyhow::Result<String> {
    use axum::Json;
    let answer = |Json(body): Json<Value>| async move {
        let messages = body["messages"].as_array().cloned().unwrap_or_default();
        if messages.iter().any(|m| m["role"] == "tool") {
            return Json(
                json!({"choices": [{"message": {"role": "assistant", "content": "done"}}]}),
            );
        }
        let prompt = messages
            .last()
            .and_then(|m| m["content"].as_str())
            .unwrap_or("");
        let (k, tool) = prompt.split_once(" tool=").unwrap_or((prompt, "noop"));
        let k: usize = k.trim_start_matches("calls=").parse().unwrap_or(1);
        let arguments = if tool == "echo" {
            r#"{"message": "bench"}"#
        } else {
            "{}"
        };
        let calls: Vec<Value> = (0..k)
            .map(|i| json!({"id": format!("c{i}"), "type": "function", "function": {"name": tool, "arguments": arguments}}))
            .collect();
        Json(
            json!({"choices": [{"message": {"role": "assistant", "content": null, "tool_calls": calls}}]}),
        )
    };
    let app = axum::Router::new().route("/v1/chat/completions", axum::routing::post(answer));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

/// The `tools` scenario: what one tool call of an `llm` agent costs, for
/// a tool agent and (with `--mcp`) an MCP server's `echo`.
async fn tools(a: &BenchArgs) -> anyhow::Result<Vec<Value>> {
    let url = model_stand_in().await?;
    let mut sources = vec![("agent", "{ agent: noop }".to_owned(), "noop")];
    if let Some(command) = &a.mcp {
        let argv: Vec<String> = command
            .split_whitespace()
            .map(|w| format!("{w:?}"))
            .collect();
        sources.push((
            "mcp",
            format!(
                "{{ mcp: {{ command: [{}], tools: [echo] }} }}",
                argv.join(", ")
            ),
            "echo",
        ));
    }
    let mut lines = Vec::new();
    for (kind, entry, tool) in sources {
        let pipeline = load_with(
            &format!(
                r#"
pipeline: tools
inputs: {{ calls: {{ type: integer }} }}
agents:
  noop:
    kind: sleep
    writes: [ok]
    tool: {{ description: Does nothing, parameters: {{ type: object, properties: {{}} }} }}
  ask:
    kind: llm
    endpoint: "{url}"
    model: stand-in
    prompt: "calls={{{{ calls }}}} tool={tool}"
    tools: [{entry}]
    max_tool_calls: {MANY_CALLS}
    reads: [calls]
    writes: [answer]
"#
            ),
            &crate::kinds(),
        )?;
        lines.push(tool_call_cost(a, &pipeline, kind).await?);
    }
    Ok(lines)
}

/// Calls in `tools`' smaller and larger runs: the difference is 100 calls.
const FEW_CALLS: usize = 1;
const MANY_CALLS: usize = 101;

/// `tools`' figure for one pipeline: runs with K = 1 and K = 101 calls.
async fn tool_call_cost(
    a: &BenchArgs,
    pipeline: &Arc<Pipeline>,
    kind: &str,
) -> anyhow::Result<Value> {
    let once = |k: usize| {
        let pipeline = pipeline.clone();
        async move {
            let input = pipeline.check_input(&json!({"calls": k}))?;
            let start = Instant::now();
            let report = pipeline.run(input, RunOptions::default()).await;
            let ms = start.elapsed().as_secs_f64() * 1e3;
            let calls = &report.agents["ask"].tool_calls;
            anyhow::ensure!(
                report.status == RunStatus::Completed
                    && calls.len() == k
                    && calls
                        .iter()
                        .all(|c| c.status == braid_core::AgentStatus::Completed),
                "a tools run failed: {:?} {:?}",
                report.error,
                calls.iter().find_map(|c| c.error.as_ref())
            );
            Ok(ms)
        }
    };
    let Measured { median: few, .. } = measure(a.repeat, || once(FEW_CALLS)).await?;
    let Measured { median: many, .. } = measure(a.repeat, || once(MANY_CALLS)).await?;
    Ok(json!({
        "scenario": "tools", "tool": kind, "few_calls": FEW_CALLS, "many_calls": MANY_CALLS,
        "few_ms": few, "many_ms": many,
        "per_call_us": (many - few) * 1e3 / (MANY_CALLS - FEW_CALLS) as f64,
    }))
}

/// The `dispatch` scenario: per-agent cost of sending agents to a worker.
async fn dispatch(a: &BenchArgs) -> anyhow::Result<Vec<Value>> {
    const AGENTS: usize = 200;
    let (_local, url) = match &a.nats {
        Some(url) => (None, url.clone()),
        None => {
            let nats = braid_nats::local::LocalNats::start()
                .context("cannot start nats-server for the benchmark (or pass --nats URL)")?;
            let url = nats.url();
            (Some(nats), url)
        }
    };
    let yaml = deep_yaml(AGENTS);
    let local = load(&yaml)?;
    // The worker: its own thread and runtime, as a separate process would be.
    let worker_pipeline = Pipeline::from_yaml_str(&yaml).context("the benchmark pipeline")?;
    let worker = braid_nats::Worker::new(std::slice::from_ref(&worker_pipeline));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker_url = url.clone();
    let worker_thread = std::thread::spawn(move || -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let settings = braid_nats::WorkerSettings {
            slots: 64,
            ..Default::default()
        };
        runtime.block_on(worker.run(&worker_url, settings, async {
            let _ = stopped.await;
        }))?;
        Ok(())
    });
    let dispatcher = braid_nats::Dispatcher::connect(&url).await?;
    let mut remote = Pipeline::from_yaml_str(&yaml).context("the benchmark pipeline")?;
    dispatcher.remote(&mut remote).map_err(anyhow::Error::msg)?;
    let remote = Arc::new(remote);
    let Measured {
        median: local_ms, ..
    } = measure(a.repeat, || makespan(&local, false)).await?;
    // Per-agent durations as the run measured them (dispatch, worker, result).
    let per_agent = std::sync::Mutex::new(Vec::<f64>::new());
    let Measured {
        median: remote_ms, ..
    } = measure(a.repeat, || {
        let remote = remote.clone();
        let per_agent = &per_agent;
        async move {
            let input = remote.check_input(&Value::Null)?;
            let report = remote.run(input, RunOptions::default()).await;
            anyhow::ensure!(
                report.status == RunStatus::Completed,
                "a dispatched run failed: {:?}",
                report.error
            );
            per_agent
                .lock()
                .expect("not poisoned")
                .extend(report.agents.values().filter_map(|r| r.duration_ms));
            Ok(report.makespan_ms)
        }
    })
    .await?;
    drop(stop);
    let _ = worker_thread.join();
    let mut per_agent = per_agent.into_inner().expect("not poisoned");
    per_agent.sort_by(f64::total_cmp);
    let at = |q: f64| per_agent[((per_agent.len() as f64 - 1.0) * q).round() as usize];
    let local_per_agent = local_ms / AGENTS as f64;
    Ok(vec![json!({
        "scenario": "dispatch", "agents": AGENTS, "nats": url,
        "in_process_per_agent_ms": local_per_agent,
        "dispatched_per_agent_ms": remote_ms / AGENTS as f64,
        "added_p50_ms": at(0.5) - local_per_agent, "added_p99_ms": at(0.99) - local_per_agent,
        "stats": dispatcher.stats(),
    })])
}

/// The `workers` scenario: C concurrent seed runs whose agents run on
/// workers elsewhere; throughput.
async fn workers(a: &BenchArgs) -> anyhow::Result<Vec<Value>> {
    let url = a.nats.clone().context(
        "`workers` needs --nats URL and `braid worker`s on it (scripts/bench-workers.sh)",
    )?;
    let l = a.latency_ms;
    let mut pipeline = Pipeline::from_yaml_str(&seed_yaml(l)).context("the seed pipeline")?;
    let dispatcher = braid_nats::Dispatcher::connect(&url).await?;
    dispatcher
        .remote(&mut pipeline)
        .map_err(anyhow::Error::msg)?;
    let pipeline = Arc::new(pipeline);
    let c = a.concurrent.max(1);
    let Measured { median: ms, .. } = measure(a.repeat, || many_once(&pipeline, c, None)).await?;
    Ok(vec![json!({
        "scenario": "workers", "concurrent": c, "latency_ms": l, "makespan_ms": ms,
        "runs_per_s": c as f64 / ms * 1e3, "agents_per_s": 6.0 * c as f64 / ms * 1e3,
        "stats": dispatcher.stats(),
    })])
}

async fn scenario(name: &str, a: &BenchArgs) -> anyhow::Result<Vec<Value>> {
    let l = a.latency_ms;
    if name == "dispatch" {
        return dispatch(a).await;
    }
    if name == "workers" {
        return workers(a).await;
    }
    if name == "persist" {
        return persist(a).await;
    }
    if name == "cache" {
        return cache(a).await;
    }
    if name == "tools" {
        return tools(a).await;
    }
    Ok(vec![match name {
        "seed" | "sequential" => {
            let sequential = name == "sequential";
            let pipeline = load(&seed_yaml(l))?;
            let Measured { median, min, .. } =
                measure(a.repeat, || makespan(&pipeline, sequential)).await?;
            let ideal = if sequential { 6.0 * l } else { 4.0 * l };
            json!({"scenario": name, "makespan_ms": median, "min_ms": min, "ideal_ms": ideal, "ratio": median / ideal})
        }
        "skewed" => {
            let pipeline = load(&skewed_yaml(l))?;
            let Measured { median, min, .. } =
                measure(a.repeat, || makespan(&pipeline, false)).await?;
            let ideal = 12.0 * l;
            json!({"scenario": name, "makespan_ms": median, "min_ms": min, "ideal_ms": ideal, "ratio": median / ideal})
        }
        "overhead" => {
            let pipeline = load(&seed_yaml(0.0))?;
            let runs = a.runs.max(1);
            let Measured { median, .. } = measure(a.repeat, || async {
                let start = Instant::now();
                for _ in 0..runs {
                    makespan(&pipeline, false).await?;
                }
                Ok(start.elapsed().as_secs_f64() * 1e3)
            })
            .await?;
            let per_run_us = median * 1e3 / runs as f64;
            json!({"scenario": name, "runs": runs, "per_run_us": per_run_us, "per_agent_us": per_run_us / 6.0})
        }
        "wide" | "deep" => {
            let n = a.nodes.max(1);
            let pipeline = load(&if name == "wide" {
                wide_yaml(n)
            } else {
                deep_yaml(n)
            })?;
            let Measured { median, min, .. } =
                measure(a.repeat, || makespan(&pipeline, false)).await?;
            json!({"scenario": name, "nodes": n, "makespan_ms": median, "min_ms": min, "per_agent_us": median * 1e3 / n as f64})
        }
        "many" => {
            let pipeline = load(&seed_yaml(l))?;
            let c = a.concurrent.max(1);
            let threads = a.run_threads.unwrap_or_else(super::serve::cores_here);
            let cores = match threads {
                0 => None,
                n => Some(braid_server::cores::Cores::new(n)?),
            };
            // Like the other scenarios; the warm-up (the process's first
            // round) is reported too, as `cold_ratio`.
            let Measured {
                median: ms,
                warm_up: cold,
                ..
            } = measure(a.repeat, || many_once(&pipeline, c, cores.as_ref())).await?;
            let ideal = 4.0 * l;
            json!({"scenario": name, "concurrent": c, "run_threads": threads, "makespan_ms": ms, "ideal_ms": ideal,
                   "ratio": ms / ideal, "cold_ratio": cold / ideal,
                   "runs_per_s": c as f64 / ms * 1e3, "peak_rss_mb": peak_rss_mb()})
        }
        "fanout" => {
            let n = a.nodes.max(1);
            let noop = load(&fanout_yaml(n, 0.0))?;
            let Measured {
                median: noop_ms, ..
            } = measure(a.repeat, || wall_ms(&noop)).await?;
            let slow = load(&fanout_yaml(n, l))?;
            let Measured { median, min, .. } = measure(a.repeat, || wall_ms(&slow)).await?;
            json!({"scenario": name, "items": n, "makespan_ms": median, "min_ms": min, "ideal_ms": l,
                   "ratio": median / l, "noop_ms": noop_ms, "per_item_us": noop_ms * 1e3 / n as f64})
        }
        "mapchain" => {
            let pipeline = load_with(&mapchain_yaml(100, l), &stage_kinds(l))?;
            let Measured { median, min, .. } = measure(a.repeat, || wall_ms(&pipeline)).await?;
            let ideal = 14.0 * l;
            json!({"scenario": name, "items": 100, "makespan_ms": median, "min_ms": min,
                   "ideal_ms": ideal, "ratio": median / ideal})
        }
        "loop" => {
            let pipeline = load_with(&loop_yaml(10, l), &stage_kinds(l))?;
            let Measured { median, min, .. } = measure(a.repeat, || wall_ms(&pipeline)).await?;
            let noop = load_with(&loop_yaml(1000, 0.0), &stage_kinds(0.0))?;
            let Measured {
                median: noop_ms, ..
            } = measure(a.repeat, || wall_ms(&noop)).await?;
            let ideal = 20.0 * l;
            json!({"scenario": name, "rounds": 10, "makespan_ms": median, "min_ms": min,
                   "ideal_ms": ideal, "ratio": median / ideal, "noop_rounds": 1000,
                   "per_round_us": noop_ms * 1e3 / 1000.0})
        }
        "fanout-large" => {
            let n = 100_000;
            let pipeline = load(&fanout_yaml(n, 0.0))?;
            let Measured { median, min, .. } =
                measure(a.repeat.min(3), || wall_ms(&pipeline)).await?;
            json!({"scenario": name, "items": n, "makespan_ms": median, "min_ms": min,
                   "per_item_us": median * 1e3 / n as f64, "peak_rss_mb": peak_rss_mb()})
        }
        other => anyhow::bail!(
            "unknown scenario `{other}`; expected `all` or one of: {}",
            SCENARIOS.join(", ")
        ),
    }])
}

pub(crate) fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if args.emit_pipeline {
        anyhow::ensure!(
            args.scenario == "workers",
            "--emit-pipeline prints the pipeline of `workers` (the one its workers hold)"
        );
        print!("{}", seed_yaml(args.latency_ms));
        return Ok(ExitCode::SUCCESS);
    }
    let names: Vec<&str> = if args.scenario == "all" {
        SCENARIOS.to_vec()
    } else {
        vec![args.scenario.as_str()]
    };
    // The same runtime as `braid run`: one thread (see cmd/run.rs).
    let runtime = super::run::runtime()?;
    for name in names {
        for mut line in runtime.block_on(scenario(name, &args))? {
            round(&mut line);
            println!("{line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Three decimals, as the peer script prints.
fn round(v: &mut Value) {
    if let Value::Object(map) = v {
        for value in map.values_mut() {
            if let Some(f) = value.as_f64().filter(|_| value.is_f64()) {
                *value = json!((f * 1000.0).round() / 1000.0);
            }
        }
    }
}
