//! The coordinator's side: a [`Dispatcher`] turns a pipeline's agents
//! into tasks on JetStream and hands each result to the attempt waiting
//! for it.
//!
//! One dispatcher serves a whole process (every run of `braid serve`):
//! one durable consumer of its own result subject, one subscription to the
//! server's max-deliveries advisories, and a map from task id to the
//! attempt waiting for it. An entry leaves the map when its result is
//! applied, when it is dead-lettered, or when the attempt is dropped
//! (timeout, cancellation): whatever arrives for it later is dropped and
//! counted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use braid_core::Pipeline;
use braid_core::agent::{Agent, AgentError, AgentInput, Writes};
use futures_util::StreamExt;
use tokio::sync::oneshot;

use crate::task::{Task, TaskOutcome, TaskResult};
use crate::{AbortOnDrop, DEFAULT_QUEUE, NatsError, RESULTS_STREAM, TASKS_STREAM};

/// The epoch under which this process owns a run (see the store's leases):
/// it goes into task ids, so results of an earlier owner never match.
pub type EpochSource = Arc<dyn Fn(&str) -> u64 + Send + Sync>;

/// What a dispatcher has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DispatchStats {
    /// Tasks published (each attempt once, however many publishes it took).
    pub dispatched: u64,
    /// Results handed to the attempt that waited for them.
    pub applied: u64,
    /// Results nobody waited for any more (late, stale epoch, second copy).
    pub dropped: u64,
    /// Tasks dead-lettered after `max_deliver` deliveries.
    pub dead_lettered: u64,
}

/// Sends agents' attempts to workers over JetStream and waits for their
/// results. Cheap to clone; its background tasks stop with the last clone.
///
/// ```no_run
/// # async fn demo(mut pipeline: braid_core::Pipeline) -> Result<(), Box<dyn std::error::Error>> {
/// let dispatcher = braid_nats::Dispatcher::connect("nats://127.0.0.1:4222").await?;
/// dispatcher.remote(&mut pipeline)?; // its agents now run on `braid worker`s
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    js: jetstream::Context,
    /// This coordinator's result subject.
    reply: String,
    pending: Mutex<HashMap<String, oneshot::Sender<Delivery>>>,
    /// Queues already checked for a worker consumer.
    queues_seen: Mutex<std::collections::HashSet<Arc<str>>>,
    epochs: Mutex<Option<EpochSource>>,
    max_payload: usize,
    dispatched: AtomicU64,
    applied: AtomicU64,
    dropped: AtomicU64,
    dead_lettered: AtomicU64,
    /// The result consumer and the advisory listener.
    tasks: Mutex<Vec<AbortOnDrop>>,
}

type Delivery = Result<TaskResult, AgentError>;

