//! Applies the timeouts of waiting runs on time, whatever process started
//! them: a run that ends `waiting` is in the store with each wait's
//! deadline; this task looks for waits that have timed out, claims their
//! runs and continues them here (the run then applies each timeout
//! itself: the agent's `default`, or its failure). It sleeps until the next
//! deadline (at most [`LONGEST_SLEEP`], so deadlines set by other
//! processes are seen too), or until a run of this server ends waiting.
//! A server that restarts finds the same deadlines in the store.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::AppState;
use crate::routes::continue_waiting;

/// The longest the task sleeps between looks at the store.
pub(crate) const LONGEST_SLEEP: Duration = Duration::from_secs(5);

/// Most runs continued per look.
const BATCH: i64 = 64;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Runs until the server shuts down.
pub(crate) async fn apply_timeouts(state: AppState) {
    let Some(store) = state.inner.store.clone() else {
        return;
    };
    let notify = state.inner.runs.waits.clone();
    loop {
        if state.inner.runs.shutting_down() {
            return;
        }
        let sleep = match store.due_waits(now_ms(), BATCH).await {
            Ok((due, next)) => {
                for run_id in due {
                    match continue_waiting(&state, &run_id).await {
                        Ok(()) => {
                            tracing::info!(run = %run_id, "a wait timed out; continuing the run")
                        }
                        Err(why) => {
                            tracing::warn!(run = %run_id, error = ?why, "a wait timed out, but its run could not be continued")
                        }
                    }
                }
                next.map_or(LONGEST_SLEEP, |next| {
                    Duration::from_millis(u64::try_from(next - now_ms()).unwrap_or(0))
                        .min(LONGEST_SLEEP)
                })
            }
            Err(error) => {
                tracing::warn!(%error, "cannot look for timed-out waits");
                LONGEST_SLEEP
            }
        };
        tokio::select! {
            () = tokio::time::sleep(sleep) => {}
            () = notify.notified() => {}
        }
    }
}
