//! Pipelines that are not fixed DAGs, as a library user runs them: fan-out
//! over a list (`foreach`) and optional writes (`name?`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use braid_core::agent::{AgentError, Writes};
use braid_core::checkpoint::{AgentRecord, Checkpointer, ResumePoint, RunRecord};
use braid_core::event::{EventKind, EventLevel, EventSink};
use braid_core::{AgentKinds, AgentStatus, Pipeline, RunOptions, RunReport, RunStatus};
use serde_json::{Value, json};

fn load(yaml: &str, kinds: &AgentKinds) -> Pipeline {
    Pipeline::from_yaml_str_with(yaml, kinds).unwrap_or_else(|e| panic!("{e}"))
}

async fn run(pipeline: &Pipeline, input: Value, options: RunOptions) -> RunReport {
    let input = pipeline.check_input(&input).unwrap();
    pipeline.run(input, options).await
}

fn writes(pairs: &[(&str, Value)]) -> Writes {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

/// How many calls are in flight at once, and the most there were.
#[derive(Clone, Default)]
struct InFlight {
    now: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
}

impl InFlight {
    /// Counts one call in flight for `ms` milliseconds.
    async fn hold(&self, ms: u64) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
    }

    fn most(&self) -> usize {
        self.most.load(Ordering::SeqCst)
    }
}

/// A member's name → its position in the event stream.
type Positions = HashMap<String, usize>;

/// Where each member's start and completion fall in a run's event stream
/// (events arrive in the order they were numbered); a member that starts
/// or completes twice fails the property.
fn event_positions(
    events: &mut braid_core::event::EventReceiver,
) -> Result<(Positions, Positions), proptest::test_runner::TestCaseError> {
    let mut starts = HashMap::new();
    let mut ends = HashMap::new();
    let mut position = 0;
    while let Ok(event) = events.try_recv() {
        position += 1;
        let (seen, what) = match &event.kind {
            EventKind::AgentStarted { agent, .. } => {
                (starts.insert(agent.to_string(), position), "started")
            }
            EventKind::AgentCompleted { agent, .. } => {
                (ends.insert(agent.to_string(), position), "completed")
            }
            _ => continue,
        };
        if seen.is_some() {
            let agent = event
                .kind
                .agent()
                .map(|a| a.to_string())
                .unwrap_or_default();
            return Err(proptest::test_runner::TestCaseError::fail(format!(
                "{agent} {what} twice"
            )));
        }
    }
    Ok((starts, ends))
}

/// Instances get their element and its index; the agent's list is in
/// element order whatever order the instances finish in.
#[tokio::test]
async fn foreach_runs_one_instance_per_element_and_keeps_element_order() {
    let mut kinds = AgentKinds::standard();
    kinds.builtin_fn("summarize", |reads| async move {
        let doc = reads.get("doc").unwrap().as_str().unwrap().to_owned();
        let index = reads.get("doc_index").unwrap().as_u64().unwrap();
        let audience = reads.get("audience").unwrap().as_str().unwrap().to_owned();
        // Earlier elements finish later.
        tokio::time::sleep(Duration::from_millis(40 - 10 * index)).await;
        Ok(writes(&[(
            "summaries",
            json!(format!("{doc} for {audience} (#{index})")),
        )]))
    });
    let pipeline = load(
        "pipeline: docs
inputs: { docs: { type: array }, audience: { type: string } }
agents:
  summarize:
    kind: builtin
    function: summarize
    foreach: docs
    as: doc
    reads: [doc, doc_index, audience]
    writes: [summaries]
  report: { kind: sleep, reads: [summaries], writes: [done] }
",
        &kinds,
    );
    let report = run(
        &pipeline,
        json!({"docs": ["a", "b", "c", "d"], "audience": "ops"}),
        RunOptions::default(),
    )
    .await;
    assert_eq!(report.status, RunStatus::Completed, "{:?}", report.error);
    assert_eq!(
        *report.state["summaries"],
        json!([
            "a for ops (#0)",
            "b for ops (#1)",
            "c for ops (#2)",
            "d for ops (#3)"
        ])
    );
    let summarize = &report.agents["summarize"];
    assert_eq!(summarize.status, AgentStatus::Completed);
    let items = summarize.items.unwrap();
    assert_eq!((items.total, items.completed, items.failed), (4, 4, 0));
    let instances = summarize.instances.as_ref().unwrap();
    assert_eq!(
        instances.keys().map(|k| &**k).collect::<Vec<_>>(),
        [
            "summarize[0]",
            "summarize[1]",
            "summarize[2]",
            "summarize[3]"
        ]
    );
    // #3 was quickest, #0 slowest: they did run at once, not one by one.
    let end = |i: usize| {
        let r = &instances[i];
        r.start_ms.unwrap() + r.duration_ms.unwrap()
    };
    assert!(end(3) < end(0));
    // The agent after the fan-out starts once the last instance ended.
    let last_end = (0..4).map(end).fold(0.0, f64::max);
    assert!(report.agents["report"].start_ms.unwrap() >= last_end);
    // Without instances, the counts stay.
    let slim = report.without_instances();
    assert!(slim.agents["summarize"].instances.is_none());
    assert_eq!(slim.agents["summarize"].items.unwrap().total, 4);
}

/// The instances start the moment the list is written, while an
/// unrelated slow agent is still running, and `concurrency:` bounds them.
#[tokio::test]
async fn foreach_starts_when_the_list_exists_and_respects_its_concurrency() {
    let in_flight = InFlight::default();
    let mut kinds = AgentKinds::standard();
    {
        let in_flight = in_flight.clone();
        kinds.builtin_fn("work", move |_| {
            let in_flight = in_flight.clone();
            async move {
                in_flight.hold(20).await;
                Ok(writes(&[("results", json!(true))]))
            }
        });
    }
    let pipeline = load(
        "pipeline: bounded
agents:
  plan:  { kind: sleep, ms: 1, writes: [items], value: [1, 2, 3, 4, 5, 6, 7, 8] }
  slow:  { kind: sleep, ms: 600, writes: [other] }
  work:  { kind: builtin, function: work, foreach: items, concurrency: 2, reads: [item], writes: [results] }
  join:  { kind: sleep, reads: [results, other], writes: [done] }
",
        &kinds,
    );
    let report = run(&pipeline, json!({}), RunOptions::default()).await;
    assert_eq!(report.status, RunStatus::Completed, "{:?}", report.error);
    assert_eq!(in_flight.most(), 2, "at most 2 instances at once");
    assert_eq!(*report.state["results"], json!(vec![true; 8]));
    let work = &report.agents["work"];
    let slow = &report.agents["slow"];
    assert!(
        work.start_ms.unwrap() + work.duration_ms.unwrap()
            < slow.start_ms.unwrap() + slow.duration_ms.unwrap(),
        "the fan-out ran while the unrelated slow agent did"
    );
}