impl Dispatcher {
    /// Connects to NATS at `url`, makes braid's streams if they are not
    /// there, and starts listening for this coordinator's results.
    ///
    /// # Errors
    /// When the server cannot be reached or has no JetStream.
    pub async fn connect(url: &str) -> Result<Self, NatsError> {
        let token = crate::process_token();
        let client = crate::connect(url, &format!("braid coordinator {token}")).await?;
        let max_payload = client.server_info().max_payload;
        let js = jetstream::new(client.clone());
        crate::ensure_streams(&js, url).await?;
        let js_error = |what: &str, e: &dyn std::fmt::Display| NatsError::JetStream {
            url: url.to_owned(),
            what: what.to_owned(),
            message: e.to_string(),
        };
        let reply = format!("braid.results.{token}");
        let results = js
            .get_stream(RESULTS_STREAM)
            .await
            .map_err(|e| js_error("stream BRAID_RESULTS", &e))?;
        let config = jetstream::consumer::pull::Config {
            durable_name: Some(format!("braid-coordinator-{token}")),
            filter_subject: reply.clone(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            // Removed by the server an hour after this process is gone.
            inactive_threshold: Duration::from_secs(3600),
            ..Default::default()
        };
        let consumer = results
            .create_consumer(config.clone())
            .await
            .map_err(|e| js_error("result consumer", &e))?;
        let advisories = client
            .subscribe(format!(
                "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{TASKS_STREAM}.*"
            ))
            .await
            .map_err(|e| js_error("advisory subscription", &e))?;
        let inner = Arc::new(Inner {
            url: url.to_owned(),
            js,
            reply,
            pending: Mutex::new(HashMap::new()),
            queues_seen: Mutex::new(std::collections::HashSet::new()),
            epochs: Mutex::new(None),
            max_payload,
            dispatched: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            tasks: Mutex::new(Vec::new()),
        });
        let weak = Arc::downgrade(&inner);
        let receive = tokio::spawn(receive_results(weak.clone(), results, config, consumer));
        let dead = tokio::spawn(dead_letters(weak, advisories));
        *inner.tasks.lock().expect("not poisoned") = vec![AbortOnDrop(receive), AbortOnDrop(dead)];
        tracing::info!(url, reply = %inner.reply, "dispatching agents to workers over NATS");
        Ok(Self { inner })
    }

    /// Where run epochs come from (the store's leases); without one, every
    /// run is at epoch 0.
    pub fn set_epochs(&self, epochs: EpochSource) {
        *self.inner.epochs.lock().expect("not poisoned") = Some(epochs);
    }

    /// The NATS URL it was connected with.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// Sends every agent of `pipeline` that runs code to workers: its
    /// queue's subject, with its definition hash, from now on. Groups,
    /// `input` agents, retries, timeouts and the cache stay here.
    ///
    /// # Errors
    /// When a group's pipeline is shared with another value (never for a
    /// pipeline loaded from a file).
    pub fn remote(&self, pipeline: &mut Pipeline) -> Result<(), String> {
        let name: Arc<str> = Arc::from(pipeline.name());
        pipeline
            .wrap_code_agents(&mut |site| {
                let queue = site.queue.unwrap_or(DEFAULT_QUEUE);
                Arc::new(RemoteAgent {
                    queue: Arc::from(queue),
                    inner: self.inner.clone(),
                    pipeline: name.clone(),
                    path: Arc::from(site.path.as_str()),
                    definition: site.portable_hash.clone(),
                    subject: Arc::from(crate::task_subject(queue)),
                    timeout: site.def.timeout(),
                })
            })
            .map_err(|group| {
                format!(
                    "group `{group}` of pipeline `{name}` is shared and cannot be sent to workers"
                )
            })
    }

    /// What it has done so far.
    pub fn stats(&self) -> DispatchStats {
        let i = &self.inner;
        DispatchStats {
            dispatched: i.dispatched.load(Ordering::Relaxed),
            applied: i.applied.load(Ordering::Relaxed),
            dropped: i.dropped.load(Ordering::Relaxed),
            dead_lettered: i.dead_lettered.load(Ordering::Relaxed),
        }
    }

    /// Attempts waiting for a result now.
    pub fn in_flight(&self) -> usize {
        self.inner.pending.lock().expect("not poisoned").len()
    }
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("url", &self.inner.url)
            .field("reply", &self.inner.reply)
            .finish_non_exhaustive()
    }
}

/// An agent whose attempts run on a worker.
struct RemoteAgent {
    queue: Arc<str>,
    inner: Arc<Inner>,
    pipeline: Arc<str>,
    path: Arc<str>,
    definition: Arc<str>,
    subject: Arc<str>,
    timeout: Option<Duration>,
}

/// Takes a waiting attempt's entry out of the map when the attempt ends,
/// however it ends.
struct Waiting<'a> {
    inner: &'a Inner,
    id: String,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.inner
            .pending
            .lock()
            .expect("not poisoned")
            .remove(&self.id);
    }
}

impl RemoteAgent {
    /// The first time a queue is used, warns (in the background) when no
    /// worker ever served it: its agents wait until one does.
    fn check_queue_once(&self) {
        if !self
            .inner
            .queues_seen
            .lock()
            .expect("not poisoned")
            .insert(self.queue.clone())
        {
            return;
        }
        let (js, queue) = (self.inner.js.clone(), self.queue.clone());
        tokio::spawn(async move {
            let Ok(stream) = js.get_stream(TASKS_STREAM).await else {
                return;
            };
            if stream
                .consumer_info(crate::worker_consumer(&queue))
                .await
                .is_err()
            {
                tracing::warn!(
                    %queue,
                    "no worker has served queue `{queue}` yet: its agents wait until one does \
                     (braid worker --queue {queue})"
                );
            }
        });
    }
}

