//! Agents run by remote workers, over NATS JetStream.
//!
//! The run's scheduler stays where the run is (the *coordinator*: `braid
//! serve --nats` or `braid run --nats`); only where an agent executes moves.
//! A [`Dispatcher`] replaces the runner of every agent that runs code with
//! one that publishes a [`Task`] (the agent's reads, nothing else) and waits
//! for its [`TaskResult`]; a [`Worker`] (`braid worker`) pulls tasks, runs
//! them with the same agent kinds as `braid run`, and publishes results.
//! Retries, timeouts, the cache and checkpoints stay with the coordinator.
//!
//! Everything that makes this reliable is JetStream's, not ours:
//!
//! - **Tasks** go to the work-queue stream [`TASKS_STREAM`], a subject per
//!   queue (`braid.tasks.<queue>`, an agent's `queue:`, default
//!   `default`). Each queue has one durable pull consumer that all its
//!   workers share (`braid-worker-<queue>`): `ack_wait` is the lease on a
//!   task, workers send in-progress acknowledgements while an agent runs,
//!   and a task is redelivered when its worker stops sending them. After
//!   `max_deliver` deliveries JetStream gives up; the coordinator that
//!   waits for the task hears the server's advisory, moves the task to
//!   the dead-letter subject `braid.dead.<queue>` (stream [`DEAD_STREAM`])
//!   and fails the agent with the reason.
//! - **Task ids** are `run:agent:attempt:epoch`, sent as `Nats-Msg-Id`, so
//!   a task published twice (a retried publish) is stored once.
//! - **Results** go to the coordinator's own subject in [`RESULTS_STREAM`];
//!   a worker acknowledges its task only after the result is stored
//!   (`double_ack`). The coordinator applies a result once, and only while
//!   it still waits for exactly that task id (run, agent, attempt and
//!   epoch): a late result from a worker presumed dead, or a second copy,
//!   is dropped and counted.
//!
//! Delivery is at least once: a worker killed mid-agent leaves its task
//! to be redelivered, so an agent's side effects may happen twice; the run
//! records the agent once.

mod coordinator;
pub mod local;
mod task;
mod worker;

use std::time::Duration;

pub use coordinator::{DispatchStats, Dispatcher, EpochSource};
pub use task::{Task, TaskOutcome, TaskResult, WireError};
pub use worker::{Worker, WorkerSettings, WorkerStats};

/// The work-queue stream of tasks (`braid.tasks.<queue>`).
pub const TASKS_STREAM: &str = "BRAID_TASKS";
/// The stream of results (`braid.results.<coordinator>`).
pub const RESULTS_STREAM: &str = "BRAID_RESULTS";
/// The stream of dead-lettered tasks (`braid.dead.<queue>`).
pub const DEAD_STREAM: &str = "BRAID_DEAD";
/// The queue of agents that name none.
pub const DEFAULT_QUEUE: &str = "default";

/// How long JetStream remembers a message id to drop a second copy.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// The subject tasks of `queue` are published on.
pub fn task_subject(queue: &str) -> String {
    format!("braid.tasks.{queue}")
}

/// The durable consumer the workers of `queue` share.
pub fn worker_consumer(queue: &str) -> String {
    format!("braid-worker-{queue}")
}

/// Why NATS could not be used.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// The server could not be reached at start.
    #[error("cannot reach NATS at {url}: {message}")]
    Connect {
        /// The URL given.
        url: String,
        /// The client's reason.
        message: String,
    },
    /// A JetStream stream or consumer could not be found or made.
    #[error("NATS JetStream at {url}: {what}: {message} (is the server started with -js?)")]
    JetStream {
        /// The URL given.
        url: String,
        /// What was being done.
        what: String,
        /// The server's reason.
        message: String,
    },
    /// A queue name that is not one subject token.
    #[error("`{0}` is not a queue name; expected 1 to 64 letters, digits, `_` or `-` (like `gpu`)")]
    BadQueue(String),
}

/// Whether `name` can be a queue: one subject token of letters, digits,
/// `_` and `-`, as the pipeline loader checks `queue:`.
pub fn valid_queue(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Connects to NATS at `url` with the options every braid process uses:
/// a name the server shows, reconnection forever (with the client's
/// backoff), and a short timeout for the first connection so a wrong URL
/// is reported at once.
pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client, NatsError> {
    async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None)
        .connect(url)
        .await
        .map_err(|e| NatsError::Connect {
            url: url.to_owned(),
            message: e.to_string(),
        })
}

/// Makes braid's three streams if they are not there (a stream that is
/// there is used as it is, so an operator may tune it, e.g. replicas).
pub(crate) async fn ensure_streams(
    js: &async_nats::jetstream::Context,
    url: &str,
) -> Result<(), NatsError> {
    use async_nats::jetstream::stream::{Config, RetentionPolicy, StorageType};
    let streams = [
        Config {
            name: TASKS_STREAM.to_owned(),
            subjects: vec!["braid.tasks.>".to_owned()],
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            duplicate_window: DUPLICATE_WINDOW,
            // A task nobody took in a day (its coordinator long gone).
            max_age: Duration::from_secs(24 * 3600),
            ..Config::default()
        },
        Config {
            name: RESULTS_STREAM.to_owned(),
            subjects: vec!["braid.results.>".to_owned()],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            duplicate_window: DUPLICATE_WINDOW,
            // Results of a coordinator that died are never read.
            max_age: Duration::from_secs(3600),
            ..Config::default()
        },
        Config {
            name: DEAD_STREAM.to_owned(),
            subjects: vec!["braid.dead.>".to_owned()],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            max_age: Duration::from_secs(7 * 24 * 3600),
            ..Config::default()
        },
    ];
    // A server that has just started may not answer JetStream requests
    // yet ("no responders"): ask again, for JETSTREAM_WAIT in all.
    let deadline = std::time::Instant::now() + JETSTREAM_WAIT;
    for config in streams {
        let name = config.name.clone();
        let mut delay = Duration::from_millis(50);
        loop {
            match js.get_or_create_stream(config.clone()).await {
                Ok(_) => break,
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::debug!(stream = %name, error = %e, "JetStream not ready; asking again");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
                Err(e) => {
                    return Err(NatsError::JetStream {
                        url: url.to_owned(),
                        what: format!("stream {name}"),
                        message: e.to_string(),
                    });
                }
            }
        }
    }
    Ok(())
}

/// How long a process waits for JetStream to answer at start.
const JETSTREAM_WAIT: Duration = Duration::from_secs(10);

/// This process's name as NATS shows it and as one subject token:
/// `host-pid-nonce`, with anything but letters, digits and `-` turned into
/// `-`.
pub(crate) fn process_token() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".to_owned());
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let raw = format!("{host}-{}-{nonce:08x}", std::process::id());
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// A task abandoned by its spawner when the handle is dropped.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_are_one_subject_token() {
        assert!(valid_queue("gpu"));
        assert!(valid_queue("eu-west_1"));
        assert!(!valid_queue(""));
        assert!(!valid_queue("a.b"));
        assert!(!valid_queue("a*"));
        assert!(!valid_queue(&"x".repeat(65)));
        assert!(
            process_token()
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        );
    }
}
