//! A run's event log and its subscribers.
//!
//! The engine sends a run's events (only when the run asked for them) to a
//! pump task, which coalesces bursts of log lines per agent (`full` mode:
//! at most one event per agent per [`LOG_INTERVAL`], the lines held back
//! meanwhile folded into it, joined with newlines up to a size cap), numbers the events, appends them to the
//! run's [`EventLog`] and broadcasts them.
//!
//! Every event counts against the log's cap, so a run that retries in a
//! tight loop cannot fill the server's memory. Below the cap lifecycle
//! events are never dropped or delayed. Once it is reached, log lines are
//! dropped (and counted) and lifecycle events coalesce: only the latest one
//! per agent is held, with a count of how many it stands for, and the held
//! ones are appended just before the run's final event. Everything nested
//! under one top-level agent shares one held slot, apart from the agent's
//! own: the instances of a `foreach` agent (`summarize[3]`), and a group's
//! members and rounds (`per_doc[3].extract`, `refine#2.draft`). A fan-out
//! over 100,000 elements adds one held event, not 100,000 (each instance's
//! fate is in the run's report, which already costs one entry per
//! instance). So nothing about an agent's fate
//! vanishes, the log holds at most `cap` events plus two per pipeline agent
//! plus the final event, and the final event always arrives.
//!
//! The pump's own per-agent bookkeeping (when an agent's last line went
//! out, its held-back lines) is dropped when the agent ends, so it is
//! bounded by the members in flight, not by the instances a run ever had.
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

use braid_core::event::{EventKind, FoldedLines, RunEvent};
use indexmap::IndexMap;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc};

/// How often one agent's log lines reach subscribers, at most.
pub const LOG_INTERVAL: Duration = Duration::from_millis(100);

/// How many events a subscriber may fall behind before it is told it lagged.
const BROADCAST_CAPACITY: usize = 256;

/// Longer log events (a line, or lines folded together) are cut to this
/// many bytes: with the per-run event cap, what bounds a run's log.
const MAX_LINE_BYTES: usize = 16 * 1024;

/// One event as clients see it.
#[derive(Debug, Clone, Serialize)]
pub struct LoggedEvent {
    /// 1, 2, 3… per run, with no gaps.
    pub seq: u64,
    /// The engine's event (its `seq` field is the engine's own numbering).
    #[serde(flatten)]
    pub event: RunEvent,
    /// 0 for an event delivered as it happened; for one held back because
    /// the log had reached its cap, how many events of its agent it stands
    /// for (itself included: it is the latest of them).
    #[serde(skip_serializing_if = "is_zero")]
    pub coalesced: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl LoggedEvent {
    /// The event as one line of JSON, `seq` (and `coalesced`, if not 0)
    /// included.
    pub fn to_json(&self) -> String {
        let mut value = serde_json::to_value(&self.event).unwrap_or_default();
        value["seq"] = self.seq.into();
        if self.coalesced > 0 {
            value["coalesced"] = self.coalesced.into();
        }
        value.to_string()
    }
}

/// Whose lifecycle events one held slot stands for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum HeldKey {
    /// The run's own events.
    Run,
    /// A pipeline agent's own events (a `foreach` agent's aggregate ones
    /// included).
    Agent(Arc<str>),
    /// Everything nested under the top-level agent of this name, together:
    /// a `foreach` agent's instances, a group's members and rounds.
    Instances(Arc<str>),
}

impl HeldKey {
    fn of(event: &RunEvent) -> Self {
        match event.kind.agent() {
            None => Self::Run,
            Some(agent) => match braid_core::report::top_agent(agent) {
                top if top.len() == agent.len() => Self::Agent(agent.clone()),
                top => Self::Instances(Arc::from(top)),
            },
        }
    }
}

/// Lifecycle events held back once the log is full: per [`HeldKey`], the
/// latest and how many it stands for.
type Held = IndexMap<HeldKey, (RunEvent, u64)>;

struct Inner {
    events: Vec<Arc<LoggedEvent>>,
    /// Log lines not kept because the log reached its cap.
    dropped: u64,
    /// Lifecycle events folded into a later one because of the cap.
    coalesced: u64,
    held: Held,
    finished: bool,
}

