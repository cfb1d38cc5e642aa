//! Progress events, built only when a run asks for them.
//!
//! A run takes an optional [`EventSink`]. Without one (batch runs), the
//! scheduler never builds, queues or stores an event: every emission point is
//! behind an `if let Some(sink)`. With one, events are stamped with their
//! monotonic offset from the run's start and numbered in order as the
//! [`EventReceiver`] takes them. The queue between them is bounded without
//! dropping lifecycle events or blocking the run: log lines beyond a backlog
//! are coalesced per agent at the source (see [`EventSink`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;

static BUILT: AtomicU64 = AtomicU64::new(0);

/// How many events this process has built, in every run so far. A run
/// without an [`EventSink`] adds nothing to it: with events off, no event
/// is built, queued or stored.
///
/// Not part of the API: a probe for the test that proves that claim
/// (`tests/events_off.rs`, an integration test, so it cannot be
/// `#[cfg(test)]`). It may go away without notice.
#[doc(hidden)]
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
        /// For a `foreach` agent: how many instances it will run (the
        /// length of its list).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        items: Option<u64>,
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
        /// Its writes came from the cache (`cache:`): it was not called,
        /// and `duration_ms` is the lookup's.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        cached: bool,
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
    /// An `input` agent is waiting for its answer: what it asks, the
    /// schema the answer must fit, and the values it reads (shown with the
    /// question).
    AgentWaiting {
        /// The agent.
        agent: Arc<str>,
        /// The question.
        prompt: String,
        /// The JSON Schema of the answer, when it has one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        schema: Option<serde_json::Value>,
        /// The fields it reads, with their values.
        reads: indexmap::IndexMap<Arc<str>, Arc<serde_json::Value>>,
        /// When its wait times out, in ms since the Unix epoch.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deadline_ms: Option<i64>,
    },
    /// A waiting `input` agent got its answer (or, with `by_default`, its
    /// wait timed out and its `default` was used); `agent_completed` follows.
    AgentAnswered {
        /// The agent.
        agent: Arc<str>,
        /// The timeout's default was used: nobody answered.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        by_default: bool,
    },
    /// A line the agent logged (only with [`EventLevel::Full`]).
    AgentLog {
        /// The agent.
        agent: Arc<str>,
        /// The line, without its newline.
        line: String,
        /// True when the text is a piece of a stream (an `llm` answer as
        /// it arrives) that the agent's next log event continues with no
        /// line break between them: concatenating an agent's log events,
        /// with a newline after each one that is not partial, gives back
        /// everything it logged.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        partial: bool,
    },
    /// An agent called a tool (see [`crate::tool`]); its arguments fit the
    /// tool's parameters and it is starting.
    ToolCalled {
        /// The calling agent.
        agent: Arc<str>,
        /// The call's step name, `agent.tool#N:tool`.
        call: Arc<str>,
        /// The tool.
        tool: Arc<str>,
        /// Its arguments.
        arguments: serde_json::Value,
    },
    /// A tool call ended (`tool_called` came before it).
    ToolFinished {
        /// The calling agent.
        agent: Arc<str>,
        /// The call's step name, `agent.tool#N:tool`.
        call: Arc<str>,
        /// The tool.
        tool: Arc<str>,
        /// From its start to its end, retries included.
        duration_ms: f64,
        /// Why it failed, when it did (the model is told).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// The run ended; no event follows.
    RunFinished {
        /// `completed`, `failed` or `cancelled`.
        status: crate::report::RunStatus,
        /// The run's makespan.
        makespan_ms: f64,
    },
}

/// Log lines that may wait for the receiver, per run, before further lines
/// are coalesced (see [`EventSink`]).
pub const DEFAULT_LOG_BACKLOG: usize = 256;

/// Longer log lines are cut to this many bytes (at a character boundary)
/// when they are emitted.
pub const MAX_LOG_LINE_BYTES: usize = 16 * 1024;

/// The most text one event of folded log lines carries; lines beyond it
/// are counted, not kept.
pub const MAX_FOLDED_BYTES: usize = 64 * 1024;

/// Log lines of one agent folded into one event while their reader is
/// behind: joined in order (with a newline after each line that is not
/// partial) up to [`MAX_FOLDED_BYTES`], then counted. Nothing a reader is
/// shown is rewritten: a streamed answer reads back whole.
///
/// ```
/// use braid_core::event::FoldedLines;
/// let mut folded = FoldedLines::new("first".to_owned(), false);
/// folded.push("sec".to_owned(), true);
/// folded.push("ond".to_owned(), false);
/// assert_eq!(folded.lines(), 3);
/// assert_eq!(folded.into_line(), ("first\nsecond".to_owned(), false));
/// ```
#[derive(Debug, Clone)]
pub struct FoldedLines {
    text: String,
    partial: bool,
    lines: u64,
    dropped: u64,
    max_bytes: usize,
}

impl FoldedLines {
    /// Starts with one line (`partial`: the next continues it), keeping
    /// at most [`MAX_FOLDED_BYTES`].
    pub fn new(line: String, partial: bool) -> Self {
        Self::with_limit(line, partial, MAX_FOLDED_BYTES)
    }

