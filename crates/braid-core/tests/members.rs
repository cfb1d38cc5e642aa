//! A run owns what it started, on either kind of runtime: a run's agents
//! are polled by its own task on a current-thread runtime and spawned on a
//! multi-thread one, and in both a panicking agent fails only itself, a
//! failing `foreach` instance cancels its siblings in flight, and dropping
//! the run's future cancels every agent it started.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use braid_core::agent::{AgentError, Writes};
use braid_core::{AgentKinds, AgentStatus, Pipeline, RunOptions, RunReport, RunStatus};
use serde_json::json;

/// Both kinds of runtime, named for failure messages.
fn runtimes() -> [(&'static str, tokio::runtime::Runtime); 2] {
    [
        (
            "current-thread",
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        ),
        (
            "multi-thread",
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap(),
        ),
    ]
}

async fn run(pipeline: &Pipeline, input: serde_json::Value) -> RunReport {
    let input = pipeline.check_input(&input).unwrap();
    pipeline.run(input, RunOptions::default()).await
}

/// Counts its drops: a future holding one was cancelled (or ended) when
/// the count goes up.
struct DropCounter(Arc<AtomicUsize>);

impl Drop for DropCounter {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// `boom` panics once a `slow` call has started (on a busy machine a
/// multi-thread worker may not have polled it yet); `slow` would take a
/// minute; `started` counts starts and `dropped` the ends of `slow`'s calls.
fn kinds(started: Arc<AtomicUsize>, dropped: Arc<AtomicUsize>) -> AgentKinds {
    let slow_started = Arc::new(tokio::sync::Notify::new());
    let mut kinds = AgentKinds::standard();
    let wait_for_slow = slow_started.clone();
    kinds.builtin_fn("boom", move |_| {
        let wait_for_slow = wait_for_slow.clone();
        async move {
            wait_for_slow.notified().await;
            if true {
                panic!("boom while slow runs");
            }
            Ok::<_, AgentError>(Writes::new())
        }
    });
    kinds.builtin_fn("slow", move |_| {
        let guard = DropCounter(dropped.clone());
        started.fetch_add(1, Ordering::SeqCst);
        slow_started.notify_one();
        async move {
            let _guard = guard;
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, AgentError>(Writes::from_iter([("late".to_owned(), json!(1))]))
        }
    });
    kinds.builtin_fn("flaky", |reads| async move {
        let n = reads.get("item").and_then(|v| v.as_i64()).unwrap_or(0);
        if n < 0 {
            return Err(AgentError::Other(format!("cannot take {n}")));
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok(Writes::from_iter([("out".to_owned(), json!(n))]))
    });
    kinds
}

#[test]
fn a_panicking_agent_fails_itself_and_the_run_cancels_the_rest() {
    for (flavor, runtime) in runtimes() {
        let started = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(AtomicUsize::new(0));
        let pipeline = Pipeline::from_yaml_str_with(
            "pipeline: panics
agents:
  boom: { kind: builtin, function: boom, writes: [x] }
  slow: { kind: builtin, function: slow, writes: [late] }
",
            &kinds(started.clone(), dropped.clone()),
        )
        .unwrap();
        let report = runtime.block_on(run(&pipeline, json!({})));
        assert_eq!(report.status, RunStatus::Failed, "{flavor}: {report:?}");
        let boom = &report.agents["boom"];
        assert_eq!(boom.status, AgentStatus::Failed, "{flavor}");
        assert_eq!(
            boom.error.as_deref(),
            Some("the agent panicked: boom while slow runs"),
            "{flavor}"
        );
        let slow = &report.agents["slow"];
        assert_eq!(slow.status, AgentStatus::Cancelled, "{flavor}: {slow:?}");
        assert!(
            slow.error
                .as_deref()
                .unwrap()
                .contains("cancelled in flight"),
            "{flavor}: {slow:?}"
        );
        assert_eq!(started.load(Ordering::SeqCst), 1, "{flavor}");
        assert_eq!(
            dropped.load(Ordering::SeqCst),
            1,
            "{flavor}: the slow call was dropped"
        );
    }
}

#[test]
fn a_failing_instance_cancels_its_siblings_in_flight() {
    for (flavor, runtime) in runtimes() {
        let pipeline = Pipeline::from_yaml_str_with(
            "pipeline: fanout
inputs: { items: { type: array } }
agents:
  each: { kind: builtin, function: flaky, foreach: items, reads: [item], writes: [out] }
",
            &kinds(Default::default(), Default::default()),
        )
        .unwrap();
        let report = runtime.block_on(run(&pipeline, json!({"items": [1, 2, -3, 4]})));
        assert_eq!(report.status, RunStatus::Failed, "{flavor}");
        let each = &report.agents["each"];
        assert!(
            each.error.as_deref().unwrap().contains("each[2]"),
            "{flavor}: {each:?}"
        );
        let instances = each.instances.as_ref().unwrap();
        for sibling in ["each[0]", "each[1]", "each[3]"] {
            let instance = &instances[sibling];
            assert_eq!(
                instance.status,
                AgentStatus::Cancelled,
                "{flavor}: {sibling}: {instance:?}"
            );
            assert!(
                instance
                    .error
                    .as_deref()
                    .unwrap()
                    .contains("cancelled in flight"),
                "{flavor}: {instance:?}"
            );
        }
        assert_eq!(instances["each[2]"].status, AgentStatus::Failed, "{flavor}");
    }
}

#[test]
fn dropping_a_run_cancels_its_agents_in_flight() {
    for (flavor, runtime) in runtimes() {
        let started = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(AtomicUsize::new(0));
        let pipeline = Pipeline::from_yaml_str_with(
            "pipeline: dropped
agents:
  a: { kind: builtin, function: slow, writes: [late] }
  b: { kind: builtin, function: slow, writes: [other] }
",
            &kinds(started.clone(), dropped.clone()),
        )
        .unwrap();
        runtime.block_on(async {
            let input = pipeline.check_input(&json!({})).unwrap();
            let run = pipeline.run(input, RunOptions::default());
            // Long enough for both agents to start; far shorter than their sleep.
            let outcome = tokio::time::timeout(Duration::from_millis(300), run).await;
            assert!(outcome.is_err(), "{flavor}: the run cannot have ended");
        });
        assert_eq!(started.load(Ordering::SeqCst), 2, "{flavor}");
        // A spawned task is dropped by its runtime soon after its abort.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while dropped.load(Ordering::SeqCst) < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            dropped.load(Ordering::SeqCst),
            2,
            "{flavor}: both agents were cancelled with the run"
        );
    }
}

/// Panics when it is dropped.
struct PanicsOnDrop;

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        panic!("dropped badly");
    }
}

