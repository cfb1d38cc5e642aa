//! Forks from inside groups, as a library user makes them: from a member
//! of one element of a `foreach` group, and from a member of one round of
//! a `repeat` group. Counters in builtin agents say exactly what ran again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use braid_core::agent::{AgentError, Writes};
use braid_core::checkpoint::{AgentRecord, Checkpointer, RunRecord};
use braid_core::{AgentKinds, Pipeline, RunOptions, RunReport, RunStatus};
use serde_json::{Value, json};

/// Calls of each builtin, by a key the agent makes from what it reads.
type Calls = Arc<Mutex<HashMap<String, usize>>>;

fn kinds(calls: &Calls) -> AgentKinds {
    let mut kinds = AgentKinds::standard();
    for name in ["extract", "classify", "draft", "critique", "join"] {
        let calls = calls.clone();
        kinds.builtin_fn(name, move |reads| {
            let calls = calls.clone();
            async move {
                let key = match (reads.get("item"), reads.get("round")) {
                    (Some(item), _) => format!("{name}:{item}"),
                    (_, Some(round)) => format!("{name}#{round}"),
                    _ => name.to_owned(),
                };
                *calls.lock().unwrap().entry(key).or_default() += 1;
                let mut out = Writes::new();
                let field = match name {
                    "extract" => "a",
                    "classify" => "b",
                    "draft" => "d",
                    "critique" => "c",
                    _ => "done",
                };
                let round = reads.get("round").and_then(Value::as_u64).unwrap_or(0);
                out.insert(field.into(), json!(round + 1));
                Ok::<_, AgentError>(out)
            }
        });
    }
    kinds
}

const GROUPS: &str = r#"
pipeline: groups
inputs: { items: { type: array } }
agents:
  per_item:
    kind: pipeline
    foreach: items
    agents:
      extract: { kind: builtin, function: extract, reads: [item], writes: [a] }
      classify: { kind: builtin, function: classify, reads: [item, a], writes: [b] }
    outputs: { results: b }
  refine:
    kind: pipeline
    repeat: { until: 'c >= 3', max: 5 }
    agents:
      draft: { kind: builtin, function: draft, reads: [round], writes: [d] }
      critique: { kind: builtin, function: critique, reads: [round, d], writes: [c] }
    outputs: { final: c }
  join: { kind: builtin, function: join, reads: [results, final], writes: [done] }
"#;

#[derive(Default)]
struct Records(Mutex<Vec<AgentRecord>>);

impl Checkpointer for Records {
    fn run_started(&self, _: &RunRecord) {}
    fn agent_finished(&self, _: &RunRecord, _: &AgentRecord) {}
    fn run_finished(&self, _: &RunRecord, _: &RunReport, agents: &[AgentRecord]) {
        *self.0.lock().unwrap() = agents.to_vec();
    }
}

fn count(calls: &Calls, key: &str) -> usize {
    calls.lock().unwrap().get(key).copied().unwrap_or(0)
}

#[tokio::test]
async fn forks_from_inside_groups_re_run_only_what_follows_the_point() {
    let calls: Calls = Arc::default();
    let pipeline = Pipeline::from_yaml_str_with(GROUPS, &kinds(&calls)).unwrap();
    let records = Arc::new(Records::default());
    let input = json!({"items": ["x", "y", "z"]});
    let report = pipeline
        .run(
            pipeline.check_input(&input).unwrap(),
            RunOptions {
                checkpointer: Some(records.clone()),
                ..RunOptions::default()
            },
        )
        .await;
    assert_eq!(report.status, RunStatus::Completed, "{report:#?}");
    let parent = records.0.lock().unwrap().clone();
    let before = calls.lock().unwrap().clone();
    assert_eq!(before["draft#2"], 1, "three rounds ran: {before:?}");

    // From element 1's `classify`: only that one, and `join`, run again.
    let fork = pipeline
        .fork(
            &report.run_id,
            &parent,
            input.as_object().unwrap(),
            Some("per_item[1].classify"),
            &[],
        )
        .unwrap();
    assert_eq!(fork.rerun, ["per_item", "join"]);
    let again = pipeline
        .run(
            pipeline.check_input(&input).unwrap(),
            RunOptions {
                resume: Some(fork.resume),
                ..RunOptions::default()
            },
        )
        .await;
    assert_eq!(again.status, RunStatus::Completed, "{again:#?}");
    assert_eq!(again.state, report.state);
    assert_eq!(count(&calls, "classify:\"y\""), 2);
    assert_eq!(count(&calls, "classify:\"x\""), 1);
    assert_eq!(
        count(&calls, "extract:\"y\""),
        1,
        "upstream of the point in its element"
    );
    assert_eq!(
        count(&calls, "draft#0"),
        1,
        "the other group is not downstream"
    );
    assert_eq!(count(&calls, "join"), 2);

    // From round 1's `critique`: rounds 0 and round 1's draft are kept.
    let fork = pipeline
        .fork(
            &report.run_id,
            &parent,
            input.as_object().unwrap(),
            Some("refine#1.critique"),
            &[],
        )
        .unwrap();
    let again = pipeline
        .run(
            pipeline.check_input(&input).unwrap(),
            RunOptions {
                resume: Some(fork.resume),
                ..RunOptions::default()
            },
        )
        .await;
    assert_eq!(again.status, RunStatus::Completed, "{again:#?}");
    assert_eq!(again.state, report.state);
    assert_eq!(count(&calls, "draft#0"), 1);
    assert_eq!(count(&calls, "critique#0"), 1);
    assert_eq!(
        count(&calls, "draft#1"),
        1,
        "upstream of the point in its round"
    );
    assert_eq!(count(&calls, "critique#1"), 2);
    assert_eq!(count(&calls, "draft#2"), 2, "later rounds run again");
    assert_eq!(count(&calls, "extract:\"x\""), 1);
    assert_eq!(count(&calls, "join"), 3);
}
