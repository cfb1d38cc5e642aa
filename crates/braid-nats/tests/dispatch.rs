//! Agents sent to workers over a real `nats-server -js` (started per test
//! on a free port): runs read as they would in-process; a second result is
//! dropped; a refused task and a dead-lettered one fail their agent with
//! the reason; a restarted NATS costs nothing but time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use braid_core::agent::{AgentError, Writes};
use braid_core::{AgentKinds, Pipeline, RunOptions, RunReport, RunStatus};
use braid_nats::local::LocalNats;
use braid_nats::{Dispatcher, Worker, WorkerSettings};
use futures_util::StreamExt;
use serde_json::{Value, json};

const PIPELINE: &str = r#"
pipeline: remote
inputs:
  text: { type: string }
  docs: { type: array }
agents:
  shout: { kind: builtin, function: shout, reads: [text], writes: [loud] }
  per_doc:
    kind: pipeline
    foreach: docs
    as: doc
    agents:
      size: { kind: builtin, function: size, reads: [doc], writes: [n] }
    outputs: { sizes: n }
  total: { kind: builtin, function: total, reads: [loud, sizes], writes: [report] }
"#;

fn writes(pairs: &[(&str, Value)]) -> Writes {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn kinds() -> AgentKinds {
    let mut kinds = AgentKinds::standard();
    kinds.builtin_fn("shout", |reads| async move {
        let text = reads.get("text").and_then(Value::as_str).unwrap_or("");
        Ok(writes(&[("loud", json!(text.to_uppercase()))]))
    });
    kinds.builtin_fn("size", |reads| async move {
        let doc = reads.get("doc").and_then(Value::as_str).unwrap_or("");
        Ok(writes(&[("n", json!(doc.len()))]))
    });
    kinds.builtin_fn("total", |reads| async move {
        let loud = reads.get("loud").and_then(Value::as_str).unwrap_or("");
        let sum: u64 = reads
            .get("sizes")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_u64).sum())
            .unwrap_or(0);
        Ok(writes(&[("report", json!(format!("{loud}: {sum}")))]))
    });
    kinds
}

fn load(yaml: &str, kinds: &AgentKinds) -> Pipeline {
    Pipeline::from_yaml_str_with(yaml, kinds).unwrap()
}

/// Runs `pipeline` (a run that has not ended in a minute is a failure,
/// not a hang).
async fn run(pipeline: &Pipeline, input: Value) -> RunReport {
    let input = pipeline.check_input(&input).unwrap();
    tokio::time::timeout(
        Duration::from_secs(60),
        pipeline.run(input, RunOptions::default()),
    )
    .await
    .expect("the run ended within a minute")
}

fn settings() -> WorkerSettings {
    WorkerSettings {
        ack_wait: Duration::from_secs(2),
        grace: Duration::ZERO,
        ..WorkerSettings::default()
    }
}

