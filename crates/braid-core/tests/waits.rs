//! `input` agents, as a library user runs them: only the branch that needs
//! the answer waits; answers arrive in flight or through a resumed run;
//! timeouts apply a default or fail the agent; bad pipelines are refused at
//! load.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use braid_core::answer::{self, Delivery};
use braid_core::checkpoint::{AgentRecord, Checkpointer, ResumePoint, RunRecord};
use braid_core::event::{EventKind, EventLevel, EventSink};
use braid_core::{AgentStatus, CheckpointPolicy, Pipeline, RunOptions, RunReport, RunStatus};
use serde_json::{Value, json};

const APPROVAL: &str = r#"
pipeline: approval
inputs: { plan: { type: string } }
agents:
  approve:
    kind: input
    prompt: "Apply these changes?"
    reads: [plan]
    writes: [approval]
    schema: { type: object, properties: { approved: { type: boolean }, note: { type: string } }, required: [approved] }
  apply: { kind: sleep, ms: 0, value: done, reads: [approval], writes: [applied] }
  metrics: { kind: sleep, ms: 30, value: 42, reads: [plan], writes: [numbers] }
"#;

fn load(yaml: &str) -> Pipeline {
    Pipeline::from_yaml_str(yaml).unwrap_or_else(|e| panic!("{e}"))
}

async fn run(pipeline: &Pipeline, options: RunOptions) -> RunReport {
    let input = pipeline.check_input(&json!({"plan": "p1"})).unwrap();
    pipeline.run(input, options).await
}

/// Keeps every record a run hands over.
#[derive(Default)]
struct Records {
    agents: Mutex<Vec<AgentRecord>>,
    finished: Mutex<Vec<AgentRecord>>,
}

impl Checkpointer for Records {
    fn run_started(&self, _: &RunRecord) {}
    fn agent_finished(&self, _: &RunRecord, agent: &AgentRecord) {
        self.agents.lock().unwrap().push(agent.clone());
    }
    fn run_finished(&self, _: &RunRecord, _: &RunReport, agents: &[AgentRecord]) {
        *self.finished.lock().unwrap() = agents.to_vec();
    }
}

#[tokio::test]
async fn only_the_branch_that_needs_the_answer_waits() {
    let pipeline = load(APPROVAL);
    let records = Arc::new(Records::default());
    let (sink, mut events) = EventSink::channel(EventLevel::Summary);
    let report = run(
        &pipeline,
        RunOptions {
            checkpointer: Some(records.clone()),
            events: Some(sink),
            ..RunOptions::default()
        },
    )
    .await;
    assert_eq!(report.status, RunStatus::Waiting, "{report:#?}");
    assert_eq!(report.error, None);
    // The branch that does not need the answer finished.
    assert_eq!(report.agents["metrics"].status, AgentStatus::Completed);
    assert_eq!(*report.state["numbers"], json!(42));
    assert_eq!(report.agents["approve"].status, AgentStatus::Waiting);
    assert_eq!(report.agents["apply"].status, AgentStatus::Pending);
    assert!(!report.state.contains_key("applied"));
    // The wait is on record (the pipeline's default `end` became `agent`).
    let waiting = records.agents.lock().unwrap().clone();
    assert!(
        waiting
            .iter()
            .any(|r| &*r.agent == "approve" && r.report.status == AgentStatus::Waiting),
        "{waiting:?}"
    );
    let mut asked = None;
    while let Some(event) = events.recv().await {
        match event.kind {
            EventKind::AgentWaiting {
                agent,
                prompt,
                schema,
                reads,
                deadline_ms,
            } => asked = Some((agent, prompt, schema, reads, deadline_ms)),
            EventKind::RunFinished { status, .. } => {
                assert_eq!(status, RunStatus::Waiting);
                break;
            }
            _ => {}
        }
    }
    let (agent, prompt, schema, reads, deadline) = asked.expect("an agent_waiting event");
    assert_eq!(&*agent, "approve");
    assert_eq!(prompt, "Apply these changes?");
    assert_eq!(schema.unwrap()["required"], json!(["approved"]));
    assert_eq!(*reads["plan"], json!("p1"));
    assert_eq!(deadline, None, "no timeout: it waits for ever");
}

