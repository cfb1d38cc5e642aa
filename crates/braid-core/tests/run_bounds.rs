//! Bounds on what a run takes in and keeps, through the library API: value
//! depth (inputs and agents' outputs), `sum` merges that do not fit, append
//! merges with many writers, a `ValidInput` given to the wrong pipeline, and
//! the event queue of an agent that logs without end.

use std::sync::Arc;

use braid_core::agent::{Agent, AgentError, AgentInput, Writes};
use braid_core::event::{DEFAULT_LOG_BACKLOG, EventKind, EventLevel, EventSink, MAX_FOLDED_BYTES};
use braid_core::{AgentKinds, AgentStatus, Pipeline, RunOptions, RunStatus};
use serde_json::{Value, json};

fn nested(levels: usize) -> Value {
    let mut v = json!(1);
    for _ in 0..levels {
        v = json!([v]);
    }
    v
}

fn deep_kinds() -> AgentKinds {
    let mut kinds = AgentKinds::standard();
    kinds.builtin_fn("deep", |reads| async move {
        let levels = reads.get("levels").and_then(Value::as_u64).unwrap_or(0) as usize;
        let mut out = Writes::new();
        out.insert("doc".into(), nested(levels));
        Ok::<_, AgentError>(out)
    });
    kinds
}

const DEEP: &str = "pipeline: deep
inputs: { levels: { type: integer } }
agents:
  nest: { kind: builtin, function: deep, reads: [levels], writes: [doc] }
  after: { kind: sleep, reads: [doc], writes: [done] }
";

#[tokio::test]
async fn an_output_nested_deeper_than_the_limit_fails_its_agent() {
    let pipeline = Pipeline::from_yaml_str_with(DEEP, &deep_kinds()).unwrap();
    assert_eq!(pipeline.max_value_depth(), 64);

    let input = pipeline.check_input(&json!({"levels": 64})).unwrap();
    let report = pipeline.run(input, RunOptions::default()).await;
    assert_eq!(report.status, RunStatus::Completed, "{report:#?}");
    assert_eq!(*report.state["doc"], nested(64));

    let input = pipeline.check_input(&json!({"levels": 500})).unwrap();
    let report = pipeline.run(input, RunOptions::default()).await;
    assert_eq!(report.status, RunStatus::Failed);
    let nest = &report.agents["nest"];
    assert_eq!(nest.status, AgentStatus::Failed);
    let error = nest.error.as_deref().unwrap();
    assert!(
        error.contains("agent `nest`")
            && error.contains("`doc`")
            && error.contains("64")
            && error.contains("max_value_depth"),
        "{error}"
    );
    assert_eq!(nest.attempts, 1, "an over-deep output is not retried");
    assert!(!report.state.contains_key("doc"));
}

#[tokio::test]
async fn a_command_agents_over_deep_json_fails_it_too() {
    // 100 levels: serde_json parses it, the run's limit refuses it.
    let deep = format!("{}1{}", "[".repeat(100), "]".repeat(100));
    let pipeline = Pipeline::from_yaml_str(&format!(
        "pipeline: deep-command\nagents:\n  talk: {{ kind: command, run: [printf, '%s', '{{\"doc\": {deep}}}'], writes: [doc] }}\n"
    ))
    .unwrap();
    let input = pipeline.check_input(&json!({})).unwrap();
    let report = pipeline.run(input, RunOptions::default()).await;
    assert_eq!(report.status, RunStatus::Failed, "{report:#?}");
    let error = report.agents["talk"].error.as_deref().unwrap();
    assert!(error.contains("max_value_depth"), "{error}");

    // The limit can be raised, up to the ceiling stored values read back under.
    let mut pipeline = pipeline;
    pipeline.set_max_value_depth(100).unwrap();
    assert!(pipeline.set_max_value_depth(101).is_err());
    let input = pipeline.check_input(&json!({})).unwrap();
    let report = pipeline.run(input, RunOptions::default()).await;
    assert_eq!(report.status, RunStatus::Completed, "{report:#?}");
}