/// The run's own limit bounds instances too.
#[tokio::test]
async fn the_runs_concurrency_limit_bounds_instances() {
    let in_flight = InFlight::default();
    let mut kinds = AgentKinds::standard();
    {
        let in_flight = in_flight.clone();
        kinds.builtin_fn("work", move |_| {
            let in_flight = in_flight.clone();
            async move {
                in_flight.hold(5).await;
                Ok(writes(&[("results", json!(1))]))
            }
        });
    }
    let pipeline = load(
        "pipeline: limited
inputs: { items: { type: array } }
agents:
  work: { kind: builtin, function: work, foreach: items, reads: [item], writes: [results] }
",
        &kinds,
    );
    let options = RunOptions {
        concurrency: Some(3),
        ..Default::default()
    };
    let report = run(&pipeline, json!({"items": vec![0; 20]}), options).await;
    assert_eq!(report.status, RunStatus::Completed);
    assert_eq!(in_flight.most(), 3);
}

fn flaky_kinds() -> AgentKinds {
    let mut kinds = AgentKinds::standard();
    kinds.builtin_fn("flaky", |reads| async move {
        let item = reads.get("item").unwrap().as_i64().unwrap();
        if item < 0 {
            return Err(AgentError::Other(format!("cannot take {item}")));
        }
        Ok(writes(&[("out", json!(item * 10))]))
    });
    kinds
}

#[tokio::test]
async fn on_item_failure_skip_leaves_null_and_lists_the_failure() {
    let pipeline = load(
        "pipeline: skip
inputs: { items: { type: array } }
agents:
  each: { kind: builtin, function: flaky, foreach: items, on_item_failure: skip, reads: [item], writes: [out] }
  after: { kind: sleep, reads: [out], writes: [done] }
",
        &flaky_kinds(),
    );
    let report = run(
        &pipeline,
        json!({"items": [1, -2, 3]}),
        RunOptions::default(),
    )
    .await;
    assert_eq!(report.status, RunStatus::Completed, "{:?}", report.error);
    assert_eq!(*report.state["out"], json!([10, null, 30]));
    let each = &report.agents["each"];
    assert_eq!(each.status, AgentStatus::Completed);
    assert_eq!(each.items.unwrap().failed, 1);
    let failed = &each.instances.as_ref().unwrap()["each[1]"];
    assert_eq!(failed.status, AgentStatus::Failed);
    assert!(failed.error.as_deref().unwrap().contains("cannot take -2"));
    assert_eq!(report.agents["after"].status, AgentStatus::Completed);
}

#[tokio::test]
async fn on_item_failure_fail_fails_the_agent_naming_the_instance() {
    let pipeline = load(
        "pipeline: fail
inputs: { items: { type: array } }
agents:
  each: { kind: builtin, function: flaky, foreach: items, reads: [item], writes: [out] }
  after: { kind: sleep, reads: [out], writes: [done] }
",
        &flaky_kinds(),
    );
    let report = run(
        &pipeline,
        json!({"items": [1, -2, 3]}),
        RunOptions::default(),
    )
    .await;
    assert_eq!(report.status, RunStatus::Failed);
    let each = &report.agents["each"];
    assert_eq!(each.status, AgentStatus::Failed);
    let error = each.error.as_deref().unwrap();
    assert!(
        error.contains("each[1]") && error.contains("cannot take -2"),
        "{error}"
    );
    assert!(!report.state.contains_key("out"));
    assert_eq!(report.agents["after"].status, AgentStatus::Cancelled);
}

#[tokio::test]
async fn a_foreach_field_that_is_not_a_list_fails_the_agent_clearly() {
    let pipeline = load(
        "pipeline: notalist
inputs: { items: {} }
agents:
  each: { kind: builtin, function: flaky, foreach: items, reads: [item], writes: [out] }
",
        &flaky_kinds(),
    );
    let report = run(&pipeline, json!({"items": "abc"}), RunOptions::default()).await;
    assert_eq!(report.status, RunStatus::Failed);
    let error = report.agents["each"].error.as_deref().unwrap();
    assert_eq!(
        error,
        "`foreach: items` needs a list, but `items` is a string"
    );
}

/// A list from an agent's output is outside input: too many elements fail
/// the agent, saying the bound, before any instance is set up.
#[tokio::test]
async fn a_list_past_max_items_fails_the_agent_before_fanning_out() {
    let pipeline = load(
        "pipeline: huge
inputs: { items: { type: array } }
agents:
  each: { kind: builtin, function: flaky, foreach: items, reads: [item], writes: [out] }
",
        &flaky_kinds(),
    );
    let items = vec![1; braid_core::pipeline::MAX_ITEMS + 1];
    let report = run(&pipeline, json!({ "items": items }), RunOptions::default()).await;
    assert_eq!(report.status, RunStatus::Failed);
    let error = report.agents["each"].error.as_deref().unwrap();
    assert!(
        error.contains("holds 1000001 elements") && error.contains("MAX_ITEMS"),
        "{error}"
    );
    assert!(report.agents["each"].instances.is_none());
}

#[tokio::test]
async fn an_empty_list_completes_with_empty_lists() {
    let pipeline = load(
        "pipeline: empty
inputs: { items: { type: array } }
agents:
  each: { kind: builtin, function: flaky, foreach: items, reads: [item], writes: [out] }
  after: { kind: sleep, reads: [out], writes: [done] }
",
        &flaky_kinds(),
    );
    let report = run(&pipeline, json!({"items": []}), RunOptions::default()).await;
    assert_eq!(report.status, RunStatus::Completed);
    assert_eq!(*report.state["out"], json!([]));
    assert_eq!(report.agents["each"].items.unwrap().total, 0);
    assert_eq!(report.agents["after"].status, AgentStatus::Completed);
}