#[tokio::test]
async fn an_answer_in_flight_continues_the_branch_at_once() {
    let pipeline = load(&APPROVAL.replace("ms: 30, value: 42", "ms: 400, value: 42"));
    let (sender, inbox) = answer::channel();
    let options = RunOptions {
        answers: Some(inbox),
        ..RunOptions::default()
    };
    let answering = async {
        // Only an `input` agent takes an answer.
        let wrong = pipeline.check_answer("apply", &json!({"approved": true}));
        assert!(wrong.is_err());
        tokio::time::sleep(Duration::from_millis(50)).await;
        let answer = pipeline
            .check_answer("approve", &json!({"approved": true, "note": "go"}))
            .unwrap();
        let first = sender.deliver(answer.clone()).await;
        let second = sender.deliver(answer).await;
        (first, second)
    };
    let (report, (first, second)) = tokio::join!(run(&pipeline, options), answering);
    assert_eq!(first, Delivery::Applied);
    assert_eq!(second, Delivery::NotWaiting(AgentStatus::Completed));
    assert_eq!(report.status, RunStatus::Completed, "{report:#?}");
    assert_eq!(
        *report.state["approval"],
        json!({"approved": true, "note": "go"})
    );
    assert_eq!(*report.state["applied"], json!("done"));
}

#[tokio::test]
async fn an_answer_after_the_run_ended_is_not_lost_silently() {
    let pipeline = load(APPROVAL);
    let (sender, inbox) = answer::channel();
    let report = run(
        &pipeline,
        RunOptions {
            answers: Some(inbox),
            ..RunOptions::default()
        },
    )
    .await;
    assert_eq!(report.status, RunStatus::Waiting);
    let answer = pipeline
        .check_answer("approve", &json!({"approved": false}))
        .unwrap();
    assert_eq!(sender.deliver(answer).await, Delivery::NotListening);
}

#[tokio::test]
async fn a_bad_answer_is_refused_with_the_schemas_message() {
    let pipeline = load(APPROVAL);
    let refused = pipeline
        .check_answer("approve", &json!({"approved": "yes"}))
        .unwrap_err()
        .to_string();
    assert!(refused.contains("approve"), "{refused}");
    assert!(refused.contains("/approved"), "{refused}");
    assert!(refused.contains("boolean"), "{refused}");
    let missing = pipeline
        .check_answer("approve", &json!({}))
        .unwrap_err()
        .to_string();
    assert!(missing.contains("approved"), "{missing}");
}

#[tokio::test]
async fn a_timed_out_wait_uses_its_default_or_fails() {
    let with_default = load(&APPROVAL.replace(
        "    reads: [plan]\n    writes: [approval]",
        "    reads: [plan]\n    writes: [approval]\n    timeout: 50ms\n    default: { approved: false }",
    ));
    let (sink, mut events) = EventSink::channel(EventLevel::Summary);
    let report = run(
        &with_default,
        RunOptions {
            events: Some(sink),
            ..RunOptions::default()
        },
    )
    .await;
    // `metrics` (30 ms) ends before the deadline (50 ms): with nothing
    // else to do, the run ends `waiting` rather than idle in memory.
    assert_eq!(report.status, RunStatus::Waiting);
    let deadline = report.agents["approve"].deadline_ms.expect("a deadline");
    let mut answered = false;
    while let Some(event) = events.recv().await {
        if matches!(event.kind, EventKind::AgentAnswered { .. }) {
            answered = true;
        }
    }
    assert!(!answered);

    // Continued after the deadline (as `braid runs resume` or a server
    // does), the timeout applies: the default, and the branch goes on.
    let waiting: Vec<AgentRecord> = report
        .agents
        .iter()
        .map(|(name, r)| AgentRecord {
            agent: name.clone(),
            report: r.clone(),
            writes: Vec::new(),
            definition: Some(Arc::from(
                with_default
                    .agents()
                    .iter()
                    .find(|a| a.name() == &**name)
                    .unwrap()
                    .definition_hash(),
            )),
        })
        .collect();
    let until = u64::try_from(deadline - now_ms()).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(until + 5)).await;
    let (sink, mut events) = EventSink::channel(EventLevel::Summary);
    let report = run(
        &with_default,
        RunOptions {
            resume: Some(ResumePoint {
                agents: waiting.clone(),
            }),
            events: Some(sink),
            ..RunOptions::default()
        },
    )
    .await;
    assert_eq!(report.status, RunStatus::Completed, "{report:#?}");
    assert_eq!(*report.state["approval"], json!({"approved": false}));
    assert!(
        report.agents["approve"]
            .reason
            .as_deref()
            .unwrap()
            .contains("default"),
        "{:?}",
        report.agents["approve"]
    );
    let mut by_default = false;
    while let Some(event) = events.recv().await {
        if let EventKind::AgentAnswered { by_default: d, .. } = event.kind {
            by_default = d;
        }
    }
    assert!(by_default);

    // Without a default, the agent fails.
    let report = run(
        &load(
            &APPROVAL
                .replace(
                    "    reads: [plan]\n    writes: [approval]",
                    "    reads: [plan]\n    writes: [approval]\n    timeout: 20ms",
                )
                .replace("ms: 30, value: 42", "ms: 300, value: 42"),
        ),
        RunOptions::default(),
    )
    .await;
    // Still in flight when the deadline passed: the run timed it out itself.
    assert_eq!(report.status, RunStatus::Failed, "{report:#?}");
    let error = report.agents["approve"].error.clone().unwrap();
    assert!(error.contains("no answer within 20ms"), "{error}");
    assert_eq!(report.agents["apply"].status, AgentStatus::Cancelled);
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test]
async fn a_recorded_answer_continues_a_waiting_run() {
    let pipeline = load(APPROVAL);
    let records = Arc::new(Records::default());
    let report = run(
        &pipeline,
        RunOptions {
            checkpointer: Some(records.clone()),
            checkpoint: Some(CheckpointPolicy::Agent),
            ..RunOptions::default()
        },
    )
    .await;
    assert_eq!(report.status, RunStatus::Waiting);
    // What a store does with an answer: the waiting record becomes a
    // completed one with the answer as its write.
    let mut stored = records.finished.lock().unwrap().clone();
    for record in &mut stored {
        if &*record.agent == "approve" {
            record.report.status = AgentStatus::Completed;
            record.writes = vec![(Arc::from("approval"), Arc::new(json!({"approved": true})))];
        }
    }
    let report = run(
        &pipeline,
        RunOptions {
            resume: Some(ResumePoint { agents: stored }),
            ..RunOptions::default()
        },
    )
    .await;
    assert_eq!(report.status, RunStatus::Completed, "{report:#?}");
    assert!(report.agents["metrics"].resumed, "not run again");
    assert_eq!(*report.state["applied"], json!("done"));
}