    /// Starts with one line, keeping at most `max_bytes` of text (the first
    /// line is kept whole).
    pub fn with_limit(line: String, partial: bool, max_bytes: usize) -> Self {
        Self {
            text: line,
            partial,
            lines: 1,
            dropped: 0,
            max_bytes,
        }
    }

    /// Adds the next line: joined while the text stays within the limit,
    /// counted otherwise.
    pub fn push(&mut self, line: String, partial: bool) {
        self.lines += 1;
        let separator = usize::from(!self.partial);
        if self.dropped == 0 && self.text.len() + separator + line.len() <= self.max_bytes {
            if !self.partial {
                self.text.push('\n');
            }
            self.text.push_str(&line);
            self.partial = partial;
        } else {
            self.dropped += 1;
        }
    }

    /// How many lines were folded in, kept or not.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// The joined text, with a last line saying how many lines did not fit,
    /// and whether the next event continues it.
    pub fn into_line(mut self) -> (String, bool) {
        if self.dropped > 0 {
            self.text.push('\n');
            self.text
                .push_str(&format!("({} more lines not kept)", self.dropped));
            return (self.text, false);
        }
        (self.text, self.partial)
    }
}

/// Where a run sends its events. Cheap to clone; clones share one queue.
///
/// The queue is bounded without ever dropping a lifecycle event and without
/// blocking the run: lifecycle events (a run's are bounded by its agents and
/// their attempts) are always queued; log lines are queued while fewer than
/// the log backlog ([`DEFAULT_LOG_BACKLOG`]) are waiting, and beyond that
/// each agent's further lines are folded at the source into one waiting
/// event ([`FoldedLines`]: joined with newlines up to [`MAX_FOLDED_BYTES`],
/// then counted) until the receiver takes it. An agent's waiting line is delivered before that agent's next
/// lifecycle event. Lines are cut to [`MAX_LOG_LINE_BYTES`]. So a receiver
/// that falls behind, or an agent that logs without end, costs at most the
/// backlog plus one line per agent.
#[derive(Clone)]
pub struct EventSink {
    sender: Arc<Sender>,
    level: EventLevel,
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSink")
            .field("level", &self.level)
            .finish_non_exhaustive()
    }
}

/// The receiving end of an [`EventSink`]: events in order, numbered 1, 2, 3…
/// as they are taken. `recv` returns `None` once every clone of the sink is
/// dropped (the run ended) and everything queued was taken.
pub struct EventReceiver {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for EventReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventReceiver").finish_non_exhaustive()
    }
}

/// Dropped with the last clone of a sink: closes the queue.
struct Sender {
    shared: Arc<Shared>,
}

struct Shared {
    queue: Mutex<Queue>,
    notify: tokio::sync::Notify,
    start: std::sync::OnceLock<Instant>,
    log_backlog: usize,
}

#[derive(Default)]
struct Queue {
    entries: std::collections::VecDeque<Entry>,
    /// How many entries were taken: `entries[0]`'s absolute position.
    taken: u64,
    /// Plain log lines waiting in `entries`.
    logs_waiting: usize,
    /// Per agent, the absolute position of its coalesced line, if waiting.
    held: std::collections::HashMap<Arc<str>, u64>,
    /// The last sequence number handed out.
    seq: u64,
    closed: bool,
    receiver_gone: bool,
}

enum Entry {
    Event(f64, EventKind),
    /// Coalesced log lines of one agent, folded into one.
    Held {
        at_ms: f64,
        agent: Arc<str>,
        folded: FoldedLines,
    },
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Queue> {
    shared.queue.lock().unwrap_or_else(|e| e.into_inner())
}

impl Drop for Sender {
    fn drop(&mut self) {
        lock(&self.shared).closed = true;
        self.shared.notify.notify_one();
    }
}

impl EventSink {
    /// A sink and the receiver its events arrive on, with the default log
    /// backlog ([`DEFAULT_LOG_BACKLOG`]).
    ///
    /// ```
    /// use braid_core::event::{EventLevel, EventSink};
    /// let (sink, mut events) = EventSink::channel(EventLevel::Summary);
    /// # drop((sink, events.try_recv()));
    /// ```
    pub fn channel(level: EventLevel) -> (Self, EventReceiver) {
        Self::with_log_backlog(level, DEFAULT_LOG_BACKLOG)
    }

