//! The worker's side: pull tasks of some queues, run each with the agent
//! of the worker's own copy of the pipeline, publish the result, then
//! acknowledge the task.
//!
//! A worker takes only as many tasks as it has free slots (`--slots`), so
//! a task never waits in a worker's buffer while its `ack_wait` runs out.
//! While an agent runs, the worker tells JetStream it is still working
//! (`+WPI`) every third of `ack_wait`; if the worker dies, those stop and
//! the task is redelivered to another worker. A task is acknowledged only
//! once its result is stored (double ack): a worker that dies in between
//! leaves a task that is run again, whose second result the coordinator
//! drops.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};
use braid_core::Pipeline;
use braid_core::agent::{Agent, AgentError, AgentInput};
use futures_util::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::task::{Task, TaskOutcome, TaskResult, WireError};
use crate::{AbortOnDrop, NatsError, TASKS_STREAM};

/// How a worker takes tasks.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// The queues it serves (`default` when none is named).
    pub queues: Vec<String>,
    /// How many agents it runs at once.
    pub slots: usize,
    /// How long a task may go without a sign of life from its worker
    /// before JetStream gives it to another (the consumer's `ack_wait`).
    pub ack_wait: Duration,
    /// How many times a task is delivered before it is dead-lettered.
    pub max_deliver: i64,
    /// How long a stopping worker lets its agents finish.
    pub grace: Duration,
    /// The longest one agent call may take here, whatever the task asks:
    /// a call that has not ended by then fails with a timeout (retried
    /// like any timeout, if its agent has retries). `None`: the agent's
    /// own `timeout:`, and no limit without one.
    pub max_task_time: Option<Duration>,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            queues: vec![crate::DEFAULT_QUEUE.to_owned()],
            slots: 16,
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            grace: Duration::from_secs(30),
            max_task_time: None,
        }
    }
}

/// What a worker has done so far.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Tasks whose result was stored and which were acknowledged.
    pub completed: AtomicU64,
    /// Tasks refused (unknown pipeline or agent, another definition).
    pub refused: AtomicU64,
}

/// An agent a worker can run, by `(pipeline, path)`.
struct Runnable {
    runner: Arc<dyn Agent>,
    definition: Arc<str>,
}

/// Runs tasks for coordinators elsewhere, with its own copy of their
/// pipelines (loaded with the same agent kinds as `braid run`).
pub struct Worker {
    agents: HashMap<(String, String), Runnable>,
    pipelines: BTreeSet<String>,
    name: String,
    stats: Arc<WorkerStats>,
    /// See [`WorkerSettings::max_task_time`].
    max_task_time: Option<Duration>,
}

impl Worker {
    /// A worker for the agents of `pipelines`.
    pub fn new(pipelines: &[Pipeline]) -> Self {
        let mut agents = HashMap::new();
        for pipeline in pipelines {
            for site in pipeline.code_agents() {
                agents.insert(
                    (pipeline.name().to_owned(), site.path.clone()),
                    Runnable {
                        runner: site.def.runner().clone(),
                        definition: site.portable_hash.clone(),
                    },
                );
            }
        }
        Self {
            agents,
            pipelines: pipelines.iter().map(|p| p.name().to_owned()).collect(),
            name: crate::process_token(),
            stats: Arc::default(),
            max_task_time: None,
        }
    }

    /// Its name, as results and the server's connection list show it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What it has done so far (shared: read it while it runs).
    pub fn stats(&self) -> Arc<WorkerStats> {
        self.stats.clone()
    }