#[test]
fn pipelines_that_cannot_wait_properly_are_refused_at_load() {
    let cases: &[(&str, &str)] = &[
        (
            "pipeline: p\ncheckpoint: none\nagents:\n  ask: { kind: input, prompt: q, writes: [a] }\n",
            "`checkpoint: none` cannot keep a run that waits",
        ),
        (
            "pipeline: p\nagents:\n  ask: { kind: input, writes: [a] }\n",
            "needs a `prompt`",
        ),
        (
            "pipeline: p\nagents:\n  ask: { kind: input, prompt: q, writes: [a, b] }\n",
            "exactly one field",
        ),
        (
            "pipeline: p\nagents:\n  ask: { kind: input, prompt: q, writes: [a?] }\n",
            "cannot be optional",
        ),
        (
            "pipeline: p\nagents:\n  ask: { kind: input, prompt: q, writes: [a], schema: { type: boolean }, default: 3 }\n",
            "`default` does not fit `schema`",
        ),
        (
            "pipeline: p\nagents:\n  ask: { kind: input, prompt: q, writes: [a], schema: { type: 12 } }\n",
            "not a valid JSON Schema",
        ),
        (
            "pipeline: p\nagents:\n  ask: { kind: input, prompt: q, writes: [a], run: [echo] }\n",
            "does not apply",
        ),
        (
            "pipeline: p\nagents:\n  ask: { kind: input, prompt: q, writes: [a], colour: red }\n",
            "unknown key `colour`",
        ),
        (
            "pipeline: p\ninputs: { xs: { type: array } }\nagents:\n  ask: { kind: input, prompt: q, foreach: xs, writes: [a] }\n",
            "cannot have `foreach`",
        ),
        (
            "pipeline: p\nagents:\n  g:\n    kind: pipeline\n    agents:\n      ask: { kind: input, prompt: q, writes: [a] }\n    outputs: { a: a }\n",
            "cannot be inside a group",
        ),
    ];
    for (yaml, expected) in cases {
        let error = Pipeline::from_yaml_str(yaml)
            .map(|_| ())
            .expect_err(yaml)
            .to_string();
        assert!(error.contains(expected), "{yaml}\n→ {error}");
        assert!(error.contains("line"), "errors name the line: {error}");
    }
    // And a good one loads, saying it waits.
    let ok = Pipeline::from_yaml_str(APPROVAL).unwrap();
    assert!(ok.waits_for_input());
    let ask = ok.agents().iter().find(|a| a.name() == "approve").unwrap();
    assert_eq!(ask.input().unwrap().prompt(), "Apply these changes?");
    let _: Option<&Value> = ask.input().unwrap().schema();
}