impl Inner {
    fn append(&mut self, offset: u64, event: RunEvent, coalesced: u64) -> Arc<LoggedEvent> {
        let logged = Arc::new(LoggedEvent {
            seq: offset + self.events.len() as u64 + 1,
            event,
            coalesced,
        });
        self.events.push(logged.clone());
        logged
    }

    /// Appends every held event, in the order their agents were first held.
    fn release_held(&mut self, offset: u64) -> Vec<Arc<LoggedEvent>> {
        let held = std::mem::take(&mut self.held);
        held.into_values()
            .map(|(event, count)| self.append(offset, event, count))
            .collect()
    }
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
    /// An empty log keeping at most `cap` events, plus the latest
    /// lifecycle event of each agent held back once it was full, plus the
    /// run's final event.
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
                coalesced: 0,
                held: IndexMap::new(),
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

    /// Appends and broadcasts one event. Once the log holds `cap` events,
    /// a log line is dropped and a lifecycle event is held (the latest per
    /// agent, and per top-level agent for everything nested under it: a
    /// `foreach` agent's instances, a group's members and rounds)
    /// until the run's final event, which is always appended, after the
    /// held ones.
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
        let released = {
            let mut inner = self.lock();
            let is_final = matches!(event.kind, EventKind::RunFinished { .. });
            if !is_final && inner.events.len() >= self.cap {
                if matches!(event.kind, EventKind::AgentLog { .. }) {
                    inner.dropped += 1;
                    metrics::counter!("braid_events_dropped_total", "reason" => "cap").increment(1);
                } else {
                    inner.coalesced += 1;
                    metrics::counter!("braid_events_coalesced_total").increment(1);
                    match inner.held.entry(HeldKey::of(&event)) {
                        indexmap::map::Entry::Occupied(mut held) => {
                            let held = held.get_mut();
                            held.0 = event;
                            held.1 += 1;
                        }
                        indexmap::map::Entry::Vacant(slot) => {
                            slot.insert((event, 1));
                        }
                    }
                }
                return;
            }
            let mut released = if is_final {
                inner.release_held(self.offset)
            } else {
                Vec::new()
            };
            released.push(inner.append(self.offset, event, 0));
            released
        };
        self.broadcast(released);
    }

    /// Sends under no lock; a send with no subscribers is not an error.
    fn broadcast(&self, events: Vec<Arc<LoggedEvent>>) {
        if let Some(sender) = self
            .sender
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            for event in events {
                let _ = sender.send(event);
            }
        }
    }

    /// Marks the log complete (appending any event still held back):
    /// subscribers finish once they have it all.
    pub fn finish(&self) {
        let released = self.lock().release_held(self.offset);
        self.broadcast(released);
        self.lock().finished = true;
        self.sender.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// A complete log of events saved earlier (each as [`LoggedEvent::to_json`]
    /// wrote it), numbered as they were.
    pub fn replay(saved: impl IntoIterator<Item = String>) -> Result<Arc<Self>, serde_json::Error> {
        let log = Self::new(usize::MAX);
        {
            let mut inner = log.lock();
            for text in saved {
                let value: serde_json::Value = serde_json::from_str(&text)?;
                let coalesced = value["coalesced"].as_u64().unwrap_or(0);
                let event: RunEvent = serde_json::from_value(value)?;
                inner.append(0, event, coalesced);
            }
        }
        log.finish();
        Ok(log)
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

    /// How many lifecycle events were folded into a later one of their
    /// agent because of the cap.
    pub fn coalesced(&self) -> u64 {
        self.lock().coalesced
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
    // Per agent: the latest line's event and every line held back, folded.
    let mut pending: HashMap<Arc<str>, (RunEvent, FoldedLines)> = HashMap::new();
    let mut last_sent: HashMap<Arc<str>, tokio::time::Instant> = HashMap::new();
    let mut tick = tokio::time::interval(LOG_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = from_engine.recv() => {
                let Some(event) = event else { break };
                match &event.kind {
                    EventKind::AgentLog { agent, line, partial } => {
                        let now = tokio::time::Instant::now();
                        let due = last_sent.get(agent).is_none_or(|t| now - *t >= LOG_INTERVAL);
                        if due && !pending.contains_key(agent) {
                            last_sent.insert(agent.clone(), now);
                            log.push(event);
                        } else {
                            match pending.entry(agent.clone()) {
                                std::collections::hash_map::Entry::Occupied(mut held) => {
                                    let held = held.get_mut();
                                    held.1.push(line.clone(), *partial);
                                    held.0 = event;
                                }
                                std::collections::hash_map::Entry::Vacant(slot) => {
                                    let folded = FoldedLines::with_limit(
                                        line.clone(),
                                        *partial,
                                        MAX_LINE_BYTES,
                                    );
                                    slot.insert((event, folded));
                                }
                            }
                        }
                    }
                    kind => {
                        // A lifecycle event of an agent first lets out its held-back line.
                        if let Some(agent) = kind.agent()
                            && let Some(held) = pending.remove(agent)
                        {
                            log.push(folded(held));
                        }
                        // An agent that ended logs no more: forget when it
                        // last did, so the map holds the members in flight,
                        // not every instance a fan-out ever had.
                        if let EventKind::AgentCompleted { agent, .. }
                        | EventKind::AgentFailed { agent, .. }
                        | EventKind::AgentSkipped { agent, .. } = kind
                        {
                            last_sent.remove(agent);
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

/// The event of held-back lines: the latest line's, carrying them all.
fn folded((mut event, lines): (RunEvent, FoldedLines)) -> RunEvent {
    if let EventKind::AgentLog { line, partial, .. } = &mut event.kind {
        (*line, *partial) = lines.into_line();
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
                    items: None,
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

    fn event(kind: EventKind) -> RunEvent {
        RunEvent {
            seq: 0,
            at_ms: 0.0,
            kind,
        }
    }

    fn retrying(agent: &str, attempt: u32) -> RunEvent {
        event(EventKind::AgentRetrying {
            agent: Arc::from(agent),
            attempt,
            error: "no".into(),
            delay_ms: 0.0,
        })
    }

    #[test]
    fn past_the_cap_each_agents_latest_event_is_held_and_released_before_the_final_one() {
        let log = EventLog::new(5);
        for attempt in 1..=100 {
            log.push(retrying("a", attempt));
            log.push(retrying("b", attempt));
            log.push(event(EventKind::AgentLog {
                agent: Arc::from("a"),
                line: "x".into(),
                partial: false,
            }));
        }
        assert_eq!(log.all().len(), 5, "nothing beyond the cap is appended yet");
        log.push(event(EventKind::RunFinished {
            status: braid_core::RunStatus::Failed,
            makespan_ms: 1.0,
        }));
        let events = log.all();
        assert_eq!(events.len(), 5 + 2 + 1);
        let held: Vec<(String, u64)> = events[5..7]
            .iter()
            .map(|e| match &e.event.kind {
                EventKind::AgentRetrying { agent, attempt, .. } => {
                    (format!("{agent} {attempt}"), e.coalesced)
                }
                other => panic!("{other:?}"),
            })
            .collect();
        // Kept: a 1, b 1, a line, a 2, b 2; attempts 3 to 100 fold into the latest.
        assert_eq!(held, [("a 100".to_owned(), 98), ("b 100".to_owned(), 98)]);
        assert!(events[6].to_json().contains(r#""coalesced":98"#));
        assert!(matches!(
            events[7].event.kind,
            EventKind::RunFinished { .. }
        ));
        assert_eq!(log.coalesced(), 196);
        assert_eq!(log.dropped(), 99);
    }

    #[test]
    fn past_the_cap_a_fanouts_instances_share_one_held_slot() {
        let log = EventLog::new(3);
        let named = |agent: String| Arc::<str>::from(agent);
        log.push(event(EventKind::AgentStarted {
            agent: named("work".into()),
            attempt: 1,
            items: None,
        }));
        for i in 0..100_000 {
            log.push(event(EventKind::AgentStarted {
                agent: named(format!("work[{i}]")),
                attempt: 1,
                items: None,
            }));
            log.push(event(EventKind::AgentCompleted {
                agent: named(format!("work[{i}]")),
                duration_ms: 1.0,
                cached: false,
            }));
        }
        log.push(event(EventKind::AgentCompleted {
            agent: named("work".into()),
            duration_ms: 5.0,
            cached: false,
        }));
        log.push(event(EventKind::RunFinished {
            status: braid_core::RunStatus::Completed,
            makespan_ms: 5.0,
        }));
        let events = log.all();
        let names: Vec<(String, u64)> = events
            .iter()
            .map(|e| match e.event.kind.agent() {
                Some(agent) => (agent.to_string(), e.coalesced),
                None => ("run".to_owned(), e.coalesced),
            })
            .collect();
        // Kept: work, work[0] twice; then one slot for every instance
        // (their latest event), one for the agent's own, and the final one.
        assert_eq!(
            names,
            [
                ("work".to_owned(), 0),
                ("work[0]".to_owned(), 0),
                ("work[0]".to_owned(), 0),
                ("work[99999]".to_owned(), 199_998),
                ("work".to_owned(), 1),
                ("run".to_owned(), 0),
            ]
        );
        assert!(matches!(
            events[3].event.kind,
            EventKind::AgentCompleted { .. }
        ));
    }

    #[test]
    fn past_the_cap_a_groups_members_and_rounds_share_its_held_slot() {
        let log = EventLog::new(1);
        let named = |agent: String| Arc::<str>::from(agent);
        log.push(event(EventKind::AgentStarted {
            agent: named("per_doc".into()),
            attempt: 1,
            items: Some(100_000),
        }));
        for i in 0..100_000 {
            for agent in [
                format!("per_doc[{i}]"),
                format!("per_doc[{i}].extract"),
                format!("refine#{i}.draft"),
            ] {
                log.push(event(EventKind::AgentCompleted {
                    agent: named(agent),
                    duration_ms: 1.0,
                    cached: false,
                }));
            }
        }
        log.push(event(EventKind::AgentCompleted {
            agent: named("refine".into()),
            duration_ms: 5.0,
            cached: false,
        }));
        log.finish();
        let names: Vec<(String, u64)> = log
            .all()
            .iter()
            .map(|e| (e.event.kind.agent().unwrap().to_string(), e.coalesced))
            .collect();
        // One slot per top-level group for all its nested members, in the
        // order first held, plus the group's own event.
        assert_eq!(
            names,
            [
                ("per_doc".to_owned(), 0),
                ("per_doc[99999].extract".to_owned(), 200_000),
                ("refine#99999.draft".to_owned(), 100_000),
                ("refine".to_owned(), 1),
            ]
        );
    }

    #[test]
    fn held_events_are_released_even_without_a_final_event() {
        let log = EventLog::new(1);
        log.push(retrying("a", 1));
        log.push(retrying("a", 2));
        log.finish();
        let seqs: Vec<(u64, u64)> = log.all().iter().map(|e| (e.seq, e.coalesced)).collect();
        assert_eq!(seqs, [(1, 0), (2, 1)]);
        let replayed = EventLog::replay(log.all().iter().map(|e| e.to_json())).unwrap();
        let again: Vec<(u64, u64)> = replayed
            .all()
            .iter()
            .map(|e| (e.seq, e.coalesced))
            .collect();
        assert_eq!(again, seqs, "a replay keeps the counts");
    }

    #[tokio::test]
    async fn bursts_of_log_lines_are_folded_and_lifecycle_events_all_arrive() {
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
        // No line is lost: the events carry all 500, in order, folded
        // together with newlines.
        let lines: Vec<String> = events
            .iter()
            .filter_map(|e| match &e.event.kind {
                EventKind::AgentLog { line, .. } => Some(line.clone()),
                _ => None,
            })
            .flat_map(|l| l.split('\n').map(str::to_owned).collect::<Vec<_>>())
            .collect();
        let expected: Vec<String> = (1..=500).map(|i| format!("line {i}")).collect();
        assert_eq!(lines, expected);
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());
    }
}
