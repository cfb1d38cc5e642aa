//! A run's event log and its subscribers.
//!
//! The engine sends a run's events (only when the run asked for them) to a
//! pump task, which coalesces bursts of log lines per agent (`full` mode:
//! at most one line per agent per [`LOG_INTERVAL`], latest wins, with a
//! count of what was folded in), numbers the events, appends them to the
//! run's [`EventLog`] and broadcasts them. Lifecycle events are never
//! dropped or delayed.
//!
//! A subscriber (SSE or WebSocket) first replays the log after the sequence
//! number it already has, then follows the broadcast. The broadcast buffer
//! is bounded: a subscriber that falls behind gets a `lagged` notice and
//! catches up from the log, so a slow client never slows the run or other
//! clients, and a client that reconnects with its last sequence number gets
//! every event it missed, in order, once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use braid_core::event::{EventKind, RunEvent};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc};

/// How often one agent's log lines reach subscribers, at most.
pub const LOG_INTERVAL: Duration = Duration::from_millis(100);

/// How many events a subscriber may fall behind before it is told it lagged.
const BROADCAST_CAPACITY: usize = 256;

/// Longer log lines are cut to this many bytes.
const MAX_LINE_BYTES: usize = 4096;

/// One event as clients see it.
#[derive(Debug, Clone, Serialize)]
pub struct LoggedEvent {
    /// 1, 2, 3… per run, with no gaps.
    pub seq: u64,
    /// The engine's event (its `seq` field is the engine's own numbering).
    #[serde(flatten)]
    pub event: RunEvent,
}

impl LoggedEvent {
    /// The event as one line of JSON, `seq` included.
    pub fn to_json(&self) -> String {
        let mut value = serde_json::to_value(&self.event).unwrap_or_default();
        value["seq"] = self.seq.into();
        value.to_string()
    }
}

struct Inner {
    events: Vec<Arc<LoggedEvent>>,
    /// Log lines not kept because the log reached its cap.
    dropped: u64,
    finished: bool,
}

/// The events of one run, kept while the run lives in the server.
pub struct EventLog {
    inner: Mutex<Inner>,
    sender: Mutex<Option<broadcast::Sender<Arc<LoggedEvent>>>>,
    cap: usize,
    /// Sequence numbers continue after this one (a resumed run's earlier events).
    offset: u64,
}

impl EventLog {
    /// An empty log keeping at most `cap` events (lifecycle events are kept
    /// beyond it; log lines are not).
    pub fn new(cap: usize) -> Arc<Self> {
        Self::continuing(cap, 0)
    }

