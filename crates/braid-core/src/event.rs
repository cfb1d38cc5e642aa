//! Progress events, built only when a run asks for them.
//!
//! A run takes an optional [`EventSink`]. Without one (batch runs), the
//! scheduler never builds, queues or stores an event: every emission point is
//! behind an `if let Some(sink)`. With one, lifecycle events are numbered in
//! order and stamped with their monotonic offset from the run's start.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;

static BUILT: AtomicU64 = AtomicU64::new(0);

/// How many events this process has built, in every run so far. A run
/// without an [`EventSink`] adds nothing to it: with events off, no event
/// is built, queued or stored.
pub fn events_built() -> u64 {
    BUILT.load(Ordering::Relaxed)
}

/// How much a subscriber wants to see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventLevel {
    /// Lifecycle only: run and agent started, completed, failed, retried, skipped.
    Summary,
    /// Lifecycle plus agents' log lines.
    Full,
}

/// One thing that happened in a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunEvent {
    /// 1, 2, 3… in the order the events were emitted.
    pub seq: u64,
    /// Milliseconds since the run started (monotonic clock).
    pub at_ms: f64,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// The run began.
    RunStarted {
        /// The run's id.
        run_id: Arc<str>,
        /// The pipeline's name.
        pipeline: Arc<str>,
    },
    /// An attempt of an agent began.
    AgentStarted {
        /// The agent.
        agent: Arc<str>,
        /// Which attempt (1 for the first).
        attempt: u32,
    },
    /// An attempt failed and the agent will try again after `delay_ms`.
    AgentRetrying {
        /// The agent.
        agent: Arc<str>,
        /// The attempt that failed.
        attempt: u32,
        /// Why it failed.
        error: String,
        /// How long until the next attempt.
        delay_ms: f64,
    },
    /// The agent finished and its writes were merged into the state.
    AgentCompleted {
        /// The agent.
        agent: Arc<str>,
        /// From first start to finish, retries included.
        duration_ms: f64,
    },
    /// The agent failed for good.
    AgentFailed {
        /// The agent.
        agent: Arc<str>,
        /// Why.
        error: String,
    },
    /// The agent did not run, and why.
    AgentSkipped {
        /// The agent.
        agent: Arc<str>,
        /// Why (a false condition, or an input that was never produced).
        reason: String,
    },
    /// A line the agent logged (only with [`EventLevel::Full`]).
    AgentLog {
        /// The agent.
        agent: Arc<str>,
        /// The line, without its newline.
        line: String,
    },
    /// The run ended; no event follows.
    RunFinished {
        /// `completed`, `failed` or `cancelled`.
        status: crate::run::RunStatus,
        /// The run's makespan.
        makespan_ms: f64,
    },
}

/// Where a run sends its events. Cheap to clone; clones share the sequence.
#[derive(Debug, Clone)]
pub struct EventSink {
    tx: mpsc::UnboundedSender<RunEvent>,
    level: EventLevel,
    /// The last sequence number, held while sending so that numbers and
    /// channel order agree even when agent tasks emit concurrently.
    seq: Arc<Mutex<u64>>,
    start: Arc<std::sync::OnceLock<Instant>>,
}

impl EventSink {
    /// A sink and the receiver its events arrive on.
    ///
    /// ```
    /// use braid_core::event::{EventLevel, EventSink};
    /// let (sink, mut events) = EventSink::channel(EventLevel::Summary);
    /// # drop((sink, events.try_recv()));
    /// ```
    pub fn channel(level: EventLevel) -> (Self, mpsc::UnboundedReceiver<RunEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let sink = Self {
            tx,
            level,
            seq: Arc::new(Mutex::new(0)),
            start: Arc::new(std::sync::OnceLock::new()),
        };
        (sink, rx)
    }

    /// True when agents' log lines are wanted.
    pub fn wants_logs(&self) -> bool {
        self.level == EventLevel::Full
    }

    pub(crate) fn started_at(&self, start: Instant) {
        let _ = self.start.set(start);
    }

    /// Numbers, stamps and sends one event. A receiver that went away is
    /// not an error: the run goes on.
    pub(crate) fn emit(&self, kind: EventKind) {
        let at_ms = self
            .start
            .get()
            .map(|s| s.elapsed().as_secs_f64() * 1e3)
            .unwrap_or(0.0);
        BUILT.fetch_add(1, Ordering::Relaxed);
        crate::telemetry::event_emitted();
        let mut last = self.seq.lock().unwrap_or_else(|e| e.into_inner());
        *last += 1;
        let _ = self.tx.send(RunEvent {
            seq: *last,
            at_ms,
            kind,
        });
    }
}