#[async_trait::async_trait]
impl Agent for RemoteAgent {
    async fn call(&self, input: &AgentInput) -> Result<Writes, AgentError> {
        let inner = &*self.inner;
        let epoch = inner
            .epochs
            .lock()
            .expect("not poisoned")
            .as_ref()
            .map_or(0, |epochs| epochs(&input.run_id));
        let id = Task::id_of(&input.run_id, &input.agent, input.attempt, epoch);
        let task = Task {
            id: id.clone(),
            run: input.run_id.to_string(),
            pipeline: self.pipeline.to_string(),
            agent: input.agent.to_string(),
            path: self.path.to_string(),
            definition: self.definition.to_string(),
            attempt: input.attempt,
            epoch,
            reads: input
                .reads
                .iter()
                .map(|(k, v)| (k.to_owned(), v.clone()))
                .collect(),
            timeout_ms: self
                .timeout
                .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            reply: inner.reply.clone(),
        };
        let payload = serde_json::to_vec(&task).map_err(|e| AgentError::Other(e.to_string()))?;
        if payload.len() > inner.max_payload {
            return Err(AgentError::Refused(format!(
                "its task is {} bytes (its reads), more than the {} bytes the NATS server at {} \
                 takes in one message (max_payload)",
                payload.len(),
                inner.max_payload,
                inner.url
            )));
        }
        let (tx, rx) = oneshot::channel();
        inner
            .pending
            .lock()
            .expect("not poisoned")
            .insert(id.clone(), tx);
        let _waiting = Waiting {
            inner,
            id: id.clone(),
        };
        self.check_queue_once();
        publish_task(inner, &self.subject, &id, payload.into()).await?;
        inner.dispatched.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("braid_remote_tasks_total").increment(1);
        let result = rx.await.map_err(|_| {
            AgentError::Other("the dispatcher stopped before the task's result came".to_owned())
        })??;
        for line in &result.logs {
            input.log(line);
        }
        if let Some([prompt, completion]) = result.tokens {
            input.record_tokens(prompt, completion);
        }
        match result.outcome {
            TaskOutcome::Ok(writes) => Ok(writes),
            TaskOutcome::Error(error) => Err(error.into()),
        }
    }
}