    /// An empty log whose first event is numbered `after + 1`: a resumed
    /// run goes on from the events its earlier attempt emitted.
    pub fn continuing(cap: usize, after: u64) -> Arc<Self> {
        let (sender, _) = broadcast::channel(BROADCAST_CAPACITY);
        Arc::new(Self {
            inner: Mutex::new(Inner {
                events: Vec::new(),
                dropped: 0,
                finished: false,
            }),
            sender: Mutex::new(Some(sender)),
            cap,
            offset: after,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends and broadcasts one event.
    pub fn push(&self, mut event: RunEvent) {
        if let EventKind::AgentLog { line, .. } = &mut event.kind
            && line.len() > MAX_LINE_BYTES
        {
            let mut cut = MAX_LINE_BYTES;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            line.push_str(" …");
        }
        let logged = {
            let mut inner = self.lock();
            if matches!(event.kind, EventKind::AgentLog { .. }) && inner.events.len() >= self.cap {
                inner.dropped += 1;
                metrics::counter!("braid_events_dropped_total", "reason" => "cap").increment(1);
                return;
            }
            let logged = Arc::new(LoggedEvent {
                seq: self.offset + inner.events.len() as u64 + 1,
                event,
            });
            inner.events.push(logged.clone());
            logged
        };
        // Sending under no lock; a send with no subscribers is not an error.
        if let Some(sender) = self
            .sender
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            let _ = sender.send(logged);
        }
    }

    /// Marks the log complete: subscribers finish once they have it all.
    pub fn finish(&self) {
        self.lock().finished = true;
        self.sender.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Events with `seq > after`, and whether the log is complete.
    pub fn since(&self, after: u64) -> (Vec<Arc<LoggedEvent>>, bool) {
        let inner = self.lock();
        let from = usize::try_from(after.saturating_sub(self.offset))
            .unwrap_or(usize::MAX)
            .min(inner.events.len());
        (inner.events[from..].to_vec(), inner.finished)
    }

    /// Every event so far.
    pub fn all(&self) -> Vec<Arc<LoggedEvent>> {
        self.since(0).0
    }

    /// Whether the log is complete.
    pub fn is_finished(&self) -> bool {
        self.lock().finished
    }

    /// How many log lines were not kept because of the cap.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    fn subscribe(&self) -> Option<broadcast::Receiver<Arc<LoggedEvent>>> {
        self.sender
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(broadcast::Sender::subscribe)
    }
}

/// What a subscriber receives.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// The next event.
    Event(Arc<LoggedEvent>),
    /// The subscriber fell behind by this many events; what follows is
    /// replayed from the log.
    Lagged(u64),
}

/// Streams `log`'s events after `after` into a bounded channel, until the
/// log is complete and delivered or the receiver goes away.
pub fn subscribe(log: Arc<EventLog>, after: u64, buffer: usize) -> mpsc::Receiver<Delivery> {
    let (out, rx) = mpsc::channel(buffer.max(1));
    tokio::spawn(async move {
        // Subscribe before reading the backlog, so nothing falls between.
        let mut live = log.subscribe();
        let mut next = after.saturating_add(1);
        loop {
            let (backlog, finished) = log.since(next - 1);
            for event in backlog {
                next = event.seq + 1;
                if out.send(Delivery::Event(event)).await.is_err() {
                    return;
                }
            }
            if finished {
                return;
            }
            let Some(receiver) = live.as_mut() else {
                // Finished between the checks: the next pass delivers the rest.
                continue;
            };
            let received = tokio::select! {
                received = receiver.recv() => received,
                // The client went away: do not wait for the next event.
                () = out.closed() => return,
            };
            match received {
                Ok(event) if event.seq >= next => {
                    next = event.seq + 1;
                    if out.send(Delivery::Event(event)).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    if out.send(Delivery::Lagged(missed)).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => live = None,
            }
        }
    });
    rx
}

/// Moves a run's events from the engine into `log`, coalescing log lines,
/// until the engine's sender is dropped (the run ended). Then completes the log.
pub async fn pump(mut from_engine: braid_core::event::EventReceiver, log: Arc<EventLog>) {
    // Per agent: the latest line held back, and how many lines it stands for.
    let mut pending: HashMap<Arc<str>, (RunEvent, u64)> = HashMap::new();
    let mut last_sent: HashMap<Arc<str>, tokio::time::Instant> = HashMap::new();
    let mut tick = tokio::time::interval(LOG_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = from_engine.recv() => {
                let Some(event) = event else { break };
                match &event.kind {
                    EventKind::AgentLog { agent, .. } => {
                        let now = tokio::time::Instant::now();
                        let due = last_sent.get(agent).is_none_or(|t| now - *t >= LOG_INTERVAL);
                        if due && !pending.contains_key(agent) {
                            last_sent.insert(agent.clone(), now);
                            log.push(event);
                        } else {
                            let entry = pending.entry(agent.clone()).or_insert((event.clone(), 0));
                            entry.0 = event;
                            entry.1 += 1;
                        }
                    }
                    kind => {
                        // A lifecycle event of an agent first lets out its held-back line.
                        if let Some(agent) = agent_of(kind)
                            && let Some(held) = pending.remove(agent)
                        {
                            log.push(folded(held));
                        }
                        if matches!(kind, EventKind::RunFinished { .. }) {
                            for (_, held) in pending.drain() {
                                log.push(folded(held));
                            }
                        }
                        log.push(event);
                    }
                }
            }
            _ = tick.tick(), if !pending.is_empty() => {
                let now = tokio::time::Instant::now();
                let ready: Vec<Arc<str>> = pending
                    .keys()
                    .filter(|a| last_sent.get(*a).is_none_or(|t| now - *t >= LOG_INTERVAL))
                    .cloned()
                    .collect();
                for agent in ready {
                    if let Some(held) = pending.remove(&agent) {
                        last_sent.insert(agent, now);
                        log.push(folded(held));
                    }
                }
            }
        }
    }
    for (_, held) in pending.drain() {
        log.push(folded(held));
    }
    log.finish();
}

fn agent_of(kind: &EventKind) -> Option<&Arc<str>> {
    match kind {
        EventKind::AgentStarted { agent, .. }
        | EventKind::AgentRetrying { agent, .. }
        | EventKind::AgentCompleted { agent, .. }
        | EventKind::AgentFailed { agent, .. }
        | EventKind::AgentSkipped { agent, .. }
        | EventKind::AgentLog { agent, .. } => Some(agent),
        EventKind::RunStarted { .. } | EventKind::RunFinished { .. } => None,
    }
}

/// A held-back line, marked with how many lines it replaced.
fn folded((mut event, extra): (RunEvent, u64)) -> RunEvent {
    if extra > 1
        && let EventKind::AgentLog { line, .. } = &mut event.kind
    {
        line.push_str(&format!(" (latest of {extra} lines)"));
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;
    use braid_core::event::{EventLevel, EventSink};

    fn lifecycle(kind: &str) -> bool {
        kind != "agent_log"
    }

    #[tokio::test]
    async fn a_late_subscriber_gets_everything_in_order_and_then_ends() {
        let log = EventLog::new(100);
        for i in 0..5u64 {
            log.push(RunEvent {
                seq: i,
                at_ms: 0.0,
                kind: EventKind::AgentStarted {
                    agent: Arc::from("a"),
                    attempt: 1,
                },
            });
        }
        log.finish();
        let mut rx = subscribe(log, 2, 8);
        let mut seqs = Vec::new();
        while let Some(Delivery::Event(e)) = rx.recv().await {
            seqs.push(e.seq);
        }
        assert_eq!(seqs, [3, 4, 5]);
    }

    #[tokio::test]
    async fn bursts_of_log_lines_are_coalesced_but_lifecycle_events_all_arrive() {
        let (sink, rx) = EventSink::channel(EventLevel::Full);
        let log = EventLog::new(10_000);
        let pumping = tokio::spawn(pump(rx, log.clone()));
        let pipeline = braid_core::Pipeline::from_yaml_str(
            "pipeline: chatty\nagents:\n  talk: { kind: command, run: [sh, -c, 'for i in $(seq 1 500); do echo line $i >&2; done; echo {}'] }\n",
        )
        .unwrap();
        let input = pipeline.check_input(&serde_json::json!({})).unwrap();
        let options = braid_core::RunOptions {
            events: Some(sink),
            ..Default::default()
        };
        pipeline.run(input, options).await;
        pumping.await.unwrap();
        let events = log.all();
        let kinds: Vec<String> = events
            .iter()
            .map(|e| {
                serde_json::to_value(&e.event.kind).unwrap()["type"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        let logs = kinds.iter().filter(|k| !lifecycle(k)).count();
        assert!(logs < 50, "{logs} of 500 lines reached the log");
        assert!(logs >= 1);
        let lifecycle: Vec<&String> = kinds.iter().filter(|k| lifecycle(k)).collect();
        assert_eq!(
            lifecycle,
            [
                "run_started",
                "agent_started",
                "agent_completed",
                "run_finished"
            ]
        );
        // The last line is never lost: the latest wins.
        let last_log = events
            .iter()
            .rev()
            .find_map(|e| match &e.event.kind {
                EventKind::AgentLog { line, .. } => Some(line.clone()),
                _ => None,
            })
            .unwrap();
        assert!(last_log.starts_with("line 500"), "{last_log}");
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());
    }
}
