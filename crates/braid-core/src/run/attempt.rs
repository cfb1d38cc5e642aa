//! One agent's attempts: a timeout per attempt, retries with
//! [`Backoff`], and the output checked against its declared writes.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::ms;
use crate::agent::{Agent, AgentError, AgentInput, Writes, call_once};
use crate::backoff::Backoff;
use crate::event::EventKind;
use crate::graph::AgentId;
use crate::pipeline::{FieldId, FieldWrite, RetryPolicy};
use crate::report::AttemptFailure;

/// Who a task runs for: an agent, or one instance of a `foreach` agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Member {
    pub(super) agent: AgentId,
    /// The element's index, for an instance of a `foreach` agent.
    pub(super) item: Option<usize>,
}

/// What an agent's task hands back.
pub(super) struct Finished {
    pub(super) member: Member,
    pub(super) attempts: u32,
    /// When it ended; `None` when the run's loop stamps it as it joins it
    /// (a polled member, joined in the same poll: see `Scheduler::clock`).
    pub(super) finished: Option<Instant>,
    pub(super) result: Result<Vec<(FieldId, Arc<Value>)>, AgentError>,
    /// Its writes came from the cache: the agent was not called.
    pub(super) cached: bool,
    /// Its failed attempts, oldest first (empty, and not allocated, when
    /// the first attempt succeeded).
    pub(super) failures: Vec<AttemptFailure>,
}

/// The longest wait between an agent's attempts.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

/// Runs an agent's attempts: timeout per attempt, retries with exponential
/// backoff and jitter, and the output checked against its declared writes.
/// `first_began` is when the member started (its first attempt's start,
/// for the duration a failed first attempt reports); with `stamp_end` it
/// reads the clock as it ends, without it the run's loop does as it joins
/// it (a polled member: in the same poll).
///
/// `runner` and `writes` are the agent's, shared (`Arc`) by a task that
/// must own what it holds, borrowed from the pipeline by one its run polls.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice in its state"
)]
#[expect(
    clippy::too_many_arguments,
    reason = "each is moved into the future once; a struct of them would be built and taken apart again for every agent"
)]
pub(super) fn attempt_loop<'a>(
    member: Member,
    runner: impl std::ops::Deref<Target = dyn Agent> + Send + 'a,
    mut input: AgentInput,
    policy: RetryPolicy,
    writes: impl std::ops::Deref<Target = [FieldWrite]> + Send + 'a,
    max_depth: usize,
    first_began: Instant,
    stamp_end: bool,
) -> impl Future<Output = Finished> + Send + 'a {
    // An `async move` block, not an `async fn`: an `async fn` copies its
    // arguments into its state a second time (rust-lang/rust#62958),
    // about 220 bytes for every agent in flight.
    async move {
        use tracing::Instrument;
        let mut attempt = 1;
        let mut failures = Vec::new();
        // The first attempt began when the member was started (one slot in
        // the future for both, not two).
        let mut began = first_began;
        loop {
            input.attempt = attempt;
            if attempt > 1 {
                began = Instant::now();
            }
            let span = tracing::debug_span!(
                "agent",
                agent = %input.agent,
                attempt,
                error = tracing::field::Empty,
                "otel.status_code" = tracing::field::Empty,
            );
            // A span nothing records is not entered on every poll.
            let outcome = if span.is_disabled() {
                call_once(&*runner, &input, policy.timeout).await
            } else {
                call_once(&*runner, &input, policy.timeout)
                    .instrument(span.clone())
                    .await
            };
            let result =
                outcome.and_then(|out| check_writes(out, &writes, &input.agent, max_depth));
            if let Err(error) = &result
                && !span.is_disabled()
            {
                span.record("error", tracing::field::display(error));
                span.record("otel.status_code", "ERROR");
            }
            drop(span);
            if let Err(error) = &result {
                failures.push(AttemptFailure {
                    attempt,
                    error: error.to_string(),
                    duration_ms: ms(began.elapsed()),
                });
            }
            match result {
                Err(error) if attempt <= policy.retries && error.is_retryable() => {
                    let delay = Backoff::new(policy.backoff, MAX_RETRY_DELAY)
                        .with_jitter()
                        .delay(attempt);
                    crate::telemetry::retried();
                    tracing::debug!(agent = %input.agent, attempt, %error, "retrying");
                    if let Some(events) = &input.events {
                        events.emit(EventKind::AgentRetrying {
                            agent: input.agent.clone(),
                            attempt,
                            error: error.to_string(),
                            delay_ms: ms(delay),
                        });
                    }
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                result => {
                    return Finished {
                        member,
                        attempts: attempt,
                        finished: stamp_end.then(Instant::now),
                        result,
                        cached: false,
                        failures,
                    };
                }
            }
        }
    }
}

/// Checks an agent's output against its declared writes: an object with
/// those fields (optional ones, `name?`, may be left out), each nested at most `max_depth` deep and
/// acceptable to its field's merge rule.
pub(super) fn check_writes(
    mut out: Writes,
    writes: &[FieldWrite],
    agent: &str,
    max_depth: usize,
) -> Result<Vec<(FieldId, Arc<Value>)>, AgentError> {
    let undeclared: Vec<&String> = out
        .keys()
        .filter(|k| !writes.iter().any(|w| &*w.name == k.as_str()))
        .collect();
    if !undeclared.is_empty() {
        let declared: Vec<&str> = writes.iter().map(|w| &*w.name).collect();
        return Err(AgentError::Output(format!(
            "wrote undeclared field(s) {}; it declares writes: [{}]",
            undeclared
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", "),
            declared.join(", ")
        )));
    }
    let mut values = Vec::with_capacity(writes.len());
    let mut missing = Vec::new();
    for write in writes {
        // Found by comparing names, not by hashing them: an agent writes a
        // handful of fields, and every key was checked against `writes` above.
        let found = out
            .iter_mut()
            .find(|(k, _)| k.as_str() == &*write.name)
            .map(|(_, v)| std::mem::take(v));
        match found {
            Some(value) => {
                if crate::depth::exceeds(&value, max_depth) {
                    return Err(AgentError::Output(format!(
                        "agent `{agent}` wrote `{}` nested more than {max_depth} levels deep, \
                         the limit (max_value_depth); deeper values could not be stored and read back",
                        write.name
                    )));
                }
                if let Some(rule) = write.merge {
                    rule.check(&value)
                        .map_err(|e| AgentError::Output(format!("field `{}`: {e}", write.name)))?;
                }
                values.push((write.field, Arc::new(value)));
            }
            None if write.optional => {}
            None => missing.push(format!("`{}`", write.name)),
        }
    }
    if !missing.is_empty() {
        return Err(AgentError::Output(format!(
            "did not write declared field(s) {}",
            missing.join(", ")
        )));
    }
    Ok(values)
}