/// Starts a worker for `pipelines` until the returned sender is dropped.
fn start_worker(
    url: &str,
    pipelines: &[Pipeline],
    settings: WorkerSettings,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let worker = Worker::new(pipelines);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let url = url.to_owned();
    let handle = tokio::spawn(async move {
        if let Err(e) = worker
            .run(&url, settings, async {
                let _ = stopped.await;
            })
            .await
        {
            // Seen in the test's output if the run then waits in vain.
            eprintln!("the worker stopped: {e}");
            panic!("the worker stopped: {e}");
        }
    });
    (stop, handle)
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..300 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_run_on_a_worker_and_the_run_reads_as_if_in_process() {
    let nats = LocalNats::start().unwrap();
    let kinds = kinds();
    let local = load(PIPELINE, &kinds);
    let input = json!({"text": "hi", "docs": ["a", "bcd", "ef"]});
    let expected = run(&local, input.clone()).await;

    let (_stop, _worker) = start_worker(&nats.url(), &[load(PIPELINE, &kinds)], settings());
    let dispatcher = Dispatcher::connect(&nats.url()).await.unwrap();
    let mut remote = load(PIPELINE, &kinds);
    dispatcher.remote(&mut remote).unwrap();
    let report = run(&remote, input).await;

    assert_eq!(report.status, RunStatus::Completed, "{:?}", report.error);
    assert_eq!(report.state, expected.state);
    assert_eq!(report.state["report"], Arc::new(json!("HI: 6")));
    // shout, total and one `size` per document, each dispatched and applied once.
    let stats = dispatcher.stats();
    assert_eq!((stats.dispatched, stats.applied, stats.dropped), (5, 5, 0));
    assert_eq!(dispatcher.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_delivered_twice_is_applied_once() {
    let nats = LocalNats::start().unwrap();
    let kinds = kinds();
    let (_stop, _worker) = start_worker(&nats.url(), &[load(PIPELINE, &kinds)], settings());
    let dispatcher = Dispatcher::connect(&nats.url()).await.unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut results = client.subscribe("braid.results.>").await.unwrap();
    let mut remote = load(PIPELINE, &kinds);
    dispatcher.remote(&mut remote).unwrap();

    let report = run(&remote, json!({"text": "x", "docs": []})).await;
    assert_eq!(report.status, RunStatus::Completed, "{:?}", report.error);
    let first = results.next().await.unwrap();
    // The same result again, as a worker that ran a redelivered task would
    // send it (another message id, so JetStream stores it).
    let js = async_nats::jetstream::new(client.clone());
    js.publish_with_headers(
        first.subject.clone(),
        {
            let mut h = async_nats::HeaderMap::new();
            h.insert("Nats-Msg-Id", "a-second-copy");
            h
        },
        first.payload.clone(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    until("the second copy is dropped", || {
        dispatcher.stats().dropped == 1
    })
    .await;
    let stats = dispatcher.stats();
    assert_eq!((stats.dispatched, stats.applied), (2, 2));
    assert_eq!(report.agents["shout"].attempts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_holding_another_definition_refuses_and_the_agent_fails_with_why() {
    let nats = LocalNats::start().unwrap();
    let kinds = kinds();
    // The worker's copy of `shout` has a condition the coordinator's has not.
    let changed = PIPELINE.replace("writes: [loud] }", "writes: [loud], when: 'text != \"\"' }");
    assert_ne!(changed, PIPELINE);
    let (_stop, _worker) = start_worker(&nats.url(), &[load(&changed, &kinds)], settings());
    let dispatcher = Dispatcher::connect(&nats.url()).await.unwrap();
    let mut remote = load(PIPELINE, &kinds);
    dispatcher.remote(&mut remote).unwrap();

    let report = run(&remote, json!({"text": "x", "docs": []})).await;
    assert_eq!(report.status, RunStatus::Failed);
    let error = report.agents["shout"].error.clone().unwrap();
    assert!(
        error.contains("holds another definition of agent `shout`"),
        "{error}"
    );
    // Refusals are not retried.
    assert_eq!(report.agents["shout"].attempts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_no_worker_finishes_is_dead_lettered_and_fails_its_agent() {
    let nats = LocalNats::start().unwrap();
    let started = Arc::new(AtomicU32::new(0));
    let mut kinds = kinds();
    {
        let started = started.clone();
        kinds.builtin_fn("shout", move |_| {
            started.fetch_add(1, Ordering::SeqCst);
            // Hangs: only its worker's death ends it.
            std::future::pending::<Result<Writes, AgentError>>()
        });
    }
    let worker_settings = WorkerSettings {
        ack_wait: Duration::from_secs(1),
        max_deliver: 2,
        ..settings()
    };
    let dispatcher = Dispatcher::connect(&nats.url()).await.unwrap();
    let mut remote = load(PIPELINE, &kinds);
    dispatcher.remote(&mut remote).unwrap();
    let run = tokio::spawn(async move { run(&remote, json!({"text": "x", "docs": []})).await });

    // Two workers take the task in turn and die with it (no ack, no
    // result, no more in-progress acknowledgements).
    for delivery in 1..=2 {
        let (stop, worker) = start_worker(
            &nats.url(),
            &[load(PIPELINE, &kinds)],
            worker_settings.clone(),
        );
        until("a worker takes the task", || {
            started.load(Ordering::SeqCst) == delivery
        })
        .await;
        worker.abort();
        drop(stop);
    }
    let report = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the agent fails once the task is dead-lettered")
        .unwrap();
    assert_eq!(report.status, RunStatus::Failed);
    let error = report.agents["shout"].error.clone().unwrap();
    assert!(error.contains("delivered 2 times"), "{error}");
    assert!(error.contains("braid.dead.default"), "{error}");
    assert_eq!(dispatcher.stats().dead_lettered, 1);
    // The task is kept in the dead-letter stream for an operator to read.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut dead = js.get_stream("BRAID_DEAD").await.unwrap();
    assert_eq!(dead.info().await.unwrap().state.messages, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_completes_across_a_nats_restart() {
    let mut nats = LocalNats::start().unwrap();
    let mut kinds = kinds();
    kinds.builtin_fn("shout", |_| async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        Ok(writes(&[("loud", json!("SLOW"))]))
    });
    let (_stop, _worker) = start_worker(&nats.url(), &[load(PIPELINE, &kinds)], settings());
    let dispatcher = Dispatcher::connect(&nats.url()).await.unwrap();
    let mut remote = load(PIPELINE, &kinds);
    dispatcher.remote(&mut remote).unwrap();
    let run = tokio::spawn(async move { run(&remote, json!({"text": "x", "docs": ["ab"]})).await });

    // Restart the server while `shout` runs on the worker.
    until("shout was dispatched", || {
        dispatcher.stats().dispatched >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    nats.restart().unwrap();

    let report = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the run completes after NATS comes back")
        .unwrap();
    assert_eq!(report.status, RunStatus::Completed, "{:?}", report.error);
    assert_eq!(report.state["report"], Arc::new(json!("SLOW: 2")));
}

/// The machine's own server (`BRAID_TEST_NATS_URL`, which CI sets), on a
/// queue of this test's own, so other users of the server are not met.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_through_the_machine_s_nats_server() {
    let Ok(url) = std::env::var("BRAID_TEST_NATS_URL") else {
        eprintln!("skipped: BRAID_TEST_NATS_URL is not set");
        return;
    };
    let queue = format!("test-{}", std::process::id());
    let yaml = format!(
        "pipeline: machine\ninputs:\n  text: {{ type: string }}\nagents:\n  shout: {{ kind: builtin, function: shout, queue: {queue}, reads: [text], writes: [loud] }}\n"
    );
    let kinds = kinds();
    let (_stop, _worker) = start_worker(
        &url,
        &[load(&yaml, &kinds)],
        WorkerSettings {
            queues: vec![queue],
            ..settings()
        },
    );
    let dispatcher = Dispatcher::connect(&url).await.unwrap();
    let mut remote = load(&yaml, &kinds);
    dispatcher.remote(&mut remote).unwrap();
    let report = run(&remote, json!({"text": "machine"})).await;
    assert_eq!(report.status, RunStatus::Completed, "{:?}", report.error);
    assert_eq!(report.state["loud"], Arc::new(json!("MACHINE")));
    // Leave the shared server as it was: this test's queue had its own consumer.
    let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
    let tasks = js.get_stream("BRAID_TASKS").await.unwrap();
    tasks
        .delete_consumer(&braid_nats::worker_consumer(&format!(
            "test-{}",
            std::process::id()
        )))
        .await
        .unwrap();
}

/// A worker's copy of the pipeline in another folder than the
/// coordinator's (as on another machine) holds the same definitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_of_a_pipeline_in_different_folders_are_the_same_definitions() {
    let nats = LocalNats::start().unwrap();
    let kinds = kinds();
    let (a, b) = (tempfile_dir("coordinator"), tempfile_dir("worker"));
    for dir in [&a, &b] {
        std::fs::write(dir.join("remote.yaml"), PIPELINE).unwrap();
    }
    let on_worker = Pipeline::from_file_with(b.join("remote.yaml"), &kinds).unwrap();
    let mut here = Pipeline::from_file_with(a.join("remote.yaml"), &kinds).unwrap();
    // Their resume hashes differ (relative paths resolve against the folder) …
    assert_ne!(
        here.agents()[0].definition_hash(),
        on_worker.agents()[0].definition_hash()
    );
    let (_stop, _worker) = start_worker(&nats.url(), &[on_worker], settings());
    let dispatcher = Dispatcher::connect(&nats.url()).await.unwrap();
    dispatcher.remote(&mut here).unwrap();
    // … but the worker runs the coordinator's tasks.
    let report = run(&here, json!({"text": "x", "docs": ["abc"]})).await;
    assert_eq!(report.status, RunStatus::Completed, "{:?}", report.error);
    for dir in [a, b] {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("braid-nats-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Task ids carry the epoch under which the coordinator owns the run (the
/// store's lease): a result for the same attempt under an earlier epoch
/// (sent to a deposed owner's task) is dropped, the current one applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_of_an_earlier_epoch_is_dropped() {
    let nats = LocalNats::start().unwrap();
    let mut kinds = kinds();
    kinds.builtin_fn("shout", |_| async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(writes(&[("loud", json!("FROM THE WORKER"))]))
    });
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut tasks = client.subscribe("braid.tasks.>").await.unwrap();
    let (_stop, _worker) = start_worker(&nats.url(), &[load(PIPELINE, &kinds)], settings());
    let dispatcher = Dispatcher::connect(&nats.url()).await.unwrap();
    dispatcher.set_epochs(Arc::new(|_| 7));
    let mut remote = load(PIPELINE, &kinds);
    dispatcher.remote(&mut remote).unwrap();
    let run = tokio::spawn(async move { run(&remote, json!({"text": "x", "docs": []})).await });

    let task = tasks.next().await.unwrap();
    let id = task
        .headers
        .as_ref()
        .unwrap()
        .get("Nats-Msg-Id")
        .unwrap()
        .to_string();
    assert!(id.ends_with(":shout:1:7"), "{id}");
    let task: braid_nats::Task = serde_json::from_slice(&task.payload).unwrap();
    // The same attempt's result, but for epoch 6: another owner's task.
    let stale = braid_nats::TaskResult {
        id: id.replace(":1:7", ":1:6"),
        worker: "an-old-worker".into(),
        outcome: braid_nats::TaskOutcome::Ok(writes(&[("loud", json!("STALE"))])),
        logs: vec![],
        tokens: None,
        duration_ms: 1.0,
    };
    let js = async_nats::jetstream::new(client.clone());
    js.publish(
        task.reply.clone(),
        serde_json::to_vec(&stale).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let report = run.await.unwrap();
    assert_eq!(report.status, RunStatus::Completed, "{:?}", report.error);
    assert_eq!(report.state["loud"], Arc::new(json!("FROM THE WORKER")));
    assert_eq!(dispatcher.stats().dropped, 1);
}
