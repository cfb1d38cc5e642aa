//! Runs owned by leases: this server takes over runs whose owner stopped
//! renewing their lease (it died, hangs, or lost the database), and stops
//! its own runs that another process took over.
//!
//! The store renews this process's leases by itself (one statement every
//! third of the lease, see `braid_store::Store::claim_expired`). This task,
//! every third of [`ServerConfig::lease`](crate::ServerConfig::lease):
//! claims expired runs of the pipelines it has, as many as it has free run
//! slots, each at its next epoch, and continues each from its records
//! (completed agents are not run again; agents in flight at the death run
//! again: at-least-once). A claimed run that cannot be continued as it is
//! is marked failed; one the store or this server failed to continue is
//! released for a later claim. When the store says a run of this server was
//! claimed elsewhere (deposed), the run is cancelled here; the store's
//! writer already refuses its writes by epoch.

use std::time::Duration;

use crate::AppState;
use crate::routes::continue_taken_over;

/// Most runs claimed per look.
const BATCH: usize = 64;

/// Runs until the server shuts down.
pub(crate) async fn run(state: AppState) {
    let Some(store) = state.inner.store.clone() else {
        return;
    };
    let mut deposed = store.deposed();
    let every = (state.inner.config.lease / 3).max(Duration::from_millis(50));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if state.inner.runs.shutting_down() {
            return;
        }
        let lost = async {
            match deposed.as_mut() {
                Some(rx) => rx.recv().await.ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tick.tick() => take_over(&state, store.as_ref()).await,
            id = lost => {
                if let Some(id) = id {
                    stop_deposed(&state, &id);
                }
            }
        }
    }
}

/// Claims expired runs (bounded by free run slots, reserved first) and
/// continues them.
async fn take_over(state: &AppState, store: &dyn crate::RunStore) {
    let free = state.inner.runs.free_slots().min(BATCH);
    let mut slots: Vec<crate::runs::Slot> = (0..free)
        .map_while(|_| state.inner.runs.reserve().ok())
        .collect();
    if slots.is_empty() {
        return;
    }
    let pipelines: Vec<String> = state
        .inner
        .pipelines
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .keys()
        .cloned()
        .collect();
    if pipelines.is_empty() {
        return;
    }
    let claimed = match store.claim_expired(slots.len() as i64, &pipelines).await {
        Ok(claimed) => claimed,
        Err(error) => {
            tracing::warn!(%error, "cannot look for runs whose lease expired");
            return;
        }
    };
    for run in claimed {
        tracing::info!(
            run = %run.run_id,
            old_owner = run.previous_owner.as_deref().unwrap_or("-"),
            epoch = run.epoch,
            "took over a run whose lease expired; continuing it here"
        );
        let Some(slot) = slots.pop() else {
            // Never: no more were claimed than slots reserved.
            let _ = store.release(&run.run_id).await;
            continue;
        };
        let Err(why) = continue_taken_over(state, &run.run_id, slot).await else {
            continue;
        };
        if why.status().is_server_error() {
            // The store or this server failed: let the run be taken again.
            tracing::warn!(
                run = %run.run_id,
                error = ?why,
                "took over a run but cannot continue it now; releasing it"
            );
            if let Err(error) = store.release(&run.run_id).await {
                tracing::warn!(run = %run.run_id, %error, "cannot release the run");
            }
        } else {
            // It cannot be continued as it is (its input no longer fits the
            // pipeline, say): say so on the run, where a person sees it.
            tracing::error!(
                run = %run.run_id,
                error = ?why,
                "took over a run but it cannot be continued; marking it failed"
            );
            if let Err(error) = store
                .set_status(&run.run_id, braid_core::RunStatus::Failed)
                .await
            {
                tracing::error!(run = %run.run_id, %error, "cannot mark the run failed");
                let _ = store.release(&run.run_id).await;
            }
        }
    }
}

/// Cancels a run of this server that another process took over.
fn stop_deposed(state: &AppState, id: &str) {
    if let Some(run) = state.inner.runs.get(id)
        && run.report.borrow().is_none()
    {
        tracing::warn!(run = %id, "another process took this run over; cancelling it here");
        run.deposed.store(true, std::sync::atomic::Ordering::SeqCst);
        run.cancel.cancel();
        // Its record is its new owner's: read it from the store.
        state.inner.runs.forget(id);
    }
}
