//! `command` agents with `pool: N`: warm processes speaking JSON lines.

use std::collections::HashSet;
use std::sync::Arc;

use braid_core::{AgentStatus, Pipeline, RunOptions};
use serde_json::json;

/// A pool worker in Python: logs its pid once, then doubles `n` per line.
/// With `die_after`, it exits without answering its next request.
fn worker(dir: &std::path::Path, die_after: Option<u32>) {
    let die = die_after.map_or("None".to_owned(), |n| n.to_string());
    std::fs::write(
        dir.join("worker.py"),
        format!(
            r#"import json, os, sys
with open("pids", "a") as f:
    f.write(f"{{os.getpid()}}\n")
die_after, served = {die}, 0
for line in sys.stdin:
    if die_after is not None and served == die_after:
        os._exit(3)
    request = json.loads(line)
    print(json.dumps({{"doubled": request["state"]["n"] * 2}}), flush=True)
    served += 1
"#
        ),
    )
    .unwrap();
}

fn pipeline(dir: &std::path::Path, extra: &str) -> Arc<Pipeline> {
    let path = dir.join("pipeline.yaml");
    std::fs::write(
        &path,
        format!(
            "pipeline: pooled
inputs: {{ n: {{ type: integer }} }}
agents:
  work: {{ kind: command, run: [python3, worker.py], pool: 2, reads: [n], writes: [doubled]{extra} }}
"
        ),
    )
    .unwrap();
    Arc::new(Pipeline::from_file(&path).unwrap())
}

async fn run_many(pipeline: &Arc<Pipeline>, runs: i64) -> Vec<braid_core::RunReport> {
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..runs {
        let pipeline = pipeline.clone();
        tasks.spawn(async move {
            let input = pipeline.check_input(&json!({ "n": n })).unwrap();
            (n, pipeline.run(input, RunOptions::default()).await)
        });
    }
    let mut reports = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (n, report) = done.unwrap();
        if report.status.is_success() {
            assert_eq!(*report.state["doubled"], json!(n * 2));
        }
        reports.push(report);
    }
    reports
}

fn pids(dir: &std::path::Path) -> HashSet<String> {
    std::fs::read_to_string(dir.join("pids"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_calls_are_served_by_two_warm_processes() {
    let dir = tempfile::tempdir().unwrap();
    worker(dir.path(), None);
    let pipeline = pipeline(dir.path(), "");
    let reports = run_many(&pipeline, 1000).await;
    assert!(reports.iter().all(|r| r.status.is_success()));
    assert_eq!(pids(dir.path()).len(), 2, "two processes for 1,000 calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_dies_mid_call_is_replaced_and_the_call_retried() {
    let dir = tempfile::tempdir().unwrap();
    worker(dir.path(), Some(25));
    let pipeline = pipeline(dir.path(), ", retries: 2, backoff: 1ms");
    let reports = run_many(&pipeline, 200).await;
    let failed: Vec<_> = reports.iter().filter(|r| !r.status.is_success()).collect();
    assert!(
        failed.is_empty(),
        "{:?}",
        failed.first().map(|r| &r.agents["work"])
    );
    let retried = reports
        .iter()
        .filter(|r| r.agents["work"].attempts > 1)
        .count();
    assert!(retried >= 1, "some calls met a dying process");
    assert!(pids(dir.path()).len() > 2, "dead processes were replaced");
}

#[tokio::test]
async fn a_pooled_process_that_breaks_protocol_fails_the_call_clearly() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("worker.py"),
        "import sys\nfor line in sys.stdin:\n    print('not json', flush=True)\n",
    )
    .unwrap();
    let pipeline = pipeline(dir.path(), "");
    let reports = run_many(&pipeline, 1).await;
    let agent = &reports[0].agents["work"];
    assert_eq!(agent.status, AgentStatus::Failed);
    assert!(
        agent
            .error
            .as_deref()
            .unwrap()
            .contains("one JSON object per line"),
        "{agent:?}"
    );
}