/// Publishes a task until JetStream has stored it; a publish tried again
/// carries the same `Nats-Msg-Id`, so the task is stored once.
async fn publish_task(
    inner: &Inner,
    subject: &str,
    id: &str,
    payload: bytes::Bytes,
) -> Result<(), AgentError> {
    let mut delay = Duration::from_millis(50);
    let mut tries = 0u32;
    loop {
        let publish = jetstream::message::PublishMessage::build()
            .payload(payload.clone())
            .message_id(id);
        let outcome = match inner.js.send_publish(subject.to_owned(), publish).await {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(()) => return Ok(()),
            Err(e) => {
                tries += 1;
                if tries == 1 || tries.is_multiple_of(20) {
                    tracing::warn!(task = id, error = %e, "cannot publish a task yet; trying again");
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Hands each result to the attempt waiting for it; drops (and counts)
/// the rest.
async fn receive_results(
    inner: std::sync::Weak<Inner>,
    results: jetstream::stream::Stream,
    config: jetstream::consumer::pull::Config,
    mut consumer: jetstream::consumer::PullConsumer,
) {
    loop {
        let mut messages = match consumer
            .stream()
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await
        {
            Ok(messages) => messages,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read results yet; trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
                // The server may have removed the consumer (after a long
                // absence): make it again, under the same name.
                if let Ok(again) = results
                    .get_or_create_consumer(
                        config.durable_name.as_deref().unwrap_or_default(),
                        config.clone(),
                    )
                    .await
                {
                    consumer = again;
                }
                continue;
            }
        };
        let mut errors = 0;
        while let Some(message) = messages.next().await {
            let Some(inner) = inner.upgrade() else {
                return;
            };
            let message = match message {
                Ok(message) => {
                    errors = 0;
                    message
                }
                Err(e) => {
                    tracing::debug!(error = %e, "result stream interrupted");
                    errors += 1;
                    if errors >= 5 {
                        break;
                    }
                    continue;
                }
            };
            match serde_json::from_slice::<TaskResult>(&message.payload) {
                Ok(result) => apply(&inner, result),
                Err(e) => {
                    inner.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "dropped a malformed result");
                }
            }
            if let Err(e) = message.ack().await {
                tracing::debug!(error = %e, "cannot acknowledge a result");
            }
        }
    }
}

fn apply(inner: &Inner, result: TaskResult) {
    let waiting = inner
        .pending
        .lock()
        .expect("not poisoned")
        .remove(&result.id);
    let (id, worker) = (result.id.clone(), result.worker.clone());
    let applied = waiting.is_some_and(|tx| tx.send(Ok(result)).is_ok());
    if applied {
        inner.applied.fetch_add(1, Ordering::Relaxed);
    } else {
        inner.dropped.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("braid_remote_results_dropped_total").increment(1);
        tracing::info!(task = %id, %worker,
            "dropped a result nobody waits for (late, of an earlier epoch, or a second copy)");
    }
}

/// The server's note that a task reached `max_deliver`.
#[derive(serde::Deserialize)]
struct MaxDeliveries {
    stream_seq: u64,
    deliveries: u64,
    #[serde(default)]
    consumer: String,
}

/// Moves tasks JetStream gave up on to the dead-letter subject and fails
/// their agents with the reason (for the tasks this coordinator waits for;
/// other coordinators handle theirs).
async fn dead_letters(inner: std::sync::Weak<Inner>, mut advisories: async_nats::Subscriber) {
    while let Some(advisory) = advisories.next().await {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let Ok(note) = serde_json::from_slice::<MaxDeliveries>(&advisory.payload) else {
            continue;
        };
        if let Err(e) = dead_letter(&inner, &note).await {
            tracing::warn!(seq = note.stream_seq, error = %e, "cannot dead-letter a task");
        }
    }
}

async fn dead_letter(inner: &Inner, note: &MaxDeliveries) -> Result<(), String> {
    let stream = inner
        .js
        .get_stream(TASKS_STREAM)
        .await
        .map_err(|e| e.to_string())?;
    let message = stream
        .get_raw_message(note.stream_seq)
        .await
        .map_err(|e| e.to_string())?;
    let task: Task = serde_json::from_slice(&message.payload).map_err(|e| e.to_string())?;
    let Some(waiting) = inner.pending.lock().expect("not poisoned").remove(&task.id) else {
        return Ok(());
    };
    let queue = message
        .subject
        .as_str()
        .strip_prefix("braid.tasks.")
        .unwrap_or(DEFAULT_QUEUE)
        .to_owned();
    let reason = format!(
        "its task was delivered {} times (max_deliver of consumer {}) and no worker finished it; \
         it was moved to braid.dead.{queue} (stream BRAID_DEAD)",
        note.deliveries, note.consumer
    );
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Braid-Reason", reason.as_str());
    headers.insert("Braid-Task", task.id.as_str());
    let stored = inner
        .js
        .publish_with_headers(
            format!("braid.dead.{queue}"),
            headers,
            message.payload.clone(),
        )
        .await;
    match stored {
        Ok(ack) => {
            if let Err(e) = ack.await {
                tracing::warn!(task = %task.id, error = %e, "the dead letter was not stored");
            }
        }
        Err(e) => tracing::warn!(task = %task.id, error = %e, "the dead letter was not stored"),
    }
    if let Err(e) = stream.delete_message(note.stream_seq).await {
        tracing::debug!(task = %task.id, error = %e, "cannot remove a dead task from its stream");
    }
    inner.dead_lettered.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("braid_remote_dead_letters_total").increment(1);
    tracing::warn!(task = %task.id, "{reason}");
    let _ = waiting.send(Err(AgentError::Refused(reason)));
    Ok(())
}