#[test]
fn an_agent_that_panics_as_it_is_cancelled_does_not_take_the_run_down() {
    for (flavor, runtime) in runtimes() {
        // `fails` fails only once `sticky` holds its guard: on a busy
        // machine a multi-thread worker may not have polled `sticky` yet,
        // and a task aborted before its first poll has nothing to panic.
        let holds_guard = Arc::new(tokio::sync::Notify::new());
        let mut kinds = AgentKinds::standard();
        let started = holds_guard.clone();
        kinds.builtin_fn("fails", move |_| {
            let started = started.clone();
            async move {
                started.notified().await;
                Err::<Writes, _>(AgentError::Other("gave up".into()))
            }
        });
        kinds.builtin_fn("sticky", move |_| {
            let holds_guard = holds_guard.clone();
            async move {
                let _guard = PanicsOnDrop;
                holds_guard.notify_one();
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok::<_, AgentError>(Writes::new())
            }
        });
        let pipeline = Pipeline::from_yaml_str_with(
            "pipeline: sticky
agents:
  fails: { kind: builtin, function: fails, writes: [x] }
  sticky: { kind: builtin, function: sticky, writes: [y] }
",
            &kinds,
        )
        .unwrap();
        let report = runtime.block_on(run(&pipeline, json!({})));
        assert_eq!(report.status, RunStatus::Failed, "{flavor}: {report:?}");
        assert_eq!(
            report.error.as_deref(),
            Some("agent `fails` failed: gave up"),
            "{flavor}"
        );
        let sticky = &report.agents["sticky"];
        if flavor == "current-thread" {
            // Dropped by the run's own task, which caught the panic.
            assert_eq!(sticky.status, AgentStatus::Cancelled, "{sticky:?}");
        } else {
            // Tokio caught it as the aborted task was dropped, and says so.
            assert_eq!(sticky.status, AgentStatus::Failed, "{sticky:?}");
            assert!(
                sticky.error.as_deref().unwrap().contains("dropped badly"),
                "{sticky:?}"
            );
        }
    }
}
