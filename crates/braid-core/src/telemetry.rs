//! Metrics and traces of runs, recorded without blocking the scheduler.
//!
//! Everything goes through the `metrics` facade (atomic updates; nothing at
//! all without an installed recorder) and `tracing` (a run span, an agent
//! span per attempt; free when no subscriber listens). The names, for
//! dashboards:
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `braid_runs_total` | counter | `status` |
//! | `braid_run_makespan_seconds` | histogram | `status` |
//! | `braid_agents_total` | counter | `status` |
//! | `braid_agent_duration_seconds` | histogram | |
//! | `braid_agent_queue_wait_seconds` | histogram | |
//! | `braid_agent_retries_total` | counter | |
//! | `braid_llm_tokens_total` | counter | `direction` (`prompt`, `completion`) |
//! | `braid_events_emitted_total` | counter | |
//! | `braid_agents_waiting_total` | counter | |
//! | `braid_cache_hits_total` | counter | |
//! | `braid_cache_misses_total` | counter | |
//!
//! Other crates add theirs: the store `braid_checkpoint_batch_size`,
//! `braid_checkpoint_commit_seconds`, `braid_checkpoint_transactions_total`,
//! `braid_checkpoint_retries_total`, `braid_checkpoint_failures_total`,
//! `braid_db_pool_connections{state}`, `braid_db_pool_acquire_seconds{pool}`,
//! `braid_db_pool_waits_total{pool}` (`pool` is `store` or `sql`), and for
//! leases `braid_lease_renewals_total`, `braid_runs_taken_over_total`,
//! `braid_runs_deposed_total` and `braid_fenced_writes_total` (operations
//! of deposed runs dropped); the
//! HTTP client `braid_http_requests_total`, `braid_http_pool_waits_total`,
//! `braid_http_connections_opened_total` and `braid_http_in_flight{host}`;
//! the server `braid_runs_started_total`,
//! `braid_runs_finished_total{status}`, `braid_runs_in_memory{status}` and
//! `braid_events_dropped_total`.

use std::time::Duration;

use crate::report::{RunReport, RunStatus};

pub(crate) fn run_finished(report: &RunReport) {
    // Literal labels, one arm a status: the macro then builds each key
    // once, statically, instead of allocating its labels on every run.
    macro_rules! by_status {
        ($($status:ident => $label:literal),* $(,)?) => {
            match report.status {
                $(RunStatus::$status => {
                    // Each literal is the status's one string form.
                    debug_assert_eq!($label, RunStatus::$status.as_str());
                    (
                        metrics::counter!("braid_runs_total", "status" => $label),
                        metrics::histogram!("braid_run_makespan_seconds", "status" => $label),
                    )
                })*
            }
        };
    }
    let (runs, makespan) = by_status!(
        Completed => "completed",
        Failed => "failed",
        Cancelled => "cancelled",
        Interrupted => "interrupted",
        Waiting => "waiting",
    );
    runs.increment(1);
    makespan.record(report.makespan_ms / 1e3);
    if let Some(tokens) = report.tokens {
        metrics::counter!("braid_llm_tokens_total", "direction" => "prompt")
            .increment(tokens.prompt);
        metrics::counter!("braid_llm_tokens_total", "direction" => "completion")
            .increment(tokens.completion);
    }
}

pub(crate) fn agent_finished(status: &'static str, duration_ms: Option<f64>, _attempts: u32) {
    // Literal labels: the macro then builds the key once, statically,
    // instead of allocating and hashing its labels on every call.
    match status {
        "completed" => {
            metrics::counter!("braid_agents_total", "status" => "completed").increment(1)
        }
        "failed" => metrics::counter!("braid_agents_total", "status" => "failed").increment(1),
        "skipped" => metrics::counter!("braid_agents_total", "status" => "skipped").increment(1),
        other => metrics::counter!("braid_agents_total", "status" => other).increment(1),
    }
    if let Some(ms) = duration_ms {
        metrics::histogram!("braid_agent_duration_seconds").record(ms / 1e3);
    }
}

pub(crate) fn queue_wait(wait: Duration) {
    metrics::histogram!("braid_agent_queue_wait_seconds").record(wait.as_secs_f64());
}

pub(crate) fn retried() {
    metrics::counter!("braid_agent_retries_total").increment(1);
}

/// A cached agent was looked up: a hit (its writes reused), or a miss
/// (it ran; a failed lookup counts as one). No agent label: names are
/// the pipeline's, without bound.
pub(crate) fn cache_lookup(hit: bool) {
    if hit {
        metrics::counter!("braid_cache_hits_total").increment(1);
    } else {
        metrics::counter!("braid_cache_misses_total").increment(1);
    }
}

pub(crate) fn event_emitted() {
    metrics::counter!("braid_events_emitted_total").increment(1);
}

pub(crate) fn agent_waiting() {
    metrics::counter!("braid_agents_waiting_total").increment(1);
}
