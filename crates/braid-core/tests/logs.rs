//! Agents' log lines and failed attempts, as operators read them in a
//! run's report: kept (bounded) with checkpointed runs, not with others.

use std::sync::{Arc, Mutex};

use braid_core::agent::KEPT_LOG_LINES;
use braid_core::checkpoint::{AgentRecord, Checkpointer, RunRecord};
use braid_core::{AgentStatus, CheckpointPolicy, Pipeline, RunOptions, RunReport, RunStatus};
use serde_json::json;

#[derive(Default)]
struct Records(Mutex<Vec<AgentRecord>>);

impl Checkpointer for Records {
    fn run_started(&self, _: &RunRecord) {}
    fn agent_finished(&self, _: &RunRecord, record: &AgentRecord) {
        self.0.lock().unwrap().push(record.clone());
    }
    fn run_finished(&self, _: &RunRecord, _: &RunReport, _: &[AgentRecord]) {}
}

/// `talk` logs three lines on stderr; `flaky` fails its first attempt
/// (logging why) and succeeds on its retry; `noisy` logs more lines than
/// are kept.
fn pipeline(dir: &std::path::Path) -> Pipeline {
    let yaml = format!(
        r#"
pipeline: logs
agents:
  talk:
    kind: command
    run: [sh, -c, 'echo one >&2; echo two >&2; echo three >&2; echo "{{\"a\": 1}}"']
    writes: [a]
  flaky:
    kind: command
    run: [sh, -c, 'if [ -e {marker} ]; then echo "{{\"b\": 2}}"; else touch {marker}; echo "not yet" >&2; exit 3; fi']
    retries: 1
    backoff: 1ms
    writes: [b]
  noisy:
    kind: command
    run: [sh, -c, 'i=0; while [ $i -lt {many} ]; do echo "line $i" >&2; i=$((i+1)); done; echo "{{\"c\": 3}}"']
    writes: [c]
"#,
        marker = dir.join("tried").display(),
        many = KEPT_LOG_LINES + 10,
    );
    Pipeline::from_yaml_str(&yaml).unwrap()
}

#[tokio::test]
async fn a_checkpointed_run_keeps_each_agents_last_lines_and_failed_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = pipeline(dir.path());
    let records = Arc::new(Records::default());
    let report = pipeline
        .run(
            pipeline.check_input(&json!({})).unwrap(),
            RunOptions {
                checkpointer: Some(records.clone()),
                checkpoint: Some(CheckpointPolicy::Agent),
                ..RunOptions::default()
            },
        )
        .await;
    assert_eq!(report.status, RunStatus::Completed, "{report:#?}");
    assert_eq!(report.agents["talk"].logs, ["one", "two", "three"]);

    let flaky = &report.agents["flaky"];
    assert_eq!(flaky.attempts, 2);
    assert_eq!(flaky.failures.len(), 1, "{flaky:#?}");
    assert_eq!(flaky.failures[0].attempt, 1);
    assert!(flaky.failures[0].error.contains("not yet"), "{flaky:#?}");
    assert!(flaky.error.is_none());
    assert_eq!(flaky.logs, ["not yet"]);

    let noisy = &report.agents["noisy"];
    assert_eq!(noisy.logs.len(), KEPT_LOG_LINES);
    assert_eq!(noisy.logs_dropped, 10);
    assert_eq!(
        noisy.logs.last().unwrap(),
        &format!("line {}", KEPT_LOG_LINES + 9)
    );

    // The checkpoints carry them to the store.
    let kept = records.0.lock().unwrap();
    let talk = kept.iter().find(|r| &*r.agent == "talk").unwrap();
    assert_eq!(talk.report.logs, ["one", "two", "three"]);
}

#[tokio::test]
async fn a_run_that_is_not_checkpointed_keeps_no_lines() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = pipeline(dir.path());
    let report = pipeline
        .run(
            pipeline.check_input(&json!({})).unwrap(),
            RunOptions::default(),
        )
        .await;
    assert_eq!(report.status, RunStatus::Completed);
    assert!(report.agents.values().all(|a| a.logs.is_empty()));
    // Failed attempts are in the report whatever the checkpoints.
    assert_eq!(report.agents["flaky"].failures.len(), 1);
}

#[tokio::test]
async fn a_snapshot_shows_a_run_without_events_while_it_runs() {
    let pipeline = Pipeline::from_yaml_str(
        r#"
pipeline: snap
agents:
  quick: { kind: sleep, ms: 0, writes: [a], value: 1 }
  slow: { kind: sleep, ms: 300, reads: [a], writes: [b] }
"#,
    )
    .unwrap();
    let (taker, inbox) = braid_core::snapshot::channel();
    let run = pipeline.run(
        pipeline.check_input(&json!({})).unwrap(),
        RunOptions {
            snapshots: Some(inbox),
            ..RunOptions::default()
        },
    );
    let look = async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let during = taker.take().await.expect("the run is in flight");
        (during, taker)
    };
    let (report, (during, taker)) = tokio::join!(run, look);
    assert_eq!(during.agents["quick"].status, AgentStatus::Completed);
    assert_eq!(during.agents["slow"].status, AgentStatus::Running);
    assert_eq!(*during.state["a"], json!(1));
    assert!(!during.state.contains_key("b"));
    assert!(during.elapsed_ms >= 100.0);
    assert_eq!(report.status, RunStatus::Completed);
    // Once the run has ended, a snapshot says so (`None`) at once.
    assert!(taker.take().await.is_none());
}