#[test]
fn an_input_nested_deeper_than_the_limit_is_refused() {
    let pipeline = Pipeline::from_yaml_str(
        "pipeline: p\ninputs: { doc: {} }\nagents:\n  a: { kind: sleep, reads: [doc], writes: [x] }\n",
    )
    .unwrap();
    assert!(pipeline.check_input(&json!({"doc": nested(64)})).is_ok());
    let err = pipeline
        .check_input(&json!({"doc": nested(500)}))
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("input `doc`") && text.contains("64") && text.contains("max_value_depth"),
        "{text}"
    );
}

#[tokio::test]
async fn a_sum_that_does_not_fit_fails_the_run_naming_field_and_writers() {
    let pipeline = Pipeline::from_yaml_str(&format!(
        "pipeline: overflow
fields: {{ total: {{ merge: sum }} }}
agents:
  big: {{ kind: sleep, writes: [total], value: {} }}
  one: {{ kind: sleep, writes: [total], value: 1 }}
  use: {{ kind: sleep, reads: [total], writes: [done] }}
",
        i64::MAX
    ))
    .unwrap();
    let input = pipeline.check_input(&json!({})).unwrap();
    let report = pipeline.run(input, RunOptions::default()).await;
    assert_eq!(report.status, RunStatus::Failed, "{report:#?}");
    let error = report.error.as_deref().unwrap();
    assert!(
        error.contains("`total`")
            && error.contains("`big`")
            && error.contains("`one`")
            && error.contains("64-bit"),
        "{error}"
    );
    assert_eq!(report.agents["use"].status, AgentStatus::Cancelled);
    assert!(!report.state.contains_key("total"));

    // With no reader, the end of the run finds it.
    let pipeline = Pipeline::from_yaml_str(&format!(
        "pipeline: overflow-unread
fields: {{ total: {{ merge: sum }} }}
agents:
  big: {{ kind: sleep, writes: [total], value: {} }}
  one: {{ kind: sleep, writes: [total], value: -1 }}
  two: {{ kind: sleep, writes: [total], value: 2 }}
",
        i64::MAX
    ))
    .unwrap();
    let input = pipeline.check_input(&json!({})).unwrap();
    let report = pipeline.run(input, RunOptions::default()).await;
    // MAX - 1 + 2 does not fit; in any order of completion.
    assert_eq!(report.status, RunStatus::Failed, "{report:#?}");
    assert!(report.error.as_deref().unwrap().contains("`total`"));
}

#[tokio::test]
async fn append_with_many_writers_keeps_declaration_order() {
    let n = 2000;
    let mut yaml = String::from(
        "pipeline: many\nfields: { items: { merge: append } }\nagents:\n  read: { kind: sleep, reads: [items], writes: [done] }\n",
    );
    // Later-declared writers finish first.
    for i in 0..n {
        yaml.push_str(&format!(
            "  w{i}: {{ kind: sleep, ms: {}, writes: [items], value: [{i}] }}\n",
            (n - i) % 3
        ));
    }
    let pipeline = Pipeline::from_yaml_str(&yaml).unwrap();
    let input = pipeline.check_input(&json!({})).unwrap();
    let report = pipeline.run(input, RunOptions::default()).await;
    assert_eq!(report.status, RunStatus::Completed);
    let expected: Vec<Value> = (0..n).map(|i| json!(i)).collect();
    assert_eq!(*report.state["items"], Value::Array(expected));
}