/// Each instance is a run member in the event stream, named `agent[i]`.
#[tokio::test]
async fn instances_have_their_own_events() {
    let pipeline = load(
        "pipeline: events
inputs: { items: { type: array } }
agents:
  each: { kind: builtin, function: flaky, foreach: items, reads: [item], writes: [out] }
",
        &flaky_kinds(),
    );
    let (sink, mut rx) = EventSink::channel(EventLevel::Summary);
    let options = RunOptions {
        events: Some(sink),
        ..Default::default()
    };
    let report = run(&pipeline, json!({"items": [1, 2]}), options).await;
    assert_eq!(report.status, RunStatus::Completed);
    let mut started = HashSet::new();
    let mut completed = HashSet::new();
    while let Some(event) = rx.recv().await {
        match event.kind {
            EventKind::AgentStarted { agent, items, .. } => {
                // The agent's own start says how many instances follow.
                let expected = (&*agent == "each").then_some(2);
                assert_eq!(items, expected, "{agent}");
                started.insert(agent.to_string())
            }
            EventKind::AgentCompleted { agent, .. } => completed.insert(agent.to_string()),
            EventKind::RunFinished { .. } => break,
            _ => false,
        };
    }
    let all: HashSet<String> = ["each", "each[0]", "each[1]"].map(String::from).into();
    assert_eq!(started, all);
    assert_eq!(completed, all);
}

/// A checkpointer that keeps what it is handed.
#[derive(Default)]
struct Kept(Mutex<Vec<AgentRecord>>);

impl Checkpointer for Kept {
    fn run_started(&self, _: &RunRecord) {}
    fn agent_finished(&self, _: &RunRecord, agent: &AgentRecord) {
        self.0.lock().unwrap().push(agent.clone());
    }
    fn run_finished(&self, _: &RunRecord, _: &RunReport, _: &[AgentRecord]) {}
}

