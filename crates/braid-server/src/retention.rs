//! Background retention: a server with a [`Retention`] policy prunes its
//! store at start and then every `interval`, in small batches with a pause
//! between them (see [`braid_store::prune`]), until it shuts down.
//!
//! Each prune deletes runs created longer ago than `older_than` whose
//! status is anything but `running` or `waiting`, with their agents'
//! records, writes, events and process records, keeps runs that forks
//! still reference, and deletes expired cache entries. What it did is
//! logged (`tracing`, at `info` when it deleted anything) and counted:
//! `braid_pruned_runs_total` and `braid_pruned_cache_entries_total` (the
//! store records them; the server registers them at zero so that they show
//! in `/metrics` before the first deletion). On shutdown the prune in
//! progress stops after the batch in flight.

use std::sync::Arc;
use std::time::Duration;

use braid_store::PruneFilter;
use braid_store::prune::{DEFAULT_PRUNE_BATCH, DEFAULT_PRUNE_PAUSE};
use tokio_util::sync::CancellationToken;

use crate::store::RunStore;

/// How long runs are kept, and how the background prune goes about it.
#[derive(Debug, Clone)]
pub struct Retention {
    /// Runs created longer ago than this are pruned.
    pub older_than: Duration,
    /// The time between the end of one prune and the start of the next
    /// (the first starts with the server).
    pub interval: Duration,
    /// Most runs deleted in one transaction.
    pub batch_size: usize,
    /// The pause between two batches, which leaves the database to the
    /// runs in flight.
    pub batch_pause: Duration,
}

impl Retention {
    /// The longest interval between two prunes.
    pub const MAX_INTERVAL: Duration = Duration::from_secs(600);

    /// Keeps runs for `older_than`, pruning every
    /// [`default_interval`](Self::default_interval), in the store's default
    /// batches.
    pub fn new(older_than: Duration) -> Self {
        Self {
            older_than,
            interval: Self::default_interval(older_than),
            batch_size: DEFAULT_PRUNE_BATCH,
            batch_pause: DEFAULT_PRUNE_PAUSE,
        }
    }

    /// Ten minutes, or a tenth of `older_than` if that is shorter (so a
    /// run is never kept more than 10% past its time), but at least a
    /// second.
    pub fn default_interval(older_than: Duration) -> Duration {
        (older_than / 10)
            .min(Self::MAX_INTERVAL)
            .max(Duration::from_secs(1))
    }

    fn filter(&self) -> PruneFilter {
        PruneFilter {
            older_than: Some(self.older_than),
            batch_size: self.batch_size,
            batch_pause: self.batch_pause,
            ..PruneFilter::default()
        }
    }
}

/// Prunes `store` by `retention` until `stop` is cancelled.
pub(crate) async fn run(store: Arc<dyn RunStore>, retention: Retention, stop: CancellationToken) {
    metrics::counter!("braid_pruned_runs_total").increment(0);
    metrics::counter!("braid_pruned_cache_entries_total").increment(0);
    let filter = retention.filter();
    let older_than_s = retention.older_than.as_secs();
    loop {
        match store.prune(&filter, stop.clone()).await {
            Ok(report) if report.runs > 0 || report.cache_entries > 0 => tracing::info!(
                older_than_s,
                runs = report.runs,
                agent_records = report.agent_records,
                deltas = report.deltas,
                events = report.events,
                cache_entries = report.cache_entries,
                kept_referenced = report.kept_referenced,
                complete = report.complete,
                "pruned old runs"
            ),
            Ok(report) => tracing::debug!(
                older_than_s,
                kept_referenced = report.kept_referenced,
                "no run to prune"
            ),
            Err(error) => tracing::warn!(
                %error,
                "pruning old runs failed; trying again in {:?}",
                retention.interval
            ),
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(retention.interval) => {}
        }
    }
}