#[tokio::test]
async fn a_valid_input_runs_only_with_the_pipeline_that_checked_it() {
    let a = Pipeline::from_yaml_str(
        "pipeline: a\ninputs: { x: { type: integer }, y: { type: integer } }\nagents:\n  s: { kind: sleep, reads: [x, y], writes: [z] }\n",
    )
    .unwrap();
    let b = Pipeline::from_yaml_str(
        "pipeline: b\ninputs: { n: { type: string } }\nagents:\n  t: { kind: sleep, reads: [n], writes: [m] }\n",
    )
    .unwrap();
    let checked_by_a = a.check_input(&json!({"x": 1, "y": 2})).unwrap();
    let report = b.run(checked_by_a.clone(), RunOptions::default()).await;
    assert_eq!(report.status, RunStatus::Failed, "{report:#?}");
    let error = report.error.as_deref().unwrap();
    assert!(
        error.contains("checked by another pipeline") && error.contains("`a`"),
        "{error}"
    );
    assert_eq!(report.agents["t"].status, AgentStatus::Cancelled);
    assert!(report.state.is_empty());

    // The same file loaded twice is two pipelines too.
    let a_again = Pipeline::from_yaml_str(
        "pipeline: a\ninputs: { x: { type: integer }, y: { type: integer } }\nagents:\n  s: { kind: sleep, reads: [x, y], writes: [z] }\n",
    )
    .unwrap();
    let report = a_again
        .run(checked_by_a.clone(), RunOptions::default())
        .await;
    assert_eq!(report.status, RunStatus::Failed);
    // The pipeline that checked it runs it.
    let report = a.run(checked_by_a, RunOptions::default()).await;
    assert_eq!(report.status, RunStatus::Completed);
}

/// Logs `lines` lines, then writes `done`.
struct Chatty {
    lines: usize,
}

#[async_trait::async_trait]
impl Agent for Chatty {
    async fn call(&self, input: &AgentInput) -> Result<Writes, AgentError> {
        for i in 0..self.lines {
            input.log(&format!("line {i}"));
        }
        let mut out = Writes::new();
        out.insert("done".into(), json!(true));
        Ok(out)
    }
}

#[tokio::test]
async fn an_agent_that_logs_without_end_is_coalesced_at_the_source() {
    let lines = 100_000;
    let mut kinds = AgentKinds::standard();
    kinds.builtin("chatty", Arc::new(Chatty { lines }));
    let pipeline = Pipeline::from_yaml_str_with(
        "pipeline: chatty
agents:
  talk: { kind: builtin, function: chatty, writes: [done] }
  next: { kind: sleep, reads: [done], writes: [after] }
",
        &kinds,
    )
    .unwrap();
    // Nobody reads while the run goes on.
    let (sink, mut events) = EventSink::channel(EventLevel::Full);
    let input = pipeline.check_input(&json!({})).unwrap();
    let report = pipeline
        .run(
            input,
            RunOptions {
                events: Some(sink),
                ..Default::default()
            },
        )
        .await;
    assert_eq!(report.status, RunStatus::Completed);
    assert!(
        events.len() <= DEFAULT_LOG_BACKLOG + 1 + 10,
        "{}",
        events.len()
    );
    let mut logs = Vec::new();
    let mut lifecycle = Vec::new();
    let mut seqs = Vec::new();
    while let Ok(event) = events.try_recv() {
        seqs.push(event.seq);
        match event.kind {
            EventKind::AgentLog { line, .. } => logs.push(line),
            other => lifecycle.push(serde_json::to_value(&other).unwrap()["type"].clone()),
        }
    }
    // Every lifecycle event, in order.
    assert_eq!(
        lifecycle,
        [
            "run_started",
            "agent_started",
            "agent_completed",
            "agent_started",
            "agent_completed",
            "run_finished"
        ]
    );
    // The backlog in full, then one event folding the rest in: the lines in
    // order, as many as fit, and how many did not.
    assert_eq!(logs.len(), DEFAULT_LOG_BACKLOG + 1);
    assert_eq!(logs[0], "line 0");
    let folded = logs.last().unwrap();
    assert!(folded.len() <= MAX_FOLDED_BYTES + 64, "{}", folded.len());
    let (kept, last) = folded.rsplit_once('\n').unwrap();
    let kept: Vec<&str> = kept.split('\n').collect();
    for (i, line) in kept.iter().enumerate() {
        assert_eq!(*line, format!("line {}", DEFAULT_LOG_BACKLOG + i));
    }
    let not_kept: usize = last
        .strip_prefix('(')
        .and_then(|l| l.strip_suffix(" more lines not kept)"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{last}"));
    assert_eq!(kept.len() + not_kept, lines - DEFAULT_LOG_BACKLOG);
    // Numbered 1, 2, 3… as delivered.
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
}