/// Stopped mid-fan-out (cancelled while one instance hangs), the run
/// resumes from its per-agent checkpoints without running the instances
/// that completed again, and assembles the list in element order.
#[tokio::test]
async fn a_resumed_fan_out_runs_only_the_instances_that_did_not_complete() {
    let calls = Arc::new(Mutex::new(Vec::<i64>::new()));
    let hang = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut kinds = AgentKinds::standard();
    {
        let (calls, hang) = (calls.clone(), hang.clone());
        kinds.builtin_fn("hangs_on_big", move |reads| {
            let (calls, hang) = (calls.clone(), hang.clone());
            async move {
                let item = reads.get("item").unwrap().as_i64().unwrap();
                calls.lock().unwrap().push(item);
                if item >= 100 && hang.load(Ordering::SeqCst) {
                    std::future::pending::<()>().await;
                }
                Ok(writes(&[("out", json!(item + 1))]))
            }
        });
    }
    let pipeline = Arc::new(load(
        "pipeline: resume
checkpoint: agent
inputs: { items: { type: array } }
agents:
  each: { kind: builtin, function: hangs_on_big, foreach: items, reads: [item], writes: [out] }
",
        &kinds,
    ));
    let input = json!({"items": [1, 2, 100, 3]});
    let kept = Arc::new(Kept::default());
    let cancel = tokio_util::sync::CancellationToken::new();
    let first = tokio::spawn({
        let (pipeline, input) = (pipeline.clone(), input.clone());
        let options = RunOptions {
            run_id: Some("r1".into()),
            checkpointer: Some(kept.clone()),
            cancel: cancel.clone(),
            ..Default::default()
        };
        async move { run(&pipeline, input, options).await }
    });
    // Once the three quick instances are on record, stop the run.
    for _ in 0..1000 {
        if kept.0.lock().unwrap().len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cancel.cancel();
    let report = first.await.unwrap();
    assert_eq!(report.status, RunStatus::Cancelled);
    let each = &report.agents["each"];
    assert_eq!(each.status, AgentStatus::Cancelled);
    assert_eq!(each.items.unwrap().completed, 3);
    let records = kept.0.lock().unwrap().clone();
    let names: HashSet<String> = records.iter().map(|r| r.agent.to_string()).collect();
    assert_eq!(
        names,
        ["each[0]", "each[1]", "each[3]"].map(String::from).into()
    );

    calls.lock().unwrap().clear();
    hang.store(false, Ordering::SeqCst);
    let options = RunOptions {
        run_id: Some("r1".into()),
        resume: Some(ResumePoint { agents: records }),
        ..Default::default()
    };
    let report = run(&pipeline, input, options).await;
    assert_eq!(report.status, RunStatus::Completed, "{:?}", report.error);
    assert_eq!(
        *calls.lock().unwrap(),
        [100],
        "only the unfinished instance ran again"
    );
    assert_eq!(*report.state["out"], json!([2, 3, 101, 4]));
    let instances = report.agents["each"].instances.as_ref().unwrap();
    assert!(instances["each[0]"].resumed && !instances["each[2]"].resumed);
}

/// A router writes one of two optional fields: readers of the other are
/// skipped (a required read) or run without it (an optional read).
#[tokio::test]
async fn optional_writes_route_to_one_branch() {
    let mut kinds = AgentKinds::standard();
    kinds.builtin_fn("route", |reads| async move {
        let request = reads.get("request").unwrap().as_str().unwrap().to_owned();
        Ok(if request.contains("refund") {
            writes(&[("refund_case", json!(request))])
        } else {
            writes(&[("tech_case", json!(request))])
        })
    });
    let pipeline = load(
        "pipeline: router
inputs: { request: { type: string } }
agents:
  route:  { kind: builtin, function: route, reads: [request], writes: [refund_case?, tech_case?] }
  refund: { kind: sleep, reads: [refund_case], writes: [refund_answer] }
  tech:   { kind: sleep, reads: [tech_case], writes: [tech_answer] }
  audit:  { kind: sleep, reads: [refund_case?, tech_case?], writes: [audited] }
",
        &kinds,
    );
    let report = run(
        &pipeline,
        json!({"request": "a refund please"}),
        RunOptions::default(),
    )
    .await;
    assert_eq!(report.status, RunStatus::Completed, "{:?}", report.error);
    assert_eq!(report.agents["refund"].status, AgentStatus::Completed);
    assert_eq!(report.agents["audit"].status, AgentStatus::Completed);
    let tech = &report.agents["tech"];
    assert_eq!(tech.status, AgentStatus::Skipped);
    assert_eq!(
        tech.reason.as_deref(),
        Some("needs `tech_case`, which no writer wrote (`route` completed without it)")
    );
    assert!(!report.state.contains_key("tech_case"));
    let explained = pipeline.explain();
    assert_eq!(explained.agents[0].writes, ["refund_case?", "tech_case?"]);
}

/// `when: has(field)` is evaluated even when the field was never written
/// (a field only tested by `has` is not a required input of the condition).
#[tokio::test]
async fn when_has_runs_on_whether_a_field_was_written() {
    let mut kinds = AgentKinds::standard();
    kinds.builtin_fn("route", |reads| async move {
        let request = reads.get("request").unwrap().as_str().unwrap().to_owned();
        Ok(if request.contains("refund") {
            writes(&[("refund_case", json!(request))])
        } else {
            writes(&[("other_case", json!(request))])
        })
    });
    let pipeline = load(
        "pipeline: has
inputs: { request: { type: string } }
agents:
  route:    { kind: builtin, function: route, reads: [request], writes: [refund_case?, other_case?] }
  fallback: { kind: sleep, when: '!has(refund_case)', writes: [fallback] }
",
        &kinds,
    );
    let report = run(
        &pipeline,
        json!({"request": "the app crashes"}),
        RunOptions::default(),
    )
    .await;
    assert_eq!(
        report.agents["fallback"].status,
        AgentStatus::Completed,
        "{:?}",
        report.agents["fallback"]
    );
    let report = run(
        &pipeline,
        json!({"request": "refund please"}),
        RunOptions::default(),
    )
    .await;
    let fallback = &report.agents["fallback"];
    assert_eq!(fallback.status, AgentStatus::Skipped);
    assert_eq!(
        fallback.reason.as_deref(),
        Some("condition `!has(refund_case)` is false")
    );
}

/// A write not marked optional must still be written.
#[tokio::test]
async fn a_required_write_left_out_still_fails_the_agent() {
    let mut kinds = AgentKinds::standard();
    kinds.builtin_fn("half", |_| async move { Ok(writes(&[("a", json!(1))])) });
    let pipeline = load(
        "pipeline: half
agents:
  half: { kind: builtin, function: half, writes: [a?, b] }
",
        &kinds,
    );
    let report = run(&pipeline, json!({}), RunOptions::default()).await;
    assert_eq!(report.status, RunStatus::Failed);
    let error = report.agents["half"].error.as_deref().unwrap();
    assert!(
        error.contains("did not write declared field(s) `b`"),
        "{error}"
    );
}

mod properties {
    //! Fan-outs of random sizes, durations and limits: every instance runs
    //! exactly once, only after the list exists; the list comes out in
    //! element order whatever the completion order; the limits hold; the
    //! reader of the result starts only after the last instance ended.

    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    struct Case {
        delays: Vec<u64>,
        concurrency: Option<usize>,
        run_limit: Option<usize>,
    }

    fn case() -> impl Strategy<Value = Case> {
        (
            proptest::collection::vec(0u64..6, 0..24),
            proptest::option::of(1usize..5),
            proptest::option::of(1usize..6),
        )
            .prop_map(|(delays, concurrency, run_limit)| Case {
                delays,
                concurrency,
                run_limit,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

        #[test]
        fn instances_run_once_in_bounds_and_results_keep_element_order(case in case()) {
            let in_flight = InFlight::default();
            let mut kinds = AgentKinds::standard();
            {
                let in_flight = in_flight.clone();
                kinds.builtin_fn("work", move |reads| {
                    let in_flight = in_flight.clone();
                    async move {
                        let delay = reads.get("item").unwrap().as_u64().unwrap();
                        let index = reads.get("item_index").unwrap().as_u64().unwrap();
                        in_flight.hold(delay).await;
                        Ok(writes(&[("out", json!([index, delay]))]))
                    }
                });
            }
            let concurrency = case
                .concurrency
                .map(|c| format!(", concurrency: {c}"))
                .unwrap_or_default();
            let yaml = format!(
                "pipeline: prop
inputs: {{ delays: {{ type: array }} }}
agents:
  plan: {{ kind: builtin, function: copy, reads: [delays], writes: [items] }}
  work: {{ kind: builtin, function: work, foreach: items{concurrency}, reads: [item, item_index], writes: [out] }}
  join: {{ kind: sleep, reads: [out], writes: [done] }}
"
            );
            kinds.builtin_fn("copy", |reads| async move {
                Ok(writes(&[("items", reads.get("delays").unwrap().clone())]))
            });
            let pipeline = load(&yaml, &kinds);
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let (sink, mut events) = EventSink::channel(EventLevel::Summary);
            let report = runtime.block_on(run(
                &pipeline,
                json!({ "delays": case.delays }),
                RunOptions { events: Some(sink), concurrency: case.run_limit, ..Default::default() },
            ));
            prop_assert_eq!(report.status, RunStatus::Completed);
            let n = case.delays.len();
            let expected: Vec<Value> = case.delays.iter().enumerate().map(|(i, d)| json!([i, d])).collect();
            prop_assert_eq!(&*report.state["out"], &json!(expected));

            let bound = case.concurrency.unwrap_or(usize::MAX).min(case.run_limit.unwrap_or(usize::MAX));
            prop_assert!(in_flight.most() <= bound);
            if n > 0 {
                prop_assert_eq!(in_flight.most() >= 1, true);
            }

            // Positions in the event stream (numbered in order).
            let (starts, ends) = event_positions(&mut events)?;
            for i in 0..n {
                let name = format!("work[{i}]");
                prop_assert!(starts[&name] > ends["plan"], "{} started before the list existed", name);
                prop_assert!(ends[&name] < starts["join"], "join started before {} ended", name);
            }
            prop_assert_eq!(starts.keys().filter(|k| k.starts_with("work[")).count(), n);
        }
    }
}

mod groups {
    //! Groups (`kind: pipeline`): a sub-pipeline per element (`foreach`),
    //! and bounded loops (`repeat`) carrying fields from round to round.

    use super::*;

    fn ms_since_start(report: &RunReport, group: &str, member: &str) -> (f64, f64) {
        let r = &report.agents[group].instances.as_ref().unwrap()[member];
        let start = r.start_ms.unwrap();
        (start, start + r.duration_ms.unwrap())
    }

    /// Element 0 is slow in `extract`; element 1's `classify` does not wait
    /// for it (no stage barrier), and the outputs keep element order.
    #[tokio::test]
    async fn a_foreach_group_moves_each_element_through_its_stages_on_its_own() {
        let mut kinds = AgentKinds::standard();
        kinds.builtin_fn("extract", |reads| async move {
            let doc = reads.get("doc").unwrap().as_str().unwrap().to_owned();
            if reads.get("doc_index").unwrap() == 0 {
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
            Ok(writes(&[("text", json!(doc.to_uppercase()))]))
        });
        kinds.builtin_fn("classify", |reads| async move {
            let text = reads.get("text").unwrap().as_str().unwrap().len();
            let audience = reads.get("audience").unwrap().clone();
            Ok(writes(&[("label", json!([text, audience]))]))
        });
        let pipeline = load(
            "pipeline: per-doc
inputs: { docs: { type: array }, audience: { type: string } }
agents:
  per_doc:
    kind: pipeline
    foreach: docs
    as: doc
    reads: [audience]
    agents:
      extract:  { kind: builtin, function: extract, reads: [doc, doc_index], writes: [text] }
      classify: { kind: builtin, function: classify, reads: [text, audience], writes: [label] }
    outputs: { texts: text, labels: label }
  report: { kind: sleep, reads: [labels], writes: [done] }
",
            &kinds,
        );
        let report = run(
            &pipeline,
            json!({"docs": ["ab", "cde", "f"], "audience": "ops"}),
            RunOptions::default(),
        )
        .await;
        assert_eq!(report.status, RunStatus::Completed, "{:?}", report.error);
        assert_eq!(*report.state["texts"], json!(["AB", "CDE", "F"]));
        assert_eq!(
            *report.state["labels"],
            json!([[2, "ops"], [3, "ops"], [1, "ops"]])
        );
        let (_, slow_extract_end) = ms_since_start(&report, "per_doc", "per_doc[0].extract");
        let (_, other_classify_end) = ms_since_start(&report, "per_doc", "per_doc[1].classify");
        assert!(
            other_classify_end < slow_extract_end,
            "element 1 finished classify at {other_classify_end} ms, after element 0's extract ended at {slow_extract_end} ms: a stage barrier"
        );
        let names: Vec<&str> = report.agents["per_doc"]
            .instances
            .as_ref()
            .unwrap()
            .keys()
            .map(|k| &**k)
            .collect();
        assert_eq!(
            names,
            [
                "per_doc[0]",
                "per_doc[0].extract",
                "per_doc[0].classify",
                "per_doc[1]",
                "per_doc[1].extract",
                "per_doc[1].classify",
                "per_doc[2]",
                "per_doc[2].extract",
                "per_doc[2].classify",
            ]
        );
        assert!(report.agents["report"].start_ms.unwrap() >= slow_extract_end);
    }

    /// The run's limit bounds the agents of every nested run together;
    /// the groups themselves take no slot, so they cannot starve their own
    /// agents.
    #[tokio::test]
    async fn the_runs_limit_bounds_agents_inside_groups_too() {
        let in_flight = InFlight::default();
        let mut kinds = AgentKinds::standard();
        for field in ["out_a", "out_b"] {
            let in_flight = in_flight.clone();
            kinds.builtin_fn(field, move |_| {
                let in_flight = in_flight.clone();
                async move {
                    in_flight.hold(5).await;
                    Ok(writes(&[(field, json!(1))]))
                }
            });
        }
        // Two agents side by side in each of 12 nested runs.
        let pipeline = load(
            "pipeline: bounded-groups
inputs: { items: { type: array } }
agents:
  each:
    kind: pipeline
    foreach: items
    agents:
      a: { kind: builtin, function: out_a, reads: [item], writes: [out_a] }
      b: { kind: builtin, function: out_b, reads: [item], writes: [out_b] }
    outputs: { outs: out_a }
",
            &kinds,
        );
        let options = RunOptions {
            concurrency: Some(3),
            ..Default::default()
        };
        let report = run(&pipeline, json!({"items": vec![0; 12]}), options).await;
        assert_eq!(report.status, RunStatus::Completed, "{:?}", report.error);
        assert_eq!(
            in_flight.most(),
            3,
            "3 agents at once, across 12 nested runs"
        );
        assert_eq!(*report.state["outs"], json!(vec![1; 12]));
    }

    /// A group can be a pipeline file of its own: its `inputs` are mapped
    /// from the group's reads and element (defaults fill in the rest,
    /// schemas are checked), and its agents run from its folder.
    #[tokio::test]
    async fn a_group_can_be_a_pipeline_file_whose_inputs_come_from_its_reads() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("groups")).unwrap();
        std::fs::write(
            dir.path().join("groups/per_doc.yaml"),
            "pipeline: per-doc
inputs:
  doc: { type: string }
  audience: { type: string, default: everyone }
agents:
  shout: { kind: command, run: [sh, shout.sh], reads: [doc, audience], writes: [loud] }
",
        )
        .unwrap();
        // Run from the group file's folder, like any pipeline's agents.
        std::fs::write(
            dir.path().join("groups/shout.sh"),
            r#"python3 -c 'import json,sys; s=json.load(sys.stdin)["state"]; print(json.dumps({"loud": s["doc"].upper() + " for " + s["audience"]}))'"#,
        )
        .unwrap();
        let main = dir.path().join("pipeline.yaml");
        std::fs::write(
            &main,
            "pipeline: files
inputs: { docs: { type: array } }
agents:
  per_doc:
    kind: pipeline
    foreach: docs
    as: doc
    path: groups/per_doc.yaml
    outputs: { louder: loud }
",
        )
        .unwrap();
        let pipeline = Pipeline::from_file(&main).unwrap_or_else(|e| panic!("{e}"));
        let report = run(
            &pipeline,
            json!({"docs": ["a", "b"]}),
            RunOptions::default(),
        )
        .await;
        assert_eq!(report.status, RunStatus::Completed, "{:?}", report.error);
        assert_eq!(
            *report.state["louder"],
            json!(["A for everyone", "B for everyone"])
        );

        // A group file's own `defaults:` apply to its agents (here: a
        // retry that the pipeline around it does not give).
        std::fs::write(
            dir.path().join("groups/flaky.yaml"),
            "pipeline: flaky
defaults: { retries: 1, backoff: 1ms }
agents:
  once: { kind: command, run: [sh, -c, 'if [ -e seen ]; then echo \"{\\\"ok\\\": 1}\"; else touch seen; exit 3; fi'], writes: [ok] }
",
        )
        .unwrap();
        let flaky = dir.path().join("flaky-main.yaml");
        std::fs::write(
            &flaky,
            "pipeline: uses-flaky\nagents:\n  g: { kind: pipeline, path: groups/flaky.yaml, outputs: { ok: ok } }\n",
        )
        .unwrap();
        let flaky = Pipeline::from_file(&flaky).unwrap_or_else(|e| panic!("{e}"));
        let report = run(&flaky, json!({}), RunOptions::default()).await;
        assert_eq!(report.status, RunStatus::Completed, "{:?}", report.error);
        assert_eq!(
            report.agents["g"].instances.as_ref().unwrap()["g.once"].attempts,
            2
        );

        // An element the file's schema refuses fails its instance, saying so.
        let report = run(&pipeline, json!({"docs": ["a", 7]}), RunOptions::default()).await;
        assert_eq!(report.status, RunStatus::Failed);
        let error = report.agents["per_doc"].error.as_deref().unwrap();
        assert!(
            error.contains("per_doc[1]") && error.contains("input `doc` of `groups/per_doc.yaml`"),
            "{error}"
        );
    }

    /// Under a run limit, a `foreach` group keeps at most four times the
    /// limit of its nested runs set up at once (a group takes no slot, so
    /// without this 10,000 elements would be 10,000 nested runs at once).
    #[tokio::test]
    async fn a_foreach_group_under_a_limit_sets_up_few_nested_runs_at_once() {
        let mut kinds = AgentKinds::standard();
        kinds.builtin_fn("nap", |_| async move {
            tokio::time::sleep(Duration::from_millis(3)).await;
            Ok(writes(&[("out", json!(1))]))
        });
        let pipeline = load(
            "pipeline: capped
inputs: { items: { type: array } }
agents:
  each:
    kind: pipeline
    foreach: items
    agents:
      a: { kind: builtin, function: nap, reads: [item], writes: [out] }
    outputs: { outs: out }
",
            &kinds,
        );
        let options = RunOptions {
            concurrency: Some(1),
            ..Default::default()
        };
        let report = run(&pipeline, json!({"items": vec![0; 24]}), options).await;
        assert_eq!(report.status, RunStatus::Completed, "{:?}", report.error);
        let instances = report.agents["each"].instances.as_ref().unwrap();
        let spans: Vec<(f64, f64)> = (0..24)
            .map(|i| {
                let r = &instances[format!("each[{i}]").as_str()];
                (
                    r.start_ms.unwrap(),
                    r.start_ms.unwrap() + r.duration_ms.unwrap(),
                )
            })
            .collect();
        let most = spans
            .iter()
            .map(|&(t, _)| spans.iter().filter(|&&(s, e)| s <= t && t < e).count())
            .max()
            .unwrap();
        assert!(most <= 4, "{most} nested runs at once with a limit of 1");
    }

    fn loop_kinds(draft_rounds: Arc<Mutex<Vec<u64>>>) -> AgentKinds {
        let mut kinds = AgentKinds::standard();
        kinds.builtin_fn("draft", move |reads| {
            let draft_rounds = draft_rounds.clone();
            async move {
                let topic = reads.get("topic").unwrap().as_str().unwrap().to_owned();
                let feedback = reads.get("feedback").cloned();
                let round = reads.get("round").unwrap().as_u64().unwrap();
                draft_rounds.lock().unwrap().push(round);
                Ok(writes(&[(
                    "draft",
                    json!(format!("{topic} v{round} after {feedback:?}")),
                )]))
            }
        });
        kinds.builtin_fn("critique", |reads| async move {
            let round = reads.get("round").unwrap().as_u64().unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(writes(&[("critique", json!({"score": round * 3}))]))
        });
        kinds
    }

    const LOOP: &str = "pipeline: refine
inputs: { topic: { type: string } }
agents:
  refine:
    kind: pipeline
    reads: [topic]
    repeat: { until: 'critique.score >= 6', max: MAX, on_max: ON_MAX }
    carry: { feedback: critique }
    agents:
      draft:    { kind: builtin, function: draft, reads: [topic, feedback?, round], writes: [draft] }
      critique: { kind: builtin, function: critique, reads: [draft, round], writes: [critique] }
    outputs: { final_draft: draft, final_critique: critique }
  publish: { kind: sleep, reads: [final_draft], writes: [done] }
";

    fn loop_yaml(max: u32, on_max: &str) -> String {
        LOOP.replace("ON_MAX", on_max)
            .replace("MAX", &max.to_string())
    }

    #[tokio::test]
    async fn a_repeat_group_runs_rounds_until_its_condition_holds_carrying_fields() {
        let rounds = Arc::new(Mutex::new(Vec::new()));
        let pipeline = load(&loop_yaml(5, "fail"), &loop_kinds(rounds.clone()));
        let report = run(&pipeline, json!({"topic": "t"}), RunOptions::default()).await;
        assert_eq!(report.status, RunStatus::Completed, "{:?}", report.error);
        assert_eq!(
            *rounds.lock().unwrap(),
            [0, 1, 2],
            "three rounds: score 0, 3, 6"
        );
        assert_eq!(*report.state["final_critique"], json!({"score": 6}));
        assert_eq!(
            *report.state["final_draft"],
            json!("t v2 after Some(Object {\"score\": Number(3)})"),
            "round 2 read round 1's critique as its feedback"
        );
        let instances = report.agents["refine"].instances.as_ref().unwrap();
        for round in [
            "refine#0",
            "refine#1",
            "refine#2",
            "refine#2.draft",
            "refine#2.critique",
        ] {
            assert_eq!(instances[round].status, AgentStatus::Completed, "{round}");
        }
        assert!(!instances.contains_key("refine#3"));
        assert_eq!(report.agents["publish"].status, AgentStatus::Completed);
        // Round 2's first agent became ready when round 1 ended, not when
        // the run began.
        let draft = &instances["refine#2.draft"];
        let ready = draft.start_ms.unwrap() - draft.queue_ms.unwrap();
        let critique = &instances["refine#1.critique"];
        let round_1_end = critique.start_ms.unwrap() + critique.duration_ms.unwrap();
        assert!(
            ready >= round_1_end - 0.5,
            "ready at {ready} ms, round 1 ended at {round_1_end} ms"
        );
    }

    #[tokio::test]
    async fn a_loop_that_hits_max_fails_or_keeps_its_last_round() {
        let pipeline = load(&loop_yaml(2, "fail"), &loop_kinds(Arc::default()));
        let report = run(&pipeline, json!({"topic": "t"}), RunOptions::default()).await;
        assert_eq!(report.status, RunStatus::Failed);
        let error = report.agents["refine"].error.as_deref().unwrap();
        assert!(
            error.contains("`until: critique.score >= 6` still did not hold after 2 rounds"),
            "{error}"
        );

        let pipeline = load(&loop_yaml(2, "continue"), &loop_kinds(Arc::default()));
        let report = run(&pipeline, json!({"topic": "t"}), RunOptions::default()).await;
        assert_eq!(report.status, RunStatus::Completed);
        assert_eq!(*report.state["final_critique"], json!({"score": 3}));
    }

    /// A model that calls a tool until it can answer: optional writes pick
    /// the branch, `carry` hands the tool's result to the next round.
    #[tokio::test]
    async fn a_tool_calling_loop_ends_when_the_model_answers() {
        let mut kinds = AgentKinds::standard();
        kinds.builtin_fn("model", |reads| async move {
            Ok(match reads.get("observation") {
                Some(seen) if seen.as_i64() >= Some(2) => {
                    writes(&[("answer", json!(format!("it is {seen}")))])
                }
                seen => {
                    let next = seen.and_then(Value::as_i64).unwrap_or(0) + 1;
                    writes(&[("tool_call", json!({"add_one_to": next - 1}))])
                }
            })
        });
        kinds.builtin_fn("tool", |reads| async move {
            let n = reads.get("tool_call").unwrap()["add_one_to"]
                .as_i64()
                .unwrap();
            Ok(writes(&[("tool_result", json!(n + 1))]))
        });
        let pipeline = load(
            "pipeline: tools
inputs: { question: { type: string } }
agents:
  agent_loop:
    kind: pipeline
    reads: [question]
    repeat: { until: 'has(answer)', max: 10 }
    carry: { observation: tool_result }
    agents:
      model: { kind: builtin, function: model, reads: [question, observation?], writes: [tool_call?, answer?] }
      tool:  { kind: builtin, function: tool, reads: [tool_call], writes: [tool_result] }
    outputs: { answer: answer }
",
            &kinds,
        );
        let report = run(&pipeline, json!({"question": "?"}), RunOptions::default()).await;
        assert_eq!(report.status, RunStatus::Completed, "{:?}", report.error);
        assert_eq!(*report.state["answer"], json!("it is 2"));
        let instances = report.agents["agent_loop"].instances.as_ref().unwrap();
        assert_eq!(instances["agent_loop#2.tool"].status, AgentStatus::Skipped);
        assert_eq!(
            instances["agent_loop#0.tool"].status,
            AgentStatus::Completed
        );
    }

    /// Stopped in round 2, a resumed loop carries on from round 1's state:
    /// rounds 0 and 1 do not run again.
    #[tokio::test]
    async fn a_resumed_loop_carries_on_after_the_last_completed_round() {
        let rounds = Arc::new(Mutex::new(Vec::new()));
        let hang = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let mut kinds = loop_kinds(rounds.clone());
        {
            let hang = hang.clone();
            kinds.builtin_fn("critique", move |reads| {
                let hang = hang.clone();
                async move {
                    let round = reads.get("round").unwrap().as_u64().unwrap();
                    if round == 2 && hang.load(Ordering::SeqCst) {
                        std::future::pending::<()>().await;
                    }
                    Ok(writes(&[("critique", json!({"score": round * 3}))]))
                }
            });
        }
        let pipeline = Arc::new(load(
            &loop_yaml(5, "fail").replace(
                "pipeline: refine\n",
                "pipeline: refine\ncheckpoint: agent\n",
            ),
            &kinds,
        ));
        let kept = Arc::new(Kept::default());
        let cancel = tokio_util::sync::CancellationToken::new();
        let first = tokio::spawn({
            let pipeline = pipeline.clone();
            let options = RunOptions {
                run_id: Some("loop".into()),
                checkpointer: Some(kept.clone()),
                cancel: cancel.clone(),
                ..Default::default()
            };
            async move { run(&pipeline, json!({"topic": "t"}), options).await }
        });
        for _ in 0..1000 {
            if rounds.lock().unwrap().contains(&2) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        cancel.cancel();
        assert_eq!(first.await.unwrap().status, RunStatus::Cancelled);
        let records = kept.0.lock().unwrap().clone();
        let names: HashSet<String> = records.iter().map(|r| r.agent.to_string()).collect();
        assert!(
            names.contains("refine#1") && names.contains("refine#2.draft"),
            "{names:?}"
        );

        rounds.lock().unwrap().clear();
        hang.store(false, Ordering::SeqCst);
        let options = RunOptions {
            run_id: Some("loop".into()),
            resume: Some(ResumePoint { agents: records }),
            ..Default::default()
        };
        let report = run(&pipeline, json!({"topic": "t"}), options).await;
        assert_eq!(report.status, RunStatus::Completed, "{:?}", report.error);
        assert!(
            rounds.lock().unwrap().is_empty(),
            "round 2's draft was on record and rounds 0 and 1 were done: no draft ran again, ran {:?}",
            rounds.lock().unwrap()
        );
        assert_eq!(*report.state["final_critique"], json!({"score": 6}));

        // Against a changed group (here its `max`), nothing of the earlier
        // rounds is reused: its agents' records are tied to the group's
        // definition.
        rounds.lock().unwrap().clear();
        let changed = Arc::new(load(
            &loop_yaml(6, "fail").replace(
                "pipeline: refine\n",
                "pipeline: refine\ncheckpoint: agent\n",
            ),
            &kinds,
        ));
        let options = RunOptions {
            run_id: Some("loop".into()),
            resume: Some(ResumePoint {
                agents: kept.0.lock().unwrap().clone(),
            }),
            ..Default::default()
        };
        let report = run(&changed, json!({"topic": "t"}), options).await;
        assert_eq!(report.status, RunStatus::Completed, "{:?}", report.error);
        assert_eq!(*rounds.lock().unwrap(), [0, 1, 2], "every round ran again");
    }

    /// A group stopped by a failing sibling element still reports what
    /// its members did: finished ones as they ended, the rest cancelled.
    #[tokio::test]
    async fn an_aborted_group_still_reports_its_members() {
        let mut kinds = AgentKinds::standard();
        kinds.builtin_fn("step", |reads| async move {
            let item = reads.get("item").unwrap().as_i64().unwrap();
            if item < 0 {
                return Err(AgentError::Other("negative".into()));
            }
            if item > 100 {
                std::future::pending::<()>().await;
            }
            Ok(writes(&[("a", json!(item))]))
        });
        let pipeline = load(
            "pipeline: aborted
inputs: { items: { type: array } }
agents:
  each:
    kind: pipeline
    foreach: items
    agents:
      first:  { kind: builtin, function: step, reads: [item], writes: [a] }
      second: { kind: sleep, reads: [a], writes: [b] }
    outputs: { bs: b }
",
            &kinds,
        );
        let report = run(
            &pipeline,
            json!({"items": [1, 1000, -1]}),
            RunOptions::default(),
        )
        .await;
        assert_eq!(report.status, RunStatus::Failed);
        let instances = report.agents["each"].instances.as_ref().unwrap();
        assert_eq!(instances["each[0].second"].status, AgentStatus::Completed);
        assert_eq!(instances["each[2].first"].status, AgentStatus::Failed);
        let hung = &instances["each[1].first"];
        assert_eq!(hung.status, AgentStatus::Cancelled);
        assert!(
            hung.error
                .as_deref()
                .unwrap()
                .contains("cancelled in flight"),
            "{hung:?}"
        );
        assert_eq!(instances["each[1].second"].status, AgentStatus::Cancelled);
    }
}

/// A kind is handed its writes by name, `?` dropped: a `sleep` agent with
/// an optional write writes the field itself.
#[tokio::test]
async fn kinds_see_optional_writes_by_their_names() {
    let pipeline = load(
        "pipeline: p
agents:
  a: { kind: sleep, writes: [maybe?] }
  b: { kind: sleep, reads: [maybe], writes: [done] }
",
        &AgentKinds::standard(),
    );
    let report = run(&pipeline, json!({}), RunOptions::default()).await;
    assert_eq!(report.status, RunStatus::Completed, "{:?}", report.error);
    assert_eq!(*report.state["maybe"], json!(true));
}

mod group_properties {
    //! Random `foreach` groups (elements, per-stage durations, limits):
    //! every member of every nested run runs exactly once, after its own
    //! stage before it; outputs keep element order; and a slow first
    //! element holds no other element back.

    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    struct Case {
        /// Per element, the ms each of the 3 stages takes.
        delays: Vec<[u64; 3]>,
        run_limit: Option<usize>,
    }

    fn case() -> impl Strategy<Value = Case> {
        (
            proptest::collection::vec(proptest::array::uniform3(0u64..4), 0..10),
            proptest::option::of(2usize..6),
        )
            .prop_map(|(delays, run_limit)| Case { delays, run_limit })
    }

    fn kinds() -> AgentKinds {
        let mut kinds = AgentKinds::standard();
        for (stage, out) in ["s0", "s1", "s2"].into_iter().enumerate() {
            kinds.builtin_fn(out, move |reads| async move {
                let item = reads.get("item").unwrap().clone();
                let ms = item["delays"][stage].as_u64().unwrap();
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(writes(&[(out, json!([item["id"].clone(), stage]))]))
            });
        }
        kinds
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        #[test]
        fn nested_members_run_once_in_order_and_outputs_keep_element_order(case in case()) {
            let pipeline = load(
                "pipeline: prop-groups
inputs: { items: { type: array } }
agents:
  g:
    kind: pipeline
    foreach: items
    agents:
      s0: { kind: builtin, function: s0, reads: [item], writes: [s0] }
      s1: { kind: builtin, function: s1, reads: [item, s0], writes: [s1] }
      s2: { kind: builtin, function: s2, reads: [item, s1], writes: [s2] }
    outputs: { out: s2 }
  after: { kind: sleep, reads: [out], writes: [done] }
",
                &kinds(),
            );
            let items: Vec<Value> = case.delays.iter().enumerate()
                .map(|(id, d)| json!({"id": id, "delays": d}))
                .collect();
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let (sink, mut events) = EventSink::channel(EventLevel::Summary);
            let report = runtime.block_on(run(
                &pipeline,
                json!({ "items": items }),
                RunOptions { events: Some(sink), concurrency: case.run_limit, ..Default::default() },
            ));
            prop_assert_eq!(report.status, RunStatus::Completed);
            let n = case.delays.len();
            let expected: Vec<Value> = (0..n).map(|i| json!([i, 2])).collect();
            prop_assert_eq!(&*report.state["out"], &json!(expected));

            let (starts, ends) = event_positions(&mut events)?;
            for i in 0..n {
                for stage in 0..3 {
                    let member = format!("g[{i}].s{stage}");
                    prop_assert!(starts.contains_key(&member) && ends.contains_key(&member), "{} did not run", member);
                    if stage > 0 {
                        let before = format!("g[{i}].s{}", stage - 1);
                        prop_assert!(starts[&member] > ends[&before], "{} started before {} ended", member, before);
                    }
                }
                let last = format!("g[{i}].s2");
                prop_assert!(ends[&last] < starts["after"], "after started before {} ended", last);
            }
        }
    }
}