    /// A sink whose receiver may fall `log_backlog` log lines behind before
    /// further lines are coalesced per agent (lifecycle events are never
    /// coalesced or dropped).
    pub fn with_log_backlog(level: EventLevel, log_backlog: usize) -> (Self, EventReceiver) {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            notify: tokio::sync::Notify::new(),
            start: std::sync::OnceLock::new(),
            log_backlog,
        });
        let sink = Self {
            sender: Arc::new(Sender {
                shared: shared.clone(),
            }),
            level,
        };
        (sink, EventReceiver { shared })
    }

    /// True when agents' log lines are wanted.
    pub fn wants_logs(&self) -> bool {
        self.level == EventLevel::Full
    }

    pub(crate) fn started_at(&self, start: Instant) {
        let _ = self.sender.shared.start.set(start);
    }

    /// Stamps and queues one event (numbered when it is taken). A receiver
    /// that went away is not an error: the run goes on.
    pub(crate) fn emit(&self, kind: EventKind) {
        let shared = &self.sender.shared;
        let at_ms = shared
            .start
            .get()
            .map(|s| s.elapsed().as_secs_f64() * 1e3)
            .unwrap_or(0.0);
        BUILT.fetch_add(1, Ordering::Relaxed);
        crate::telemetry::event_emitted();
        let mut queue = lock(shared);
        if queue.receiver_gone {
            return;
        }
        match kind {
            EventKind::AgentLog {
                agent,
                mut line,
                partial,
            } => {
                cut(&mut line, MAX_LOG_LINE_BYTES);
                if let Some(&at) = queue.held.get(&agent) {
                    let index = (at - queue.taken) as usize;
                    if let Some(Entry::Held {
                        at_ms: held_at,
                        folded,
                        ..
                    }) = queue.entries.get_mut(index)
                    {
                        *held_at = at_ms;
                        folded.push(line, partial);
                    }
                } else if queue.logs_waiting < shared.log_backlog {
                    queue.logs_waiting += 1;
                    queue.entries.push_back(Entry::Event(
                        at_ms,
                        EventKind::AgentLog {
                            agent,
                            line,
                            partial,
                        },
                    ));
                } else {
                    let at = queue.taken + queue.entries.len() as u64;
                    queue.held.insert(agent.clone(), at);
                    queue.entries.push_back(Entry::Held {
                        at_ms,
                        agent,
                        folded: FoldedLines::new(line, partial),
                    });
                }
            }
            kind => {
                // The agent's later lines go after this event.
                if let Some(agent) = kind.agent() {
                    queue.held.remove(agent);
                }
                queue.entries.push_back(Entry::Event(at_ms, kind));
            }
        }
        drop(queue);
        shared.notify.notify_one();
    }
}

impl EventKind {
    /// The agent the event is about; `None` for the run's own events.
    pub fn agent(&self) -> Option<&Arc<str>> {
        match self {
            EventKind::AgentStarted { agent, .. }
            | EventKind::AgentRetrying { agent, .. }
            | EventKind::AgentCompleted { agent, .. }
            | EventKind::AgentFailed { agent, .. }
            | EventKind::AgentSkipped { agent, .. }
            | EventKind::AgentWaiting { agent, .. }
            | EventKind::AgentAnswered { agent, .. }
            | EventKind::AgentLog { agent, .. }
            | EventKind::ToolCalled { agent, .. }
            | EventKind::ToolFinished { agent, .. } => Some(agent),
            EventKind::RunStarted { .. } | EventKind::RunFinished { .. } => None,
        }
    }
}

/// Cuts `line` to at most `max` bytes, at a character boundary.
fn cut(line: &mut String, max: usize) {
    if line.len() > max {
        let mut end = max;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
    }
}

impl EventReceiver {
    /// The next event, waiting for one if none is queued; `None` once the
    /// run's sink is gone and every event was taken.
    pub async fn recv(&mut self) -> Option<RunEvent> {
        loop {
            match self.try_recv() {
                Ok(event) => return Some(event),
                Err(mpsc::error::TryRecvError::Disconnected) => return None,
                Err(mpsc::error::TryRecvError::Empty) => self.shared.notify.notified().await,
            }
        }
    }

    /// The next event if one is queued: `Empty` if none is yet,
    /// `Disconnected` if none will come.
    pub fn try_recv(&mut self) -> Result<RunEvent, mpsc::error::TryRecvError> {
        let mut queue = lock(&self.shared);
        let Some(entry) = queue.entries.pop_front() else {
            return Err(if queue.closed {
                mpsc::error::TryRecvError::Disconnected
            } else {
                mpsc::error::TryRecvError::Empty
            });
        };
        let position = queue.taken;
        queue.taken += 1;
        let (at_ms, kind) = match entry {
            Entry::Event(at_ms, kind) => {
                if matches!(kind, EventKind::AgentLog { .. }) {
                    queue.logs_waiting -= 1;
                }
                (at_ms, kind)
            }
            Entry::Held {
                at_ms,
                agent,
                folded,
            } => {
                if queue.held.get(&agent) == Some(&position) {
                    queue.held.remove(&agent);
                }
                let (line, partial) = folded.into_line();
                (
                    at_ms,
                    EventKind::AgentLog {
                        agent,
                        line,
                        partial,
                    },
                )
            }
        };
        queue.seq += 1;
        Ok(RunEvent {
            seq: queue.seq,
            at_ms,
            kind,
        })
    }

    /// How many events are waiting (coalesced lines count once).
    pub fn len(&self) -> usize {
        lock(&self.shared).entries.len()
    }

    /// Whether no event is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for EventReceiver {
    fn drop(&mut self) {
        let mut queue = lock(&self.shared);
        queue.receiver_gone = true;
        queue.entries.clear();
        queue.held.clear();
    }
}