    /// Connects to NATS at `url` and serves `settings.queues` until
    /// `shutdown` completes; then takes no more tasks and lets the running
    /// ones finish (at most `settings.grace`).
    ///
    /// # Errors
    /// When NATS cannot be reached at start, has no JetStream, or a queue
    /// name is not one subject token.
    pub async fn run(
        self,
        url: &str,
        settings: WorkerSettings,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), NatsError> {
        for queue in &settings.queues {
            if !crate::valid_queue(queue) {
                return Err(NatsError::BadQueue(queue.clone()));
            }
        }
        let client = crate::connect(url, &format!("braid worker {}", self.name)).await?;
        let max_payload = client.server_info().max_payload;
        let js = jetstream::new(client);
        crate::ensure_streams(&js, url).await?;
        let stream = js
            .get_stream(TASKS_STREAM)
            .await
            .map_err(|e| NatsError::JetStream {
                url: url.to_owned(),
                what: format!("stream {TASKS_STREAM}"),
                message: e.to_string(),
            })?;
        let worker = Arc::new(Self {
            max_task_time: settings.max_task_time,
            ..self
        });
        let slots = Arc::new(Semaphore::new(settings.slots.max(1)));
        let mut running = JoinSet::new();
        let (tx, mut delivered) = tokio::sync::mpsc::channel(1);
        let mut pullers = Vec::new();
        for queue in &settings.queues {
            let name = crate::worker_consumer(queue);
            let mut consumer: jetstream::consumer::PullConsumer = stream
                .get_or_create_consumer(
                    &name,
                    jetstream::consumer::pull::Config {
                        durable_name: Some(name.clone()),
                        filter_subject: crate::task_subject(queue),
                        ack_policy: jetstream::consumer::AckPolicy::Explicit,
                        ack_wait: settings.ack_wait,
                        max_deliver: settings.max_deliver,
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| NatsError::JetStream {
                    url: url.to_owned(),
                    what: format!("consumer {name}"),
                    message: e.to_string(),
                })?;
            // The queue's consumer may have been made by a worker started
            // with other values: its own are the ones JetStream applies.
            let config = match consumer.info().await {
                Ok(info) => info.config.clone(),
                Err(_) => consumer.cached_info().config.clone(),
            };
            if config.ack_wait != settings.ack_wait || config.max_deliver != settings.max_deliver {
                tracing::warn!(
                    consumer = %name,
                    ack_wait = ?config.ack_wait,
                    max_deliver = config.max_deliver,
                    "the queue's consumer keeps the values it was made with, not this worker's \
                     --ack-wait/--max-deliver (edit or delete the consumer to change them)"
                );
            }
            pullers.push(AbortOnDrop(tokio::spawn(pull(
                consumer,
                config.ack_wait,
                slots.clone(),
                tx.clone(),
            ))));
        }
        drop(tx);
        tracing::info!(
            worker = %worker.name, url, queues = ?settings.queues, slots = settings.slots,
            pipelines = ?worker.pipelines, "worker ready"
        );
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some((message, ack_wait, permit)) = delivered.recv() => {
                    let worker = worker.clone();
                    let js = js.clone();
                    running.spawn(async move {
                        worker.handle(&js, message, ack_wait, max_payload).await;
                        drop(permit);
                    });
                }
                Some(_) = running.join_next(), if !running.is_empty() => {}
            }
        }
        pullers.clear();
        tracing::info!(worker = %worker.name, running = running.len(), "stopping: no more tasks taken");
        let drained = tokio::time::timeout(settings.grace, async {
            while running.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                worker = %worker.name, left = running.len(),
                "agents still running after the grace period are stopped; their tasks will be redelivered"
            );
        }
        Ok(())
    }

    /// Runs one delivered task to its stored result and acknowledgement.
    async fn handle(
        &self,
        js: &jetstream::Context,
        message: jetstream::Message,
        ack_wait: Duration,
        max_payload: usize,
    ) {
        let task: Task = match serde_json::from_slice(&message.payload) {
            Ok(task) => task,
            Err(e) => {
                tracing::warn!(worker = %self.name, error = %e, "a malformed task was terminated");
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
        };
        // Signs of life while the agent runs, so JetStream keeps the task here.
        let beat = {
            let message_ack = message.clone();
            let every = (ack_wait / 3).max(Duration::from_millis(100));
            AbortOnDrop(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    if let Err(e) = message_ack.ack_with(AckKind::Progress).await {
                        tracing::debug!(error = %e, "in-progress acknowledgement not sent");
                    }
                }
            }))
        };
        let began = Instant::now();
        let (outcome, input) = self.execute(&task).await;
        let (logs, _) = input
            .as_ref()
            .map(AgentInput::kept_logs)
            .unwrap_or_default();
        let result = TaskResult {
            id: task.id.clone(),
            worker: self.name.clone(),
            outcome,
            logs,
            tokens: input
                .as_ref()
                .and_then(AgentInput::tokens)
                .map(|t| [t.prompt, t.completion]),
            duration_ms: began.elapsed().as_secs_f64() * 1000.0,
        };
        let payload = match serde_json::to_vec(&result) {
            Ok(payload) => payload,
            Err(e) => {
                tracing::warn!(task = %task.id, error = %e, "result not encodable");
                return;
            }
        };
        let payload = oversized(payload, &result, max_payload);
        if !self.store_result(js, &task, payload).await {
            return;
        }
        drop(beat);
        match message.double_ack().await {
            Ok(()) => {
                self.stats.completed.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(task = %task.id, error = %e,
                "task not acknowledged; it will be redelivered and its second result dropped"),
        }
    }

    /// The task's outcome, and the input it was run with (for its logs and
    /// tokens), or a refusal.
    async fn execute(&self, task: &Task) -> (TaskOutcome, Option<AgentInput>) {
        let key = (task.pipeline.clone(), task.path.clone());
        let refuse = |message: String| {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(task = %task.id, "refused: {message}");
            (TaskOutcome::Error(WireError::Refused { message }), None)
        };
        let Some(runnable) = self.agents.get(&key) else {
            let held: Vec<&str> = self.pipelines.iter().map(String::as_str).collect();
            return refuse(format!(
                "worker {} has no agent `{}` of pipeline `{}` (it holds: {}); start workers \
                 with the coordinator's pipeline files (--pipelines)",
                self.name,
                task.path,
                task.pipeline,
                if held.is_empty() {
                    "none".to_owned()
                } else {
                    held.join(", ")
                }
            ));
        };
        if *runnable.definition != *task.definition {
            return refuse(format!(
                "worker {} holds another definition of agent `{}` of pipeline `{}` (hash {} \
                 here, {} in the task); give coordinator and workers the same pipeline files",
                self.name,
                task.path,
                task.pipeline,
                short(&runnable.definition),
                short(&task.definition)
            ));
        }
        let input = AgentInput::standalone(
            Arc::from(task.run.as_str()),
            Arc::from(task.agent.as_str()),
            task.attempt,
            task.reads.clone(),
        );
        let call = runnable.runner.call(&input);
        // The agent's own timeout, within the worker's ceiling.
        let limit = [
            task.timeout_ms.map(Duration::from_millis),
            self.max_task_time,
        ]
        .into_iter()
        .flatten()
        .min();
        let outcome = match limit {
            Some(limit) => tokio::time::timeout(limit, call)
                .await
                .unwrap_or(Err(AgentError::Timeout(limit))),
            None => call.await,
        };
        let outcome = match outcome {
            Ok(writes) => TaskOutcome::Ok(writes),
            Err(e) => TaskOutcome::Error(WireError::from(&e)),
        };
        (outcome, Some(input))
    }

    /// Stores a result in JetStream, trying again while NATS is away; the
    /// message id makes a second copy (a redelivered task run twice) drop.
    async fn store_result(&self, js: &jetstream::Context, task: &Task, payload: Vec<u8>) -> bool {
        let payload = bytes::Bytes::from(payload);
        let mut delay = Duration::from_millis(50);
        for tries in 1u32.. {
            let publish = jetstream::message::PublishMessage::build()
                .payload(payload.clone())
                .message_id(format!("result:{}", task.id));
            let stored = match js.send_publish(task.reply.clone(), publish).await {
                Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match stored {
                Ok(()) => return true,
                Err(e) => {
                    if tries == 1 || tries.is_multiple_of(20) {
                        tracing::warn!(task = %task.id, error = %e, "cannot store a result yet; trying again");
                    }
                    if tries >= 600 {
                        tracing::error!(task = %task.id, "result given up; the task will be redelivered");
                        return false;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
        false
    }
}

/// A result too large for one NATS message becomes the error saying so.
fn oversized(payload: Vec<u8>, result: &TaskResult, max: usize) -> Vec<u8> {
    // Room for the headers (the message id).
    let max = max.saturating_sub(1024);
    if payload.len() <= max {
        return payload;
    }
    let small = TaskResult {
        outcome: TaskOutcome::Error(WireError::Output {
            message: format!(
                "its result is {} bytes, more than the {max} bytes one NATS message takes \
                 (the server's max_payload)",
                payload.len()
            ),
        }),
        logs: Vec::new(),
        ..result.clone()
    };
    serde_json::to_vec(&small).unwrap_or_default()
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// A task as delivered: the message, its queue's `ack_wait`, and the slot
/// it runs in.
type Delivered = (
    jetstream::Message,
    Duration,
    tokio::sync::OwnedSemaphorePermit,
);

/// Pulls tasks of one queue, never more than there are free slots: each
/// message goes out with the slot it will run in.
async fn pull(
    consumer: jetstream::consumer::PullConsumer,
    ack_wait: Duration,
    slots: Arc<Semaphore>,
    out: tokio::sync::mpsc::Sender<Delivered>,
) {
    let mut delay = Duration::from_millis(100);
    loop {
        // Wait for a free slot before asking for work.
        let Ok(first) = slots.clone().acquire_owned().await else {
            return;
        };
        let free = slots.available_permits() + 1;
        let batch = consumer
            .batch()
            .max_messages(free)
            .expires(Duration::from_secs(5))
            .heartbeat(Duration::from_secs(2))
            .messages()
            .await;
        let mut batch = match batch {
            Ok(batch) => {
                delay = Duration::from_millis(100);
                batch
            }
            Err(e) => {
                drop(first);
                tracing::debug!(error = %e, "cannot ask for tasks yet; trying again");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        let mut first = Some(first);
        while let Some(message) = batch.next().await {
            let message = match message {
                Ok(message) => message,
                Err(e) => {
                    tracing::debug!(error = %e, "task batch interrupted");
                    break;
                }
            };
            let permit = match first.take() {
                Some(permit) => permit,
                None => match slots.clone().acquire_owned().await {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            if out.send((message, ack_wait, permit)).await.is_err() {
                return;
            }
        }
    }
}
