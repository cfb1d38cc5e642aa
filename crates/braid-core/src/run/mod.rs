//! Running a pipeline: the eager scheduler, retries and timeouts,
//! cancellation, and the run report.
//!
//! The scheduler is one loop that owns the run's state. Its agents are in
//! flight in `members` (polled by the run's own task on a current-thread
//! runtime, spawned in a [`JoinSet`](tokio::task::JoinSet) on a
//! multi-thread one); when one finishes, its writes are
//! merged and every dependent whose last dependency that was is started at
//! once (subject only to the run's concurrency limit). There is no level
//! barrier. Dropping the run's future, cancelling its token or a failing
//! agent aborts every task still in flight, and command agents' process
//! groups with them.
//!
//! - `scheduler`: the loop — readiness, launching, stopping, the report.
//! - `attempt`: one agent's attempts — timeouts, retries with
//!   [`Backoff`](crate::backoff::Backoff), output checking.
//! - `members`: the agents in flight, polled or spawned, and their ends.
//! - `cancel`: the loop's watch on its cancellation token, which asks the
//!   token only after the token woke it.
//! - `cached`: the cache lookup and store around a cached agent's task.
//! - `outcome`: the one place an agent's outcome is recorded (state merge,
//!   report, telemetry, events, per-agent checkpoint), used by the loop and
//!   by wind-down alike.
//!
//! The types a run shares with other layers live in leaf modules and are
//! re-exported here for the older `braid_core::run::…` paths:
//! [`crate::report`] (statuses and reports) and [`crate::input`].

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::cache::AgentCache;
use crate::checkpoint::{AgentRecord, CheckpointPolicy, Checkpointer, ResumePoint};
use crate::event::EventSink;
use crate::pipeline::Pipeline;

pub use crate::input::{InputError, ValidInput};
pub use crate::report::{AgentReport, AgentStatus, RunReport, RunStatus};

mod attempt;
mod cached;
mod cancel;
mod fanout;
mod group;
mod members;
mod outcome;
mod scheduler;
mod wait;

use scheduler::Scheduler;

/// A new run id: a time-ordered UUID (v7), as runs get when
/// [`RunOptions::run_id`] is `None`.
pub fn new_run_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// How to run a pipeline once.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The run's id; a new time-ordered UUID (v7) when `None`.
    pub run_id: Option<String>,
    /// Run one agent at a time, in topological order: the baseline that
    /// shows what the dependency graph buys.
    pub sequential: bool,
    /// Most agents in flight; overrides the pipeline's `concurrency`.
    pub concurrency: Option<usize>,
    /// Cancelling this token stops the run: agents in flight are aborted
    /// and the report says what had finished.
    pub cancel: CancellationToken,
    /// Where progress events go. `None` (batch runs): no event is built.
    pub events: Option<EventSink>,
    /// Where checkpoints go. `None`: nothing is recorded.
    pub checkpointer: Option<Arc<dyn Checkpointer>>,
    /// When to checkpoint; overrides the pipeline's `checkpoint:`, which
    /// defaults to `end`.
    pub checkpoint: Option<CheckpointPolicy>,
    /// Continue an earlier run: its completed agents whose definition hash
    /// (and every upstream one) is unchanged do not run again; see
    /// [`ResumePoint`]. Use the earlier run's id in `run_id`.
    pub resume: Option<ResumePoint>,
    /// Where answers to the run's `input` agents arrive while it is in
    /// flight (see [`crate::answer`]). Without it, a waiting agent is
    /// answered only through the run's store, once the run has ended
    /// `waiting`.
    pub answers: Option<crate::answer::AnswerInbox>,
    /// Where cached agents' (`cache:`) results are looked up and kept.
    /// `None`: no agent is cached, every one runs (`braid run --no-cache`).
    pub cache: Option<Arc<dyn AgentCache>>,
    /// Where requests for a [`RunSnapshot`](crate::snapshot::RunSnapshot)
    /// of the run in flight arrive (see [`crate::snapshot`]).
    pub snapshots: Option<crate::snapshot::SnapshotInbox>,
    /// Who or what started the run (`cli:USER@HOST`, `api`, a client's
    /// name), kept with its checkpoints for operators.
    pub started_by: Option<String>,
    /// For a run continued later (resumed, answered): how long ago it
    /// first started. Its clock starts then, so the agents run now are
    /// timed on one timeline with the agents kept from before, and its
    /// makespan counts from its first start (gaps included).
    pub resumed_after: Option<std::time::Duration>,
}

impl Pipeline {
    /// The state an earlier run reached: `input` plus the writes of its
    /// completed agents, applied in topological order with the pipeline's
    /// merge rules. Records of agents the pipeline no longer has are ignored;
    /// definition hashes are not compared (this shows what the run reached).
    /// An input another pipeline checked contributes nothing.
    pub fn replay(
        &self,
        input: ValidInput,
        agents: &[AgentRecord],
    ) -> crate::report::ByName<Arc<Value>> {
        let mut scheduler = Scheduler::new(self, input, RunOptions::default());
        // What the run reached, as recorded: no definition check here.
        scheduler.resume(
            ResumePoint {
                agents: agents.to_vec(),
            },
            false,
        );
        scheduler.state.take_map(self)
    }

    /// Runs the pipeline once with a checked input. Never fails as a whole:
    /// agent failures, skips and cancellation are in the report.
    ///
    /// (A plain `fn` returning a future rather than an `async fn`: the
    /// future then holds the scheduler once, not also room for the
    /// arguments it was built from; 10,000 runs in flight hold 10,000.)
    pub fn run(
        &self,
        input: ValidInput,
        options: RunOptions,
    ) -> impl Future<Output = RunReport> + Send + '_ {
        use tracing::Instrument;
        let scheduler = Scheduler::new(self, input, options);
        // `status` and `otel.status_code` are filled in at the end (the
        // latter is what OpenTelemetry exporters read, see braid-cli).
        let span = tracing::info_span!(
            "run",
            pipeline = %self.name,
            run_id = %scheduler.run_id,
            status = tracing::field::Empty,
            "otel.status_code" = tracing::field::Empty,
        );
        scheduler.run().instrument(span)
    }
}

/// A duration in milliseconds, as reports and events give it.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
